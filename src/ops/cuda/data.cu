// data.cu: the GPU side of the input pipeline, CUDA twins of cpu::normalize_pad and
// cpu::gather_crops (contract in ops/backend.h). Images are NHWC with 3 channels.
//   normalize_pad: out (N, H+2pad, W+2pad, 3) = reflect_pad((in/255 - mean) / std), reflect as
//                  PyTorch's 'reflect' mode (the edge pixel is not repeated).
//   gather_crops:  out[b][y][x] = src[i][y + pad + dy][xs + pad + dx], xs = flip ? W-1-x : x,
//                  with per-image idx / shifts / flips arrays or the scalars.
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/storage.cuh"

namespace sr::cuda {
namespace {

struct Rgb {
    float v[3];
};

// Index in [-pad, n + pad) mapped into [0, n) by reflection without edge repeat.
__device__ int reflect(int i, int n) {
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
    return i;
}

// T: the activations' storage type (the data set is stored in it).
template <class T>
__global__ void normalize_pad_kernel(T* out, const uint8_t* in, int N, int H, int W, Rgb mean,
                                     Rgb std, int pad) {
    const int Hp = H + 2 * pad, Wp = W + 2 * pad;
    const size_t n = size_t(N) * Hp * Wp * 3;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % 3);
        size_t t = i / 3;
        const int xo = int(t % Wp);
        t /= Wp;
        const int yo = int(t % Hp);
        const int b = int(t / Hp);
        const int ys = reflect(yo - pad, H), xs = reflect(xo - pad, W);
        const float v = float(in[((size_t(b) * H + ys) * W + xs) * 3 + c]);
        store_act(out, i, (v / 255.f - mean.v[c]) / std.v[c]);
    }
}

template <class T>
__global__ void gather_crops_kernel(T* out, const T* src, int H, int W, int pad, int B,
                                    const int32_t* idx, int first, const int8_t* shifts, int sy,
                                    int sx, const uint8_t* flips, int flip) {
    const int Hp = H + 2 * pad, Wp = W + 2 * pad;
    const size_t n = size_t(B) * H * W * 3;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const int c = int(i % 3);
        size_t t = i / 3;
        const int x = int(t % W);
        t /= W;
        const int y = int(t % H);
        const int b = int(t / H);
        const size_t img = idx ? size_t(idx[b]) : size_t(first) + b;
        const int dy = shifts ? shifts[2 * b] : sy;
        const int dx = shifts ? shifts[2 * b + 1] : sx;
        const bool f = flips ? flips[b] != 0 : flip != 0;
        const int xs = f ? W - 1 - x : x;
        out[i] = src[((img * Hp + (y + pad + dy)) * Wp + (xs + pad + dx)) * 3 + c];
    }
}

// x[b] = (x[b] + shift[b]) * gain[b] over each image's per_image values
template <class T>
__global__ void brightness_contrast_kernel(T* x, const float* shift, const float* gain,
                                           size_t per_image, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        const size_t b = i / per_image;
        store_act(x, i, (load_act(x, i) + shift[b]) * gain[b]);
    }
}

// Element i of the B size x size squares (C values per pixel): its image b and its offset `at`
// inside that image; false where the square runs past the image's edge.
__device__ bool square_element(size_t i, const uint8_t* pos, int H, int W, int C, int size, int& b,
                               size_t& at) {
    const int c = int(i % C);
    size_t r = i / C;
    const int dx = int(r % size);
    r /= size;
    const int dy = int(r % size);
    b = int(r / size);
    const int y = pos[2 * b] + dy, xx = pos[2 * b + 1] + dx;
    at = (size_t(y) * W + xx) * C + c;
    return y < H && xx < W;
}

// one thread per element of the B size x size squares (those outside the image skip)
template <class T>
__global__ void cutout_kernel(T* x, const uint8_t* pos, int H, int W, int C, int size, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        int b;
        size_t at;
        if (square_element(i, pos, H, W, C, size, b, at)) store_act(x, size_t(b) * H * W * C + at, 0.f);
    }
}

// the same squares: x[b] square := src[b] square
template <class T>
__global__ void cutmix_kernel(T* x, const T* src, const uint8_t* pos, int H, int W, int C, int size,
                              size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        int b;
        size_t at;
        if (square_element(i, pos, H, W, C, size, b, at)) {
            const size_t k = size_t(b) * H * W * C + at;
            x[k] = src[k];
        }
    }
}

}  // namespace

void cutmix(cudaStream_t st, Storage s, float* x, const float* src, const uint8_t* pos, int B,
            int H, int W, int C, int size) {
    const size_t n = size_t(B) * size * size * C;
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(cutmix_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(x), as_act<T>(src),
                      pos, H, W, C, size, n);
    });
    CUDA_CHECK_LAUNCH();
}

void cutout(cudaStream_t st, Storage s, float* x, const uint8_t* pos, int B, int H, int W, int C,
            int size) {
    const size_t n = size_t(B) * size * size * C;
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(cutout_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(x), pos, H, W, C,
                      size, n);
    });
    CUDA_CHECK_LAUNCH();
}

void brightness_contrast(cudaStream_t st, Storage s, float* x, const float* shift,
                         const float* gain, int B, size_t per_image) {
    const size_t n = size_t(B) * per_image;
    if (n == 0) return;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(brightness_contrast_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(x),
                      shift, gain, per_image, n);
    });
    CUDA_CHECK_LAUNCH();
}

void normalize_pad(cudaStream_t st, Storage s, float* out, const uint8_t* in, int N, int H, int W,
                   const float* mean_host, const float* std_host, int pad) {
    CUDA_ASSERT(N > 0 && H > 0 && W > 0 && pad >= 0 && pad < H && pad < W);
    const Rgb mean{{mean_host[0], mean_host[1], mean_host[2]}};
    const Rgb std{{std_host[0], std_host[1], std_host[2]}};
    const size_t n = size_t(N) * (H + 2 * pad) * (W + 2 * pad) * 3;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(normalize_pad_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(out), in, N,
                      H, W, mean, std, pad);
    });
    CUDA_CHECK_LAUNCH();
}

void gather_crops(cudaStream_t st, Storage s, float* out, const float* src, int H, int W, int pad,
                  int B, const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                  const uint8_t* flips, int flip) {
    CUDA_ASSERT(H > 0 && W > 0 && pad >= 0 && B >= 0);
    CUDA_ASSERT(shifts || (sy >= -pad && sy <= pad && sx >= -pad && sx <= pad));
    if (B == 0) return;
    const size_t n = size_t(B) * H * W * 3;
    with_storage(s, [&](auto* tag) {
        using T = SR_ACT_T(tag);
        launch_kernel(gather_crops_kernel<T>, grid_size(n), kBlock, 0, st, as_act<T>(out),
                      as_act<T>(src), H, W, pad, B, idx, first, shifts, sy, sx, flips, flip);
    });
    CUDA_CHECK_LAUNCH();
}

}  // namespace sr::cuda
