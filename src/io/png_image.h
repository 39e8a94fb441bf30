// png_image.h: any PNG file in, a CIFAR-sized RGB image out (for `speedrun predict`). Pure
// functions: no backend, no global state; errors are sr::Error naming the file.
//
// The rule, step by step (README and docs/inference.md state it too):
//   1. Decode with libpng's simplified API (png_image) into 8-bit RGBA: palette, gray, gray+alpha,
//      RGB, RGBA, 1/2/4/16-bit, tRNS and interlaced files all arrive as the same layout. Values
//      are sRGB-encoded 8-bit values (libpng converts a file whose gAMA says otherwise); a 16-bit
//      file without gAMA or sRGB chunk is taken as sRGB-encoded too (PNG_IMAGE_FLAG_16BIT_sRGB,
//      not libpng's default "linear"), so a 16-bit sample v becomes round(v / 257).
//   2. Alpha is composited over WHITE on those sRGB values: v = a c + (1 - a) 255, a = alpha/255
//      (kept as a real number, not rounded).
//   3. Centre square crop of the shorter side: S = min(w, h), left = floor((w - S) / 2),
//      top = floor((h - S) / 2).
//   4. Resize S x S -> side x side, separably (rows, then columns):
//        S > side: area average (box filter): output pixel j covers source interval
//                  [j S/side, (j+1) S/side) and averages it weighted by overlap;
//        S < side: bilinear with pixel centres aligned (src = (j + 0.5) S/side - 0.5, clamped
//                  to [0, S-1]; PyTorch's align_corners=False);
//        S = side: unchanged.
//   5. Round to the nearest integer (halves up), clamp to [0, 255]: 8-bit RGB like CIFAR-10's
//      own pixels, which then go through the recipe's normalisation like any test image.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sr {

// Larger images are refused (a decompression bomb would otherwise allocate gigabytes).
constexpr size_t kPngMaxPixels = size_t(64) << 20;

// A decoded PNG: width x height pixels of 8-bit RGBA (straight, not premultiplied), row-major.
struct RgbaImage {
    int width = 0, height = 0;
    std::vector<uint8_t> rgba;  // (height, width, 4)
};

// Step 1 on bytes already in memory; `name` (the file) appears in every error message.
RgbaImage decode_png(const void* data, size_t size, const std::string& name);
// Step 1 on a file: missing, unreadable, empty, not a PNG, truncated or corrupt -> sr::Error
// naming the path and the fault.
RgbaImage read_png(const std::string& path);

// Steps 2-5: (side, side, 3) 8-bit RGB.
std::vector<uint8_t> png_to_square_rgb(const RgbaImage& img, int side);

// read_png + png_to_square_rgb.
std::vector<uint8_t> load_png_rgb(const std::string& path, int side);

}  // namespace sr
