// ops_perf.cpp: the perf list. Every op of the engine, timed alone at the exact shapes the
// presets run, each case naming the layer it comes from (like ggml's test-backend-ops in perf
// mode): µs per call, GFLOP/s for the compute-bound ops, GB/s (the fp32 tensors an op must read
// and write at least once) for the memory-bound ones. Random inputs; no correctness check here
// (tests/ops/ compares every op with its CPU reference).
//
//   build/speedrun_ops_perf [--device cpu|cuda] [--batch N] [--reps R] [--networks all|airbench]
//                           [--filter TEXT] [--csv FILE]
//
// --batch scales the airbench cases (1024 = airbench94, 1536 = hiverge, the record); the cases of
// the other networks keep their presets' batch sizes. `speedrun bench --profile` times the same
// ops inside a real training step; this list isolates them, for kernel work.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "model/network.h"
#include "ops/backend.h"

namespace sr {
namespace {

struct Case {
    std::string op, layer;
    double flops = 0, bytes = 0;
    std::function<void()> run;  // one call (buffers made when the case is)
};

// Random device buffers owned by the list (kept until the end: the cases point into them).
class Buffers {
public:
    explicit Buffers(Backend& b) : b_(b) {}
    float* f(size_t n) {
        std::vector<float> h(n);
        for (auto& v : h) v = rng_.normal();
        f_.emplace_back(b_, n);
        b_.upload(f_.back().get(), h.data(), n * sizeof(float));
        return f_.back().get();
    }
    uint8_t* u8(size_t n, uint32_t below) {
        std::vector<uint8_t> h(n);
        for (auto& v : h) v = uint8_t(rng_.below(below));
        u_.emplace_back(b_, n);
        b_.upload(u_.back().get(), h.data(), n);
        return u_.back().get();
    }
    int32_t* i32(size_t n, uint32_t below) {
        std::vector<int32_t> h(n);
        for (auto& v : h) v = int32_t(rng_.below(below));
        i_.emplace_back(b_, n);
        b_.upload(i_.back().get(), h.data(), n * sizeof(int32_t));
        return i_.back().get();
    }
    int8_t* shifts(size_t n, int pad) {
        std::vector<int8_t> h(n);
        for (auto& v : h) v = int8_t(int(rng_.below(uint32_t(2 * pad + 1))) - pad);
        s_.emplace_back(b_, n);
        b_.upload(s_.back().get(), h.data(), n);
        return s_.back().get();
    }

private:
    Backend& b_;
    Rng rng_{42};
    std::vector<DeviceBuffer<float>> f_;
    std::vector<DeviceBuffer<uint8_t>> u_;
    std::vector<DeviceBuffer<int32_t>> i_;
    std::vector<DeviceBuffer<int8_t>> s_;
};

constexpr double kF = sizeof(float);

class PerfList {
public:
    PerfList(Backend& b, Buffers& m) : b_(b), m_(m) {}
    std::vector<Case> cases;

    // forward, backward data (unless first: the network input needs none), backward weights, and
    // both gradients in one call as training makes them (Conv2d::backward: the CPU's Winograd
    // path reorders dy once for the two)
    void conv(const ConvShape& s, const std::string& layer, bool input_layer = false) {
        auto c = std::shared_ptr<Conv2d>(b_.make_conv(s));
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, nw = size_t(s.K) * s.R * s.S * s.C,
                     ny = size_t(s.N) * s.P() * s.Q() * s.K;
        float *x = m_.f(nx), *w = m_.f(nw), *y = m_.f(ny), *dx = m_.f(nx), *dw = m_.f(nw);
        const double f = s.flops_forward(), by = kF * double(nx + nw + ny);
        const std::string shape = fmt::format("{}x{} s{} {}->{} {}x{} N{}", s.R, s.S, s.stride, s.C, s.K,
                                              s.H, s.W, s.N);
        cases.push_back({"conv fwd " + shape, layer, f, by, [=] { c->forward(y, x, w, nullptr); }});
        if (!input_layer)
            cases.push_back({"conv bwd data " + shape, layer, f, by, [=] { c->backward_data(dx, y, w); }});
        cases.push_back({"conv bwd weights " + shape, layer, f, by,
                         [=] { c->backward_weights(dw, nullptr, y, x); }});
        if (!input_layer)
            cases.push_back({"conv bwd both " + shape, layer, 2 * f, by + kF * double(nx + nw),
                             [=] { c->backward(dx, dw, nullptr, y, x, w); }});
    }
    void bn(int M, int C, const std::string& layer) {
        const size_t n = size_t(M) * C;
        float *x = m_.f(n), *y = m_.f(n), *dx = m_.f(n), *g = m_.f(C), *bb = m_.f(C), *mean = m_.f(C),
              *istd = m_.f(C), *rm = m_.f(C), *rv = m_.f(C), *dg = m_.f(C), *db = m_.f(C);
        Backend* b = &b_;
        const std::string shape = fmt::format("M{} C{}", M, C);
        cases.push_back({"bn train fwd " + shape, layer, 0, 3 * kF * n, [=] {
                             b->bn_forward_train(y, mean, istd, rm, rv, x, g, bb, M, C, 1e-12f, 0.4f);
                         }});
        cases.push_back({"bn bwd " + shape, layer, 0, 5 * kF * n,
                         [=] { b->bn_backward(dx, dg, db, y, x, mean, istd, g, M, C); }});
        cases.push_back({"bn eval fwd " + shape, layer, 0, 2 * kF * n,
                         [=] { b->bn_forward_eval(y, x, rm, rv, g, bb, M, C, 1e-12f); }});
        // fused with the GELU after it, as the airbench family runs it
        cases.push_back({"bn+gelu train fwd " + shape, layer, 0, 3 * kF * n, [=] {
                             b->bn_act_forward_train(y, mean, istd, rm, rv, x, g, bb, M, C, 1e-12f,
                                                     0.4f, ActKind::gelu, 0.f);
                         }});
        cases.push_back({"bn+gelu bwd " + shape, layer, 0, 5 * kF * n, [=] {
                             b->bn_act_backward(dx, dg, db, y, x, mean, istd, g, bb, M, C,
                                                ActKind::gelu, 0.f);
                         }});
    }
    void act(const char* name, size_t n, const std::string& layer) {
        float *x = m_.f(n), *y = m_.f(n), *dx = m_.f(n);
        Backend* b = &b_;
        const std::string a = name, shape = fmt::format(" n{}", n);
        std::function<void()> fwd, bwd;
        if (a == "gelu") {
            fwd = [=] { b->gelu_forward(y, x, n); };
            bwd = [=] { b->gelu_backward(dx, y, x, n); };
        } else if (a == "silu") {
            fwd = [=] { b->silu_forward(y, x, n); };
            bwd = [=] { b->silu_backward(dx, y, x, n); };
        } else {
            fwd = [=] { b->relu_forward(y, x, n); };
            bwd = [=] { b->relu_backward(dx, y, x, n); };
        }
        cases.push_back({a + " fwd" + shape, layer, 0, 2 * kF * n, fwd});
        cases.push_back({a + " bwd" + shape, layer, 0, 3 * kF * n, bwd});
    }
    void maxpool(int N, int H, int C, int k, const std::string& layer) {
        const size_t in = size_t(N) * H * H * C, out = size_t(N) * (H / k) * (H / k) * C;
        float *x = m_.f(in), *y = m_.f(out), *dx = m_.f(in);
        uint8_t* arg = m_.u8(out, uint32_t(k * k));
        Backend* b = &b_;
        const std::string shape = fmt::format("{} {}x{} C{} N{}", k, H, H, C, N);
        const double by = kF * double(in) + (kF + 1) * double(out);
        cases.push_back({"maxpool fwd " + shape, layer, 0, by, [=] { b->maxpool_forward(y, arg, x, N, H, H, C, k); }});
        cases.push_back({"maxpool bwd " + shape, layer, 0, by, [=] { b->maxpool_backward(dx, y, arg, N, H, H, C, k); }});
    }
    // max pooling fused with the BN + GELU after it (the airbench groups' first BN)
    void pool_bn(int N, int H, int C, int k, const std::string& layer) {
        const size_t in = size_t(N) * H * H * C, out = size_t(N) * (H / k) * (H / k) * C;
        float *x = m_.f(in), *p = m_.f(out), *z = m_.f(out), *dp = m_.f(out), *dx = m_.f(in),
              *g = m_.f(C), *bb = m_.f(C), *mean = m_.f(C), *istd = m_.f(C), *rm = m_.f(C),
              *rv = m_.f(C), *dg = m_.f(C), *db = m_.f(C);
        uint8_t* arg = m_.u8(out, uint32_t(k * k));
        Backend* b = &b_;
        const std::string shape = fmt::format("{} {}x{} C{} N{}", k, H, H, C, N);
        cases.push_back({"maxpool+bn+gelu train fwd " + shape, layer, 0,
                         kF * double(in) + (3 * kF + 1) * double(out), [=] {
                             b->pool_bn_act_forward_train(z, p, arg, mean, istd, rm, rv, x, g, bb,
                                                          N, H, H, C, k, 1e-12f, 0.4f,
                                                          ActKind::gelu, 0.f);
                         }});
        cases.push_back({"bn+gelu+maxpool bwd " + shape, layer, 0,
                         kF * double(in) + (4 * kF + 1) * double(out), [=] {
                             b->bn_act_pool_backward(dx, dg, db, dp, z, p, arg, mean, istd, g, bb,
                                                     N, H, H, C, k, ActKind::gelu, 0.f);
                         }});
    }
    void head(int N, int I, int O, const std::string& layer) {
        float *x = m_.f(size_t(N) * I), *w = m_.f(size_t(O) * I), *y = m_.f(size_t(N) * O),
              *dx = m_.f(size_t(N) * I), *dw = m_.f(size_t(O) * I), *st = m_.f(2);
        int32_t* lab = m_.i32(size_t(N), uint32_t(O));
        Backend* b = &b_;
        const std::string shape = fmt::format("{}->{} N{}", I, O, N);
        const double by = kF * (double(N) * I + double(O) * I + double(N) * O);
        cases.push_back({"linear fwd " + shape, layer, 2.0 * N * I * O, by,
                         [=] { b->linear_forward(y, x, w, N, I, O, 1.f / 9); }});
        cases.push_back({"linear bwd " + shape, layer, 4.0 * N * I * O, by + kF * (double(N) * I + double(O) * I),
                         [=] { b->linear_backward(dx, dw, y, x, w, N, I, O, 1.f / 9); }});
        cases.push_back({fmt::format("cross entropy N{} O{}", N, O), layer, 0, 2 * kF * N * O,
                         [=] { b->cross_entropy(y, st, y, lab, N, O, 0.2f); }});
    }
    void optimizer(size_t n, const std::string& layer) {
        float *p = m_.f(n), *buf = m_.f(n), *g = m_.f(n), *ema = m_.f(n);
        Backend* b = &b_;
        cases.push_back({fmt::format("sgd nesterov n{}", n), layer, 0, 5 * kF * n,
                         [=] { b->sgd_nesterov(p, buf, g, n, 1e-9f, 1e-9f, 0.85f); }});
        cases.push_back({fmt::format("lerp (lookahead) n{}", n), layer, 0, 4 * kF * n,
                         [=] { b->lerp_assign(ema, p, n, 0.f); }});
    }
    void gemm(int M, int N, int K, bool ta, bool tb, const std::string& layer) {
        float *A = m_.f(size_t(M) * K), *B = m_.f(size_t(K) * N), *C = m_.f(size_t(M) * N);
        Backend* b = &b_;
        cases.push_back({fmt::format("gemm {}x{}x{}{}{}", M, N, K, ta ? " At" : "", tb ? " Bt" : ""), layer,
                         2.0 * M * N * K, kF * (double(M) * K + double(K) * N + double(M) * N),
                         [=] { b->gemm(C, A, B, M, N, K, ta, tb, 1.f, 0.f); }});
    }
    void crops(int B, int pad, const std::string& layer) {
        const int Hp = 32 + 2 * pad;
        float *src = m_.f(size_t(B) * Hp * Hp * 3), *out = m_.f(size_t(B) * 32 * 32 * 3);
        int32_t* idx = m_.i32(size_t(B), uint32_t(B));
        int8_t* sh = m_.shifts(size_t(2) * B, pad);
        uint8_t* fl = m_.u8(size_t(B), 2);
        Backend* b = &b_;
        cases.push_back({fmt::format("gather crops B{} pad {}", B, pad), layer, 0, 2 * kF * B * 32 * 32 * 3,
                         [=] { b->gather_crops(out, src, 32, 32, pad, B, idx, 0, sh, 0, 0, fl, 0); }});
    }
    void concat_pool(int N, int HW, int C, const std::string& layer) {
        float *x = m_.f(size_t(N) * HW * C), *y = m_.f(size_t(N) * 2 * C), *dx = m_.f(size_t(N) * HW * C);
        uint8_t* arg = m_.u8(size_t(N) * C, uint32_t(HW));
        Backend* b = &b_;
        const double by = kF * N * HW * C + (2 * kF + 1) * N * C;
        const std::string shape = fmt::format("HW{} C{} N{}", HW, C, N);
        cases.push_back({"concat pool fwd " + shape, layer, 0, by, [=] { b->concat_pool_forward(y, arg, x, N, HW, C); }});
        cases.push_back({"concat pool bwd " + shape, layer, 0, by, [=] { b->concat_pool_backward(dx, y, arg, N, HW, C); }});
    }

private:
    Backend& b_;
    Buffers& m_;
};

ConvShape cs(int N, int H, int C, int K, int R = 3, int pad = 1, int stride = 1) {
    ConvShape s;
    s.N = N;
    s.H = s.W = H;
    s.C = C;
    s.K = K;
    s.R = s.S = R;
    s.pad = pad;
    s.stride = stride;
    return s;
}

size_t airbench94_learnable() {
    auto cpu = make_cpu_backend(1);
    return Network(*cpu, NetConfig{}).learnable_count();
}

// The list. Airbench family (airbench94 at batch 1024; hiverge, the record, is the same network
// with SiLU at batch 1536): widths 64/256/256, 2x2 whitening, valid, 24 filters.
void airbench_cases(PerfList& L, int N) {
    L.conv(cs(N, 32, 3, 24, 2, 0), "whiten (2x2 patches, frozen; weights pass trains its bias)", true);
    L.act("gelu", size_t(N) * 31 * 31 * 24, "whiten GELU");
    L.conv(cs(N, 31, 24, 64), "block1.conv1");
    L.maxpool(N, 31, 64, 2, "block1 pool");
    L.pool_bn(N, 31, 64, 2, "block1 pool, norm1, GELU (fused)");
    L.bn(N * 15 * 15, 64, "block1.norm1, norm2");
    L.act("gelu", size_t(N) * 15 * 15 * 64, "block1 GELU (airbench94)");
    L.act("silu", size_t(N) * 15 * 15 * 64, "block1 SiLU (hiverge)");
    L.conv(cs(N, 15, 64, 64), "block1.conv2");
    L.conv(cs(N, 15, 64, 256), "block2.conv1");
    L.maxpool(N, 15, 256, 2, "block2 pool");
    L.pool_bn(N, 15, 256, 2, "block2 pool, norm1, GELU (fused)");
    L.bn(N * 7 * 7, 256, "block2.norm1, norm2");
    L.act("gelu", size_t(N) * 7 * 7 * 256, "block2 GELU");
    L.conv(cs(N, 7, 256, 256), "block2.conv2, block3.conv1");
    L.maxpool(N, 7, 256, 2, "block3 pool");
    L.pool_bn(N, 7, 256, 2, "block3 pool, norm1, GELU (fused)");
    L.bn(N * 3 * 3, 256, "block3.norm1, norm2");
    L.conv(cs(N, 3, 256, 256), "block3.conv2");
    L.maxpool(N, 3, 256, 3, "final pool");
    L.head(N, 256, 10, "head, loss");
    L.optimizer(airbench94_learnable(), "SGD over the learnable weights; lookahead over them");
    L.gemm(256, 256, 2304, false, true, "Muon Newton-Schulz A = X X^T (block2.conv2..block3.conv2)");
    L.gemm(256, 2304, 256, false, false, "Muon Newton-Schulz (b A + c A^2) X");
    L.crops(N, 2, "training batch: translate 2 + flip");
}

// The other networks at their presets' batch sizes: page24's ResNet-9 (batch 512) and the
// Myrtle posts' DAWN_net (myrtle-reg, batch 768): their shapes the airbench list lacks.
void other_cases(PerfList& L) {
    L.conv(cs(512, 32, 64, 128), "page24 layer1.conv");
    L.conv(cs(512, 8, 256, 512), "page24 layer3.conv");
    L.conv(cs(512, 4, 512, 512), "page24 layer3.res1, res2");
    L.act("relu", size_t(512) * 32 * 32 * 128, "page24 layer1 ReLU");
    L.bn(768 * 32 * 32, 64, "myrtle-reg layer1 BN (5 of them)");
    L.conv(cs(768, 32, 64, 64), "myrtle-reg layer1 convs");
    L.conv(cs(768, 32, 64, 128, 3, 1, 2), "myrtle-reg layer2.block0.conv1 (stride 2)");
    L.conv(cs(768, 32, 64, 128, 1, 0, 2), "myrtle-reg layer2.block0.conv3 (1x1 projection, stride 2)");
    L.concat_pool(768, 16, 256, "myrtle-reg head pooling (max + mean over 4x4)");
    L.crops(768, 4, "myrtle-reg batch: translate 4 + flip");
}

struct Result {
    const Case* c;
    double us;
};

int run(int argc, char** argv) {
    CLI::App app{"speedrun_ops_perf: every op alone at the presets' shapes (the perf list)"};
    std::string device = "cpu", filter, csv, networks = "all";
    int batch = 1024, reps = 0, threads = 0;
    app.add_option("--device", device, "cpu or cuda")->capture_default_str();
    app.add_option("--batch", batch, "Batch of the airbench cases (1024 airbench94, 1536 hiverge)")->capture_default_str();
    app.add_option("--reps", reps, "Timed calls per case (default: 3 on the CPU, 50 on a GPU)");
    app.add_option("--threads", threads, "CPU threads (0 = all cores)");
    app.add_option("--networks", networks, "all, or airbench (only the airbench family's cases)")
        ->capture_default_str();
    app.add_option("--filter", filter, "Only the cases whose op or layer contains this text");
    app.add_option("--csv", csv, "Also write the table as CSV");
    CLI11_PARSE(app, argc, argv);
    if (batch < 1) fail("--batch must be >= 1 (got {})", batch);

    std::unique_ptr<Backend> b;
    if (device == "cpu") {
        b = make_cpu_backend(threads);
    } else if (device == "cuda") {
        std::string why;
        b = make_cuda_backend(0, &why);
        if (!b) fail("--device cuda: {}", why);
    } else {
        fail("--device must be cpu or cuda (got '{}')", device);
    }
    if (reps <= 0) reps = b->device() == Device::cpu ? 3 : 50;
    Buffers mem(*b);
    PerfList list(*b, mem);
    airbench_cases(list, batch);
    if (networks == "all") other_cases(list);
    else if (networks != "airbench") fail("--networks must be all or airbench (got '{}')", networks);

    fmt::print("perf list on {} ({} timed calls per case after one untimed)\n", b->name(), reps);
    fmt::print("{:<44} {:<58} {:>10} {:>9} {:>8}\n", "op", "layer", "us/call", "GFLOP/s", "GB/s");
    std::vector<Result> results;
    auto timer = b->make_timer();
    for (const Case& c : list.cases) {
        if (!filter.empty() && c.op.find(filter) == std::string::npos && c.layer.find(filter) == std::string::npos)
            continue;
        c.run();
        b->synchronize();
        timer->start();
        for (int i = 0; i < reps; ++i) c.run();
        const double us = timer->stop_seconds() / reps * 1e6;
        results.push_back({&c, us});
        fmt::print("{:<44} {:<58} {:>10.1f} {:>9} {:>8}\n", c.op, c.layer, us,
                   c.flops > 0 ? fmt::format("{:.1f}", c.flops / us * 1e-3) : "",
                   c.bytes > 0 ? fmt::format("{:.1f}", c.bytes / us * 1e-3) : "");
        std::fflush(stdout);
    }
    if (results.empty()) fail("--filter '{}' matches no case", filter);
    if (!csv.empty()) {
        std::string out = "op,layer,us_per_call,gflops,gb_per_s\n";
        for (const Result& r : results)
            out += fmt::format("\"{}\",\"{}\",{:.3f},{:.3f},{:.3f}\n", r.c->op, r.c->layer, r.us,
                               r.c->flops / r.us * 1e-3, r.c->bytes / r.us * 1e-3);
        write_file_atomic(csv, out);
    }
    return 0;
}

}  // namespace
}  // namespace sr

int main(int argc, char** argv) {
    try {
        return sr::run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speedrun_ops_perf: error: %s\n", e.what());
        return 1;
    }
}
