// test_golden.cpp: our network against PyTorch running the peer's own airbench94 code
// (tests/data/golden_airbench.json, written by tools/make_golden.py; regenerate it with
// `tools/make_golden.py` when the network's conventions change on purpose).
// Checked: logits and summed loss in training mode, every gradient, BN running statistics after
// the forward pass, every parameter after one optimizer step (lr multiplier 0.2), and after one
// lookahead update with decay 0.5 (which also covers the running statistics).
#include <nlohmann/json.hpp>

#include "model/network.h"
#include "optim/optimizer.h"
#include "train/recipe.h"
#include "golden_util.h"
#include "test_util.h"

namespace sr {
namespace {

using golden::max_abs;
using golden::part;

// The preset's network at the reference's widths against the peer's make_net() in PyTorch:
// logits, loss, every gradient, BN running statistics, one SGD step, one lookahead update.
void matches_pytorch(const std::string& file, const std::string& preset) {
    const auto j = golden::load(file, "speedrun-golden", "tools/make_golden.py");
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe(preset, "");
    auto w = j["widths"].get<std::vector<int>>();
    r.net.widths = {w[0], w[1], w[2]};
    Network net(*b, r.net);
    golden::upload_params(net, j["params"]);
    const int N = j["N"];
    Workspace ws(net, N);
    golden::Batch in(*b, j);

    const float* logits = ws.forward(in.xd.get(), true);
    b->cross_entropy(ws.dlogits(), in.st.get(), logits, in.yd.get(), N, 10, r.label_smoothing);
    ws.backward(ws.dlogits(), true);
    // fp32 both sides, different summation orders
    std::vector<float> g;
    golden::expect_first_pass(*b, net, in, logits, j, 1e-4, g);
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

TEST(Golden, MatchesPyTorchAirbench94) { matches_pytorch("golden_airbench.json", "airbench94"); }

// airbench96.py: 3 convs per group with the residual, BN momentum 0.1
// (tools/make_golden.py --peer airbench96)
TEST(Golden, MatchesPyTorchAirbench96) { matches_pytorch("golden_airbench96.json", "airbench96"); }

}  // namespace
}  // namespace sr
