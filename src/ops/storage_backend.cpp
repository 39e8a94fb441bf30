// storage_backend.cpp: see storage_backend.h.
#include "ops/storage_backend.h"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/rounding_backend.h"

namespace sr {

bool parse_storage(const std::string& name, Storage* out) {
    if (name == "fp32") *out = Storage::f32;
    else if (name == "fp16") *out = Storage::f16;
    else if (name == "bf16") *out = Storage::bf16;
    else return false;
    return true;
}

namespace {
const NumberFormat& fmt16() { return emulated_precision("fp16")->forward; }
const NumberFormat& fmtbf() { return emulated_precision("bf16")->forward; }
uint32_t bits_of(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}
float float_of(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
}  // namespace

uint16_t to_half_bits(float x) {
    const float r = round_to(x, fmt16());  // representable in fp16 from here on
    const uint32_t u = bits_of(r);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const float a = std::fabs(r);
    if (a != a) return uint16_t(sign | 0x7e00u);  // NaN
    if (a >= 6.103515625e-05f) {                   // 2^-14: normal
        const uint32_t e = ((u >> 23) & 0xffu) - 127u + 15u;
        return uint16_t(sign | (e << 10) | ((u >> 13) & 0x3ffu));
    }
    return uint16_t(sign | uint32_t(a * 16777216.f));  // subnormal: a multiple of 2^-24
}

float from_half_bits(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        const float v = float(m) * 5.9604644775390625e-08f;  // 2^-24
        return sign ? -v : v;
    }
    if (e == 31) return float_of(sign | 0x7f800000u | (m << 13));  // inf, NaN
    return float_of(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

uint16_t to_bf16_bits(float x) {
    if (x != x) return uint16_t((bits_of(x) >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
    return uint16_t(bits_of(round_to(x, fmtbf())) >> 16);      // exact after rounding
}

float from_bf16_bits(uint16_t h) { return float_of(uint32_t(h) << 16); }

void pack_storage(void* dst, const float* src, size_t n, Storage s) {
    if (s == Storage::f32) {
        std::memmove(dst, src, n * sizeof(float));
        return;
    }
    uint16_t* d = static_cast<uint16_t*>(dst);
    if (s == Storage::f16) {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; ++i) d[i] = to_half_bits(src[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; ++i) d[i] = to_bf16_bits(src[i]);
    }
}

void unpack_storage(float* dst, const void* src, size_t n, Storage s) {
    if (s == Storage::f32) {
        std::memmove(dst, src, n * sizeof(float));
        return;
    }
    const uint16_t* h = static_cast<const uint16_t*>(src);
    if (s == Storage::f16) {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; ++i) dst[i] = from_half_bits(h[i]);
    } else {
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; ++i) dst[i] = from_bf16_bits(h[i]);
    }
}

void upload_activations(Backend& b, float* dst, const float* host, size_t n) {
    if (b.storage() == Storage::f32) return b.upload(dst, host, n * sizeof(float));
    std::vector<uint16_t> packed(n);
    pack_storage(packed.data(), host, n, b.storage());
    b.upload(dst, packed.data(), n * sizeof(uint16_t));
}

void download_activations(Backend& b, float* host, const float* src, size_t n) {
    if (b.storage() == Storage::f32) return b.download(host, src, n * sizeof(float));
    std::vector<uint16_t> packed(n);
    b.download(packed.data(), src, n * sizeof(uint16_t));
    unpack_storage(host, packed.data(), n, b.storage());
}

// ---- the backend ---------------------------------------------------------------------------------

namespace {

// Slots of the scratch: two inputs, one output.
constexpr int kIn0 = 0, kIn1 = 1, kOut0 = 2;

// A convolution over 16-bit activations: the fp32 convolution on unpacked inputs, with the
// weights rounded to the format; the output packed, dw rounded to the format, db fp32.
class StorageConv2d final : public Conv2d {
public:
    StorageConv2d(StorageBackend& sb, std::unique_ptr<Conv2d> inner)
        : Conv2d(inner->shape), sb_(sb), in_(std::move(inner)) {}
    void forward(float* y, const float* x, const float* w, const float* bias) override {
        const float* xs = sb_.in(kIn0, x, inputs());
        float* ys = sb_.scratch(kOut0, outputs());
        in_->forward(ys, xs, rounded(w), bias);
        sb_.out(y, ys, outputs());
    }
    void backward_data(float* dx, const float* dy, const float* w) override {
        const float* dys = sb_.in(kIn0, dy, outputs());
        float* dxs = sb_.scratch(kOut0, inputs());
        in_->backward_data(dxs, dys, rounded(w));
        sb_.out(dx, dxs, inputs());
    }
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override {
        const float* dys = sb_.in(kIn0, dy, outputs());
        const float* xs = dw ? sb_.in(kIn1, x, inputs()) : nullptr;  // (db alone needs no x)
        in_->backward_weights(dw, db, dys, xs);
        if (dw) sb_.round(dw, weights());
    }

private:
    size_t weights() const { return size_t(shape.K) * shape.R * shape.S * shape.C; }
    size_t inputs() const { return size_t(shape.N) * shape.H * shape.W * shape.C; }
    size_t outputs() const { return size_t(shape.N) * shape.P() * shape.Q() * shape.K; }
    const float* rounded(const float* w) {
        wcopy_.assign(w, w + weights());
        sb_.round(wcopy_.data(), wcopy_.size());
        return wcopy_.data();
    }
    StorageBackend& sb_;
    std::unique_ptr<Conv2d> in_;
    std::vector<float> wcopy_;
};

}  // namespace

StorageBackend::StorageBackend(Backend& inner, Storage s)
    : PiecewiseForwardingBackend(inner), s_(s) {
    check_inner();
}

StorageBackend::StorageBackend(std::unique_ptr<Backend> inner, Storage s)
    : detail::OwnedBackend{std::move(inner)}, PiecewiseForwardingBackend(*owned), s_(s) {
    check_inner();
}

void StorageBackend::check_inner() const {
    if (in_.device() != Device::cpu || in_.storage() != Storage::f32)
        fail("the 16-bit storage reference runs on the fp32 CPU backend only");
    if (s_ == Storage::f32) fail("StorageBackend: fp32 storage needs no wrapper");
}

std::string StorageBackend::name() const {
    return fmt::format("{}, {} activation storage (CPU reference)", in_.name(), storage_name(s_));
}

float* StorageBackend::scratch(int slot, size_t n) {
    std::vector<float>& v = slots_[slot];
    if (v.size() < n) v.resize(n);
    return v.data();
}

const float* StorageBackend::in(int slot, const float* p, size_t n) {
    float* d = scratch(slot, n);
    unpack_storage(d, p, n, s_);
    return d;
}

void StorageBackend::round(float* x, size_t n) {
    round_tensor(x, n, s_ == Storage::f16 ? fmt16() : fmtbf());
}

std::unique_ptr<Conv2d> StorageBackend::make_conv(const ConvShape& s) {
    return std::make_unique<StorageConv2d>(*this, in_.make_conv(s));
}

// ---- batch norm ------------------------------------------------------------------------------

void StorageBackend::bn_forward_train(float* y, float* mean, float* invstd, float* rm, float* rv,
                                      const float* x, const float* gamma, const float* beta,
                                      int M, int C, float eps, float momentum) {
    const size_t n = size_t(M) * C;
    float* ys = scratch(kOut0, n);
    in_.bn_forward_train(ys, mean, invstd, rm, rv, in(kIn0, x, n), gamma, beta, M, C, eps, momentum);
    out(y, ys, n);
}
void StorageBackend::bn_forward_eval(float* y, const float* x, const float* rm, const float* rv,
                                     const float* gamma, const float* beta, int M, int C,
                                     float eps) {
    const size_t n = size_t(M) * C;
    float* ys = scratch(kOut0, n);
    in_.bn_forward_eval(ys, in(kIn0, x, n), rm, rv, gamma, beta, M, C, eps);
    out(y, ys, n);
}
void StorageBackend::bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy,
                                 const float* x, const float* mean, const float* invstd,
                                 const float* gamma, int M, int C) {
    const size_t n = size_t(M) * C;
    float* dxs = scratch(kOut0, n);
    in_.bn_backward(dxs, dgamma, dbeta, in(kIn0, dy, n), in(kIn1, x, n), mean, invstd, gamma, M, C);
    out(dx, dxs, n);
}
void StorageBackend::bn_stats(float* sums, const float* x, const float* center_sums,
                              float center_scale, int M, int C) {
    in_.bn_stats(sums, in(kIn0, x, size_t(M) * C), center_sums, center_scale, M, C);
}
void StorageBackend::bn_apply(float* y, float* mean, float* invstd, float* rm, float* rv,
                              const float* x, const float* gamma, const float* beta,
                              const float* sums, const float* center_sums, float center_scale,
                              int64_t count, int M, int C, float eps, float momentum) {
    const size_t n = size_t(M) * C;
    float* ys = scratch(kOut0, n);
    in_.bn_apply(ys, mean, invstd, rm, rv, in(kIn0, x, n), gamma, beta, sums, center_sums,
                 center_scale, count, M, C, eps, momentum);
    out(y, ys, n);
}
void StorageBackend::bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                                        const float* x, const float* mean, const float* invstd,
                                        int M, int C) {
    const size_t n = size_t(M) * C;
    in_.bn_backward_reduce(sums, dgamma, dbeta, in(kIn0, dy, n), in(kIn1, x, n), mean, invstd, M, C);
}
void StorageBackend::bn_backward_apply(float* dx, const float* dy, const float* x,
                                       const float* mean, const float* invstd, const float* gamma,
                                       const float* sums, int64_t count, int M, int C) {
    const size_t n = size_t(M) * C;
    float* dxs = scratch(kOut0, n);
    in_.bn_backward_apply(dxs, in(kIn0, dy, n), in(kIn1, x, n), mean, invstd, gamma, sums, count,
                          M, C);
    out(dx, dxs, n);
}
void StorageBackend::bn_act_forward_train(float* z, float* mean, float* invstd, float* rm,
                                          float* rv, const float* x, const float* gamma,
                                          const float* beta, int M, int C, float eps,
                                          float momentum, ActKind act, float alpha) {
    const size_t n = size_t(M) * C;
    float* zs = scratch(kOut0, n);
    in_.bn_act_forward_train(zs, mean, invstd, rm, rv, in(kIn0, x, n), gamma, beta, M, C, eps,
                             momentum, act, alpha);
    out(z, zs, n);
}
void StorageBackend::bn_act_forward_eval(float* z, const float* x, const float* rm,
                                         const float* rv, const float* gamma, const float* beta,
                                         int M, int C, float eps, ActKind act, float alpha) {
    const size_t n = size_t(M) * C;
    float* zs = scratch(kOut0, n);
    in_.bn_act_forward_eval(zs, in(kIn0, x, n), rm, rv, gamma, beta, M, C, eps, act, alpha);
    out(z, zs, n);
}
void StorageBackend::bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz,
                                     const float* x, const float* mean, const float* invstd,
                                     const float* gamma, const float* beta, int M, int C,
                                     ActKind act, float alpha) {
    const size_t n = size_t(M) * C;
    float* dxs = scratch(kOut0, n);
    in_.bn_act_backward(dxs, dgamma, dbeta, in(kIn0, dz, n), in(kIn1, x, n), mean, invstd, gamma,
                        beta, M, C, act, alpha);
    out(dx, dxs, n);
}

// ---- activations, residual add -----------------------------------------------------------------

#define SR_STORAGE_ACT(NAME, ...)                                                         \
    void StorageBackend::NAME##_forward(float* y, const float* x, size_t n __VA_OPT__(, ) \
                                            __VA_ARGS__) {                                \
        float* ys = scratch(kOut0, n);                                                    \
        in_.NAME##_forward(ys, in(kIn0, x, n), n __VA_OPT__(, alpha));                    \
        out(y, ys, n);                                                                    \
    }                                                                                     \
    void StorageBackend::NAME##_backward(float* dx, const float* dy, const float* x,      \
                                         size_t n __VA_OPT__(, ) __VA_ARGS__) {           \
        float* dxs = scratch(kOut0, n);                                                   \
        in_.NAME##_backward(dxs, in(kIn0, dy, n), in(kIn1, x, n), n __VA_OPT__(, alpha)); \
        out(dx, dxs, n);                                                                  \
    }
SR_STORAGE_ACT(gelu)
SR_STORAGE_ACT(silu)
SR_STORAGE_ACT(relu)
SR_STORAGE_ACT(celu, float alpha)
#undef SR_STORAGE_ACT

void StorageBackend::residual_add(float* y, const float* x, size_t n) {
    float* ys = scratch(kOut0, n);
    unpack_storage(ys, y, n, s_);
    in_.residual_add(ys, in(kIn0, x, n), n);
    out(y, ys, n);
}

// ---- pooling, linear -----------------------------------------------------------------------------

void StorageBackend::maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W,
                                     int C, int k) {
    const size_t nx = size_t(N) * H * W * C, ny = size_t(N) * (H / k) * (W / k) * C;
    float* ys = scratch(kOut0, ny);
    in_.maxpool_forward(ys, arg, in(kIn0, x, nx), N, H, W, C, k);
    out(y, ys, ny);
}
void StorageBackend::maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H,
                                      int W, int C, int k) {
    const size_t nx = size_t(N) * H * W * C, ny = size_t(N) * (H / k) * (W / k) * C;
    float* dxs = scratch(kOut0, nx);
    in_.maxpool_backward(dxs, in(kIn0, dy, ny), arg, N, H, W, C, k);
    out(dx, dxs, nx);
}
void StorageBackend::concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                                         int C) {
    const size_t nx = size_t(N) * HW * C, ny = size_t(N) * 2 * C;
    float* ys = scratch(kOut0, ny);
    in_.concat_pool_forward(ys, arg, in(kIn0, x, nx), N, HW, C);
    out(y, ys, ny);
}
void StorageBackend::concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N,
                                          int HW, int C) {
    const size_t nx = size_t(N) * HW * C, ny = size_t(N) * 2 * C;
    float* dxs = scratch(kOut0, nx);
    in_.concat_pool_backward(dxs, in(kIn0, dy, ny), arg, N, HW, C);
    out(dx, dxs, nx);
}
// x and dx are activations; w, dw, the logits y and their gradient dy are fp32.
void StorageBackend::linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                                    float scale) {
    in_.linear_forward(y, in(kIn0, x, size_t(N) * I), w, N, I, O, scale);
}
void StorageBackend::linear_backward(float* dx, float* dw, const float* dy, const float* x,
                                     const float* w, int N, int I, int O, float scale) {
    const size_t n = size_t(N) * I;
    float* dxs = dx ? scratch(kOut0, n) : nullptr;
    in_.linear_backward(dxs, dw, dy, in(kIn0, x, n), w, N, I, O, scale);
    if (dx) out(dx, dxs, n);
}

// ---- data --------------------------------------------------------------------------------------

void StorageBackend::normalize_pad(float* o, const uint8_t* in8, int N, int H, int W,
                                   const float* mean_host, const float* std_host, int pad) {
    const size_t n = size_t(N) * (H + 2 * pad) * (W + 2 * pad) * 3;
    float* os = scratch(kOut0, n);
    in_.normalize_pad(os, in8, N, H, W, mean_host, std_host, pad);
    out(o, os, n);
    slots_[kOut0] = {};  // (the whole data set: do not keep a copy of it)
}
// A crop selects stored values: done on the 16-bit values directly (src is the whole data set).
void StorageBackend::gather_crops(float* o, const float* src, int H, int W, int pad, int B,
                                  const int32_t* idx, int first, const int8_t* shifts, int sy,
                                  int sx, const uint8_t* flips, int flip) {
    cpu::gather_crops_16(reinterpret_cast<uint16_t*>(o), reinterpret_cast<const uint16_t*>(src),
                         H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
}
void StorageBackend::brightness_contrast(float* x, const float* shift, const float* gain, int B,
                                         size_t per_image) {
    const size_t n = size_t(B) * per_image;
    float* xs = scratch(kOut0, n);
    unpack_storage(xs, x, n, s_);
    in_.brightness_contrast(xs, shift, gain, B, per_image);
    out(x, xs, n);
}
void StorageBackend::cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) {
    const size_t n = size_t(B) * H * W * C;
    float* xs = scratch(kOut0, n);
    unpack_storage(xs, x, n, s_);
    in_.cutout(xs, pos, B, H, W, C, size);
    out(x, xs, n);
}
void StorageBackend::cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W,
                            int C, int size) {
    const size_t n = size_t(B) * H * W * C;
    float* xs = scratch(kOut0, n);
    unpack_storage(xs, x, n, s_);
    in_.cutmix(xs, in(kIn0, src, n), pos, B, H, W, C, size);
    out(x, xs, n);
}
void StorageBackend::patch_covariance(double* cov_host, double* mean_host, const float* x, int N,
                                      int H, int W, int C, int k) {
    in_.patch_covariance(cov_host, mean_host, in(kIn0, x, size_t(N) * H * W * C), N, H, W, C, k);
}

}  // namespace sr
