// network.h: the networks as static graphs (like llm.c's GPT-2): one arena of parameters, one
// of gradients, one per optimizer state, each allocated once; hand-written forward and backward
// as straight-line calls into ops/backend.h. Three families (NetConfig::arch):
//
// airbench (airbench94/95, muon94, hiverge):
//   x (N,32,32,3) -> whiten conv k x k valid (3 -> 2*3*k*k, bias, frozen weights) -> GELU
//   -> 3 x group(conv3x3 -> maxpool2 -> BN -> act -> conv3x3 -> BN -> act), act GELU or SiLU;
//      with group_convs 3 (airbench96): ... -> BN -> act =: r -> conv3x3 -> BN -> act -> conv3x3
//      -> BN -> (+ r) -> act
//   -> maxpool(final_pool) -> linear (width3 -> 10, no bias) * scale
//
// resnet9 (David Page's ResNet-9 and its descendants, cifar10-fast / cifar10-fast-simple):
//   x -> [whiten conv k x k same-padded (3 -> 3*k*k, no bias, frozen)] -> prep unit
//   -> layer1 unit (pool) [+ residual: x + unit(unit(x))] -> layer2 unit (pool) [+ residual]
//   -> layer3 unit (pool) [+ residual] -> maxpool(final_pool) -> linear (no bias) * scale
//   where a unit is conv (3x3, or 1x1 for the prep after whitening; no bias) -> (ghost) BN -> act,
//   its max pool 2 either between conv and BN (pool_before_norm) or after the activation.
//
// dawn (the pre-activation ResNet-18 of the DAWNBench entry that the Myrtle "How to train your
// ResNet" posts start from, cifar10-fast's DAWN_net in experiments.ipynb):
//   x -> prep conv 3x3 (3 -> widths[0]) -> layers 1-4 of two blocks each -> global max and mean
//   pool, concatenated (2 widths[3]) -> linear with bias * scale
//   where a block (cin -> cout, stride 2 in block 1 of layers 2-4) is
//     a = act(BN1(x));  out = conv2(act(BN2(conv1(a)))) + (projection ? conv3(a) : a)
//   conv1 3x3 with the block's stride, conv2 3x3, conv3 1x1 with the stride (only where the
//   stride or the width changes); note the identity shortcut adds a, not x, as DAWN_net does.
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

// Activation after each BN (airbench: the whitening conv is always followed by GELU).
using Activation = ActKind;
enum class Arch { airbench, resnet9, dawn };

struct NetConfig {
    Arch arch = Arch::airbench;
    // airbench: the 3 conv groups; resnet9: prep, layer1, layer2, layer3; dawn: layers 1-4 (the
    // prep conv has layer 1's width)
    std::vector<int> widths = {64, 256, 256};
    int group_convs = 2;  // airbench: convs per group; 3 = airbench96's residual group
    Activation act = Activation::gelu;
    float celu_alpha = 0.3f;
    // airbench: k x k valid whitening with 2*3*k*k filters (+ negatives) and a bias, then GELU.
    // resnet9: 0 = none (the prep unit is a 3x3 conv of the image); else k x k same-padded
    // whitening with 3*k*k filters, no bias, no activation, then a 1x1 prep unit.
    int whiten_kernel = 2;
    // resnet9 only: BN over ghost_splits equal slices of the batch (running statistics per
    // slice, evaluation with the first slice's, as cifar10-fast-simple's GhostBatchNorm);
    // the max pool of a unit between conv and BN (true) or after the activation (false);
    // the layers (1..3) that get a residual pair of units.
    int ghost_splits = 1;
    bool pool_before_norm = true;
    std::vector<int> residual = {1, 3};
    float bn_eps = 1e-12f;
    float bn_momentum = 0.4f;  // PyTorch convention: running = (1 - m) running + m batch
    bool bn_train_scale = false;  // BN scale (gamma) frozen at 1 unless true
    // initial BN scale: "one" (PyTorch >= 1.2) or "uniform" = U(0, 1), PyTorch < 1.2's default,
    // which the DAWN_net experiments (2018, no explicit BN init) ran with
    std::string bn_scale_init = "one";
    float scaling_factor = 1.f / 9.f;
    int final_pool = 3;
    // Init details that differ between the seeds: the Muon recipes rescale the head weight to
    // std 1 after PyTorch's init, and keep the whitening bias at PyTorch's default conv-bias init
    // (uniform +-1/sqrt(fan_in)) instead of airbench94's zero.
    bool head_unit_std = false;
    bool whiten_bias_uniform = false;
    // airbench family: "first_filters" = the first C_in filters of every conv := identity
    // (airbench); "identity_added" = each group's first conv gets the identity added to its
    // first C_in filters, then is rescaled to its init's mean and std, and the second conv :=
    // identity (hlb-CIFAR10)
    std::string dirac = "first_filters";
    int num_classes = 10;
    int image_side = 32;
    int whiten_width() const {
        return (arch == Arch::airbench ? 2 : 1) * 3 * whiten_kernel * whiten_kernel;
    }
};

// hlb-CIFAR10's first conv of a group: w (K,R,S,C, OHWI) += the identity (filter o < C passes
// channel o through its centre tap), then w := (w - mean) / std * std0 + mean0, so it keeps the
// mean and (unbiased) std it had before.
void dirac_identity_added(float* w, int K, int R, int S, int C);

// A conv unit of the resnet9 family: conv (k x k, same padding, no bias) -> [pool] -> BN -> act
// -> [pool]; offsets (in floats) of its tensors in the arenas.
struct UnitSpec {
    std::string name;     // "prep", "layer1", "layer1.res1", ...
    int cin, cout, k, H;  // H: input side
    bool pool;
    int stage, role;      // stage 0 (prep) .. 3; role 0 = the stage's unit, 1/2 = residual pair
    size_t w, bn_b, bn_w, rm, rv;
    int Ho() const { return pool ? H / 2 : H; }  // output side
};

// A pre-activation block of the dawn family (see the top of this file): offsets (in floats) of
// its tensors in the arenas; conv3 only with a projection shortcut.
struct BlockSpec {
    std::string name;  // "layer2.block1", ...
    int cin, cout, stride, H;  // H: input side
    bool projection;
    size_t bn1_b = 0, bn1_w = 0, bn1_rm = 0, bn1_rv = 0, w1 = 0;
    size_t bn2_b = 0, bn2_w = 0, bn2_rm = 0, bn2_rv = 0, w2 = 0, w3 = 0;
    int Ho() const { return H / stride; }  // output side
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
    float* conv_w[3][3];                       // group g: conv1 (Cg,3,3,Cg-1), conv2 (and conv3) (Cg,3,3,Cg)
    float* head_w;                             // (10, C3)
    float* bn_b[3][3];                         // (Cg)
    float* bn_w[3][3];                         // (Cg), 1 unless bn_train_scale
    float* whiten_w;                           // (Cw, k, k, 3)
    float* bn_mean[3][3];                      // (Cg) running mean
    float* bn_var[3][3];                       // (Cg) running var
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
    // center: torch.cov's centred covariance / (patches - 1); splits > 1: the eigenvalues and
    // eigenvectors of `splits` equal parts of x averaged (each eigenvector's sign aligned with
    // the first part's before averaging), as hlb-CIFAR10.
    void init_whitening(const float* x, int N, float eps, bool center = false, int splits = 1);

    void download(std::vector<float>& host) const;
    void upload(const std::vector<float>& host);
    double flops_per_image_forward() const;
    size_t learnable_count() const;
    const std::vector<UnitSpec>& units() const { return units_; }  // resnet9 only
    const std::vector<BlockSpec>& blocks() const { return blocks_; }  // dawn only

    Backend& backend;
    DeviceBuffer<float> params, grads, momentum, ema;
    Params p{}, g{};  // named pointers into params and grads

private:
    NetConfig cfg_;
    std::vector<TensorSpec> specs_;
    std::vector<UnitSpec> units_;
    std::vector<BlockSpec> blocks_;
    size_t total_ = 0;
    void layout_airbench();
    void layout_resnet9();
    void layout_dawn();
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
    // trains = false: forward only (evaluation), without the gradient buffers and backward
    // scratch (airbench networks: about 40% of a training workspace's memory; resnet9 and dawn,
    // which keep every activation, less); backward() is then an error.
    // ranks: the data-parallel ranks that each hold `batch` images of one global batch (ghost BN:
    // a rank's images are ghost_splits / ranks of one process's ghost batches, normalised as
    // there; ghost_splits must be a multiple of ranks).
    Workspace(Network& net, int batch, bool trains = true, int ranks = 1);
    int batch() const { return N_; }
    bool trains() const { return trains_; }
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
    // FLOPs of one training step of this batch, as forward() and backward(with_whiten_bias) run
    // it (multiply-add = 2): every convolution's forward, the weight and data gradients it
    // computes (not a frozen conv's weights, not the images' gradient; the first group's input
    // gradient only with the whitening bias, whose gradient adds a sum over dy), and the head's
    // three products (dawn's bias products too). Normalisation, activations, pooling and the
    // optimizer are not counted.
    double flops_per_step(bool with_whiten_bias) const;

private:
    struct Group {
        int cin, cout, H, Hp;  // input side H, after pool Hp
        std::unique_ptr<Conv2d> conv1, conv2, conv3;  // conv3: group_convs 3 only
        DeviceBuffer<float> c1, p, n1, g1, c2, n2, g2;  // activations
        DeviceBuffer<float> c3, s3, g3;  // group_convs 3: conv3 out, BN out + g1 (in place), act
        DeviceBuffer<uint8_t> arg;
        DeviceBuffer<float> mean1, istd1, mean2, istd2, mean3, istd3;
        DeviceBuffer<float> d_big, d_p, d_n, d_g, d_res;  // gradient scratch (d_res: d(s3))
        const float* out() const { return conv3 ? g3.get() : g2.get(); }
    };
    Network& net_;
    Backend& b_;
    int N_;
    int ghost_ = 1;  // ghost BN's slices of this workspace's batch (resnet9)
    bool trains_;
    // a buffer of n floats that only backward() uses: none in a forward-only workspace
    DeviceBuffer<float> grad_buffer(size_t n) {
        return trains_ ? DeviceBuffer<float>(b_, n) : DeviceBuffer<float>();
    }
    // a convolution of this workspace (forward only where the workspace is)
    std::unique_ptr<Conv2d> make_conv(ConvShape s) {
        s.forward_only = !trains_;
        return b_.make_conv(s);
    }
    const float* x_ = nullptr;
    std::unique_ptr<Conv2d> whiten_;
    DeviceBuffer<float> z0_, a0_, d_z0_, d_a0_;
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
    // One BN layer of the airbench and dawn families: forward in training mode (bn_train) or
    // evaluation mode (running statistics); backward (bn_back) followed by grad_ready of its
    // parameter gradients: dbeta always, dgamma (the scale's slot in the gradient arena) only
    // where the scale trains (NetConfig::bn_train_scale; left unwritten otherwise).
    void bn_layer_forward(bool train, float* y, float* mean, float* invstd, float* running_mean,
                          float* running_var, const float* x, const float* gamma,
                          const float* beta, int M, int C);
    void bn_layer_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                           const float* mean, const float* invstd, const float* gamma, int M, int C);
    // One BN layer followed by the activation, z = act(BN(x)): the fused op where the layer's
    // statistics are this process's own (no sync-BN), y (the BN output) then left unwritten;
    // else BN into y, then the activation. Backward: dx and the BN gradients from dz (the fused
    // op recomputes y from x; otherwise dy_scratch receives dL/dy from the stored y). dx may be
    // dz; dy_scratch must be neither.
    void bn_act_layer_forward(bool train, float* z, float* y, float* mean, float* invstd,
                              float* running_mean, float* running_var, const float* x,
                              const float* gamma, const float* beta, int M, int C);
    void bn_act_layer_backward(float* dx, float* dgamma, float* dbeta, const float* dz,
                               float* dy_scratch, const float* x, const float* y, const float* mean,
                               const float* invstd, const float* gamma, const float* beta, int M,
                               int C);
    bool bn_fused() const { return !hooks_ || hooks_->bn_group() <= 1; }
    // the activation after each BN (NetConfig::act)
    void act_forward(float* y, const float* x, size_t n);
    void act_backward(float* dx, const float* dy, const float* x, size_t n);
    void grad_ready(float* grad, size_t n) {
        if (hooks_) hooks_->grad_ready(grad, n);
    }

    // ---- resnet9 (resnet9.cpp) ----
    struct Unit {
        const UnitSpec* spec;
        std::unique_ptr<Conv2d> conv;
        DeviceBuffer<float> c, p, n, a, din, mean, istd;
        DeviceBuffer<uint8_t> arg;
        const float* in = nullptr;  // forward input (saved for backward)
        bool pool_after = false;    // the max pool follows the activation
        size_t bn_rows = 0;         // rows (N * side^2) the BN and activation see
        float* out() { return pool_after ? p.get() : a.get(); }
        const float* bn_in() const { return spec->pool && !pool_after ? p.get() : c.get(); }
    };
    std::vector<Unit> units_;
    std::vector<DeviceBuffer<float>> sums_;  // the residual stages' outputs, per stage
    DeviceBuffer<float> t1_, t2_, dg_split_, db_split_, d_last_;
    size_t whiten_off_ = 0, head_off_ = 0;  // arena offsets, looked up once
    void init_resnet9();
    const float* forward_resnet9(const float* x, bool train);
    void backward_resnet9(const float* dlogits);
    const float* unit_forward(Unit& u, const float* in, bool train);
    void unit_backward(Unit& u, const float* dout, bool want_din);

    // ---- dawn (dawn_net.cpp) ----
    struct Block {
        const BlockSpec* spec;
        std::unique_ptr<Conv2d> conv1, conv2, conv3;
        DeviceBuffer<float> n1, a1, c1, n2, a2, out, sc;  // sc: the projection's output
        DeviceBuffer<float> mean1, istd1, mean2, istd2;
        const float* in = nullptr;  // forward input (saved for backward)
    };
    std::unique_ptr<Conv2d> prep_;
    DeviceBuffer<float> prep_out_, ones_;
    std::vector<Block> blocks_;
    size_t head_b_off_ = 0, prep_off_ = 0;  // arena offsets, looked up once
    void init_dawn();
    const float* forward_dawn(const float* x, bool train);
    void backward_dawn(const float* dlogits);
};

}  // namespace sr
