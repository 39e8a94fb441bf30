// cudnn_conv.cpp: the cuDNN wrapper (with cudnn_graph.cpp, the only files that include cudnn.h):
// CudnnContext (handle on the backend's stream + shared workspace) and CudnnConv2d, the CUDA
// Conv2d.
//
// Storage (ops/backend.h): activations and filters are given to cuDNN in the backend's storage
// format, with fp32 accumulation (the convolution descriptor's compute type): fp32 data, or fp16
// / bf16 on tensor cores ("pseudo-half" configurations). With 16-bit storage the fp32 master
// weights are converted into a 16-bit copy before each forward and backward-data call (a small
// kernel), and the weight gradient, which cuDNN writes in the filter's type, is widened back to
// the fp32 dw: what the CPU reference (ops/storage_backend.h) computes.
//
// Layouts: activations NHWC (cudnnTensor4d NHWC), filters KRSC (cudnnFilter4d with
// format NHWC, which cuDNN reads as K,R,S,C = our OHWI), cross-correlation, ConvShape::stride, symmetric
// zero padding. Math type CUDNN_TENSOR_OP_MATH (kMathType): on fp32 data cuDNN may round the
// inputs to TF32 on tensor cores (about 1e-3 relative per product), which is what PyTorch does by
// default for convolutions (torch.backends.cudnn.allow_tf32 = True; PyTorch sets
// CUDNN_DEFAULT_MATH for fp32 data, which on sm_80 and newer allows TF32 as this one does).
// A context made with tf32 = false uses CUDNN_FMA_MATH instead (plain fp32, for comparisons
// with the CPU: tests/test_backend_network.cpp). Not CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: that
// one also lets cuDNN convert fp32 data to fp16, whose range (6e-8 .. 65504) can flush small
// gradients to zero; reduced precision comes as an explicit choice with its own storage type
// (--storage fp16|bf16), not as a silent conversion.
//
// Algorithms are chosen once per shape: cudnnFind*AlgorithmEx times every algorithm on scratch
// buffers of the real size; if that fails (out of memory, say), cudnnGet*_v7 heuristics decide.
// Either way only algorithms needing at most kWorkspaceLimit bytes are taken, deterministic
// ones that are not FFT or Winograd transforms first (cudnn_pick.h). Each direction has
// its own convolution descriptor, set to the math type its chosen algorithm was timed with.
// With 16-bit storage each direction also gets a plan from cuDNN's graph API (cudnn_graph.h),
// timed on the same buffers against the legacy algorithm (both with CUDA events, the best of 3
// runs of 4 queued calls); the plan is used where it is more than 3% faster and computes what
// the legacy algorithm computes on pseudo-random operands (agrees_with_legacy). fp32 storage
// keeps the legacy path only (its math type, TF32 or FMA, is what the fp32 comparisons rely on).
// A ConvShape::forward_only conv (an evaluation workspace's) searches, tunes and reserves for the
// forward alone and holds no 16-bit gradient buffer; likewise a conv without the input's
// gradient (no_input_grad: the network's first) or the weights' (frozen_weights: the whitening
// conv) leaves out that direction.
// The bias (forward) and db (backward_weights) use the small kernels of batchnorm.cu. The
// forward of a layer with at most 4 input channels (the whitening conv) is conv_small.cu's.
#include "ops/cuda/cudnn_conv.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <cudnn.h>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/cudnn_graph.h"
#include "ops/cuda/cudnn_pick.h"
#include "ops/storage_backend.h"  // unpack_storage

namespace sr::cuda {

namespace {
constexpr size_t kWorkspaceLimit = size_t(512) << 20;  // per algorithm, bytes
// A graph-API plan is checked against the legacy algorithm on this many bytes of results at each
// end of the result tensor, and must agree within this fraction of the largest value.
constexpr size_t kCheckBytes = size_t(1) << 20;
constexpr double kPlanTolerance = 1.0 / 32;
constexpr cudnnDataType_t kComputeType = CUDNN_DATA_FLOAT;  // accumulation, in every storage
constexpr cudnnMathType_t kMathType = CUDNN_TENSOR_OP_MATH;  // TF32 allowed, no fp16 conversion

cudnnDataType_t data_type(Storage s) {
    return s == Storage::f16 ? CUDNN_DATA_HALF : s == Storage::bf16 ? CUDNN_DATA_BFLOAT16
                                                                    : CUDNN_DATA_FLOAT;
}

std::string describe(const ConvShape& s) {
    return fmt::format("conv {}x{} stride {} {}->{} at {}x{} N{}", s.R, s.S, s.stride, s.C, s.K,
                       s.H, s.W, s.N);
}
}  // namespace

// ---- context -------------------------------------------------------------------------------

class CudnnContext {
public:
    CudnnContext(cudaStream_t st, bool tf32)
        : stream(st), math(tf32 ? kMathType : CUDNN_FMA_MATH) {
        CUDNN_CHECK(cudnnCreate(&handle));
        const cudnnStatus_t e = cudnnSetStream(handle, st);
        if (e != CUDNN_STATUS_SUCCESS) {
            cudnnDestroy(handle);  // (the destructor does not run for a half-built object)
            CUDNN_CHECK(e);
        }
    }
    ~CudnnContext() {
        if (workspace) cudaFree(workspace);
        for (void* p : retired) cudaFree(p);
        if (handle) cudnnDestroy(handle);
    }
    CudnnContext(const CudnnContext&) = delete;
    CudnnContext& operator=(const CudnnContext&) = delete;

    // Grows the shared workspace to at least bytes. The smaller one it replaces is kept until
    // the context goes, not freed: queued work or a recording (CUDA graph) may still use it.
    void reserve(size_t bytes) {
        if (bytes <= workspace_bytes) return;
        void* p = nullptr;
        CUDA_CHECK(cudaMalloc(&p, bytes));
        if (workspace) retired.push_back(workspace);
        workspace = p;
        workspace_bytes = bytes;
    }

    cudaStream_t stream;
    cudnnMathType_t math;  // kMathType, or CUDNN_FMA_MATH (no TF32)
    cudnnHandle_t handle = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    std::vector<void*> retired;
};

void CudnnContextDeleter::operator()(CudnnContext* c) const { delete c; }

CudnnContextPtr make_cudnn_context(cudaStream_t st, bool tf32) {
    return CudnnContextPtr(new CudnnContext(st, tf32));
}

size_t cudnn_workspace_bytes(const CudnnContext& ctx) { return ctx.workspace_bytes; }

std::string cudnn_version() {
    const size_t v = cudnnGetVersion();  // major*10000 + minor*100 + patch since cuDNN 9
    char buf[32];
    std::snprintf(buf, sizeof buf, "%zu.%zu.%zu", v / 10000, (v / 100) % 100, v % 100);
    return buf;
}

// ---- RAII pieces -----------------------------------------------------------------------------

namespace {

struct TensorDesc {
    cudnnTensorDescriptor_t d = nullptr;
    TensorDesc() { CUDNN_CHECK(cudnnCreateTensorDescriptor(&d)); }
    ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
    TensorDesc(const TensorDesc&) = delete;
    TensorDesc& operator=(const TensorDesc&) = delete;
};

struct FilterDesc {
    cudnnFilterDescriptor_t d = nullptr;
    FilterDesc() { CUDNN_CHECK(cudnnCreateFilterDescriptor(&d)); }
    ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
    FilterDesc(const FilterDesc&) = delete;
    FilterDesc& operator=(const FilterDesc&) = delete;
};

struct ConvDesc {
    cudnnConvolutionDescriptor_t d = nullptr;
    ConvDesc() { CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d)); }
    ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
    ConvDesc(const ConvDesc&) = delete;
    ConvDesc& operator=(const ConvDesc&) = delete;
};

// Device memory for the algorithm search only.
struct ScratchMem {
    void* p = nullptr;
    explicit ScratchMem(size_t bytes) { CUDA_CHECK(cudaMalloc(&p, bytes)); }
    ~ScratchMem() { cudaFree(p); }
    ScratchMem(const ScratchMem&) = delete;
    ScratchMem& operator=(const ScratchMem&) = delete;
};

// Zero-filled tensors of a convolution's shapes (elements of elem_bytes) and a workspace, for
// timing algorithms and plans on: what the legacy search and the graph-API tuning share. The
// workspace is at most kWorkspaceLimit and half of the memory the tensors leave free. Nothing is
// allocated (ok() false) where the tensors would take more than half of the free device memory.
struct TrialBuffers {
    std::optional<ScratchMem> x, y, w, work;
    size_t ws = 0;  // the workspace's bytes (work holds at least 256)

    TrialBuffers(const ConvShape& s, size_t elem_bytes, cudaStream_t stream) {
        const size_t xb = size_t(s.N) * s.H * s.W * s.C * elem_bytes;
        const size_t yb = size_t(s.N) * s.P() * s.Q() * s.K * elem_bytes;
        const size_t wb = size_t(s.K) * s.R * s.S * s.C * elem_bytes;
        size_t free_b = 0, total_b = 0;
        CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        if (xb + yb + wb > free_b / 2) return;
        ws = std::min(kWorkspaceLimit, (free_b - xb - yb - wb) / 2);
        x.emplace(xb);
        y.emplace(yb);
        w.emplace(wb);
        work.emplace(std::max(ws, size_t(256)));
        CUDA_CHECK(cudaMemsetAsync(x->p, 0, xb, stream));
        CUDA_CHECK(cudaMemsetAsync(y->p, 0, yb, stream));
        CUDA_CHECK(cudaMemsetAsync(w->p, 0, wb, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    bool ok() const { return work.has_value(); }
};

// The result of a search or the heuristics that a direction takes (cudnn_pick.h).
template <class Perf>
int pick(const Perf* perf, int n, cudnnMathType_t math) {
    return pick_algorithm(perf, n, math, kWorkspaceLimit);
}

// ---- the convolution -----------------------------------------------------------------------

class CudnnConv2d final : public Conv2d {
public:
    CudnnConv2d(CudnnContext& ctx, const ConvShape& s, Storage storage)
        : Conv2d(s), ctx_(ctx), storage_(storage) {
        check_shape(s);
        const cudnnDataType_t dtype = data_type(storage);
        // sizes are given as (N, C, H, W) whatever the layout; NHWC says how they are stored
        CUDNN_CHECK(
            cudnnSetTensor4dDescriptor(x_.d, CUDNN_TENSOR_NHWC, dtype, s.N, s.C, s.H, s.W));
        CUDNN_CHECK(
            cudnnSetTensor4dDescriptor(y_.d, CUDNN_TENSOR_NHWC, dtype, s.N, s.K, s.P(), s.Q()));
        // filter (K, C, R, S) stored NHWC = K,R,S,C = our OHWI
        CUDNN_CHECK(
            cudnnSetFilter4dDescriptor(w_.d, dtype, CUDNN_TENSOR_NHWC, s.K, s.C, s.R, s.S));
        for (ConvDesc* c : {&fwd_, &bwd_data_, &bwd_filter_}) {
            CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c->d, s.pad, s.pad, s.stride, s.stride, 1, 1,
                                                        CUDNN_CROSS_CORRELATION, kComputeType));
            CUDNN_CHECK(cudnnSetConvolutionMathType(c->d, ctx_.math));
        }
        int n, k, p, q;
        CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(fwd_.d, x_.d, w_.d, &n, &k, &p, &q));
        CUDA_ASSERT(n == s.N && k == s.K && p == s.P() && q == s.Q());

        if (!find_algorithms()) heuristic_algorithms();

        size_t a = 0, b = 0, c = 0;
        CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(ctx_.handle, x_.d, w_.d, fwd_.d, y_.d,
                                                            fwd_algo_, &a));
        if (s.computes_dx())
            CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
                ctx_.handle, w_.d, y_.d, bwd_data_.d, x_.d, bwd_data_algo_, &b));
        if (s.computes_dw())
            CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
                ctx_.handle, x_.d, y_.d, bwd_filter_.d, w_.d, bwd_filter_algo_, &c));
        if (storage != Storage::f32 && graph_api_enabled()) {
            try {
                tune_graph_plans();
            } catch (const std::exception& e) {  // out of memory for the trial buffers, say
                for (auto& g : graph_) g.reset();
                const cudaError_t last = cudaGetLastError();
                std::fprintf(stderr, "speedrun: cuDNN: trying graph-API plans for %s failed (%s%s%s); "
                             "using the legacy algorithms\n", describe(s).c_str(), e.what(),
                             last != cudaSuccess ? "; " : "",
                             last != cudaSuccess ? cudaGetErrorString(last) : "");
            }
        }
        for (const auto& g : graph_)
            if (g) a = std::max(a, g->workspace_bytes());
        // db reuses the workspace as scratch for its channel reduction.
        const size_t bias = s.forward_only ? 0 : bn_scratch_bytes(s.N * s.P() * s.Q(), s.K);
        ctx_.reserve(std::max({a, b, c, bias, size_t(256)}));
        if (storage != Storage::f32) {
            // 16-bit copies of the weights and (where computed) of their gradient, in one
            // allocation made last (nothing above can throw past it and leak it); each copy
            // 256-byte aligned
            const size_t bytes = (weights() * storage_bytes(storage) + 255) / 256 * 256;
            void* p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, s.computes_dw() ? 2 * bytes : bytes));
            w16_ = static_cast<float*>(p);
            if (s.computes_dw()) dw16_ = reinterpret_cast<float*>(static_cast<char*>(p) + bytes);
        }
    }

    ~CudnnConv2d() override {
        if (w16_) cudaFree(w16_);  // (cudaFree waits for the device: no kernel still reads it)
    }
    void forward(float* y, const float* x, const float* w, const float* bias) override {
        const float one = 1.f, zero = 0.f;
        w = stored_weights(w);
        if (conv_small_applies(shape, y)) {  // few input channels: the direct kernel
            conv_small_forward(ctx_.stream, storage_, y, x, w, bias, shape);
            return;
        }
        if (!run_graph(ConvDirection::forward, x, w, y))
            CUDNN_CHECK(cudnnConvolutionForward(ctx_.handle, &one, x_.d, x, w_.d, w, fwd_.d,
                                                fwd_algo_, ctx_.workspace, ctx_.workspace_bytes,
                                                &zero, y_.d, y));
        if (bias)
            add_channel_bias(ctx_.stream, storage_, y, bias, shape.N * shape.P() * shape.Q(),
                             shape.K);
    }

    void backward_data(float* dx, const float* dy, const float* w) override {
        refuse_unplanned("backward_data", true, false);
        const float one = 1.f, zero = 0.f;
        w = stored_weights(w);
        if (!run_graph(ConvDirection::backward_data, dx, w, dy))
            CUDNN_CHECK(cudnnConvolutionBackwardData(ctx_.handle, &one, w_.d, w, y_.d, dy,
                                                     bwd_data_.d, bwd_data_algo_, ctx_.workspace,
                                                     ctx_.workspace_bytes, &zero, x_.d, dx));
    }

    void backward_weights(float* dw, float* db, const float* dy, const float* x) override {
        refuse_unplanned("backward_weights", false, dw != nullptr);
        if (!dw) {  // the bias gradient alone
            if (db)
                channel_sum(ctx_.stream, storage_, ctx_.workspace, db, dy,
                            shape.N * shape.P() * shape.Q(), shape.K);
            return;
        }
        const float one = 1.f, zero = 0.f;
        float* out = storage_ == Storage::f32 ? dw : dw16_;
        if (!run_graph(ConvDirection::backward_filter, x, out, dy))
            CUDNN_CHECK(cudnnConvolutionBackwardFilter(ctx_.handle, &one, x_.d, x, y_.d, dy,
                                                       bwd_filter_.d, bwd_filter_algo_,
                                                       ctx_.workspace, ctx_.workspace_bytes, &zero,
                                                       w_.d, out));
        if (out != dw) from_storage(ctx_.stream, storage_, dw, out, weights());
        if (db)
            channel_sum(ctx_.stream, storage_, ctx_.workspace, db, dy,
                        shape.N * shape.P() * shape.Q(), shape.K);
    }

private:
    size_t weights() const { return size_t(shape.K) * shape.R * shape.S * shape.C; }

    // The weights as cuDNN reads them: w itself in fp32 storage, else its 16-bit copy.
    const float* stored_weights(const float* w) {
        if (storage_ == Storage::f32) return w;
        to_storage(ctx_.stream, storage_, w16_, w, weights());
        return w16_;
    }

    static void check_shape(const ConvShape& s) {
        CUDA_ASSERT(s.N > 0 && s.H > 0 && s.W > 0 && s.C > 0 && s.K > 0);
        CUDA_ASSERT(s.R > 0 && s.S > 0 && s.pad >= 0 && s.stride >= 1 && s.P() > 0 && s.Q() > 0);
    }

    // Times every algorithm on scratch buffers of the real shapes (zeros). False if the search
    // could not run or found nothing usable.
    bool find_algorithms() {
        try {
            // fp32-sized elements whatever the storage: room for either
            TrialBuffers t(shape, sizeof(float), ctx_.stream);
            if (!t.ok()) return false;
            void *x = t.x->p, *y = t.y->p, *w = t.w->p, *work = t.work->p;
            const size_t ws = t.ws;
            constexpr int kMax = 16;
            int n = 0, i;

            cudnnConvolutionFwdAlgoPerf_t fp[kMax];
            CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(ctx_.handle, x_.d, x, w_.d, w,
                                                               fwd_.d, y_.d, y, kMax, &n, fp,
                                                               work, ws));
            if ((i = pick(fp, n, ctx_.math)) < 0) return false;
            fwd_algo_ = fp[i].algo;
            CUDNN_CHECK(cudnnSetConvolutionMathType(fwd_.d,
                                                   fma_math_for(ctx_.math, fp[i].mathType)));
            if (shape.computes_dx()) {
                cudnnConvolutionBwdDataAlgoPerf_t dp[kMax];
                CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
                    ctx_.handle, w_.d, w, y_.d, y, bwd_data_.d, x_.d, x, kMax, &n, dp, work, ws));
                if ((i = pick(dp, n, ctx_.math)) < 0) return false;
                bwd_data_algo_ = dp[i].algo;
                CUDNN_CHECK(cudnnSetConvolutionMathType(bwd_data_.d,
                                                       fma_math_for(ctx_.math, dp[i].mathType)));
            }
            if (!shape.computes_dw()) return true;

            cudnnConvolutionBwdFilterAlgoPerf_t wp[kMax];
            CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
                ctx_.handle, x_.d, x, y_.d, y, bwd_filter_.d, w_.d, w, kMax, &n, wp, work,
                ws));
            if ((i = pick(wp, n, ctx_.math)) < 0) return false;
            bwd_filter_algo_ = wp[i].algo;
            CUDNN_CHECK(cudnnSetConvolutionMathType(bwd_filter_.d,
                                                   fma_math_for(ctx_.math, wp[i].mathType)));
        } catch (const std::exception& e) {
            // Out of memory for the trial buffers is not sticky: fall back to the heuristics,
            // saying why. A sticky error (an earlier kernel's fault) would fail every later call,
            // so it is reported here, where it shows.
            const cudaError_t last = cudaGetLastError();
            if (cudaStreamSynchronize(ctx_.stream) != cudaSuccess)
                fail_at("cuDNN", "cudnnFind*AlgorithmEx", __FILE__, __LINE__,
                        fmt::format("timing the algorithms for {} failed and the device is in an "
                                    "error state: {}", describe(shape), e.what()).c_str());
            std::fprintf(stderr, "speedrun: cuDNN: timing the algorithms for %s failed (%s%s%s); "
                         "using cuDNN's heuristics\n", describe(shape).c_str(), e.what(),
                         last != cudaSuccess ? "; " : "",
                         last != cudaSuccess ? cudaGetErrorString(last) : "");
            return false;
        }
        return true;
    }

    // The direction's graph-API plan on (x, w, y) as GraphConv::run takes them; false when there
    // is none or an operand's alignment rules it out, and the legacy algorithm then runs. A plan
    // that cuDNN refuses to execute is dropped, with a line saying so, and the legacy algorithm
    // takes over for good.
    bool run_graph(ConvDirection dir, const void* x, const void* w, const void* y) {
        auto& g = graph_[int(dir)];
        if (!g) return false;
        std::string failure;
        if (g->run(ctx_.handle, x, w, y, ctx_.workspace, &failure)) return true;
        if (!failure.empty()) {
            std::fprintf(stderr, "speedrun: cuDNN %s: %s; the legacy algorithm takes over\n",
                         describe(shape).c_str(), failure.c_str());
            g.reset();
        }
        return false;
    }

    // For each direction: the fastest graph-API plan (cudnn_graph.h) against the legacy
    // algorithm chosen above, both timed here on the same scratch buffers (zeros, real sizes);
    // the plan is kept where it beats the legacy time by more than 3%. Anything failing leaves
    // the legacy path, saying why.
    void tune_graph_plans() {
        const ConvShape& s = shape;
        // a forward-only conv whose forward is conv_small's has nothing to tune
        if (!s.computes_dx() && !s.computes_dw() && conv_small_applies(s, nullptr)) return;
        TrialBuffers t(s, storage_bytes(storage_), ctx_.stream);
        if (!t.ok()) return;
        void *x = t.x->p, *y = t.y->p, *w = t.w->p, *work = t.work->p;
        const size_t ws = t.ws;
        size_t legacy_ws[3] = {0, 0, 0};
        CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(ctx_.handle, x_.d, w_.d, fwd_.d, y_.d,
                                                            fwd_algo_, &legacy_ws[0]));
        if (s.computes_dx())
            CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
                ctx_.handle, w_.d, y_.d, bwd_data_.d, x_.d, bwd_data_algo_, &legacy_ws[1]));
        if (s.computes_dw())
            CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
                ctx_.handle, x_.d, y_.d, bwd_filter_.d, w_.d, bwd_filter_algo_, &legacy_ws[2]));
        if (std::max({legacy_ws[0], legacy_ws[1], legacy_ws[2]}) > ws) return;
        const float one = 1.f, zero = 0.f;
        auto legacy = [&](ConvDirection dir) {
            cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
            switch (dir) {
                case ConvDirection::forward:
                    st = cudnnConvolutionForward(ctx_.handle, &one, x_.d, x, w_.d, w, fwd_.d,
                                                 fwd_algo_, work, ws, &zero, y_.d, y);
                    break;
                case ConvDirection::backward_data:
                    st = cudnnConvolutionBackwardData(ctx_.handle, &one, w_.d, w, y_.d, y,
                                                      bwd_data_.d, bwd_data_algo_, work, ws,
                                                      &zero, x_.d, x);
                    break;
                case ConvDirection::backward_filter:
                    st = cudnnConvolutionBackwardFilter(ctx_.handle, &one, x_.d, x, y_.d, y,
                                                        bwd_filter_.d, bwd_filter_algo_, work,
                                                        ws, &zero, w_.d, w);
                    break;
            }
            return st == CUDNN_STATUS_SUCCESS;
        };
        for (ConvDirection dir : {ConvDirection::forward, ConvDirection::backward_data,
                                  ConvDirection::backward_filter}) {
            // a forward that conv_small computes (few input channels) never reaches cuDNN
            if (dir == ConvDirection::forward && conv_small_applies(s, static_cast<float*>(y)))
                continue;
            if ((dir == ConvDirection::backward_data && !s.computes_dx()) ||
                (dir == ConvDirection::backward_filter && !s.computes_dw()))
                continue;  // never called
            std::string why;
            auto plan = GraphConv::tune(ctx_.handle, ctx_.stream, dir, s, data_type(storage_), x,
                                        w, y, work, ws, &why);
            CUDA_CHECK(cudaGetLastError());  // a sticky error from a candidate shows here
            const float legacy_ms = time_on_stream(ctx_.stream, 3, 4, [&] { return legacy(dir); });
            bool take = plan && legacy_ms > 0.f && plan->milliseconds() < 0.97f * legacy_ms;
            if (graph_log())
                std::fprintf(stderr, "speedrun: cuDNN %s %s: graph API %s, legacy algorithm %.4f ms: %s\n",
                             direction_name(dir), describe(s).c_str(),
                             plan ? fmt::format("{} {:.4f} ms (best of {} timed)", plan->engine(),
                                                plan->milliseconds(), plan->candidates()).c_str()
                                  : fmt::format("none ({})", why).c_str(),
                             legacy_ms, take ? "graph" : "legacy");
            if (take && !agrees_with_legacy(dir, *plan, t, legacy)) take = false;
            if (take) graph_[int(dir)] = std::move(plan);
        }
        CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    }

    // Whether a plan computes what the legacy algorithm computes: both run on the same
    // pseudo-random operands (fill_uniform), and three windows of their results (up to
    // kCheckBytes each: the first, middle and last images' maps, or the whole filter)
    // must agree within kPlanTolerance of the largest legacy value. The two sum in different
    // orders and each rounds its result to 16 bits once, so an honest pair differs by about one
    // rounding step (2^-8 of a value in bf16); a plan that reads a layout or stride other than
    // the one described differs by the size of the values. A plan that disagrees is not used,
    // and the program says so. t's buffers are overwritten.
    template <class Legacy>
    bool agrees_with_legacy(ConvDirection dir, GraphConv& plan, TrialBuffers& t, Legacy& legacy) {
        const ConvShape& s = shape;
        const size_t eb = storage_bytes(storage_);
        const size_t nx = size_t(s.N) * s.H * s.W * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K,
                     nw = weights();
        // operands of about unit size in every result: x and dy uniform in [-1, 1), w scaled by
        // 1/sqrt(its fan-in)
        fill_uniform(ctx_.stream, storage_, static_cast<float*>(t.x->p), nx, 0x5eed0001u, 1.f);
        fill_uniform(ctx_.stream, storage_, static_cast<float*>(t.y->p), ny, 0x5eed0002u, 1.f);
        fill_uniform(ctx_.stream, storage_, static_cast<float*>(t.w->p), nw, 0x5eed0003u,
                     1.f / std::sqrt(float(s.R * s.S * s.C)));
        // the direction's result: y (forward), x (dx), w (dw); n its elements
        const auto [out, n] = dir == ConvDirection::forward         ? std::pair{t.y->p, ny}
                              : dir == ConvDirection::backward_data ? std::pair{t.x->p, nx}
                                                                    : std::pair{t.w->p, nw};
        const size_t k = std::min(n, kCheckBytes / eb);  // elements compared in each window
        const size_t at[3] = {0, (n - k) / 2, n - k};    // the first, middle and last k
        std::vector<float> ref(3 * k), got(3 * k);
        std::vector<unsigned char> raw(3 * k * eb);
        auto fetch = [&](std::vector<float>& dst) {
            for (int i = 0; i < 3; ++i)
                CUDA_CHECK(cudaMemcpyAsync(raw.data() + i * k * eb, static_cast<char*>(out) + at[i] * eb,
                                           k * eb, cudaMemcpyDeviceToHost, ctx_.stream));
            CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
            unpack_storage(dst.data(), raw.data(), 3 * k, storage_);
        };
        const bool ran = legacy(dir);
        if (ran) fetch(ref);
        // the plan's result replaces the legacy one in the same buffer; its inputs are untouched.
        // The buffer is first filled with 0xFF bytes (NaN in fp16 and bf16), so an element the
        // plan does not write (a plan that writes elsewhere, or only part of the result) is not
        // finite, instead of still holding the legacy value. (The plan's beta is 0, so it must
        // not read the buffer; an engine that did would fail the check safely: legacy is used.)
        if (ran) CUDA_CHECK(cudaMemsetAsync(out, 0xFF, n * eb, ctx_.stream));
        std::string plan_failure;
        const bool plan_ran =
            ran && plan.run(ctx_.handle, t.x->p, t.w->p, t.y->p, t.work->p, &plan_failure);
        if (plan_ran) fetch(got);
        CUDA_CHECK(cudaGetLastError());
        double largest = 0, worst = 0;
        bool finite = true;
        for (size_t i = 0; i < 3 * k; ++i) {
            finite = finite && std::isfinite(ref[i]) && std::isfinite(got[i]);
            largest = std::max(largest, double(std::fabs(ref[i])));
            worst = std::max(worst, double(std::fabs(got[i] - ref[i])));
        }
        // the next direction is timed on zeros again, as before this check
        CUDA_CHECK(cudaMemsetAsync(t.x->p, 0, nx * eb, ctx_.stream));
        CUDA_CHECK(cudaMemsetAsync(t.y->p, 0, ny * eb, ctx_.stream));
        CUDA_CHECK(cudaMemsetAsync(t.w->p, 0, nw * eb, ctx_.stream));
        const bool ok = plan_ran && finite && largest > 0 && worst <= kPlanTolerance * largest;
        if (!ok || graph_log())
            std::fprintf(stderr,
                         "speedrun: cuDNN %s %s: graph-API plan (%s) against the legacy algorithm "
                         "on random operands: %s; %s\n",
                         direction_name(dir), describe(s).c_str(), plan.engine().c_str(),
                         !ran        ? "the legacy algorithm did not run"
                         : !plan_ran ? fmt::format("the plan did not run{}{}",
                                                   plan_failure.empty() ? "" : ": ", plan_failure)
                                           .c_str()
                                     : fmt::format("largest difference {:.3g} of values up to {:.3g}{}",
                                                   worst, largest, finite ? "" : ", not finite")
                                           .c_str(),
                         ok ? "the plan is used" : "the legacy algorithm is used");
        return ok;
    }

    [[noreturn]] void no_algorithm(const char* direction) {
        fail_at("cuDNN", direction, __FILE__, __LINE__,
                fmt::format("no algorithm for {} fits the workspace limit", describe(shape)).c_str());
    }

    // cuDNN's heuristics, ranked best first: the first that fits the limit.
    void heuristic_algorithms() {
        constexpr int kMax = 16;
        int n = 0, i;
        cudnnConvolutionFwdAlgoPerf_t fp[kMax];
        CUDNN_CHECK(cudnnSetConvolutionMathType(fwd_.d, ctx_.math));
        CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx_.handle, x_.d, w_.d, fwd_.d, y_.d,
                                                           kMax, &n, fp));
        if ((i = pick(fp, n, ctx_.math)) < 0) no_algorithm("forward");
        fwd_algo_ = fp[i].algo;
        CUDNN_CHECK(cudnnSetConvolutionMathType(fwd_.d,
                                               fma_math_for(ctx_.math, fp[i].mathType)));
        if (shape.computes_dx()) {
            cudnnConvolutionBwdDataAlgoPerf_t dp[kMax];
            CUDNN_CHECK(cudnnSetConvolutionMathType(bwd_data_.d, ctx_.math));
            CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx_.handle, w_.d, y_.d,
                                                                    bwd_data_.d, x_.d, kMax, &n, dp));
            if ((i = pick(dp, n, ctx_.math)) < 0) no_algorithm("backward-data");
            bwd_data_algo_ = dp[i].algo;
            CUDNN_CHECK(cudnnSetConvolutionMathType(bwd_data_.d,
                                                   fma_math_for(ctx_.math, dp[i].mathType)));
        }
        if (!shape.computes_dw()) return;

        cudnnConvolutionBwdFilterAlgoPerf_t wp[kMax];
        CUDNN_CHECK(cudnnSetConvolutionMathType(bwd_filter_.d, ctx_.math));
        CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
            ctx_.handle, x_.d, y_.d, bwd_filter_.d, w_.d, kMax, &n, wp));
        if ((i = pick(wp, n, ctx_.math)) < 0) no_algorithm("backward-filter");
        bwd_filter_algo_ = wp[i].algo;
        CUDNN_CHECK(cudnnSetConvolutionMathType(bwd_filter_.d,
                                               fma_math_for(ctx_.math, wp[i].mathType)));
    }

    CudnnContext& ctx_;
    Storage storage_;
    float* w16_ = nullptr;   // 16-bit storage: the weights' copy in the storage format
    float* dw16_ = nullptr;  // and cuDNN's weight gradient in it (same allocation as w16_;
                             // none where the weights get no gradient)
    TensorDesc x_, y_;
    FilterDesc w_;
    ConvDesc fwd_, bwd_data_, bwd_filter_;
    std::unique_ptr<GraphConv> graph_[3];  // by ConvDirection; null: the legacy algorithm
    cudnnConvolutionFwdAlgo_t fwd_algo_ = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
    cudnnConvolutionBwdDataAlgo_t bwd_data_algo_ = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo_ = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
};

}  // namespace

std::unique_ptr<Conv2d> make_cudnn_conv(CudnnContext& ctx, const ConvShape& s, Storage storage) {
    return std::make_unique<CudnnConv2d>(ctx, s, storage);
}

}  // namespace sr::cuda
