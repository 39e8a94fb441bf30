// dawn_net.cpp: the dawn family (network.h): layout, forward and backward of the pre-activation
// ResNet-18 that the Myrtle "How to train your ResNet" series starts from (cifar10-fast's
// DAWN_net, experiments.ipynb): prep conv, four layers of two pre-activation blocks (strided conv
// and 1x1 projection where a layer downsamples), global max + mean pooling and a biased linear.
//
// Backward runs the blocks in reverse with three scratch buffers of the largest activation: d
// (gradient w.r.t. the current block's output), ta and tb. A block's input gradient is written
// over d once d has been used (the shortcut's share is its last use).
#include <algorithm>

#include "core/error.h"
#include "model/network.h"

namespace sr {

void Network::layout_dawn() {
    const NetConfig& cfg = cfg_;
    if (cfg.widths.size() != 4) fail("net.widths: the dawn network has 4 widths, layers 1-4 (got {})", cfg.widths.size());
    auto add = [&](std::string name, std::vector<int> shape, ParamGroup grp) {
        TensorSpec s{std::move(name), std::move(shape), grp};
        s.count = 1;
        for (int d : s.shape) s.count *= size_t(d);
        specs_.push_back(std::move(s));
    };
    const ParamGroup scale_group = cfg.bn_train_scale ? ParamGroup::bn_scale : ParamGroup::frozen;
    auto bn = [&](const std::string& name, int c) {
        add(name + ".bias", {c}, ParamGroup::bn_bias);
        add(name + ".weight", {c}, scale_group);
        add(name + ".running_mean", {c}, ParamGroup::buffer);
        add(name + ".running_var", {c}, ParamGroup::buffer);
    };
    add("prep.conv.weight", {cfg.widths[0], 3, 3, 3}, ParamGroup::weight);
    int H = cfg.image_side, cin = cfg.widths[0];
    for (int L = 1; L <= 4; ++L)
        for (int b = 0; b < 2; ++b) {
            const int cout = cfg.widths[L - 1], stride = (L > 1 && b == 0) ? 2 : 1;
            BlockSpec k{fmt::format("layer{}.block{}", L, b), cin, cout, stride, H, stride != 1 || cin != cout};
            bn(k.name + ".bn1", cin);
            add(k.name + ".conv1.weight", {cout, 3, 3, cin}, ParamGroup::weight);
            bn(k.name + ".bn2", cout);
            add(k.name + ".conv2.weight", {cout, 3, 3, cout}, ParamGroup::weight);
            if (k.projection) add(k.name + ".conv3.weight", {cout, 1, 1, cin}, ParamGroup::weight);
            blocks_.push_back(k);
            cin = cout;
            H = k.Ho();
        }
    add("head.weight", {cfg.num_classes, 2 * cfg.widths[3]}, ParamGroup::weight);
    add("head.bias", {cfg.num_classes}, ParamGroup::weight);
}

void Workspace::init_dawn() {
    const NetConfig& c = net_.config();
    const int side = c.image_side;
    head_off_ = net_.tensor("head.weight").offset;
    head_b_off_ = net_.tensor("head.bias").offset;
    prep_off_ = net_.tensor("prep.conv.weight").offset;
    ConvShape ps{N_, side, side, 3, c.widths[0], 3, 3, 1};
    ps.no_input_grad = true;  // (the images)
    prep_ = make_conv(ps);
    prep_out_ = DeviceBuffer<float>(b_, size_t(N_) * side * side * c.widths[0]);
    size_t biggest = prep_out_.size();
    blocks_.resize(net_.blocks().size());
    for (size_t i = 0; i < blocks_.size(); ++i) {
        const BlockSpec& s = net_.blocks()[i];
        Block& k = blocks_[i];
        k.spec = &s;
        const size_t in = size_t(N_) * s.H * s.H * s.cin, out = size_t(N_) * s.Ho() * s.Ho() * s.cout;
        k.conv1 = make_conv({N_, s.H, s.H, s.cin, s.cout, 3, 3, 1, s.stride});
        k.conv2 = make_conv({N_, s.Ho(), s.Ho(), s.cout, s.cout, 3, 3, 1});
        if (s.projection) {
            k.conv3 = make_conv({N_, s.H, s.H, s.cin, s.cout, 1, 1, 0, s.stride});
            k.sc = DeviceBuffer<float>(b_, out);
        }
        k.n1 = DeviceBuffer<float>(b_, in);
        k.a1 = DeviceBuffer<float>(b_, in);
        for (auto* buf : {&k.c1, &k.n2, &k.a2, &k.out}) *buf = DeviceBuffer<float>(b_, out);
        k.mean1 = DeviceBuffer<float>(b_, s.cin);
        k.istd1 = DeviceBuffer<float>(b_, s.cin);
        k.mean2 = DeviceBuffer<float>(b_, s.cout);
        k.istd2 = DeviceBuffer<float>(b_, s.cout);
        biggest = std::max({biggest, in, out});
    }
    d_last_ = grad_buffer(biggest);
    t1_ = grad_buffer(biggest);  // (backward scratch)
    t2_ = grad_buffer(biggest);
    const BlockSpec& last = net_.blocks().back();
    if (last.Ho() != c.final_pool)
        fail("dawn: the head pools the whole {}x{} map: net.final_pool must be {} (got {})", last.Ho(),
             last.Ho(), last.Ho(), c.final_pool);
    Hf_ = last.Ho();
    const int C = c.widths[3];
    feat_ = DeviceBuffer<float>(b_, size_t(N_) * 2 * C);
    d_feat_ = grad_buffer(size_t(N_) * 2 * C);
    feat_arg_ = DeviceBuffer<uint8_t>(b_, size_t(N_) * C);
    logits_ = DeviceBuffer<float>(b_, size_t(N_) * c.num_classes);
    dlogits_ = grad_buffer(size_t(N_) * c.num_classes);
    // the head bias is added (and its gradient summed) as a rank-1 product with a column of ones
    ones_ = DeviceBuffer<float>(b_, size_t(N_));
    std::vector<float> one(size_t(N_), 1.f);
    b_.upload(ones_.get(), one.data(), one.size() * sizeof(float));
    bn_sums_ = DeviceBuffer<float>(b_, 4 * size_t(*std::max_element(c.widths.begin(), c.widths.end())));
}

const float* Workspace::forward_dawn(const float* x, bool train) {
    const NetConfig& c = net_.config();
    float* P = net_.params.get();
    x_ = x;
    prep_->forward(prep_out_.get(), x, P + prep_off_, nullptr);
    const float* h = prep_out_.get();
    for (Block& k : blocks_) {
        const BlockSpec& s = *k.spec;
        const int M1 = N_ * s.H * s.H, M2 = N_ * s.Ho() * s.Ho();
        k.in = h;
        bn_layer_forward(train, k.n1.get(), k.mean1.get(), k.istd1.get(), P + s.bn1_rm,
                         P + s.bn1_rv, h, P + s.bn1_w, P + s.bn1_b, M1, s.cin);
        act_forward(k.a1.get(), k.n1.get(), size_t(M1) * s.cin);
        k.conv1->forward(k.c1.get(), k.a1.get(), P + s.w1, nullptr);
        bn_layer_forward(train, k.n2.get(), k.mean2.get(), k.istd2.get(), P + s.bn2_rm,
                         P + s.bn2_rv, k.c1.get(), P + s.bn2_w, P + s.bn2_b, M2, s.cout);
        act_forward(k.a2.get(), k.n2.get(), size_t(M2) * s.cout);
        k.conv2->forward(k.out.get(), k.a2.get(), P + s.w2, nullptr);
        if (s.projection) {
            k.conv3->forward(k.sc.get(), k.a1.get(), P + s.w3, nullptr);
            b_.residual_add(k.out.get(), k.sc.get(), size_t(M2) * s.cout);
        } else {  // DAWN_net's identity shortcut is the block's activation a, not its input
            b_.residual_add(k.out.get(), k.a1.get(), size_t(M2) * s.cout);
        }
        h = k.out.get();
    }
    const int C = c.widths[3];
    b_.concat_pool_forward(feat_.get(), feat_arg_.get(), h, N_, Hf_ * Hf_, C);
    b_.linear_forward(logits_.get(), feat_.get(), P + head_off_, N_, 2 * C, c.num_classes,
                      c.scaling_factor);
    // logits (N,O) += ones (N,1) x bias (1,O)
    b_.gemm(logits_.get(), ones_.get(), P + head_b_off_, N_, c.num_classes, 1, false, false, 1.f, 1.f);
    return logits_.get();
}

void Workspace::backward_dawn(const float* dlogits) {
    const NetConfig& c = net_.config();
    const float* P = net_.params.get();
    float* G = net_.grads.get();
    const int C = c.widths[3], O = c.num_classes;
    b_.linear_backward(d_feat_.get(), G + head_off_, dlogits, feat_.get(), P + head_off_, N_, 2 * C,
                       O, c.scaling_factor);
    grad_ready(G + head_off_, size_t(O) * 2 * C);
    // dbias (1,O) = ones^T (1,N) x dlogits (N,O)
    b_.gemm(G + head_b_off_, ones_.get(), dlogits, 1, O, N_, true, false, 1.f, 0.f);
    grad_ready(G + head_b_off_, size_t(O));
    float* d = d_last_.get();
    float* ta = t1_.get();
    float* tb = t2_.get();
    b_.concat_pool_backward(d, d_feat_.get(), feat_arg_.get(), N_, Hf_ * Hf_, C);
    for (int i = int(blocks_.size()) - 1; i >= 0; --i) {
        Block& k = blocks_[size_t(i)];
        const BlockSpec& s = *k.spec;
        const int M1 = N_ * s.H * s.H, M2 = N_ * s.Ho() * s.Ho();
        // branch: conv2 <- act <- BN2 <- conv1
        k.conv2->backward(ta, G + s.w2, nullptr, d, k.a2.get(), P + s.w2,
                          [&] { grad_ready(G + s.w2, size_t(s.cout) * 9 * s.cout); });
        act_backward(tb, ta, k.n2.get(), size_t(M2) * s.cout);
        bn_layer_backward(ta, G + s.bn2_w, G + s.bn2_b, tb, k.c1.get(), k.mean2.get(),
                          k.istd2.get(), P + s.bn2_w, M2, s.cout);
        k.conv1->backward(tb, G + s.w1, nullptr, ta, k.a1.get(), P + s.w1,  // d(a1) through the branch
                          [&] { grad_ready(G + s.w1, size_t(s.cout) * 9 * s.cin); });
        // + the shortcut's share of d(a1)
        if (s.projection) {
            k.conv3->backward(ta, G + s.w3, nullptr, d, k.a1.get(), P + s.w3,
                              [&] { grad_ready(G + s.w3, size_t(s.cout) * s.cin); });
            b_.residual_add(tb, ta, size_t(M1) * s.cin);
        } else {
            b_.residual_add(tb, d, size_t(M1) * s.cin);
        }
        // act <- BN1: the block's input gradient, over d (no longer needed)
        act_backward(ta, tb, k.n1.get(), size_t(M1) * s.cin);
        bn_layer_backward(d, G + s.bn1_w, G + s.bn1_b, ta, k.in, k.mean1.get(), k.istd1.get(),
                          P + s.bn1_w, M1, s.cin);
    }
    prep_->backward_weights(G + prep_off_, nullptr, d, x_);
    grad_ready(G + prep_off_, size_t(c.widths[0]) * 27);
}

}  // namespace sr
