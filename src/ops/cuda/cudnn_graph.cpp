// cudnn_graph.cpp: a convolution direction through cuDNN's graph API, its engine chosen by
// timing (cudnn_graph.h says why and which engines are left out).
//
// The calls follow cuDNN's backend API: tensor, convolution and operation descriptors, an
// operation graph of that one operation, engine configurations from the heuristics
// (CUDNN_ATTR_ENGINEHEUR_RESULTS), an execution plan per configuration, and a variant pack (the
// device pointers by unique id, and the workspace) per set of operands, made once and kept.
// Failures while tuning are not fatal: they end that candidate, or the whole attempt, and the
// legacy path stays; a plan that fails to execute later is dropped for the legacy algorithm.
#include "ops/cuda/cudnn_graph.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "core/env.h"
#include "ops/cuda/cuda_common.cuh"

namespace sr::cuda {

const char* direction_name(ConvDirection d) {
    switch (d) {
        case ConvDirection::forward: return "forward";
        case ConvDirection::backward_data: return "backward-data";
        case ConvDirection::backward_filter: return "backward-filter";
    }
    return "?";
}

bool graph_api_enabled() {
    return env_switch("SPEEDRUN_CUDNN_GRAPH", true);
}

bool graph_log() {
    return env_switch("SPEEDRUN_CUDNN_LOG", false);
}

namespace {

constexpr int64_t kX = 'x', kW = 'w', kY = 'y';  // the operands' unique ids
constexpr int64_t kMaxConfigsA = 12, kMaxConfigsFallback = 6;  // per heuristics mode
constexpr int kTimedReps = 3, kQueued = 4;  // time_on_stream's reps and inner calls

struct Failure {
    std::string what;
};

void check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS) throw Failure{fmt::format("{}: {}", what, cudnnGetErrorString(s))};
}

// One backend descriptor, destroyed with its owner.
struct Desc {
    cudnnBackendDescriptor_t d = nullptr;
    explicit Desc(cudnnBackendDescriptorType_t type) {
        check(cudnnBackendCreateDescriptor(type, &d), "cudnnBackendCreateDescriptor");
    }
    ~Desc() {
        if (d) cudnnBackendDestroyDescriptor(d);
    }
    Desc(Desc&& o) noexcept : d(std::exchange(o.d, nullptr)) {}
    Desc(const Desc&) = delete;
    Desc& operator=(const Desc&) = delete;
    Desc& operator=(Desc&&) = delete;

    Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n,
              const void* values, const char* what) {
        check(cudnnBackendSetAttribute(d, name, type, n, values), what);
        return *this;
    }
    void finalize(const char* what) { check(cudnnBackendFinalize(d), what); }
    cudnnBackendDescriptor_t release() { return std::exchange(d, nullptr); }
};

// NHWC (or KRSC) storage of a tensor whose dimensions are given as (N, C, H, W)
Desc tensor(int64_t uid, int64_t n, int64_t c, int64_t h, int64_t w, cudnnDataType_t dtype) {
    const int64_t dims[4] = {n, c, h, w}, strides[4] = {h * w * c, 1, w * c, c};
    const int64_t align = GraphConv::kAlignment;
    Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype, "tensor data type")
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dimensions")
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides")
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor id")
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    t.finalize("tensor");
    return t;
}

Desc convolution(const ConvShape& s) {
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    const int64_t dims = 2, dilation[2] = {1, 1}, stride[2] = {s.stride, s.stride},
                  pad[2] = {s.pad, s.pad};
    Desc c(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    c.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "compute type")
        .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode, "mode")
        .set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims, "spatial dims")
        .set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilation, "dilations")
        .set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride, "strides")
        .set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad, "pre paddings")
        .set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad, "post paddings");
    c.finalize("convolution");
    return c;
}

// Each direction's operation descriptor and the attributes that name its operands: the
// activation tensor (x or dx), the filter (w or dw), the output side (y or dy).
struct OperationAttrs {
    cudnnBackendDescriptorType_t type;
    cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
};

OperationAttrs operation_attrs(ConvDirection dir) {
    switch (dir) {
        case ConvDirection::forward:
            return {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
        case ConvDirection::backward_data:
            return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
        case ConvDirection::backward_filter:
            return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                    CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
    }
    throw Failure{"unknown direction"};
}

Desc operation(ConvDirection dir, const Desc& x, const Desc& w, const Desc& y, const Desc& conv) {
    const OperationAttrs a = operation_attrs(dir);
    const float alpha = 1.f, beta = 0.f;  // fp32 compute: float scaling factors
    const auto D = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    Desc op(a.type);
    op.set(a.x, D, 1, &x.d, "operation x")
        .set(a.w, D, 1, &w.d, "operation w")
        .set(a.y, D, 1, &y.d, "operation y")
        .set(a.conv, D, 1, &conv.d, "operation convolution")
        .set(a.alpha, CUDNN_TYPE_FLOAT, 1, &alpha, "operation alpha")
        .set(a.beta, CUDNN_TYPE_FLOAT, 1, &beta, "operation beta");
    op.finalize(direction_name(dir));
    return op;
}

// The engine configurations one heuristics mode proposes, best first (at most `limit`).
std::vector<Desc> heuristics(const Desc& graph, cudnnBackendHeurMode_t mode, int64_t limit) {
    std::vector<Desc> out;
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph.d, "heuristics graph")
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    if (cudnnBackendFinalize(heur.d) != CUDNN_STATUS_SUCCESS) return out;
    int64_t count = 0;
    if (cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 0, &count, nullptr) != CUDNN_STATUS_SUCCESS)
        return out;
    count = std::min(count, limit);
    if (count <= 0) return out;
    std::vector<Desc> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    cfgs.reserve(size_t(count));
    for (int64_t i = 0; i < count; ++i) {
        cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
        raw.push_back(cfgs.back().d);
    }
    int64_t got = 0;
    if (cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 count, &got, raw.data()) != CUDNN_STATUS_SUCCESS)
        return out;
    for (int64_t i = 0; i < std::min(got, count); ++i) out.push_back(std::move(cfgs[size_t(i)]));
    return out;
}

// Whether an engine configuration's engine is one we take (cudnn_graph.h), and its global index.
bool acceptable(const Desc& cfg, int64_t* index) {
    Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
    int64_t n = 0;
    if (cudnnBackendGetAttribute(cfg.d, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &n, &engine.d) != CUDNN_STATUS_SUCCESS)
        return false;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    n = 0;
    if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) != CUDNN_STATUS_SUCCESS)
        return false;
    for (int64_t i = 0; i < n; ++i)
        switch (notes[i]) {
            case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
            case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
            case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
            case CUDNN_NUMERICAL_NOTE_FFT:
            case CUDNN_NUMERICAL_NOTE_WINOGRAD:
            case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
            case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
            case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13: return false;
            default: break;
        }
    cudnnBackendBehaviorNote_t behaviour[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    n = 0;
    if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                 CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n, behaviour) == CUDNN_STATUS_SUCCESS)
        for (int64_t i = 0; i < n; ++i)
            if (behaviour[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) return false;
    *index = -1;
    cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, index);
    return true;
}

// A finalized variant pack: the operands' device pointers by unique id, and the workspace. It
// names no plan, so one serves every plan of the operation; *pack is null when it failed.
cudnnStatus_t make_pack(const void* x, const void* w, const void* y, void* workspace,
                        cudnnBackendDescriptor_t* pack) {
    *pack = nullptr;
    cudnnBackendDescriptor_t p = nullptr;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &p);
    if (s != CUDNN_STATUS_SUCCESS) return s;
    void* ptrs[3] = {const_cast<void*>(x), const_cast<void*>(w), const_cast<void*>(y)};
    const int64_t uids[3] = {kX, kW, kY};
    if ((s = cudnnBackendSetAttribute(p, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                      3, ptrs)) == CUDNN_STATUS_SUCCESS &&
        (s = cudnnBackendSetAttribute(p, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3,
                                      uids)) == CUDNN_STATUS_SUCCESS &&
        (s = cudnnBackendSetAttribute(p, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                      &workspace)) == CUDNN_STATUS_SUCCESS &&
        (s = cudnnBackendFinalize(p)) == CUDNN_STATUS_SUCCESS) {
        *pack = p;
        return s;
    }
    cudnnBackendDestroyDescriptor(p);
    return s;
}

// The pack, owned: destroyed with it.
struct Pack {
    cudnnBackendDescriptor_t d = nullptr;
    cudnnStatus_t status;
    Pack(const void* x, const void* w, const void* y, void* workspace)
        : status(make_pack(x, w, y, workspace, &d)) {}
    ~Pack() {
        if (d) cudnnBackendDestroyDescriptor(d);
    }
    Pack(const Pack&) = delete;
    Pack& operator=(const Pack&) = delete;
};

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % GraphConv::kAlignment == 0; }

// The operation of one direction with the descriptors it refers to (kept alive with it).
struct Operation {
    Desc x, w, y, conv, op;
};

Operation build_operation(ConvDirection dir, const ConvShape& s, cudnnDataType_t dtype) {
    Desc xt = tensor(kX, s.N, s.C, s.H, s.W, dtype);
    Desc wt = tensor(kW, s.K, s.C, s.R, s.S, dtype);
    Desc yt = tensor(kY, s.N, s.K, s.P(), s.Q(), dtype);
    Desc conv = convolution(s);
    Desc op = operation(dir, xt, wt, yt, conv);
    return {std::move(xt), std::move(wt), std::move(yt), std::move(conv), std::move(op)};
}

}  // namespace

std::string check_operation_descriptors(ConvDirection dir, const ConvShape& s, cudnnDataType_t dtype) {
    try {
        build_operation(dir, s, dtype);
        return "";
    } catch (const Failure& f) {
        return f.what;
    }
}

std::unique_ptr<GraphConv> GraphConv::tune(cudnnHandle_t handle, cudaStream_t st, ConvDirection dir,
                                           const ConvShape& s, cudnnDataType_t dtype, void* x,
                                           void* w, void* y, void* workspace, size_t ws_limit,
                                           std::string* why) {
    try {
        Operation op = build_operation(dir, s, dtype);
        Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
        graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op.op.d, "graph ops")
            .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph handle");
        graph.finalize("operation graph");

        std::vector<Desc> cfgs = heuristics(graph, CUDNN_HEUR_MODE_A, kMaxConfigsA);
        for (Desc& c : heuristics(graph, CUDNN_HEUR_MODE_FALLBACK, kMaxConfigsFallback))
            cfgs.push_back(std::move(c));
        if (cfgs.empty()) {
            *why = "the heuristics proposed no engine";
            return nullptr;
        }

        const Pack pack(x, w, y, workspace);
        check(pack.status, "variant pack");
        std::unique_ptr<GraphConv> best;
        size_t best_cfg = 0;
        int timed = 0, refused = 0, too_big = 0;
        for (size_t ci = 0; ci < cfgs.size(); ++ci) {
            const Desc& cfg = cfgs[ci];
            int64_t index = -1;
            if (!acceptable(cfg, &index)) {
                ++refused;
                continue;
            }
            Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
            plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "plan handle")
                .set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg.d,
                     "plan engine config");
            if (cudnnBackendFinalize(plan.d) != CUDNN_STATUS_SUCCESS) {
                ++refused;
                continue;
            }
            int64_t ws = 0, n = 0;
            if (cudnnBackendGetAttribute(plan.d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                         CUDNN_TYPE_INT64, 1, &n, &ws) != CUDNN_STATUS_SUCCESS ||
                ws < 0 || size_t(ws) > ws_limit) {
                ++too_big;
                continue;
            }
            // (one pack for every call timed: the host time of making one is not the plan's, and
            // run() keeps its packs; the legacy calls timed against these make none either)
            const float ms = time_on_stream(st, kTimedReps, kQueued, [&] {
                return cudnnBackendExecute(handle, plan.d, pack.d) == CUDNN_STATUS_SUCCESS;
            });
            if (ms < 0.f) {
                // a failed launch may leave an error to clear; a sticky one shows in the caller's
                // next check
                cudaGetLastError();
                ++refused;
                continue;
            }
            ++timed;
            if (!best || ms < best->ms_) {
                if (!best) best.reset(new GraphConv());
                if (best->plan_) cudnnBackendDestroyDescriptor(best->plan_);
                best->plan_ = plan.release();
                best->ms_ = ms;
                best->workspace_bytes_ = size_t(ws);
                best->engine_ = fmt::format("engine {}", index);
                best_cfg = ci;
            }
        }
        if (!best) {
            *why = fmt::format("none of {} configurations ran ({} refused, {} over the workspace "
                               "limit)", cfgs.size(), refused, too_big);
            return nullptr;
        }
        best->dir_ = dir;
        best->candidates_ = timed;
        for (Desc* d : {&cfgs[best_cfg], &graph, &op.op, &op.conv, &op.y, &op.w, &op.x})
            best->sources_.push_back(d->release());
        return best;
    } catch (const Failure& f) {
        *why = f.what;
        return nullptr;
    }
}

GraphConv::~GraphConv() {
    for (const CachedPack& p : packs_) cudnnBackendDestroyDescriptor(p.pack);
    if (plan_) cudnnBackendDestroyDescriptor(plan_);
    for (cudnnBackendDescriptor_t d : sources_)  // the plan first, then what it was built from
        if (d) cudnnBackendDestroyDescriptor(d);
}

bool GraphConv::run(cudnnHandle_t handle, const void* x, const void* w, const void* y,
                    void* workspace, std::string* failure) {
    if (!aligned(x) || !aligned(w) || !aligned(y)) return false;
    // the operands' pack, made once per set of pointers (a training step passes the same ones
    // each time; evaluation and the plan check others); a few are kept, the oldest replaced
    cudnnBackendDescriptor_t pack = nullptr;
    for (const CachedPack& p : packs_)
        if (p.x == x && p.w == w && p.y == y && p.workspace == workspace) pack = p.pack;
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    if (!pack && (s = make_pack(x, w, y, workspace, &pack)) == CUDNN_STATUS_SUCCESS) {
        if (packs_.size() == kMaxPacks) {
            cudnnBackendDestroyDescriptor(packs_[next_pack_].pack);
            packs_[next_pack_] = {x, w, y, workspace, pack};
            next_pack_ = (next_pack_ + 1) % kMaxPacks;
        } else {
            packs_.push_back({x, w, y, workspace, pack});
        }
    }
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendExecute(handle, plan_, pack);
    if (s == CUDNN_STATUS_SUCCESS) return true;
    *failure = fmt::format("cudnnBackendExecute: {} ({} plan): {}", direction_name(dir_), engine_,
                           cudnnGetErrorString(s));
    return false;
}

}  // namespace sr::cuda
