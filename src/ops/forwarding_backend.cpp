// forwarding_backend.cpp: see forwarding_backend.h. Each op's description (kind, name, FLOPs,
// bytes) is written here once, for every decorator.
#include "ops/forwarding_backend.h"

#include <array>

#include <fmt/format.h>

#include "core/error.h"

namespace sr {
namespace {

constexpr double kF = sizeof(float);  // bytes per fp32 value
const char* const kBn = op_kind::bn;
const char* const kAct = op_kind::act;
const char* const kPool = op_kind::pool;
const char* const kPoolBn = op_kind::pool_bn;
const char* const kLinear = op_kind::linear;
const char* const kLoss = op_kind::loss;
const char* const kOpt = op_kind::opt;
const char* const kAug = op_kind::aug;
const char* const kMem = op_kind::mem;
const char* const kElt = op_kind::elt;

// The convolution of the wrapped backend, its three directions through run_op().
class ForwardedConv2d final : public Conv2d {
public:
    ForwardedConv2d(ForwardingBackend& fb, std::unique_ptr<Conv2d> inner)
        : Conv2d(inner->shape), fb_(fb), in_(std::move(inner)) {
        const ConvShape& s = shape;
        flops_ = s.flops_forward();
        bytes_ = kF * (double(s.N) * s.H * s.W * s.C + double(s.K) * s.R * s.S * s.C +
                       double(s.N) * s.P() * s.Q() * s.K);
    }
    void forward(float* y, const float* x, const float* w, const float* bias) override {
        fb_.run_op(op_kind::conv, [&] { return label("fwd"); }, flops_, bytes_, [=, this] { in_->forward(y, x, w, bias); });
    }
    void backward_data(float* dx, const float* dy, const float* w) override {
        fb_.run_op(op_kind::conv, [&] { return label("bwd data"); }, flops_, bytes_,
                    [=, this] { in_->backward_data(dx, dy, w); });
    }
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override {
        if (!dw) {  // the bias gradient alone: a read of dy
            const ConvShape& s = shape;
            const double dy_elems = double(s.N) * s.P() * s.Q() * s.K;
            fb_.run_op(op_kind::conv, [&] { return label("bwd bias only"); }, dy_elems,
                       kF * (dy_elems + s.K), [=, this] { in_->backward_weights(dw, db, dy, x); });
            return;
        }
        fb_.run_op(op_kind::conv, [&] { return label("bwd weights"); }, flops_, bytes_,
                    [=, this] { in_->backward_weights(dw, db, dy, x); });
    }

private:
    std::string label(const char* dir) const {
        const ConvShape& s = shape;
        return fmt::format("conv {} {}x{} s{} {}->{} {}x{} N{}", dir, s.R, s.S, s.stride, s.C, s.K, s.H,
                           s.W, s.N);
    }
    ForwardingBackend& fb_;
    std::unique_ptr<Conv2d> in_;
    double flops_ = 0, bytes_ = 0;
};

// A GemmList of the wrapped backend: run() through run_op().
class ForwardedGemmList final : public GemmList {
public:
    ForwardedGemmList(ForwardingBackend& fb, std::unique_ptr<GemmList> inner, GemmMath math)
        : GemmList(inner->items()), fb_(fb), in_(std::move(inner)), math_(math) {
        for (const GemmItem& it : items_)
            bytes_ += kF * (double(it.M) * it.K + double(it.K) * it.N + double(it.M) * it.N);
    }
    void run(float alpha, float beta) override {
        double bytes = bytes_;
        if (beta != 0)
            for (const GemmItem& it : items_) bytes += kF * double(it.M) * it.N;
        fb_.run_op(
            kOpt,  // (Muon's products: the one user)
            [&] {
                return fmt::format("gemm list of {}{}", items_.size(),
                                   math_ == GemmMath::tf32 ? " (tf32 allowed)" : "");
            },
            flops(), bytes, [=, this] { in_->run(alpha, beta); });
    }

private:
    ForwardingBackend& fb_;
    std::unique_ptr<GemmList> in_;
    GemmMath math_;
    double bytes_ = 0;
};

}  // namespace

// ---- memory ------------------------------------------------------------------------------------

void ForwardingBackend::upload(void* dst, const void* src_host, size_t bytes) {
    run_op(kMem, [] { return std::string("upload (host to device)"); }, 0, double(bytes),
            [=, this] { in_.upload(dst, src_host, bytes); });
}
void ForwardingBackend::download(void* dst_host, const void* src, size_t bytes) {
    run_op(kMem, [] { return std::string("download (device to host, waits)"); }, 0, double(bytes),
            [=, this] { in_.download(dst_host, src, bytes); });
}
void ForwardingBackend::copy(void* dst, const void* src, size_t bytes) {
    run_op(kMem, [] { return std::string("copy (device to device)"); }, 0, 2.0 * double(bytes),
            [=, this] { in_.copy(dst, src, bytes); });
}

std::unique_ptr<Conv2d> ForwardingBackend::make_conv(const ConvShape& s) {
    return std::make_unique<ForwardedConv2d>(*this, in_.make_conv(s));
}
std::unique_ptr<GemmList> ForwardingBackend::make_gemm_list(std::vector<GemmItem> items,
                                                            GemmMath math) {
    return std::make_unique<ForwardedGemmList>(*this, in_.make_gemm_list(std::move(items), math),
                                               math);
}

// ---- batch norm: M rows x C channels -----------------------------------------------------------

namespace {
std::string mc(const char* op, int M, int C) { return fmt::format("{} M{} C{}", op, M, C); }
}  // namespace

void ForwardingBackend::bn_forward_train(float* y, float* mean, float* invstd, float* rm, float* rv,
                                        const float* x, const float* gamma, const float* beta, int M,
                                        int C, float eps, float momentum) {
    run_op(kBn, [&] { return mc("bn train fwd", M, C); }, 0, 3 * kF * M * C,  // x twice, y
            [=, this] { in_.bn_forward_train(y, mean, invstd, rm, rv, x, gamma, beta, M, C, eps, momentum); });
}
void ForwardingBackend::bn_forward_eval(float* y, const float* x, const float* rm, const float* rv,
                                       const float* gamma, const float* beta, int M, int C, float eps) {
    run_op(kBn, [&] { return mc("bn eval fwd", M, C); }, 0, 2 * kF * M * C,
            [=, this] { in_.bn_forward_eval(y, x, rm, rv, gamma, beta, M, C, eps); });
}
void ForwardingBackend::bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy,
                                   const float* x, const float* mean, const float* invstd,
                                   const float* gamma, int M, int C) {
    // dy and x for the sums, again for dx, which is written
    run_op(kBn, [&] { return mc("bn bwd", M, C); }, 0, 5 * kF * M * C,
            [=, this] { in_.bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, M, C); });
}
void ForwardingBackend::bn_stats(float* sums, const float* x, const float* center_sums,
                                float center_scale, int M, int C) {
    run_op(kBn, [&] { return mc("bn stats", M, C); }, 0, kF * M * C,
            [=, this] { in_.bn_stats(sums, x, center_sums, center_scale, M, C); });
}
void ForwardingBackend::bn_apply(float* y, float* mean, float* invstd, float* rm, float* rv,
                                const float* x, const float* gamma, const float* beta,
                                const float* sums, const float* center_sums, float center_scale,
                                int64_t count, int M, int C, float eps, float momentum) {
    run_op(kBn, [&] { return mc("bn apply", M, C); }, 0, 2 * kF * M * C, [=, this] {
        in_.bn_apply(y, mean, invstd, rm, rv, x, gamma, beta, sums, center_sums, center_scale, count,
                     M, C, eps, momentum);
    });
}
void ForwardingBackend::bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                                          const float* x, const float* mean, const float* invstd,
                                          int M, int C) {
    run_op(kBn, [&] { return mc("bn bwd reduce", M, C); }, 0, 2 * kF * M * C,
            [=, this] { in_.bn_backward_reduce(sums, dgamma, dbeta, dy, x, mean, invstd, M, C); });
}
void ForwardingBackend::bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                                         const float* invstd, const float* gamma, const float* sums,
                                         int64_t count, int M, int C) {
    run_op(kBn, [&] { return mc("bn bwd apply", M, C); }, 0, 3 * kF * M * C,
            [=, this] { in_.bn_backward_apply(dx, dy, x, mean, invstd, gamma, sums, count, M, C); });
}

// ---- batch norm + activation, fused ------------------------------------------------------------

namespace {
const char* act_name(ActKind a) {
    switch (a) {
        case ActKind::gelu: return "gelu";
        case ActKind::silu: return "silu";
        case ActKind::relu: return "relu";
        case ActKind::celu: return "celu";
    }
    return "?";
}
}  // namespace

void ForwardingBackend::bn_act_forward_train(float* z, float* mean, float* invstd, float* rm,
                                             float* rv, const float* x, const float* gamma,
                                             const float* beta, int M, int C, float eps,
                                             float momentum, ActKind act, float alpha) {
    // x twice (statistics, then normalise), z once
    run_op(kBn, [&] { return mc(fmt::format("bn+{} train fwd", act_name(act)).c_str(), M, C); }, 0,
           3 * kF * M * C, [=, this] {
               in_.bn_act_forward_train(z, mean, invstd, rm, rv, x, gamma, beta, M, C, eps, momentum,
                                        act, alpha);
           });
}
void ForwardingBackend::bn_act_forward_eval(float* z, const float* x, const float* rm,
                                            const float* rv, const float* gamma, const float* beta,
                                            int M, int C, float eps, ActKind act, float alpha) {
    run_op(kBn, [&] { return mc(fmt::format("bn+{} eval fwd", act_name(act)).c_str(), M, C); }, 0,
           2 * kF * M * C,
           [=, this] { in_.bn_act_forward_eval(z, x, rm, rv, gamma, beta, M, C, eps, act, alpha); });
}
void ForwardingBackend::bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz,
                                        const float* x, const float* mean, const float* invstd,
                                        const float* gamma, const float* beta, int M, int C,
                                        ActKind act, float alpha) {
    // dz and x for the sums, again for dx, which is written
    run_op(kBn, [&] { return mc(fmt::format("bn+{} bwd", act_name(act)).c_str(), M, C); }, 0,
           5 * kF * M * C, [=, this] {
               in_.bn_act_backward(dx, dgamma, dbeta, dz, x, mean, invstd, gamma, beta, M, C, act,
                                   alpha);
           });
}

// ---- activations: n values ---------------------------------------------------------------------

namespace {
std::string nv(const char* op, size_t n) { return fmt::format("{} n{}", op, n); }
}  // namespace

void ForwardingBackend::gelu_forward(float* y, const float* x, size_t n) {
    run_op(kAct, [&] { return nv("gelu fwd", n); }, 0, 2 * kF * n, [=, this] { in_.gelu_forward(y, x, n); });
}
void ForwardingBackend::gelu_backward(float* dx, const float* dy, const float* x, size_t n) {
    run_op(kAct, [&] { return nv("gelu bwd", n); }, 0, 3 * kF * n, [=, this] { in_.gelu_backward(dx, dy, x, n); });
}
void ForwardingBackend::silu_forward(float* y, const float* x, size_t n) {
    run_op(kAct, [&] { return nv("silu fwd", n); }, 0, 2 * kF * n, [=, this] { in_.silu_forward(y, x, n); });
}
void ForwardingBackend::silu_backward(float* dx, const float* dy, const float* x, size_t n) {
    run_op(kAct, [&] { return nv("silu bwd", n); }, 0, 3 * kF * n, [=, this] { in_.silu_backward(dx, dy, x, n); });
}
void ForwardingBackend::relu_forward(float* y, const float* x, size_t n) {
    run_op(kAct, [&] { return nv("relu fwd", n); }, 0, 2 * kF * n, [=, this] { in_.relu_forward(y, x, n); });
}
void ForwardingBackend::relu_backward(float* dx, const float* dy, const float* x, size_t n) {
    run_op(kAct, [&] { return nv("relu bwd", n); }, 0, 3 * kF * n, [=, this] { in_.relu_backward(dx, dy, x, n); });
}
void ForwardingBackend::celu_forward(float* y, const float* x, size_t n, float alpha) {
    run_op(kAct, [&] { return nv("celu fwd", n); }, 0, 2 * kF * n, [=, this] { in_.celu_forward(y, x, n, alpha); });
}
void ForwardingBackend::celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) {
    run_op(kAct, [&] { return nv("celu bwd", n); }, 0, 3 * kF * n,
            [=, this] { in_.celu_backward(dx, dy, x, n, alpha); });
}

// ---- pooling -----------------------------------------------------------------------------------

void ForwardingBackend::maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W,
                                       int C, int k) {
    const double in = double(N) * H * W * C, out = double(N) * (H / k) * (W / k) * C;
    run_op(kPool, [&] { return fmt::format("maxpool{} fwd {}x{} C{} N{}", k, H, W, C, N); }, 0,
            kF * in + (kF + 1) * out, [=, this] { in_.maxpool_forward(y, arg, x, N, H, W, C, k); });
}
void ForwardingBackend::maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H,
                                        int W, int C, int k) {
    const double in = double(N) * H * W * C, out = double(N) * (H / k) * (W / k) * C;
    run_op(kPool, [&] { return fmt::format("maxpool{} bwd {}x{} C{} N{}", k, H, W, C, N); }, 0,
            kF * in + (kF + 1) * out, [=, this] { in_.maxpool_backward(dx, dy, arg, N, H, W, C, k); });
}
// the fused pooling + BN + activation (one op to the inner backend: a decorator that must see the
// pieces, e.g. to round each op's output, overrides these with the Backend defaults)
void ForwardingBackend::pool_bn_act_forward_train(float* z, float* p, uint8_t* arg, float* mean,
                                                  float* invstd, float* rm, float* rv,
                                                  const float* x, const float* gamma,
                                                  const float* beta, int N, int H, int W, int C,
                                                  int k, float eps, float momentum, ActKind act,
                                                  float alpha) {
    // x once; p and arg written, p read again to normalise; z written
    const double in = double(N) * H * W * C, out = double(N) * (H / k) * (W / k) * C;
    run_op(kPoolBn,
           [&] { return fmt::format("maxpool{}+bn+{} train fwd {}x{} C{} N{}", k, act_name(act), H, W, C, N); },
           0, kF * in + (3 * kF + 1) * out, [=, this] {
               in_.pool_bn_act_forward_train(z, p, arg, mean, invstd, rm, rv, x, gamma, beta, N, H,
                                             W, C, k, eps, momentum, act, alpha);
           });
}
void ForwardingBackend::bn_act_pool_backward(float* dx, float* dgamma, float* dbeta, float* dp,
                                             const float* dz, const float* p, const uint8_t* arg,
                                             const float* mean, const float* invstd,
                                             const float* gamma, const float* beta, int N, int H,
                                             int W, int C, int k, ActKind act, float alpha) {
    // dz and p for the sums and again for dx, arg once, dx written
    const double in = double(N) * H * W * C, out = double(N) * (H / k) * (W / k) * C;
    run_op(kPoolBn,
           [&] { return fmt::format("bn+{}+maxpool{} bwd {}x{} C{} N{}", act_name(act), k, H, W, C, N); },
           0, kF * in + (4 * kF + 1) * out, [=, this] {
               in_.bn_act_pool_backward(dx, dgamma, dbeta, dp, dz, p, arg, mean, invstd, gamma,
                                        beta, N, H, W, C, k, act, alpha);
           });
}
void ForwardingBackend::concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                                           int C) {
    run_op(kPool, [&] { return fmt::format("concat pool fwd HW{} C{} N{}", HW, C, N); }, 0,
            kF * N * HW * C + (2 * kF + 1) * N * C, [=, this] { in_.concat_pool_forward(y, arg, x, N, HW, C); });
}
void ForwardingBackend::concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N,
                                            int HW, int C) {
    run_op(kPool, [&] { return fmt::format("concat pool bwd HW{} C{} N{}", HW, C, N); }, 0,
            kF * N * HW * C + (2 * kF + 1) * N * C, [=, this] { in_.concat_pool_backward(dx, dy, arg, N, HW, C); });
}

// ---- linear, loss ------------------------------------------------------------------------------

void ForwardingBackend::linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                                      float scale) {
    run_op(kLinear, [&] { return fmt::format("linear fwd {}->{} N{}", I, O, N); }, 2.0 * N * I * O,
            kF * (double(N) * I + double(O) * I + double(N) * O),
            [=, this] { in_.linear_forward(y, x, w, N, I, O, scale); });
}
void ForwardingBackend::linear_backward(float* dx, float* dw, const float* dy, const float* x,
                                       const float* w, int N, int I, int O, float scale) {
    const double mats = dx ? 2 : 1;
    run_op(kLinear, [&] { return fmt::format("linear bwd {}->{} N{}", I, O, N); },
            mats * 2.0 * N * I * O, kF * (mats * double(N) * I + 2.0 * O * I + double(N) * O),
            [=, this] { in_.linear_backward(dx, dw, dy, x, w, N, I, O, scale); });
}
void ForwardingBackend::cross_entropy(float* dlogits, float* stats, const float* logits,
                                     const int32_t* labels, int N, int O, float smoothing) {
    run_op(kLoss, [&] { return fmt::format("cross entropy N{} O{}", N, O); }, 0, 2 * kF * N * O,
            [=, this] { in_.cross_entropy(dlogits, stats, logits, labels, N, O, smoothing); });
}
void ForwardingBackend::cross_entropy_mixed(float* dlogits, float* stats, const float* logits,
                                           const int32_t* labels, const int32_t* labels2, float mix,
                                           int N, int O, float smoothing) {
    run_op(kLoss, [&] { return fmt::format("cross entropy mixed N{} O{}", N, O); }, 0, 2 * kF * N * O,
            [=, this] { in_.cross_entropy_mixed(dlogits, stats, logits, labels, labels2, mix, N, O, smoothing); });
}

// ---- optimizer ---------------------------------------------------------------------------------

void ForwardingBackend::sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                                    float momentum) {
    run_op(kOpt, [&] { return nv("sgd nesterov", n); }, 0, 5 * kF * n,  // p, buf, g read; p, buf written
            [=, this] { in_.sgd_nesterov(p, buf, g, n, lr, wd, momentum); });
}
void ForwardingBackend::sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr,
                                             float wd, float momentum) {
    run_op(kOpt, [&] { return nv("sgd nesterov (lr in velocity)", n); }, 0, 5 * kF * n,
            [=, this] { in_.sgd_nesterov_velocity(p, v, g, n, lr, wd, momentum); });
}
void ForwardingBackend::sgd_nesterov_ranges(float* p, float* buf, const float* g,
                                            const SgdRange* ranges_host, int count,
                                            float momentum, bool velocity) {
    if (count < 0 || count > kMaxSgdRanges)
        fail("sgd_nesterov_ranges: {} ranges (at most {})", count, kMaxSgdRanges);
    std::array<SgdRange, kMaxSgdRanges> r{};  // a copy: the closure may run later
    size_t n = 0;
    for (int k = 0; k < count; ++k) {
        r[size_t(k)] = ranges_host[k];
        if (ranges_host[k].end > ranges_host[k].begin) n += ranges_host[k].end - ranges_host[k].begin;
    }
    run_op(kOpt, [&] { return fmt::format("sgd nesterov{}, {} ranges, {} values", velocity ? " (lr in velocity)" : "", count, n); },
           0, 5 * kF * double(n),  // p, buf, g read; p, buf written
           [=, this] { in_.sgd_nesterov_ranges(p, buf, g, r.data(), count, momentum, velocity); });
}
void ForwardingBackend::lerp_assign(float* ema, float* p, size_t n, float t) {
    run_op(kOpt, [&] { return nv("lerp (lookahead / EMA)", n); }, 0, 4 * kF * n,
            [=, this] { in_.lerp_assign(ema, p, n, t); });
}
void ForwardingBackend::axpy(float* y, const float* x, float a, size_t n) {
    // (TTA's logit sums and the optimizers use it)
    run_op(kElt, [&] { return nv("axpy", n); }, 2.0 * n, 3 * kF * n, [=, this] { in_.axpy(y, x, a, n); });
}
void ForwardingBackend::residual_add(float* y, const float* x, size_t n) {
    run_op(kElt, [&] { return nv("residual add", n); }, double(n), 3 * kF * n,
           [=, this] { in_.residual_add(y, x, n); });
}
void ForwardingBackend::scale(float* x, float a, size_t n) {
    run_op(kElt, [&] { return nv("scale", n); }, double(n), 2 * kF * n, [=, this] { in_.scale(x, a, n); });
}
void ForwardingBackend::scale_to_norm(float* x, size_t n, float target, float eps) {
    run_op(kOpt, [&] { return nv("scale to norm", n); }, 3.0 * n, 3 * kF * n,
            [=, this] { in_.scale_to_norm(x, n, target, eps); });
}
void ForwardingBackend::scale_to_norm_segments(float* x, const int64_t* offsets,
                                               const float* targets, int count, float target,
                                               float eps) {
    // (the sizes are in device memory: no bytes or FLOPs counted)
    run_op(kOpt, [&] { return fmt::format("scale to norm, {} segments", count); }, 0, 0,
           [=, this] { in_.scale_to_norm_segments(x, offsets, targets, count, target, eps); });
}
void ForwardingBackend::momentum_direction(float* u, float* buf, const float* g, size_t n,
                                          float momentum, bool nesterov) {
    run_op(kOpt, [&] { return nv("momentum direction", n); }, 0, 4 * kF * n,
            [=, this] { in_.momentum_direction(u, buf, g, n, momentum, nesterov); });
}
void ForwardingBackend::gemm(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
                            bool trans_b, float alpha, float beta) {
    run_op(kLinear, [&] { return fmt::format("gemm {}x{}x{}", M, N, K); }, 2.0 * M * N * K,
            kF * (double(M) * K + double(K) * N + (beta != 0 ? 2.0 : 1.0) * M * N),
            [=, this] { in_.gemm(C, A, B, M, N, K, trans_a, trans_b, alpha, beta); });
}

// ---- data --------------------------------------------------------------------------------------

void ForwardingBackend::normalize_pad(float* out, const uint8_t* in, int N, int H, int W,
                                     const float* mean_host, const float* std_host, int pad) {
    run_op(kAug, [&] { return fmt::format("normalize + pad N{}", N); }, 0,
            double(N) * H * W * 3 + kF * N * (H + 2 * pad) * (W + 2 * pad) * 3,
            [=, this] { in_.normalize_pad(out, in, N, H, W, mean_host, std_host, pad); });
}
void ForwardingBackend::gather_crops(float* out, const float* src, int H, int W, int pad, int B,
                                    const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                                    const uint8_t* flips, int flip) {
    run_op(kAug, [&] { return fmt::format("gather crops B{}", B); }, 0, 2 * kF * B * H * W * 3, [=, this] {
        in_.gather_crops(out, src, H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
    });
}
void ForwardingBackend::brightness_contrast(float* x, const float* shift, const float* gain, int B,
                                           size_t per_image) {
    run_op(kAug, [&] { return fmt::format("brightness + contrast B{}", B); }, 0, 2 * kF * B * per_image,
            [=, this] { in_.brightness_contrast(x, shift, gain, B, per_image); });
}
void ForwardingBackend::cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) {
    run_op(kAug, [&] { return fmt::format("cutout {}x{} B{}", size, size, B); }, 0,
            kF * B * size * size * C, [=, this] { in_.cutout(x, pos, B, H, W, C, size); });
}
void ForwardingBackend::cutmix(float* x, const float* src, const uint8_t* pos, int B, int H,
                               int W, int C, int size) {
    run_op(kAug, [&] { return fmt::format("cutmix {}x{} B{}", size, size, B); }, 0,
            2 * kF * B * size * size * C, [=, this] { in_.cutmix(x, src, pos, B, H, W, C, size); });
}
void ForwardingBackend::patch_covariance(double* cov_host, double* mean_host, const float* x, int N,
                                        int H, int W, int C, int k) {
    const double D = double(C) * k * k, patches = double(N) * (H - k + 1) * (W - k + 1);
    run_op(kAug, [&] { return fmt::format("patch covariance N{} D{}", N, int(D)); }, 2.0 * patches * D * D,
            kF * N * H * W * C, [=, this] { in_.patch_covariance(cov_host, mean_host, x, N, H, W, C, k); });
}

}  // namespace sr
