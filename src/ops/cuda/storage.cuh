// storage.cuh: activations in the backend's storage format (Storage in ops/backend.h) inside the
// kernels: element types, loads that widen to fp32, stores that round (to nearest even,
// saturating at the format's largest finite value like the CPU reference in
// ops/storage_backend.h; NaN stays NaN), and the host-side dispatch from a Storage value to a
// kernel instantiated for its element type. The math of every kernel stays fp32.
#pragma once
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ops/backend.h"

namespace sr::cuda {

__device__ __forceinline__ float load_act(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float load_act(const __half* p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_act(const __nv_bfloat16* p, size_t i) {
    return __bfloat162float(p[i]);
}

__device__ __forceinline__ void store_act(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_act(__half* p, size_t i, float v) {
    p[i] = __float2half_rn(fabsf(v) > 65504.f ? copysignf(65504.f, v) : v);
}
__device__ __forceinline__ void store_act(__nv_bfloat16* p, size_t i, float v) {
    constexpr float kMax = 3.3895313892515355e38f;
    p[i] = __float2bfloat16_rn(fabsf(v) > kMax ? copysignf(kMax, v) : v);
}

// A float* activation argument seen as its storage's element type.
template <class T>
__host__ __device__ inline T* as_act(float* p) {
    return reinterpret_cast<T*>(p);
}
template <class T>
__host__ __device__ inline const T* as_act(const float* p) {
    return reinterpret_cast<const T*>(p);
}

// Host: calls f(T*{nullptr}) with T the element type of s (the pointer only carries the type):
//   with_storage(s, [&](auto* tag) { using T = std::remove_pointer_t<decltype(tag)>; ... });
template <class F>
inline void with_storage(Storage s, F&& f) {
    switch (s) {
        case Storage::f16: f(static_cast<__half*>(nullptr)); break;
        case Storage::bf16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
        default: f(static_cast<float*>(nullptr)); break;
    }
}

}  // namespace sr::cuda

// The element type named by with_storage's tag argument.
#define SR_ACT_T(tag) std::remove_pointer_t<decltype(tag)>
