// cuda_backend.cpp: CudaBackend, the sr::Backend that runs on one NVIDIA GPU, and the factory
// sr::make_cuda_backend. It owns the one cudaStream_t that every op, copy and library call runs
// on, the cuDNN and cuBLAS contexts bound to it, the device memory handed out by alloc()
// (tracked: current and peak bytes) and one scratch buffer that ops needing temporary device
// memory share (ops on one stream run one after the other). The ops of its own kernels come
// from cuda::KernelOps (kernel_ops.h: the sr::cuda:: functions of the .cu files, cuda_ops.h);
// convolutions, the linear layer and the products go to the two library wrappers.
// Also defines sr::cuda::fail_at, the one place where CUDA-side errors become sr::Error.
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include <cuda_runtime.h>

#include "core/env.h"
#include "core/error.h"
#include "ops/backend.h"
#include "ops/cuda/cublas_linear.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/cudnn_conv.h"
#include "ops/cuda/kernel_ops.h"

namespace sr {

namespace cuda {

void fail_at(const char* lib, const char* call, const char* file, int line, const char* msg) {
    fail("{}: {} failed at {}:{}: {}", lib, call, file, line, msg);
}

}  // namespace cuda

namespace {

#ifdef SPEEDRUN_CUDA_ARCHS
constexpr const char* kBuiltArchs = SPEEDRUN_CUDA_ARCHS;  // CMAKE_CUDA_ARCHITECTURES
#else
constexpr const char* kBuiltArchs = "the architectures CMake was given";
#endif

// CUDA events on the backend's stream: the GPU's own clock, as the field's timings use.
class CudaTimer final : public DeviceTimer {
public:
    explicit CudaTimer(cudaStream_t s) : stream_(s) {
        CUDA_CHECK(cudaEventCreate(&a_));
        CUDA_CHECK(cudaEventCreate(&b_));
    }
    ~CudaTimer() override {
        cudaEventDestroy(a_);
        cudaEventDestroy(b_);
    }
    void start() override { CUDA_CHECK(cudaEventRecord(a_, stream_)); }
    double stop_seconds() override {
        stop();
        return elapsed();
    }
    void stop() override { CUDA_CHECK(cudaEventRecord(b_, stream_)); }
    double elapsed() override {
        CUDA_CHECK(cudaEventSynchronize(b_));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
        return 1e-3 * ms;
    }

private:
    cudaStream_t stream_;
    cudaEvent_t a_{}, b_{};
};

// One captured CUDA graph, instantiated once.
class CudaRecording final : public Recording {
public:
    CudaRecording(cudaGraph_t g, cudaGraphExec_t e, cudaStream_t s, size_t kernels, size_t nodes)
        : graph_(g), exec_(e), stream_(s), kernels_(kernels), nodes_(nodes) {}
    ~CudaRecording() override {
        cudaGraphExecDestroy(exec_);
        cudaGraphDestroy(graph_);
    }
    void replay() override { CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }
    size_t kernel_count() const override { return kernels_; }
    size_t node_count() const override { return nodes_; }

private:
    cudaGraph_t graph_;
    cudaGraphExec_t exec_;
    cudaStream_t stream_;
    size_t kernels_, nodes_;
};

class CudaBackend final : public cuda::KernelOps<Backend> {
public:
    CudaBackend(int device, Storage storage, bool tf32)
        : device_(device), storage_(storage), tf32_(tf32) {
        CUDA_CHECK(cudaSetDevice(device));
        cudaDeviceProp prop{};
        CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
        if (const cudaError_t e = cuda::kernel_image_status(); e != cudaSuccess)
            fail("this build has no code for the {} (sm_{}{}: {}); it was compiled for {}. Rebuild "
                 "on this machine (CMake adds the GPU it finds) or with "
                 "-DCMAKE_CUDA_ARCHITECTURES={}{}-real if nvcc supports it",
                 prop.name, prop.major, prop.minor, cudaGetErrorName(e), kBuiltArchs, prop.major,
                 prop.minor);
        if (storage == Storage::bf16 && prop.major < 8)
            fail("bf16 storage needs a GPU of compute capability 8.0 or newer (cuDNN's bf16 "
                 "convolutions); the {} is sm_{}{}: use --storage fp16 (or fp32)",
                 prop.name, prop.major, prop.minor);
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        try {
            cudnn_ = cuda::make_cudnn_context(stream_, tf32);
            cublas_ = cuda::make_cublas_context(stream_);
        } catch (...) {  // the destructor does not run for a half-built object
            cudnn_.reset();
            cudaStreamDestroy(stream_);
            throw;
        }
        int rt = 0;
        CUDA_CHECK(cudaRuntimeGetVersion(&rt));
        name_ = fmt::format("cuda ({}, sm_{}{}, {:.0f} GiB, CUDA runtime {}.{}, cuDNN {}, cuBLAS {})",
                            prop.name, prop.major, prop.minor,
                            double(prop.totalGlobalMem) / double(1ull << 30), rt / 1000,
                            (rt % 1000) / 10, cuda::cudnn_version(),
                            cuda::cublas_version(*cublas_));
    }

    ~CudaBackend() override {
        cudaSetDevice(device_);
        cudaStreamSynchronize(stream_);
        if (scratch_) cudaFree(scratch_);
        for (void* p : retired_) cudaFree(p);
        // Memory the caller never released (DeviceBuffers outliving the backend would be a bug
        // in the caller; free what is left so the device is clean).
        for (auto& [p, bytes] : sizes_) cudaFree(p);
        cudnn_.reset();
        cublas_.reset();
        cudaStreamDestroy(stream_);
    }

    Device device() const override { return Device::cuda; }
    std::string name() const override {
        return storage_ == Storage::f32
                   ? name_
                   : fmt::format("{}, {} activation storage", name_, storage_name(storage_));
    }
    Storage storage() const override { return storage_; }

    // ---- memory -----------------------------------------------------------------------------
    void* alloc(size_t bytes) override {
        if (bytes == 0) bytes = 1;
        void* p = nullptr;
        const cudaError_t e = cudaMalloc(&p, bytes);
        if (e != cudaSuccess) {
            cudaGetLastError();  // clear it: an out-of-memory error is not sticky
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            fail("cuda: cannot allocate {} bytes ({:.1f} MiB) on device {}: {} ({:.1f} MiB free "
                 "of {:.1f} MiB; {:.1f} MiB held by this backend)",
                 bytes, bytes / 1048576.0, device_, cudaGetErrorString(e), free_b / 1048576.0,
                 total_b / 1048576.0, current_ / 1048576.0);
        }
        CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
        sizes_[p] = bytes;
        current_ += bytes;
        if (current_ > peak_) peak_ = current_;
        return p;
    }

    // Called from ~DeviceBuffer (noexcept): reports errors instead of throwing, and frees the
    // block either way. An error here is usually an earlier kernel's fault (sticky): rerun with
    // CUDA_LAUNCH_BLOCKING=1 to see which op.
    void release(void* p) override {
        if (!p) return;
        const cudaError_t e = cudaStreamSynchronize(stream_);  // queued work may still use p
        if (e != cudaSuccess)
            std::fprintf(stderr, "speedrun: cuda: release: waiting for the stream failed: %s\n",
                         cudaGetErrorString(e));
        auto it = sizes_.find(p);
        if (it != sizes_.end()) {
            current_ -= it->second;
            sizes_.erase(it);
        } else {
            std::fprintf(stderr, "speedrun: cuda: release of %p, which this backend did not "
                         "allocate\n", p);
        }
        const cudaError_t f = cudaFree(p);
        if (f != cudaSuccess)
            std::fprintf(stderr, "speedrun: cuda: cudaFree failed: %s\n", cudaGetErrorString(f));
    }

    // Waits until the copy is done, so src_host may be reused or freed at once, pinned or not
    // (uploads happen outside the training steps: the wait costs nothing that matters).
    void upload(void* dst, const void* src_host, size_t bytes) override {
        if (bytes == 0) return;
        CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, stream_));
        CUDA_CHECK(cudaStreamSynchronize(stream_));
    }

    void download(void* dst_host, const void* src, size_t bytes) override {
        if (bytes == 0) return;
        CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, stream_));
        CUDA_CHECK(cudaStreamSynchronize(stream_));
    }

    void copy(void* dst, const void* src, size_t bytes) override {
        if (bytes == 0) return;
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    }

    void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

    size_t peak_bytes() const override { return peak_; }
    // Stream capture in thread-local mode: a call that cannot be captured (a synchronisation, an
    // allocation) fails in this thread and invalidates the capture, which end_recording reports.
    // false (the caller runs the ops directly) where capture cannot start.
    bool begin_recording() override {
        const cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
        if (e != cudaSuccess) {
            std::fprintf(stderr, "speedrun: cuda: stream capture could not start: %s\n",
                         cudaGetErrorString(e));
            cudaGetLastError();
            return false;
        }
        return true;
    }
    std::unique_ptr<Recording> end_recording(std::string* why) override {
        cudaGraph_t g = nullptr;
        cudaError_t e = cudaStreamEndCapture(stream_, &g);
        if (e != cudaSuccess || !g) {
            if (why) *why = std::string("stream capture failed: ") + cudaGetErrorString(e);
            cudaGetLastError();  // clear the sticky-free error so the backend stays usable
            if (g) cudaGraphDestroy(g);
            return nullptr;
        }
        size_t n = 0;
        CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &n));
        std::vector<cudaGraphNode_t> nodes(n);
        CUDA_CHECK(cudaGraphGetNodes(g, nodes.data(), &n));
        size_t kernels = 0;
        for (cudaGraphNode_t node : nodes) {
            cudaGraphNodeType t;
            CUDA_CHECK(cudaGraphNodeGetType(node, &t));
            kernels += t == cudaGraphNodeTypeKernel;
        }
        cudaGraphExec_t exec = nullptr;
        e = cudaGraphInstantiate(&exec, g, 0);
        if (e != cudaSuccess) {
            if (why) *why = std::string("graph instantiation failed: ") + cudaGetErrorString(e);
            cudaGetLastError();
            cudaGraphDestroy(g);
            return nullptr;
        }
        return std::make_unique<CudaRecording>(g, exec, stream_, kernels, n);
    }

    std::unique_ptr<DeviceTimer> make_timer() override { return std::make_unique<CudaTimer>(stream_); }

    // ---- convolution ------------------------------------------------------------------------
    std::unique_ptr<Conv2d> make_conv(const ConvShape& s) override {
        return cuda::make_cudnn_conv(*cudnn_, s, storage_);
    }

    void* native_stream() override { return stream_; }

    // ---- linear -----------------------------------------------------------------------------
    // In 16-bit storage the head's input is widened to fp32 scratch and its input gradient
    // rounded back: the product itself is fp32 (tiny: N x I x 10), as the CPU reference does.
    void linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                        float scale) override {
        if (storage_ != Storage::f32) {
            const size_t n = size_t(N) * I;
            float* xs = static_cast<float*>(scratch(n * sizeof(float)));
            cuda::from_storage(stream_, storage_, xs, x, n);
            x = xs;
        }
        cuda::linear_forward(*cublas_, y, x, w, N, I, O, scale);
    }
    void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                         int N, int I, int O, float scale) override {
        if (storage_ == Storage::f32) return cuda::linear_backward(*cublas_, dx, dw, dy, x, w, N, I, O, scale);
        const size_t n = size_t(N) * I;
        float* xs = static_cast<float*>(scratch(2 * n * sizeof(float)));
        float* dxs = xs + n;
        cuda::from_storage(stream_, storage_, xs, x, n);
        cuda::linear_backward(*cublas_, dx ? dxs : nullptr, dw, dy, xs, w, N, I, O, scale);
        if (dx) cuda::to_storage(stream_, storage_, dx, dxs, n);
    }

    void gemm(float* C, const float* A, const float* B, int M, int N, int K, bool ta, bool tb,
              float alpha, float beta) override {
        cuda::gemm(*cublas_, C, A, B, M, N, K, ta, tb, alpha, beta);
    }
    std::unique_ptr<GemmList> make_gemm_list(std::vector<GemmItem> items, GemmMath math) override;
    GemmPeak measure_gemm_peak() override {
        CUDA_CHECK(cudaStreamSynchronize(stream_));
        return cuda::measure_gemm_peak(*cublas_, stream_);
    }

protected:
    cudaStream_t kernel_stream() override { return stream_; }
    void* kernel_scratch(size_t bytes) override { return scratch(bytes); }

private:
    // The shared scratch buffer, grown to at least bytes. Not counted in peak_bytes (which the
    // contract defines as memory from alloc()); it is about the size of one activation's
    // per-channel partial sums. A smaller one it replaces is kept until the backend goes
    // (retired_), not freed: queued work or a recording (CUDA graph) may still use its address.
    // Growing cannot happen while recording (cudaMalloc invalidates a capture); the trainer
    // records only after a step has run directly, which grows it to what the steps need.
    void* scratch(size_t bytes) {
        if (bytes > scratch_bytes_) {
            void* p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, bytes));
            if (scratch_) retired_.push_back(scratch_);
            scratch_ = p;
            scratch_bytes_ = bytes;
        }
        return scratch_;
    }

    int device_;
    Storage storage_;
    bool tf32_;  // TF32 tensor cores allowed (convolutions in fp32 storage, GemmMath::tf32 lists)
    cudaStream_t stream_ = nullptr;
    cuda::CudnnContextPtr cudnn_;
    cuda::CublasContextPtr cublas_;
    std::string name_;
    std::unordered_map<void*, size_t> sizes_;
    size_t current_ = 0, peak_ = 0;
    void* scratch_ = nullptr;
    size_t scratch_bytes_ = 0;
    std::vector<void*> retired_;  // scratch buffers replaced by larger ones
};

// A GemmList as one grouped cuBLAS call; the pointer arrays it reads are device memory of the
// backend (counted in its peak), held as long as the list.
class CudaGemmList final : public GemmList {
public:
    CudaGemmList(Backend& b, cuda::CublasContext& ctx, std::vector<GemmItem> items, bool tf32)
        : GemmList(std::move(items)),
          ptrs_(b, 3 * items_.size()),
          plan_(ctx, items_, ptrs_.get(), tf32) {}
    void run(float alpha, float beta) override { plan_.run(alpha, beta); }

private:
    DeviceBuffer<const float*> ptrs_;
    cuda::GroupedGemm plan_;
};

// GemmMath::tf32 uses TF32 where the backend allows it; SPEEDRUN_GEMM_LIST_TF32=0 keeps these
// lists in fp32 (to time both in one session: `speedrun bench --profile`, "gemm list").
std::unique_ptr<GemmList> CudaBackend::make_gemm_list(std::vector<GemmItem> items,
                                                      GemmMath math) {
    const bool tf32 =
        math == GemmMath::tf32 && tf32_ && env_switch("SPEEDRUN_GEMM_LIST_TF32", true);
    return std::make_unique<CudaGemmList>(*this, *cublas_, std::move(items), tf32);
}

}  // namespace

bool cuda_compiled() { return true; }

int cuda_device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // no driver or no GPU: not an error here
        return 0;
    }
    return count;
}

int cuda_compute_capability(int device_index) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_index) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_index) != cudaSuccess) {
        cudaGetLastError();  // no such device: not an error here
        return 0;
    }
    return 10 * major + minor;
}

std::unique_ptr<Backend> make_cuda_backend(int device_index, std::string* why_not,
                                           Storage storage, bool tf32) {
    auto no = [&](std::string reason) -> std::unique_ptr<Backend> {
        if (why_not) *why_not = std::move(reason);
        return nullptr;
    };
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return no(fmt::format("cudaGetDeviceCount failed: {} ({}); no NVIDIA driver or GPU here?",
                              cudaGetErrorString(e), cudaGetErrorName(e)));
    }
    if (count == 0) return no("no CUDA device found (cudaGetDeviceCount returned 0)");
    if (device_index < 0 || device_index >= count)
        return no(fmt::format("CUDA device {} asked for, but only devices 0..{} exist",
                              device_index, count - 1));
    try {
        return std::make_unique<CudaBackend>(device_index, storage, tf32);
    } catch (const std::exception& ex) {
        return no(fmt::format("CUDA device {} could not be set up: {}", device_index, ex.what()));
    }
}

}  // namespace sr
