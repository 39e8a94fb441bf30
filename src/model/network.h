// network.h: the airbench-family ResNet as a static network (like llm.c's GPT-2): one arena of
// parameters, one of gradients, one per optimizer state, each allocated once; hand-written
// forward and backward as straight-line calls into ops/backend.h.
//
//   x (N,32,32,3) -> whiten conv k x k valid (3 -> 2*3*k*k, bias, frozen weights) -> GELU
//   -> 3 x group(conv3x3 -> maxpool2 -> BN -> act -> conv3x3 -> BN -> act), act GELU or SiLU
//   -> maxpool(final_pool) -> linear (width3 -> 10, no bias) * scale
//
// Size letters: N batch, H/W side, C channels. Activations NHWC, conv weights OHWI.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ops/backend.h"

namespace sr {

// Activation after each BN of a conv group (the whitening conv is always followed by GELU).
enum class Activation { gelu, silu };

struct NetConfig {
    std::array<int, 3> widths = {64, 256, 256};
    Activation act = Activation::gelu;
    int whiten_kernel = 2;
    float bn_eps = 1e-12f;
    float bn_momentum = 0.4f;  // PyTorch convention: running = (1 - m) running + m batch
    bool bn_train_scale = false;  // BN scale (gamma) frozen at 1 unless true
    float scaling_factor = 1.f / 9.f;
    int final_pool = 3;
    // Init details that differ between the seeds: the Muon recipes rescale the head weight to
    // std 1 after PyTorch's init, and keep the whitening bias at PyTorch's default conv-bias init
    // (uniform +-1/sqrt(fan_in)) instead of airbench94's zero.
    bool head_unit_std = false;
    bool whiten_bias_uniform = false;
    int num_classes = 10;
    int image_side = 32;
    int whiten_width() const { return 2 * 3 * whiten_kernel * whiten_kernel; }
};

// How a tensor is treated by the optimizer. Tensors are laid out in the arena in this order,
// so each group is one contiguous range (one optimizer launch per group).
enum class ParamGroup { whiten_bias, weight, bn_bias, bn_scale, frozen, buffer };

struct TensorSpec {
    std::string name;
    std::vector<int> shape;
    ParamGroup group;
    size_t offset = 0;  // in floats, inside the parameter arena
    size_t count = 0;
};

// The parameter arena: every learnable tensor, the frozen ones, and the BN running statistics
// (buffers), in one float array. Named pointers below point into it.
struct Params {
    float* whiten_b;                           // (Cw)
    float* conv_w[3][2];                       // group g: conv1 (Cg,3,3,Cg-1), conv2 (Cg,3,3,Cg)
    float* head_w;                             // (10, C3)
    float* bn_b[3][2];                         // (Cg)
    float* bn_w[3][2];                         // (Cg), 1 unless bn_train_scale
    float* whiten_w;                           // (Cw, k, k, 3)
    float* bn_mean[3][2];                      // (Cg) running mean
    float* bn_var[3][2];                       // (Cg) running var
};

class Network {
public:
    Network(Backend& b, const NetConfig& cfg);
    const NetConfig& config() const { return cfg_; }
    const std::vector<TensorSpec>& tensors() const { return specs_; }
    const TensorSpec& tensor(const std::string& name) const;
    size_t size() const { return total_; }
    // [begin, end) in floats of all tensors of a group (contiguous by construction)
    std::pair<size_t, size_t> group_range(ParamGroup g) const;

    // PyTorch-like init: conv/linear weights uniform(+-1/sqrt(fan_in)), then dirac on the first
    // C_in filters of each conv; BN weight 1, bias 0, running mean 0, var 1; whitening bias 0.
    // Done on the host with rng, then uploaded.
    void init(Rng& rng);
    // Whitening weights from the eigenvectors of the patch covariance of x (N,32,32,3):
    // filters v / sqrt(lambda + eps) and their negatives, eigenvalues in descending order.
    void init_whitening(const float* x, int N, float eps);

    void download(std::vector<float>& host) const;
    void upload(const std::vector<float>& host);
    double flops_per_image_forward() const;
    size_t learnable_count() const;

    Backend& backend;
    DeviceBuffer<float> params, grads, momentum, ema;
    Params p{}, g{};  // named pointers into params and grads

private:
    NetConfig cfg_;
    std::vector<TensorSpec> specs_;
    size_t total_ = 0;
};

// Optional hooks into a training workspace, for data-parallel training (src/dist/). Without
// hooks (the default) a workspace computes exactly what it always did.
class WorkspaceHooks {
public:
    virtual ~WorkspaceHooks() = default;
    // Sync-BN: the number of equal batches (one per process, this one included) whose rows form
    // one BN batch; 1 = batch statistics of this workspace alone.
    virtual int bn_group() const { return 1; }
    // Sync-BN (bn_group() > 1): sums (n floats, this backend's memory) := their sum over the
    // group's processes, in place. Called between the per-channel sums and the normalisation
    // (forward, twice per BN layer) and between the two halves of each BN backward.
    virtual void allreduce_bn(float* sums, int n) {}
    // In backward(), as soon as a parameter gradient (n floats at grad, inside net.grads) is
    // final, in backward order, so the caller can start reducing it while backward goes on.
    virtual void grad_ready(float* grad, size_t n) {}
};

// Activations, saved statistics and convolution plans for one batch size. A Network can be run
// with several workspaces (training batch, evaluation batch).
class Workspace {
public:
    Workspace(Network& net, int batch);
    int batch() const { return N_; }
    // Hooks for data-parallel training (not owned; nullptr = none). Set on a training workspace.
    void set_hooks(WorkspaceHooks* h) { hooks_ = h; }

    // x: (N,32,32,3). train: batch statistics (and running-stat update) else running stats.
    // Returns the logits (N,10) (device memory owned by the workspace).
    const float* forward(const float* x, bool train);
    // dlogits (N,10) from the loss; fills net.grads for every learnable tensor. The whitening
    // bias gradient is computed only when with_whiten_bias (it needs one more backward pass).
    void backward(const float* dlogits, bool with_whiten_bias);

    float* logits() { return logits_.get(); }
    float* dlogits() { return dlogits_.get(); }

private:
    struct Group {
        int cin, cout, H, Hp;  // input side H, after pool Hp
        std::unique_ptr<Conv2d> conv1, conv2;
        DeviceBuffer<float> c1, p, n1, g1, c2, n2, g2;  // activations
        DeviceBuffer<uint8_t> arg;
        DeviceBuffer<float> mean1, istd1, mean2, istd2;
        DeviceBuffer<float> d_big, d_p, d_n, d_g;  // gradient scratch
    };
    Network& net_;
    Backend& b_;
    int N_;
    const float* x_ = nullptr;
    std::unique_ptr<Conv2d> whiten_;
    DeviceBuffer<float> z0_, a0_, d_z0_, d_a0_, dw_whiten_;
    Group grp_[3];
    int Hf_ = 0;  // side after the final pool
    DeviceBuffer<float> feat_, d_feat_, logits_, dlogits_;
    DeviceBuffer<uint8_t> feat_arg_;
    WorkspaceHooks* hooks_ = nullptr;
    DeviceBuffer<float> bn_sums_;  // sync-BN scratch: 4 x the widest layer's channels
    // training-mode BN forward / BN backward, through the hooks' sync-BN when they ask for it
    void bn_train(float* y, float* mean, float* invstd, float* running_mean, float* running_var,
                  const float* x, const float* gamma, const float* beta, int M, int C);
    void bn_back(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                 const float* mean, const float* invstd, const float* gamma, int M, int C);
    // the conv groups' activation (NetConfig::act)
    void act_forward(float* y, const float* x, size_t n);
    void act_backward(float* dx, const float* dy, const float* x, size_t n);
    void grad_ready(float* grad, size_t n) {
        if (hooks_) hooks_->grad_ready(grad, n);
    }
};

}  // namespace sr
