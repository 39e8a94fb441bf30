// conv.cpp: CPU convolution. CpuConv2d runs oneDNN primitives (created once per shape in the
// constructor, with a user-owned scratchpad, so nothing is allocated per step); the *_naive
// functions are the plain-loop reference that tests check oneDNN against.
// Activations are NHWC ("nhwc" memory); weights OHWI ("ohwi"). oneDNN may prefer a blocked
// weight layout: then the weights are reordered into a buffer held here (they are small).
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>

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
    if (db) {
        for (int k = 0; k < s.K; ++k) {
            double acc = 0.0;
            for (size_t i = 0; i < size_t(s.N) * P * Q; ++i) acc += dy[i * s.K + k];
            db[k] = float(acc);
        }
    }
}

// ---- oneDNN ----------------------------------------------------------------------------------

namespace {
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

std::mutex g_mode_mutex;
ConvDataGrad g_mode = ConvDataGrad::fastest;
// "fastest": the choice per shape (N, H, W, C, K, R), made once per process
std::map<std::tuple<int, int, int, int, int, int>, bool> g_transposed_faster;
}  // namespace

void set_conv_data_grad(ConvDataGrad mode) {
    std::lock_guard<std::mutex> lock(g_mode_mutex);
    g_mode = mode;
}

struct CpuConv2d::Impl {
    dnnl::engine& eng;
    dnnl::stream& strm;
    memory::desc x_md, y_md, w_user_md, b_md;
    dnnl::convolution_forward::primitive_desc fwd_pd, fwd_bias_pd;
    dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
    dnnl::convolution_backward_weights::primitive_desc bwd_w_pd, bwd_wb_pd;
    dnnl::convolution_forward fwd, fwd_bias;
    dnnl::convolution_backward_data bwd_data;
    dnnl::convolution_backward_weights bwd_w, bwd_wb;
    std::vector<float> w_fwd, w_bwd, dw_tmp;  // weights in the primitives' preferred layouts
    std::vector<uint8_t> scratch;
    // data gradient as a forward convolution of dy (K channels in) with w_t (C, R, S, K: the
    // weights transposed and flipped), where stride 1 and same padding make that possible
    bool transposed = false;
    memory::desc wt_user_md;
    dnnl::convolution_forward::primitive_desc tfwd_pd;
    dnnl::convolution_forward tfwd;
    std::vector<float> w_t, w_t_prim;

    Impl(const ConvShape& s, dnnl::engine& e, dnnl::stream& st) : eng(e), strm(st) {
        const memory::dims x_dims = {s.N, s.C, s.H, s.W}, y_dims = {s.N, s.K, s.P(), s.Q()},
                           w_dims = {s.K, s.C, s.R, s.S}, b_dims = {s.K};
        const memory::dims strides = {s.stride, s.stride}, pad = {s.pad, s.pad};
        x_md = memory::desc(x_dims, dt::f32, tag::nhwc);
        y_md = memory::desc(y_dims, dt::f32, tag::nhwc);
        w_user_md = memory::desc(w_dims, dt::f32, tag::ohwi);
        b_md = memory::desc(b_dims, dt::f32, tag::x);
        const memory::desc w_any(w_dims, dt::f32, tag::any);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        const auto alg = dnnl::algorithm::convolution_direct;
        const auto train = dnnl::prop_kind::forward_training;
        fwd_pd = {{train, alg, x_md, w_any, y_md, strides, pad, pad}, attr, eng};
        fwd_bias_pd = {{train, alg, x_md, w_any, b_md, y_md, strides, pad, pad}, attr, eng};
        bwd_data_pd = {{alg, x_md, w_any, y_md, strides, pad, pad}, attr, eng, fwd_pd};
        bwd_w_pd = {{alg, x_md, w_any, y_md, strides, pad, pad}, attr, eng, fwd_pd};
        bwd_wb_pd = {{alg, x_md, w_any, b_md, y_md, strides, pad, pad}, attr, eng, fwd_bias_pd};
        fwd = dnnl::convolution_forward(fwd_pd);
        fwd_bias = dnnl::convolution_forward(fwd_bias_pd);
        bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
        bwd_w = dnnl::convolution_backward_weights(bwd_w_pd);
        bwd_wb = dnnl::convolution_backward_weights(bwd_wb_pd);
        size_t sp = 0;
        for (auto d : {fwd_pd.scratchpad_desc(), fwd_bias_pd.scratchpad_desc(),
                       bwd_data_pd.scratchpad_desc(), bwd_w_pd.scratchpad_desc(),
                       bwd_wb_pd.scratchpad_desc()})
            sp = std::max(sp, d.get_size());
        const bool can_transpose = s.stride == 1 && s.R == s.S && s.R % 2 == 1 && s.pad == s.R / 2;
        if (can_transpose) {
            const memory::dims wt_dims = {s.C, s.K, s.R, s.S};
            wt_user_md = memory::desc(wt_dims, dt::f32, tag::ohwi);
            const memory::desc wt_any(wt_dims, dt::f32, tag::any);
            const auto infer = dnnl::prop_kind::forward_inference;
            tfwd_pd = {{infer, alg, y_md, wt_any, x_md, strides, pad, pad}, attr, eng};
            tfwd = dnnl::convolution_forward(tfwd_pd);
            sp = std::max(sp, tfwd_pd.scratchpad_desc().get_size());
            w_t.resize(size_t(s.K) * s.R * s.S * s.C);
            w_t_prim.resize(std::max(w_t.size(), tfwd_pd.weights_desc().get_size() / sizeof(float)));
        }
        scratch.resize(sp + 64);
        const size_t wn = size_t(s.K) * s.C * s.R * s.S;
        auto wsize = [&](const memory::desc& d) { return std::max(wn, d.get_size() / sizeof(float)); };
        w_fwd.resize(std::max(wsize(fwd_pd.weights_desc()), wsize(fwd_bias_pd.weights_desc())));
        w_bwd.resize(wsize(bwd_data_pd.weights_desc()));
        dw_tmp.resize(std::max(wsize(bwd_w_pd.diff_weights_desc()), wsize(bwd_wb_pd.diff_weights_desc())));
    }

    memory mem(const memory::desc& d, const void* p) { return memory(d, eng, const_cast<void*>(p)); }

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
                            {DNNL_ARG_SCRATCHPAD, mem(tfwd_pd.scratchpad_desc(), scratch.data())}});
        strm.wait();
    }
    void backward_data_library(float* dx, const float* dy, const float* w) {
        memory wm = weights_for(bwd_data_pd.weights_desc(), w, w_bwd, "bwd_data");
        bwd_data.execute(strm, {{DNNL_ARG_DIFF_SRC, mem(x_md, dx)},
                                {DNNL_ARG_WEIGHTS, wm},
                                {DNNL_ARG_DIFF_DST, mem(y_md, dy)},
                                {DNNL_ARG_SCRATCHPAD, mem(bwd_data_pd.scratchpad_desc(), scratch.data())}});
        strm.wait();
    }

    // Which way this conv computes dx (ConvDataGrad); "fastest" times both on scratch buffers
    // (one untimed call each, then the better of two) the first time a shape is seen.
    void choose_data_grad(const ConvShape& s) {
        if (tfwd_pd.get(true) == nullptr) return;  // not a stride-1 same-padded conv
        std::lock_guard<std::mutex> lock(g_mode_mutex);
        if (g_mode != ConvDataGrad::fastest) {
            transposed = g_mode == ConvDataGrad::transposed;
            return;
        }
        const auto key = std::make_tuple(s.N, s.H, s.W, s.C, s.K, s.R);
        if (auto it = g_transposed_faster.find(key); it != g_transposed_faster.end()) {
            transposed = it->second;
            return;
        }
        std::vector<float> dx(size_t(s.N) * s.H * s.W * s.C), dy(size_t(s.N) * s.H * s.W * s.K, 0.01f),
            w(size_t(s.K) * s.R * s.S * s.C, 0.01f);
        auto best_of_two = [](const std::function<void()>& f) {
            f();
            double best = 1e30;
            for (int i = 0; i < 2; ++i) {
                const auto t0 = std::chrono::steady_clock::now();
                f();
                best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            }
            return best;
        };
        const double lib = best_of_two([&] { backward_data_library(dx.data(), dy.data(), w.data()); });
        const double tr = best_of_two([&] { backward_data_transposed(dx.data(), dy.data(), w.data(), s); });
        transposed = tr < lib;
        g_transposed_faster[key] = transposed;
    }

    // Reorders between the user (OHWI) weights and a primitive's preferred layout, made once.
    std::unordered_map<std::string, dnnl::reorder> reorders;
    dnnl::reorder& reorder_for(const memory::desc& from, const memory::desc& to, const char* key) {
        auto it = reorders.find(key);
        if (it == reorders.end()) it = reorders.emplace(key, dnnl::reorder(dnnl::reorder::primitive_desc(eng, from, eng, to))).first;
        return it->second;
    }

    // The weights as the primitive wants them: the user buffer itself, or a reordered copy.
    memory weights_for(const memory::desc& want, const float* w, std::vector<float>& buf, const char* key) {
        memory user = mem(w_user_md, w);
        if (want == w_user_md) return user;
        memory dst = mem(want, buf.data());
        reorder_for(w_user_md, want, key).execute(strm, user, dst);
        return dst;
    }
};

CpuConv2d::CpuConv2d(const ConvShape& s, dnnl::engine& eng, dnnl::stream& strm)
    : Conv2d(s), impl_(std::make_unique<Impl>(s, eng, strm)) {
    impl_->choose_data_grad(s);
}
CpuConv2d::~CpuConv2d() = default;

void CpuConv2d::forward(float* y, const float* x, const float* w, const float* bias) {
    Impl& m = *impl_;
    const auto& pd = bias ? m.fwd_bias_pd : m.fwd_pd;
    memory wm = m.weights_for(pd.weights_desc(), w, m.w_fwd, bias ? "fwd_bias" : "fwd");
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, m.mem(m.x_md, x)}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, m.mem(m.y_md, y)},
        {DNNL_ARG_SCRATCHPAD, m.mem(pd.scratchpad_desc(), m.scratch.data())}};
    if (bias) args[DNNL_ARG_BIAS] = m.mem(m.b_md, bias);
    (bias ? m.fwd_bias : m.fwd).execute(m.strm, args);
    m.strm.wait();
}

void CpuConv2d::backward_data(float* dx, const float* dy, const float* w) {
    if (impl_->transposed)
        impl_->backward_data_transposed(dx, dy, w, shape);
    else
        impl_->backward_data_library(dx, dy, w);
}

bool CpuConv2d::data_grad_transposed() const { return impl_->transposed; }

void CpuConv2d::backward_weights(float* dw, float* db, const float* dy, const float* x) {
    Impl& m = *impl_;
    const auto& pd = db ? m.bwd_wb_pd : m.bwd_w_pd;
    const memory::desc want = pd.diff_weights_desc();
    const bool direct = want == m.w_user_md;
    memory dwm = direct ? m.mem(m.w_user_md, dw) : m.mem(want, m.dw_tmp.data());
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, m.mem(m.x_md, x)}, {DNNL_ARG_DIFF_DST, m.mem(m.y_md, dy)},
        {DNNL_ARG_DIFF_WEIGHTS, dwm},
        {DNNL_ARG_SCRATCHPAD, m.mem(pd.scratchpad_desc(), m.scratch.data())}};
    if (db) args[DNNL_ARG_DIFF_BIAS] = m.mem(m.b_md, db);
    (db ? m.bwd_wb : m.bwd_w).execute(m.strm, args);
    if (!direct) {
        memory user = m.mem(m.w_user_md, dw);
        m.reorder_for(want, m.w_user_md, db ? "dwb" : "dw").execute(m.strm, dwm, user);
    }
    m.strm.wait();
}

}  // namespace sr::cpu
