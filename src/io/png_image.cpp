// png_image.cpp: see png_image.h (the rule is written there once).
#include "io/png_image.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include <png.h>

#include "core/error.h"

namespace sr {
namespace {

struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
};

// One output index of a 1-D resize: out[j] = sum_k w[k] in[first + k].
struct Taps {
    int first = 0;
    std::vector<double> w;
};

// Step 4 along one axis: S source samples -> n output samples.
std::vector<Taps> resize_taps(int S, int n) {
    std::vector<Taps> taps(static_cast<size_t>(n));
    const double scale = double(S) / n;  // source pixels per output pixel
    for (int j = 0; j < n; ++j) {
        Taps& t = taps[size_t(j)];
        if (S == n) {
            t.first = j;
            t.w = {1.0};
        } else if (S > n) {  // area average over [j scale, (j+1) scale)
            const double lo = j * scale, hi = (j + 1) * scale;
            t.first = int(std::floor(lo));
            const int last = std::min(S - 1, int(std::ceil(hi)) - 1);
            for (int i = t.first; i <= last; ++i) {
                const double overlap = std::min(hi, double(i + 1)) - std::max(lo, double(i));
                t.w.push_back(std::max(0.0, overlap) / scale);
            }
        } else {  // bilinear, centres aligned, clamped at the edges
            const double src = std::clamp((j + 0.5) * scale - 0.5, 0.0, double(S - 1));
            t.first = std::min(int(std::floor(src)), S - 1);
            const double f = src - t.first;
            t.w = {1.0 - f};
            if (t.first + 1 < S) t.w.push_back(f);
        }
    }
    return taps;
}

}  // namespace

RgbaImage decode_png(const void* data, size_t size, const std::string& name) {
    if (size == 0) fail("{}: empty file (0 bytes), not a PNG image", name);
    if (size < 8 || png_sig_cmp(static_cast<png_const_bytep>(data), 0, 8) != 0)
        fail("{}: not a PNG file (it does not start with the PNG signature)", name);
    png_image im;
    std::memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    // libpng reports failures through im.message (it longjmps internally, never through us)
    if (!png_image_begin_read_from_memory(&im, data, size)) {
        const std::string why = im.message;
        png_image_free(&im);
        fail("{}: corrupt PNG header ({})", name, why);
    }
    if (size_t(im.width) * im.height > kPngMaxPixels) {
        const size_t w = im.width, h = im.height;
        png_image_free(&im);
        fail("{}: {}x{} pixels is larger than the {} megapixels this program reads", name, w, h,
             kPngMaxPixels >> 20);
    }
    im.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;  // 16-bit without gamma information: sRGB, not linear
    im.format = PNG_FORMAT_RGBA;
    RgbaImage out;
    out.width = int(im.width);
    out.height = int(im.height);
    out.rgba.resize(PNG_IMAGE_SIZE(im));
    if (!png_image_finish_read(&im, nullptr, out.rgba.data(), 0, nullptr)) {
        const std::string why = im.message;
        png_image_free(&im);
        fail("{}: corrupt or truncated PNG data ({})", name, why);
    }
    png_image_free(&im);
    return out;
}

RgbaImage read_png(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const auto st = fs::status(path, ec);
    if (!fs::exists(st)) fail("{}: no such file", path);
    if (fs::is_directory(st)) fail("{}: is a directory, not a PNG file", path);
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
    if (!f) fail("{}: cannot open ({})", path, std::strerror(errno));
    std::vector<uint8_t> bytes;
    uint8_t buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) {
        bytes.insert(bytes.end(), buf, buf + got);
        // a PNG of the largest size we accept, even stored uncompressed, is below this
        if (bytes.size() > 8 * kPngMaxPixels) fail("{}: file is larger than {} MiB", path, 8 * kPngMaxPixels >> 20);
    }
    if (std::ferror(f.get())) fail("{}: read error ({})", path, std::strerror(errno));
    return decode_png(bytes.data(), bytes.size(), path);
}

std::vector<uint8_t> png_to_square_rgb(const RgbaImage& img, int side) {
    SR_CHECK(side > 0 && img.width > 0 && img.height > 0);
    SR_CHECK(img.rgba.size() == size_t(img.width) * img.height * 4);
    const int S = std::min(img.width, img.height);
    const int left = (img.width - S) / 2, top = (img.height - S) / 2;
    // steps 2-3: the cropped square, alpha composited over white, as real numbers, one row at a
    // time (a whole square of doubles took 24 bytes a pixel: 1.5 GiB for a valid 8192x8192 PNG)
    // step 4: rows (x direction), then columns (y direction); the same taps serve both axes
    const std::vector<Taps> taps = resize_taps(S, side);
    std::vector<double> sq(size_t(S) * 3);
    std::vector<double> rows(size_t(S) * side * 3, 0.0);
    for (int y = 0; y < S; ++y) {
        for (int x = 0; x < S; ++x) {
            const uint8_t* p = &img.rgba[(size_t(top + y) * img.width + left + x) * 4];
            const double a = p[3] / 255.0;
            for (int c = 0; c < 3; ++c) sq[size_t(x) * 3 + c] = a * p[c] + (1.0 - a) * 255.0;
        }
        for (int j = 0; j < side; ++j) {
            const Taps& t = taps[size_t(j)];
            for (size_t k = 0; k < t.w.size(); ++k)
                for (int c = 0; c < 3; ++c)
                    rows[(size_t(y) * side + j) * 3 + c] += t.w[k] * sq[size_t(t.first + int(k)) * 3 + c];
        }
    }
    // step 5
    std::vector<uint8_t> out(size_t(side) * side * 3);
    for (int i = 0; i < side; ++i) {
        const Taps& t = taps[size_t(i)];
        for (int j = 0; j < side; ++j)
            for (int c = 0; c < 3; ++c) {
                double v = 0;
                for (size_t k = 0; k < t.w.size(); ++k)
                    v += t.w[k] * rows[(size_t(t.first + int(k)) * side + j) * 3 + c];
                out[(size_t(i) * side + j) * 3 + c] = uint8_t(std::clamp(std::floor(v + 0.5), 0.0, 255.0));
            }
    }
    return out;
}

std::vector<uint8_t> load_png_rgb(const std::string& path, int side) {
    return png_to_square_rgb(read_png(path), side);
}

}  // namespace sr
