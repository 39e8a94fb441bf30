// test_cudnn_graph.cpp: the host-side half of the cuDNN graph-API convolution
// (src/ops/cuda/cudnn_graph.h): the tensor, convolution and operation descriptors of each
// direction must be accepted by cuDNN itself, which needs the library but no GPU. Engine
// heuristics, plans and execution need a GPU; tools/gpu-check's `test` and `ab` stages cover
// them there (BackendOps / StoredOps run every conv through the chosen plan).
#ifdef SPEEDRUN_HAVE_CUDA
#include <gtest/gtest.h>

#include "ops/cuda/cudnn_graph.h"

namespace sr {
namespace {

ConvShape shape(int N, int HW, int C, int K, int R, int pad, int stride) {
    ConvShape s;
    s.N = N;
    s.H = s.W = HW;
    s.C = C;
    s.K = K;
    s.R = s.S = R;
    s.pad = pad;
    s.stride = stride;
    return s;
}

TEST(CudnnGraph, OperationDescriptorsOfEveryDirectionAreAccepted) {
    // airbench94's 24 -> 64 conv at 31x31, the Myrtle net's strided 1x1 projection
    for (const ConvShape& s : {shape(1024, 31, 24, 64, 3, 1, 1), shape(128, 32, 64, 128, 1, 0, 2)})
        for (cudnnDataType_t dt : {CUDNN_DATA_BFLOAT16, CUDNN_DATA_HALF})
            for (auto dir : {cuda::ConvDirection::forward, cuda::ConvDirection::backward_data,
                             cuda::ConvDirection::backward_filter}) {
                SCOPED_TRACE(cuda::direction_name(dir));
                EXPECT_EQ(cuda::check_operation_descriptors(dir, s, dt), "");
            }
}

TEST(CudnnGraph, ARefusedDescriptorIsReported) {
    ConvShape s = shape(8, 8, 16, 16, 3, 1, 1);
    s.pad = -1;  // no convolution pads by a negative amount
    const std::string why = cuda::check_operation_descriptors(cuda::ConvDirection::forward, s,
                                                              CUDNN_DATA_BFLOAT16);
    EXPECT_NE(why, "");
}

}  // namespace
}  // namespace sr
#endif
