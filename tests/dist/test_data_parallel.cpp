// test_data_parallel.cpp: data-parallel training in one process, "ranks" as threads
// (thread_comm.h): one training step of K workspaces of B/K images each, through DataParallel
// (the gradient sum and the sync-BN hook, exactly as `train --distributed` uses them), against
// one workspace in one process. Each rank has its own Network and CPU backend, as a process
// would. The loss is summed over the batch, so the full batch's gradient is the SUM of the
// slices' gradients (data_parallel.h); the optimizer step is the recipe's.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <string>
#include <memory>
#include <thread>

#include <unistd.h>

#include <gtest/gtest.h>
#if SPEEDRUN_HAVE_NCCL
#include <cuda_runtime.h>  // (a host function on the backend's stream: a rank that stops)
#endif

#include "dist/data_parallel.h"
#include "dist/thread_comm.h"
#include "ops/forwarding_backend.h"
#include "optim/optimizer.h"
#include "cutmix_spy.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/recipe.h"
#include "train/trainer.h"
#include "core/error.h"

namespace sr {
namespace {

constexpr size_t kImage = 32 * 32 * 3;

struct Batch {
    std::vector<float> x;
    std::vector<int32_t> y;
};

Batch make_batch(int n, uint64_t seed) {
    Batch d{test::randn(size_t(n) * kImage, seed), std::vector<int32_t>(size_t(n))};
    Rng r(seed + 1);
    for (auto& v : d.y) v = int32_t(r.below(10));
    return d;
}

Recipe tiny_recipe(int batch) {
    Recipe r = load_recipe("airbench94", "");
    r.net.widths = {8, 16, 16};
    r.batch_size = batch;
    return r;
}

struct Step {
    std::vector<float> grads;   // after backward (and the sum over ranks, with a communicator)
    std::vector<float> params;  // after the optimizer step (BN running statistics included)
};

// One training step of n images from row `row` of d, on a fresh network initialised as every
// rank's is; with comm, through DataParallel as the trainer does.
Step one_step(const Recipe& r, const Batch& d, int row, int n, Communicator* comm, bool sync_bn,
              size_t bucket_floats = DataParallel::Options{}.bucket_floats, bool staged = false) {
    auto b = make_cpu_backend(1);
    Network net(*b, r.net);
    Rng rng(5);
    net.init(rng);
    Workspace ws(net, n, true, comm ? comm->world() : 1);
    std::unique_ptr<DataParallel> dp;
    if (comm) {
        dp = std::make_unique<DataParallel>(net, *comm,
                                            DataParallel::Options{sync_bn, bucket_floats, staged});
        ws.set_hooks(dp.get());
    }
    Optimizer opt(net, r);
    DeviceBuffer<float> xd(*b, size_t(n) * kImage), stats(*b, 2);
    DeviceBuffer<int32_t> yd(*b, size_t(n));
    b->upload(xd.get(), d.x.data() + size_t(row) * kImage, size_t(n) * kImage * sizeof(float));
    b->upload(yd.get(), d.y.data() + row, size_t(n) * sizeof(int32_t));
    const float* logits = ws.forward(xd.get(), true);
    b->cross_entropy(ws.dlogits(), stats.get(), logits, yd.get(), n, 10, r.label_smoothing);
    ws.backward(ws.dlogits(), true);
    if (dp) dp->finish_step();
    Step s{std::vector<float>(net.size()), std::vector<float>(net.size())};
    b->download(s.grads.data(), net.grads.get(), net.size() * sizeof(float));
    opt.step(1.0, true);
    b->download(s.params.data(), net.params.get(), net.size() * sizeof(float));
    return s;
}

// K ranks as threads, rank k on rows [k B/K, (k+1) B/K).
std::vector<Step> data_parallel_step(const Recipe& r, const Batch& d, int K, bool sync_bn,
                                     size_t bucket_floats = DataParallel::Options{}.bucket_floats,
                                     bool staged = false) {
    test::ThreadGroup group(K);
    std::vector<Step> out(static_cast<size_t>(K));
    std::vector<std::string> errors(static_cast<size_t>(K));
    std::vector<std::thread> threads;
    const int Bl = r.batch_size / K;
    for (int k = 0; k < K; ++k)
        threads.emplace_back([&, k] {
            try {
                test::ThreadGroup::Comm comm(group, k);
                out[size_t(k)] = one_step(r, d, k * Bl, Bl, &comm, sync_bn, bucket_floats, staged);
            } catch (const std::exception& e) {
                errors[size_t(k)] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    for (int k = 0; k < K; ++k) EXPECT_EQ(errors[size_t(k)], "") << "rank " << k;
    return out;
}

bool is_learnable(ParamGroup g) {
    return g == ParamGroup::whiten_bias || g == ParamGroup::weight || g == ParamGroup::bn_bias ||
           g == ParamGroup::bn_scale;
}

// Per tensor: max |got - ref| / rms(ref); the worst tensor. Tensors of the groups `take` only.
struct Worst {
    std::string name = "-";
    double err = 0;
};
Worst worst(const Recipe& r, const std::vector<float>& got, const std::vector<float>& ref,
            bool with_buffers) {
    auto b = make_cpu_backend(1);
    Network net(*b, r.net);  // for the layout only
    Worst w;
    for (const TensorSpec& t : net.tensors()) {
        if (!is_learnable(t.group) && !(with_buffers && t.group == ParamGroup::buffer)) continue;
        double mx = 0, ss = 0;
        for (size_t i = t.offset; i < t.offset + t.count; ++i) {
            mx = std::max(mx, std::abs(double(got[i]) - double(ref[i])));
            ss += double(ref[i]) * double(ref[i]);
        }
        const double rms = std::sqrt(ss / double(t.count));
        const double e = mx == 0 ? 0 : (rms > 0 ? mx / rms : HUGE_VAL);
        if (e > w.err) w = {t.name, e};
    }
    return w;
}

// Tolerance of the comparisons with one process: 1e-3 of each tensor's rms. Only rounding
// differs: the sync-BN statistics are float sums per rank, added over the ranks, in two passes
// (the whole op sums in double in one), which moves mean and invstd by ~1e-7 relative; the
// layers after pass that on. Measured (2026-11-23): every tensor within 2e-5, except the
// whitening bias, whose gradient is a sum over all N*31*31 positions that nearly cancels (the BN
// after the first conv removes the mean): up to 1.5e-4. 1e-3 leaves >5x and still catches a
// slice missed or counted twice (an error of order 1).
constexpr double kTol = 1e-3;

void expect_ranks_identical(const std::vector<Step>& dp) {
    for (size_t k = 1; k < dp.size(); ++k) {
        EXPECT_EQ(dp[k].grads, dp[0].grads) << "rank " << k << " holds other gradients than rank 0";
        EXPECT_EQ(dp[k].params, dp[0].params) << "rank " << k << " holds other weights than rank 0";
    }
}

void sync_bn_case(int K) {
    const Recipe r = tiny_recipe(32);
    const Batch d = make_batch(32, 100 + K);
    const Step ref = one_step(r, d, 0, 32, nullptr, false);
    const auto dp = data_parallel_step(r, d, K, true);
    ASSERT_EQ(dp.size(), size_t(K));
    const Worst g = worst(r, dp[0].grads, ref.grads, false);
    const Worst w = worst(r, dp[0].params, ref.params, true);
    std::printf(
        "[ result ] %d ranks, sync-BN: gradients worst %.3g (%s), weights and running "
        "statistics worst %.3g (%s)\n",
        K, g.err, g.name.c_str(), w.err, w.name.c_str());
    EXPECT_LE(g.err, kTol) << "gradient of " << g.name;
    EXPECT_LE(w.err, kTol) << "weight (or running statistic) " << w.name;
    expect_ranks_identical(dp);
}

// Sync-BN: 2 ranks of 16 images = one process on the 32.
TEST(DataParallel, SyncBnTwoRanksEqualTheFullBatch) { sync_bn_case(2); }

// The same with 4 ranks of 8 images.
TEST(DataParallel, SyncBnFourRanksEqualTheFullBatch) { sync_bn_case(4); }

// Ghost BN (resnet9, tricks10) over 2 ranks: each rank's 16 images are 2 of one process's 4
// ghost batches of 8, normalised as there, so the summed step is one process's on the 32 (each
// rank cut its 16 into 4 ghost batches of 4 before, and tricks10 changed its recipe under
// --distributed). A ghost_splits that the ranks do not divide is refused.
TEST(DataParallel, GhostBnRanksNormaliseOneProcesssGhostBatches) {
    Recipe r = load_recipe("tricks10", "");
    r.net.widths = {8, 8, 16, 16};
    r.net.ghost_splits = 4;
    r.batch_size = 32;
    r.optimizer = "sgd";  // (one_step's update; the network is what is compared)
    r.lr_in_velocity = false;
    const Batch d = make_batch(32, 300);
    const Step ref = one_step(r, d, 0, 32, nullptr, false);
    const auto dp = data_parallel_step(r, d, 2, false);
    ASSERT_EQ(dp.size(), 2u);
    const Worst g = worst(r, dp[0].grads, ref.grads, false);
    const Worst w = worst(r, dp[0].params, ref.params, false);
    std::printf("[ result ] ghost BN on 2 ranks: gradients worst %.3g (%s), weights worst %.3g (%s)\n", g.err,
                g.name.c_str(), w.err, w.name.c_str());
    EXPECT_LE(g.err, kTol) << "gradient of " << g.name;
    EXPECT_LE(w.err, kTol) << "weight " << w.name;
    // the ranks hold the same gradients and weights (each its own ghost batches' running
    // statistics: rank 0's are the ones evaluated and saved)
    EXPECT_EQ(dp[1].grads, dp[0].grads);
    EXPECT_EQ(worst(r, dp[1].params, dp[0].params, false).err, 0.0);
    auto b = make_cpu_backend(1);
    r.net.ghost_splits = 2;
    Network net(*b, r.net);
    EXPECT_TRUE(test::contains(test::error_of([&] { Workspace ws(net, 8, true, 4); }),
                               "ghost BN over 4 ranks: net.ghost_splits (2) must be a multiple of the ranks"));
}

// Per-rank BN (the default, as DDP): the summed gradient is the sum of the slices' gradients,
// each slice normalised by its own statistics (computed here one after another).
TEST(DataParallel, PerRankBnSumsTheSlicesGradients) {
    const Recipe r = tiny_recipe(32);
    const Batch d = make_batch(32, 200);
    std::vector<float> sum;
    for (int k = 0; k < 2; ++k) {
        const Step s = one_step(r, d, 16 * k, 16, nullptr, false);
        if (sum.empty()) sum.assign(s.grads.size(), 0.f);
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += s.grads[i];
    }
    const auto dp = data_parallel_step(r, d, 2, false);
    const Worst g = worst(r, dp[0].grads, sum, false);
    std::printf("[ result ] per-rank BN: gradients worst %.3g (%s)\n", g.err, g.name.c_str());
    // the same computation per slice; only the float sum over ranks may round differently
    EXPECT_LE(g.err, 1e-6) << "gradient of " << g.name;
    for (size_t k = 1; k < dp.size(); ++k) EXPECT_EQ(dp[k].grads, dp[0].grads) << "rank " << k;
}

// Buckets change when sums start, not what they are: tiny buckets (many sums) give the same
// bits as the default ones.
TEST(DataParallel, BucketSizeDoesNotChangeTheSum) {
    const Recipe r = tiny_recipe(32);
    const Batch d = make_batch(32, 300);
    const auto a = data_parallel_step(r, d, 2, true);
    const auto b = data_parallel_step(r, d, 2, true, 300);
    EXPECT_EQ(a[0].grads, b[0].grads);
    EXPECT_EQ(a[0].params, b[0].params);
}

// Sums staged through host copies (the path of a CUDA build without NCCL, here on the CPU
// backend) give the same bits as the sums in place.
TEST(DataParallel, StagedThroughHostGivesTheSameSums) {
    const Recipe r = tiny_recipe(32);
    const Batch d = make_batch(32, 500);
    const auto a = data_parallel_step(r, d, 2, true);
    const auto b = data_parallel_step(r, d, 2, true, DataParallel::Options{}.bucket_floats, true);
    EXPECT_EQ(a[0].grads, b[0].grads);
    EXPECT_EQ(a[0].params, b[0].params);
    EXPECT_EQ(a[1].params, b[1].params);
}

// One rank: DataParallel is a no-op, the step is the plain one bit for bit.
TEST(DataParallel, OneRankIsThePlainStep) {
    const Recipe r = tiny_recipe(16);
    const Batch d = make_batch(16, 400);
    const Step plain = one_step(r, d, 0, 16, nullptr, false);
    auto single = make_single_communicator();
    const Step dp = one_step(r, d, 0, 16, single.get(), true);
    EXPECT_EQ(dp.grads, plain.grads);
    EXPECT_EQ(dp.params, plain.params);
}

// opt.drop_last false over several ranks is refused with a message naming the key, before any
// collective call (this test's one thread would otherwise wait for the second rank for ever).
TEST(DataParallel, KeepingThePartialBatchIsRefused) {
    const Cifar10 data = make_synthetic_cifar10(1000, 100, 2);
    Recipe r = load_recipe("myrtle-reg", "");
    r.net.widths = {8, 8, 16, 16};
    r.batch_size = 256;
    test::ThreadGroup g(2);
    test::ThreadGroup::Comm rank0(g, 0);
    TrainOptions o;
    o.quiet = true;
    o.comm = &rank0;
    auto b = make_cpu_backend(1);
    EXPECT_TRUE(test::contains(test::error_of([&] { Trainer t(*b, r, data, o); }), "opt.drop_last"));
    r.drop_last = true;  // (1000 = 3 x 256 + 232: the rest is dropped, as before)
    Trainer ok(*b, r, data, TrainOptions{});
    EXPECT_EQ(ok.n_train(), 1000);
}

// Cutmix over ranks: each rank mixes its slice of every batch exactly as one process mixes those
// rows (the partners are drawn over the whole set by global position, and every rank makes the
// same draws), so the batches the network sees are the same, row for row, bit for bit.
TEST(DataParallel, CutmixRanksMixTheirSlicesAsOneProcess) {
    const Cifar10 data = make_synthetic_cifar10(1024, 100, 3);
    Recipe r = load_recipe("hlb", "");
    r.net.widths = {8, 16, 16};
    r.batch_size = 256;
    r.epochs = 1;
    r.cutmix_from_epoch = 0;
    r.whiten_images = 512;
    TrainOptions o;
    o.quiet = true;
    o.progress = false;
    o.eval_each_epoch = false;
    auto cpu = make_cpu_backend(1);
    test::CutmixSpy one(*cpu);
    Trainer(one, r, data, o).run(4);
    ASSERT_EQ(one.after.size(), 1024u);
    constexpr int K = 2, Bl = 128;
    std::vector<std::unique_ptr<Backend>> cpus;
    std::vector<std::unique_ptr<test::CutmixSpy>> spies;
    for (int k = 0; k < K; ++k) {
        cpus.push_back(make_cpu_backend(1));
        spies.push_back(std::make_unique<test::CutmixSpy>(*cpus.back()));
    }
    test::ThreadGroup g(K);
    std::vector<std::string> errors(K);
    std::vector<std::thread> threads;
    for (int k = 0; k < K; ++k)
        threads.emplace_back([&, k] {
            try {
                test::ThreadGroup::Comm comm(g, k);
                TrainOptions ok = o;
                ok.comm = &comm;
                Trainer(*spies[size_t(k)], r, data, ok).run(4);
            } catch (const std::exception& e) {
                errors[size_t(k)] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    for (int k = 0; k < K; ++k) {
        ASSERT_EQ(errors[size_t(k)], "") << "rank " << k;
        const test::CutmixSpy& s = *spies[size_t(k)];
        ASSERT_EQ(s.after.size(), 512u) << "rank " << k;
        for (size_t i = 0; i < s.after.size(); ++i) {
            const size_t step = i / Bl, row = step * 256 + size_t(k) * Bl + i % Bl;
            EXPECT_EQ(s.after[i], one.after[row]) << "rank " << k << ", step " << step << ", row " << i % Bl;
            EXPECT_EQ(s.labels2[i], one.labels2[row]) << "rank " << k << ", row " << i;
        }
    }
}

// One epoch of 4 steps of 256 images of the synthetic set, quietly: the trainer-level runs below.
struct TinyRun {
    Cifar10 data = make_synthetic_cifar10(1024, 100, 3);
    Recipe r = tiny_recipe(256);
    TrainOptions o;
    TinyRun() {
        r.epochs = 1;
        r.whiten_images = 512;
        o.quiet = true;
        o.progress = false;
        o.eval_each_epoch = false;
    }
};

// body(comm, k) on K ranks, each a thread; returns when all are done. A collective that some
// rank never reaches would leave the others waiting forever, so after 120 s a watchdog ends the
// test program with a message naming the test, instead of a hang until ctest's time limit.
void on_ranks(int K, const std::function<void(Communicator&, int)>& body) {
    test::ThreadGroup g(K);
    std::vector<std::thread> threads;
    std::promise<void> done;
    std::atomic<int> left{K};
    for (int k = 0; k < K; ++k)
        threads.emplace_back([&, k] {
            {
                test::ThreadGroup::Comm comm(g, k);
                body(comm, k);
            }
            if (--left == 0) done.set_value();
        });
    if (done.get_future().wait_for(std::chrono::seconds(120)) != std::future_status::ready) {
        const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
        std::fprintf(stderr, "%s.%s: a rank still runs 120 s after the others ended: the ranks' "
                             "collectives did not meet\n", t->test_suite_name(), t->name());
        std::fflush(stderr);
        std::_Exit(1);
    }
    for (auto& t : threads) t.join();
}

// Ctrl-C or SIGTERM reaches the ranks at different moments. Here only rank 1 sees it (from its
// first step on): every rank must still stop after the same step, or rank 0 would wait forever
// in the next step's gradient sum (and never save its checkpoint). A rank that decides alone
// hangs this test until on_ranks' watchdog ends it (checked).
TEST(DataParallel, AnInterruptSeenByOneRankStopsEveryRankAfterTheSameStep) {
    const TinyRun run;
    constexpr int K = 2;
    std::atomic<bool> flags[K] = {false, true};  // rank 1 "got the signal"
    std::vector<std::string> stopped(K);
    on_ranks(K, [&](Communicator& comm, int k) {
        try {
            auto b = make_cpu_backend(1);
            TrainOptions ok = run.o;
            ok.comm = &comm;
            ok.interrupt = &flags[k];
            Trainer(*b, run.r, run.data, ok).run(3);
            stopped[size_t(k)] = "(ran to the end)";
        } catch (const Interrupted& e) {
            stopped[size_t(k)] = e.what();
        } catch (const std::exception& e) {
            stopped[size_t(k)] = std::string("error: ") + e.what();
        }
    });
    for (int k = 0; k < K; ++k)
        EXPECT_TRUE(test::contains(stopped[size_t(k)], "stopped after step 1 of 4")) << "rank " << k << ": " << stopped[size_t(k)];
}

// Stopped mid-epoch and resumed on two ranks, the epoch's train loss and accuracy are those of
// the global batches, as without the stop. Each rank held its own slices' sums; the checkpoint
// kept rank 0's, and on resume every rank started from them, so rank 0's first steps counted
// twice and rank 1's not at all (checked: the accuracy differed).
TEST(DataParallel, AnEpochResumedOnTwoRanksCountsEveryImageOnce) {
    TinyRun run;  // 4 steps of 256 (128 a rank)
    const std::string ckpt = (std::filesystem::temp_directory_path() /
                              ("speedrun-dp-stats-" + std::to_string(::getpid()) + ".safetensors")).string();
    constexpr int K = 2;
    std::vector<RunResult> whole(K), resumed(K);
    on_ranks(K, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        TrainOptions ok = run.o;
        ok.comm = &comm;
        whole[size_t(k)] = Trainer(*b, run.r, run.data, ok).run(3);
    });
    on_ranks(K, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        TrainOptions ok = run.o;
        ok.comm = &comm;
        ok.checkpoint_path = ckpt;
        ok.stop_after_step = 2;
        try {
            Trainer(*b, run.r, run.data, ok).run(3);
        } catch (const Interrupted&) {
        }
    });
    const Checkpoint saved = read_checkpoint(ckpt);
    ASSERT_EQ(saved.state.steps_in_epoch, 2);
    on_ranks(K, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        TrainOptions ok = run.o;
        ok.comm = &comm;
        ok.checkpoint_path = ckpt;
        resumed[size_t(k)] = Trainer(*b, run.r, run.data, ok).run(3, false, &saved);
    });
    std::filesystem::remove(ckpt);
    ASSERT_EQ(whole[0].epochs.size(), 1u);
    ASSERT_EQ(resumed[0].epochs.size(), 1u);
    const EpochStats &w = whole[0].epochs[0], &r = resumed[0].epochs[0];
    EXPECT_NEAR(r.train_loss, w.train_loss, 1e-5 * std::abs(w.train_loss));
    EXPECT_NEAR(r.train_acc, w.train_acc, 1e-6);  // (a count over 1024 images)
}

// A backend whose inference-mode batch norms take 0.4 s each: an evaluation of seconds.
class SlowEvaluation final : public ForwardingBackend {
public:
    using ForwardingBackend::ForwardingBackend;
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override { f(); }
    void bn_forward_eval(float* y, const float* x, const float* rm, const float* rv, const float* g,
                         const float* b, int M, int C, float eps) override {
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        ForwardingBackend::bn_forward_eval(y, x, rm, rv, g, b, M, C, eps);
    }
    void bn_act_forward_eval(float* z, const float* x, const float* rm, const float* rv, const float* g,
                             const float* b, int M, int C, float eps, ActKind act, float alpha) override {
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
        ForwardingBackend::bn_act_forward_eval(z, x, rm, rv, g, b, M, C, eps, act, alpha);
    }
};

// Rank 0 evaluates each epoch alone. The other ranks wait for it in a barrier with the time limit
// off (SPEEDRUN_MPI_TIMEOUT, communicator.h), not in the next epoch's first gradient sum under
// it, where a slow evaluation or checkpoint would read as a lost rank. Without that barrier rank 1
// waits out rank 0's evaluation (2.4 s) under the limit (checked; 1.3 s with 0.2 s per BN).
TEST(DataParallel, RanksWaitForRankZerosEvaluationWithoutTheTimeLimit) {
    TinyRun run;
    run.r.epochs = 2;
    run.r.tta_level = 0;  // (the final evaluation, untimed anyway: one view)
    run.o.eval_each_epoch = true;
    constexpr int K = 2;
    std::vector<double> longest(K);
    on_ranks(K, [&](Communicator& comm, int k) {
        auto cpu = make_cpu_backend(1);
        SlowEvaluation slow(*cpu);
        Backend& b = k == 0 ? static_cast<Backend&>(slow) : *cpu;
        TrainOptions ok = run.o;
        ok.comm = &comm;
        const RunResult res = Trainer(b, run.r, run.data, ok).run(3);
        if (k == 0) EXPECT_EQ(res.epochs.size(), 2u);
        if (k == 0) EXPECT_GE(res.epochs.back().eval_seconds, 2.0) << "the evaluation was not slow";
        longest[size_t(k)] = static_cast<test::ThreadGroup::Comm&>(comm).longest_limited_wait();
    });
    for (int k = 0; k < K; ++k)
        EXPECT_LT(longest[size_t(k)], 1.2) << "rank " << k << " waited " << longest[size_t(k)]
                                            << " s in a collective under the time limit";
}

// The collectives behind those choices: a count of the ranks that say yes, and two ranks that
// name the same device.
TEST(DataParallel, RanksCountTheirAnswersAndFindASharedDevice) {
    constexpr int K = 3;
    const char* ids_distinct[K] = {"GPU-0a", "GPU-1b", "GPU-2c"};
    const char* ids_shared[K] = {"GPU-0a", "GPU-1b", "GPU-0a"};
    std::vector<int> yes(K);
    std::vector<std::pair<int, int>> distinct(K), shared(K);
    on_ranks(K, [&](Communicator& comm, int k) {
        yes[size_t(k)] = count_ranks(comm, k != 1);
        distinct[size_t(k)] = ranks_sharing_a_device(comm, ids_distinct[k]);
        shared[size_t(k)] = ranks_sharing_a_device(comm, ids_shared[k]);
    });
    for (int k = 0; k < K; ++k) {
        EXPECT_EQ(yes[size_t(k)], 2) << "rank " << k;
        EXPECT_EQ(distinct[size_t(k)], std::make_pair(-1, -1)) << "rank " << k;
        EXPECT_EQ(shared[size_t(k)], std::make_pair(0, 2)) << "rank " << k;
    }
}

// Every rank starts from rank 0's weights and lookahead state, whatever its own init computed
// (different GPU models need not compute the same bits): ranks initialised from other seeds end
// equal to rank 0 in both.
TEST(DataParallel, RanksStartFromRankZerosWeightsAndLookaheadState) {
    constexpr int K = 2;
    const Recipe r = tiny_recipe(64);
    std::vector<std::vector<float>> params(K), ema(K);
    on_ranks(K, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        Network net(*b, r.net);
        Rng rng(100 + uint64_t(k));
        net.init(rng);
        Optimizer(net, r).reset_ema();
        net.init(rng);  // the weights move on after the lookahead state was taken
        DataParallel(net, comm, {}).broadcast_params();
        params[size_t(k)].resize(net.size());
        ema[size_t(k)].resize(net.size());
        b->download(params[size_t(k)].data(), net.params.get(), net.size() * sizeof(float));
        b->download(ema[size_t(k)].data(), net.ema.get(), net.size() * sizeof(float));
    });
    ASSERT_NE(params[0], ema[0]);  // (the two states differ, so each is checked on its own)
    EXPECT_EQ(params[1], params[0]);
    EXPECT_EQ(ema[1], ema[0]);
}

// NCCL's reducer on one GPU (one rank: its sums leave the values as they are). No CPU test
// reaches it: its set-up (the unique id, the GPU check, the communicator, the watchdog), calls
// through its side stream between the backend's ops, and its teardown. (With one rank a sum moves
// no data, so a misordered stream would not show here; `mpirun -np 2 speedrun dist-check --device
// cuda` on two GPUs checks that.) Skipped without NCCL or a GPU (tools/gpu-check runs it).
TEST(DataParallel, NcclReducerOneRankOnCuda) {
    if (!nccl_compiled()) GTEST_SKIP() << "this build has no NCCL";
    std::string why;
    auto b = make_cuda_backend(0, &why);
    if (!b) GTEST_SKIP() << "no CUDA device: " << why;
    auto comm = make_single_communicator();
    {
        auto reducer = make_nccl_reducer(*b, *comm);
        EXPECT_TRUE(test::contains(reducer->name(), "NCCL")) << reducer->name();
        const size_t n = size_t(1) << 22;
        const std::vector<float> host = test::randn(n, 7);
        std::vector<float> back(n);
        DeviceBuffer<float> p(*b, n);
        b->upload(p.get(), host.data(), n * sizeof(float));
        b->scale(p.get(), 3.f, n);
        reducer->start(p.get(), n);
        reducer->wait_all();
        b->scale(p.get(), 0.5f, n);
        reducer->allreduce(p.get(), n);
        b->download(back.data(), p.get(), n * sizeof(float));
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) bad += back[i] != host[i] * 3.f * 0.5f;
        EXPECT_EQ(bad, 0u) << "of " << n << " values; first: " << back[0] << " for " << host[0] * 1.5f;
    }  // the teardown (ncclCommDestroy) must return
}

#if SPEEDRUN_HAVE_NCCL
// A rank that never reaches a sum (lost on the same host, stopped, hung), as one GPU can show it:
// a host function on the backend's stream holds back what follows it for hold_s seconds, so the
// sums queued after it cannot start. Then a kernel of the backend's (its launch check reads the
// thread's last CUDA error, which the reducer must leave alone) and the end of the stall.
void stall_sums(int hold_s, int sums) {
    std::string why;
    auto b = make_cuda_backend(0, &why);
    if (!b) {
        std::fprintf(stderr, "no CUDA backend: %s\n", why.c_str());
        std::_Exit(4);
    }
    auto comm = make_single_communicator();
    auto reducer = make_nccl_reducer(*b, *comm);
    const size_t n = 1024;
    DeviceBuffer<float> p(*b, n);
    static_assert(sizeof(void*) >= sizeof(intptr_t));
    const cudaError_t e = cudaLaunchHostFunc(
        static_cast<cudaStream_t>(b->native_stream()),
        [](void* s) { std::this_thread::sleep_for(std::chrono::seconds(reinterpret_cast<intptr_t>(s))); },
        reinterpret_cast<void*>(intptr_t(hold_s)));
    if (e != cudaSuccess) {
        std::fprintf(stderr, "cudaLaunchHostFunc failed: %s\n", cudaGetErrorString(e));
        std::_Exit(3);
    }
    for (int i = 0; i < sums; ++i) {
        reducer->start(p.get(), n);
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // (the watchdog polls meanwhile)
    }
    b->scale(p.get(), 2.f, n);  // throws if a CUDA error was left for its launch check
    reducer->wait_all();
    b->synchronize();
}
#endif

// The watchdog's time limit (SPEEDRUN_NCCL_TIMEOUT): with 1 s, a sum held back for 30 s ends the
// process after about a second, with its message (exit status 1); with the default (600 s) three
// sums held back for 3 s, and a kernel launched meanwhile, end normally; with 0 (no limit) one
// held-back sum does too.
// Each case runs in a child process (gtest's death tests, re-executed: CUDA does not survive a fork).
TEST(DataParallelDeathTest, NcclReducerEndsARankWhoseSumStallsOnCuda) {
#if SPEEDRUN_HAVE_NCCL
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const std::string style = GTEST_FLAG_GET(death_test_style);
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            ::setenv("SPEEDRUN_NCCL_TIMEOUT", "1", 1);
            stall_sums(30, 1);
            std::exit(0);  // (not reached: the watchdog ends the process while the sum waits)
        },
        ::testing::ExitedWithCode(1), "a sum over the ranks has not finished [0-9]+ s after it was queued");
    EXPECT_EXIT(
        {
            ::unsetenv("SPEEDRUN_NCCL_TIMEOUT");
            stall_sums(3, 3);
            std::exit(0);
        },
        ::testing::ExitedWithCode(0), "");
    EXPECT_EXIT(
        {
            ::setenv("SPEEDRUN_NCCL_TIMEOUT", "0", 1);
            stall_sums(3, 1);
            std::exit(0);
        },
        ::testing::ExitedWithCode(0), "");
    GTEST_FLAG_SET(death_test_style, style);
#else
    GTEST_SKIP() << "this build has no NCCL";
#endif
}

// A CPU backend that says it is a GPU: a rank on "a GPU" next to a CPU rank, without a GPU.
class SaysCuda final : public ForwardingBackend {
public:
    using ForwardingBackend::ForwardingBackend;
    Device device() const override { return Device::cuda; }
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override { f(); }
};

// A GPU rank next to a CPU rank (--device auto on hosts with and without GPUs) would not meet the
// others in its collectives (warm-up run, reducer): every rank refuses, naming the split.
TEST(DataParallel, RanksOnDifferentDevicesAreRefusedOnEveryRank) {
    std::vector<std::string> errors(2);
    on_ranks(2, [&](Communicator& comm, int k) {
        auto cpu = make_cpu_backend(1);
        SaysCuda gpu(*cpu);
        Backend& b = k == 1 ? static_cast<Backend&>(gpu) : *cpu;
        errors[size_t(k)] = test::error_of([&] { make_device_reducer(b, comm); });
    });
    for (int k = 0; k < 2; ++k)
        EXPECT_TRUE(test::contains(errors[size_t(k)], "1 of 2 ranks train on a GPU")) << "rank " << k << ": " << errors[size_t(k)];
}

// --resume is read by every rank from its own file system, and only rank 0 writes checkpoints: a
// rank that read another file (here: none, next to rank 0's checkpoint) would run other steps,
// and the collectives would not meet. Every rank refuses instead, naming the split.
TEST(DataParallel, RanksResumingFromDifferentPointsAreRefusedOnEveryRank) {
    const TinyRun run;
    const std::string ckpt = (std::filesystem::temp_directory_path() /
                              ("speedrun-dp-resume-" + std::to_string(::getpid()) + ".safetensors")).string();
    {
        auto b = make_cpu_backend(1);
        TrainOptions one = run.o;
        one.checkpoint_path = ckpt;
        one.stop_after_step = 2;
        EXPECT_THROW(Trainer(*b, run.r, run.data, one).run(3), Interrupted);
    }
    const Checkpoint saved = read_checkpoint(ckpt);
    std::vector<std::string> errors(2);
    on_ranks(2, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        TrainOptions ok = run.o;
        ok.comm = &comm;
        errors[size_t(k)] = test::error_of(
            [&] { Trainer(*b, run.r, run.data, ok).run(3, false, k == 0 ? &saved : nullptr); });
    });
    std::filesystem::remove(ckpt);
    for (int k = 0; k < 2; ++k)
        EXPECT_TRUE(test::contains(errors[size_t(k)], "1 of 2 ranks would start at another step, seed, recipe or checkpoint than rank 0"))
            << "rank " << k << ": " << errors[size_t(k)];
    // another file of the same seed and step (rank 1's momentum differs in one bit): refused too;
    // rank 1 would have kept its own momentum under rank 0's weights
    Checkpoint other = saved;
    bool changed = false;
    for (auto& [name, t] : other.file.tensors)
        if (name.rfind("momentum.", 0) == 0 && !t.data.empty()) {
            t.data[0] ^= 1;
            changed = true;
            break;
        }
    ASSERT_TRUE(changed) << "the checkpoint has no momentum tensor";
    on_ranks(2, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        TrainOptions ok = run.o;
        ok.comm = &comm;
        errors[size_t(k)] = test::error_of(
            [&] { Trainer(*b, run.r, run.data, ok).run(3, false, k == 0 ? &saved : &other); });
    });
    for (int k = 0; k < 2; ++k)
        EXPECT_TRUE(test::contains(errors[size_t(k)], "1 of 2 ranks would start at another step, seed, recipe or checkpoint"))
            << "rank " << k << ": " << errors[size_t(k)];
    // the same file on both ranks: no error (the run trains to its end)
    on_ranks(2, [&](Communicator& comm, int k) {
        auto b = make_cpu_backend(1);
        TrainOptions ok = run.o;
        ok.comm = &comm;
        EXPECT_NO_THROW(Trainer(*b, run.r, run.data, ok).run(3, false, &saved)) << "rank " << k;
    });
}

}  // namespace
}  // namespace sr
