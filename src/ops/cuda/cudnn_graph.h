// cudnn_graph.h: one direction of a convolution (forward, backward-data or backward-filter)
// through cuDNN's graph ("backend") API, with its engine chosen by timing. Internal to the
// cuDNN wrapper: included only by cudnn_conv.cpp and cudnn_graph.cpp, the files that include
// cudnn.h.
//
// Why: the legacy API that cudnn_conv.cpp searches (cudnnFind*AlgorithmEx) offers a handful of
// algorithms per direction. The graph API lists the engine configurations cuDNN's heuristics
// propose for the exact operation (layout, data type, alignment), which is how PyTorch runs its
// convolutions (cudnn v8 API, torch.backends.cudnn.benchmark). On an H200 the legacy choice ran
// the 24 -> 64 convolutions at 31x31 at 135 TFLOP/s, a quarter of what the 256-channel ones reach
// (docs/results.md, session 15). A plan from here is used only where it timed faster than the
// legacy algorithm on the same buffers (cudnn_conv.cpp).
//
// Engines are filtered by their numerical notes: none that is nondeterministic (recorded epochs
// must replay bit for bit), reduces in reduced precision, converts inputs down, or works by
// FFT / Winograd (outside the CPU reference's tolerances in 16 bits); none that compiles at run
// time (set-up time). SPEEDRUN_CUDNN_GRAPH=0 turns the graph path off; SPEEDRUN_CUDNN_LOG=1
// prints each choice with both timings.
#pragma once
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "ops/backend.h"
#include "ops/cuda/cuda_ops.h"

namespace sr::cuda {

enum class ConvDirection { forward, backward_data, backward_filter };

const char* direction_name(ConvDirection d);

// false when SPEEDRUN_CUDNN_GRAPH=0; SPEEDRUN_CUDNN_LOG=1: graph_log() true
bool graph_api_enabled();
bool graph_log();

// f's time on stream st in milliseconds (CUDA events): after one untimed call, the best of
// `reps` measurements of `inner` calls queued back to back, divided by `inner`, so that the host's
// time to launch a call hides behind the previous one (in a training step, replayed as a CUDA
// graph, there is no host time at all). -1 when a call of f returns false.
template <class F>
float time_on_stream(cudaStream_t st, int reps, int inner, F&& f);

// Builds (and finalizes) the tensor, convolution and operation descriptors of one direction,
// the part of GraphConv::tune that needs no GPU: "" when cuDNN took them, else what it refused.
// (tests/ops/test_cudnn_graph.cpp runs it on machines without a GPU.)
std::string check_operation_descriptors(ConvDirection dir, const ConvShape& s, cudnnDataType_t dtype);

// An executable plan for one direction of one convolution shape, operands in NHWC (activations)
// and KRSC (filters) of type `dtype`, fp32 accumulation.
class GraphConv {
public:
    // Builds the operation graph, asks the heuristics (modes A and fallback) for engine
    // configurations, finalizes each that passes the filter and needs at most ws_limit bytes of
    // workspace, times it on the given device buffers (x, w, y sized for the shape; workspace
    // of ws_limit bytes), and keeps the fastest. nullptr when none ran; *why says what happened.
    static std::unique_ptr<GraphConv> tune(cudnnHandle_t handle, cudaStream_t st,
                                           ConvDirection dir, const ConvShape& s,
                                           cudnnDataType_t dtype, void* x, void* w, void* y,
                                           void* workspace, size_t ws_limit, std::string* why);
    ~GraphConv();
    GraphConv(const GraphConv&) = delete;
    GraphConv& operator=(const GraphConv&) = delete;

    // Runs the plan on the handle's stream: forward y = conv(x, w); backward_data x = dx from
    // y = dy and w; backward_filter w = dw from x and y = dy. False when the plan did not run,
    // and the caller then takes the legacy path: an operand not aligned as the plan was built
    // for (kAlignment), or cudnnBackendExecute refusing (*failure says why; the tuning ran the
    // plan, so that would be a context it did not see, such as a stream capture).
    bool run(cudnnHandle_t handle, const void* x, const void* w, const void* y, void* workspace,
             std::string* failure);

    static constexpr int64_t kAlignment = 16;  // bytes, every operand

    size_t workspace_bytes() const { return workspace_bytes_; }
    float milliseconds() const { return ms_; }          // its best time when tuned
    const std::string& engine() const { return engine_; }  // "engine 12" (its global index)
    int candidates() const { return candidates_; }      // configurations timed

private:
    GraphConv() = default;
    ConvDirection dir_ = ConvDirection::forward;
    cudnnBackendDescriptor_t plan_ = nullptr;
    // What the plan was built from (its engine configuration, the operation graph, the operation
    // and its tensors), kept alive with it and destroyed after it: cuDNN's backend API does not
    // say that a finalized plan no longer refers to them (cudnn-frontend keeps them too).
    std::vector<cudnnBackendDescriptor_t> sources_;
    // variant packs (the operands' pointers and the workspace) made by run(), at most kMaxPacks
    struct CachedPack {
        const void *x, *w, *y;
        void* workspace;
        cudnnBackendDescriptor_t pack;
    };
    static constexpr size_t kMaxPacks = 8;
    std::vector<CachedPack> packs_;
    size_t next_pack_ = 0;  // the one replaced next when all are taken
    size_t workspace_bytes_ = 0;
    float ms_ = 0.f;
    std::string engine_;
    int candidates_ = 0;
};

template <class F>
float time_on_stream(cudaStream_t st, int reps, int inner, F&& f) {
    cudaEvent_t a = nullptr, b = nullptr;
    if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) {
        if (a) cudaEventDestroy(a);
        return -1.f;
    }
    float best = -1.f;
    if (f()) {
        for (int i = 0; i < reps; ++i) {
            // the stream held busy (about 0.25 ms at 2 GHz) while the host queues the calls, so
            // that the GPU runs them back to back as in a replayed epoch: without it, calls shorter
            // than their host submission (the small convolutions) were timed at the host's pace
            try {
                hold_stream(st, 500000);
            } catch (const std::exception&) {  // (timed without the hold then)
                cudaGetLastError();
            }
            cudaEventRecord(a, st);
            bool ok = true;
            for (int k = 0; k < inner && ok; ++k) ok = f();
            cudaEventRecord(b, st);
            float ms = 0.f;
            if (!ok || cudaEventSynchronize(b) != cudaSuccess ||
                cudaEventElapsedTime(&ms, a, b) != cudaSuccess) {
                best = -1.f;
                break;
            }
            ms /= float(inner);
            if (best < 0.f || ms < best) best = ms;
        }
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return best;
}

}  // namespace sr::cuda
