// cifar10.cpp: CIFAR-10 on the host (contract in cifar10.h).
//
//  - read_cifar_file / write_cifar_file: the official binary format (label byte, then R, G, B
//    planes of 32x32), converted to and from NHWC uint8 in memory. A file is read whole, checked
//    (size, record count, labels) and only then converted: an error returns nothing.
//  - find_cifar10_dir / load_cifar10_dir / load_cifar10: where the data is and loading it.
//  - download_cifar10 (libcurl) and unpack_cifar10_archive (md5 with libmd, tar.gz with
//    libarchive): all-or-nothing; everything is unpacked into a temporary directory in the
//    cache root, which is renamed to cifar-10-batches-bin only when complete.
//  - make_synthetic_cifar10: a deterministic CIFAR-shaped stand-in with learnable classes.
// Every failure throws sr::Error naming the file (or directory, or URL) and the fault.
#include "data/cifar10.h"

#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <md5.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string_view>
#include <system_error>

#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"

namespace sr {

namespace fs = std::filesystem;

namespace {

constexpr const char* kDirName = "cifar-10-batches-bin";
constexpr const char* kBatchFiles[6] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                        "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};
constexpr int kPlane = kCifarSide * kCifarSide;  // 1024

// ---- small helpers -------------------------------------------------------------------------

struct FileCloser {
    void operator()(FILE* f) const { if (f) std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

// Removes a path (file or directory tree) when it goes out of scope, unless released.
struct RemoveOnExit {
    fs::path path;
    bool armed = true;
    explicit RemoveOnExit(fs::path p) : path(std::move(p)) {}
    RemoveOnExit(const RemoveOnExit&) = delete;
    RemoveOnExit& operator=(const RemoveOnExit&) = delete;
    ~RemoveOnExit() {
        if (!armed) return;
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

// A name no other process or call uses at the same time: pid, a counter and the clock.
std::string unique_suffix() {
    static std::atomic<uint64_t> counter{0};
    const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
    return fmt::format("{}-{}-{:x}", ::getpid(), counter++, uint64_t(t) & 0xffffff);
}

std::string errno_text() { return std::strerror(errno); }

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return (v && *v) ? v : nullptr;
}

// The cache root without throwing: "" when neither $XDG_CACHE_HOME nor $HOME is set.
std::string cache_root_or_empty() {
    if (const char* x = env("XDG_CACHE_HOME")) return (fs::path(x) / "speedrun").string();
    if (const char* h = env("HOME")) return (fs::path(h) / ".cache" / "speedrun").string();
    return "";
}

bool has_all_six(const fs::path& dir) {
    std::error_code ec;
    for (const char* f : kBatchFiles)
        if (!fs::is_regular_file(dir / f, ec)) return false;
    return true;
}

// For a message on file f missing in dir: where dir holds the archive's folder with the files
// (the folder above the data, a common slip), "; DIR/cifar-10-batches-bin has them".
std::string folder_inside(const std::string& dir, const char* f) {
    std::error_code ec;
    const fs::path inside = fs::path(dir) / "cifar-10-batches-bin";
    return fs::is_regular_file(inside / f, ec) ? fmt::format("; {} has them", inside.string()) : "";
}

// A directory named by the user (--data or $CIFAR10_DIR) must hold all six files.
void require_all_six(const std::string& dir, const char* from) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) fail("{}: no such directory (looked for CIFAR-10 there, from {})", dir, from);
    if (!fs::is_directory(dir, ec)) fail("{}: not a directory (looked for CIFAR-10 there, from {})", dir, from);
    for (const char* f : kBatchFiles) {
        const fs::path p = fs::path(dir) / f;
        if (fs::exists(p, ec) && !fs::is_regular_file(p, ec))
            fail("{}: not a regular file (a folder or a device; looked for CIFAR-10 in {}, from {})", p.string(),
                 dir, from);
        if (!fs::is_regular_file(p, ec))
            fail("{}: missing (looked for CIFAR-10 in {}, from {}; it needs data_batch_1..5.bin and "
                 "test_batch.bin{})",
                 p.string(), dir, from, folder_inside(dir, f));
    }
}

std::string to_lower(std::string s) {
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// Archive member names are "cifar-10-batches-bin/<file>", perhaps with a leading "./".
// Absolute paths and ".." components are refused outright.
bool unsafe_member_path(std::string_view p) {
    if (p.empty() || p.front() == '/') return true;
    size_t start = 0;
    while (start <= p.size()) {
        size_t end = p.find('/', start);
        if (end == std::string_view::npos) end = p.size();
        if (p.substr(start, end - start) == "..") return true;
        start = end + 1;
    }
    return false;
}

bool wanted_member(const std::string& name) {
    if (name == "batches.meta.txt") return true;
    for (const char* f : kBatchFiles)
        if (name == f) return true;
    return false;
}

struct ArchiveCloser {
    void operator()(archive* a) const { if (a) archive_read_free(a); }
};

std::string archive_error(archive* a) {
    const char* s = archive_error_string(a);
    return s ? s : "unknown libarchive error";
}

// Puts new_dir at target (both in the same directory): an existing target (incomplete, or
// we would not be here) is moved aside first and removed only once the new one is in place.
// Another process may have put a complete set there meanwhile (ranks of one job on one cache):
// that one is kept and false returned (new_dir is the caller's to remove). The cache folder is
// fsynced after the rename.
bool install_dir(const fs::path& new_dir, const fs::path& target) {
    std::error_code ec;
    fs::path old;
    if (fs::exists(fs::symlink_status(target, ec))) {
        if (has_all_six(target)) return false;
        old = target.parent_path() / fmt::format(".{}.old-{}", kDirName, unique_suffix());
        fs::rename(target, old, ec);
        if (ec) {
            if (has_all_six(target)) return false;
            // (gone meanwhile: another process moved it aside first; ours goes in below)
            if (fs::exists(fs::symlink_status(target, ec)))
                fail("{}: exists and cannot be moved aside to make room for the new data ({})", target.string(),
                     ec.message());
            old.clear();
        }
    }
    fs::rename(new_dir, target, ec);
    if (ec) {
        std::error_code ec2;
        if (!old.empty()) fs::rename(old, target, ec2);
        if (has_all_six(target)) {  // (another process's rename came first: theirs stays)
            if (!old.empty()) fs::remove_all(old, ec2);  // (ours moved aside, not put back)
            return false;
        }
        fail("{}: cannot rename the unpacked data to {} ({})", new_dir.string(), target.string(),
             ec.message());
    }
    if (!old.empty()) fs::remove_all(old, ec);
    fsync_folder_of(target.string());
    return true;
}

}  // namespace

// ---- the binary format ---------------------------------------------------------------------

namespace {

// Makes v hold n bytes (its old contents are not kept), asking the kernel for huge pages: touching
// fresh memory one 4 KiB page at a time costs more than reading and converting the data
// (measured: 150 MB in 0.45 s with 4 KiB pages, 0.03 s with 2 MiB pages, THP in madvise mode).
void resize_bytes(std::vector<uint8_t>& v, size_t n) {
    if (n > v.capacity()) {
        std::vector<uint8_t>().swap(v);
        v.reserve(n);
#ifdef MADV_HUGEPAGE
        const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
        const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
        const uintptr_t b = (p + page - 1) & ~(page - 1);
        if (p && n > b - p) ::madvise(reinterpret_cast<void*>(b), n - (b - p), MADV_HUGEPAGE);  // a hint only
#endif
    }
    v.resize(n);
}

// Reads one batch file whole into raw (reused between files) and checks it: size, record
// count, labels. Returns the number of records. Throws naming the file and the fault.
int read_checked(const std::string& path, bool expect_full, std::vector<uint8_t>& raw) {
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (!fs::exists(st)) fail("{}: missing", path);
    if (fs::is_directory(st)) fail("{}: is a directory, not a CIFAR-10 batch file", path);

    File f(std::fopen(path.c_str(), "rb"));
    if (!f) fail("{}: cannot open ({})", path, errno_text());
    if (std::fseek(f.get(), 0, SEEK_END) != 0) fail("{}: cannot seek ({})", path, errno_text());
    const long end = std::ftell(f.get());
    if (end < 0) fail("{}: cannot tell its size ({})", path, errno_text());
    std::rewind(f.get());
    const size_t size = size_t(end);

    const size_t full = size_t(kCifarPerFile) * kCifarRecord;
    if (size == 0)
        fail("{}: empty file (0 bytes; a CIFAR-10 batch is records of {} bytes{})", path, kCifarRecord,
             expect_full ? fmt::format(", {} of them", kCifarPerFile) : "");
    if (expect_full && size != full)
        fail("{}: size {} bytes is not {} records of {} bytes ({})", path, size, kCifarPerFile, kCifarRecord,
             size % kCifarRecord ? std::string(size < full ? "truncated?" : "too large")
                                 : fmt::format("it holds {} records", size / kCifarRecord));
    if (size % kCifarRecord)
        fail("{}: size {} bytes is not a whole number of {}-byte records (truncated?)", path, size,
             kCifarRecord);

    resize_bytes(raw, size);
    const size_t got = std::fread(raw.data(), 1, size, f.get());
    if (got != size)
        fail("{}: read {} of {} bytes ({})", path, got, size,
             std::ferror(f.get()) ? errno_text() : std::string("file shrank while reading"));

    const int n = int(size / kCifarRecord);
    for (int i = 0; i < n; ++i) {
        const uint8_t label = raw[size_t(i) * kCifarRecord];
        if (label > 9) fail("{}: record {} has label {} (must be 0..9)", path, i, label);
    }
    return n;
}

// n checked records (label byte, R plane, G plane, B plane) -> labels and NHWC images
void records_to_nhwc(const uint8_t* raw, int n, uint8_t* images, int32_t* labels) {
    for (int i = 0; i < n; ++i) {
        const uint8_t* rec = raw + size_t(i) * kCifarRecord;
        labels[i] = rec[0];
        const uint8_t *r = rec + 1, *g = r + kPlane, *b = g + kPlane;
        uint8_t* dst = images + size_t(i) * kCifarPixels;
        for (int p = 0; p < kPlane; ++p) {
            dst[3 * p + 0] = r[p];
            dst[3 * p + 1] = g[p];
            dst[3 * p + 2] = b[p];
        }
    }
}

}  // namespace

ImageSet read_cifar_file(const std::string& path, bool expect_full) {
    std::vector<uint8_t> raw;
    const int n = read_checked(path, expect_full, raw);
    ImageSet s;
    resize_bytes(s.images, size_t(n) * kCifarPixels);
    s.labels.resize(n);
    records_to_nhwc(raw.data(), n, s.images.data(), s.labels.data());
    s.n = n;
    return s;
}

void write_cifar_file(const std::string& path, const ImageSet& set, int first, int count) {
    if (first < 0 || count < 0 || first + count > set.n)
        fail("{}: cannot write records {}..{} of a set of {} images", path, first, first + count, set.n);
    if (set.images.size() < size_t(set.n) * kCifarPixels || set.labels.size() < size_t(set.n))
        fail("{}: the set claims {} images but holds {} pixel bytes and {} labels", path, set.n,
             set.images.size(), set.labels.size());
    std::vector<uint8_t> raw(size_t(count) * kCifarRecord);
    for (int i = 0; i < count; ++i) {
        const int label = set.labels[first + i];
        if (label < 0 || label > 9)
            fail("{}: image {} has label {} (must be 0..9)", path, first + i, label);
        uint8_t* dst = raw.data() + size_t(i) * kCifarRecord;
        dst[0] = uint8_t(label);
        const uint8_t* src = set.image(first + i);
        for (int p = 0; p < kPlane; ++p) {
            dst[1 + p] = src[3 * p + 0];
            dst[1 + kPlane + p] = src[3 * p + 1];
            dst[1 + 2 * kPlane + p] = src[3 * p + 2];
        }
    }
    // written beside the target, fsynced and renamed over it, so no half-written batch file is left
    write_file_atomic(path, std::string(reinterpret_cast<const char*>(raw.data()), raw.size()));
}

Cifar10 load_cifar10_dir(const std::string& dir) {
    // all six present before any is read, so a missing one is reported as such
    std::error_code ec;
    for (const char* f : kBatchFiles) {
        const fs::path p = fs::path(dir) / f;
        if (!fs::exists(p, ec))
            fail("{}: missing (CIFAR-10 in {} needs data_batch_1..5.bin and test_batch.bin{})", p.string(),
                 dir, folder_inside(dir, f));
    }
    // the five training files go straight into one buffer, through one reused read buffer
    Cifar10 d;
    std::vector<uint8_t> raw;
    for (int f = 0; f < 5; ++f) {
        const int n = read_checked((fs::path(dir) / kBatchFiles[f]).string(), true, raw);
        SR_CHECK(n == kCifarPerFile);
        if (f == 0) {  // allocated once the first file has passed its checks
            resize_bytes(d.train.images, size_t(5) * kCifarPerFile * kCifarPixels);
            d.train.labels.resize(size_t(5) * kCifarPerFile);
        }
        records_to_nhwc(raw.data(), n, d.train.images.data() + size_t(f) * kCifarPerFile * kCifarPixels,
                        d.train.labels.data() + size_t(f) * kCifarPerFile);
    }
    d.train.n = 5 * kCifarPerFile;
    const int n = read_checked((fs::path(dir) / kBatchFiles[5]).string(), true, raw);
    resize_bytes(d.test.images, size_t(n) * kCifarPixels);
    d.test.labels.resize(n);
    records_to_nhwc(raw.data(), n, d.test.images.data(), d.test.labels.data());
    d.test.n = n;
    d.source = dir;
    d.synthetic = false;
    return d;
}

// ---- where the data is ---------------------------------------------------------------------

std::string find_cifar10_dir(const std::string& data_flag) {
    if (!data_flag.empty()) {
        require_all_six(data_flag, "--data");
        return data_flag;
    }
    if (const char* e = env("CIFAR10_DIR")) {
        require_all_six(e, "$CIFAR10_DIR");
        return e;
    }
    const std::string shared = std::string("../shared/data/") + kDirName;
    if (has_all_six(shared)) return shared;
    const std::string root = cache_root_or_empty();
    if (!root.empty()) {
        const std::string cached = (fs::path(root) / kDirName).string();
        if (has_all_six(cached)) return cached;
    }
    return "";
}

std::string cifar10_cache_root() {
    const std::string r = cache_root_or_empty();
    if (r.empty())
        fail("no user cache directory for CIFAR-10: neither $XDG_CACHE_HOME nor $HOME is set "
             "(give the data with --data DIR or $CIFAR10_DIR)");
    return r;
}

// ---- md5, unpacking, downloading -----------------------------------------------------------

std::string md5_file(const std::string& path) {
    File f(std::fopen(path.c_str(), "rb"));
    if (!f) fail("{}: cannot open to compute its md5 ({})", path, errno_text());
    MD5_CTX ctx;
    MD5Init(&ctx);
    std::vector<uint8_t> buf(1 << 20);
    size_t got;
    while ((got = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) MD5Update(&ctx, buf.data(), got);
    if (std::ferror(f.get())) fail("{}: read error while computing its md5 ({})", path, errno_text());
    uint8_t digest[MD5_DIGEST_LENGTH];
    MD5Final(digest, &ctx);
    std::string hex;
    for (uint8_t b : digest) hex += fmt::format("{:02x}", b);
    return hex;
}

std::string unpack_cifar10_archive(const std::string& archive_path, const std::string& cache_root,
                                   const std::string& expected_md5) {
    // 1. the md5, before anything is written
    const std::string md5 = md5_file(archive_path);
    if (md5 != to_lower(expected_md5))
        fail("{}: has md5 {}, expected {} (corrupt or incomplete download?)", archive_path, md5,
             to_lower(expected_md5));

    // 2. unpack the wanted members into a temporary directory inside cache_root
    std::error_code ec;
    fs::create_directories(cache_root, ec);
    if (ec) fail("{}: cannot create the cache directory ({})", cache_root, ec.message());
    const fs::path target = fs::path(cache_root) / kDirName;
    const fs::path tmp = fs::path(cache_root) / fmt::format(".{}.tmp-{}", kDirName, unique_suffix());
    if (!fs::create_directory(tmp, ec) || ec)
        fail("{}: cannot create a temporary directory to unpack into ({})", tmp.string(),
             ec ? ec.message() : "it exists");
    RemoveOnExit cleanup(tmp);

    std::unique_ptr<archive, ArchiveCloser> a(archive_read_new());
    if (!a) fail("{}: cannot start libarchive", archive_path);
    archive_read_support_filter_gzip(a.get());
    archive_read_support_format_tar(a.get());
    if (archive_read_open_filename(a.get(), archive_path.c_str(), 1 << 16) != ARCHIVE_OK)
        fail("{}: cannot unpack as tar.gz ({})", archive_path, archive_error(a.get()));

    const std::string prefix = std::string(kDirName) + "/";
    std::vector<char> buf(1 << 16);
    for (;;) {
        archive_entry* e = nullptr;
        const int r = archive_read_next_header(a.get(), &e);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN) fail("{}: cannot unpack as tar.gz ({})", archive_path, archive_error(a.get()));
        const char* pn = archive_entry_pathname(e);
        if (!pn) fail("{}: an entry has no readable path", archive_path);
        std::string name = pn;
        if (unsafe_member_path(name))
            fail("{}: entry '{}' has an absolute path or '..' (refusing to unpack)", archive_path, name);
        while (name.rfind("./", 0) == 0) name.erase(0, 2);
        if (name.rfind(prefix, 0) != 0 || archive_entry_filetype(e) != AE_IFREG) continue;
        const std::string base = name.substr(prefix.size());
        if (!wanted_member(base)) continue;

        const fs::path out = tmp / base;
        File f(std::fopen(out.c_str(), "wb"));
        if (!f) fail("{}: cannot create ({})", out.string(), errno_text());
        for (;;) {
            const la_ssize_t got = archive_read_data(a.get(), buf.data(), buf.size());
            if (got < 0)
                fail("{}: cannot unpack {} ({})", archive_path, name, archive_error(a.get()));
            if (got == 0) break;
            if (std::fwrite(buf.data(), 1, size_t(got), f.get()) != size_t(got))
                fail("{}: write failed ({})", out.string(), errno_text());
        }
        // (on disk before the folder is renamed into place: a crash soon after must not leave a
        // complete-looking cache of short files, which nothing would download again)
        if (std::fflush(f.get()) != 0 || (::fsync(::fileno(f.get())) != 0 && errno != EINVAL))
            fail("{}: write failed ({})", out.string(), errno_text());
        if (std::fclose(f.release()) != 0) fail("{}: write failed ({})", out.string(), errno_text());
    }
    for (const char* f : kBatchFiles)
        if (!fs::is_regular_file(tmp / f, ec))
            fail("{}: has no {}{} (not the CIFAR-10 binary archive?)", archive_path, prefix, f);
    fsync_folder_of((tmp / kBatchFiles[0]).string());

    // 3. all there: put it in place in one rename (or keep the set another process put there
    // meanwhile; ours is removed)
    if (install_dir(tmp, target)) cleanup.armed = false;
    return target.string();
}

namespace {

// Where the download goes, and why writing there failed (a full disk is not a network error).
struct DownloadSink {
    FILE* file = nullptr;
    size_t bytes = 0;
    int write_errno = 0;
    bool too_large = false;
};

size_t curl_write(char* data, size_t size, size_t nmemb, void* sink_ptr) {
    auto* sink = static_cast<DownloadSink*>(sink_ptr);
    const size_t n = size * nmemb;
    if (sink->bytes + n > kCifarArchiveMaxBytes) {  // (older libcurl checks the limit only up front)
        sink->too_large = true;
        return 0;
    }
    errno = 0;  // (what a short write leaves is its reason; an older value is not)
    const size_t w = std::fwrite(data, 1, n, sink->file);
    if (w != n && sink->write_errno == 0) sink->write_errno = errno ? errno : EIO;
    sink->bytes += w;
    return w;
}

void curl_init_once() {
    static std::once_flag once;
    static CURLcode rc = CURLE_OK;
    std::call_once(once, [] { rc = curl_global_init(CURL_GLOBAL_DEFAULT); });
    if (rc != CURLE_OK) fail("cannot start libcurl ({})", curl_easy_strerror(rc));
}

struct CurlCloser {
    void operator()(CURL* c) const { if (c) curl_easy_cleanup(c); }
};

}  // namespace

std::string download_cifar10(const std::string& cache_root, const std::string& url) {
    std::error_code ec;
    fs::create_directories(cache_root, ec);
    if (ec) fail("{}: cannot create the cache directory ({})", cache_root, ec.message());
    const fs::path part = fs::path(cache_root) / fmt::format(".cifar-10-binary.tar.gz.part-{}", unique_suffix());
    RemoveOnExit cleanup(part);  // the archive is never kept, complete or not

    curl_init_once();
    std::unique_ptr<CURL, CurlCloser> c(curl_easy_init());
    if (!c) fail("cannot start libcurl to download {}", url);
    {
        File f(std::fopen(part.c_str(), "wb"));
        if (!f) fail("{}: cannot create ({})", part.string(), errno_text());
        char err[CURL_ERROR_SIZE] = {};
        curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
        DownloadSink sink{f.get()};
        curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, curl_write);
        curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &sink);
        // the archive is 170 MB: a server (or a proxy's page) that sends more is not it, and
        // must not fill the disk before the md5 says so
        curl_easy_setopt(c.get(), CURLOPT_MAXFILESIZE_LARGE, curl_off_t(kCifarArchiveMaxBytes));
        curl_easy_setopt(c.get(), CURLOPT_ERRORBUFFER, err);
        curl_easy_setopt(c.get(), CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c.get(), CURLOPT_FAILONERROR, 1L);
        curl_easy_setopt(c.get(), CURLOPT_CONNECTTIMEOUT, 30L);
        curl_easy_setopt(c.get(), CURLOPT_LOW_SPEED_LIMIT, 1024L);  // abort below 1 KiB/s ...
        curl_easy_setopt(c.get(), CURLOPT_LOW_SPEED_TIME, 60L);     // ... for a minute
        curl_easy_setopt(c.get(), CURLOPT_USERAGENT, "cifar-speedrun");
        std::fprintf(stderr, "downloading %s to %s\n", url.c_str(), cache_root.c_str());
        const CURLcode rc = curl_easy_perform(c.get());
        if (rc == CURLE_WRITE_ERROR && sink.write_errno != 0)
            fail("{}: write failed after {} bytes of {} ({})", part.string(), sink.bytes, url,
                 std::strerror(sink.write_errno));
        if (rc == CURLE_FILESIZE_EXCEEDED || sink.too_large)
            fail("downloading {} failed: it is larger than {} bytes, so not the CIFAR-10 archive (170 MB)", url,
                 kCifarArchiveMaxBytes);
        if (rc != CURLE_OK)
            fail("downloading {} failed: {} (give the data with --data DIR or $CIFAR10_DIR instead)", url,
                 err[0] ? err : curl_easy_strerror(rc));
        if (std::fclose(f.release()) != 0) fail("{}: write failed ({})", part.string(), errno_text());
    }
    try {
        return unpack_cifar10_archive(part.string(), cache_root, kCifarArchiveMd5);
    } catch (const Error& e) {  // the temporary file is gone by now: say where it came from
        fail("{} (downloaded from {})", e.what(), url);
    }
}

Cifar10 load_cifar10(const std::string& data_flag, bool allow_download) {
    std::string dir = find_cifar10_dir(data_flag);
    if (dir.empty()) {
        const std::string root = cache_root_or_empty();
        const std::string cached =
            root.empty() ? std::string("(no cache: $HOME unset)") : (fs::path(root) / kDirName).string();
        if (!allow_download) {
            std::error_code ec;
            const fs::path cwd = fs::current_path(ec);
            fail("CIFAR-10 not found: --data and $CIFAR10_DIR are not set, and neither "
                 "../shared/data/{} (from {}) nor {} holds data_batch_1..5.bin and test_batch.bin; "
                 "downloading is off. Give the directory with --data DIR or $CIFAR10_DIR, or allow "
                 "the download",
                 kDirName, cwd.string(), cached);
        }
        const char* mirror = env("SPEEDRUN_CIFAR10_URL");  // (a mirror of the same archive)
        dir = download_cifar10(cifar10_cache_root(), mirror ? mirror : kCifarArchiveUrl);
    }
    return load_cifar10_dir(dir);
}

// ---- the synthetic stand-in ----------------------------------------------------------------

namespace {

// One pattern per class, per channel: a base colour plus three low-frequency 2D cosines with
// whole numbers of cycles per 32 pixels, so the pattern is periodic and a shift is a wrap.
std::vector<float> class_patterns(Rng& rng) {
    constexpr double kTwoPi = 6.283185307179586;
    std::vector<float> pat(size_t(10) * kCifarPixels);
    for (int k = 0; k < 10; ++k)
        for (int c = 0; c < 3; ++c) {
            const float base = rng.uniform(-50.f, 50.f);
            int fx[3], fy[3];
            float amp[3], phase[3];
            for (int j = 0; j < 3; ++j) {
                fx[j] = int(rng.below(3));
                fy[j] = int(rng.below(3));
                if (fx[j] == 0 && fy[j] == 0) fx[j] = 1;
                amp[j] = rng.uniform(15.f, 35.f);
                phase[j] = rng.uniform(0.f, float(kTwoPi));
            }
            for (int y = 0; y < kCifarSide; ++y)
                for (int x = 0; x < kCifarSide; ++x) {
                    double v = base;
                    for (int j = 0; j < 3; ++j)
                        v += amp[j] * std::cos(kTwoPi * (fx[j] * x + fy[j] * y) / kCifarSide + phase[j]);
                    pat[size_t(k) * kCifarPixels + (y * kCifarSide + x) * 3 + c] = float(v);
                }
        }
    return pat;
}

// Roughly normal noise, cheaply: the centred sum of four 16-bit uniforms, scaled to variance 1.
float cheap_normal(Rng& rng) {
    const uint64_t r = rng.next();
    const float s = float(r & 0xffff) + float((r >> 16) & 0xffff) + float((r >> 32) & 0xffff) +
                    float(r >> 48);
    return (s * (1.f / 65536.f) - 2.f) * 1.7320508f;  // var of the sum of 4 U(0,1) is 1/3
}

ImageSet synthetic_set(int n, const std::vector<float>& pat, Rng& rng) {
    ImageSet s;
    s.n = n;
    s.labels.resize(n);
    for (int i = 0; i < n; ++i) s.labels[i] = i % 10;  // balanced ...
    for (int i = n - 1; i > 0; --i) std::swap(s.labels[i], s.labels[rng.below(uint32_t(i + 1))]);  // ... shuffled
    resize_bytes(s.images, size_t(n) * kCifarPixels);
    for (int i = 0; i < n; ++i) {
        const float* p = pat.data() + size_t(s.labels[i]) * kCifarPixels;
        const int dx = int(rng.below(7)) - 3, dy = int(rng.below(7)) - 3;  // shift of up to 3 px
        const float gain = rng.uniform(0.8f, 1.2f);                          // contrast
        const float bright = rng.uniform(-12.f, 12.f);                       // brightness
        uint8_t* dst = s.images.data() + size_t(i) * kCifarPixels;
        for (int y = 0; y < kCifarSide; ++y)
            for (int x = 0; x < kCifarSide; ++x) {
                const int sy = (y + dy) & (kCifarSide - 1), sx = (x + dx) & (kCifarSide - 1);
                for (int c = 0; c < 3; ++c) {
                    const float v = 128.f + bright + gain * p[(sy * kCifarSide + sx) * 3 + c] +
                                    20.f * cheap_normal(rng);
                    dst[(y * kCifarSide + x) * 3 + c] = uint8_t(std::clamp(std::lround(v), 0L, 255L));
                }
            }
    }
    return s;
}

}  // namespace

Cifar10 make_synthetic_cifar10(int n_train, int n_test, uint64_t seed) {
    if (n_train < 0 || n_test < 0)
        fail("synthetic CIFAR-10: image counts must not be negative (got {} train, {} test)", n_train, n_test);
    Rng rng(seed);
    const std::vector<float> pat = class_patterns(rng);
    Cifar10 d;
    d.train = synthetic_set(n_train, pat, rng);
    d.test = synthetic_set(n_test, pat, rng);
    d.source = fmt::format("synthetic ({} train, {} test, seed {})", n_train, n_test, seed);
    d.synthetic = true;
    return d;
}

}  // namespace sr
