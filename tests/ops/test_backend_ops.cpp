// test_backend_ops.cpp: every op of the CUDA backend against the CPU backend (the reference),
// through the Backend interface only, so this file builds with and without CUDA.
//
// How each case works: seeded random inputs are uploaded to both backends; every output buffer
// is pre-filled with different garbage on each side (1e30 on the CPU, NaN on the GPU) and has
// guard words on both sides, so an output the op never writes, or a write past its end, fails.
// Results are compared element-wise with |got - ref| <= atol + rtol |ref|; each case says how
// its tolerance was chosen. Shapes are small and awkward (N=3, H=W=7, C=5, K=6), plus one
// convolution at a real airbench shape.
//
// Two devices under test (the test's last name part): "cuda", the CUDA backend on GPU 0 (without
// a GPU, or in a build without CUDA, every such test is SKIPPED with the reason
// make_cuda_backend gave, never passed), and "emu", the same backend's own kernels run by the
// host emulation (ops/cuda/emulated_backend.h; in builds that found the CUDA toolkit's headers,
// with or without a GPU). For "emu" the library ops (cuDNN's convolutions apart from the bias
// and conv_small's forward, cuBLAS's products) are the CPU's own, so the tests of the linear
// layer and the products are skipped there, and the convolution tests check what the kernels
// add. CudaFactory.ExplainsAbsence runs everywhere: it checks that asking for a GPU where there
// is none returns nullptr with a reason instead of crashing.
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.h"
#include "ops/backend.h"
#include "ops/backend_ops_util.h"
#include "test_util.h"
#ifdef SPEEDRUN_HAVE_CUDA_EMULATION
#include "ops/cuda/emulated_backend.h"
#endif

namespace sr {
namespace {

constexpr size_t kGuard = 16;  // guard elements on each side of every buffer

// ---- host-side helpers (backend_ops_util.h) -----------------------------------------------------

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.f, float offset = 0.f) {
    return test::randn_offset(n, seed, scale, offset);
}
using test::close;
using test::rms;
using test::uniform;

// ---- device buffers with guards, one per backend ---------------------------------------------

// n elements of T on one backend, with kGuard guard elements before and after (kGuard + lead
// before: lead = 1 puts the tensor one element past an aligned address).
template <typename T>
class Guarded {
public:
    Guarded(Backend& b, size_t n, T guard, size_t lead = 0)
        : b_(&b), n_(n), before_(kGuard + lead), guard_(guard), buf_(b, n + before_ + kGuard) {}

    T* ptr() const { return buf_.get() + before_; }
    size_t size() const { return n_; }

    void set(const std::vector<T>& v) {
        std::vector<T> all(before_ + n_ + kGuard, guard_);
        std::memcpy(all.data() + before_, v.data(), n_ * sizeof(T));
        b_->upload(buf_.get(), all.data(), all.size() * sizeof(T));
    }

    // The n values; a changed guard word is a test failure (write out of bounds).
    std::vector<T> get(const char* what) const {
        std::vector<T> all(before_ + n_ + kGuard);
        b_->download(all.data(), buf_.get(), all.size() * sizeof(T));
        for (size_t i = 0; i < before_; ++i)
            EXPECT_EQ(0, std::memcmp(&all[i], &guard_, sizeof(T)))
                << what << ": guard word " << i << " before the buffer was overwritten";
        for (size_t i = 0; i < kGuard; ++i)
            EXPECT_EQ(0, std::memcmp(&all[before_ + n_ + i], &guard_, sizeof(T)))
                << what << ": guard word " << i << " after the buffer was overwritten";
        return std::vector<T>(all.begin() + before_, all.begin() + before_ + n_);
    }

private:
    Backend* b_;
    size_t n_, before_;
    T guard_;
    DeviceBuffer<T> buf_;
};

template <typename T> T cpu_garbage();
template <typename T> T gpu_garbage();
template <> float cpu_garbage<float>() { return 1e30f; }
template <> float gpu_garbage<float>() { return std::numeric_limits<float>::quiet_NaN(); }
template <> uint8_t cpu_garbage<uint8_t>() { return 0xEE; }
template <> uint8_t gpu_garbage<uint8_t>() { return 0x77; }
template <> int32_t cpu_garbage<int32_t>() { return -777777; }
template <> int32_t gpu_garbage<int32_t>() { return 888888; }
template <> int8_t cpu_garbage<int8_t>() { return -99; }
template <> int8_t gpu_garbage<int8_t>() { return 99; }
template <> int64_t cpu_garbage<int64_t>() { return -5555555555; }
template <> int64_t gpu_garbage<int64_t>() { return 6666666666; }

// The same tensor on both backends: c on the CPU, g on the GPU.
template <typename T>
struct Twin {
    Guarded<T> c, g;
    T* cp() const { return c.ptr(); }
    T* gp() const { return g.ptr(); }
};

// The fixture: both backends, and makers of twin buffers. Members are public so the case
// functions below (shared by several TESTs) can use them.
class BackendOps : public ::testing::TestWithParam<const char*> {
public:
    void SetUp() override {
        emulated_ = std::string(GetParam()) == "emu";
        if (emulated_) {
#ifdef SPEEDRUN_HAVE_CUDA_EMULATION
            gpu_ = make_emulated_cuda_backend();
#else
            GTEST_SKIP() << "no CUDA emulation in this build (CUDA toolkit headers not found)";
#endif
        } else {
            std::string why;
            gpu_ = make_cuda_backend(0, &why);
            if (!gpu_) GTEST_SKIP() << "no CUDA device: " << why;
        }
        cpu_ = make_cpu_backend(2);
        ASSERT_TRUE(cpu_);
    }
    bool emulated() const { return emulated_; }

    // An input: the same values on both sides.
    template <typename T>
    Twin<T> in(const std::vector<T>& v) {
        Twin<T> t{Guarded<T>(*cpu_, v.size(), cpu_garbage<T>(), lead_),
                  Guarded<T>(*gpu_, v.size(), gpu_garbage<T>(), lead_)};
        t.c.set(v);
        t.g.set(v);
        return t;
    }

    // An output: different garbage on each side, so an unwritten element cannot match.
    template <typename T>
    Twin<T> out(size_t n) {
        Twin<T> t{Guarded<T>(*cpu_, n, cpu_garbage<T>(), lead_),
                  Guarded<T>(*gpu_, n, gpu_garbage<T>(), lead_)};
        t.c.set(std::vector<T>(n, cpu_garbage<T>()));
        t.g.set(std::vector<T>(n, gpu_garbage<T>()));
        return t;
    }

    // Compares the GPU's values with the CPU's.
    template <typename T>
    ::testing::AssertionResult same(const Twin<T>& t, const char* what, double atol, double rtol) {
        const auto ref = t.c.get(what);
        const auto got = t.g.get(what);
        auto r = close(got, ref, atol, rtol);
        if (!r) r << " [" << what << "]";
        return r;
    }

    std::unique_ptr<Backend> cpu_, gpu_;
    bool emulated_ = false;
    size_t lead_ = 0;  // in() and out() tensors start this many elements past an aligned address
};

INSTANTIATE_TEST_SUITE_P(Device, BackendOps, ::testing::Values("cuda", "emu"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                             return std::string(i.param);
                         });

// The tests of what only a library does on the GPU (cuBLAS, device memory): nothing of ours to
// check in the emulation.
#define SKIP_IF_EMULATED(what)                                                \
    do {                                                                      \
        if (emulated()) GTEST_SKIP() << what << " is not emulated on the host"; \
    } while (0)

// ---- factory and memory ----------------------------------------------------------------------

TEST(CudaFactory, ExplainsAbsence) {
    std::string why;
    auto b = make_cuda_backend(0, &why);
    if (b) {
        EXPECT_EQ(b->device(), Device::cuda);
        EXPECT_FALSE(b->name().empty());
    } else {
        EXPECT_FALSE(why.empty()) << "make_cuda_backend returned nullptr without a reason";
    }
    std::string why2;
    EXPECT_EQ(make_cuda_backend(1 << 20, &why2), nullptr);  // no machine has that many GPUs
    EXPECT_FALSE(why2.empty());
}

// cuBLAS is loaded on first use, not linked (src/ops/cuda/cublas_linear.cpp): the library must
// be found with every function the backend calls, also where there is no GPU.
TEST(CudaFactory, LoadsCublasWithEveryFunction) {
    if (!cuda_compiled()) GTEST_SKIP() << "built without CUDA";
    EXPECT_EQ(cublas_load_error(), "");
}

TEST_P(BackendOps, Memory) {
    SKIP_IF_EMULATED("device memory");
    EXPECT_EQ(gpu_->device(), Device::cuda);
    EXPECT_FALSE(gpu_->name().empty());
    const size_t before = gpu_->peak_bytes();
    const size_t n = 1000003;
    {
        DeviceBuffer<float> a(*gpu_, n), b(*gpu_, n);
        EXPECT_GE(gpu_->peak_bytes(), before + 2 * n * sizeof(float));
        std::vector<float> h(n, -1.f);
        gpu_->download(h.data(), a.get(), n * sizeof(float));
        for (size_t i = 0; i < n; ++i)
            ASSERT_EQ(h[i], 0.f) << "alloc() must zero-fill; element " << i;
        const auto v = randn(n, 1);
        gpu_->upload(a.get(), v.data(), n * sizeof(float));
        gpu_->copy(b.get(), a.get(), n * sizeof(float));
        gpu_->synchronize();
        gpu_->download(h.data(), b.get(), n * sizeof(float));
        EXPECT_EQ(0, std::memcmp(h.data(), v.data(), n * sizeof(float)));
    }
    const size_t peak = gpu_->peak_bytes();
    DeviceBuffer<float> c(*gpu_, 10);  // a high-water mark: a small allocation after releases keeps it
    EXPECT_EQ(gpu_->peak_bytes(), peak);
}

// ---- convolution -----------------------------------------------------------------------------

// Forward (with and without bias), backward data, backward weights (with and without db).
// Tolerance: cuDNN may run fp32 convolutions in TF32 (inputs rounded to a 10-bit mantissa,
// about 5e-4 relative error per product). The errors add like a random walk over the C*R*S (or
// N*P*Q) terms, as the values themselves do, so the error scales with the rms of the result,
// not with each element (an element near zero by cancellation has a large relative error):
// atol = 1e-2 * rms(ref), about 10x the expected worst case, plus rtol 1e-2.
void conv_case(BackendOps& f, const ConvShape& s, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "conv N=" << s.N << " H=" << s.H << " W=" << s.W
                                    << " C=" << s.C << " K=" << s.K << " R=" << s.R
                                    << " S=" << s.S << " pad=" << s.pad << " stride=" << s.stride);
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K;
    const size_t nw = size_t(s.K) * s.R * s.S * s.C;
    auto x = f.in(randn(nx, seed));
    auto w = f.in(randn(nw, seed + 1, 1.f / std::sqrt(float(s.C * s.R * s.S))));
    auto bias = f.in(randn(s.K, seed + 2));
    auto dy = f.in(randn(ny, seed + 3));
    auto cc = f.cpu_->make_conv(s);
    auto gc = f.gpu_->make_conv(s);
    ASSERT_TRUE(cc && gc);
    auto tol = [](const Twin<float>& t) { return 1e-2 * rms(t.c.get("rms")) + 1e-6; };

    for (bool with_bias : {true, false}) {
        SCOPED_TRACE(with_bias ? "with bias / db" : "without bias / db");
        auto y = f.out<float>(ny);
        cc->forward(y.cp(), x.cp(), w.cp(), with_bias ? bias.cp() : nullptr);
        gc->forward(y.gp(), x.gp(), w.gp(), with_bias ? bias.gp() : nullptr);
        EXPECT_TRUE(f.same(y, "conv forward y", tol(y), 1e-2));

        auto dx = f.out<float>(nx);
        cc->backward_data(dx.cp(), dy.cp(), w.cp());
        gc->backward_data(dx.gp(), dy.gp(), w.gp());
        EXPECT_TRUE(f.same(dx, "conv backward_data dx", tol(dx), 1e-2));

        auto dw = f.out<float>(nw);
        auto db = f.out<float>(s.K);
        cc->backward_weights(dw.cp(), with_bias ? db.cp() : nullptr, dy.cp(), x.cp());
        gc->backward_weights(dw.gp(), with_bias ? db.gp() : nullptr, dy.gp(), x.gp());
        EXPECT_TRUE(f.same(dw, "conv backward_weights dw", tol(dw), 1e-2));
        // db is a plain fp32 sum (no TF32): 1e-5 relative to its rms covers the summation order.
        if (with_bias) {
            EXPECT_TRUE(f.same(db, "conv backward_weights db", 1e-5 * rms(db.c.get("db")) + 1e-6, 1e-5));
            // dw == nullptr: db alone (a frozen layer), the same sums; x is not read
            auto db2 = f.out<float>(s.K);
            cc->backward_weights(nullptr, db2.cp(), dy.cp(), nullptr);
            gc->backward_weights(nullptr, db2.gp(), dy.gp(), nullptr);
            EXPECT_TRUE(f.same(db2, "conv bias-only db", 1e-5 * rms(db2.c.get("db")) + 1e-6, 1e-5));
            const auto full = db.c.get("db");  // the CPU: the same sums as with dw
            EXPECT_TRUE(close(db2.c.get("db"), full, 1e-5 * rms(full) + 1e-6, 1e-5));
        }
    }
}

TEST_P(BackendOps, Conv3x3Pad1) {
    ConvShape s;
    s.N = 3, s.H = 7, s.W = 7, s.C = 5, s.K = 6, s.R = 3, s.S = 3, s.pad = 1;
    conv_case(*this, s, 100);
}

TEST_P(BackendOps, Conv2x2Pad0) {
    ConvShape s;
    s.N = 3, s.H = 7, s.W = 7, s.C = 5, s.K = 6, s.R = 2, s.S = 2, s.pad = 0;
    conv_case(*this, s, 200);
}

// A real airbench94 shape: the second conv of the last block (batch 8 here).
TEST_P(BackendOps, Conv3x3RealShape) {
    ConvShape s;
    s.N = 8, s.H = 15, s.W = 15, s.C = 64, s.K = 64, s.R = 3, s.S = 3, s.pad = 1;
    conv_case(*this, s, 300);
}

// The whitening conv's shape: 2x2, pad 0, 3 -> 24 channels, on 32x32 images.
TEST_P(BackendOps, ConvWhiteningShape) {
    ConvShape s;
    s.N = 4, s.H = 32, s.W = 32, s.C = 3, s.K = 24, s.R = 2, s.S = 2, s.pad = 0;
    conv_case(*this, s, 400);
}

// Few input channels (CUDA: the direct kernel of conv_small.cu): the prep conv's 3x3 pad 1,
// and stride 2 with an odd side, 4 channels.
TEST_P(BackendOps, ConvFewInputChannels) {
    ConvShape s;
    s.N = 3, s.H = 9, s.W = 8, s.C = 3, s.K = 16, s.R = 3, s.S = 3, s.pad = 1;
    conv_case(*this, s, 480);
    s.C = 4, s.K = 8, s.stride = 2, s.H = 9, s.W = 9;
    conv_case(*this, s, 490);
}

// DAWN_net's downsampling convs (myrtle presets): 3x3 pad 1 and 1x1 pad 0, both stride 2.
TEST_P(BackendOps, ConvStride2) {
    ConvShape s;
    s.N = 4, s.H = 16, s.W = 16, s.C = 32, s.K = 48, s.R = 3, s.S = 3, s.pad = 1, s.stride = 2;
    conv_case(*this, s, 450);
    s.R = 1, s.S = 1, s.pad = 0;
    conv_case(*this, s, 460);
    s.H = 9, s.W = 9, s.R = 3, s.S = 3, s.pad = 1;  // odd side: the last row and column are unread
    conv_case(*this, s, 470);
}

// A forward-only conv (an evaluation workspace's; CUDA sets up no backward for it) computes the
// forward of a training one, with and without bias, at the tolerance of conv_case; its backward
// calls are refused with an error on both sides, rather than run without an algorithm.
// A conv's sizes and operands on both sides (seed .. seed + 3): x, w scaled by 1/sqrt(fan-in),
// bias, dy.
struct ConvOperands {
    size_t nx, ny, nw;
    Twin<float> x, w, bias, dy;
};
ConvOperands conv_operands(BackendOps& f, const ConvShape& s, uint64_t seed) {
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K;
    const size_t nw = size_t(s.K) * s.R * s.S * s.C;
    return {nx, ny, nw, f.in(randn(nx, seed)), f.in(randn(nw, seed + 1, 1.f / std::sqrt(float(s.C * s.R * s.S)))),
            f.in(randn(s.K, seed + 2)), f.in(randn(ny, seed + 3))};
}

TEST_P(BackendOps, ConvForwardOnly) {
    ConvShape s;
    s.N = 8, s.H = 15, s.W = 15, s.C = 64, s.K = 32, s.R = 3, s.S = 3, s.pad = 1;
    auto [nx, ny, nw, x, w, bias, dy] = conv_operands(*this, s, 520);
    auto cc = cpu_->make_conv(s);  // the reference: a training conv
    ConvShape f = s;
    f.forward_only = true;
    auto gc = gpu_->make_conv(f);
    ASSERT_TRUE(cc && gc);
    for (bool with_bias : {true, false}) {
        SCOPED_TRACE(with_bias ? "with bias" : "without bias");
        auto y = out<float>(ny);
        cc->forward(y.cp(), x.cp(), w.cp(), with_bias ? bias.cp() : nullptr);
        gc->forward(y.gp(), x.gp(), w.gp(), with_bias ? bias.gp() : nullptr);
        EXPECT_TRUE(same(y, "forward-only conv y", 1e-2 * rms(y.c.get("rms")) + 1e-6, 1e-2));
    }
    auto cf = cpu_->make_conv(f);
    auto dx = out<float>(nx);
    auto dw = out<float>(nw);
    auto db = out<float>(s.K);
    const std::string refused = "set up forward-only";
    EXPECT_TRUE(test::contains(test::error_of([&] { gc->backward_data(dx.gp(), dy.gp(), w.gp()); }), refused));
    EXPECT_TRUE(test::contains(test::error_of([&] { gc->backward_weights(dw.gp(), nullptr, dy.gp(), x.gp()); }), refused));
    EXPECT_TRUE(test::contains(test::error_of([&] { gc->backward_weights(nullptr, db.gp(), dy.gp(), nullptr); }), refused));
    EXPECT_TRUE(test::contains(test::error_of([&] { gc->backward(dx.gp(), dw.gp(), db.gp(), dy.gp(), x.gp(), w.gp()); }), refused));
    EXPECT_TRUE(test::contains(test::error_of([&] { cf->backward_data(dx.cp(), dy.cp(), w.cp()); }), refused));
    EXPECT_TRUE(test::contains(test::error_of([&] { cf->backward(dx.cp(), dw.cp(), db.cp(), dy.cp(), x.cp(), w.cp()); }), refused));
    EXPECT_TRUE(test::contains(test::error_of([&] { cf->backward_weights(nullptr, db.cp(), dy.cp(), nullptr); }), refused));
}

// The whitening conv's shape (3 -> 24, 2x2, no padding): set up without the input's or the
// weights' gradient (ConvShape::no_input_grad, frozen_weights), it computes the forward and the
// bias gradient as a full conv does, and every backend refuses the gradients left out.
TEST_P(BackendOps, ConvWithoutInputOrWeightGradients) {
    ConvShape s;
    s.N = 8, s.H = 32, s.W = 32, s.C = 3, s.K = 24, s.R = 2, s.S = 2, s.pad = 0;
    auto [nx, ny, nw, x, w, bias, dy] = conv_operands(*this, s, 530);
    ConvShape f = s;
    f.no_input_grad = f.frozen_weights = true;
    auto cc = cpu_->make_conv(s);  // the reference: a full training conv
    auto gc = gpu_->make_conv(f);
    auto cf = cpu_->make_conv(f);
    ASSERT_TRUE(cc && gc && cf);
    auto y = out<float>(ny), y2 = out<float>(ny);
    cc->forward(y.cp(), x.cp(), w.cp(), bias.cp());
    gc->forward(y.gp(), x.gp(), w.gp(), bias.gp());
    EXPECT_TRUE(same(y, "whitening-shaped conv y", 1e-2 * rms(y.c.get("rms")) + 1e-6, 1e-2));
    auto db = out<float>(s.K);
    cc->backward_weights(nullptr, db.cp(), dy.cp(), x.cp());
    gc->backward_weights(nullptr, db.gp(), dy.gp(), nullptr);
    EXPECT_TRUE(same(db, "whitening-shaped conv db", 1e-5 * rms(db.c.get("db")) + 1e-6, 1e-5));
    cf->forward(y2.cp(), x.cp(), w.cp(), bias.cp());  // (the CPU's own, bit for bit)
    EXPECT_EQ(y2.c.get("y2"), y.c.get("y"));
    auto dx = out<float>(nx);
    auto dw = out<float>(nw);
    for (Conv2d* c : {gc.get(), cf.get()}) {
        const bool g = c == gc.get();
        auto p = [&](auto& t) { return g ? t.gp() : t.cp(); };
        SCOPED_TRACE(g ? "the backend under test" : "the CPU");
        EXPECT_TRUE(test::contains(test::error_of([&] { c->backward_data(p(dx), p(dy), p(w)); }),
                                   "set up without the input's gradient (ConvShape::no_input_grad)"));
        EXPECT_TRUE(test::contains(test::error_of([&] { c->backward_weights(p(dw), p(db), p(dy), p(x)); }),
                                   "set up without the weights' gradient (ConvShape::frozen_weights)"));
        EXPECT_TRUE(test::contains(test::error_of([&] { c->backward(nullptr, p(dw), p(db), p(dy), p(x), p(w)); }),
                                   "frozen_weights"));
        EXPECT_TRUE(test::contains(test::error_of([&] { c->backward(p(dx), nullptr, p(db), p(dy), p(x), p(w)); }),
                                   "no_input_grad"));
        EXPECT_NO_THROW(c->backward(nullptr, nullptr, p(db), p(dy), p(x), p(w)));  // (db alone)
    }
}

// ---- batch norm ------------------------------------------------------------------------------

// Tolerance of the forward: the CPU sums in double, the GPU in fp32 partials of <= 512 values
// added in double, so mean and invstd agree to ~1e-6 relative; y is O(1) and its fp32 rounding
// (the CPU computes x*a + b, the GPU (x - mean)*invstd*gamma + beta) differs by a few ulps of
// |x*a| ~ 10: atol 1e-5, rtol 1e-5.
// The batch statistics of a training forward and the running statistics it updates, the GPU's
// against the CPU's: the means to mean_atol (it grows with the data's offset and scale) and 1e-6
// relative, invstd and the running variance to 1e-5 relative.
void expect_batch_stats_same(BackendOps& f, const std::string& op, const Twin<float>& mean,
                             const Twin<float>& invstd, const Twin<float>& rmean,
                             const Twin<float>& rvar, double mean_atol) {
    EXPECT_TRUE(f.same(mean, (op + " mean").c_str(), mean_atol, 1e-6));
    EXPECT_TRUE(f.same(invstd, (op + " invstd").c_str(), 0, 1e-5));
    EXPECT_TRUE(f.same(rmean, (op + " running_mean").c_str(), mean_atol, 1e-6));
    EXPECT_TRUE(f.same(rvar, (op + " running_var (unbiased)").c_str(), 0, 1e-5));
}

void bn_train_case(BackendOps& f, int M, int C, bool with_gamma, uint64_t seed, float offset,
                   float scale, double y_atol) {
    SCOPED_TRACE(testing::Message() << "bn train M=" << M << " C=" << C << " gamma="
                                    << with_gamma << " offset=" << offset);
    const float eps = 1e-5f, momentum = 0.4f;
    const size_t n = size_t(M) * C;
    auto x = f.in(randn(n, seed, scale, offset));
    auto gamma = f.in(uniform(C, seed + 1, 0.5f, 1.5f));
    auto beta = f.in(randn(C, seed + 2));
    auto rmean = f.in(randn(C, seed + 3));
    auto rvar = f.in(uniform(C, seed + 4, 0.5f, 2.f));
    auto y = f.out<float>(n);
    auto mean = f.out<float>(C);
    auto invstd = f.out<float>(C);
    for (int side = 0; side < 2; ++side) {
        Backend& b = side ? *f.gpu_ : *f.cpu_;
        auto p = [&](auto& t) { return side ? t.gp() : t.cp(); };
        b.bn_forward_train(p(y), p(mean), p(invstd), p(rmean), p(rvar), p(x),
                           with_gamma ? p(gamma) : nullptr, p(beta), M, C, eps, momentum);
    }
    EXPECT_TRUE(f.same(y, "bn y", y_atol, 1e-5));
    expect_batch_stats_same(f, "bn", mean, invstd, rmean, rvar, 1e-6 * (std::abs(offset) + scale));

    // Both against an independent double reference of the batch statistics.
    const auto xs = x.c.get("x");
    const auto gm = mean.g.get("mean"), gi = invstd.g.get("invstd");
    for (int c = 0; c < C; ++c) {
        double s = 0, ss = 0;
        for (int m = 0; m < M; ++m) s += xs[size_t(m) * C + c];
        const double mu = s / M;
        for (int m = 0; m < M; ++m) ss += (xs[size_t(m) * C + c] - mu) * (xs[size_t(m) * C + c] - mu);
        const double is = 1.0 / std::sqrt(ss / M + eps);
        EXPECT_NEAR(gm[c], mu, 1e-6 * (std::abs(mu) + scale)) << "channel " << c;
        EXPECT_NEAR(gi[c], is, 1e-5 * is) << "channel " << c;
    }
}

TEST_P(BackendOps, BatchNormTrainForward) {
    bn_train_case(*this, 147, 5, true, 500, 1.5f, 2.f, 1e-5);
}

TEST_P(BackendOps, BatchNormTrainForwardNoGamma) {
    bn_train_case(*this, 147, 5, false, 510, -0.5f, 0.7f, 1e-5);
}

// Many rows (64 images of 31x31) and a mean 500x the standard deviation: a one-pass fp32
// E[x^2] - E[x]^2 would lose every digit here. y's tolerance: x ~ 50 carries fp32 ulps of 4e-6,
// 4e-5 after division by the std of 0.1, and the CPU's x*a + b cancels two terms of ~500:
// atol 5e-4.
TEST_P(BackendOps, BatchNormTrainForwardLargeOffset) {
    bn_train_case(*this, 64 * 31 * 31, 8, true, 520, 50.f, 0.1f, 5e-4);
}

// C = 5 takes the one-element kernel on CUDA, C = 24 the 8-channel one (bn_eval8)
TEST_P(BackendOps, BatchNormEvalForward) {
    for (const auto [M, C] : {std::pair{147, 5}, std::pair{147 * 7, 24}}) {
        const size_t n = size_t(M) * C;
        auto x = in(randn(n, 600, 2.f, 1.f));
        auto gamma = in(uniform(C, 601, 0.5f, 1.5f));
        auto beta = in(randn(C, 602));
        auto rmean = in(randn(C, 603));
        auto rvar = in(uniform(C, 604, 0.5f, 2.f));
        for (bool with_gamma : {true, false}) {
            auto y = out<float>(n);
            cpu_->bn_forward_eval(y.cp(), x.cp(), rmean.cp(), rvar.cp(), with_gamma ? gamma.cp() : nullptr,
                                  beta.cp(), M, C, 1e-5f);
            gpu_->bn_forward_eval(y.gp(), x.gp(), rmean.gp(), rvar.gp(), with_gamma ? gamma.gp() : nullptr,
                                  beta.gp(), M, C, 1e-5f);
            // elementwise fp32, a few roundings of O(1) values: 1e-5
            EXPECT_TRUE(same(y, "bn eval y", 1e-5, 1e-5)) << "C " << C << " gamma " << with_gamma;
        }
    }
}

// dx = gamma invstd (dy - mean(dy) - xhat mean(dy xhat)); dgamma = sum dy xhat; dbeta = sum dy.
// Tolerance: the sums are over M terms of O(1) (rms ~ sqrt(M)); the CPU sums in double, the GPU
// in fp32 partials of <= 512 values added in double: 1e-5 of the rms. dx subtracts means from
// O(1) values: 1e-5 absolute and relative.
void bn_backward_case(BackendOps& f, int M, int C, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "bn backward M=" << M << " C=" << C);
    const size_t n = size_t(M) * C;
    const auto xs = randn(n, seed, 2.f, 1.f);
    auto x = f.in(xs);
    auto dy = f.in(randn(n, seed + 1));
    auto gamma = f.in(uniform(C, seed + 2, 0.5f, 1.5f));
    // mean and invstd as bn_forward_train would save them (computed here in double)
    std::vector<float> mean_h(C), invstd_h(C);
    for (int c = 0; c < C; ++c) {
        double s = 0, ss = 0;
        for (int m = 0; m < M; ++m) s += xs[size_t(m) * C + c];
        for (int m = 0; m < M; ++m) ss += std::pow(xs[size_t(m) * C + c] - s / M, 2);
        mean_h[c] = float(s / M);
        invstd_h[c] = float(1.0 / std::sqrt(ss / M + 1e-5));
    }
    auto mean = f.in(mean_h);
    auto invstd = f.in(invstd_h);
    for (bool full : {true, false}) {
        SCOPED_TRACE(full ? "gamma, dgamma, dbeta" : "no gamma, no dgamma, no dbeta");
        auto dx = f.out<float>(n);
        auto dgamma = f.out<float>(C);
        auto dbeta = f.out<float>(C);
        f.cpu_->bn_backward(dx.cp(), full ? dgamma.cp() : nullptr, full ? dbeta.cp() : nullptr,
                            dy.cp(), x.cp(), mean.cp(), invstd.cp(), full ? gamma.cp() : nullptr, M, C);
        f.gpu_->bn_backward(dx.gp(), full ? dgamma.gp() : nullptr, full ? dbeta.gp() : nullptr,
                            dy.gp(), x.gp(), mean.gp(), invstd.gp(), full ? gamma.gp() : nullptr, M, C);
        EXPECT_TRUE(f.same(dx, "bn dx", 1e-5, 1e-5));
        if (full) {
            const double sum_tol = 1e-5 * std::sqrt(double(M));
            EXPECT_TRUE(f.same(dgamma, "bn dgamma", sum_tol, 1e-5));
            EXPECT_TRUE(f.same(dbeta, "bn dbeta", sum_tol, 1e-5));
        } else {  // skipped outputs stay untouched
            EXPECT_TRUE(std::isnan(dgamma.g.get("dgamma")[0]));
            EXPECT_TRUE(std::isnan(dbeta.g.get("dbeta")[0]));
        }
    }
}

TEST_P(BackendOps, BatchNormBackward) { bn_backward_case(*this, 147, 5, 700); }

TEST_P(BackendOps, BatchNormBackwardManyRows) { bn_backward_case(*this, 32 * 31 * 31, 24, 710); }

// Batch norm + activation, fused, for every activation: training forward (z and the statistics),
// eval forward, backward. Tolerances: those of BN above, carried through the activation (slope
// <= 1.13, GELU's erf: the GPU's erff vs the CPU's polynomial, ~1e-7) and, in backward, through
// act' (|act''| <= 0.5 times the 1e-5 difference of the recomputed y): 3e-5.
void bn_act_case(BackendOps& f, int M, int C, ActKind act, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "bn+act " << int(act) << " M=" << M << " C=" << C);
    const size_t n = size_t(M) * C;
    const float eps = 1e-5f, momentum = 0.4f, alpha = 0.3f;
    auto x = f.in(randn(n, seed, 2.f, 1.f));
    auto gamma = f.in(uniform(C, seed + 1, 0.5f, 1.5f));
    auto beta = f.in(randn(C, seed + 2));
    auto rmean = f.in(randn(C, seed + 3));
    auto rvar = f.in(uniform(C, seed + 4, 0.5f, 2.f));
    auto dz = f.in(randn(n, seed + 5));
    auto z = f.out<float>(n), ze = f.out<float>(n), dx = f.out<float>(n);
    auto mean = f.out<float>(C), invstd = f.out<float>(C), dgamma = f.out<float>(C), dbeta = f.out<float>(C);
    for (int side = 0; side < 2; ++side) {
        Backend& b = side ? *f.gpu_ : *f.cpu_;
        auto p = [&](auto& t) { return side ? t.gp() : t.cp(); };
        b.bn_act_forward_eval(p(ze), p(x), p(rmean), p(rvar), p(gamma), p(beta), M, C, eps, act, alpha);
        b.bn_act_forward_train(p(z), p(mean), p(invstd), p(rmean), p(rvar), p(x), p(gamma), p(beta),
                               M, C, eps, momentum, act, alpha);
        b.bn_act_backward(p(dx), p(dgamma), p(dbeta), p(dz), p(x), p(mean), p(invstd), p(gamma),
                          p(beta), M, C, act, alpha);
    }
    EXPECT_TRUE(f.same(ze, "bn+act eval z", 2e-5, 1e-5));
    EXPECT_TRUE(f.same(z, "bn+act z", 2e-5, 1e-5));
    expect_batch_stats_same(f, "bn+act", mean, invstd, rmean, rvar, 2e-6);
    EXPECT_TRUE(f.same(dx, "bn+act dx", 3e-5, 3e-5));
    {  // in place: dx written over dz, on both sides
        auto d = f.in(randn(n, seed + 5));
        for (int side = 0; side < 2; ++side) {
            Backend& b = side ? *f.gpu_ : *f.cpu_;
            auto p = [&](auto& t) { return side ? t.gp() : t.cp(); };
            b.bn_act_backward(p(d), p(dgamma), p(dbeta), p(d), p(x), p(mean), p(invstd), p(gamma),
                              p(beta), M, C, act, alpha);
        }
        EXPECT_TRUE(f.same(d, "bn+act dx over dz", 3e-5, 3e-5));
    }
    const double sum_tol = 3e-5 * std::sqrt(double(M));
    EXPECT_TRUE(f.same(dgamma, "bn+act dgamma", sum_tol, 3e-5));
    EXPECT_TRUE(f.same(dbeta, "bn+act dbeta", sum_tol, 3e-5));
}

TEST_P(BackendOps, BatchNormActivationFused) {
    int k = 0;
    for (ActKind act : {ActKind::gelu, ActKind::silu, ActKind::relu, ActKind::celu})
        bn_act_case(*this, 147, 5, act, 720 + 10 * k++);
}

TEST_P(BackendOps, BatchNormActivationFusedManyRows) {
    bn_act_case(*this, 32 * 31 * 31, 24, ActKind::gelu, 770);
}

// The sync-BN pieces (bn_stats, bn_apply, bn_backward_reduce, bn_backward_apply), each on both
// backends from the same inputs. The sums are over the M rows of O(1) (or offset) values: the
// CPU adds in double, the GPU fp32 partials of <= 512 values in double, so 1e-5 of their rms
// covers it; mean/invstd/y as in bn_train_case; dx as in bn_backward_case. count is 3M (the
// other "ranks'" rows), so the scaling by the global count is checked too.
void bn_pieces_case(BackendOps& f, int M, int C, uint64_t seed, float offset) {
    SCOPED_TRACE(testing::Message() << "bn pieces M=" << M << " C=" << C << " offset=" << offset);
    const size_t n = size_t(M) * C;
    const int64_t count = 3 * int64_t(M);
    const float scale = float(1.0 / double(count));
    auto x = f.in(randn(n, seed, 1.5f, offset));
    auto gamma = f.in(uniform(C, seed + 1, 0.5f, 1.5f));
    auto beta = f.in(randn(C, seed + 2));
    auto rmean = f.in(randn(C, seed + 3));
    auto rvar = f.in(uniform(C, seed + 4, 0.5f, 2.f));
    // pass-1 sums of all ranks (made up: 3x this rank's, as if the others had the same rows)
    std::vector<float> s1h(2 * size_t(C));
    {
        const auto xs = x.c.get("x");
        for (int c = 0; c < C; ++c) {
            double s = 0, ss = 0;
            for (int m = 0; m < M; ++m) s += xs[size_t(m) * C + c], ss += double(xs[size_t(m) * C + c]) * xs[size_t(m) * C + c];
            s1h[size_t(c)] = float(3 * s);
            s1h[size_t(C + c)] = float(3 * ss);
        }
    }
    auto s1 = f.in(s1h);
    auto sums = f.out<float>(2 * size_t(C));
    for (bool centred : {false, true}) {
        SCOPED_TRACE(centred ? "about the pass-1 mean" : "about 0");
        f.cpu_->bn_stats(sums.cp(), x.cp(), centred ? s1.cp() : nullptr, scale, M, C);
        f.gpu_->bn_stats(sums.gp(), x.gp(), centred ? s1.gp() : nullptr, scale, M, C);
        const auto ref = sums.c.get("sums");
        double ss = 0;
        for (float v : ref) ss += double(v) * v;
        EXPECT_TRUE(f.same(sums, "bn_stats sums", 1e-5 * std::sqrt(ss / ref.size()), 1e-5));
    }
    // apply with the (global) sums about the pass-1 mean: the same sums on both sides
    auto s2 = f.in(sums.c.get("sums"));
    auto y = f.out<float>(n);
    auto mean = f.out<float>(C);
    auto invstd = f.out<float>(C);
    f.cpu_->bn_apply(y.cp(), mean.cp(), invstd.cp(), rmean.cp(), rvar.cp(), x.cp(), gamma.cp(),
                     beta.cp(), s2.cp(), s1.cp(), scale, count, M, C, 1e-5f, 0.4f);
    f.gpu_->bn_apply(y.gp(), mean.gp(), invstd.gp(), rmean.gp(), rvar.gp(), x.gp(), gamma.gp(),
                     beta.gp(), s2.gp(), s1.gp(), scale, count, M, C, 1e-5f, 0.4f);
    expect_batch_stats_same(f, "bn_apply", mean, invstd, rmean, rvar, 1e-6 * (std::abs(offset) + 1.5));
    EXPECT_TRUE(f.same(y, "bn_apply y", 1e-5 * (1 + std::abs(offset)), 1e-5));

    // backward pieces, with the saved statistics of the CPU side on both
    auto dy = f.in(randn(n, seed + 5));
    auto mean_in = f.in(mean.c.get("mean"));
    auto invstd_in = f.in(invstd.c.get("invstd"));
    auto bsums = f.out<float>(2 * size_t(C));
    auto dgamma = f.out<float>(C);
    auto dbeta = f.out<float>(C);
    f.cpu_->bn_backward_reduce(bsums.cp(), dgamma.cp(), dbeta.cp(), dy.cp(), x.cp(), mean_in.cp(),
                               invstd_in.cp(), M, C);
    f.gpu_->bn_backward_reduce(bsums.gp(), dgamma.gp(), dbeta.gp(), dy.gp(), x.gp(), mean_in.gp(),
                               invstd_in.gp(), M, C);
    const double sum_tol = 1e-5 * std::sqrt(double(M));
    EXPECT_TRUE(f.same(bsums, "bn_backward_reduce sums", sum_tol, 1e-5));
    EXPECT_TRUE(f.same(dgamma, "bn_backward_reduce dgamma", sum_tol, 1e-5));
    EXPECT_TRUE(f.same(dbeta, "bn_backward_reduce dbeta", sum_tol, 1e-5));
    auto gsums = f.in(bsums.c.get("sums"));  // "all-reduced": the same on both sides
    auto dx = f.out<float>(n);
    f.cpu_->bn_backward_apply(dx.cp(), dy.cp(), x.cp(), mean_in.cp(), invstd_in.cp(), gamma.cp(),
                              gsums.cp(), count, M, C);
    f.gpu_->bn_backward_apply(dx.gp(), dy.gp(), x.gp(), mean_in.gp(), invstd_in.gp(), gamma.gp(),
                              gsums.gp(), count, M, C);
    EXPECT_TRUE(f.same(dx, "bn_backward_apply dx", 1e-5, 1e-5));
}

TEST_P(BackendOps, BatchNormSyncPieces) { bn_pieces_case(*this, 147, 5, 750, 1.f); }

TEST_P(BackendOps, BatchNormSyncPiecesManyRows) { bn_pieces_case(*this, 32 * 31 * 31, 24, 760, -3.f); }

// The networks' channel counts, where the reductions take 8 channels per thread (C a multiple
// of 8, at most 2048): 64 (32 row phases per block), 512 (4) and 2048 (1), with row counts that
// leave the last chunk and the phases uneven.
TEST_P(BackendOps, BatchNormWideChannels) {
    int seed = 780;
    for (const auto [M, C] : {std::pair{1000, 64}, std::pair{600, 512}, std::pair{70, 2048}}) {
        SCOPED_TRACE(testing::Message() << "M=" << M << " C=" << C);
        bn_train_case(*this, M, C, true, seed++, 1.5f, 2.f, 1e-5);
        bn_backward_case(*this, M, C, seed++);
        bn_act_case(*this, M, C, ActKind::silu, seed++);
        bn_pieces_case(*this, M, C, seed++, 1.f);
    }
}

// ---- GELU ------------------------------------------------------------------------------------

// Tolerance: the CPU's erf is a polynomial good to ~1e-7 absolute (times |x|/2 <= 4 in y),
// CUDA's erff to 2 ulp: atol 2e-6, rtol 1e-5.
TEST_P(BackendOps, Gelu) {
    auto xs = randn(1001, 800, 3.f);
    for (float v : {0.f, -0.f, 1e-8f, -1e-8f, 8.f, -8.f}) xs.push_back(v);
    const size_t n = xs.size();
    auto x = in(xs);
    auto dy = in(randn(n, 801));
    auto y = out<float>(n);
    auto dx = out<float>(n);
    cpu_->gelu_forward(y.cp(), x.cp(), n);
    gpu_->gelu_forward(y.gp(), x.gp(), n);
    EXPECT_TRUE(same(y, "gelu y", 2e-6, 1e-5));
    cpu_->gelu_backward(dx.cp(), dy.cp(), x.cp(), n);
    gpu_->gelu_backward(dx.gp(), dy.gp(), x.gp(), n);
    EXPECT_TRUE(same(dx, "gelu dx", 2e-6, 1e-5));
}

// CUDA's expf against the CPU's polynomial exp (~2e-7 relative): atol 2e-6, rtol 1e-5.
// (n = 1008 here and in ReluCelu: 8 values per thread on the GPU; Gelu's 1007: one)
TEST_P(BackendOps, Silu) {
    auto xs = randn(1001, 850, 4.f);
    for (float v : {0.f, -0.f, 1e-8f, -30.f, 30.f, -90.f, 90.f}) xs.push_back(v);
    const size_t n = xs.size();
    auto x = in(xs);
    auto dy = in(randn(n, 851));
    auto y = out<float>(n);
    auto dx = out<float>(n);
    cpu_->silu_forward(y.cp(), x.cp(), n);
    gpu_->silu_forward(y.gp(), x.gp(), n);
    EXPECT_TRUE(same(y, "silu y", 2e-6, 1e-5));
    cpu_->silu_backward(dx.cp(), dy.cp(), x.cp(), n);
    gpu_->silu_backward(dx.gp(), dy.gp(), x.gp(), n);
    EXPECT_TRUE(same(dx, "silu dx", 2e-6, 1e-5));
}

// ReLU only selects: exact. CELU: CUDA's expf against the CPU's polynomial exp.
TEST_P(BackendOps, ReluCelu) {
    auto xs = randn(1001, 860, 4.f);
    for (float v : {0.f, -0.f, 1e-8f, -30.f, 30.f, -90.f, 90.f}) xs.push_back(v);
    const size_t n = xs.size();
    auto x = in(xs);
    auto dy = in(randn(n, 861));
    auto y = out<float>(n);
    auto dx = out<float>(n);
    cpu_->relu_forward(y.cp(), x.cp(), n);
    gpu_->relu_forward(y.gp(), x.gp(), n);
    EXPECT_TRUE(same(y, "relu y", 0, 0));
    cpu_->relu_backward(dx.cp(), dy.cp(), x.cp(), n);
    gpu_->relu_backward(dx.gp(), dy.gp(), x.gp(), n);
    EXPECT_TRUE(same(dx, "relu dx", 0, 0));
    for (float alpha : {0.3f, 1.f}) {
        cpu_->celu_forward(y.cp(), x.cp(), n, alpha);
        gpu_->celu_forward(y.gp(), x.gp(), n, alpha);
        EXPECT_TRUE(same(y, "celu y", 2e-6, 1e-5));
        cpu_->celu_backward(dx.cp(), dy.cp(), x.cp(), n, alpha);
        gpu_->celu_backward(dx.gp(), dy.gp(), x.gp(), n, alpha);
        EXPECT_TRUE(same(dx, "celu dx", 2e-6, 1e-5));
    }
}

// ---- max pooling -------------------------------------------------------------------------------

// Inputs are rounded to multiples of 0.5 so windows hold ties (first max in row-major window
// order must win). Pooling only selects and copies: everything must match exactly.
void pool_case(BackendOps& f, int N, int H, int W, int C, int k, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "maxpool N=" << N << " H=" << H << " W=" << W << " C=" << C
                                    << " k=" << k);
    auto xs = randn(size_t(N) * H * W * C, seed);
    for (auto& v : xs) v = std::round(v * 2.f) / 2.f;
    const size_t ny = size_t(N) * (H / k) * (W / k) * C;
    auto x = f.in(xs);
    auto dy = f.in(randn(ny, seed + 1));
    auto y = f.out<float>(ny);
    auto arg = f.out<uint8_t>(ny);
    auto dx = f.out<float>(xs.size());
    f.cpu_->maxpool_forward(y.cp(), arg.cp(), x.cp(), N, H, W, C, k);
    f.gpu_->maxpool_forward(y.gp(), arg.gp(), x.gp(), N, H, W, C, k);
    EXPECT_TRUE(f.same(y, "maxpool y", 0, 0));
    EXPECT_TRUE(f.same(arg, "maxpool arg", 0, 0));
    f.cpu_->maxpool_backward(dx.cp(), dy.cp(), arg.cp(), N, H, W, C, k);
    f.gpu_->maxpool_backward(dx.gp(), dy.gp(), arg.gp(), N, H, W, C, k);
    EXPECT_TRUE(f.same(dx, "maxpool dx", 0, 0));
}

TEST_P(BackendOps, MaxPool2On7x7) { pool_case(*this, 3, 7, 7, 5, 2, 900); }
TEST_P(BackendOps, MaxPool3On3x3) { pool_case(*this, 3, 3, 3, 5, 3, 910); }
TEST_P(BackendOps, MaxPool3On7x7) { pool_case(*this, 3, 7, 7, 5, 3, 920); }
TEST_P(BackendOps, MaxPool2RealShape) { pool_case(*this, 8, 32, 32, 64, 2, 930); }
// C a multiple of 8: the CUDA kernels' 8-channel path, with the row and column floor drops
TEST_P(BackendOps, MaxPool2OddRealShape) { pool_case(*this, 4, 31, 31, 64, 2, 940); }
TEST_P(BackendOps, MaxPool3EightChannels) { pool_case(*this, 3, 7, 8, 16, 3, 950); }

// Max pooling fused with the BN + activation after it (pool_bn_act_forward_train,
// bn_act_pool_backward; the airbench groups' conv -> pool -> BN -> act). Inputs on a 0.5 grid,
// as pool_case (ties). On both sides against the CPU (whose ops are the defaults: the pieces in
// turn): p, arg exact; the BN results with bn_act_case's tolerances. And on the device under
// test, the fused ops against its own separate ops (maxpool_*, bn_act_*) on the same inputs: the
// fused kernels do the same arithmetic in the same order, so 1e-6 relative (the shapes the fused
// kernels do not take run the separate ops and match exactly).
void pool_bn_act_case(BackendOps& f, int N, int H, int W, int C, int k, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "maxpool+bn+act N=" << N << " H=" << H << " W=" << W
                                    << " C=" << C << " k=" << k);
    auto xs = randn(size_t(N) * H * W * C, seed, 2.f, 1.f);
    for (auto& v : xs) v = std::round(v * 2.f) / 2.f;
    const int M = N * (H / k) * (W / k);
    const size_t np = size_t(M) * C;
    const float eps = 1e-5f, momentum = 0.4f, alpha = 0.3f;
    const ActKind act = ActKind::gelu;
    auto x = f.in(xs);
    auto gamma = f.in(uniform(C, seed + 1, 0.5f, 1.5f));
    auto beta = f.in(randn(C, seed + 2));
    const auto rm0 = randn(C, seed + 3), rv0 = uniform(C, seed + 4, 0.5f, 2.f);
    auto rmean = f.in(rm0), rvar = f.in(rv0);
    auto dz = f.in(randn(np, seed + 5));
    auto z = f.out<float>(np), pooled = f.out<float>(np), dp = f.out<float>(np);
    auto arg = f.out<uint8_t>(np);
    auto dx = f.out<float>(xs.size());
    auto mean = f.out<float>(C), invstd = f.out<float>(C), dgamma = f.out<float>(C), dbeta = f.out<float>(C);
    for (int side = 0; side < 2; ++side) {
        Backend& b = side ? *f.gpu_ : *f.cpu_;
        auto p = [&](auto& t) { return side ? t.gp() : t.cp(); };
        b.pool_bn_act_forward_train(p(z), p(pooled), p(arg), p(mean), p(invstd), p(rmean), p(rvar),
                                    p(x), p(gamma), p(beta), N, H, W, C, k, eps, momentum, act,
                                    alpha);
        b.bn_act_pool_backward(p(dx), p(dgamma), p(dbeta), p(dp), p(dz), p(pooled), p(arg), p(mean),
                               p(invstd), p(gamma), p(beta), N, H, W, C, k, act, alpha);
    }
    EXPECT_TRUE(f.same(pooled, "pool+bn p", 0, 0));
    EXPECT_TRUE(f.same(arg, "pool+bn arg", 0, 0));
    EXPECT_TRUE(f.same(z, "pool+bn+act z", 2e-5, 1e-5));
    expect_batch_stats_same(f, "pool+bn", mean, invstd, rmean, rvar, 2e-6);
    EXPECT_TRUE(f.same(dx, "pool+bn+act dx", 3e-5, 3e-5));
    const double sum_tol = 3e-5 * std::sqrt(double(M));
    EXPECT_TRUE(f.same(dgamma, "pool+bn dgamma", sum_tol, 3e-5));
    EXPECT_TRUE(f.same(dbeta, "pool+bn dbeta", sum_tol, 3e-5));

    // the device's separate ops on the same inputs
    Backend& g = *f.gpu_;
    auto rmean2 = f.in(rm0), rvar2 = f.in(rv0);
    auto z2 = f.out<float>(np), pooled2 = f.out<float>(np), dp2 = f.out<float>(np);
    auto arg2 = f.out<uint8_t>(np);
    auto dx2 = f.out<float>(xs.size());
    auto mean2 = f.out<float>(C), invstd2 = f.out<float>(C), dgamma2 = f.out<float>(C), dbeta2 = f.out<float>(C);
    g.maxpool_forward(pooled2.gp(), arg2.gp(), x.gp(), N, H, W, C, k);
    g.bn_act_forward_train(z2.gp(), mean2.gp(), invstd2.gp(), rmean2.gp(), rvar2.gp(), pooled2.gp(),
                           gamma.gp(), beta.gp(), M, C, eps, momentum, act, alpha);
    g.bn_act_backward(dp2.gp(), dgamma2.gp(), dbeta2.gp(), dz.gp(), pooled2.gp(), mean2.gp(),
                      invstd2.gp(), gamma.gp(), beta.gp(), M, C, act, alpha);
    g.maxpool_backward(dx2.gp(), dp2.gp(), arg2.gp(), N, H, W, C, k);
    auto fused_vs_ops = [](const auto& a, const auto& b, const char* what) {
        auto r = close(a.g.get(what), b.g.get(what), 1e-7, 1e-6);
        if (!r) r << " [" << what << ": the fused op against the separate ops]";
        return r;
    };
    EXPECT_TRUE(fused_vs_ops(pooled, pooled2, "p"));
    EXPECT_TRUE(fused_vs_ops(arg, arg2, "arg"));
    EXPECT_TRUE(fused_vs_ops(z, z2, "z"));
    EXPECT_TRUE(fused_vs_ops(mean, mean2, "mean"));
    EXPECT_TRUE(fused_vs_ops(invstd, invstd2, "invstd"));
    EXPECT_TRUE(fused_vs_ops(rvar, rvar2, "running_var"));
    EXPECT_TRUE(fused_vs_ops(dx, dx2, "dx"));
    EXPECT_TRUE(fused_vs_ops(dgamma, dgamma2, "dgamma"));
    EXPECT_TRUE(fused_vs_ops(dbeta, dbeta2, "dbeta"));
}

// airbench94's first group (31x31 -> 15x15, 64 channels: the fused kernels, with the floor's
// dropped row and column), a 3x3 window on 16 channels, and a shape they do not take (C = 5:
// the separate ops).
TEST_P(BackendOps, MaxPoolBatchNormActivationFused) {
    pool_bn_act_case(*this, 4, 31, 31, 64, 2, 960);
    pool_bn_act_case(*this, 3, 7, 8, 16, 3, 970);
    pool_bn_act_case(*this, 3, 7, 7, 5, 2, 980);
}

// Every tensor one element past an aligned address (4 bytes for fp32, 1 for the pooling's
// indices): the 8-wide kernels, whose 16-byte accesses need 16-byte alignment, must hand such
// tensors to the one-element kernels (aligned8), or the GPU faults; the emulation fails a
// misaligned vector access too. Shapes the 8-wide kernels take when aligned (C = 64, 24).
TEST_P(BackendOps, UnalignedTensorsTakeTheOneElementKernels) {
    lead_ = 1;
    pool_case(*this, 4, 31, 31, 64, 2, 990);
    pool_bn_act_case(*this, 4, 31, 31, 64, 2, 991);
    bn_act_case(*this, 32 * 7 * 7, 24, ActKind::gelu, 992);
    bn_backward_case(*this, 32 * 7 * 7, 24, 993);
}

// Global max + mean (DAWN_net's head). Ties as in pool_case; the mean is an fp32 sum in the same
// order on both sides, then one multiply: equal to a few ulps.
void concat_pool_case(BackendOps& f, int N, int HW, int C, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "concat_pool N=" << N << " HW=" << HW << " C=" << C);
    auto xs = randn(size_t(N) * HW * C, seed);
    for (auto& v : xs) v = std::round(v * 2.f) / 2.f;
    auto x = f.in(xs);
    auto dy = f.in(randn(size_t(N) * 2 * C, seed + 1));
    auto y = f.out<float>(size_t(N) * 2 * C);
    auto arg = f.out<uint8_t>(size_t(N) * C);
    auto dx = f.out<float>(xs.size());
    f.cpu_->concat_pool_forward(y.cp(), arg.cp(), x.cp(), N, HW, C);
    f.gpu_->concat_pool_forward(y.gp(), arg.gp(), x.gp(), N, HW, C);
    EXPECT_TRUE(f.same(y, "concat_pool y", 1e-6, 1e-6));
    EXPECT_TRUE(f.same(arg, "concat_pool arg", 0, 0));
    f.cpu_->concat_pool_backward(dx.cp(), dy.cp(), arg.cp(), N, HW, C);
    f.gpu_->concat_pool_backward(dx.gp(), dy.gp(), arg.gp(), N, HW, C);
    EXPECT_TRUE(f.same(dx, "concat_pool dx", 1e-6, 1e-6));
}

TEST_P(BackendOps, ConcatPoolRealShape) { concat_pool_case(*this, 16, 16, 256, 940); }
TEST_P(BackendOps, ConcatPoolOddSizes) { concat_pool_case(*this, 3, 9, 5, 950); }

// ---- linear ----------------------------------------------------------------------------------

// cuBLAS runs in full fp32 (no TF32): only the summation order differs from the CPU's loops.
// Tolerance 1e-5 of the result's rms plus 1e-5 relative.
void linear_case(BackendOps& f, int N, int I, int O, float scale, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "linear N=" << N << " I=" << I << " O=" << O);
    auto x = f.in(randn(size_t(N) * I, seed));
    auto w = f.in(randn(size_t(O) * I, seed + 1));
    auto dy = f.in(randn(size_t(N) * O, seed + 2));
    auto y = f.out<float>(size_t(N) * O);
    f.cpu_->linear_forward(y.cp(), x.cp(), w.cp(), N, I, O, scale);
    f.gpu_->linear_forward(y.gp(), x.gp(), w.gp(), N, I, O, scale);
    EXPECT_TRUE(f.same(y, "linear y", 1e-5 * rms(y.c.get("y")), 1e-5));
    for (bool with_dx : {true, false}) {
        auto dx = f.out<float>(size_t(N) * I);
        auto dw = f.out<float>(size_t(O) * I);
        f.cpu_->linear_backward(with_dx ? dx.cp() : nullptr, dw.cp(), dy.cp(), x.cp(), w.cp(), N, I, O, scale);
        f.gpu_->linear_backward(with_dx ? dx.gp() : nullptr, dw.gp(), dy.gp(), x.gp(), w.gp(), N, I, O, scale);
        if (with_dx) {
            EXPECT_TRUE(f.same(dx, "linear dx", 1e-5 * rms(dx.c.get("dx")), 1e-5));
        } else {
            EXPECT_TRUE(std::isnan(dx.g.get("dx")[0])) << "dx == nullptr must be skipped";
        }
        EXPECT_TRUE(f.same(dw, "linear dw", 1e-5 * rms(dw.c.get("dw")), 1e-5));
    }
}

TEST_P(BackendOps, Linear) {
    SKIP_IF_EMULATED("cuBLAS");
    linear_case(*this, 3, 13, 10, 0.125f, 1000);
}
TEST_P(BackendOps, LinearRealShape) {
    SKIP_IF_EMULATED("cuBLAS");
    linear_case(*this, 1024, 256, 10, 1.f / 9, 1010);
}

// ---- loss ------------------------------------------------------------------------------------

// Tolerance: the CPU works in double, the GPU in fp32 (expf/logf) per row, summing rows in
// double: dlogits (in [-1, 1]) to 1e-6; the loss sum to 1e-5 relative; the correct count exactly.
void loss_case(BackendOps& f, int N, int O, float smoothing, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "cross_entropy N=" << N << " O=" << O << " s=" << smoothing);
    Rng r(seed);
    std::vector<int32_t> labels(N);
    for (auto& l : labels) l = int32_t(r.below(uint32_t(O)));
    auto logits = f.in(randn(size_t(N) * O, seed + 1, 3.f));
    auto lab = f.in(labels);
    auto d = f.out<float>(size_t(N) * O);
    auto stats = f.in(std::vector<float>{1.5f, 2.f});  // it accumulates: start from non-zero
    f.cpu_->cross_entropy(d.cp(), stats.cp(), logits.cp(), lab.cp(), N, O, smoothing);
    f.gpu_->cross_entropy(d.gp(), stats.gp(), logits.gp(), lab.gp(), N, O, smoothing);
    EXPECT_TRUE(f.same(d, "dlogits", 1e-6, 1e-5));
    const auto sc = stats.c.get("stats"), sg = stats.g.get("stats");
    EXPECT_NEAR(sg[0], sc[0], 1e-5 * std::abs(sc[0])) << "loss sum";
    EXPECT_EQ(sg[1], sc[1]) << "correct count";
    EXPECT_GT(sc[1], 2.f) << "the seed should give some correct rows";
}

// The mixed-label loss (cutmix): the same tolerances; rows mixing a label with itself included.
void mixed_loss_case(BackendOps& f, int N, int O, float smoothing, float mix, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "cross_entropy_mixed N=" << N << " mix=" << mix);
    Rng r(seed);
    std::vector<int32_t> l1(N), l2(N);
    for (int n = 0; n < N; ++n) {
        l1[n] = int32_t(r.below(uint32_t(O)));
        l2[n] = n % 5 == 0 ? l1[n] : int32_t(r.below(uint32_t(O)));
    }
    auto logits = f.in(randn(size_t(N) * O, seed + 1, 3.f));
    auto a = f.in(l1), b = f.in(l2);
    auto d = f.out<float>(size_t(N) * O);
    auto stats = f.in(std::vector<float>{1.5f, 2.f});
    f.cpu_->cross_entropy_mixed(d.cp(), stats.cp(), logits.cp(), a.cp(), b.cp(), mix, N, O, smoothing);
    f.gpu_->cross_entropy_mixed(d.gp(), stats.gp(), logits.gp(), a.gp(), b.gp(), mix, N, O, smoothing);
    EXPECT_TRUE(f.same(d, "dlogits", 1e-6, 1e-5));
    const auto sc = stats.c.get("stats"), sg = stats.g.get("stats");
    EXPECT_NEAR(sg[0], sc[0], 1e-5 * std::abs(sc[0])) << "loss sum";
    EXPECT_EQ(sg[1], sc[1]) << "correct count";
}

TEST_P(BackendOps, CrossEntropyMixed) { mixed_loss_case(*this, 1000, 10, 0.2f, 9.f / 1024, 1130); }
TEST_P(BackendOps, CrossEntropyMixedHalf) { mixed_loss_case(*this, 37, 10, 0.f, 0.5f, 1140); }

// Cutmix copies values: exact, with squares clipped at the edges; the source is left alone.
TEST_P(BackendOps, Cutmix) {
    const int B = 37, H = 32, W = 32, C = 3, size = 5;
    auto src = in(randn(size_t(B) * H * W * C, 1230));
    auto x = in(randn(size_t(B) * H * W * C, 1231));
    std::vector<uint8_t> p(2 * size_t(B));
    for (int b = 0; b < B; ++b) {
        p[2 * size_t(b)] = uint8_t((b * 7) % 30);  // up to 29: some squares cross the edge
        p[2 * size_t(b) + 1] = uint8_t((b * 11) % 28);
    }
    auto pos = in(p);
    cpu_->cutmix(x.cp(), src.cp(), pos.cp(), B, H, W, C, size);
    gpu_->cutmix(x.gp(), src.gp(), pos.gp(), B, H, W, C, size);
    EXPECT_TRUE(same(x, "cutmix x", 0, 0));
    EXPECT_EQ(src.g.get("cutmix src"), randn(size_t(B) * H * W * C, 1230)) << "the source changed";
}

TEST_P(BackendOps, CrossEntropy) { loss_case(*this, 37, 10, 0.2f, 1100); }
TEST_P(BackendOps, CrossEntropyManyRows) { loss_case(*this, 1000, 10, 0.2f, 1110); }
TEST_P(BackendOps, CrossEntropyNoSmoothing) { loss_case(*this, 37, 10, 0.f, 1120); }

// ---- optimizer -------------------------------------------------------------------------------

// Elementwise fp32 on O(1) values; only FMA contraction may differ: atol 1e-6, rtol 1e-6.
// n is odd and, in one case, larger than one pass of the grid-stride loop.
TEST_P(BackendOps, SgdNesterov) {
    for (size_t n : {size_t(1001), size_t(3000001)}) {
        SCOPED_TRACE(testing::Message() << "n=" << n);
        auto p = in(randn(n, 1200));
        auto buf = in(randn(n, 1201));
        auto g = in(randn(n, 1202));
        cpu_->sgd_nesterov(p.cp(), buf.cp(), g.cp(), n, 0.1f, 5e-4f, 0.85f);
        gpu_->sgd_nesterov(p.gp(), buf.gp(), g.gp(), n, 0.1f, 5e-4f, 0.85f);
        EXPECT_TRUE(same(p, "sgd p", 1e-6, 1e-6));
        EXPECT_TRUE(same(buf, "sgd buf", 1e-6, 1e-6));
    }
}

// The optimizer's groups in one launch (ranges with gaps, an empty one, one past a grid pass):
// the tolerance of the single-range ops; gaps must stay as they were (exactly).
TEST_P(BackendOps, SgdNesterovRanges) {
    const size_t n = 3000001;
    const SgdRange r[5] = {{0, 1000, 0.1f, 5e-4f},        {1000, 1000, 5.f, 5.f},
                           {1003, 2500000, 6.4f, 7.8e-6f}, {2500007, 2999999, 1e-3f, 0.f},
                           {3000000, 3000001, 0.5f, 0.2f}};
    for (bool velocity : {false, true}) {
        SCOPED_TRACE(testing::Message() << "velocity=" << velocity);
        auto p = in(randn(n, 1203));
        auto buf = in(randn(n, 1204));
        auto g = in(randn(n, 1205));
        cpu_->sgd_nesterov_ranges(p.cp(), buf.cp(), g.cp(), r, 5, 0.85f, velocity);
        gpu_->sgd_nesterov_ranges(p.gp(), buf.gp(), g.gp(), r, 5, 0.85f, velocity);
        EXPECT_TRUE(same(p, "sgd ranges p", 1e-6, 1e-6));
        EXPECT_TRUE(same(buf, "sgd ranges buf", 1e-6, 1e-6));
    }
}

// Cutout only writes zeros: exact, with squares clipped at the edges.
TEST_P(BackendOps, Cutout) {
    const int B = 37, H = 32, W = 32, C = 3, size = 8;
    auto x = in(randn(size_t(B) * H * W * C, 1220));
    std::vector<uint8_t> p(2 * size_t(B));
    for (int b = 0; b < B; ++b) {
        p[2 * size_t(b)] = uint8_t((b * 7) % 29);  // up to 28: some squares cross the edge
        p[2 * size_t(b) + 1] = uint8_t((b * 11) % 27);
    }
    auto pos = in(p);
    cpu_->cutout(x.cp(), pos.cp(), B, H, W, C, size);
    gpu_->cutout(x.gp(), pos.gp(), B, H, W, C, size);
    EXPECT_TRUE(same(x, "cutout x", 0, 0));
}

TEST_P(BackendOps, SgdNesterovVelocity) {
    const size_t n = 100003;
    auto p = in(randn(n, 1210));
    auto v = in(randn(n, 1211));
    auto g = in(randn(n, 1212));
    cpu_->sgd_nesterov_velocity(p.cp(), v.cp(), g.cp(), n, 2e-3f, 0.256f, 0.9f);
    gpu_->sgd_nesterov_velocity(p.gp(), v.gp(), g.gp(), n, 2e-3f, 0.256f, 0.9f);
    EXPECT_TRUE(same(p, "sgd-velocity p", 1e-6, 1e-6));
    EXPECT_TRUE(same(v, "sgd-velocity v", 1e-6, 1e-6));
}

TEST_P(BackendOps, LerpAssign) {
    const size_t n = 1001;
    auto ema = in(randn(n, 1300));
    auto p = in(randn(n, 1301));
    cpu_->lerp_assign(ema.cp(), p.cp(), n, 0.3f);
    gpu_->lerp_assign(ema.gp(), p.gp(), n, 0.3f);
    EXPECT_TRUE(same(ema, "lerp ema", 1e-6, 1e-6));
    EXPECT_TRUE(same(p, "lerp p", 1e-6, 1e-6));
}

TEST_P(BackendOps, Axpy) {
    for (size_t n : {size_t(1001), size_t(3000001)}) {
        SCOPED_TRACE(testing::Message() << "n=" << n);
        auto y = in(randn(n, 1400));
        auto x = in(randn(n, 1401));
        cpu_->axpy(y.cp(), x.cp(), -0.75f, n);
        gpu_->axpy(y.gp(), x.gp(), -0.75f, n);
        EXPECT_TRUE(same(y, "axpy y", 1e-6, 1e-6));
    }
}

// The residual add in fp32 storage (its own kernel on the GPU since 16-bit storage): one fp32
// addition per element on both sides, exact.
TEST_P(BackendOps, ResidualAdd) {
    for (size_t n : {size_t(1001), size_t(4096), size_t(3000001)}) {  // (4096: 8 per thread)
        SCOPED_TRACE(testing::Message() << "n=" << n);
        auto y = in(randn(n, 1410));
        auto x = in(randn(n, 1411));
        cpu_->residual_add(y.cp(), x.cp(), n);
        gpu_->residual_add(y.gp(), x.gp(), n);
        EXPECT_TRUE(same(y, "residual_add y", 0, 0));
    }
}

// Muon's pieces. scale / momentum_direction: elementwise, atol = rtol = 1e-6. scale_to_norm: the
// norm is summed in double on the CPU, in fp32 partials then double on the GPU: 1e-5 relative.
TEST_P(BackendOps, MuonElementwise) {
    for (size_t n : {size_t(1001), size_t(589824), size_t(3000001)}) {
        SCOPED_TRACE(testing::Message() << "n=" << n);
        auto x = in(randn(n, 1450));
        cpu_->scale(x.cp(), -0.3f, n);
        gpu_->scale(x.gp(), -0.3f, n);
        EXPECT_TRUE(same(x, "scale", 1e-6, 1e-6));
        cpu_->scale_to_norm(x.cp(), n, 4.f, 1e-5f);
        gpu_->scale_to_norm(x.gp(), n, 4.f, 1e-5f);
        EXPECT_TRUE(same(x, "scale_to_norm", 1e-7, 1e-5));
        auto buf = in(randn(n, 1451));
        auto g = in(randn(n, 1452));
        for (bool nesterov : {true, false}) {
            auto u = out<float>(n);
            cpu_->momentum_direction(u.cp(), buf.cp(), g.cp(), n, 0.655f, nesterov);
            gpu_->momentum_direction(u.gp(), buf.gp(), g.gp(), n, 0.655f, nesterov);
            EXPECT_TRUE(same(u, "momentum_direction u", 1e-6, 1e-6));
            EXPECT_TRUE(same(buf, "momentum_direction buf", 1e-6, 1e-6));
        }
    }
}

// gemm: cuBLAS in full fp32 (no TF32) against oneDNN's sgemm; only the summation order differs:
// 1e-5 of the result's rms plus 1e-5 relative. Shapes of Muon (64 x 216, 256 x 2304) and odd ones;
// beta == 0 must not read C (NaN garbage on the GPU side would leak).
void gemm_case(BackendOps& f, int M, int N, int K, bool ta, bool tb, float alpha, float beta,
               uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "gemm M=" << M << " N=" << N << " K=" << K << " ta=" << ta
                                    << " tb=" << tb << " beta=" << beta);
    auto a = f.in(randn(size_t(M) * K, seed));
    auto b = f.in(randn(size_t(K) * N, seed + 1));
    auto c = beta != 0.f ? f.in(randn(size_t(M) * N, seed + 2)) : f.out<float>(size_t(M) * N);
    f.cpu_->gemm(c.cp(), a.cp(), b.cp(), M, N, K, ta, tb, alpha, beta);
    f.gpu_->gemm(c.gp(), a.gp(), b.gp(), M, N, K, ta, tb, alpha, beta);
    EXPECT_TRUE(f.same(c, "gemm C", 1e-5 * rms(c.c.get("C")), 1e-5));
}

TEST_P(BackendOps, Gemm) {
    SKIP_IF_EMULATED("cuBLAS");
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            gemm_case(*this, 7, 13, 29, ta, tb, 1.5f, 0.f, 1460);
            gemm_case(*this, 7, 13, 29, ta, tb, 1.f, -4.7f, 1470);
        }
    gemm_case(*this, 64, 64, 216, false, true, 1.f, 0.f, 1480);    // A = X X^T
    gemm_case(*this, 256, 2304, 256, false, false, 1.f, 0.f, 1490);  // B X
}

// Muon's batched step: every filter's norm at once (segments of Muon's filter sizes, an empty
// one, per-segment targets or none): the tolerance of scale_to_norm.
TEST_P(BackendOps, ScaleToNormSegments) {
    const std::vector<int64_t> off = {0, 13824, 50688, 50688, 198144, 787968, 789000};
    const int count = int(off.size()) - 1;
    auto offsets = in(off);
    auto targets = in(uniform(size_t(count), 1491, 0.5f, 16.f));
    auto x = in(randn(size_t(off.back()), 1492));
    cpu_->scale_to_norm_segments(x.cp(), offsets.cp(), targets.cp(), count, 0.5f, 1e-7f);
    gpu_->scale_to_norm_segments(x.gp(), offsets.gp(), targets.gp(), count, 0.5f, 1e-7f);
    EXPECT_TRUE(same(x, "scale_to_norm_segments (targets)", 1e-7, 1e-5));
    cpu_->scale_to_norm_segments(x.cp(), offsets.cp(), nullptr, count, 2.f, 1e-5f);
    gpu_->scale_to_norm_segments(x.gp(), offsets.gp(), nullptr, count, 2.f, 1e-5f);
    EXPECT_TRUE(same(x, "scale_to_norm_segments", 1e-7, 1e-5));
}

// A GemmList (cuBLAS's grouped batched gemm on the GPU, a loop of sgemm on the CPU): Muon's
// Newton-Schulz products, both orientations, two items of one shape (one cuBLAS group), beta 0
// and beta != 0. GemmMath::fp32: the tolerance of gemm; GemmMath::tf32 (TF32 tensor cores where
// cuBLAS takes them): the convolutions' TF32 tolerance. Guard words around the whole stack
// catch stray writes. The stacks also start one float in (shift 1): operands only 4-byte
// aligned, which TF32 does not take (the list runs in fp32 then, instead of faulting).
TEST_P(BackendOps, GemmList) {
    SKIP_IF_EMULATED("cuBLAS");
    struct Shape { int M, N, K; bool ta, tb; };
    const std::vector<Shape> shapes = {{64, 64, 216, false, true}, {72, 72, 96, true, false},
                                       {64, 64, 216, false, true}, {96, 72, 72, false, false},
                                       {256, 2304, 256, false, false}, {7, 13, 29, true, true}};
    size_t na = 0, nb = 0, nc = 0;
    for (const Shape& s : shapes) {
        na += size_t(s.M) * s.K;
        nb += size_t(s.K) * s.N;
        nc += size_t(s.M) * s.N;
    }
    auto a = in(randn(na + 1, 1493));
    auto b = in(randn(nb + 1, 1494));
    for (const size_t shift : {0, 1})
    for (const GemmMath math : {GemmMath::fp32, GemmMath::tf32})
    for (float beta : {0.f, 0.75f}) {
        const bool tf32 = math == GemmMath::tf32;
        SCOPED_TRACE(testing::Message() << "beta=" << beta << (tf32 ? " tf32" : " fp32")
                                        << " shift=" << shift);
        const double tol = tf32 ? 1e-2 : 1e-5;
        auto c = beta != 0.f ? in(randn(nc + 1, 1495)) : out<float>(nc + 1);
        std::vector<GemmItem> ci, gi;
        size_t oa = shift, ob = shift, oc = shift;
        for (const Shape& s : shapes) {
            ci.push_back({c.cp() + oc, a.cp() + oa, b.cp() + ob, s.M, s.N, s.K, s.ta, s.tb});
            gi.push_back({c.gp() + oc, a.gp() + oa, b.gp() + ob, s.M, s.N, s.K, s.ta, s.tb});
            oa += size_t(s.M) * s.K;
            ob += size_t(s.K) * s.N;
            oc += size_t(s.M) * s.N;
        }
        auto cl = cpu_->make_gemm_list(std::move(ci), GemmMath::fp32);
        auto gl = gpu_->make_gemm_list(std::move(gi), math);
        cl->run(1.5f, beta);
        gl->run(1.5f, beta);
        EXPECT_TRUE(same(c, "gemm list C", tol * rms(c.c.get("C")), tol));
        cl->run(-0.5f, beta);  // a second run of the same list
        gl->run(-0.5f, beta);
        EXPECT_TRUE(same(c, "gemm list C, run 2", tol * rms(c.c.get("C")), tol));
    }
}

// The measured matrix-multiply peak that `speedrun bench` divides by: plausible for the GPUs this
// targets (A100: 156 / 312 TFLOP/s dense TF32 / FP16 on paper, H100 SXM 495 / 989), FP16 above
// TF32, and the CPU backend measures nothing here (core/cpu_peak.h does).
TEST_P(BackendOps, GemmPeak) {
    SKIP_IF_EMULATED("cuBLAS");
    const size_t peak_before = gpu_->peak_bytes();
    const GemmPeak g = gpu_->measure_gemm_peak();
    std::printf("cuBLAS 8192^3: TF32 %.0f TFLOP/s, FP16 %.0f TFLOP/s on %s\n", g.tf32_gflops * 1e-3,
                g.fp16_gflops * 1e-3, gpu_->name().c_str());
    EXPECT_GT(g.tf32_gflops, 20e3);
    EXPECT_LT(g.tf32_gflops, 2000e3);
    EXPECT_GT(g.fp16_gflops, 1.2 * g.tf32_gflops);
    EXPECT_EQ(cpu_->measure_gemm_peak().tf32_gflops, 0.0);
    EXPECT_EQ(gpu_->peak_bytes(), peak_before);  // its ~1 GiB is not the training's memory
}

// ---- data ------------------------------------------------------------------------------------

// (x + shift) * gain per image: the same two fp32 operations on both sides.
TEST_P(BackendOps, BrightnessContrast) {
    const int B = 5;
    const size_t per = 7 * 7 * 3;
    auto x = in(randn(size_t(B) * per, 1495));
    auto sh = in(uniform(B, 1496, -0.14f, 0.14f));
    auto gn = in(uniform(B, 1497, 0.87f, 1.13f));
    cpu_->brightness_contrast(x.cp(), sh.cp(), gn.cp(), B, per);
    gpu_->brightness_contrast(x.gp(), sh.gp(), gn.gp(), B, per);
    EXPECT_TRUE(same(x, "brightness_contrast", 1e-6, 1e-6));
}

// Same formula on both sides ((v / 255 - mean) / std, IEEE division): 1e-6 covers any rounding.
TEST_P(BackendOps, NormalizePad) {
    const int N = 3, H = 7, W = 7, pad = 2;
    Rng r(1500);
    std::vector<uint8_t> img(size_t(N) * H * W * 3);
    for (auto& v : img) v = uint8_t(r.below(256));
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, stdv[3] = {0.2470f, 0.2435f, 0.2616f};
    auto x = in(img);
    auto o = out<float>(size_t(N) * (H + 2 * pad) * (W + 2 * pad) * 3);
    cpu_->normalize_pad(o.cp(), x.cp(), N, H, W, mean, stdv, pad);
    gpu_->normalize_pad(o.gp(), x.gp(), N, H, W, mean, stdv, pad);
    EXPECT_TRUE(same(o, "normalize_pad", 1e-6, 1e-6));
}

// Pure copies: exact.
TEST_P(BackendOps, GatherCrops) {
    const int Nsrc = 6, H = 7, W = 7, pad = 2, B = 5;
    auto src = in(randn(size_t(Nsrc) * (H + 2 * pad) * (W + 2 * pad) * 3, 1600));
    Rng r(1601);
    std::vector<int32_t> idx(B);
    std::vector<int8_t> shifts(2 * B);
    std::vector<uint8_t> flips(B);
    for (auto& v : idx) v = int32_t(r.below(Nsrc));
    for (auto& v : shifts) v = int8_t(int(r.below(2 * pad + 1)) - pad);
    for (auto& v : flips) v = uint8_t(r.below(2));
    shifts[0] = -pad, shifts[1] = pad, flips[0] = 1;  // the extremes, flipped
    auto idx_t = in(idx);
    auto sh_t = in(shifts);
    auto fl_t = in(flips);
    {
        auto o = out<float>(size_t(B) * H * W * 3);
        cpu_->gather_crops(o.cp(), src.cp(), H, W, pad, B, idx_t.cp(), 0, sh_t.cp(), 0, 0, fl_t.cp(), 0);
        gpu_->gather_crops(o.gp(), src.gp(), H, W, pad, B, idx_t.gp(), 0, sh_t.gp(), 0, 0, fl_t.gp(), 0);
        EXPECT_TRUE(same(o, "gather_crops (arrays)", 0, 0));
    }
    struct Scalars { int first, sy, sx, flip; };
    for (Scalars s : {Scalars{1, -2, 1, 1}, Scalars{2, 2, -2, 0}, Scalars{0, 0, 0, 0}}) {
        SCOPED_TRACE(testing::Message() << "first=" << s.first << " sy=" << s.sy << " sx=" << s.sx
                                        << " flip=" << s.flip);
        const int b = 4;
        auto o = out<float>(size_t(b) * H * W * 3);
        cpu_->gather_crops(o.cp(), src.cp(), H, W, pad, b, nullptr, s.first, nullptr, s.sy, s.sx, nullptr, s.flip);
        gpu_->gather_crops(o.gp(), src.gp(), H, W, pad, b, nullptr, s.first, nullptr, s.sy, s.sx, nullptr, s.flip);
        EXPECT_TRUE(same(o, "gather_crops (scalars)", 0, 0));
    }
}

// Tolerance: the GPU sums exact double products in double; the CPU sums each image's products
// in fp32 (<= 961 patches, ~1e-6 relative) then in double: rtol 1e-5, atol 1e-6 of the largest
// entry. The output is host memory: pre-filled with 1e300 (CPU) and NaN (GPU).
void cov_case(BackendOps& f, int N, int H, int W, int C, int k, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "patch_covariance N=" << N << " H=" << H << " W=" << W
                                    << " C=" << C << " k=" << k);
    auto x = f.in(randn(size_t(N) * H * W * C, seed, 1.f, 0.5f));
    const size_t D = size_t(C) * k * k;
    std::vector<double> cc(D * D, 1e300), cg(D * D, std::numeric_limits<double>::quiet_NaN());
    std::vector<double> mc(D, 1e300), mg(D, std::numeric_limits<double>::quiet_NaN());
    f.cpu_->patch_covariance(cc.data(), mc.data(), x.cp(), N, H, W, C, k);
    f.gpu_->patch_covariance(cg.data(), mg.data(), x.gp(), N, H, W, C, k);
    double mx = 0;
    for (double v : cc) mx = std::max(mx, std::abs(v));
    EXPECT_TRUE(close(cg, cc, 1e-6 * mx, 1e-5));
    EXPECT_TRUE(close(mg, mc, 1e-6, 1e-5)) << "mean patch vector";
    for (size_t i = 0; i < D; ++i)
        for (size_t j = 0; j < D; ++j) ASSERT_EQ(cg[i * D + j], cg[j * D + i]) << "not symmetric";
}

TEST_P(BackendOps, PatchCovariance) { cov_case(*this, 3, 7, 7, 3, 2, 1700); }
TEST_P(BackendOps, PatchCovarianceK3C5) { cov_case(*this, 2, 9, 9, 5, 3, 1710); }
TEST_P(BackendOps, PatchCovarianceWhiteningShape) { cov_case(*this, 16, 32, 32, 3, 2, 1720); }

}  // namespace
}  // namespace sr
