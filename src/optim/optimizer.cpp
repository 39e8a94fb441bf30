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
    size_t stack = 0, gram = 0;
    for (const auto& s : net.tensors())
        if (s.group == ParamGroup::weight && s.shape.size() == 4) {
            const int rows = s.shape[0];
            filters_.push_back({s.offset, s.count, rows, stack});
            stack += s.count;
            const size_t side = std::min(size_t(rows), s.count / size_t(rows));
            gram += side * side;
        }
    std::sort(filters_.begin(), filters_.end(),
              [](const Filter& a, const Filter& b) { return a.offset < b.offset; });
    stack = 0;
    for (Filter& f : filters_) {  // the stack in arena order, so neighbours make one span
        f.stack = stack;
        stack += f.count;
        if (!spans_.empty() && spans_.back().offset + spans_.back().count == f.offset)
            spans_.back().count += f.count;
        else
            spans_.push_back({f.offset, f.stack, f.count});
    }
    if (filters_.empty()) return;
    Backend& b = net.backend;
    x_ = DeviceBuffer<float>(b, stack);
    xn_ = DeviceBuffer<float>(b, stack);
    a_ = DeviceBuffer<float>(b, gram);
    b_ = DeviceBuffer<float>(b, gram);
    const size_t n = filters_.size();
    std::vector<int64_t> seg_stack(n + 1), seg_param(n + 1);
    std::vector<float> target(n);
    std::vector<GemmItem> gram_items[2], square_items, apply_items[2];
    size_t aoff = 0;
    const size_t first = filters_[0].offset;
    for (size_t i = 0; i < n; ++i) {
        const Filter& f = filters_[i];
        seg_stack[i] = int64_t(f.stack);
        seg_stack[i + 1] = int64_t(f.stack + f.count);
        seg_param[i] = int64_t(f.offset - first);
        seg_param[i + 1] = int64_t(f.offset - first + f.count);
        target[i] = float(std::sqrt(double(f.rows)));
        // quintic Newton-Schulz on the wide orientation: A = X X^T (D <= K) or X^T X (D > K)
        const int D = f.rows, K = int(f.count / size_t(f.rows));
        const bool wide = D <= K;
        const int s = wide ? D : K;
        float* A = a_.get() + aoff;
        float* B = b_.get() + aoff;
        aoff += size_t(s) * s;
        square_items.push_back({B, A, A, s, s, s, false, false});  // B = A A (then + b A)
        for (int j = 0; j < 2; ++j) {
            float* X = (j == 0 ? x_ : xn_).get() + f.stack;
            float* Xn = (j == 0 ? xn_ : x_).get() + f.stack;
            if (wide) {
                gram_items[j].push_back({A, X, X, s, s, K, false, true});
                apply_items[j].push_back({Xn, B, X, D, K, D, false, false});  // B X
            } else {
                gram_items[j].push_back({A, X, X, s, s, D, true, false});
                apply_items[j].push_back({Xn, X, B, D, K, K, false, false});  // X B
            }
        }
    }
    seg_stack_ = DeviceBuffer<int64_t>(b, n + 1);
    seg_param_ = DeviceBuffer<int64_t>(b, n + 1);
    renorm_target_ = DeviceBuffer<float>(b, n);
    b.upload(seg_stack_.get(), seg_stack.data(), (n + 1) * sizeof(int64_t));
    b.upload(seg_param_.get(), seg_param.data(), (n + 1) * sizeof(int64_t));
    b.upload(renorm_target_.get(), target.data(), n * sizeof(float));
    // TF32 allowed: the peers run these products in fp16 / bf16 (airbench94_muon.py, hiverge's
    // cifar10_speedrun.py); in fp32 SIMT cuBLAS ran them at 5 TFLOP/s (session 15, H200).
    for (int j = 0; j < 2; ++j) {
        gram_[j] = b.make_gemm_list(std::move(gram_items[j]), GemmMath::tf32);
        apply_[j] = b.make_gemm_list(std::move(apply_items[j]), GemmMath::tf32);
    }
    square_ = b.make_gemm_list(std::move(square_items), GemmMath::tf32);
}

// The SGD groups of one step, updated together by one sgd_nesterov_ranges launch.
struct Optimizer::Groups {
    SgdRange r[kMaxSgdRanges];
    int n = 0;
    void add(size_t beg, size_t end, double lr, double wd) {
        if (end <= beg) return;
        if (n == kMaxSgdRanges) fail("more than {} optimizer groups", kMaxSgdRanges);
        r[n++] = {beg, end, float(lr), float(wd)};
    }
    void add(const Network& net, ParamGroup grp, double lr, double wd) {
        const auto [beg, end] = net.group_range(grp);
        add(beg, end, lr, wd);
    }
};

void Optimizer::update(const Groups& gr, double momentum, bool lr_in_velocity) {
    net_.backend.sgd_nesterov_ranges(net_.params.get(), net_.momentum.get(), net_.grads.get(), gr.r,
                                     gr.n, float(momentum), lr_in_velocity);
}

void Optimizer::step(double mult, bool whiten_bias) {
    if (r_.optimizer != "sgd") fail("Optimizer::step(mult, whiten_bias) is for \"sgd\" recipes");
    Groups gr;
    if (whiten_bias) gr.add(net_, ParamGroup::whiten_bias, h_.lr * mult, h_.wd);
    gr.add(net_, ParamGroup::weight, h_.lr * mult, h_.wd);
    gr.add(net_, ParamGroup::bn_bias, h_.lr_bias * mult, h_.wd_bias);
    gr.add(net_, ParamGroup::bn_scale, h_.lr * mult, h_.wd);
    update(gr, h_.momentum, false);
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
        Groups gr;
        if (whiten_bias) gr.add(net_, ParamGroup::whiten_bias, lb, r_.bias_weight_decay);
        gr.add(net_, ParamGroup::weight, lw, r_.weight_decay);
        gr.add(net_, ParamGroup::bn_bias, lb, r_.bias_weight_decay);
        gr.add(net_, ParamGroup::bn_scale, lb, r_.bias_weight_decay);
        update(gr, r_.momentum, r_.lr_in_velocity);
        return;
    }
    // "muon": the SGD groups in PyTorch's form, weight_decay = wd / (the group's initial lr)
    Groups gr;
    auto sgd = [&](size_t beg, size_t end, double lr0, double lr_mult) {
        gr.add(beg, end, lr0 * lr_mult, r_.wd / lr0);
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
    update(gr, r_.momentum, false);
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
    if (filters_.empty()) return;
    float* p = net_.params.get();
    const float* g = net_.grads.get();
    float* buf = net_.momentum.get();
    const int n = int(filters_.size());
    const size_t stack = x_.size(), gram = a_.size();
    for (const Span& s : spans_)
        b.momentum_direction(x_.get() + s.stack, buf + s.offset, g + s.offset, s.count,
                             float(mu.momentum), mu.nesterov);
    if (mu.magnitude.size() == 2) {
        const double target = mu.magnitude[0] * (1 - progress) + mu.magnitude[1] * progress;
        b.scale_to_norm_segments(x_.get(), seg_stack_.get(), nullptr, n, float(target),
                                 float(mu.eps));
    }
    b.scale_to_norm_segments(x_.get(), seg_stack_.get(), nullptr, n, 1.f, float(mu.eps));
    // Newton-Schulz over every filter at once: A = X X^T; B = c A^2 + b A; X = B X + a X
    int cur = 0;  // 0: X in x_, 1: in xn_
    for (int it = 0; it < mu.steps; ++it) {
        gram_[cur]->run(1.f, 0.f);
        square_->run(cc, 0.f);                                  // c A^2
        b.axpy(b_.get(), a_.get(), cb, gram);                   // + b A
        apply_[cur]->run(1.f, 0.f);                             // B X
        float* X = (cur == 0 ? x_ : xn_).get();
        float* Xn = (cur == 0 ? xn_ : x_).get();
        b.axpy(Xn, X, ca, stack);                               // + a X
        cur ^= 1;
    }
    const float* X = (cur == 0 ? x_ : xn_).get();
    if (renorm)
        b.scale_to_norm_segments(p + filters_[0].offset, seg_param_.get(), renorm_target_.get(), n,
                                 1.f, float(mu.renorm_eps));
    for (const Span& s : spans_) {
        b.axpy(p + s.offset, X + s.stack, float(-lr), s.count);
        if (mu.weight_decay > 0) b.scale(p + s.offset, float(1.0 - lr * mu.weight_decay), s.count);
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
