// conv_small.cu: the forward convolution of a layer with few input channels (the whitening conv,
// 3 -> 24 at 2x2, and the 3 -> 64 prep convs), a direct kernel instead of cuDNN. cuDNN's
// kernels are built for many channels: on session 15's H200 the whitening conv's forward took
// 0.24 ms per airbench94 step (2.4 TFLOP/s, 5% of the step) where writing its output once takes
// about 0.02 ms. Here each thread makes 8 output channels of one pixel from the filters held in
// shared memory (fp32, read from the storage-format copy the cuDNN path uses), sums in fp32
// (no TF32), adds the bias and rounds once to the storage format, as the CPU reference does.
// Layouts as in cudnn_conv.cpp: x NHWC, w KRSC (OHWI), y NPQK.
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

constexpr int kMaxC = 4;             // input channels
constexpr int kMaxFilter = 4096;     // K*R*S*C floats in shared memory (16 KiB)

template <class T>
__global__ void conv_small_forward_kernel(T* y, const T* x, const T* w, const float* bias,
                                          ConvShape s, int P, int Q) {
    float* sw = dynamic_shared<float>();  // the filters (smem bytes of the launch)
    const int nw = s.K * s.R * s.S * s.C;
    for (int i = threadIdx.x; i < nw; i += blockDim.x) sw[i] = load_act(w, size_t(i));
    __syncthreads();
    const int K8 = s.K / 8, RSC = s.R * s.S * s.C;  // (P, Q: s.P(), s.Q(), host functions)
    const unsigned n = unsigned(s.N) * P * Q * K8;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int k0 = int(i % unsigned(K8)) * 8;
        unsigned t = i / unsigned(K8);
        const int q = int(t % unsigned(Q));
        t /= unsigned(Q);
        const int p = int(t % unsigned(P));
        const int b = int(t / unsigned(P));
        float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = 0.f;
        for (int r = 0; r < s.R; ++r) {
            const int ih = p * s.stride - s.pad + r;
            if (ih < 0 || ih >= s.H) continue;
            for (int c2 = 0; c2 < s.S; ++c2) {
                const int iw = q * s.stride - s.pad + c2;
                if (iw < 0 || iw >= s.W) continue;
                const size_t xo = ((size_t(b) * s.H + ih) * s.W + iw) * s.C;
                const int wo = (r * s.S + c2) * s.C;
                for (int c = 0; c < s.C; ++c) {
                    const float xv = load_act(x, xo + c);
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[j] += xv * sw[(k0 + j) * RSC + wo + c];
                }
            }
        }
        if (bias) {
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j] += bias[k0 + j];
        }
        store_act8(y, size_t(i) * 8, acc);  // (i * 8 = ((b*P + p)*Q + q)*K + k0)
    }
}

}  // namespace

bool conv_small_applies(const ConvShape& s, const float* y) {
    return s.C <= kMaxC && s.K % 8 == 0 && s.K * s.R * s.S * s.C <= kMaxFilter &&
           size_t(s.N) * s.P() * s.Q() * s.K < (size_t(1) << 31) &&
           size_t(s.N) * s.H * s.W * s.C < (size_t(1) << 31) && aligned8(y);
}

void conv_small_forward(cudaStream_t st, Storage storage, float* y, const float* x,
                        const float* w, const float* bias, const ConvShape& s) {
    CUDA_ASSERT(conv_small_applies(s, y));
    const size_t threads = size_t(s.N) * s.P() * s.Q() * (s.K / 8);
    const size_t smem = size_t(s.K) * s.R * s.S * s.C * sizeof(float);
    with_storage(storage, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(conv_small_forward_kernel<T>, grid_size(threads), kBlock, smem, st,
                      as_act<T>(y), as_act<T>(x), as_act<T>(w), bias, s, s.P(), s.Q());
    });
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
