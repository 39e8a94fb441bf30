// schedule.h: learning-rate and lookahead schedules as pure functions of the step (like
// llm.c's schedulers.h), and the step counts derived from epochs and batch size.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

namespace sr {

// Steps per epoch (drop_last: the last partial batch is dropped; else it is one more, smaller
// step) and total steps = ceil(per_epoch * epochs).
inline int steps_per_epoch(int n_train, int batch, bool drop_last) {
    return drop_last ? n_train / batch : (n_train + batch - 1) / batch;
}
inline int total_steps(int n_train, int batch, double epochs, bool drop_last) {
    return int(std::ceil(double(steps_per_epoch(n_train, batch, drop_last)) * epochs - 1e-9));
}
// Images trained on in the first `steps` steps of an epoch of n_train images (every step takes a
// full batch except a drop_last=false epoch's last one, which takes what is left).
inline long images_in_steps(int steps, int n_train, int batch) {
    return std::min(long(steps) * batch, long(n_train));
}
// Images trained on in a whole run: images_in_steps summed over its epochs (the last one partial).
inline long images_in_run(int n_train, int batch, double epochs, bool drop_last) {
    const int spe = steps_per_epoch(n_train, batch, drop_last);
    const int total = total_steps(n_train, batch, epochs, drop_last);
    return long(total / spe) * images_in_steps(spe, n_train, batch) +
           images_in_steps(total % spe, n_train, batch);
}

// Piecewise-linear lr multiplier used at step `step` (0-based, before the update), as
// airbench94's LambdaLR: start -> peak over int(warmup_frac * total) steps, then peak -> end.
inline double lr_multiplier(int step, int total, double warmup_frac, double start, double peak,
                            double end) {
    const int warmup = int(total * warmup_frac);
    if (step < warmup) {
        const double f = double(step) / warmup;
        return start * (1 - f) + peak * f;
    }
    const double f = double(step - warmup) / (total - warmup);
    return peak * (1 - f) + end * f;
}

// Piecewise-linear multiplier through knots [position, value] (in increasing position), constant
// before the first and after the last; at a repeated position the later knot holds after it.
inline double knots_multiplier(const std::vector<std::array<double, 2>>& knots, double x) {
    if (knots.empty()) return 1.0;
    if (x <= knots.front()[0]) return knots.front()[1];
    for (size_t i = 1; i < knots.size(); ++i) {
        if (x > knots[i][0]) continue;
        const double x0 = knots[i - 1][0], x1 = knots[i][0];
        if (x1 <= x0) return knots[i][1];
        const double f = (x - x0) / (x1 - x0);
        return knots[i - 1][1] * (1 - f) + knots[i][1] * f;
    }
    return knots.back()[1];
}

// The first steps of a run that train the whitening bias (Recipe::whiten_bias_epochs of epochs
// of steps_per_epoch; the gradient needs one more backward pass).
inline int whiten_bias_steps(int steps_per_epoch, double epochs) {
    return int(std::min<double>(std::numeric_limits<int>::max(), std::ceil(double(steps_per_epoch) * epochs - 1e-9)));
}

// Lookahead decay after `step` updates: base^every * (step / total)^power.
// A lookahead that starts late (Recipe::lookahead_start_epoch > 0, hlb-CIFAR10): the first event
// step (a multiple of every, counted after the update) inside epoch start_epoch or later, where
// the state is first copied from the weights; 0 (start_epoch 0): the state starts with the run.
inline int lookahead_first_step(int start_epoch, int steps_per_epoch, int every) {
    if (every <= 0 || start_epoch <= 0) return 0;
    return (start_epoch * steps_per_epoch / every + 1) * every;
}

// The steps of a run of `total` steps whose updates are not in its final weights: the run ends
// with the lookahead's last state (the peers' final update with decay 1), taken at the last
// multiple of every; with a late start (first > 0) a run that ends before it has no lookahead.
// total when the run is shorter than one period: its final weights are the initial ones.
inline int lookahead_dropped_steps(int total, int first, int every) {
    if (every <= 0 || total < first) return 0;
    return total % every;
}

// The EMA updates of a run of `total` steps (Recipe::ema_every: the steps 0, every, 2 every, ...
// of each epoch of steps_per_epoch); the initial weights keep decay^updates of the final EMA.
inline int ema_updates(int total, int steps_per_epoch, int every) {
    if (every <= 0 || steps_per_epoch <= 0 || total <= 0) return 0;
    const int per_epoch = (steps_per_epoch + every - 1) / every;
    const int rest = total % steps_per_epoch;
    return total / steps_per_epoch * per_epoch + (rest + every - 1) / every;
}

inline double lookahead_decay(int step, int total, int every, double base, double power) {
    return std::pow(base, every) * std::pow(double(step) / total, power);
}

}  // namespace sr
