// optimizer.cpp: see optimizer.h.
#include "optim/optimizer.h"

namespace sr {

SgdHyper sgd_hyper(const Recipe& r) {
    SgdHyper h{};
    const double kilostep = 1024.0 * (1.0 + 1.0 / (1.0 - r.momentum));
    h.momentum = r.momentum;
    h.lr = r.lr / kilostep;
    const double wd = r.weight_decay * r.batch_size / kilostep;
    h.wd = wd / h.lr;
    h.lr_bias = h.lr * r.bias_scaler;
    h.wd_bias = wd / h.lr_bias;
    return h;
}

void Optimizer::step(double mult, bool whiten_bias) {
    Backend& b = net_.backend;
    float* p = net_.params.get();
    float* g = net_.grads.get();
    float* m = net_.momentum.get();
    auto run = [&](ParamGroup grp, double lr, double wd) {
        const auto [beg, end] = net_.group_range(grp);
        if (end > beg)
            b.sgd_nesterov(p + beg, m + beg, g + beg, end - beg, float(lr * mult), float(wd),
                           float(h_.momentum));
    };
    if (whiten_bias) run(ParamGroup::whiten_bias, h_.lr, h_.wd);
    run(ParamGroup::weight, h_.lr, h_.wd);
    run(ParamGroup::bn_bias, h_.lr_bias, h_.wd_bias);
    run(ParamGroup::bn_scale, h_.lr, h_.wd);
}

void Optimizer::reset_ema() {
    net_.backend.copy(net_.ema.get(), net_.params.get(), net_.size() * sizeof(float));
}

void Optimizer::lookahead(double decay) {
    net_.backend.lerp_assign(net_.ema.get(), net_.params.get(), net_.size(), float(1.0 - decay));
}

}  // namespace sr
