// loss.cu: label-smoothed cross-entropy summed over the batch, with its gradient and the
// accuracy count; CUDA twin of cpu::cross_entropy (contract in ops/backend.h).
// O is small (10 classes), so one thread takes a whole row. The kernel runs as ONE block
// (rows in a block-stride loop), so the batch sums are reduced in a fixed order and
// stats[0] += loss, stats[1] += correct are plain adds by thread 0: no atomics, deterministic.
//   target_j = (1 - s) [j == label] + s / O   (mixed: (1 - mix) target(label) + mix target(label2))
//   loss_row = logsumexp(l) - sum_j target_j l_j        (sum_j target_j = 1)
//   dlogits_j = softmax_j - target_j
#include <cmath>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"

namespace sr::cuda {
namespace {

constexpr int kLossThreads = 256;

__global__ void cross_entropy_kernel(float* dlogits, float* stats, const float* logits,
                                     const int32_t* labels, const int32_t* labels2, float mix,
                                     int N, int O, float smoothing) {
    SR_SHARED(double, sh_loss, [kLossThreads]);
    SR_SHARED(double, sh_correct, [kLossThreads]);
    double loss_sum = 0, correct = 0;
    const float off = smoothing / float(O);
    for (int row = threadIdx.x; row < N; row += blockDim.x) {
        const float* l = logits + size_t(row) * O;
        float* d = dlogits + size_t(row) * O;
        const int label = labels[row];
        const bool label_ok = label >= 0 && label < O;
        float mx = l[0];
        int amax = 0;
        for (int j = 0; j < O; ++j) {
            if (l[j] > mx) {
                mx = l[j];
                amax = j;
            }
        }
        float se = 0.f;
        double sum_rel = 0;  // sum of (l_j - max), in double: no cancellation of two ~max terms
        for (int j = 0; j < O; ++j) {
            se += expf(l[j] - mx);
            sum_rel += double(l[j] - mx);
        }
        // the one-hot part's weights: w1 on label, w2 on label2 (mixed rows only); a label out
        // of range adds no one-hot term, as on the CPU
        const int label2 = labels2 ? labels2[row] : -1;
        const bool label2_ok = label2 >= 0 && label2 < O;
        const float w2 = labels2 ? mix : 0.f, w1 = 1.f - w2;
        const double rel1 = label_ok ? double(l[label] - mx) : 0.0;
        const double rel2 = label2_ok ? double(l[label2] - mx) : 0.0;
        // loss = sum_j target_j (lse - l_j) = log(se) sum_j target_j - sum_j target_j (l_j - max)
        const double one_hot = (1.0 - smoothing) * ((label_ok ? w1 : 0.f) + (label2_ok ? w2 : 0.f));
        const double sum_target = one_hot + double(off) * O;
        loss_sum += log(double(se)) * sum_target -
                    ((1.0 - smoothing) * (w1 * rel1 + w2 * rel2) + off * sum_rel);
        correct += (label_ok && amax == label) ? 1.0 : 0.0;
        const float inv_se = 1.f / se;
        for (int j = 0; j < O; ++j)
            d[j] = expf(l[j] - mx) * inv_se -
                   ((j == label ? w1 * (1.f - smoothing) : 0.f) +
                    (j == label2 ? w2 * (1.f - smoothing) : 0.f) + off);
    }
    sh_loss[threadIdx.x] = loss_sum;
    sh_correct[threadIdx.x] = correct;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            sh_loss[threadIdx.x] += sh_loss[threadIdx.x + s];
            sh_correct[threadIdx.x] += sh_correct[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        stats[0] += float(sh_loss[0]);
        stats[1] += float(sh_correct[0]);
    }
}

}  // namespace

void cross_entropy(cudaStream_t st, float* dlogits, float* stats, const float* logits,
                   const int32_t* labels, int N, int O, float smoothing) {
    CUDA_ASSERT(N >= 0 && O > 0);  // (an empty slice adds nothing, as on the CPU)
    launch_kernel(cross_entropy_kernel, 1, kLossThreads, 0, st, dlogits, stats, logits, labels,
                  nullptr, 0.f, N, O, smoothing);
    CUDA_CHECK_LAUNCH();
}

void cross_entropy_mixed(cudaStream_t st, float* dlogits, float* stats, const float* logits,
                         const int32_t* labels, const int32_t* labels2, float mix, int N, int O,
                         float smoothing) {
    CUDA_ASSERT(N >= 0 && O > 0);
    launch_kernel(cross_entropy_kernel, 1, kLossThreads, 0, st, dlogits, stats, logits, labels,
                  labels2, mix, N, O, smoothing);
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
