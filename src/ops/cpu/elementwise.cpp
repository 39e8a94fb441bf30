// elementwise.cpp: CPU GELU (exact, erf-based), SiLU, ReLU and CELU, the optimizer updates (SGD-Nesterov,
// lookahead lerp, axpy, Muon's momentum and norm scaling), and the small gemm Muon needs. The loops are written so that GCC vectorises them (no calls into libm inside
// the hot loops: erf and exp are evaluated by the branch-free polynomials below).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include <dnnl.hpp>

#include "core/error.h"
#include "ops/cpu/activation_math.h"
#include "ops/cpu/cpu_ops.h"

namespace sr::cpu {

float gelu_scalar(float x) { return gelu_one(x); }
float gelu_grad_scalar(float x) { return gelu_grad_one(x); }

SR_CLONES void gelu_forward(float* y, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) y[i] = gelu_one(x[i]);
}

SR_CLONES void gelu_backward(float* dx, const float* dy, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_grad_one(x[i]);
}

// silu(x) = x s(x), s = 1 / (1 + exp(-x));  silu'(x) = s(x) (1 + x (1 - s(x)))
SR_CLONES void silu_forward(float* y, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) y[i] = x[i] / (1.f + exp_poly(-x[i]));
}

SR_CLONES void silu_backward(float* dx, const float* dy, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
        const float s = 1.f / (1.f + exp_poly(-x[i]));
        dx[i] = dy[i] * s * (1.f + x[i] * (1.f - s));
    }
}

// relu(x) = max(x, 0);  relu'(x) = [x > 0]
SR_CLONES void relu_forward(float* y, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
}

SR_CLONES void relu_backward(float* dx, const float* dy, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
}

// celu(x) = x for x > 0, else alpha (exp(x / alpha) - 1);  celu'(x) = 1 or exp(x / alpha)
SR_CLONES void celu_forward(float* y, const float* x, size_t n, float alpha) {
    const float inv = 1.f / alpha;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
        const float e = alpha * (exp_poly(std::min(x[i], 0.f) * inv) - 1.f);
        y[i] = x[i] > 0.f ? x[i] : e;
    }
}

SR_CLONES void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) {
    const float inv = 1.f / alpha;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
        const float e = exp_poly(std::min(x[i], 0.f) * inv);
        dx[i] = x[i] > 0.f ? dy[i] : dy[i] * e;
    }
}

SR_CLONES void sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                  float momentum) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) {
        const float gi = g[i] + wd * p[i];
        const float b = momentum * buf[i] + gi;
        buf[i] = b;
        p[i] -= lr * (gi + momentum * b);
    }
}

// Nesterov SGD with the lr inside the velocity (cifar10-fast, cifar10-fast-simple):
//   d = -lr (g + wd p);  v = momentum v + d;  p += d + momentum v
SR_CLONES void sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr,
                                     float wd, float momentum) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) {
        const float d = -lr * (g[i] + wd * p[i]);
        const float vi = momentum * v[i] + d;
        v[i] = vi;
        p[i] += d + momentum * vi;
    }
}

SR_CLONES void lerp_assign(float* ema, float* p, size_t n, float t) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) {
        const float e = ema[i] + t * (p[i] - ema[i]);
        ema[i] = e;
        p[i] = e;
    }
}

SR_CLONES void axpy(float* y, const float* x, float a, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) y[i] += a * x[i];
}

SR_CLONES void scale(float* x, float a, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) x[i] *= a;
}

void scale_to_norm(float* x, size_t n, float target, float eps) {
    double ss = 0;
#pragma omp parallel for reduction(+ : ss) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
    scale(x, float(target / (std::sqrt(ss) + eps)), n);
}

void sgd_nesterov_ranges(float* p, float* buf, const float* g, const SgdRange* ranges, int count,
                         float momentum, bool velocity) {
    for (int k = 0; k < count; ++k) {
        const SgdRange& r = ranges[k];
        if (r.end <= r.begin) continue;
        if (velocity)
            sgd_nesterov_velocity(p + r.begin, buf + r.begin, g + r.begin, r.end - r.begin, r.lr,
                                  r.wd, momentum);
        else
            sgd_nesterov(p + r.begin, buf + r.begin, g + r.begin, r.end - r.begin, r.lr, r.wd,
                         momentum);
    }
}

void scale_to_norm_segments(float* x, const int64_t* offsets, const float* targets, int count,
                            float target, float eps) {
    for (int s = 0; s < count; ++s)
        scale_to_norm(x + offsets[s], size_t(offsets[s + 1] - offsets[s]),
                      targets ? target * targets[s] : target, eps);
}

SR_CLONES void momentum_direction(float* u, float* buf, const float* g, size_t n, float momentum,
                                  bool nesterov) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) {
        const float b = momentum * buf[i] + g[i];
        buf[i] = b;
        u[i] = nesterov ? g[i] + momentum * b : b;
    }
}

void gemm(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
          bool trans_b, float alpha, float beta) {
    // oneDNN's sgemm is row-major; with beta == 0 it does not read C (NaN-safe, as the contract)
    const dnnl::status st = dnnl::sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A,
                                        trans_a ? M : K, B, trans_b ? K : N, beta, C, N);
    if (st != dnnl::status::success) fail("oneDNN sgemm failed ({}x{}x{})", M, N, K);
}

void gemm_naive(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
                bool trans_b, float alpha, float beta) {
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double acc = 0;
            for (int k = 0; k < K; ++k) {
                const float a = trans_a ? A[size_t(k) * M + i] : A[size_t(i) * K + k];
                const float b = trans_b ? B[size_t(j) * K + k] : B[size_t(k) * N + j];
                acc += double(a) * b;
            }
            float& c = C[size_t(i) * N + j];
            c = float(alpha * acc + (beta != 0.f ? double(beta) * c : 0.0));
        }
}

}  // namespace sr::cpu
