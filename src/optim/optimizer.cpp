// optimizer.cpp: see optimizer.h. The Muon step follows the two peers' code (airbench94_muon.py
// and hiverge's cifar10_speedrun.py); Recipe::Muon says what each field does.
#include "optim/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "optim/schedule.h"

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

bool muon_renorm_due(int count, int last, int total, int base, double growth) {
    return count - last >= base + int(growth * double(count) / double(total));
}

Optimizer::Optimizer(Network& net, const Recipe& r) : net_(net), r_(r), h_(sgd_hyper(r)) {
    if (r.optimizer != "muon") return;
    size_t max_n = 0, max_side = 0;
    for (const auto& s : net.tensors())
        if (s.group == ParamGroup::weight && s.shape.size() == 4) {
            const int rows = s.shape[0];
            filters_.push_back({s.offset, s.count, rows});
            max_n = std::max(max_n, s.count);
            max_side = std::max(max_side, std::min(size_t(rows), s.count / size_t(rows)));
        }
    Backend& b = net.backend;
    x_ = DeviceBuffer<float>(b, max_n);
    xn_ = DeviceBuffer<float>(b, max_n);
    a_ = DeviceBuffer<float>(b, max_side * max_side);
    b_ = DeviceBuffer<float>(b, max_side * max_side);
}

void Optimizer::sgd_group(ParamGroup grp, double lr, double wd, double momentum, bool lr_in_velocity) {
    const auto [beg, end] = net_.group_range(grp);
    if (end <= beg) return;
    float* p = net_.params.get() + beg;
    float* m = net_.momentum.get() + beg;
    const float* g = net_.grads.get() + beg;
    if (lr_in_velocity)
        net_.backend.sgd_nesterov_velocity(p, m, g, end - beg, float(lr), float(wd), float(momentum));
    else
        net_.backend.sgd_nesterov(p, m, g, end - beg, float(lr), float(wd), float(momentum));
}

void Optimizer::step(double mult, bool whiten_bias) {
    if (r_.optimizer != "sgd") fail("Optimizer::step(mult, whiten_bias) is for \"sgd\" recipes");
    if (whiten_bias) sgd_group(ParamGroup::whiten_bias, h_.lr * mult, h_.wd, h_.momentum, false);
    sgd_group(ParamGroup::weight, h_.lr * mult, h_.wd, h_.momentum, false);
    sgd_group(ParamGroup::bn_bias, h_.lr_bias * mult, h_.wd_bias, h_.momentum, false);
    sgd_group(ParamGroup::bn_scale, h_.lr * mult, h_.wd, h_.momentum, false);
}

double Optimizer::lr_multiplier_at(int step, int total, int steps_per_epoch) const {
    if (r_.knots.empty())
        return lr_multiplier(step, total, r_.warmup_frac, r_.lr_start, r_.lr_peak, r_.lr_end);
    double x = double(step + r_.knots_offset);
    if (r_.knots_unit == "epoch") {
        if (steps_per_epoch <= 0) fail("schedule.knots in epochs: steps per epoch unknown");
        x /= steps_per_epoch;
    }
    return knots_multiplier(r_.knots, x);
}

void Optimizer::step(int step, int total, int whiten_steps, int steps_per_epoch) {
    const double mult = lr_multiplier_at(step, total, steps_per_epoch);
    const bool whiten_bias = step < whiten_steps;
    if (r_.optimizer == "sgd") {
        this->step(mult, whiten_bias);
        return;
    }
    if (r_.optimizer == "nesterov") {  // lr and wd as given; BN biases and scales at lr x bias_scaler
        const double lw = r_.lr * mult, lb = r_.lr * r_.bias_scaler * mult;
        const bool v = r_.lr_in_velocity;
        if (whiten_bias) sgd_group(ParamGroup::whiten_bias, lb, r_.bias_weight_decay, r_.momentum, v);
        sgd_group(ParamGroup::weight, lw, r_.weight_decay, r_.momentum, v);
        sgd_group(ParamGroup::bn_bias, lb, r_.bias_weight_decay, r_.momentum, v);
        sgd_group(ParamGroup::bn_scale, lb, r_.bias_weight_decay, r_.momentum, v);
        return;
    }
    // "muon": the SGD groups in PyTorch's form, weight_decay = wd / (the group's initial lr)
    Backend& b = net_.backend;
    float* p = net_.params.get();
    float* g = net_.grads.get();
    float* m = net_.momentum.get();
    const float mom = float(r_.momentum);
    auto sgd = [&](size_t beg, size_t end, double lr0, double lr_mult) {
        if (end > beg)
            b.sgd_nesterov(p + beg, m + beg, g + beg, end - beg, float(lr0 * lr_mult),
                           float(r_.wd / lr0), mom);
    };
    if (whiten_bias) {  // its own linear decay to 0 over the steps it trains
        const auto [beg, end] = net_.group_range(ParamGroup::whiten_bias);
        sgd(beg, end, r_.bias_lr, 1.0 - double(step) / whiten_steps);
    }
    {
        const auto [beg, end] = net_.group_range(ParamGroup::bn_bias);
        sgd(beg, end, r_.bias_lr, mult);
        const auto [sb, se] = net_.group_range(ParamGroup::bn_scale);
        sgd(sb, se, r_.bias_lr, mult);
        const TensorSpec& head = net_.tensor("head.weight");
        sgd(head.offset, head.offset + head.count, r_.head_lr, mult);
    }
    muon_step(step, total, mult);
}

void Optimizer::muon_step(int step, int total, double mult) {
    const Recipe::Muon& mu = r_.muon;
    Backend& b = net_.backend;
    const int count = step + 1;  // Muon steps taken, this one included
    if (step != prev_step_ + 1) {  // a resumed run: replay the renormalisation rule
        last_renorm_ = 0;
        for (int c = 1; c < count; ++c)
            if (muon_renorm_due(c, last_renorm_, total, mu.renorm_base, mu.renorm_growth))
                last_renorm_ = c;
    }
    prev_step_ = step;
    const bool renorm = muon_renorm_due(count, last_renorm_, total, mu.renorm_base, mu.renorm_growth);
    if (renorm) last_renorm_ = count;
    const double progress = double(count) / total;
    const double lr = mu.lr * mult;
    const float ca = float(mu.coeffs[0]), cb = float(mu.coeffs[1]), cc = float(mu.coeffs[2]);
    for (const Filter& f : filters_) {
        float* p = net_.params.get() + f.offset;
        const float* g = net_.grads.get() + f.offset;
        float* buf = net_.momentum.get() + f.offset;
        const size_t n = f.count;
        const int D = f.rows, K = int(n / size_t(f.rows));
        b.momentum_direction(x_.get(), buf, g, n, float(mu.momentum), mu.nesterov);
        if (mu.magnitude.size() == 2) {
            const double target = mu.magnitude[0] * (1 - progress) + mu.magnitude[1] * progress;
            b.scale_to_norm(x_.get(), n, float(target), float(mu.eps));
        }
        b.scale_to_norm(x_.get(), n, 1.f, float(mu.eps));
        // quintic Newton-Schulz on the wide orientation: A = X X^T (D <= K) or X^T X (D > K)
        const bool wide = D <= K;
        const int s = wide ? D : K;
        float* X = x_.get();
        float* Xn = xn_.get();
        for (int it = 0; it < mu.steps; ++it) {
            if (wide) b.gemm(a_.get(), X, X, s, s, K, false, true, 1.f, 0.f);
            else b.gemm(a_.get(), X, X, s, s, D, true, false, 1.f, 0.f);
            b.gemm(b_.get(), a_.get(), a_.get(), s, s, s, false, false, cc, 0.f);  // c A^2
            b.axpy(b_.get(), a_.get(), cb, size_t(s) * s);                         // + b A
            if (wide) b.gemm(Xn, b_.get(), X, D, K, D, false, false, 1.f, 0.f);     // B X
            else b.gemm(Xn, X, b_.get(), D, K, K, false, false, 1.f, 0.f);          // X B
            b.axpy(Xn, X, ca, n);                                                  // + a X
            std::swap(X, Xn);
        }
        if (renorm) b.scale_to_norm(p, n, float(std::sqrt(double(D))), float(mu.renorm_eps));
        b.axpy(p, X, float(-lr), n);
        if (mu.weight_decay > 0) b.scale(p, float(1.0 - lr * mu.weight_decay), n);
    }
}

void Optimizer::ema_update(double decay) {
    Backend& b = net_.backend;
    b.scale(net_.ema.get(), float(decay), net_.size());
    b.axpy(net_.ema.get(), net_.params.get(), float(1.0 - decay), net_.size());
}

void Optimizer::reset_ema() {
    net_.backend.copy(net_.ema.get(), net_.params.get(), net_.size() * sizeof(float));
}

void Optimizer::lookahead(double decay) {
    net_.backend.lerp_assign(net_.ema.get(), net_.params.get(), net_.size(), float(1.0 - decay));
}

}  // namespace sr
