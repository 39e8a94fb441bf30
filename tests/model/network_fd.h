// network_fd.h: a whole network's parameter gradients against central finite differences of
// the summed loss (shared by the resnet9 and dawn tests): BN biases (and trainable scales) are
// perturbed away from their init first so their gradients are not trivially special; 4 probes
// per learnable tensor.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.h"
#include "model/network.h"
#include "test_util.h"

namespace sr::test {

inline double loss_of(Backend& b, Workspace& ws, const std::vector<float>& x, const std::vector<int32_t>& y,
               bool backward) {
    DeviceBuffer<float> xd(b, x.size()), st(b, 2);
    DeviceBuffer<int32_t> yd(b, y.size());
    b.upload(xd.get(), x.data(), x.size() * 4);
    b.upload(yd.get(), y.data(), y.size() * 4);
    const float* logits = ws.forward(xd.get(), true);
    b.cross_entropy(ws.dlogits(), st.get(), logits, yd.get(), int(y.size()), 10, 0.2f);
    if (backward) ws.backward(ws.dlogits(), false);
    float s[2];
    b.download(s, st.get(), 8);
    return s[0];
}

inline void gradients_match_fd(const NetConfig& cfg, int N) {
    auto b = make_cpu_backend(2);
    Network net(*b, cfg);
    Rng rng(7);
    net.init(rng);
    std::vector<float> h;
    net.download(h);
    for (const auto& t : net.tensors()) {
        if (t.name == "whiten.weight")
            for (size_t i = 0; i < t.count; ++i) h[t.offset + i] = 0.3f * rng.normal();
        if (t.group == ParamGroup::bn_bias)
            for (size_t i = 0; i < t.count; ++i) h[t.offset + i] = 0.2f * rng.normal();
        if (t.group == ParamGroup::bn_scale)
            for (size_t i = 0; i < t.count; ++i) h[t.offset + i] = 1.f + 0.2f * rng.normal();
    }
    net.upload(h);
    Workspace ws(net, N);
    const int side = cfg.image_side;
    const auto x = test::randn(size_t(N) * side * side * 3, 8);
    std::vector<int32_t> y(static_cast<size_t>(N));
    for (int i = 0; i < N; ++i) y[size_t(i)] = (3 * i + 1) % 10;
    loss_of(*b, ws, x, y, true);
    std::vector<float> g(net.size());
    b->download(g.data(), net.grads.get(), g.size() * 4);
    std::vector<std::string> names;
    for (const auto& t : net.tensors())
        if (t.group == ParamGroup::weight || t.group == ParamGroup::bn_bias || t.group == ParamGroup::bn_scale)
            names.push_back(t.name);
    ASSERT_GE(names.size(), 10u);
    for (const auto& name : names) {
        SCOPED_TRACE(name);
        const auto& s = net.tensor(name);
        double gmax = 0;
        for (size_t i = 0; i < s.count; ++i) gmax = std::max(gmax, double(std::abs(g[s.offset + i])));
        ASSERT_GT(gmax, 0) << "gradient is all zero";
        Rng pick(11);
        for (int probe = 0; probe < 4; ++probe) {
            const size_t i = s.offset + pick.below(uint32_t(s.count));
            // central difference of the loss in parameter i
            auto central = [&](double eps) {
                const float v0 = h[i];
                h[i] = v0 + float(eps);
                net.upload(h);
                const double lp = loss_of(*b, ws, x, y, false);
                h[i] = v0 - float(eps);
                net.upload(h);
                const double lm = loss_of(*b, ws, x, y, false);
                h[i] = v0;
                net.upload(h);
                return (lp - lm) / (2 * eps);
            };
            // eps 1e-3: max pools over 16x16 maps make eps 1e-2 cross kinks (its differences were
            // off by up to 100% in the first layers, 1e-3 agrees); float forwards of a loss ~10
            // carry ~1e-5 / 2e-3 of noise
            double fd = central(1e-3);
            // a max-pool kink within +-eps shows as a difference that changes with eps: look
            // again from closer (measured: -0.0494 at 1e-3, -0.0207 at 3e-4, g -0.0209)
            if (std::abs(g[i] - fd) > 0.03 * gmax + 0.05 * std::abs(fd)) fd = central(3e-4);
            EXPECT_NEAR(g[i], fd, 0.03 * gmax + 0.05 * std::abs(fd)) << "element " << i - s.offset;
        }
    }
}

}  // namespace sr::test
