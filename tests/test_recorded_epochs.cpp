// test_recorded_epochs.cpp: the trainer's recorded epochs (TrainOptions::record_epochs, CUDA
// graphs on a GPU) are checked on the CPU through RecordingBackend, which keeps each recorded
// call with the arguments it was given, as a CUDA graph does. A run whose epochs are replayed
// recordings, made by an earlier run of the same trainer, must be bit-identical to a run that
// launches every op directly; anything a step takes from the host that changes between runs or
// epochs (an lr, a data offset, a flag) would make the replay differ.
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/forwarding_backend.h"
#include "ops/recording_backend.h"
#include "train/trainer.h"
#include "test_util.h"

namespace sr {
namespace {

TEST(RecordingBackend, RecordsWithTheArgumentsOfTheCallAndRunsOnlyOnReplay) {
    auto cpu = make_cpu_backend(1);
    RecordingBackend rb(*cpu);
    DeviceBuffer<float> x(rb, 4), y(rb, 4);
    const std::vector<float> ones(4, 1.f), twos(4, 2.f);
    rb.upload(x.get(), ones.data(), 16);
    rb.upload(y.get(), twos.data(), 16);
    ASSERT_TRUE(rb.begin_recording());
    float a = 3.f;
    rb.axpy(y.get(), x.get(), a, 4);  // y += 3 x, with a = 3 as recorded
    a = 100.f;                        // (a later change of the caller's variable is not seen)
    EXPECT_THROW(rb.download(nullptr, y.get(), 16), Error);  // host work cannot be recorded
    EXPECT_THROW(rb.synchronize(), Error);
    EXPECT_THROW(rb.alloc(16), Error);  // (no allocation inside recorded work)
    std::string why;
    auto rec = rb.end_recording(&why);
    ASSERT_TRUE(rec) << why;
    EXPECT_EQ(rec->kernel_count(), 1u);
    std::vector<float> out(4);
    rb.download(out.data(), y.get(), 16);
    EXPECT_EQ(out, twos) << "a recorded op ran while recording";
    rec->replay();
    rec->replay();
    rb.download(out.data(), y.get(), 16);
    EXPECT_EQ(out, std::vector<float>(4, 8.f));  // 2 + 3 + 3
    EXPECT_EQ(rb.replays(), 2);
}

struct Outcome {
    std::vector<float> weights;
    std::vector<double> losses, test_acc;
    double tta = 0;
    int replayed = 0;
    std::string recording_failed;
};

Outcome outcome(Trainer& t, uint64_t seed) {
    const RunResult r = t.run(seed);
    Outcome o;
    t.network().download(o.weights);
    for (const EpochStats& e : r.epochs) {
        o.losses.push_back(e.train_loss);
        o.test_acc.push_back(e.test_acc);
    }
    o.tta = r.test_accuracy_tta;
    o.replayed = r.replayed_epochs;
    o.recording_failed = r.recording_failed;
    return o;
}

void expect_same(const Outcome& direct, const Outcome& replayed) {
    ASSERT_EQ(direct.weights.size(), replayed.weights.size());
    size_t differ = 0;
    for (size_t i = 0; i < direct.weights.size(); ++i) differ += direct.weights[i] != replayed.weights[i];
    EXPECT_EQ(differ, 0u) << "of " << direct.weights.size() << " parameters";
    EXPECT_EQ(direct.losses, replayed.losses);
    EXPECT_EQ(direct.test_acc, replayed.test_acc);
    EXPECT_EQ(direct.tta, replayed.tta);
}

// A preset at reduced width (w, 2w, 2w; resnet9's four widths w, w, 2w, 2w), batch 256, 3 epochs
// (4 steps each on the 1,024 images below); cutmix (hlb: from epoch 6.1) from the second epoch.
Recipe small_recipe(const char* preset, int w) {
    Recipe r = load_recipe(preset, "");
    if (r.net.arch == Arch::resnet9) r.net.widths = {w, w, 2 * w, 2 * w};
    else r.net.widths = {w, 2 * w, 2 * w};
    r.batch_size = 256;
    r.epochs = 3;
    if (r.cutmix > 0) r.cutmix_from_epoch = 1;
    return r;
}

TrainOptions quiet_options() {
    TrainOptions o;
    o.quiet = true;
    o.progress = false;
    return o;
}

class RecordedEpochs : public ::testing::TestWithParam<const char*> {};

// Two runs (seeds 1 and 2) on one trainer whose backend records, against the same two runs on
// the CPU directly: the first run trains epoch 0 directly (nothing is recorded before a step has
// run) and records it afterwards, and records and replays epochs 1-2; the second replays all
// three.
TEST_P(RecordedEpochs, ReplayedRunsAreBitIdenticalToDirectOnes) {
    const Recipe r = small_recipe(GetParam(), 8);
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 9);
    TrainOptions o = quiet_options();
    auto cpu = make_cpu_backend(2);
    Trainer direct(*cpu, r, data, o);
    const Outcome d1 = outcome(direct, 1), d2 = outcome(direct, 2);
    EXPECT_EQ(d1.replayed + d2.replayed, 0) << "the CPU backend cannot record";

    RecordingBackend rb(*cpu);
    Trainer recorded(rb, r, data, o);
    const Outcome g1 = outcome(recorded, 1);
    EXPECT_EQ(g1.replayed, 2);
    EXPECT_EQ(rb.recordings(), 3) << "every epoch is recorded in the first run";
    const Outcome g2 = outcome(recorded, 2);
    EXPECT_EQ(g2.replayed, 3);
    EXPECT_EQ(rb.recordings(), 3) << "the second run (the timed one after a warm-up) records nothing";
    EXPECT_EQ(rb.replays(), 5);
    {
        SCOPED_TRACE("seed 1: epoch 0 direct, epochs 1-2 recorded and replayed");
        expect_same(d1, g1);
    }
    {
        SCOPED_TRACE("seed 2: every epoch replayed from seed 1's recordings");
        expect_same(d2, g2);
    }
    EXPECT_NE(d1.weights, d2.weights);  // (the seeds differ: so does what the replays must give)

    // with record_epochs off, nothing is recorded
    o.record_epochs = false;
    Trainer off(rb, r, data, o);
    EXPECT_EQ(outcome(off, 1).replayed, 0);
    EXPECT_EQ(rb.replays(), 5);
}

// A backend that records as RecordingBackend does but then refuses to hand the recording over,
// as a CUDA stream capture does when a captured call is illegal there.
class RefusingRecorder final : public ForwardingBackend {
public:
    explicit RefusingRecorder(RecordingBackend& rb)
        : ForwardingBackend(static_cast<Backend&>(rb)), rb_(rb) {}
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override {
        f();  // (the inner RecordingBackend records it, or runs it when not recording)
    }
    bool begin_recording() override { return rb_.begin_recording(); }
    std::unique_ptr<Recording> end_recording(std::string* why) override {
        rb_.end_recording(nullptr);  // (made, and thrown away)
        if (why) *why = "refused by the test";
        ++refused_;
        return nullptr;
    }
    int refused_ = 0;

private:
    RecordingBackend& rb_;
};

// A failed recording costs speed, never results: the run goes on op by op, with the same
// weights as a direct run, tries no further recordings, and says why in its result.
TEST(RecordedEpochsFailure, RunGoesOnDirectlyAndSaysWhy) {
    const Recipe r = small_recipe("airbench94", 8);
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 9);
    const TrainOptions o = quiet_options();
    auto cpu = make_cpu_backend(2);
    Trainer direct(*cpu, r, data, o);
    const Outcome d1 = outcome(direct, 1), d2 = outcome(direct, 2);
    EXPECT_TRUE(d1.recording_failed.empty()) << d1.recording_failed;

    RecordingBackend rb(*cpu);
    RefusingRecorder refusing(rb);
    Trainer t(refusing, r, data, o);
    const Outcome f1 = outcome(t, 1);
    EXPECT_EQ(f1.replayed, 0);
    EXPECT_EQ(refusing.refused_, 1) << "after one refusal no epoch is recorded again";
    EXPECT_EQ(f1.recording_failed, "epoch 0: refused by the test");
    const Outcome f2 = outcome(t, 2);
    EXPECT_EQ(f2.replayed, 0);
    EXPECT_EQ(refusing.refused_, 1);
    EXPECT_EQ(f2.recording_failed, f1.recording_failed) << "the trainer keeps saying why";
    EXPECT_EQ(rb.replays(), 0);
    {
        SCOPED_TRACE("seed 1");
        expect_same(d1, f1);
    }
    {
        SCOPED_TRACE("seed 2");
        expect_same(d2, f2);
    }
}

// On a GPU, the same with real CUDA graphs (stream capture), for each preset above (Muon's
// grouped GEMMs, cutmix, EMA and ghost BN are recorded too): the replayed runs against direct
// ones. cuDNN may pick other algorithms for the two trainers' convolutions (each times its own),
// so the comparison allows rounding-sized differences; a replay of the wrong epoch's steps moves
// the losses by 1e-2 or more (seen on the CPU).
TEST_P(RecordedEpochs, CudaGraphReplaysAgreeWithDirectRuns) {
    std::string why;
    auto gpu = make_cuda_backend(0, &why);
    if (!gpu) GTEST_SKIP() << "no CUDA device: " << why;
    const Recipe r = small_recipe(GetParam(), 16);
    const Cifar10 data = make_synthetic_cifar10(1024, 256, 9);
    TrainOptions o = quiet_options();
    Trainer recorded(*gpu, r, data, o);
    const Outcome g1 = outcome(recorded, 1), g2 = outcome(recorded, 2);
    o.record_epochs = false;
    Trainer direct(*gpu, r, data, o);
    const Outcome d1 = outcome(direct, 1), d2 = outcome(direct, 2);
    EXPECT_EQ(g1.recording_failed, "") << "stream capture of a training epoch failed";
    EXPECT_EQ(g1.replayed, 2);
    EXPECT_EQ(g2.replayed, 3) << "the second run must replay every epoch";
    EXPECT_EQ(d1.replayed + d2.replayed, 0);
    for (const auto& [d, g] : {std::pair{&d1, &g1}, std::pair{&d2, &g2}}) {
        ASSERT_EQ(d->losses.size(), g->losses.size());
        for (size_t e = 0; e < d->losses.size(); ++e)
            EXPECT_NEAR(d->losses[e], g->losses[e], 5e-3) << "epoch " << e;
        EXPECT_NEAR(d->tta, g->tta, 0.02);
    }
}

// airbench94: lookahead events and the whitening bias's first steps; hiverge: Muon (its
// renormalisation schedule kept on the host), colour jitter; hlb: cutmix from epoch 1, a
// late lookahead start; tricks10: an EMA every few steps, ghost batch norm, one crop per batch.
INSTANTIATE_TEST_SUITE_P(Presets, RecordedEpochs,
                         ::testing::Values("airbench94", "hiverge", "hlb", "tricks10"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace sr
