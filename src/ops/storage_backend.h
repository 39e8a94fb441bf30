// storage_backend.h: 16-bit activation storage (Storage::f16 / bf16, ops/backend.h) on the CPU.
//
// StorageBackend is the CPU reference of a mixed-precision backend: it hands every op to the
// fp32 CPU backend (ops/forwarding_backend.h) and keeps the activation arguments in 16 bits, as
// a GPU stores them: each op unpacks its activation inputs to fp32, runs the fp32 op, and packs
// its activation outputs (round to nearest even, saturating). The convolutions compute with
// their weights rounded to the format and return the weight gradient rounded to it; everything
// that is not an activation stays fp32 (the list is in backend.h, "Storage"). It is slow (every
// op converts its tensors twice) and exists to define and check the contract: the network and
// the trainer must pass activation buffers only where the contract says (a slip reads 16-bit
// values as floats and shows at once), and a CUDA backend with 16-bit storage is compared with it.
//
// The values it computes equal those of RoundingBackend (ops/rounding_backend.h) with the same
// format, which rounds the same tensors in fp32 containers (tests/ops/test_storage_backend.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ops/forwarding_backend.h"

namespace sr {

// "fp32", "fp16", "bf16" -> Storage; false for any other name.
bool parse_storage(const std::string& name, Storage* out);

// Host conversions of one value: x rounded to nearest even (saturating at the largest finite
// value, NaN kept) and encoded; decoding is exact.
uint16_t to_half_bits(float x);
float from_half_bits(uint16_t h);
uint16_t to_bf16_bits(float x);
float from_bf16_bits(uint16_t h);

// n host values to and from the storage format s (f32: a plain copy of 4n bytes).
void pack_storage(void* dst, const float* src, size_t n, Storage s);
void unpack_storage(float* dst, const void* src, size_t n, Storage s);

// n host floats into the activation buffer dst of b (rounded to b.storage()), and back.
void upload_activations(Backend& b, float* dst, const float* host, size_t n);
void download_activations(Backend& b, float* host, const float* src, size_t n);

namespace detail {
struct OwnedBackend {  // (initialised before ForwardingBackend, which refers to it)
    std::unique_ptr<Backend> owned;
};
}  // namespace detail

class StorageBackend final : private detail::OwnedBackend, public PiecewiseForwardingBackend {
public:
    // inner must be a CPU backend with fp32 storage; s is f16 or bf16.
    StorageBackend(Backend& inner, Storage s);
    // the same, owning inner
    StorageBackend(std::unique_ptr<Backend> inner, Storage s);
    Storage storage() const override { return s_; }
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

    void gelu_forward(float* y, const float* x, size_t n) override;
    void gelu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void silu_forward(float* y, const float* x, size_t n) override;
    void silu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void relu_forward(float* y, const float* x, size_t n) override;
    void relu_backward(float* dx, const float* dy, const float* x, size_t n) override;
    void celu_forward(float* y, const float* x, size_t n, float alpha) override;
    void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) override;
    void residual_add(float* y, const float* x, size_t n) override;

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
    void patch_covariance(double* cov_host, double* mean_host, const float* x, int N, int H, int W,
                          int C, int k) override;

    // fp32 scratch: slot i holds at least n floats (kept between calls; the CPU reference is
    // not on the fast path)
    float* scratch(int slot, size_t n);
    // slot `slot` := the n activations at p, unpacked
    const float* in(int slot, const float* p, size_t n);
    // the n floats at src packed into the activation buffer p
    void out(float* p, const float* src, size_t n) { pack_storage(p, src, n, s_); }
    // n fp32 values rounded to the format in place (conv weights and their gradient)
    void round(float* x, size_t n);

private:
    void check_inner() const;  // the constructors' preconditions
    Storage s_;
    std::vector<float> slots_[3];
};

}  // namespace sr
