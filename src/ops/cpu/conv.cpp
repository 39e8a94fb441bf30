// conv.cpp: CPU convolution. CpuConv2d runs oneDNN primitives (created once per shape in the
// constructor, with a user-owned scratchpad, so nothing is allocated per step); the *_naive
// functions are the plain-loop reference that tests check oneDNN against.
// Activations are NHWC ("nhwc" memory); weights OHWI ("ohwi"). oneDNN may prefer a blocked
// weight layout: then the weights are reordered into a buffer held here (they are small).
// Two algorithms (cpu_ops.h, ConvAlgorithm): direct convolution on the NHWC tensors, and, where
// oneDNN has it, Winograd on a blocked copy of the activations in the backend's ConvWorkspace.
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>

#include "core/env.h"
#include "core/error.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/cpu_ops.h"

namespace sr::cpu {

// ---- plain-loop reference ------------------------------------------------------------------

void conv2d_forward_naive(float* y, const float* x, const float* w, const float* bias,
                          const ConvShape& s) {
    const int P = s.P(), Q = s.Q();
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < s.N; ++n)
        for (int p = 0; p < P; ++p)
            for (int q = 0; q < Q; ++q)
                for (int k = 0; k < s.K; ++k) {
                    double acc = bias ? bias[k] : 0.0;
                    for (int r = 0; r < s.R; ++r) {
                        const int h = p * s.stride + r - s.pad;
                        if (h < 0 || h >= s.H) continue;
                        for (int t = 0; t < s.S; ++t) {
                            const int ww = q * s.stride + t - s.pad;
                            if (ww < 0 || ww >= s.W) continue;
                            const float* xi = x + ((size_t(n) * s.H + h) * s.W + ww) * s.C;
                            const float* wk = w + ((size_t(k) * s.R + r) * s.S + t) * s.C;
                            for (int c = 0; c < s.C; ++c) acc += double(xi[c]) * wk[c];
                        }
                    }
                    y[((size_t(n) * P + p) * Q + q) * s.K + k] = float(acc);
                }
}

void conv2d_backward_data_naive(float* dx, const float* dy, const float* w, const ConvShape& s) {
    const int P = s.P(), Q = s.Q();
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < s.N; ++n)
        for (int h = 0; h < s.H; ++h)
            for (int ww = 0; ww < s.W; ++ww)
                for (int c = 0; c < s.C; ++c) {
                    double acc = 0.0;
                    for (int r = 0; r < s.R; ++r) {
                        const int ps = h - r + s.pad;  // = p * stride
                        if (ps < 0 || ps % s.stride != 0 || ps / s.stride >= P) continue;
                        const int p = ps / s.stride;
                        for (int t = 0; t < s.S; ++t) {
                            const int qs = ww - t + s.pad;
                            if (qs < 0 || qs % s.stride != 0 || qs / s.stride >= Q) continue;
                            const int q = qs / s.stride;
                            const float* g = dy + ((size_t(n) * P + p) * Q + q) * s.K;
                            for (int k = 0; k < s.K; ++k)
                                acc += double(g[k]) * w[((size_t(k) * s.R + r) * s.S + t) * s.C + c];
                        }
                    }
                    dx[((size_t(n) * s.H + h) * s.W + ww) * s.C + c] = float(acc);
                }
}

void conv2d_backward_weights_naive(float* dw, float* db, const float* dy, const float* x,
                                   const ConvShape& s) {
    const int P = s.P(), Q = s.Q();
#pragma omp parallel for collapse(2) schedule(static)
    for (int k = 0; k < s.K; ++k)
        for (int r = 0; r < s.R; ++r)
            for (int t = 0; t < s.S; ++t)
                for (int c = 0; c < s.C; ++c) {
                    double acc = 0.0;
                    for (int n = 0; n < s.N; ++n)
                        for (int p = 0; p < P; ++p) {
                            const int h = p * s.stride + r - s.pad;
                            if (h < 0 || h >= s.H) continue;
                            for (int q = 0; q < Q; ++q) {
                                const int ww = q * s.stride + t - s.pad;
                                if (ww < 0 || ww >= s.W) continue;
                                acc += double(dy[((size_t(n) * P + p) * Q + q) * s.K + k]) *
                                       x[((size_t(n) * s.H + h) * s.W + ww) * s.C + c];
                            }
                        }
                    dw[((size_t(k) * s.R + r) * s.S + t) * s.C + c] = float(acc);
                }
    if (db) conv2d_bias_grad(db, dy, size_t(s.N) * P * Q, s.K);
}

void conv2d_bias_grad(float* db, const float* dy, size_t rows, int K) {
    // Few channels (the whitening conv's 24): one pass over dy in row order, kBlocks fixed row
    // ranges (so the sums do not depend on the thread count) each into its own K partial sums,
    // then the blocks added in order. A loop per channel would stride through the whole tensor
    // K times (36 ms for airbench94's 24 channels at batch 1024; this pass about 10).
    constexpr int kBlocks = 32, kMaxK = 64;
    if (K <= kMaxK && rows >= size_t(kBlocks) * 64) {
        double part[kBlocks][kMaxK];
#pragma omp parallel for schedule(static)
        for (int bl = 0; bl < kBlocks; ++bl) {
            double acc[kMaxK] = {};
            const size_t i0 = rows * bl / kBlocks, i1 = rows * (bl + 1) / kBlocks;
            for (size_t i = i0; i < i1; ++i) {
                const float* row = dy + i * K;
                for (int k = 0; k < K; ++k) acc[k] += row[k];
            }
            for (int k = 0; k < K; ++k) part[bl][k] = acc[k];
        }
        for (int k = 0; k < K; ++k) {
            double acc = 0.0;
            for (int bl = 0; bl < kBlocks; ++bl) acc += part[bl][k];
            db[k] = float(acc);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; ++k) {
        double acc = 0.0;
        for (size_t i = 0; i < rows; ++i) acc += dy[i * K + k];
        db[k] = float(acc);
    }
}

// ---- oneDNN ----------------------------------------------------------------------------------

namespace {
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

std::mutex g_mode_mutex;
ConvDataGrad g_mode = ConvDataGrad::fastest;
ConvAlgorithm g_algorithm = ConvAlgorithm::fastest;
// "fastest": the choices per shape (N, H, W, C, K, R, stride) and the gradients it computes (dx,
// dw: a step that skips one is timed without it), made once per process
using ShapeKey = std::tuple<int, int, int, int, int, int, int, bool, bool>;
std::map<ShapeKey, bool> g_transposed_faster, g_winograd_faster;

// A "fastest" choice: measured the first time a shape is seen in the process, then remembered
// (the caller holds g_mode_mutex).
bool timed_once(std::map<ShapeKey, bool>& cache, const ConvShape& s, const std::function<bool()>& measure) {
    const ShapeKey key = {s.N, s.H, s.W, s.C, s.K, s.R, s.stride, s.computes_dx(), s.computes_dw()};
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    return cache[key] = measure();
}

// SPEEDRUN_CPU_CONV_LOG=1: each timed choice on stderr (the shape, both times, the pick)
bool choice_log() {
    static const bool on = env_switch("SPEEDRUN_CPU_CONV_LOG", false);
    return on;
}

void log_choice(const ConvShape& s, const char* what, const char* rule_name,
                const char* other_name, const TimedChoice& c) {
    if (!choice_log()) return;
    std::fprintf(stderr, "speedrun: cpu conv %dx%d stride %d %d->%d at %dx%d N%d, %s: %s %.1f ms, "
                 "%s %.1f ms (best of %d): %s\n", s.R, s.S, s.stride, s.C, s.K, s.H, s.W, s.N,
                 what, rule_name, 1e3 * c.t_rule, other_name, 1e3 * c.t_other, c.rounds,
                 c.other ? other_name : rule_name);
}

// f's best time of two calls after an untimed one (reps = 2), or of one (reps = 1)
double best_time(const std::function<void()>& f, int reps) {
    f();
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

// One algorithm's primitives (forward with and without bias, backward data, backward weights
// with and without bias) over activations laid out as x_md / y_md, with their weight buffers
// for the layouts oneDNN prefers.
struct Primitives {
    memory::desc x_md, y_md;
    dnnl::convolution_forward::primitive_desc fwd_pd, fwd_bias_pd;
    dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
    dnnl::convolution_backward_weights::primitive_desc bwd_w_pd, bwd_wb_pd;
    dnnl::convolution_forward fwd, fwd_bias;
    dnnl::convolution_backward_data bwd_data;
    dnnl::convolution_backward_weights bwd_w, bwd_wb;
    AlignedVector<float> w_fwd, w_bwd, dw_tmp;

    Primitives(const ConvShape& s, dnnl::algorithm alg, const memory::desc& x,
               const memory::desc& y, dnnl::engine& eng)
        : x_md(x), y_md(y) {
        const memory::dims w_dims = {s.K, s.C, s.R, s.S}, b_dims = {s.K};
        const memory::dims strides = {s.stride, s.stride}, pad = {s.pad, s.pad};
        const memory::desc w_any(w_dims, dt::f32, tag::any), b_md(b_dims, dt::f32, tag::x);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        const auto train = dnnl::prop_kind::forward_training;
        fwd_pd = {{train, alg, x, w_any, y, strides, pad, pad}, attr, eng};
        fwd_bias_pd = {{train, alg, x, w_any, b_md, y, strides, pad, pad}, attr, eng};
        bwd_data_pd = {{alg, x, w_any, y, strides, pad, pad}, attr, eng, fwd_pd};
        bwd_w_pd = {{alg, x, w_any, y, strides, pad, pad}, attr, eng, fwd_pd};
        bwd_wb_pd = {{alg, x, w_any, b_md, y, strides, pad, pad}, attr, eng, fwd_bias_pd};
        fwd = dnnl::convolution_forward(fwd_pd);
        fwd_bias = dnnl::convolution_forward(fwd_bias_pd);
        bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
        bwd_w = dnnl::convolution_backward_weights(bwd_w_pd);
        bwd_wb = dnnl::convolution_backward_weights(bwd_wb_pd);
        const size_t wn = size_t(s.K) * s.C * s.R * s.S;
        auto wsize = [&](const memory::desc& d) { return std::max(wn, d.get_size() / sizeof(float)); };
        w_fwd.resize(std::max(wsize(fwd_pd.weights_desc()), wsize(fwd_bias_pd.weights_desc())));
        w_bwd.resize(wsize(bwd_data_pd.weights_desc()));
        dw_tmp.resize(std::max(wsize(bwd_w_pd.diff_weights_desc()), wsize(bwd_wb_pd.diff_weights_desc())));
    }

    size_t scratchpad_bytes() const {
        size_t sp = 0;
        for (auto d : {fwd_pd.scratchpad_desc(), fwd_bias_pd.scratchpad_desc(),
                       bwd_data_pd.scratchpad_desc(), bwd_w_pd.scratchpad_desc(),
                       bwd_wb_pd.scratchpad_desc()})
            sp = std::max(sp, d.get_size());
        return sp;
    }
};

// oneDNN's Winograd primitives for this shape, over the blocked activation layout they choose
// (the backward ones take the forward's); none where oneDNN has no Winograd kernel (it has
// F(4x4, 3x3) for AVX-512 CPUs: 3x3, stride 1, channel counts it can block).
std::optional<Primitives> make_winograd(const ConvShape& s, dnnl::engine& eng) {
    if (s.R != 3 || s.S != 3 || s.stride != 1 || s.pad != 1) return std::nullopt;
    try {
        const memory::dims x_dims = {s.N, s.C, s.H, s.W}, y_dims = {s.N, s.K, s.P(), s.Q()},
                           w_dims = {s.K, s.C, s.R, s.S};
        const memory::desc x_any(x_dims, dt::f32, tag::any), y_any(y_dims, dt::f32, tag::any),
            w_any(w_dims, dt::f32, tag::any);
        const dnnl::convolution_forward::primitive_desc probe(
            {dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_winograd, x_any, w_any,
             y_any, {1, 1}, {1, 1}, {1, 1}},
            eng);
        return Primitives(s, dnnl::algorithm::convolution_winograd, probe.src_desc(),
                          probe.dst_desc(), eng);
    } catch (const dnnl::error&) {
        return std::nullopt;
    }
}
}  // namespace

TimedChoice choose_by_timing(const std::function<double()>& time_rule,
                             const std::function<double()>& time_other, double margin) {
    TimedChoice c;
    auto beats = [&] { return c.t_other < c.t_rule * (1.0 - margin); };
    c.t_rule = time_rule();
    c.t_other = time_other();
    c.rounds = 1;
    if (!beats()) return c;
    c.t_rule = std::min(c.t_rule, time_rule());
    c.t_other = std::min(c.t_other, time_other());
    c.rounds = 2;
    c.other = beats();
    return c;
}

void set_conv_data_grad(ConvDataGrad mode) {
    std::lock_guard<std::mutex> lock(g_mode_mutex);
    g_mode = mode;
}

void set_conv_algorithm(ConvAlgorithm a) {
    std::lock_guard<std::mutex> lock(g_mode_mutex);
    g_algorithm = a;
}

namespace {
// v at least n elements; a buffer that grows is replaced, not copied (its contents are scratch)
template <class T>
void grow(AlignedVector<T>& v, size_t n) {
    if (v.size() >= n) return;
    AlignedVector<T>().swap(v);
    v.resize(n);
}
}  // namespace

void ConvWorkspace::reserve(size_t floats) {
    grow(a, floats);
    grow(b, floats);
}

void ConvWorkspace::reserve_scratch(size_t bytes) { grow(scratch, bytes); }

namespace {
// oneDNN 2.6.3's 1x1 weight gradient with a stride on NHWC activations (its jit_1x1 kernels)
// first copies x to unit stride, chunk by chunk, into each thread's part of the scratchpad; a
// chunk starts at an offset counted in channel blocks (8 floats on AVX2, 16 on AVX-512) while the
// copy advances by the real channel count per pixel. With fewer input channels than a block the
// chunks run past the thread's part: into the next thread's (with two or more threads dw comes
// out wrong from call to call) or, for the last thread, past the scratchpad's end. Measured with
// ONEDNN_MAX_CPU_ISA=AVX2 (cpu2, 2026-12-07): 4 -> 8 channels at 32x32 N32, dw wrong in 49 of 50
// calls on 2 threads and 956 floats written past the scratchpad on 1; 1 -> 16 at 16x16 N8, 45 of
// 100 and 388 floats (oneDNN issue 6035). AVX-512 showed no fault (its blocking mostly gives a
// thread one chunk), but its kernel computes the same offsets. No preset has such a conv
// (DAWN_net's projections start at 64 channels); narrower --set widths or a test shape do. Those
// small convs compute dw in the plain loops (conv2d_backward_weights_naive), on every CPU.
bool library_strided_1x1_dw_unsafe(const ConvShape& s, const Primitives& direct) {
    if (s.R != 1 || s.S != 1 || s.stride == 1 || s.C >= 16) return false;
    for (const auto* pd : {&direct.bwd_w_pd, &direct.bwd_wb_pd})
        if (std::string(pd->impl_info_str()).rfind("jit_1x1", 0) == 0) return true;
    return false;
}
}  // namespace

struct CpuConv2d::Impl {
    dnnl::engine& eng;
    dnnl::stream& strm;
    ConvWorkspace& ws;
    const ConvShape shape;
    memory::desc x_md, y_md, w_user_md;  // the interface's: NHWC activations, OHWI weights
    Primitives direct;
    std::optional<Primitives> wino;
    // computing with `wino` (ConvAlgorithm): activations are reordered into ws.a / ws.b
    bool winograd = false;
    // data gradient as a forward convolution of dy (K channels in) with w_t (C, R, S, K: the
    // weights transposed and flipped), where stride 1 and same padding make that possible
    bool transposed = false;
    memory::desc wt_user_md;
    dnnl::convolution_forward::primitive_desc tfwd_pd;
    dnnl::convolution_forward tfwd;
    AlignedVector<float> w_t, w_t_prim;
    // the weight gradient in the plain loops (library_strided_1x1_dw_unsafe)
    bool naive_dw = false;

    static memory::desc nhwc(int n, int c, int h, int w) {
        return memory::desc({n, c, h, w}, dt::f32, tag::nhwc);
    }

    Impl(const ConvShape& s, dnnl::engine& e, dnnl::stream& st, ConvWorkspace& w)
        : eng(e), strm(st), ws(w), shape(s), x_md(nhwc(s.N, s.C, s.H, s.W)),
          y_md(nhwc(s.N, s.K, s.P(), s.Q())),
          w_user_md({s.K, s.C, s.R, s.S}, dt::f32, tag::ohwi),
          direct(s, dnnl::algorithm::convolution_direct, x_md, y_md, e),
          wino(make_winograd(s, e)) {
        size_t sp = direct.scratchpad_bytes();
        if (wino) {
            sp = std::max(sp, wino->scratchpad_bytes());
            ws.reserve(std::max(wino->x_md.get_size(), wino->y_md.get_size()) / sizeof(float));
        }
        const bool can_transpose = s.stride == 1 && s.R == s.S && s.R % 2 == 1 && s.pad == s.R / 2;
        if (can_transpose) {
            const memory::dims wt_dims = {s.C, s.K, s.R, s.S}, strides = {1, 1}, pad = {s.pad, s.pad};
            wt_user_md = memory::desc(wt_dims, dt::f32, tag::ohwi);
            const memory::desc wt_any(wt_dims, dt::f32, tag::any);
            dnnl::primitive_attr attr;
            attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
            tfwd_pd = {{dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                        y_md, wt_any, x_md, strides, pad, pad},
                       attr, eng};
            tfwd = dnnl::convolution_forward(tfwd_pd);
            sp = std::max(sp, tfwd_pd.scratchpad_desc().get_size());
            w_t.resize(size_t(s.K) * s.R * s.S * s.C);
            w_t_prim.resize(std::max(w_t.size(), tfwd_pd.weights_desc().get_size() / sizeof(float)));
        }
        ws.reserve_scratch(sp + 64);
        naive_dw = library_strided_1x1_dw_unsafe(s, direct);
    }

    memory mem(const memory::desc& d, const void* p) { return memory(d, eng, const_cast<void*>(p)); }
    memory scratchpad(const memory::desc& d) { return mem(d, ws.scratch.data()); }

    // Copies an activation tensor between the interface's NHWC and a blocked layout.
    void relayout(const memory::desc& from, const void* src, const memory::desc& to, void* dst,
                  const char* key) {
        memory a = mem(from, src), b = mem(to, dst);
        reorder_for(from, to, key).execute(strm, a, b);
    }

    void forward(float* y, const float* x, const float* w, const float* bias) {
        Primitives& p = winograd ? *wino : direct;
        const char* wkey = winograd ? (bias ? "wino fwd_bias" : "wino fwd") : (bias ? "fwd_bias" : "fwd");
        const auto& pd = bias ? p.fwd_bias_pd : p.fwd_pd;
        memory wm = weights_for(pd.weights_desc(), w, p.w_fwd, wkey);
        const float* xa = x;
        float* ya = y;
        if (winograd) {
            relayout(x_md, x, p.x_md, ws.a.data(), "x to blocked");
            xa = ws.a.data();
            ya = ws.b.data();
        }
        std::unordered_map<int, memory> args = {
            {DNNL_ARG_SRC, mem(p.x_md, xa)}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, mem(p.y_md, ya)},
            {DNNL_ARG_SCRATCHPAD, scratchpad(pd.scratchpad_desc())}};
        if (bias) args[DNNL_ARG_BIAS] = mem(pd.bias_desc(), bias);
        (bias ? p.fwd_bias : p.fwd).execute(strm, args);
        if (winograd) relayout(p.y_md, ya, y_md, y, "y from blocked");
        strm.wait();
    }

    void backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) {
        if (winograd) {
            relayout(y_md, dy, wino->y_md, ws.a.data(), "y to blocked");
            winograd_data_grad(dx, ws.b.data(), ws.a.data(), w);
        } else if (transposed) {
            backward_data_transposed(dx, dy, w, s);
        } else {
            backward_data_library(dx, dy, w);
        }
    }

    void backward_weights(float* dw, float* db, const float* dy, const float* x) {
        if (winograd) {
            relayout(x_md, x, wino->x_md, ws.a.data(), "x to blocked");
            relayout(y_md, dy, wino->y_md, ws.b.data(), "y to blocked");
            x = ws.a.data();
            dy = ws.b.data();
        }
        weights_grad(dw, db, dy, x);
    }

    // Both gradients of one dy with Winograd: dy goes into its blocked layout once for both
    // primitives (each reorder of a 15x15x256 dy at batch 1024 moves 236 MB: about 18 ms here);
    // the results are bit for bit those of the two calls.
    void winograd_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                           const float* w, FunctionRef<void()> dw_ready) {
        relayout(x_md, x, wino->x_md, ws.a.data(), "x to blocked");
        relayout(y_md, dy, wino->y_md, ws.b.data(), "y to blocked");
        weights_grad(dw, db, ws.b.data(), ws.a.data());
        if (dw_ready) dw_ready();
        winograd_data_grad(dx, ws.a.data(), ws.b.data(), w);  // the blocked x is spent
    }

    // Winograd's data gradient of the blocked dy (dya) into dx, through the blocked dxa.
    void winograd_data_grad(float* dx, float* dxa, const float* dya, const float* w) {
        Primitives& p = *wino;
        memory wm = weights_for(p.bwd_data_pd.weights_desc(), w, p.w_bwd, "wino bwd_data");
        p.bwd_data.execute(strm, {{DNNL_ARG_DIFF_SRC, mem(p.x_md, dxa)},
                                  {DNNL_ARG_WEIGHTS, wm},
                                  {DNNL_ARG_DIFF_DST, mem(p.y_md, dya)},
                                  {DNNL_ARG_SCRATCHPAD, scratchpad(p.bwd_data_pd.scratchpad_desc())}});
        relayout(p.x_md, dxa, x_md, dx, "x from blocked");
        strm.wait();
    }

    // dw (and db) from x and dy in the layout of the path computing (blocked for Winograd).
    void weights_grad(float* dw, float* db, const float* dya, const float* xa) {
        // (1x1 convs never compute with Winograd: naive_dw always sees the NHWC tensors)
        if (naive_dw) return conv2d_backward_weights_naive(dw, db, dya, xa, shape);
        Primitives& p = winograd ? *wino : direct;
        const auto& pd = db ? p.bwd_wb_pd : p.bwd_w_pd;
        const memory::desc want = pd.diff_weights_desc();
        const bool direct_dw = want == w_user_md;
        memory dwm = direct_dw ? mem(w_user_md, dw) : mem(want, p.dw_tmp.data());
        std::unordered_map<int, memory> args = {
            {DNNL_ARG_SRC, mem(p.x_md, xa)}, {DNNL_ARG_DIFF_DST, mem(p.y_md, dya)},
            {DNNL_ARG_DIFF_WEIGHTS, dwm}, {DNNL_ARG_SCRATCHPAD, scratchpad(pd.scratchpad_desc())}};
        if (db) args[DNNL_ARG_DIFF_BIAS] = mem(pd.diff_bias_desc(), db);
        (db ? p.bwd_wb : p.bwd_w).execute(strm, args);
        if (!direct_dw) {
            const char* key = winograd ? (db ? "wino dwb" : "wino dw") : (db ? "dwb" : "dw");
            memory user = mem(w_user_md, dw);
            reorder_for(want, w_user_md, key).execute(strm, dwm, user);
        }
        strm.wait();
    }

    // dx = the forward convolution of dy with w transposed and flipped:
    // w_t[c][r][t][k] = w[k][R-1-r][S-1-t][c] (OHWI both).
    void backward_data_transposed(float* dx, const float* dy, const float* w, const ConvShape& s) {
        const int R = s.R, S = s.S, C = s.C, K = s.K;
#pragma omp parallel for collapse(2) schedule(static)
        for (int c = 0; c < C; ++c)
            for (int r = 0; r < R; ++r)
                for (int t = 0; t < S; ++t) {
                    float* dst = w_t.data() + ((size_t(c) * R + r) * S + t) * K;
                    for (int k = 0; k < K; ++k)
                        dst[k] = w[((size_t(k) * R + (R - 1 - r)) * S + (S - 1 - t)) * C + c];
                }
        memory user = mem(wt_user_md, w_t.data());
        memory wm = user;
        if (!(tfwd_pd.weights_desc() == wt_user_md)) {
            wm = mem(tfwd_pd.weights_desc(), w_t_prim.data());
            reorder_for(wt_user_md, tfwd_pd.weights_desc(), "tfwd").execute(strm, user, wm);
        }
        tfwd.execute(strm, {{DNNL_ARG_SRC, mem(y_md, dy)}, {DNNL_ARG_WEIGHTS, wm},
                            {DNNL_ARG_DST, mem(x_md, dx)},
                            {DNNL_ARG_SCRATCHPAD, scratchpad(tfwd_pd.scratchpad_desc())}});
        strm.wait();
    }
    void backward_data_library(float* dx, const float* dy, const float* w) {
        memory wm = weights_for(direct.bwd_data_pd.weights_desc(), w, direct.w_bwd, "bwd_data");
        direct.bwd_data.execute(strm, {{DNNL_ARG_DIFF_SRC, mem(x_md, dx)},
                                       {DNNL_ARG_WEIGHTS, wm},
                                       {DNNL_ARG_DIFF_DST, mem(y_md, dy)},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad(direct.bwd_data_pd.scratchpad_desc())}});
        strm.wait();
    }

    // Which way this conv computes dx on the direct path (ConvDataGrad); "fastest" times both
    // on scratch buffers the first time a shape is seen.
    void choose_data_grad(const ConvShape& s) {
        if (tfwd_pd.get(true) == nullptr) return;  // not a stride-1 same-padded conv
        if (!s.computes_dx()) return;               // (no data gradient is asked for)
        std::lock_guard<std::mutex> lock(g_mode_mutex);
        // a conv that computes with Winograd (chosen before this) never takes the direct path's
        // dx: no timing (it faulted in and timed two batch-sized buffers per shape)
        if (g_mode != ConvDataGrad::fastest || winograd) {
            transposed = g_mode == ConvDataGrad::transposed;
            return;
        }
        transposed = timed_once(g_transposed_faster, s, [&] {
            std::vector<float> dx(size_t(s.N) * s.H * s.W * s.C),
                dy(size_t(s.N) * s.H * s.W * s.K, 0.01f), w(size_t(s.K) * s.R * s.S * s.C, 0.01f);
            const TimedChoice c = choose_by_timing(
                [&] { return best_time([&] { backward_data_library(dx.data(), dy.data(), w.data()); }, 2); },
                [&] { return best_time([&] { backward_data_transposed(dx.data(), dy.data(), w.data(), s); }, 2); });
            log_choice(s, "backward-data", "library", "transposed", c);
            return c.other;
        });
    }

    // Whether this conv computes with Winograd (ConvAlgorithm); "fastest" times a forward and the
    // gradients training asks of this conv (both, dw alone, or none) on both paths (the reorders
    // included) on scratch buffers the first time a shape is seen. Chosen before the data
    // gradient's path, so the direct path is timed with the library's dx (a lean towards
    // Winograd, the fixed rule).
    void choose_algorithm(const ConvShape& s) {
        if (!wino) return;
        std::lock_guard<std::mutex> lock(g_mode_mutex);
        if (g_algorithm != ConvAlgorithm::fastest) {
            winograd = g_algorithm == ConvAlgorithm::winograd;
            return;
        }
        winograd = timed_once(g_winograd_faster, s, [&] {
            std::vector<float> x(size_t(s.N) * s.H * s.W * s.C, 0.01f),
                y(size_t(s.N) * s.P() * s.Q() * s.K, 0.01f), w(size_t(s.K) * s.R * s.S * s.C, 0.01f),
                bias(size_t(s.K));
            // the gradients this conv computes: none for an evaluation workspace's conv, dw alone
            // for the first conv of a network (the images need no gradient)
            auto step = [&] {  // (dx into x and dw into w: only the time counts)
                forward(y.data(), x.data(), w.data(), nullptr);
                if (s.computes_dx() && s.computes_dw() && winograd) {
                    winograd_backward(x.data(), w.data(), bias.data(), y.data(), x.data(), w.data(), {});
                    return;
                }
                if (s.computes_dw()) backward_weights(w.data(), bias.data(), y.data(), x.data());
                if (s.computes_dx()) backward_data(x.data(), y.data(), w.data(), s);
            };
            const TimedChoice c = choose_by_timing(
                [&] { winograd = true; return best_time(step, 1); },
                [&] { winograd = false; return best_time(step, 1); });
            log_choice(s, "algorithm", "winograd", "direct", c);
            return !c.other;
        });
    }

    // Reorders between layouts, each made once.
    std::unordered_map<std::string, dnnl::reorder> reorders;
    dnnl::reorder& reorder_for(const memory::desc& from, const memory::desc& to, const char* key) {
        auto it = reorders.find(key);
        if (it == reorders.end()) it = reorders.emplace(key, dnnl::reorder(dnnl::reorder::primitive_desc(eng, from, eng, to))).first;
        return it->second;
    }

    // The weights as the primitive wants them: the user buffer itself, or a reordered copy.
    memory weights_for(const memory::desc& want, const float* w, AlignedVector<float>& buf, const char* key) {
        memory user = mem(w_user_md, w);
        if (want == w_user_md) return user;
        memory dst = mem(want, buf.data());
        reorder_for(w_user_md, want, key).execute(strm, user, dst);
        return dst;
    }
};

CpuConv2d::CpuConv2d(const ConvShape& s, dnnl::engine& eng, dnnl::stream& strm, ConvWorkspace& ws)
    : Conv2d(s), impl_(std::make_unique<Impl>(s, eng, strm, ws)) {
    impl_->choose_algorithm(s);
    impl_->choose_data_grad(s);
}
CpuConv2d::~CpuConv2d() = default;

void CpuConv2d::forward(float* y, const float* x, const float* w, const float* bias) {
    impl_->forward(y, x, w, bias);
}

void CpuConv2d::backward_data(float* dx, const float* dy, const float* w) {
    refuse_unplanned("backward_data", true, false);
    impl_->backward_data(dx, dy, w, shape);
}

void CpuConv2d::backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                         const float* w, FunctionRef<void()> dw_ready) {
    refuse_unplanned("backward", dx != nullptr, dw != nullptr);
    if (dw && dx && impl_->winograd) return impl_->winograd_backward(dx, dw, db, dy, x, w, dw_ready);
    Conv2d::backward(dx, dw, db, dy, x, w, dw_ready);
}

void CpuConv2d::backward_weights(float* dw, float* db, const float* dy, const float* x) {
    refuse_unplanned("backward_weights", false, dw != nullptr);
    if (dw) return impl_->backward_weights(dw, db, dy, x);
    // the bias gradient alone (the frozen whitening conv): the reference's own sums
    if (db) conv2d_bias_grad(db, dy, size_t(shape.N) * shape.P() * shape.Q(), shape.K);
}

bool CpuConv2d::data_grad_transposed() const { return !impl_->winograd && impl_->transposed; }

bool CpuConv2d::winograd() const { return impl_->winograd; }

bool CpuConv2d::plain_loop_weight_grad() const { return impl_->naive_dw; }

std::string CpuConv2d::library_weight_grad_impl() const {
    return impl_->direct.bwd_w_pd.impl_info_str();
}

bool winograd_available() {
    static const bool has = [] {
        dnnl::engine eng(dnnl::engine::kind::cpu, 0);
        return make_winograd(ConvShape{1, 8, 8, 16, 16, 3, 3, 1}, eng).has_value();
    }();
    return has;
}

}  // namespace sr::cpu
