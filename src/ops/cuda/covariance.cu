// covariance.cu: uncentred covariance (and mean) of all k x k patches (stride 1, valid) of N NHWC
// images, CUDA twin of cpu::patch_covariance (contract in ops/backend.h); used once per run to
// build the whitening conv (D = C*k*k = 12 there).
// Patch vector order is (c, r, s), as PyTorch's unfold: element e = c*k*k + r*k + s.
// Kernel cov_partials: blockIdx.y picks a chunk of patches, each thread one (i, j) entry of the
// D x D matrix; the products x_i x_j are formed and summed in double (a product of two floats is
// exact in double); D more threads sum the elements themselves (the mean). Kernel cov_reduce adds
// the chunks in double. Entries (i, j) and (j, i) add the same products in the same order, so the
// result is exactly symmetric.
#include <algorithm>
#include <vector>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

constexpr int kPairThreads = 256;
constexpr size_t kMaxPartialEntries = size_t(4) << 20;  // 32 MiB of double partials at most

struct CovPlan {
    size_t patches;  // N * (H-k+1) * (W-k+1)
    int D, pairs, chunks;  // pairs: D*D products, then D sums
    size_t per_chunk;  // patches per chunk
};

CovPlan plan(int N, int H, int W, int C, int k) {
    CovPlan p;
    p.patches = size_t(N) * (H - k + 1) * (W - k + 1);
    p.D = C * k * k;
    p.pairs = p.D * p.D + p.D;
    size_t chunks = std::min<size_t>(1024, kMaxPartialEntries / size_t(p.pairs));
    chunks = std::max<size_t>(1, std::min(chunks, p.patches));
    p.per_chunk = (p.patches + chunks - 1) / chunks;
    p.chunks = int((p.patches + p.per_chunk - 1) / p.per_chunk);
    return p;
}

template <class T>
__global__ void cov_partials(double* partial, const T* x, int H, int W, int C, int k,
                             size_t patches, size_t per_chunk) {
    const int D = C * k * k;
    const int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= D * D + D) return;
    const bool sum_only = pair >= D * D;  // the sum of element pair - D*D
    const int ei = sum_only ? pair - D * D : pair / D, ej = sum_only ? ei : pair % D;
    const int kk = k * k;
    // offsets of elements i and j inside a patch, relative to its top-left pixel
    const int ci = ei / kk, ri = (ei / k) % k, si = ei % k;
    const int cj = ej / kk, rj = (ej / k) % k, sj = ej % k;
    const size_t off_i = (size_t(ri) * W + si) * C + ci;
    const size_t off_j = (size_t(rj) * W + sj) * C + cj;
    const int Po = H - k + 1, Qo = W - k + 1;
    const size_t q0 = size_t(blockIdx.y) * per_chunk;
    const size_t q1 = q0 + per_chunk < patches ? q0 + per_chunk : patches;
    double acc = 0;
    for (size_t q = q0; q < q1; ++q) {
        const int px = int(q % Qo);
        const size_t t = q / Qo;
        const int py = int(t % Po);
        const size_t b = t / Po;
        const T* p = x + ((b * H + py) * W + px) * C;
        const double vi = load_act(p, off_i);
        acc += sum_only ? vi : vi * double(load_act(p, off_j));
    }
    partial[size_t(blockIdx.y) * (D * D + D) + pair] = acc;
}

__global__ void cov_reduce(double* out, const double* partial, int pairs, int chunks) {
    const int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= pairs) return;
    double s = 0;
    for (int c = 0; c < chunks; ++c) s += partial[size_t(c) * pairs + pair];
    out[pair] = s;
}

}  // namespace

size_t covariance_scratch_bytes(int N, int H, int W, int C, int k) {
    const CovPlan p = plan(N, H, W, C, k);
    return (size_t(p.chunks) + 1) * p.pairs * sizeof(double);
}

void patch_covariance(cudaStream_t st, Storage s, void* scratch, double* cov_host,
                      double* mean_host, const float* x, int N, int H, int W, int C, int k) {
    CUDA_ASSERT(N > 0 && C > 0 && k >= 1 && H >= k && W >= k);
    const CovPlan p = plan(N, H, W, C, k);
    CUDA_ASSERT(p.chunks <= 65535);
    double* partial = static_cast<double*>(scratch);
    double* sum = partial + size_t(p.chunks) * p.pairs;
    const dim3 grid(ceil_div(size_t(p.pairs), kPairThreads), unsigned(p.chunks));
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(cov_partials<T>, grid, kPairThreads, 0, st, partial, as_act<T>(x), H, W, C, k,
                      p.patches, p.per_chunk);
    });
    CUDA_CHECK_LAUNCH();
    launch_kernel(cov_reduce, ceil_div(size_t(p.pairs), kPairThreads), kPairThreads, 0, st, sum,
                  partial, p.pairs, p.chunks);
    CUDA_CHECK_LAUNCH();
    std::vector<double> host(size_t(p.pairs));
    CUDA_CHECK(cudaMemcpyAsync(host.data(), sum, size_t(p.pairs) * sizeof(double),
                               cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    const int DD = p.D * p.D;
    for (int i = 0; i < DD; ++i) cov_host[i] = host[i] / double(p.patches);
    if (mean_host)
        for (int i = 0; i < p.D; ++i) mean_host[i] = host[DD + i] / double(p.patches);
}

}  // namespace sr::cuda
