// cublas_linear.h: the cuBLAS wrapper of the CUDA backend: a context (one cuBLAS handle bound to
// the backend's stream) and the linear layer's forward and backward on it. The cuBLAS headers
// are included only by cublas_linear.cpp.
#pragma once
#include <memory>
#include <string>

#include <cuda_runtime_api.h>

namespace sr::cuda {

class CublasContext;
struct CublasContextDeleter {
    void operator()(CublasContext* c) const;
};
using CublasContextPtr = std::unique_ptr<CublasContext, CublasContextDeleter>;

CublasContextPtr make_cublas_context(cudaStream_t st);

// "13.0.2": the version of the cuBLAS library loaded at run time.
std::string cublas_version(CublasContext& ctx);

// y (N,O) = scale * x (N,I) w^T, w (O,I) row-major: the contract of Backend::linear_forward.
void linear_forward(CublasContext& ctx, float* y, const float* x, const float* w, int N, int I,
                    int O, float scale);
// dx (N,I) = scale * dy w (skipped if dx == nullptr); dw (O,I) = scale * dy^T x.
void linear_backward(CublasContext& ctx, float* dx, float* dw, const float* dy, const float* x,
                     const float* w, int N, int I, int O, float scale);

// Row-major C (M,N) = alpha op(A) op(B) + beta C: the contract of Backend::gemm (fp32, no TF32).
void gemm(CublasContext& ctx, float* C, const float* A, const float* B, int M, int N, int K,
          bool trans_a, bool trans_b, float alpha, float beta);

}  // namespace sr::cuda
