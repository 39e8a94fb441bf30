// cudnn_pick.h: which of cuDNN's legacy algorithms a convolution direction takes, from the
// results that cudnnFind*AlgorithmEx (timed, fastest first) or cudnnGet*_v7 (ranked) return.
// Internal to the cuDNN wrapper (cudnn_conv.cpp; tests/ops/test_cudnn_pick.cpp checks the rule
// on made-up results, which needs cudnn.h but no GPU).
//
// The rule is the graph-API path's (cudnn_graph.h) where it can be. Usable: a result that ran,
// needs at most the workspace limit and, under CUDNN_FMA_MATH (plain fp32, for the comparisons
// with the CPU), was timed with that math type, or else with CUDNN_DEFAULT_MATH (how a search
// may report an algorithm that has no tensor-core form; fma_math_for() runs it with FMA all the
// same). Among the usable ones, the first that is deterministic (no atomics: a run, and a
// recorded epoch's replay, give the same bits each time) and is not an FFT or Winograd
// transform (outside the CPU reference's tolerances in 16 bits); where none is both, the first
// usable one, so a shape is never left without an algorithm.
#pragma once
#include <cstddef>

#include <cudnn.h>

namespace sr::cuda {

inline bool is_transform(cudnnConvolutionFwdAlgo_t a) {
    return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
inline bool is_transform(cudnnConvolutionBwdDataAlgo_t a) {
    return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
           a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
           a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
inline bool is_transform(cudnnConvolutionBwdFilterAlgo_t a) {
    return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT ||
           a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

// The index of the result to take, -1 if none is usable.
template <class Perf>
int pick_algorithm(const Perf* perf, int n, cudnnMathType_t math, size_t workspace_limit) {
    auto usable = [&](const Perf& p, cudnnMathType_t reported) {
        return p.status == CUDNN_STATUS_SUCCESS && p.memory <= workspace_limit &&
               (math != CUDNN_FMA_MATH || p.mathType == reported);
    };
    // under FMA: the results reported as FMA, then those reported as DEFAULT
    for (cudnnMathType_t reported : {CUDNN_FMA_MATH, CUDNN_DEFAULT_MATH}) {
        int first = -1;
        for (int i = 0; i < n; ++i) {
            if (!usable(perf[i], reported)) continue;
            if (perf[i].determinism == CUDNN_DETERMINISTIC && !is_transform(perf[i].algo)) return i;
            if (first < 0) first = i;
        }
        if (first >= 0 || math != CUDNN_FMA_MATH) return first;
    }
    return -1;
}

// The math type to run a picked result with: the one it was timed with, except under
// CUDNN_FMA_MATH, which stays FMA (DEFAULT would let fp32 data use TF32 on sm_80 and newer).
inline cudnnMathType_t fma_math_for(cudnnMathType_t context, cudnnMathType_t reported) {
    return context == CUDNN_FMA_MATH ? CUDNN_FMA_MATH : reported;
}

}  // namespace sr::cuda
