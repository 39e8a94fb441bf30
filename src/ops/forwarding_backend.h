// forwarding_backend.h: a Backend that hands every op to another backend through one hook,
// run_op(), with a description of the op (its kind, name and shape, FLOPs and the bytes it must
// move at least once). Decorators derive from it and override only the hook:
// - ProfilingBackend (ops/profiling_backend.h) times each op (`speedrun bench --profile`);
// - RecordingBackend (ops/recording_backend.h) records ops on the host and replays them, a
//   CUDA graph's semantics on any backend (tests of the trainer's recorded epochs).
// The closure run_op() receives holds copies of the op's arguments (pointers and scalars, never
// references to the caller's locals), so it may be kept and run later, as a CUDA graph keeps a
// kernel's arguments.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "ops/backend.h"

namespace sr {

// Kinds of ops, as the profile groups them.
namespace op_kind {
inline constexpr const char* conv = "convolution";
inline constexpr const char* bn = "batch norm";
inline constexpr const char* act = "activation";
inline constexpr const char* pool = "pooling";
// the fused max pooling + BN + activation (one op: its time cannot be split among the three)
inline constexpr const char* pool_bn = "pooling + BN";
inline constexpr const char* linear = "linear";
inline constexpr const char* loss = "loss";
inline constexpr const char* opt = "optimizer";
inline constexpr const char* aug = "augmentation";
inline constexpr const char* mem = "memory";
inline constexpr const char* elt = "elementwise";
}  // namespace op_kind

class ForwardingBackend : public Backend {
public:
    explicit ForwardingBackend(Backend& inner) : in_(inner) {}
    // Not copyable: ForwardingBackend(other_forwarding_backend) would otherwise pick the copy
    // constructor (a better match than Backend&) and forward to the other's inner backend,
    // skipping the other one altogether.
    ForwardingBackend(const ForwardingBackend&) = delete;
    ForwardingBackend& operator=(const ForwardingBackend&) = delete;
    Backend& inner() { return in_; }

    // Every op (and upload, download, copy) comes here: f runs it on the inner backend. kind is
    // one of op_kind; name() builds "op and shape" (call it only when needed); flops are the op's
    // arithmetic (multiply-add = 2), bytes the fp32 tensors it must read and write at least once.
    virtual void run_op(const char* kind, const std::function<std::string()>& name, double flops,
                        double bytes, std::function<void()> f) = 0;

    Device device() const override { return in_.device(); }
    std::string name() const override { return in_.name(); }
    Storage storage() const override { return in_.storage(); }
    void* alloc(size_t bytes) override { return in_.alloc(bytes); }
    void release(void* p) override { in_.release(p); }
    void upload(void* dst, const void* src_host, size_t bytes) override;
    void download(void* dst_host, const void* src, size_t bytes) override;
    void copy(void* dst, const void* src, size_t bytes) override;
    void synchronize() override { in_.synchronize(); }
    size_t peak_bytes() const override { return in_.peak_bytes(); }
    std::unique_ptr<DeviceTimer> make_timer() override { return in_.make_timer(); }
    void* native_stream() override { return in_.native_stream(); }
    GemmPeak measure_gemm_peak() override { return in_.measure_gemm_peak(); }

    std::unique_ptr<Conv2d> make_conv(const ConvShape& s) override;
    std::unique_ptr<GemmList> make_gemm_list(std::vector<GemmItem> items, GemmMath math) override;

    void bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma,
                          const float* beta, int M, int C, float eps, float momentum) override;
    void bn_forward_eval(float* y, const float* x, const float* running_mean,
                         const float* running_var, const float* gamma, const float* beta, int M,
                         int C, float eps) override;
    void bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                     const float* mean, const float* invstd, const float* gamma, int M,
                     int C) override;
    void bn_stats(float* sums, const float* x, const float* center_sums, float center_scale, int M,
                  int C) override;
    void bn_apply(float* y, float* mean, float* invstd, float* running_mean, float* running_var,
                  const float* x, const float* gamma, const float* beta, const float* sums,
                  const float* center_sums, float center_scale, int64_t count, int M, int C,
                  float eps, float momentum) override;
    void bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                            const float* x, const float* mean, const float* invstd, int M,
                            int C) override;
    void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                           const float* invstd, const float* gamma, const float* sums,
                           int64_t count, int M, int C) override;

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
    void pool_bn_act_forward_train(float* z, float* p, uint8_t* arg, float* mean, float* invstd,
                                   float* running_mean, float* running_var, const float* x,
                                   const float* gamma, const float* beta, int N, int H, int W,
                                   int C, int k, float eps, float momentum, ActKind act,
                                   float alpha) override;
    void bn_act_pool_backward(float* dx, float* dgamma, float* dbeta, float* dp, const float* dz,
                              const float* p, const uint8_t* arg, const float* mean,
                              const float* invstd, const float* gamma, const float* beta, int N,
                              int H, int W, int C, int k, ActKind act, float alpha) override;

    void gelu_forward(float* y, const float* x, size_t n) override;
    void gelu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void silu_forward(float* y, const float* x, size_t n) override;
    void silu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void relu_forward(float* y, const float* x, size_t n) override;
    void relu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void celu_forward(float* y, const float* x, size_t n, float alpha) override;
    void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) override;

    void maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W, int C,
                         int k) override;
    void maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H, int W,
                          int C, int k) override;
    void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                             int C) override;
    void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int HW,
                              int C) override;

    void linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                        float scale) override;
    void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                         int N, int I, int O, float scale) override;
    void cross_entropy(float* dlogits, float* stats, const float* logits, const int32_t* labels,
                       int N, int O, float smoothing) override;
    void cross_entropy_mixed(float* dlogits, float* stats, const float* logits,
                             const int32_t* labels, const int32_t* labels2, float mix, int N,
                             int O, float smoothing) override;

    void sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                      float momentum) override;
    void sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr, float wd,
                               float momentum) override;
    void sgd_nesterov_ranges(float* p, float* buf, const float* g, const SgdRange* ranges_host,
                             int count, float momentum, bool velocity) override;
    void lerp_assign(float* ema, float* p, size_t n, float t) override;
    void axpy(float* y, const float* x, float a, size_t n) override;
    void residual_add(float* y, const float* x, size_t n) override;
    void scale(float* x, float a, size_t n) override;
    void scale_to_norm(float* x, size_t n, float target, float eps) override;
    void scale_to_norm_segments(float* x, const int64_t* offsets, const float* targets, int count,
                                float target, float eps) override;
    void momentum_direction(float* u, float* buf, const float* g, size_t n, float momentum,
                            bool nesterov) override;
    void gemm(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
              bool trans_b, float alpha, float beta) override;

    void normalize_pad(float* out, const uint8_t* in, int N, int H, int W, const float* mean_host,
                       const float* std_host, int pad) override;
    void gather_crops(float* out, const float* src, int H, int W, int pad, int B,
                      const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                      const uint8_t* flips, int flip) override;
    void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                             size_t per_image) override;
    void cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) override;
    void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W, int C,
                int size) override;
    void patch_covariance(double* cov_host, double* mean_host, const float* x, int N, int H,
                          int W, int C, int k) override;


protected:
    Backend& in_;
};

// A ForwardingBackend for decorators that must see every op a fused op stands for (to round or
// store each op's result: RoundingBackend, StorageBackend): the fused pooling + BN + activation
// runs as the Backend defaults, its pieces in turn through this backend's own ops.
class PiecewiseForwardingBackend : public ForwardingBackend {
public:
    using ForwardingBackend::ForwardingBackend;
    void pool_bn_act_forward_train(float* z, float* p, uint8_t* arg, float* mean, float* invstd,
                                   float* running_mean, float* running_var, const float* x,
                                   const float* gamma, const float* beta, int N, int H, int W,
                                   int C, int k, float eps, float momentum, ActKind act,
                                   float alpha) override {
        Backend::pool_bn_act_forward_train(z, p, arg, mean, invstd, running_mean, running_var, x,
                                           gamma, beta, N, H, W, C, k, eps, momentum, act, alpha);
    }
    void bn_act_pool_backward(float* dx, float* dgamma, float* dbeta, float* dp, const float* dz,
                              const float* p, const uint8_t* arg, const float* mean,
                              const float* invstd, const float* gamma, const float* beta, int N,
                              int H, int W, int C, int k, ActKind act, float alpha) override {
        Backend::bn_act_pool_backward(dx, dgamma, dbeta, dp, dz, p, arg, mean, invstd, gamma, beta,
                                      N, H, W, C, k, act, alpha);
    }
};

}  // namespace sr
