// pool_window.cuh: the 8-channel pieces of max pooling (window k, stride k, no padding, floor;
// NHWC) shared by the pooling kernels (pool.cu) and the fused pooling + batch norm kernels
// (batchnorm.cu): the thread -> cell index, the window's max and where it is, the packed
// positions (arg), and the backward's write of a whole window. 8 channels per thread, 16-byte
// accesses, 32-bit index arithmetic (the callers check alignment and counts below 2^31).
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {

// Thread i of an 8-channel kernel over (b, y, x, channel group): i = ((b*rows + y)*cols + x)*C8
// + c/8.
struct Cell {
    unsigned c, x, y, b;
};
__device__ __forceinline__ Cell cell_of(unsigned i, int C8, int cols, int rows) {
    Cell p;
    p.c = (i % unsigned(C8)) * 8;
    unsigned t = i / unsigned(C8);
    p.x = t % unsigned(cols);
    t /= unsigned(cols);
    p.y = t % unsigned(rows);
    p.b = t / unsigned(rows);
    return p;
}

// The max of channels c..c+7 over window (py, px) of image b of x (N,H,W,C), and its position
// r*k + s in row-major window order (the first max wins: a later element only if strictly
// greater, as PyTorch).
template <class T>
__device__ __forceinline__ void window_max8(const T* x, unsigned b, unsigned py, unsigned px,
                                            unsigned c, int H, int W, int C, int k,
                                            float (&best)[8], int (&at)[8]) {
    const size_t base = ((size_t(b) * H + py * k) * W + px * k) * C + c;
    load_act8(x, base, best);
#pragma unroll
    for (int j = 0; j < 8; ++j) at[j] = 0;
    for (int r = 0; r < k; ++r)
        for (int s = 0; s < k; ++s) {
            if (r == 0 && s == 0) continue;
            float v[8];
            load_act8(x, base + (size_t(r) * W + s) * C, v);
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (v[j] > best[j]) best[j] = v[j], at[j] = r * k + s;
        }
}

// arg[o + j] = at[j] for the 8 channels (byte j, little-endian; o a multiple of 8)
__device__ __forceinline__ void store_arg8(uint8_t* arg, size_t o, const int (&at)[8]) {
    uint2 a = make_uint2(0u, 0u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a.x |= unsigned(at[j]) << (8 * j);
        a.y |= unsigned(at[4 + j]) << (8 * j);
    }
    SR_ALIGNED_ACCESS(arg + o, 8);
    *reinterpret_cast<uint2*>(arg + o) = a;
}
__device__ __forceinline__ void load_arg8(const uint8_t* arg, size_t o, int (&at)[8]) {
    SR_ALIGNED_ACCESS(arg + o, 8);
    const uint2 a = *reinterpret_cast<const uint2*>(arg + o);
#pragma unroll
    for (int j = 0; j < 4; ++j)
        at[j] = int(a.x >> (8 * j) & 255u), at[4 + j] = int(a.y >> (8 * j) & 255u);
}

// The backward's write of window (py, px) of image b into dx (N,H,W,C), channels c..c+7: g[j]
// where at[j] points, else 0, over the part of the window inside H x W (the partial windows at
// the bottom and right edge that floor drops come with at[j] = -1: zeros).
template <class T>
__device__ __forceinline__ void window_scatter8(T* dx, unsigned b, unsigned py, unsigned px,
                                                unsigned c, int H, int W, int C, int k,
                                                const float (&g)[8], const int (&at)[8]) {
    for (int r = 0; r < k; ++r) {
        const unsigned yh = py * k + r;
        if (yh >= unsigned(H)) break;
        for (int s = 0; s < k; ++s) {
            const unsigned xw = px * k + s;
            if (xw >= unsigned(W)) break;
            float v[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = at[j] == r * k + s ? g[j] : 0.f;
            store_act8(dx, ((size_t(b) * H + yh) * W + xw) * C + c, v);
        }
    }
}

// The pooling backward, 8 channels per thread: one thread per window of the input grid rounded
// up (ceil(H/k) x ceil(W/k) windows), writing the whole window's dx: the pooled element's
// gradient where arg points, else 0; the windows that floor drops (partial ones at the bottom and
// right edge) get zeros. grad(o, c, g) gives the gradients g of pooled elements o..o+7 (channels
// c..c+7): dy as stored (pool.cu), or computed there (the fused BN backward, batchnorm.cu).
template <class T, class G>
__global__ void maxpool_backward_windows8(T* dx, G grad, const uint8_t* arg, int N, int H, int W,
                                          int C, int k) {
    const int Ho = H / k, Wo = W / k, C8 = C / 8;
    const int Hc = (H + k - 1) / k, Wc = (W + k - 1) / k;
    const unsigned n = unsigned(N) * Hc * Wc * C8;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const auto [c, px, py, b] = cell_of(i, C8, Wc, Hc);
        float g[8];
        int at[8];
        if (py < unsigned(Ho) && px < unsigned(Wo)) {
            const size_t o = ((size_t(b) * Ho + py) * Wo + px) * C + c;
            grad(o, c, g);
            load_arg8(arg, o, at);
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) g[j] = 0.f, at[j] = -1;
        }
        window_scatter8(dx, b, py, px, c, H, W, C, k, g, at);
    }
}

// the number of threads (windows x channel groups) of maxpool_backward_windows8
inline size_t pool_windows8(int N, int H, int W, int C, int k) {
    return size_t(N) * ((H + k - 1) / k) * ((W + k - 1) / k) * (C / 8);
}

}  // namespace sr::cuda
