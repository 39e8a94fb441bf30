// network.cpp: parameter layout, initialisation (PyTorch conventions), whitening init, and the
// straight-line forward/backward of the airbench-family network.
#include "model/network.h"

#include <algorithm>
#include <cmath>

#include <Eigen/Eigenvalues>

#include "core/error.h"

namespace sr {

// ---- layout -------------------------------------------------------------------------------

void Network::layout_airbench() {
    const NetConfig& cfg = cfg_;
    if (cfg.widths.size() != 3) fail("net.widths: the airbench network has 3 conv groups (got {} widths)", cfg.widths.size());
    const int k = cfg.whiten_kernel, cw = cfg.whiten_width();
    auto add = [&](std::string name, std::vector<int> shape, ParamGroup grp) {
        TensorSpec s{std::move(name), std::move(shape), grp};
        s.count = 1;
        for (int d : s.shape) s.count *= size_t(d);
        specs_.push_back(std::move(s));
    };
    add("whiten.bias", {cw}, ParamGroup::whiten_bias);
    int cin = cw;
    for (int gi = 0; gi < 3; ++gi) {
        const int c = cfg.widths[gi];
        add(fmt::format("block{}.conv1.weight", gi + 1), {c, 3, 3, cin}, ParamGroup::weight);
        add(fmt::format("block{}.conv2.weight", gi + 1), {c, 3, 3, c}, ParamGroup::weight);
        if (cfg.group_convs == 3) add(fmt::format("block{}.conv3.weight", gi + 1), {c, 3, 3, c}, ParamGroup::weight);
        cin = c;
    }
    add("head.weight", {cfg.num_classes, cin}, ParamGroup::weight);
    const ParamGroup scale_group = cfg.bn_train_scale ? ParamGroup::bn_scale : ParamGroup::frozen;
    if (cfg.group_convs != 2 && cfg.group_convs != 3) fail("net.group_convs must be 2 or 3 (got {})", cfg.group_convs);
    for (int gi = 0; gi < 3; ++gi)
        for (int j = 1; j <= cfg.group_convs; ++j) {
            add(fmt::format("block{}.norm{}.bias", gi + 1, j), {cfg.widths[gi]}, ParamGroup::bn_bias);
            add(fmt::format("block{}.norm{}.weight", gi + 1, j), {cfg.widths[gi]}, scale_group);
            add(fmt::format("block{}.norm{}.running_mean", gi + 1, j), {cfg.widths[gi]}, ParamGroup::buffer);
            add(fmt::format("block{}.norm{}.running_var", gi + 1, j), {cfg.widths[gi]}, ParamGroup::buffer);
        }
    add("whiten.weight", {cw, k, k, 3}, ParamGroup::frozen);
}

void Network::layout_resnet9() {
    const NetConfig& cfg = cfg_;
    if (cfg.widths.size() != 4)
        fail("net.widths: the resnet9 network has 4 widths, prep and layers 1-3 (got {})", cfg.widths.size());
    if (cfg.ghost_splits < 1) fail("net.ghost_splits must be >= 1");
    auto add = [&](std::string name, std::vector<int> shape, ParamGroup grp) {
        TensorSpec s{std::move(name), std::move(shape), grp};
        s.count = 1;
        for (int d : s.shape) s.count *= size_t(d);
        specs_.push_back(std::move(s));
    };
    const int k = cfg.whiten_kernel, S = cfg.ghost_splits;
    if (k > 0) add("whiten.weight", {cfg.whiten_width(), k, k, 3}, ParamGroup::frozen);
    const ParamGroup scale_group = cfg.bn_train_scale ? ParamGroup::bn_scale : ParamGroup::frozen;
    int H = cfg.image_side;
    auto unit = [&](std::string name, int cin, int cout, int kk, bool pool, int stage, int role) {
        add(name + ".conv.weight", {cout, kk, kk, cin}, ParamGroup::weight);
        add(name + ".norm.bias", {cout}, ParamGroup::bn_bias);
        add(name + ".norm.weight", {cout}, scale_group);
        add(name + ".norm.running_mean", {S * cout}, ParamGroup::buffer);
        add(name + ".norm.running_var", {S * cout}, ParamGroup::buffer);
        units_.push_back({name, cin, cout, kk, H, pool, stage, role, 0, 0, 0, 0, 0});
        if (pool) H /= 2;
    };
    unit("prep", k > 0 ? cfg.whiten_width() : 3, cfg.widths[0], k > 0 ? 1 : 3, false, 0, 0);
    for (int L = 1; L <= 3; ++L) {
        const std::string name = fmt::format("layer{}", L);
        unit(name, cfg.widths[L - 1], cfg.widths[L], 3, true, L, 0);
        if (std::find(cfg.residual.begin(), cfg.residual.end(), L) != cfg.residual.end()) {
            unit(name + ".res1", cfg.widths[L], cfg.widths[L], 3, false, L, 1);
            unit(name + ".res2", cfg.widths[L], cfg.widths[L], 3, false, L, 2);
        }
    }
    add("head.weight", {cfg.num_classes, cfg.widths[3]}, ParamGroup::weight);
}

Network::Network(Backend& b, const NetConfig& cfg) : backend(b), cfg_(cfg) {
    if (cfg.arch == Arch::airbench) layout_airbench();
    else if (cfg.arch == Arch::resnet9) layout_resnet9();
    else layout_dawn();
    std::stable_sort(specs_.begin(), specs_.end(),
                     [](const TensorSpec& a, const TensorSpec& b) { return int(a.group) < int(b.group); });
    for (auto& s : specs_) {
        s.offset = total_;
        total_ += s.count;
    }
    params = DeviceBuffer<float>(b, total_);
    grads = DeviceBuffer<float>(b, total_);
    momentum = DeviceBuffer<float>(b, total_);
    ema = DeviceBuffer<float>(b, total_);
    auto bind = [&](Params& P, float* base) {
        auto at = [&](const std::string& n) { return base + tensor(n).offset; };
        P.whiten_b = at("whiten.bias");
        P.whiten_w = at("whiten.weight");
        P.head_w = at("head.weight");
        for (int gi = 0; gi < 3; ++gi)
            for (int j = 0; j < cfg.group_convs; ++j) {
                const std::string blk = fmt::format("block{}.", gi + 1);
                P.conv_w[gi][j] = at(blk + fmt::format("conv{}.weight", j + 1));
                P.bn_b[gi][j] = at(blk + fmt::format("norm{}.bias", j + 1));
                P.bn_w[gi][j] = at(blk + fmt::format("norm{}.weight", j + 1));
                P.bn_mean[gi][j] = at(blk + fmt::format("norm{}.running_mean", j + 1));
                P.bn_var[gi][j] = at(blk + fmt::format("norm{}.running_var", j + 1));
            }
    };
    if (cfg.arch == Arch::airbench) {
        bind(p, params.get());
        bind(g, grads.get());
    }
    for (BlockSpec& k : blocks_) {
        auto at = [&](const std::string& n) { return tensor(k.name + "." + n).offset; };
        k.bn1_b = at("bn1.bias"), k.bn1_w = at("bn1.weight");
        k.bn1_rm = at("bn1.running_mean"), k.bn1_rv = at("bn1.running_var");
        k.bn2_b = at("bn2.bias"), k.bn2_w = at("bn2.weight");
        k.bn2_rm = at("bn2.running_mean"), k.bn2_rv = at("bn2.running_var");
        k.w1 = at("conv1.weight"), k.w2 = at("conv2.weight");
        k.w3 = k.projection ? at("conv3.weight") : 0;
    }
    for (UnitSpec& u : units_) {
        u.w = tensor(u.name + ".conv.weight").offset;
        u.bn_b = tensor(u.name + ".norm.bias").offset;
        u.bn_w = tensor(u.name + ".norm.weight").offset;
        u.rm = tensor(u.name + ".norm.running_mean").offset;
        u.rv = tensor(u.name + ".norm.running_var").offset;
    }
}

const TensorSpec& Network::tensor(const std::string& name) const {
    for (const auto& s : specs_)
        if (s.name == name) return s;
    fail("no tensor named '{}' in the network", name);
}

std::pair<size_t, size_t> Network::group_range(ParamGroup grp) const {
    size_t b = total_, e = 0;
    for (const auto& s : specs_)
        if (s.group == grp) {
            b = std::min(b, s.offset);
            e = std::max(e, s.offset + s.count);
        }
    return b < e ? std::pair{b, e} : std::pair{size_t(0), size_t(0)};
}

size_t Network::learnable_count() const {
    size_t n = 0;
    for (const auto& s : specs_)
        if (s.group == ParamGroup::weight || s.group == ParamGroup::bn_bias ||
            s.group == ParamGroup::bn_scale || s.group == ParamGroup::whiten_bias)
            n += s.count;
    return n;
}

double Network::flops_per_image_forward() const {
    if (cfg_.arch == Arch::dawn) {  // prep conv, each block's convs, the head (BN, adds: not counted)
        const int side = cfg_.image_side;
        double f = 2.0 * side * side * cfg_.widths[0] * 3 * 9;
        for (const BlockSpec& k : blocks_) {
            const double o = double(k.Ho()) * k.Ho();
            f += 2.0 * o * k.cout * k.cin * 9 + 2.0 * o * k.cout * k.cout * 9;
            if (k.projection) f += 2.0 * o * k.cout * k.cin;
        }
        return f + 2.0 * 2 * cfg_.widths[3] * cfg_.num_classes;
    }
    if (cfg_.arch == Arch::resnet9) {
        const int side = cfg_.image_side, k = cfg_.whiten_kernel;
        double f = 2.0 * side * side * cfg_.whiten_width() * 3 * k * k;
        for (const UnitSpec& u : units_) f += 2.0 * u.H * u.H * u.cout * u.cin * u.k * u.k;
        return f + 2.0 * cfg_.widths[3] * cfg_.num_classes;
    }
    const int side = cfg_.image_side, k = cfg_.whiten_kernel;
    int H = side - k + 1;
    double f = 2.0 * H * H * cfg_.whiten_width() * 3 * k * k;
    int cin = cfg_.whiten_width();
    for (int gi = 0; gi < 3; ++gi) {
        const int c = cfg_.widths[gi];
        f += 2.0 * H * H * c * cin * 9;
        H /= 2;
        f += 2.0 * H * H * c * c * 9 * (cfg_.group_convs - 1);
        cin = c;
    }
    f += 2.0 * cin * cfg_.num_classes;
    return f;
}

double Workspace::flops_per_step(bool with_whiten_bias) const {
    SR_CHECK(trains_);
    double forward = 0, step = 0;
    auto add = [&](const std::unique_ptr<Conv2d>& c, bool dx_runs = true) {
        if (!c) return;
        const ConvShape& s = c->shape;
        const double f = s.flops_forward();
        forward += f;
        step += f * (1 + (s.computes_dw() ? 1 : 0) + (s.computes_dx() && dx_runs ? 1 : 0));
    };
    add(whiten_);
    if (whiten_ && net_.config().arch == Arch::airbench && with_whiten_bias) {  // the bias: a sum over dy
        const ConvShape& s = whiten_->shape;
        step += double(s.N) * s.P() * s.Q() * s.K;
    }
    for (int gi = 0; gi < 3; ++gi) {
        add(grp_[gi].conv1, gi > 0 || with_whiten_bias);
        add(grp_[gi].conv2);
        add(grp_[gi].conv3);
    }
    for (const Unit& u : units_) add(u.conv);
    add(prep_);
    for (const Block& k : blocks_) {
        add(k.conv1);
        add(k.conv2);
        add(k.conv3);
    }
    const double head = net_.flops_per_image_forward() * N_ - forward;  // the head's forward
    // (dawn's head bias: products with a column of ones, forward and backward)
    if (!blocks_.empty()) step += 4.0 * N_ * net_.config().num_classes;
    return step + 3 * head;
}

void Network::download(std::vector<float>& host) const {
    host.resize(total_);
    backend.download(host.data(), params.get(), total_ * sizeof(float));
}

void Network::upload(const std::vector<float>& host) {
    SR_CHECK(host.size() == total_);
    backend.upload(params.get(), host.data(), total_ * sizeof(float));
}

// ---- initialisation -----------------------------------------------------------------------

namespace {

// torch.std_mean of n values: the mean and the unbiased standard deviation
void mean_std(const float* w, size_t n, double& m, double& sd) {
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; ++i) sum += w[i];
    m = sum / double(n);
    for (size_t i = 0; i < n; ++i) sq += (w[i] - m) * (w[i] - m);
    sd = std::sqrt(sq / double(n - 1));
}

// the identity's taps of an OHWI filter bank: filter o < min(K, C) passes channel o through its
// centre (torch.nn.init.dirac_); returns the index of tap o
size_t identity_tap(int o, int R, int S, int C) {
    return (size_t(o) * R * S + size_t(R / 2) * S + S / 2) * C + o;
}

}  // namespace

void dirac_identity_added(float* w, int K, int R, int S, int C) {
    const size_t n = size_t(K) * R * S * C;
    double m0, sd0, m1, sd1;
    mean_std(w, n, m0, sd0);
    for (int o = 0; o < std::min(K, C); ++o) w[identity_tap(o, R, S, C)] += 1.f;
    mean_std(w, n, m1, sd1);
    for (size_t i = 0; i < n; ++i) w[i] = float((w[i] - m1) / sd1 * sd0 + m0);
}

void Network::init(Rng& rng) {
    std::vector<float> h(total_, 0.f);
    for (const auto& s : specs_) {
        float* t = h.data() + s.offset;
        const bool conv = s.shape.size() == 4, linear = s.name == "head.weight";
        if (s.name == "head.bias") {  // PyTorch's Linear bias: uniform(+-1/sqrt(in_features))
            const float bound = 1.f / std::sqrt(float(tensor("head.weight").shape[1]));
            for (size_t i = 0; i < s.count; ++i) t[i] = rng.uniform(-bound, bound);
            continue;
        }
        if (conv || linear) {
            size_t fan_in = 1;
            for (size_t d = 1; d < s.shape.size(); ++d) fan_in *= size_t(s.shape[d]);
            const float bound = 1.f / std::sqrt(float(fan_in));
            for (size_t i = 0; i < s.count; ++i) t[i] = rng.uniform(-bound, bound);
            if (linear && cfg_.head_unit_std) {  // the Muon recipes: w *= 1 / w.std()
                double mean, sd;
                mean_std(t, s.count, mean, sd);
                for (size_t i = 0; i < s.count; ++i) t[i] = float(t[i] / sd);
            }
            const bool identity_added = cfg_.dirac == "identity_added";
            if (conv && cfg_.arch == Arch::airbench && identity_added) {
                // hlb-CIFAR10: conv1 += identity, rescaled; conv2 := identity (torch's dirac_);
                // the whitening filters come later
                const int K = s.shape[0], R = s.shape[1], S = s.shape[2], C = s.shape[3];
                if (s.name.ends_with(".conv1.weight")) {
                    dirac_identity_added(t, K, R, S, C);
                } else if (s.name.ends_with(".conv2.weight")) {
                    std::fill(t, t + s.count, 0.f);
                    for (int o = 0; o < std::min(K, C); ++o) t[identity_tap(o, R, S, C)] = 1.f;
                }
            } else if (conv && cfg_.arch == Arch::airbench) {  // dirac on the first C_in filters (OHWI): filter o < C_in passes channel o
                const int K = s.shape[0], R = s.shape[1], S = s.shape[2], C = s.shape[3];
                for (int o = 0; o < std::min(K, C); ++o) {
                    std::fill(t + size_t(o) * R * S * C, t + size_t(o + 1) * R * S * C, 0.f);
                    t[identity_tap(o, R, S, C)] = 1.f;
                }
            }
        } else if (s.name == "whiten.bias" && cfg_.whiten_bias_uniform) {
            // PyTorch's Conv2d bias init: uniform(+-1/sqrt(fan_in)), fan_in = 3 k k
            const float bound = 1.f / std::sqrt(float(3 * cfg_.whiten_kernel * cfg_.whiten_kernel));
            for (size_t i = 0; i < s.count; ++i) t[i] = rng.uniform(-bound, bound);
        } else if (s.name.ends_with(".weight") && cfg_.bn_scale_init == "uniform") {
            for (size_t i = 0; i < s.count; ++i) t[i] = float(rng.uniform());  // BN scale, PyTorch < 1.2
        } else if (s.name.ends_with(".weight") || s.name.ends_with("running_var")) {  // (any size)
            std::fill(t, t + s.count, 1.f);  // BN scale, running variance
        }  // biases and running means stay 0
    }
    upload(h);
}

void Network::init_whitening(const float* x, int N, float eps, bool center, int splits) {
    const int k = cfg_.whiten_kernel, D = 3 * k * k;
    if (k == 0) return;  // (resnet9 without a whitening layer)
    SR_CHECK(splits >= 1 && N >= splits);
    const int per = N / splits;
    const size_t image = size_t(cfg_.image_side) * cfg_.image_side * 3;
    const double P = double(per) * (cfg_.image_side - k + 1) * (cfg_.image_side - k + 1);
    Eigen::VectorXd values = Eigen::VectorXd::Zero(D);
    Eigen::MatrixXd vectors = Eigen::MatrixXd::Zero(D, D), first;
    for (int part = 0; part < splits; ++part) {
        std::vector<double> cov(size_t(D) * D), mean(D);
        backend.patch_covariance(cov.data(), center ? mean.data() : nullptr, backend.act_at(x, size_t(part) * per * image),
                                 per, cfg_.image_side, cfg_.image_side, 3, k);
        Eigen::MatrixXd m(D, D);
        for (int i = 0; i < D; ++i)
            for (int j = 0; j < D; ++j) m(i, j) = cov[size_t(i) * D + j];
        if (center) {  // torch.cov: (sum (p - mean)(p - mean)^T) / (patches - 1)
            for (int i = 0; i < D; ++i)
                for (int j = 0; j < D; ++j) m(i, j) -= mean[i] * mean[j];
            m *= P / (P - 1);
        } else if (cfg_.arch == Arch::resnet9) {  // cifar10-fast-simple divides by (patches - 1)
            m *= P / (P - 1);
        }
        Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(m);
        if (es.info() != Eigen::Success) fail("whitening: eigen-decomposition of the patch covariance failed");
        Eigen::MatrixXd v = es.eigenvectors();
        if (part == 0) {
            first = v;
        } else {  // an eigenvector's sign is arbitrary: align with the first part's before averaging
            for (int c = 0; c < D; ++c)
                if (v.col(c).dot(first.col(c)) < 0) v.col(c) *= -1.0;
        }
        values += es.eigenvalues() / double(splits);
        vectors += v / double(splits);
    }
    const bool negatives = cfg_.arch == Arch::airbench;
    // Eigen sorts eigenvalues ascending; the recipe uses descending order.
    std::vector<float> w(size_t(negatives ? 2 : 1) * D * D);
    for (int f = 0; f < D; ++f) {
        const int col = D - 1 - f;
        const double scale = 1.0 / std::sqrt(values(col) + eps);
        for (int c = 0; c < 3; ++c)
            for (int r = 0; r < k; ++r)
                for (int s = 0; s < k; ++s) {
                    const double v = vectors(c * k * k + r * k + s, col) * scale;
                    const size_t o = (size_t(r) * k + s) * 3 + c;  // OHWI inside the filter
                    w[size_t(f) * D + o] = float(v);
                    if (negatives) w[size_t(f + D) * D + o] = float(-v);
                }
    }
    backend.upload(params.get() + tensor("whiten.weight").offset, w.data(), w.size() * sizeof(float));
}

// ---- workspace: forward and backward ------------------------------------------------------

Workspace::Workspace(Network& net, int batch, bool trains, int ranks)
    : net_(net), b_(net.backend), N_(batch), trains_(trains) {
    const NetConfig& c = net.config();
    if (ranks < 1 || (c.ghost_splits > 1 && c.ghost_splits % ranks != 0))
        fail("ghost BN over {} ranks: net.ghost_splits ({}) must be a multiple of the ranks (each rank "
             "normalises whole ghost batches of the global batch, as one process does)", ranks, c.ghost_splits);
    ghost_ = c.ghost_splits > 1 ? c.ghost_splits / ranks : 1;
    if (c.arch == Arch::resnet9) {
        init_resnet9();
        return;
    }
    if (c.arch == Arch::dawn) {
        init_dawn();
        return;
    }
    const int k = c.whiten_kernel, cw = c.whiten_width();
    int H = c.image_side - k + 1;
    ConvShape whiten_shape{N_, c.image_side, c.image_side, 3, cw, k, k, 0};
    whiten_shape.no_input_grad = whiten_shape.frozen_weights = true;  // (the images; frozen filters, a trained bias)
    whiten_ = make_conv(whiten_shape);
    const size_t n0 = size_t(N_) * H * H * cw;
    z0_ = DeviceBuffer<float>(b_, n0);
    a0_ = DeviceBuffer<float>(b_, n0);
    d_z0_ = grad_buffer(n0);
    d_a0_ = grad_buffer(n0);
    int cin = cw;
    for (int gi = 0; gi < 3; ++gi) {
        Group& G = grp_[gi];
        G.cin = cin;
        G.cout = c.widths[gi];
        G.H = H;
        G.Hp = H / 2;
        G.conv1 = make_conv({N_, H, H, cin, G.cout, 3, 3, 1});
        G.conv2 = make_conv({N_, G.Hp, G.Hp, G.cout, G.cout, 3, 3, 1});
        const size_t big = size_t(N_) * H * H * G.cout, small = size_t(N_) * G.Hp * G.Hp * G.cout;
        G.c1 = DeviceBuffer<float>(b_, big);
        G.d_big = grad_buffer(std::max(big, size_t(N_) * H * H * cin));
        for (auto* buf : {&G.p, &G.n1, &G.g1, &G.c2, &G.n2, &G.g2}) *buf = DeviceBuffer<float>(b_, small);
        for (auto* buf : {&G.d_p, &G.d_n, &G.d_g}) *buf = grad_buffer(small);
        G.arg = DeviceBuffer<uint8_t>(b_, small);
        for (auto* buf : {&G.mean1, &G.istd1, &G.mean2, &G.istd2}) *buf = DeviceBuffer<float>(b_, G.cout);
        if (c.group_convs == 3) {
            G.conv3 = make_conv({N_, G.Hp, G.Hp, G.cout, G.cout, 3, 3, 1});
            for (auto* buf : {&G.c3, &G.s3, &G.g3}) *buf = DeviceBuffer<float>(b_, small);
            G.d_res = grad_buffer(small);
            for (auto* buf : {&G.mean3, &G.istd3}) *buf = DeviceBuffer<float>(b_, G.cout);
        }
        cin = G.cout;
        H = G.Hp;
    }
    Hf_ = H / c.final_pool;
    // the head is linear over channels: the final pool must leave 1x1
    if (Hf_ != 1)
        fail("config: net.final_pool {} leaves {}x{} of the last group's {}x{} (the head needs 1x1: "
             "net.final_pool {})", c.final_pool, Hf_, Hf_, H, H, H);
    feat_ = DeviceBuffer<float>(b_, size_t(N_) * cin);
    d_feat_ = grad_buffer(size_t(N_) * cin);
    feat_arg_ = DeviceBuffer<uint8_t>(b_, size_t(N_) * cin);
    logits_ = DeviceBuffer<float>(b_, size_t(N_) * c.num_classes);
    dlogits_ = grad_buffer(size_t(N_) * c.num_classes);
    bn_sums_ = DeviceBuffer<float>(b_, 4 * size_t(*std::max_element(c.widths.begin(), c.widths.end())));
}

// Training-mode BN. With sync-BN hooks, the statistics are those of the whole group's batch:
// pass 1 sums x, pass 2 sums deviations from pass 1's mean (so a large mean does not cancel),
// each all-reduced over the group before use; every process normalises its own rows.
void Workspace::bn_train(float* y, float* mean, float* invstd, float* running_mean,
                         float* running_var, const float* x, const float* gamma, const float* beta,
                         int M, int C) {
    const NetConfig& c = net_.config();
    const int group = hooks_ ? hooks_->bn_group() : 1;
    if (group <= 1) {
        b_.bn_forward_train(y, mean, invstd, running_mean, running_var, x, gamma, beta, M, C,
                            c.bn_eps, c.bn_momentum);
        return;
    }
    const int64_t count = int64_t(M) * group;
    float* s1 = bn_sums_.get();
    float* s2 = s1 + 2 * C;
    const float scale = float(1.0 / double(count));
    b_.bn_stats(s1, x, nullptr, 0.f, M, C);
    hooks_->allreduce_bn(s1, 2 * C);
    b_.bn_stats(s2, x, s1, scale, M, C);
    hooks_->allreduce_bn(s2, 2 * C);
    b_.bn_apply(y, mean, invstd, running_mean, running_var, x, gamma, beta, s2, s1, scale, count,
                M, C, c.bn_eps, c.bn_momentum);
}

// BN backward. With sync-BN hooks, the two per-channel sums (of dy and of dy * xhat) are
// all-reduced between the reduction and dx; dgamma/dbeta stay this process's own sums (the
// gradient all-reduce adds them up like every other parameter gradient).
void Workspace::bn_back(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* mean, const float* invstd, const float* gamma, int M, int C) {
    const int group = hooks_ ? hooks_->bn_group() : 1;
    if (group <= 1) {
        b_.bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, M, C);
        return;
    }
    float* sums = bn_sums_.get();
    b_.bn_backward_reduce(sums, dgamma, dbeta, dy, x, mean, invstd, M, C);
    hooks_->allreduce_bn(sums, 2 * C);
    b_.bn_backward_apply(dx, dy, x, mean, invstd, gamma, sums, int64_t(M) * group, M, C);
}

void Workspace::bn_layer_forward(bool train, float* y, float* mean, float* invstd,
                                 float* running_mean, float* running_var, const float* x,
                                 const float* gamma, const float* beta, int M, int C) {
    if (train)
        bn_train(y, mean, invstd, running_mean, running_var, x, gamma, beta, M, C);
    else
        b_.bn_forward_eval(y, x, running_mean, running_var, gamma, beta, M, C, net_.config().bn_eps);
}

void Workspace::bn_layer_backward(float* dx, float* dgamma, float* dbeta, const float* dy,
                                  const float* x, const float* mean, const float* invstd,
                                  const float* gamma, int M, int C) {
    const bool scale = net_.config().bn_train_scale;
    bn_back(dx, scale ? dgamma : nullptr, dbeta, dy, x, mean, invstd, gamma, M, C);
    grad_ready(dbeta, size_t(C));
    if (scale) grad_ready(dgamma, size_t(C));
}

void Workspace::bn_act_layer_forward(bool train, float* z, float* y, float* mean, float* invstd,
                                     float* running_mean, float* running_var, const float* x,
                                     const float* gamma, const float* beta, int M, int C) {
    const NetConfig& c = net_.config();
    if (!bn_fused()) {
        bn_layer_forward(train, y, mean, invstd, running_mean, running_var, x, gamma, beta, M, C);
        act_forward(z, y, size_t(M) * C);
    } else if (train) {
        b_.bn_act_forward_train(z, mean, invstd, running_mean, running_var, x, gamma, beta, M, C,
                                c.bn_eps, c.bn_momentum, c.act, c.celu_alpha);
    } else {
        b_.bn_act_forward_eval(z, x, running_mean, running_var, gamma, beta, M, C, c.bn_eps, c.act,
                               c.celu_alpha);
    }
}

void Workspace::bn_act_layer_backward(float* dx, float* dgamma, float* dbeta, const float* dz,
                                      float* dy_scratch, const float* x, const float* y,
                                      const float* mean, const float* invstd, const float* gamma,
                                      const float* beta, int M, int C) {
    const NetConfig& c = net_.config();
    if (!bn_fused()) {
        act_backward(dy_scratch, dz, y, size_t(M) * C);
        bn_layer_backward(dx, dgamma, dbeta, dy_scratch, x, mean, invstd, gamma, M, C);
        return;
    }
    const bool scale = c.bn_train_scale;
    b_.bn_act_backward(dx, scale ? dgamma : nullptr, dbeta, dz, x, mean, invstd, gamma, beta, M, C,
                       c.act, c.celu_alpha);
    grad_ready(dbeta, size_t(C));
    if (scale) grad_ready(dgamma, size_t(C));
}

void Workspace::act_forward(float* y, const float* x, size_t n) {
    switch (net_.config().act) {
        case Activation::gelu: b_.gelu_forward(y, x, n); break;
        case Activation::silu: b_.silu_forward(y, x, n); break;
        case Activation::relu: b_.relu_forward(y, x, n); break;
        case Activation::celu: b_.celu_forward(y, x, n, net_.config().celu_alpha); break;
    }
}

void Workspace::act_backward(float* dx, const float* dy, const float* x, size_t n) {
    switch (net_.config().act) {
        case Activation::gelu: b_.gelu_backward(dx, dy, x, n); break;
        case Activation::silu: b_.silu_backward(dx, dy, x, n); break;
        case Activation::relu: b_.relu_backward(dx, dy, x, n); break;
        case Activation::celu: b_.celu_backward(dx, dy, x, n, net_.config().celu_alpha); break;
    }
}

const float* Workspace::forward(const float* x, bool train) {
    const NetConfig& c = net_.config();
    if (c.arch == Arch::resnet9) return forward_resnet9(x, train);
    if (c.arch == Arch::dawn) return forward_dawn(x, train);
    Params& P = net_.p;
    x_ = x;
    whiten_->forward(z0_.get(), x, P.whiten_w, P.whiten_b);
    b_.gelu_forward(a0_.get(), z0_.get(), z0_.size());
    const float* in = a0_.get();
    for (int gi = 0; gi < 3; ++gi) {
        Group& G = grp_[gi];
        const int M = N_ * G.Hp * G.Hp;
        G.conv1->forward(G.c1.get(), in, P.conv_w[gi][0], nullptr);
        if (train && bn_fused()) {  // pool -> BN -> act as one op (fused on CUDA)
            b_.pool_bn_act_forward_train(G.g1.get(), G.p.get(), G.arg.get(), G.mean1.get(),
                                         G.istd1.get(), P.bn_mean[gi][0], P.bn_var[gi][0],
                                         G.c1.get(), P.bn_w[gi][0], P.bn_b[gi][0], N_, G.H, G.H,
                                         G.cout, 2, c.bn_eps, c.bn_momentum, c.act, c.celu_alpha);
        } else {
            b_.maxpool_forward(G.p.get(), G.arg.get(), G.c1.get(), N_, G.H, G.H, G.cout, 2);
            bn_act_layer_forward(train, G.g1.get(), G.n1.get(), G.mean1.get(), G.istd1.get(),
                                 P.bn_mean[gi][0], P.bn_var[gi][0], G.p.get(), P.bn_w[gi][0],
                                 P.bn_b[gi][0], M, G.cout);
        }
        G.conv2->forward(G.c2.get(), G.g1.get(), P.conv_w[gi][1], nullptr);
        bn_act_layer_forward(train, G.g2.get(), G.n2.get(), G.mean2.get(), G.istd2.get(),
                             P.bn_mean[gi][1], P.bn_var[gi][1], G.c2.get(), P.bn_w[gi][1],
                             P.bn_b[gi][1], M, G.cout);
        if (G.conv3) {  // airbench96: conv3 -> BN, + the first activation, -> act
            G.conv3->forward(G.c3.get(), G.g2.get(), P.conv_w[gi][2], nullptr);
            bn_layer_forward(train, G.s3.get(), G.mean3.get(), G.istd3.get(), P.bn_mean[gi][2],
                             P.bn_var[gi][2], G.c3.get(), P.bn_w[gi][2], P.bn_b[gi][2], M, G.cout);
            b_.residual_add(G.s3.get(), G.g1.get(), size_t(M) * G.cout);
            act_forward(G.g3.get(), G.s3.get(), size_t(M) * G.cout);
        }
        in = G.out();
    }
    const Group& L = grp_[2];
    b_.maxpool_forward(feat_.get(), feat_arg_.get(), in, N_, L.Hp, L.Hp, L.cout, c.final_pool);
    b_.linear_forward(logits_.get(), feat_.get(), P.head_w, N_, L.cout, c.num_classes,
                      c.scaling_factor);
    return logits_.get();
}

void Workspace::backward(const float* dlogits, bool with_whiten_bias) {
    const NetConfig& c = net_.config();
    SR_CHECK(trains_);  // a forward-only workspace has no gradient buffers
    if (c.arch == Arch::resnet9) return backward_resnet9(dlogits);
    if (c.arch == Arch::dawn) return backward_dawn(dlogits);
    Params& P = net_.p;
    Params& Gd = net_.g;
    const Group& L = grp_[2];
    b_.linear_backward(d_feat_.get(), Gd.head_w, dlogits, feat_.get(), P.head_w, N_, L.cout,
                       c.num_classes, c.scaling_factor);
    grad_ready(Gd.head_w, size_t(c.num_classes) * L.cout);
    // gradient w.r.t. the last group's output, written into that group's d_g scratch
    b_.maxpool_backward(grp_[2].d_g.get(), d_feat_.get(), feat_arg_.get(), N_, L.Hp, L.Hp,
                        L.cout, c.final_pool);
    for (int gi = 2; gi >= 0; --gi) {
        Group& G = grp_[gi];
        const int M = N_ * G.Hp * G.Hp;
        const size_t m = size_t(M) * G.cout;
        if (G.conv3) {  // d_g holds dL/d(g3): back through act, BN3, conv3; d_res keeps d(s3)
            act_backward(G.d_res.get(), G.d_g.get(), G.s3.get(), m);
            bn_layer_backward(G.d_p.get(), Gd.bn_w[gi][2], Gd.bn_b[gi][2], G.d_res.get(), G.c3.get(),
                              G.mean3.get(), G.istd3.get(), P.bn_w[gi][2], M, G.cout);
            G.conv3->backward(G.d_g.get(), Gd.conv_w[gi][2], nullptr, G.d_p.get(), G.g2.get(),
                              P.conv_w[gi][2],  // and d(g2)
                              [&] { grad_ready(Gd.conv_w[gi][2], size_t(G.cout) * 9 * G.cout); });
        }
        // d_g holds dL/d(g2)
        bn_act_layer_backward(G.d_p.get(), Gd.bn_w[gi][1], Gd.bn_b[gi][1], G.d_g.get(), G.d_n.get(),
                              G.c2.get(), G.n2.get(), G.mean2.get(), G.istd2.get(), P.bn_w[gi][1],
                              P.bn_b[gi][1], M, G.cout);
        G.conv2->backward(G.d_g.get(), Gd.conv_w[gi][1], nullptr, G.d_p.get(), G.g1.get(),
                          P.conv_w[gi][1],  // and d(g1)
                          [&] { grad_ready(Gd.conv_w[gi][1], size_t(G.cout) * 9 * G.cout); });
        if (G.conv3) b_.residual_add(G.d_g.get(), G.d_res.get(), m);          // + the residual's
        if (bn_fused()) {  // act -> BN -> pool backward as one op, into d_big (d_p: scratch)
            const bool scale = c.bn_train_scale;
            b_.bn_act_pool_backward(G.d_big.get(), scale ? Gd.bn_w[gi][0] : nullptr,
                                    Gd.bn_b[gi][0], G.d_p.get(), G.d_g.get(), G.p.get(),
                                    G.arg.get(), G.mean1.get(), G.istd1.get(), P.bn_w[gi][0],
                                    P.bn_b[gi][0], N_, G.H, G.H, G.cout, 2, c.act, c.celu_alpha);
            grad_ready(Gd.bn_b[gi][0], size_t(G.cout));
            if (scale) grad_ready(Gd.bn_w[gi][0], size_t(G.cout));
        } else {
            bn_act_layer_backward(G.d_p.get(), Gd.bn_w[gi][0], Gd.bn_b[gi][0], G.d_g.get(),
                                  G.d_n.get(), G.p.get(), G.n1.get(), G.mean1.get(), G.istd1.get(),
                                  P.bn_w[gi][0], P.bn_b[gi][0], M, G.cout);
            b_.maxpool_backward(G.d_big.get(), G.d_p.get(), G.arg.get(), N_, G.H, G.H, G.cout, 2);
        }
        const float* group_in = gi > 0 ? grp_[gi - 1].out() : a0_.get();
        // and the group input's gradient, where one is wanted
        float* d_in = gi > 0 ? grp_[gi - 1].d_g.get() : with_whiten_bias ? d_a0_.get() : nullptr;
        G.conv1->backward(d_in, Gd.conv_w[gi][0], nullptr, G.d_big.get(), group_in, P.conv_w[gi][0],
                          [&] { grad_ready(Gd.conv_w[gi][0], size_t(G.cout) * 9 * G.cin); });
        if (gi == 0 && with_whiten_bias) {
            b_.gelu_backward(d_z0_.get(), d_a0_.get(), z0_.get(), d_z0_.size());
            whiten_->backward_weights(nullptr, Gd.whiten_b, d_z0_.get(), x_);  // (weights frozen)
            grad_ready(Gd.whiten_b, size_t(c.whiten_width()));
        }
    }
}

}  // namespace sr
