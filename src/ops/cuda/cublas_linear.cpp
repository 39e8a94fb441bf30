// cublas_linear.cpp: the cuBLAS wrapper (the only file that includes cublas headers): the
// linear layer y = scale * x w^T and its gradients as single sgemm calls, scale as alpha,
// beta = 0 (gradients are assigned). Math mode CUBLAS_DEFAULT_MATH: full fp32, no TF32 (the
// layer is tiny; its logits feed the loss directly).
//
// cuBLAS is column-major; a row-major (a, b) matrix is the column-major (b, a) matrix, its
// transpose. So, with every matrix below read column-major:
//   y^T (O,N)  = w (I,O)^T  x^T (I,N)    -> gemm(T, N, m=O, n=N, k=I, A=w ld I, B=x ld I, C=y ld O)
//   dx^T (I,N) = w (I,O)    dy^T (O,N)   -> gemm(N, N, m=I, n=N, k=O, A=w ld I, B=dy ld O, C=dx ld I)
//   dw^T (I,O) = x^T (I,N)  dy (N,O)     -> gemm(N, T, m=I, n=O, k=N, A=x ld I, B=dy ld O, C=dw ld I)
#include "ops/cuda/cublas_linear.h"

#include <cstdio>

#include <cublas_v2.h>

#include "ops/cuda/cuda_common.cuh"

namespace sr::cuda {

class CublasContext {
public:
    explicit CublasContext(cudaStream_t st) {
        CUBLAS_CHECK(cublasCreate(&handle));
        try {
            CUBLAS_CHECK(cublasSetStream(handle, st));
            CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
            CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
            // A workspace of our own (after SetStream, which resets it): without one, cuBLAS
            // allocates from the stream's pool while a recording is made, and every CUDA graph
            // of the training steps would hold allocation nodes. 32 MiB: cuBLAS's advice for
            // sm_90.
            CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
            CUBLAS_CHECK(cublasSetWorkspace(handle, workspace, kWorkspaceBytes));
        } catch (...) {  // (the destructor does not run for a half-built object)
            cublasDestroy(handle);
            if (workspace) cudaFree(workspace);
            throw;
        }
    }
    ~CublasContext() {
        if (handle) cublasDestroy(handle);
        if (workspace) cudaFree(workspace);
    }
    static constexpr size_t kWorkspaceBytes = size_t(32) << 20;
    CublasContext(const CublasContext&) = delete;
    CublasContext& operator=(const CublasContext&) = delete;

    cublasHandle_t handle = nullptr;
    void* workspace = nullptr;
};

void CublasContextDeleter::operator()(CublasContext* c) const { delete c; }

CublasContextPtr make_cublas_context(cudaStream_t st) {
    return CublasContextPtr(new CublasContext(st));
}

std::string cublas_version(CublasContext& ctx) {
    int v = 0;
    CUBLAS_CHECK(cublasGetVersion(ctx.handle, &v));  // major*10000 + minor*100 + patch
    char buf[32];
    std::snprintf(buf, sizeof buf, "%d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
    return buf;
}

void linear_forward(CublasContext& ctx, float* y, const float* x, const float* w, int N, int I,
                    int O, float scale) {
    CUDA_ASSERT(N > 0 && I > 0 && O > 0);
    const float zero = 0.f;
    CUBLAS_CHECK(cublasSgemm(ctx.handle, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, &scale, w, I, x, I,
                             &zero, y, O));
}

void linear_backward(CublasContext& ctx, float* dx, float* dw, const float* dy, const float* x,
                     const float* w, int N, int I, int O, float scale) {
    CUDA_ASSERT(N > 0 && I > 0 && O > 0);
    const float zero = 0.f;
    if (dx)
        CUBLAS_CHECK(cublasSgemm(ctx.handle, CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, &scale, w, I, dy,
                                 O, &zero, dx, I));
    CUBLAS_CHECK(cublasSgemm(ctx.handle, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, &scale, x, I, dy, O,
                             &zero, dw, I));
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep
// the flags. A row-major (r, c) matrix has leading dimension c.
void gemm(CublasContext& ctx, float* C, const float* A, const float* B, int M, int N, int K,
          bool trans_a, bool trans_b, float alpha, float beta) {
    CUDA_ASSERT(M > 0 && N > 0 && K > 0);
    CUBLAS_CHECK(cublasSgemm(ctx.handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                             trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                             trans_b ? K : N, A, trans_a ? M : K, &beta, C, N));
}

}  // namespace sr::cuda
