// sweep.h: the pieces of `speedrun sweep` (issue 9) that tests use on their own: the grid of
// settings, the results file (JSON lines, appended one whole line per finished run under a file
// lock, so ranks on several hosts may share it on a network filesystem), and the per-setting
// summary. cmd_sweep (dist_commands.h) puts them together.
//
// A job is (setting, seed). Its identity in the results file is the fingerprint of the setting
// (a hash of the resolved recipe and the data it trains on) plus the seed: a restart with the
// same file skips every job whose line is there, and lines of other recipes are left alone.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sr {

struct SweepSetting {
    std::vector<std::string> overrides;  // "key.path=value", one per grid axis
    std::string label;                   // the overrides joined by spaces ("" without a grid)
};

// "v1,v2,[1,2],{...}": split at the commas outside brackets, braces and quotes.
std::vector<std::string> split_grid_values(const std::string& values);
// The cartesian product of the axes ("key=v1,v2,..."), first axis slowest; one empty setting
// when there are no axes. A malformed axis is an error naming it.
std::vector<SweepSetting> grid_settings(const std::vector<std::string>& grid);

// FNV-1a-64 over text (stable across builds and machines), and the same as 16 hex digits.
uint64_t fnv1a64(const std::string& text);
std::string fingerprint(const std::string& text);

// Appends j as one line: opens with O_APPEND, takes an exclusive fcntl lock on the file, writes
// the line in one write() (after a newline if the file does not end with one, e.g. after a
// crash mid-line), fsyncs, unlocks. Creates the file and its directories.
void append_result_line(const std::string& path, const nlohmann::json& j);

struct ResultsFile {
    std::vector<nlohmann::json> lines;  // every line that is a JSON object, in file order
    std::vector<int> bad_lines;         // 1-based numbers of lines that are not
};
// The lines of path (none if it does not exist).
ResultsFile read_results(const std::string& path);

// The statistics of one setting over its finished runs (one per seed; later duplicates ignored),
// and under "git" the commits that ran them (a results file may collect several builds' runs).
nlohmann::json summarize_setting(const SweepSetting& s, const std::string& fp,
                                 const std::vector<nlohmann::json>& lines,
                                 const std::vector<uint64_t>& seeds);

}  // namespace sr
