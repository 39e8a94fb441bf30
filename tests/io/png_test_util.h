// png_test_util.h: writes PNG files with libpng's low-level API, so a test controls exactly what
// the file holds (colour type, bit depth, palette, tRNS, interlacing, no gamma chunk), for the
// reader tests (test_png_image.cpp) and the predict test (test_predict.cpp).
#pragma once
#include <csetjmp>
#include <cstdio>
#include <string>
#include <vector>

#include <png.h>

namespace sr::test {

struct PngFile {
    int width = 0, height = 0;
    int color_type = PNG_COLOR_TYPE_RGB;  // PNG_COLOR_TYPE_{GRAY,GRAY_ALPHA,RGB,RGB_ALPHA,PALETTE}
    int bit_depth = 8;                    // 8 or 16 (16: samples big-endian, as PNG stores them)
    bool interlaced = false;
    std::vector<uint8_t> rows;            // height rows of packed samples, no filter byte
    std::vector<png_color> palette;       // PNG_COLOR_TYPE_PALETTE
    std::vector<uint8_t> palette_alpha;   // tRNS of the palette (may be empty)
};

// libpng reports errors by longjmp to the setjmp below; nothing with a destructor is made after it.
inline bool write_png_file(const std::string& path, const PngFile& s) {
    const size_t stride = s.rows.size() / size_t(s.height);
    std::vector<png_bytep> rows(size_t(s.height));  // made before setjmp: a longjmp keeps it alive
    for (int y = 0; y < s.height; ++y) rows[size_t(y)] = const_cast<png_bytep>(s.rows.data() + size_t(y) * stride);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return false;
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = p ? png_create_info_struct(p) : nullptr;
    if (!p || !info || setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        std::fclose(f);
        return false;
    }
    png_init_io(p, f);
    png_set_IHDR(p, info, png_uint_32(s.width), png_uint_32(s.height), s.bit_depth, s.color_type,
                 s.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (!s.palette.empty()) png_set_PLTE(p, info, s.palette.data(), int(s.palette.size()));
    if (!s.palette_alpha.empty())
        png_set_tRNS(p, info, s.palette_alpha.data(), int(s.palette_alpha.size()), nullptr);
    png_write_info(p, info);
    png_write_image(p, rows.data());
    png_write_end(p, nullptr);
    png_destroy_write_struct(&p, &info);
    return std::fclose(f) == 0;
}

}  // namespace sr::test
