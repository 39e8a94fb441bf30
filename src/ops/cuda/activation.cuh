// activation.cuh: the activations' formulas on the device, shared by the plain activation
// kernels (gelu.cu) and the fused batch norm + activation (batchnorm.cu), so the two agree.
//   gelu(x)  = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2));  gelu'(x) = Phi(x) + x phi(x)
//   silu(x)  = x s(x), s(x) = 1 / (1 + exp(-x));  silu'(x) = s(x) (1 + x (1 - s(x)))
//   relu(x)  = max(x, 0);  relu'(x) = [x > 0]
//   celu(x)  = x for x > 0, else alpha (exp(x / alpha) - 1);  celu'(x) = 1 or exp(x / alpha)
// (derivatives at 0 from the left, as PyTorch)
#pragma once
#include "ops/backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace sr::cuda {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

__device__ __forceinline__ float act_value(ActKind a, float v, float alpha) {
    switch (a) {
        case ActKind::gelu: return 0.5f * v * (1.f + erff(v * kInvSqrt2));
        case ActKind::silu: return v / (1.f + expf(-v));
        case ActKind::relu: return v > 0.f ? v : 0.f;
        default: return v > 0.f ? v : alpha * (expf(v / alpha) - 1.f);  // celu
    }
}

// the derivative of the smooth activations (ReLU and CELU are handled by act_chain itself)
__device__ __forceinline__ float smooth_act_grad(ActKind a, float v) {
    if (a == ActKind::silu) {
        const float s = 1.f / (1.f + expf(-v));
        return s * (1.f + v * (1.f - s));
    }
    const float cdf = 0.5f * (1.f + erff(v * kInvSqrt2));  // gelu
    return cdf + v * (kInvSqrt2Pi * expf(-0.5f * v * v));
}

// dy * act'(v), as the backward ops compute it (ReLU and CELU pass dy itself where v > 0, and
// ReLU gives exactly 0 elsewhere, as the CPU does)
__device__ __forceinline__ float act_chain(ActKind a, float dy, float v, float alpha) {
    switch (a) {
        case ActKind::relu: return v > 0.f ? dy : 0.f;
        case ActKind::celu: return v > 0.f ? dy : dy * expf(v / alpha);
        default: return dy * smooth_act_grad(a, v);  // gelu, silu
    }
}

// An optional activation as a kernel argument: off for the plain batch norm kernels, which the
// fused batch norm + activation shares.
struct MaybeAct {
    bool on = false;
    ActKind kind = ActKind::gelu;
    float alpha = 0.f;
    __device__ __forceinline__ float value(float v) const { return on ? act_value(kind, v, alpha) : v; }
    __device__ __forceinline__ float chain(float dy, float v) const {
        return on ? act_chain(kind, dy, v, alpha) : dy;
    }
};

}  // namespace sr::cuda
