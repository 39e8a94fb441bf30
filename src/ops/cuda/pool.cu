// pool.cu: max pooling with window k, stride k, no padding, floor (PyTorch MaxPool2d(k)), NHWC,
// and the global max + mean pooling of DAWN_net's head; CUDA twins of cpu::maxpool_* and
// cpu::concat_pool_* (contract in ops/backend.h).
// Forward: one thread per output element; arg = r*k + s of the first maximum in row-major
// window order (a later element wins only if strictly greater, as PyTorch). Backward: one thread
// per input element, so every dx element is written (0 where no window took it, including the
// rows and columns that floor drops). Where C is a multiple of 8 and the tensors 16-byte aligned,
// the *_kernel8 versions do the same 8 channels at a time.
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/pool_window.cuh"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

// T: the activations' storage type (a max selects a stored value: y is exact in any format).
template <class T>
__global__ void maxpool_forward_kernel(T* y, uint8_t* arg, const T* x, int N, int H, int W, int C,
                                       int k) {
    const int Ho = H / k, Wo = W / k;
    const size_t n = size_t(N) * Ho * Wo * C;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        size_t t = i / C;
        const int px = int(t % Wo);
        t /= Wo;
        const int py = int(t % Ho);
        const int b = int(t / Ho);
        const T* base = x + ((size_t(b) * H + size_t(py) * k) * W + size_t(px) * k) * C + c;
        float best = load_act(base, 0);
        int best_at = 0;
        for (int r = 0; r < k; ++r)
            for (int s = 0; s < k; ++s) {
                const float v = load_act(base, (size_t(r) * W + s) * C);
                if (v > best) {
                    best = v;
                    best_at = r * k + s;
                }
            }
        store_act(y, i, best);
        arg[i] = uint8_t(best_at);
    }
}

template <class T>
__global__ void maxpool_backward_kernel(T* dx, const T* dy, const uint8_t* arg, int N, int H,
                                        int W, int C, int k) {
    const int Ho = H / k, Wo = W / k;
    const size_t n = size_t(N) * H * W * C;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        size_t t = i / C;
        const int xw = int(t % W);
        t /= W;
        const int yh = int(t % H);
        const int b = int(t / H);
        const int py = yh / k, px = xw / k;
        float g = 0.f;
        if (py < Ho && px < Wo) {
            const size_t o = ((size_t(b) * Ho + py) * Wo + px) * C + c;
            if (arg[o] == (yh - py * k) * k + (xw - px * k)) g = load_act(dy, o);
        }
        store_act(dx, i, g);
    }
}

// The same, 8 channels per thread (C a multiple of 8, 16-byte aligned tensors: the shapes of the
// networks), with 32-bit index arithmetic (counts below 2^31, asserted on the host): 64-bit
// division per element made the kernels above compute-bound (session 15's H200 profile: the
// 31x31x64 backward at ~0.7 TB/s). The pieces are in pool_window.cuh, which the fused pooling +
// batch norm kernels (batchnorm.cu) share. Forward: one thread per (output position, 8 channels).
template <class T>
__global__ void maxpool_forward_kernel8(T* y, uint8_t* arg, const T* x, int N, int H, int W,
                                        int C, int k) {
    const int Ho = H / k, Wo = W / k, C8 = C / 8;
    const unsigned n = unsigned(N) * Ho * Wo * C8;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const auto [c, px, py, b] = cell_of(i, C8, Wo, Ho);
        float best[8];
        int at[8];
        window_max8(x, b, py, px, c, H, W, C, k, best, at);
        const size_t o = size_t(i) * 8;  // = ((b*Ho + py)*Wo + px)*C + c
        store_act8(y, o, best);
        store_arg8(arg, o, at);
    }
}

// Backward, 8 channels per thread: maxpool_backward_windows8 (pool_window.cuh) on the stored dy.
template <class T>
struct StoredGrad8 {
    const T* dy;
    __device__ __forceinline__ void operator()(size_t o, unsigned, float (&g)[8]) const {
        load_act8(dy, o, g);
    }
};

// one thread per (image, channel): the positions are read in order, so the max's position and
// the fp32 sum follow the CPU's order
template <class T>
__global__ void concat_pool_forward_kernel(T* y, uint8_t* arg, const T* x, int N, int HW, int C) {
    const size_t n = size_t(N) * C;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        const size_t b = i / C;
        const T* base = x + b * HW * C + c;
        float best = load_act(base, 0), sum = best;
        int best_at = 0;
        for (int p = 1; p < HW; ++p) {
            const float v = load_act(base, size_t(p) * C);
            if (v > best) {
                best = v;
                best_at = p;
            }
            sum += v;
        }
        store_act(y, b * 2 * C + c, best);
        store_act(y, b * 2 * C + C + c, sum * (1.f / float(HW)));
        arg[i] = uint8_t(best_at);
    }
}

template <class T>
__global__ void concat_pool_backward_kernel(T* dx, const T* dy, const uint8_t* arg, int N, int HW,
                                            int C) {
    const size_t n = size_t(N) * HW * C;
    const float inv = 1.f / float(HW);
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % C);
        const size_t t = i / C;
        const int p = int(t % HW);
        const size_t b = t / HW;
        const size_t o = b * C + c;
        store_act(dx, i, load_act(dy, b * 2 * C + C + c) * inv +
                             (arg[o] == p ? load_act(dy, b * 2 * C + c) : 0.f));
    }
}

}  // namespace

void concat_pool_forward(cudaStream_t st, Storage s, float* y, uint8_t* arg, const float* x, int N,
                         int HW, int C) {
    CUDA_ASSERT(N > 0 && C > 0 && HW >= 1 && HW <= 256);
    const size_t n = size_t(N) * C;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(concat_pool_forward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(y), arg,
                      as_act<T>(x), N, HW, C);
    });
    CUDA_CHECK_LAUNCH();
}

void concat_pool_backward(cudaStream_t st, Storage s, float* dx, const float* dy,
                          const uint8_t* arg, int N, int HW, int C) {
    CUDA_ASSERT(N > 0 && C > 0 && HW >= 1 && HW <= 256);
    const size_t n = size_t(N) * HW * C;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(concat_pool_backward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(dx),
                      as_act<T>(dy), arg, N, HW, C);
    });
    CUDA_CHECK_LAUNCH();
}

void maxpool_forward(cudaStream_t st, Storage s, float* y, uint8_t* arg, const float* x, int N,
                     int H, int W, int C, int k) {
    CUDA_ASSERT(N > 0 && C > 0 && k >= 1 && k * k <= 256 && H >= k && W >= k);
    const size_t n = size_t(N) * (H / k) * (W / k) * C;
    const bool vec = C % 8 == 0 && aligned8(y, x, arg) && size_t(N) * H * W * C < (size_t(1) << 31);
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        if (vec)
            launch_kernel(maxpool_forward_kernel8<T>, grid_size(n / 8), kBlock, 0, st, as_act<T>(y),
                          arg, as_act<T>(x), N, H, W, C, k);
        else
            launch_kernel(maxpool_forward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(y), arg,
                          as_act<T>(x), N, H, W, C, k);
    });
    CUDA_CHECK_LAUNCH();
}

void maxpool_backward(cudaStream_t st, Storage s, float* dx, const float* dy, const uint8_t* arg,
                      int N, int H, int W, int C, int k) {
    CUDA_ASSERT(N > 0 && C > 0 && k >= 1 && k * k <= 256 && H >= k && W >= k);
    const size_t n = size_t(N) * H * W * C;
    const bool vec = C % 8 == 0 && aligned8(dx, dy, arg) && n < (size_t(1) << 31);
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        if (vec) {
            launch_kernel(maxpool_backward_windows8<T, StoredGrad8<T>>,
                          grid_size(pool_windows8(N, H, W, C, k)), kBlock, 0, st, as_act<T>(dx),
                          StoredGrad8<T>{as_act<T>(dy)}, arg, N, H, W, C, k);
        } else {
            launch_kernel(maxpool_backward_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(dx),
                          as_act<T>(dy), arg, N, H, W, C, k);
        }
    });
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
