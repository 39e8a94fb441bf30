// test_png_image.cpp: PNG files -> 32x32 RGB (src/io/png_image.h). Each case writes a PNG with
// libpng (png_test_util.h) and compares the 32x32 result with the rule computed here a second
// way, from the sample values the test wrote:
//   - area average as the mean over an (S*32)^2 grid where every source pixel is repeated 32x32
//     times and every output pixel owns an S x S block (no overlap fractions at all);
//   - bilinear as the four-neighbour formula in 2-D;
//   - alpha over white on real values.
// Tolerance: the output is rounded once, so |out - exact| <= 0.5 (plus 1e-6 for the sums); a
// 16-bit file is also rounded to 8 bits by libpng first, so there it is 1.0.
// Bad files (truncated, empty, text named .png, missing, a directory, a bad CRC) must give
// sr::Error naming the path.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"
#include "io/png_image.h"
#include "io/png_test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

// This process's folder for the files the tests write; removed, with whatever a failed test left
// in it, when the process ends (ctest runs each test in a process of its own, and each left an
// empty folder in /tmp behind).
fs::path temp_dir() {
    struct Folder {
        fs::path path = fs::temp_directory_path() / ("speedrun-png-" + std::to_string(::getpid()));
        Folder() { fs::create_directories(path); }
        ~Folder() {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
    };
    static const Folder folder;
    return folder.path;
}

// A source image as the test knows it: real RGB values in [0,255] and alpha in [0,1].
struct Src {
    int w = 0, h = 0;
    std::vector<double> rgb, alpha;  // (h, w, 3), (h, w)
};

// The file to write and what it holds, for one colour type / depth, with seeded random samples.
std::pair<test::PngFile, Src> make_case(int w, int h, int color_type, int depth, bool interlaced, uint64_t seed) {
    Rng rng(seed);
    test::PngFile f;
    f.width = w, f.height = h, f.color_type = color_type, f.bit_depth = depth, f.interlaced = interlaced;
    Src s;
    s.w = w, s.h = h;
    s.rgb.resize(size_t(w) * h * 3);
    s.alpha.assign(size_t(w) * h, 1.0);
    const double top = depth == 16 ? 65535.0 : 255.0;
    auto sample = [&]() {  // one sample into the file; its value on the 0..255 scale
        const uint32_t v = rng.below(depth == 16 ? 65536u : 256u);
        if (depth == 16) f.rows.push_back(uint8_t(v >> 8));
        f.rows.push_back(uint8_t(v & 0xff));
        return v * 255.0 / top;
    };
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        for (int i = 0; i < 16; ++i) {
            f.palette.push_back({uint8_t(rng.below(256)), uint8_t(rng.below(256)), uint8_t(rng.below(256))});
            f.palette_alpha.push_back(i < 4 ? uint8_t(rng.below(256)) : 255);  // some see-through entries
        }
    }
    for (size_t i = 0; i < size_t(w) * h; ++i) {
        double* px = &s.rgb[i * 3];
        switch (color_type) {
        case PNG_COLOR_TYPE_GRAY: px[0] = px[1] = px[2] = sample(); break;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
            px[0] = px[1] = px[2] = sample();
            s.alpha[i] = sample() / 255.0;
            break;
        case PNG_COLOR_TYPE_RGB:
            for (int c = 0; c < 3; ++c) px[c] = sample();
            break;
        case PNG_COLOR_TYPE_RGB_ALPHA:
            for (int c = 0; c < 3; ++c) px[c] = sample();
            s.alpha[i] = sample() / 255.0;
            break;
        case PNG_COLOR_TYPE_PALETTE: {
            const uint32_t k = rng.below(16);
            f.rows.push_back(uint8_t(k));
            px[0] = f.palette[k].red, px[1] = f.palette[k].green, px[2] = f.palette[k].blue;
            s.alpha[i] = f.palette_alpha[k] / 255.0;
            break;
        }
        }
    }
    return {f, s};
}

// The rule of png_image.h, written independently: (side, side, 3) real values before rounding.
std::vector<double> expected(const Src& s, int side) {
    const int S = std::min(s.w, s.h), left = (s.w - S) / 2, top = (s.h - S) / 2;
    auto at = [&](int y, int x, int c) {  // cropped, alpha over white
        const size_t i = size_t(top + y) * s.w + left + x;
        return s.alpha[i] * s.rgb[i * 3 + c] + (1 - s.alpha[i]) * 255.0;
    };
    std::vector<double> out(size_t(side) * side * 3);
    for (int i = 0; i < side; ++i)
        for (int j = 0; j < side; ++j)
            for (int c = 0; c < 3; ++c) {
                double v = 0;
                if (S >= side) {  // fine grid of S*side cells a side; cell (u, v) is source (u/side, v/side)
                    for (int u = i * S; u < (i + 1) * S; ++u)
                        for (int w = j * S; w < (j + 1) * S; ++w) v += at(u / side, w / side, c);
                    v /= double(S) * S;
                } else {
                    const double sy = std::max(0.0, (i + 0.5) * S / side - 0.5);
                    const double sx = std::max(0.0, (j + 0.5) * S / side - 0.5);
                    const int y0 = std::min(int(sy), S - 1), x0 = std::min(int(sx), S - 1);
                    const int y1 = std::min(y0 + 1, S - 1), x1 = std::min(x0 + 1, S - 1);
                    const double fy = std::min(sy, double(S - 1)) - y0, fx = std::min(sx, double(S - 1)) - x0;
                    v = (1 - fy) * ((1 - fx) * at(y0, x0, c) + fx * at(y0, x1, c)) +
                        fy * ((1 - fx) * at(y1, x0, c) + fx * at(y1, x1, c));
                }
                out[(size_t(i) * side + j) * 3 + c] = v;
            }
    return out;
}

struct PngCase {
    const char* name;
    int w, h, color_type, depth;
    bool interlaced;
};

void PrintTo(const PngCase& c, std::ostream* os) { *os << c.name; }  // for test names and ctest

class PngImage : public ::testing::TestWithParam<PngCase> {};

TEST_P(PngImage, MatchesTheStatedRule) {
    const PngCase& pc = GetParam();
    const auto [file, src] = make_case(pc.w, pc.h, pc.color_type, pc.depth, pc.interlaced, 1234 + pc.w * 7 + pc.h);
    const fs::path path = temp_dir() / (std::string(pc.name) + ".png");
    ASSERT_TRUE(test::write_png_file(path.string(), file)) << path;
    const RgbaImage im = read_png(path.string());
    EXPECT_EQ(im.width, pc.w);
    EXPECT_EQ(im.height, pc.h);
    const std::vector<uint8_t> got = png_to_square_rgb(im, 32);
    const std::vector<double> want = expected(src, 32);
    ASSERT_EQ(got.size(), want.size());
    const double tol = (pc.depth == 16 ? 1.0 : 0.5) + 1e-6;
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::abs(got[i] - want[i]);
        if (e > worst) worst = e, wi = i;
    }
    EXPECT_LE(worst, tol) << pc.name << ": pixel " << wi / 3 << " channel " << wi % 3 << " is " << int(got[wi])
                          << ", the rule gives " << want[wi];
    // the file path works the same as read + convert
    EXPECT_EQ(load_png_rgb(path.string(), 32), got);
    fs::remove(path);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, PngImage,
    ::testing::Values(PngCase{"rgb_64x48", 64, 48, PNG_COLOR_TYPE_RGB, 8, false},          // down 48 -> 32
                      PngCase{"rgba_64x48", 64, 48, PNG_COLOR_TYPE_RGB_ALPHA, 8, false},   // + alpha
                      PngCase{"gray_7x5", 7, 5, PNG_COLOR_TYPE_GRAY, 8, false},            // up 5 -> 32
                      PngCase{"gray_alpha_5x7", 5, 7, PNG_COLOR_TYPE_GRAY_ALPHA, 8, false},
                      PngCase{"palette_7x5", 7, 5, PNG_COLOR_TYPE_PALETTE, 8, false},      // with tRNS
                      PngCase{"palette_64x48", 64, 48, PNG_COLOR_TYPE_PALETTE, 8, false},
                      PngCase{"rgb16_64x48", 64, 48, PNG_COLOR_TYPE_RGB, 16, false},
                      PngCase{"gray16_7x5", 7, 5, PNG_COLOR_TYPE_GRAY, 16, false},
                      PngCase{"rgba16_64x48", 64, 48, PNG_COLOR_TYPE_RGB_ALPHA, 16, false},
                      PngCase{"rgb_interlaced_33x40", 33, 40, PNG_COLOR_TYPE_RGB, 8, true},  // 33 -> 32
                      PngCase{"rgb_32x32", 32, 32, PNG_COLOR_TYPE_RGB, 8, false},          // unchanged
                      PngCase{"rgb_1x1", 1, 1, PNG_COLOR_TYPE_RGB, 8, false}),
    [](const ::testing::TestParamInfo<PngCase>& i) { return std::string(i.param.name); });

TEST(PngImageRule, ThirtyTwoByThirtyTwoIsUnchangedAndTransparentIsWhite) {
    // the exact cases: a 32x32 RGB file comes back byte for byte; alpha 0 is pure white
    auto [file, src] = make_case(32, 32, PNG_COLOR_TYPE_RGB, 8, false, 5);
    const fs::path path = temp_dir() / "exact.png";
    ASSERT_TRUE(test::write_png_file(path.string(), file));
    EXPECT_EQ(load_png_rgb(path.string(), 32), file.rows);
    test::PngFile clear;
    clear.width = clear.height = 4;
    clear.color_type = PNG_COLOR_TYPE_RGB_ALPHA;
    for (int i = 0; i < 16; ++i) clear.rows.insert(clear.rows.end(), {10, 20, 30, 0});
    ASSERT_TRUE(test::write_png_file(path.string(), clear));
    for (uint8_t v : load_png_rgb(path.string(), 32)) ASSERT_EQ(v, 255);
    fs::remove(path);
}

// The error must be an sr::Error whose message names the file and contains `what`.
void expect_error(const std::string& path, const std::string& what) {
    try {
        read_png(path);
        FAIL() << path << " was read without an error";
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find(path), std::string::npos) << "the message does not name the file: " << m;
        EXPECT_NE(m.find(what), std::string::npos) << "the message does not say '" << what << "': " << m;
    }
}

TEST(PngImageErrors, BadFilesNameThePathAndTheFault) {
    const fs::path d = temp_dir() / "errors";
    fs::create_directories(d);
    auto [file, src] = make_case(64, 48, PNG_COLOR_TYPE_RGB, 8, false, 9);
    const std::string good = (d / "good.png").string();
    ASSERT_TRUE(test::write_png_file(good, file));
    std::string bytes;
    {
        std::ifstream f(good, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(f), {});
    }
    auto put = [&](const char* name, const std::string& content) {
        const std::string p = (d / name).string();
        std::ofstream(p, std::ios::binary) << content;
        return p;
    };
    expect_error(put("truncated.png", bytes.substr(0, bytes.size() / 2)), "truncated");
    expect_error(put("header_only.png", bytes.substr(0, 20)), "corrupt PNG header");
    expect_error(put("empty.png", ""), "empty file");
    expect_error(put("text.png", "this is a text file, renamed .png\n"), "not a PNG file");
    std::string bad_crc = bytes;
    bad_crc[20] ^= 0x01;  // a byte of IHDR's width: its CRC no longer matches
    expect_error(put("bad_crc.png", bad_crc), "corrupt PNG header");
    expect_error((d / "missing.png").string(), "no such file");
    expect_error(d.string(), "is a directory");
    fs::remove_all(d);
}

// The largest image read (64 megapixels) and one pixel row more: a gray 8192x8192 PNG is 64 KB
// on disk; decoding it and resizing it to 32x32 takes the RGBA buffer (256 MiB) and little more
// (a square of doubles beside it took 1.5 GiB); the next size up is refused by its header.
TEST(PngImageErrors, TheLargestImageFitsItsBufferAndOneRowMoreIsRefused) {
    const fs::path d = temp_dir() / "largest";
    fs::create_directories(d);
    test::PngFile f;
    f.width = 8192;
    f.height = 8192;
    f.color_type = PNG_COLOR_TYPE_GRAY;
    f.rows.assign(size_t(f.width) * f.height, 128);
    for (size_t i = 0; i < f.rows.size(); i += 4099) f.rows[i] = 7;  // (not all one colour)
    const std::string largest = (d / "largest.png").string();
    ASSERT_TRUE(test::write_png_file(largest, f));
    f.height = 8193;
    f.rows.resize(size_t(f.width) * f.height, 128);
    const std::string larger = (d / "larger.png").string();
    ASSERT_TRUE(test::write_png_file(larger, f));
    std::vector<uint8_t>().swap(f.rows);
    expect_error(larger, "8192x8193 pixels is larger than the 64 megapixels");
    // the peak of resident memory while it is read, in a child process (its own high-water mark)
    const auto vm_hwm_kib = [] {
        std::ifstream st("/proc/self/status");
        std::string line;
        while (std::getline(st, line))
            if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
        return -1L;
    };
    if (vm_hwm_kib() < 0) GTEST_SKIP() << "no VmHWM in /proc/self/status";
    std::fflush(stdout);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const long before = vm_hwm_kib();
        const std::vector<uint8_t> rgb = load_png_rgb(largest, 32);
        const long grew_mib = (vm_hwm_kib() - before) >> 10;
        // exit status: the growth in 16 MiB units (255: more than 4 GiB)
        ::_exit(rgb.size() == 32 * 32 * 3 ? int(std::min(grew_mib / 16, 255L)) : 255);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_LE(WEXITSTATUS(st) * 16, 400) << "resident memory grew by about " << WEXITSTATUS(st) * 16
                                         << " MiB reading an 8192x8192 PNG (its RGBA buffer: 256 MiB)";
    fs::remove_all(d);
}

}  // namespace
}  // namespace sr
