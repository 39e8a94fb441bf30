// atomic_file.h: files that are never seen half-written. write_file_atomic writes a temporary
// file beside the target, fsyncs it and renames it over the target; JsonlLog appends one whole
// line per write() and fsyncs, so a crash loses at most the line being written.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace sr {

// (a symbolic link at path stays: the file it points to is replaced; see output_target). The
// temporary file is a new one of our own (.speedrun-tmp.XXXXXX beside the target); it takes the
// mode of the file it replaces, else 0644 less the umask. After the rename the folder is fsynced
// (fsync_folder_of).
void write_file_atomic(const std::string& path, const std::string& content);

// fsyncs the folder that holds path, so that a rename or a new file there survives a crash
// (a rename is durable only once its folder is). Best effort: where the folder cannot be opened
// or synced, a warning (once a process) and no error: the file itself is in place.
void fsync_folder_of(const std::string& path);

// A file made by another writer (gnuplot, graphviz) put in place: fsynced, renamed to `to` (on
// the same file system), the folder fsynced; fails naming `to`.
void rename_durably(const std::string& from, const std::string& to);

// The file that writing to path replaces: path itself, or the file a symbolic link there points
// to (the link stays a link). Fails, naming path, where an entry there is a device, a FIFO or a
// socket: a temporary file renamed over it would replace it (/dev/null, as root) with a file.
std::string output_target(const std::string& path);

// Before long work whose results go to path (--checkpoint, --summary-json, ...): fails, naming
// the flag and the path, unless a file can be written there: path is not a directory, a file can
// be made (and is, and removed again) in its folder or, where that is missing (the writers make
// it), in the nearest folder above it that exists, and an existing file at path is writable. So a
// bad path stops a run at its start, not after it; nothing is left behind. A file name longer than
// 255 bytes is refused here too.
// appends: for a writer that appends to what is there (--log, sweep's --results), where an
// existing device or pipe (/dev/null, /dev/stdout) is fine when writable.
void check_output_path(const std::string& path, const char* flag, bool appends = false);

// Fails, naming both flags, where two of the (path, flag) outputs are one file (after links and
// "./"): the later write would replace the earlier (a summary over the checkpoint). Empty paths
// are skipped.
// A name for the file a write to path reaches (links followed, "./" and ".." gone): two paths
// with the same key are one file.
std::string same_file_key(const std::string& path);

void check_distinct_outputs(const std::vector<std::pair<std::string, std::string>>& outputs);

// Fails, naming both flags, where an output (path, flag) is one of the inputs (path, flag) that the
// command reads (export --onnx over its --checkpoint, train --summary-json over its --config).
// Empty paths are skipped.
void check_inputs_kept(const std::vector<std::pair<std::string, std::string>>& outputs,
                       const std::vector<std::pair<std::string, std::string>>& inputs);

// Makes the folders above path that are missing (for writers other than write_file_atomic:
// gnuplot, graphviz).
void make_parent_folders(const std::string& path);

// A folder of our own beside `path` (".speedrun-tmp.XXXXXX" in its folder, made where missing):
// on the same file system, so what is made in it can be renamed into place (the folder itself
// too), and covered by the writability check of path's flag. Removed with what is left in it
// when the object goes (a folder renamed away is gone already).
class TempDirBeside {
public:
    explicit TempDirBeside(const std::string& path);
    ~TempDirBeside();
    TempDirBeside(const TempDirBeside&) = delete;
    TempDirBeside& operator=(const TempDirBeside&) = delete;
    const std::string& path() const { return dir_; }

private:
    std::string dir_;
};

// Whether an executable of this name is on $PATH (gnuplot, dot).
bool program_on_path(const std::string& name);

// write() all n bytes to fd (retrying short writes and EINTR); errors name path.
void write_all(int fd, const char* p, size_t n, const std::string& path);

class JsonlLog {
public:
    JsonlLog() = default;
    explicit JsonlLog(const std::string& path);  // appends; creates parent dirs
    ~JsonlLog();
    JsonlLog(const JsonlLog&) = delete;
    JsonlLog& operator=(const JsonlLog&) = delete;
    bool open() const { return fd_ >= 0; }
    void write(const nlohmann::json& j);
    const std::string& path() const { return path_; }

private:
    std::string path_;
    int fd_ = -1;
    bool torn_ = false;  // the file ends without a newline: the next line starts with one
};

}  // namespace sr
