// optim.cu: the optimizer's elementwise steps, CUDA twins of cpu::sgd_nesterov, lerp_assign and
// axpy (contract in ops/backend.h). Plain grid-stride loops, fp32.
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

}  // namespace

void sgd_nesterov(cudaStream_t st, float* p, float* buf, const float* g, size_t n, float lr,
                  float wd, float momentum) {
    if (n == 0) return;
    sgd_nesterov_kernel<<<grid_size(n), kBlock, 0, st>>>(p, buf, g, n, lr, wd, momentum);
    CUDA_CHECK_LAUNCH();
}

void lerp_assign(cudaStream_t st, float* ema, float* p, size_t n, float t) {
    if (n == 0) return;
    lerp_assign_kernel<<<grid_size(n), kBlock, 0, st>>>(ema, p, n, t);
    CUDA_CHECK_LAUNCH();
}

void axpy(cudaStream_t st, float* y, const float* x, float a, size_t n) {
    if (n == 0) return;
    axpy_kernel<<<grid_size(n), kBlock, 0, st>>>(y, x, a, n);
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
