// test_cpu_ops.cpp: every CPU op against an independent reference: finite differences for the
// gradients (central, in double around float ops), plain loops for the oneDNN convolution, and
// closed forms for the data ops. Shapes are small and awkward (odd sides, C not a multiple of 8).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <tuple>

#include <omp.h>

#include <fmt/format.h>

#include "ops/backend.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/cpu_ops.h"
#include "test_util.h"

namespace sr {
namespace {
using test::all_close;
using test::randn;

// Central-difference gradient of L(x) = sum_i r_i f(x)_i for a float function f, at `probes`
// indices of x (all if probes >= x.size()).
std::vector<std::pair<size_t, double>> fd_grad(std::vector<float> x, const std::vector<float>& r,
                                               const std::function<std::vector<float>(const std::vector<float>&)>& f,
                                               double eps, size_t probes, uint64_t seed) {
    std::vector<size_t> idx(x.size());
    std::iota(idx.begin(), idx.end(), 0);
    if (probes < x.size()) {
        Rng rng(seed);
        for (size_t i = 0; i < probes; ++i) std::swap(idx[i], idx[i + rng.below(uint32_t(x.size() - i))]);
        idx.resize(probes);
    }
    auto L = [&](const std::vector<float>& xx) {
        const auto y = f(xx);
        double s = 0;
        for (size_t i = 0; i < y.size(); ++i) s += double(r[i]) * y[i];
        return s;
    };
    std::vector<std::pair<size_t, double>> out;
    for (size_t i : idx) {
        const float x0 = x[i];
        x[i] = x0 + float(eps);
        const double lp = L(x);
        x[i] = x0 - float(eps);
        const double lm = L(x);
        x[i] = x0;
        out.push_back({i, (lp - lm) / (2 * eps)});
    }
    return out;
}

::testing::AssertionResult grad_matches(const std::vector<std::pair<size_t, double>>& fd,
                                        const std::vector<float>& analytic, double atol, double rtol) {
    for (auto [i, g] : fd) {
        if (std::abs(g - analytic[i]) > atol + rtol * std::abs(g))
            return ::testing::AssertionFailure() << "index " << i << ": analytic " << analytic[i]
                                                 << " vs finite difference " << g;
    }
    return ::testing::AssertionSuccess();
}

// ---- convolution: oneDNN against plain loops, plain loops against finite differences -------

struct ConvCase { ConvShape s; const char* what; };
const ConvCase kConvCases[] = {
    {{3, 7, 7, 5, 6, 3, 3, 1}, "3x3 pad 1, odd side, C=5 K=6"},
    {{2, 9, 9, 3, 24, 2, 2, 0}, "2x2 valid (whitening shape)"},
    {{2, 5, 5, 17, 9, 3, 3, 1}, "3x3, C=17 (vector tail)"},
    {{4, 15, 15, 64, 64, 3, 3, 1}, "real shape: block1 conv2 at N=4"},
    {{2, 8, 8, 5, 7, 3, 3, 1, 2}, "3x3 pad 1 stride 2 (DAWN_net downsampling), even side"},
    {{2, 9, 9, 4, 6, 3, 3, 1, 2}, "3x3 pad 1 stride 2, odd side (last row/column unread)"},
    {{3, 8, 8, 6, 10, 1, 1, 0, 2}, "1x1 stride 2 (DAWN_net projection shortcut)"},
    {{2, 8, 8, 16, 32, 3, 3, 1}, "3x3 pad 1, 16 -> 32 (channels Winograd can block)"},
    {{3, 3, 3, 32, 16, 3, 3, 1}, "3x3 pad 1 at 3x3 (airbench's last conv side), 32 -> 16"},
};

// The "fastest" choices' rule (cpu::choose_by_timing) on scripted timings: the fixed rule's path
// unless the other beats it by more than the margin twice (the second time with the best of two).
TEST(ConvChoice, LeansTowardsTheFixedRule) {
    auto script = [](std::vector<double> v) {
        return [v = std::move(v), i = size_t(0)]() mutable { return v.at(i++); };
    };
    // within the margin (5% faster): the rule, timed once
    auto c = cpu::choose_by_timing(script({1.00}), script({0.95}));
    EXPECT_FALSE(c.other);
    EXPECT_EQ(c.rounds, 1);
    // clearly faster both times: the other path, with the best timing of each
    c = cpu::choose_by_timing(script({1.00, 0.98}), script({0.70, 0.72}));
    EXPECT_TRUE(c.other);
    EXPECT_EQ(c.rounds, 2);
    EXPECT_DOUBLE_EQ(c.t_rule, 0.98);
    EXPECT_DOUBLE_EQ(c.t_other, 0.70);
    // one slow call of the rule's path (459 against 260 ms, as seen for the 24->64 conv): the
    // second round takes the best of two and keeps the rule
    c = cpu::choose_by_timing(script({0.459, 0.262}), script({0.324, 0.279}));
    EXPECT_FALSE(c.other);
    EXPECT_EQ(c.rounds, 2);
    EXPECT_DOUBLE_EQ(c.t_rule, 0.262);
    // the margin is a parameter: 0 picks any faster path
    EXPECT_TRUE(cpu::choose_by_timing(script({1.00, 1.00}), script({0.95, 0.95}), 0.0).other);
}

// Every path: the data gradient as oneDNN's backward-data primitive and as a forward conv with
// transposed, flipped weights (cpu::ConvDataGrad; where the shape allows it), direct and
// Winograd convolution (cpu::ConvAlgorithm; where oneDNN has Winograd), and as timed.
struct ConvPath {
    cpu::ConvDataGrad data_grad;
    cpu::ConvAlgorithm algorithm;
    const char* name;
};
void PrintTo(const ConvPath& p, std::ostream* os) { *os << p.name; }

class ConvOneDnn : public ::testing::TestWithParam<ConvPath> {
protected:
    void TearDown() override {
        cpu::set_conv_data_grad(cpu::ConvDataGrad::fastest);
        cpu::set_conv_algorithm(cpu::ConvAlgorithm::fastest);
    }
};

TEST_P(ConvOneDnn, MatchesNaive) {
    auto b = make_cpu_backend(2);
    cpu::set_conv_data_grad(GetParam().data_grad);
    cpu::set_conv_algorithm(GetParam().algorithm);
    int transposed = 0, winograd = 0;
    for (const auto& c : kConvCases) {
        SCOPED_TRACE(c.what);
        const ConvShape& s = c.s;
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K,
                     nw = size_t(s.K) * s.R * s.S * s.C;
        auto x = randn(nx, 1), w = randn(nw, 2, 0.3f), bias = randn(s.K, 3), dy = randn(ny, 4);
        auto conv = b->make_conv(s);
        transposed += dynamic_cast<cpu::CpuConv2d&>(*conv).data_grad_transposed();
        winograd += dynamic_cast<cpu::CpuConv2d&>(*conv).winograd();
        std::vector<float> y(ny, 7.f), y_ref(ny, -7.f), dx(nx, 7.f), dx_ref(nx, -7.f), dw(nw, 7.f),
            dw_ref(nw, -7.f), db(s.K, 7.f), db_ref(s.K, -7.f);
        conv->forward(y.data(), x.data(), w.data(), bias.data());
        cpu::conv2d_forward_naive(y_ref.data(), x.data(), w.data(), bias.data(), s);
        // tolerance: fp32 sums of up to C*R*S = 576 products; oneDNN reorders the sum
        EXPECT_TRUE(all_close(y, y_ref, 1e-4, 1e-4));
        {  // an evaluation workspace's conv (forward only, its path chosen by forward time under
           // "fastest"): the same forward; a forced mode applies to it too
            ConvShape sf = s;
            sf.forward_only = true;
            auto fconv = b->make_conv(sf);
            if (GetParam().algorithm != cpu::ConvAlgorithm::fastest)
                EXPECT_EQ(dynamic_cast<cpu::CpuConv2d&>(*fconv).winograd(),
                          dynamic_cast<cpu::CpuConv2d&>(*conv).winograd());
            std::vector<float> yf(ny, 7.f);
            fconv->forward(yf.data(), x.data(), w.data(), bias.data());
            EXPECT_TRUE(all_close(yf, y_ref, 1e-4, 1e-4));
        }
        conv->forward(y.data(), x.data(), w.data(), nullptr);
        cpu::conv2d_forward_naive(y_ref.data(), x.data(), w.data(), nullptr, s);
        EXPECT_TRUE(all_close(y, y_ref, 1e-4, 1e-4));
        conv->backward_data(dx.data(), dy.data(), w.data());
        cpu::conv2d_backward_data_naive(dx_ref.data(), dy.data(), w.data(), s);
        EXPECT_TRUE(all_close(dx, dx_ref, 1e-4, 1e-4));
        conv->backward_weights(dw.data(), db.data(), dy.data(), x.data());
        cpu::conv2d_backward_weights_naive(dw_ref.data(), db_ref.data(), dy.data(), x.data(), s);
        // weight gradients sum over N*P*Q up to 900 terms
        EXPECT_TRUE(all_close(dw, dw_ref, 1e-3, 1e-4));
        EXPECT_TRUE(all_close(db, db_ref, 1e-3, 1e-4));
        std::fill(dw.begin(), dw.end(), 7.f);
        conv->backward_weights(dw.data(), nullptr, dy.data(), x.data());
        EXPECT_TRUE(all_close(dw, dw_ref, 1e-3, 1e-4));
        // both gradients in one call (Winograd: dy reordered once) are those of the two calls,
        // bit for bit; without dx only the weights' are written
        conv->backward_weights(dw.data(), db.data(), dy.data(), x.data());
        conv->backward_data(dx.data(), dy.data(), w.data());
        std::vector<float> dx2(nx, 5.f), dw2(nw, 5.f), db2(s.K, 5.f);
        conv->backward(dx2.data(), dw2.data(), db2.data(), dy.data(), x.data(), w.data());
        EXPECT_EQ(dx2, dx);
        EXPECT_EQ(dw2, dw);
        EXPECT_EQ(db2, db);
        std::fill(dw2.begin(), dw2.end(), 5.f);
        conv->backward(nullptr, dw2.data(), nullptr, dy.data(), x.data(), w.data());
        EXPECT_TRUE(all_close(dw2, dw_ref, 1e-3, 1e-4));
        // dw_ready comes when dw is final and before dx is written (a data-parallel run starts
        // reducing dw there)
        std::fill(dx2.begin(), dx2.end(), 5.f);
        std::fill(dw2.begin(), dw2.end(), 5.f);
        std::vector<float> dw_at_ready;
        bool dx_unwritten = false;
        conv->backward(dx2.data(), dw2.data(), nullptr, dy.data(), x.data(), w.data(), [&] {
            dw_at_ready = dw2;
            dx_unwritten = std::all_of(dx2.begin(), dx2.end(), [](float v) { return v == 5.f; });
        });
        EXPECT_EQ(dw_at_ready, dw2);
        EXPECT_TRUE(dx_unwritten);
        EXPECT_EQ(dx2, dx);
    }
    // the forced modes take the path they name wherever it applies (not to strided convs;
    // Winograd only where oneDNN has it: the 3x3 same-padded cases with channels it blocks)
    if (GetParam().algorithm == cpu::ConvAlgorithm::direct) EXPECT_EQ(winograd, 0);
    if (GetParam().algorithm == cpu::ConvAlgorithm::winograd) {
        EXPECT_EQ(transposed, 0);
        if (cpu::winograd_available())
            EXPECT_GE(winograd, 3);
        else
            std::printf("[   INFO   ] oneDNN has no Winograd kernel on this CPU (no AVX-512, or "
                        "ONEDNN_MAX_CPU_ISA below it): direct only\n");
    }
    if (GetParam().data_grad == cpu::ConvDataGrad::library) EXPECT_EQ(transposed, 0);
    if (GetParam().data_grad == cpu::ConvDataGrad::transposed &&
        GetParam().algorithm == cpu::ConvAlgorithm::direct)
        EXPECT_GE(transposed, 5);
}

// One backend's convs share its ConvWorkspace (the Winograd buffers and oneDNN's scratchpad),
// grown as convs are made: every conv is made first here, the largest (a scratchpad over 4 MiB,
// so in huge-page memory) in the middle, and then they run in reverse order, so the ones made
// before the buffers last grew must find them where they are now, big enough.
TEST_P(ConvOneDnn, ConvsMadeTogetherShareTheWorkspace) {
    auto b = make_cpu_backend(2);
    cpu::set_conv_data_grad(GetParam().data_grad);
    cpu::set_conv_algorithm(GetParam().algorithm);
    std::vector<ConvShape> shapes;
    for (const auto& c : kConvCases) shapes.push_back(c.s);
    shapes.insert(shapes.begin() + 4, ConvShape{4, 32, 32, 64, 64, 3, 3, 1});
    std::vector<std::unique_ptr<Conv2d>> convs;
    for (const ConvShape& s : shapes) convs.push_back(b->make_conv(s));
    for (size_t i = shapes.size(); i-- > 0;) {
        const ConvShape& s = shapes[i];
        SCOPED_TRACE(testing::Message() << "conv " << i << ": N" << s.N << " " << s.H << "x" << s.W << " "
                                        << s.C << "->" << s.K << " k" << s.R << " stride " << s.stride);
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K,
                     nw = size_t(s.K) * s.R * s.S * s.C;
        auto x = randn(nx, 31 + i), w = randn(nw, 32 + i, 0.3f), bias = randn(s.K, 33 + i), dy = randn(ny, 34 + i);
        std::vector<float> y(ny, 7.f), y_ref(ny), dx(nx, 7.f), dx_ref(nx), dw(nw, 7.f), dw_ref(nw),
            db(s.K, 7.f), db_ref(s.K);
        convs[i]->forward(y.data(), x.data(), w.data(), bias.data());
        cpu::conv2d_forward_naive(y_ref.data(), x.data(), w.data(), bias.data(), s);
        EXPECT_TRUE(all_close(y, y_ref, 1e-4, 1e-4));
        convs[i]->backward_data(dx.data(), dy.data(), w.data());
        cpu::conv2d_backward_data_naive(dx_ref.data(), dy.data(), w.data(), s);
        EXPECT_TRUE(all_close(dx, dx_ref, 1e-4, 1e-4));
        convs[i]->backward_weights(dw.data(), db.data(), dy.data(), x.data());
        cpu::conv2d_backward_weights_naive(dw_ref.data(), db_ref.data(), dy.data(), x.data(), s);
        // the large case sums 4,096 terms per weight
        EXPECT_TRUE(all_close(dw, dw_ref, 2e-3, 1e-4));
        EXPECT_TRUE(all_close(db, db_ref, 2e-3, 1e-4));
    }
}

// A strided 1x1 conv with fewer input channels than oneDNN's channel block: oneDNN 2.6.3's
// jit_1x1 weight gradient overlaps its threads' copies of x there (with ONEDNN_MAX_CPU_ISA=AVX2,
// at the first shape below, dw came out wrong in 49 of 50 calls on 2 threads, and one thread
// wrote 956 floats past the scratchpad), so such convs take the plain loops (conv.cpp,
// library_strided_1x1_dw_unsafe). Here: which convs take the loops (those where oneDNN picked
// jit_1x1; from 16 channels, or without a stride, oneDNN's kernel runs), and that 20 calls in a
// row give the reference's gradients. Where the loops run, that comparison shows the routing only
// where the library would have failed: ctest runs this test also as `cpu_convs_avx2`, with oneDNN
// held to AVX2 (with the loops switched off it failed there in 16 of 20 calls).
TEST(CpuOps, StridedOneByOneWeightGradientWithFewChannelsIsRight) {
    auto b = make_cpu_backend(2);
    int plain = 0, library_jit_1x1 = 0;
    for (const ConvShape& s : {ConvShape{32, 32, 32, 4, 8, 1, 1, 0, 2}, ConvShape{8, 16, 16, 3, 16, 1, 1, 0, 2},
                               ConvShape{8, 16, 16, 15, 16, 1, 1, 0, 2}, ConvShape{8, 16, 16, 16, 32, 1, 1, 0, 2},
                               ConvShape{8, 16, 16, 4, 8, 1, 1, 0, 1}}) {
        auto conv = b->make_conv(s);
        const auto& cc = dynamic_cast<cpu::CpuConv2d&>(*conv);
        const std::string impl = cc.library_weight_grad_impl();
        SCOPED_TRACE(fmt::format("N{} {}x{} {}->{} 1x1 stride {}, oneDNN's dw: {}", s.N, s.H, s.W, s.C, s.K,
                                 s.stride, impl));
        const bool jit_1x1 = impl.rfind("jit_1x1", 0) == 0;
        EXPECT_EQ(cc.plain_loop_weight_grad(), jit_1x1 && s.stride > 1 && s.C < 16);
        plain += cc.plain_loop_weight_grad();
        library_jit_1x1 += jit_1x1 && !cc.plain_loop_weight_grad();
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K,
                     nw = size_t(s.K) * s.C;
        const auto x = randn(nx, 41), dy = randn(ny, 42), w = randn(nw, 43, 0.3f);
        std::vector<float> dw_ref(nw), db_ref(s.K), dx_ref(nx);
        cpu::conv2d_backward_weights_naive(dw_ref.data(), db_ref.data(), dy.data(), x.data(), s);
        cpu::conv2d_backward_data_naive(dx_ref.data(), dy.data(), w.data(), s);
        int wrong = 0;
        for (int call = 0; call < 20; ++call) {
            std::vector<float> dw(nw, 7.f), db(s.K, 7.f), dx(nx, 7.f);
            // with and without the bias gradient, alone and with dx
            const bool with_db = call % 4 < 2, with_dx = call % 2;
            if (with_dx)
                conv->backward(dx.data(), dw.data(), with_db ? db.data() : nullptr, dy.data(), x.data(), w.data());
            else
                conv->backward_weights(dw.data(), with_db ? db.data() : nullptr, dy.data(), x.data());
            // sums of up to 8,192 products
            wrong += !all_close(dw, dw_ref, 2e-3, 1e-4) || (with_db && !all_close(db, db_ref, 2e-3, 1e-4)) ||
                     (with_dx && !all_close(dx, dx_ref, 1e-4, 1e-4));
        }
        EXPECT_EQ(wrong, 0) << "calls of 20 with a wrong dw, db or dx";
    }
    // x86-64 with AVX2 or AVX-512: oneDNN's jit_1x1 is the kernel at every shape above, so three
    // take the loops and two oneDNN's kernel (on an older CPU, the gemm-based one everywhere)
    if (__builtin_cpu_supports("avx2")) {
        EXPECT_EQ(plain, 3);
        EXPECT_EQ(library_jit_1x1, 2);
    }
}

INSTANTIATE_TEST_SUITE_P(
    CpuOps, ConvOneDnn,
    ::testing::Values(ConvPath{cpu::ConvDataGrad::fastest, cpu::ConvAlgorithm::fastest, "Fastest"},
                      ConvPath{cpu::ConvDataGrad::library, cpu::ConvAlgorithm::direct, "Library"},
                      ConvPath{cpu::ConvDataGrad::transposed, cpu::ConvAlgorithm::direct, "Transposed"},
                      ConvPath{cpu::ConvDataGrad::library, cpu::ConvAlgorithm::winograd, "Winograd"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(CpuOps, ConvNaiveGradientsMatchFiniteDifferences) {
    for (const ConvShape s : {ConvShape{2, 5, 5, 3, 4, 3, 3, 1}, ConvShape{2, 7, 7, 3, 4, 3, 3, 1, 2},
                              ConvShape{2, 6, 6, 3, 4, 1, 1, 0, 2}}) {
        SCOPED_TRACE(testing::Message() << "stride " << s.stride << " kernel " << s.R);
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K,
                     nw = size_t(s.K) * s.R * s.S * s.C;
        auto x = randn(nx, 11), w = randn(nw, 12, 0.5f), bias = randn(s.K, 13), r = randn(ny, 14);
        std::vector<float> dx(nx), dw(nw), db(s.K);
        cpu::conv2d_backward_data_naive(dx.data(), r.data(), w.data(), s);
        cpu::conv2d_backward_weights_naive(dw.data(), db.data(), r.data(), x.data(), s);
        auto fx = [&](const std::vector<float>& xx) {
            std::vector<float> y(ny);
            cpu::conv2d_forward_naive(y.data(), xx.data(), w.data(), bias.data(), s);
            return y;
        };
        auto fw = [&](const std::vector<float>& ww) {
            std::vector<float> y(ny);
            cpu::conv2d_forward_naive(y.data(), x.data(), ww.data(), bias.data(), s);
            return y;
        };
        auto fb = [&](const std::vector<float>& bb) {
            std::vector<float> y(ny);
            cpu::conv2d_forward_naive(y.data(), x.data(), w.data(), bb.data(), s);
            return y;
        };
        // linear in each argument: FD error is float rounding of y only (eps 1e-2)
        EXPECT_TRUE(grad_matches(fd_grad(x, r, fx, 1e-2, 60, 1), dx, 2e-3, 2e-3));
        EXPECT_TRUE(grad_matches(fd_grad(w, r, fw, 1e-2, 60, 2), dw, 2e-3, 2e-3));
        EXPECT_TRUE(grad_matches(fd_grad(bias, r, fb, 1e-2, 99, 3), db, 2e-3, 2e-3));
    }
}

// The bias gradient's sums (the reference's, and CpuConv2d's bias-only backward): the one-pass
// blocked form (few channels, many rows) and the per-channel loop both equal a plain serial sum
// in double, for 1 and 2 threads alike.
TEST(CpuOps, ConvBiasGradientSumsEveryRow) {
    struct Case { size_t rows; int K; };
    const int threads_before = omp_get_max_threads();
    for (const Case c : {Case{5003, 24}, Case{2048, 64}, Case{2047, 3}, Case{4096, 65}, Case{7, 5}}) {
        SCOPED_TRACE(testing::Message() << c.rows << " rows, K " << c.K);
        const auto dy = randn(c.rows * c.K, 41);
        std::vector<float> want(c.K);
        for (int k = 0; k < c.K; ++k) {
            double acc = 0.0;
            for (size_t i = 0; i < c.rows; ++i) acc += dy[i * c.K + k];
            want[k] = float(acc);
        }
        for (int threads : {1, 2}) {
            omp_set_num_threads(threads);
            std::vector<float> db(c.K, 7.f);
            cpu::conv2d_bias_grad(db.data(), dy.data(), c.rows, c.K);
            // double sums in another order: equal after rounding to float but for the last bit
            EXPECT_TRUE(all_close(db, want, 1e-6, 1e-6)) << threads << " threads";
        }
    }
    omp_set_num_threads(threads_before);
}

// The strided output grid: output (p, q) of a stride-2 conv equals output (2p, 2q) of the same
// conv at stride 1 (PyTorch's definition), so the two naive forwards must agree there.
TEST(CpuOps, ConvStrideTwoSamplesTheStrideOneOutput) {
    for (const ConvShape s : {ConvShape{2, 9, 9, 3, 5, 3, 3, 1, 2}, ConvShape{2, 8, 8, 3, 5, 1, 1, 0, 2}}) {
        ConvShape one = s;
        one.stride = 1;
        ASSERT_EQ(s.P(), (one.P() + 1) / 2);
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, nw = size_t(s.K) * s.R * s.S * s.C;
        auto x = randn(nx, 21), w = randn(nw, 22);
        std::vector<float> y(size_t(s.N) * s.P() * s.Q() * s.K), y1(size_t(s.N) * one.P() * one.Q() * s.K);
        cpu::conv2d_forward_naive(y.data(), x.data(), w.data(), nullptr, s);
        cpu::conv2d_forward_naive(y1.data(), x.data(), w.data(), nullptr, one);
        for (int n = 0; n < s.N; ++n)
            for (int p = 0; p < s.P(); ++p)
                for (int q = 0; q < s.Q(); ++q)
                    for (int k = 0; k < s.K; ++k)
                        ASSERT_EQ(y[((size_t(n) * s.P() + p) * s.Q() + q) * s.K + k],
                                  y1[((size_t(n) * one.P() + 2 * p) * one.Q() + 2 * q) * s.K + k]);
    }
}

// ---- batch norm -------------------------------------------------------------------------------

TEST(CpuOps, BatchNormForwardStatisticsAndRunningUpdate) {
    const int M = 147, C = 5;
    auto x = randn(size_t(M) * C, 21, 2.f);
    for (int i = 0; i < M; ++i) x[size_t(i) * C + 2] += 3.f;  // a channel with a large mean
    auto gamma = randn(C, 22), beta = randn(C, 23);
    std::vector<float> y(x.size()), mean(C), istd(C), rm(C, 0.5f), rv(C, 2.f);
    cpu::bn_forward_train(y.data(), mean.data(), istd.data(), rm.data(), rv.data(), x.data(),
                          gamma.data(), beta.data(), M, C, 1e-5f, 0.4f);
    for (int c = 0; c < C; ++c) {
        double m = 0, v = 0;
        for (int i = 0; i < M; ++i) m += x[size_t(i) * C + c];
        m /= M;
        for (int i = 0; i < M; ++i) v += std::pow(x[size_t(i) * C + c] - m, 2);
        v /= M;
        EXPECT_NEAR(mean[c], m, 1e-5);
        EXPECT_NEAR(istd[c], 1 / std::sqrt(v + 1e-5), 1e-4);
        EXPECT_NEAR(rm[c], 0.6 * 0.5 + 0.4 * m, 1e-5);
        EXPECT_NEAR(rv[c], 0.6 * 2.0 + 0.4 * v * M / (M - 1), 1e-4);  // unbiased, as PyTorch
        for (int i = 0; i < M; ++i)
            EXPECT_NEAR(y[size_t(i) * C + c], (x[size_t(i) * C + c] - m) / std::sqrt(v + 1e-5) * gamma[c] + beta[c], 1e-4);
    }
    std::vector<float> ye(x.size());
    cpu::bn_forward_eval(ye.data(), x.data(), rm.data(), rv.data(), gamma.data(), beta.data(), M, C, 1e-5f);
    for (int i = 0; i < M; ++i)  // every row (each with the running statistics of its channel)
        for (int c = 0; c < C; ++c) {
            const size_t k = size_t(i) * C + c;
            ASSERT_NEAR(ye[k], (x[k] - rm[c]) / std::sqrt(rv[c] + 1e-5) * gamma[c] + beta[c], 1e-5)
                << "row " << i << " channel " << c;
        }
}

TEST(CpuOps, BatchNormGradientsMatchFiniteDifferences) {
    const int M = 30, C = 3;
    auto x = randn(size_t(M) * C, 31), gamma = randn(C, 32), beta = randn(C, 33), r = randn(size_t(M) * C, 34);
    std::vector<float> y(x.size()), mean(C), istd(C), rm(C), rv(C), dx(x.size()), dg(C), db(C);
    cpu::bn_forward_train(y.data(), mean.data(), istd.data(), rm.data(), rv.data(), x.data(),
                          gamma.data(), beta.data(), M, C, 1e-5f, 0.1f);
    cpu::bn_backward(dx.data(), dg.data(), db.data(), r.data(), x.data(), mean.data(), istd.data(),
                     gamma.data(), M, C);
    auto run = [&](const std::vector<float>& xx, const std::vector<float>& g, const std::vector<float>& bb) {
        std::vector<float> yy(xx.size()), m(C), s(C), a(C), v(C);
        cpu::bn_forward_train(yy.data(), m.data(), s.data(), a.data(), v.data(), xx.data(), g.data(),
                              bb.data(), M, C, 1e-5f, 0.1f);
        return yy;
    };
    // BN is smooth; eps 1e-3 keeps the FD truncation error ~1e-6, float rounding ~1e-4
    EXPECT_TRUE(grad_matches(fd_grad(x, r, [&](auto& xx) { return run(xx, gamma, beta); }, 1e-3, 90, 1), dx, 3e-3, 3e-3));
    EXPECT_TRUE(grad_matches(fd_grad(gamma, r, [&](auto& g) { return run(x, g, beta); }, 1e-3, 3, 2), dg, 3e-3, 3e-3));
    EXPECT_TRUE(grad_matches(fd_grad(beta, r, [&](auto& bb) { return run(x, gamma, bb); }, 1e-3, 3, 3), db, 3e-3, 3e-3));
}

// ---- batch norm + activation, fused -----------------------------------------------------------

// The fused op against the two ops it replaces (BN into y, then the activation), for every
// activation, with and without gamma/beta: z, the statistics, the running statistics, dx,
// dgamma and dbeta. Same formulas in the same order, so only the compiler's contraction of
// x * a + b may differ: 1e-6. Then dx of the fused backward by finite differences of
// sum(r * z) through the fused forward.
TEST(CpuOps, FusedBatchNormActivationEqualsBatchNormThenActivation) {
    const int M = 67, C = 5;
    const size_t n = size_t(M) * C;
    const auto x = randn(n, 41, 1.5f), gamma0 = randn(C, 42), beta0 = randn(C, 43), dz = randn(n, 44);
    const float eps = 1e-5f, mom = 0.3f, alpha = 0.3f;
    for (ActKind act : {ActKind::gelu, ActKind::silu, ActKind::relu, ActKind::celu})
        for (bool affine : {true, false}) {
            SCOPED_TRACE(fmt::format("act {} affine {}", int(act), affine));
            const float* gamma = affine ? gamma0.data() : nullptr;
            const float* beta = affine ? beta0.data() : nullptr;
            // reference: BN, then the activation; its backward likewise
            std::vector<float> y(n), z1(n), m1(C), s1(C), rm1(C, 0.2f), rv1(C, 1.5f);
            cpu::bn_forward_train(y.data(), m1.data(), s1.data(), rm1.data(), rv1.data(), x.data(),
                                  gamma, beta, M, C, eps, mom);
            std::vector<float> dy(n), dx1(n), dg1(C), db1(C);
            switch (act) {
                case ActKind::gelu: cpu::gelu_forward(z1.data(), y.data(), n);
                    cpu::gelu_backward(dy.data(), dz.data(), y.data(), n); break;
                case ActKind::silu: cpu::silu_forward(z1.data(), y.data(), n);
                    cpu::silu_backward(dy.data(), dz.data(), y.data(), n); break;
                case ActKind::relu: cpu::relu_forward(z1.data(), y.data(), n);
                    cpu::relu_backward(dy.data(), dz.data(), y.data(), n); break;
                case ActKind::celu: cpu::celu_forward(z1.data(), y.data(), n, alpha);
                    cpu::celu_backward(dy.data(), dz.data(), y.data(), n, alpha); break;
            }
            cpu::bn_backward(dx1.data(), dg1.data(), db1.data(), dy.data(), x.data(), m1.data(),
                             s1.data(), gamma, M, C);
            // fused
            std::vector<float> z2(n), m2(C), s2(C), rm2(C, 0.2f), rv2(C, 1.5f);
            cpu::bn_act_forward_train(z2.data(), m2.data(), s2.data(), rm2.data(), rv2.data(),
                                      x.data(), gamma, beta, M, C, eps, mom, act, alpha);
            EXPECT_TRUE(test::all_close(z2, z1, 1e-6, 1e-6)) << "z";
            EXPECT_EQ(m2, m1);
            EXPECT_EQ(s2, s1);
            EXPECT_EQ(rm2, rm1);
            EXPECT_EQ(rv2, rv1);
            std::vector<float> dx2(n), dg2(C, -7.f), db2(C, -7.f);
            cpu::bn_act_backward(dx2.data(), dg2.data(), db2.data(), dz.data(), x.data(), m2.data(),
                                 s2.data(), gamma, beta, M, C, act, alpha);
            EXPECT_TRUE(test::all_close(dx2, dx1, 1e-6, 1e-5)) << "dx";
            std::vector<float> inplace = dz, dg3(C), db3(C);  // dx over dz: the same result
            cpu::bn_act_backward(inplace.data(), dg3.data(), db3.data(), inplace.data(), x.data(),
                                 m2.data(), s2.data(), gamma, beta, M, C, act, alpha);
            EXPECT_EQ(inplace, dx2) << "dx written over dz";
            EXPECT_TRUE(test::all_close(dg2, dg1, 1e-5, 1e-5)) << "dgamma";
            EXPECT_TRUE(test::all_close(db2, db1, 1e-5, 1e-5)) << "dbeta";
            // eval mode: BN with the running statistics, then the activation
            std::vector<float> ye(n), ze1(n), ze2(n);
            cpu::bn_forward_eval(ye.data(), x.data(), rm1.data(), rv1.data(), gamma, beta, M, C, eps);
            switch (act) {
                case ActKind::gelu: cpu::gelu_forward(ze1.data(), ye.data(), n); break;
                case ActKind::silu: cpu::silu_forward(ze1.data(), ye.data(), n); break;
                case ActKind::relu: cpu::relu_forward(ze1.data(), ye.data(), n); break;
                case ActKind::celu: cpu::celu_forward(ze1.data(), ye.data(), n, alpha); break;
            }
            cpu::bn_act_forward_eval(ze2.data(), x.data(), rm1.data(), rv1.data(), gamma, beta, M,
                                     C, eps, act, alpha);
            EXPECT_TRUE(test::all_close(ze2, ze1, 1e-6, 1e-6)) << "eval z";
            // dx by finite differences (ReLU's kink is skipped: it is not differentiable there)
            if (act == ActKind::relu) continue;
            auto run = [&](const std::vector<float>& xx) {
                std::vector<float> zz(n), m(C), s(C), a(C), v(C);
                cpu::bn_act_forward_train(zz.data(), m.data(), s.data(), a.data(), v.data(), xx.data(),
                                          gamma, beta, M, C, eps, mom, act, alpha);
                return zz;
            };
            EXPECT_TRUE(grad_matches(fd_grad(x, dz, run, 1e-3, 60, 5), dx2, 3e-3, 3e-3)) << "dx vs FD";
        }
}

// ---- GELU ---------------------------------------------------------------------------------

TEST(CpuOps, GeluMatchesErfFormulaAndItsDerivative) {
    std::vector<float> x(1314);  // -9 .. 9 in steps of 0.0137
    for (size_t i = 0; i < x.size(); ++i) x[i] = -9.f + 0.0137f * float(i);
    std::vector<float> y(x.size()), dx(x.size()), ones(x.size(), 1.f);
    cpu::gelu_forward(y.data(), x.data(), x.size());
    cpu::gelu_backward(dx.data(), ones.data(), x.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double v = x[i];
        const double ref = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
        const double dref = 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
        ASSERT_NEAR(y[i], ref, 2e-6 + 2e-6 * std::abs(ref)) << "x=" << v;
        ASSERT_NEAR(dx[i], dref, 2e-6) << "x=" << v;
    }
}

TEST(CpuOps, SiluMatchesFormulaAndFiniteDifferences) {
    std::vector<float> x(1618);  // -30 .. 30 in steps of 0.0371
    for (size_t i = 0; i < x.size(); ++i) x[i] = -30.f + 0.0371f * float(i);
    std::vector<float> y(x.size()), dx(x.size()), ones(x.size(), 1.f);
    cpu::silu_forward(y.data(), x.data(), x.size());
    cpu::silu_backward(dx.data(), ones.data(), x.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const double v = x[i], sg = 1 / (1 + std::exp(-v));
        ASSERT_NEAR(y[i], v * sg, 1e-6 + 1e-6 * std::abs(v * sg)) << "x=" << v;
        ASSERT_NEAR(dx[i], sg * (1 + v * (1 - sg)), 2e-6) << "x=" << v;
    }
    // the backward against finite differences of the forward, with a non-trivial dy
    const auto xs = randn(301, 77, 3.f), r = randn(301, 78);
    std::vector<float> d(xs.size());
    cpu::silu_backward(d.data(), r.data(), xs.data(), xs.size());
    auto f = [](const std::vector<float>& v) {
        std::vector<float> o(v.size());
        cpu::silu_forward(o.data(), v.data(), v.size());
        return o;
    };
    // L = sum r_i silu(x_i): dL/dx_i = r_i silu'(x_i) = d_i
    EXPECT_TRUE(grad_matches(fd_grad(xs, r, f, 1e-2, 60, 79), d, 1e-3, 1e-3));
}

TEST(CpuOps, ReluAndCeluMatchFormulaAndFiniteDifferences) {
    std::vector<float> x;
    for (float v = -20.f; v <= 20.f; v += 0.0371f) x.push_back(v);
    x.push_back(0.f);
    std::vector<float> y(x.size()), dx(x.size()), ones(x.size(), 1.f);
    for (float alpha : {0.3f, 1.f}) {
        SCOPED_TRACE(alpha);
        cpu::celu_forward(y.data(), x.data(), x.size(), alpha);
        cpu::celu_backward(dx.data(), ones.data(), x.data(), x.size(), alpha);
        for (size_t i = 0; i < x.size(); ++i) {
            const double v = x[i];
            const double ref = v > 0 ? v : alpha * std::expm1(v / alpha);
            const double dref = v > 0 ? 1.0 : std::exp(v / alpha);  // 1 at 0, as PyTorch
            ASSERT_NEAR(y[i], ref, 1e-6 + 1e-6 * std::abs(ref)) << "x=" << v;
            ASSERT_NEAR(dx[i], dref, 1e-6) << "x=" << v;
        }
    }
    cpu::relu_forward(y.data(), x.data(), x.size());
    cpu::relu_backward(dx.data(), ones.data(), x.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_EQ(y[i], std::max(x[i], 0.f));
        ASSERT_EQ(dx[i], x[i] > 0 ? 1.f : 0.f) << "x=" << x[i];  // 0 at 0, as PyTorch
    }
    // backward against finite differences of the forward, with a non-trivial dy (values kept
    // away from the kink at 0, where the difference quotient is not the derivative)
    auto xs = randn(301, 87, 3.f), r = randn(301, 88);
    for (float& v : xs)
        if (std::abs(v) < 0.05f) v += v < 0 ? -0.05f : 0.05f;
    std::vector<float> d(xs.size());
    cpu::celu_backward(d.data(), r.data(), xs.data(), xs.size(), 0.3f);
    auto f = [](const std::vector<float>& v) {
        std::vector<float> o(v.size());
        cpu::celu_forward(o.data(), v.data(), v.size(), 0.3f);
        return o;
    };
    EXPECT_TRUE(grad_matches(fd_grad(xs, r, f, 1e-2, 60, 89), d, 1e-3, 1e-3));
    cpu::relu_backward(d.data(), r.data(), xs.data(), xs.size());
    auto g = [](const std::vector<float>& v) {
        std::vector<float> o(v.size());
        cpu::relu_forward(o.data(), v.data(), v.size());
        return o;
    };
    EXPECT_TRUE(grad_matches(fd_grad(xs, r, g, 1e-2, 60, 90), d, 1e-3, 1e-3));
}

// Cutout: exactly the size x size square at the corner (clipped at the edge) becomes 0
TEST(CpuOps, CutoutZeroesExactlyTheSquare) {
    const int B = 3, H = 10, W = 9, C = 3, size = 4;
    auto x = randn(size_t(B) * H * W * C, 95);
    for (float& v : x) v += v == 0.f ? 1.f : 0.f;  // no zero before
    const auto before = x;
    const uint8_t pos[2 * B] = {0, 0, 3, 5, 8, 7};  // the last square is clipped to 2 x 2
    cpu::cutout(x.data(), pos, B, H, W, C, size);
    for (int b = 0; b < B; ++b)
        for (int y = 0; y < H; ++y)
            for (int xx = 0; xx < W; ++xx)
                for (int c = 0; c < C; ++c) {
                    const size_t i = ((size_t(b) * H + y) * W + xx) * C + c;
                    const bool in = y >= pos[2 * b] && y < pos[2 * b] + size && xx >= pos[2 * b + 1] &&
                                    xx < pos[2 * b + 1] + size;
                    ASSERT_EQ(x[i], in ? 0.f : before[i]) << b << " " << y << " " << xx << " " << c;
                }
}

// log(sum_o exp(z_o)) of one row, in double
double log_sum_exp(const float* z, int O) {
    const double mx = *std::max_element(z, z + O);
    double se = 0;
    for (int o = 0; o < O; ++o) se += std::exp(z[o] - mx);
    return mx + std::log(se);
}

// Cutmix: exactly the square (clipped at the edge) comes from the same square of the same row of
// the partners' batch; the partners' batch is left alone
TEST(CpuOps, CutmixCopiesExactlyThePartnersSquare) {
    const int B = 3, H = 10, W = 9, C = 3, size = 4;
    const auto orig = randn(size_t(B) * H * W * C, 96);
    const auto src = randn(size_t(B) * H * W * C, 97);
    auto x = orig, src_copy = src;
    const uint8_t pos[2 * B] = {0, 0, 3, 5, 8, 7};  // the last square is clipped to 2 x 2
    cpu::cutmix(x.data(), src_copy.data(), pos, B, H, W, C, size);
    ASSERT_EQ(src_copy, src);
    for (int b = 0; b < B; ++b)
        for (int y = 0; y < H; ++y)
            for (int xx = 0; xx < W; ++xx)
                for (int c = 0; c < C; ++c) {
                    const size_t at = (size_t(y) * W + xx) * C + c, i = size_t(b) * H * W * C + at;
                    const bool in = y >= pos[2 * b] && y < pos[2 * b] + size && xx >= pos[2 * b + 1] &&
                                    xx < pos[2 * b + 1] + size;
                    ASSERT_EQ(x[i], in ? src[i] : orig[i])
                        << b << " " << y << " " << xx << " " << c;
                }
}

// The mixed target, written out as PyTorch's CrossEntropyLoss(label_smoothing=s) sees hlb's
// soft labels p = (1 - m) onehot(y1) + m onehot(y2): loss = -sum_o ((1 - s) p_o + s / O) log q_o
TEST(CpuOps, CrossEntropyMixedIsSoftTargetLoss) {
    const int N = 5, O = 10;
    const float s = 0.2f, m = 9.f / 1024;
    auto z = randn(size_t(N) * O, 62, 3.f);
    std::vector<int32_t> y1 = {3, 0, 9, 3, 7}, y2 = {1, 0, 2, 8, 7};  // some rows mix a label with itself
    std::vector<float> d(z.size()), stats = {0.f, 0.f};
    cpu::cross_entropy_mixed(d.data(), stats.data(), z.data(), y1.data(), y2.data(), m, N, O, s);
    double loss = 0;
    for (int n = 0; n < N; ++n) {
        const float* zn = z.data() + size_t(n) * O;
        const double lse = log_sum_exp(zn, O);
        for (int o = 0; o < O; ++o) {
            const double p = (1 - m) * (o == y1[n]) + m * (o == y2[n]);
            const double t = (1 - s) * p + s / O;
            loss -= t * (zn[o] - lse);
            EXPECT_NEAR(d[size_t(n) * O + o], std::exp(zn[o] - lse) - t, 1e-6);
        }
    }
    EXPECT_NEAR(stats[0], loss, 1e-4);
    // mix 0 and labels2 == nullptr give the plain loss
    std::vector<float> d0(z.size()), d1(z.size()), s0 = {0.f, 0.f}, s1 = {0.f, 0.f};
    cpu::cross_entropy_mixed(d0.data(), s0.data(), z.data(), y1.data(), y2.data(), 0.f, N, O, s);
    cpu::cross_entropy(d1.data(), s1.data(), z.data(), y1.data(), N, O, s);
    EXPECT_EQ(d0, d1);
    EXPECT_EQ(s0, s1);
    auto f = [&](const std::vector<float>& zz) {
        std::vector<float> dd(zz.size()), st = {0.f, 0.f};
        cpu::cross_entropy_mixed(dd.data(), st.data(), zz.data(), y1.data(), y2.data(), 0.3f, N, O, s);
        return std::vector<float>{st[0]};
    };
    cpu::cross_entropy_mixed(d.data(), stats.data(), z.data(), y1.data(), y2.data(), 0.3f, N, O, s);
    EXPECT_TRUE(grad_matches(fd_grad(z, {1.f}, f, 1e-2, z.size(), 1), d, 2e-3, 2e-3));
}

// cifar10-fast-simple's update_nesterov, step by step in double, with an lr that changes
TEST(CpuOps, SgdNesterovVelocityMatchesThePeersUpdate) {
    const size_t n = 257;
    auto p = randn(n, 91), v = randn(n, 92);
    std::vector<double> pd(p.begin(), p.end()), vd(v.begin(), v.end());
    for (int step = 0; step < 3; ++step) {
        const auto g = randn(n, 93 + step);
        const float lr = 0.01f * float(step + 1), wd = 0.256f, m = 0.9f;
        cpu::sgd_nesterov_velocity(p.data(), v.data(), g.data(), n, lr, wd, m);
        for (size_t i = 0; i < n; ++i) {
            double gi = g[i] + double(wd) * pd[i];  // gradient.add_(weight, alpha=wd)
            gi *= -double(lr);                      // .mul_(-lr)
            vd[i] = double(m) * vd[i] + gi;         // velocity.mul_(m).add_(gradient)
            pd[i] += gi + double(m) * vd[i];        // weight.add_(gradient.add_(velocity, alpha=m))
        }
    }
    for (size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(p[i], pd[i], 1e-5) << i;
        ASSERT_NEAR(v[i], vd[i], 1e-5) << i;
    }
}

// ---- max pooling ------------------------------------------------------------------------------

// distinct values, gaps >= 0.01, so finite differences with eps 1e-3 never cross a kink
std::vector<float> distinct_values(size_t n, uint64_t seed) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = 0.01f * float(i) - 0.005f * float(n);
    Rng r(seed);
    for (size_t i = n - 1; i > 0; --i) std::swap(v[i], v[r.below(uint32_t(i + 1))]);
    return v;
}

TEST(CpuOps, MaxPoolForwardBackward) {
    // C = 40: whole vectors and a remainder in the channel loops
    for (auto [H, k, C] : {std::tuple{7, 2, 5}, std::tuple{3, 3, 5}, std::tuple{4, 3, 5}, std::tuple{5, 2, 40}}) {
        SCOPED_TRACE(fmt::format("H={} k={} C={}", H, k, C));
        const int N = 2, P = H / k;
        auto x = distinct_values(size_t(N) * H * H * C, 41);
        std::vector<float> y(size_t(N) * P * P * C, 9.f), dx(x.size(), 9.f);
        std::vector<uint8_t> arg(y.size());
        cpu::maxpool_forward(y.data(), arg.data(), x.data(), N, H, H, C, k);
        for (int n = 0; n < N; ++n)
            for (int p = 0; p < P; ++p)
                for (int q = 0; q < P; ++q)
                    for (int c = 0; c < C; ++c) {
                        float m = -1e30f;
                        for (int i = 0; i < k; ++i)
                            for (int j = 0; j < k; ++j)
                                m = std::max(m, x[((size_t(n) * H + p * k + i) * H + q * k + j) * C + c]);
                        ASSERT_EQ(y[((size_t(n) * P + p) * P + q) * C + c], m);
                    }
        auto r = randn(y.size(), 42);
        cpu::maxpool_backward(dx.data(), r.data(), arg.data(), N, H, H, C, k);
        auto f = [&](const std::vector<float>& xx) {
            std::vector<float> yy(y.size());
            std::vector<uint8_t> a(y.size());
            cpu::maxpool_forward(yy.data(), a.data(), xx.data(), N, H, H, C, k);
            return yy;
        };
        EXPECT_TRUE(grad_matches(fd_grad(x, r, f, 1e-3, x.size(), 1), dx, 1e-3, 1e-3));
    }
}

TEST(CpuOps, MaxPoolTiesTakeTheFirstElementAsPyTorch) {
    std::vector<float> x(4 * 1, 1.f);  // N=1, 2x2, C=1, all equal
    std::vector<float> y(1);
    std::vector<uint8_t> arg(1, 99);
    cpu::maxpool_forward(y.data(), arg.data(), x.data(), 1, 2, 2, 1, 2);
    EXPECT_EQ(arg[0], 0);
}

// DAWN_net's head: against the definition (max and mean of each channel, in that order), and
// the backward against finite differences (distinct values: no ties, so the max is smooth).
TEST(CpuOps, ConcatPoolForwardBackward) {
    const int N = 3, HW = 16, C = 7;
    auto x = distinct_values(size_t(N) * HW * C, 43);
    std::vector<float> y(size_t(N) * 2 * C, 9.f), dx(x.size(), 9.f);
    std::vector<uint8_t> arg(size_t(N) * C, 99);
    cpu::concat_pool_forward(y.data(), arg.data(), x.data(), N, HW, C);
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            float m = -1e30f;
            double s = 0;
            int at = -1;
            for (int i = 0; i < HW; ++i) {
                const float v = x[(size_t(n) * HW + i) * C + c];
                if (v > m) m = v, at = i;
                s += v;
            }
            ASSERT_EQ(y[size_t(n) * 2 * C + c], m);
            ASSERT_EQ(arg[size_t(n) * C + c], at);
            ASSERT_NEAR(y[size_t(n) * 2 * C + C + c], s / HW, 1e-5 * (1 + std::abs(s / HW)));
        }
    auto r = randn(y.size(), 44);
    cpu::concat_pool_backward(dx.data(), r.data(), arg.data(), N, HW, C);
    auto f = [&](const std::vector<float>& xx) {
        std::vector<float> yy(y.size());
        std::vector<uint8_t> a(arg.size());
        cpu::concat_pool_forward(yy.data(), a.data(), xx.data(), N, HW, C);
        return yy;
    };
    EXPECT_TRUE(grad_matches(fd_grad(x, r, f, 1e-3, x.size(), 1), dx, 1e-3, 1e-3));
    std::vector<float> tie(size_t(HW), 2.f), ty(2);  // all equal: the first position, as PyTorch
    std::vector<uint8_t> ta(1, 99);
    cpu::concat_pool_forward(ty.data(), ta.data(), tie.data(), 1, HW, 1);
    EXPECT_EQ(ta[0], 0);
    EXPECT_EQ(ty[1], 2.f);
}

// ---- linear and loss --------------------------------------------------------------------------

TEST(CpuOps, LinearGradientsMatchFiniteDifferences) {
    const int N = 3, I = 13, O = 10;
    const float scale = 1.f / 9;
    auto x = randn(size_t(N) * I, 51), w = randn(size_t(O) * I, 52), r = randn(size_t(N) * O, 53);
    std::vector<float> y(size_t(N) * O), dx(x.size()), dw(w.size());
    cpu::linear_forward(y.data(), x.data(), w.data(), N, I, O, scale);
    for (int n = 0; n < N; ++n)
        for (int o = 0; o < O; ++o) {
            double s = 0;
            for (int i = 0; i < I; ++i) s += double(x[size_t(n) * I + i]) * w[size_t(o) * I + i];
            ASSERT_NEAR(y[size_t(n) * O + o], scale * s, 1e-5);
        }
    cpu::linear_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), N, I, O, scale);
    auto fx = [&](const std::vector<float>& xx) { std::vector<float> yy(y.size()); cpu::linear_forward(yy.data(), xx.data(), w.data(), N, I, O, scale); return yy; };
    auto fw = [&](const std::vector<float>& ww) { std::vector<float> yy(y.size()); cpu::linear_forward(yy.data(), x.data(), ww.data(), N, I, O, scale); return yy; };
    EXPECT_TRUE(grad_matches(fd_grad(x, r, fx, 1e-2, x.size(), 1), dx, 1e-3, 1e-3));
    EXPECT_TRUE(grad_matches(fd_grad(w, r, fw, 1e-2, w.size(), 2), dw, 1e-3, 1e-3));
}

TEST(CpuOps, CrossEntropyWithLabelSmoothing) {
    const int N = 4, O = 10;
    const float s = 0.2f;
    auto z = randn(size_t(N) * O, 61, 3.f);
    std::vector<int32_t> labels = {3, 0, 9, 3};
    std::vector<float> d(z.size()), stats = {1.f, 2.f};  // stats accumulate
    cpu::cross_entropy(d.data(), stats.data(), z.data(), labels.data(), N, O, s);
    double loss = 0;
    int correct = 0;
    for (int n = 0; n < N; ++n) {
        const float* zn = z.data() + size_t(n) * O;
        const double lse = log_sum_exp(zn, O);
        for (int o = 0; o < O; ++o) {
            const double t = (o == labels[n] ? 1 - s : 0) + s / O;
            loss -= t * (zn[o] - lse);
            EXPECT_NEAR(d[size_t(n) * O + o], std::exp(zn[o] - lse) - t, 1e-6);
        }
        correct += int(std::max_element(zn, zn + O) - zn) == labels[n];
    }
    EXPECT_NEAR(stats[0], 1.0 + loss, 1e-4);
    EXPECT_NEAR(stats[1], 2.0 + correct, 1e-6);
    // and the gradient is the derivative of the summed loss
    auto f = [&](const std::vector<float>& zz) {
        std::vector<float> dd(zz.size()), st = {0.f, 0.f};
        cpu::cross_entropy(dd.data(), st.data(), zz.data(), labels.data(), N, O, s);
        return std::vector<float>{st[0]};
    };
    EXPECT_TRUE(grad_matches(fd_grad(z, {1.f}, f, 1e-2, z.size(), 1), d, 2e-3, 2e-3));
}

// ---- optimizer --------------------------------------------------------------------------------

// The groups in one call: each range updated exactly as the single-range op with its lr and wd;
// the gaps between ranges (and an empty range) untouched.
TEST(CpuOps, SgdNesterovRangesEqualsOneCallPerRange) {
    const size_t n = 300;
    const SgdRange r[4] = {{0, 40, 0.1f, 5e-4f}, {50, 50, 9.f, 9.f}, {60, 200, 6.4f, 7.8e-6f},
                           {210, 300, 0.01f, 0.f}};
    for (bool velocity : {false, true}) {
        SCOPED_TRACE(velocity);
        auto p = randn(n, 71), buf = randn(n, 72);
        const auto g = randn(n, 73);
        auto p2 = p, buf2 = buf;
        cpu::sgd_nesterov_ranges(p.data(), buf.data(), g.data(), r, 4, 0.85f, velocity);
        for (const SgdRange& x : r) {
            if (x.end <= x.begin) continue;
            if (velocity)
                cpu::sgd_nesterov_velocity(p2.data() + x.begin, buf2.data() + x.begin,
                                           g.data() + x.begin, x.end - x.begin, x.lr, x.wd, 0.85f);
            else
                cpu::sgd_nesterov(p2.data() + x.begin, buf2.data() + x.begin, g.data() + x.begin,
                                  x.end - x.begin, x.lr, x.wd, 0.85f);
        }
        EXPECT_EQ(p, p2);
        EXPECT_EQ(buf, buf2);
        const auto p0 = randn(n, 71);
        for (size_t i : {size_t(45), size_t(55), size_t(205)}) EXPECT_EQ(p[i], p0[i]) << i;
    }
}

TEST(CpuOps, SgdNesterovIsPyTorchSgd) {
    std::vector<float> p = {1.f, -2.f, 0.5f}, buf = {0.f, 0.f, 0.f}, g = {0.1f, 0.2f, -0.3f};
    double P[3] = {1, -2, 0.5}, Bf[3] = {0, 0, 0};
    const double lr = 0.01, wd = 0.5, m = 0.85;
    for (int step = 0; step < 3; ++step) {
        cpu::sgd_nesterov(p.data(), buf.data(), g.data(), 3, float(lr), float(wd), float(m));
        for (int i = 0; i < 3; ++i) {
            const double gi = g[i] + wd * P[i];
            Bf[i] = m * Bf[i] + gi;  // step 0: buf = g (PyTorch clones g; the same as 0 * m + g)
            P[i] -= lr * (gi + m * Bf[i]);
            ASSERT_NEAR(p[i], P[i], 1e-6);
            ASSERT_NEAR(buf[i], Bf[i], 1e-6);
        }
    }
}

TEST(CpuOps, LerpAssignAndAxpy) {
    std::vector<float> ema = {0.f, 10.f}, p = {1.f, 0.f};
    cpu::lerp_assign(ema.data(), p.data(), 2, 0.25f);
    EXPECT_FLOAT_EQ(ema[0], 0.25f);
    EXPECT_FLOAT_EQ(ema[1], 7.5f);
    EXPECT_EQ(ema, p);
    std::vector<float> y = {1.f, 2.f}, x = {3.f, 4.f};
    cpu::axpy(y.data(), x.data(), 0.5f, 2);
    EXPECT_FLOAT_EQ(y[0], 2.5f);
    EXPECT_FLOAT_EQ(y[1], 4.f);
}

TEST(CpuOps, MuonPiecesScaleNormMomentum) {
    std::vector<float> x = {3.f, 4.f};
    cpu::scale_to_norm(x.data(), 2, 2.f, 0.f);
    EXPECT_FLOAT_EQ(x[0], 1.2f);
    EXPECT_FLOAT_EQ(x[1], 1.6f);
    cpu::scale_to_norm(x.data(), 2, 1.f, 1.f);  // the eps is added to the norm (2): x / 3
    EXPECT_FLOAT_EQ(x[0], 0.4f);
    cpu::scale(x.data(), -2.f, 2);
    EXPECT_FLOAT_EQ(x[1], -16.f / 15.f);
    std::vector<float> buf = {1.f, -1.f}, g = {0.5f, 2.f}, u(2);
    cpu::momentum_direction(u.data(), buf.data(), g.data(), 2, 0.6f, true);
    EXPECT_FLOAT_EQ(buf[0], 1.1f);  // 0.6 * 1 + 0.5
    EXPECT_FLOAT_EQ(u[0], 0.5f + 0.6f * 1.1f);
    cpu::momentum_direction(u.data(), buf.data(), g.data(), 2, 0.6f, false);
    EXPECT_FLOAT_EQ(u[1], buf[1]);
}

// oneDNN's sgemm against plain loops, every transpose combination, beta 0 (C never read: NaN in
// it must not leak) and beta != 0.
TEST(CpuOps, GemmMatchesNaive) {
    const int M = 7, N = 13, K = 29;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (float beta : {0.f, 0.5f}) {
                SCOPED_TRACE(fmt::format("ta={} tb={} beta={}", ta, tb, beta));
                const auto A = randn(size_t(M) * K, 1 + ta), B = randn(size_t(K) * N, 3 + tb);
                auto C0 = randn(size_t(M) * N, 5);
                if (beta == 0.f) C0.assign(C0.size(), std::nanf(""));
                auto c1 = C0, c2 = C0;
                cpu::gemm(c1.data(), A.data(), B.data(), M, N, K, ta, tb, 1.5f, beta);
                cpu::gemm_naive(c2.data(), A.data(), B.data(), M, N, K, ta, tb, 1.5f, beta);
                EXPECT_TRUE(all_close(c1, c2, 1e-5, 1e-5));
            }
}

TEST(CpuOps, BrightnessContrastPerImage) {
    std::vector<float> x = {1.f, 2.f, 3.f, -1.f, 0.f, 1.f};
    const std::vector<float> shift = {0.5f, -1.f}, gain = {2.f, 0.5f};
    cpu::brightness_contrast(x.data(), shift.data(), gain.data(), 2, 3);
    EXPECT_EQ(x, (std::vector<float>{3.f, 5.f, 7.f, -1.f, -0.5f, 0.f}));
}

// ---- data ops ---------------------------------------------------------------------------------

TEST(CpuOps, NormalizePadReflects) {
    const int N = 1, H = 4, W = 5, pad = 2;
    std::vector<uint8_t> in(size_t(N) * H * W * 3);
    for (size_t i = 0; i < in.size(); ++i) in[i] = uint8_t(i * 7 % 256);
    const float mean[3] = {0.1f, 0.2f, 0.3f}, stdv[3] = {0.5f, 0.25f, 2.f};
    std::vector<float> out(size_t(N) * (H + 2 * pad) * (W + 2 * pad) * 3);
    cpu::normalize_pad(out.data(), in.data(), N, H, W, mean, stdv, pad);
    auto reflect = [](int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); };
    for (int y = 0; y < H + 2 * pad; ++y)
        for (int x = 0; x < W + 2 * pad; ++x)
            for (int c = 0; c < 3; ++c) {
                const int sy = reflect(y - pad, H), sx = reflect(x - pad, W);
                const float v = in[(size_t(sy) * W + sx) * 3 + c];
                ASSERT_FLOAT_EQ(out[(size_t(y) * (W + 2 * pad) + x) * 3 + c], (v / 255.f - mean[c]) / stdv[c]);
            }
    // reflect, not replicate: the pixel left of column 0 is column 1
    EXPECT_EQ(out[(size_t(pad) * (W + 2 * pad) + pad - 1) * 3], out[(size_t(pad) * (W + 2 * pad) + pad + 1) * 3]);
}

TEST(CpuOps, GatherCropsTranslateAndFlip) {
    const int N = 3, H = 6, W = 6, pad = 2, HP = H + 2 * pad, WP = W + 2 * pad;
    auto src = randn(size_t(N) * HP * WP * 3, 71);
    const int B = 3;
    std::vector<int32_t> idx = {2, 0, 1};
    std::vector<int8_t> shifts = {-2, 1, 0, 0, 2, -1};
    std::vector<uint8_t> flips = {0, 1, 1};
    std::vector<float> out(size_t(B) * H * W * 3, 5.f);
    cpu::gather_crops(out.data(), src.data(), H, W, pad, B, idx.data(), 0, shifts.data(), 0, 0, flips.data(), 0);
    for (int b = 0; b < B; ++b)
        for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x)
                for (int c = 0; c < 3; ++c) {
                    const int xs = flips[b] ? W - 1 - x : x;
                    const float want = src[((size_t(idx[b]) * HP + y + pad + shifts[2 * b]) * WP + xs + pad + shifts[2 * b + 1]) * 3 + c];
                    ASSERT_EQ(out[((size_t(b) * H + y) * W + x) * 3 + c], want);
                }
    // flipping twice is the identity (pad 0, no shift)
    std::vector<float> once(out.size()), twice(out.size());
    cpu::gather_crops(once.data(), out.data(), H, W, 0, B, nullptr, 0, nullptr, 0, 0, nullptr, 1);
    cpu::gather_crops(twice.data(), once.data(), H, W, 0, B, nullptr, 0, nullptr, 0, 0, nullptr, 1);
    EXPECT_EQ(twice, out);
    EXPECT_NE(once, out);
}

TEST(CpuOps, PatchCovarianceMatchesDirectSum) {
    const int N = 2, H = 5, W = 4, C = 3, k = 2, D = C * k * k;
    auto x = randn(size_t(N) * H * W * C, 81);
    std::vector<double> cov(size_t(D) * D);
    cpu::patch_covariance(cov.data(), nullptr, x.data(), N, H, W, C, k);
    std::vector<double> ref(size_t(D) * D, 0.0);
    int count = 0;
    for (int n = 0; n < N; ++n)
        for (int p = 0; p + k <= H; ++p)
            for (int q = 0; q + k <= W; ++q, ++count) {
                std::vector<double> v(D);
                for (int c = 0; c < C; ++c)  // PyTorch unfold order: (c, r, s)
                    for (int r = 0; r < k; ++r)
                        for (int s = 0; s < k; ++s) v[(c * k + r) * k + s] = x[((size_t(n) * H + p + r) * W + q + s) * C + c];
                for (int a = 0; a < D; ++a)
                    for (int b = 0; b < D; ++b) ref[a * D + b] += v[a] * v[b];
            }
    for (int i = 0; i < D * D; ++i) EXPECT_NEAR(cov[i], ref[i] / count, 1e-5);
    // with the mean: the same covariance, and the mean patch vector
    std::vector<double> cov2(size_t(D) * D), mean(D, 1e300), ref_mean(D, 0.0);
    cpu::patch_covariance(cov2.data(), mean.data(), x.data(), N, H, W, C, k);
    EXPECT_EQ(cov2, cov);
    for (int n = 0; n < N; ++n)
        for (int p = 0; p + k <= H; ++p)
            for (int q = 0; q + k <= W; ++q)
                for (int c = 0; c < C; ++c)
                    for (int r = 0; r < k; ++r)
                        for (int s = 0; s < k; ++s)
                            ref_mean[(c * k + r) * k + s] += x[((size_t(n) * H + p + r) * W + q + s) * C + c];
    for (int i = 0; i < D; ++i) EXPECT_NEAR(mean[i], ref_mean[i] / count, 1e-6);
}

}  // namespace
}  // namespace sr
