// test_backend_network.cpp: one whole training step of each network family on two backends from
// the same weights and batch: logits, summed loss, every gradient, the BN running statistics and
// the optimizer's update of every tensor. On a GPU: CUDA against the CPU (the per-op comparisons
// are in ops/test_backend_ops.cpp; this one catches what only the composition can get wrong:
// buffer reuse, an op fed the wrong tensor, a layout slip between layers). Everywhere: the CPU
// with 1 thread against 2 threads (the harness end to end; they agree exactly on this machine,
// 2e-4 allowed), and a negative control: weights with a slip must be seen (error > 0.1).
//
// The measure is the relative L2 error ||got - ref|| / ||ref|| per tensor (and for the update,
// of got_after - before against ref_after - before). The CUDA convolutions use TF32 (10-bit
// mantissa, ~5e-4 relative per product) and BN over a small batch amplifies that, so the GPU
// tolerance is 2e-2; a convention slip (a transposed or misplaced tensor) gives errors near 1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "model/network.h"
#include "ops/rounding_backend.h"
#include "ops/storage_backend.h"
#include "optim/optimizer.h"
#include "train/recipe.h"
#include "test_util.h"

namespace sr {
namespace {

struct StepResult {
    std::vector<float> logits, grads, before, after;
    float loss = 0;
};

Recipe small(const char* preset) {
    Recipe r = load_recipe(preset, "");
    const int w = 16;
    if (r.net.arch == Arch::resnet9) r.net.widths = {w, w, 2 * w, 2 * w};
    else if (r.net.arch == Arch::airbench) r.net.widths = {w, 2 * w, 2 * w};
    else r.net.widths = {w, 2 * w, 2 * w, 4 * w};  // DAWN_net: prep and three layers
    return r;
}

// One step (forward, loss, backward, optimizer update) on b from the weights `init` (empty: make
// them with a fixed seed and return them in .before). The input images are random, rounded to
// x_format (so that a backend storing 16-bit activations and one emulating it start equal).
StepResult one_step(Backend& b, const Recipe& r, const std::vector<float>& init, int N,
                    Storage x_format = Storage::f32) {
    Network net(b, r.net);
    StepResult s;
    if (init.empty()) {
        Rng rng(7);
        net.init(rng);
    } else {
        net.upload(init);
    }
    net.download(s.before);
    b.copy(net.ema.get(), net.params.get(), net.size() * sizeof(float));
    auto x = test::randn(size_t(N) * 32 * 32 * 3, 21);
    if (x_format != Storage::f32) {
        std::vector<uint16_t> packed(x.size());
        pack_storage(packed.data(), x.data(), x.size(), x_format);
        unpack_storage(x.data(), packed.data(), x.size(), x_format);
    }
    std::vector<int32_t> y(static_cast<size_t>(N));
    for (int i = 0; i < N; ++i) y[size_t(i)] = (i * 7 + 3) % 10;
    DeviceBuffer<float> xd(b, x.size()), st(b, 2);
    DeviceBuffer<int32_t> yd(b, y.size());
    upload_activations(b, xd.get(), x.data(), x.size());
    b.upload(yd.get(), y.data(), y.size() * sizeof(int32_t));
    const float zero[2] = {0, 0};
    b.upload(st.get(), zero, sizeof zero);
    Workspace ws(net, N);
    Optimizer opt(net, r);
    const float* logits = ws.forward(xd.get(), true);
    s.logits.resize(size_t(N) * 10);
    b.cross_entropy(ws.dlogits(), st.get(), logits, yd.get(), N, 10, r.label_smoothing);
    b.download(s.logits.data(), logits, s.logits.size() * sizeof(float));
    ws.backward(ws.dlogits(), true);
    float stats[2];
    b.download(stats, st.get(), sizeof stats);
    s.loss = stats[0];
    s.grads.resize(net.size());
    b.download(s.grads.data(), net.grads.get(), s.grads.size() * sizeof(float));
    opt.step(0, 100, 1, 10);
    net.download(s.after);
    return s;
}

double rel_l2(const std::vector<float>& got, const std::vector<float>& ref, size_t beg, size_t end) {
    double d = 0, n = 0;
    for (size_t i = beg; i < end; ++i) {
        const double e = double(got[i]) - ref[i];
        d += e * e;
        n += double(ref[i]) * ref[i];
    }
    return n == 0 ? std::sqrt(d) : std::sqrt(d / n);
}

// The largest relative L2 error over the logits, the loss, every gradient, running statistic
// and update of one step on dut against ref, and where it was. perturb: the dut starts from the
// reference weights with the head's rows rotated by one (a layout slip, the negative control).
struct Worst {
    double err = 0;
    double logits = 0;  // the logits' error alone
    std::string where;
    int tensors = 0;
    void add(double e, const std::string& w) {
        if (!(e <= err)) err = e, where = w;  // (NaN counts as the worst)
    }
};

Worst compare(Backend& ref_b, Backend& dut_b, const char* preset, bool perturb = false,
              Storage x_format = Storage::f32) {
    const Recipe r = small(preset);
    const int N = 64;
    const StepResult ref = one_step(ref_b, r, {}, N, x_format);
    Network layout(ref_b, r.net);  // names and offsets (the same on both backends)
    std::vector<float> init = ref.before;
    if (perturb) {
        const TensorSpec& h = layout.tensor("head.weight");
        const size_t row = h.count / 10;
        std::rotate(init.begin() + long(h.offset), init.begin() + long(h.offset + row),
                    init.begin() + long(h.offset + h.count));
    }
    const StepResult dut = one_step(dut_b, r, init, N, x_format);
    Worst w;
    w.logits = rel_l2(dut.logits, ref.logits, 0, ref.logits.size());
    w.add(w.logits, "logits");
    w.add(std::abs(dut.loss - ref.loss) / std::abs(ref.loss), "summed loss");
    std::vector<float> dref(ref.after.size()), ddut(ref.after.size());
    for (size_t i = 0; i < dref.size(); ++i) {
        dref[i] = ref.after[i] - ref.before[i];
        ddut[i] = dut.after[i] - dut.before[i];
    }
    for (const TensorSpec& t : layout.tensors()) {
        const size_t b = t.offset, e = t.offset + t.count;
        if (t.group == ParamGroup::buffer) {  // running statistics after one training forward
            w.add(rel_l2(dut.after, ref.after, b, e), t.name);
        } else if (t.group != ParamGroup::frozen) {
            w.add(rel_l2(dut.grads, ref.grads, b, e), "gradient of " + t.name);
            w.add(rel_l2(ddut, dref, b, e), "update of " + t.name);
        }
        ++w.tensors;
    }
    return w;
}

const char* const kPresets[] = {"airbench94", "airbench96", "hiverge", "hlb", "tricks10", "page24",
                                "myrtle-reg"};

TEST(BackendNetwork, OneStepOnOneCpuThreadMatchesTwo) {
    auto one = make_cpu_backend(1);
    auto two = make_cpu_backend(2);
    for (const char* p : kPresets) {
        const Worst w = compare(*two, *one, p);
        EXPECT_LE(w.err, 2e-4) << p << ": " << w.where;
        EXPECT_GE(w.tensors, 10) << p;
    }
}

// The measure sees a layout slip: the head's rows rotated by one moves logits, loss, gradients.
TEST(BackendNetwork, OneStepComparisonSeesASlip) {
    auto cpu = make_cpu_backend(2);
    for (const char* p : {"airbench94", "page24", "myrtle-reg"}) {
        const Worst w = compare(*cpu, *cpu, p, true);
        EXPECT_GT(w.err, 0.1) << p << ": " << w.where;
    }
}

// 16-bit activation storage (ops/storage_backend.h: activations packed in 16 bits between ops)
// computes exactly the values of its emulation in fp32 containers (ops/rounding_backend.h), on
// every network family: the network and the optimizer pass activation buffers exactly where the
// storage contract of ops/backend.h says (a parameter or fp32 buffer handed over as an
// activation, a residual add through axpy, an element offset not through act_at() would read
// 16-bit values as floats or the other way round). Against fp32 the rounding must show in the
// logits, within what the format's precision explains (the worst tensor is no measure there:
// BN bias gradients are sums that cancel, so their relative error is large in any format).
TEST(BackendNetwork, SixteenBitStorageEqualsItsEmulation) {
    auto cpu = make_cpu_backend(2);
    for (Storage s : {Storage::f16, Storage::bf16}) {
        StorageBackend stored(*cpu, s);
        RoundingBackend rounded(*cpu, *emulated_precision(storage_name(s)));
        for (const char* p : kPresets) {
            SCOPED_TRACE(std::string(p) + " " + storage_name(s));
            const Worst w = compare(rounded, stored, p, false, s);
            EXPECT_EQ(w.err, 0.0) << w.where;
            const Worst f = compare(*cpu, stored, p, false, s);
            EXPECT_GT(f.logits, s == Storage::bf16 ? 1e-3 : 1e-4);
            EXPECT_LT(f.logits, s == Storage::bf16 ? 5e-2 : 5e-3);
            std::printf("%-11s %s storage vs fp32, one step: logits %.1e, worst %.1e (%s)\n", p,
                        storage_name(s), f.logits, f.err, f.where.c_str());
        }
    }
}

TEST(BackendNetwork, OneStepOnCudaMatchesCpu) {
    std::string why;
    auto gpu = make_cuda_backend(0, &why);
    if (!gpu) GTEST_SKIP() << "no CUDA device: " << why;
    auto cpu = make_cpu_backend(0);
    for (const char* p : kPresets) {
        const Worst w = compare(*cpu, *gpu, p);
        EXPECT_LE(w.err, 2e-2) << p << ": " << w.where;
        std::printf("%-11s CUDA vs CPU, one step: worst relative L2 error %.2e (%s)\n", p, w.err,
                    w.where.c_str());
    }
}

// The CUDA backend with 16-bit activation storage against its CPU reference (StorageBackend):
// both round the same tensors at the same points, so they differ only where an fp32 result
// that differs in its last bits (TF32-free 16-bit tensor-core products, summation order,
// library functions) rounds to a neighbouring 16-bit value, which BN over a small batch then
// amplifies. The bounds are those of the fp32 comparison scaled to the format: 2e-2 for fp16
// (11 significant bits, as TF32's), 8x that for bf16 (3 bits fewer); a slip between 16-bit and
// fp32 buffers gives errors near 1 or NaN. Logits: at most the 16-bit-vs-fp32 bound above.
TEST(BackendNetwork, OneStepOnCudaSixteenBitMatchesItsCpuReference) {
    std::string why;
    if (!make_cuda_backend(0, &why)) GTEST_SKIP() << "no CUDA device: " << why;
    auto cpu = make_cpu_backend(0);
    for (Storage s : {Storage::f16, Storage::bf16}) {
        auto gpu = make_cuda_backend(0, &why, s);
        ASSERT_TRUE(gpu) << why;
        ASSERT_EQ(gpu->storage(), s);
        StorageBackend ref(*cpu, s);
        for (const char* p : kPresets) {
            SCOPED_TRACE(std::string(p) + " " + storage_name(s));
            const Worst w = compare(ref, *gpu, p, false, s);
            EXPECT_LE(w.err, s == Storage::bf16 ? 0.16 : 2e-2) << w.where;
            EXPECT_LE(w.logits, s == Storage::bf16 ? 5e-2 : 5e-3);
            std::printf("%-11s CUDA vs CPU, one step, %s storage: worst relative L2 error %.2e "
                        "(%s), logits %.2e\n", p, storage_name(s), w.err, w.where.c_str(), w.logits);
        }
    }
}

}  // namespace
}  // namespace sr
