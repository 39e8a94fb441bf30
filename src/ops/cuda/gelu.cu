// gelu.cu: the activations: exact (erf-based) GELU, SiLU, ReLU and CELU with their derivatives,
// CUDA twins of cpu::gelu_* / silu_* / relu_* / celu_* (contract in ops/backend.h). Plain
// grid-stride elementwise kernels over the formulas of activation.cuh.
#include "ops/cuda/activation.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace sr::cuda {
namespace {

// One grid-stride kernel per direction for every kind (the kind is uniform across the grid, so
// its switch costs nothing measurable).
__global__ void act_forward_kernel(float* y, const float* x, size_t n, ActKind a, float alpha) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        y[i] = act_value(a, x[i], alpha);
}

__global__ void act_backward_kernel(float* dx, const float* dy, const float* x, size_t n,
                                    ActKind a, float alpha) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        dx[i] = act_chain(a, dy[i], x[i], alpha);
}

}  // namespace

void act_forward(cudaStream_t st, float* y, const float* x, size_t n, ActKind a, float alpha) {
    if (n == 0) return;
    act_forward_kernel<<<grid_size(n), kBlock, 0, st>>>(y, x, n, a, alpha);
    CUDA_CHECK_LAUNCH();
}

void act_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n, ActKind a,
                  float alpha) {
    if (n == 0) return;
    act_backward_kernel<<<grid_size(n), kBlock, 0, st>>>(dx, dy, x, n, a, alpha);
    CUDA_CHECK_LAUNCH();
}


void silu_forward(cudaStream_t st, float* y, const float* x, size_t n) {
    act_forward(st, y, x, n, ActKind::silu, 0.f);
}
void silu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n) {
    act_backward(st, dx, dy, x, n, ActKind::silu, 0.f);
}
void gelu_forward(cudaStream_t st, float* y, const float* x, size_t n) {
    act_forward(st, y, x, n, ActKind::gelu, 0.f);
}
void gelu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n) {
    act_backward(st, dx, dy, x, n, ActKind::gelu, 0.f);
}
void relu_forward(cudaStream_t st, float* y, const float* x, size_t n) {
    act_forward(st, y, x, n, ActKind::relu, 0.f);
}
void relu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n) {
    act_backward(st, dx, dy, x, n, ActKind::relu, 0.f);
}
void celu_forward(cudaStream_t st, float* y, const float* x, size_t n, float alpha) {
    act_forward(st, y, x, n, ActKind::celu, alpha);
}
void celu_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n,
                   float alpha) {
    act_backward(st, dx, dy, x, n, ActKind::celu, alpha);
}

}  // namespace sr::cuda
