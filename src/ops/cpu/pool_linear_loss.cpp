// pool_linear_loss.cpp: CPU max pooling (k x k, stride k), global max + mean pooling, the
// bias-free linear layer and the
// label-smoothed cross-entropy: the small ops at the head of the network.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/cpu/cpu_ops.h"

namespace sr::cpu {

SR_CLONES void maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W, int C, int k) {
    const int P = H / k, Q = W / k;
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; ++n)
        for (int p = 0; p < P; ++p)
            for (int q = 0; q < Q; ++q) {
                float* yo = y + ((size_t(n) * P + p) * Q + q) * C;
                uint8_t* ao = arg + ((size_t(n) * P + p) * Q + q) * C;
                const float* x0 = x + ((size_t(n) * H + p * k) * W + q * k) * C;
                std::memcpy(yo, x0, sizeof(float) * C);
                std::memset(ao, 0, C);
                for (int i = 0; i < k; ++i)
                    for (int j = 0; j < k; ++j) {
                        if (i == 0 && j == 0) continue;
                        const float* xi = x0 + (size_t(i) * W + j) * C;
                        const uint8_t idx = uint8_t(i * k + j);
#pragma omp simd
                        for (int c = 0; c < C; ++c) {
                            const bool take = xi[c] > yo[c];  // first max wins
                            yo[c] = take ? xi[c] : yo[c];
                            ao[c] = take ? idx : ao[c];
                        }
                    }
            }
}

// Row by row of dx, each element written once: dy where the forward took that window position,
// else 0 (rows and columns past the last whole window are 0). Vectorises over channels; the
// scatter it replaced zeroed dx first and then wrote one channel at a time, at a third of the
// memory bandwidth (airbench94's 31x31x64 layer: 32 ms per call on cpu2).
SR_CLONES void maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H, int W, int C,
                      int k) {
    const int P = H / k, Q = W / k;
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; ++n)
        for (int h = 0; h < H; ++h) {
            float* dxr = dx + (size_t(n) * H + h) * W * C;
            const int p = h / k, i = h % k;
            if (p >= P) {
                std::memset(dxr, 0, sizeof(float) * size_t(W) * C);
                continue;
            }
            for (int q = 0; q < Q; ++q) {
                const float* dyo = dy + ((size_t(n) * P + p) * Q + q) * C;
                const uint8_t* ao = arg + ((size_t(n) * P + p) * Q + q) * C;
                for (int j = 0; j < k; ++j) {
                    float* d = dxr + size_t(q * k + j) * C;
                    const uint8_t idx = uint8_t(i * k + j);
#pragma omp simd
                    for (int c = 0; c < C; ++c) d[c] = ao[c] == idx ? dyo[c] : 0.f;
                }
            }
            std::memset(dxr + size_t(Q) * k * C, 0, sizeof(float) * size_t(W - Q * k) * C);
        }
}

SR_CLONES void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        const float* xn = x + size_t(n) * HW * C;
        float* mx = y + size_t(n) * 2 * C;
        float* av = mx + C;
        uint8_t* an = arg + size_t(n) * C;
        std::memcpy(mx, xn, sizeof(float) * C);
        std::memcpy(av, xn, sizeof(float) * C);
        std::memset(an, 0, C);
        for (int i = 1; i < HW; ++i) {
            const float* xi = xn + size_t(i) * C;
#pragma omp simd
            for (int c = 0; c < C; ++c) {
                const bool take = xi[c] > mx[c];  // first max wins
                mx[c] = take ? xi[c] : mx[c];
                an[c] = take ? uint8_t(i) : an[c];
                av[c] += xi[c];
            }
        }
        const float inv = 1.f / float(HW);
        for (int c = 0; c < C; ++c) av[c] *= inv;
    }
}

SR_CLONES void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int HW, int C) {
    const float inv = 1.f / float(HW);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        const float* dmx = dy + size_t(n) * 2 * C;
        const float* dav = dmx + C;
        const uint8_t* an = arg + size_t(n) * C;
        for (int i = 0; i < HW; ++i) {
            float* dxi = dx + (size_t(n) * HW + i) * C;
#pragma omp simd
            for (int c = 0; c < C; ++c) dxi[c] = dav[c] * inv + (an[c] == i ? dmx[c] : 0.f);
        }
    }
}

SR_CLONES void linear_forward(float* y, const float* x, const float* w, int N, int I, int O, float scale) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n)
        for (int o = 0; o < O; ++o) {
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int i = 0; i < I; ++i) s += x[size_t(n) * I + i] * w[size_t(o) * I + i];
            y[size_t(n) * O + o] = scale * s;
        }
}

SR_CLONES void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N,
                     int I, int O, float scale) {
    if (dx) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; ++n) {
            float* dxn = dx + size_t(n) * I;
            for (int i = 0; i < I; ++i) dxn[i] = 0.f;
            for (int o = 0; o < O; ++o) {
                const float g = scale * dy[size_t(n) * O + o];
#pragma omp simd
                for (int i = 0; i < I; ++i) dxn[i] += g * w[size_t(o) * I + i];
            }
        }
    }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < I; ++i)
        for (int o = 0; o < O; ++o) {
            float s = 0.f;
            for (int n = 0; n < N; ++n) s += dy[size_t(n) * O + o] * x[size_t(n) * I + i];
            dw[size_t(o) * I + i] = scale * s;
        }
}

void cross_entropy(float* dlogits, float* stats, const float* logits, const int32_t* labels,
                   int N, int O, float smoothing) {
    cross_entropy_mixed(dlogits, stats, logits, labels, nullptr, 0.f, N, O, smoothing);
}

void cross_entropy_mixed(float* dlogits, float* stats, const float* logits, const int32_t* labels,
                         const int32_t* labels2, float mix, int N, int O, float smoothing) {
    double loss_sum = 0.0, correct = 0.0;
    const double m = labels2 ? mix : 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss_sum, correct)
    for (int n = 0; n < N; ++n) {
        const float* z = logits + size_t(n) * O;
        float* d = dlogits + size_t(n) * O;
        int best = 0;
        for (int o = 1; o < O; ++o)
            if (z[o] > z[best]) best = o;
        const float zmax = z[best];
        double se = 0.0;
        for (int o = 0; o < O; ++o) se += std::exp(double(z[o] - zmax));
        const double lse = zmax + std::log(se);
        const int y = labels[n], y2 = labels2 ? labels2[n] : -1;
        double loss = 0.0;
        for (int o = 0; o < O; ++o) {
            const double t1 = (o == y ? 1.0 - smoothing : 0.0) + smoothing / O;
            const double t2 = (o == y2 ? 1.0 - smoothing : 0.0) + smoothing / O;
            const double target = m > 0 ? (1.0 - m) * t1 + m * t2 : t1;
            loss -= target * (double(z[o]) - lse);
            d[o] = float(std::exp(double(z[o]) - lse) - target);
        }
        loss_sum += loss;
        correct += (best == y) ? 1.0 : 0.0;
    }
    stats[0] += float(loss_sum);
    stats[1] += float(correct);
}

}  // namespace sr::cpu
