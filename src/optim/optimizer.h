// optimizer.h: the recipe's optimizer over the network's parameter groups: PyTorch SGD with
// Nesterov momentum, airbench's decoupled hyperparameters, a separate (scaled) lr for BN biases,
// and lookahead (EMA of weights and BN running statistics every k steps).
#pragma once
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

class Optimizer {
public:
    Optimizer(Network& net, const Recipe& r) : net_(net), h_(sgd_hyper(r)) {}
    // One update with lr multiplier `mult`; whiten_bias: whether the whitening bias trains now.
    void step(double mult, bool whiten_bias);
    // ema := params (the lookahead state starts as a copy of the weights).
    void reset_ema();
    // ema = lerp(ema, params, 1 - decay); params = ema   (over params and BN running stats)
    void lookahead(double decay);
    const SgdHyper& hyper() const { return h_; }

private:
    Network& net_;
    SgdHyper h_;
};

}  // namespace sr
