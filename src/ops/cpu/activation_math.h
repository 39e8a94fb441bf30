// activation_math.h: the CPU activations' scalar formulas, inline, so that loops calling them
// vectorise (no libm calls: erf and exp are branch-free polynomials). Used by the plain
// activation ops (elementwise.cpp) and by the fused batch norm + activation (batchnorm.cpp),
// which must agree to the bit.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "ops/backend.h"

namespace sr::cpu {

// exp(x) for float, relative error ~2e-7 on the whole range: 2^k * poly(r), |r| <= ln2/2.
inline float exp_poly(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    // round to nearest by the 1.5 * 2^23 trick: vectorises on every x86-64 (no SSE4.1 floor)
    const float kf = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
    const float r = x - kf * 0.693145751953125f - kf * 1.428606765330187045e-6f;
    const float p =
        1.f + r * (1.f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
    const int32_t ki = int32_t(kf);
    return p * std::bit_cast<float>((ki + 127) << 23);
}

// erf(x): Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7), branch-free.
inline float erf_poly(float x) {
    const float z = std::fabs(x);
    const float t = 1.f / (1.f + 0.5f * z);
    const float poly =
        -z * z - 1.26551223f +
        t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f + t * (0.27886807f +
        t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
    const float erfc_z = t * exp_poly(poly);
    const float e = 1.f - erfc_z;
    return x >= 0.f ? e : -e;
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

inline float gelu_one(float x) { return 0.5f * x * (1.f + erf_poly(x * kInvSqrt2)); }
inline float gelu_grad_one(float x) {
    const float cdf = 0.5f * (1.f + erf_poly(x * kInvSqrt2));
    return cdf + x * kInvSqrt2Pi * exp_poly(-0.5f * x * x);
}


// act(x) and act'(x) of the activation A (alpha: CELU's parameter; unused by the others).
// The derivative at 0 is taken from the left (0 for ReLU, 1 for CELU), as PyTorch.
template <ActKind A>
inline float act_value(float x, float alpha) {
    if constexpr (A == ActKind::gelu) return gelu_one(x);
    else if constexpr (A == ActKind::silu) return x / (1.f + exp_poly(-x));
    else if constexpr (A == ActKind::relu) return x > 0.f ? x : 0.f;
    else return x > 0.f ? x : alpha * (exp_poly(std::min(x, 0.f) * (1.f / alpha)) - 1.f);
}
template <ActKind A>
inline float act_grad(float x, float alpha) {
    if constexpr (A == ActKind::gelu) return gelu_grad_one(x);
    else if constexpr (A == ActKind::silu) {
        const float s = 1.f / (1.f + exp_poly(-x));
        return s * (1.f + x * (1.f - s));
    } else if constexpr (A == ActKind::relu) return x > 0.f ? 1.f : 0.f;
    else return x > 0.f ? 1.f : exp_poly(std::min(x, 0.f) * (1.f / alpha));
}

// dy * act'(x) as the backward ops compute it: ReLU and CELU pass dy itself where x > 0, and
// ReLU gives exactly 0 elsewhere.
template <ActKind A>
inline float act_chain(float dy, float x, float alpha) {
    if constexpr (A == ActKind::relu) return x > 0.f ? dy : 0.f;
    else if constexpr (A == ActKind::celu)
        return x > 0.f ? dy : dy * exp_poly(std::min(x, 0.f) * (1.f / alpha));
    else return dy * act_grad<A>(x, alpha);
}

// Calls f.template operator()<A>() for the runtime kind (one instantiation per activation).
template <class F>
inline void with_act(ActKind kind, F&& f) {
    switch (kind) {
        case ActKind::gelu: f.template operator()<ActKind::gelu>(); break;
        case ActKind::silu: f.template operator()<ActKind::silu>(); break;
        case ActKind::relu: f.template operator()<ActKind::relu>(); break;
        case ActKind::celu: f.template operator()<ActKind::celu>(); break;
    }
}

}  // namespace sr::cpu
