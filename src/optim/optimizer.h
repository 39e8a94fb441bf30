// optimizer.h: the recipe's optimizer over the network's parameter groups. Two kinds (Recipe::
// optimizer), both written once over ops/backend.h:
// - "sgd" (airbench94): PyTorch SGD with Nesterov momentum for every group, airbench's
//   decoupled hyperparameters, a separate (scaled) lr for BN biases, and lookahead (EMA of the
//   weights and BN running statistics every k steps, driven by the trainer).
// - "nesterov" (cifar10-fast, cifar10-fast-simple): Nesterov SGD with the lr inside the
//   velocity, two groups (weights; BN biases and scales at lr * bias_scaler), optionally an EMA
//   of all tensors for evaluation (the trainer calls ema_update).
// - "muon" (airbench94_muon, hiverge): Muon for the conv filters (momentum, Newton-Schulz
//   orthogonalisation as gemms, periodic weight renormalisation, decoupled decay), Nesterov SGD
//   for the whitening bias, the BN biases and the head, each with its own lr.
#pragma once
#include <utility>
#include <vector>

#include "model/network.h"
#include "train/recipe.h"

namespace sr {

struct SgdHyper {
    double lr, wd;  // PyTorch-SGD lr and weight_decay of the weights group
    double lr_bias, wd_bias;
    double momentum;
};

// airbench94's conversion: kilostep = 1024 (1 + 1/(1 - momentum)); lr = lr_per_1024 / kilostep;
// wd = weight_decay * batch / kilostep, passed to SGD as wd / lr; BN biases use lr * bias_scaler
// and wd / (lr * bias_scaler), the same effective decay.
SgdHyper sgd_hyper(const Recipe& r);

// Muon's weight-renormalisation rule: after `count` Muon steps (1-based, this one included) with
// the last renormalisation at step `last` (0 = never), whether this step renormalises:
// count - last >= base + int(growth * count / total).
bool muon_renorm_due(int count, int last, int total, int base, double growth);

class Optimizer {
public:
    Optimizer(Network& net, const Recipe& r);
    // The update after `step` steps (0-based, before the update) of `total`; the whitening bias
    // trains while step < whiten_steps. Learning rates follow the recipe's schedule (knots in
    // epochs need steps_per_epoch).
    void step(int step, int total, int whiten_steps, int steps_per_epoch = 0);
    // The recipe's lr multiplier at `step` (0-based) of `total`.
    double lr_multiplier_at(int step, int total, int steps_per_epoch) const;
    // ema = decay ema + (1 - decay) params, over every tensor (Recipe::ema_every)
    void ema_update(double decay);
    // An SGD update ("sgd" recipes only) with an explicit lr multiplier (tests, dist-check).
    void step(double mult, bool whiten_bias);
    // ema := params (the lookahead state starts as a copy of the weights).
    void reset_ema();
    // ema = lerp(ema, params, 1 - decay); params = ema   (over params and BN running stats)
    void lookahead(double decay);
    const SgdHyper& hyper() const { return h_; }

private:
    void muon_step(int step, int total, double mult);
    // the step's SGD groups (ranges of the arenas with their lr and wd) in one launch
    struct Groups;
    void update(const Groups& gr, double momentum, bool lr_in_velocity);
    Network& net_;
    Recipe r_;
    SgdHyper h_;
    // "muon": the conv filters (offset and size in the arenas, rows = C_out) stacked one after
    // another in X; all of them go through each step of the update together: one launch (or
    // one grouped gemm) per step, not one per filter.
    struct Filter {
        size_t offset, count;  // in the parameter arenas
        int rows;
        size_t stack;          // offset in X (and in Xn)
    };
    struct Span {  // filters that follow each other in the arenas: one elementwise launch
        size_t offset, stack, count;
    };
    std::vector<Filter> filters_;
    std::vector<Span> spans_;
    DeviceBuffer<float> x_, xn_, a_, b_;  // X (the momentum direction, then NS), its next, A, B
    DeviceBuffer<int64_t> seg_stack_, seg_param_;  // filter bounds in X, in the arenas from the first
    DeviceBuffer<float> renorm_target_;            // sqrt(rows) per filter
    // Newton-Schulz: gram_[i] A = X X^T (or X^T X) from X (i = 0) or Xn (1); square_ B = A A;
    // apply_[i] Xn = B X (or X B) from X into Xn (i = 0) or from Xn into X (1)
    std::unique_ptr<GemmList> gram_[2], square_, apply_[2];
    int prev_step_ = -1, last_renorm_ = 0;
};

}  // namespace sr
