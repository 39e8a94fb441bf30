// gelu.cu: the activations: exact (erf-based) GELU, SiLU, ReLU and CELU with their derivatives,
// CUDA twins of cpu::gelu_* / silu_* / relu_* / celu_* (contract in ops/backend.h). Plain
// grid-stride elementwise kernels over the formulas of activation.cuh.
#include "ops/cuda/activation.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

// One grid-stride kernel per direction for every kind (the kind is uniform across the grid, so
// its switch costs nothing measurable). T: the activations' storage type.
template <class T>
__global__ void act_forward_kernel(T* y, const T* x, size_t n, ActKind a, float alpha) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        store_act(y, i, act_value(a, load_act(x, i), alpha));
}

template <class T>
__global__ void act_backward_kernel(T* dx, const T* dy, const T* x, size_t n, ActKind a,
                                    float alpha) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        store_act(dx, i, act_chain(a, load_act(dy, i), load_act(x, i), alpha));
}


}  // namespace

void act_forward(cudaStream_t st, Storage s, float* y, const float* x, size_t n, ActKind a,
                 float alpha) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(act_forward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(y),
                      as_act<T>(x), n, a, alpha);
    });
    CUDA_CHECK_LAUNCH();
}

void act_backward(cudaStream_t st, Storage s, float* dx, const float* dy, const float* x,
                  size_t n, ActKind a, float alpha) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(act_backward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(dx),
                      as_act<T>(dy), as_act<T>(x), n, a, alpha);
    });
    CUDA_CHECK_LAUNCH();
}


}  // namespace sr::cuda
