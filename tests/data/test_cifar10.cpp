// test_cifar10.cpp: the CIFAR-10 host code (src/data/cifar10.h): the binary format both ways
// (plane layout checked byte by byte), every bad input with the message it must give, where
// the data is looked for, md5, unpacking tar.gz archives that the tests build themselves with
// libarchive's writer (no network is used), the synthetic stand-in, and, when
// ../shared/data/cifar-10-batches-bin exists, the real data set's counts and channel means.
#include <archive.h>
#include <archive_entry.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/cifar10.h"
#include "test_util.h"

namespace sr {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::error_of;

const char* const kSix[6] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                             "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};

// ---- helpers -------------------------------------------------------------------------------

// A fresh directory under the system temp dir, removed with everything in it at the end.
struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
        path = fs::temp_directory_path() /
               ("speedrun-test-cifar-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) +
                "-" + std::to_string(t));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string operator/(const std::string& name) const { return (path / name).string(); }
    std::string str() const { return path.string(); }
};

// Sets (or unsets, with nullopt) an environment variable and restores it at the end.
struct EnvGuard {
    std::string name;
    std::optional<std::string> old;
    EnvGuard(std::string n, std::optional<std::string> value) : name(std::move(n)) {
        if (const char* v = std::getenv(name.c_str())) old = v;
        if (value) ::setenv(name.c_str(), value->c_str(), 1);
        else ::unsetenv(name.c_str());
    }
    ~EnvGuard() {
        if (old) ::setenv(name.c_str(), old->c_str(), 1);
        else ::unsetenv(name.c_str());
    }
};

// Changes the working directory and changes it back at the end.
struct CwdGuard {
    fs::path old = fs::current_path();
    explicit CwdGuard(const fs::path& to) { fs::current_path(to); }
    ~CwdGuard() {
        std::error_code ec;
        fs::current_path(old, ec);
    }
};

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    ASSERT_TRUE(f.good()) << "cannot write " << path;
}

std::string read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

// n images of seeded random bytes, labels i % 10
ImageSet random_set(int n, uint64_t seed) {
    Rng r(seed);
    ImageSet s;
    s.n = n;
    s.images.resize(size_t(n) * kCifarPixels);
    for (auto& b : s.images) b = uint8_t(r.next() >> 56);
    for (int i = 0; i < n; ++i) s.labels.push_back(i % 10);
    return s;
}

// A directory with the six batch files, `per` random records each.
void write_six(const TempDir& dir, int per, uint64_t seed) {
    for (int f = 0; f < 6; ++f) write_cifar_file(dir / kSix[f], random_set(per, seed + f), 0, per);
}

// Writes a tar.gz with libarchive's writer: (member path, content) pairs, plus directory entries
// for names ending in '/'.
void write_tar_gz(const std::string& path, const std::vector<std::pair<std::string, std::string>>& members) {
    archive* a = archive_write_new();
    ASSERT_NE(a, nullptr);
    ASSERT_EQ(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    ASSERT_EQ(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK) << archive_error_string(a);
    for (const auto& [name, content] : members) {
        archive_entry* e = archive_entry_new();
        archive_entry_set_pathname(e, name.c_str());
        if (!name.empty() && name.back() == '/') {
            archive_entry_set_filetype(e, AE_IFDIR);
            archive_entry_set_perm(e, 0755);
            archive_entry_set_size(e, 0);
        } else {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_size(e, la_int64_t(content.size()));
        }
        ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK) << archive_error_string(a);
        if (!content.empty()) {
            ASSERT_EQ(archive_write_data(a, content.data(), content.size()), la_ssize_t(content.size()));
        }
        archive_entry_free(e);
    }
    ASSERT_EQ(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

// The members of a small but well-formed CIFAR-10 archive: six batch files of 3 records each
// (content made by write_cifar_file), the meta file, and members that must not be extracted.
std::vector<std::pair<std::string, std::string>> cifar_members(const TempDir& scratch) {
    std::vector<std::pair<std::string, std::string>> m = {{"cifar-10-batches-bin/", ""}};
    for (int f = 0; f < 6; ++f) {
        const std::string p = scratch / (std::string("member-") + kSix[f]);
        write_cifar_file(p, random_set(3, 100 + f), 0, 3);
        m.emplace_back(std::string("cifar-10-batches-bin/") + kSix[f], read_bytes(p));
    }
    m.emplace_back("cifar-10-batches-bin/batches.meta.txt", "airplane\nautomobile\n");
    m.emplace_back("cifar-10-batches-bin/readme.html", "<html>not wanted</html>");
    m.emplace_back("elsewhere.txt", "outside the folder");
    return m;
}

// Nothing but `allowed` in dir (dir may also not exist at all).
::testing::AssertionResult nothing_left(const fs::path& dir, const std::vector<std::string>& allowed = {}) {
    if (!fs::exists(dir)) return ::testing::AssertionSuccess();
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
            return ::testing::AssertionFailure() << "left behind: " << e.path();
    }
    return ::testing::AssertionSuccess();
}

// ---- the binary format ---------------------------------------------------------------------

TEST(Cifar10Format, RoundTripKeepsPixelsAndLabels) {
    TempDir d;
    ImageSet s = random_set(25, 7);
    s.labels[3] = 9;
    write_cifar_file(d / "b.bin", s, 0, s.n);
    EXPECT_EQ(fs::file_size(d / "b.bin"), 25u * kCifarRecord);
    const ImageSet r = read_cifar_file(d / "b.bin", false);
    ASSERT_EQ(r.n, 25);
    EXPECT_EQ(r.labels, s.labels);
    EXPECT_TRUE(r.images == s.images) << "pixels differ after a round trip";

    // a sub-range: first and count are honoured
    write_cifar_file(d / "part.bin", s, 10, 5);
    const ImageSet p = read_cifar_file(d / "part.bin", false);
    ASSERT_EQ(p.n, 5);
    EXPECT_EQ(p.labels[0], s.labels[10]);
    EXPECT_TRUE(std::equal(p.images.begin(), p.images.end(), s.image(10)));
}

TEST(Cifar10Format, FileIsPlanarMemoryIsNHWC) {
    // one record written by hand: R plane, G plane, B plane, each 32x32 row-major
    std::string rec(kCifarRecord, '\0');
    rec[0] = 4;
    const int y = 5, x = 17, p = y * 32 + x;
    rec[1 + p] = char(11);               // R at (5,17)
    rec[1 + 1024 + p] = char(22);        // G at (5,17)
    rec[1 + 2048 + p] = char(33);        // B at (5,17)
    rec[1 + 2048 + 1023] = char(200);    // B at (31,31)
    rec[1 + 1024 + 0] = char(99);        // G at (0,0)
    TempDir d;
    write_bytes(d / "one.bin", std::string(kCifarRecord, '\0') + rec);  // record 1 is ours
    const ImageSet s = read_cifar_file(d / "one.bin", false);
    ASSERT_EQ(s.n, 2);
    EXPECT_EQ(s.labels[1], 4);
    const uint8_t* im = s.image(1);
    EXPECT_EQ(im[(y * 32 + x) * 3 + 0], 11);
    EXPECT_EQ(im[(y * 32 + x) * 3 + 1], 22);
    EXPECT_EQ(im[(y * 32 + x) * 3 + 2], 33);
    EXPECT_EQ(im[(31 * 32 + 31) * 3 + 2], 200);
    EXPECT_EQ(im[0 * 3 + 1], 99);
    int nonzero = 0;
    for (int i = 0; i < kCifarPixels; ++i) nonzero += im[i] != 0;
    EXPECT_EQ(nonzero, 5);

    // and write_cifar_file converts back to exactly these bytes
    write_cifar_file(d / "back.bin", s, 1, 1);
    EXPECT_TRUE(read_bytes(d / "back.bin") == rec) << "write_cifar_file is not the inverse of reading";
}

TEST(Cifar10Format, MissingFileIsNamed) {
    TempDir d;
    const std::string msg = error_of([&] { read_cifar_file(d / "nope.bin"); });
    EXPECT_TRUE(contains(msg, d / "nope.bin"));
    EXPECT_TRUE(contains(msg, "missing"));
}

TEST(Cifar10Format, EmptyFileIsNamed) {
    TempDir d;
    write_bytes(d / "empty.bin", "");
    for (bool full : {true, false}) {
        const std::string msg = error_of([&] { read_cifar_file(d / "empty.bin", full); });
        EXPECT_TRUE(contains(msg, d / "empty.bin"));
        EXPECT_TRUE(contains(msg, "empty"));
    }
}

TEST(Cifar10Format, TruncatedFileIsNamed) {
    TempDir d;
    write_cifar_file(d / "t.bin", random_set(4, 1), 0, 4);
    std::string bytes = read_bytes(d / "t.bin");
    bytes.pop_back();
    write_bytes(d / "t.bin", bytes);  // 4 * 3073 - 1 bytes
    std::string msg = error_of([&] { read_cifar_file(d / "t.bin", false); });
    EXPECT_TRUE(contains(msg, d / "t.bin"));
    EXPECT_TRUE(contains(msg, "12291 bytes"));
    EXPECT_TRUE(contains(msg, "truncated"));
    msg = error_of([&] { read_cifar_file(d / "t.bin", true); });
    EXPECT_TRUE(contains(msg, d / "t.bin"));
    EXPECT_TRUE(contains(msg, "is not 10000 records of 3073 bytes"));
    EXPECT_TRUE(contains(msg, "truncated"));
}

TEST(Cifar10Format, WrongRecordCountWithExpectFull) {
    TempDir d;
    write_cifar_file(d / "small.bin", random_set(7, 2), 0, 7);
    EXPECT_NO_THROW(read_cifar_file(d / "small.bin", false));
    const std::string msg = error_of([&] { read_cifar_file(d / "small.bin", true); });
    EXPECT_TRUE(contains(msg, d / "small.bin"));
    EXPECT_TRUE(contains(msg, "is not 10000 records"));
    EXPECT_TRUE(contains(msg, "holds 7 records"));
}

TEST(Cifar10Format, BadLabelNamesTheRecord) {
    TempDir d;
    for (int bad : {10, 255}) {
        ImageSet s = random_set(30, 3);
        write_cifar_file(d / "l.bin", s, 0, s.n);
        std::string bytes = read_bytes(d / "l.bin");
        bytes[size_t(17) * kCifarRecord] = char(bad);
        write_bytes(d / "l.bin", bytes);
        const std::string msg = error_of([&] { read_cifar_file(d / "l.bin", false); });
        EXPECT_TRUE(contains(msg, d / "l.bin"));
        EXPECT_TRUE(contains(msg, "record 17 has label " + std::to_string(bad)));
        EXPECT_TRUE(contains(msg, "0..9"));
    }
}

TEST(Cifar10Format, WriteRefusesBadRangesAndLabels) {
    TempDir d;
    ImageSet s = random_set(5, 4);
    EXPECT_TRUE(contains(error_of([&] { write_cifar_file(d / "w.bin", s, 3, 5); }), d / "w.bin"));
    s.labels[2] = 10;
    EXPECT_TRUE(contains(error_of([&] { write_cifar_file(d / "w.bin", s, 0, 5); }), "label 10"));
    EXPECT_FALSE(fs::exists(d / "w.bin"));
    EXPECT_TRUE(nothing_left(d.path));
}

// ---- directories ---------------------------------------------------------------------------

TEST(Cifar10Dir, SmallFilesAreNotAFullDataSet) {
    TempDir d;
    write_six(d, 4, 10);
    const std::string msg = error_of([&] { load_cifar10_dir(d.str()); });
    EXPECT_TRUE(contains(msg, d / "data_batch_1.bin"));
    EXPECT_TRUE(contains(msg, "is not 10000 records"));
}

TEST(Cifar10Dir, MissingTestBatchIsNamed) {
    TempDir d;
    write_six(d, 4, 10);
    fs::remove(d / "test_batch.bin");
    const std::string msg = error_of([&] { load_cifar10_dir(d.str()); });
    EXPECT_TRUE(contains(msg, d / "test_batch.bin"));
    EXPECT_TRUE(contains(msg, "missing"));
}

TEST(Cifar10Dir, FullSizeDirectoryLoadsInOrder) {
    // six full-size files of the synthetic set: load_cifar10_dir must give back the same images
    // in file order (train = data_batch_1..5). Its time is printed, not asserted (a busy machine
    // failed a bound of 1.5 s); `speedrun train` reports it on every run ("data loading").
    const Cifar10 s = make_synthetic_cifar10(50000, 10000, 5);
    TempDir d;
    for (int f = 0; f < 5; ++f) write_cifar_file(d / kSix[f], s.train, f * 10000, 10000);
    write_cifar_file(d / "test_batch.bin", s.test, 0, 10000);
    const auto t0 = std::chrono::steady_clock::now();
    const Cifar10 r = load_cifar10_dir(d.str());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ time ] load_cifar10_dir: 60,000 images in %.3f s\n", secs);
    ASSERT_EQ(r.train.n, 50000);
    ASSERT_EQ(r.test.n, 10000);
    EXPECT_TRUE(r.train.images == s.train.images);
    EXPECT_TRUE(r.train.labels == s.train.labels);
    EXPECT_TRUE(r.test.images == s.test.images);
    EXPECT_TRUE(r.test.labels == s.test.labels);
    EXPECT_EQ(r.source, d.str());
    EXPECT_FALSE(r.synthetic);
}

TEST(Cifar10Find, FlagBeatsEnvironmentVariable) {
    TempDir a, b;
    write_six(a, 2, 20);
    write_six(b, 2, 30);
    {
        EnvGuard e("CIFAR10_DIR", a.str());
        EXPECT_EQ(find_cifar10_dir(b.str()), b.str());  // --data first
        EXPECT_EQ(find_cifar10_dir(""), a.str());       // then $CIFAR10_DIR
    }
    {
        EnvGuard e("CIFAR10_DIR", std::nullopt);
        EXPECT_EQ(find_cifar10_dir(b.str()), b.str());
    }
}

TEST(Cifar10Find, FlagAtAnEmptyDirectoryIsAnError) {
    TempDir empty, good;
    write_six(good, 2, 40);
    EnvGuard e("CIFAR10_DIR", good.str());  // a valid $CIFAR10_DIR must not rescue a bad --data
    const std::string msg = error_of([&] { find_cifar10_dir(empty.str()); });
    EXPECT_TRUE(contains(msg, empty / "data_batch_1.bin"));
    EXPECT_TRUE(contains(msg, "missing"));
    EXPECT_TRUE(contains(msg, "--data"));
    // and a --data that does not exist at all
    const std::string msg2 = error_of([&] { find_cifar10_dir(empty / "not-there"); });
    EXPECT_TRUE(contains(msg2, empty / "not-there"));
    EXPECT_TRUE(contains(msg2, "--data"));
    // a batch file that is there but a folder is not called missing
    TempDir folders;
    write_six(folders, 2, 41);
    fs::remove(folders.path / "data_batch_3.bin");
    fs::create_directory(folders.path / "data_batch_3.bin");
    const std::string msg3 = error_of([&] { find_cifar10_dir(folders.str()); });
    EXPECT_TRUE(contains(msg3, (folders.path / "data_batch_3.bin").string() + ": not a regular file")) << msg3;
}

TEST(Cifar10Find, EnvironmentVariableAtAnIncompleteDirectoryIsAnError) {
    TempDir d;
    write_six(d, 2, 50);
    fs::remove(d / "data_batch_4.bin");
    EnvGuard e("CIFAR10_DIR", d.str());
    const std::string msg = error_of([&] { find_cifar10_dir(""); });
    EXPECT_TRUE(contains(msg, d / "data_batch_4.bin"));
    EXPECT_TRUE(contains(msg, "$CIFAR10_DIR"));
}

TEST(Cifar10Find, CacheDirectoryIsSearchedLast) {
    TempDir cache, work;
    EnvGuard e("CIFAR10_DIR", std::nullopt);
    EnvGuard x("XDG_CACHE_HOME", cache.str());
    // nested, so ../shared is inside our temp dir (CI may put shared/ at /tmp/shared)
    fs::create_directories(work.path / "nested");
    CwdGuard cd(work.path / "nested");  // no ../shared/data from here
    EXPECT_EQ(cifar10_cache_root(), cache / "speedrun");
    EXPECT_EQ(find_cifar10_dir(""), "");
    fs::create_directories(cache.path / "speedrun" / "cifar-10-batches-bin");
    TempDir tmp;
    write_six(tmp, 2, 60);
    for (const char* f : kSix) fs::copy_file(tmp / f, cache.path / "speedrun" / "cifar-10-batches-bin" / f);
    EXPECT_EQ(find_cifar10_dir(""), (cache.path / "speedrun" / "cifar-10-batches-bin").string());
    // a filled cache comes after ../shared/data and $CIFAR10_DIR
    fs::create_directories(work.path / "shared" / "data" / "cifar-10-batches-bin");
    for (const char* f : kSix) fs::copy_file(tmp / f, work.path / "shared" / "data" / "cifar-10-batches-bin" / f);
    EXPECT_EQ(find_cifar10_dir(""), "../shared/data/cifar-10-batches-bin");
    TempDir env_dir;
    write_six(env_dir, 2, 61);
    EnvGuard e2("CIFAR10_DIR", env_dir.str());
    EXPECT_EQ(find_cifar10_dir(""), env_dir.str());
}

TEST(Cifar10Find, NotFoundAndNoDownloadSaysHowToProvideTheData) {
    TempDir cache, work;
    EnvGuard e("CIFAR10_DIR", std::nullopt);
    EnvGuard x("XDG_CACHE_HOME", cache.str());
    fs::create_directories(work.path / "nested");
    CwdGuard cd(work.path / "nested");  // ../shared is inside our temp dir: absent
    const std::string msg = error_of([] { load_cifar10("", false); });
    EXPECT_TRUE(contains(msg, "--data"));
    EXPECT_TRUE(contains(msg, "$CIFAR10_DIR"));
    EXPECT_TRUE(contains(msg, "../shared/data/cifar-10-batches-bin"));
    EXPECT_TRUE(contains(msg, cache / "speedrun/cifar-10-batches-bin"));
    EXPECT_TRUE(nothing_left(cache.path));  // nothing was downloaded or created
}

// ---- md5 and archives ----------------------------------------------------------------------

TEST(Cifar10Md5, KnownVectors) {
    TempDir d;
    write_bytes(d / "abc", "abc");
    EXPECT_EQ(md5_file(d / "abc"), "900150983cd24fb0d6963f7d28e17f72");
    write_bytes(d / "empty", "");
    EXPECT_EQ(md5_file(d / "empty"), "d41d8cd98f00b204e9800998ecf8427e");
    // longer than one read buffer: 1,000,000 'a's
    write_bytes(d / "million", std::string(1000000, 'a'));
    EXPECT_EQ(md5_file(d / "million"), "7707d6ae4e027c70eea2a935c2296f21");
    EXPECT_TRUE(contains(error_of([&] { md5_file(d / "none"); }), d / "none"));
}

TEST(Cifar10Archive, UnpacksTheSixFilesWithTheRightMd5) {
    TempDir scratch, cache;
    const auto members = cifar_members(scratch);
    const std::string tgz = scratch / "cifar-10-binary.tar.gz";
    write_tar_gz(tgz, members);
    // an older, incomplete data directory is replaced
    fs::create_directories(cache.path / "cifar-10-batches-bin");
    write_bytes(cache / "cifar-10-batches-bin/stale.bin", "old");

    const std::string dir = unpack_cifar10_archive(tgz, cache.str(), md5_file(tgz));
    EXPECT_EQ(dir, cache / "cifar-10-batches-bin");
    for (const auto& [name, content] : members) {
        if (name.ends_with("/")) continue;  // the folder entry
        const std::string base = fs::path(name).filename().string();
        const bool wanted = name.rfind("cifar-10-batches-bin/", 0) == 0 &&
                            (base.ends_with(".bin") || base == "batches.meta.txt");
        EXPECT_EQ(fs::exists(fs::path(dir) / base), wanted) << name;
        if (wanted) {
            EXPECT_TRUE(read_bytes((fs::path(dir) / base).string()) == content) << name;
        }
    }
    EXPECT_FALSE(fs::exists(fs::path(dir) / "stale.bin"));
    EXPECT_FALSE(fs::exists(cache / "elsewhere.txt"));
    EXPECT_TRUE(nothing_left(cache.path, {"cifar-10-batches-bin"}));  // no temp dirs left
    const ImageSet t = read_cifar_file((fs::path(dir) / "test_batch.bin").string(), false);
    EXPECT_EQ(t.n, 3);
    EXPECT_TRUE(t.images == random_set(3, 105).images);
}

TEST(Cifar10Archive, WrongMd5NamesBothAndLeavesNothing) {
    TempDir scratch, cache;
    const std::string tgz = scratch / "cifar-10-binary.tar.gz";
    write_tar_gz(tgz, cifar_members(scratch));
    const std::string real = md5_file(tgz);
    const std::string msg = error_of([&] { unpack_cifar10_archive(tgz, cache.str(), kCifarArchiveMd5); });
    EXPECT_TRUE(contains(msg, tgz));
    EXPECT_TRUE(contains(msg, real));
    EXPECT_TRUE(contains(msg, kCifarArchiveMd5));
    EXPECT_FALSE(fs::exists(cache / "cifar-10-batches-bin"));
    EXPECT_TRUE(nothing_left(cache.path));
}

TEST(Cifar10Archive, CorruptArchiveWithMatchingMd5LeavesNothing) {
    TempDir scratch, cache;
    // random bytes
    Rng r(9);
    std::string junk(100000, '\0');
    for (char& c : junk) c = char(r.next() >> 56);
    write_bytes(scratch / "junk.tar.gz", junk);
    std::string msg = error_of([&] {
        unpack_cifar10_archive(scratch / "junk.tar.gz", cache.str(), md5_file(scratch / "junk.tar.gz"));
    });
    EXPECT_TRUE(contains(msg, scratch / "junk.tar.gz"));
    EXPECT_TRUE(contains(msg, "cannot unpack"));
    EXPECT_TRUE(nothing_left(cache.path));

    // a real archive cut short: the first members unpack, then it fails; nothing may remain
    const std::string tgz = scratch / "good.tar.gz";
    write_tar_gz(tgz, cifar_members(scratch));
    std::string bytes = read_bytes(tgz);
    write_bytes(scratch / "cut.tar.gz", bytes.substr(0, bytes.size() * 2 / 3));
    msg = error_of([&] {
        unpack_cifar10_archive(scratch / "cut.tar.gz", cache.str(), md5_file(scratch / "cut.tar.gz"));
    });
    EXPECT_TRUE(contains(msg, scratch / "cut.tar.gz"));
    EXPECT_TRUE(nothing_left(cache.path));
}

TEST(Cifar10Archive, IncompleteArchiveNamesTheMissingFile) {
    TempDir scratch, cache;
    auto members = cifar_members(scratch);
    std::erase_if(members, [](const auto& m) { return m.first == "cifar-10-batches-bin/test_batch.bin"; });
    const std::string tgz = scratch / "no-test.tar.gz";
    write_tar_gz(tgz, members);
    const std::string msg = error_of([&] { unpack_cifar10_archive(tgz, cache.str(), md5_file(tgz)); });
    EXPECT_TRUE(contains(msg, tgz));
    EXPECT_TRUE(contains(msg, "test_batch.bin"));
    EXPECT_TRUE(nothing_left(cache.path));
}

TEST(Cifar10Archive, RefusesDotDotAndAbsolutePaths) {
    for (const std::string evil : {"cifar-10-batches-bin/../escaped.bin", "/tmp/speedrun-absolute.bin"}) {
        TempDir scratch, cache;
        auto members = cifar_members(scratch);
        members.emplace_back(evil, "evil");
        const std::string tgz = scratch / "evil.tar.gz";
        write_tar_gz(tgz, members);
        const std::string msg = error_of([&] { unpack_cifar10_archive(tgz, cache.str(), md5_file(tgz)); });
        EXPECT_TRUE(contains(msg, tgz));
        EXPECT_TRUE(contains(msg, evil));
        EXPECT_TRUE(nothing_left(cache.path));
        EXPECT_FALSE(fs::exists(cache / "escaped.bin"));
    }
}

TEST(Cifar10Archive, ACompleteSetAnotherProcessPutThereMeanwhileIsKept) {
    // (ranks of one job downloading into one cache: the second to finish keeps the first's set;
    // it used to move that set aside, or fail to rename over it)
    TempDir scratch, cache;
    const std::string tgz = scratch / "cifar-10-binary.tar.gz";
    write_tar_gz(tgz, cifar_members(scratch));
    const fs::path target = cache.path / "cifar-10-batches-bin";
    fs::create_directories(target);
    TempDir theirs;
    write_six(theirs, 2, 70);
    for (const char* f : kSix) fs::copy_file(theirs / f, target / f);
    EXPECT_EQ(unpack_cifar10_archive(tgz, cache.str(), md5_file(tgz)), target.string());
    for (const char* f : kSix) EXPECT_EQ(read_bytes((target / f).string()), read_bytes(theirs / f)) << f;
    EXPECT_TRUE(nothing_left(cache.path, {"cifar-10-batches-bin"}));
}

// ---- downloading (file:// URLs: libcurl reads them without a network) ----------------------

TEST(Cifar10Download, AMissingSourceNamesTheUrlAndLeavesNothing) {
    TempDir cache;
    const std::string url = "file:///speedrun-no-such-folder/cifar-10-binary.tar.gz";
    const std::string msg = error_of([&] { download_cifar10(cache.str(), url); });
    EXPECT_TRUE(contains(msg, "downloading " + url + " failed")) << msg;
    EXPECT_TRUE(nothing_left(cache.path));
}

TEST(Cifar10Download, AnotherArchiveFailsItsMd5AndLeavesNothing) {
    TempDir scratch, cache;
    const std::string tgz = scratch / "cifar-10-binary.tar.gz";
    write_tar_gz(tgz, cifar_members(scratch));
    const std::string url = "file://" + tgz;
    const std::string msg = error_of([&] { download_cifar10(cache.str(), url); });
    EXPECT_TRUE(contains(msg, std::string("expected ") + kCifarArchiveMd5)) << msg;
    EXPECT_TRUE(contains(msg, "(downloaded from " + url + ")")) << msg;
    EXPECT_TRUE(nothing_left(cache.path));
}

TEST(Cifar10Download, MoreThanTheArchivesSizeIsStopped) {
    TempDir scratch, cache;
    const std::string big = scratch / "big.tar.gz";
    write_bytes(big, "");
    fs::resize_file(big, kCifarArchiveMaxBytes + 1);  // (sparse: nothing is written)
    const std::string msg = error_of([&] { download_cifar10(cache.str(), "file://" + big); });
    EXPECT_TRUE(contains(msg, "so not the CIFAR-10 archive")) << msg;
    EXPECT_TRUE(nothing_left(cache.path));
}

TEST(Cifar10Download, TheMirrorVariableNamesTheUrl) {
    TempDir cache, work;
    EnvGuard e("CIFAR10_DIR", std::nullopt);
    EnvGuard x("XDG_CACHE_HOME", cache.str());
    const std::string url = "file:///speedrun-no-such-mirror/cifar-10-binary.tar.gz";
    EnvGuard m("SPEEDRUN_CIFAR10_URL", url);
    fs::create_directories(work.path / "nested");
    CwdGuard cd(work.path / "nested");  // ../shared is inside our temp dir: absent
    const std::string msg = error_of([] { load_cifar10("", true); });
    EXPECT_TRUE(contains(msg, "downloading " + url + " failed")) << msg;
    EXPECT_TRUE(nothing_left(cache.path / "speedrun"));
}

// ---- synthetic -----------------------------------------------------------------------------

TEST(Cifar10Synthetic, DeterministicForASeed) {
    const Cifar10 a = make_synthetic_cifar10(200, 50, 11);
    const Cifar10 b = make_synthetic_cifar10(200, 50, 11);
    const Cifar10 c = make_synthetic_cifar10(200, 50, 12);
    EXPECT_TRUE(a.train.images == b.train.images && a.test.images == b.test.images);
    EXPECT_TRUE(a.train.labels == b.train.labels && a.test.labels == b.test.labels);
    EXPECT_FALSE(a.train.images == c.train.images);
    EXPECT_FALSE(a.test.images == c.test.images);
    EXPECT_TRUE(a.synthetic);
    EXPECT_EQ(a.source, "synthetic (200 train, 50 test, seed 11)");
    EXPECT_EQ(a.train.n, 200);
    EXPECT_EQ(a.test.n, 50);
    EXPECT_EQ(a.train.images.size(), 200u * kCifarPixels);
    EXPECT_EQ(a.test.images.size(), 50u * kCifarPixels);
}

TEST(Cifar10Synthetic, BalancedClassesThatDifferClearly) {
    const Cifar10 d = make_synthetic_cifar10(2000, 500, 3);
    for (const ImageSet* s : {&d.train, &d.test}) {
        int counts[10] = {};
        for (int l : s->labels) {
            ASSERT_GE(l, 0);
            ASSERT_LE(l, 9);
            counts[l]++;
        }
        for (int k = 0; k < 10; ++k) EXPECT_EQ(counts[k], s->n / 10) << "class " << k;
    }
    // class means over the training set
    std::vector<double> mean(size_t(10) * kCifarPixels, 0.0);
    for (int i = 0; i < d.train.n; ++i)
        for (int p = 0; p < kCifarPixels; ++p) mean[size_t(d.train.labels[i]) * kCifarPixels + p] += d.train.image(i)[p];
    for (auto& m : mean) m /= d.train.n / 10;
    double closest = 1e30;
    for (int a = 0; a < 10; ++a)
        for (int b = a + 1; b < 10; ++b) {
            double s = 0;
            for (int p = 0; p < kCifarPixels; ++p) {
                const double diff = mean[size_t(a) * kCifarPixels + p] - mean[size_t(b) * kCifarPixels + p];
                s += diff * diff;
            }
            closest = std::min(closest, std::sqrt(s / kCifarPixels));
        }
    std::printf("[ synthetic ] closest pair of class means: RMS difference %.1f / 255\n", closest);
    EXPECT_GT(closest, 10.0);
    // a nearest-class-mean classifier must do far better than chance (10%) on the test set
    int correct = 0;
    for (int i = 0; i < d.test.n; ++i) {
        int best = -1;
        double best_d = 1e300;
        for (int k = 0; k < 10; ++k) {
            double s = 0;
            for (int p = 0; p < kCifarPixels; ++p) {
                const double diff = d.test.image(i)[p] - mean[size_t(k) * kCifarPixels + p];
                s += diff * diff;
            }
            if (s < best_d) best_d = s, best = k;
        }
        correct += best == d.test.labels[i];
    }
    const double acc = double(correct) / d.test.n;
    std::printf("[ synthetic ] nearest-class-mean test accuracy %.3f\n", acc);
    EXPECT_GT(acc, 0.5);
    // and the pixels use the range: not flat, not saturated
    int lo = 0, hi = 0;
    for (uint8_t v : d.train.images) lo += v == 0, hi += v == 255;
    EXPECT_LT(lo + hi, int(d.train.images.size() / 50)) << "too many saturated pixels";
}

// ---- the real data set ---------------------------------------------------------------------

TEST(Cifar10Real, CountsAndChannelMeans) {
    const std::string dir = test::real_cifar_dir();
    if (dir.empty()) GTEST_SKIP() << "real CIFAR-10 not found at ../shared/data/cifar-10-batches-bin";
    const auto t0 = std::chrono::steady_clock::now();
    const Cifar10 d = load_cifar10(dir, false);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ time ] real CIFAR-10 (60,000 images) read and checked in %.3f s\n", secs);
    EXPECT_EQ(d.source, dir);
    EXPECT_FALSE(d.synthetic);
    ASSERT_EQ(d.train.n, 50000);
    ASSERT_EQ(d.test.n, 10000);
    int train_counts[10] = {}, test_counts[10] = {};
    for (int l : d.train.labels) train_counts[l]++;
    for (int l : d.test.labels) test_counts[l]++;
    for (int k = 0; k < 10; ++k) {
        EXPECT_EQ(train_counts[k], 5000) << "class " << k;
        EXPECT_EQ(test_counts[k], 1000) << "class " << k;
    }
    double sum[3] = {};
    for (size_t i = 0; i < d.train.images.size(); ++i) sum[i % 3] += d.train.images[i];
    const double px = 50000.0 * 1024 * 255;
    const double want[3] = {0.4914, 0.4822, 0.4465};
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(sum[c] / px, want[c], 0.002) << "channel " << c;
    std::printf("[ data ] train channel means %.4f %.4f %.4f\n", sum[0] / px, sum[1] / px, sum[2] / px);
}

}  // namespace
}  // namespace sr
