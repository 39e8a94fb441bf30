// rounding_backend.h: 16-bit and 8-bit storage emulated on the CPU, to see whether a recipe's
// accuracy holds in a number format before a GPU implementation of that format exists
// (`speedrun train --device cpu --emulate-precision fp16|bf16|fp8|tf32|fp8-conv`).
//
// RoundingBackend hands every op to the CPU backend (ops/forwarding_backend.h) and rounds what a
// mixed-precision GPU implementation would store in the low-precision format: each op's
// activation output (forward) and activation gradient (backward), residual adds included, the
// copy of the weights the convolutions compute with, and the convolutions' weight gradients; the
// math inside each op stays fp32, as on tensor cores with fp32 accumulation. What stays fp32:
// the master weights and the optimizer's state, biases and their gradients, the linear layer's
// weights and gradient, BN statistics, dgamma/dbeta, logits and the loss: exactly the contract of
// Storage in ops/backend.h, so that with fp16 or bf16 it computes the values of StorageBackend
// (ops/storage_backend.h), which stores them in 16 bits. With fp8 the residual adds are not
// rounded (forward and backward formats differ and an add does not say which pass it is in).
// Not emulated: the element order of a GPU's sums. (Until 2026-12-03 the head's weights and
// weight gradient and the whitening bias's gradient were rounded too.)
//
// tf32 rounds the same tensors to TF32 (10 mantissa bits, fp32's range): about what the CUDA
// backend's fp32 storage computes, whose convolutions round their operands so on tensor cores
// (the emulation also rounds the inputs of the other ops, which stay fp32 there).
//
// Formats: round to nearest even with the format's mantissa width and exponent range
// (subnormals kept), saturating at the largest finite value. fp8 is the usual FP8 training
// recipe: E4M3 forward (activations, weights), E5M2 backward (gradients), each tensor scaled by a
// power of two so that its largest magnitude lands near the format's largest value.
// fp8-conv is what FP8 tensor cores would do in the bf16 path: bf16 storage (every tensor as
// bf16 rounds it), and the convolutions' operands (x, w: E4M3; dy: E5M2) rounded on their way
// into the multiplication, with fp32 accumulation and a bf16 result; the scale of each operand
// is its own current maximum (real FP8 training keeps a history of maxima: ideal here).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "ops/forwarding_backend.h"

namespace sr {

struct NumberFormat {
    const char* name;    // "fp16", "bf16", "e4m3", "e5m2", "tf32"
    int mantissa_bits;   // explicit fraction bits
    int min_exp;         // exponent of the smallest normal value (2^min_exp)
    float max;           // largest finite value
    bool scaled;         // per-tensor power-of-two scaling before rounding (FP8)
};

struct EmulatedPrecision {
    std::string name;     // "fp16", "bf16", "fp8", "tf32", "fp8-conv"
    NumberFormat forward;   // activations, and the weights the math reads
    NumberFormat backward;  // activation and weight gradients
    // The operands the convolutions multiply, where they differ from what is stored (fp8-conv:
    // FP8 tensor-core convolutions over bf16 storage): x and w rounded to conv_forward, dy to
    // conv_backward, each in a scaled copy, in every convolution with at least
    // kConvOperandMinChannels input channels; the others (the 3-channel first convolution, which
    // FP8 recipes keep in 16 bits and FP8 kernels do not take) and every other op read the stored
    // values. nullptr: the stored values (the weights in `forward`).
    const NumberFormat* conv_forward = nullptr;
    const NumberFormat* conv_backward = nullptr;
};
constexpr int kConvOperandMinChannels = 16;

// "fp16", "bf16", "fp8", "tf32", "fp8-conv"; nullptr for any other name.
const EmulatedPrecision* emulated_precision(const std::string& name);
std::vector<std::string> emulated_precision_names();

// x rounded to the nearest value of format f (ties to even), saturating at +-f.max; NaN stays.
// Ignores f.scaled.
float round_to(float x, const NumberFormat& f);
// Every value of x rounded to f in place; with f.scaled, after scaling the tensor by the power
// of two that brings its largest magnitude within [max / 2, max] (and back after rounding).
void round_tensor(float* x, size_t n, const NumberFormat& f);

class RoundingBackend final : public PiecewiseForwardingBackend {
public:
    // inner must be a CPU backend (the rounding runs on the host, in place).
    RoundingBackend(Backend& inner, const EmulatedPrecision& p);
    std::string name() const override;
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override {
        f();
    }

    std::unique_ptr<Conv2d> make_conv(const ConvShape& s) override;

    void bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma,
                          const float* beta, int M, int C, float eps, float momentum) override;
    void bn_forward_eval(float* y, const float* x, const float* running_mean,
                         const float* running_var, const float* gamma, const float* beta, int M,
                         int C, float eps) override;
    void bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                     const float* mean, const float* invstd, const float* gamma, int M,
                     int C) override;
    void bn_act_forward_train(float* z, float* mean, float* invstd, float* running_mean,
                              float* running_var, const float* x, const float* gamma,
                              const float* beta, int M, int C, float eps, float momentum,
                              ActKind act, float alpha) override;
    void bn_act_forward_eval(float* z, const float* x, const float* running_mean,
                             const float* running_var, const float* gamma, const float* beta,
                             int M, int C, float eps, ActKind act, float alpha) override;
    void bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz, const float* x,
                         const float* mean, const float* invstd, const float* gamma,
                         const float* beta, int M, int C, ActKind act, float alpha) override;

    void bn_apply(float* y, float* mean, float* invstd, float* running_mean, float* running_var,
                  const float* x, const float* gamma, const float* beta, const float* sums,
                  const float* center_sums, float center_scale, int64_t count, int M, int C,
                  float eps, float momentum) override;
    void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                           const float* invstd, const float* gamma, const float* sums,
                           int64_t count, int M, int C) override;
    void residual_add(float* y, const float* x, size_t n) override;
    void gelu_forward(float* y, const float* x, size_t n) override;
    void gelu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void silu_forward(float* y, const float* x, size_t n) override;
    void silu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void relu_forward(float* y, const float* x, size_t n) override;
    void relu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void celu_forward(float* y, const float* x, size_t n, float alpha) override;
    void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) override;

    void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                             int C) override;
    void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int HW,
                              int C) override;
    void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                         int N, int I, int O, float scale) override;

    void normalize_pad(float* out, const uint8_t* in, int N, int H, int W, const float* mean_host,
                       const float* std_host, int pad) override;
    void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                             size_t per_image) override;

    const EmulatedPrecision& precision() const { return p_; }
    // a rounded copy of n weights (forward format, or conv_forward for a convolution with
    // fp8 operands), valid until the next call
    const float* rounded_weights(const float* w, size_t n, bool conv_operands = false);
    // a copy of n activations (which = 0) or gradients (1) rounded to f, valid until the next
    // call with the same `which`
    const float* rounded_copy(int which, const float* x, size_t n, const NumberFormat& f);

private:
    void fwd(float* x, size_t n) { round_tensor(x, n, p_.forward); }
    void bwd(float* x, size_t n) { round_tensor(x, n, p_.backward); }
    EmulatedPrecision p_;
    std::vector<float> wcopy_, copies_[2];
};

}  // namespace sr
