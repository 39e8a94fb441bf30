// test_safetensors.cpp: the safetensors reader and writer (src/io/safetensors.h): round trips of
// every dtype, the byte layout against the format (a file built by hand byte by byte), every
// hostile input with the message it must give (from memory and from a file, which must agree),
// the typed helpers and expect_tensor, the atomic write; and seeded random-mutation tests of
// the safetensors and CIFAR-10 readers (Fuzz.*): every mutated input must either parse or throw
// sr::Error. Fuzz iterations: $SPEEDRUN_FUZZ_ITERS, default 10000. Run them under
// AddressSanitizer and UBSan with tools/fuzz-check.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "data/cifar10.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace sr {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::error_of;
using Bytes = std::vector<uint8_t>;

// ---- helpers -------------------------------------------------------------------------------

struct TempDir {
    fs::path path;
    TempDir() {
        static std::atomic<int> counter{0};
        const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
        path = fs::temp_directory_path() / ("speedrun-test-st-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter++) + "-" + std::to_string(t));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string operator/(const std::string& name) const { return (path / name).string(); }
    std::vector<std::string> listing() const {
        std::vector<std::string> v;
        for (const auto& e : fs::directory_iterator(path)) v.push_back(e.path().filename().string());
        std::sort(v.begin(), v.end());
        return v;
    }
};

void write_bytes(const std::string& path, const Bytes& b) {
    // removed first: ext4 (auto_da_alloc) flushes a file that is truncated and rewritten when
    // it is closed, which would make the fuzz tests wait on the disk for every input
    std::error_code ec;
    fs::remove(path, ec);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    f.close();
    if (!f) throw std::runtime_error("test cannot write " + path);
}

Bytes read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(f), {});
}

Bytes to_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

void append_u64(Bytes& b, uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(uint8_t(v >> (8 * i)));
}

// A file: the header length, the header text as given (no padding), then data.
Bytes file_of(const std::string& header, const Bytes& data = {}) {
    Bytes b;
    append_u64(b, header.size());
    b.insert(b.end(), header.begin(), header.end());
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

::testing::AssertionResult same_file(const StFile& a, const StFile& b) {
    if (a.metadata != b.metadata) return ::testing::AssertionFailure() << "metadata differs";
    if (a.tensors.size() != b.tensors.size())
        return ::testing::AssertionFailure() << a.tensors.size() << " vs " << b.tensors.size() << " tensors";
    for (const auto& [name, t] : a.tensors) {
        const auto it = b.tensors.find(name);
        if (it == b.tensors.end()) return ::testing::AssertionFailure() << "tensor '" << name << "' missing";
        const StTensor& u = it->second;
        if (t.dtype != u.dtype || t.shape != u.shape || t.data != u.data)
            return ::testing::AssertionFailure() << "tensor '" << name << "' differs";
    }
    return ::testing::AssertionSuccess();
}

template <typename T>
std::vector<T> seq(size_t n, double scale, double offset) {
    std::vector<T> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = T(offset + scale * double(i));
    return v;
}

// One of each dtype, plus a scalar and an empty tensor, and metadata.
StFile sample_file() {
    StFile f;
    f.metadata = {{"format", "pt"}, {"step", "123"}, {"note", "tab\there \"quoted\" and \xc3\xa9"}};
    put_tensor(f, "f32", {2, 3}, std::vector<float>{1.5f, -2.f, 0.f, -0.f, 3.4e38f, 1e-45f});
    put_tensor(f, "f64", {3}, std::vector<double>{std::acos(-1.0), -1e308, 5e-324});
    put_tensor(f, "i32", {2, 2}, std::vector<int32_t>{std::numeric_limits<int32_t>::min(), -1, 0, 2147483647});
    put_tensor(f, "i64", {1, 2, 1}, std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 42});
    put_tensor(f, "u8", {5}, std::vector<uint8_t>{0, 1, 127, 128, 255});
    put_tensor(f, "u64", {2}, std::vector<uint64_t>{0, std::numeric_limits<uint64_t>::max()});
    put_tensor(f, "scalar", {}, std::vector<float>{7.f});
    put_tensor(f, "empty", {0, 4}, std::vector<double>{});
    put_tensor(f, "layer.0/weight", {4, 1, 1, 2}, seq<float>(8, 0.25, -1));
    return f;
}

// Throws from both parse_safetensors and read_safetensors (same message, naming the file).
std::string rejects(const Bytes& b) {
    TempDir d;
    const std::string path = d / "bad.safetensors";
    write_bytes(path, b);
    const std::string from_mem = error_of([&] { parse_safetensors(path, b.data(), b.size()); });
    const std::string from_file = error_of([&] { read_safetensors(path); });
    EXPECT_EQ(from_mem, from_file) << "memory and file readers disagree";
    EXPECT_TRUE(contains(from_file, path));
    return from_file;
}

// ---- round trips and the byte layout --------------------------------------------------------

TEST(Safetensors, RoundTripEveryDTypeKeepsBytesAndMetadata) {
    TempDir d;
    const StFile f = sample_file();
    const std::string path = d / "ckpt.safetensors";
    write_safetensors(path, f);
    const StFile g = read_safetensors(path);
    EXPECT_TRUE(same_file(f, g));
    EXPECT_EQ(g.source, path);
    EXPECT_EQ(g.metadata.at("note"), f.metadata.at("note"));
    // every dtype through the typed helpers
    EXPECT_EQ(get_tensor<float>(g, "f32", {2, 3}), (std::vector<float>{1.5f, -2.f, 0.f, -0.f, 3.4e38f, 1e-45f}));
    EXPECT_TRUE(std::signbit(get_tensor<float>(g, "f32", {2, 3})[3]));
    EXPECT_EQ(get_tensor<double>(g, "f64", {3}), (std::vector<double>{std::acos(-1.0), -1e308, 5e-324}));
    EXPECT_EQ(get_tensor<int32_t>(g, "i32", {2, 2})[0], std::numeric_limits<int32_t>::min());
    EXPECT_EQ(get_tensor<int64_t>(g, "i64", {1, 2, 1}), (std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 42}));
    EXPECT_EQ(get_tensor<uint8_t>(g, "u8", {5}), (std::vector<uint8_t>{0, 1, 127, 128, 255}));
    EXPECT_EQ(get_tensor<uint64_t>(g, "u64", {2})[1], std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(get_tensor<float>(g, "scalar", {}), std::vector<float>{7.f});
    EXPECT_TRUE(get_tensor<double>(g, "empty", {0, 4}).empty());
    // writing what was read gives the same file, byte for byte; the in-memory parser agrees
    const Bytes file = read_bytes(path);
    const std::string again = serialize_safetensors(g);
    EXPECT_EQ(to_bytes(again), file);
    EXPECT_TRUE(same_file(parse_safetensors("mem", file.data(), file.size()), g));
}

TEST(Safetensors, WrittenFileFollowsTheFormat) {
    StFile f;
    put_tensor(f, "b", {2}, std::vector<int32_t>{1, -2});
    put_tensor(f, "a", {1}, std::vector<float>{1.f});
    f.metadata["k"] = "v";
    const std::string s = serialize_safetensors(f);
    ASSERT_GE(s.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(s[i]);
    EXPECT_EQ(n % 8, 0u) << "header padded to a multiple of 8";
    ASSERT_EQ(s.size(), 8 + n + 12);
    const std::string header = s.substr(8, n);
    EXPECT_EQ(header.front(), '{');
    const size_t last = header.find_last_not_of(' ');
    EXPECT_EQ(header[last], '}');
    EXPECT_LT(n - 1 - last, 8u) << "at most 7 spaces of padding";
    const auto j = nlohmann::json::parse(header);
    EXPECT_EQ(j["__metadata__"], nlohmann::json({{"k", "v"}}));
    EXPECT_EQ(j["a"]["dtype"], "F32");
    EXPECT_EQ(j["a"]["shape"], nlohmann::json::array({1}));
    EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json::array({0, 4}));
    EXPECT_EQ(j["b"]["dtype"], "I32");
    EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json::array({4, 12}));
    // data: 1.0f, then 1 and -2 as little-endian int32
    const Bytes data(s.begin() + 8 + n, s.end());
    EXPECT_EQ(data, (Bytes{0x00, 0x00, 0x80, 0x3f, 0x01, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff}));
    // no metadata: no __metadata__ key
    StFile g;
    put_tensor(g, "x", {}, std::vector<uint8_t>{9});
    EXPECT_EQ(serialize_safetensors(g).find("__metadata__"), std::string::npos);
}

TEST(Safetensors, ReadsAFileBuiltByHandByteByByte) {
    // As the format describes it: u64 little-endian header size, the JSON header (here not
    // padded, keys in another order, with whitespace), then the raw little-endian data.
    const std::string header =
        "{\"w\": {\"data_offsets\": [0, 8], \"dtype\": \"F32\", \"shape\": [1, 2]},\n"
        " \"step\":{\"shape\":[],\"dtype\":\"I64\",\"data_offsets\":[8,16]},"
        " \"ids\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]},"
        " \"__metadata__\": {\"format\": \"pt\"}}";
    Bytes b = {uint8_t(header.size()), uint8_t(header.size() >> 8), 0, 0, 0, 0, 0, 0};
    b.insert(b.end(), header.begin(), header.end());
    for (uint8_t x : {0x00, 0x00, 0x80, 0x3f,   // 1.0f
                      0x00, 0x00, 0x20, 0xc0,   // -2.5f
                      0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // int64 -5
                      0x01, 0x02, 0xff})
        b.push_back(x);
    TempDir d;
    write_bytes(d / "hand.safetensors", b);
    const StFile f = read_safetensors(d / "hand.safetensors");
    EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
    EXPECT_EQ(get_tensor<float>(f, "w", {1, 2}), (std::vector<float>{1.f, -2.5f}));
    EXPECT_EQ(get_tensor<int64_t>(f, "step", {}), std::vector<int64_t>{-5});
    EXPECT_EQ(get_tensor<uint8_t>(f, "ids", {3}), (Bytes{1, 2, 255}));
    EXPECT_TRUE(same_file(parse_safetensors("mem", b.data(), b.size()), f));

    // padding with spaces is allowed; an empty header object is a file with no tensors
    const Bytes padded = file_of("{}      ");
    EXPECT_TRUE(parse_safetensors("p", padded.data(), padded.size()).tensors.empty());
}

TEST(Safetensors, RandomFilesRoundTrip) {
    Rng r(7);
    const DType all[] = {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8, DType::U64};
    for (int it = 0; it < 200; ++it) {
        StFile f;
        const int nt = int(r.below(6));
        for (int k = 0; k < nt; ++k) {
            StTensor t;
            t.dtype = all[r.below(6)];
            const int rank = int(r.below(4));
            size_t count = 1;
            for (int a = 0; a < rank; ++a) {
                t.shape.push_back(int64_t(r.below(5)));
                count *= size_t(t.shape.back());
            }
            t.data.resize(count * dtype_size(t.dtype));
            for (auto& x : t.data) x = uint8_t(r.next());
            f.tensors["t" + std::to_string(r.below(1000))] = t;
        }
        if (r.below(2)) f.metadata["m" + std::to_string(r.below(10))] = std::string(r.below(20), 'x');
        const std::string s = serialize_safetensors(f);
        const StFile g = parse_safetensors("r", reinterpret_cast<const uint8_t*>(s.data()), s.size());
        ASSERT_TRUE(same_file(f, g)) << "iteration " << it;
        ASSERT_EQ(serialize_safetensors(g), s);
    }
}

// ---- hostile input ----------------------------------------------------------------------------

const char* kT = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";  // + 8 bytes of data

std::string entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return "{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

TEST(Safetensors, ValidBaseCaseOfTheHostileTests) {
    const Bytes b = file_of(kT, Bytes(8, 0));
    EXPECT_EQ(parse_safetensors("x", b.data(), b.size()).tensors.size(), 1u);
}

TEST(Safetensors, MissingFileOrDirectoryIsNamed) {
    TempDir d;
    EXPECT_TRUE(contains(error_of([&] { read_safetensors(d / "nope.safetensors"); }), "nope.safetensors: missing"));
    EXPECT_TRUE(contains(error_of([&] { read_safetensors(d / ""); }), "is a directory"));
}

TEST(Safetensors, AFifoIsRefusedAtOnce) {
    // (open() of a FIFO waited for a writer: `eval --checkpoint fifo` hung); in a child process
    // that a timer ends, so that a hang fails the test instead of stopping the suite
    TempDir d;
    const std::string fifo = d / "ck.safetensors";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    std::fflush(stdout);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::alarm(10);
        const std::string why = error_of([&] { read_safetensors(fifo); });
        ::_exit(why.find(fifo + ": is not a regular file") != std::string::npos ? 0 : 1);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0)
        << (WIFSIGNALED(st) ? "still waiting after 10 s" : "another message");
}

TEST(Safetensors, TooShortFiles) {
    EXPECT_TRUE(contains(rejects({}), "file is 0 bytes, too short"));
    EXPECT_TRUE(contains(rejects(Bytes(7, 0)), "file is 7 bytes, too short"));
    EXPECT_TRUE(contains(error_of([] { parse_safetensors("null", nullptr, 0); }), "null: file is 0 bytes"));
}

TEST(Safetensors, HeaderLengthBeyondTheFileOrTheLimit) {
    Bytes b;
    append_u64(b, std::numeric_limits<uint64_t>::max());
    b.resize(1234, ' ');
    EXPECT_TRUE(contains(rejects(b), "header length 18446744073709551615 is larger than the file (1234 bytes)"));
    Bytes c = file_of(kT, Bytes(8, 0));
    c[0] = uint8_t(c.size() - 7);  // one past the end
    EXPECT_TRUE(contains(rejects(c), "is larger than the file"));
    // over 100 MiB (in memory only: a file that size is not worth writing)
    Bytes big;
    append_u64(big, kSafetensorsMaxHeader + 1);
    big.resize(8 + kSafetensorsMaxHeader + 16, ' ');
    big[8] = '{';
    EXPECT_TRUE(contains(error_of([&] { parse_safetensors("big", big.data(), big.size()); }),
                         "big: header length 104857601 is over the limit"));
}

TEST(Safetensors, HeaderThatIsNotAJsonObject) {
    EXPECT_TRUE(contains(rejects(file_of("")), "header is empty"));
    EXPECT_TRUE(contains(rejects(file_of("[1,2]   ")), "header does not start with '{'"));
    EXPECT_TRUE(contains(rejects(file_of(" {}")), "header does not start with '{'"));
    EXPECT_TRUE(contains(rejects(file_of("{\"t\":")), "header is not valid JSON (parse error"));
    EXPECT_TRUE(contains(rejects(file_of("{} x")), "header is not valid JSON"));
    // nlohmann's parser stops at a NUL byte as if the input ended there; the reader must not
    EXPECT_TRUE(contains(rejects(file_of(std::string("{}\0\0", 4))), "header has a NUL byte at offset 2"));
    EXPECT_TRUE(contains(rejects(file_of(std::string("{}\0x", 4))), "header has a NUL byte at offset 2"));
    EXPECT_TRUE(contains(rejects(file_of(std::string("{\"a\0\":1}", 8))), "NUL byte at offset 3"));
    EXPECT_TRUE(contains(rejects(file_of("{\"a\xff\":1}")), "header is not valid JSON"));
    EXPECT_TRUE(contains(rejects(file_of("{\"__metadata__\":{\"x\":1e999}}")), "header is not valid JSON"));
    EXPECT_TRUE(contains(rejects(file_of("{\"a\":[[[[[[[[[[[[1]]]]]]]]]]]]}")), "header nests deeper than"));
    EXPECT_TRUE(contains(rejects(file_of("{\"__metadata__\":{},\"__metadata__\":{}}")),
                         "key '__metadata__' appears twice in the header"));
    const std::string t = entry("\"U8\"", "[0]", "[0,0]");
    EXPECT_TRUE(contains(rejects(file_of("{\"t\":" + t + ",\"t\":" + t + "}")), "key 't' appears twice"));
    EXPECT_TRUE(contains(rejects(file_of("{\"t\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}")),
                         "key 'dtype' appears twice in an entry"));
}

TEST(Safetensors, BadTensorEntries) {
    const Bytes d8(8, 0);
    auto with = [&](const std::string& e) { return rejects(file_of("{\"t\":" + e + "}", d8)); };
    EXPECT_TRUE(contains(with("3"), "tensor 't': entry is not an object (got 3)"));
    EXPECT_TRUE(contains(with("[]"), "tensor 't': entry is not an object"));
    EXPECT_TRUE(contains(with("{\"shape\":[2],\"data_offsets\":[0,8]}"), "tensor 't': entry has no \"dtype\""));
    EXPECT_TRUE(contains(with("{\"dtype\":\"F32\",\"data_offsets\":[0,8]}"), "entry has no \"shape\""));
    EXPECT_TRUE(contains(with("{\"dtype\":\"F32\",\"shape\":[2]}"), "entry has no \"data_offsets\""));
    EXPECT_TRUE(contains(with("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}"),
                         "tensor 't': unknown key 'x'"));
    // a shape of more values than any tensor has dimensions: refused before the header is built
    // (a shape of 50 million zeros, 0 bytes of data, took gigabytes of memory); 64 are read
    std::string zeros64 = "[2";
    for (int i = 1; i < 64; ++i) zeros64 += ",1";
    zeros64 += "]";
    const Bytes dims64 = file_of("{\"t\":" + entry("\"F32\"", zeros64, "[0,8]") + "}", d8);
    EXPECT_EQ(parse_safetensors("x", dims64.data(), dims64.size()).tensors.at("t").shape.size(), 64u);
    EXPECT_TRUE(contains(with(entry("\"F32\"", zeros64.substr(0, zeros64.size() - 1) + ",1]", "[0,8]")),
                         "an array in the header holds more than 64 values"));
    // dtype
    EXPECT_TRUE(contains(with(entry("\"F16\"", "[4]", "[0,8]")), "tensor 't': unsupported dtype 'F16'"));
    EXPECT_TRUE(contains(with(entry("\"f32\"", "[2]", "[0,8]")), "unsupported dtype 'f32'"));
    EXPECT_TRUE(contains(with(entry("4", "[2]", "[0,8]")), "tensor 't': dtype is not a string (got 4)"));
    // shape
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[-2]", "[0,8]")), "tensor 't': shape [-2] has dimension 0 = -2"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2.0]", "[0,8]")), "has dimension 0 = 2.0"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[1,\"2\"]", "[0,8]")), "has dimension 1 = \"2\""));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[9223372036854775808]", "[0,8]")), "has dimension 0"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "2", "[0,8]")), "tensor 't': shape is not a list (got 2)"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[4294967296,4294967296]", "[0,8]")),
                         "shape [4294967296,4294967296] of F32 has too many elements"));
    EXPECT_TRUE(contains(with(entry("\"F64\"", "[4611686018427387904]", "[0,8]")), "has too many elements"));
    // data_offsets
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[0]")), "tensor 't': data_offsets is not a list of two"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[0,8,8]")), "data_offsets is not a list of two"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[0,\"8\"]")), "data_offsets is not a list of two"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[-1,8]")), "data_offsets is not a list of two"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[0,8.0]")), "data_offsets is not a list of two"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "{}")), "data_offsets is not a list of two"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[0]", "[8,0]")), "tensor 't': data_offsets [8, 0] have begin > end"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[8,16]")),
                         "tensor 't': data_offsets [8, 16] end beyond the data section (8 bytes)"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[2]", "[0,18446744073709551615]")), "end beyond the data section"));
    EXPECT_TRUE(contains(with(entry("\"F32\"", "[3]", "[0,8]")),
                         "tensor 't': data_offsets [0, 8] hold 8 bytes, but F32 [3] needs 12"));
    EXPECT_TRUE(contains(with(entry("\"F64\"", "[2]", "[0,8]")), "hold 8 bytes, but F64 [2] needs 16"));
}

TEST(Safetensors, OverlapsAndHolesInTheDataSection) {
    const std::string a = entry("\"F32\"", "[2]", "[0,8]");
    EXPECT_TRUE(contains(rejects(file_of("{\"a\":" + a + ",\"b\":" + entry("\"F32\"", "[2]", "[4,12]") + "}", Bytes(12, 0))),
                         "tensors 'a' [0, 8] and 'b' [4, 12] overlap"));
    EXPECT_TRUE(contains(rejects(file_of("{\"a\":" + a + ",\"b\":" + a + "}", Bytes(8, 0))),
                         "tensors 'a' [0, 8] and 'b' [0, 8] overlap"));
    EXPECT_TRUE(contains(rejects(file_of("{\"a\":" + a + ",\"z\":" + entry("\"U8\"", "[0]", "[4,4]") + "}", Bytes(8, 0))),
                         "overlap"));
    EXPECT_TRUE(contains(rejects(file_of("{\"a\":" + entry("\"F32\"", "[1]", "[0,4]") + ",\"b\":" +
                                         entry("\"F32\"", "[1]", "[8,12]") + "}", Bytes(12, 0))),
                         "bytes 4..8 of the data section belong to no tensor"));
    EXPECT_TRUE(contains(rejects(file_of(kT, Bytes(9, 0))), "bytes 8..9 of the data section belong to no tensor"));
    EXPECT_TRUE(contains(rejects(file_of("{}", Bytes(3, 0))), "bytes 0..3 of the data section"));
    // zero-sized tensors at the boundaries are fine
    const Bytes ok = file_of("{\"a\":" + a + ",\"e\":" + entry("\"U8\"", "[0]", "[8,8]") + ",\"f\":" +
                             entry("\"I64\"", "[3,0]", "[0,0]") + "}", Bytes(8, 0));
    EXPECT_EQ(parse_safetensors("ok", ok.data(), ok.size()).tensors.size(), 3u);
}

TEST(Safetensors, BadMetadata) {
    EXPECT_TRUE(contains(rejects(file_of("{\"__metadata__\":[]}")), "__metadata__ is not an object (got [])"));
    EXPECT_TRUE(contains(rejects(file_of("{\"__metadata__\":null}")), "__metadata__ is not an object"));
    EXPECT_TRUE(contains(rejects(file_of("{\"__metadata__\":{\"a\":\"1\",\"epoch\":3}}")),
                         "__metadata__ value 'epoch' is not a string (got 3)"));
    EXPECT_TRUE(contains(rejects(file_of("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}")), "value 'a' is not a string"));
}

TEST(Safetensors, LongNamesAreCutShortInMessages) {
    const std::string name(5000, 'n');
    const std::string msg = rejects(file_of("{\"" + name + "\":1}"));
    EXPECT_TRUE(contains(msg, "...' (5000 characters)"));
    EXPECT_LT(msg.size(), 400u);
}

// ---- helpers, expect_tensor, the writer's checks -------------------------------------------

TEST(Safetensors, ExpectTensorNamesTheCheckpointAndTheFault) {
    TempDir d;
    StFile f;
    put_tensor(f, "conv.w", {2, 3}, seq<float>(6, 1, 0));
    write_safetensors(d / "c.safetensors", f);
    const StFile g = read_safetensors(d / "c.safetensors");
    const std::string c = "checkpoint " + d / "c.safetensors";
    EXPECT_EQ(error_of([&] { expect_tensor(g, "conv.w", DType::F32, {3, 2}); }),
              c + ": tensor 'conv.w' has shape [2,3], expected [3,2]");
    EXPECT_EQ(error_of([&] { expect_tensor(g, "conv.w", DType::F64, {2, 3}); }),
              c + ": tensor 'conv.w' has dtype F32, expected F64");
    EXPECT_EQ(error_of([&] { expect_tensor(g, "bn.b", DType::F32, {2}); }), c + ": missing tensor 'bn.b'");
    EXPECT_EQ(error_of([&] { get_tensor<double>(g, "conv.w", {2, 3}); }),
              c + ": tensor 'conv.w' has dtype F32, expected F64");
    EXPECT_EQ(&expect_tensor(g, "conv.w", DType::F32, {2, 3}), &g.tensors.at("conv.w"));
    EXPECT_TRUE(contains(error_of([&] { expect_tensor(f, "x", DType::F32, {}); }), "checkpoint (in memory): missing"));
}

TEST(Safetensors, HelpersCheckShapesAndDTypes) {
    EXPECT_EQ(error_of([] { make_tensor<float>("w", {2, 3}, std::vector<float>(5)); }),
              "tensor 'w': shape [2,3] holds 6 elements, got 5 values");
    EXPECT_TRUE(contains(error_of([] { make_tensor<float>("w", {-1}, std::vector<float>{}); }), "tensor 'w': shape [-1]"));
    const StTensor t = make_tensor<int32_t>("i", {2}, {1, 2});
    EXPECT_EQ(t.dtype, DType::I32);
    EXPECT_EQ(t.data.size(), 8u);
    EXPECT_EQ(error_of([&] { tensor_values<float>("i", t); }), "tensor 'i': has dtype I32, read as F32");
    EXPECT_EQ(tensor_values<int32_t>("i", t), (std::vector<int32_t>{1, 2}));
    for (DType dt : {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8, DType::U64})
        EXPECT_GT(dtype_size(dt), 0u) << dtype_name(dt);
}

TEST(Safetensors, WriterRefusesInconsistentTensors) {
    TempDir d;
    const std::string path = d / "w.safetensors";
    StFile f;
    f.tensors["bad"] = StTensor{DType::F32, {2, 2}, Bytes(12)};
    EXPECT_EQ(error_of([&] { write_safetensors(path, f); }),
              path + ": tensor 'bad' is F32 [2,2], which needs 16 bytes, but holds 12");
    f.tensors["bad"] = StTensor{DType::U8, {-1}, Bytes{}};
    EXPECT_TRUE(contains(error_of([&] { write_safetensors(path, f); }), "tensor 'bad' has shape [-1]"));
    StFile m;
    m.tensors["__metadata__"] = StTensor{DType::U8, {0}, Bytes{}};
    EXPECT_TRUE(contains(error_of([&] { write_safetensors(path, m); }), "cannot be named __metadata__"));
    StFile u;
    u.metadata["k"] = "\xff\xfe";
    EXPECT_TRUE(contains(error_of([&] { write_safetensors(path, u); }), path + ": cannot write the header"));
    EXPECT_TRUE(d.listing().empty()) << "nothing written, no temporary file left";
}

TEST(Safetensors, AtomicWriteReplacesTheFileWholeAndLeavesNoTempFile) {
    TempDir d;
    const std::string path = d / "ckpt.safetensors";
    StFile a;
    put_tensor(a, "x", {3}, std::vector<double>{1, 2, 3});
    write_safetensors(path, a);
    EXPECT_EQ(d.listing(), std::vector<std::string>{"ckpt.safetensors"});
    const Bytes old_bytes = read_bytes(path);

    // a hard link to the old file: a writer that truncated and rewrote the target in place would
    // change what the link shows; a temp file renamed over the target leaves the old inode whole
    fs::create_hard_link(path, d / "old-link");
    StFile b = sample_file();
    write_safetensors(path, b);
    EXPECT_EQ(read_bytes(d / "old-link"), old_bytes);
    EXPECT_TRUE(same_file(read_safetensors(path), b));
    EXPECT_EQ(d.listing(), (std::vector<std::string>{"ckpt.safetensors", "old-link"}));

    // a write that fails leaves the existing file as it was, and no temporary file
    const Bytes current = read_bytes(path);
    StFile bad;
    bad.tensors["t"] = StTensor{DType::F64, {1}, Bytes(3)};
    EXPECT_TRUE(contains(error_of([&] { write_safetensors(path, bad); }), "tensor 't'"));
    EXPECT_EQ(read_bytes(path), current);
    EXPECT_EQ(d.listing(), (std::vector<std::string>{"ckpt.safetensors", "old-link"}));

    // parent directories are created
    write_safetensors(d / "sub/dir/c.safetensors", a);
    EXPECT_TRUE(same_file(read_safetensors(d / "sub/dir/c.safetensors"), a));
}

// ---- random mutation (Fuzz.*) --------------------------------------------------------------

int fuzz_iters() {
    const char* v = std::getenv("SPEEDRUN_FUZZ_ITERS");
    if (!v || !*v) return 10000;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end || n <= 0 || n > 100000000) {
        ADD_FAILURE() << "SPEEDRUN_FUZZ_ITERS=" << v << " is not a positive integer; using 10000";
        return 10000;
    }
    return int(n);
}

// Runs f: "" when it returns, the message when it throws sr::Error; anything else is a failure.
std::string outcome(const std::function<void()>& f, const std::string& what, int iter) {
    try {
        f();
        return "";
    } catch (const Error& e) {
        const std::string m = e.what();
        return m.empty() ? "(empty message)" : m;
    } catch (const std::exception& e) {
        ADD_FAILURE() << what << ", iteration " << iter << ": threw a non-sr::Error: " << e.what();
    } catch (...) {
        ADD_FAILURE() << what << ", iteration " << iter << ": threw something that is not a std::exception";
    }
    return "(foreign exception)";
}

uint64_t header_len(const Bytes& b) {
    if (b.size() < 8) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
    return n;
}

void set_header_len(Bytes& b, uint64_t n) {
    if (b.size() < 8) b.resize(8, 0);
    for (int i = 0; i < 8; ++i) b[i] = uint8_t(n >> (8 * i));
}

// The header region [8, 8 + len) if the length field is sane, else the whole tail.
std::pair<size_t, size_t> header_region(const Bytes& b) {
    if (b.size() <= 8) return {b.size(), b.size()};
    const uint64_t n = header_len(b);
    return {8, n <= b.size() - 8 ? size_t(8 + n) : b.size()};
}

const char* const kTokens[] = {
    "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "null", "true", "-", "0", "-1", "1e999",
    "2.5", "-0", "9223372036854775807", "9223372036854775808", "18446744073709551615",
    "18446744073709551616", "4294967296", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"",
    "\"F32\"", "\"F64\"", "\"I32\"", "\"I64\"", "\"U8\"", "\"U64\"", "\"F16\"", "\"BF16\"", "[0,0]", "[]",
    "{}", "\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},", "[[[[[[[[[[", "]]]]]]]]]]",
    "\xff", "\xc3", "\xe2\x82\xac", " ", "\n", "\t"};

// A rejection message with the file, names and numbers taken out: its kind, for the
// histogram that $SPEEDRUN_FUZZ_VERBOSE prints.
std::string kind_of(const std::string& msg, const std::string& path) {
    std::string m = msg.rfind(path + ": ", 0) == 0 ? msg.substr(path.size() + 2) : msg;
    std::string out;
    bool in_quote = false;
    int brackets = 0;  // lists (shapes, offsets) are shown as [..]
    for (size_t i = 0; i < m.size() && out.size() < 70; ++i) {
        const char c = m[i];
        if (!in_quote && (c == '[' || c == ']')) {
            if (c == '[' && brackets++ == 0) out += "[..]";
            if (c == ']' && brackets > 0) --brackets;
        } else if (brackets > 0) {
        } else if (c == '\'') {
            in_quote = !in_quote;
            if (in_quote) out += "'X'";
        } else if (in_quote) {
        } else if (c >= '0' && c <= '9') {
            if (out.empty() || out.back() != 'N') out += 'N';
        } else if (c == '(') {
            break;
        } else {
            out += c;
        }
    }
    return out;
}

void print_kinds(const std::map<std::string, int>& kinds) {
    if (!std::getenv("SPEEDRUN_FUZZ_VERBOSE")) return;
    std::vector<std::pair<int, std::string>> v;
    for (const auto& [k, n] : kinds) v.emplace_back(n, k);
    std::sort(v.rbegin(), v.rend());
    for (const auto& [n, k] : v) std::printf("[   INFO   ] %6d  %s\n", n, k.c_str());
}

// A JSON value of the kinds a header might wrongly hold.
nlohmann::json random_value(Rng& r) {
    using nlohmann::json;
    static const char* const kStrings[] = {"F32", "F64", "I32", "I64", "U8", "U64", "F16", "BOOL", "", "x"};
    switch (r.below(12)) {
        case 0: return json(int64_t(r.below(44)) - 4);
        case 1: return json(uint64_t(1) << (32 + r.below(32)));
        case 2: return json(std::numeric_limits<uint64_t>::max() - r.below(3));
        case 3: return json(-int64_t(r.next() >> 1));
        case 4: return json(double(r.below(20)) / 2);
        case 5: return json(kStrings[r.below(sizeof kStrings / sizeof kStrings[0])]);
        case 6: return json(nullptr);
        case 7: return json(r.below(2) == 1);
        case 8: return json::object({{"a", 1}});
        case 9: return json::array();
        default: {  // a list of small or large integers
            json a = json::array();
            for (int i = 0, k = int(r.below(5)); i < k; ++i)
                a.push_back(r.below(4) ? json(int64_t(r.below(20))) : json(uint64_t(1) << (30 + r.below(34))));
            return a;
        }
    }
}

// Edits the header as JSON (a field of a tensor entry or the metadata), keeping the file's framing
// valid, so that the checks behind the JSON syntax are reached. Returns false if b's header is
// not a JSON object.
bool mutate_json(Bytes& b, Rng& r) {
    using nlohmann::json;
    if (b.size() < 8 || header_len(b) > b.size() - 8) return false;
    const size_t n = size_t(header_len(b));
    json h = json::parse(b.begin() + 8, b.begin() + 8 + ptrdiff_t(n), nullptr, false);
    if (!h.is_object()) return false;
    std::vector<std::string> names;
    for (const auto& [k, v] : h.items())
        if (k != "__metadata__" && v.is_object()) names.push_back(k);
    static const char* const kFields[] = {"dtype", "shape", "data_offsets"};
    const std::string name = names.empty() ? "t" : names[r.below(uint32_t(names.size()))];
    json& e = h[name];
    if (!e.is_object()) e = json::object();
    switch (r.below(8)) {
        case 0: e[kFields[r.below(3)]] = random_value(r); break;
        case 1:  // one dimension of the shape
            if (e["shape"].is_array() && !e["shape"].empty()) e["shape"][r.below(uint32_t(e["shape"].size()))] = random_value(r);
            else e["shape"] = random_value(r);
            break;
        case 2: {  // one end of the offsets, moved a little or a lot
            json& o = e["data_offsets"];
            if (!o.is_array() || o.size() != 2 || !o[0].is_number_unsigned() || !o[1].is_number_unsigned()) {
                o = random_value(r);
                break;
            }
            const int k = int(r.below(2));
            o[k] = r.below(2) ? json(o[k].get<uint64_t>() + r.below(9) - 4) : random_value(r);
            break;
        }
        case 3:  // another tensor's offsets (an overlap, unless both are empty)
            if (names.size() >= 2) e["data_offsets"] = h[names[r.below(uint32_t(names.size()))]]["data_offsets"];
            break;
        case 4:
            if (r.below(2)) e.erase(kFields[r.below(3)]);
            else e[r.below(2) ? "extra" : "Dtype"] = random_value(r);
            break;
        case 5: h[name] = random_value(r); break;
        case 6:
            if (r.below(3)) {
                json& m = h["__metadata__"];
                if (!m.is_object()) m = json::object();
                m["k" + std::to_string(r.below(3))] = r.below(2) ? json("v") : random_value(r);
            } else {
                h["__metadata__"] = random_value(r);
            }
            break;
        case 7: {  // a new tensor entry at the end of the data section, or one already covered
            const uint64_t size = b.size() - 8 - n;
            const uint64_t begin = r.below(2) ? size : r.below(uint32_t(size + 1));
            const uint64_t len = r.below(3) * 4;
            h["n" + std::to_string(r.below(100))] = {{"dtype", "F32"}, {"shape", {len / 4}}, {"data_offsets", {begin, begin + len}}};
            if (begin == size) b.resize(b.size() + len, 7);
            break;
        }
    }
    std::string text = h.dump(-1, ' ', false, json::error_handler_t::replace);
    while (r.below(2) && text.size() % 8) text += ' ';
    Bytes out;
    append_u64(out, text.size());
    out.insert(out.end(), text.begin(), text.end());
    out.insert(out.end(), b.begin() + 8 + ptrdiff_t(n), b.end());
    b.swap(out);
    return true;
}

// Mutates b in place (one to three random mutations).
void mutate(Bytes& b, Rng& r) {
    const int count = 1 + int(r.below(3));
    for (int m = 0; m < count; ++m) {
        const auto [h0, h1] = header_region(b);
        const bool fix_len = r.below(4) != 0;  // keep the length field consistent with splices
        switch (r.below(10)) {
            case 0: {  // flip random bits anywhere
                const int k = 1 + int(r.below(4));
                for (int i = 0; i < k && !b.empty(); ++i) b[r.below(uint32_t(b.size()))] ^= uint8_t(1 + r.below(255));
                break;
            }
            case 1: {  // overwrite a header byte with a structural character
                static const char kChars[] = "{}[]\":,-0123456789e.\\ \x00\xff";
                if (h1 > h0) b[h0 + r.below(uint32_t(h1 - h0))] = uint8_t(kChars[r.below(sizeof kChars - 1)]);
                break;
            }
            case 2:  // truncate
                b.resize(r.below(uint32_t(b.size() + 1)));
                break;
            case 3: {  // extend with random bytes
                const int k = 1 + int(r.below(64));
                for (int i = 0; i < k; ++i) b.push_back(uint8_t(r.next()));
                break;
            }
            case 4: {  // the header length field: random, huge, or near the truth
                const uint64_t n = b.size();
                const uint64_t choices[] = {r.next(),
                                            std::numeric_limits<uint64_t>::max(),
                                            uint64_t(1) << 63,
                                            kSafetensorsMaxHeader + 1,
                                            n - 8,
                                            n - 7,
                                            n,
                                            0,
                                            header_len(b) + r.below(17) - 8,
                                            r.below(uint32_t(n + 1))};
                set_header_len(b, choices[r.below(sizeof choices / sizeof choices[0])]);
                break;
            }
            case 5:
            case 6: {  // splice a token into the header
                const std::string t = kTokens[r.below(sizeof kTokens / sizeof kTokens[0])];
                const size_t at = h0 + r.below(uint32_t(h1 - h0 + 1));
                b.insert(b.begin() + ptrdiff_t(at), t.begin(), t.end());
                if (fix_len && h0 == 8) set_header_len(b, header_len(b) + t.size());
                break;
            }
            case 7: {  // delete a range of the header
                if (h1 <= h0) break;
                const size_t at = h0 + r.below(uint32_t(h1 - h0));
                const size_t len = 1 + r.below(uint32_t(std::min<size_t>(h1 - at, 16)));
                b.erase(b.begin() + ptrdiff_t(at), b.begin() + ptrdiff_t(at + len));
                if (fix_len && h0 == 8) set_header_len(b, header_len(b) - len);
                break;
            }
            case 8: {  // replace a number in the header with another
                if (h1 <= h0) break;
                size_t at = h0 + r.below(uint32_t(h1 - h0));
                while (at < h1 && !(b[at] >= '0' && b[at] <= '9')) ++at;
                if (at >= h1) break;
                size_t end = at;
                while (end < h1 && b[end] >= '0' && b[end] <= '9') ++end;
                static const char* const kNums[] = {"-1", "0", "1", "7", "8", "4294967296", "18446744073709551615",
                                                    "18446744073709551616", "9223372036854775807", "1e3", "2.0",
                                                    "99999999999999999999999"};
                const std::string t = kNums[r.below(sizeof kNums / sizeof kNums[0])];
                b.erase(b.begin() + ptrdiff_t(at), b.begin() + ptrdiff_t(end));
                b.insert(b.begin() + ptrdiff_t(at), t.begin(), t.end());
                if (fix_len && h0 == 8) set_header_len(b, header_len(b) + t.size() - (end - at));
                break;
            }
            case 9: {  // duplicate a chunk of the header in place
                if (h1 <= h0) break;
                const size_t at = h0 + r.below(uint32_t(h1 - h0));
                const size_t len = 1 + r.below(uint32_t(std::min<size_t>(h1 - at, 48)));
                const Bytes chunk(b.begin() + ptrdiff_t(at), b.begin() + ptrdiff_t(at + len));
                b.insert(b.begin() + ptrdiff_t(at), chunk.begin(), chunk.end());
                if (fix_len && h0 == 8) set_header_len(b, header_len(b) + len);
                break;
            }
        }
    }
}

TEST(Fuzz, SafetensorsReader) {
    const int iters = fuzz_iters();
    TempDir d;
    const std::string path = d / "fuzz.safetensors";
    std::vector<Bytes> seeds;
    seeds.push_back(to_bytes(serialize_safetensors(sample_file())));
    {
        StFile small;
        put_tensor(small, "a", {2}, std::vector<float>{1, 2});
        put_tensor(small, "b", {}, std::vector<uint8_t>{3});
        seeds.push_back(to_bytes(serialize_safetensors(small)));
        seeds.push_back(to_bytes(serialize_safetensors(StFile{})));
    }
    Rng r(20240611);
    int parsed = 0, rejected = 0;
    std::map<std::string, int> kinds;
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < iters; ++it) {
        Bytes b = seeds[r.below(uint32_t(seeds.size()))];
        // half: one to three JSON-aware edits, then (sometimes) byte-level mutations;
        // the other half: byte-level mutations only
        const bool structured = r.below(2);
        if (structured)
            for (int k = 0, m = 1 + int(r.below(3)); k < m; ++k) mutate_json(b, r);
        if (!structured || r.below(4) == 0) mutate(b, r);
        // from memory (the exact size, so ASan sees any read past the end), then from a file:
        // both must give the same outcome and the same message
        Bytes exact(b);
        exact.shrink_to_fit();
        StFile from_mem;
        const std::string e1 = outcome([&] { from_mem = parse_safetensors(path, exact.data(), exact.size()); },
                                       "parse_safetensors", it);
        write_bytes(path, b);
        StFile from_file;
        const std::string e2 = outcome([&] { from_file = read_safetensors(path); }, "read_safetensors", it);
        ASSERT_EQ(e1, e2) << "iteration " << it << ": memory and file readers disagree";
        if (!e1.empty()) {
            ++rejected;
            ++kinds[kind_of(e1, path)];
            ASSERT_EQ(e1.rfind(path + ": ", 0), 0u) << "iteration " << it << ": message does not name the file: " << e1;
            continue;
        }
        ++parsed;
        ASSERT_TRUE(same_file(from_mem, from_file)) << "iteration " << it;
        // what parses is consistent: writing it and reading it back gives it again
        for (const auto& [name, t] : from_mem.tensors) {
            uint64_t count = 1;
            for (int64_t dim : t.shape) count *= uint64_t(dim);
            ASSERT_EQ(t.data.size(), count * dtype_size(t.dtype)) << "iteration " << it << ", tensor " << name;
        }
        std::string again;
        const std::string e3 = outcome([&] { again = serialize_safetensors(from_mem); }, "serialize", it);
        if (!e3.empty()) {  // only a name or metadata the writer cannot encode may stop it
            ASSERT_TRUE(contains(e3, "cannot write the header")) << "iteration " << it;
            continue;
        }
        const Bytes a = to_bytes(again);
        ASSERT_TRUE(same_file(parse_safetensors("again", a.data(), a.size()), from_mem)) << "iteration " << it;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[   INFO   ] %d mutated safetensors inputs: %d parsed, %d rejected with sr::Error, %.2f s\n", iters,
                parsed, rejected, s);
    print_kinds(kinds);
    if (iters >= 1000) {  // the mutations reach both sides
        EXPECT_GT(parsed, iters / 100);
        EXPECT_GT(rejected, iters / 2);
    }
}

TEST(Fuzz, CifarReader) {
    const int iters = fuzz_iters();
    TempDir d;
    ImageSet set;
    set.n = 3;
    Rng r(99);
    set.images.resize(size_t(set.n) * kCifarPixels);
    for (auto& x : set.images) x = uint8_t(r.next() >> 56);
    set.labels = {0, 9, 4};
    const std::string base_path = d / "base.bin";
    write_cifar_file(base_path, set, 0, set.n);
    const Bytes base = read_bytes(base_path);
    ASSERT_EQ(base.size(), size_t(3 * kCifarRecord));

    const std::string path = d / "fuzz.bin";
    int parsed = 0, rejected = 0;
    std::map<std::string, int> kinds;
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < iters; ++it) {
        Bytes b = base;
        const int count = 1 + int(r.below(3));
        for (int m = 0; m < count; ++m) {
            switch (r.below(7)) {
                case 0:  // flip random bytes
                    for (int i = 0, k = 1 + int(r.below(8)); i < k && !b.empty(); ++i)
                        b[r.below(uint32_t(b.size()))] ^= uint8_t(1 + r.below(255));
                    break;
                case 1: {  // a label byte: valid or not
                    const size_t recs = b.size() / kCifarRecord;
                    if (recs) b[size_t(r.below(uint32_t(recs))) * kCifarRecord] = uint8_t(r.below(2) ? r.below(10) : r.next());
                    break;
                }
                case 2:  // truncate anywhere
                    b.resize(r.below(uint32_t(b.size() + 1)));
                    break;
                case 3:  // truncate to whole records (possibly none)
                    b.resize(size_t(r.below(uint32_t(b.size() / kCifarRecord + 1))) * kCifarRecord);
                    break;
                case 4:  // extend with random bytes
                    for (int i = 0, k = 1 + int(r.below(100)); i < k; ++i) b.push_back(uint8_t(r.next()));
                    break;
                case 5: {  // append a copy of a record of the base file (a valid longer file)
                    const ptrdiff_t k = ptrdiff_t(r.below(3)) * kCifarRecord;
                    b.insert(b.end(), base.begin() + k, base.begin() + k + kCifarRecord);
                    break;
                }
                case 6:  // a few bytes short of or past a record boundary
                    b.resize(size_t(std::max<int64_t>(0, int64_t(b.size()) + int64_t(r.below(9)) - 4)), 0);
                    break;
            }
        }
        write_bytes(path, b);
        ImageSet got;
        const std::string e = outcome([&] { got = read_cifar_file(path, false); }, "read_cifar_file", it);
        // the oracle: a file is valid exactly when it is whole records, at least one, labels 0..9
        bool valid = !b.empty() && b.size() % kCifarRecord == 0;
        for (size_t i = 0; valid && i < b.size(); i += kCifarRecord) valid = b[i] <= 9;
        ASSERT_EQ(e.empty(), valid) << "iteration " << it << ", " << b.size() << " bytes: " << e;
        if (!valid) {
            ++rejected;
            ++kinds[kind_of(e, path)];
            ASSERT_EQ(e.rfind(path + ": ", 0), 0u) << "iteration " << it << ": message does not name the file: " << e;
            continue;
        }
        ++parsed;
        ASSERT_EQ(size_t(got.n), b.size() / kCifarRecord);
        ASSERT_EQ(got.images.size(), size_t(got.n) * kCifarPixels);
        for (int i = 0; i < got.n; ++i) {
            const uint8_t* rec = b.data() + size_t(i) * kCifarRecord;
            ASSERT_EQ(got.labels[i], rec[0]);
            for (int p = 0; p < kCifarSide * kCifarSide; p += 97)  // a sample of the pixels
                for (int c = 0; c < 3; ++c)
                    ASSERT_EQ(got.image(i)[3 * p + c], rec[1 + c * kCifarSide * kCifarSide + p]);
        }
        // a file this small is never a full batch
        ASSERT_TRUE(contains(error_of([&] { read_cifar_file(path, true); }), "is not 10000 records"));
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[   INFO   ] %d mutated CIFAR-10 batch files: %d read, %d rejected with sr::Error, %.2f s\n", iters,
                parsed, rejected, s);
    print_kinds(kinds);
    if (iters >= 1000) {
        EXPECT_GT(parsed, iters / 100);
        EXPECT_GT(rejected, iters / 2);
    }
}

}  // namespace
}  // namespace sr
