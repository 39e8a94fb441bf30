// profiling_backend.cpp: see profiling_backend.h.
#include "ops/profiling_backend.h"

#include <algorithm>

#include <fmt/format.h>

namespace sr {
namespace {

constexpr double kF = sizeof(float);  // bytes per fp32 value
const char* const kConv = "convolution";
const char* const kBn = "batch norm";
const char* const kAct = "activation";
const char* const kPool = "pooling";
const char* const kLinear = "linear";
const char* const kLoss = "loss";
const char* const kOpt = "optimizer";
const char* const kAug = "augmentation";
const char* const kMem = "memory";
const char* const kElt = "elementwise";

std::vector<OpTime> sorted(std::map<std::string, OpTime>&& m) {
    std::vector<OpTime> v;
    v.reserve(m.size());
    for (auto& [_, t] : m) v.push_back(std::move(t));
    std::stable_sort(v.begin(), v.end(), [](const OpTime& a, const OpTime& b) { return a.seconds > b.seconds; });
    return v;
}

// The convolution of the wrapped backend, its three directions timed.
class ProfiledConv2d final : public Conv2d {
public:
    ProfiledConv2d(ProfilingBackend& pb, std::unique_ptr<Conv2d> inner)
        : Conv2d(inner->shape), pb_(pb), in_(std::move(inner)) {
        const ConvShape& s = shape;
        flops_ = s.flops_forward();
        bytes_ = kF * (double(s.N) * s.H * s.W * s.C + double(s.K) * s.R * s.S * s.C +
                       double(s.N) * s.P() * s.Q() * s.K);
    }
    void forward(float* y, const float* x, const float* w, const float* bias) override {
        pb_.time_op(kConv, [&] { return label("fwd"); }, flops_, bytes_, [&] { in_->forward(y, x, w, bias); });
    }
    void backward_data(float* dx, const float* dy, const float* w) override {
        pb_.time_op(kConv, [&] { return label("bwd data"); }, flops_, bytes_,
                    [&] { in_->backward_data(dx, dy, w); });
    }
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override {
        pb_.time_op(kConv, [&] { return label("bwd weights"); }, flops_, bytes_,
                    [&] { in_->backward_weights(dw, db, dy, x); });
    }

private:
    std::string label(const char* dir) const {
        const ConvShape& s = shape;
        return fmt::format("conv {} {}x{} s{} {}->{} {}x{} N{}", dir, s.R, s.S, s.stride, s.C, s.K, s.H,
                           s.W, s.N);
    }
    ProfilingBackend& pb_;
    std::unique_ptr<Conv2d> in_;
    double flops_ = 0, bytes_ = 0;
};

}  // namespace

std::vector<OpTime> by_kind(const std::vector<OpTime>& ops) {
    std::map<std::string, OpTime> m;
    for (const OpTime& o : ops) {
        OpTime& t = m[o.kind];
        t.kind = t.name = o.kind;
        t.calls += o.calls;
        t.seconds += o.seconds;
        t.flops += o.flops;
        t.bytes += o.bytes;
    }
    return sorted(std::move(m));
}

void ProfilingBackend::time_op(const char* kind, const std::function<std::string()>& name,
                               double flops, double bytes, const std::function<void()>& f) {
    if (!on_) {
        f();
        return;
    }
    const size_t k = pending_.size();
    if (k == timers_.size()) timers_.push_back(in_.make_timer());
    timers_[k]->start();
    f();
    timers_[k]->stop();
    pending_.push_back({k, kind, name(), flops, bytes});
}

std::vector<OpTime> ProfilingBackend::collect() {
    std::map<std::string, OpTime> m;
    for (const Pending& p : pending_) {
        OpTime& t = m[p.name];
        t.kind = p.kind;
        t.name = p.name;
        t.calls += 1;
        t.seconds += timers_[p.timer]->elapsed();
        t.flops += p.flops;
        t.bytes += p.bytes;
    }
    pending_.clear();
    return sorted(std::move(m));
}

// ---- memory ------------------------------------------------------------------------------------

void ProfilingBackend::upload(void* dst, const void* src_host, size_t bytes) {
    time_op(kMem, [] { return std::string("upload (host to device)"); }, 0, double(bytes),
            [&] { in_.upload(dst, src_host, bytes); });
}
void ProfilingBackend::download(void* dst_host, const void* src, size_t bytes) {
    time_op(kMem, [] { return std::string("download (device to host, waits)"); }, 0, double(bytes),
            [&] { in_.download(dst_host, src, bytes); });
}
void ProfilingBackend::copy(void* dst, const void* src, size_t bytes) {
    time_op(kMem, [] { return std::string("copy (device to device)"); }, 0, 2.0 * double(bytes),
            [&] { in_.copy(dst, src, bytes); });
}

std::unique_ptr<Conv2d> ProfilingBackend::make_conv(const ConvShape& s) {
    return std::make_unique<ProfiledConv2d>(*this, in_.make_conv(s));
}

// ---- batch norm: M rows x C channels -----------------------------------------------------------

namespace {
std::string mc(const char* op, int M, int C) { return fmt::format("{} M{} C{}", op, M, C); }
}  // namespace

void ProfilingBackend::bn_forward_train(float* y, float* mean, float* invstd, float* rm, float* rv,
                                        const float* x, const float* gamma, const float* beta, int M,
                                        int C, float eps, float momentum) {
    time_op(kBn, [&] { return mc("bn train fwd", M, C); }, 0, 3 * kF * M * C,  // x twice, y
            [&] { in_.bn_forward_train(y, mean, invstd, rm, rv, x, gamma, beta, M, C, eps, momentum); });
}
void ProfilingBackend::bn_forward_eval(float* y, const float* x, const float* rm, const float* rv,
                                       const float* gamma, const float* beta, int M, int C, float eps) {
    time_op(kBn, [&] { return mc("bn eval fwd", M, C); }, 0, 2 * kF * M * C,
            [&] { in_.bn_forward_eval(y, x, rm, rv, gamma, beta, M, C, eps); });
}
void ProfilingBackend::bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy,
                                   const float* x, const float* mean, const float* invstd,
                                   const float* gamma, int M, int C) {
    // dy and x for the sums, again for dx, which is written
    time_op(kBn, [&] { return mc("bn bwd", M, C); }, 0, 5 * kF * M * C,
            [&] { in_.bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, M, C); });
}
void ProfilingBackend::bn_stats(float* sums, const float* x, const float* center_sums,
                                float center_scale, int M, int C) {
    time_op(kBn, [&] { return mc("bn stats", M, C); }, 0, kF * M * C,
            [&] { in_.bn_stats(sums, x, center_sums, center_scale, M, C); });
}
void ProfilingBackend::bn_apply(float* y, float* mean, float* invstd, float* rm, float* rv,
                                const float* x, const float* gamma, const float* beta,
                                const float* sums, const float* center_sums, float center_scale,
                                int64_t count, int M, int C, float eps, float momentum) {
    time_op(kBn, [&] { return mc("bn apply", M, C); }, 0, 2 * kF * M * C, [&] {
        in_.bn_apply(y, mean, invstd, rm, rv, x, gamma, beta, sums, center_sums, center_scale, count,
                     M, C, eps, momentum);
    });
}
void ProfilingBackend::bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                                          const float* x, const float* mean, const float* invstd,
                                          int M, int C) {
    time_op(kBn, [&] { return mc("bn bwd reduce", M, C); }, 0, 2 * kF * M * C,
            [&] { in_.bn_backward_reduce(sums, dgamma, dbeta, dy, x, mean, invstd, M, C); });
}
void ProfilingBackend::bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                                         const float* invstd, const float* gamma, const float* sums,
                                         int64_t count, int M, int C) {
    time_op(kBn, [&] { return mc("bn bwd apply", M, C); }, 0, 3 * kF * M * C,
            [&] { in_.bn_backward_apply(dx, dy, x, mean, invstd, gamma, sums, count, M, C); });
}

// ---- activations: n values ---------------------------------------------------------------------

namespace {
std::string nv(const char* op, size_t n) { return fmt::format("{} n{}", op, n); }
}  // namespace

void ProfilingBackend::gelu_forward(float* y, const float* x, size_t n) {
    time_op(kAct, [&] { return nv("gelu fwd", n); }, 0, 2 * kF * n, [&] { in_.gelu_forward(y, x, n); });
}
void ProfilingBackend::gelu_backward(float* dx, const float* dy, const float* x, size_t n) {
    time_op(kAct, [&] { return nv("gelu bwd", n); }, 0, 3 * kF * n, [&] { in_.gelu_backward(dx, dy, x, n); });
}
void ProfilingBackend::silu_forward(float* y, const float* x, size_t n) {
    time_op(kAct, [&] { return nv("silu fwd", n); }, 0, 2 * kF * n, [&] { in_.silu_forward(y, x, n); });
}
void ProfilingBackend::silu_backward(float* dx, const float* dy, const float* x, size_t n) {
    time_op(kAct, [&] { return nv("silu bwd", n); }, 0, 3 * kF * n, [&] { in_.silu_backward(dx, dy, x, n); });
}
void ProfilingBackend::relu_forward(float* y, const float* x, size_t n) {
    time_op(kAct, [&] { return nv("relu fwd", n); }, 0, 2 * kF * n, [&] { in_.relu_forward(y, x, n); });
}
void ProfilingBackend::relu_backward(float* dx, const float* dy, const float* x, size_t n) {
    time_op(kAct, [&] { return nv("relu bwd", n); }, 0, 3 * kF * n, [&] { in_.relu_backward(dx, dy, x, n); });
}
void ProfilingBackend::celu_forward(float* y, const float* x, size_t n, float alpha) {
    time_op(kAct, [&] { return nv("celu fwd", n); }, 0, 2 * kF * n, [&] { in_.celu_forward(y, x, n, alpha); });
}
void ProfilingBackend::celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) {
    time_op(kAct, [&] { return nv("celu bwd", n); }, 0, 3 * kF * n,
            [&] { in_.celu_backward(dx, dy, x, n, alpha); });
}

// ---- pooling -----------------------------------------------------------------------------------

void ProfilingBackend::maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W,
                                       int C, int k) {
    const double in = double(N) * H * W * C, out = double(N) * (H / k) * (W / k) * C;
    time_op(kPool, [&] { return fmt::format("maxpool{} fwd {}x{} C{} N{}", k, H, W, C, N); }, 0,
            kF * in + (kF + 1) * out, [&] { in_.maxpool_forward(y, arg, x, N, H, W, C, k); });
}
void ProfilingBackend::maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H,
                                        int W, int C, int k) {
    const double in = double(N) * H * W * C, out = double(N) * (H / k) * (W / k) * C;
    time_op(kPool, [&] { return fmt::format("maxpool{} bwd {}x{} C{} N{}", k, H, W, C, N); }, 0,
            kF * in + (kF + 1) * out, [&] { in_.maxpool_backward(dx, dy, arg, N, H, W, C, k); });
}
void ProfilingBackend::concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                                           int C) {
    time_op(kPool, [&] { return fmt::format("concat pool fwd HW{} C{} N{}", HW, C, N); }, 0,
            kF * N * HW * C + (2 * kF + 1) * N * C, [&] { in_.concat_pool_forward(y, arg, x, N, HW, C); });
}
void ProfilingBackend::concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N,
                                            int HW, int C) {
    time_op(kPool, [&] { return fmt::format("concat pool bwd HW{} C{} N{}", HW, C, N); }, 0,
            kF * N * HW * C + (2 * kF + 1) * N * C, [&] { in_.concat_pool_backward(dx, dy, arg, N, HW, C); });
}

// ---- linear, loss ------------------------------------------------------------------------------

void ProfilingBackend::linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                                      float scale) {
    time_op(kLinear, [&] { return fmt::format("linear fwd {}->{} N{}", I, O, N); }, 2.0 * N * I * O,
            kF * (double(N) * I + double(O) * I + double(N) * O),
            [&] { in_.linear_forward(y, x, w, N, I, O, scale); });
}
void ProfilingBackend::linear_backward(float* dx, float* dw, const float* dy, const float* x,
                                       const float* w, int N, int I, int O, float scale) {
    const double mats = dx ? 2 : 1;
    time_op(kLinear, [&] { return fmt::format("linear bwd {}->{} N{}", I, O, N); },
            mats * 2.0 * N * I * O, kF * (mats * double(N) * I + 2.0 * O * I + double(N) * O),
            [&] { in_.linear_backward(dx, dw, dy, x, w, N, I, O, scale); });
}
void ProfilingBackend::cross_entropy(float* dlogits, float* stats, const float* logits,
                                     const int32_t* labels, int N, int O, float smoothing) {
    time_op(kLoss, [&] { return fmt::format("cross entropy N{} O{}", N, O); }, 0, 2 * kF * N * O,
            [&] { in_.cross_entropy(dlogits, stats, logits, labels, N, O, smoothing); });
}
void ProfilingBackend::cross_entropy_mixed(float* dlogits, float* stats, const float* logits,
                                           const int32_t* labels, const int32_t* labels2, float mix,
                                           int N, int O, float smoothing) {
    time_op(kLoss, [&] { return fmt::format("cross entropy mixed N{} O{}", N, O); }, 0, 2 * kF * N * O,
            [&] { in_.cross_entropy_mixed(dlogits, stats, logits, labels, labels2, mix, N, O, smoothing); });
}

// ---- optimizer ---------------------------------------------------------------------------------

void ProfilingBackend::sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                                    float momentum) {
    time_op(kOpt, [&] { return nv("sgd nesterov", n); }, 0, 5 * kF * n,  // p, buf, g read; p, buf written
            [&] { in_.sgd_nesterov(p, buf, g, n, lr, wd, momentum); });
}
void ProfilingBackend::sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr,
                                             float wd, float momentum) {
    time_op(kOpt, [&] { return nv("sgd nesterov (lr in velocity)", n); }, 0, 5 * kF * n,
            [&] { in_.sgd_nesterov_velocity(p, v, g, n, lr, wd, momentum); });
}
void ProfilingBackend::lerp_assign(float* ema, float* p, size_t n, float t) {
    time_op(kOpt, [&] { return nv("lerp (lookahead / EMA)", n); }, 0, 4 * kF * n,
            [&] { in_.lerp_assign(ema, p, n, t); });
}
void ProfilingBackend::axpy(float* y, const float* x, float a, size_t n) {
    // (the residual adds of the networks, TTA's logit sums and the optimizers use it)
    time_op(kElt, [&] { return nv("axpy", n); }, 2.0 * n, 3 * kF * n, [&] { in_.axpy(y, x, a, n); });
}
void ProfilingBackend::scale(float* x, float a, size_t n) {
    time_op(kElt, [&] { return nv("scale", n); }, double(n), 2 * kF * n, [&] { in_.scale(x, a, n); });
}
void ProfilingBackend::scale_to_norm(float* x, size_t n, float target, float eps) {
    time_op(kOpt, [&] { return nv("scale to norm", n); }, 3.0 * n, 3 * kF * n,
            [&] { in_.scale_to_norm(x, n, target, eps); });
}
void ProfilingBackend::momentum_direction(float* u, float* buf, const float* g, size_t n,
                                          float momentum, bool nesterov) {
    time_op(kOpt, [&] { return nv("momentum direction", n); }, 0, 4 * kF * n,
            [&] { in_.momentum_direction(u, buf, g, n, momentum, nesterov); });
}
void ProfilingBackend::gemm(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
                            bool trans_b, float alpha, float beta) {
    time_op(kLinear, [&] { return fmt::format("gemm {}x{}x{}", M, N, K); }, 2.0 * M * N * K,
            kF * (double(M) * K + double(K) * N + (beta != 0 ? 2.0 : 1.0) * M * N),
            [&] { in_.gemm(C, A, B, M, N, K, trans_a, trans_b, alpha, beta); });
}

// ---- data --------------------------------------------------------------------------------------

void ProfilingBackend::normalize_pad(float* out, const uint8_t* in, int N, int H, int W,
                                     const float* mean_host, const float* std_host, int pad) {
    time_op(kAug, [&] { return fmt::format("normalize + pad N{}", N); }, 0,
            double(N) * H * W * 3 + kF * N * (H + 2 * pad) * (W + 2 * pad) * 3,
            [&] { in_.normalize_pad(out, in, N, H, W, mean_host, std_host, pad); });
}
void ProfilingBackend::gather_crops(float* out, const float* src, int H, int W, int pad, int B,
                                    const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                                    const uint8_t* flips, int flip) {
    time_op(kAug, [&] { return fmt::format("gather crops B{}", B); }, 0, 2 * kF * B * H * W * 3, [&] {
        in_.gather_crops(out, src, H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
    });
}
void ProfilingBackend::brightness_contrast(float* x, const float* shift, const float* gain, int B,
                                           size_t per_image) {
    time_op(kAug, [&] { return fmt::format("brightness + contrast B{}", B); }, 0, 2 * kF * B * per_image,
            [&] { in_.brightness_contrast(x, shift, gain, B, per_image); });
}
void ProfilingBackend::cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) {
    time_op(kAug, [&] { return fmt::format("cutout {}x{} B{}", size, size, B); }, 0,
            kF * B * size * size * C, [&] { in_.cutout(x, pos, B, H, W, C, size); });
}
void ProfilingBackend::cutmix(float* x, const float* src, const int32_t* partner, const uint8_t* pos,
                              int B, int H, int W, int C, int size) {
    time_op(kAug, [&] { return fmt::format("cutmix {}x{} B{}", size, size, B); }, 0,
            2 * kF * B * size * size * C, [&] { in_.cutmix(x, src, partner, pos, B, H, W, C, size); });
}
void ProfilingBackend::patch_covariance(double* cov_host, double* mean_host, const float* x, int N,
                                        int H, int W, int C, int k) {
    const double D = double(C) * k * k, patches = double(N) * (H - k + 1) * (W - k + 1);
    time_op(kAug, [&] { return fmt::format("patch covariance N{} D{}", N, int(D)); }, 2.0 * patches * D * D,
            kF * N * H * W * C, [&] { in_.patch_covariance(cov_host, mean_host, x, N, H, W, C, k); });
}

}  // namespace sr
