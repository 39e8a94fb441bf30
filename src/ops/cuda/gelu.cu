// gelu.cu: the activations: exact (erf-based) GELU, SiLU, ReLU and CELU with their derivatives,
// CUDA twins of cpu::gelu_* / silu_* / relu_* / celu_* (contract in ops/backend.h). Plain
// grid-stride elementwise kernels over the formulas of activation.cuh; where n is a multiple of
// 8 and the tensors 16-byte aligned, 8 values per thread (one 16-byte access per tensor).
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

template <class T>
__global__ void act_forward_kernel8(T* y, const T* x, unsigned n8, ActKind a, float alpha) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
        float v[8];
        load_act8(x, size_t(i) * 8, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = act_value(a, v[j], alpha);
        store_act8(y, size_t(i) * 8, v);
    }
}

template <class T>
__global__ void act_backward_kernel8(T* dx, const T* dy, const T* x, unsigned n8, ActKind a,
                                     float alpha) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
        float d[8], v[8];
        load_act8(dy, size_t(i) * 8, d);
        load_act8(x, size_t(i) * 8, v);
#pragma unroll
        for (int j = 0; j < 8; ++j) d[j] = act_chain(a, d[j], v[j], alpha);
        store_act8(dx, size_t(i) * 8, d);  // (after the loads: dx may be dy)
    }
}

bool eight_wide(size_t n, const void* a, const void* b, const void* c = nullptr) {
    return n % 8 == 0 && n < (size_t(1) << 34) && aligned8(a, b, c);
}

}  // namespace

void act_forward(cudaStream_t st, Storage s, float* y, const float* x, size_t n, ActKind a,
                 float alpha) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        if (eight_wide(n, y, x))
            launch_kernel(act_forward_kernel8<T>, grid_size(n / 8), kBlock, 0, st, as_act<T>(y),
                          as_act<T>(x), unsigned(n / 8), a, alpha);
        else
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
        if (eight_wide(n, dx, dy, x))
            launch_kernel(act_backward_kernel8<T>, grid_size(n / 8), kBlock, 0, st,
                          as_act<T>(dx), as_act<T>(dy), as_act<T>(x), unsigned(n / 8), a, alpha);
        else
            launch_kernel(act_backward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(dx),
                          as_act<T>(dy), as_act<T>(x), n, a, alpha);
    });
    CUDA_CHECK_LAUNCH();
}


}  // namespace sr::cuda
