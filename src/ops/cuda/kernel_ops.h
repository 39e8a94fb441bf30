// kernel_ops.h: the Backend ops that run this backend's own kernels (cuda_ops.h), as a mixin
// over a base backend. CudaBackend (cuda_backend.cpp) is KernelOps<Backend> plus memory, streams,
// graphs and the library ops (cuDNN convolutions, cuBLAS products); the host emulation's backend
// (emulated_backend.cpp) is KernelOps<ForwardingBackend> over the CPU backend, which does the
// library ops there. One text of these calls for both, so that the emulated tests run the very
// dispatch the GPU runs (which launcher, which storage, how much scratch).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "ops/backend.h"
#include "ops/cuda/cuda_ops.h"

namespace sr::cuda {

template <class Base>
class KernelOps : public Base {
public:
    using Base::Base;

    // ---- batch norm ---------------------------------------------------------------------------
    void bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma, const float* beta,
                          int M, int C, float eps, float momentum) override {
        cuda::bn_forward_train(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), y, mean, invstd,
                               running_mean, running_var, x, gamma, beta, M, C, eps, momentum);
    }
    void bn_forward_eval(float* y, const float* x, const float* running_mean,
                         const float* running_var, const float* gamma, const float* beta, int M,
                         int C, float eps) override {
        cuda::bn_forward_eval(st(), sto(), y, x, running_mean, running_var, gamma, beta, M, C, eps);
    }
    void bn_act_forward_train(float* z, float* mean, float* invstd, float* running_mean,
                              float* running_var, const float* x, const float* gamma,
                              const float* beta, int M, int C, float eps, float momentum,
                              ActKind act, float alpha) override {
        cuda::bn_act_forward_train(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), z, mean,
                                   invstd, running_mean, running_var, x, gamma, beta, M, C, eps,
                                   momentum, act, alpha);
    }
    void bn_act_forward_eval(float* z, const float* x, const float* running_mean,
                             const float* running_var, const float* gamma, const float* beta, int M,
                             int C, float eps, ActKind act, float alpha) override {
        cuda::bn_act_forward_eval(st(), sto(), z, x, running_mean, running_var, gamma, beta, M, C,
                                  eps, act, alpha);
    }
    void bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz, const float* x,
                         const float* mean, const float* invstd, const float* gamma,
                         const float* beta, int M, int C, ActKind act, float alpha) override {
        cuda::bn_act_backward(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), dx, dgamma, dbeta,
                              dz, x, mean, invstd, gamma, beta, M, C, act, alpha);
    }
    void pool_bn_act_forward_train(float* z, float* p, uint8_t* arg, float* mean, float* invstd,
                                   float* running_mean, float* running_var, const float* x,
                                   const float* gamma, const float* beta, int N, int H, int W,
                                   int C, int k, float eps, float momentum, ActKind act,
                                   float alpha) override {
        const int M = N * (H / k) * (W / k);
        cuda::pool_bn_act_forward_train(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), z, p,
                                        arg, mean, invstd, running_mean, running_var, x, gamma,
                                        beta, N, H, W, C, k, eps, momentum, act, alpha);
    }
    void bn_act_pool_backward(float* dx, float* dgamma, float* dbeta, float* dp, const float* dz,
                              const float* p, const uint8_t* arg, const float* mean,
                              const float* invstd, const float* gamma, const float* beta, int N,
                              int H, int W, int C, int k, ActKind act, float alpha) override {
        const int M = N * (H / k) * (W / k);
        cuda::bn_act_pool_backward(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), dx, dgamma,
                                   dbeta, dp, dz, p, arg, mean, invstd, gamma, beta, N, H, W, C, k,
                                   act, alpha);
    }
    void bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                     const float* mean, const float* invstd, const float* gamma, int M,
                     int C) override {
        cuda::bn_backward(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), dx, dgamma, dbeta, dy,
                          x, mean, invstd, gamma, M, C);
    }
    void bn_stats(float* sums, const float* x, const float* center_sums, float center_scale, int M,
                  int C) override {
        cuda::bn_stats(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), sums, x, center_sums,
                       center_scale, M, C);
    }
    void bn_apply(float* y, float* mean, float* invstd, float* running_mean, float* running_var,
                  const float* x, const float* gamma, const float* beta, const float* sums,
                  const float* center_sums, float center_scale, int64_t count, int M, int C,
                  float eps, float momentum) override {
        cuda::bn_apply(st(), sto(), y, mean, invstd, running_mean, running_var, x, gamma, beta,
                       sums, center_sums, center_scale, count, M, C, eps, momentum);
    }
    void bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                            const float* x, const float* mean, const float* invstd, int M,
                            int C) override {
        cuda::bn_backward_reduce(st(), sto(), scratch(cuda::bn_scratch_bytes(M, C)), sums, dgamma,
                                 dbeta, dy, x, mean, invstd, M, C);
    }
    void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                           const float* invstd, const float* gamma, const float* sums,
                           int64_t count, int M, int C) override {
        cuda::bn_backward_apply(st(), sto(), dx, dy, x, mean, invstd, gamma, sums, count, M, C);
    }

    // ---- activations ------------------------------------------------------------------------
    void gelu_forward(float* y, const float* x, size_t n) override {
        cuda::act_forward(st(), sto(), y, x, n, ActKind::gelu, 0.f);
    }
    void gelu_backward(float* dx, const float* dy, const float* x, size_t n) override {
        cuda::act_backward(st(), sto(), dx, dy, x, n, ActKind::gelu, 0.f);
    }
    void relu_forward(float* y, const float* x, size_t n) override {
        cuda::act_forward(st(), sto(), y, x, n, ActKind::relu, 0.f);
    }
    void relu_backward(float* dx, const float* dy, const float* x, size_t n) override {
        cuda::act_backward(st(), sto(), dx, dy, x, n, ActKind::relu, 0.f);
    }
    void celu_forward(float* y, const float* x, size_t n, float alpha) override {
        cuda::act_forward(st(), sto(), y, x, n, ActKind::celu, alpha);
    }
    void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) override {
        cuda::act_backward(st(), sto(), dx, dy, x, n, ActKind::celu, alpha);
    }
    void silu_forward(float* y, const float* x, size_t n) override {
        cuda::act_forward(st(), sto(), y, x, n, ActKind::silu, 0.f);
    }
    void silu_backward(float* dx, const float* dy, const float* x, size_t n) override {
        cuda::act_backward(st(), sto(), dx, dy, x, n, ActKind::silu, 0.f);
    }

    // ---- pooling ----------------------------------------------------------------------------
    void maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W, int C,
                         int k) override {
        cuda::maxpool_forward(st(), sto(), y, arg, x, N, H, W, C, k);
    }
    void maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H, int W,
                          int C, int k) override {
        cuda::maxpool_backward(st(), sto(), dx, dy, arg, N, H, W, C, k);
    }
    void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                             int C) override {
        cuda::concat_pool_forward(st(), sto(), y, arg, x, N, HW, C);
    }
    void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int HW,
                              int C) override {
        cuda::concat_pool_backward(st(), sto(), dx, dy, arg, N, HW, C);
    }

    // ---- loss -------------------------------------------------------------------------------
    void cross_entropy(float* dlogits, float* stats, const float* logits, const int32_t* labels,
                       int N, int O, float smoothing) override {
        cuda::cross_entropy(st(), dlogits, stats, logits, labels, N, O, smoothing);
    }
    void cross_entropy_mixed(float* dlogits, float* stats, const float* logits,
                             const int32_t* labels, const int32_t* labels2, float mix, int N, int O,
                             float smoothing) override {
        cuda::cross_entropy_mixed(st(), dlogits, stats, logits, labels, labels2, mix, N, O,
                                  smoothing);
    }

    // ---- optimizer --------------------------------------------------------------------------
    void sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                      float momentum) override {
        cuda::sgd_nesterov(st(), p, buf, g, n, lr, wd, momentum);
    }
    void sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr, float wd,
                               float momentum) override {
        cuda::sgd_nesterov_velocity(st(), p, v, g, n, lr, wd, momentum);
    }
    void sgd_nesterov_ranges(float* p, float* buf, const float* g, const SgdRange* ranges,
                             int count, float momentum, bool velocity) override {
        cuda::sgd_nesterov_ranges(st(), p, buf, g, ranges, count, momentum, velocity);
    }
    void lerp_assign(float* ema, float* p, size_t n, float t) override {
        cuda::lerp_assign(st(), ema, p, n, t);
    }
    void axpy(float* y, const float* x, float a, size_t n) override {
        cuda::axpy(st(), y, x, a, n);
    }
    void residual_add(float* y, const float* x, size_t n) override {
        cuda::residual_add(st(), sto(), y, x, n);
    }
    void scale(float* x, float a, size_t n) override { cuda::scale(st(), x, a, n); }
    void scale_to_norm(float* x, size_t n, float target, float eps) override {
        cuda::scale_to_norm(st(), scratch(cuda::scale_to_norm_scratch_bytes()), x, n, target, eps);
    }
    void momentum_direction(float* u, float* buf, const float* g, size_t n, float momentum,
                            bool nesterov) override {
        cuda::momentum_direction(st(), u, buf, g, n, momentum, nesterov);
    }
    void scale_to_norm_segments(float* x, const int64_t* offsets, const float* targets, int count,
                                float target, float eps) override {
        cuda::scale_to_norm_segments(st(),
                                     scratch(cuda::scale_to_norm_segments_scratch_bytes(count)), x,
                                     offsets, targets, count, target, eps);
    }

    // ---- data -------------------------------------------------------------------------------
    void normalize_pad(float* out, const uint8_t* in, int N, int H, int W, const float* mean_host,
                       const float* std_host, int pad) override {
        cuda::normalize_pad(st(), sto(), out, in, N, H, W, mean_host, std_host, pad);
    }
    void gather_crops(float* out, const float* src, int H, int W, int pad, int B,
                      const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                      const uint8_t* flips, int flip) override {
        cuda::gather_crops(st(), sto(), out, src, H, W, pad, B, idx, first, shifts, sy, sx, flips,
                           flip);
    }
    void cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) override {
        cuda::cutout(st(), sto(), x, pos, B, H, W, C, size);
    }
    void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W, int C,
                int size) override {
        cuda::cutmix(st(), sto(), x, src, pos, B, H, W, C, size);
    }
    void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                             size_t per_image) override {
        cuda::brightness_contrast(st(), sto(), x, shift, gain, B, per_image);
    }
    void patch_covariance(double* cov_host, double* mean_host, const float* x, int N, int H, int W,
                          int C, int k) override {
        cuda::patch_covariance(st(), sto(), scratch(cuda::covariance_scratch_bytes(N, H, W, C, k)),
                               cov_host, mean_host, x, N, H, W, C, k);
    }

protected:
    // The stream every kernel is queued on, and device scratch of at least `bytes` shared by the
    // ops (one at a time: ops on one stream run one after the other).
    virtual cudaStream_t kernel_stream() = 0;
    virtual void* kernel_scratch(size_t bytes) = 0;

private:
    cudaStream_t st() { return kernel_stream(); }
    Storage sto() const { return this->storage(); }
    void* scratch(size_t bytes) { return kernel_scratch(bytes); }
};

}  // namespace sr::cuda
