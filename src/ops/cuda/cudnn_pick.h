// cudnn_pick.h: which of cuDNN's legacy algorithms a convolution direction takes, from the
// results that cudnnFind*AlgorithmEx (timed, fastest first) or cudnnGet*_v7 (ranked) return.
// Internal to the cuDNN wrapper (cudnn_conv.cpp; tests/ops/test_cudnn_graph.cpp checks the rule
// on made-up results, which needs cudnn.h but no GPU).
//
// The rule is the graph-API path's (cudnn_graph.h) where it can be: the first result that ran,
// needs at most the workspace limit and, under CUDNN_FMA_MATH (plain fp32, for the comparisons
// with the CPU), was timed with that math type; among those, the first that is deterministic
// (no atomics: a run, and a recorded epoch's replay, give the same bits each time) and is not
// an FFT or Winograd transform (outside the CPU reference's tolerances in 16 bits). Where no
// result is both, the first usable one, so a shape is never left without an algorithm.
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
    auto usable = [&](const Perf& p) {
        return p.status == CUDNN_STATUS_SUCCESS && p.memory <= workspace_limit &&
               (math != CUDNN_FMA_MATH || p.mathType == CUDNN_FMA_MATH);
    };
    int first = -1;
    for (int i = 0; i < n; ++i) {
        if (!usable(perf[i])) continue;
        if (perf[i].determinism == CUDNN_DETERMINISTIC && !is_transform(perf[i].algo)) return i;
        if (first < 0) first = i;
    }
    return first;
}

}  // namespace sr::cuda
