// gelu.cu: the activations: exact (erf-based) GELU, SiLU, ReLU and CELU with their derivatives, CUDA twins
// of cpu::gelu_* / silu_* (contract in ops/backend.h). Plain grid-stride elementwise kernels.
//   silu(x)  = x s(x), s(x) = 1 / (1 + exp(-x));  silu'(x) = s(x) (1 + x (1 - s(x)))
//   gelu(x)  = x * Phi(x),   Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))
//   gelu'(x) = Phi(x) + x * phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace sr::cuda {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

__global__ void gelu_forward_kernel(float* y, const float* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.f + erff(v * kInvSqrt2));
    }
}

__global__ void gelu_backward_kernel(float* dx, const float* dy, const float* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        const float cdf = 0.5f * (1.f + erff(v * kInvSqrt2));
        const float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

__global__ void silu_forward_kernel(float* y, const float* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        y[i] = v / (1.f + expf(-v));
    }
}

__global__ void silu_backward_kernel(float* dx, const float* dy, const float* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        const float s = 1.f / (1.f + expf(-v));
        dx[i] = dy[i] * s * (1.f + v * (1.f - s));
    }
}

__global__ void relu_forward_kernel(float* y, const float* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        y[i] = x[i] > 0.f ? x[i] : 0.f;
}

__global__ void relu_backward_kernel(float* dx, const float* dy, const float* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        dx[i] = x[i] > 0.f ? dy[i] : 0.f;
}

__global__ void celu_forward_kernel(float* y, const float* x, size_t n, float alpha) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        y[i] = v > 0.f ? v : alpha * (expf(v / alpha) - 1.f);
    }
}

__global__ void celu_backward_kernel(float* dx, const float* dy, const float* x, size_t n,
                                     float alpha) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        dx[i] = v > 0.f ? dy[i] : dy[i] * expf(v / alpha);
    }
}

}  // namespace

void silu_forward(cudaStream_t st, float* y, const float* x, size_t n) {
    if (n == 0) return;
    silu_forward_kernel<<<grid_size(n), kBlock, 0, st>>>(y, x, n);
    CUDA_CHECK_LAUNCH();
}

void silu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n) {
    if (n == 0) return;
    silu_backward_kernel<<<grid_size(n), kBlock, 0, st>>>(dx, dy, x, n);
    CUDA_CHECK_LAUNCH();
}

void gelu_forward(cudaStream_t st, float* y, const float* x, size_t n) {
    if (n == 0) return;
    gelu_forward_kernel<<<grid_size(n), kBlock, 0, st>>>(y, x, n);
    CUDA_CHECK_LAUNCH();
}

void gelu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n) {
    if (n == 0) return;
    gelu_backward_kernel<<<grid_size(n), kBlock, 0, st>>>(dx, dy, x, n);
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda

namespace sr::cuda {

void relu_forward(cudaStream_t st, float* y, const float* x, size_t n) {
    if (n == 0) return;
    relu_forward_kernel<<<grid_size(n), kBlock, 0, st>>>(y, x, n);
    CUDA_CHECK_LAUNCH();
}

void relu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n) {
    if (n == 0) return;
    relu_backward_kernel<<<grid_size(n), kBlock, 0, st>>>(dx, dy, x, n);
    CUDA_CHECK_LAUNCH();
}

void celu_forward(cudaStream_t st, float* y, const float* x, size_t n, float alpha) {
    if (n == 0) return;
    celu_forward_kernel<<<grid_size(n), kBlock, 0, st>>>(y, x, n, alpha);
    CUDA_CHECK_LAUNCH();
}

void celu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n,
                   float alpha) {
    if (n == 0) return;
    celu_backward_kernel<<<grid_size(n), kBlock, 0, st>>>(dx, dy, x, n, alpha);
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
