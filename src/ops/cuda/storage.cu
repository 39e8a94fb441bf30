// storage.cu: the elementwise ops that exist because of the activation storage (storage.cuh):
// the residual add over stored activations, conversions between fp32 and the storage format
// (the convolutions' weights and weight gradients, the linear layer's input and its gradient),
// and a fill with pseudo-random values (the cuDNN wrapper's check of its graph-API plans).
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

template <class T>
__global__ void residual_add_kernel(T* y, const T* x, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        store_act(y, i, load_act(y, i) + load_act(x, i));
}

template <class T>
__global__ void residual_add_kernel8(T* y, const T* x, unsigned n8) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
        float a[8], b[8];
        load_act8(y, size_t(i) * 8, a);
        load_act8(x, size_t(i) * 8, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) a[j] += b[j];
        store_act8(y, size_t(i) * 8, a);
    }
}

template <class D, class S>
__global__ void convert_kernel(D* dst, const S* src, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x)
        store_act(dst, i, load_act(src, i));
}

// A 32-bit integer hash (the "lowbias32" mixer): consecutive inputs give unrelated outputs.
__device__ __forceinline__ uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

template <class T>
__global__ void fill_uniform_kernel(T* p, size_t n, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const uint32_t h = mix32(uint32_t(i) ^ mix32(uint32_t(i >> 32) ^ seed));
        const float u = float(h >> 8) * (1.f / 16777216.f);  // [0, 1) in steps of 2^-24
        store_act(p, i, scale * (2.f * u - 1.f));
    }
}

// One thread that spins for `cycles` clock ticks (timing: see hold_stream)
__global__ void hold_kernel(long long cycles) {
#ifdef SR_CUDA_EMULATION
    (void)cycles;  // (the host emulation has no clock to spin on; nothing times it)
#else
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
#endif
}

}  // namespace

void hold_stream(cudaStream_t st, long long cycles) {
    launch_kernel(hold_kernel, 1, 1, 0, st, cycles);
    CUDA_CHECK_LAUNCH();
}

cudaError_t kernel_image_status() {
#ifdef SR_CUDA_EMULATION
    return cudaSuccess;  // the host runs every kernel
#else
    cudaFuncAttributes a{};
    const cudaError_t e = cudaFuncGetAttributes(&a, fill_uniform_kernel<float>);
    if (e != cudaSuccess) cudaGetLastError();  // (not sticky; clear it)
    return e;
#endif
}

void fill_uniform(cudaStream_t st, Storage s, float* p, size_t n, uint32_t seed, float scale) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(fill_uniform_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(p), n, seed,
                      scale);
    });
    CUDA_CHECK_LAUNCH();
}

void residual_add(cudaStream_t st, Storage s, float* y, const float* x, size_t n) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        if (n % 8 == 0 && n / 8 < (size_t(1) << 31) && aligned8(y, x))  // 8 per thread
            launch_kernel(residual_add_kernel8<T>, grid_size(n / 8), kBlock, 0, st,
                          as_act<T>(y), as_act<T>(x), unsigned(n / 8));
        else
            launch_kernel(residual_add_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(y),
                          as_act<T>(x), n);
    });
    CUDA_CHECK_LAUNCH();
}

void to_storage(cudaStream_t st, Storage s, float* dst, const float* src, size_t n) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(convert_kernel<T, float>, grid_size(n), kBlock, 0, st, as_act<T>(dst), src,
                      n);
    });
    CUDA_CHECK_LAUNCH();
}

void from_storage(cudaStream_t st, Storage s, float* dst, const float* src, size_t n) {
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(convert_kernel<float, T>, grid_size(n), kBlock, 0, st, dst, as_act<T>(src),
                      n);
    });
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
