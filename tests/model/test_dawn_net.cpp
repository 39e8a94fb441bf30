// test_dawn_net.cpp: the dawn family (DAWN_net, the myrtle presets): layout and FLOPs against a
// hand count, whole-network gradients against finite differences (strided convs, projection and
// identity shortcuts, concatenated pooling, the head bias), the init (U(0,1) BN scales, PyTorch's
// linear bias), and the identity shortcut taking the activation (not the block input).
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "io/reports.h"
#include "model/network.h"
#include "network_fd.h"
#include "test_util.h"

namespace sr {
namespace {

NetConfig dawn() {
    NetConfig c;
    c.arch = Arch::dawn;
    c.widths = {64, 128, 256, 256};
    c.whiten_kernel = 0;
    c.act = Activation::relu;
    c.bn_eps = 1e-5f;
    c.bn_momentum = 0.1f;
    c.bn_train_scale = true;
    c.bn_scale_init = "uniform";
    c.scaling_factor = 1.f;
    c.final_pool = 4;
    return c;
}

TEST(DawnNet, LayoutAndFlopsByHand) {
    auto b = make_cpu_backend(1);
    Network net(*b, dawn());
    EXPECT_EQ(net.tensor("prep.conv.weight").count, 64u * 27);
    EXPECT_EQ(net.tensor("layer1.block0.conv1.weight").count, 64u * 9 * 64);
    EXPECT_THROW(net.tensor("layer1.block0.conv3.weight"), Error);  // same width, stride 1: identity
    EXPECT_EQ(net.tensor("layer2.block0.conv3.weight").count, 128u * 64);  // 1x1 projection
    EXPECT_THROW(net.tensor("layer2.block1.conv3.weight"), Error);
    EXPECT_EQ(net.tensor("layer4.block0.conv3.weight").count, 256u * 256);  // stride 2, same width
    EXPECT_EQ(net.tensor("layer3.block0.bn1.weight").count, 128u);  // pre-activation: the input's
    EXPECT_EQ(net.tensor("head.weight").count, 10u * 512);            // max and mean concatenated
    EXPECT_EQ(net.tensor("head.bias").count, 10u);
    // conv FLOPs at the output sides 32 (prep, layer 1), 16, 8, 4
    double f = 2.0 * 1024 * 64 * 27 + 4 * 2.0 * 1024 * 64 * 64 * 9;
    f += 2.0 * 256 * (128 * 64 * 9 + 128 * 128 * 9 * 3 + 128 * 64);
    f += 2.0 * 64 * (256 * 128 * 9 + 256 * 256 * 9 * 3 + 256 * 128);
    f += 2.0 * 16 * (256 * 256 * 9 * 4 + 256 * 256);
    f += 2.0 * 512 * 10;
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
    NetConfig bad = dawn();
    bad.final_pool = 2;  // the head pools the whole 4x4 map
    Network wrong(*b, bad);
    EXPECT_THROW(Workspace(wrong, 2), Error);
}

TEST(DawnNet, InitHasUniformBnScalesAndPyTorchsLinearBias) {
    auto b = make_cpu_backend(1);
    Network net(*b, dawn());
    Rng rng(5);
    net.init(rng);
    std::vector<float> h;
    net.download(h);
    auto t = [&](const char* n) {
        const auto& s = net.tensor(n);
        return std::vector<float>(h.begin() + s.offset, h.begin() + s.offset + s.count);
    };
    const auto scale = t("layer3.block1.bn2.weight");
    const double mean = std::accumulate(scale.begin(), scale.end(), 0.0) / double(scale.size());
    for (float v : scale) ASSERT_TRUE(v >= 0.f && v < 1.f);
    EXPECT_NEAR(mean, 0.5, 0.06);  // 256 draws of U(0, 1): std of the mean 0.018
    for (float v : t("layer3.block1.bn2.bias")) ASSERT_EQ(v, 0.f);
    for (float v : t("layer3.block1.bn2.running_var")) ASSERT_EQ(v, 1.f);
    float mx = 0;
    for (float v : t("head.bias")) mx = std::max(mx, std::abs(v));
    EXPECT_GT(mx, 0.f);
    EXPECT_LE(mx, 1 / std::sqrt(512.f));
    for (float v : t("layer2.block0.conv3.weight")) ASSERT_LE(std::abs(v), 1 / std::sqrt(64.f));
    NetConfig one = dawn();
    one.bn_scale_init = "one";
    Network net1(*b, one);
    net1.init(rng);
    net1.download(h);
    const auto& s = net1.tensor("layer3.block1.bn2.weight");
    for (size_t i = 0; i < s.count; ++i) ASSERT_EQ(h[s.offset + i], 1.f);
}

// Tiny widths on 16x16 images (the last map is 2x2, pooled whole); GELU keeps the differences
// away from ReLU kinks. Every learnable tensor is probed.
TEST(DawnNet, GradientsMatchFiniteDifferences) {
    NetConfig c = dawn();
    c.widths = {4, 6, 8, 8};
    c.image_side = 16;
    c.final_pool = 2;
    c.act = Activation::gelu;
    test::gradients_match_fd(c, 3);
}

// DAWN_net's identity shortcut adds the block's activation a = relu(BN1(x)), not x. So the prep
// conv's output reaches the rest of the network only through layer1.block0's BN1 (branch and
// shortcut both start at a): scaling the prep weights by 2 must leave the logits unchanged (BN1's
// batch statistics undo it, up to eps), whereas a shortcut of x would pass the factor on.
TEST(DawnNet, IdentityShortcutAddsTheActivation) {
    auto b = make_cpu_backend(1);
    NetConfig c = dawn();
    c.widths = {4, 6, 8, 8};
    c.image_side = 16;
    c.final_pool = 2;
    Network net(*b, c);
    Rng rng(9);
    net.init(rng);
    std::vector<float> h;
    net.download(h);
    const int N = 4;
    Workspace ws(net, N);
    auto x = test::randn(size_t(N) * 16 * 16 * 3, 4);
    DeviceBuffer<float> xd(*b, x.size());
    b->upload(xd.get(), x.data(), x.size() * 4);
    std::vector<float> y0(size_t(N) * 10), y1(y0.size());
    b->download(y0.data(), ws.forward(xd.get(), true), y0.size() * 4);
    const auto& wp = net.tensor("prep.conv.weight");
    for (size_t i = 0; i < wp.count; ++i) h[wp.offset + i] *= 2.f;
    net.upload(h);
    b->download(y1.data(), ws.forward(xd.get(), true), y1.size() * 4);
    EXPECT_TRUE(test::all_close(y1, y0, 1e-3, 1e-3)) << "the shortcut carries the block's raw input";
}

TEST(DawnNet, DiagramShowsBlocksAndShortcuts) {
    const std::string dot = network_dot(dawn());
    EXPECT_NE(dot.find("layer4.block1"), std::string::npos);
    EXPECT_NE(dot.find("conv 1x1 64->128 stride 2"), std::string::npos);
    EXPECT_NE(dot.find("style=dashed"), std::string::npos);
    EXPECT_NE(dot.find("concatenated"), std::string::npos);
}

}  // namespace
}  // namespace sr
