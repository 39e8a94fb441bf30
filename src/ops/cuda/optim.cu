// optim.cu: the optimizer's elementwise steps, CUDA twins of cpu::sgd_nesterov, lerp_assign,
// axpy, scale, scale_to_norm and momentum_direction (contract in ops/backend.h). Plain
// grid-stride loops, fp32. scale_to_norm keeps the norm on the device: a fixed number of blocks
// write partial sums of squares, then every block of the scaling kernel adds those partials up
// itself (the same order everywhere: deterministic, no atomics, no host round trip).
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace sr::cuda {
namespace {

// PyTorch SGD, Nesterov, coupled weight decay:
//   g' = g + wd p;  buf = momentum buf + g';  p -= lr (g' + momentum buf)
__global__ void sgd_nesterov_kernel(float* p, float* buf, const float* g, size_t n, float lr,
                                    float wd, float momentum) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float gi = g[i] + wd * p[i];
        const float b = momentum * buf[i] + gi;
        buf[i] = b;
        p[i] -= lr * (gi + momentum * b);
    }
}

// Nesterov SGD, lr inside the velocity: d = -lr (g + wd p); v = momentum v + d; p += d + momentum v
__global__ void sgd_nesterov_velocity_kernel(float* p, float* v, const float* g, size_t n,
                                             float lr, float wd, float momentum) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float d = -lr * (g[i] + wd * p[i]);
        const float vi = momentum * v[i] + d;
        v[i] = vi;
        p[i] += d + momentum * vi;
    }
}

// Both forms over several ranges in one launch: index j of the ranges laid end to end (start:
// prefix sums of their lengths) is element begin[k] + j - start[k] of range k.
struct SgdRangesArg {
    int64_t begin[kMaxSgdRanges];
    int64_t start[kMaxSgdRanges + 1];
    float lr[kMaxSgdRanges], wd[kMaxSgdRanges];
    int count;
};

__global__ void sgd_nesterov_ranges_kernel(float* p, float* buf, const float* g, SgdRangesArg r,
                                           float momentum, bool velocity) {
    const int64_t total = r.start[r.count];
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total;
         j += int64_t(gridDim.x) * blockDim.x) {
        int k = 0;
        while (j >= r.start[k + 1]) ++k;
        const int64_t i = r.begin[k] + (j - r.start[k]);
        const float lr = r.lr[k], wd = r.wd[k];
        if (velocity) {
            const float d = -lr * (g[i] + wd * p[i]);
            const float vi = momentum * buf[i] + d;
            buf[i] = vi;
            p[i] += d + momentum * vi;
        } else {
            const float gi = g[i] + wd * p[i];
            const float b = momentum * buf[i] + gi;
            buf[i] = b;
            p[i] -= lr * (gi + momentum * b);
        }
    }
}

// ema += t (p - ema);  p = ema
__global__ void lerp_assign_kernel(float* ema, float* p, size_t n, float t) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float e = ema[i] + t * (p[i] - ema[i]);
        ema[i] = e;
        p[i] = e;
    }
}

// y += a x
__global__ void axpy_kernel(float* y, const float* x, float a, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        y[i] += a * x[i];
}

__global__ void scale_kernel(float* x, float a, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        x[i] *= a;
}

constexpr int kNormBlocks = 128;

// The sum of v over the block's kBlock threads (a tree in shared memory), returned to thread 0;
// every thread of the block must call it.
__device__ float block_sum(float v) {
    SR_SHARED(float, sh, [kBlock]);
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (int(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return threadIdx.x == 0 ? sh[0] : 0.f;
}

__global__ void sumsq_partial_kernel(float* partial, const float* x, size_t n) {
    float acc = 0.f;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        acc += x[i] * x[i];
    const float total = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void scale_by_norm_kernel(float* x, const float* partial, size_t n, float target,
                                     float eps) {
    SR_SHARED(float, factor, );
    if (threadIdx.x == 0) {
        double ss = 0;
        for (int b = 0; b < kNormBlocks; ++b) ss += partial[b];
        factor = float(target / (sqrt(ss) + eps));
    }
    __syncthreads();
    const float f = factor;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        x[i] *= f;
}

// The segmented version: blockIdx.y is the segment, kSegBlocks blocks share each one.
constexpr int kSegBlocks = 32;

__global__ void segment_sumsq_kernel(float* partial, const float* x, const int64_t* offsets) {
    const int64_t beg = offsets[blockIdx.y], end = offsets[blockIdx.y + 1];
    float acc = 0.f;
    for (int64_t i = beg + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < end;
         i += int64_t(gridDim.x) * blockDim.x)
        acc += x[i] * x[i];
    const float total = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.y * kSegBlocks + blockIdx.x] = total;
}

__global__ void segment_scale_kernel(float* x, const float* partial, const int64_t* offsets,
                                     const float* targets, float target, float eps) {
    SR_SHARED(float, factor, );
    const int seg = blockIdx.y;
    if (threadIdx.x == 0) {
        double ss = 0;
        for (int b = 0; b < kSegBlocks; ++b) ss += partial[seg * kSegBlocks + b];
        const float t = targets ? target * targets[seg] : target;  // (as the CPU: fp32 product)
        factor = float(double(t) / (sqrt(ss) + eps));
    }
    __syncthreads();
    const float f = factor;
    const int64_t beg = offsets[seg], end = offsets[seg + 1];
    for (int64_t i = beg + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < end;
         i += int64_t(gridDim.x) * blockDim.x)
        x[i] *= f;
}

__global__ void momentum_direction_kernel(float* u, float* buf, const float* g, size_t n,
                                          float momentum, bool nesterov) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float b = momentum * buf[i] + g[i];
        buf[i] = b;
        u[i] = nesterov ? g[i] + momentum * b : b;
    }
}

}  // namespace

size_t scale_to_norm_scratch_bytes() { return kNormBlocks * sizeof(float); }

void scale(cudaStream_t st, float* x, float a, size_t n) {
    if (n == 0) return;
    launch_kernel(scale_kernel, grid_size(n), kBlock, 0, st, x, a, n);
    CUDA_CHECK_LAUNCH();
}

void scale_to_norm(cudaStream_t st, void* scratch, float* x, size_t n, float target, float eps) {
    if (n == 0) return;
    float* partial = static_cast<float*>(scratch);
    launch_kernel(sumsq_partial_kernel, kNormBlocks, kBlock, 0, st, partial, x, n);
    CUDA_CHECK_LAUNCH();
    launch_kernel(scale_by_norm_kernel, grid_size(n), kBlock, 0, st, x, partial, n, target, eps);
    CUDA_CHECK_LAUNCH();
}

size_t scale_to_norm_segments_scratch_bytes(int count) {
    return size_t(count) * kSegBlocks * sizeof(float);
}

void scale_to_norm_segments(cudaStream_t st, void* scratch, float* x, const int64_t* offsets,
                            const float* targets, int count, float target, float eps) {
    if (count <= 0) return;
    CUDA_ASSERT(count <= 65535);
    float* partial = static_cast<float*>(scratch);
    const dim3 grid(kSegBlocks, unsigned(count));
    launch_kernel(segment_sumsq_kernel, grid, kBlock, 0, st, partial, x, offsets);
    CUDA_CHECK_LAUNCH();
    launch_kernel(segment_scale_kernel, grid, kBlock, 0, st, x, partial, offsets, targets, target,
                  eps);
    CUDA_CHECK_LAUNCH();
}

void sgd_nesterov_ranges(cudaStream_t st, float* p, float* buf, const float* g,
                         const SgdRange* ranges, int count, float momentum, bool velocity) {
    CUDA_ASSERT(count >= 0 && count <= kMaxSgdRanges);
    SgdRangesArg r{};
    r.count = 0;
    r.start[0] = 0;
    for (int k = 0; k < count; ++k) {
        if (ranges[k].end <= ranges[k].begin) continue;
        const int n = r.count++;
        r.begin[n] = int64_t(ranges[k].begin);
        r.start[n + 1] = r.start[n] + int64_t(ranges[k].end - ranges[k].begin);
        r.lr[n] = ranges[k].lr;
        r.wd[n] = ranges[k].wd;
    }
    if (r.count == 0) return;
    launch_kernel(sgd_nesterov_ranges_kernel, grid_size(size_t(r.start[r.count])), kBlock, 0, st, p,
                  buf, g, r, momentum, velocity);
    CUDA_CHECK_LAUNCH();
}

void momentum_direction(cudaStream_t st, float* u, float* buf, const float* g, size_t n,
                        float momentum, bool nesterov) {
    if (n == 0) return;
    launch_kernel(momentum_direction_kernel, grid_size(n), kBlock, 0, st, u, buf, g, n, momentum,
                  nesterov);
    CUDA_CHECK_LAUNCH();
}

void sgd_nesterov(cudaStream_t st, float* p, float* buf, const float* g, size_t n, float lr,
                  float wd, float momentum) {
    if (n == 0) return;
    launch_kernel(sgd_nesterov_kernel, grid_size(n), kBlock, 0, st, p, buf, g, n, lr, wd, momentum);
    CUDA_CHECK_LAUNCH();
}

void sgd_nesterov_velocity(cudaStream_t st, float* p, float* v, const float* g, size_t n,
                           float lr, float wd, float momentum) {
    if (n == 0) return;
    launch_kernel(sgd_nesterov_velocity_kernel, grid_size(n), kBlock, 0, st, p, v, g, n, lr, wd,
                  momentum);
    CUDA_CHECK_LAUNCH();
}

void lerp_assign(cudaStream_t st, float* ema, float* p, size_t n, float t) {
    if (n == 0) return;
    launch_kernel(lerp_assign_kernel, grid_size(n), kBlock, 0, st, ema, p, n, t);
    CUDA_CHECK_LAUNCH();
}

void axpy(cudaStream_t st, float* y, const float* x, float a, size_t n) {
    if (n == 0) return;
    launch_kernel(axpy_kernel, grid_size(n), kBlock, 0, st, y, x, a, n);
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
