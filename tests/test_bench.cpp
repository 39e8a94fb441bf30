// test_bench.cpp: `speedrun bench` runs every preset (reduced widths and batch, one step) with
// --profile, and its JSON carries the phases and the profile that issue 8 asks of it. Timings
// themselves are not checked (benchmarks show speed, tests do not).
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/commands.h"
#include "train/recipe.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

TEST(Bench, EveryPresetRunsAProfiledStep) {
    const std::string out = (fs::temp_directory_path() / "speedrun-test-bench.json").string();
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
        const auto& prof = j.at("profile");
        EXPECT_EQ(prof.at("steps"), 1);
        std::vector<std::string> kinds;
        for (const auto& k : prof.at("kinds")) kinds.push_back(k.at("name"));
        for (const char* k : {"convolution", "batch norm", "activation", "pooling", "linear", "loss",
                              "optimizer", "augmentation"})
            EXPECT_NE(std::find(kinds.begin(), kinds.end(), k), kinds.end()) << k;
    }
    fs::remove(out);
}

TEST(Bench, ZeroStepsIsAClearError) {
    BenchArgs a;
    a.device = "cpu";
    a.steps = 0;
    EXPECT_THROW(cmd_bench(a), Error);
}

}  // namespace
}  // namespace sr
