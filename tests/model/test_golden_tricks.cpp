// test_golden_tricks.cpp: the tricks10 preset (resnet9 network, ghost BN, CELU, Nesterov with the
// lr inside the velocity, EMA) against PyTorch running the peer's own code
// (tests/data/golden_tricks.json, written by tools/make_golden_tricks.py from
// cifar10-fast-simple's model.py and train.py). Checked: logits and summed loss in training mode,
// every gradient, the BN running statistics of every ghost slice, every tensor after two optimizer
// steps (lr from the peer's schedule), the EMA after the first step, and the EMA model's logits
// in eval mode.
#include <cmath>

#include <nlohmann/json.hpp>

#include "model/network.h"
#include "optim/optimizer.h"
#include "train/recipe.h"
#include "golden_util.h"
#include "test_util.h"

namespace sr {
namespace {

const nlohmann::json& golden() {
    static const nlohmann::json j =
        golden::load("golden_tricks.json", "speedrun-golden-tricks", "tools/make_golden_tricks.py");
    return j;
}


TEST(GoldenTricks, MatchesPyTorchCifar10FastSimple) {
    const auto& j = golden()["tricks10"];
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe("tricks10", "");
    ASSERT_EQ(r.net.ghost_splits, 16);  // the peer's; the reference uses 2 for a batch of 8
    r.net.ghost_splits = j["ghost_splits"];
    r.net.widths = j["widths"].get<std::vector<int>>();
    Network net(*b, r.net);
    ASSERT_EQ(golden::upload_params(net, j["params"]), net.size())
        << "every tensor of ours has a counterpart in the peer's state";
    b->copy(net.ema.get(), net.params.get(), net.size() * sizeof(float));  // the peer's deepcopy
    const int N = j["N"];
    Workspace ws(net, N);
    golden::Batch in(*b, j);
    Optimizer opt(net, r);
    const int total = 970, spe = 97;
    golden::expect_two_steps(*b, net, ws, in, opt, r.label_smoothing, total, spe, j,
                             [&](int step, const std::vector<float>& before) {
        if (step % r.ema_every != 0) return;
        opt.ema_update(r.ema_decay);  // (the EMA alone: the step's tensors are checked before it)
        if (step != 0) return;
        std::vector<float> ema(net.size());
        b->download(ema.data(), net.ema.get(), ema.size() * 4);
        golden::expect_tensors(net, ema, j["ema_after_step0"], "EMA after step 0", 1e-4);
        golden::expect_updates(net, before, ema, j["params"], j["ema_after_step0"], "EMA step 0", 1e-3);
    });
    // the EMA model in eval mode (the first ghost slice's running statistics)
    b->copy(net.params.get(), net.ema.get(), net.size() * sizeof(float));
    std::vector<float> lg(size_t(N) * 10);
    b->download(lg.data(), ws.forward(in.xd.get(), false), lg.size() * 4);
    EXPECT_TRUE(test::all_close(lg, j["ema_eval_logits"].get<std::vector<float>>(), 1e-4, 1e-3));
}

// The peer's lr table: linspace(0, 2e-3, 194) then linspace(2e-3, 2e-4, 582), read at batch
// count step + 1, clamped at its last entry.
TEST(GoldenTricks, LrScheduleIsThePeersTable) {
    auto b = make_cpu_backend(1);
    Recipe r = load_recipe("tricks10", "");
    r.net.widths = {4, 4, 4, 4};
    Network net(*b, r.net);
    Optimizer opt(net, r);
    auto table = [](int i) {
        if (i < 194) return 2e-3 * i / 193.0;
        i = std::min(i, 775) - 194;
        return 2e-3 + (2e-4 - 2e-3) * i / 581.0;
    };
    for (int step : {0, 1, 100, 192, 193, 194, 500, 773, 774, 775, 969})
        EXPECT_NEAR(r.lr * opt.lr_multiplier_at(step, 970, 97), table(step + 1), 1e-12) << step;
}

}  // namespace
}  // namespace sr
