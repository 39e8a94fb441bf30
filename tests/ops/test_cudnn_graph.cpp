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

TEST(CudnnGraph, OperationDescriptorsOfEveryDirectionAreAccepted) {
    // airbench94's 24 -> 64 conv at 31x31, the Myrtle net's strided 1x1 projection
    for (const ConvShape& s : {ConvShape{.N = 1024, .H = 31, .W = 31, .C = 24, .K = 64},
                               ConvShape{.N = 128, .H = 32, .W = 32, .C = 64, .K = 128, .R = 1, .S = 1,
                                         .pad = 0, .stride = 2}})
        for (cudnnDataType_t dt : {CUDNN_DATA_BFLOAT16, CUDNN_DATA_HALF})
            for (auto dir : {cuda::ConvDirection::forward, cuda::ConvDirection::backward_data,
                             cuda::ConvDirection::backward_filter}) {
                SCOPED_TRACE(cuda::direction_name(dir));
                EXPECT_EQ(cuda::check_operation_descriptors(dir, s, dt), "");
            }
}

TEST(CudnnGraph, ARefusedDescriptorIsReported) {
    // no convolution pads by a negative amount
    const ConvShape s{.N = 8, .H = 8, .W = 8, .C = 16, .K = 16, .pad = -1};
    const std::string why = cuda::check_operation_descriptors(cuda::ConvDirection::forward, s,
                                                              CUDNN_DATA_BFLOAT16);
    EXPECT_NE(why, "");
}

}  // namespace
}  // namespace sr
#endif
