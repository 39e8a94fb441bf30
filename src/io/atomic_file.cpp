// atomic_file.cpp: see atomic_file.h.
#include "io/atomic_file.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/json_input.h"

namespace sr {
namespace fs = std::filesystem;

void write_all(int fd, const char* p, size_t n, const std::string& path) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail("{}: write failed: {}", path, std::strerror(errno));
        }
        if (w == 0)  // (no error and no progress: some FUSE file systems; retrying would spin)
            fail("{}: write failed: no bytes written", path);
        p += w;
        n -= size_t(w);
    }
}

namespace {
void make_parent(const std::string& path) {
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) {
        std::error_code ec;
        fs::create_directories(parent, ec);
        if (ec) fail("{}: cannot create directory {}: {}", path, parent.string(), ec.message());
    }
}

// The process's umask, read without changing it where /proc says it (Linux 4.7 and later);
// else by setting and restoring it once.
mode_t process_umask() {
    static const mode_t mask = [] {
        if (FILE* f = std::fopen("/proc/self/status", "r")) {
            char line[256];
            unsigned m = 0;
            bool found = false;
            while (!found && std::fgets(line, sizeof line, f)) found = std::sscanf(line, "Umask: %o", &m) == 1;
            std::fclose(f);
            if (found) return mode_t(m);
        }
        const mode_t m = ::umask(022);
        ::umask(m);
        return m;
    }();
    return mask;
}
}  // namespace

void fsync_folder_of(const std::string& path) {
    // Best effort: the file is in place already, so a folder that cannot be opened (no read
    // permission: a "drop" folder) or synced (some network and FUSE file systems) costs only the
    // durability of the new name, said once, not the write.
    fs::path dir = fs::path(path).parent_path();
    if (dir.empty()) dir = ".";
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int e = 0;
    if (fd < 0) {
        e = errno;
    } else {
        if (::fsync(fd) != 0 && errno != EINVAL) e = errno;  // (EINVAL: folders take no fsync there)
        ::close(fd);
    }
    static std::atomic<bool> warned{false};
    if (e != 0 && !warned.exchange(true))
        std::fprintf(stderr,
                     "speedrun: warning: %s is written, but its folder %s could not be synced (%s): a crash "
                     "soon after may lose the new file (said once)\n",
                     path.c_str(), dir.c_str(), std::strerror(e));
}

namespace {
const char* special_kind(const fs::file_status& ts) {
    return fs::is_character_file(ts) || fs::is_block_file(ts) ? "device"
           : fs::is_fifo(ts)                                ? "FIFO"
           : fs::is_socket(ts)                              ? "socket"
                                                            : "special file";
}
}  // namespace

std::string output_target(const std::string& path) {
    std::error_code ec;
    const fs::file_status st = fs::symlink_status(path, ec);
    if (ec || !fs::exists(st)) return path;
    const fs::file_status ts = fs::status(path, ec);  // (through links)
    if (!ec && fs::exists(ts)) {
        if (!fs::is_regular_file(ts) && !fs::is_directory(ts))
            fail("{}: not a regular file (a {}): name a file to write", path, special_kind(ts));
        if (!fs::is_symlink(st)) return path;
        const fs::path c = fs::canonical(path, ec);
        return ec ? path : c.string();
    }
    // a dangling link, followed by hand: its target is where the file goes
    fs::path t = path;
    for (int hops = 0; fs::is_symlink(fs::symlink_status(t, ec)); ++hops) {
        if (hops == 40) fail("{}: too many levels of symbolic links", path);
        const fs::path next = fs::read_symlink(t, ec);
        if (ec) fail("{}: {}", path, ec.message());
        t = next.is_absolute() ? next : t.parent_path() / next;
    }
    return t.string();
}

void check_output_path(const std::string& given, const char* flag, bool appends) {
    std::error_code ec;
    if (fs::is_directory(given, ec)) fail("{} {}: is a directory", flag, given);
    if (!given.empty() && given.back() == '/') fail("{} {}: names a folder, not a file", flag, given);
    // an appending writer (--log) opens what is there, a device or a pipe too (/dev/null,
    // /dev/stdout): writable is enough
    if (appends) {
        const fs::file_status ts = fs::status(given, ec);
        if (!ec && fs::exists(ts) && !fs::is_regular_file(ts)) {
            if (::access(given.c_str(), W_OK) != 0) fail("{} {}: {}", flag, given, std::strerror(errno));
            return;
        }
    }
    std::string path;
    try {
        path = output_target(given);  // (a link's target is what is written)
    } catch (const Error& e) {
        fail("{} {}", flag, e.what());
    }
    // (the writers' temporary names are as short as the probe's; the target's own name is not)
    if (const std::string name = fs::path(path).filename().string(); name.size() > 255)
        fail("{} {}: the file name is {} bytes long; at most 255", flag, given, name.size());
    fs::path dir = fs::path(path).parent_path();
    if (dir.empty()) dir = ".";
    while (true) {
        const fs::file_status st = fs::symlink_status(dir, ec);
        if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
            fail("{} {}: {}: {}", flag, given, dir.string(), ec.message());
        if (fs::exists(st)) break;
        const fs::path up = dir.parent_path();
        if (dir == "." || up == dir) fail("{} {}: {} does not exist", flag, given, dir.string());
        dir = up.empty() ? fs::path(".") : up;
    }
    if (!fs::is_directory(dir, ec)) fail("{} {}: {} is not a directory", flag, given, dir.string());
    // A file made and removed there, as the writers make their temporary files: access(W_OK)
    // says yes to root almost everywhere (/proc, a read-only mount's permissions), this does not.
    // mkstemp: a new name, O_EXCL (no one else's file or link is opened or removed).
    std::string probe = (dir / ".speedrun-probe.XXXXXX").string();
    const int fd = ::mkstemp(probe.data());
    if (fd < 0) fail("{} {}: cannot write in {}: {}", flag, given, dir.string(), std::strerror(errno));
    ::close(fd);
    ::unlink(probe.c_str());
    if (fs::exists(path, ec) && ::access(path.c_str(), W_OK) != 0)
        fail("{} {}: {}", flag, given, std::strerror(errno));
}

std::string same_file_key(const std::string& path) {
    std::error_code ec;
    std::string target = path;
    try {
        target = output_target(path);
    } catch (const Error&) {  // (a device or pipe: itself)
    }
    const fs::path key = fs::weakly_canonical(fs::absolute(target), ec);
    return ec ? fs::absolute(path).lexically_normal().string() : key.string();
}

void check_distinct_outputs(const std::vector<std::pair<std::string, std::string>>& outputs) {
    std::vector<std::pair<fs::path, const std::pair<std::string, std::string>*>> seen;
    for (const auto& o : outputs) {
        if (o.first.empty()) continue;
        fs::path key = same_file_key(o.first);
        for (const auto& [k, other] : seen)
            if (k == key)
                fail("{} {} and {} {} are the same file: each needs its own", other->second,
                     other->first, o.second, o.first);
        seen.emplace_back(key, &o);
    }
}

void check_inputs_kept(const std::vector<std::pair<std::string, std::string>>& outputs,
                       const std::vector<std::pair<std::string, std::string>>& inputs) {
    // one file: the same device and inode (through links; hard links too). Only a regular file
    // read as an input can be lost: a terminal or pipe (--config /dev/stdin beside --log
    // /dev/stdout) is not replaced by an output.
    for (const auto& in : inputs) {
        struct stat si {};
        if (in.first.empty() || ::stat(in.first.c_str(), &si) != 0 || !S_ISREG(si.st_mode)) continue;
        for (const auto& out : outputs) {
            struct stat so {};
            if (!out.first.empty() && ::stat(out.first.c_str(), &so) == 0 && so.st_dev == si.st_dev &&
                so.st_ino == si.st_ino)
                fail("{} {} is the file {} {} names: writing it would replace that input; name another file",
                     out.second, out.first, in.second, in.first);
        }
    }
}

void make_parent_folders(const std::string& path) { make_parent(path); }

TempDirBeside::TempDirBeside(const std::string& path) {
    make_parent(path);
    const fs::path parent = fs::path(path).parent_path();
    std::string t = ((parent.empty() ? fs::path(".") : parent) / ".speedrun-tmp.XXXXXX").string();
    if (!::mkdtemp(t.data())) fail("{}: cannot make a temporary folder beside it: {}", path, std::strerror(errno));
    dir_ = t;
}

TempDirBeside::~TempDirBeside() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

bool program_on_path(const std::string& name) {
    const char* env = std::getenv("PATH");
    std::string paths = env ? env : "/usr/local/bin:/usr/bin:/bin";
    size_t start = 0;
    while (start <= paths.size()) {
        const size_t end = std::min(paths.find(':', start), paths.size());
        const std::string dir = end > start ? paths.substr(start, end - start) : ".";
        if (::access((fs::path(dir) / name).c_str(), X_OK) == 0) return true;
        start = end + 1;
    }
    return false;
}

void rename_durably(const std::string& from, const std::string& to) {
    const int fd = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("{}: cannot open {} to fsync it: {}", to, from, std::strerror(errno));
    const int rc = ::fsync(fd);
    const int e = errno;
    ::close(fd);
    if (rc != 0 && e != EINVAL) fail("{}: fsync of {} failed: {}", to, from, std::strerror(e));
    if (::rename(from.c_str(), to.c_str()) != 0)
        fail("{}: cannot rename {} into place: {}", to, from, std::strerror(errno));
    fsync_folder_of(to);
}

void write_file_atomic(const std::string& given, const std::string& content) {
    const std::string path = output_target(given);
    make_parent(path);
    const fs::path parent = fs::path(path).parent_path();
    // mkstemp: a new file of our own (O_EXCL: no one else's file or link is written through), a
    // name of fixed length (as check_output_path's probe)
    std::string tmp = ((parent.empty() ? fs::path(".") : parent) / ".speedrun-tmp.XXXXXX").string();
    const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
    if (fd < 0) fail("{}: cannot create a temporary file beside it: {}", path, std::strerror(errno));
    try {
        // the mode open(path, O_CREAT, 0644) would give (mkstemp makes 0600), or the replaced
        // file's; where the file system takes no mode (a mount of another owner) it stays as made
        struct stat old {};
        const mode_t mode = ::stat(path.c_str(), &old) == 0 && S_ISREG(old.st_mode)
                                ? (old.st_mode & 07777)
                                : (0644 & ~process_umask());
        (void)::fchmod(fd, mode);
        write_all(fd, content.data(), content.size(), fmt::format("{} (temporary file {})", path, tmp));
        if (::fsync(fd) != 0) fail("{}: fsync of its temporary file {} failed: {}", path, tmp, std::strerror(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    if (::close(fd) != 0) {  // (NFS may report a failed write only here)
        const int e = errno;
        ::unlink(tmp.c_str());
        fail("{}: closing its temporary file {} failed: {}", path, tmp, std::strerror(e));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        fail("{}: cannot rename the temporary file into place: {}", path, std::strerror(e));
    }
    fsync_folder_of(path);  // (else a crash soon after can lose the rename)
}

JsonlLog::JsonlLog(const std::string& path) : path_(path) {
    make_parent(path);
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("{}: cannot open the log for appending: {}", path, std::strerror(errno));
    // a log whose last line was cut short (a full disk, a crash mid-write): the next line starts
    // on a line of its own, so that only the cut line is lost (a log that cannot be read back,
    // or a device or pipe, is taken as it is)
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        const int rd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        char last = '\n';
        if (rd >= 0) {
            torn_ = ::pread(rd, &last, 1, st.st_size - 1) == 1 && last != '\n';
            ::close(rd);
        }
    }
}

JsonlLog::~JsonlLog() {
    if (fd_ >= 0) ::close(fd_);
}

void JsonlLog::write(const nlohmann::json& j) {
    if (fd_ < 0) return;
    std::string line = torn_ ? "\n" : "";
    line += json_text(j);
    line += '\n';
    try {
        write_all(fd_, line.data(), line.size(), path_);  // O_APPEND: one write, one whole line
        torn_ = false;
        if (::fsync(fd_) != 0 && errno != EINVAL) fail("{}: fsync failed: {}", path_, std::strerror(errno));
    } catch (const Error& e) {
        // a log that cannot be written (a full disk) does not stop the run it records: said
        // once, and the log ends there
        std::fprintf(stderr, "speedrun: warning: %s; the log stops here (the run goes on)\n", e.what());
        ::close(fd_);
        fd_ = -1;
    }
}

}  // namespace sr
