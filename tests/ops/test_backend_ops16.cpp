// test_backend_ops16.cpp: the ops with 16-bit activation storage (Storage::f16 / bf16, the
// contract in ops/backend.h), a device under test against the CPU reference StorageBackend
// (ops/storage_backend.h), op by op, through the Backend interface only.
//
// Devices under test: the CUDA backend made with that storage (SKIPPED without a GPU, with the
// reason); its own kernels in the host emulation ("emu", ops/cuda/emulated_backend.h: where the
// CUDA toolkit's headers were found, GPU or not; its library ops are the CPU's); and
// StorageBackend over a one-thread CPU backend, which runs everywhere: it checks the harness
// itself (packing, guards, tolerances) and that the reference does not depend on the thread
// count.
//
// Every buffer has guard bytes on both sides; an activation buffer is allocated for n floats, as
// the network allocates it, and only its first 2n bytes may be written: a kernel that stores
// floats where the contract says 16 bits writes into the rest and fails the guard check. Output
// buffers start with different garbage on each side (12345 on the reference, NaN on the device).
//
// Tolerances: both sides read the same 16-bit inputs and compute in fp32, so the fp32 results
// differ as in test_backend_ops.cpp (summation order, library functions), and rounding them to
// the format can move a value by one unit in the last place: u = 2^-7 relative for bf16 (8
// significant bits), 2^-10 for fp16 (11). Each case adds u to the relative tolerance of its fp32
// counterpart where a rounded result is compared; copies, selections and the residual add (the
// fp32 sum of two 16-bit values, rounded once) must match exactly.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.h"
#include "ops/backend.h"
#include "ops/backend_ops_util.h"
#include "ops/storage_backend.h"
#include "test_util.h"
#ifdef SPEEDRUN_HAVE_CUDA_EMULATION
#include "ops/cuda/emulated_backend.h"
#endif

namespace sr {
namespace {

constexpr size_t kGuardBytes = 64;
constexpr uint8_t kFill = 0xA5;

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.f, float offset = 0.f) {
    return test::randn_offset(n, seed, scale, offset);
}
using test::uniform;
double rms(const std::vector<float>& v) { return test::rms(v); }
::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref,
                                 double atol, double rtol) {
    return test::close(got, ref, atol, rtol);
}

enum class DutKind { cuda, emu, cpu1 };
struct Dut {
    DutKind kind;
    Storage s;
};

std::string dut_label(const Dut& d) {
    const char* k = d.kind == DutKind::cuda ? "cuda_" : d.kind == DutKind::emu ? "emu_" : "cpu1_";
    return std::string(k) + storage_name(d.s);
}
std::string dut_name(const ::testing::TestParamInfo<Dut>& i) { return dut_label(i.param); }
void PrintTo(const Dut& d, std::ostream* os) { *os << dut_label(d); }  // (test names in ctest)

enum class Kind { act, f32, bytes };  // an activation (storage()), fp32, or raw integers

class StoredOps;

// The same tensor on both sides: side 0 the reference, side 1 the device under test.
class Twin {
public:
    Twin(StoredOps& f, Kind kind, size_t n, size_t elem);
    ~Twin();
    Twin(const Twin&) = delete;
    Twin& operator=(const Twin&) = delete;

    float* p(int side) const { return reinterpret_cast<float*>(base_[side] + kGuardBytes); }
    template <class T>
    T* as(int side) const { return reinterpret_cast<T*>(base_[side] + kGuardBytes); }
    float* r() const { return p(0); }
    float* d() const { return p(1); }

    void set_floats(int side, const std::vector<float>& v);
    void set_bytes(int side, const void* v);
    std::vector<float> floats(int side, const char* what) const;  // decoded values
    std::vector<uint8_t> bytes(int side, const char* what) const;  // the written bytes

private:
    size_t used() const;                      // bytes the tensor's values occupy
    std::vector<uint8_t> all(int side, const char* what) const;  // whole allocation, guards checked
    StoredOps& f_;
    Kind kind_;
    size_t n_, elem_, reserved_;  // reserved: payload bytes allocated (n floats for activations)
    char* base_[2];
};

class StoredOps : public ::testing::TestWithParam<Dut> {
public:
    void SetUp() override {
        s = GetParam().s;
        inner_ = make_cpu_backend(2);
        ASSERT_TRUE(inner_);
        ref_ = std::make_unique<StorageBackend>(*inner_, s);
        if (GetParam().kind == DutKind::cuda) {
            std::string why;
            dut_ = make_cuda_backend(0, &why, s);
            if (!dut_) GTEST_SKIP() << "no CUDA device: " << why;
            ASSERT_EQ(dut_->storage(), s);
        } else if (GetParam().kind == DutKind::emu) {
#ifdef SPEEDRUN_HAVE_CUDA_EMULATION
            dut_ = make_emulated_cuda_backend(s);
            ASSERT_EQ(dut_->storage(), s);
#else
            GTEST_SKIP() << "no CUDA emulation in this build (CUDA toolkit headers not found)";
#endif
        } else {
            dut_ = std::make_unique<StorageBackend>(make_cpu_backend(1), s);
        }
        u = s == Storage::bf16 ? 1.0 / 128 : 1.0 / 1024;
    }
    Backend& side(int i) { return i ? *dut_ : *ref_; }

    std::unique_ptr<Twin> act_in(const std::vector<float>& v) {
        auto t = std::make_unique<Twin>(*this, Kind::act, v.size(), 4);
        for (int i = 0; i < 2; ++i) t->set_floats(i, v);
        return t;
    }
    std::unique_ptr<Twin> act_out(size_t n) { return garbage(Kind::act, n); }
    std::unique_ptr<Twin> f32_in(const std::vector<float>& v) {
        auto t = std::make_unique<Twin>(*this, Kind::f32, v.size(), 4);
        for (int i = 0; i < 2; ++i) t->set_floats(i, v);
        return t;
    }
    std::unique_ptr<Twin> f32_out(size_t n) { return garbage(Kind::f32, n); }
    template <class T>
    std::unique_ptr<Twin> ints_in(const std::vector<T>& v) {
        auto t = std::make_unique<Twin>(*this, Kind::bytes, v.size(), sizeof(T));
        for (int i = 0; i < 2; ++i) t->set_bytes(i, v.data());
        return t;
    }
    std::unique_ptr<Twin> bytes_out(size_t n) {
        auto t = std::make_unique<Twin>(*this, Kind::bytes, n, 1);
        std::vector<uint8_t> a(n, 0xEE), b(n, 0x77);
        t->set_bytes(0, a.data());
        t->set_bytes(1, b.data());
        return t;
    }

    // The device's values against the reference's.
    ::testing::AssertionResult same(const Twin& t, const char* what, double atol, double rtol) {
        auto r = close(t.floats(1, what), t.floats(0, what), atol, rtol);
        if (!r) r << " [" << what << ", " << storage_name(s) << "]";
        return r;
    }
    ::testing::AssertionResult same_bytes(const Twin& t, const char* what) {
        const auto a = t.bytes(0, what), b = t.bytes(1, what);
        for (size_t i = 0; i < a.size(); ++i)
            if (a[i] != b[i])
                return ::testing::AssertionFailure() << what << ": byte " << i << " is "
                                                     << int(b[i]) << ", reference " << int(a[i]);
        return ::testing::AssertionSuccess();
    }
    double rms_of(const Twin& t) { return rms(t.floats(0, "rms")); }

    Storage s = Storage::f16;
    double u = 0;  // one unit in the last place of the format, relative (an upper bound)

private:
    std::unique_ptr<Twin> garbage(Kind k, size_t n) {
        auto t = std::make_unique<Twin>(*this, k, n, 4);
        t->set_floats(0, std::vector<float>(n, 12345.f));
        t->set_floats(1, std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
        return t;
    }
    std::unique_ptr<Backend> inner_, ref_, dut_;
};

Twin::Twin(StoredOps& f, Kind kind, size_t n, size_t elem)
    : f_(f), kind_(kind), n_(n), elem_(elem), reserved_(n * elem) {
    const std::vector<uint8_t> fill(reserved_ + 2 * kGuardBytes, kFill);
    for (int i = 0; i < 2; ++i) {
        base_[i] = static_cast<char*>(f.side(i).alloc(fill.size()));
        f.side(i).upload(base_[i], fill.data(), fill.size());
    }
}

Twin::~Twin() {
    for (int i = 0; i < 2; ++i) f_.side(i).release(base_[i]);
}

size_t Twin::used() const { return kind_ == Kind::act ? n_ * storage_bytes(f_.s) : n_ * elem_; }

void Twin::set_floats(int side, const std::vector<float>& v) {
    std::vector<uint8_t> packed(used());
    if (kind_ == Kind::act) pack_storage(packed.data(), v.data(), n_, f_.s);
    else std::memcpy(packed.data(), v.data(), used());
    f_.side(side).upload(p(side), packed.data(), packed.size());
}

void Twin::set_bytes(int side, const void* v) { f_.side(side).upload(p(side), v, used()); }

std::vector<uint8_t> Twin::all(int side, const char* what) const {
    std::vector<uint8_t> a(reserved_ + 2 * kGuardBytes);
    f_.side(side).download(a.data(), base_[side], a.size());
    const char* who = side ? "device" : "reference";
    for (size_t i = 0; i < kGuardBytes; ++i)
        EXPECT_EQ(a[i], kFill) << what << " (" << who << "): guard byte " << i << " before the buffer written";
    for (size_t i = kGuardBytes + used(); i < a.size(); ++i) {
        if (a[i] != kFill) {
            ADD_FAILURE() << what << " (" << who << "): byte " << i - kGuardBytes
                          << " written, but only bytes 0.." << used() - 1 << " hold its " << n_
                          << " " << (kind_ == Kind::act ? storage_name(f_.s) : "") << " values";
            break;
        }
    }
    return a;
}

std::vector<float> Twin::floats(int side, const char* what) const {
    const auto a = all(side, what);
    std::vector<float> v(n_);
    if (kind_ == Kind::act) unpack_storage(v.data(), a.data() + kGuardBytes, n_, f_.s);
    else std::memcpy(v.data(), a.data() + kGuardBytes, n_ * sizeof(float));
    return v;
}

std::vector<uint8_t> Twin::bytes(int side, const char* what) const {
    const auto a = all(side, what);
    return std::vector<uint8_t>(a.begin() + long(kGuardBytes), a.begin() + long(kGuardBytes + used()));
}

// ---- convolution -----------------------------------------------------------------------------

// Forward with and without bias, backward data, backward weights (dw comes back rounded to the
// format, db fp32). The fp32 tolerance of test_backend_ops.cpp (1e-2 of the result's rms plus
// 1e-2 relative: TF32 or a Winograd/FFT algorithm's transforms) plus u; on the CUDA side a conv
// with bias rounds twice (cuDNN's output, then the bias add), the reference once: within that.
void conv_case(StoredOps& f, const ConvShape& s, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "conv N=" << s.N << " H=" << s.H << " C=" << s.C << " K="
                                    << s.K << " R=" << s.R << " pad=" << s.pad << " stride=" << s.stride);
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K;
    const size_t nw = size_t(s.K) * s.R * s.S * s.C;
    auto x = f.act_in(randn(nx, seed));
    auto w = f.f32_in(randn(nw, seed + 1, 1.f / std::sqrt(float(s.C * s.R * s.S))));
    auto bias = f.f32_in(randn(s.K, seed + 2));
    auto dy = f.act_in(randn(ny, seed + 3));
    std::unique_ptr<Conv2d> conv[2] = {f.side(0).make_conv(s), f.side(1).make_conv(s)};
    ASSERT_TRUE(conv[0] && conv[1]);
    const double rt = 1e-2 + 2 * f.u;
    for (bool with_bias : {true, false}) {
        SCOPED_TRACE(with_bias ? "with bias / db" : "without bias / db");
        auto y = f.act_out(ny);
        auto dx = f.act_out(nx);
        auto dw = f.f32_out(nw);
        auto db = f.f32_out(s.K);
        for (int i = 0; i < 2; ++i) {
            conv[i]->forward(y->p(i), x->p(i), w->p(i), with_bias ? bias->p(i) : nullptr);
            conv[i]->backward_data(dx->p(i), dy->p(i), w->p(i));
            conv[i]->backward_weights(dw->p(i), with_bias ? db->p(i) : nullptr, dy->p(i), x->p(i));
        }
        EXPECT_TRUE(f.same(*y, "conv y", 1e-2 * f.rms_of(*y), rt));
        EXPECT_TRUE(f.same(*dx, "conv dx", 1e-2 * f.rms_of(*dx), rt));
        EXPECT_TRUE(f.same(*dw, "conv dw", 1e-2 * f.rms_of(*dw), rt));
        // dw is rounded to the format on both sides: every value must be representable in it
        const auto dwd = dw->floats(1, "dw");
        std::vector<uint16_t> bits(dwd.size());
        std::vector<float> back(dwd.size());
        pack_storage(bits.data(), dwd.data(), dwd.size(), f.s);
        unpack_storage(back.data(), bits.data(), dwd.size(), f.s);
        EXPECT_EQ(0, std::memcmp(back.data(), dwd.data(), dwd.size() * sizeof(float)))
            << "the device's dw is not rounded to " << storage_name(f.s);
        if (with_bias) EXPECT_TRUE(f.same(*db, "conv db", 1e-5 * f.rms_of(*db), 1e-5));
    }
}

TEST_P(StoredOps, Convolution) {
    ConvShape s;
    s.N = 3, s.H = 7, s.W = 7, s.C = 5, s.K = 6, s.R = 3, s.S = 3, s.pad = 1;
    conv_case(*this, s, 100);
    s.N = 8, s.H = 15, s.W = 15, s.C = 64, s.K = 64;  // airbench94's last block
    conv_case(*this, s, 110);
    s.N = 4, s.H = 32, s.W = 32, s.C = 3, s.K = 24, s.R = 2, s.S = 2, s.pad = 0;  // whitening
    conv_case(*this, s, 120);
    s.N = 3, s.H = 9, s.W = 8, s.C = 3, s.K = 16, s.R = 3, s.S = 3, s.pad = 1;  // prep, 3 -> 16
    conv_case(*this, s, 125);
    s.N = 4, s.H = 16, s.W = 16, s.C = 32, s.K = 48, s.R = 3, s.S = 3, s.pad = 1, s.stride = 2;
    conv_case(*this, s, 130);
}

// A forward-only conv in 16-bit storage (on CUDA: the forward's algorithm and plan alone, no
// 16-bit gradient buffer; the few-channel shapes take conv_small and tune nothing) against a
// training conv of the reference, with and without bias; backward calls are refused.
void conv_forward_only_case(StoredOps& f, const ConvShape& s, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "forward-only conv N=" << s.N << " H=" << s.H << " C="
                                    << s.C << " K=" << s.K << " R=" << s.R);
    const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K;
    const size_t nw = size_t(s.K) * s.R * s.S * s.C;
    auto x = f.act_in(randn(nx, seed));
    auto w = f.f32_in(randn(nw, seed + 1, 1.f / std::sqrt(float(s.C * s.R * s.S))));
    auto bias = f.f32_in(randn(s.K, seed + 2));
    ConvShape fo = s;
    fo.forward_only = true;
    std::unique_ptr<Conv2d> conv[2] = {f.side(0).make_conv(s), f.side(1).make_conv(fo)};
    ASSERT_TRUE(conv[0] && conv[1]);
    for (bool with_bias : {true, false}) {
        auto y = f.act_out(ny);
        for (int i = 0; i < 2; ++i)
            conv[i]->forward(y->p(i), x->p(i), w->p(i), with_bias ? bias->p(i) : nullptr);
        EXPECT_TRUE(f.same(*y, with_bias ? "forward-only conv y (bias)" : "forward-only conv y",
                           1e-2 * f.rms_of(*y), 1e-2 + 2 * f.u));
    }
    auto dx = f.act_out(nx);
    auto dy = f.act_in(randn(ny, seed + 3));
    EXPECT_TRUE(test::contains(test::error_of([&] { conv[1]->backward_data(dx->p(1), dy->p(1), w->p(1)); }),
                               "set up forward-only"));
}

TEST_P(StoredOps, ConvolutionForwardOnly) {
    ConvShape s;
    s.N = 8, s.H = 15, s.W = 15, s.C = 64, s.K = 64, s.R = 3, s.S = 3, s.pad = 1;  // cuDNN's
    conv_forward_only_case(*this, s, 140);
    s.N = 4, s.H = 32, s.W = 32, s.C = 3, s.K = 24, s.R = 2, s.S = 2, s.pad = 0;  // whitening
    conv_forward_only_case(*this, s, 150);
    s.N = 3, s.H = 9, s.W = 8, s.C = 3, s.K = 16, s.R = 3, s.S = 3, s.pad = 1;  // prep, 3 -> 16
    conv_forward_only_case(*this, s, 160);
}

// ---- batch norm ------------------------------------------------------------------------------

// Training forward (the statistics are fp32: the fp32 tolerances), eval forward, backward, and
// the fused BN + activation for every activation. Rounded outputs: the fp32 tolerance + u.
void bn_case(StoredOps& f, int M, int C, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "bn M=" << M << " C=" << C);
    const size_t n = size_t(M) * C;
    const float eps = 1e-5f, momentum = 0.4f, alpha = 0.3f;
    auto x = f.act_in(randn(n, seed, 2.f, 1.f));
    auto gamma = f.f32_in(uniform(C, seed + 1, 0.5f, 1.5f));
    auto beta = f.f32_in(randn(C, seed + 2));
    auto rmean = f.f32_in(randn(C, seed + 3));
    auto rvar = f.f32_in(uniform(C, seed + 4, 0.5f, 2.f));
    auto dy = f.act_in(randn(n, seed + 5));
    {
        auto y = f.act_out(n), ye = f.act_out(n), dx = f.act_out(n);
        auto mean = f.f32_out(C), invstd = f.f32_out(C), dgamma = f.f32_out(C), dbeta = f.f32_out(C);
        for (int i = 0; i < 2; ++i) {
            Backend& b = f.side(i);
            b.bn_forward_eval(ye->p(i), x->p(i), rmean->p(i), rvar->p(i), gamma->p(i), beta->p(i), M, C, eps);
            b.bn_forward_train(y->p(i), mean->p(i), invstd->p(i), rmean->p(i), rvar->p(i), x->p(i),
                               gamma->p(i), beta->p(i), M, C, eps, momentum);
            b.bn_backward(dx->p(i), dgamma->p(i), dbeta->p(i), dy->p(i), x->p(i), mean->p(i),
                          invstd->p(i), gamma->p(i), M, C);
        }
        EXPECT_TRUE(f.same(*ye, "bn eval y", 1e-5, 1e-5 + f.u));
        EXPECT_TRUE(f.same(*y, "bn y", 1e-5, 1e-5 + f.u));
        EXPECT_TRUE(f.same(*mean, "bn mean", 3e-6, 1e-6));
        EXPECT_TRUE(f.same(*invstd, "bn invstd", 0, 1e-5));
        EXPECT_TRUE(f.same(*rmean, "bn running_mean", 3e-6, 1e-6));
        EXPECT_TRUE(f.same(*rvar, "bn running_var", 0, 1e-5));
        EXPECT_TRUE(f.same(*dx, "bn dx", 1e-5, 1e-5 + f.u));
        const double sum_tol = 1e-5 * std::sqrt(double(M));
        EXPECT_TRUE(f.same(*dgamma, "bn dgamma", sum_tol, 1e-5));
        EXPECT_TRUE(f.same(*dbeta, "bn dbeta", sum_tol, 1e-5));
    }
    int k = 0;
    for (ActKind act : {ActKind::gelu, ActKind::silu, ActKind::relu, ActKind::celu}) {
        SCOPED_TRACE(testing::Message() << "fused activation " << k++);
        auto z = f.act_out(n), ze = f.act_out(n), dx = f.act_out(n);
        auto mean = f.f32_out(C), invstd = f.f32_out(C), dgamma = f.f32_out(C), dbeta = f.f32_out(C);
        for (int i = 0; i < 2; ++i) {
            Backend& b = f.side(i);
            b.bn_act_forward_eval(ze->p(i), x->p(i), rmean->p(i), rvar->p(i), gamma->p(i),
                                  beta->p(i), M, C, eps, act, alpha);
            b.bn_act_forward_train(z->p(i), mean->p(i), invstd->p(i), rmean->p(i), rvar->p(i),
                                   x->p(i), gamma->p(i), beta->p(i), M, C, eps, momentum, act, alpha);
            b.bn_act_backward(dx->p(i), dgamma->p(i), dbeta->p(i), dy->p(i), x->p(i), mean->p(i),
                              invstd->p(i), gamma->p(i), beta->p(i), M, C, act, alpha);
        }
        EXPECT_TRUE(f.same(*ze, "bn+act eval z", 2e-5, 1e-5 + f.u));
        EXPECT_TRUE(f.same(*z, "bn+act z", 2e-5, 1e-5 + f.u));
        EXPECT_TRUE(f.same(*dx, "bn+act dx", 3e-5, 3e-5 + f.u));
        const double sum_tol = 3e-5 * std::sqrt(double(M));
        EXPECT_TRUE(f.same(*dgamma, "bn+act dgamma", sum_tol, 3e-5));
        EXPECT_TRUE(f.same(*dbeta, "bn+act dbeta", sum_tol, 3e-5));
    }
}

TEST_P(StoredOps, BatchNorm) {
    bn_case(*this, 147, 5, 500);
    bn_case(*this, 32 * 31 * 31, 24, 510);
    bn_case(*this, 1000, 64, 520);  // (8 channels per thread in the reductions, as 24)
    bn_case(*this, 600, 512, 530);
}

// The sync-BN pieces: sums and statistics fp32, y and dx rounded. C = 12 takes the reductions'
// one-channel-per-thread kernels, C = 64 their 8-channels-per-thread ones.
TEST_P(StoredOps, BatchNormSyncPieces) {
    const int M = 1000;
    for (int C : {12, 64}) {
        SCOPED_TRACE(testing::Message() << "C = " << C);
        const size_t n = size_t(M) * C;
        const int64_t count = 2 * int64_t(M);
        const float scale = float(1.0 / double(count));
        auto x = act_in(randn(n, 550, 1.5f, 1.f));
        auto gamma = f32_in(uniform(C, 551, 0.5f, 1.5f));
        auto beta = f32_in(randn(C, 552));
        auto rmean = f32_in(randn(C, 553));
        auto rvar = f32_in(uniform(C, 554, 0.5f, 2.f));
        auto dy = act_in(randn(n, 555));
        auto s1 = f32_out(2 * size_t(C));
        for (int i = 0; i < 2; ++i) side(i).bn_stats(s1->p(i), x->p(i), nullptr, scale, M, C);
        EXPECT_TRUE(same(*s1, "bn_stats sums", 1e-5 * rms_of(*s1), 1e-5));
        auto s1r = f32_in(s1->floats(0, "sums"));  // "all-reduced": the same on both sides
        auto s2 = f32_out(2 * size_t(C));
        for (int i = 0; i < 2; ++i) side(i).bn_stats(s2->p(i), x->p(i), s1r->p(i), scale, M, C);
        EXPECT_TRUE(same(*s2, "bn_stats centred sums", 1e-5 * rms_of(*s2), 1e-5));
        auto s2r = f32_in(s2->floats(0, "sums"));
        auto y = act_out(n), mean = f32_out(C), invstd = f32_out(C);
        for (int i = 0; i < 2; ++i)
            side(i).bn_apply(y->p(i), mean->p(i), invstd->p(i), rmean->p(i), rvar->p(i), x->p(i),
                             gamma->p(i), beta->p(i), s2r->p(i), s1r->p(i), scale, count, M, C,
                             1e-5f, 0.4f);
        EXPECT_TRUE(same(*y, "bn_apply y", 2e-5, 1e-5 + u));
        EXPECT_TRUE(same(*mean, "bn_apply mean", 3e-6, 1e-6));
        EXPECT_TRUE(same(*invstd, "bn_apply invstd", 0, 1e-5));
        auto mean_in = f32_in(mean->floats(0, "mean"));
        auto invstd_in = f32_in(invstd->floats(0, "invstd"));
        auto bs = f32_out(2 * size_t(C)), dgamma = f32_out(C), dbeta = f32_out(C);
        for (int i = 0; i < 2; ++i)
            side(i).bn_backward_reduce(bs->p(i), dgamma->p(i), dbeta->p(i), dy->p(i), x->p(i),
                                       mean_in->p(i), invstd_in->p(i), M, C);
        const double sum_tol = 1e-5 * std::sqrt(double(M));
        EXPECT_TRUE(same(*bs, "bn_backward_reduce sums", sum_tol, 1e-5));
        EXPECT_TRUE(same(*dgamma, "bn_backward_reduce dgamma", sum_tol, 1e-5));
        auto bsr = f32_in(bs->floats(0, "sums"));
        auto dx = act_out(n);
        for (int i = 0; i < 2; ++i)
            side(i).bn_backward_apply(dx->p(i), dy->p(i), x->p(i), mean_in->p(i), invstd_in->p(i),
                                      gamma->p(i), bsr->p(i), count, M, C);
        EXPECT_TRUE(same(*dx, "bn_backward_apply dx", 1e-5, 1e-5 + u));
    }
}

// ---- activations, residual add -----------------------------------------------------------------

// The fp32 tolerances of test_backend_ops.cpp (library erff/expf against the CPU's polynomials)
// plus u; ReLU selects (exact).
TEST_P(StoredOps, Activations) {
    auto xs = randn(1001, 800, 3.f);
    for (float v : {0.f, -0.f, 1e-8f, -1e-8f, 8.f, -8.f, -30.f, 30.f}) xs.push_back(v);
    for (float v : {0.5f, -0.5f, 2.f, -2.f, 4.f, -4.f, 0.25f}) xs.push_back(v);  // n = 1016: 8-wide
    const size_t n = xs.size();
    auto x = act_in(xs);
    auto dy = act_in(randn(n, 801));
    struct A { ActKind k; float alpha; const char* name; };
    for (A a : {A{ActKind::gelu, 0, "gelu"}, A{ActKind::silu, 0, "silu"}, A{ActKind::relu, 0, "relu"},
                A{ActKind::celu, 0.3f, "celu"}}) {
        SCOPED_TRACE(a.name);
        auto y = act_out(n), dx = act_out(n);
        for (int i = 0; i < 2; ++i) {
            Backend& b = side(i);
            switch (a.k) {
                case ActKind::gelu: b.gelu_forward(y->p(i), x->p(i), n); b.gelu_backward(dx->p(i), dy->p(i), x->p(i), n); break;
                case ActKind::silu: b.silu_forward(y->p(i), x->p(i), n); b.silu_backward(dx->p(i), dy->p(i), x->p(i), n); break;
                case ActKind::relu: b.relu_forward(y->p(i), x->p(i), n); b.relu_backward(dx->p(i), dy->p(i), x->p(i), n); break;
                case ActKind::celu: b.celu_forward(y->p(i), x->p(i), n, a.alpha); b.celu_backward(dx->p(i), dy->p(i), x->p(i), n, a.alpha); break;
            }
        }
        const bool exact = a.k == ActKind::relu;
        EXPECT_TRUE(same(*y, "y", exact ? 0 : 2e-6, exact ? 0 : 1e-5 + u));
        EXPECT_TRUE(same(*dx, "dx", exact ? 0 : 2e-6, exact ? 0 : 1e-5 + u));
    }
}

TEST_P(StoredOps, ResidualAdd) {
    for (const size_t n : {size_t(100003), size_t(100000)}) {  // (100000: 8 values per thread)
        SCOPED_TRACE(testing::Message() << "n=" << n);
        auto y = act_in(randn(n, 850));
        auto x = act_in(randn(n, 851, 0.01f));
        const auto a = y->floats(0, "y"), b = x->floats(0, "x");  // the stored (rounded) operands
        for (int i = 0; i < 2; ++i) side(i).residual_add(y->p(i), x->p(i), n);
        EXPECT_TRUE(same(*y, "residual_add", 0, 0));
        // the fp32 sum of the stored operands, rounded once to the format: computed here
        std::vector<float> sum(n), want(n);
        for (size_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
        std::vector<uint16_t> bits(n);
        pack_storage(bits.data(), sum.data(), n, s);
        unpack_storage(want.data(), bits.data(), n, s);
        const auto got = y->floats(1, "y");
        EXPECT_TRUE(close(got, want, 0, 0)) << "residual_add is not round(y + x)";
        size_t rounded = 0;  // (the check sees rounding: most fp32 sums are not in the format)
        for (size_t i = 0; i < n; ++i) rounded += want[i] != sum[i];
        EXPECT_GT(rounded, n / 2);
    }
}

// ---- pooling, linear ---------------------------------------------------------------------------

// Pooling selects (inputs on a 0.5 grid: ties, exact in both formats): exact, except the mean
// half of concat_pool (an fp32 sum, rounded).
TEST_P(StoredOps, Pooling) {
    for (int k : {2, 3})
    for (int C : {5, 16}) {  // 16: the CUDA kernels' 8-channel path
        const int N = 3, H = 7, W = 7;
        auto xs = randn(size_t(N) * H * W * C, 900 + k);
        for (auto& v : xs) v = std::round(v * 2.f) / 2.f;
        const size_t ny = size_t(N) * (H / k) * (W / k) * C;
        auto x = act_in(xs);
        auto dy = act_in(randn(ny, 910 + k));
        auto y = act_out(ny), dx = act_out(xs.size());
        auto arg = bytes_out(ny);
        for (int i = 0; i < 2; ++i) {
            side(i).maxpool_forward(y->p(i), arg->as<uint8_t>(i), x->p(i), N, H, W, C, k);
            side(i).maxpool_backward(dx->p(i), dy->p(i), arg->as<uint8_t>(i), N, H, W, C, k);
        }
        EXPECT_TRUE(same(*y, "maxpool y", 0, 0)) << "k=" << k << " C=" << C;
        EXPECT_TRUE(same_bytes(*arg, "maxpool arg")) << "k=" << k << " C=" << C;
        EXPECT_TRUE(same(*dx, "maxpool dx", 0, 0)) << "k=" << k << " C=" << C;
    }
    {  // max pooling fused with the BN + activation after it: p, arg exact; the rest as bn_case
        const int N = 4, H = 15, W = 15, C = 16, k = 2, M = N * (H / k) * (W / k);
        const size_t np = size_t(M) * C;
        auto xs = randn(size_t(N) * H * W * C, 950, 2.f, 1.f);
        for (auto& v : xs) v = std::round(v * 2.f) / 2.f;
        auto x = act_in(xs);
        auto gamma = f32_in(uniform(C, 951, 0.5f, 1.5f));
        auto beta = f32_in(randn(C, 952));
        auto rmean = f32_in(randn(C, 953));
        auto rvar = f32_in(uniform(C, 954, 0.5f, 2.f));
        auto dz = act_in(randn(np, 955));
        auto z = act_out(np), p = act_out(np), dp = act_out(np), dx = act_out(xs.size());
        auto arg = bytes_out(np);
        auto mean = f32_out(C), invstd = f32_out(C), dgamma = f32_out(C), dbeta = f32_out(C);
        for (int i = 0; i < 2; ++i) {
            side(i).pool_bn_act_forward_train(z->p(i), p->p(i), arg->as<uint8_t>(i), mean->p(i),
                                              invstd->p(i), rmean->p(i), rvar->p(i), x->p(i),
                                              gamma->p(i), beta->p(i), N, H, W, C, k, 1e-5f, 0.4f,
                                              ActKind::gelu, 0.f);
            side(i).bn_act_pool_backward(dx->p(i), dgamma->p(i), dbeta->p(i), dp->p(i), dz->p(i),
                                         p->p(i), arg->as<uint8_t>(i), mean->p(i), invstd->p(i),
                                         gamma->p(i), beta->p(i), N, H, W, C, k, ActKind::gelu,
                                         0.f);
        }
        EXPECT_TRUE(same(*p, "pool+bn p", 0, 0));
        EXPECT_TRUE(same_bytes(*arg, "pool+bn arg"));
        EXPECT_TRUE(same(*z, "pool+bn+act z", 2e-5, 1e-5 + u));
        EXPECT_TRUE(same(*mean, "pool+bn mean", 3e-6, 1e-6));
        EXPECT_TRUE(same(*rvar, "pool+bn running_var", 0, 1e-5));
        EXPECT_TRUE(same(*dx, "pool+bn+act dx", 3e-5, 3e-5 + u));
        const double sum_tol = 3e-5 * std::sqrt(double(M));
        EXPECT_TRUE(same(*dgamma, "pool+bn dgamma", sum_tol, 3e-5));
        EXPECT_TRUE(same(*dbeta, "pool+bn dbeta", sum_tol, 3e-5));
    }
    const int N = 16, HW = 16, C = 64;
    auto xs = randn(size_t(N) * HW * C, 940);
    for (auto& v : xs) v = std::round(v * 2.f) / 2.f;
    auto x = act_in(xs);
    auto dy = act_in(randn(size_t(N) * 2 * C, 941));
    auto y = act_out(size_t(N) * 2 * C), dx = act_out(xs.size());
    auto arg = bytes_out(size_t(N) * C);
    for (int i = 0; i < 2; ++i) {
        side(i).concat_pool_forward(y->p(i), arg->as<uint8_t>(i), x->p(i), N, HW, C);
        side(i).concat_pool_backward(dx->p(i), dy->p(i), arg->as<uint8_t>(i), N, HW, C);
    }
    EXPECT_TRUE(same(*y, "concat_pool y", 1e-6, 1e-6 + u));
    EXPECT_TRUE(same_bytes(*arg, "concat_pool arg"));
    EXPECT_TRUE(same(*dx, "concat_pool dx", 1e-6, 1e-6 + u));
}

// x and dx are activations, w, dw and y fp32; the product is fp32 on both sides (1e-5 of the
// rms, as in fp32), dx rounded (+ u).
TEST_P(StoredOps, Linear) {
    const int N = 256, I = 128, O = 10;
    const float scale = 0.125f;
    auto x = act_in(randn(size_t(N) * I, 1000));
    auto w = f32_in(randn(size_t(O) * I, 1001));
    auto dy = f32_in(randn(size_t(N) * O, 1002));
    auto y = f32_out(size_t(N) * O), dw = f32_out(size_t(O) * I);
    auto dx = act_out(size_t(N) * I);
    for (int i = 0; i < 2; ++i) {
        side(i).linear_forward(y->p(i), x->p(i), w->p(i), N, I, O, scale);
        side(i).linear_backward(dx->p(i), dw->p(i), dy->p(i), x->p(i), w->p(i), N, I, O, scale);
    }
    EXPECT_TRUE(same(*y, "linear y", 1e-5 * rms_of(*y), 1e-5));
    EXPECT_TRUE(same(*dw, "linear dw", 1e-5 * rms_of(*dw), 1e-5));
    EXPECT_TRUE(same(*dx, "linear dx", 1e-5 * rms_of(*dx), 1e-5 + u));
}

// ---- data ops ------------------------------------------------------------------------------------

TEST_P(StoredOps, DataOps) {
    const int N = 6, H = 7, W = 7, pad = 2, B = 5;
    Rng r(1500);
    std::vector<uint8_t> img(size_t(N) * H * W * 3);
    for (auto& v : img) v = uint8_t(r.below(256));
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, stdv[3] = {0.2470f, 0.2435f, 0.2616f};
    auto raw = ints_in(img);
    const size_t npad = size_t(N) * (H + 2 * pad) * (W + 2 * pad) * 3;
    auto padded = act_out(npad);
    for (int i = 0; i < 2; ++i)
        side(i).normalize_pad(padded->p(i), raw->as<uint8_t>(i), N, H, W, mean, stdv, pad);
    EXPECT_TRUE(same(*padded, "normalize_pad", 1e-6, 1e-6 + u));
    auto src = act_in(padded->floats(0, "padded"));  // the same images on both sides from here

    std::vector<int32_t> idx(B);
    std::vector<int8_t> shifts(2 * size_t(B));
    std::vector<uint8_t> flips(B);
    for (auto& v : idx) v = int32_t(r.below(N));
    for (auto& v : shifts) v = int8_t(int(r.below(2 * pad + 1)) - pad);
    for (auto& v : flips) v = uint8_t(r.below(2));
    shifts[0] = -pad, shifts[1] = pad, flips[0] = 1;
    auto idx_t = ints_in(idx);
    auto sh_t = ints_in(shifts);
    auto fl_t = ints_in(flips);
    const size_t nb = size_t(B) * H * W * 3;
    auto crops = act_out(nb);
    for (int i = 0; i < 2; ++i)
        side(i).gather_crops(crops->p(i), src->p(i), H, W, pad, B, idx_t->as<int32_t>(i), 0,
                             sh_t->as<int8_t>(i), 0, 0, fl_t->as<uint8_t>(i), 0);
    EXPECT_TRUE(same(*crops, "gather_crops (arrays)", 0, 0));
    auto crops2 = act_out(size_t(4) * H * W * 3);
    for (int i = 0; i < 2; ++i)
        side(i).gather_crops(crops2->p(i), src->p(i), H, W, pad, 4, nullptr, 1, nullptr, -2, 1, nullptr, 1);
    EXPECT_TRUE(same(*crops2, "gather_crops (scalars)", 0, 0));

    auto shift = f32_in(uniform(B, 1510, -0.14f, 0.14f));
    auto gain = f32_in(uniform(B, 1511, 0.87f, 1.13f));
    for (int i = 0; i < 2; ++i)
        side(i).brightness_contrast(crops->p(i), shift->p(i), gain->p(i), B, size_t(H) * W * 3);
    EXPECT_TRUE(same(*crops, "brightness_contrast", 1e-6, 1e-6 + u));

    std::vector<uint8_t> pos(2 * size_t(B));
    for (int b = 0; b < B; ++b) pos[2 * size_t(b)] = uint8_t(b), pos[2 * size_t(b) + 1] = uint8_t(6 - b);
    auto pos_t = ints_in(pos);
    auto a = act_in(crops->floats(0, "crops"));
    auto c = act_in(randn(nb, 1520));
    for (int i = 0; i < 2; ++i) {
        side(i).cutout(a->p(i), pos_t->as<uint8_t>(i), B, H, W, 3, 3);
        side(i).cutmix(c->p(i), a->p(i), pos_t->as<uint8_t>(i), B, H, W, 3, 4);
    }
    EXPECT_TRUE(same(*a, "cutout", 0, 0));
    EXPECT_TRUE(same(*c, "cutmix", 0, 0));

    // whitening statistics of the stored images: host doubles, fp32 partial sums on the CPU
    const int k = 2;
    const size_t D = size_t(3) * k * k;
    std::vector<double> cov[2], mu[2];
    for (int i = 0; i < 2; ++i) {
        cov[i].assign(D * D, 0), mu[i].assign(D, 0);
        side(i).patch_covariance(cov[i].data(), mu[i].data(), src->p(i), N, H + 2 * pad, W + 2 * pad, 3, k);
    }
    double mx = 0;
    for (double v : cov[0]) mx = std::max(mx, std::abs(v));
    for (size_t j = 0; j < D * D; ++j) EXPECT_NEAR(cov[1][j], cov[0][j], 1e-6 * mx + 1e-5 * std::abs(cov[0][j])) << j;
    for (size_t j = 0; j < D; ++j) EXPECT_NEAR(mu[1][j], mu[0][j], 1e-6 + 1e-5 * std::abs(mu[0][j])) << j;
}

INSTANTIATE_TEST_SUITE_P(Storage, StoredOps,
                         ::testing::Values(Dut{DutKind::cuda, Storage::f16},
                                           Dut{DutKind::cuda, Storage::bf16},
                                           Dut{DutKind::emu, Storage::f16},
                                           Dut{DutKind::emu, Storage::bf16},
                                           Dut{DutKind::cpu1, Storage::f16},
                                           Dut{DutKind::cpu1, Storage::bf16}),
                         dut_name);

}  // namespace
}  // namespace sr
