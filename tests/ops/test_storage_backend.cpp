// test_storage_backend.cpp: 16-bit activation storage (ops/storage_backend.h): the encodings
// against the compiler's _Float16 and an integer bfloat16 rounding, every fp16 value through a
// round trip, and the CPU reference backend keeping activations in 16 bits and everything else
// in fp32. (Whole networks and the trainer against the fp32-container emulation:
// tests/test_backend_network.cpp and tests/test_train.cpp.)
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "ops/rounding_backend.h"
#include "ops/storage_backend.h"
#include "test_util.h"

namespace sr {
namespace {

std::vector<float> values(uint64_t seed) {
    Rng rng(seed);
    std::vector<float> v = {0.f, -0.f, 1.f, -1.f, 0.1f, 1e-3f, 3.14159f, 65504.f, 65519.f,
                            6.103515625e-05f, 5.9604644775390625e-08f, 2.9e-08f, 3.1e-08f};
    for (int i = 0; i < 20000; ++i) {
        const double mag = std::pow(10.0, rng.uniform() * 14 - 10);  // 1e-10 .. 1e4
        v.push_back(float(rng.below(2) ? mag : -mag));
    }
    return v;
}

uint16_t half_bits_of(_Float16 h) {
    uint16_t u;
    std::memcpy(&u, &h, 2);
    return u;
}

TEST(StorageFormats, HalfBitsEqualTheCompilersConversion) {
    for (float x : values(1)) {
        ASSERT_EQ(to_half_bits(x), half_bits_of(static_cast<_Float16>(x))) << x;
        ASSERT_EQ(from_half_bits(to_half_bits(x)), static_cast<float>(static_cast<_Float16>(x))) << x;
    }
    EXPECT_EQ(to_half_bits(1e6f), 0x7bffu);   // saturates at 65504 (IEEE would give inf)
    EXPECT_EQ(to_half_bits(-1e6f), 0xfbffu);
    EXPECT_TRUE(std::isnan(from_half_bits(to_half_bits(std::nanf("")))));
}

TEST(StorageFormats, EveryHalfValueRoundTrips) {
    for (uint32_t h = 0; h < 65536; ++h) {
        if (((h >> 10) & 0x1f) == 0x1f) continue;  // inf and NaN
        const float f = from_half_bits(uint16_t(h));
        ASSERT_EQ(to_half_bits(f), h) << h;
        ASSERT_EQ(f, static_cast<float>(std::bit_cast<_Float16>(uint16_t(h)))) << h;
    }
}

TEST(StorageFormats, Bf16BitsEqualIntegerRounding) {
    for (float x : values(2)) {
        uint32_t u;
        std::memcpy(&u, &x, 4);
        const uint32_t want = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // nearest, ties to even
        ASSERT_EQ(to_bf16_bits(x), want) << x;
        uint32_t back;
        const float f = from_bf16_bits(uint16_t(want));
        std::memcpy(&back, &f, 4);
        ASSERT_EQ(back, want << 16) << x;
    }
    EXPECT_EQ(to_bf16_bits(3.4e38f), 0x7f7fu);  // saturates at the largest finite value
    EXPECT_TRUE(std::isnan(from_bf16_bits(to_bf16_bits(std::nanf("")))));
}

TEST(StorageFormats, PackAndUploadUseTheBackendsFormat) {
    auto cpu = make_cpu_backend(1);
    const std::vector<float> x = {1.f, 1.f + 1.f / 1024, 1.f + 1.f / 4096, -3.3f};
    for (Storage s : {Storage::f16, Storage::bf16}) {
        StorageBackend sb(*cpu, s);
        DeviceBuffer<float> d(sb, x.size());
        upload_activations(sb, d.get(), x.data(), x.size());
        uint16_t raw[4];
        sb.download(raw, d.get(), sizeof raw);  // the first 2n bytes hold the 16-bit values
        std::vector<float> back(x.size());
        download_activations(sb, back.data(), d.get(), x.size());
        for (size_t i = 0; i < x.size(); ++i) {
            EXPECT_EQ(raw[i], s == Storage::f16 ? to_half_bits(x[i]) : to_bf16_bits(x[i]));
            EXPECT_EQ(back[i], round_to(x[i], emulated_precision(storage_name(s))->forward));
        }
        EXPECT_EQ(sb.act_at(d.get(), 3), reinterpret_cast<float*>(reinterpret_cast<char*>(d.get()) + 6));
    }
    Storage s;
    EXPECT_TRUE(parse_storage("bf16", &s));
    EXPECT_EQ(s, Storage::bf16);
    EXPECT_FALSE(parse_storage("fp8", &s));
    EXPECT_THROW(StorageBackend(*cpu, Storage::f32), Error);
}

// A convolution on 16-bit storage: y = the fp32 convolution of the stored x with the weights
// rounded to the format, packed; dw rounded to the format; db fp32 (not rounded).
TEST(StorageBackend, ConvolutionRoundsWeightsAndKeepsTheBiasGradientFp32) {
    auto cpu = make_cpu_backend(1);
    StorageBackend sb(*cpu, Storage::bf16);
    const NumberFormat& f = emulated_precision("bf16")->forward;
    ConvShape s;
    s.N = 2, s.H = s.W = 6, s.C = 4, s.K = 5;
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K,
                 nw = size_t(s.K) * 9 * s.C;
    auto x = test::randn(nx, 1), w = test::randn(nw, 2), dy = test::randn(ny, 3);
    auto bias = test::randn(size_t(s.K), 4);
    std::vector<float> xr = x, wr = w, dyr = dy;
    for (auto* v : {&xr, &wr, &dyr})
        for (float& e : *v) e = round_to(e, f);
    // the reference: fp32 ops on rounded values
    auto ref = cpu->make_conv(s);
    std::vector<float> y_ref(ny), dw_ref(nw), db_ref(size_t(s.K));
    ref->forward(y_ref.data(), xr.data(), wr.data(), bias.data());
    for (float& e : y_ref) e = round_to(e, f);
    ref->backward_weights(dw_ref.data(), db_ref.data(), dyr.data(), xr.data());
    for (float& e : dw_ref) e = round_to(e, f);
    // the storage backend (its buffers are its own: the CPU's memory, 16-bit contents)
    auto conv = sb.make_conv(s);
    DeviceBuffer<float> xd(sb, nx), yd(sb, ny), dyd(sb, ny);
    upload_activations(sb, xd.get(), x.data(), nx);
    upload_activations(sb, dyd.get(), dy.data(), ny);
    conv->forward(yd.get(), xd.get(), w.data(), bias.data());
    std::vector<float> y(ny), dw(nw), db(size_t(s.K));
    download_activations(sb, y.data(), yd.get(), ny);
    conv->backward_weights(dw.data(), db.data(), dyd.get(), xd.get());
    EXPECT_EQ(y, y_ref);
    EXPECT_EQ(dw, dw_ref);
    EXPECT_EQ(db, db_ref);
    bool db_has_unrounded = false;
    for (float e : db) db_has_unrounded |= round_to(e, f) != e;
    EXPECT_TRUE(db_has_unrounded);  // fp32: not rounded to bf16
}

}  // namespace
}  // namespace sr
