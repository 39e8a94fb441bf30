// batchnorm.cu: batch norm over M rows of C channels (NHWC flattened), CUDA twin of
// cpu::bn_forward_train / bn_forward_eval / bn_backward (contract in ops/backend.h), and the
// fused batch norm + activation (bn_act_*: the activation applied in the normalising kernel,
// its derivative folded into the backward reduction and dx kernel, y recomputed from x).
//
// Per-channel sums are two-level: kernel channel_partials gives each block 32 channels x
// chunk_rows(M) rows (threads along x read 32 neighbouring channels, so loads coalesce), sums
// in fp32 over at most 512 / 8 values per thread, then over its 8 threads (so each stored fp32
// partial holds up to 512 values; fewer rows per chunk where M is small, so that the grid fills
// the GPU), and writes one float2 per (chunk, channel); kernel channel_finalize then adds the
// chunks of one channel in double. The
// training forward's statistics take one pass over x with the same partition: Welford moments
// per thread, merged per block and then over the chunks in double (moments.cuh), so a large
// mean does not cancel: sound for M up to the 1024*31*31 rows of the first layer and beyond.
// bn_stats / bn_apply / bn_backward_reduce / bn_backward_apply are the same computation in
// pieces, for sync-BN: the per-channel sums are outputs, so other processes' can be added.
// The same reduction gives channel_sum and the bias helpers that the cuDNN convolution wrapper
// uses for its optional bias (add_channel_bias, channel_sum for db). Where C is a multiple of 8
// (at most 2048) and the tensors 16-byte aligned, every kernel takes 8 channels per thread:
// the elementwise ones (bn_normalize8, bn_dx8) and the reductions (channel_partials8,
// channel_moments8: one block per chunk, the threads split into channel groups and row
// phases), so that a thread's loads are 16 bytes, not 2.
#include "ops/cuda/activation.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/moments.cuh"
#include "ops/cuda/pool_window.cuh"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

constexpr int kRowsPerChunk = 512;  // rows per block in channel_partials, at most
constexpr int kMinChunkRows = 32;   // ... and at least
constexpr int kRowThreads = 8;      // threadIdx.y extent in channel_partials
constexpr int kFinalizeThreads = 256;

// The chunks' grid should fill the GPU: a block's rows are read by few threads in turn (8 row
// phases at 256 channels), so a grid of 18 blocks of 512 rows (airbench94's last group, M = 1024
// * 3 * 3) leaves most SMs idle and waits on each block's chain of loads. Where M / 512 is below
// min_chunks() (256), the rows per chunk halve (down to kMinChunkRows) until it is not.
// Depends on M only, not on the device, so every GPU sums in the same order.
// SPEEDRUN_CUDA_BN_MIN_CHUNKS=1 keeps 512 rows (the A/B).
int min_chunks() {
    static const int n = env_count("SPEEDRUN_CUDA_BN_MIN_CHUNKS", 256);
    return n;
}

int chunk_rows(int M) {
    int rows = kRowsPerChunk;
    while (rows > kMinChunkRows && ceil_div(size_t(M), size_t(rows)) < size_t(min_chunks()))
        rows /= 2;
    return rows;
}

int num_chunks(int M) { return int(ceil_div(size_t(M), size_t(chunk_rows(M)))); }

// Scratch layout: partial (chunks*C float2), then sum_a (C float), sum_b (C float).
struct BnScratch {
    float2* partial;
    float* sum_a;
    float* sum_b;
};
BnScratch split_scratch(void* scratch, int M, int C) {
    BnScratch s;
    s.partial = static_cast<float2*>(scratch);
    s.sum_a = reinterpret_cast<float*>(s.partial + size_t(num_chunks(M)) * C);
    s.sum_b = s.sum_a + C;
    return s;
}

// partial[chunk][c] = sum over the chunk's rows m of f(m, c) (two quantities at once).
template <class F>
__global__ void channel_partials(float2* partial, F f, int M, int C, int rows) {
    SR_SHARED(float2, sh, [kRowThreads][33]);
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int m0 = blockIdx.y * rows;
    const int m1 = min(M, m0 + rows);
    float2 acc = make_float2(0.f, 0.f);
    if (c < C) {
        for (int m = m0 + threadIdx.y; m < m1; m += kRowThreads) {
            const float2 v = f(m, c);
            acc.x += v.x;
            acc.y += v.y;
        }
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float2 s = make_float2(0.f, 0.f);
        for (int i = 0; i < kRowThreads; ++i) {
            s.x += sh[i][threadIdx.x].x;
            s.y += sh[i][threadIdx.x].y;
        }
        partial[size_t(blockIdx.y) * C + c] = s;
    }
}

// One block per channel: adds the chunks' partials in double, then calls e(c, sum_x, sum_y).
template <class E>
__global__ void channel_finalize(const float2* partial, int chunks, int C, E e) {
    SR_SHARED(double, shx, [kFinalizeThreads]);
    SR_SHARED(double, shy, [kFinalizeThreads]);
    const int c = blockIdx.x;
    double sx = 0, sy = 0;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
        const float2 v = partial[size_t(i) * C + c];
        sx += v.x;
        sy += v.y;
    }
    shx[threadIdx.x] = sx;
    shy[threadIdx.x] = sy;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            shx[threadIdx.x] += shx[threadIdx.x + s];
            shy[threadIdx.x] += shy[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) e(c, shx[0], shy[0]);
}

// channel_partials with 8 channels per thread (C a multiple of 8, at most 8 * kBlock; 16-byte
// aligned tensors: f.eight_wide()), one block of kBlock threads per chunk: thread t takes
// channel group t % C8 and row phase r = t / C8, i.e. rows m0 + r, m0 + r + R, ... with R =
// kBlock / C8 phases (threads past R * C8 idle); f.load8(m, c0, v) gives the two quantities of
// channels c0..c0+7 of row m from one 16-byte load per tensor. The phases' sums meet in shared
// memory; one thread per channel adds them and stores the chunk's partial (the same layout as
// channel_partials). The one-channel-per-thread kernel read 2 bytes per thread and access in
// 16-bit storage.
template <class F>
__global__ void channel_partials8(float2* partial, F f, int M, int C8, int rows) {
    SR_SHARED(float2, sh, [kBlock * 8]);  // [phase][channel]: R * C <= kBlock * 8
    const int t = int(threadIdx.x), C = C8 * 8, R = kBlock / C8;
    const int g = t % C8, r = t / C8;
    const int m0 = int(blockIdx.x) * rows;
    const int m1 = min(M, m0 + rows);
    if (r < R) {
        float2 acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = make_float2(0.f, 0.f);
        for (int m = m0 + r; m < m1; m += R) {
            float2 v[8];
            f.load8(m, g * 8, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                acc[j].x += v[j].x;
                acc[j].y += v[j].y;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) sh[r * C + g * 8 + j] = acc[j];
    }
    __syncthreads();
    for (int c = t; c < C; c += kBlock) {
        float2 s = make_float2(0.f, 0.f);
        for (int i = 0; i < R; ++i) {
            s.x += sh[i * C + c].x;
            s.y += sh[i * C + c].y;
        }
        partial[size_t(blockIdx.x) * C + c] = s;
    }
}

bool eight_wide_reduction(int C) { return C % 8 == 0 && C <= 8 * kBlock; }

template <class F, class E>
void channel_reduce(cudaStream_t st, float2* partial, F f, E e, int M, int C) {
    const int chunks = num_chunks(M), rows = chunk_rows(M);
    if (eight_wide_reduction(C) && f.eight_wide()) {
        launch_kernel(channel_partials8<F>, chunks, kBlock, 0, st, partial, f, M, C / 8, rows);
    } else {
        const dim3 grid(ceil_div(size_t(C), 32), unsigned(chunks));
        const dim3 block(32, kRowThreads);
        launch_kernel(channel_partials<F>, grid, block, 0, st, partial, f, M, C, rows);
    }
    CUDA_CHECK_LAUNCH();
    launch_kernel(channel_finalize<E>, C, kFinalizeThreads, 0, st, partial, chunks, C, e);
    CUDA_CHECK_LAUNCH();
}

// ---- functors: what is summed, and what is done with the sums ---------------------------------

// T: the activations' storage type (the tensors x, y, dy, dx of every functor and kernel here).
template <class T>
struct SumX {
    const T* x;
    int C;
    __device__ float2 operator()(int m, int c) const {
        return make_float2(load_act(x, size_t(m) * C + c), 0.f);
    }
    __device__ void load8(int m, int c0, float2 (&o)[8]) const {
        float v[8];
        load_act8(x, size_t(m) * C + c0, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = make_float2(v[j], 0.f);
    }
    bool eight_wide() const { return aligned8(x); }
};

// dy, dy * xhat; with an activation after the BN, dy = dz act'(y), y recomputed from x
template <class T>
struct SumDyDyXhat {
    const T* dy;  // (dz with an activation)
    const T* x;
    const float* mean;
    const float* invstd;
    const float* gamma;  // (read only with an activation)
    const float* beta;
    int C;
    MaybeAct act;
    __device__ float2 operator()(int m, int c) const {
        const size_t i = size_t(m) * C + c;
        const float xhat = (load_act(x, i) - mean[c]) * invstd[c];
        const float d = load_act(dy, i);
        const float g = act.on ? act.chain(d, xhat * (gamma ? gamma[c] : 1.f) + (beta ? beta[c] : 0.f))
                               : d;
        return make_float2(g, g * xhat);
    }
    __device__ void load8(int m, int c0, float2 (&o)[8]) const {
        float xv[8], d[8];
        load_act8(x, size_t(m) * C + c0, xv);
        load_act8(dy, size_t(m) * C + c0, d);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int c = c0 + j;
            const float xhat = (xv[j] - mean[c]) * invstd[c];
            const float g =
                act.on ? act.chain(d[j], xhat * (gamma ? gamma[c] : 1.f) + (beta ? beta[c] : 0.f))
                       : d[j];
            o[j] = make_float2(g, g * xhat);
        }
    }
    bool eight_wide() const { return aligned8(x, dy); }
};

struct StoreGrads {
    float* sum_dy;        // scratch, always written
    float* sum_dy_xhat;   // scratch, always written
    float* dbeta;         // may be nullptr
    float* dgamma;        // may be nullptr
    __device__ void operator()(int c, double sx, double sy) const {
        sum_dy[c] = float(sx);
        sum_dy_xhat[c] = float(sy);
        if (dbeta) dbeta[c] = float(sx);
        if (dgamma) dgamma[c] = float(sy);
    }
};

// ---- elementwise kernels -----------------------------------------------------------------

// y = act((x - mean) invstd gamma + beta) (act off: plain batch norm)
template <class T>
__global__ void bn_normalize(T* y, const T* x, const float* mean, const float* invstd,
                             const float* gamma, const float* beta, size_t n, int C, MaybeAct act) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        const float g = gamma ? gamma[c] : 1.f;
        const float b = beta ? beta[c] : 0.f;
        store_act(y, i, act.value((load_act(x, i) - mean[c]) * invstd[c] * g + b));
    }
}

template <class T>
__global__ void bn_eval(T* y, const T* x, const float* rmean, const float* rvar,
                        const float* gamma, const float* beta, size_t n, int C, float eps,
                        MaybeAct act) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        const float g = gamma ? gamma[c] : 1.f;
        const float b = beta ? beta[c] : 0.f;
        store_act(y, i, act.value((load_act(x, i) - rmean[c]) / sqrtf(rvar[c] + eps) * g + b));
    }
}

// dx = gamma * invstd * (dy - sum(dy)/M - xhat * sum(dy xhat)/M); with an activation, dy = dz
// act'(y) recomputed as in SumDyDyXhat (dy and dx may be one buffer: elementwise)
template <class T>
__global__ void bn_dx(T* dx, const T* dy, const T* x, const float* mean,
                      const float* invstd, const float* gamma, const float* beta,
                      const float* sum_dy, const float* sum_dy_xhat, size_t n, int C, float inv_m,
                      MaybeAct act) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        const float g = gamma ? gamma[c] : 1.f;
        const float xhat = (load_act(x, i) - mean[c]) * invstd[c];
        const float dyi = load_act(dy, i);
        const float d = act.on ? act.chain(dyi, xhat * g + (beta ? beta[c] : 0.f)) : dyi;
        store_act(dx, i, g * invstd[c] * (d - sum_dy[c] * inv_m - xhat * sum_dy_xhat[c] * inv_m));
    }
}

// How bn_normalize8 scales a centred value of channel c: by the batch's invstd (training, as
// bn_normalize) or by 1 / sqrt(running variance + eps) (eval, as bn_eval): the same arithmetic
// per element as the one-element kernel, so the same results.
struct TimesInvStd {
    const float* invstd;
    __device__ float operator()(float d, int c) const { return d * invstd[c]; }
};
struct OverRunningStd {
    const float* var;
    float eps;
    __device__ float operator()(float d, int c) const { return d / sqrtf(var[c] + eps); }
};

// The two kernels above, 8 channels per thread (C a multiple of 8, 16-byte aligned tensors),
// with 32-bit indices: the same arithmetic per element; one 16-byte access per tensor and one
// channel index per 8 elements instead of a 64-bit division per element. (The eval form matters
// too: the final TTA evaluation, inside the timed region, runs every BN through it.)
template <class T, class Scale>
__global__ void bn_normalize8(T* y, const T* x, const float* mean, Scale scale,
                              const float* gamma, const float* beta, unsigned n8, int C8,
                              MaybeAct act) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
        const int c0 = int(i % unsigned(C8)) * 8;
        float v[8];
        load_act8(x, size_t(i) * 8, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int c = c0 + j;
            const float g = gamma ? gamma[c] : 1.f;
            const float b = beta ? beta[c] : 0.f;
            v[j] = act.value(scale(v[j] - mean[c], c) * g + b);
        }
        store_act8(y, size_t(i) * 8, v);
    }
}

// bn_dx's arithmetic for channels c0..c0+7: d (dy, or dz with an activation) becomes dx, from
// x's values xv. (bn_dx8 and the fused pooling backward's BnActGrad8 share it.)
struct BnDx {
    const float* mean;
    const float* invstd;
    const float* gamma;
    const float* beta;
    const float* sum_dy;
    const float* sum_dy_xhat;
    float inv_m;
    MaybeAct act;
    __device__ __forceinline__ void apply8(int c0, const float (&xv)[8], float (&d)[8]) const {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int c = c0 + j;
            const float g = gamma ? gamma[c] : 1.f;
            const float xhat = (xv[j] - mean[c]) * invstd[c];
            const float dyj = act.on ? act.chain(d[j], xhat * g + (beta ? beta[c] : 0.f)) : d[j];
            d[j] = g * invstd[c] * (dyj - sum_dy[c] * inv_m - xhat * sum_dy_xhat[c] * inv_m);
        }
    }
};

template <class T>
__global__ void bn_dx8(T* dx, const T* dy, const T* x, BnDx f, unsigned n8, int C8) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
        const int c0 = int(i % unsigned(C8)) * 8;
        float xv[8], d[8];
        load_act8(x, size_t(i) * 8, xv);
        load_act8(dy, size_t(i) * 8, d);
        f.apply8(c0, xv, d);
        store_act8(dx, size_t(i) * 8, d);  // (after every load: dx may be dy)
    }
}

bool eight_wide(size_t n, int C, const void* a, const void* b, const void* c = nullptr) {
    return C % 8 == 0 && n < (size_t(1) << 31) && aligned8(a, b, c);
}

template <class T>
void launch_normalize(cudaStream_t st, T* y, const T* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, size_t n, int C, MaybeAct act) {
    if (eight_wide(n, C, y, x))
        launch_kernel(bn_normalize8<T, TimesInvStd>, grid_size(n / 8), kBlock, 0, st, y, x, mean,
                      TimesInvStd{invstd}, gamma,
                      beta, unsigned(n / 8), C / 8, act);
    else
        launch_kernel(bn_normalize<T>, grid_size(n), kBlock, 0, st, y, x, mean, invstd, gamma, beta,
                      n, C, act);
}

template <class T>
void launch_dx(cudaStream_t st, T* dx, const T* dy, const T* x, const float* mean,
               const float* invstd, const float* gamma, const float* beta, const float* sum_dy,
               const float* sum_dy_xhat, size_t n, int C, float inv_m, MaybeAct act) {
    if (eight_wide(n, C, dx, dy, x))
        launch_kernel(bn_dx8<T>, grid_size(n / 8), kBlock, 0, st, dx, dy, x,
                      BnDx{mean, invstd, gamma, beta, sum_dy, sum_dy_xhat, inv_m, act},
                      unsigned(n / 8), C / 8);
    else
        launch_kernel(bn_dx<T>, grid_size(n), kBlock, 0, st, dx, dy, x, mean, invstd, gamma, beta,
                      sum_dy, sum_dy_xhat, n, C, inv_m, act);
}

struct StoreSum {
    float* out;
    __device__ void operator()(int c, double sx, double) const { out[c] = float(sx); }
};

template <class T>
__global__ void add_bias_kernel(T* y, const float* bias, size_t n, int C) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        store_act(y, i, load_act(y, i) + bias[i % C]);
}

template <class T>
__global__ void add_bias_kernel8(T* y, const float* bias, unsigned n8, int C8) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
        const int c0 = int(i % unsigned(C8)) * 8;
        float v[8];
        load_act8(y, size_t(i) * 8, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] += bias[c0 + j];
        store_act8(y, size_t(i) * 8, v);
    }
}

// ---- batch norm in pieces (sync-BN) ------------------------------------------------------------

template <class T>
struct SumCentered {  // x - center, (x - center)^2 with center = center_sums * scale (or 0)
    const T* x;
    const float* center_sums;
    float scale;
    int C;
    __device__ float2 operator()(int m, int c) const {
        const float ctr = center_sums ? center_sums[c] * scale : 0.f;
        const float d = load_act(x, size_t(m) * C + c) - ctr;
        return make_float2(d, d * d);
    }
    __device__ void load8(int m, int c0, float2 (&o)[8]) const {
        float v[8];
        load_act8(x, size_t(m) * C + c0, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float d = v[j] - (center_sums ? center_sums[c0 + j] * scale : 0.f);
            o[j] = make_float2(d, d * d);
        }
    }
    bool eight_wide() const { return aligned8(x); }
};

struct StorePair {  // sums[c] = sx, sums[C + c] = sy
    float* sums;
    int C;
    __device__ void operator()(int c, double sx, double sy) const {
        sums[c] = float(sx);
        sums[C + c] = float(sy);
    }
};

// One thread per channel: mean, invstd and the running statistics from the (global) sums.
__global__ void bn_finalize_sums(float* mean, float* invstd, float* running_mean,
                                 float* running_var, const float* sums, const float* center_sums,
                                 float scale, double count, int C, float eps, float momentum) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const double ctr = center_sums ? double(center_sums[c] * scale) : 0.0;
    const double d = double(sums[c]) / count;
    const double m = ctr + d;
    const double var = fmax(0.0, double(sums[C + c]) / count - d * d);
    mean[c] = float(m);
    invstd[c] = float(1.0 / sqrt(var + double(eps)));
    const double unbiased = count > 1 ? var * count / (count - 1) : var;
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * float(m);
    running_var[c] = (1.f - momentum) * running_var[c] + momentum * float(unbiased);
}

void check_shape(int M, int C) {
    CUDA_ASSERT(M > 0 && C > 0);
    CUDA_ASSERT(num_chunks(M) <= 65535);  // grid.y limit of channel_partials
}

// The batch statistics in one pass over x (moments.cuh): each thread of channel_moments keeps
// Welford moments of its rows of a chunk in fp32, the block merges its 8 row-threads and stores
// (mean, m2) per (chunk, channel); channel_moments_finalize merges the chunks in double (Chan)
// and gives mean, invstd and the running statistics' update. The chunks and threads are those
// of channel_partials. (Two passes before: the mean, then the squared deviations from it.)
template <class T>
__global__ void channel_moments(float2* partial, const T* x, int M, int C, int rows) {
    SR_SHARED(float, sh_mean, [kRowThreads][33]);
    SR_SHARED(float, sh_m2, [kRowThreads][33]);
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int m0 = blockIdx.y * rows;
    const int m1 = min(M, m0 + rows);
    Moments<float> a;
    if (c < C)
        for (int m = m0 + threadIdx.y; m < m1; m += kRowThreads)
            moments_add(a, load_act(x, size_t(m) * C + c));
    sh_mean[threadIdx.y][threadIdx.x] = a.mean;
    sh_m2[threadIdx.y][threadIdx.x] = a.m2;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        Moments<float> s;
        for (int t = 0; t < kRowThreads; ++t) {
            Moments<float> b;
            b.n = float(rows_of_thread(m0, m1, t, kRowThreads));
            b.mean = sh_mean[t][threadIdx.x];
            b.m2 = sh_m2[t][threadIdx.x];
            moments_merge(s, b);
        }
        partial[size_t(blockIdx.y) * C + c] = make_float2(s.mean, s.m2);
    }
}

// What channel_moments8 reads: row m's channels c0..c0+7 of x (M,C).
template <class T>
struct RowLoad8 {
    const T* x;
    int C;
    __device__ __forceinline__ void operator()(int m, int c0, float (&v)[8]) const {
        load_act8(x, size_t(m) * C + c0, v);
    }
};

// ... or pooled row m = (b*Ho + py)*Wo + px of x (N,H,W,C) with window k: the window's max,
// which is also stored, with its position, as the pooling's output p and arg (the fused pooling +
// batch norm: the statistics taken in the pooling's pass; pool_window.cuh)
template <class T>
struct PooledRowLoad8 {
    T* p;
    uint8_t* arg;
    const T* x;
    int H, W, C, k, Ho, Wo;
    __device__ __forceinline__ void operator()(int m, int c0, float (&v)[8]) const {
        const unsigned px = unsigned(m) % unsigned(Wo), t = unsigned(m) / unsigned(Wo);
        const unsigned py = t % unsigned(Ho), b = t / unsigned(Ho);
        int at[8];
        window_max8(x, b, py, px, unsigned(c0), H, W, C, k, v, at);
        const size_t o = size_t(m) * C + c0;
        store_act8(p, o, v);
        store_arg8(arg, o, at);
    }
};

// channel_moments with 8 channels per thread: the threads and phases of channel_partials8,
// Welford moments per (thread, channel), merged over the phases in shared memory; load(m, c0, v)
// gives the values (RowLoad8, PooledRowLoad8).
template <class L>
__global__ void channel_moments8(float2* partial, L load, int M, int C8, int rows) {
    SR_SHARED(float, sh_mean, [kBlock * 8]);
    SR_SHARED(float, sh_m2, [kBlock * 8]);  // [phase][channel]
    const int t = int(threadIdx.x), C = C8 * 8, R = kBlock / C8;
    const int g = t % C8, r = t / C8;
    const int m0 = int(blockIdx.x) * rows;
    const int m1 = min(M, m0 + rows);
    if (r < R) {
        Moments<float> a[8];
        for (int m = m0 + r; m < m1; m += R) {
            float v[8];
            load(m, g * 8, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) moments_add(a[j], v[j]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            sh_mean[r * C + g * 8 + j] = a[j].mean;
            sh_m2[r * C + g * 8 + j] = a[j].m2;
        }
    }
    __syncthreads();
    for (int c = t; c < C; c += kBlock) {
        Moments<float> s;
        for (int i = 0; i < R; ++i) {
            Moments<float> b;
            b.n = float(rows_of_thread(m0, m1, i, R));
            b.mean = sh_mean[i * C + c];
            b.m2 = sh_m2[i * C + c];
            moments_merge(s, b);
        }
        partial[size_t(blockIdx.x) * C + c] = make_float2(s.mean, s.m2);
    }
}

// One block per channel: merges the chunks' moments in double, then the statistics.
__global__ void channel_moments_finalize(const float2* partial, int chunks, int rows, int M,
                                         int C, float* mean, float* invstd, float* running_mean,
                                         float* running_var, float eps, float momentum) {
    SR_SHARED(double, sh_n, [kFinalizeThreads]);
    SR_SHARED(double, sh_mean, [kFinalizeThreads]);
    SR_SHARED(double, sh_m2, [kFinalizeThreads]);
    const int c = blockIdx.x;
    Moments<double> a;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
        const float2 v = partial[size_t(i) * C + c];
        Moments<double> b;
        b.n = double(min(rows, M - i * rows));
        b.mean = v.x;
        b.m2 = v.y;
        moments_merge(a, b);
    }
    sh_n[threadIdx.x] = a.n;
    sh_mean[threadIdx.x] = a.mean;
    sh_m2[threadIdx.x] = a.m2;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (int(threadIdx.x) < s) {
            Moments<double> x{sh_n[threadIdx.x], sh_mean[threadIdx.x], sh_m2[threadIdx.x]};
            const Moments<double> y{sh_n[threadIdx.x + s], sh_mean[threadIdx.x + s],
                                    sh_m2[threadIdx.x + s]};
            moments_merge(x, y);
            sh_n[threadIdx.x] = x.n;
            sh_mean[threadIdx.x] = x.mean;
            sh_m2[threadIdx.x] = x.m2;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double m = sh_mean[0], var = fmax(0.0, sh_m2[0] / M);
        mean[c] = float(m);
        invstd[c] = float(1.0 / sqrt(var + double(eps)));
        const double unbiased = M > 1 ? var * M / (M - 1) : var;
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * float(m);
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * float(unbiased);
    }
}

// The batch's mean and invstd and the running statistics' update: the training forward's part
// before normalising (one pass over x).
template <class T>
void batch_statistics(cudaStream_t st, void* scratch, float* mean, float* invstd,
                      float* running_mean, float* running_var, const T* x, int M, int C,
                      float eps, float momentum) {
    check_shape(M, C);
    const BnScratch s = split_scratch(scratch, M, C);
    const int chunks = num_chunks(M), rows = chunk_rows(M);
    if (eight_wide_reduction(C) && aligned8(x)) {
        launch_kernel(channel_moments8<RowLoad8<T>>, chunks, kBlock, 0, st, s.partial,
                      RowLoad8<T>{x, C}, M, C / 8, rows);
    } else {
        const dim3 grid(ceil_div(size_t(C), 32), unsigned(chunks));
        const dim3 block(32, kRowThreads);
        launch_kernel(channel_moments<T>, grid, block, 0, st, s.partial, x, M, C, rows);
    }
    CUDA_CHECK_LAUNCH();
    launch_kernel(channel_moments_finalize, C, kFinalizeThreads, 0, st, s.partial, chunks, rows,
                  M, C, mean, invstd, running_mean, running_var, eps, momentum);
    CUDA_CHECK_LAUNCH();
}

// ---- max pooling fused with the batch norm + activation after it ------------------------------
// (Backend::pool_bn_act_forward_train, bn_act_pool_backward.) Forward: the pooling pass is
// channel_moments8's read (PooledRowLoad8: each pooled value is stored and summed in the same
// pass, so the statistics need no read of p), then the finalize and the normalising kernel as in
// bn_train_maybe_act. Backward: the sums over (dz, p) as bn_backward_maybe_act takes them, then
// the pooling backward's kernel (maxpool_backward_windows8) with BnActGrad8 computing dp per
// pooled element (BnDx, bn_dx8's arithmetic) and writing it straight into its window of dx:
// dp is never stored.
// The same chunks, threads and arithmetic as the separate kernels. Only the 8-wide shapes (C a
// multiple of 8, at most 8 * kBlock, 16-byte aligned tensors, counts below 2^31); others, and
// SPEEDRUN_CUDA_FUSE_POOL=0, run the separate ops.

// the gradient of pooled elements o..o+7 for maxpool_backward_windows8: dp = the BN +
// activation backward of dz at p (bn_dx8's arithmetic), rounded only when dx is stored, as
// storing dp would round it
template <class T>
struct BnActGrad8 {
    const T* dz;
    const T* p;
    BnDx f;
    __device__ __forceinline__ void operator()(size_t o, unsigned c, float (&g)[8]) const {
        float pv[8];
        load_act8(p, o, pv);
        load_act8(dz, o, g);
        f.apply8(int(c), pv, g);
    }
};

bool fuse_pool_enabled() {
    static const bool on = env_switch("SPEEDRUN_CUDA_FUSE_POOL", true);
    return on;
}

// whether the fused kernels take this pooling (x: N,H,W,C -> p) and its batch norm
bool pool_bn_fusable(int N, int H, int W, int C, int k, const void* x, const void* p,
                     const void* arg, const void* z) {
    return fuse_pool_enabled() && k >= 1 && k * k <= 256 && H >= k && W >= k && C % 8 == 0 &&
           eight_wide_reduction(C) && size_t(N) * H * W * C < (size_t(1) << 31) &&
           aligned8(x, p, arg) && aligned8(z);
}

template <class T>
void pool_bn_act_train(cudaStream_t st, void* scratch, T* z, T* p, uint8_t* arg, float* mean,
                       float* invstd, float* running_mean, float* running_var, const T* x,
                       const float* gamma, const float* beta, int N, int H, int W, int C, int k,
                       float eps, float momentum, MaybeAct act) {
    const int Ho = H / k, Wo = W / k, M = N * Ho * Wo;
    check_shape(M, C);
    const BnScratch s = split_scratch(scratch, M, C);
    const int chunks = num_chunks(M), rows = chunk_rows(M);
    launch_kernel(channel_moments8<PooledRowLoad8<T>>, chunks, kBlock, 0, st, s.partial,
                  PooledRowLoad8<T>{p, arg, x, H, W, C, k, Ho, Wo}, M, C / 8, rows);
    CUDA_CHECK_LAUNCH();
    launch_kernel(channel_moments_finalize, C, kFinalizeThreads, 0, st, s.partial, chunks, rows,
                  M, C, mean, invstd, running_mean, running_var, eps, momentum);
    CUDA_CHECK_LAUNCH();
    launch_normalize(st, z, static_cast<const T*>(p), mean, invstd, gamma, beta, size_t(M) * C, C,
                     act);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_act_pool_back(cudaStream_t st, void* scratch, T* dx, float* dgamma, float* dbeta,
                      const T* dz, const T* p, const uint8_t* arg, const float* mean,
                      const float* invstd, const float* gamma, const float* beta, int N, int H,
                      int W, int C, int k, MaybeAct act) {
    const int M = N * (H / k) * (W / k);
    check_shape(M, C);
    const BnScratch s = split_scratch(scratch, M, C);
    channel_reduce(st, s.partial, SumDyDyXhat<T>{dz, p, mean, invstd, gamma, beta, C, act},
                   StoreGrads{s.sum_a, s.sum_b, dbeta, dgamma}, M, C);
    const BnDx f{mean, invstd, gamma, beta, s.sum_a, s.sum_b, 1.f / float(M), act};
    launch_kernel(maxpool_backward_windows8<T, BnActGrad8<T>>,
                  grid_size(pool_windows8(N, H, W, C, k)), kBlock, 0, st, dx,
                  BnActGrad8<T>{dz, p, f}, arg, N, H, W, C, k);
    CUDA_CHECK_LAUNCH();
}

}  // namespace

void channel_sum(cudaStream_t st, Storage s, void* scratch, float* out, const float* x, int M,
                 int C) {
    check_shape(M, C);
    const BnScratch sc = split_scratch(scratch, M, C);
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        channel_reduce(st, sc.partial, SumX<T>{as_act<T>(x), C}, StoreSum{out}, M, C);
    });
}

void add_channel_bias(cudaStream_t st, Storage s, float* y, const float* bias, int M, int C) {
    CUDA_ASSERT(M > 0 && C > 0);
    const size_t n = size_t(M) * C;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        if (eight_wide(n, C, y, nullptr))
            launch_kernel(add_bias_kernel8<T>, grid_size(n / 8), kBlock, 0, st, as_act<T>(y), bias,
                          unsigned(n / 8), C / 8);
        else
            launch_kernel(add_bias_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(y), bias, n,
                          C);
    });
    CUDA_CHECK_LAUNCH();
}

size_t bn_scratch_bytes(int M, int C) {
    return size_t(num_chunks(M)) * C * sizeof(float2) + 2 * size_t(C) * sizeof(float);
}

namespace {

// The training forward, backward and eval forward, with the activation after the BN (fused) or
// without it (act off): one code path for the plain and the fused ops.
template <class T>
void bn_train_maybe_act(cudaStream_t st, void* scratch, T* y, float* mean, float* invstd,
                        float* running_mean, float* running_var, const T* x,
                        const float* gamma, const float* beta, int M, int C, float eps,
                        float momentum, MaybeAct act) {
    batch_statistics(st, scratch, mean, invstd, running_mean, running_var, x, M, C, eps, momentum);
    const size_t n = size_t(M) * C;
    launch_normalize(st, y, x, mean, invstd, gamma, beta, n, C, act);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_eval_maybe_act(cudaStream_t st, T* y, const T* x, const float* running_mean,
                       const float* running_var, const float* gamma, const float* beta, int M,
                       int C, float eps, MaybeAct act) {
    CUDA_ASSERT(M > 0 && C > 0);
    const size_t n = size_t(M) * C;
    if (eight_wide(n, C, y, x))
        launch_kernel(bn_normalize8<T, OverRunningStd>, grid_size(n / 8), kBlock, 0, st, y, x,
                      running_mean, OverRunningStd{running_var, eps}, gamma, beta, unsigned(n / 8),
                      C / 8, act);
    else
        launch_kernel(bn_eval<T>, grid_size(n), kBlock, 0, st, y, x, running_mean, running_var,
                      gamma, beta, n, C, eps, act);
    CUDA_CHECK_LAUNCH();
}

template <class T>
void bn_backward_maybe_act(cudaStream_t st, void* scratch, T* dx, float* dgamma, float* dbeta,
                           const T* dy, const T* x, const float* mean, const float* invstd,
                           const float* gamma, const float* beta, int M, int C, MaybeAct act) {
    check_shape(M, C);
    const BnScratch s = split_scratch(scratch, M, C);
    channel_reduce(st, s.partial, SumDyDyXhat<T>{dy, x, mean, invstd, gamma, beta, C, act},
                   StoreGrads{s.sum_a, s.sum_b, dbeta, dgamma}, M, C);
    const size_t n = size_t(M) * C;
    launch_dx(st, dx, dy, x, mean, invstd, gamma, beta, s.sum_a, s.sum_b, n, C, 1.f / float(M),
              act);
    CUDA_CHECK_LAUNCH();
}

}  // namespace

// The public entry points: the storage's element type chosen once per call.
void bn_forward_train(cudaStream_t st, Storage s, void* scratch, float* y, float* mean,
                      float* invstd, float* running_mean, float* running_var, const float* x,
                      const float* gamma, const float* beta, int M, int C, float eps,
                      float momentum) {
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_train_maybe_act<T>(st, scratch, as_act<T>(y), mean, invstd, running_mean, running_var,
                              as_act<T>(x), gamma, beta, M, C, eps, momentum, MaybeAct{});
    });
}

void bn_forward_eval(cudaStream_t st, Storage s, float* y, const float* x,
                     const float* running_mean, const float* running_var, const float* gamma,
                     const float* beta, int M, int C, float eps) {
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_eval_maybe_act<T>(st, as_act<T>(y), as_act<T>(x), running_mean, running_var, gamma,
                             beta, M, C, eps, MaybeAct{});
    });
}

void bn_backward(cudaStream_t st, Storage s, void* scratch, float* dx, float* dgamma,
                 float* dbeta, const float* dy, const float* x, const float* mean,
                 const float* invstd, const float* gamma, int M, int C) {
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_backward_maybe_act<T>(st, scratch, as_act<T>(dx), dgamma, dbeta, as_act<T>(dy),
                                 as_act<T>(x), mean, invstd, gamma, nullptr, M, C, MaybeAct{});
    });
}

void bn_act_forward_train(cudaStream_t st, Storage s, void* scratch, float* z, float* mean,
                          float* invstd, float* running_mean, float* running_var, const float* x,
                          const float* gamma, const float* beta, int M, int C, float eps,
                          float momentum, ActKind act, float alpha) {
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_train_maybe_act<T>(st, scratch, as_act<T>(z), mean, invstd, running_mean, running_var,
                              as_act<T>(x), gamma, beta, M, C, eps, momentum,
                              MaybeAct{true, act, alpha});
    });
}

void bn_act_forward_eval(cudaStream_t st, Storage s, float* z, const float* x,
                         const float* running_mean, const float* running_var, const float* gamma,
                         const float* beta, int M, int C, float eps, ActKind act, float alpha) {
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_eval_maybe_act<T>(st, as_act<T>(z), as_act<T>(x), running_mean, running_var, gamma,
                             beta, M, C, eps, MaybeAct{true, act, alpha});
    });
}

void bn_act_backward(cudaStream_t st, Storage s, void* scratch, float* dx, float* dgamma,
                     float* dbeta, const float* dz, const float* x, const float* mean,
                     const float* invstd, const float* gamma, const float* beta, int M, int C,
                     ActKind act, float alpha) {
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_backward_maybe_act<T>(st, scratch, as_act<T>(dx), dgamma, dbeta, as_act<T>(dz),
                                 as_act<T>(x), mean, invstd, gamma, beta, M, C,
                                 MaybeAct{true, act, alpha});
    });
}

void bn_stats(cudaStream_t st, Storage s, void* scratch, float* sums, const float* x,
              const float* center_sums, float center_scale, int M, int C) {
    check_shape(M, C);
    const BnScratch sc = split_scratch(scratch, M, C);
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        channel_reduce(st, sc.partial, SumCentered<T>{as_act<T>(x), center_sums, center_scale, C},
                       StorePair{sums, C}, M, C);
    });
}

void bn_apply(cudaStream_t st, Storage s, float* y, float* mean, float* invstd,
              float* running_mean, float* running_var, const float* x, const float* gamma,
              const float* beta, const float* sums, const float* center_sums, float center_scale,
              int64_t count, int M, int C, float eps, float momentum) {
    CUDA_ASSERT(M > 0 && C > 0 && count >= M);
    launch_kernel(bn_finalize_sums, ceil_div(size_t(C), kBlock), kBlock, 0, st, mean, invstd,
                  running_mean, running_var, sums, center_sums, center_scale, double(count), C, eps,
                  momentum);
    CUDA_CHECK_LAUNCH();
    const size_t n = size_t(M) * C;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_normalize(st, as_act<T>(y), as_act<T>(x), mean, invstd, gamma, beta, n, C,
                         MaybeAct{});
    });
    CUDA_CHECK_LAUNCH();
}

void bn_backward_reduce(cudaStream_t st, Storage s, void* scratch, float* sums, float* dgamma,
                        float* dbeta, const float* dy, const float* x, const float* mean,
                        const float* invstd, int M, int C) {
    check_shape(M, C);
    const BnScratch sc = split_scratch(scratch, M, C);
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        channel_reduce(st, sc.partial,
                       SumDyDyXhat<T>{as_act<T>(dy), as_act<T>(x), mean, invstd, nullptr, nullptr,
                                      C, MaybeAct{}},
                       StoreGrads{sums, sums + C, dbeta, dgamma}, M, C);
    });
}

void bn_backward_apply(cudaStream_t st, Storage s, float* dx, const float* dy, const float* x,
                       const float* mean, const float* invstd, const float* gamma,
                       const float* sums, int64_t count, int M, int C) {
    CUDA_ASSERT(M > 0 && C > 0 && count >= M);
    const size_t n = size_t(M) * C;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_dx(st, as_act<T>(dx), as_act<T>(dy), as_act<T>(x), mean, invstd, gamma, nullptr,
                  sums, sums + C, n, C, float(1.0 / double(count)), MaybeAct{});
    });
    CUDA_CHECK_LAUNCH();
}

// The fused pooling + batch norm + activation: one pass fewer over p forward, no dp backward;
// shapes the fused kernels do not take go to the separate ops.
void pool_bn_act_forward_train(cudaStream_t st, Storage s, void* scratch, float* z, float* p,
                               uint8_t* arg, float* mean, float* invstd, float* running_mean,
                               float* running_var, const float* x, const float* gamma,
                               const float* beta, int N, int H, int W, int C, int k, float eps,
                               float momentum, ActKind act, float alpha) {
    CUDA_ASSERT(N > 0 && C > 0 && k >= 1 && H >= k && W >= k);
    if (!pool_bn_fusable(N, H, W, C, k, x, p, arg, z)) {
        maxpool_forward(st, s, p, arg, x, N, H, W, C, k);
        bn_act_forward_train(st, s, scratch, z, mean, invstd, running_mean, running_var, p, gamma,
                             beta, N * (H / k) * (W / k), C, eps, momentum, act, alpha);
        return;
    }
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        pool_bn_act_train<T>(st, scratch, as_act<T>(z), as_act<T>(p), arg, mean, invstd,
                             running_mean, running_var, as_act<T>(x), gamma, beta, N, H, W, C, k,
                             eps, momentum, MaybeAct{true, act, alpha});
    });
}

void bn_act_pool_backward(cudaStream_t st, Storage s, void* scratch, float* dx, float* dgamma,
                          float* dbeta, float* dp, const float* dz, const float* p,
                          const uint8_t* arg, const float* mean, const float* invstd,
                          const float* gamma, const float* beta, int N, int H, int W, int C, int k,
                          ActKind act, float alpha) {
    CUDA_ASSERT(N > 0 && C > 0 && k >= 1 && H >= k && W >= k);
    if (!pool_bn_fusable(N, H, W, C, k, dx, p, arg, dz)) {
        bn_act_backward(st, s, scratch, dp, dgamma, dbeta, dz, p, mean, invstd, gamma, beta,
                        N * (H / k) * (W / k), C, act, alpha);
        maxpool_backward(st, s, dx, dp, arg, N, H, W, C, k);
        return;
    }
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        bn_act_pool_back<T>(st, scratch, as_act<T>(dx), dgamma, dbeta, as_act<T>(dz), as_act<T>(p),
                            arg, mean, invstd, gamma, beta, N, H, W, C, k,
                            MaybeAct{true, act, alpha});
    });
}

}  // namespace sr::cuda
