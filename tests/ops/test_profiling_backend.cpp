// test_profiling_backend.cpp: the timing wrapper of `speedrun bench --profile` hands every op to
// the backend it wraps unchanged (a training step through it is bit-identical to one without
// it), and it counts what a step of the airbench network calls: op by op, with the FLOPs of
// every convolution direction.
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/network.h"
#include "ops/profiling_backend.h"
#include "ops/recording_backend.h"
#include "optim/optimizer.h"
#include "train/recipe.h"
#include "test_util.h"

namespace sr {
namespace {

struct StepResult {
    std::vector<float> logits, params, grads;
};

// One training step (forward, loss, backward with the whitening bias, optimizer) of a
// reduced-width airbench94 net on b, from the same init and batch every time.
StepResult train_step(Backend& b, const Recipe& r, int N) {
    Network net(b, r.net);
    Rng rng(5);
    net.init(rng);
    Workspace ws(net, N);
    Optimizer opt(net, r);
    std::vector<float> x(size_t(N) * 32 * 32 * 3);
    for (auto& v : x) v = rng.normal();
    std::vector<int32_t> y(static_cast<size_t>(N));
    for (auto& v : y) v = int32_t(rng.below(10));
    DeviceBuffer<float> xd(b, x.size()), stats(b, 2);
    DeviceBuffer<int32_t> yd(b, y.size());
    b.upload(xd.get(), x.data(), x.size() * sizeof(float));
    b.upload(yd.get(), y.data(), y.size() * sizeof(int32_t));
    net.init_whitening(xd.get(), N, 5e-4f);
    const float* logits = ws.forward(xd.get(), true);
    StepResult res;
    res.logits.resize(size_t(N) * 10);
    b.download(res.logits.data(), logits, res.logits.size() * sizeof(float));
    b.cross_entropy(ws.dlogits(), stats.get(), logits, yd.get(), N, 10, r.label_smoothing);
    ws.backward(ws.dlogits(), true);
    opt.step(0, 100, 10);
    net.download(res.params);
    res.grads.resize(net.size());
    b.download(res.grads.data(), net.grads.get(), net.size() * sizeof(float));
    return res;
}

Recipe tiny_recipe() {
    Recipe r = load_recipe("airbench94", "");
    r.net.widths = {8, 16, 16};
    return r;
}

TEST(ProfilingBackend, ForwardsEveryOpUnchanged) {
    const Recipe r = tiny_recipe();
    auto cpu = make_cpu_backend(1);
    const StepResult plain = train_step(*cpu, r, 16);
    ProfilingBackend prof(*cpu);
    prof.enable(true);
    const StepResult wrapped = train_step(prof, r, 16);
    EXPECT_EQ(wrapped.logits, plain.logits);
    EXPECT_EQ(wrapped.grads, plain.grads);
    EXPECT_EQ(wrapped.params, plain.params);
    EXPECT_FALSE(prof.collect().empty());
    EXPECT_TRUE(prof.collect().empty());  // collect() starts afresh
}

TEST(ProfilingBackend, CountsTheOpsOfATrainingStep) {
    const Recipe r = tiny_recipe();
    const int N = 8;
    auto cpu = make_cpu_backend(1);
    ProfilingBackend prof(*cpu);
    Network net(prof, r.net);
    Rng rng(1);
    net.init(rng);
    Workspace ws(net, N);
    DeviceBuffer<float> x(prof, size_t(N) * 32 * 32 * 3), stats(prof, 2);
    DeviceBuffer<int32_t> y(prof, static_cast<size_t>(N));
    ws.forward(x.get(), true);  // not timed: profiling is off until enabled
    EXPECT_TRUE(prof.collect().empty());

    prof.enable(true);
    const float* logits = ws.forward(x.get(), true);
    prof.cross_entropy(ws.dlogits(), stats.get(), logits, y.get(), N, 10, 0.2f);
    ws.backward(ws.dlogits(), true);
    prof.enable(false);
    const std::vector<OpTime> ops = prof.collect();
    std::map<std::string, OpTime> kind;
    for (const OpTime& k : by_kind(ops)) kind[k.kind] = k;

    // the whitening conv (forward, its bias gradient) and 6 convs x 3 directions
    EXPECT_EQ(kind["convolution"].calls, 2 + 6 * 3);
    // FLOPs: 3 x every conv's forward, less the whitening conv's data and weight gradients (its
    // weights are frozen: only the bias gradient, one add per element of dy)
    const double head = 2.0 * 16 * 10;  // linear 16 -> 10 per image
    const double whiten = 2.0 * 31 * 31 * 24 * (2 * 2 * 3);
    const double whiten_bias = 31.0 * 31 * 24;
    const double convs = net.flops_per_image_forward() - head;
    EXPECT_NEAR(kind["convolution"].flops, N * (3 * convs - 2 * whiten + whiten_bias),
                1e-6 * N * convs);
    // 6 BN layers forward and backward, each fused with the GELU after it; the first of each
    // group also with the pooling before it (a kind of its own: its time is not split)
    EXPECT_EQ(kind["batch norm"].calls, 3 + 3);
    EXPECT_EQ(kind["pooling + BN"].calls, 3 + 3);
    EXPECT_EQ(kind["linear"].calls, 2);
    EXPECT_EQ(kind["loss"].calls, 1);
    EXPECT_EQ(kind["pooling"].calls, 2);         // the final pool, both ways
    EXPECT_EQ(kind["activation"].calls, 1 * 2);  // the whitening GELU, both ways
    int bn_train = 0, pool_bn_train = 0, pool_bn_back = 0;
    double total = 0;
    for (const OpTime& o : ops) {
        if (o.name.rfind("bn+gelu train fwd", 0) == 0) bn_train += int(o.calls);
        if (o.name.rfind("maxpool2+bn+gelu train fwd", 0) == 0) pool_bn_train += int(o.calls);
        if (o.name.rfind("bn+gelu+maxpool2 bwd", 0) == 0) pool_bn_back += int(o.calls);
        EXPECT_GE(o.seconds, 0.0) << o.name;
        total += o.seconds;
    }
    EXPECT_EQ(bn_train, 3);
    EXPECT_EQ(pool_bn_train, 3);
    EXPECT_EQ(pool_bn_back, 3);
    EXPECT_GT(total, 0.0);
    // largest time first
    for (size_t i = 1; i < ops.size(); ++i) EXPECT_GE(ops[i - 1].seconds, ops[i].seconds);
}

// bench's recorded-step timing runs on the network the profile built: recording passes through
// to the wrapped backend while timing is off, and is refused while it is on.
TEST(ProfilingBackend, RecordsThroughTheWrappedBackendWhileNotTiming) {
    auto cpu = make_cpu_backend(1);
    {
        ProfilingBackend prof(*cpu);
        EXPECT_FALSE(prof.begin_recording()) << "the CPU backend cannot record";
    }
    RecordingBackend rb(*cpu);
    ProfilingBackend prof(rb);
    DeviceBuffer<float> x(prof, 4), y(prof, 4);
    const std::vector<float> ones(4, 1.f), twos(4, 2.f);
    prof.upload(x.get(), ones.data(), 16);
    prof.upload(y.get(), twos.data(), 16);
    ASSERT_TRUE(prof.begin_recording());
    EXPECT_THROW(prof.enable(true), Error);
    prof.axpy(y.get(), x.get(), 3.f, 4);  // y += 3 x: recorded, not run
    std::string why;
    auto rec = prof.end_recording(&why);
    ASSERT_TRUE(rec) << why;
    EXPECT_EQ(rec->kernel_count(), 1u);
    std::vector<float> out(4);
    prof.download(out.data(), y.get(), 16);
    EXPECT_EQ(out, twos) << "a recorded op ran while recording";
    rec->replay();
    prof.download(out.data(), y.get(), 16);
    EXPECT_EQ(out, std::vector<float>(4, 5.f));

    prof.enable(true);
    EXPECT_FALSE(prof.begin_recording()) << "timed ops cannot be recorded";
    EXPECT_FALSE(rb.recording());
    EXPECT_EQ(prof.end_recording(&why), nullptr);
}

}  // namespace
}  // namespace sr
