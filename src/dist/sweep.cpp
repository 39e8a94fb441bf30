// sweep.cpp: `speedrun sweep` (see sweep.h and dist_commands.h). Every rank resolves every
// setting (so a bad --grid value fails on all of them before any work), rank 0 reads the results
// file and broadcasts which jobs are finished, the rest are dealt out round-robin, each rank
// appends a line per run as it ends, and after a barrier rank 0 prints and writes the summary.
#include "dist/sweep.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include "core/error.h"
#include "core/notes.h"
#include "core/version.h"
#include "dist/dist_commands.h"
#include "io/json_input.h"
#include "io/atomic_file.h"
#include "train/checkpoint.h"

namespace sr {
namespace fs = std::filesystem;

// ---- grid ---------------------------------------------------------------------------------------

std::vector<std::string> split_grid_values(const std::string& values) {
    std::vector<std::string> out;
    std::string cur;
    int depth = 0;
    bool quoted = false;
    for (size_t i = 0; i < values.size(); ++i) {
        const char ch = values[i];
        if (quoted) {
            if (ch == '\\' && i + 1 < values.size()) {
                cur += ch;
                cur += values[++i];
                continue;
            }
            if (ch == '"') quoted = false;
        } else if (ch == '"') {
            quoted = true;
        } else if (ch == '[' || ch == '{') {
            ++depth;
        } else if (ch == ']' || ch == '}') {
            --depth;
        } else if (ch == ',' && depth == 0) {
            out.push_back(cur);
            cur.clear();
            continue;
        }
        cur += ch;
    }
    out.push_back(cur);
    return out;
}

std::vector<SweepSetting> grid_settings(const std::vector<std::string>& grid) {
    std::vector<SweepSetting> settings(1);
    std::set<std::string> keys;
    for (const std::string& axis : grid) {
        const auto eq = axis.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == axis.size())
            fail("--grid '{}': expected key.path=v1,v2,... (e.g. opt.lr=10,11.5)", axis);
        const std::string key = axis.substr(0, eq);
        if (!keys.insert(key).second)
            fail("--grid '{}': the key {} has an axis already", axis, key);
        const auto values = split_grid_values(axis.substr(eq + 1));
        for (const auto& v : values)
            if (v.empty()) fail("--grid '{}': an empty value (two commas in a row?)", axis);
        std::vector<SweepSetting> next;
        for (const SweepSetting& s : settings)
            for (const std::string& v : values) {
                SweepSetting t = s;
                t.overrides.push_back(key + "=" + v);
                t.label += (t.label.empty() ? "" : " ") + key + "=" + v;
                next.push_back(std::move(t));
            }
        settings = std::move(next);
    }
    return settings;
}

uint64_t fnv1a64(const std::string& text) {
    uint64_t h = 14695981039346656037ull;  // FNV-1a offset basis
    for (unsigned char c : text) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

std::string fingerprint(const std::string& text) { return fmt::format("{:016x}", fnv1a64(text)); }

// ---- results file -------------------------------------------------------------------------------

void append_result_line(const std::string& path, const nlohmann::json& j) {
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) {
        std::error_code ec;
        fs::create_directories(parent, ec);
        if (ec) fail("{}: cannot create directory {}: {}", path, parent.string(), ec.message());
    }
    const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        fail("{}: cannot open the results file for appending: {}", path, std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }  // also releases the lock
    } closer{fd};
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file
    while (::fcntl(fd, F_SETLKW, &lock) != 0)
        if (errno != EINTR)
            fail("{}: cannot lock the results file: {}", path, std::strerror(errno));
    std::string line = json_text(j) + "\n";
    const off_t size = ::lseek(fd, 0, SEEK_END);
    char last = '\n';
    if (size > 0 && ::pread(fd, &last, 1, size - 1) == 1 && last != '\n') line = "\n" + line;
    write_all(fd, line.data(), line.size(), path);
    if (::fsync(fd) != 0) fail("{}: fsync failed: {}", path, std::strerror(errno));
}

ResultsFile read_results(const std::string& path) {
    ResultsFile r;
    std::ifstream in(path);
    if (!in) {
        if (fs::exists(path)) fail("{}: cannot read the results file", path);
        return r;
    }
    std::string line;
    int no = 0;
    while (std::getline(in, line)) {
        ++no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
            auto j = parse_json_input(line, path);
            if (j.is_object()) {
                r.lines.push_back(std::move(j));
                continue;
            }
        } catch (const Error&) {  // (counted as a bad line: torn, or not ours)
        }
        r.bad_lines.push_back(no);
    }
    return r;
}

nlohmann::json summarize_setting(const SweepSetting& s, const std::string& fp,
                                 const std::vector<nlohmann::json>& lines,
                                 const std::vector<uint64_t>& seeds) {
    const std::set<uint64_t> wanted(seeds.begin(), seeds.end());
    std::set<uint64_t> seen;
    std::vector<double> acc, acc0, secs;
    std::vector<uint64_t> got;
    std::set<std::string> builds;  // the commits that ran them ("unknown": a line without one)
    int n94 = 0, diverged = 0;
    for (const auto& l : lines) {
        if (l.value("fingerprint", std::string()) != fp || !l.contains("seed") ||
            !l["seed"].is_number_unsigned())
            continue;
        const uint64_t seed = l["seed"].get<uint64_t>();
        if (!wanted.count(seed) || !seen.insert(seed).second) continue;
        got.push_back(seed);
        builds.insert(l.contains("git") && l["git"].is_string() ? l["git"].get<std::string>()
                                                                : std::string("unknown"));
        if (l.value("diverged", false)) {  // (counted in n, not in the accuracy or the seconds)
            ++diverged;
            continue;
        }
        acc.push_back(l.value("test_accuracy_tta", 0.0));
        acc0.push_back(l.value("test_accuracy", 0.0));
        secs.push_back(l.value("train_seconds", 0.0));
        n94 += acc.back() >= 0.94;
    }
    std::sort(got.begin(), got.end());
    const AccuracyStats a = accuracy_stats(acc), a0 = accuracy_stats(acc0),
                        t = accuracy_stats(secs);
    if (a.n == 0 && diverged > 0) {  // every run diverged: no figures, null rather than 0
        nlohmann::json j = {{"setting", s.label}, {"overrides", s.overrides}, {"fingerprint", fp},
                            {"n", diverged}, {"diverged", diverged}, {"runs_wanted", seeds.size()},
                            {"seeds", got}, {"share_at_least_94", 0.0}, {"git", builds}};
        for (const char* k : {"accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "accuracy_no_tta_mean",
                              "train_seconds_mean", "train_seconds_std", "train_seconds_min", "train_seconds_max"})
            j[k] = nullptr;
        return j;
    }
    return {{"setting", s.label},
            {"overrides", s.overrides},
            {"fingerprint", fp},
            {"n", a.n + diverged},  // (the finished runs, the diverged ones included)
            {"diverged", diverged},
            {"runs_wanted", seeds.size()},
            {"seeds", got},
            {"accuracy_mean", a.mean},
            {"accuracy_std", a.std},
            {"accuracy_min", a.min},
            {"accuracy_max", a.max},
            {"accuracy_no_tta_mean", a0.mean},
            {"share_at_least_94", a.n + diverged ? double(n94) / (a.n + diverged) : 0.0},
            {"train_seconds_mean", t.mean},
            {"train_seconds_std", t.std},
            {"train_seconds_min", t.min},
            {"train_seconds_max", t.max},
            {"git", builds}};
}

// ---- the command --------------------------------------------------------------------------------

namespace {

std::string utc_now() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string host_name() {
    char buf[256] = {};
    ::gethostname(buf, sizeof buf - 1);
    return buf;
}

std::string summary_path_for(const std::string& results) {
    const std::string ext = ".jsonl";
    if (results.size() > ext.size() && results.ends_with(ext))
        return results.substr(0, results.size() - ext.size()) + ".summary.json";
    return results + ".summary.json";
}

struct Job {
    int setting;
    uint64_t seed;
};

int sweep_on_rank(const SweepArgs& a, Communicator& comm) {
    using clock = std::chrono::steady_clock;
    const std::string results = a.results.empty() ? a.preset + "-sweep.jsonl" : a.results;
    const std::string summary = a.summary_json.empty() ? summary_path_for(results) : a.summary_json;

    // every setting resolved on every rank first: a bad value fails everywhere, before any run
    const std::vector<SweepSetting> settings = grid_settings(a.grid);
    std::vector<Recipe> recipes;
    for (const SweepSetting& s : settings) {
        CommonArgs c = a;
        c.sets.insert(c.sets.end(), s.overrides.begin(), s.overrides.end());
        try {
            recipes.push_back(resolve_recipe(c));
        } catch (const Error& e) {  // a grid value is read as a --set: say which flag gave it
            std::string m = e.what();
            for (const std::string& o : s.overrides)
                if (const size_t at = m.find("--set " + o); at != std::string::npos)
                    m.replace(at, 5, "--grid");
            fail("{}", m);
        }
    }
    // what the sweep writes, checked before it starts (results lines are appended by every rank
    // and read back by the next sweep: a regular file, not a device or pipe, whose fsync fails
    // after the first run; the summary replaced over them would lose them all)
    check_output_path(results, "--results", true);
    {
        std::error_code ec;
        const auto st = fs::status(results, ec);
        if (!ec && fs::exists(st) && !fs::is_regular_file(st))
            fail("--results {}: not a regular file (the results are appended to it and read back by a "
                 "restarted sweep)", results);
    }
    if (comm.root()) check_output_path(summary, "--summary-json");
    check_distinct_outputs({{results, "--results"}, {summary, "--summary-json"}});
    check_inputs_kept({{results, "--results"}, {summary, "--summary-json"}}, {{a.config, "--config"}});
    set_cpu_conv(a.cpu_conv, false);
    const RankPlacement pl = place_rank(comm, a.device, a.threads);
    auto backend = make_backend(pl.device, pl.threads, pl.cuda_device);
    const Cifar10 data = load_data(a, &comm);
    if (a.subset < 0) fail("--subset must be >= 0 (got {})", a.subset);
    if (a.test_subset < 0) fail("--test-subset must be >= 0 (got {})", a.test_subset);
    const int n_train = a.subset > 0 ? std::min(a.subset, data.train.n) : data.train.n;
    const int n_test = a.test_subset > 0 ? std::min(a.test_subset, data.test.n) : data.test.n;
    // what the trainer would refuse only when the setting's turn came (after the earlier jobs)
    for (size_t i = 0; i < recipes.size(); ++i)
        if (recipes[i].batch_size > n_train)
            fail("{}: batch size {} is larger than the training set ({} images)",
                 settings[i].label.empty() ? std::string("the recipe") : "--grid setting " + settings[i].label,
                 recipes[i].batch_size, n_train);
    // A job is its recipe as it runs (recipe_to_json: --epochs 1 and --set opt.epochs=1 alike),
    // its image counts and its training images' fingerprint (another --data folder is another
    // job, not more runs of this one).
    const std::string images = data_fingerprint(data.train.images, data.train.labels, n_train);
    std::vector<std::string> fps;
    for (const Recipe& r : recipes)
        fps.push_back(fingerprint(fmt::format("{}|train={}|test={}|data={}", recipe_to_json(r).dump(), n_train,
                                              n_test, images)));
    // settings that resolve to the same recipe (a repeated --grid value; --epochs or --batch-size,
    // which win over a grid axis on opt.epochs or opt.batch_size) would share one set of runs
    for (size_t i = 0; i < fps.size(); ++i)
        for (size_t j = 0; j < i; ++j)
            if (fps[i] == fps[j]) {
                auto on_axis = [&](const char* key) {  // (a grid axis that a flag overrides)
                    for (const std::string& o : settings[i].overrides)
                        if (o.rfind(std::string(key) + "=", 0) == 0) return true;
                    return false;
                };
                const bool overridden = (a.epochs > 0 && on_axis("opt.epochs")) ||
                                        (a.batch_size > 0 && on_axis("opt.batch_size"));
                fail("--grid settings {} and {} train the same recipe{}: each setting needs its own",
                     settings[j].label, settings[i].label,
                     overridden ? " (--epochs and --batch-size win over the grid's values)" : "");
            }
    std::vector<uint64_t> seeds;
    for (int i = 0; i < a.runs; ++i) seeds.push_back(a.seed + uint64_t(i));
    std::vector<Job> jobs;
    for (int s = 0; s < int(settings.size()); ++s)
        for (uint64_t seed : seeds) jobs.push_back({s, seed});

    // rank 0 reads the results file; every rank learns which jobs are finished
    std::vector<uint8_t> done(jobs.size(), 0);
    if (comm.root()) {
        const ResultsFile rf = read_results(results);
        for (int no : rf.bad_lines)
            fmt::print(
                "note: {} line {} is not a JSON object (a run cut off mid-write?); ignored\n",
                results, no);
        std::set<std::pair<std::string, uint64_t>> have;
        std::set<std::string> ours(fps.begin(), fps.end());
        int foreign = 0;
        for (const auto& l : rf.lines) {
            const std::string fp = l.value("fingerprint", std::string());
            if (!ours.count(fp) || !l.contains("seed") || !l["seed"].is_number_unsigned()) {
                ++foreign;
                continue;
            }
            have.insert({fp, l["seed"].get<uint64_t>()});
        }
        for (size_t j = 0; j < jobs.size(); ++j)
            done[j] = have.count({fps[size_t(jobs[j].setting)], jobs[j].seed}) ? 1 : 0;
        if (foreign)
            fmt::print(
                "note: {} line{} of {} belong{} to other recipes or data (other flags); left "
                "alone and not counted here\n",
                foreign, foreign == 1 ? "" : "s", results, foreign == 1 ? "s" : "");
    }
    comm.broadcast(done.data(), done.size(), 0);
    std::vector<int> pending;
    for (size_t j = 0; j < jobs.size(); ++j)
        if (!done[j]) pending.push_back(int(j));
    std::vector<int> mine;
    for (size_t i = 0; i < pending.size(); ++i)
        if (int(i % size_t(comm.world())) == comm.rank()) mine.push_back(pending[i]);
    if (comm.root()) {
        fmt::print(
            "sweep         preset {}; {} setting{} x {} seed{} ({}..{}) = {} job{}; results {}\n",
            recipes[0].name, settings.size(), settings.size() == 1 ? "" : "s", a.runs,
            a.runs == 1 ? "" : "s", seeds.front(), seeds.back(), jobs.size(),
            jobs.size() == 1 ? "" : "s", results);
        fmt::print("              {} finished already (skipped), {} to run on {}\n",
                   jobs.size() - pending.size(), pending.size(), comm.name());
        // (a small sweep whose runs the lookahead's final copy cuts short, or whose EMA is mostly
        // the initial network, compares less than it trained: identical rows for settings that
        // trained differently; nothing to say when every run has finished already)
        for (size_t s = 0; s < settings.size() && !pending.empty(); ++s)
            if (const std::string why = short_run_note(recipes[s], n_train); !why.empty())
                note("{}: {}", settings[s].label.empty() ? std::string("the recipe") : settings[s].label, why);
        std::fflush(stdout);
    }
    comm.barrier();  // the header first
    fmt::print("[rank {}/{}] {} on {}: {} job{}\n", comm.rank(), comm.world(), pl.text,
               backend->name(), mine.size(), mine.size() == 1 ? "" : "s");
    std::fflush(stdout);
    const auto t0 = clock::now();

    TrainOptions o;
    o.subset = a.subset;
    o.test_subset = a.test_subset;
    o.eval_each_epoch = a.epoch_eval;
    o.progress = false;
    o.quiet = true;
    // Each setting's trainer is warmed up when it is made (a rank moves through several settings:
    // on a GPU a new trainer's first run pays library start-up, cuDNN plans and the capture of
    // its epochs as graphs inside the timer, which would make each setting's first runs slow).
    const int warmups = a.warmup >= 0 ? a.warmup : (backend->device() == Device::cuda ? 1 : 0);
    std::unique_ptr<Trainer> trainer;
    int trainer_setting = -1;
    auto trainer_for = [&](int s) -> Trainer& {
        if (s != trainer_setting) {
            trainer.reset();
            trainer_setting = -1;  // (until the new one is made)
            trainer = std::make_unique<Trainer>(*backend, recipes[size_t(s)], data, o);
            trainer_setting = s;
            // (a warm-up run that diverges says nothing of the jobs' seeds: noted, not recorded)
            for (int w = 0; w < warmups; ++w) try {
                    trainer->run(a.seed + 1000003ull * (w + 1), true);
                } catch (const Diverged& e) {
                    note("[rank {}/{}] the warm-up run of {} diverged ({}); its jobs run as usual", comm.rank(),
                         comm.world(), settings[size_t(s)].label.empty() ? std::string("the recipe") : settings[size_t(s)].label,
                         e.what());
                }
        }
        return *trainer;
    };

    const std::string host = host_name();
    // each epoch's figures in the results line with --epoch-eval (test_acc per epoch); without it
    // (an epoch's test_acc would be null) the list is empty
    auto epochs_of = [&](const RunResult& rr) {
        nlohmann::json e = nlohmann::json::array();
        if (a.epoch_eval)
            for (const EpochStats& es : rr.epochs) e.push_back(epoch_json(es));
        return e;
    };
    // what every results line holds: the job, and where and by what it ran
    auto job_line = [&](const Job& job) {
        const SweepSetting& s = settings[size_t(job.setting)];
        return nlohmann::json{{"fingerprint", fps[size_t(job.setting)]},
                              {"setting", s.label},
                              {"overrides", s.overrides},
                              {"seed", job.seed},
                              {"preset", recipes[0].name},
                              {"n_train", n_train},
                              {"n_test", n_test},
                              {"rank", comm.rank()},
                              {"world", comm.world()},
                              {"host", host},
                              {"device", backend->name()},
                              {"git", git_revision()},
                              {"finished", utc_now()}};
    };
    for (int j : mine) {
        const Job& job = jobs[size_t(j)];
        const SweepSetting& s = settings[size_t(job.setting)];
        RunResult rr;
        try {
            rr = trainer_for(job.setting).run(job.seed);
        } catch (const Diverged& e) {
            // a run whose loss became non-finite (a grid of learning rates is for finding those):
            // recorded as such, so that the summary counts it and a restart does not run it again;
            // the other ranks' runs go on. Any other error still ends the sweep.
            nlohmann::json line = job_line(job);
            line["diverged"] = true;
            line["error"] = e.what();
            append_result_line(results, line);
            fmt::print("[rank {}/{}] job {}/{} diverged: seed {}{}{}: {}\n", comm.rank(), comm.world(), j + 1,
                       jobs.size(), job.seed, s.label.empty() ? "" : ", ", s.label, e.what());
            std::fflush(stdout);
            continue;
        }
        nlohmann::json line = job_line(job);
        line.update(nlohmann::json{{"test_accuracy", rr.test_accuracy},
                                   {"test_accuracy_tta", rr.test_accuracy_tta},
                                   {"train_seconds", rr.train_seconds},
                                   {"step_seconds", rr.step_seconds},
                                   {"images_per_second", rr.images_per_second},
                                   {"steps", rr.steps},
                                   {"epochs", epochs_of(rr)}});
        append_result_line(results, line);
        fmt::print(
            "[rank {}/{}] job {}/{} done: seed {}{}{}: accuracy {:.4f} (TTA; {:.4f} without) "
            "in {:.2f} s\n",
            comm.rank(), comm.world(), j + 1, jobs.size(), job.seed, s.label.empty() ? "" : ", ",
            s.label, rr.test_accuracy_tta, rr.test_accuracy, rr.train_seconds);
        std::fflush(stdout);
    }
    comm.barrier();  // every run of this sweep is in the file
    const double wall = std::chrono::duration<double>(clock::now() - t0).count();
    if (!comm.root()) return 0;

    const ResultsFile rf = read_results(results);
    nlohmann::json rows = nlohmann::json::array();
    auto shown = [](const SweepSetting& s) {
        return s.label.empty() ? std::string("(as given)") : s.label;
    };
    size_t width = 7;
    for (const SweepSetting& s : settings) width = std::max(width, shown(s).size());
    fmt::print(
        "\n{:<{}} | {:>3} | {:>8} | {:>7} | {:>7} | {:>7} | {:>6} | {:>9} | {:>7} | {:>7} | "
        "{:>7}\n",
        "setting", width, "n", "acc mean", "std", "min", "max", ">=94%", "secs mean", "std", "min",
        "max");
    fmt::print("{:-<{}}\n", "", width + 96);
    int finished = 0;
    for (size_t i = 0; i < settings.size(); ++i) {
        nlohmann::json row = summarize_setting(settings[i], fps[i], rf.lines, seeds);
        row["recipe"] = recipe_to_json(recipes[i]);  // (every key: base flags and grid setting resolved)
        const int n = row["n"].get<int>();
        finished += n;
        auto num = [&](const char* k) {  // (null: every run diverged; printed as nan)
            return row[k].is_null() ? std::numeric_limits<double>::quiet_NaN() : row[k].get<double>();
        };
        fmt::print(
            "{:<{}} | {:>3} | {:>8.4f} | {:>7.4f} | {:>7.4f} | {:>7.4f} | {:>5.0f}% | {:>9.2f} | "
            "{:>7.2f} | {:>7.2f} | {:>7.2f}\n",
            shown(settings[i]), width, n, num("accuracy_mean"), num("accuracy_std"), num("accuracy_min"),
            num("accuracy_max"), 100 * num("share_at_least_94"), num("train_seconds_mean"),
            num("train_seconds_std"), num("train_seconds_min"), num("train_seconds_max"));
        if (const int d = row["diverged"].get<int>(); d > 0 && d < n)
            fmt::print("{:<{}}   note: {} of the {} runs diverged (non-finite loss); the accuracy and seconds "
                       "are the other {}'s\n", "", width, d, n, n - d);
        else if (d > 0)
            fmt::print("{:<{}}   note: {} diverged (non-finite loss): no accuracy or seconds (null in the "
                       "summary)\n", "", width, d == 1 ? std::string("its run") : fmt::format("all {} runs", d));
        if (row["git"].size() > 1)  // (a results file added to by several builds)
            fmt::print("{:<{}}   note: runs of {} builds: git {}\n", "", width, row["git"].size(),
                       fmt::join(row["git"].get<std::vector<std::string>>(), ", "));
        rows.push_back(std::move(row));
    }
    const double per_hour = wall > 0 ? 3600.0 * double(pending.size()) / wall : 0.0;
    fmt::print(
        "\n{} of {} job{} in {}; this invocation ran {} in {:.1f} s on {} rank{}: {:.1f} runs "
        "per hour\n",
        finished, jobs.size(), jobs.size() == 1 ? "" : "s", results, pending.size(), wall, comm.world(),
        comm.world() == 1 ? "" : "s", per_hour);
    const nlohmann::json j = {{"program", build_json()},  // (this invocation's build)
                              {"preset", recipes[0].name},
                              {"results", results},
                              {"runs_per_setting", a.runs},
                              {"seeds", seeds},
                              {"jobs", jobs.size()},
                              {"jobs_finished", finished},
                              {"ranks", comm.world()},
                              {"communicator", comm.name()},
                              {"jobs_run_now", pending.size()},
                              {"wall_seconds", wall},
                              {"runs_per_hour", per_hour},
                              {"settings", rows}};
    write_file_atomic(summary, json_text(j, 2) + "\n");
    fmt::print("summary written to {}\n", summary);
    return 0;
}

}  // namespace

int cmd_sweep(const SweepArgs& a) {
    if (a.runs < 1) fail("--runs must be >= 1 (got {})", a.runs);
    auto comm = make_process_communicator("sweep");
    return run_on_all_ranks(*comm, [&] { return sweep_on_rank(a, *comm); });
}

}  // namespace sr
