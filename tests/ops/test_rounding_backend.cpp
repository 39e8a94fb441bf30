// test_rounding_backend.cpp: the number formats of --emulate-precision (ops/rounding_backend.h)
// against independent references (the compiler's _Float16 conversion; a double-precision
// frexp/nearbyint rounding), per-tensor scaling for FP8, and the backend rounding what it should.
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "core/error.h"
#include "ops/rounding_backend.h"
#include "test_util.h"

namespace sr {
namespace {

// Round to nearest even with `mbits` fraction bits and smallest normal 2^min_exp, in double.
double reference_round(double x, int mbits, int min_exp, double max) {
    if (x == 0) return 0;
    int e;
    std::frexp(std::abs(x), &e);  // |x| = f 2^e, f in [0.5, 1): unit exponent e - 1
    const int E = std::max(e - 1, min_exp);
    const double q = std::ldexp(1.0, E - mbits);
    const double r = std::nearbyint(x / q) * q;
    return std::abs(r) > max ? std::copysign(max, x) : r;
}

std::vector<float> test_values(uint64_t seed) {
    Rng rng(seed);
    std::vector<float> v = {0.f, -0.f, 1.f, -1.f, 0.1f, 1e-3f, 3.14159f, 65504.f, 448.f};
    for (int i = 0; i < 20000; ++i) {
        const double mag = std::pow(10.0, rng.uniform() * 14 - 10);  // 1e-10 .. 1e4
        v.push_back(float(rng.below(2) ? mag : -mag));
    }
    return v;
}

const NumberFormat& fmt_of(const char* prec, bool forward) {
    const EmulatedPrecision* p = emulated_precision(prec);
    if (!p) fail("no precision {}", prec);
    return forward ? p->forward : p->backward;
}

TEST(NumberFormats, Fp16EqualsTheCompilersConversion) {
    const NumberFormat& f = fmt_of("fp16", true);
    for (float x : test_values(1)) {
        const float want = static_cast<float>(static_cast<_Float16>(x));
        ASSERT_EQ(round_to(x, f), want) << x;
    }
    // exact ties go to even: 1 + 2^-11 lies between 1 and 1 + 2^-10
    EXPECT_EQ(round_to(1.f + std::ldexp(1.f, -11), f), 1.f);
    EXPECT_EQ(round_to(1.f + 3 * std::ldexp(1.f, -11), f), 1.f + std::ldexp(1.f, -9));
    EXPECT_EQ(round_to(1e5f, f), 65504.f);  // saturates (IEEE would give inf)
    EXPECT_TRUE(std::isnan(round_to(std::nanf(""), f)));
}

TEST(NumberFormats, AllFormatsEqualTheReferenceRounding) {
    for (const char* prec : {"fp16", "bf16", "fp8"})
        for (bool forward : {true, false}) {
            const NumberFormat& f = fmt_of(prec, forward);
            SCOPED_TRACE(f.name);
            for (float x : test_values(2)) {
                const double want = reference_round(x, f.mantissa_bits, f.min_exp, f.max);
                ASSERT_EQ(double(round_to(x, f)), want) << x;
            }
        }
    const NumberFormat& e4m3 = fmt_of("fp8", true);
    EXPECT_EQ(round_to(0.3f, e4m3), 0.3125f);                // 1.010b x 2^-2
    EXPECT_EQ(round_to(0.001f, e4m3), std::ldexp(1.f, -9));  // the smallest subnormal
    EXPECT_EQ(round_to(0.0009f, e4m3), 0.f);
    EXPECT_EQ(round_to(-1000.f, e4m3), -448.f);
    EXPECT_EQ(round_to(1e-6f, fmt_of("fp8", false)), 0.f);  // below E5M2's 2^-16
}

// FP8 tensors are scaled by a power of two first: tiny gradients keep E5M2's relative precision
// (2 fraction bits: error <= 1/8 of the value's power of two) instead of flushing to zero.
TEST(NumberFormats, PerTensorScalingKeepsSmallTensors) {
    const NumberFormat& e5m2 = fmt_of("fp8", false);
    auto x = test::randn(5000, 3, 1e-5f);
    auto y = x;
    round_tensor(y.data(), y.size(), e5m2);
    double amax = 0;
    for (float v : x) amax = std::max(amax, double(std::abs(v)));
    int zeros = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        if (std::abs(x[i]) > amax * std::ldexp(1.0, -14)) {  // normal after scaling
            int e;
            std::frexp(std::abs(x[i]), &e);
            EXPECT_LE(std::abs(y[i] - x[i]), std::ldexp(1.0, e - 1 - 3)) << i;
        }
        zeros += y[i] == 0.f;
    }
    EXPECT_LT(zeros, 5);
    int unscaled_zeros = 0;
    for (float v : x) unscaled_zeros += round_to(v, e5m2) == 0.f;
    EXPECT_GT(unscaled_zeros, 1000);  // what scaling avoids
    // fp16 is not scaled: round_tensor is round_to on every value
    auto z = x;
    round_tensor(z.data(), z.size(), fmt_of("fp16", true));
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(z[i], round_to(x[i], fmt_of("fp16", true)));
}

// The backend: a convolution's output is stored in the format (every value representable) and
// is the fp32 convolution of the rounded weights, rounded once.
TEST(RoundingBackend, ConvolutionComputesWithRoundedWeightsAndStoresRounded) {
    auto cpu = make_cpu_backend(2);
    RoundingBackend rb(*cpu, *emulated_precision("bf16"));
    EXPECT_NE(rb.name().find("bf16 storage emulated"), std::string::npos);
    ConvShape s;
    s.N = 2, s.H = 8, s.W = 8, s.C = 5, s.K = 7;
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, nw = size_t(s.K) * 9 * s.C;
    const size_t ny = size_t(s.N) * s.P() * s.Q() * s.K;
    auto x = test::randn(nx, 4);
    round_tensor(x.data(), nx, rb.precision().forward);  // stored inputs are representable
    const auto w = test::randn(nw, 5, 0.2f);
    std::vector<float> y(ny), ref(ny), wr = w;
    round_tensor(wr.data(), nw, rb.precision().forward);
    rb.make_conv(s)->forward(y.data(), x.data(), w.data(), nullptr);
    cpu->make_conv(s)->forward(ref.data(), x.data(), wr.data(), nullptr);
    round_tensor(ref.data(), ny, rb.precision().forward);
    EXPECT_EQ(y, ref);
    for (float v : y) ASSERT_EQ(v, round_to(v, rb.precision().forward));
    std::vector<float> g(nx), dy = test::randn(ny, 6);
    rb.gelu_forward(g.data(), x.data(), nx);
    for (float v : g) ASSERT_EQ(v, round_to(v, rb.precision().forward));
    EXPECT_EQ(emulated_precision("fp4"), nullptr);
}

// Every activation, forward and backward: the plain CPU op's result rounded once, the forward to
// the forward format and the gradient to the backward one (fp8: E4M3 and E5M2, each scaled per
// tensor, so a swapped pair or a missing rounding shows). SiLU is the hiverge recipe's.
TEST(RoundingBackend, EveryActivationRoundsItsOutputToItsFormat) {
    auto cpu = make_cpu_backend(2);
    const EmulatedPrecision& p = *emulated_precision("fp8");
    ASSERT_NE(p.forward.max, p.backward.max);
    RoundingBackend rb(*cpu, p);
    const size_t n = 4099;
    const auto x = test::randn(n, 41, 2.f);  // (not representable: ReLU's output changes too)
    const auto dy = test::randn(n, 42, 0.01f);
    const float alpha = 0.3f;
    using Fwd = std::function<void(Backend&, float*)>;
    using Bwd = std::function<void(Backend&, float*)>;
    const struct {
        const char* name;
        Fwd f;
        Bwd b;
    } acts[] = {
        {"gelu", [&](Backend& b, float* y) { b.gelu_forward(y, x.data(), n); },
         [&](Backend& b, float* dx) { b.gelu_backward(dx, dy.data(), x.data(), n); }},
        {"silu", [&](Backend& b, float* y) { b.silu_forward(y, x.data(), n); },
         [&](Backend& b, float* dx) { b.silu_backward(dx, dy.data(), x.data(), n); }},
        {"relu", [&](Backend& b, float* y) { b.relu_forward(y, x.data(), n); },
         [&](Backend& b, float* dx) { b.relu_backward(dx, dy.data(), x.data(), n); }},
        {"celu", [&](Backend& b, float* y) { b.celu_forward(y, x.data(), n, alpha); },
         [&](Backend& b, float* dx) { b.celu_backward(dx, dy.data(), x.data(), n, alpha); }},
    };
    for (const auto& a : acts) {
        SCOPED_TRACE(a.name);
        std::vector<float> y(n), ref(n), dx(n), dref(n);
        a.f(rb, y.data());
        a.f(*cpu, ref.data());
        EXPECT_NE(y, ref) << "the forward is rounded";
        round_tensor(ref.data(), n, p.forward);
        EXPECT_EQ(y, ref);
        a.b(rb, dx.data());
        a.b(*cpu, dref.data());
        EXPECT_NE(dx, dref) << "the gradient is rounded";
        round_tensor(dref.data(), n, p.backward);
        EXPECT_EQ(dx, dref);
    }
}

// fp8-conv: the convolutions multiply E4M3 copies of x and w and an E5M2 copy of dy (each scaled
// per tensor) and store bf16; the inputs stay as they were; db sums the stored dy; the 3-channel
// first convolution and every other op compute as plain bf16 does.
TEST(RoundingBackend, Fp8ConvRoundsTheConvolutionsOperandsAndStoresBf16) {
    auto cpu = make_cpu_backend(2);
    const EmulatedPrecision* p = emulated_precision("fp8-conv");
    ASSERT_NE(p, nullptr);
    ASSERT_NE(p->conv_forward, nullptr);
    ASSERT_NE(p->conv_backward, nullptr);
    const NumberFormat &e4m3 = *p->conv_forward, &e5m2 = *p->conv_backward;
    const NumberFormat& bf16 = fmt_of("bf16", true);
    EXPECT_STREQ(p->forward.name, "bf16");
    RoundingBackend rb(*cpu, *p), plain(*cpu, *emulated_precision("bf16"));
    EXPECT_NE(rb.name().find("convolution operands e4m3 forward, e5m2 backward"),
              std::string::npos);
    ConvShape s;
    s.N = 2, s.H = 6, s.W = 6, s.C = kConvOperandMinChannels, s.K = 8;
    s.pad = 1;
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, nw = size_t(s.K) * 9 * s.C;
    const size_t ny = size_t(s.N) * s.P() * s.Q() * s.K;
    auto x = test::randn(nx, 14);
    round_tensor(x.data(), nx, bf16);  // stored inputs are bf16
    auto dy = test::randn(ny, 15, 0.01f);
    round_tensor(dy.data(), ny, bf16);
    const auto w = test::randn(nw, 16, 0.2f);
    const auto x0 = x, dy0 = dy, w0 = w;
    auto rounded = [](std::vector<float> v, const NumberFormat& f) {
        round_tensor(v.data(), v.size(), f);
        return v;
    };
    const auto x8 = rounded(x, e4m3), w8 = rounded(w, e4m3), dy8 = rounded(dy, e5m2);
    ASSERT_NE(x8, x);  // the test values are not all E4M3 values already
    ASSERT_NE(dy8, dy);
    auto conv = rb.make_conv(s);
    auto ref = cpu->make_conv(s);

    std::vector<float> y(ny), yref(ny), ybf(ny);
    conv->forward(y.data(), x.data(), w.data(), nullptr);
    ref->forward(yref.data(), x8.data(), w8.data(), nullptr);
    EXPECT_EQ(y, rounded(yref, bf16));
    plain.make_conv(s)->forward(ybf.data(), x.data(), w.data(), nullptr);
    EXPECT_NE(y, ybf);  // the operands really were FP8

    std::vector<float> dx(nx), dxref(nx);
    conv->backward_data(dx.data(), dy.data(), w.data());
    ref->backward_data(dxref.data(), dy8.data(), w8.data());
    EXPECT_EQ(dx, rounded(dxref, bf16));

    std::vector<float> dw(nw), db(size_t(s.K)), dwref(nw), dbref(size_t(s.K)), unused(size_t(s.K));
    conv->backward_weights(dw.data(), db.data(), dy.data(), x.data());
    ref->backward_weights(dwref.data(), unused.data(), dy8.data(), x8.data());
    ref->backward_weights(nullptr, dbref.data(), dy.data(), x.data());
    EXPECT_EQ(dw, rounded(dwref, bf16));
    EXPECT_EQ(db, dbref);  // from the stored dy, fp32
    EXPECT_NE(db, unused);
    EXPECT_EQ(x, x0);  // rounded copies, not the callers' tensors
    EXPECT_EQ(dy, dy0);
    EXPECT_EQ(w, w0);

    // fewer input channels: the stored operands, as bf16 computes them
    ConvShape s3 = s;
    s3.C = 3;
    const size_t nx3 = size_t(s3.N) * s3.H * s3.W * 3, nw3 = size_t(s3.K) * 9 * 3;
    const auto x3 = rounded(test::randn(nx3, 17), bf16), w3 = test::randn(nw3, 18, 0.2f);
    std::vector<float> y3(ny), y3bf(ny);
    rb.make_conv(s3)->forward(y3.data(), x3.data(), w3.data(), nullptr);
    plain.make_conv(s3)->forward(y3bf.data(), x3.data(), w3.data(), nullptr);
    EXPECT_EQ(y3, y3bf);

    // the other ops store bf16, not FP8
    std::vector<float> g(nx), gbf(nx);
    rb.gelu_forward(g.data(), x.data(), nx);
    plain.gelu_forward(gbf.data(), x.data(), nx);
    EXPECT_EQ(g, gbf);
    EXPECT_NE(g, rounded(g, e4m3));
}

// TF32: fp16's 10 mantissa bits over fp32's exponent range (no saturation near 65504, no flush
// of values below fp16's normals).
TEST(RoundingBackend, Tf32KeepsTenMantissaBitsOverFp32sRange) {
    const EmulatedPrecision* p = emulated_precision("tf32");
    ASSERT_NE(p, nullptr);
    const NumberFormat& f = p->forward;
    EXPECT_EQ(round_to(1.f + std::ldexp(1.f, -10), f), 1.f + std::ldexp(1.f, -10));  // kept
    EXPECT_EQ(round_to(1.f + std::ldexp(1.f, -11), f), 1.f);  // the tie, to even
    EXPECT_EQ(round_to(1.f + 3 * std::ldexp(1.f, -11), f), 1.f + std::ldexp(1.f, -9));  // tie, up
    EXPECT_EQ(round_to(1.f + std::ldexp(1.f, -12), f), 1.f);
    EXPECT_EQ(round_to(std::ldexp(1025.f, 10), f), std::ldexp(1025.f, 10));  // fp16: 65504
    EXPECT_EQ(round_to(3e38f, f), std::ldexp(1806.f, 117));  // 3e38 to 11 significant bits
    EXPECT_EQ(round_to(std::ldexp(1.f, -120), f), std::ldexp(1.f, -120));  // fp16 would flush
    EXPECT_EQ(round_to(-2.f / 3.f, f), -std::ldexp(1365.f, -11));  // -0.66650390625
}

}  // namespace
}  // namespace sr
