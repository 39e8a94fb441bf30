// cpu_ops.h: the CPU twins of every op in ops/backend.h, as free functions in sr::cpu.
// Semantics, layouts and the "=" gradient rule are those of backend.h; each function here is
// both the CPU backend's implementation and the reference that tests/ops compares CUDA against.
// Where the fast path is oneDNN (convolution), a plain-loop *_naive twin sits beside it
// (conv.cpp) and the tests check the fast path against it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

#include "ops/backend.h"

// Hot loops are compiled three times (AVX-512, AVX2/x86-64-v3, baseline) and the loader picks
// the best for the CPU at hand: fast here, still correct on CPUs without AVX-512.
#define SR_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))

namespace sr::cpu {

// ---- convolution: plain loops (reference for the oneDNN path in CpuConv2d) ------------------
void conv2d_forward_naive(float* y, const float* x, const float* w, const float* bias,
                          const ConvShape& s);
void conv2d_backward_data_naive(float* dx, const float* dy, const float* w, const ConvShape& s);
void conv2d_backward_weights_naive(float* dw, float* db, const float* dy, const float* x,
                                   const ConvShape& s);
// db[k] = sum over the rows of dy (rows x K, NHWC flattened), in double: the reference's bias
// gradient, and what CpuConv2d computes when asked for the bias gradient alone
void conv2d_bias_grad(float* db, const float* dy, size_t rows, int K);

// How CpuConv2d computes the data gradient where a same-padded stride-1 convolution allows both:
// oneDNN's backward-data primitive ("library"), or a forward convolution of dy with the weights
// transposed (K <-> C) and flipped ("transposed": the same sums, often faster in oneDNN 2.6; see
// docs/results.md). "fastest" (the default) times both once per shape and process on scratch
// buffers when a conv is made and keeps the faster (within a margin: choose_by_timing below);
// every conv of that shape in the process then computes the same way. "library" is what
// --deterministic uses (the same path in every process, so a resumed run stays bit-identical).
// Applies to convs made after the call.
enum class ConvDataGrad { fastest, library, transposed };
void set_conv_data_grad(ConvDataGrad mode);

// Which algorithm CpuConv2d computes with where oneDNN offers both: "direct" convolution on the
// NHWC tensors, or "winograd", oneDNN's F(4x4, 3x3) Winograd kernels (AVX-512 CPUs; 3x3 stride-1
// same-padded convs whose channel counts it can block), which do about half the multiplications
// but take a blocked activation layout: each call reorders its activations into the backend's
// ConvWorkspace and back. "fastest" (the default) times a forward and the gradients training
// asks of the conv (ConvShape::computes_dx / computes_dw: both, dw alone for a network's first
// conv, none for a forward-only one) on each once per shape, gradients and process when a conv
// is made and keeps the faster (within a margin: choose_by_timing below). "winograd" takes it
// wherever it exists (a
// fixed rule: what --deterministic uses, so a resumed run computes the same way). Winograd's
// transforms round differently from the direct sums (tests/ops compare both with the plain loops
// at the same tolerances). Applies to convs made after the call.
enum class ConvAlgorithm { fastest, direct, winograd };
void set_conv_algorithm(ConvAlgorithm a);
// Whether oneDNN has Winograd kernels on this CPU (as oneDNN sees it: ONEDNN_MAX_CPU_ISA=AVX2
// hides them on an AVX-512 machine)
bool winograd_available();

// How both "fastest" choices decide. They lean towards --deterministic's fixed rule (library,
// winograd): the other path is taken only where its timed call beats the rule's by more than
// the margin, and then only if it does so again with the best of two timings of each. Without
// that, the same seed on the same machine trained to different accuracies in different
// processes: the README's command, seed 0, gave 0.9424, 0.9385 and 0.9397 in sessions 17-19,
// and the 24->64 conv (paths 4-7% apart) once timed Winograd at 459 ms against its usual 260
// (docs/results.md). time_rule() and time_other() each time one call of their path (seconds).
// SPEEDRUN_CPU_CONV_LOG=1 prints each shape's times and pick.
constexpr double kConvChoiceMargin = 0.10;
struct TimedChoice {
    bool other = false;             // take the other path
    double t_rule = 0, t_other = 0;  // the best timing of each
    int rounds = 0;                  // 1, or 2 where the first said "other"
};
TimedChoice choose_by_timing(const std::function<double()>& time_rule,
                             const std::function<double()>& time_other,
                             double margin = kConvChoiceMargin);

// ---- batch norm -----------------------------------------------------------------------------
void bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                      float* running_var, const float* x, const float* gamma, const float* beta,
                      int M, int C, float eps, float momentum);
void bn_forward_eval(float* y, const float* x, const float* running_mean,
                     const float* running_var, const float* gamma, const float* beta, int M,
                     int C, float eps);
void bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                 const float* mean, const float* invstd, const float* gamma, int M, int C);
// batch norm + activation, fused (backend.h)
void bn_act_forward_train(float* z, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma,
                          const float* beta, int M, int C, float eps, float momentum, ActKind act,
                          float alpha);
void bn_act_forward_eval(float* z, const float* x, const float* running_mean,
                         const float* running_var, const float* gamma, const float* beta, int M,
                         int C, float eps, ActKind act, float alpha);
void bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz, const float* x,
                     const float* mean, const float* invstd, const float* gamma,
                     const float* beta, int M, int C, ActKind act, float alpha);
// the same in pieces, for statistics over several processes (sync-BN)
void bn_stats(float* sums, const float* x, const float* center_sums, float center_scale, int M,
              int C);
void bn_apply(float* y, float* mean, float* invstd, float* running_mean, float* running_var,
              const float* x, const float* gamma, const float* beta, const float* sums,
              const float* center_sums, float center_scale, int64_t count, int M, int C,
              float eps, float momentum);
void bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* invstd, int M, int C);
void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                       const float* invstd, const float* gamma, const float* sums, int64_t count,
                       int M, int C);

// ---- activations ----------------------------------------------------------------------------
void gelu_forward(float* y, const float* x, size_t n);
void gelu_backward(float* dx, const float* dy, const float* x, size_t n);

void silu_forward(float* y, const float* x, size_t n);
void silu_backward(float* dx, const float* dy, const float* x, size_t n);

void relu_forward(float* y, const float* x, size_t n);
void relu_backward(float* dx, const float* dy, const float* x, size_t n);

void celu_forward(float* y, const float* x, size_t n, float alpha);
void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha);

// ---- pooling --------------------------------------------------------------------------------
void maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W, int C, int k);
void maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H, int W, int C,
                      int k);
void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW, int C);
void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int HW, int C);

// ---- linear ---------------------------------------------------------------------------------
void linear_forward(float* y, const float* x, const float* w, int N, int I, int O, float scale);
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N,
                     int I, int O, float scale);

// ---- loss -----------------------------------------------------------------------------------
void cross_entropy(float* dlogits, float* stats, const float* logits, const int32_t* labels,
                   int N, int O, float smoothing);
// labels2 == nullptr: the plain loss above (mix unused)
void cross_entropy_mixed(float* dlogits, float* stats, const float* logits, const int32_t* labels,
                         const int32_t* labels2, float mix, int N, int O, float smoothing);

// ---- optimizer ------------------------------------------------------------------------------
void sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                  float momentum);
void sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr, float wd,
                           float momentum);
// sgd_nesterov or sgd_nesterov_velocity on each range (Backend::sgd_nesterov_ranges)
void sgd_nesterov_ranges(float* p, float* buf, const float* g, const SgdRange* ranges, int count,
                         float momentum, bool velocity);
void lerp_assign(float* ema, float* p, size_t n, float t);
void axpy(float* y, const float* x, float a, size_t n);
void scale(float* x, float a, size_t n);
void scale_to_norm(float* x, size_t n, float target, float eps);
// scale_to_norm on each segment [offsets[s], offsets[s + 1]), s < count, to target * targets[s]
// (targets == nullptr: target): Backend::scale_to_norm_segments.
void scale_to_norm_segments(float* x, const int64_t* offsets, const float* targets, int count,
                            float target, float eps);
void momentum_direction(float* u, float* buf, const float* g, size_t n, float momentum,
                        bool nesterov);
// gemm through oneDNN's sgemm; gemm_naive is its plain-loop reference (double accumulation).
void gemm(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
          bool trans_b, float alpha, float beta);
void gemm_naive(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
                bool trans_b, float alpha, float beta);

// ---- data -----------------------------------------------------------------------------------
void normalize_pad(float* out, const uint8_t* in, int N, int H, int W, const float* mean,
                   const float* std, int pad);
void gather_crops(float* out, const float* src, int H, int W, int pad, int B, const int32_t* idx,
                  int first, const int8_t* shifts, int sy, int sx, const uint8_t* flips, int flip);
// the same over 16-bit values (activations in Storage::f16 / bf16: a crop only selects values)
void gather_crops_16(uint16_t* out, const uint16_t* src, int H, int W, int pad, int B,
                     const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                     const uint8_t* flips, int flip);
void cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size);
void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W, int C, int size);
void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                         size_t per_image);
void patch_covariance(double* cov, double* mean, const float* x, int N, int H, int W, int C,
                      int k);

// Vectorisable exact-GELU pieces (erf to ~1e-7), shared with tests.
float gelu_scalar(float x);
float gelu_grad_scalar(float x);

}  // namespace sr::cpu
