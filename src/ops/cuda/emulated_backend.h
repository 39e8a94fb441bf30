// emulated_backend.h: the CUDA backend's own kernels on the host (ops/cuda/emulation.h), as a
// Backend for the tests: the ops of cuda::KernelOps (kernel_ops.h, the same dispatch as
// CudaBackend) run the .cu files' kernels compiled for the CPU; what the GPU does with cuDNN and
// cuBLAS (convolutions apart from conv_small's forward and the bias kernels, the linear layer,
// the products) runs on the CPU backend. Memory is host memory. Built only into the tests,
// where a CUDA toolkit's headers are found (SPEEDRUN_HAVE_CUDA_EMULATION).
#pragma once
#include <memory>

#include "ops/backend.h"

namespace sr {

std::unique_ptr<Backend> make_emulated_cuda_backend(Storage s = Storage::f32);

}  // namespace sr
