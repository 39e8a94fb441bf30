// test_bench.cpp: `speedrun bench` runs every preset (reduced widths and batch, one step) with
// --profile, and its JSON carries the phases and the profile that issue 8 asks of it. Timings
// themselves are not checked (benchmarks show speed, tests do not).
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/commands.h"
#include "train/recipe.h"
#include "train/roofline.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

TEST(Bench, EveryPresetRunsAProfiledStep) {
    const std::string out = test::temp_path("bench.json").string();
    for (const std::string& p : preset_names()) {
        SCOPED_TRACE(p);
        const Recipe r = load_recipe(p, "");
        BenchArgs a;
        a.preset = p;
        a.device = "cpu";
        a.threads = 2;
        a.batch_size = 32;
        a.steps = 1;
        a.profile = true;
        a.json = out;
        a.sets = {r.net.arch == Arch::airbench ? "net.widths=[8,16,16]" : "net.widths=[8,8,16,16]"};
        ASSERT_EQ(cmd_bench(a), 0);
        std::ifstream f(out);
        const nlohmann::json j = nlohmann::json::parse(f);
        EXPECT_EQ(j.at("preset"), p);
        EXPECT_GT(j.at("step_ms").get<double>(), 0.0);
        EXPECT_GE(j.at("data_ms").get<double>(), 0.0);
        EXPECT_GT(j.at("full_run_estimate_seconds").get<double>(), 0.0);
        // the evaluation is timed in the trainer's batches
        EXPECT_EQ(j.at("eval_batch_size"), eval_batch_size(r, 10000, a.batch_size));
        EXPECT_GT(j.at("final_eval_seconds").get<double>(), 0.0);
        EXPECT_LT(j.at("final_eval_seconds").get<double>(), j.at("full_run_estimate_seconds").get<double>());
        const auto& prof = j.at("profile");
        EXPECT_EQ(prof.at("steps"), 1);
        std::vector<std::string> kinds;
        for (const auto& k : prof.at("kinds")) kinds.push_back(k.at("name"));
        for (const char* k : {"convolution", "batch norm", "activation", "pooling", "linear", "loss",
                              "optimizer", "augmentation"})
            EXPECT_NE(std::find(kinds.begin(), kinds.end(), k), kinds.end()) << k;
        // the step's FLOPs as counted from the network are those its convolutions and head ran
        // (the op timer's count of each call: the whitening bias's steps and frozen weights
        // included where they run)
        double ran = 0;
        for (const auto& k : prof.at("kinds"))
            if (k.at("name") == "convolution" || k.at("name") == "linear") ran += k.at("gflop_per_step").get<double>();
        EXPECT_NEAR(j.at("gflop_per_step").get<double>(), ran, 1e-9 * ran);
        // which step was timed: the one most steps are (airbench: the whitening bias trains in
        // the first epochs only, hlb's never)
        const int wsteps = j.at("whiten_bias_steps"), total = j.at("total_steps");
        if (r.net.arch == Arch::airbench && r.net.whiten_kernel > 0 && r.whiten_bias_epochs > 0)
            EXPECT_GT(wsteps, 0);
        else
            EXPECT_EQ(wsteps, 0);
        EXPECT_LT(wsteps, total);
        // the estimate: every step with its data, the whitening bias's extra backward on its
        // steps, the final evaluation
        const double est = j.at("steps_in_run").get<double>() * (j.at("step_ms").get<double>() + j.at("data_ms").get<double>()) * 1e-3 +
                           wsteps * j.at("whiten_bias_step_extra_ms").get<double>() * 1e-3 +
                           j.at("final_eval_seconds").get<double>();
        EXPECT_NEAR(j.at("full_run_estimate_seconds").get<double>(), est, 1e-9 * est);
        // (by images: with drop_last false each epoch's last step counts as the fraction it is)
        EXPECT_LE(j.at("steps_in_run").get<double>(), total);
        EXPECT_GT(j.at("steps_in_run").get<double>(), total - std::ceil(r.epochs));
    }
    fs::remove(out);
}

// --roofline: the profiled step on a GPU by the model of train/roofline.h, fp32 and 16-bit.
TEST(Bench, RooflineEstimate) {
    const std::string out = test::temp_path("bench-roofline.json").string();
    BenchArgs a;
    a.preset = "hiverge";
    a.device = "cpu";
    a.threads = 2;
    a.batch_size = 128;
    a.steps = 1;
    a.roofline = "h100";  // implies --profile
    a.json = out;
    // (the preset's widths: among the convolutions the whitening one is memory-bound on an H100,
    // the 256-channel ones compute-bound)
    ASSERT_EQ(cmd_bench(a), 0);
    std::ifstream f(out);
    const nlohmann::json j = nlohmann::json::parse(f);
    const auto& r = j.at("profile").at("roofline");
    EXPECT_EQ(r.at("device"), "h100");
    const double s32 = r.at("step_ms_fp32"), s16 = r.at("step_ms_half");
    EXPECT_GT(s32, s16);
    EXPECT_GT(s16, 0.0);
    EXPECT_GT(r.at("full_run_seconds_fp32").get<double>(), s32 * 1e-3);
    EXPECT_GE(r.at("kinds").size(), 8u);
    // each kind's estimate is its ops' estimates summed, each op bound by its own compute or
    // memory time (a kind's totals would hide its memory-bound ops behind compute-bound ones)
    const RooflineDevice& h100 = *roofline_device("h100");
    // The 16-bit column halves the bytes and takes the FP16 peak for the ops on activations,
    // not for the optimizer's and the elementwise ones on parameters (Muon's axpy and scale),
    // which stay fp32 on the GPU
    std::set<std::string> fp32_kinds;
    for (const auto& k : r.at("kinds")) {
        double sum = 0, sum16 = 0;
        bool all_fp32 = true;
        for (const auto& o : j.at("profile").at("ops"))
            if (o.at("kind") == k.at("kind")) {
                const double flops = o.at("gflop_per_step").get<double>() * 1e9, bytes = o.at("mb_per_step").get<double>() * 1e6,
                             calls = o.at("calls_per_step").get<double>();
                const bool half = roofline_half(o.at("kind"), o.at("name"));
                all_fp32 = all_fp32 && !half;
                sum += roofline_seconds(flops, bytes, calls, h100, false, RooflineAssumptions{}) * 1e3;
                sum16 += roofline_seconds(flops, bytes, calls, h100, half, RooflineAssumptions{}) * 1e3;
            }
        EXPECT_NEAR(k.at("fp32_ms").get<double>(), sum, 1e-9 * sum) << k.at("kind");
        EXPECT_NEAR(k.at("half_ms").get<double>(), sum16, 1e-9 * sum16) << k.at("kind");
        if (all_fp32) {
            fp32_kinds.insert(k.at("kind"));
            EXPECT_EQ(k.at("half_ms").get<double>(), k.at("fp32_ms").get<double>());
        } else {
            EXPECT_LT(k.at("half_ms").get<double>(), k.at("fp32_ms").get<double>()) << k.at("kind");
        }
    }
    EXPECT_EQ(fp32_kinds, (std::set<std::string>{"optimizer", "elementwise", "loss"}));  // (hiverge: no residual add)
    EXPECT_TRUE(roofline_half("elementwise", "residual add n4096"));
    EXPECT_FALSE(roofline_half("elementwise", "axpy n4096"));
    EXPECT_FALSE(roofline_half("optimizer", "sgd nesterov n4096"));
    EXPECT_FALSE(roofline_half("loss", "cross entropy N1024 O10"));
    EXPECT_TRUE(roofline_half("pooling", "maxpool2 fwd 32x32 C64 N128"));
    fs::remove(out);
    a.roofline = "v100";
    EXPECT_THROW(cmd_bench(a), Error);
}

TEST(Roofline, ComputeOrMemoryBoundPlusLaunches) {
    const RooflineDevice& d = *roofline_device("h100");
    const RooflineAssumptions a{0.5, 0.5, 2.0};
    // 1 TFLOP, no bytes: 1e12 / (494.7e12 * 0.5) s; FP16 twice as fast
    EXPECT_NEAR(roofline_seconds(1e12, 0, 0, d, false, a), 1.0 / 247.35, 1e-9);
    EXPECT_NEAR(roofline_seconds(1e12, 0, 0, d, true, a), 1.0 / 494.7, 1e-9);
    // 1 GB, no FLOPs: 1e9 / (3.35e12 * 0.5) s; 16-bit storage halves the bytes; 10 launches
    EXPECT_NEAR(roofline_seconds(0, 1e9, 10, d, false, a), 1e9 / 1.675e12 + 20e-6, 1e-12);
    EXPECT_NEAR(roofline_seconds(0, 1e9, 10, d, true, a), 0.5e9 / 1.675e12 + 20e-6, 1e-12);
    EXPECT_EQ(roofline_device("v100"), nullptr);
    EXPECT_GT(roofline_device("h200")->bandwidth_tbs, d.bandwidth_tbs);
}

TEST(Bench, ZeroStepsIsAClearError) {
    BenchArgs a;
    a.device = "cpu";
    a.steps = 0;
    EXPECT_THROW(cmd_bench(a), Error);
}

}  // namespace
}  // namespace sr
