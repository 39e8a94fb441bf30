// dist_check.cpp: `speedrun dist-check`, a self-test of data-parallel training on the machines
// at hand (see dist_commands.h): every rank runs its slice of the same seeded global batches
// through DataParallel, exactly as `train --distributed` does; rank 0 also computes the
// reference in one process and compares, tensor by tensor, the summed gradients and the weights
// after the optimizer steps. The reference is one process on the full batch with --sync-bn, and
// the sum of the per-slice gradients without it (per-rank BN statistics are what DDP computes,
// not the full batch's). Exit status 1 when anything is off by more than the tolerance.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "core/error.h"
#include "core/notes.h"
#include "dist/dist_commands.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"

namespace sr {
namespace {

// max |got - ref| / rms(ref) over the tensor (0 when both are all zeros)
double rel_error(const float* got, const float* ref, size_t n) {
    double worst = 0, ss = 0;
    for (size_t i = 0; i < n; ++i) {
        worst = std::max(worst, std::abs(double(got[i]) - double(ref[i])));
        ss += double(ref[i]) * double(ref[i]);
    }
    const double rms = std::sqrt(ss / double(std::max<size_t>(n, 1)));
    if (worst == 0) return 0;
    return rms > 0 ? worst / rms : HUGE_VAL;
}

bool learnable(ParamGroup g) {
    return g == ParamGroup::whiten_bias || g == ParamGroup::weight || g == ParamGroup::bn_bias ||
           g == ParamGroup::bn_scale;
}

struct Batch {
    std::vector<float> x;    // (steps, B, side, side, 3)
    std::vector<int32_t> y;  // (steps, B)
};

int check_on_rank(const DistCheckArgs& a, Communicator& comm) {
    if (a.steps < 1) fail("--steps must be >= 1 (got {})", a.steps);
    if (!(a.tolerance > 0)) fail("--tolerance must be > 0 (got {})", a.tolerance);
    const Recipe r = resolve_recipe(a);
    const int B = r.batch_size, K = comm.world();
    if (B % K != 0) fail("dist-check: the batch size {} does not split evenly over {} ranks", B, K);
    const int Bl = B / K, side = r.net.image_side, O = r.net.num_classes;
    const size_t img = size_t(side) * side * 3;
    if (comm.root()) note_unused(a, "dist-check", "trains on seeded random batches");
    if (comm.root() && a.epochs > 0) note("dist-check compares single steps (no schedule); --epochs not used");
    // The update: plain SGD at the peak lr; any other optimizer (nesterov, muon) through the
    // recipe's own step at the schedule's peak step of a full run (both sides alike), so that
    // every preset can be checked (the whitening bias trains in every step compared).
    const int total = total_steps(50000, B, r.epochs, r.drop_last), spe = steps_per_epoch(50000, B, r.drop_last);
    int peak = 0;  // (found once the optimizer is made, below)
    auto update = [&](Optimizer& o, int s) {
        if (r.optimizer == "sgd") o.step(1.0, true);
        else o.step(peak + s, total, total, spe);
    };
    set_cpu_conv(a.cpu_conv, false);
    const RankPlacement pl = place_rank(comm, a.device, a.threads);
    auto backend = make_backend(pl.device, pl.threads, pl.cuda_device);
    Backend& b = *backend;

    // the same seeded global batches on every rank
    Batch d;
    Rng drng(a.seed);
    d.x.resize(size_t(a.steps) * B * img);
    d.y.resize(size_t(a.steps) * B);
    for (auto& v : d.x) v = drng.normal();
    for (auto& v : d.y) v = int32_t(drng.below(uint32_t(O)));
    DeviceBuffer<float> xd(b, size_t(B) * img), stats(b, 2);
    DeviceBuffer<int32_t> yd(b, size_t(B));

    // one forward/backward of n images from global row `row` of step `step`
    auto pass = [&](Workspace& ws, int step, int row, int n) {
        const size_t at = size_t(step) * B + size_t(row);
        b.upload(xd.get(), d.x.data() + at * img, size_t(n) * img * sizeof(float));
        b.upload(yd.get(), d.y.data() + at, size_t(n) * sizeof(int32_t));
        const float* logits = ws.forward(xd.get(), true);
        b.cross_entropy(ws.dlogits(), stats.get(), logits, yd.get(), n, O, r.label_smoothing);
        ws.backward(ws.dlogits(), true);
    };
    auto init = [&](Network& net) {
        Rng irng(a.seed + 1);
        net.init(irng);
    };

    // data parallel, as `train --distributed`
    Network net(b, r.net);
    init(net);
    Optimizer opt(net, r);
    if (r.optimizer != "sgd") {
        for (int s = 0; s < total; ++s)
            if (opt.lr_multiplier_at(s, total, spe) > opt.lr_multiplier_at(peak, total, spe)) peak = s;
        peak = std::min(peak, std::max(0, total - a.steps));
    }
    Workspace ws(net, Bl, true, K);  // (ghost BN: each rank's share of the ghost batches)
    DataParallel dp(net, comm, DataParallel::Options{a.sync_bn});
    ws.set_hooks(&dp);
    if (comm.root()) {
        fmt::print("dist-check    {}\n", dp.describe());
        fmt::print("              preset {}, batch {} ({} per rank), {} step{}, rank 0 on {}\n",
                   r.name, B, Bl, a.steps, a.steps == 1 ? "" : "s", pl.text);
    }
    std::vector<std::vector<float>> grads;  // after each step's sum
    for (int s = 0; s < a.steps; ++s) {
        pass(ws, s, comm.rank() * Bl, Bl);
        dp.finish_step();
        grads.emplace_back(net.size());
        b.download(grads.back().data(), net.grads.get(), net.size() * sizeof(float));
        update(opt, s);
    }
    std::vector<float> weights(net.size());
    b.download(weights.data(), net.params.get(), weights.size() * sizeof(float));

    // do all ranks hold the same weights? (rank r's max |w_r - w_0| in slot r)
    std::vector<float> w0 = weights;
    comm.broadcast(w0.data(), w0.size() * sizeof(float), 0);
    // (per-rank BN: the running statistics are each rank's own, so they are left out)
    std::vector<double> rank_diff(size_t(K), 0.0);
    for (const TensorSpec& t : net.tensors()) {
        if (!learnable(t.group) && !(a.sync_bn && t.group == ParamGroup::buffer)) continue;
        double& m = rank_diff[size_t(comm.rank())];
        for (size_t i = t.offset; i < t.offset + t.count; ++i)
            m = std::max(m, std::abs(double(weights[i]) - double(w0[i])));
    }
    comm.allreduce_sum(rank_diff.data(), rank_diff.size());

    int verdict = 0;
    if (comm.root()) {
        // the reference, in this process
        Network ref(b, r.net);
        init(ref);
        Optimizer ropt(ref, r);
        Workspace rws(ref, a.sync_bn ? B : Bl, true, a.sync_bn ? 1 : K);
        double worst_g = 0, worst_w = 0;
        std::string worst_g_name, worst_w_name;
        std::vector<float> g(ref.size()), sum(ref.size());
        fmt::print("\n{:<28} {:>14}  (max |difference| / rms of the reference, per step)\n",
                   "gradient of", "difference");
        for (int s = 0; s < a.steps; ++s) {
            if (a.sync_bn) {
                pass(rws, s, 0, B);
            } else {  // the sum of the per-slice gradients, each slice with its own BN statistics
                std::fill(sum.begin(), sum.end(), 0.f);
                for (int k = 0; k < K; ++k) {
                    pass(rws, s, k * Bl, Bl);
                    b.download(g.data(), ref.grads.get(), g.size() * sizeof(float));
                    for (size_t i = 0; i < g.size(); ++i) sum[i] += g[i];
                }
                b.upload(ref.grads.get(), sum.data(), sum.size() * sizeof(float));
            }
            b.download(g.data(), ref.grads.get(), g.size() * sizeof(float));
            for (const TensorSpec& t : ref.tensors()) {
                if (!learnable(t.group)) continue;
                const double e =
                    rel_error(grads[size_t(s)].data() + t.offset, g.data() + t.offset, t.count);
                if (s == a.steps - 1) fmt::print("{:<28} {:>14.3g}\n", t.name, e);
                if (e > worst_g) worst_g = e, worst_g_name = fmt::format("{} (step {})", t.name, s);
            }
            update(ropt, s);
        }
        std::vector<float> rw(ref.size());
        b.download(rw.data(), ref.params.get(), rw.size() * sizeof(float));
        for (const TensorSpec& t : ref.tensors()) {
            // per-rank BN: rank 0's running statistics are its slice's, not comparable
            if (!learnable(t.group) && !(a.sync_bn && t.group == ParamGroup::buffer)) continue;
            const double e = rel_error(weights.data() + t.offset, rw.data() + t.offset, t.count);
            if (e > worst_w) worst_w = e, worst_w_name = t.name;
        }
        double worst_rank = 0;
        for (double v : rank_diff) worst_rank = std::max(worst_rank, v);
        fmt::print(
            "\ngradients      worst {:.3g} ({}) against {}\n", worst_g,
            worst_g_name.empty() ? "-" : worst_g_name,
            a.sync_bn ? "one process on the full batch" : "the sum of the per-slice gradients");
        fmt::print("weights        worst {:.3g} ({}) after {} optimizer step{}{}\n", worst_w,
                   worst_w_name.empty() ? "-" : worst_w_name, a.steps, a.steps == 1 ? "" : "s",
                   a.sync_bn ? " (BN running statistics included)" : "");
        fmt::print("ranks          max |weights of rank r - rank 0| = {:.3g} (of {} ranks)\n",
                   worst_rank, K);
        const bool ok = worst_g <= a.tolerance && worst_w <= a.tolerance && worst_rank == 0;
        fmt::print(
            "dist-check: {} (tolerance {:g} of each tensor's rms; ranks must agree exactly)\n",
            ok ? "PASS" : "FAIL", a.tolerance);
        std::fflush(stdout);
        verdict = ok ? 0 : 1;
    }
    comm.broadcast(&verdict, sizeof verdict, 0);
    return verdict;
}

}  // namespace

int cmd_dist_check(const DistCheckArgs& a) {
    auto comm = make_process_communicator("dist-check");
    return run_on_all_ranks(*comm, [&] { return check_on_rank(a, *comm); });
}

}  // namespace sr
