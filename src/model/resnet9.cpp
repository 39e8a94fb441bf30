// resnet9.cpp: forward and backward of the resnet9 family (network.h), as Workspace members:
// a fixed list of conv units (Network::units()), each conv -> [pool] -> (ghost) BN -> act ->
// [pool], with the residual pairs of layers 1-3 added to their stage's output.
//
// Ghost BN: the batch is cut into ghost_splits equal slices of consecutive images (rows), each
// normalised with its own statistics and updating its own slice of the running statistics
// (S * C values); evaluation uses the first slice's, as cifar10-fast-simple's GhostBatchNorm
// does once its evaluation copy has been switched to eval mode. Under data parallelism each of K
// ranks holds B / K consecutive images of the global batch: ghost_splits / K whole ghost batches
// (Workspace's `ranks`), normalised as one process normalises them; rank 0's first slice, whose
// running statistics are evaluated, is one process's first. (The peer's slice j holds the
// images j, j + S, j + 2S, ... of the batch; ours holds a block of consecutive ones. Batches are
// shuffled, so the two are the same in distribution; the golden test reorders its input.)
#include <algorithm>

#include "core/error.h"
#include "model/network.h"

namespace sr {

void Workspace::init_resnet9() {
    const NetConfig& c = net_.config();
    const int k = c.whiten_kernel, S = ghost_;
    head_off_ = net_.tensor("head.weight").offset;
    if (k > 0) {
        whiten_off_ = net_.tensor("whiten.weight").offset;
        ConvShape ws{N_, c.image_side, c.image_side, 3, c.whiten_width(), k, k, k / 2};
        ws.no_input_grad = ws.frozen_weights = true;  // (the images; frozen filters, no bias)
        whiten_ = make_conv(ws);
        z0_ = DeviceBuffer<float>(b_, size_t(N_) * c.image_side * c.image_side * c.whiten_width());
    }
    size_t biggest = 0;
    int maxc = 0;
    units_.resize(net_.units().size());
    for (size_t i = 0; i < units_.size(); ++i) {
        const UnitSpec& s = net_.units()[i];
        Unit& u = units_[i];
        u.spec = &s;
        u.pool_after = s.pool && !c.pool_before_norm;
        const size_t full = size_t(N_) * s.H * s.H, half = size_t(N_) * s.Ho() * s.Ho();
        u.bn_rows = s.pool && c.pool_before_norm ? half : full;
        ConvShape cs{N_, s.H, s.H, s.cin, s.cout, s.k, s.k, s.k / 2};
        cs.no_input_grad = i == 0;  // (the first unit's input is the images or the frozen whitening's)
        u.conv = make_conv(cs);
        u.c = DeviceBuffer<float>(b_, full * s.cout);
        if (s.pool) {
            u.p = DeviceBuffer<float>(b_, half * s.cout);
            u.arg = DeviceBuffer<uint8_t>(b_, half * s.cout);
        }
        u.n = DeviceBuffer<float>(b_, u.bn_rows * s.cout);
        u.a = DeviceBuffer<float>(b_, u.bn_rows * s.cout);
        if (i > 0) u.din = grad_buffer(full * s.cin);  // the first unit needs none
        u.mean = DeviceBuffer<float>(b_, size_t(S) * s.cout);
        u.istd = DeviceBuffer<float>(b_, size_t(S) * s.cout);
        biggest = std::max(biggest, full * std::max(s.cin, s.cout));
        maxc = std::max(maxc, s.cout);
        if (s.role == 2) sums_.emplace_back(b_, half * s.cout);  // (res units do not pool)
    }
    t1_ = grad_buffer(biggest);  // (backward scratch)
    t2_ = grad_buffer(biggest);
    if (S > 1) {
        dg_split_ = grad_buffer(size_t(S) * maxc);
        db_split_ = grad_buffer(size_t(S) * maxc);
    }
    const UnitSpec& last = net_.units().back();
    const int side = last.Ho(), C = c.widths[3];
    if (side / c.final_pool != 1)
        fail("config: net.final_pool {} leaves {}x{} of the last layer's {}x{} (the head needs 1x1: "
             "net.final_pool {})", c.final_pool, side / c.final_pool, side / c.final_pool, side, side, side);
    Hf_ = side;
    d_last_ = grad_buffer(size_t(N_) * side * side * C);
    feat_ = DeviceBuffer<float>(b_, size_t(N_) * C);
    d_feat_ = grad_buffer(size_t(N_) * C);
    feat_arg_ = DeviceBuffer<uint8_t>(b_, size_t(N_) * C);
    logits_ = DeviceBuffer<float>(b_, size_t(N_) * c.num_classes);
    dlogits_ = grad_buffer(size_t(N_) * c.num_classes);
}

const float* Workspace::unit_forward(Unit& u, const float* in, bool train) {
    const NetConfig& c = net_.config();
    const UnitSpec& s = *u.spec;
    float* P = net_.params.get();
    const int C = s.cout, S = ghost_;
    u.in = in;
    u.conv->forward(u.c.get(), in, P + s.w, nullptr);
    if (s.pool && !u.pool_after)
        b_.maxpool_forward(u.p.get(), u.arg.get(), u.c.get(), N_, s.H, s.H, C, 2);
    const float* x = u.bn_in();
    const float* gamma = P + s.bn_w;
    const float* beta = P + s.bn_b;
    if (train) {
        if (hooks_ && hooks_->bn_group() > 1) fail("sync-BN is not implemented for the resnet9 network");
        if (N_ % S != 0) fail("ghost BN: the batch ({}) must split into {} equal slices", N_, S);
        const size_t rows = u.bn_rows / size_t(S);
        for (int j = 0; j < S; ++j) {
            const size_t at = size_t(j) * rows * C;
            b_.bn_forward_train(b_.act_at(u.n.get(), at), u.mean.get() + size_t(j) * C,
                                u.istd.get() + size_t(j) * C, P + s.rm + size_t(j) * C,
                                P + s.rv + size_t(j) * C, b_.act_at(x, at), gamma,
                                beta, int(rows), C, c.bn_eps, c.bn_momentum);
        }
    } else {
        b_.bn_forward_eval(u.n.get(), x, P + s.rm, P + s.rv, gamma, beta, int(u.bn_rows), C, c.bn_eps);
    }
    act_forward(u.a.get(), u.n.get(), u.bn_rows * C);
    if (u.pool_after) b_.maxpool_forward(u.p.get(), u.arg.get(), u.a.get(), N_, s.H, s.H, C, 2);
    return u.out();
}

// dout: gradient w.r.t. the unit's output. Fills the unit's weight and BN gradients and, when
// want_din, u.din (gradient w.r.t. its input).
void Workspace::unit_backward(Unit& u, const float* dout, bool want_din) {
    const NetConfig& c = net_.config();
    const UnitSpec& s = *u.spec;
    const float* P = net_.params.get();
    float* G = net_.grads.get();
    const int C = s.cout, S = ghost_;
    const bool scale = c.bn_train_scale;
    const float* cur = dout;
    if (u.pool_after) {
        b_.maxpool_backward(t1_.get(), cur, u.arg.get(), N_, s.H, s.H, C, 2);
        cur = t1_.get();
    }
    float* d_act = cur == t1_.get() ? t2_.get() : t1_.get();
    act_backward(d_act, cur, u.n.get(), u.bn_rows * C);
    float* d_bn = d_act == t1_.get() ? t2_.get() : t1_.get();
    const float* x = u.bn_in();
    if (S == 1) {
        b_.bn_backward(d_bn, scale ? G + s.bn_w : nullptr, G + s.bn_b, d_act, x, u.mean.get(),
                       u.istd.get(), P + s.bn_w, int(u.bn_rows), C);
    } else {  // per slice, then the parameter gradients summed over the slices
        const size_t rows = u.bn_rows / size_t(S);
        for (int j = 0; j < S; ++j) {
            const size_t at = size_t(j) * rows * C;
            b_.bn_backward(b_.act_at(d_bn, at), scale ? dg_split_.get() + size_t(j) * C : nullptr,
                           db_split_.get() + size_t(j) * C, b_.act_at(d_act, at), b_.act_at(x, at),
                           u.mean.get() + size_t(j) * C, u.istd.get() + size_t(j) * C, P + s.bn_w,
                           int(rows), C);
        }
        b_.copy(G + s.bn_b, db_split_.get(), size_t(C) * sizeof(float));
        for (int j = 1; j < S; ++j) b_.axpy(G + s.bn_b, db_split_.get() + size_t(j) * C, 1.f, C);
        if (scale) {
            b_.copy(G + s.bn_w, dg_split_.get(), size_t(C) * sizeof(float));
            for (int j = 1; j < S; ++j) b_.axpy(G + s.bn_w, dg_split_.get() + size_t(j) * C, 1.f, C);
        }
    }
    grad_ready(G + s.bn_b, C);
    if (scale) grad_ready(G + s.bn_w, C);
    cur = d_bn;
    if (s.pool && !u.pool_after) {
        float* d_c = d_bn == t1_.get() ? t2_.get() : t1_.get();
        b_.maxpool_backward(d_c, cur, u.arg.get(), N_, s.H, s.H, C, 2);
        cur = d_c;
    }
    u.conv->backward(want_din ? u.din.get() : nullptr, G + s.w, nullptr, cur, u.in, P + s.w,
                     [&] { grad_ready(G + s.w, size_t(C) * s.k * s.k * s.cin); });
}

const float* Workspace::forward_resnet9(const float* x, bool train) {
    const NetConfig& c = net_.config();
    const float* P = net_.params.get();
    x_ = x;
    const float* h = x;
    if (whiten_) {
        whiten_->forward(z0_.get(), x, P + whiten_off_, nullptr);
        h = z0_.get();
    }
    size_t sum_i = 0;
    const float* stage_in = nullptr;  // a residual stage's input (its unit's output)
    for (Unit& u : units_) {
        if (u.spec->role == 0) {
            h = unit_forward(u, h, train);
            stage_in = h;
        } else {
            h = unit_forward(u, h, train);
            if (u.spec->role == 2) {  // stage output = its unit's output + the residual pair's
                float* sum = sums_[sum_i++].get();
                const size_t n = size_t(N_) * u.spec->H * u.spec->H * u.spec->cout;
                b_.copy(sum, stage_in, n * sizeof(float));  // (whole buffers: any storage)
                b_.residual_add(sum, h, n);
                h = sum;
            }
        }
    }
    const int C = c.widths[3];
    b_.maxpool_forward(feat_.get(), feat_arg_.get(), h, N_, Hf_, Hf_, C, c.final_pool);
    b_.linear_forward(logits_.get(), feat_.get(), P + head_off_, N_, C,
                      c.num_classes, c.scaling_factor);
    return logits_.get();
}

void Workspace::backward_resnet9(const float* dlogits) {
    const NetConfig& c = net_.config();
    const float* P = net_.params.get();
    float* G = net_.grads.get();
    const int C = c.widths[3];
    const size_t head = head_off_;
    b_.linear_backward(d_feat_.get(), G + head, dlogits, feat_.get(), P + head, N_, C,
                       c.num_classes, c.scaling_factor);
    grad_ready(G + head, size_t(c.num_classes) * C);
    b_.maxpool_backward(d_last_.get(), d_feat_.get(), feat_arg_.get(), N_, Hf_, Hf_, C, c.final_pool);
    const float* d = d_last_.get();  // gradient w.r.t. the current stage's output
    for (int i = int(units_.size()) - 1; i >= 0; --i) {
        Unit& u = units_[size_t(i)];
        const bool first = i == 0;
        if (u.spec->role == 2) {
            // stage output = stage_in + res2(res1(stage_in)): the pair first, then the skip
            Unit& r1 = units_[size_t(i) - 1];
            unit_backward(u, d, true);            // -> u.din: w.r.t. res1's output
            unit_backward(r1, u.din.get(), true);  // -> r1.din: w.r.t. stage_in, via the pair
            const size_t n = size_t(N_) * u.spec->H * u.spec->H * u.spec->cout;
            b_.residual_add(r1.din.get(), d, n);  // + the skip path
            d = r1.din.get();
            --i;  // res1 is done
        } else {
            unit_backward(u, d, !first);
            if (!first) d = u.din.get();
        }
    }
}

}  // namespace sr
