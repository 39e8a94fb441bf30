// cifar10.h: CIFAR-10 on the host: the official binary format, where to find it, how to get it,
// and a small synthetic stand-in for tests when the real data is absent.
//
// Binary format (data_batch_1..5.bin, test_batch.bin): 10,000 records of 1 label byte (0..9)
// followed by 3072 pixel bytes: the R plane, then G, then B, each 32x32 row-major.
// In memory we keep images as uint8 NHWC (N,32,32,3), labels as int32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sr {

constexpr int kCifarSide = 32;
constexpr int kCifarPixels = kCifarSide * kCifarSide * 3;  // 3072
constexpr int kCifarRecord = 1 + kCifarPixels;             // 3073
constexpr int kCifarPerFile = 10000;
constexpr const char* kCifarArchiveMd5 = "c32a1d4ab5d03f1284b67883e8d87530";
constexpr const char* kCifarArchiveUrl = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
// The archive is 170,052,171 bytes; a download that grows past this is stopped (not the archive).
constexpr size_t kCifarArchiveMaxBytes = size_t(256) << 20;

struct ImageSet {
    std::vector<uint8_t> images;  // (n, 32, 32, 3) NHWC
    std::vector<int32_t> labels;  // (n), each 0..9
    int n = 0;
    const uint8_t* image(int i) const { return images.data() + size_t(i) * kCifarPixels; }
};

struct Cifar10 {
    ImageSet train, test;
    std::string source;      // the directory read, or "synthetic (...)"
    bool synthetic = false;
};

// Reads one batch file. Throws sr::Error naming the file and the fault: missing or unreadable,
// size not a multiple of 3073 (or not 10,000 records when expect_full), label > 9 (with the
// record index). Nothing is returned on error.
ImageSet read_cifar_file(const std::string& path, bool expect_full = true);

// Reads data_batch_1..5.bin and test_batch.bin from dir (all six must be valid).
Cifar10 load_cifar10_dir(const std::string& dir);

// Where the data is, in this order: the --data flag (if not empty), $CIFAR10_DIR,
// ../shared/data/cifar-10-batches-bin (relative to the working directory), the user cache
// ($XDG_CACHE_HOME or ~/.cache)/speedrun/cifar-10-batches-bin. Returns "" if none holds all six
// files. A --data or $CIFAR10_DIR that is set but lacks the files is an error (named).
std::string find_cifar10_dir(const std::string& data_flag);

// The user cache directory where download_cifar10 unpacks (.../speedrun).
std::string cifar10_cache_root();

// Downloads the official archive (libcurl) to cache_root, verifies its md5 against
// kCifarArchiveMd5 (libmd), unpacks it with libarchive into cache_root (giving
// cache_root/cifar-10-batches-bin), all-or-nothing: a partial download or a wrong md5 leaves no
// data directory behind (nor a temporary file: a download larger than kCifarArchiveMaxBytes is
// stopped). A complete set another process unpacked there meanwhile is kept. Returns the data
// directory. Throws sr::Error with the reason.
std::string download_cifar10(const std::string& cache_root, const std::string& url = kCifarArchiveUrl);

// Verifies an archive's md5 and unpacks it (the second half of download_cifar10, testable
// offline). Throws on wrong md5 ("... has md5 X, expected Y") or a bad archive.
std::string unpack_cifar10_archive(const std::string& archive_path, const std::string& cache_root,
                                   const std::string& expected_md5 = kCifarArchiveMd5);

// md5 of a file as 32 lowercase hex digits.
std::string md5_file(const std::string& path);

// find_cifar10_dir, then download if allowed (from $SPEEDRUN_CIFAR10_URL where set: a mirror of
// the official archive, md5-checked all the same); throws if neither works.
Cifar10 load_cifar10(const std::string& data_flag, bool allow_download);

// A CIFAR-shaped set with learnable class structure: each class has a fixed random colour
// pattern (low-frequency blobs) plus noise and random shifts, so a small network learns it well
// above chance in a few hundred steps. Deterministic for a seed.
Cifar10 make_synthetic_cifar10(int n_train, int n_test, uint64_t seed);

// Writes a set in the official binary format (10,000 records per file unless fewer remain);
// used by tests to make real-format files.
void write_cifar_file(const std::string& path, const ImageSet& set, int first, int count);

}  // namespace sr
