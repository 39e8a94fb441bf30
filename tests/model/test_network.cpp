// test_network.cpp: the whole network's gradients against finite differences (a tiny-width
// airbench net on a batch of 2), the parameter layout, the init conventions, and the whitening
// layer's decorrelation.
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "model/network.h"
#include "ops/cpu/cpu_ops.h"
#include "train/recipe.h"
#include "test_util.h"

namespace sr {
namespace {

NetConfig tiny() {
    NetConfig c;
    c.widths = {4, 6, 8};
    c.bn_eps = 1e-5f;
    return c;
}

double loss_of(Backend& b, Workspace& ws, const std::vector<float>& x, const std::vector<int32_t>& y,
               int O, std::vector<float>* dlogits) {
    DeviceBuffer<float> xd(b, x.size()), st(b, 2);
    DeviceBuffer<int32_t> yd(b, y.size());
    b.upload(xd.get(), x.data(), x.size() * 4);
    b.upload(yd.get(), y.data(), y.size() * 4);
    const float* logits = ws.forward(xd.get(), true);
    b.cross_entropy(ws.dlogits(), st.get(), logits, yd.get(), int(y.size()), O, 0.2f);
    if (dlogits) {
        ws.backward(ws.dlogits(), true);
    }
    float s[2];
    b.download(s, st.get(), 8);
    return s[0];
}

TEST(Network, LayoutGroupsAreContiguousAndNamed) {
    auto b = make_cpu_backend(2);
    Network net(*b, NetConfig{});
    // airbench94: 24 whitening filters of 2x2x3, widths 64/256/256, head 10x256
    EXPECT_EQ(net.tensor("whiten.weight").count, 24u * 12);
    EXPECT_EQ(net.tensor("block1.conv1.weight").count, 64u * 9 * 24);
    EXPECT_EQ(net.tensor("block3.conv2.weight").count, 256u * 9 * 256);
    EXPECT_EQ(net.tensor("head.weight").count, 2560u);
    size_t learn = 24 + 64 * 9 * 24 + 64 * 9 * 64 + 256 * 9 * 64 + 256 * 9 * 256 * 3 + 2560 + 2 * (64 + 256 + 256);
    EXPECT_EQ(net.learnable_count(), learn);
    // every group is one contiguous range, in enum order
    size_t prev_end = 0;
    for (auto g : {ParamGroup::whiten_bias, ParamGroup::weight, ParamGroup::bn_bias, ParamGroup::frozen, ParamGroup::buffer}) {
        auto [beg, end] = net.group_range(g);
        EXPECT_EQ(beg, prev_end);
        prev_end = end;
    }
    EXPECT_EQ(prev_end, net.size());
    // ~0.24 GFLOP per image forward (airbench94 header: 0.36 PFLOP per run)
    EXPECT_NEAR(net.flops_per_image_forward() * 1e-9, 0.236, 0.01);
}

TEST(Network, InitFollowsPyTorchConventions) {
    auto b = make_cpu_backend(2);
    Network net(*b, NetConfig{});
    Rng rng(5);
    net.init(rng);
    std::vector<float> h;
    net.download(h);
    auto t = [&](const char* n) { const auto& s = net.tensor(n); return std::vector<float>(h.begin() + s.offset, h.begin() + s.offset + s.count); };
    // block2.conv1 (256,3,3,64): first 64 filters dirac, the rest uniform(+-1/sqrt(576))
    auto w = t("block2.conv1.weight");
    for (int o = 0; o < 64; ++o)
        for (int i = 0; i < 9 * 64; ++i) ASSERT_EQ(w[size_t(o) * 576 + i], (i == 4 * 64 + o) ? 1.f : 0.f);
    float mx = 0;
    for (size_t i = 64 * 576; i < w.size(); ++i) mx = std::max(mx, std::abs(w[i]));
    EXPECT_LE(mx, 1 / std::sqrt(576.f));
    EXPECT_GT(mx, 0.9f / std::sqrt(576.f));
    // block1.conv2 (64->64): all filters dirac
    auto w2 = t("block1.conv2.weight");
    EXPECT_EQ(std::accumulate(w2.begin(), w2.end(), 0.f), 64.f);
    for (float v : t("block2.norm1.weight")) EXPECT_EQ(v, 1.f);
    for (float v : t("block2.norm1.running_var")) EXPECT_EQ(v, 1.f);
    for (float v : t("block2.norm1.bias")) EXPECT_EQ(v, 0.f);
    auto hw = t("head.weight");
    for (float v : hw) EXPECT_LE(std::abs(v), 1 / 16.f);
}

void gradients_match_fd(const NetConfig& cfg) {
    auto b = make_cpu_backend(2);
    Network net(*b, cfg);
    Rng rng(7);
    net.init(rng);
    // random whitening-like filters so the first layer is not trivial
    std::vector<float> h;
    net.download(h);
    {
        const auto& s = net.tensor("whiten.weight");
        for (size_t i = 0; i < s.count; ++i) h[s.offset + i] = 0.5f * rng.normal();
        const auto& bb = net.tensor("whiten.bias");
        for (size_t i = 0; i < bb.count; ++i) h[bb.offset + i] = 0.1f * rng.normal();
        for (const auto& t : net.tensors())
            if (t.name.ends_with("norm1.bias") || t.name.ends_with("norm2.bias") || t.name.ends_with("norm3.bias"))
                for (size_t i = 0; i < t.count; ++i) h[t.offset + i] = 0.2f * rng.normal();
    }
    net.upload(h);
    const int N = 2;
    Workspace ws(net, N);
    auto x = test::randn(size_t(N) * 32 * 32 * 3, 8);
    std::vector<int32_t> y = {3, 7};
    std::vector<float> dl(N * 10);
    loss_of(*b, ws, x, y, 10, &dl);
    std::vector<float> g(net.size());
    b->download(g.data(), net.grads.get(), g.size() * 4);

    std::vector<std::string> names = {"head.weight", "block3.conv2.weight", "block3.norm2.bias",
                                      "block2.conv1.weight", "block2.norm1.bias", "block1.conv1.weight",
                                      "block1.conv2.weight", "block1.norm1.bias", "whiten.bias"};
    if (cfg.group_convs == 3)  // airbench96's third conv and its BN, and the residual's paths
        names.insert(names.end(), {"block3.conv3.weight", "block3.norm3.bias", "block2.conv3.weight",
                                   "block1.conv3.weight", "block1.norm3.bias"});
    for (const std::string& name : names) {
        SCOPED_TRACE(name);
        const auto& s = net.tensor(name);
        double gmax = 0;
        for (size_t i = 0; i < s.count; ++i) gmax = std::max(gmax, double(std::abs(g[s.offset + i])));
        ASSERT_GT(gmax, 0) << "gradient is all zero";
        Rng pick(11);
        for (int probe = 0; probe < 6; ++probe) {
            const size_t i = s.offset + pick.below(uint32_t(s.count));
            const float v0 = h[i];
            const double eps = 1e-2;
            h[i] = v0 + float(eps);
            net.upload(h);
            const double lp = loss_of(*b, ws, x, y, 10, nullptr);
            h[i] = v0 - float(eps);
            net.upload(h);
            const double lm = loss_of(*b, ws, x, y, 10, nullptr);
            h[i] = v0;
            net.upload(h);
            const double fd = (lp - lm) / (2 * eps);
            // float forward passes: the FD carries ~1e-5 / 2e-2 absolute noise, and second-order
            // terms of eps = 1e-2; allow 3% of the tensor's largest gradient plus 5% relative
            EXPECT_NEAR(g[i], fd, 0.03 * gmax + 0.05 * std::abs(fd)) << "element " << i - s.offset;
        }
    }
}

TEST(Network, GradientsMatchFiniteDifferences) { gradients_match_fd(tiny()); }

// The Muon recipes' variant: SiLU in the groups, head rescaled to std 1, uniform whitening bias.
TEST(Network, GradientsMatchFiniteDifferencesSilu) {
    NetConfig c = tiny();
    c.act = Activation::silu;
    c.head_unit_std = true;
    c.whiten_bias_uniform = true;
    c.scaling_factor = 1.f / 8;
    gradients_match_fd(c);
}

// airbench96's group: a third conv and BN, the first activation added before the last one.
TEST(Network, GradientsMatchFiniteDifferencesThreeConvGroups) {
    NetConfig c = tiny();
    c.group_convs = 3;
    c.bn_momentum = 0.1f;
    gradients_match_fd(c);
}

// The layout and FLOPs of airbench96 by hand: widths 128/384/512, conv1 + 2 more per group.
TEST(Network, ThreeConvLayoutAndFlops) {
    auto b = make_cpu_backend(1);
    NetConfig c;
    c.widths = {128, 384, 512};
    c.group_convs = 3;
    Network net(*b, c);
    EXPECT_EQ(net.tensor("block2.conv3.weight").count, size_t(384) * 9 * 384);
    EXPECT_EQ(net.tensor("block3.norm3.running_var").count, 512u);
    // whiten 31x31x24x12, then per group conv1 at H (before the pool) and 2 convs at H/2
    double f = 2.0 * 31 * 31 * 24 * 12;
    f += 2.0 * 31 * 31 * 128 * 24 * 9 + 2 * 2.0 * 15 * 15 * 128 * 128 * 9;
    f += 2.0 * 15 * 15 * 384 * 128 * 9 + 2 * 2.0 * 7 * 7 * 384 * 384 * 9;
    f += 2.0 * 7 * 7 * 512 * 384 * 9 + 2 * 2.0 * 3 * 3 * 512 * 512 * 9;
    f += 2.0 * 512 * 10;
    EXPECT_DOUBLE_EQ(net.flops_per_image_forward(), f);
    c.group_convs = 4;
    EXPECT_THROW(Network(*b, c), Error);
}

TEST(Network, WhiteningDecorrelatesPatches) {
    auto b = make_cpu_backend(2);
    Network net(*b, NetConfig{});
    Rng rng(3);
    net.init(rng);
    // correlated images: smooth random fields per channel, channels mixed
    const int N = 64, S = 32;
    std::vector<float> x(size_t(N) * S * S * 3);
    for (int n = 0; n < N; ++n) {
        float a = rng.normal(), bb = rng.normal(), c = rng.normal(), ph = rng.uniform(0, 6);
        for (int i = 0; i < S; ++i)
            for (int j = 0; j < S; ++j) {
                const float base = a * std::sin(0.3f * i + ph) + bb * std::cos(0.2f * j) + 0.3f * rng.normal();
                float* p = &x[((size_t(n) * S + i) * S + j) * 3];
                p[0] = base + 0.1f * c;
                p[1] = 0.8f * base + 0.2f * rng.normal();
                p[2] = 0.5f * base - c + 0.2f * rng.normal();
            }
    }
    DeviceBuffer<float> xd(*b, x.size());
    b->upload(xd.get(), x.data(), x.size() * 4);
    net.init_whitening(xd.get(), N, 5e-4f);
    // covariance of the whitened 2x2 patches: responses of filters 0..11 (the +v half)
    std::vector<float> h;
    net.download(h);
    const auto& s = net.tensor("whiten.weight");
    const float* w = h.data() + s.offset;  // (24, 2, 2, 3)
    double cov[12][12] = {};
    long count = 0;
    for (int n = 0; n < N; ++n)
        for (int i = 0; i + 1 < S; ++i)
            for (int j = 0; j + 1 < S; ++j, ++count) {
                double r[12];
                for (int f = 0; f < 12; ++f) {
                    double acc = 0;
                    for (int dy = 0; dy < 2; ++dy)
                        for (int dx = 0; dx < 2; ++dx)
                            for (int c = 0; c < 3; ++c)
                                acc += w[((f * 2 + dy) * 2 + dx) * 3 + c] * x[((size_t(n) * S + i + dy) * S + j + dx) * 3 + c];
                    r[f] = acc;
                }
                for (int a = 0; a < 12; ++a)
                    for (int c = 0; c < 12; ++c) cov[a][c] += r[a] * r[c];
            }
    for (int a = 0; a < 12; ++a)
        for (int c = 0; c < 12; ++c) {
            const double v = cov[a][c] / count;
            if (a == c) EXPECT_NEAR(v, 1.0, 0.1) << a;  // lambda / (lambda + eps) ~ 1
            else EXPECT_NEAR(v, 0.0, 1e-3) << a << "," << c;
        }
    // the second half is the negation of the first
    for (int i = 0; i < 12 * 12; ++i) EXPECT_EQ(w[12 * 12 + i], -w[i]);
}

// A forward-only workspace (evaluation) computes what a training one computes, in either BN mode,
// for every network family; it has no gradient buffers, so its backward is refused. (The
// convolutions take the fixed rule here: under "fastest" a forward-only conv's path is timed by
// its forward alone, so it may round differently from the training workspace's.)
TEST(Network, ForwardOnlyWorkspaceGivesTheSameLogits) {
    cpu::set_conv_algorithm(cpu::ConvAlgorithm::winograd);
    struct Restore {
        ~Restore() { cpu::set_conv_algorithm(cpu::ConvAlgorithm::fastest); }
    } restore;
    auto b = make_cpu_backend(2);
    for (const char* preset : {"airbench96", "hiverge", "tricks10", "myrtle-baseline"}) {
        SCOPED_TRACE(preset);
        const Recipe r = load_recipe(preset, "");
        Network net(*b, r.net);
        Rng rng(3);
        net.init(rng);
        const int N = 32, O = r.net.num_classes;  // (tricks10: ghost BN in 16 slices)
        std::vector<float> x(size_t(N) * r.net.image_side * r.net.image_side * 3);
        for (auto& v : x) v = rng.normal();
        DeviceBuffer<float> xd(*b, x.size());
        b->upload(xd.get(), x.data(), x.size() * sizeof(float));
        Workspace trains(net, N), forward_only(net, N, false);
        EXPECT_TRUE(trains.trains());
        EXPECT_FALSE(forward_only.trains());
        for (bool train_mode : {false, true}) {
            std::vector<float> a(size_t(N) * O), c(a.size());
            b->download(a.data(), trains.forward(xd.get(), train_mode), a.size() * sizeof(float));
            b->download(c.data(), forward_only.forward(xd.get(), train_mode), c.size() * sizeof(float));
            EXPECT_EQ(a, c) << (train_mode ? "batch statistics" : "running statistics");
            EXPECT_NE(a, std::vector<float>(a.size(), 0.f));
        }
        EXPECT_NE(test::error_of([&] { forward_only.backward(forward_only.logits(), true); }), "");
    }
}

}  // namespace
}  // namespace sr
