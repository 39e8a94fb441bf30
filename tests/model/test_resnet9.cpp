// test_resnet9.cpp: the resnet9 family (cifar10-fast's ResNet-9 and cifar10-fast-simple's bag
// of tricks): layout and FLOPs against hand counts, whole-network gradients against finite
// differences (both pool placements, ghost BN, residual pairs), ghost BN against per-slice BN,
// and the init (no dirac, PyTorch's uniform).
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "io/reports.h"
#include "model/network.h"
#include "network_fd.h"
#include "test_util.h"

namespace sr {
namespace {

NetConfig tricks_like() {
    NetConfig c;
    c.arch = Arch::resnet9;
    c.widths = {64, 128, 256, 512};
    c.whiten_kernel = 3;
    c.act = Activation::celu;
    c.ghost_splits = 16;
    c.bn_eps = 1e-5f;
    c.bn_momentum = 0.1f;
    c.scaling_factor = 0.125f;
    c.final_pool = 4;
    return c;
}

TEST(ResNet9, LayoutAndFlopsOfTheBagOfTricksNet) {
    auto b = make_cpu_backend(2);
    Network net(*b, tricks_like());
    EXPECT_EQ(net.tensor("whiten.weight").count, 27u * 27);
    EXPECT_EQ(net.tensor("prep.conv.weight").count, 64u * 27);  // 1x1
    EXPECT_EQ(net.tensor("layer1.conv.weight").count, 128u * 9 * 64);
    EXPECT_EQ(net.tensor("layer1.res2.conv.weight").count, 128u * 9 * 128);
    EXPECT_EQ(net.tensor("layer3.res1.conv.weight").count, 512u * 9 * 512);
    EXPECT_THROW(net.tensor("layer2.res1.conv.weight"), Error);  // no residual pair in layer 2
    EXPECT_EQ(net.tensor("layer3.norm.running_mean").count, 16u * 512);  // one per ghost slice
    // learnable: conv weights + head + BN biases (BN scales frozen), as the peer's parameters
    // with requires_grad (whitening frozen)
    const size_t convs = 64 * 27 + 128 * 9 * 64 + 2 * 128 * 9 * 128 + 256 * 9 * 128 + 512 * 9 * 256 +
                         2 * 512 * 9 * 512;
    EXPECT_EQ(net.learnable_count(), convs + 5120 + (64 + 3 * 128 + 256 + 3 * 512));
    // hand count: whitening 2*1024*27*27, prep 2*1024*64*27, the 3x3 convs at 32, 16, 16, 16, 8, 4, 4
    const double f = 2.0 * 1024 * 27 * 27 + 2.0 * 1024 * 64 * 27 + 2.0 * 1024 * 128 * 64 * 9 +
                     2 * 2.0 * 256 * 128 * 128 * 9 + 2.0 * 256 * 256 * 128 * 9 + 2.0 * 64 * 512 * 256 * 9 +
                     2 * 2.0 * 16 * 512 * 512 * 9 + 2.0 * 512 * 10;
    EXPECT_DOUBLE_EQ(net.flops_per_image_forward(), f);
    size_t prev_end = 0;
    for (auto g : {ParamGroup::whiten_bias, ParamGroup::weight, ParamGroup::bn_bias, ParamGroup::bn_scale,
                   ParamGroup::frozen, ParamGroup::buffer}) {
        auto [beg, end] = net.group_range(g);
        if (end == 0) continue;
        EXPECT_EQ(beg, prev_end);
        prev_end = end;
    }
    EXPECT_EQ(prev_end, net.size());
}

TEST(ResNet9, InitIsPyTorchsUniformWithoutDirac) {
    auto b = make_cpu_backend(2);
    Network net(*b, tricks_like());
    Rng rng(5);
    net.init(rng);
    std::vector<float> h;
    net.download(h);
    auto t = [&](const char* n) {
        const auto& s = net.tensor(n);
        return std::vector<float>(h.begin() + s.offset, h.begin() + s.offset + s.count);
    };
    const auto w = t("layer1.res1.conv.weight");  // 128 -> 128: would be all dirac in airbench
    float mx = 0;
    for (float v : w) mx = std::max(mx, std::abs(v));
    EXPECT_LE(mx, 1 / std::sqrt(1152.f));
    EXPECT_GT(mx, 0.99f / std::sqrt(1152.f));
    EXPECT_LT(std::abs(std::accumulate(w.begin(), w.end(), 0.0)), 30.0);  // dirac would give 128 + noise
    for (float v : t("layer3.norm.running_var")) ASSERT_EQ(v, 1.f);
    for (float v : t("layer3.norm.weight")) ASSERT_EQ(v, 1.f);
    for (float v : t("head.weight")) ASSERT_LE(std::abs(v), 1 / std::sqrt(512.f));
}

// cifar10-fast-simple's shape at tiny widths: whitening + 1x1 prep, pool before BN, ghost BN
// over 2 slices, residual pairs in layers 1 and 3, CELU
TEST(ResNet9, GradientsMatchFiniteDifferencesBagOfTricks) {
    NetConfig c = tricks_like();
    c.widths = {4, 6, 8, 8};
    c.ghost_splits = 2;
    c.image_side = 16;  // fewer pooling windows, fewer kinks (the final pool takes the 2x2 left)
    c.final_pool = 2;
    test::gradients_match_fd(c, 4);
}

// cifar10-fast's shape: a 3x3 prep on the image, pool after the activation, trainable BN
// scales, a residual pair in layer 2 only (smooth GELU keeps the differences away from kinks)
TEST(ResNet9, GradientsMatchFiniteDifferencesPageOrder) {
    NetConfig c = tricks_like();
    c.widths = {4, 6, 8, 8};
    c.whiten_kernel = 0;
    c.ghost_splits = 1;
    c.pool_before_norm = false;
    c.bn_train_scale = true;
    c.residual = {2};
    c.act = Activation::gelu;
    c.image_side = 16;
    c.final_pool = 2;
    test::gradients_match_fd(c, 3);
}

// Ghost BN with S slices = S independent BN batches: the network on a batch of 2 x 2 images
// gives the logits of two separate 2-image batches, and updates slice j's running statistics
// with batch j alone; evaluation reads slice 0.
TEST(ResNet9, GhostSlicesAreIndependentBatches) {
    auto b = make_cpu_backend(2);
    NetConfig c = tricks_like();
    c.widths = {4, 6, 8, 8};
    c.ghost_splits = 2;
    NetConfig c1 = c;
    c1.ghost_splits = 1;
    Network net(*b, c), one(*b, c1);
    Rng rng(3);
    net.init(rng);
    std::vector<float> h;
    net.download(h);
    // the same weights in the single-slice net (running stats: its C from slice 0)
    std::vector<float> h1(one.size());
    for (const auto& t : one.tensors()) {
        const auto& s = net.tensor(t.name);
        std::copy_n(h.begin() + s.offset, t.count, h1.begin() + t.offset);
    }
    one.upload(h1);
    const auto x = test::randn(size_t(4) * 32 * 32 * 3, 21);
    DeviceBuffer<float> xd(*b, x.size());
    b->upload(xd.get(), x.data(), x.size() * 4);
    Workspace ws(net, 4), ws1(one, 2);
    std::vector<float> both(40), a(20), bb(20);
    b->download(both.data(), ws.forward(xd.get(), true), 160);
    std::vector<float> h1_after_first;
    b->download(a.data(), ws1.forward(xd.get(), true), 80);
    one.download(h1_after_first);
    one.upload(h1);  // the second half from the same starting statistics
    b->download(bb.data(), ws1.forward(xd.get() + 2 * 32 * 32 * 3, true), 80);
    std::vector<float> h1_after_second;
    one.download(h1_after_second);
    for (int i = 0; i < 20; ++i) {
        EXPECT_NEAR(both[i], a[i], 1e-5) << i;
        EXPECT_NEAR(both[20 + i], bb[i], 1e-5) << i;
    }
    std::vector<float> after;
    net.download(after);
    for (const char* name : {"layer3.norm.running_mean", "layer1.res2.norm.running_var"}) {
        SCOPED_TRACE(name);
        const auto& s = net.tensor(name);
        const auto& s1 = one.tensor(name);
        for (size_t k = 0; k < s1.count; ++k) {
            EXPECT_NEAR(after[s.offset + k], h1_after_first[s1.offset + k], 1e-5);
            EXPECT_NEAR(after[s.offset + s1.count + k], h1_after_second[s1.offset + k], 1e-5);
        }
    }
}

// The whitening layer: 27 filters of 3x3 (no negated copies), same padding; on correlated
// images the responses at interior positions are decorrelated with unit variance.
TEST(ResNet9, WhiteningDecorrelatesPatches) {
    auto b = make_cpu_backend(2);
    NetConfig c = tricks_like();
    c.widths = {4, 4, 4, 4};
    Network net(*b, c);
    Rng rng(3);
    net.init(rng);
    const int N = 48, S = 32, D = 27;
    std::vector<float> x(size_t(N) * S * S * 3);
    for (int n = 0; n < N; ++n) {
        const float a = rng.normal(), cc = rng.normal(), ph = rng.uniform(0, 6);
        for (int i = 0; i < S; ++i)
            for (int j = 0; j < S; ++j) {
                const float base = a * std::sin(0.3f * i + ph) + 0.5f * std::cos(0.2f * j) + 0.3f * rng.normal();
                float* p = &x[((size_t(n) * S + i) * S + j) * 3];
                p[0] = base + 0.1f * cc;
                p[1] = 0.8f * base + 0.2f * rng.normal();
                p[2] = 0.5f * base - cc + 0.2f * rng.normal();
            }
    }
    DeviceBuffer<float> xd(*b, x.size());
    b->upload(xd.get(), x.data(), x.size() * 4);
    net.init_whitening(xd.get(), N, 1e-4f);
    std::vector<float> h;
    net.download(h);
    const auto& ws = net.tensor("whiten.weight");
    ASSERT_EQ(ws.count, size_t(D) * D);
    const float* w = h.data() + ws.offset;  // (27, 3, 3, 3) OHWI
    std::vector<double> cov(size_t(D) * D, 0.0);
    long count = 0;
    for (int n = 0; n < N; ++n)
        for (int i = 0; i + 2 < S; ++i)
            for (int j = 0; j + 2 < S; ++j, ++count) {
                double r[27];
                for (int f = 0; f < D; ++f) {
                    double acc = 0;
                    for (int dy = 0; dy < 3; ++dy)
                        for (int dx = 0; dx < 3; ++dx)
                            for (int ch = 0; ch < 3; ++ch)
                                acc += w[((f * 3 + dy) * 3 + dx) * 3 + ch] * x[((size_t(n) * S + i + dy) * S + j + dx) * 3 + ch];
                    r[f] = acc;
                }
                for (int a = 0; a < D; ++a)
                    for (int bb = 0; bb < D; ++bb) cov[size_t(a) * D + bb] += r[a] * r[bb];
            }
    for (int a = 0; a < D; ++a)
        for (int bb = 0; bb < D; ++bb) {
            const double v = cov[size_t(a) * D + bb] / count;
            if (a == bb) EXPECT_NEAR(v, 1.0, 0.15) << a;  // lambda / (lambda + eps)
            else EXPECT_NEAR(v, 0.0, 2e-3) << a << "," << bb;
        }
}

// describe --svg: the diagram shows the unit order, ghost BN, CELU and the residual adds
TEST(ResNet9, DiagramShowsUnitsAndResidualAdds) {
    const std::string dot = network_dot(tricks_like());
    for (const char* want : {"layer1add", "layer3add", "ghost BN x16", "CELU(0.3)", "conv 1x1 27->64",
                             "whitening conv 3x3", "max pool 4"})
        EXPECT_NE(dot.find(want), std::string::npos) << want << "\n" << dot;
    EXPECT_EQ(dot.find("layer2add"), std::string::npos);
    // pool before BN: "max pool 2" precedes "ghost BN" inside layer1's label
    const size_t l1 = dot.find("layer1 [label");
    ASSERT_NE(l1, std::string::npos);
    EXPECT_LT(dot.find("max pool 2", l1), dot.find("ghost BN", l1));
}

}  // namespace
}  // namespace sr
