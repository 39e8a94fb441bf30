// test_golden_page24.cpp: the page24 preset (David Page's DAWNBench ResNet-9: 3x3 prep conv, ReLU,
// pool after the ReLU, trainable BN scales, PyTorch's Nesterov SGD with weight decay on every
// tensor) against PyTorch running his own dawn.py (tests/data/golden_page24.json, written by
// tools/make_golden_page24.py from cifar10-fast's dawn.py, core.py and torch_backend.py at the
// commit the preset cites). Checked: logits and summed loss in training mode, every gradient, the
// BN running statistics, every tensor and every tensor's change after two optimizer steps (lr from
// dawn.py's schedule at step counts 1 and 2), and the logits in eval mode after them.
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
        golden::load("golden_page24.json", "speedrun-golden-page24", "tools/make_golden_page24.py");
    return j;
}

TEST(GoldenPage24, MatchesPyTorchDawnPy) {
    const auto& j = golden()["page24"];
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe("page24", "");
    EXPECT_EQ(r.epochs, j["epochs"].get<double>());
    // dawn.py's normalise: core.py's cifar10_mean and cifar10_std
    const auto mean = j["cifar10_mean"].get<std::vector<float>>(), sd = j["cifar10_std"].get<std::vector<float>>();
    for (int c = 0; c < 3; ++c) {
        EXPECT_FLOAT_EQ(r.mean[c], mean[c]);
        EXPECT_FLOAT_EQ(r.std[c], sd[c]);
    }
    r.net.widths = j["widths"].get<std::vector<int>>();
    Network net(*b, r.net);
    ASSERT_EQ(golden::upload_params(net, j["params"]), net.size())
        << "every tensor of ours has a counterpart in the peer's state";
    const int N = j["N"];
    Workspace ws(net, N);
    golden::Batch in(*b, j);
    Optimizer opt(net, r);
    const int spe = j["batches_per_epoch"], total = int(r.epochs) * spe;
    // each update's lr: the schedule at step count step + 1, per image of dawn.py's batch
    for (int step = 0; step < 2; ++step)
        EXPECT_NEAR(r.lr * opt.lr_multiplier_at(step, total, spe), j["lr"][step].get<double>(), 1e-12);
    golden::expect_two_steps(*b, net, ws, in, opt, r.label_smoothing, total, spe, j);
    std::vector<float> lg(size_t(N) * 10);
    b->download(lg.data(), ws.forward(in.xd.get(), false), lg.size() * 4);
    EXPECT_TRUE(test::all_close(lg, j["eval_logits"].get<std::vector<float>>(), 1e-4, 1e-3));
}

// dawn.py's schedule over the whole run: PiecewiseLinear([0, 5, 24], [0, 0.4, 0]) at step count /
// 97, divided by its batch of 512 (TorchOptimiser counts the step before each update).
TEST(GoldenPage24, LrScheduleIsDawnPys) {
    auto b = make_cpu_backend(1);
    Recipe r = load_recipe("page24", "");
    r.net.widths = {4, 4, 4, 4};
    Network net(*b, r.net);
    Optimizer opt(net, r);
    const int spe = 50000 / 512, total = 24 * spe;
    auto dawn = [&](int count) {
        const double t = double(count) / spe;
        return (t < 5 ? 0.4 * t / 5 : 0.4 * (24 - t) / 19) / 512;
    };
    for (int step : {0, 1, 96, 484, 485, 486, 1000, 2326, 2327})
        EXPECT_NEAR(r.lr * opt.lr_multiplier_at(step, total, spe), std::max(0.0, dawn(step + 1)), 1e-12) << step;
}

}  // namespace
}  // namespace sr
