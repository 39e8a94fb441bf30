// cuda_ops.h: the CUDA twins of the ops in ops/backend.h, as free functions in sr::cuda.
// Each is the entry point of one .cu file's kernels: it checks the shapes, launches on the given
// stream and returns without waiting. Semantics, layouts and the "=" gradient rule are exactly
// those of backend.h (and of the CPU twins in ops/cpu/cpu_ops.h); only what differs is said here.
// Convolution and linear live in cudnn_conv.h and cublas_linear.h (library wrappers).
//
// Every pointer is device memory unless its name ends in _host. The activation arguments (the
// list is in backend.h, "Storage") hold values of the Storage passed as `s` (fp32, or fp16 /
// bf16 packed in float-sized buffers); every kernel computes in fp32 and rounds what it stores
// (storage.cuh). Everything else is fp32.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "ops/backend.h"  // ActKind

namespace sr::cuda {

// ---- batch norm (batchnorm.cu) -------------------------------------------------------------
// The per-channel reductions need scratch device memory of bn_scratch_bytes(M, C) bytes, owned
// by the caller and reused (ops on one stream run one after the other).
size_t bn_scratch_bytes(int M, int C);
void bn_forward_train(cudaStream_t st, Storage s, void* scratch, float* y, float* mean, float* invstd,
                      float* running_mean, float* running_var, const float* x, const float* gamma,
                      const float* beta, int M, int C, float eps, float momentum);
void bn_forward_eval(cudaStream_t st, Storage s, float* y, const float* x, const float* running_mean,
                     const float* running_var, const float* gamma, const float* beta, int M,
                     int C, float eps);
void bn_backward(cudaStream_t st, Storage s, void* scratch, float* dx, float* dgamma, float* dbeta,
                 const float* dy, const float* x, const float* mean, const float* invstd,
                 const float* gamma, int M, int C);
// Batch norm + activation, fused (backend.h); the same scratch as the ops above.
void bn_act_forward_train(cudaStream_t st, Storage s, void* scratch, float* z, float* mean, float* invstd,
                          float* running_mean, float* running_var, const float* x,
                          const float* gamma, const float* beta, int M, int C, float eps,
                          float momentum, ActKind act, float alpha);
void bn_act_forward_eval(cudaStream_t st, Storage s, float* z, const float* x, const float* running_mean,
                         const float* running_var, const float* gamma, const float* beta, int M,
                         int C, float eps, ActKind act, float alpha);
void bn_act_backward(cudaStream_t st, Storage s, void* scratch, float* dx, float* dgamma, float* dbeta,
                     const float* dz, const float* x, const float* mean, const float* invstd,
                     const float* gamma, const float* beta, int M, int C, ActKind act,
                     float alpha);
// Max pooling fused with the batch norm + activation after it (backend.h); scratch:
// bn_scratch_bytes(N (H/k) (W/k), C). Shapes the fused kernels do not take (and
// SPEEDRUN_CUDA_FUSE_POOL=0) run maxpool_* and bn_act_* in turn (the backward then uses dp).
void pool_bn_act_forward_train(cudaStream_t st, Storage s, void* scratch, float* z, float* p,
                               uint8_t* arg, float* mean, float* invstd, float* running_mean,
                               float* running_var, const float* x, const float* gamma,
                               const float* beta, int N, int H, int W, int C, int k, float eps,
                               float momentum, ActKind act, float alpha);
void bn_act_pool_backward(cudaStream_t st, Storage s, void* scratch, float* dx, float* dgamma,
                          float* dbeta, float* dp, const float* dz, const float* p,
                          const uint8_t* arg, const float* mean, const float* invstd,
                          const float* gamma, const float* beta, int N, int H, int W, int C, int k,
                          ActKind act, float alpha);
// The same in pieces, for statistics over several processes (sync-BN; backend.h). bn_stats and
// bn_backward_reduce need bn_scratch_bytes(M, C) of scratch; bn_apply and bn_backward_apply none.
void bn_stats(cudaStream_t st, Storage s, void* scratch, float* sums, const float* x,
              const float* center_sums, float center_scale, int M, int C);
void bn_apply(cudaStream_t st, Storage s, float* y, float* mean, float* invstd, float* running_mean,
              float* running_var, const float* x, const float* gamma, const float* beta,
              const float* sums, const float* center_sums, float center_scale, int64_t count,
              int M, int C, float eps, float momentum);
void bn_backward_reduce(cudaStream_t st, Storage s, void* scratch, float* sums, float* dgamma, float* dbeta,
                        const float* dy, const float* x, const float* mean, const float* invstd,
                        int M, int C);
void bn_backward_apply(cudaStream_t st, Storage s, float* dx, const float* dy, const float* x,
                       const float* mean, const float* invstd, const float* gamma,
                       const float* sums, int64_t count, int M, int C);
// Per-channel helpers on the same reduction, for the convolution's bias:
// out (C, fp32) = sum over the M rows of x (M,C; activations), needing bn_scratch_bytes(M, C)
// of scratch; y (M,C; activations) += bias (C, fp32) broadcast over rows.
void channel_sum(cudaStream_t st, Storage s, void* scratch, float* out, const float* x, int M,
                 int C);
void add_channel_bias(cudaStream_t st, Storage s, float* y, const float* bias, int M, int C);

// conv_small.cu: the forward convolution (bias optional) of a layer with at most 4 input
// channels and a multiple of 8 output channels by a direct kernel; conv_small_applies says
// whether the shape (and y's alignment) allows it. w in the storage format (the 16-bit copy).
bool conv_small_applies(const ConvShape& s, const float* y);
void conv_small_forward(cudaStream_t st, Storage s, float* y, const float* x, const float* w,
                        const float* bias, const ConvShape& shape);

// ---- activations: GELU (exact erf form), SiLU, ReLU, CELU (gelu.cu) ------------------------
void act_forward(cudaStream_t st, Storage s, float* y, const float* x, size_t n, ActKind a,
                 float alpha);
void act_backward(cudaStream_t st, Storage s, float* dx, const float* dy, const float* x,
                  size_t n, ActKind a, float alpha);

// ---- storage (storage.cu) ------------------------------------------------------------------------
// y += x over n activations
void residual_add(cudaStream_t st, Storage s, float* y, const float* x, size_t n);
// dst (n values of s) = src (n fp32 values), rounded; and back (exact)
void to_storage(cudaStream_t st, Storage s, float* dst, const float* src, size_t n);
void from_storage(cudaStream_t st, Storage s, float* dst, const float* src, size_t n);
// Whether this program holds code the current GPU can run: cudaSuccess, or the error a launch
// would give (cudaErrorNoKernelImageForDevice where the build's architectures leave it out)
cudaError_t kernel_image_status();
// p (n values of s) = pseudo-random values, uniform in [-scale, scale) before rounding, the same
// for the same (n, seed) on any GPU (a hash of the index and seed, no state)
void fill_uniform(cudaStream_t st, Storage s, float* p, size_t n, uint32_t seed, float scale);
// Keeps the stream busy for about `cycles` GPU clock ticks (one thread spinning): work queued
// behind it then starts back to back, so a timing of it measures the GPU, not the host's calls
void hold_stream(cudaStream_t st, long long cycles);

// ---- max pooling, window k = stride k (pool.cu) --------------------------------------------
void maxpool_forward(cudaStream_t st, Storage s, float* y, uint8_t* arg, const float* x, int N,
                     int H, int W, int C, int k);
void maxpool_backward(cudaStream_t st, Storage s, float* dx, const float* dy, const uint8_t* arg,
                      int N, int H, int W, int C, int k);
// global max and mean, concatenated (N, 2C)
void concat_pool_forward(cudaStream_t st, Storage s, float* y, uint8_t* arg, const float* x, int N,
                         int HW, int C);
void concat_pool_backward(cudaStream_t st, Storage s, float* dx, const float* dy,
                          const uint8_t* arg, int N, int HW, int C);

// ---- loss (loss.cu) --------------------------------------------------------------------------
void cross_entropy(cudaStream_t st, float* dlogits, float* stats, const float* logits,
                   const int32_t* labels, int N, int O, float smoothing);
// labels2 == nullptr: the plain loss (mix unused)
void cross_entropy_mixed(cudaStream_t st, float* dlogits, float* stats, const float* logits,
                         const int32_t* labels, const int32_t* labels2, float mix, int N, int O,
                         float smoothing);

// ---- optimizer (optim.cu) ------------------------------------------------------------------
void sgd_nesterov(cudaStream_t st, float* p, float* buf, const float* g, size_t n, float lr,
                  float wd, float momentum);
void sgd_nesterov_velocity(cudaStream_t st, float* p, float* v, const float* g, size_t n,
                           float lr, float wd, float momentum);
void sgd_nesterov_ranges(cudaStream_t st, float* p, float* buf, const float* g,
                         const SgdRange* ranges, int count, float momentum, bool velocity);
void lerp_assign(cudaStream_t st, float* ema, float* p, size_t n, float t);
void axpy(cudaStream_t st, float* y, const float* x, float a, size_t n);
void scale(cudaStream_t st, float* x, float a, size_t n);
// needs scale_to_norm_scratch_bytes() of scratch
size_t scale_to_norm_scratch_bytes();
void scale_to_norm(cudaStream_t st, void* scratch, float* x, size_t n, float target, float eps);
// Backend::scale_to_norm_segments; needs scale_to_norm_segments_scratch_bytes(count) of scratch
size_t scale_to_norm_segments_scratch_bytes(int count);
void scale_to_norm_segments(cudaStream_t st, void* scratch, float* x, const int64_t* offsets,
                            const float* targets, int count, float target, float eps);
void momentum_direction(cudaStream_t st, float* u, float* buf, const float* g, size_t n,
                        float momentum, bool nesterov);

// ---- data (data.cu) ----------------------------------------------------------------------------
void normalize_pad(cudaStream_t st, Storage s, float* out, const uint8_t* in, int N, int H, int W,
                   const float* mean_host, const float* std_host, int pad);
void gather_crops(cudaStream_t st, Storage s, float* out, const float* src, int H, int W, int pad, int B,
                  const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                  const uint8_t* flips, int flip);
void cutout(cudaStream_t st, Storage s, float* x, const uint8_t* pos, int B, int H, int W, int C, int size);
void cutmix(cudaStream_t st, Storage s, float* x, const float* src, const uint8_t* pos, int B, int H,
            int W, int C, int size);
void brightness_contrast(cudaStream_t st, Storage s, float* x, const float* shift, const float* gain, int B,
                         size_t per_image);

// ---- patch covariance (covariance.cu) -------------------------------------------------------
// Needs covariance_scratch_bytes(...) bytes of scratch; synchronizes the stream (the result is
// on the host when it returns).
size_t covariance_scratch_bytes(int N, int H, int W, int C, int k);
void patch_covariance(cudaStream_t st, Storage s, void* scratch, double* cov_host, double* mean_host,
                      const float* x, int N, int H, int W, int C, int k);

}  // namespace sr::cuda
