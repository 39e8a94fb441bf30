// test_golden_dawn.cpp: the dawn network (the myrtle presets' DAWN_net) and their optimizer against
// PyTorch running David Page's own code (tests/data/golden_dawn.json, written by
// tools/make_golden_dawn.py from cifar10-fast's experiments.ipynb, core.py and torch_backend.py).
// Checked: logits and summed loss in training mode, every gradient, the BN running statistics,
// every tensor after two steps of the notebook's SGD (lr from its schedule at step counts 1 and 2),
// and the logits in eval mode after them.
#include <cmath>

#include <nlohmann/json.hpp>

#include "model/network.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/recipe.h"
#include "golden_util.h"
#include "test_util.h"

namespace sr {
namespace {

const nlohmann::json& golden() {
    static const nlohmann::json j =
        golden::load("golden_dawn.json", "speedrun-golden-dawn", "tools/make_golden_dawn.py");
    return j;
}


TEST(GoldenDawn, MatchesPyTorchDawnNet) {
    const auto& j = golden()["dawn"];
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe("myrtle-reg", "");
    ASSERT_EQ(r.batch_size, j["batch_size"].get<int>());  // the reference's lr and wd use it
    r.net.widths = j["widths"].get<std::vector<int>>();
    Network net(*b, r.net);
    ASSERT_EQ(golden::upload_params(net, j["params"]), net.size())
        << "every tensor of ours has a counterpart in the peer's state";
    const int N = j["N"];
    Workspace ws(net, N);
    golden::Batch in(*b, j);
    Optimizer opt(net, r);
    const int spe = j["batches_per_epoch"], total = int(r.epochs) * spe;
    golden::expect_two_steps(*b, net, ws, in, opt, r.label_smoothing, total, spe, j);
    std::vector<float> lg(size_t(N) * 10);
    b->download(lg.data(), ws.forward(in.xd.get(), false), lg.size() * 4);
    EXPECT_TRUE(test::all_close(lg, j["eval_logits"].get<std::vector<float>>(), 1e-4, 1e-3));
}

// The three myrtle presets load, build the same network, and differ where the notebook's cells do.
TEST(GoldenDawn, MyrtlePresetsAreTheNotebookCells) {
    auto b = make_cpu_backend(1);
    const Recipe base = load_recipe("myrtle-baseline", ""), bs = load_recipe("myrtle-bs512", ""),
                 reg = load_recipe("myrtle-reg", "");
    for (const Recipe* r : {&base, &bs, &reg}) {
        SCOPED_TRACE(r->name);
        EXPECT_EQ(r->net.arch, Arch::dawn);
        Network net(*b, r->net);
        EXPECT_EQ(net.learnable_count(), 5205834u);  // DAWN_net(): sum of numel over its parameters
        // lr x batch and wd / batch are the notebook's (lr schedule / batch, wd 5e-4 x batch)
        EXPECT_NEAR(r->weight_decay / r->batch_size, 5e-4, 1e-12);
        EXPECT_NEAR(r->bias_weight_decay, r->weight_decay, 1e-12);
    }
    Network nb(*b, base.net);
    Optimizer ob(nb, base);
    // baseline: PiecewiseLinear([0, 15, 30, 35], [0, 0.1, 0.005, 0]) at step / spe (+1 step),
    // spe the run's 391 steps an epoch (50,000 images at batch 128, the last one partial)
    const int spe = steps_per_epoch(50000, base.batch_size, base.drop_last);
    EXPECT_EQ(spe, 391);
    EXPECT_NEAR(base.lr * base.batch_size, 0.1, 1e-12);
    EXPECT_NEAR(base.lr * base.batch_size * ob.lr_multiplier_at(15 * spe - 1, 35 * spe, spe), 0.1, 1e-9);
    EXPECT_NEAR(base.lr * base.batch_size * ob.lr_multiplier_at(30 * spe - 1, 35 * spe, spe), 0.005, 1e-9);
    EXPECT_NEAR(base.lr * base.batch_size * ob.lr_multiplier_at(35 * spe - 1, 35 * spe, spe), 0.0, 1e-9);
    EXPECT_NEAR(bs.lr * bs.batch_size, 0.44, 1e-12);
    EXPECT_EQ(reg.cutout, 8);
    EXPECT_NEAR(reg.lr * reg.batch_size, 0.6, 1e-12);
}

}  // namespace
}  // namespace sr
