// test_eval_command.cpp: `speedrun eval` (cmd_eval) reads a checkpoint and reports the test
// accuracy the training run itself reported for the same weights and test images; with
// --emulate-precision it evaluates through that format's rounding; bad formats are refused.
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"
#include "data/cifar10.h"
#include "train/checkpoint.h"
#include "train/commands.h"
#include "train/trainer.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

TEST(EvalCommand, ReportsWhatTheTrainingRunReportedAndEmulatesPrecision) {
    const fs::path dir = fs::temp_directory_path() / fmt::format("speedrun-eval-{}", ::getpid());
    fs::create_directories(dir);
    // a synthetic set in the official format (the reader takes only complete 10,000-record files)
    DataArgs da;
    da.write_synthetic = (dir / "data").string();
    da.seed = 5;
    testing::internal::CaptureStdout();
    ASSERT_EQ(cmd_data(da), 0);
    testing::internal::GetCapturedStdout();
    const Cifar10 data = load_cifar10(da.write_synthetic, false);

    Recipe r = load_recipe("airbench94", "");
    r.net.widths = {8, 16, 16};
    r.batch_size = 256;
    r.epochs = 2;
    const std::string ckpt = (dir / "tiny.safetensors").string();
    auto backend = make_cpu_backend(2);
    RunResult trained;
    {
        TrainOptions o;
        o.subset = 4096;
        o.test_subset = 300;
        o.eval_each_epoch = false;
        o.quiet = true;
        o.progress = false;
        o.checkpoint_path = ckpt;
        Trainer t(*backend, r, data, o);
        trained = t.run(3);
    }
    ASSERT_GT(trained.test_accuracy_tta, 0.15);  // above chance: the weights are not a blank

    EvalArgs a;
    a.checkpoint = ckpt;
    a.data = da.write_synthetic;
    a.device = "cpu";
    a.threads = 2;
    a.test_subset = 300;
    a.download = false;
    testing::internal::CaptureStdout();
    EXPECT_EQ(cmd_eval(a), 0);
    std::string out = testing::internal::GetCapturedStdout();
    EXPECT_TRUE(test::contains(out, fmt::format("test accuracy {:.4f} without TTA, {:.4f} with TTA level {} (300 images",
                                                trained.test_accuracy, trained.test_accuracy_tta, r.tta_level)))
        << out;
    EXPECT_FALSE(test::contains(out, "emulated"));

    a.emulate_precision = "bf16";
    testing::internal::CaptureStdout();
    EXPECT_EQ(cmd_eval(a), 0);
    out = testing::internal::GetCapturedStdout();
    EXPECT_TRUE(test::contains(out, "bf16 storage emulated")) << out;
    EXPECT_TRUE(test::contains(out, "with TTA level")) << out;

    a.emulate_precision = "fp4";
    EXPECT_TRUE(test::contains(test::error_of([&] { cmd_eval(a); }),
                               "--emulate-precision fp4: unknown format (known: fp16, bf16, fp8, tf32, fp8-conv)"));
    fs::remove_all(dir);
}

}  // namespace
}  // namespace sr
