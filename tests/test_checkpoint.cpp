// test_checkpoint.cpp: checkpoints and resume. An interrupted and resumed run is bit-identical to
// an uninterrupted one on the CPU; bad checkpoints and a diverging run stop with clear messages.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <cstring>
#include <tuple>

#include "core/error.h"
#include "core/version.h"
#include "io/atomic_file.h"
#include "ops/forwarding_backend.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

Recipe tiny_recipe(const char* preset = "airbench94") {
    Recipe r = load_recipe(preset, "");
    r.net.widths = {8, 16, 16};
    r.batch_size = 256;
    r.epochs = 2.5;  // the interruption below falls mid-epoch
    return r;
}

TrainOptions tiny_options(const std::string& ckpt) {
    TrainOptions o;
    o.subset = 2048;
    o.test_subset = 512;
    o.eval_each_epoch = false;
    o.quiet = true;
    o.checkpoint_path = ckpt;
    return o;
}

std::string temp(const char* name) { return test::temp_path(name).string(); }

// The checkpoint at p of a finished one-epoch run of tiny_recipe() on data; returns the recipe.
Recipe finished_one_epoch(Backend& backend, const Cifar10& data, const std::string& p) {
    Recipe r = tiny_recipe();
    r.epochs = 1;
    Trainer t(backend, r, data, tiny_options(p));
    t.run(1);
    return r;
}

// The checkpoint at p of a tiny_recipe() run (seed 7) interrupted after step 11: 8 steps an
// epoch, so epoch 1 with 3 of its steps done.
void interrupted_after_step_11(Backend& backend, const Cifar10& data, const std::string& p) {
    TrainOptions o = tiny_options(p);
    o.stop_after_step = 11;
    Trainer t(backend, tiny_recipe(), data, o);
    EXPECT_THROW(t.run(7), Interrupted);
}

// The last line of a --log file, parsed.
nlohmann::json last_log_line(const std::string& path) {
    std::ifstream in(path);
    std::string line, last;
    while (std::getline(in, line)) last = line;
    return nlohmann::json::parse(last);
}

// Rewrites the run state of the checkpoint at p through edit (as a damaged, edited or older
// file would have it); returns the state as written.
nlohmann::json edit_state(const std::string& p, const std::function<void(nlohmann::json&)>& edit) {
    StFile f = read_safetensors(p);
    auto state = nlohmann::json::parse(f.metadata.at("state"));
    edit(state);
    f.metadata["state"] = state.dump();
    write_safetensors(p, f);
    return state;
}

// Runs r uninterrupted, then stopped after stop_step (expected to land at step steps_in_epoch of
// epoch `epoch`) and resumed: the final checkpoints must be bit-identical.
void resumed_run_is_bit_identical(const Recipe& r, int n_train, int stop_step, int epoch,
                                  int steps_in_epoch) {
    const Cifar10 data = make_synthetic_cifar10(n_train, 512, 4);
    const std::string a = temp("a.safetensors"), b = temp("b.safetensors");
    auto backend = make_cpu_backend(2);
    RunResult full;
    {
        Trainer t(*backend, r, data, tiny_options(a));
        full = t.run(7);
    }
    {
        TrainOptions o = tiny_options(b);
        o.stop_after_step = stop_step;
        Trainer t(*backend, r, data, o);
        EXPECT_THROW(t.run(7), Interrupted);
    }
    const Checkpoint half = read_checkpoint(b);
    EXPECT_EQ(half.state.step, stop_step);
    EXPECT_EQ(half.state.epoch, epoch);
    EXPECT_EQ(half.state.steps_in_epoch, steps_in_epoch);
    RunResult resumed;
    {
        Trainer t(*backend, half.recipe, data, tiny_options(b));
        resumed = t.run(0, false, &half);  // the seed comes from the checkpoint
    }
    EXPECT_EQ(resumed.seed, 7u);
    EXPECT_EQ(resumed.test_accuracy_tta, full.test_accuracy_tta);
    const Checkpoint ca = read_checkpoint(a), cb = read_checkpoint(b);
    ASSERT_EQ(ca.file.tensors.size(), cb.file.tensors.size());
    for (const auto& [name, t] : ca.file.tensors) {
        ASSERT_TRUE(cb.file.tensors.count(name)) << name;
        EXPECT_TRUE(t.data == cb.file.tensors.at(name).data) << name << " differs after resume";
    }
    ASSERT_EQ(resumed.epochs.size(), full.epochs.size());
    for (size_t i = 0; i < full.epochs.size(); ++i) {
        EXPECT_EQ(resumed.epochs[i].train_loss, full.epochs[i].train_loss);
        EXPECT_EQ(resumed.epochs[i].train_acc, full.epochs[i].train_acc);
    }
    // the finished run's checkpoint keeps the steps' seconds without the final TTA evaluation, so
    // that a resume of it, which evaluates again, counts one evaluation and not two
    EXPECT_EQ(ca.state.timed, full.epochs.back().total_seconds);
    EXPECT_LT(ca.state.timed, full.train_seconds);
    {
        Trainer t(*backend, ca.recipe, data, tiny_options(a));
        const RunResult again = t.run(0, false, &ca);
        EXPECT_EQ(again.test_accuracy_tta, full.test_accuracy_tta);
        EXPECT_EQ(again.epochs.back().total_seconds, ca.state.timed);
        EXPECT_GT(again.train_seconds, ca.state.timed);
    }
    // the interrupted epoch's seconds include its steps before the stop: each epoch's seconds
    // are the step between its total and the previous one's, the resumed epoch too
    EXPECT_GT(half.state.epoch_timed, 0.0);
    for (size_t i = 1; i < resumed.epochs.size(); ++i)
        EXPECT_NEAR(resumed.epochs[i].epoch_seconds,
                    resumed.epochs[i].total_seconds - resumed.epochs[i - 1].total_seconds, 1e-9)
            << "epoch " << i << " (resumed in epoch " << epoch << ")";
    fs::remove(a);
    fs::remove(b);
}

// 8 steps per epoch: stops in the second epoch
TEST(Checkpoint, ResumedRunIsBitIdenticalOnTheCpu) {
    resumed_run_is_bit_identical(tiny_recipe("airbench94"), 2048, 11, 1, 3);
}

// The Muon recipe: its momentum, the renormalisation schedule (replayed on resume), the colour
// jitter draws and the whitening bias's own steps must all come back exactly.
TEST(Checkpoint, ResumedHivergeRunIsBitIdenticalOnTheCpu) {
    resumed_run_is_bit_identical(tiny_recipe("hiverge"), 2048, 11, 1, 3);
}

// opt.drop_last false (myrtle-reg): 2,000 images = 7 x 256 + 208, so 8 steps an epoch, the
// last one on its own smaller workspace. Stopped just before that step, and just after it (the
// epoch's statistics then have to count 2,000 images, not 8 x 256).
TEST(Checkpoint, ResumedRunAroundTheLastPartialBatchIsBitIdentical) {
    Recipe r = tiny_recipe("myrtle-reg");
    r.net.widths = {8, 8, 16, 16};
    ASSERT_FALSE(r.drop_last);
    {
        SCOPED_TRACE("stopped before the partial batch");
        resumed_run_is_bit_identical(r, 2000, 7, 0, 7);
    }
    {
        SCOPED_TRACE("stopped after the partial batch");
        resumed_run_is_bit_identical(r, 2000, 8, 0, 8);
    }
}

// A resumed run says where it resumes and shows the whole table: the epochs the checkpoint
// saved come first, as they were printed before the stop, then the ones run now.
TEST(Checkpoint, ResumedRunPrintsWhereItStandsAndTheSavedEpochs) {
    const Cifar10 data = make_synthetic_cifar10(2048, 512, 4);
    const std::string p = temp("print.safetensors");
    auto backend = make_cpu_backend(2);
    const Recipe r = tiny_recipe();
    interrupted_after_step_11(*backend, data, p);
    const Checkpoint half = read_checkpoint(p);
    ASSERT_EQ(half.state.epochs.size(), 1u);
    const double saved_loss = half.state.epochs[0].at("train_loss");
    EXPECT_TRUE(half.state.epochs[0].at("test_acc").is_null()) << "no evaluation: null, not a number";
    TrainOptions o = tiny_options(p);
    o.quiet = false;
    o.progress = false;
    Trainer t(*backend, half.recipe, data, o);
    testing::internal::CaptureStdout();
    t.run(0, false, &half);
    const std::string out = testing::internal::GetCapturedStdout();
    EXPECT_TRUE(test::contains(out, fmt::format("resumed       at step 11 of {} (epoch 1, 3 of its steps done), {:.2f} s timed before",
                                                total_steps(2048, 256, r.epochs, r.drop_last), half.state.timed)))
        << out;
    const std::string row0 = fmt::format("    0 |     8 | {:>10.4f} |", saved_loss);
    const size_t at0 = out.find(row0), at1 = out.find("\n    1 |    16 |"), at2 = out.find("\n    2 |    20 |");
    EXPECT_NE(at0, std::string::npos) << "the saved epoch 0 is not shown:\n" << out;
    EXPECT_NE(at1, std::string::npos) << out;
    EXPECT_NE(at2, std::string::npos) << out;
    EXPECT_LT(at0, at1);
    EXPECT_LT(at1, at2);
    fs::remove(p);
}

// A checkpoint names the builds that ran its steps. Resumed by the same build the list stays one
// entry, silently; by another (here: a checkpoint edited to name another commit) the note says
// which two, and the result and later checkpoints list both; a checkpoint from before the record
// starts the list with "unknown".
TEST(Checkpoint, RecordsTheBuildsThatRanItsSteps) {
    const Cifar10 data = make_synthetic_cifar10(2048, 512, 4);
    const std::string p = temp("builds.safetensors");
    auto backend = make_cpu_backend(2);
    const Recipe r = tiny_recipe();
    auto stop_at = [&](int step) {
        TrainOptions o = tiny_options(p);
        o.stop_after_step = step;
        Trainer t(*backend, r, data, o);
        EXPECT_THROW(t.run(7), Interrupted);
    };
    // resumes p, stopping after step `stop` (-1: to the end); the result in res, stderr in err
    auto resume = [&](int stop, std::string& err, RunResult& res) {
        const Checkpoint c = read_checkpoint(p);
        TrainOptions o = tiny_options(p);
        o.quiet = false;
        o.progress = false;
        o.stop_after_step = stop;
        Trainer t(*backend, c.recipe, data, o);
        testing::internal::CaptureStderr();
        testing::internal::CaptureStdout();
        try {
            res = t.run(0, false, &c);
        } catch (const Interrupted&) {
        } catch (...) {  // (release the captures, so that the failure is reported)
            testing::internal::GetCapturedStdout();
            testing::internal::GetCapturedStderr();
            throw;
        }
        testing::internal::GetCapturedStdout();
        err = testing::internal::GetCapturedStderr();
    };
    auto set_builds = [&](const nlohmann::json* builds) {  // null: as a checkpoint before the record
        edit_state(p, [&](nlohmann::json& state) {
            if (builds) state["builds"] = *builds; else state.erase("builds");
        });
    };
    const std::string me = git_revision();
    stop_at(5);
    EXPECT_EQ(read_checkpoint(p).state.builds, std::vector<std::string>{me});
    std::string err;
    RunResult res;
    resume(11, err, res);  // the same build
    EXPECT_EQ(read_checkpoint(p).state.builds, std::vector<std::string>{me});
    EXPECT_FALSE(test::contains(err, "ran on build")) << err;

    const nlohmann::json other = {"0123abc"};
    set_builds(&other);
    resume(-1, err, res);
    EXPECT_TRUE(test::contains(err, fmt::format("the steps so far ran on build 0123abc, this is build {}", me))) << err;
    EXPECT_EQ(res.builds, (std::vector<std::string>{"0123abc", me}));
    EXPECT_EQ(read_checkpoint(p).state.builds, (std::vector<std::string>{"0123abc", me}));

    // the run has finished: resumed by yet another build, which runs no step, it adds nothing
    const nlohmann::json third = {"fedcba9"};
    set_builds(&third);
    resume(-1, err, res);
    EXPECT_FALSE(test::contains(err, "ran on")) << err;
    EXPECT_EQ(res.builds, std::vector<std::string>{"fedcba9"});

    stop_at(5);
    set_builds(nullptr);
    EXPECT_TRUE(read_checkpoint(p).state.builds.empty());
    resume(-1, err, res);
    EXPECT_TRUE(test::contains(err, fmt::format("ran on a build the checkpoint does not name (it "
                                                "predates that record), this is build {}", me))) << err;
    EXPECT_EQ(res.builds, (std::vector<std::string>{kBuildsUnrecorded, me}));

    const nlohmann::json bad = {"0123abc", 7};
    set_builds(&bad);
    EXPECT_TRUE(test::contains(test::error_of([&] { read_checkpoint(p); }),
                               "'builds' is not a list of strings"));
    fs::remove(p);
}

// A checkpoint from before epoch_timed was saved: the epoch in progress is given the time since
// the last finished epoch.
TEST(Checkpoint, OlderCheckpointWithoutEpochTimeTakesItFromTheTotals) {
    const Cifar10 data = make_synthetic_cifar10(2048, 512, 4);
    const std::string p = temp("old.safetensors");
    auto backend = make_cpu_backend(2);
    interrupted_after_step_11(*backend, data, p);
    const Checkpoint now = read_checkpoint(p);
    const auto state = edit_state(p, [](nlohmann::json& st) {
        ASSERT_TRUE(st.contains("epoch_timed"));
        st.erase("epoch_timed");
    });
    ASSERT_FALSE(state.contains("epoch_timed"));
    const Checkpoint old = read_checkpoint(p);
    const double last_total = state.at("epochs").back().at("total_seconds").get<double>();
    EXPECT_DOUBLE_EQ(old.state.epoch_timed, old.state.timed - last_total);
    EXPECT_NEAR(old.state.epoch_timed, now.state.epoch_timed, 1e-9);
    fs::remove(p);
}

// Checkpoints written before session 39 held -1 for an epoch that was not evaluated (now null):
// a resume reads either as "not evaluated", and writes null.
TEST(Checkpoint, OlderCheckpointsMinusOneTestAccReadsAsNotEvaluated) {
    const Cifar10 data = make_synthetic_cifar10(2048, 512, 4);
    const std::string p = temp("minus1.safetensors");
    auto backend = make_cpu_backend(2);
    interrupted_after_step_11(*backend, data, p);
    edit_state(p, [](nlohmann::json& st) { st.at("epochs").at(0)["test_acc"] = -1.0; });
    const Checkpoint old = read_checkpoint(p);
    Trainer t(*backend, old.recipe, data, tiny_options(p));
    const RunResult res = t.run(0, false, &old);
    ASSERT_EQ(res.epochs.size(), 3u);
    for (const EpochStats& e : res.epochs) EXPECT_LT(e.test_acc, 0) << "epoch " << e.epoch;
    const Checkpoint done = read_checkpoint(p);
    ASSERT_EQ(done.state.epochs.size(), 3u);
    for (const auto& e : done.state.epochs) EXPECT_TRUE(e.at("test_acc").is_null()) << e.dump();
    fs::remove(p);
}

// A resume on other images than the checkpoint's is refused with what would help: the same
// --subset, or (data with fewer images than it was trained on) the data it was trained with.
TEST(Checkpoint, ResumeOnAnotherImageCountSaysWhatHelps) {
    Checkpoint c;
    c.state.n_train = 1024;
    EXPECT_NO_THROW(check_resume_images(c, 1024, 50000));
    const std::string fewer = test::error_of([&] { check_resume_images(c, 512, 50000); });
    EXPECT_TRUE(test::contains(fewer, "trained on 1024 images, this run has 512 (use the same --subset)")) << fewer;
    const std::string small = test::error_of([&] { check_resume_images(c, 512, 512); });
    EXPECT_TRUE(test::contains(small, "trained on 1024 images, this data has 512: give the --data it was trained with"))
        << small;
    EXPECT_FALSE(test::contains(small, "--subset"));
    // (the trainer's own check knows only the run's count)
    EXPECT_TRUE(test::contains(test::error_of([&] { check_resume_images(c, 512); }), "use the same --subset"));
}

TEST(Checkpoint, WrongShapeAndMissingTensorsAreNamed) {
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 5);
    const std::string p = temp("shape.safetensors");
    auto backend = make_cpu_backend(2);
    const Recipe r = finished_one_epoch(*backend, data, p);
    Checkpoint c = read_checkpoint(p);
    NetConfig other = r.net;
    other.widths = {8, 32, 16};
    Network net(*backend, other);
    {
        const std::string msg = test::error_of([&] { load_network(c, net, true); });
        EXPECT_TRUE(test::contains(msg, "block2.conv1.weight"));
        EXPECT_TRUE(test::contains(msg, "shape"));
    }
    c.file.tensors.erase("ema.head.weight");
    Network same(*backend, r.net);
    EXPECT_TRUE(test::contains(test::error_of([&] { load_network(c, same, true); }), "ema.head.weight"));
    // not a speedrun checkpoint: a valid safetensors file without our metadata
    StFile plain;
    put_tensor(plain, "x", {1}, std::vector<float>{1.f});
    write_safetensors(p, plain);
    EXPECT_TRUE(test::contains(test::error_of([&] { read_checkpoint(p); }), "not a speedrun checkpoint"));
    // a checkpoint from elsewhere whose recipe nests 100,000 deep: refused, where printing or
    // freeing it recursed that deep and ended the program (eval, predict, export, --resume)
    StFile deep = plain;
    deep.metadata = c.file.metadata;
    deep.metadata["recipe"] = "{\"opt\": {\"lr\": " + std::string(100000, '[') + std::string(100000, ']') + "}}";
    write_safetensors(p, deep);
    const std::string msg = test::error_of([&] { read_checkpoint(p); });
    EXPECT_TRUE(test::contains(msg, "metadata 'recipe': nested deeper than 32 levels")) << msg;
    fs::remove(p);
}

TEST(Checkpoint, NonFiniteLossStopsWithTheStepAndKeepsTheLastGoodCheckpoint) {
    const Cifar10 data = make_synthetic_cifar10(2048, 256, 6);
    Recipe r = tiny_recipe();
    r.lr = 1e30;  // diverges within a few steps
    const std::string p = temp("nan.safetensors");
    fs::remove(p);
    auto backend = make_cpu_backend(2);
    TrainOptions o = tiny_options(p);
    o.checkpoint_every = 1;
    const std::string log = temp("nan.jsonl");
    fs::remove(log);
    o.log_path = log;
    Trainer t(*backend, r, data, o);
    int diverged = 0;
    try {
        t.run(3);
        FAIL() << "a diverged run finished";
    } catch (const Error& e) {
        const std::string m = e.what();
        ASSERT_EQ(std::sscanf(m.c_str() + m.find("at step"), "at step %d", &diverged), 1) << m;
        EXPECT_TRUE(test::contains(m, fmt::format("the last checkpoint, with finite losses up to its step, is {} (step {})",
                                                  p, diverged - 1))) << m;
    }
    ASSERT_GE(diverged, 2) << "lr 1e30 should take a step or more to give a non-finite loss";
    {  // the log's last line says so, with the last good checkpoint
        const nlohmann::json j = last_log_line(log);
        EXPECT_EQ(j["event"], "stopped");
        EXPECT_EQ(j["reason"], "non-finite loss");
        EXPECT_EQ(j["steps"], diverged);
        EXPECT_EQ(j["checkpoint"], p);
        EXPECT_EQ(j["checkpoint_step"], diverged - 1);
        fs::remove(log);
    }
    // the checkpoint of the step before, with finite weights only
    ASSERT_TRUE(fs::exists(p));
    const Checkpoint c = read_checkpoint(p);
    EXPECT_EQ(c.state.step, diverged - 1);
    for (const auto& [name, tensor] : c.file.tensors)
        if (tensor.dtype == DType::F32)
            for (float v : tensor_values<float>(name, tensor)) ASSERT_TRUE(std::isfinite(v)) << name;
    fs::remove(p);

    // diverged before any save: the message says that this process saved nothing (a file left
    // there by another run is not its last good checkpoint)
    write_file_atomic(p, "not this run's");
    TrainOptions rare = tiny_options(p);
    rare.checkpoint_every = 1000;
    Trainer t2(*backend, r, data, rare);
    const std::string m = test::error_of([&] { t2.run(3); });
    EXPECT_TRUE(test::contains(m, "this process saved no checkpoint before it (" + p + " was not written by it)")) << m;
    fs::remove(p);
}

// On a GPU the loss is read at the epoch's end, not after every step, so a periodic save could
// come after it became non-finite: the save reads it and stops instead. A decorator that says it
// is a GPU takes that path on the CPU.
struct SaysItIsAGpu : ForwardingBackend {
    using ForwardingBackend::ForwardingBackend;
    Device device() const override { return Device::cuda; }
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override {
        f();
    }
};

TEST(Checkpoint, NonFiniteLossOnAGpuIsNotSaved) {
    const Cifar10 data = make_synthetic_cifar10(2048, 256, 6);
    Recipe r = tiny_recipe();
    r.lr = 1e30;
    const std::string p = temp("nan-gpu.safetensors");
    fs::remove(p);
    auto cpu = make_cpu_backend(2);
    SaysItIsAGpu gpu(*cpu);
    TrainOptions o = tiny_options(p);
    o.checkpoint_every = 1;
    Trainer t(gpu, r, data, o);
    int by = 0;
    const std::string m = test::error_of([&] { t.run(3); });
    ASSERT_NE(m.find("by step"), std::string::npos) << m;
    ASSERT_EQ(std::sscanf(m.c_str() + m.find("by step"), "by step %d", &by), 1) << m;
    ASSERT_GE(by, 2) << m;
    EXPECT_TRUE(test::contains(m, fmt::format("is {} (step {})", p, by - 1))) << m;
    ASSERT_TRUE(fs::exists(p));
    const Checkpoint c = read_checkpoint(p);
    EXPECT_EQ(c.state.step, by - 1);
    EXPECT_TRUE(std::isfinite(c.state.epoch_stats[0]));
    for (const auto& [name, tensor] : c.file.tensors)
        if (tensor.dtype == DType::F32)
            for (float v : tensor_values<float>(name, tensor)) ASSERT_TRUE(std::isfinite(v)) << name;
    fs::remove(p);
}

TEST(Checkpoint, InterruptFlagSavesAndStops) {
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 8);
    Recipe r = tiny_recipe();
    const std::string p = temp("int.safetensors");
    auto backend = make_cpu_backend(2);
    std::atomic<bool> flag{true};  // as if SIGINT arrived during the first step
    TrainOptions o = tiny_options(p);
    o.interrupt = &flag;
    const std::string log = temp("int.jsonl");
    fs::remove(log);
    o.log_path = log;
    Trainer t(*backend, r, data, o);
    EXPECT_THROW(t.run(2), Interrupted);
    EXPECT_EQ(read_checkpoint(p).state.step, 1);
    // the log's last line says the run stopped, where, and where it was saved
    const nlohmann::json j = last_log_line(log);
    EXPECT_EQ(j["event"], "stopped");
    EXPECT_EQ(j["reason"], "interrupted");
    EXPECT_EQ(j["seed"], 2);
    EXPECT_EQ(j["steps"], 1);
    EXPECT_EQ(j["checkpoint"], p);
    EXPECT_GT(j["total_steps"].get<int>(), 1);
    fs::remove(p);
    fs::remove(log);
}

}  // namespace
}  // namespace sr

namespace sr {
namespace {

// The finished run's checkpoint cannot be written (here its folder's name is taken by a file;
// a full disk alike): the run's figures are kept and the failure is told with them, not instead.
TEST(Checkpoint, AnUnwritableFinalCheckpointKeepsTheRunsFigures) {
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 5);
    Recipe r = tiny_recipe();
    r.epochs = 1;
    const fs::path blocker = test::temp_path("not-a-folder");
    fs::remove_all(blocker);
    auto backend = make_cpu_backend(2);
    Trainer t(*backend, r, data, tiny_options((blocker / "c.safetensors").string()));
    std::ofstream(blocker) << "a file where the checkpoint's folder would be\n";
    const RunResult res = t.run(1);
    EXPECT_TRUE(test::contains(res.checkpoint_error, "not-a-folder")) << res.checkpoint_error;
    EXPECT_EQ(res.epochs.size(), 1u);
    EXPECT_GT(res.test_accuracy_tta, 0.0);
    fs::remove_all(blocker);
}

// A run stopped by --stop-after-step (or a signal) whose own checkpoint cannot be written (its
// folder's name taken by a file after an earlier save; a full disk alike): an error that says
// the run stopped, that this save failed, and which save the file still holds; the log's last
// line says so too.
struct FolderTakerAtStep : ForwardingBackend {
    using ForwardingBackend::ForwardingBackend;
    fs::path folder;
    int at_step = 0, steps = 0;
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override {
        f();
    }
    void cross_entropy(float* dlogits, float* stats, const float* logits, const int32_t* labels, int N, int O,
                       float smoothing) override {
        if (dlogits && ++steps == at_step) {  // (a training step's loss: it has a gradient)
            fs::rename(folder, folder.string() + ".kept");
            std::ofstream(folder) << "a file where the checkpoint's folder was\n";
        }
        ForwardingBackend::cross_entropy(dlogits, stats, logits, labels, N, O, smoothing);
    }
};

TEST(Checkpoint, AStoppedRunWhoseSaveFailsSaysWhatTheFileHolds) {
    const Cifar10 data = make_synthetic_cifar10(2048, 256, 8);
    const Recipe r = tiny_recipe();  // (airbench94: no cutmix, the plain loss op)
    auto cpu = make_cpu_backend(2);
    FolderTakerAtStep backend(*cpu);
    backend.folder = test::temp_path("ckfolder");
    backend.at_step = 6;
    fs::remove_all(backend.folder);
    fs::remove_all(backend.folder.string() + ".kept");
    const std::string p = (backend.folder / "c.safetensors").string();
    TrainOptions o = tiny_options(p);
    o.checkpoint_every = 4;
    o.stop_after_step = 8;
    const std::string log = temp("stopfail.jsonl");
    fs::remove(log);
    o.log_path = log;
    Trainer t(backend, r, data, o);
    const std::string m = test::error_of([&] { t.run(3); });
    EXPECT_TRUE(test::contains(m, "stopped after step 8 of ")) << m;
    EXPECT_TRUE(test::contains(m, "(--stop-after-step), but its checkpoint was not written: ")) << m;
    EXPECT_TRUE(test::contains(m, p + " is as it was (step 4, this run's last save)")) << m;
    EXPECT_GE(backend.steps, 8);
    EXPECT_EQ(read_checkpoint(backend.folder.string() + ".kept/c.safetensors").state.step, 4);
    const nlohmann::json j = last_log_line(log);
    EXPECT_EQ(j["event"], "stopped");
    EXPECT_EQ(j["reason"], "stop_after_step");
    EXPECT_EQ(j["steps"], 8);
    EXPECT_TRUE(test::contains(j.value("checkpoint_error", ""), backend.folder.string())) << j.dump();
    EXPECT_EQ(j["checkpoint"], p);  // (what a resume can start from: this run's last save)
    EXPECT_EQ(j["checkpoint_step"], 4);
    fs::remove_all(backend.folder);
    fs::remove_all(backend.folder.string() + ".kept");
    fs::remove(log);
}

// A log that cannot be written (/dev/full: every write says the disk is full) warns once and
// ends; the run it records goes on.
TEST(Checkpoint, AFullLogWarnsAndStops) {
    JsonlLog log("/dev/full");
    ASSERT_TRUE(log.open());
    testing::internal::CaptureStderr();
    EXPECT_NO_THROW(log.write({{"event", "epoch"}}));
    EXPECT_NO_THROW(log.write({{"event", "epoch"}}));
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_TRUE(test::contains(err, "/dev/full: write failed")) << err;
    EXPECT_TRUE(test::contains(err, "the log stops here")) << err;
    EXPECT_FALSE(log.open());
}


// A checkpoint whose run state its own recipe cannot have (a damaged or edited file: step 999 of
// a 2-step run, negative seconds) is refused on resume, not run from there.
TEST(Checkpoint, AStateItsRecipeCannotHaveIsRefused) {
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 5);
    const std::string p = temp("state.safetensors");
    auto backend = make_cpu_backend(2);
    finished_one_epoch(*backend, data, p);
    for (const auto& [key, value] : {std::pair<const char*, nlohmann::json>{"step", 999}, {"timed", -5.0}, {"steps_in_epoch", 77}}) {
        SCOPED_TRACE(key);
        nlohmann::json kept;
        edit_state(p, [&](nlohmann::json& state) {
            kept = state;
            state[key] = value;
        });
        const Checkpoint c = read_checkpoint(p);
        Trainer t(*backend, c.recipe, data, tiny_options(p));
        const std::string msg = test::error_of([&] { t.run(0, false, &c); });
        EXPECT_TRUE(test::contains(msg, "the checkpoint's run state does not fit its recipe")) << msg;
        edit_state(p, [&](nlohmann::json& state) { state = kept; });
    }
    fs::remove(p);
}


// What a damaged or hand-edited file holds is refused by read_checkpoint, naming the file and the
// fault (eval, predict, export and --resume went on with wrong weights, flips or draws).
TEST(Checkpoint, DamagedBytesAndImpossibleStatesAreRefusedByName) {
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 5);
    const std::string p = temp("damaged.safetensors");
    auto backend = make_cpu_backend(2);
    finished_one_epoch(*backend, data, p);
    const std::string good = [&] {
        std::ifstream f(p, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(f), {});
    }();
    const auto put = [&](const std::string& bytes) {
        std::ofstream f(p, std::ios::binary | std::ios::trunc);
        f.write(bytes.data(), std::streamsize(bytes.size()));
    };
    const auto refused = [&](const std::string& what) {
        const std::string msg = test::error_of([&] { read_checkpoint(p); });
        EXPECT_TRUE(test::contains(msg, "checkpoint " + p)) << msg;
        EXPECT_TRUE(test::contains(msg, what)) << msg;
    };
    // one byte of the tensor data changed (its length kept)
    uint64_t header = 0;
    std::memcpy(&header, good.data(), 8);
    std::string bad = good;
    bad[8 + header + 100] ^= 0x10;
    put(bad);
    refused("its tensors do not match the checksum saved with them");
    // a file written before the checksum was kept still reads
    put(good);
    {
        StFile f = read_safetensors(p);
        f.metadata.erase("tensors_fnv1a64");
        write_safetensors(p, f);
        EXPECT_NO_THROW(read_checkpoint(p));
    }
    // flips and generator state that no run makes (the checksum made to fit, as an editor would)
    const auto edit_tensor = [&](const std::string& name, const std::function<void(std::vector<uint8_t>&)>& edit) {
        StFile f = read_safetensors(p);
        edit(f.tensors.at(name).data);
        f.metadata["tensors_fnv1a64"] = fmt::format("{:016x}", tensors_hash(f));
        write_safetensors(p, f);
    };
    put(good);
    edit_tensor("state.base_flip", [](std::vector<uint8_t>& d) { d[3] = 2; });
    refused("state.base_flip[3] is 2 (a flip is 0 or 1)");
    // counts that are not whole numbers in range, and finished epochs that cannot be read
    for (const auto& [key, value, what] :
         {std::tuple<const char*, nlohmann::json, const char*>{"step", 10.5, "'step' is not a count from 0 to"},
          {"n_train", 4294968320ull, "'n_train' is not a count from 0 to"},
          {"epoch", -1, "'epoch' is not a count from 0 to"},
          {"seed", -5, "'seed' is not a whole number >= 0"},
          {"epochs", 5, "'epochs' is not a list"},
          {"epochs", nlohmann::json::array({{{"epoch", 0}, {"total_seconds", 1.0}}}), "'epochs' holds a bad entry"}}) {
        SCOPED_TRACE(key);
        put(good);
        edit_state(p, [&, key = key, value = value](nlohmann::json& state) { state[key] = value; });
        refused(what);
    }
    // a generator state of zeros (from which it draws only zeros) in a run that has steps to go;
    // a finished run's checkpoint holds zeros (it draws nothing more) and reads
    put(good);
    EXPECT_NO_THROW(read_checkpoint(p));
    const Cifar10 data8 = make_synthetic_cifar10(2048, 512, 4);  // (8 steps an epoch)
    interrupted_after_step_11(*backend, data8, p);
    edit_tensor("state.rng", [](std::vector<uint8_t>& d) { std::fill(d.begin(), d.end(), 0); });
    const Checkpoint c = read_checkpoint(p);
    Trainer t(*backend, c.recipe, data8, tiny_options(p));
    const std::string msg = test::error_of([&] { t.run(0, false, &c); });
    EXPECT_TRUE(test::contains(msg, "state.rng is all zeros")) << msg;
    fs::remove(p);
}

// The training images' fingerprint (kept in checkpoints, compared on --resume and eval): the
// same images give the same text, other images or another count do not.
TEST(Checkpoint, DataFingerprintTellsTrainingSetsApart) {
    const Cifar10 a = make_synthetic_cifar10(512, 64, 5), same = make_synthetic_cifar10(512, 64, 5),
                  other = make_synthetic_cifar10(512, 64, 6);
    const std::string fa = data_fingerprint(a.train.images, a.train.labels, 512);
    EXPECT_EQ(fa.rfind("fnv1a64:", 0), 0u) << fa;
    EXPECT_EQ(fa, data_fingerprint(same.train.images, same.train.labels, 512));
    EXPECT_NE(fa, data_fingerprint(other.train.images, other.train.labels, 512));
    EXPECT_NE(fa, data_fingerprint(a.train.images, a.train.labels, 256));
    std::vector<int32_t> relabelled = a.train.labels;
    relabelled[100] = (relabelled[100] + 1) % 10;
    EXPECT_NE(fa, data_fingerprint(a.train.images, relabelled, 512));
}

}  // namespace
}  // namespace sr
