// test_golden.cpp: our network against PyTorch running the peer's own airbench94 code
// (tests/data/golden_airbench.json, written by tools/make_golden.py; regenerate it with
// `tools/make_golden.py` when the network's conventions change on purpose).
// Checked: logits and summed loss in training mode, every gradient, BN running statistics after
// the forward pass, every parameter after one optimizer step (lr multiplier 0.2), and after one
// lookahead update with decay 0.5 (which also covers the running statistics).
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/network.h"
#include "optim/optimizer.h"
#include "train/recipe.h"
#include "test_util.h"

namespace sr {
namespace {

nlohmann::json load_golden() {
    const std::string path = std::string(SPEEDRUN_SOURCE_DIR) + "/tests/data/golden_airbench.json";
    std::ifstream f(path);
    if (!f) throw std::runtime_error(path + ": missing; run tools/make_golden.py to make it");
    auto j = nlohmann::json::parse(f);
    if (j.value("format", "") != "speedrun-golden" || j.value("version", 0) != 1)
        throw std::runtime_error(path + ": not a version-1 golden file; rerun tools/make_golden.py");
    return j;
}

std::vector<float> part(const Network& net, const std::vector<float>& all, const std::string& name) {
    const auto& s = net.tensor(name);
    return {all.begin() + s.offset, all.begin() + s.offset + s.count};
}

TEST(Golden, MatchesPyTorchAirbench94) {
    const auto j = load_golden();
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe("airbench94", "");
    auto w = j["widths"].get<std::vector<int>>();
    r.net.widths = {w[0], w[1], w[2]};
    Network net(*b, r.net);
    std::vector<float> h(net.size(), 0.f);
    for (const auto& [name, vals] : j["params"].items()) {
        const auto& s = net.tensor(name);
        auto v = vals.get<std::vector<float>>();
        ASSERT_EQ(v.size(), s.count) << name;
        std::copy(v.begin(), v.end(), h.begin() + s.offset);
    }
    net.upload(h);
    const int N = j["N"];
    Workspace ws(net, N);
    auto x = j["input_nhwc"].get<std::vector<float>>();
    auto labels = j["labels"].get<std::vector<int32_t>>();
    DeviceBuffer<float> xd(*b, x.size()), st(*b, 2);
    DeviceBuffer<int32_t> yd(*b, labels.size());
    b->upload(xd.get(), x.data(), x.size() * 4);
    b->upload(yd.get(), labels.data(), labels.size() * 4);

    const float* logits = ws.forward(xd.get(), true);
    std::vector<float> lg(size_t(N) * 10);
    b->download(lg.data(), logits, lg.size() * 4);
    // fp32 both sides, different summation orders: 1e-4 relative
    EXPECT_TRUE(test::all_close(lg, j["logits"].get<std::vector<float>>(), 1e-5, 1e-4));
    b->cross_entropy(ws.dlogits(), st.get(), logits, yd.get(), N, 10, r.label_smoothing);
    float s[2];
    b->download(s, st.get(), 8);
    EXPECT_NEAR(s[0], j["loss"].get<double>(), 1e-4 * j["loss"].get<double>());

    ws.backward(ws.dlogits(), true);
    std::vector<float> g(net.size());
    b->download(g.data(), net.grads.get(), g.size() * 4);
    for (const auto& [name, vals] : j["grads"].items()) {
        SCOPED_TRACE("gradient of " + name);
        auto ref = vals.get<std::vector<float>>();
        double mx = 0;
        for (float v : ref) mx = std::max(mx, double(std::abs(v)));
        // BN with eps 1e-12 at 4 images amplifies rounding: 1e-3 of the tensor's largest value
        EXPECT_TRUE(test::all_close(part(net, g, name), ref, 1e-3 * mx + 1e-7, 1e-3));
    }
    std::vector<float> now;
    net.download(now);
    for (const auto& [name, vals] : j["after_forward"].items()) {
        SCOPED_TRACE("running statistic " + name);
        EXPECT_TRUE(test::all_close(part(net, now, name), vals.get<std::vector<float>>(), 1e-5, 1e-4));
    }

    Optimizer opt(net, r);
    opt.reset_ema();  // the lookahead snapshot before the step, as the generator takes it
    opt.step(0.2, true);
    net.download(now);
    for (const auto& [name, vals] : j["after_step"].items()) {
        SCOPED_TRACE("after one step: " + name);
        EXPECT_TRUE(test::all_close(part(net, now, name), vals.get<std::vector<float>>(), 1e-5, 1e-4));
    }
    opt.lookahead(0.5);
    net.download(now);
    for (const auto& [name, vals] : j["after_lookahead"].items()) {
        SCOPED_TRACE("after lookahead: " + name);
        EXPECT_TRUE(test::all_close(part(net, now, name), vals.get<std::vector<float>>(), 1e-5, 1e-4));
    }
}

}  // namespace
}  // namespace sr
