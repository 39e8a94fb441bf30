// test_golden_hlb.cpp: the hlb preset against hlb-CIFAR10's code run by PyTorch
// (tests/data/golden_hlb.json, made by tools/make_golden_hlb.py from the peer's main.py): the
// centred, split-averaged whitening, the identity-added conv init, the OneCycleLR schedule as
// knots, the loss on cutmix's soft labels, and the whole network with main()'s loss, optimizers
// and NetworkEMA: logits, loss, gradients, BN statistics, two updates at the schedule's peak, the
// EMA's update and the flip-averaged logits in eval mode.
#include <cmath>

#include <gtest/gtest.h>

#include "model/golden_util.h"
#include "model/network.h"
#include "ops/cpu/cpu_ops.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/recipe.h"

namespace sr {
namespace {

const nlohmann::json& ref() {
    static const nlohmann::json j =
        golden::load("golden_hlb.json", "speedrun-golden-hlb", "tools/make_golden_hlb.py");
    return j;
}

// Tolerance: eigenvectors of a 12 x 12 covariance in fp64 (ours) vs torch's fp32 cov and eigh;
// the filters are v / sqrt(lambda + 1e-2), entries up to ~10: 2e-3 absolute.
TEST(GoldenHlb, WhiteningCentredAndAveragedOverSplits) {
    const auto& w = ref()["whiten"];
    auto b = make_cpu_backend(1);
    Recipe r = load_recipe("hlb", "");
    NetConfig c = r.net;
    c.widths = {8, 8, 8};
    c.image_side = w["side"];
    Network net(*b, c);
    const auto x = w["x_nhwc"].get<std::vector<float>>();
    const int N = w["N"];
    DeviceBuffer<float> xd(*b, x.size());
    b->upload(xd.get(), x.data(), x.size() * sizeof(float));
    net.init_whitening(xd.get(), N, w["eps"].get<float>(), r.whiten_center, w["splits"]);
    std::vector<float> all;
    net.download(all);
    const auto got = golden::part(net, all, "whiten.weight");
    const auto want = w["weight_ohwi"].get<std::vector<float>>();
    ASSERT_EQ(got.size(), want.size());
    const size_t per = got.size() / 24;  // 24 filters of k*k*3
    for (size_t f = 0; f < 24; ++f) {
        // an eigenvector's sign is arbitrary: each filter may come out negated (with its twin)
        double dot = 0;
        for (size_t i = 0; i < per; ++i) dot += double(got[f * per + i]) * want[f * per + i];
        const float sign = dot < 0 ? -1.f : 1.f;
        for (size_t i = 0; i < per; ++i)
            ASSERT_NEAR(sign * got[f * per + i], want[f * per + i], 2e-3) << "filter " << f << " entry " << i;
    }
    // the negatives follow the filters
    for (size_t i = 0; i < 12 * per; ++i) ASSERT_EQ(got[12 * per + i], -got[i]);
    // the reference tells the variants apart: one decomposition of all the images, and the
    // uncentred covariance, each miss it
    auto max_filter_diff = [&](bool center, int splits) {
        Network other(*b, c);
        other.init_whitening(xd.get(), N, w["eps"].get<float>(), center, splits);
        std::vector<float> a;
        other.download(a);
        const auto o = golden::part(other, a, "whiten.weight");
        double diff = 0;
        for (size_t i = 0; i < o.size(); ++i)
            diff = std::max(diff, double(std::abs(std::abs(o[i]) - std::abs(want[i]))));
        return diff;
    };
    EXPECT_GT(max_filter_diff(true, 1), 2e-2) << "splits should matter";
    EXPECT_GT(max_filter_diff(false, w["splits"].get<int>()), 2e-2) << "centring should matter";
}

TEST(GoldenHlb, IdentityAddedConvInit) {
    const auto& g = ref()["init"];
    const auto shape = g["shape_ohwi"].get<std::vector<int>>();
    auto w = g["w0_ohwi"].get<std::vector<float>>();
    const auto want = g["conv1_ohwi"].get<std::vector<float>>();
    dirac_identity_added(w.data(), shape[0], shape[1], shape[2], shape[3]);
    ASSERT_EQ(w.size(), want.size());
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], want[i], 1e-6) << i;
}

// The preset's knots against torch's OneCycleLR over the whole run (581 steps).
TEST(GoldenHlb, OneCycleScheduleAsKnots) {
    const auto& s = ref()["schedule"];
    const auto mult = s["multiplier"].get<std::vector<double>>();
    const int total = s["total"], spe = s["steps_per_epoch"];
    const Recipe r = load_recipe("hlb", "");
    EXPECT_EQ(total_steps(spe * r.batch_size, r.batch_size, r.epochs, r.drop_last), total);
    auto b = make_cpu_backend(1);
    NetConfig c = r.net;
    c.widths = {8, 8, 8};
    Network net(*b, c);
    Optimizer opt(net, r);
    ASSERT_EQ(int(mult.size()), total);
    for (int step = 0; step < total; ++step)
        ASSERT_NEAR(opt.lr_multiplier_at(step, total, spe), mult[step], 1e-9) << "step " << step;
    // its EMA starts at the first 5th step of epoch 2: step 100 (the peer: epoch >= 2, steps % 5)
    EXPECT_EQ(lookahead_first_step(r.lookahead_start_epoch, spe, r.lookahead_every), 100);
    EXPECT_EQ(lookahead_first_step(0, spe, r.lookahead_every), 0);
    EXPECT_EQ(lookahead_first_step(2, 50, 5), 105);  // epoch 2 begins after step 100
}

// Tolerance: CPU loss in double vs torch fp32: 1e-4 relative; gradients 1e-6.
TEST(GoldenHlb, LossOnCutmixSoftLabels) {
    const auto& l = ref()["loss"];
    const auto z = l["logits"].get<std::vector<float>>();
    const auto y1 = l["labels"].get<std::vector<int32_t>>(), y2 = l["labels2"].get<std::vector<int32_t>>();
    const auto want = l["dlogits"].get<std::vector<float>>();
    const int N = int(y1.size()), O = int(z.size()) / N;
    const Recipe r = load_recipe("hlb", "");
    const float mix = float(r.cutmix * r.cutmix) / float(r.net.image_side * r.net.image_side);
    EXPECT_FLOAT_EQ(mix, l["mix"].get<float>());
    std::vector<float> d(z.size()), st = {0.f, 0.f};
    cpu::cross_entropy_mixed(d.data(), st.data(), z.data(), y1.data(), y2.data(), mix, N, O,
                             r.label_smoothing);
    EXPECT_NEAR(st[0], l["loss_sum"].get<double>(), 1e-4 * std::abs(l["loss_sum"].get<double>()));
    for (size_t i = 0; i < d.size(); ++i) ASSERT_NEAR(d[i], want[i], 1e-6) << i;
}

// The preset's network at the reference's widths against main()'s SpeedyConvNet (BN eps 1e-12,
// momentum 0.4, scales frozen at 1; no whitening bias; the head's temperature 1/9; global max
// pooling) and its training: two SGD groups (Nesterov, coupled decay; 'bias' in the name: lr x
// 64, decay / 64) at the OneCycleLR's peak (steps 132 and 133 of 581), NetworkEMA (snapshot after
// the first update, update with decay 0.5 and copy back after the second), then eval mode, where
// the peer's forward averages the logits of each image and its mirror (our TTA level 1).
// The peer differentiates loss_factor (0.5) x the summed cross-entropy, we the sum: the preset
// folds the factor into its lr and decay, so the updates must agree while the loss and gradients
// differ by that factor (divided out here).
TEST(GoldenHlb, MatchesPyTorchMainPy) {
    const auto& j = ref()["net"];
    auto b = make_cpu_backend(2);
    Recipe r = load_recipe("hlb", "");
    ASSERT_EQ(r.tta_level, 1);
    r.net.widths = j["widths"].get<std::vector<int>>();
    Network net(*b, r.net);
    // every tensor of ours but whiten.bias (the peer's whitening conv has none; ours stays 0)
    ASSERT_EQ(golden::upload_params(net, j["params"]) + net.tensor("whiten.bias").count, net.size());
    const int N = j["N"], spe = j["steps_per_epoch"], total = j["total"], first = j["first_step"];
    EXPECT_EQ(total_steps(spe * r.batch_size, r.batch_size, r.epochs, r.drop_last), total);
    Workspace ws(net, N);
    golden::Batch in(*b, j);
    Optimizer opt(net, r);
    for (int s = 0; s < 2; ++s)
        EXPECT_NEAR(opt.lr_multiplier_at(first + s, total, spe), j["lr_multiplier"][s].get<double>(), 1e-9);
    nlohmann::json sum = j;  // the reference's loss and gradients of the summed cross-entropy
    const double f = j["loss_factor"];
    ASSERT_EQ(f, 0.5);  // 512 / batch 1024: a power of two, so dividing by it is exact
    sum["loss"] = j["loss"].get<double>() / f;
    for (auto& [name, vals] : sum["grads"].items())
        for (auto& v : vals) v = v.get<double>() / f;
    std::vector<float> now;
    auto ema = [&](int step, const std::vector<float>&) {
        if (step == 0) {
            opt.reset_ema();
            return;
        }
        std::vector<float> stepped;
        net.download(stepped);
        opt.lookahead(0.5);
        net.download(now);
        golden::expect_tensors(net, now, j["after_lookahead"], "after the EMA", 1e-4);
        golden::expect_updates(net, stepped, now, j["after_step1"], j["after_lookahead"], "the EMA", 1e-3);
    };
    golden::expect_two_steps(*b, net, ws, in, opt, r.label_smoothing, total, spe, sum, ema, first);
    EXPECT_EQ(golden::max_abs(golden::part(net, now, "whiten.bias")), 0.0);
    // eval mode: the mean of the logits of the images and of their mirrors, the views our
    // evaluation takes at the preset's TTA level
    const auto views = tta_views(r, r.tta_level);
    ASSERT_EQ(views.size(), 2u);
    for (const TtaView& v : views) {
        EXPECT_EQ(v.sy, 0);
        EXPECT_EQ(v.sx, 0);
        EXPECT_FLOAT_EQ(v.w, 0.5f);
    }
    EXPECT_NE(views[0].flip, views[1].flip);
    const int S = r.net.image_side;
    std::vector<float> mirror(in.x.size());
    for (int n = 0; n < N; ++n)
        for (int y = 0; y < S; ++y)
            for (int x = 0; x < S; ++x)
                for (int c = 0; c < 3; ++c)
                    mirror[((size_t(n) * S + y) * S + x) * 3 + c] = in.x[((size_t(n) * S + y) * S + (S - 1 - x)) * 3 + c];
    DeviceBuffer<float> md(*b, mirror.size());
    b->upload(md.get(), mirror.data(), mirror.size() * 4);
    std::vector<float> lg(size_t(N) * 10), lm(lg.size());
    b->download(lg.data(), ws.forward(in.xd.get(), false), lg.size() * 4);
    b->download(lm.data(), ws.forward(md.get(), false), lm.size() * 4);
    for (size_t i = 0; i < lg.size(); ++i) lg[i] = 0.5f * lg[i] + 0.5f * lm[i];
    EXPECT_TRUE(test::all_close(lg, j["eval_logits"].get<std::vector<float>>(), 1e-5, 1e-3));
}

}  // namespace
}  // namespace sr
