// data_ops.cpp: CPU data ops: normalise + reflect-pad the uint8 images once, gather a batch of
// (translated, flipped) crops, and the patch covariance behind the whitening layer.
#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "ops/cpu/cpu_ops.h"

namespace sr::cpu {
namespace {
// PyTorch 'reflect' padding: the edge pixel is not repeated.
inline int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); }
}  // namespace

SR_CLONES void normalize_pad(float* out, const uint8_t* in, int N, int H, int W, const float* mean,
                   const float* std, int pad) {
    const int HP = H + 2 * pad, WP = W + 2 * pad;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n)
        for (int y = 0; y < HP; ++y)
            for (int x = 0; x < WP; ++x) {
                const uint8_t* s = in + ((size_t(n) * H + reflect(y - pad, H)) * W + reflect(x - pad, W)) * 3;
                float* d = out + ((size_t(n) * HP + y) * WP + x) * 3;
                // the same arithmetic as torchvision: (v / 255 - mean) / std
                for (int c = 0; c < 3; ++c) d[c] = (float(s[c]) / 255.f - mean[c]) / std[c];
            }
}

void cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) {
#pragma omp parallel for schedule(static) if (B > 64)
    for (int b = 0; b < B; ++b) {
        const int y0 = pos[2 * b], x0 = pos[2 * b + 1];
        const int y1 = std::min(H, y0 + size), x1 = std::min(W, x0 + size);
        for (int y = y0; y < y1; ++y)
            for (int xx = x0; xx < x1; ++xx) {
                float* p = x + ((size_t(b) * H + y) * W + xx) * C;
                std::fill(p, p + C, 0.f);
            }
    }
}

void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W, int C, int size) {
#pragma omp parallel for schedule(static) if (B > 64)
    for (int b = 0; b < B; ++b) {
        const int y0 = pos[2 * b], x0 = pos[2 * b + 1];
        const int y1 = std::min(H, y0 + size), x1 = std::min(W, x0 + size);
        const float* other = src + size_t(b) * H * W * C;
        for (int y = y0; y < y1; ++y) {
            const size_t row = (size_t(y) * W + x0) * C, len = size_t(x1 - x0) * C;
            if (x1 > x0) std::copy_n(other + row, len, x + size_t(b) * H * W * C + row);
        }
    }
}

SR_CLONES void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                                   size_t per_image) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; ++b) {
        float* v = x + size_t(b) * per_image;
        const float s = shift[b], g = gain[b];
#pragma omp simd
        for (size_t i = 0; i < per_image; ++i) v[i] = (v[i] + s) * g;
    }
}

template <typename T>
static void gather_crops_any(T* out, const T* src, int H, int W, int pad, int B, const int32_t* idx,
                  int first, const int8_t* shifts, int sy, int sx, const uint8_t* flips, int flip) {
    const int HP = H + 2 * pad, WP = W + 2 * pad;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; ++b) {
        const size_t i = idx ? size_t(idx[b]) : size_t(first + b);
        const int dy = shifts ? shifts[2 * b] : sy, dx = shifts ? shifts[2 * b + 1] : sx;
        const bool f = flips ? flips[b] != 0 : flip != 0;
        const T* img = src + i * HP * WP * 3;
        T* o = out + size_t(b) * H * W * 3;
        for (int y = 0; y < H; ++y) {
            const T* row = img + (size_t(y + pad + dy) * WP + pad + dx) * 3;
            T* orow = o + size_t(y) * W * 3;
            if (!f) {
                for (int x = 0; x < W * 3; ++x) orow[x] = row[x];
            } else {
                for (int x = 0; x < W; ++x)
                    for (int c = 0; c < 3; ++c) orow[x * 3 + c] = row[(W - 1 - x) * 3 + c];
            }
        }
    }
}

SR_CLONES void gather_crops(float* out, const float* src, int H, int W, int pad, int B, const int32_t* idx,
                  int first, const int8_t* shifts, int sy, int sx, const uint8_t* flips, int flip) {
    gather_crops_any(out, src, H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
}

void gather_crops_16(uint16_t* out, const uint16_t* src, int H, int W, int pad, int B,
                     const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                     const uint8_t* flips, int flip) {
    gather_crops_any(out, src, H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
}

SR_CLONES void patch_covariance(double* cov, double* mean, const float* x, int N, int H, int W,
                                int C, int k) {
    const int D = C * k * k, P = H - k + 1, Q = W - k + 1;
    const int T = omp_get_max_threads();
    std::vector<double> part(size_t(T) * D * D, 0.0), part_sum(size_t(T) * D, 0.0);
#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num();
        double* acc = part.data() + size_t(t) * D * D;
        double* acc_sum = part_sum.data() + size_t(t) * D;
        std::vector<float> img_acc(size_t(D) * D), img_sum(D);
        std::vector<float> v(D);
#pragma omp for schedule(static)
        for (int n = 0; n < N; ++n) {
            std::fill(img_acc.begin(), img_acc.end(), 0.f);
            std::fill(img_sum.begin(), img_sum.end(), 0.f);
            const float* xn = x + size_t(n) * H * W * C;
            for (int p = 0; p < P; ++p)
                for (int q = 0; q < Q; ++q) {
                    for (int c = 0; c < C; ++c)
                        for (int r = 0; r < k; ++r)
                            for (int s = 0; s < k; ++s)
                                v[(c * k + r) * k + s] = xn[(size_t(p + r) * W + (q + s)) * C + c];
                    for (int a = 0; a < D; ++a) {
                        const float va = v[a];
                        img_sum[a] += va;
#pragma omp simd
                        for (int b = 0; b < D; ++b) img_acc[a * D + b] += va * v[b];
                    }
                }
            for (int j = 0; j < D * D; ++j) acc[j] += img_acc[j];
            for (int j = 0; j < D; ++j) acc_sum[j] += img_sum[j];
        }
    }
    const double count = double(N) * P * Q;
    for (int j = 0; j < D * D; ++j) {
        double s = 0.0;
        for (int t = 0; t < T; ++t) s += part[size_t(t) * D * D + j];
        cov[j] = s / count;
    }
    if (mean)
        for (int j = 0; j < D; ++j) {
            double s = 0.0;
            for (int t = 0; t < T; ++t) s += part_sum[size_t(t) * D + j];
            mean[j] = s / count;
        }
}

}  // namespace sr::cpu
