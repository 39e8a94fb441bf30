// batchnorm.cpp: CPU batch norm over M rows x C channels (NHWC flattened), training mode with
// batch statistics (sums in double, per thread, then combined), inference mode, and backward.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "ops/cpu/activation_math.h"
#include "ops/cpu/cpu_ops.h"

namespace sr::cpu {
namespace {

// Per-thread partial sums: [thread][2][C] doubles. Grows once, then reused (no allocation in
// the training loop after the first step). One buffer per calling thread, so the ops may run
// from several threads at once (tests run one data-parallel "rank" per thread).
double* partials(int threads, int C) {
    thread_local std::vector<double> buf;
    const size_t need = size_t(threads) * 2 * C;
    if (buf.size() < need) buf.resize(need);
    std::fill(buf.begin(), buf.begin() + need, 0.0);
    return buf.data();
}

// Per-channel work arrays of one op (affine coefficients, sums): thread_local like partials(),
// grown once and reused. Float slots: 0, 1 the affine map a, b (and bn_stats's centre); 2, 3, 4
// the backward's k, mb, mg (bn_act_backward holds a, b while bn_backward uses 2-4).
float* channel_floats(int slot, int C) {
    thread_local std::vector<float> buf[5];
    if (buf[slot].size() < size_t(C)) buf[slot].resize(size_t(C));
    return buf[slot].data();
}
double* channel_sums(int C) {  // 2C doubles
    thread_local std::vector<double> buf;
    if (buf.size() < 2 * size_t(C)) buf.resize(2 * size_t(C));
    return buf.data();
}

// Runs body(row_begin, row_end, sums_for_this_thread) over all rows in parallel, then adds the
// per-thread sums into out[0..2C).
template <typename Body>
void reduce_rows(double* out, int M, int C, Body body) {
    const int T = omp_get_max_threads();
    double* part = partials(T, C);
#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int r0 = int(int64_t(M) * t / nt), r1 = int(int64_t(M) * (t + 1) / nt);
        body(r0, r1, part + size_t(t) * 2 * C);
    }
    for (int i = 0; i < 2 * C; ++i) out[i] = 0;
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < 2 * C; ++i) out[i] += part[size_t(t) * 2 * C + i];
}

// The reductions' per-thread bodies. Functions of their own with SR_CLONES: a body inlined into
// reduce_rows's parallel region was compiled for the baseline x86-64 only (the region is
// outlined before target_clones copies a function), two doubles per vector.
// s[c] += x - ctr, s[C + c] += (x - ctr)^2 over rows r0..r1 (ctr: none when null)
SR_CLONES void sum_rows(double* s, const float* x, const float* ctr, int r0, int r1, int C) {
    double* ss = s + C;
    for (int r = r0; r < r1; ++r) {
        const float* xr = x + size_t(r) * C;
        if (ctr) {
#pragma omp simd
            for (int c = 0; c < C; ++c) {
                const double v = double(xr[c]) - double(ctr[c]);
                s[c] += v;
                ss[c] += v * v;
            }
        } else {
#pragma omp simd
            for (int c = 0; c < C; ++c) {
                const double v = xr[c];
                s[c] += v;
                ss[c] += v * v;
            }
        }
    }
}

// s[c] += dy, s[C + c] += dy * xhat, xhat = (x - mean) * invstd, over rows r0..r1
SR_CLONES void sum_dy_rows(double* s, const float* dy, const float* x, const float* mean,
                           const float* invstd, int r0, int r1, int C) {
    double* sx = s + C;
    for (int r = r0; r < r1; ++r) {
        const float* xr = x + size_t(r) * C;
        const float* dyr = dy + size_t(r) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) {
            s[c] += dyr[c];
            sx[c] += double(dyr[c]) * double((xr[c] - mean[c]) * invstd[c]);
        }
    }
}

// The batch norm backward's dx from its channel sums: dx = k[c] * (dy - mb[c] - xhat * mg[c]),
// k = gamma * invstd, mb and mg the means of dy and of dy * xhat
SR_CLONES void bn_dx_rows(float* dx, const float* dy, const float* x, const float* mean,
                          const float* invstd, const float* k, const float* mb, const float* mg,
                          int M, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < M; ++r) {
        const float* xr = x + size_t(r) * C;
        const float* dyr = dy + size_t(r) * C;
        float* dxr = dx + size_t(r) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) {
            const float xh = (xr[c] - mean[c]) * invstd[c];
            dxr[c] = k[c] * (dyr[c] - mb[c] - xh * mg[c]);
        }
    }
}

// y = x * a[c] + b[c]
SR_CLONES void affine_rows(float* y, const float* x, const float* a, const float* b, int M, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < M; ++r) {
        const float* xr = x + size_t(r) * C;
        float* yr = y + size_t(r) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) yr[c] = xr[c] * a[c] + b[c];
    }
}

// z = act(x * a[c] + b[c])
template <ActKind A>
SR_CLONES void affine_act_rows(float* z, const float* x, const float* a, const float* b, int M,
                               int C, float alpha) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < M; ++r) {
        const float* xr = x + size_t(r) * C;
        float* zr = z + size_t(r) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) zr[c] = act_value<A>(xr[c] * a[c] + b[c], alpha);
    }
}

// Batch statistics of x (sums in double): saves mean and invstd, updates the running
// statistics, and gives the affine map y = x * a[c] + b[c] of training-mode batch norm.
SR_CLONES void train_affine(float* a, float* b, float* mean, float* invstd, float* running_mean,
                            float* running_var, const float* x, const float* gamma,
                            const float* beta, int M, int C, float eps, float momentum) {
    double* sums = channel_sums(C);
    reduce_rows(sums, M, C, [&](int r0, int r1, double* s) { sum_rows(s, x, nullptr, r0, r1, C); });
    for (int c = 0; c < C; ++c) {
        const double m = sums[c] / M;
        const double var = std::max(0.0, sums[C + c] / M - m * m);
        const float is = float(1.0 / std::sqrt(var + double(eps)));
        mean[c] = float(m);
        invstd[c] = is;
        const float unbiased = float(M > 1 ? var * M / (M - 1) : var);
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * float(m);
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
        a[c] = is * (gamma ? gamma[c] : 1.f);
        b[c] = (beta ? beta[c] : 0.f) - float(m) * a[c];
    }
}


// Inference mode's affine map from the running statistics.
void eval_affine(float* a, float* b, const float* running_mean, const float* running_var,
                 const float* gamma, const float* beta, int C, float eps) {
    for (int c = 0; c < C; ++c) {
        const float is = float(1.0 / std::sqrt(double(running_var[c]) + double(eps)));
        a[c] = is * (gamma ? gamma[c] : 1.f);
        b[c] = (beta ? beta[c] : 0.f) - running_mean[c] * a[c];
    }
}

}  // namespace

SR_CLONES void bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                      float* running_var, const float* x, const float* gamma, const float* beta,
                      int M, int C, float eps, float momentum) {
    float* a = channel_floats(0, C);
    float* b = channel_floats(1, C);
    train_affine(a, b, mean, invstd, running_mean, running_var, x, gamma, beta, M, C,
                 eps, momentum);
    affine_rows(y, x, a, b, M, C);
}

void bn_act_forward_train(float* z, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma,
                          const float* beta, int M, int C, float eps, float momentum, ActKind act,
                          float alpha) {
    float* a = channel_floats(0, C);
    float* b = channel_floats(1, C);
    train_affine(a, b, mean, invstd, running_mean, running_var, x, gamma, beta, M, C,
                 eps, momentum);
    with_act(act, [&]<ActKind A>() { affine_act_rows<A>(z, x, a, b, M, C, alpha); });
}

void bn_act_forward_eval(float* z, const float* x, const float* running_mean,
                         const float* running_var, const float* gamma, const float* beta, int M,
                         int C, float eps, ActKind act, float alpha) {
    float* a = channel_floats(0, C);
    float* b = channel_floats(1, C);
    eval_affine(a, b, running_mean, running_var, gamma, beta, C, eps);
    with_act(act, [&]<ActKind A>() { affine_act_rows<A>(z, x, a, b, M, C, alpha); });
}

namespace {

// dy = dz act'(y), with y = x * a[c] + b[c] recomputed as the forward computed it. A loop of its
// own (not inside the reduction below) so that it vectorises with the activation inlined: the
// CPU is compute-bound on erf and exp here, not memory-bound, so one extra pass costs little.
template <ActKind A>
SR_CLONES void act_chain_rows(float* dy, const float* dz, const float* x, const float* a,
                              const float* b, int M, int C, float alpha) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < M; ++r) {
        const float* xr = x + size_t(r) * C;
        const float* dzr = dz + size_t(r) * C;
        float* dyr = dy + size_t(r) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) dyr[c] = act_chain<A>(dzr[c], xr[c] * a[c] + b[c], alpha);
    }
}

}  // namespace

void bn_forward_eval(float* y, const float* x, const float* running_mean,
                     const float* running_var, const float* gamma, const float* beta, int M,
                     int C, float eps) {
    float* a = channel_floats(0, C);
    float* b = channel_floats(1, C);
    eval_affine(a, b, running_mean, running_var, gamma, beta, C, eps);
    affine_rows(y, x, a, b, M, C);
}

void bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz, const float* x,
                     const float* mean, const float* invstd, const float* gamma,
                     const float* beta, int M, int C, ActKind act, float alpha) {
    float* a = channel_floats(0, C);
    float* b = channel_floats(1, C);
    for (int c = 0; c < C; ++c) {
        a[c] = invstd[c] * (gamma ? gamma[c] : 1.f);
        b[c] = (beta ? beta[c] : 0.f) - mean[c] * a[c];
    }
    // dx := dy, then the batch norm backward of dy in place (each element reads dy before it
    // writes dx)
    with_act(act, [&]<ActKind A>() { act_chain_rows<A>(dx, dz, x, a, b, M, C, alpha); });
    bn_backward(dx, dgamma, dbeta, dx, x, mean, invstd, gamma, M, C);
}

SR_CLONES void bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                 const float* mean, const float* invstd, const float* gamma, int M, int C) {
    // sums[c] = sum dy, sums[C + c] = sum dy * xhat
    double* sums = channel_sums(C);
    reduce_rows(sums, M, C, [&](int r0, int r1, double* s) {
        sum_dy_rows(s, dy, x, mean, invstd, r0, r1, C);
    });
    float* k = channel_floats(2, C);
    float* mb = channel_floats(3, C);
    float* mg = channel_floats(4, C);
    for (int c = 0; c < C; ++c) {
        if (dbeta) dbeta[c] = float(sums[c]);
        if (dgamma) dgamma[c] = float(sums[C + c]);
        k[c] = (gamma ? gamma[c] : 1.f) * invstd[c];
        mb[c] = float(sums[c] / M);
        mg[c] = float(sums[C + c] / M);
    }
    bn_dx_rows(dx, dy, x, mean, invstd, k, mb, mg, M, C);
}

// ---- batch norm in pieces (sync-BN): see backend.h ------------------------------------------

SR_CLONES void bn_stats(float* sums, const float* x, const float* center_sums, float center_scale,
                        int M, int C) {
    float* center = channel_floats(0, C);
    for (int c = 0; c < C; ++c) center[c] = center_sums ? center_sums[c] * center_scale : 0.f;
    const float* ctr = center;
    double* s2 = channel_sums(C);
    reduce_rows(s2, M, C, [&](int r0, int r1, double* s) { sum_rows(s, x, ctr, r0, r1, C); });
    for (int i = 0; i < 2 * C; ++i) sums[i] = float(s2[i]);
}

SR_CLONES void bn_apply(float* y, float* mean, float* invstd, float* running_mean,
                        float* running_var, const float* x, const float* gamma, const float* beta,
                        const float* sums, const float* center_sums, float center_scale,
                        int64_t count, int M, int C, float eps, float momentum) {
    float* a = channel_floats(0, C);
    float* b = channel_floats(1, C);
    const double n = double(count);
    for (int c = 0; c < C; ++c) {
        const double center = center_sums ? double(center_sums[c] * center_scale) : 0.0;
        const double d = double(sums[c]) / n;
        const double m = center + d;
        const double var = std::max(0.0, double(sums[C + c]) / n - d * d);
        const float is = float(1.0 / std::sqrt(var + double(eps)));
        mean[c] = float(m);
        invstd[c] = is;
        const float unbiased = float(count > 1 ? var * n / (n - 1) : var);
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * float(m);
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
        a[c] = is * (gamma ? gamma[c] : 1.f);
        b[c] = (beta ? beta[c] : 0.f) - float(m) * a[c];
    }
    affine_rows(y, x, a, b, M, C);
}

SR_CLONES void bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                                  const float* x, const float* mean, const float* invstd, int M,
                                  int C) {
    double* s2 = channel_sums(C);
    reduce_rows(s2, M, C, [&](int r0, int r1, double* s) {
        sum_dy_rows(s, dy, x, mean, invstd, r0, r1, C);
    });
    for (int c = 0; c < C; ++c) {
        sums[c] = float(s2[c]);
        sums[C + c] = float(s2[C + c]);
        if (dbeta) dbeta[c] = sums[c];
        if (dgamma) dgamma[c] = sums[C + c];
    }
}

SR_CLONES void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                                 const float* invstd, const float* gamma, const float* sums,
                                 int64_t count, int M, int C) {
    float* k = channel_floats(2, C);
    float* mb = channel_floats(3, C);
    float* mg = channel_floats(4, C);
    for (int c = 0; c < C; ++c) {
        k[c] = (gamma ? gamma[c] : 1.f) * invstd[c];
        mb[c] = float(double(sums[c]) / double(count));
        mg[c] = float(double(sums[C + c]) / double(count));
    }
    bn_dx_rows(dx, dy, x, mean, invstd, k, mb, mg, M, C);
}

}  // namespace sr::cpu
