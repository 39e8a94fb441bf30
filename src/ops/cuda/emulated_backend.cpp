// emulated_backend.cpp: see emulated_backend.h. Compiled with the emulation's flags (the name
// `cuda` is `cuda_emu` here: tests/CMakeLists.txt), so cuda::KernelOps calls the emulated
// launchers.
#include "ops/cuda/emulated_backend.h"

#include <string>
#include <vector>

#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/kernel_ops.h"
#include "ops/storage_backend.h"

namespace sr {
namespace {

// A convolution as CudnnConv2d (cudnn_conv.cpp) splits it: conv_small's forward where it
// applies (weights in the storage format), the bias and its gradient by the batchnorm.cu
// kernels, the rest (cuDNN's part) by the CPU.
class EmulatedConv final : public Conv2d {
public:
    EmulatedConv(std::unique_ptr<Conv2d> inner, Storage s)
        : Conv2d(inner->shape), inner_(std::move(inner)), s_(s) {}

    void forward(float* y, const float* x, const float* w, const float* bias) override {
        if (cuda::conv_small_applies(shape, y)) {
            cuda::conv_small_forward(nullptr, s_, y, x, stored(w), bias, shape);
            return;
        }
        inner_->forward(y, x, w, nullptr);
        if (bias) cuda::add_channel_bias(nullptr, s_, y, bias, rows(), shape.K);
    }
    void backward_data(float* dx, const float* dy, const float* w) override {
        refuse_unplanned("backward_data", true, false);
        inner_->backward_data(dx, dy, w);
    }
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override {
        refuse_unplanned("backward_weights", false, dw != nullptr);
        if (dw) inner_->backward_weights(dw, nullptr, dy, x);
        if (db) {
            scratch_.resize(cuda::bn_scratch_bytes(rows(), shape.K) / sizeof(float) + 1);
            cuda::channel_sum(nullptr, s_, scratch_.data(), db, dy, rows(), shape.K);
        }
    }

private:
    int rows() const { return shape.N * shape.P() * shape.Q(); }
    // the weights' 16-bit copy, made with the kernel that CudnnConv2d::stored_weights uses
    const float* stored(const float* w) {
        if (s_ == Storage::f32) return w;
        const size_t n = size_t(shape.K) * shape.R * shape.S * shape.C;
        w_.resize(n);
        cuda::to_storage(nullptr, s_, w_.data(), w, n);
        return w_.data();
    }

    std::unique_ptr<Conv2d> inner_;
    Storage s_;
    std::vector<float> w_, scratch_;
};

// The CPU backends the emulated one forwards to, made before it (base-from-member).
struct HostBackends {
    std::unique_ptr<Backend> cpu, stored;
    Backend& inner() { return stored ? *stored : *cpu; }
};

HostBackends make_host_backends(Storage s) {
    HostBackends h;
    h.cpu = make_cpu_backend(1);
    if (s != Storage::f32) h.stored = std::make_unique<StorageBackend>(*h.cpu, s);
    return h;
}

class EmulatedCudaBackend final : private HostBackends,
                                  public cuda::KernelOps<ForwardingBackend> {
public:
    explicit EmulatedCudaBackend(Storage s)
        : HostBackends(make_host_backends(s)), KernelOps(HostBackends::inner()) {}

    std::string name() const override {
        return "cuda kernels emulated on the host (" + ForwardingBackend::name() + ")";
    }
    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override {
        f();
    }
    std::unique_ptr<Conv2d> make_conv(const ConvShape& s) override {
        return std::make_unique<EmulatedConv>(HostBackends::inner().make_conv(s), storage());
    }

protected:
    cudaStream_t kernel_stream() override { return nullptr; }
    void* kernel_scratch(size_t bytes) override {
        if (scratch_.size() * sizeof(double) < bytes) scratch_.resize(bytes / sizeof(double) + 1);
        return scratch_.data();
    }

private:
    std::vector<double> scratch_;
};

}  // namespace

std::unique_ptr<Backend> make_emulated_cuda_backend(Storage s) {
    return std::make_unique<EmulatedCudaBackend>(s);
}

}  // namespace sr
