// cublas_linear.h: the cuBLAS wrapper of the CUDA backend: a context (one cuBLAS handle bound to
// the backend's stream) and the linear layer's forward and backward on it. The cuBLAS headers
// are included only by cublas_linear.cpp.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "ops/backend.h"

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

// Backend::measure_gemm_peak: cuBLAS on n^3 products, TF32 and FP16 (fp32 accumulation), timed
// with events on st after a warm-up; its buffers are allocated and freed here.
GemmPeak measure_gemm_peak(CublasContext& ctx, cudaStream_t st, int n = 8192);

// Whether cublasGemmGroupedBatchedEx takes fp32 data with TF32 compute here (cached per context).
bool grouped_tf32_supported(CublasContext& ctx);

// The items of a GemmList as one grouped cuBLAS call: items of the same shape and flags form
// one group. fp32: cublasSgemmGroupedBatched; tf32: cublasGemmGroupedBatchedEx with
// CUBLAS_COMPUTE_32F_FAST_TF32 where this cuBLAS accepts it (grouped_tf32_supported: tried once
// per context on a 1x1 product), else the fp32 call. The pointer arrays cuBLAS reads live in
// device memory the caller owns (ptrs_device: room for 3 * items.size() pointers), written once
// here, so a recorded graph replays the call unchanged.
class GroupedGemm {
public:
    GroupedGemm(CublasContext& ctx, const std::vector<GemmItem>& items, void* ptrs_device,
                bool tf32);
    void run(float alpha, float beta);  // C = alpha op(A) op(B) + beta C for every item
    int group_count() const { return int(size_.size()); }
    bool tf32() const { return tf32_; }  // (false where asked for but unsupported)

private:
    CublasContext& ctx_;
    bool tf32_;
    std::vector<int> ta_, tb_, m_, n_, k_, lda_, ldb_, ldc_, size_;  // per group (column-major)
    std::vector<float> alpha_, beta_;
    const float* const* a_ = nullptr;  // device arrays, items in group order
    const float* const* b_ = nullptr;
    float* const* c_ = nullptr;
};

}  // namespace sr::cuda
