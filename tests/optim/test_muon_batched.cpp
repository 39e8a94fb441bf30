// test_muon_batched.cpp: the Muon step runs every filter through each stage together (one
// momentum launch per run of neighbouring filters, segmented norms, grouped gemms). Checked
// against the step written filter by filter with the CPU ops (as the optimizer did before), over
// three steps of both Muon presets, on a network whose filters take both Newton-Schulz
// orientations (D <= K and D > K).
#include <cmath>

#include "model/network.h"
#include "ops/cpu/cpu_ops.h"
#include "optim/optimizer.h"
#include "train/recipe.h"
#include "test_util.h"

namespace sr {
namespace {

struct HostFilter {
    size_t offset, count;
    int rows;
};

// One Muon step over the filters, one filter after another, on host arrays (the CPU backend's
// memory is the host's).
void reference_muon(const Recipe::Muon& mu, const std::vector<HostFilter>& filters, float* p,
                    float* buf, const float* g, double lr, double progress, bool renorm) {
    const float ca = float(mu.coeffs[0]), cb = float(mu.coeffs[1]), cc = float(mu.coeffs[2]);
    for (const HostFilter& f : filters) {
        const size_t n = f.count;
        const int D = f.rows, K = int(n / size_t(D));
        std::vector<float> x(n), xn(n);
        cpu::momentum_direction(x.data(), buf + f.offset, g + f.offset, n, float(mu.momentum),
                                mu.nesterov);
        if (mu.magnitude.size() == 2)
            cpu::scale_to_norm(x.data(), n,
                               float(mu.magnitude[0] * (1 - progress) + mu.magnitude[1] * progress),
                               float(mu.eps));
        cpu::scale_to_norm(x.data(), n, 1.f, float(mu.eps));
        const bool wide = D <= K;
        const int s = wide ? D : K;
        std::vector<float> A(size_t(s) * s), B(size_t(s) * s);
        for (int it = 0; it < mu.steps; ++it) {
            if (wide) cpu::gemm(A.data(), x.data(), x.data(), s, s, K, false, true, 1.f, 0.f);
            else cpu::gemm(A.data(), x.data(), x.data(), s, s, D, true, false, 1.f, 0.f);
            cpu::gemm(B.data(), A.data(), A.data(), s, s, s, false, false, cc, 0.f);
            cpu::axpy(B.data(), A.data(), cb, A.size());
            if (wide) cpu::gemm(xn.data(), B.data(), x.data(), D, K, D, false, false, 1.f, 0.f);
            else cpu::gemm(xn.data(), x.data(), B.data(), D, K, K, false, false, 1.f, 0.f);
            cpu::axpy(xn.data(), x.data(), ca, n);
            std::swap(x, xn);
        }
        if (renorm)
            cpu::scale_to_norm(p + f.offset, n, float(std::sqrt(double(D))), float(mu.renorm_eps));
        cpu::axpy(p + f.offset, x.data(), float(-lr), n);
        if (mu.weight_decay > 0) cpu::scale(p + f.offset, float(1.0 - lr * mu.weight_decay), n);
    }
}

void check(const std::string& preset) {
    SCOPED_TRACE(preset);
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe(preset, "");
    // block2's first conv has more rows (96) than columns (8 * 3 * 3): the X^T X orientation
    r.net.widths = {8, 96, 16};
    Network net(*b, r.net);
    Rng rng(11);
    net.init(rng);
    std::vector<HostFilter> filters;
    bool tall = false;
    for (const auto& s : net.tensors())
        if (s.group == ParamGroup::weight && s.shape.size() == 4) {
            filters.push_back({s.offset, s.count, s.shape[0]});
            tall |= size_t(s.shape[0]) > s.count / size_t(s.shape[0]);
        }
    ASSERT_GE(filters.size(), 6u);
    ASSERT_TRUE(tall);
    std::vector<float> p, buf(net.size(), 0.f);
    net.download(p);
    Optimizer opt(net, r);
    const int total = 200, whiten_steps = 0;
    int last_renorm = 0, renorms = 0;
    for (int step = 0; step < 4; ++step) {
        SCOPED_TRACE(step);
        const auto g = test::randn(net.size(), 100 + step, 0.1f);
        b->upload(net.grads.get(), g.data(), g.size() * sizeof(float));
        opt.step(step, total, whiten_steps);
        const int count = step + 1;
        const bool renorm = muon_renorm_due(count, last_renorm, total, r.muon.renorm_base,
                                            r.muon.renorm_growth);
        if (renorm) last_renorm = count, ++renorms;
        reference_muon(r.muon, filters, p.data(), buf.data(), g.data(),
                       r.muon.lr * opt.lr_multiplier_at(step, total, 0), double(count) / total,
                       renorm);
        std::vector<float> now, mom(net.size());
        net.download(now);
        b->download(mom.data(), net.momentum.get(), mom.size() * sizeof(float));
        for (const HostFilter& f : filters) {
            const std::vector<float> got(now.begin() + f.offset, now.begin() + f.offset + f.count);
            const std::vector<float> ref(p.begin() + f.offset, p.begin() + f.offset + f.count);
            EXPECT_TRUE(test::all_close(got, ref, 1e-6, 1e-5)) << "filter at " << f.offset;
            const std::vector<float> gm(mom.begin() + f.offset, mom.begin() + f.offset + f.count);
            const std::vector<float> rm(buf.begin() + f.offset, buf.begin() + f.offset + f.count);
            EXPECT_EQ(gm, rm) << "momentum of the filter at " << f.offset;
        }
    }
    EXPECT_GE(renorms, 1);  // the renormalisation path ran
}

TEST(MuonBatched, EqualsTheStepFilterByFilterHiverge) { check("hiverge"); }
TEST(MuonBatched, EqualsTheStepFilterByFilterAirbench94Muon) { check("muon94"); }

// The pieces on the CPU: segmented norms equal scale_to_norm per segment, and a GemmList equals
// its gemms one by one.
TEST(MuonBatched, SegmentedNormAndGemmList) {
    auto b = make_cpu_backend(2);
    auto x = test::randn(1000, 3);
    auto ref = x;
    const std::vector<int64_t> off = {0, 7, 7, 300, 1000};  // an empty segment included
    const std::vector<float> t = {2.f, 3.f, 0.5f, 1.5f};
    cpu::scale_to_norm_segments(x.data(), off.data(), t.data(), 4, 2.f, 1e-3f);
    for (int s = 0; s < 4; ++s)
        cpu::scale_to_norm(ref.data() + off[s], size_t(off[s + 1] - off[s]), 2.f * t[s], 1e-3f);
    EXPECT_EQ(x, ref);
    double ss = 0;
    for (int64_t i = 7; i < 300; ++i) ss += double(x[size_t(i)]) * x[size_t(i)];
    EXPECT_NEAR(std::sqrt(ss), 1.0, 1e-3);  // target 2 * 0.5 (the eps takes a share of 1e-4)

    const auto A = test::randn(6 * 5, 4), B = test::randn(5 * 7, 5), A2 = test::randn(4 * 3, 6);
    std::vector<float> C1(6 * 7, 1.f), C2(3 * 3, 1.f), R1 = C1, R2 = C2;
    auto list = b->make_gemm_list({{C1.data(), A.data(), B.data(), 6, 7, 5, false, false},
                                   {C2.data(), A2.data(), A2.data(), 3, 3, 4, true, false}},
                                  GemmMath::tf32);  // (the CPU computes fp32 either way)
    EXPECT_EQ(list->items().size(), 2u);
    EXPECT_DOUBLE_EQ(list->flops(), 2.0 * (6 * 7 * 5 + 3 * 3 * 4));
    list->run(0.5f, 2.f);
    cpu::gemm(R1.data(), A.data(), B.data(), 6, 7, 5, false, false, 0.5f, 2.f);
    cpu::gemm(R2.data(), A2.data(), A2.data(), 3, 3, 4, true, false, 0.5f, 2.f);
    EXPECT_EQ(C1, R1);
    EXPECT_EQ(C2, R2);
}

}  // namespace
}  // namespace sr
