// cpu_backend.cpp: the CPU backend: host memory (64-byte aligned, zeroed), oneDNN engine and
// stream, OpenMP thread count, and the dispatch of every Backend op to its sr::cpu twin.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include <dnnl.hpp>
#include <fmt/format.h>
#include <omp.h>

#include "core/error.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/host_memory.h"
#include "ops/cpu/cpu_ops.h"

namespace sr {
namespace {

class CpuTimer final : public DeviceTimer {
public:
    void start() override { t0_ = std::chrono::steady_clock::now(); }
    double stop_seconds() override {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    }

private:
    std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(int threads) : eng_(dnnl::engine::kind::cpu, 0), strm_(eng_) {
        if (threads > 0) omp_set_num_threads(threads);
        threads_ = omp_get_max_threads();
    }
    ~CpuBackend() override {
        for (auto& [p, n] : sizes_) cpu::free_host(p);
    }
    Device device() const override { return Device::cpu; }
    std::string name() const override {
        const dnnl_version_t* v = dnnl_version();
        return fmt::format("cpu (oneDNN {}.{}.{}, {} threads)", v->major, v->minor, v->patch, threads_);
    }

    void* alloc(size_t bytes) override {
        const size_t n = (bytes + 63) / 64 * 64;
        void* p = cpu::alloc_host(n);
        if (!p) fail("out of host memory allocating {} bytes", bytes);
        std::memset(p, 0, n);
        std::lock_guard lock(mu_);
        sizes_[p] = n;
        current_ += n;
        peak_ = std::max(peak_, current_);
        return p;
    }
    void release(void* p) override {
        if (!p) return;
        std::lock_guard lock(mu_);
        auto it = sizes_.find(p);
        SR_CHECK(it != sizes_.end());
        current_ -= it->second;
        sizes_.erase(it);
        cpu::free_host(p);
    }
    void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void synchronize() override {}
    size_t peak_bytes() const override { return peak_; }
    std::unique_ptr<DeviceTimer> make_timer() override { return std::make_unique<CpuTimer>(); }

    std::unique_ptr<Conv2d> make_conv(const ConvShape& s) override {
        return std::make_unique<cpu::CpuConv2d>(s, eng_, strm_, conv_ws_);
    }

    void bn_forward_train(float* y, float* mean, float* invstd, float* rm, float* rv,
                          const float* x, const float* g, const float* b, int M, int C, float eps,
                          float mom) override {
        cpu::bn_forward_train(y, mean, invstd, rm, rv, x, g, b, M, C, eps, mom);
    }
    void bn_forward_eval(float* y, const float* x, const float* rm, const float* rv,
                         const float* g, const float* b, int M, int C, float eps) override {
        cpu::bn_forward_eval(y, x, rm, rv, g, b, M, C, eps);
    }
    void bn_backward(float* dx, float* dg, float* db, const float* dy, const float* x,
                     const float* mean, const float* invstd, const float* g, int M,
                     int C) override {
        cpu::bn_backward(dx, dg, db, dy, x, mean, invstd, g, M, C);
    }
    void bn_act_forward_train(float* z, float* mean, float* invstd, float* rm, float* rv,
                              const float* x, const float* g, const float* b, int M, int C,
                              float eps, float mom, ActKind act, float alpha) override {
        cpu::bn_act_forward_train(z, mean, invstd, rm, rv, x, g, b, M, C, eps, mom, act, alpha);
    }
    void bn_act_forward_eval(float* z, const float* x, const float* rm, const float* rv,
                             const float* g, const float* b, int M, int C, float eps, ActKind act,
                             float alpha) override {
        cpu::bn_act_forward_eval(z, x, rm, rv, g, b, M, C, eps, act, alpha);
    }
    void bn_act_backward(float* dx, float* dg, float* db, const float* dz, const float* x,
                         const float* mean, const float* invstd, const float* g, const float* b,
                         int M, int C, ActKind act, float alpha) override {
        cpu::bn_act_backward(dx, dg, db, dz, x, mean, invstd, g, b, M, C, act, alpha);
    }
    void bn_stats(float* sums, const float* x, const float* cs, float cscale, int M,
                  int C) override {
        cpu::bn_stats(sums, x, cs, cscale, M, C);
    }
    void bn_apply(float* y, float* mean, float* invstd, float* rm, float* rv, const float* x,
                  const float* g, const float* b, const float* sums, const float* cs,
                  float cscale, int64_t count, int M, int C, float eps, float mom) override {
        cpu::bn_apply(y, mean, invstd, rm, rv, x, g, b, sums, cs, cscale, count, M, C, eps, mom);
    }
    void bn_backward_reduce(float* sums, float* dg, float* db, const float* dy, const float* x,
                            const float* mean, const float* invstd, int M, int C) override {
        cpu::bn_backward_reduce(sums, dg, db, dy, x, mean, invstd, M, C);
    }
    void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                           const float* invstd, const float* g, const float* sums, int64_t count,
                           int M, int C) override {
        cpu::bn_backward_apply(dx, dy, x, mean, invstd, g, sums, count, M, C);
    }
    void gelu_forward(float* y, const float* x, size_t n) override { cpu::gelu_forward(y, x, n); }
    void gelu_backward(float* dx, const float* dy, const float* x, size_t n) override {
        cpu::gelu_backward(dx, dy, x, n);
    }
    void relu_forward(float* y, const float* x, size_t n) override { cpu::relu_forward(y, x, n); }
    void relu_backward(float* dx, const float* dy, const float* x, size_t n) override {
        cpu::relu_backward(dx, dy, x, n);
    }
    void celu_forward(float* y, const float* x, size_t n, float alpha) override {
        cpu::celu_forward(y, x, n, alpha);
    }
    void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) override {
        cpu::celu_backward(dx, dy, x, n, alpha);
    }
    void silu_forward(float* y, const float* x, size_t n) override { cpu::silu_forward(y, x, n); }
    void silu_backward(float* dx, const float* dy, const float* x, size_t n) override {
        cpu::silu_backward(dx, dy, x, n);
    }
    void maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W, int C,
                         int k) override {
        cpu::maxpool_forward(y, arg, x, N, H, W, C, k);
    }
    void maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H, int W,
                          int C, int k) override {
        cpu::maxpool_backward(dx, dy, arg, N, H, W, C, k);
    }
    void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                             int C) override {
        cpu::concat_pool_forward(y, arg, x, N, HW, C);
    }
    void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int HW,
                              int C) override {
        cpu::concat_pool_backward(dx, dy, arg, N, HW, C);
    }
    void linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                        float scale) override {
        cpu::linear_forward(y, x, w, N, I, O, scale);
    }
    void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                         int N, int I, int O, float scale) override {
        cpu::linear_backward(dx, dw, dy, x, w, N, I, O, scale);
    }
    void cross_entropy(float* dl, float* stats, const float* logits, const int32_t* labels,
                       int N, int O, float s) override {
        cpu::cross_entropy(dl, stats, logits, labels, N, O, s);
    }
    void cross_entropy_mixed(float* dl, float* stats, const float* logits, const int32_t* labels,
                             const int32_t* labels2, float mix, int N, int O, float s) override {
        cpu::cross_entropy_mixed(dl, stats, logits, labels, labels2, mix, N, O, s);
    }
    void sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                      float m) override {
        cpu::sgd_nesterov(p, buf, g, n, lr, wd, m);
    }
    void sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr, float wd,
                               float m) override {
        cpu::sgd_nesterov_velocity(p, v, g, n, lr, wd, m);
    }
    void sgd_nesterov_ranges(float* p, float* buf, const float* g, const SgdRange* ranges,
                             int count, float momentum, bool velocity) override {
        cpu::sgd_nesterov_ranges(p, buf, g, ranges, count, momentum, velocity);
    }
    void lerp_assign(float* ema, float* p, size_t n, float t) override {
        cpu::lerp_assign(ema, p, n, t);
    }
    void axpy(float* y, const float* x, float a, size_t n) override { cpu::axpy(y, x, a, n); }
    void residual_add(float* y, const float* x, size_t n) override { cpu::axpy(y, x, 1.f, n); }
    void scale(float* x, float a, size_t n) override { cpu::scale(x, a, n); }
    void scale_to_norm(float* x, size_t n, float target, float eps) override {
        cpu::scale_to_norm(x, n, target, eps);
    }
    void momentum_direction(float* u, float* buf, const float* g, size_t n, float momentum,
                            bool nesterov) override {
        cpu::momentum_direction(u, buf, g, n, momentum, nesterov);
    }
    void gemm(float* C, const float* A, const float* B, int M, int N, int K, bool ta, bool tb,
              float alpha, float beta) override {
        cpu::gemm(C, A, B, M, N, K, ta, tb, alpha, beta);
    }
    std::unique_ptr<GemmList> make_gemm_list(std::vector<GemmItem> items, GemmMath) override {
        return std::make_unique<LoopGemmList>(*this, std::move(items));
    }
    void scale_to_norm_segments(float* x, const int64_t* offsets, const float* targets, int count,
                                float target, float eps) override {
        cpu::scale_to_norm_segments(x, offsets, targets, count, target, eps);
    }
    void cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) override {
        cpu::cutout(x, pos, B, H, W, C, size);
    }
    void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W, int C,
                int size) override {
        cpu::cutmix(x, src, pos, B, H, W, C, size);
    }
    void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                             size_t per_image) override {
        cpu::brightness_contrast(x, shift, gain, B, per_image);
    }
    void normalize_pad(float* out, const uint8_t* in, int N, int H, int W, const float* mean,
                       const float* std, int pad) override {
        cpu::normalize_pad(out, in, N, H, W, mean, std, pad);
    }
    void gather_crops(float* out, const float* src, int H, int W, int pad, int B,
                      const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                      const uint8_t* flips, int flip) override {
        cpu::gather_crops(out, src, H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
    }
    void patch_covariance(double* cov, double* mean, const float* x, int N, int H, int W,
                          int C, int k) override {
        cpu::patch_covariance(cov, mean, x, N, H, W, C, k);
    }

private:
    dnnl::engine eng_;
    dnnl::stream strm_;
    cpu::ConvWorkspace conv_ws_;  // shared by this backend's convolutions
    int threads_ = 1;
    std::mutex mu_;
    std::unordered_map<void*, size_t> sizes_;
    size_t current_ = 0, peak_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
    return std::make_unique<CpuBackend>(threads);
}

}  // namespace sr
