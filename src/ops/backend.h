// backend.h: the contract between the recipe and a compute backend (CPU or CUDA).
//
// The recipe (model, optimizer, schedule, augmentation policy, training loop) calls only what is
// declared here, so it never knows which backend runs. Each backend implements every op twice in
// spirit: src/ops/cpu/ holds the reference (and fast CPU) versions in namespace sr::cpu,
// src/ops/cuda/ the same names in sr::cuda. tests/ops/ compares the two on random inputs.
//
// Conventions that hold for every op (docs/conventions.md says the same at more length):
// - Size letters: N batch, H/W height/width, C channels (C_in, K = C_out), M = N*H*W rows.
// - Activations are NHWC in device memory of the backend that made them, stored in the
//   backend's storage() format (below): fp32 by default.
// - Conv weights are OHWI (K, R, S, C_in): the layout cuDNN calls KRSC and oneDNN "ohwi".
//   Linear weights are (out, in), row-major, as PyTorch.
// - Every pointer argument is device memory of this backend unless the name ends in _host.
// - Outputs come first, then inputs, then saved statistics, then sizes.
// - Gradients are ASSIGNED (=), never accumulated: every backward op writes its outputs with =.
//   Where an activation feeds two branches (the residual networks), the network adds the second
//   gradient explicitly (residual_add). Zeroing is never required.
// - Ops may run asynchronously (CUDA stream). Host reads go through download(), which waits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/function_ref.h"

namespace sr {

enum class Device { cpu, cuda };

// How a backend stores activations (mixed precision: 16-bit storage, fp32 math inside each op).
//
// The activation arguments of the ops are the tensors that flow between layers: every x, y, z,
// dx, dy, dz of convolutions, batch norm, activations and pooling; the x and dx of linear; the
// images of the data ops (normalize_pad's out, gather_crops' src and out, the x and src of
// brightness_contrast, cutout, cutmix, patch_covariance); both operands of residual_add. They
// are declared float* and allocated for n floats, but hold n values of storage(): with
// Storage::f16 / bf16 the first 2n bytes hold IEEE half / bfloat16 values (round to nearest
// even, saturating at the largest finite value), so copies of whole buffers work unchanged, and
// an element offset into an activation buffer must go through Backend::act_at().
// Everything else stays fp32 in every storage: weights (an op rounds its own copy of the conv
// weights to storage() for the math, and the conv weight gradient comes back rounded to it, as
// tensor-core convolutions compute them), biases and their gradients, the linear layer's weights
// and gradient, logits and their gradient, BN statistics, losses and the optimizer's state.
enum class Storage { f32, f16, bf16 };
inline const char* storage_name(Storage s) {
    return s == Storage::f16 ? "fp16" : s == Storage::bf16 ? "bf16" : "fp32";
}
inline size_t storage_bytes(Storage s) { return s == Storage::f32 ? 4 : 2; }

// The activations of the networks (the plain ops below and the fused batch norm + activation).
enum class ActKind { gelu, silu, relu, celu };

// Shape of a 2D convolution with symmetric zero padding, NHWC. Output pixel (p, q) reads the
// input window whose top-left corner is (p * stride - pad, q * stride - pad), as PyTorch's Conv2d.
struct ConvShape {
    int N = 0, H = 0, W = 0, C = 0;  // input
    int K = 0;                       // output channels
    int R = 3, S = 3;                // kernel height, width
    int pad = 1;                     // zero padding on every side
    int stride = 1;                  // the same in both directions
    // only forward() will be called (an evaluation workspace): a backend may set up, time and
    // hold memory for the forward alone (the CPU: the Winograd-or-direct choice by forward time;
    // CUDA: no backward algorithms, workspace or gradient buffer); every backend refuses
    // backward calls on it (Conv2d::refuse_unplanned)
    bool forward_only = false;
    // Backward paths the network never takes, so that a backend need not set them up (CUDA: no
    // algorithm search, graph plan or workspace for them): no_input_grad, backward_data is never
    // called (the network's first convolution: its input is the images); frozen_weights,
    // backward_weights only ever computes db (dw == nullptr: the whitening conv). Every backend
    // refuses the calls left out (Conv2d::refuse_unplanned).
    bool no_input_grad = false;
    bool frozen_weights = false;
    bool computes_dx() const { return !forward_only && !no_input_grad; }
    bool computes_dw() const { return !forward_only && !frozen_weights; }
    int P() const { return (H + 2 * pad - R) / stride + 1; }  // output height
    int Q() const { return (W + 2 * pad - S) / stride + 1; }  // output width
    double flops_forward() const { return 2.0 * N * P() * Q() * K * C * R * S; }
};

// A convolution set up once for one shape (primitives/algorithms chosen, workspace held),
// then run many times. Copying is not allowed.
class Conv2d {
public:
    explicit Conv2d(const ConvShape& s) : shape(s) {}
    virtual ~Conv2d() = default;
    Conv2d(const Conv2d&) = delete;
    Conv2d& operator=(const Conv2d&) = delete;

    // y (N,P,Q,K) = conv(x (N,H,W,C), w (K,R,S,C)) [+ bias (K) if bias != nullptr]
    virtual void forward(float* y, const float* x, const float* w, const float* bias) = 0;
    // dx (N,H,W,C) = conv_transpose(dy (N,P,Q,K), w)
    virtual void backward_data(float* dx, const float* dy, const float* w) = 0;
    // dw (K,R,S,C) = correlation of x and dy; db (K) = sum of dy over N,P,Q if db != nullptr.
    // dw == nullptr: db only (a layer whose weights are frozen: the whitening conv; x unused).
    virtual void backward_weights(float* dw, float* db, const float* dy, const float* x) = 0;
    // Both gradients of one dy: backward_weights(dw, db, dy, x), then dw_ready() where given (dw
    // and db are final: a data-parallel run starts reducing them), then backward_data(dx, dy, w)
    // unless dx == nullptr; the same results as those calls. A backend may share work between the
    // two (the CPU's Winograd path puts dy into its blocked layout once); decorators that time or
    // record each direction (ops/forwarding_backend.h) keep the two calls.
    virtual void backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                          const float* w, FunctionRef<void()> dw_ready = {}) {
        backward_weights(dw, db, dy, x);
        if (dw_ready) dw_ready();
        if (dx) backward_data(dx, dy, w);
    }

    const ConvShape shape;

protected:
    // Throws sr::Error naming the call and the shape for a backward call the shape left out:
    // any on a forward-only conv (an evaluation workspace's), one computing dx (dx) or dw (dw)
    // on a conv set up without it (ConvShape::no_input_grad, frozen_weights). Every backend's
    // backward_data and backward_weights (and the CPU's combined backward) start with it, so
    // that such a call fails alike on the CPU and on a GPU (ops/backend.cpp).
    void refuse_unplanned(const char* call, bool dx, bool dw) const;
};

// Elapsed time of the work queued between start() and stop(), measured as the field measures it:
// CUDA events on the GPU (recorded on the backend's stream), the steady clock on the CPU.
class DeviceTimer {
public:
    virtual ~DeviceTimer() = default;
    virtual void start() = 0;
    virtual double stop_seconds() = 0;  // waits for the queued work; seconds since start()
    // The same in two halves, so that many intervals can be marked without waiting between them
    // (ops/profiling_backend.h): stop() marks the end, elapsed() waits for the work up to it and
    // returns the seconds from start() to stop(). Where ops run synchronously (the CPU) stop()
    // can simply read the clock.
    virtual void stop() { last_ = stop_seconds(); }
    virtual double elapsed() { return last_; }

private:
    double last_ = 0;
};

// Work recorded once and replayed (a CUDA graph): the launch overhead of a whole training step
// paid once. Replays use the pointers and scalar arguments of the recorded calls.
class Recording {
public:
    virtual ~Recording() = default;
    virtual void replay() = 0;              // queues the recorded work again
    virtual size_t kernel_count() const = 0;  // kernels in it (library kernels included)
    virtual size_t node_count() const = 0;    // every node (kernels, memsets, copies)
};

// One row-major product of a GemmList: C (M,N) = alpha op(A) op(B) + beta C, as Backend::gemm.
struct GemmItem {
    float* C = nullptr;
    const float* A = nullptr;
    const float* B = nullptr;
    int M = 0, N = 0, K = 0;
    bool trans_a = false, trans_b = false;
};

// Independent products with pointers and shapes fixed at set-up, run many times: Muon's
// Newton-Schulz step over all filters at once. One library call where the backend has a grouped
// product (cuBLAS's grouped batched gemm), a loop of gemm() elsewhere. No item writes what
// another item reads. Copying is not allowed.
// The arithmetic of a GemmList's products: fp32, or TF32 tensor cores where the device has them
// and allows them (inputs rounded to 10-bit mantissas, fp32 sums: the precision of the fp16 /
// bf16 Newton-Schulz products of the peers' Muon); elsewhere tf32 computes fp32.
enum class GemmMath { fp32, tf32 };

class GemmList {
public:
    explicit GemmList(std::vector<GemmItem> items) : items_(std::move(items)) {}
    virtual ~GemmList() = default;
    GemmList(const GemmList&) = delete;
    GemmList& operator=(const GemmList&) = delete;
    // every item: C = alpha op(A) op(B) + beta C (C not read when beta == 0)
    virtual void run(float alpha, float beta) = 0;
    const std::vector<GemmItem>& items() const { return items_; }
    double flops() const {
        double f = 0;
        for (const GemmItem& it : items_) f += 2.0 * it.M * it.N * it.K;
        return f;
    }

protected:
    std::vector<GemmItem> items_;
};

// A range [begin, end) of the parameter arenas with its own lr and weight decay: one optimizer
// group of Backend::sgd_nesterov_ranges.
struct SgdRange {
    size_t begin = 0, end = 0;
    float lr = 0, wd = 0;
};
inline constexpr int kMaxSgdRanges = 8;

// A device's measured dense matrix-multiply peak (Backend::measure_gemm_peak), for the "share
// of peak" figures of `speedrun bench`; 0 where not measured.
struct GemmPeak {
    double tf32_gflops = 0;  // fp32 data on tensor cores (what CUDA's fp32 convolutions use)
    double fp16_gflops = 0;  // fp16 data, fp32 accumulation
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual Device device() const = 0;
    virtual std::string name() const = 0;  // e.g. "cpu (oneDNN 3.0, 2 threads)"
    // The format of the activation arguments (see Storage); fp32 unless the backend says other.
    virtual Storage storage() const { return Storage::f32; }
    // The address of element k of the activation buffer p (its storage's element size).
    float* act_at(float* p, size_t k) const {
        return reinterpret_cast<float*>(reinterpret_cast<char*>(p) + k * storage_bytes(storage()));
    }
    const float* act_at(const float* p, size_t k) const {
        return reinterpret_cast<const float*>(reinterpret_cast<const char*>(p) +
                                              k * storage_bytes(storage()));
    }

    // ---- memory -----------------------------------------------------------------------------
    virtual void* alloc(size_t bytes) = 0;  // zero-filled
    virtual void release(void* p) = 0;
    virtual void upload(void* dst, const void* src_host, size_t bytes) = 0;
    virtual void download(void* dst_host, const void* src, size_t bytes) = 0;  // waits
    virtual void copy(void* dst, const void* src, size_t bytes) = 0;             // device to device
    virtual void synchronize() = 0;
    // Peak device memory allocated through alloc() so far, in bytes.
    virtual size_t peak_bytes() const = 0;
    virtual std::unique_ptr<DeviceTimer> make_timer() = 0;

    // Ops called between begin_recording() and end_recording() are recorded, not run, where the
    // backend can record (CUDA stream capture); begin_recording() returns false where it cannot
    // (the CPU), and ops then run as usual. end_recording() returns nullptr with the reason in
    // *why when the recording failed (the backend is usable again either way).
    virtual bool begin_recording() { return false; }
    virtual std::unique_ptr<Recording> end_recording(std::string* why) {
        if (why) *why = "this backend does not record";
        return nullptr;
    }

    // ---- convolution ------------------------------------------------------------------------
    virtual std::unique_ptr<Conv2d> make_conv(const ConvShape& s) = 0;

    // ---- batch norm over M rows of C channels (NHWC flattened) --------------------------------
    // Training mode. y = (x - mean) * invstd * gamma + beta, with the batch mean and the biased
    // batch variance; saves mean (C) and invstd = 1/sqrt(var + eps) (C) for backward; updates
    // running_mean/var in place the PyTorch way: r = (1 - momentum) r + momentum * batch, with the
    // unbiased variance (var * M / (M - 1)) for running_var. gamma == nullptr means gamma = 1.
    virtual void bn_forward_train(float* y, float* mean, float* invstd, float* running_mean,
                                  float* running_var, const float* x, const float* gamma,
                                  const float* beta, int M, int C, float eps, float momentum) = 0;
    // Inference mode: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
    virtual void bn_forward_eval(float* y, const float* x, const float* running_mean,
                                 const float* running_var, const float* gamma, const float* beta,
                                 int M, int C, float eps) = 0;
    // dx (M,C) =, dgamma (C) = (skipped if nullptr), dbeta (C) = (skipped if nullptr).
    // x is the forward input; mean/invstd as saved by bn_forward_train.
    virtual void bn_backward(float* dx, float* dgamma, float* dbeta, const float* dy,
                             const float* x, const float* mean, const float* invstd,
                             const float* gamma, int M, int C) = 0;

    // ---- batch norm in pieces: statistics over several processes (sync-BN, src/dist/) ---------
    // The same computation as bn_forward_train / bn_backward, split where the per-channel sums
    // are complete, so a caller can add other processes' sums (an all-reduce) in between. With
    // nothing in between they give bn_forward_train's and bn_backward's results (up to rounding):
    //   bn_stats(s1, x, nullptr, 0, M, C); bn_stats(s2, x, s1, 1/M, M, C);
    //   bn_apply(y, mean, invstd, rm, rv, x, gamma, beta, s2, s1, 1/M, M, M, C, eps, momentum)
    // (two passes: the second sums deviations from the first pass's mean, so a large mean does
    // not cancel). count is the number of rows over all processes (M here).
    //
    // sums (2C) = [sum (x - center), sum (x - center)^2] over the M rows, per channel, where
    // center[c] = center_sums[c] * center_scale (center_sums == nullptr: center 0).
    virtual void bn_stats(float* sums, const float* x, const float* center_sums,
                          float center_scale, int M, int C) = 0;
    // From sums about center (as bn_stats) over `count` rows in all: mean = center + sums[c] /
    // count, biased var = sums[C + c] / count - (sums[c] / count)^2. Saves mean (C) and invstd
    // (C); updates running_mean/var as bn_forward_train (unbiased: var * count / (count - 1));
    // y (M,C) = (x - mean) * invstd * gamma + beta over this process's M rows.
    virtual void bn_apply(float* y, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma,
                          const float* beta, const float* sums, const float* center_sums,
                          float center_scale, int64_t count, int M, int C, float eps,
                          float momentum) = 0;
    // sums (2C) = [sum dy, sum dy * xhat] over the M rows, xhat = (x - mean) * invstd;
    // dgamma (C) = sums[C..2C), dbeta (C) = sums[0..C) (this process's rows; skipped if nullptr).
    virtual void bn_backward_reduce(float* sums, float* dgamma, float* dbeta, const float* dy,
                                    const float* x, const float* mean, const float* invstd,
                                    int M, int C) = 0;
    // dx (M,C) = gamma * invstd * (dy - sums[c] / count - xhat * sums[C + c] / count), with the
    // sums of bn_backward_reduce over `count` rows in all.
    virtual void bn_backward_apply(float* dx, const float* dy, const float* x, const float* mean,
                                   const float* invstd, const float* gamma, const float* sums,
                                   int64_t count, int M, int C) = 0;

    // ---- batch norm + activation, fused --------------------------------------------------------
    // z (M,C) = act(y) with y the batch norm of x exactly as bn_forward_train (the same mean,
    // invstd and running-statistics updates) or bn_forward_eval compute it; y itself is not
    // stored. alpha: CELU's parameter (unused by the other kinds). One pass less over the data
    // than the two ops, and no y to keep for backward.
    virtual void bn_act_forward_train(float* z, float* mean, float* invstd, float* running_mean,
                                      float* running_var, const float* x, const float* gamma,
                                      const float* beta, int M, int C, float eps, float momentum,
                                      ActKind act, float alpha) = 0;
    virtual void bn_act_forward_eval(float* z, const float* x, const float* running_mean,
                                     const float* running_var, const float* gamma,
                                     const float* beta, int M, int C, float eps, ActKind act,
                                     float alpha) = 0;
    // dx, dgamma, dbeta as bn_backward with dy = dz * act'(y), y = (x - mean) invstd gamma + beta
    // recomputed from the forward input x (gamma, beta == nullptr: 1, 0). dx may be dz (in
    // place: each element of dz is read before that element of dx is written).
    virtual void bn_act_backward(float* dx, float* dgamma, float* dbeta, const float* dz,
                                 const float* x, const float* mean, const float* invstd,
                                 const float* gamma, const float* beta, int M, int C, ActKind act,
                                 float alpha) = 0;

    // ---- max pooling, then batch norm + activation (the airbench groups' conv -> pool -> BN ->
    // act), training: p (N,H/k,W/k,C) and arg = maxpool_forward(x), z = act(BN(p)) as
    // bn_act_forward_train computes it (same mean, invstd, running statistics), M = N (H/k) (W/k)
    // pooled rows. The backward takes dz to dx (N,H,W,C) as bn_act_backward into dp then
    // maxpool_backward(dx, dp) would (dgamma, dbeta as bn_act_backward; dp: scratch the size of
    // p, which a fused backend need not touch). These defaults run the ops in turn on this
    // backend (so decorators round or time each op); CUDA fuses them (the pooling pass also sums
    // the statistics; the BN dx goes straight into the pooling's window), one pass over p less
    // forward, one write and read of dp less backward.
    virtual void pool_bn_act_forward_train(float* z, float* p, uint8_t* arg, float* mean,
                                           float* invstd, float* running_mean, float* running_var,
                                           const float* x, const float* gamma, const float* beta,
                                           int N, int H, int W, int C, int k, float eps,
                                           float momentum, ActKind act, float alpha) {
        maxpool_forward(p, arg, x, N, H, W, C, k);
        bn_act_forward_train(z, mean, invstd, running_mean, running_var, p, gamma, beta,
                             N * (H / k) * (W / k), C, eps, momentum, act, alpha);
    }
    virtual void bn_act_pool_backward(float* dx, float* dgamma, float* dbeta, float* dp,
                                      const float* dz, const float* p, const uint8_t* arg,
                                      const float* mean, const float* invstd, const float* gamma,
                                      const float* beta, int N, int H, int W, int C, int k,
                                      ActKind act, float alpha) {
        bn_act_backward(dp, dgamma, dbeta, dz, p, mean, invstd, gamma, beta,
                        N * (H / k) * (W / k), C, act, alpha);
        maxpool_backward(dx, dp, arg, N, H, W, C, k);
    }

    // GemmPeak of this device: on CUDA, cuBLAS on 8192^3 products (about a second, ~1 GiB of
    // device memory for the moment, outside peak_bytes()); {} where the backend does not measure
    // (the CPU has measure_cpu_peak in core/cpu_peak.h). Not while recording.
    virtual GemmPeak measure_gemm_peak() { return {}; }

    // The native stream this backend's ops are queued on (a cudaStream_t on CUDA), for a library
    // that must order its own work with them (NCCL in src/dist/); nullptr on the CPU.
    virtual void* native_stream() { return nullptr; }

    // ---- activations (exact, erf-based GELU) -------------------------------------------------
    virtual void gelu_forward(float* y, const float* x, size_t n) = 0;
    virtual void gelu_backward(float* dx, const float* dy, const float* x, size_t n) = 0;

    // SiLU (x * sigmoid(x)), the Muon recipes' activation.
    virtual void silu_forward(float* y, const float* x, size_t n) = 0;
    virtual void silu_backward(float* dx, const float* dy, const float* x, size_t n) = 0;

    // ReLU (cifar10-fast's ResNet-9) and CELU with parameter alpha (cifar10-fast-simple):
    //   celu(x) = x for x > 0, else alpha (exp(x / alpha) - 1);  celu'(x) = 1 or exp(x / alpha).
    // The derivative at x = 0 is taken from the left (0 for ReLU, 1 for CELU), as PyTorch.
    virtual void relu_forward(float* y, const float* x, size_t n) = 0;
    virtual void relu_backward(float* dx, const float* dy, const float* x, size_t n) = 0;
    virtual void celu_forward(float* y, const float* x, size_t n, float alpha) = 0;
    virtual void celu_backward(float* dx, const float* dy, const float* x, size_t n, float alpha) = 0;

    // Residual connections: y += x over n activations (in storage()). Separate from axpy, which
    // works on fp32 parameters and optimizer state.
    virtual void residual_add(float* y, const float* x, size_t n) = 0;

    // ---- max pooling, window k, stride k, no padding, floor (PyTorch MaxPool2d(k)) ---------
    // y (N,H/k,W/k,C); arg (same size) = index in 0..k*k-1 of the max inside its window
    // (first max in row-major window order wins, as PyTorch).
    virtual void maxpool_forward(float* y, uint8_t* arg, const float* x, int N, int H, int W,
                                 int C, int k) = 0;
    // dx (N,H,W,C) = (every element written; zero where no window took it)
    virtual void maxpool_backward(float* dx, const float* dy, const uint8_t* arg, int N, int H,
                                  int W, int C, int k) = 0;

    // ---- global max and average pooling, concatenated (cifar10-fast's DAWN_net head) ----------
    // Over the HW = H*W positions of x (N,H,W,C): y (N,2C), y[n][c] = the max, y[n][C + c] = the
    // mean (fp32 sum / HW) of channel c, as torch.cat([MaxPool2d(H)(x), AvgPool2d(H)(x)], 1)
    // flattened; arg (N,C) = position of the max (first max wins), HW <= 256.
    virtual void concat_pool_forward(float* y, uint8_t* arg, const float* x, int N, int HW,
                                     int C) = 0;
    // dx (N,H,W,C) = dy[n][c] at the max's position (0 elsewhere) + dy[n][C + c] / HW
    virtual void concat_pool_backward(float* dx, const float* dy, const uint8_t* arg, int N,
                                      int HW, int C) = 0;

    // ---- linear, no bias: y (N,O) = scale * x (N,I) w^T (w is (O,I)) --------------------------
    virtual void linear_forward(float* y, const float* x, const float* w, int N, int I, int O,
                                float scale) = 0;
    // dx (N,I) = (skipped if nullptr); dw (O,I) =
    virtual void linear_backward(float* dx, float* dw, const float* dy, const float* x,
                                 const float* w, int N, int I, int O, float scale) = 0;

    // ---- loss ---------------------------------------------------------------------------------
    // Cross-entropy with label smoothing s over N rows of O logits, summed over the batch:
    // target = (1 - s) onehot + s / O. dlogits (N,O) = softmax - target (the gradient of the sum).
    // stats[0] += summed loss, stats[1] += number of rows whose argmax equals the label
    // (stats is a device array of 2 floats; it accumulates, so an epoch's sums build up).
    virtual void cross_entropy(float* dlogits, float* stats, const float* logits,
                               const int32_t* labels, int N, int O, float smoothing) = 0;
    // The same with every row's target mixed from two labels (cutmix, hlb-CIFAR10):
    // target = (1 - mix) target(labels) + mix target(labels2); the accuracy count compares the
    // argmax with labels (the larger share while mix < 1/2).
    virtual void cross_entropy_mixed(float* dlogits, float* stats, const float* logits,
                                     const int32_t* labels, const int32_t* labels2, float mix,
                                     int N, int O, float smoothing) = 0;

    // ---- optimizer ------------------------------------------------------------------------------
    // PyTorch SGD with Nesterov momentum and (coupled) weight decay, over n values:
    //   g' = g + wd p;  buf = momentum buf + g';  p -= lr (g' + momentum buf)
    virtual void sgd_nesterov(float* p, float* buf, const float* g, size_t n, float lr, float wd,
                              float momentum) = 0;
    // Nesterov SGD with the lr inside the velocity, as cifar10-fast and cifar10-fast-simple write
    // it (differs from the form above when lr changes between steps):
    //   d = -lr (g + wd p);  v = momentum v + d;  p += d + momentum v
    virtual void sgd_nesterov_velocity(float* p, float* v, const float* g, size_t n, float lr,
                                       float wd, float momentum) = 0;
    // The optimizer's groups in one launch: on each range r of p, buf, g (indices into them),
    // sgd_nesterov (velocity == false) or sgd_nesterov_velocity (true) with r's lr and wd.
    // ranges_host: count <= kMaxSgdRanges non-overlapping ranges in host memory, read during
    // the call (a recording keeps a copy).
    virtual void sgd_nesterov_ranges(float* p, float* buf, const float* g,
                                     const SgdRange* ranges_host, int count, float momentum,
                                     bool velocity) = 0;
    // Lookahead / EMA: ema = ema + t (p - ema); p = ema.   (t = 1 - decay)
    virtual void lerp_assign(float* ema, float* p, size_t n, float t) = 0;
    // y += a x
    virtual void axpy(float* y, const float* x, float a, size_t n) = 0;
    // x *= a
    virtual void scale(float* x, float a, size_t n) = 0;
    // x *= target / (||x||_2 + eps), the norm taken on the device (no host round trip).
    virtual void scale_to_norm(float* x, size_t n, float target, float eps) = 0;
    // Muon's momentum: buf = momentum buf + g;  u = nesterov ? g + momentum buf : buf.
    virtual void momentum_direction(float* u, float* buf, const float* g, size_t n,
                                    float momentum, bool nesterov) = 0;
    // Row-major matrices: C (M,N) = alpha op(A) op(B) + beta C, op(A) (M,K), op(B) (K,N), op the
    // transpose when trans_a / trans_b (A is then stored (K,M), B (N,K)). C is not read when
    // beta == 0. fp32 throughout (no TF32): Muon's Newton-Schulz iteration runs on it.
    virtual void gemm(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
                      bool trans_b, float alpha, float beta) = 0;
    // A GemmList over these items (see GemmList); set it up outside a recording.
    virtual std::unique_ptr<GemmList> make_gemm_list(std::vector<GemmItem> items,
                                                     GemmMath math) = 0;
    // scale_to_norm on `count` segments of x at once: segment s = [offsets[s], offsets[s + 1])
    // (offsets: count + 1 values, targets: count values or nullptr, both in device memory) is
    // scaled to the norm target * t_s, t_s = targets ? targets[s] : 1:
    //   x_s *= target * t_s / (||x_s||_2 + eps)      (each segment's norm summed in double)
    virtual void scale_to_norm_segments(float* x, const int64_t* offsets, const float* targets,
                                        int count, float target, float eps) = 0;

    // ---- data -----------------------------------------------------------------------------------
    // out (N,H+2pad,W+2pad,3) = reflect_pad((in/255 - mean) / std), in is uint8 (N,H,W,3).
    virtual void normalize_pad(float* out, const uint8_t* in, int N, int H, int W,
                               const float* mean_host, const float* std_host, int pad) = 0;
    // Gather a batch of crops: for b in 0..B-1, image i = idx[b] (or first + b if idx == nullptr)
    // of src (Nsrc, H+2pad, W+2pad, 3); shift (dy, dx) = shifts[2b], shifts[2b+1] in [-pad, pad]
    // (or the scalars sy, sx if shifts == nullptr); flip = flips[b] (or the scalar flip).
    // out[b][y][x] = src[i][y + pad + dy][xs + pad + dx] with xs = flip ? W-1-x : x.
    virtual void gather_crops(float* out, const float* src, int H, int W, int pad, int B,
                              const int32_t* idx, int first, const int8_t* shifts, int sy, int sx,
                              const uint8_t* flips, int flip) = 0;
    // Brightness and contrast per image (colour jitter): x[b] = (x[b] + shift[b]) * gain[b]
    // over the per_image values of each of the B images; shift, gain: (B).
    virtual void brightness_contrast(float* x, const float* shift, const float* gain, int B,
                                     size_t per_image) = 0;
    // Cutout (cifar10-fast): for each of the B images of x (B,H,W,C), the size x size square with
    // top-left corner (pos[2b], pos[2b+1]) (row, column; clipped at the image's edge) := 0.
    virtual void cutout(float* x, const uint8_t* pos, int B, int H, int W, int C, int size) = 0;
    // Cutmix (hlb-CIFAR10): for each of the B images of x (B,H,W,C), the size x size square with
    // top-left corner (pos[2b], pos[2b+1]) (clipped at the edge) := the same square of image b
    // of src (B,H,W,C; x != src): the trainer gathers each image's partner, cropped and flipped
    // as that epoch augments it, into row b of src first.
    virtual void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W,
                        int C, int size) = 0;
    // Uncentred covariance of all k x k patches (stride 1, valid) of N images (N,H,W,C):
    // cov_host (D,D), D = C*k*k, with patch vector order (c, r, s) as PyTorch's unfold.
    // cov = sum(patch patch^T) / number_of_patches, accumulated in double. mean_host (D), when
    // not null, = the mean patch vector (for a centred covariance: cov - mean mean^T).
    virtual void patch_covariance(double* cov_host, double* mean_host, const float* x, int N,
                                  int H, int W, int C, int k) = 0;
};

// The plain GemmList: one gemm() call per item (the CPU's).
class LoopGemmList final : public GemmList {
public:
    LoopGemmList(Backend& b, std::vector<GemmItem> items) : GemmList(std::move(items)), b_(b) {}
    void run(float alpha, float beta) override {
        for (const GemmItem& it : items_)
            b_.gemm(it.C, it.A, it.B, it.M, it.N, it.K, it.trans_a, it.trans_b, alpha, beta);
    }

private:
    Backend& b_;
};

// The CPU backend is always available; the CUDA one only in builds with CUDA (nullptr + reason
// otherwise). threads <= 0 means "all cores". The CUDA backend stores activations in `storage`
// (the CPU's are fp32; ops/storage_backend.h wraps it for 16-bit storage); with fp32 storage its
// convolutions may use TF32 tensor cores (tf32, PyTorch's default), or only fp32 FMA (!tf32:
// the whole-network comparison with the CPU, tests/test_backend_network.cpp).
std::unique_ptr<Backend> make_cpu_backend(int threads);
std::unique_ptr<Backend> make_cuda_backend(int device_index, std::string* why_not,
                                           Storage storage = Storage::f32, bool tf32 = true);
bool cuda_compiled();
// CUDA builds load cuBLAS on first use (not linked): this loads it now, "" when the library and
// every function the CUDA backend calls were found, else why not. Needs no GPU.
std::string cublas_load_error();
// Number of CUDA devices this process can use (0 without CUDA, a driver or a GPU).
int cuda_device_count();
// Compute capability of CUDA device i as 10 major + minor (90 for an H100); 0 where there is none.
int cuda_compute_capability(int device_index);

// A typed buffer owned by a backend; released on destruction.
template <typename T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(Backend& b, size_t n) : b_(&b), n_(n), p_(static_cast<T*>(b.alloc(n * sizeof(T) + 64))) {}
    ~DeviceBuffer() { reset(); }
    DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) { reset(); b_ = o.b_; n_ = o.n_; p_ = o.p_; o.p_ = nullptr; o.n_ = 0; }
        return *this;
    }
    void reset() { if (p_) b_->release(p_); p_ = nullptr; n_ = 0; }
    T* get() const { return p_; }
    size_t size() const { return n_; }

private:
    Backend* b_ = nullptr;
    size_t n_ = 0;
    T* p_ = nullptr;
};

}  // namespace sr
