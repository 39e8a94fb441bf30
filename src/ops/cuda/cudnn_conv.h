// cudnn_conv.h: the cuDNN wrapper of the CUDA backend: a context (one cuDNN handle bound to the
// backend's stream, plus one workspace shared by all convolutions of that backend) and the
// factory of Conv2d objects that run on it. cudnn.h itself is included only by cudnn_conv.cpp.
//
// Lifetime: the context must outlive every Conv2d made from it, so the Conv2d objects that
// Backend::make_conv returns must be destroyed before their backend (as DeviceBuffers must).
#pragma once
#include <memory>
#include <string>

#include <cuda_runtime_api.h>

#include "ops/backend.h"

namespace sr::cuda {

class CudnnContext;
struct CudnnContextDeleter {
    void operator()(CudnnContext* c) const;
};
using CudnnContextPtr = std::unique_ptr<CudnnContext, CudnnContextDeleter>;

// tf32 false: every convolution of this context in plain fp32 FMA (CUDNN_FMA_MATH), no TF32.
CudnnContextPtr make_cudnn_context(cudaStream_t st, bool tf32 = true);

// Sets up descriptors for NHWC activations and KRSC (= OHWI) filters in `storage` (fp32
// accumulation), picks the forward / backward-data / backward-filter algorithms once (timed
// with cudnnFind*Ex, falling back to the heuristics), and grows the context's workspace to what
// they need. Weights and their gradients stay fp32 at the interface (see cudnn_conv.cpp).
// A ConvShape::forward_only shape gets the forward alone; its backward calls throw.
std::unique_ptr<Conv2d> make_cudnn_conv(CudnnContext& ctx, const ConvShape& s,
                                        Storage storage = Storage::f32);

// "9.19.0": the version of the cuDNN library loaded at run time.
std::string cudnn_version();

// Device bytes held by the context's shared workspace.
size_t cudnn_workspace_bytes(const CudnnContext& ctx);

}  // namespace sr::cuda
