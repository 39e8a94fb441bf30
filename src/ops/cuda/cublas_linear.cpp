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
//
// cuBLAS is loaded on first use (dlopen), not linked: loading libcublas (with cublasLt, some
// hundreds of MB) costs about 0.45 s, which every process paid, every test of the suite too
// (310 processes: 2.3 minutes of CI), although only a CUDA backend calls it. cublas_api() finds
// the library (the one CMake found, SPEEDRUN_CUBLAS_PATH, then the soname on the loader's path)
// and each function used below; the cublasX(...) names in this file call through it.
#include "ops/cuda/cublas_linear.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <tuple>

#include <cublas_v2.h>

#include "ops/cuda/cuda_common.cuh"

namespace sr::cuda {
namespace {

#define SR_CUBLAS_STR2(x) #x
#define SR_CUBLAS_STR(x) SR_CUBLAS_STR2(x)  // the symbol: cublasCreate -> "cublasCreate_v2"
#define SR_CUBLAS_FUNCTIONS(X)                                                                 \
    X(cublasCreate) X(cublasDestroy) X(cublasSetStream) X(cublasSetMathMode)                   \
    X(cublasSetPointerMode) X(cublasSetWorkspace) X(cublasGetVersion) X(cublasGetStatusString) \
    X(cublasSgemm) X(cublasGemmEx) X(cublasSgemmGroupedBatched) X(cublasGemmGroupedBatchedEx)

// (cublasGemmEx has a C++ overload taking cudaDataType for the compute type: the one exported
// takes cublasComputeType_t)
using CublasGemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                          int, int, int, const void*, const void*, cudaDataType,
                                          int, const void*, cudaDataType, int, const void*, void*,
                                          cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
struct CublasApi {
#define SR_CUBLAS_MEMBER(f) decltype(&f) f##_ptr = nullptr;
    SR_CUBLAS_MEMBER(cublasCreate)
    SR_CUBLAS_MEMBER(cublasDestroy)
    SR_CUBLAS_MEMBER(cublasSetStream)
    SR_CUBLAS_MEMBER(cublasSetMathMode)
    SR_CUBLAS_MEMBER(cublasSetPointerMode)
    SR_CUBLAS_MEMBER(cublasSetWorkspace)
    SR_CUBLAS_MEMBER(cublasGetVersion)
    SR_CUBLAS_MEMBER(cublasGetStatusString)
    SR_CUBLAS_MEMBER(cublasSgemm)
    SR_CUBLAS_MEMBER(cublasSgemmGroupedBatched)
    SR_CUBLAS_MEMBER(cublasGemmGroupedBatchedEx)
#undef SR_CUBLAS_MEMBER
    CublasGemmExFn cublasGemmEx_ptr = nullptr;
};

const CublasApi& cublas_api() {
    static const CublasApi api = [] {
        CublasApi a;
        std::string tried;
        void* lib = nullptr;
        const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
        for (const char* name : {
#ifdef SPEEDRUN_CUBLAS_PATH
                 SPEEDRUN_CUBLAS_PATH,
#endif
                 soname.c_str(), "libcublas.so"}) {
            if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
            const char* e = dlerror();
            tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name);
        }
        if (!lib) fail_at("cuBLAS", "dlopen", __FILE__, __LINE__, tried.c_str());
#define SR_CUBLAS_LOAD(f)                                                                     \
    a.f##_ptr = reinterpret_cast<decltype(a.f##_ptr)>(dlsym(lib, SR_CUBLAS_STR(f)));          \
    if (!a.f##_ptr)                                                                           \
        fail_at("cuBLAS", "dlsym", __FILE__, __LINE__,                                        \
                (std::string(SR_CUBLAS_STR(f)) + " is not in the loaded libcublas").c_str());
        SR_CUBLAS_FUNCTIONS(SR_CUBLAS_LOAD)
#undef SR_CUBLAS_LOAD
        return a;
    }();
    return api;
}

}  // namespace

// From here on the cuBLAS names call through cublas_api() (cublas_v2.h made some of them macros
// for their _v2 symbols; those are replaced too).
#undef cublasCreate
#undef cublasDestroy
#undef cublasSetStream
#undef cublasSetPointerMode
#undef cublasSetWorkspace
#undef cublasGetVersion
#undef cublasSgemm
#define cublasCreate(...) (cublas_api().cublasCreate_ptr(__VA_ARGS__))
#define cublasDestroy(...) (cublas_api().cublasDestroy_ptr(__VA_ARGS__))
#define cublasSetStream(...) (cublas_api().cublasSetStream_ptr(__VA_ARGS__))
#define cublasSetMathMode(...) (cublas_api().cublasSetMathMode_ptr(__VA_ARGS__))
#define cublasSetPointerMode(...) (cublas_api().cublasSetPointerMode_ptr(__VA_ARGS__))
#define cublasSetWorkspace(...) (cublas_api().cublasSetWorkspace_ptr(__VA_ARGS__))
#define cublasGetVersion(...) (cublas_api().cublasGetVersion_ptr(__VA_ARGS__))
#define cublasGetStatusString(...) (cublas_api().cublasGetStatusString_ptr(__VA_ARGS__))
#define cublasSgemm(...) (cublas_api().cublasSgemm_ptr(__VA_ARGS__))
#define cublasGemmEx(...) (cublas_api().cublasGemmEx_ptr(__VA_ARGS__))
#define cublasSgemmGroupedBatched(...) (cublas_api().cublasSgemmGroupedBatched_ptr(__VA_ARGS__))
#define cublasGemmGroupedBatchedEx(...) (cublas_api().cublasGemmGroupedBatchedEx_ptr(__VA_ARGS__))

class CublasContext {
public:
    explicit CublasContext(cudaStream_t st) : stream(st) {
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
    cudaStream_t stream = nullptr;  // the backend's (non-blocking) stream
    int grouped_tf32 = -1;          // grouped_tf32_supported(): -1 not yet tried
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

GemmPeak measure_gemm_peak(CublasContext& ctx, cudaStream_t st, int n) {
    const size_t bytes = size_t(n) * n * sizeof(float);
    void* buf[3] = {nullptr, nullptr, nullptr};
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    GemmPeak peak;
    auto cleanup = [&] {
        for (void* p : buf)
            if (p) cudaFree(p);
        if (e0) cudaEventDestroy(e0);
        if (e1) cudaEventDestroy(e1);
    };
    try {
        for (void*& p : buf) {
            CUDA_CHECK(cudaMalloc(&p, bytes));
            // bytes 0x3C: floats of ~0.0115, halves of ~1.06 (non-zero data, as real work)
            CUDA_CHECK(cudaMemsetAsync(p, 0x3C, bytes, st));
        }
        CUDA_CHECK(cudaEventCreate(&e0));
        CUDA_CHECK(cudaEventCreate(&e1));
        const float one = 1.f, zero = 0.f;
        auto time = [&](cudaDataType_t t, cublasComputeType_t compute) {
            auto call = [&] {
                CUBLAS_CHECK(cublasGemmEx(ctx.handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one,
                                          buf[0], t, n, buf[1], t, n, &zero, buf[2], t, n, compute,
                                          CUBLAS_GEMM_DEFAULT));
            };
            call();  // warm-up (and cuBLAS's heuristics)
            call();
            const int reps = 10;
            CUDA_CHECK(cudaEventRecord(e0, st));
            for (int i = 0; i < reps; ++i) call();
            CUDA_CHECK(cudaEventRecord(e1, st));
            CUDA_CHECK(cudaEventSynchronize(e1));
            float ms = 0;
            CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
            return 2.0 * double(n) * n * n * reps / (double(ms) * 1e-3) * 1e-9;
        };
        peak.tf32_gflops = time(CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32);
        peak.fp16_gflops = time(CUDA_R_16F, CUBLAS_COMPUTE_32F);
    } catch (...) {
        cleanup();
        throw;
    }
    cleanup();
    return peak;
}

bool grouped_tf32_supported(CublasContext& ctx) {
    if (ctx.grouped_tf32 >= 0) return ctx.grouped_tf32 == 1;
    // C (1x1) = A B on device buffers of its own: 3 floats and 3 pointers (set-up time, before
    // any recording)
    void* mem = nullptr;
    CUDA_CHECK(cudaMalloc(&mem, 64));
    float* f = static_cast<float*>(mem);
    const void* host[3] = {f, f + 1, f + 2};
    auto** ptrs = reinterpret_cast<const void**>(static_cast<char*>(mem) + 16);
    cublasStatus_t st = CUBLAS_STATUS_INTERNAL_ERROR;
    if (cudaMemsetAsync(mem, 0, 16, ctx.stream) == cudaSuccess &&
        cudaMemcpyAsync(ptrs, host, sizeof host, cudaMemcpyHostToDevice, ctx.stream) ==
            cudaSuccess) {
        const cublasOperation_t op = CUBLAS_OP_N;
        const int one_i = 1, size = 1;
        const float alpha = 1.f, beta = 0.f;
        st = cublasGemmGroupedBatchedEx(ctx.handle, &op, &op, &one_i, &one_i, &one_i, &alpha,
                                        ptrs, CUDA_R_32F, &one_i, ptrs + 1, CUDA_R_32F, &one_i,
                                        &beta, const_cast<void* const*>(ptrs + 2), CUDA_R_32F,
                                        &one_i, 1, &size, CUBLAS_COMPUTE_32F_FAST_TF32);
    }
    const cudaError_t e = cudaStreamSynchronize(ctx.stream);
    cudaFree(mem);
    CUDA_CHECK(e);
    ctx.grouped_tf32 = st == CUBLAS_STATUS_SUCCESS ? 1 : 0;
    if (!ctx.grouped_tf32)
        std::fprintf(stderr, "speedrun: cuda: cuBLAS's grouped gemm does not take TF32 here (%s); "
                     "Muon's products run in fp32\n", cublasGetStatusString(st));
    return ctx.grouped_tf32 == 1;
}

GroupedGemm::GroupedGemm(CublasContext& ctx, const std::vector<GemmItem>& items,
                         void* ptrs_device, bool tf32)
    : ctx_(ctx), tf32_(tf32 && grouped_tf32_supported(ctx)) {
    const size_t n = items.size();
    // group order: items sorted by (flags, shape), stable
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    auto key = [&](size_t i) {
        const GemmItem& it = items[i];
        return std::make_tuple(it.trans_a, it.trans_b, it.M, it.N, it.K);
    };
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return key(x) < key(y); });
    std::vector<const void*> host(3 * n);
    for (size_t j = 0; j < n; ++j) {
        const GemmItem& it = items[order[j]];
        CUDA_ASSERT(it.M > 0 && it.N > 0 && it.K > 0);
        // row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T (as gemm() below)
        host[j] = it.B;
        host[n + j] = it.A;
        host[2 * n + j] = it.C;
        if (j == 0 || key(order[j]) != key(order[j - 1])) {
            ta_.push_back(it.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
            tb_.push_back(it.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
            m_.push_back(it.N);
            n_.push_back(it.M);
            k_.push_back(it.K);
            lda_.push_back(it.trans_b ? it.K : it.N);
            ldb_.push_back(it.trans_a ? it.M : it.K);
            ldc_.push_back(it.N);
            size_.push_back(0);
        }
        ++size_.back();
    }
    alpha_.resize(size_.size());
    beta_.resize(size_.size());
    if (n == 0) return;
    // cuBLAS's FAST compute types want the matrices 16-byte aligned where a column's bytes are a
    // multiple of 16 (cublasGemmGroupedBatchedEx's documentation); a misaligned operand would be a
    // sticky fault, not a refusal. Muon's stacked filters are aligned for every shape of the
    // presets, but not for any shape (27 3x3 filters over 3 channels would misalign the next).
    const bool misaligned = std::any_of(host.begin(), host.end(), [](const void* p) {
        return reinterpret_cast<uintptr_t>(p) % 16 != 0;
    });
    if (tf32_ && misaligned) {
        std::fprintf(stderr, "speedrun: cuda: a grouped gemm's operand is not 16-byte aligned; "
                     "those products run in fp32\n");
        tf32_ = false;
    }
    // On the backend's stream, not the legacy default one: that stream is non-blocking, so a
    // plain cudaMemcpy is unordered with the zero-fill CudaBackend::alloc queued on it for this
    // very buffer, which could land after the copy and leave null pointers for cuBLAS. The
    // synchronize keeps `host` alive until the copy has read it.
    CUDA_CHECK(cudaMemcpyAsync(ptrs_device, host.data(), host.size() * sizeof(void*),
                               cudaMemcpyHostToDevice, ctx.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    a_ = static_cast<const float* const*>(ptrs_device);
    b_ = a_ + n;
    c_ = static_cast<float* const*>(ptrs_device) + 2 * n;
}

void GroupedGemm::run(float alpha, float beta) {
    if (size_.empty()) return;
    std::fill(alpha_.begin(), alpha_.end(), alpha);
    std::fill(beta_.begin(), beta_.end(), beta);
    static_assert(sizeof(cublasOperation_t) == sizeof(int));
    if (tf32_) {
        CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
            ctx_.handle, reinterpret_cast<const cublasOperation_t*>(ta_.data()),
            reinterpret_cast<const cublasOperation_t*>(tb_.data()), m_.data(), n_.data(),
            k_.data(), alpha_.data(), reinterpret_cast<const void* const*>(a_), CUDA_R_32F,
            lda_.data(), reinterpret_cast<const void* const*>(b_), CUDA_R_32F, ldb_.data(),
            beta_.data(), reinterpret_cast<void* const*>(c_), CUDA_R_32F, ldc_.data(),
            int(size_.size()), size_.data(), CUBLAS_COMPUTE_32F_FAST_TF32));
        return;
    }
    CUBLAS_CHECK(cublasSgemmGroupedBatched(
        ctx_.handle, reinterpret_cast<const cublasOperation_t*>(ta_.data()),
        reinterpret_cast<const cublasOperation_t*>(tb_.data()), m_.data(), n_.data(), k_.data(),
        alpha_.data(), a_, lda_.data(), b_, ldb_.data(), beta_.data(), c_, ldc_.data(),
        int(size_.size()), size_.data()));
}

}  // namespace sr::cuda

std::string sr::cublas_load_error() {
    try {
        cuda::cublas_api();
        return "";
    } catch (const std::exception& e) {
        return e.what();
    }
}
