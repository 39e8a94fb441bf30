// cuda_common.cuh: what every file of the CUDA backend shares: the error-check macros
// (CUDA_CHECK, CUDNN_CHECK, CUBLAS_CHECK, CUDA_CHECK_LAUNCH, CUDA_ASSERT), the grid-size helper
// and the block size of the plain elementwise kernels.
//
// Errors follow src/core/error.h: a failed call throws sr::Error whose message holds the call's
// text, file:line and the library's own error string. The throw itself lives in
// cuda_backend.cpp (sr::cuda::fail_at), because core/error.h uses fmt's consteval format
// strings, which nvcc 13 rejects: .cu files must not include core/error.h.
//
// CUDNN_CHECK and CUBLAS_CHECK name cudnnGetErrorString / cublasGetStatusString, so they work
// only in the one file that includes each library's header (cudnn_conv.cpp, cublas_linear.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#ifdef SR_CUDA_EMULATION
#include "ops/cuda/emulation.h"
#endif

namespace sr::cuda {

// Throws sr::Error("<lib>: <call> failed at file:line: <msg>"), e.g.
// "cuDNN: cudnnCreate(&handle) failed at .../cudnn_conv.cpp:42: CUDNN_STATUS_NOT_INITIALIZED".
// Defined in cuda_backend.cpp.
[[noreturn]] void fail_at(const char* lib, const char* call, const char* file, int line,
                          const char* msg);

// Threads per block of the grid-stride elementwise kernels.
constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU several times over, never
// more than needed, never 0 (a launch with 0 blocks is an error).
inline unsigned grid_size(size_t n, int block = kBlock) {
    const size_t max_blocks = 132 * 32;  // H100: 132 SMs; more blocks only loop more
    size_t b = (n + size_t(block) - 1) / size_t(block);
    if (b > max_blocks) b = max_blocks;
    if (b == 0) b = 1;
    return unsigned(b);
}

inline unsigned ceil_div(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

#ifdef __CUDACC__
// A kernel's statically sized shared memory: SR_SHARED(float2, sh, [8][33]) declares
// `__shared__ float2 sh[8][33]` (dims empty for one value). The host emulation (emulation.h)
// gives each block such an array that starts as NaN, as it does the dynamic one.
#define SR_SHARED(T, name, dims) __shared__ T name dims
// Before a vector access of `bytes` bytes at p (a float4, uint4 or uint2 load or store): nothing
// here; the host emulation fails the launch unless p is a multiple of `bytes`, where a GPU
// faults ("misaligned address") and the host might not.
#define SR_ALIGNED_ACCESS(p, bytes) ((void)0)

// Every kernel launch of the backend: k<<<grid, block, shared_bytes, st>>>(args...), written as
// a call so that the same sources also build for the host emulation (emulation.h), where
// launch_kernel runs the grid on the CPU.
template <class... Params, class... Args>
void launch_kernel(void (*k)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t st, Args... args) {
    k<<<grid, block, shared_bytes, st>>>(args...);
}

// The block's dynamically sized shared memory (the launch's shared_bytes), as an array of T.
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
    extern __shared__ float4 sr_dynamic_shared[];  // (float4: 16-byte aligned)
    return reinterpret_cast<T*>(sr_dynamic_shared);
}
#endif

}  // namespace sr::cuda

#ifdef SR_CUDA_EMULATION
#define SR_CUDA_ERROR_STRING(e) "error (host emulation)"
#else
#define SR_CUDA_ERROR_STRING(e) cudaGetErrorString(e)
#endif

#define CUDA_CHECK(call)                                                                     \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess)                                                               \
            ::sr::cuda::fail_at("CUDA", #call, __FILE__, __LINE__, SR_CUDA_ERROR_STRING(e_)); \
    } while (0)

// After a kernel launch: reports a bad launch configuration at once (execution errors show up
// at the next synchronizing call, with that call's text). The emulation checks as it launches.
#ifdef SR_CUDA_EMULATION
#define CUDA_CHECK_LAUNCH() \
    do {                    \
    } while (0)
#else
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
#endif

#define CUDNN_CHECK(call)                                                                     \
    do {                                                                                      \
        cudnnStatus_t s_ = (call);                                                            \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                       \
            ::sr::cuda::fail_at("cuDNN", #call, __FILE__, __LINE__, cudnnGetErrorString(s_)); \
    } while (0)

#define CUBLAS_CHECK(call)                                                                       \
    do {                                                                                         \
        cublasStatus_t s_ = (call);                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                         \
            ::sr::cuda::fail_at("cuBLAS", #call, __FILE__, __LINE__, cublasGetStatusString(s_)); \
    } while (0)

// Shape and argument checks in the launchers (the SR_CHECK of .cu files).
#define CUDA_ASSERT(cond)                                                                   \
    do {                                                                                    \
        if (!(cond))                                                                        \
            ::sr::cuda::fail_at("check", #cond, __FILE__, __LINE__, "bad shape or argument"); \
    } while (0)
