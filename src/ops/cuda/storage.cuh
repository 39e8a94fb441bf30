// storage.cuh: activations in the backend's storage format (Storage in ops/backend.h) inside the
// kernels: element types, loads that widen to fp32, stores that round (to nearest even,
// saturating at the format's largest finite value like the CPU reference in
// ops/storage_backend.h; NaN stays NaN), and the host-side dispatch from a Storage value to a
// kernel instantiated for its element type. The math of every kernel stays fp32.
#pragma once
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/env.h"
#include "ops/backend.h"
#include "ops/cuda/cuda_common.cuh"

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

// Eight consecutive activations at element i (i a multiple of 8, the pointer 16-byte aligned:
// aligned8() on the host), widened to fp32 / stored with store_act's rounding: one 16-byte
// access in 16-bit storage, two in fp32.
__device__ __forceinline__ void load_act8(const float* p, size_t i, float (&v)[8]) {
    SR_ALIGNED_ACCESS(p + i, 16);
    const float4 a = *reinterpret_cast<const float4*>(p + i);
    const float4 b = *reinterpret_cast<const float4*>(p + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load_act8(const __half* p, size_t i, float (&v)[8]) {
    SR_ALIGNED_ACCESS(p + i, 16);
    const uint4 u = *reinterpret_cast<const uint4*>(p + i);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 f = __half22float2(h[k]);
        v[2 * k] = f.x, v[2 * k + 1] = f.y;
    }
}
__device__ __forceinline__ void load_act8(const __nv_bfloat16* p, size_t i, float (&v)[8]) {
    SR_ALIGNED_ACCESS(p + i, 16);
    const uint4 u = *reinterpret_cast<const uint4*>(p + i);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(h[k]);
        v[2 * k] = f.x, v[2 * k + 1] = f.y;
    }
}
__device__ __forceinline__ void store_act8(float* p, size_t i, const float (&v)[8]) {
    SR_ALIGNED_ACCESS(p + i, 16);
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
template <class T>
__device__ __forceinline__ void store_act8(T* p, size_t i, const float (&v)[8]) {
    static_assert(sizeof(T) == 2, "16-bit storage");
    uint4 u;
    T* h = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int k = 0; k < 8; ++k) store_act(h, k, v[k]);  // (the same rounding as one by one)
    SR_ALIGNED_ACCESS(p + i, 16);
    *reinterpret_cast<uint4*>(p + i) = u;
}

// Host: whether the 8-wide kernels may run at all. SPEEDRUN_CUDA_VEC8=0 turns them off (and
// conv_small with them): every op then takes its one-element-per-thread kernel, and the whitening
// conv's forward goes to cuDNN, as before session 15's profile, so that one GPU session can
// time both (`speedrun bench --profile` twice). Read once per process.
inline bool vec8_enabled() {
    static const bool on = env_switch("SPEEDRUN_CUDA_VEC8", true);
    return on;
}

// Host: whether these pointers allow the 8-wide accesses above (16-byte aligned), and the
// 8-wide kernels are on.
inline bool aligned8(const void* a, const void* b = nullptr, const void* c = nullptr) {
    auto ok = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
    return vec8_enabled() && ok(a) && ok(b) && ok(c);
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
