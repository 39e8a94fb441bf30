// test_cudnn_pick.cpp: the rule by which a convolution direction takes one of cuDNN's legacy
// algorithms (src/ops/cuda/cudnn_pick.h), on made-up search results: needs cudnn.h, no GPU.
#ifdef SPEEDRUN_HAVE_CUDA
#include <gtest/gtest.h>

#include <vector>

#include "ops/cuda/cudnn_pick.h"

namespace sr {
namespace {

constexpr size_t kLimit = size_t(512) << 20;

template <class Perf, class Algo>
Perf result(Algo algo, bool deterministic, size_t memory = 0,
            cudnnStatus_t status = CUDNN_STATUS_SUCCESS,
            cudnnMathType_t math = CUDNN_TENSOR_OP_MATH) {
    Perf p{};
    p.algo = algo;
    p.status = status;
    p.memory = memory;
    p.determinism = deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
    p.mathType = math;
    return p;
}

using Filter = cudnnConvolutionBwdFilterAlgoPerf_t;
using Fwd = cudnnConvolutionFwdAlgoPerf_t;
using Data = cudnnConvolutionBwdDataAlgoPerf_t;

int pick(const std::vector<Filter>& r, cudnnMathType_t math = CUDNN_TENSOR_OP_MATH) {
    return cuda::pick_algorithm(r.data(), int(r.size()), math, kLimit);
}

TEST(CudnnPick, TheFirstDeterministicUsableResultIsTaken) {
    // fastest first, as cudnnFind*AlgorithmEx returns them: the atomics-based algorithm 0 is
    // faster here, but a run must give the same bits each time
    const std::vector<Filter> r = {
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, false),
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true),
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, false)};
    EXPECT_EQ(pick(r), 1);
}

TEST(CudnnPick, ResultsThatFailedOrNeedTooMuchWorkspaceAreSkipped) {
    const std::vector<Filter> r = {
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true, 0, CUDNN_STATUS_NOT_SUPPORTED),
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true, kLimit + 1),
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true, kLimit)};
    EXPECT_EQ(pick(r), 2);
}

// Under CUDNN_FMA_MATH (plain fp32): results timed with FMA, else those a search reports as
// DEFAULT (an algorithm without a tensor-core form), never tensor-core ones; whichever is taken
// runs with FMA, since DEFAULT lets fp32 data use TF32 on sm_80 and newer.
TEST(CudnnPick, FmaMathTakesOnlyResultsTimedWithoutTensorCores) {
    auto timed = [](cudnnMathType_t m) {
        return result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true, 0, CUDNN_STATUS_SUCCESS, m);
    };
    const std::vector<Filter> r = {timed(CUDNN_TENSOR_OP_MATH), timed(CUDNN_DEFAULT_MATH),
                                   timed(CUDNN_FMA_MATH)};
    EXPECT_EQ(pick(r, CUDNN_FMA_MATH), 2);
    EXPECT_EQ(pick({r[0], r[1]}, CUDNN_FMA_MATH), 1);
    EXPECT_EQ(pick({r[0]}, CUDNN_FMA_MATH), -1);
    EXPECT_EQ(pick(r, CUDNN_TENSOR_OP_MATH), 0);
    EXPECT_EQ(cuda::fma_math_for(CUDNN_FMA_MATH, CUDNN_DEFAULT_MATH), CUDNN_FMA_MATH);
    EXPECT_EQ(cuda::fma_math_for(CUDNN_TENSOR_OP_MATH, CUDNN_DEFAULT_MATH), CUDNN_DEFAULT_MATH);
    EXPECT_EQ(cuda::fma_math_for(CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH), CUDNN_TENSOR_OP_MATH);
}

TEST(CudnnPick, TransformsAreTakenOnlyWhereNothingElseRuns) {
    const std::vector<Fwd> fwd = {
        result<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, true),
        result<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING, true),
        result<Fwd>(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, true)};
    EXPECT_EQ(cuda::pick_algorithm(fwd.data(), 3, CUDNN_TENSOR_OP_MATH, kLimit), 2);
    const std::vector<Data> data = {result<Data>(CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD, true),
                                    result<Data>(CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, true)};
    EXPECT_EQ(cuda::pick_algorithm(data.data(), 2, CUDNN_TENSOR_OP_MATH, kLimit), 1);
    // no better one: the first usable result, so the shape still has an algorithm
    EXPECT_EQ(cuda::pick_algorithm(fwd.data(), 2, CUDNN_TENSOR_OP_MATH, kLimit), 0);
    const std::vector<Filter> atomics = {
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, false, kLimit + 1),
        result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, false)};
    EXPECT_EQ(pick(atomics), 1);
    EXPECT_EQ(pick({}), -1);
    EXPECT_EQ(pick({result<Filter>(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, true, 0,
                                   CUDNN_STATUS_NOT_SUPPORTED)}),
              -1);
}

}  // namespace
}  // namespace sr
#endif
