// rounding_backend.cpp: see rounding_backend.h.
#include "ops/rounding_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace sr {
namespace {

// mantissa bits, exponent of the smallest normal, largest finite value, scaled
constexpr NumberFormat kFp16{"fp16", 10, -14, 65504.f, false};
constexpr NumberFormat kBf16{"bf16", 7, -126, 3.3895313892515355e38f, false};
constexpr NumberFormat kE4m3{"e4m3", 3, -6, 448.f, true};
constexpr NumberFormat kE5m2{"e5m2", 2, -14, 57344.f, true};
// TF32: what tensor cores keep of fp32 operands (10 mantissa bits, fp32's exponent range)
constexpr NumberFormat kTf32{"tf32", 10, -126, 3.40282347e38f, false};

const EmulatedPrecision kPrecisions[] = {
    {"fp16", kFp16, kFp16},
    {"bf16", kBf16, kBf16},
    {"fp8", kE4m3, kE5m2},
    {"tf32", kTf32, kTf32},
    {"fp8-conv", kBf16, kBf16, &kE4m3, &kE5m2},
};

// The rounding of round_to with the format's constants hoisted; branch-free so the tensor loop
// vectorises. Normal range: round the fp32 bits to mantissa_bits (ties to even; a carry moves
// into the exponent as it should). Below the smallest normal: a fixed spacing q, rounded with
// the 1.5 * 2^23 trick (|x / q| < 2^mantissa_bits, far inside its range).
struct Rounder {
    uint32_t keep_mask, half_minus_one;
    int shift;
    float min_normal, q, inv_q, max;
    explicit Rounder(const NumberFormat& f)
        : keep_mask(~((1u << (23 - f.mantissa_bits)) - 1u)),
          half_minus_one((1u << (22 - f.mantissa_bits)) - 1u),
          shift(23 - f.mantissa_bits),
          // a format with fp32's exponent range (bf16): the bit rounding is exact for fp32's
          // subnormals too, and 2^(mantissa_bits - min_exp) would overflow
          min_normal(f.min_exp <= -126 ? 0.f : std::ldexp(1.f, f.min_exp)),
          q(f.min_exp <= -126 ? 1.f : std::ldexp(1.f, f.min_exp - f.mantissa_bits)),
          inv_q(f.min_exp <= -126 ? 1.f : std::ldexp(1.f, f.mantissa_bits - f.min_exp)),
          max(f.max) {}
    float operator()(float x) const {
        uint32_t u;
        std::memcpy(&u, &x, 4);
        const uint32_t lsb = (u >> shift) & 1u;
        const uint32_t rn = (u + half_minus_one + lsb) & keep_mask;
        float normal;
        std::memcpy(&normal, &rn, 4);
        constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
        const float sub = ((x * inv_q + kMagic) - kMagic) * q;
        float r = std::fabs(x) >= min_normal ? normal : std::copysign(sub, x);  // (-0 stays -0)
        r = std::fabs(r) > max ? std::copysign(max, x) : r;
        return x != x ? x : r;  // NaN stays NaN
    }
};

}  // namespace

const EmulatedPrecision* emulated_precision(const std::string& name) {
    for (const EmulatedPrecision& p : kPrecisions)
        if (p.name == name) return &p;
    return nullptr;
}

std::vector<std::string> emulated_precision_names() {
    std::vector<std::string> v;
    for (const EmulatedPrecision& p : kPrecisions) v.push_back(p.name);
    return v;
}

float round_to(float x, const NumberFormat& f) { return Rounder(f)(x); }

void round_tensor(float* x, size_t n, const NumberFormat& f) {
    const Rounder r(f);
    if (!f.scaled) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; ++i) x[i] = r(x[i]);
        return;
    }
    float amax = 0.f;
#pragma omp parallel for reduction(max : amax) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    if (!(amax > 0.f) || !std::isfinite(amax)) {  // all zero (or NaN/inf inside): unscaled
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; ++i) x[i] = r(x[i]);
        return;
    }
    // the power of two that brings amax into [max / 2, max]
    const int e = std::clamp(int(std::floor(std::log2(double(f.max) / double(amax)))), -120, 120);
    const float s = std::ldexp(1.f, e), inv = std::ldexp(1.f, -e);
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; ++i) x[i] = r(x[i] * s) * inv;
}

// ---- the backend ---------------------------------------------------------------------------------

namespace {

// buf := x rounded to f (grown on first use, then reused: no allocation per step)
const float* rounded_copy_into(std::vector<float>& buf, const float* x, size_t n,
                               const NumberFormat& f) {
    if (buf.size() < n) buf.resize(n);
    std::copy(x, x + n, buf.begin());
    round_tensor(buf.data(), n, f);
    return buf.data();
}

// A convolution computing with the weights rounded to the forward format; y rounded to it, dx
// and dw to the backward format (the bias's db stays fp32). With conv operand formats (fp8-conv)
// and enough input channels, x and w enter the math in conv_forward and dy in conv_backward
// (rounded copies); db sums the stored dy, as a separate reduction on a GPU would.
class RoundingConv2d final : public Conv2d {
public:
    RoundingConv2d(RoundingBackend& rb, std::unique_ptr<Conv2d> inner)
        : Conv2d(inner->shape), rb_(rb), in_(std::move(inner)),
          operands_(rb.precision().conv_forward && shape.C >= kConvOperandMinChannels) {}
    void forward(float* y, const float* x, const float* w, const float* bias) override {
        in_->forward(y, act(x), rb_.rounded_weights(w, weights(), operands_), bias);
        round_tensor(y, outputs(), rb_.precision().forward);
    }
    void backward_data(float* dx, const float* dy, const float* w) override {
        in_->backward_data(dx, grad(dy), rb_.rounded_weights(w, weights(), operands_));
        round_tensor(dx, inputs(), rb_.precision().backward);
    }
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override {
        if (operands_ && db) {
            in_->backward_weights(nullptr, db, dy, x);
            db = nullptr;
        }
        if (dw || db) in_->backward_weights(dw, db, grad(dy), act(x));
        if (dw) round_tensor(dw, weights(), rb_.precision().backward);
    }

private:
    size_t weights() const { return size_t(shape.K) * shape.R * shape.S * shape.C; }
    size_t inputs() const { return size_t(shape.N) * shape.H * shape.W * shape.C; }
    size_t outputs() const { return size_t(shape.N) * shape.P() * shape.Q() * shape.K; }
    const float* act(const float* x) {
        return operands_ ? rb_.rounded_copy(0, x, inputs(), *rb_.precision().conv_forward) : x;
    }
    const float* grad(const float* dy) {
        return operands_ ? rb_.rounded_copy(1, dy, outputs(), *rb_.precision().conv_backward)
                         : dy;
    }
    RoundingBackend& rb_;
    std::unique_ptr<Conv2d> in_;
    bool operands_;
};

}  // namespace

RoundingBackend::RoundingBackend(Backend& inner, const EmulatedPrecision& p)
    : PiecewiseForwardingBackend(inner), p_(p) {
    if (inner.device() != Device::cpu)
        fail("--emulate-precision {} runs on the CPU only (it rounds on the host); use --device cpu",
             p.name);
}

std::string RoundingBackend::name() const {
    std::string s = fmt::format("{}, {} storage emulated ({} forward, {} backward", in_.name(),
                                p_.name, p_.forward.name, p_.backward.name);
    if (p_.conv_forward && p_.conv_backward)
        s += fmt::format("; convolution operands {} forward, {} backward, from {} input channels",
                         p_.conv_forward->name, p_.conv_backward->name, kConvOperandMinChannels);
    return s + ")";
}

const float* RoundingBackend::rounded_weights(const float* w, size_t n, bool conv_operands) {
    return rounded_copy_into(wcopy_, w, n,
                             conv_operands && p_.conv_forward ? *p_.conv_forward : p_.forward);
}

const float* RoundingBackend::rounded_copy(int which, const float* x, size_t n,
                                           const NumberFormat& f) {
    return rounded_copy_into(copies_[which], x, n, f);
}

std::unique_ptr<Conv2d> RoundingBackend::make_conv(const ConvShape& s) {
    return std::make_unique<RoundingConv2d>(*this, ForwardingBackend::make_conv(s));
}

void RoundingBackend::bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                                       float* running_var, const float* x, const float* gamma,
                                       const float* beta, int M, int C, float eps,
                                       float momentum) {
    ForwardingBackend::bn_forward_train(y, mean, invstd, running_mean, running_var, x, gamma, beta,
                                        M, C, eps, momentum);
    fwd(y, size_t(M) * C);
}
void RoundingBackend::bn_forward_eval(float* y, const float* x, const float* running_mean,
                                      const float* running_var, const float* gamma,
                                      const float* beta, int M, int C, float eps) {
    ForwardingBackend::bn_forward_eval(y, x, running_mean, running_var, gamma, beta, M, C, eps);
    fwd(y, size_t(M) * C);
}
void RoundingBackend::bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy,
                                  const float* x, const float* mean, const float* invstd,
                                  const float* gamma, int M, int C) {
    ForwardingBackend::bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, M, C);
    bwd(dx, size_t(M) * C);
}
void RoundingBackend::bn_act_forward_train(float* z, float* mean, float* invstd,
                                           float* running_mean, float* running_var,
                                           const float* x, const float* gamma, const float* beta,
                                           int M, int C, float eps, float momentum, ActKind act,
                                           float alpha) {
    ForwardingBackend::bn_act_forward_train(z, mean, invstd, running_mean, running_var, x, gamma,
                                            beta, M, C, eps, momentum, act, alpha);
    fwd(z, size_t(M) * C);
}
void RoundingBackend::bn_act_forward_eval(float* z, const float* x, const float* running_mean,
                                          const float* running_var, const float* gamma,
                                          const float* beta, int M, int C, float eps, ActKind act,
                                          float alpha) {
    ForwardingBackend::bn_act_forward_eval(z, x, running_mean, running_var, gamma, beta, M, C, eps,
                                           act, alpha);
    fwd(z, size_t(M) * C);
}
void RoundingBackend::bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz,
                                      const float* x, const float* mean, const float* invstd,
                                      const float* gamma, const float* beta, int M, int C,
                                      ActKind act, float alpha) {
    ForwardingBackend::bn_act_backward(dx, dgamma, dbeta, dz, x, mean, invstd, gamma, beta, M, C,
                                       act, alpha);
    bwd(dx, size_t(M) * C);
}

void RoundingBackend::gelu_forward(float* y, const float* x, size_t n) {
    ForwardingBackend::gelu_forward(y, x, n);
    fwd(y, n);
}
void RoundingBackend::gelu_backward(float* dx, const float* dy, const float* x, size_t n) {
    ForwardingBackend::gelu_backward(dx, dy, x, n);
    bwd(dx, n);
}
void RoundingBackend::silu_forward(float* y, const float* x, size_t n) {
    ForwardingBackend::silu_forward(y, x, n);
    fwd(y, n);
}
void RoundingBackend::silu_backward(float* dx, const float* dy, const float* x, size_t n) {
    ForwardingBackend::silu_backward(dx, dy, x, n);
    bwd(dx, n);
}
void RoundingBackend::relu_forward(float* y, const float* x, size_t n) {
    ForwardingBackend::relu_forward(y, x, n);
    fwd(y, n);
}
void RoundingBackend::relu_backward(float* dx, const float* dy, const float* x, size_t n) {
    ForwardingBackend::relu_backward(dx, dy, x, n);
    bwd(dx, n);
}
void RoundingBackend::celu_forward(float* y, const float* x, size_t n, float alpha) {
    ForwardingBackend::celu_forward(y, x, n, alpha);
    fwd(y, n);
}
void RoundingBackend::celu_backward(float* dx, const float* dy, const float* x, size_t n,
                                    float alpha) {
    ForwardingBackend::celu_backward(dx, dy, x, n, alpha);
    bwd(dx, n);
}

void RoundingBackend::concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                                          int C) {
    ForwardingBackend::concat_pool_forward(y, arg, x, N, HW, C);
    fwd(y, size_t(N) * 2 * C);
}
void RoundingBackend::concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N,
                                           int HW, int C) {
    ForwardingBackend::concat_pool_backward(dx, dy, arg, N, HW, C);
    bwd(dx, size_t(N) * HW * C);
}

// The head: weights, their gradient and the logits stay fp32 (a tiny product, done in fp32 on
// a GPU too); its input gradient is an activation.
void RoundingBackend::linear_backward(float* dx, float* dw, const float* dy, const float* x,
                                      const float* w, int N, int I, int O, float scale) {
    ForwardingBackend::linear_backward(dx, dw, dy, x, w, N, I, O, scale);
    if (dx) bwd(dx, size_t(N) * I);
}

void RoundingBackend::residual_add(float* y, const float* x, size_t n) {
    ForwardingBackend::residual_add(y, x, n);
    if (std::strcmp(p_.forward.name, p_.backward.name) == 0) fwd(y, n);
}

void RoundingBackend::bn_apply(float* y, float* mean, float* invstd, float* rm, float* rv,
                               const float* x, const float* gamma, const float* beta,
                               const float* sums, const float* center_sums, float center_scale,
                               int64_t count, int M, int C, float eps, float momentum) {
    ForwardingBackend::bn_apply(y, mean, invstd, rm, rv, x, gamma, beta, sums, center_sums,
                                center_scale, count, M, C, eps, momentum);
    fwd(y, size_t(M) * C);
}
void RoundingBackend::bn_backward_apply(float* dx, const float* dy, const float* x,
                                        const float* mean, const float* invstd, const float* gamma,
                                        const float* sums, int64_t count, int M, int C) {
    ForwardingBackend::bn_backward_apply(dx, dy, x, mean, invstd, gamma, sums, count, M, C);
    bwd(dx, size_t(M) * C);
}

// The data: the normalised images are stored in the forward format; crops, flips, cutout and
// cutmix select or zero stored values (nothing to round), colour jitter computes new ones.
void RoundingBackend::normalize_pad(float* out, const uint8_t* in, int N, int H, int W,
                                    const float* mean_host, const float* std_host, int pad) {
    ForwardingBackend::normalize_pad(out, in, N, H, W, mean_host, std_host, pad);
    fwd(out, size_t(N) * (H + 2 * pad) * (W + 2 * pad) * 3);
}
void RoundingBackend::brightness_contrast(float* x, const float* shift, const float* gain, int B,
                                          size_t per_image) {
    ForwardingBackend::brightness_contrast(x, shift, gain, B, per_image);
    fwd(x, size_t(B) * per_image);
}

}  // namespace sr
