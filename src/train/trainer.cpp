// trainer.cpp: see trainer.h. The order of operations follows airbench94.py's main().
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>

#include <fmt/format.h>
#include <unistd.h>

#include "core/error.h"
#include "core/notes.h"
#include "core/version.h"
#include "dist/sweep.h"
#include "optim/schedule.h"

namespace sr {
namespace {

// Checked before anything is allocated, so a bad flag fails at once.
int checked_train_count(const Recipe& r, const Cifar10& data, const TrainOptions& o) {
    if (o.subset < 0) fail("--subset must be >= 0 (got {})", o.subset);
    if (o.test_subset < 0) fail("--test-subset must be >= 0 (got {})", o.test_subset);
    const int n = train_images(o.subset, data.train.n);
    if (r.batch_size > n)
        fail("batch size {} is larger than the training set ({} images)", r.batch_size, n);
    if (data.test.n <= 0) fail("the test set is empty");
    if (total_steps(n, r.batch_size, r.epochs, r.drop_last) < 1)  // (--epochs 1e-300)
        fail("{} epochs of {} images at batch size {} make no training step", r.epochs, n, r.batch_size);
    return n;
}

// The batch of one rank: its slice of every global batch (the whole batch in one process).
int local_batch(const Recipe& r, const TrainOptions& o) {
    const int ranks = o.comm ? o.comm->world() : 1;
    if (r.batch_size % ranks != 0)
        fail("--distributed: the batch size {} does not split evenly over {} ranks", r.batch_size,
             ranks);
    return r.batch_size / ranks;
}

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t) {
    return std::chrono::duration<double>(clock_type::now() - t).count();
}

void progress_bar(int epoch, int done, int total, double loss, double secs) {
    const int width = 30, fill = total ? done * width / total : width;
    std::string bar(size_t(fill), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r  epoch %2d [%s] %4d/%-4d loss %.4f  %6.1f s ", epoch, bar.c_str(), done,
                 total, loss, secs);
    std::fflush(stderr);
}

}  // namespace

void check_resume_images(const Checkpoint& resume, int n_train, int available) {
    if (available >= 0 && resume.state.n_train > available)  // (no --subset can help)
        fail("--resume: the checkpoint was trained on {} images, this data has {}: give the --data "
             "it was trained with", resume.state.n_train, available);
    if (resume.state.n_train != n_train)
        fail("--resume: the checkpoint was trained on {} images, this run has {} (use the same "
             "--subset)", resume.state.n_train, n_train);
}

void check_resume_data(const Checkpoint& resume, const std::string& fingerprint, const std::string& source) {
    // (checkpoints written before the fingerprint was kept have none: not checked)
    const RunState& rs = resume.state;
    if (!rs.data_fingerprint.empty() && rs.data_fingerprint != fingerprint)
        fail("--resume: the checkpoint was trained on other images than this run's (it read {}; "
             "this run reads {}): give the --data or --synthetic it was trained with",
             rs.data_source.empty() ? std::string("other data") : rs.data_source, source);
}

Trainer::Trainer(Backend& b, const Recipe& r, const Cifar10& data, const TrainOptions& o)
    : b_(b),
      r_(r),
      o_(o),
      n_train_(checked_train_count(r, data, o)),
      n_test_(o.test_subset > 0 ? std::min(o.test_subset, data.test.n) : data.test.n),
      batch_(r.batch_size),
      eval_batch_(o.eval_batch > 0 ? std::min(o.eval_batch, n_test_) : eval_batch_size(r, n_test_, r.batch_size)),
      net_(b, r.net),
      opt_(net_, r),
      // (a training workspace even for evaluate_only: where it evaluates, its convolutions must
      // be the training run's, which a forward-only one may choose differently on the CPU)
      ws_train_(std::make_unique<Workspace>(net_, local_batch(r, o), true, o.comm ? o.comm->world() : 1)) {
    const int rest = r.drop_last ? 0 : n_train_ % batch_;  // the epoch's last, smaller batch
    if (rest > 0 && o.comm && o.comm->world() > 1)  // (before any collective call)
        fail("--distributed: opt.drop_last false is not supported (the epoch's last batch of {} "
             "images would need its own split over {} ranks)", rest, o.comm->world());
    if (o.comm) {
        dp_ = std::make_unique<DataParallel>(net_, *o.comm, DataParallel::Options{o.sync_bn});
        ws_train_->set_hooks(dp_.get());
    }
    if (rest > 0 && !o.evaluate_only) ws_tail_ = std::make_unique<Workspace>(net_, rest);
    if (eval_batch_ == ws_train_->batch()) {
        ws_eval_ = ws_train_.get();
    } else {
        ws_eval_own_ = std::make_unique<Workspace>(net_, eval_batch_, false);  // forward only
        ws_eval_ = ws_eval_own_.get();
    }
    const int side = r.net.image_side, pad = r.translate;
    // data loading (untimed): raw uint8 images and labels onto the device; the test set first,
    // and all an evaluation needs
    test_labels_.assign(data.test.labels.begin(), data.test.labels.begin() + n_test_);
    test_u8_ = DeviceBuffer<uint8_t>(b, size_t(n_test_) * kCifarPixels);
    b.upload(test_u8_.get(), data.test.images.data(), test_u8_.size());
    test_pad_ = DeviceBuffer<float>(b, size_t(n_test_) * (side + 2) * (side + 2) * 3);
    eval_x_ = DeviceBuffer<float>(b, size_t(eval_batch_) * side * side * 3);
    logits_acc_ = DeviceBuffer<float>(b, size_t(eval_batch_) * r.net.num_classes);
    zeros_ = DeviceBuffer<float>(b, size_t(eval_batch_) * r.net.num_classes);
    if (r.tta_select > 0) sel_idx_ = DeviceBuffer<int32_t>(b, size_t(std::max(n_test_, eval_batch_)));
    host_logits_.resize(size_t(n_test_) * r.net.num_classes);
    if (o.evaluate_only) return;  // (no training set on the device, no training buffers)
    train_labels_.assign(data.train.labels.begin(), data.train.labels.begin() + n_train_);
    if (!o.checkpoint_path.empty()) {  // (kept in checkpoints; a resumed run's data must match)
        data_fingerprint_ = !o.data_fingerprint.empty() ? o.data_fingerprint
                                                        : data_fingerprint(data.train.images, data.train.labels, n_train_);
        data_source_ = data.source;
    }
    train_u8_ = DeviceBuffer<uint8_t>(b, size_t(n_train_) * kCifarPixels);
    b.upload(train_u8_.get(), data.train.images.data(), train_u8_.size());
    train_pad_ = DeviceBuffer<float>(b, size_t(n_train_) * (side + 2 * pad) * (side + 2 * pad) * 3);
    batch_x_ = DeviceBuffer<float>(b, size_t(std::max(batch_, whitening_images())) * side * side * 3);
    stats_ = DeviceBuffer<float>(b, 2);
    ep_idx_ = DeviceBuffer<int32_t>(b, n_train_);
    ep_labels_ = DeviceBuffer<int32_t>(b, n_train_);
    ep_shifts_ = DeviceBuffer<int8_t>(b, size_t(2) * n_train_);
    ep_flips_ = DeviceBuffer<uint8_t>(b, n_train_);
    if (r.cutout > 0) ep_cutout_ = DeviceBuffer<uint8_t>(b, size_t(2) * n_train_);
    if (r.cutmix > 0) {
        ep_cutmix_ = DeviceBuffer<uint8_t>(b, size_t(2) * n_train_);
        ep_partner_ = DeviceBuffer<int32_t>(b, n_train_);
        ep_labels2_ = DeviceBuffer<int32_t>(b, n_train_);
        ep_partner_shifts_ = DeviceBuffer<int8_t>(b, size_t(2) * n_train_);
        ep_partner_flips_ = DeviceBuffer<uint8_t>(b, n_train_);
        cutmix_src_ = DeviceBuffer<float>(b, size_t(ws_train_->batch()) * side * side * 3);
    }
    if (r.brightness > 0 || r.contrast > 0) ep_jitter_ = DeviceBuffer<float>(b, size_t(2) * n_train_);
    if (r.ema_every > 0) hold_ = DeviceBuffer<float>(b, net_.size());
    if (!o.log_path.empty() && (!o.comm || o.comm->root())) log_ = std::make_unique<JsonlLog>(o.log_path);
}

double Trainer::evaluate(int level) {
    const int side = r_.net.image_side, O = r_.net.num_classes, Be = eval_batch_;
    b_.normalize_pad(test_pad_.get(), test_u8_.get(), n_test_, side, side, r_.mean.data(),
                     r_.std.data(), 1);
    using View = TtaView;
    const std::vector<View> plain = tta_views(r_, 0), views = tta_views(r_, level);
    // Logits of n images (idx: device indices, or nullptr for images 0..n-1) averaged over vs,
    // into host (n, O). Batches are always full: the last one overlaps the one before it, and a
    // list shorter than a batch was padded by the caller.
    auto infer = [&](const std::vector<View>& vs, const int32_t* idx, int n, float* host) {
        for (int c = 0; c < n; c += Be) {
            const int first = std::min(c, n - Be);
            b_.copy(logits_acc_.get(), zeros_.get(), size_t(Be) * O * sizeof(float));
            for (const View& v : vs) {
                b_.gather_crops(eval_x_.get(), test_pad_.get(), side, side, 1, Be,
                                idx ? idx + first : nullptr, idx ? 0 : first, nullptr, v.sy, v.sx,
                                nullptr, v.flip);
                const float* logits = ws_eval_->forward(eval_x_.get(), false);
                b_.axpy(logits_acc_.get(), logits, v.w, size_t(Be) * O);
            }
            b_.download(host + size_t(first) * O, logits_acc_.get(), size_t(Be) * O * sizeof(float));
        }
    };
    const int k = tta_selected(r_, n_test_);
    if (level == 0 || k >= n_test_) {
        infer(views, nullptr, n_test_, host_logits_.data());
    } else {
        // selective TTA: plain logits for all, then the k least confident (max softmax) again
        // with the TTA views, their logits replacing the plain ones
        infer(plain, nullptr, n_test_, host_logits_.data());
        std::vector<float> conf(n_test_);
        for (int i = 0; i < n_test_; ++i) {
            const float* z = host_logits_.data() + size_t(i) * O;
            const float mx = *std::max_element(z, z + O);
            double sum = 0;
            for (int o = 0; o < O; ++o) sum += std::exp(double(z[o] - mx));
            conf[i] = float(1.0 / sum);
        }
        std::vector<int32_t> sel(n_test_);
        std::iota(sel.begin(), sel.end(), 0);
        if (k > 0) {
            std::nth_element(sel.begin(), sel.begin() + (k - 1), sel.end(), [&](int32_t a, int32_t b) {
                return conf[a] < conf[b] || (conf[a] == conf[b] && a < b);
            });
            sel.resize(size_t(std::max(k, Be)), sel[0]);  // padded to one full batch
            const int n = int(sel.size());
            b_.upload(sel_idx_.get(), sel.data(), sel.size() * sizeof(int32_t));
            std::vector<float> tta(size_t(n) * O);
            infer(views, sel_idx_.get(), n, tta.data());
            for (int j = 0; j < k; ++j)
                std::copy_n(tta.data() + size_t(j) * O, O, host_logits_.data() + size_t(sel[j]) * O);
        }
    }
    int correct = 0;
    for (int i = 0; i < n_test_; ++i) {
        const float* z = host_logits_.data() + size_t(i) * O;
        correct += int(std::max_element(z, z + O) - z) == test_labels_[i];
    }
    return double(correct) / n_test_;
}

nlohmann::json test_acc_json(double test_acc) {
    return test_acc >= 0 ? nlohmann::json(test_acc) : nlohmann::json(nullptr);
}

nlohmann::json epoch_json(const EpochStats& e) {
    return {{"epoch", e.epoch}, {"steps", e.steps}, {"train_loss", e.train_loss},
            {"train_acc", e.train_acc}, {"test_acc", test_acc_json(e.test_acc)}, {"epoch_seconds", e.epoch_seconds},
            {"total_seconds", e.total_seconds}, {"eval_seconds", e.eval_seconds},
            {"test_images", e.test_images}};
}

EpochStats epoch_from_json(const nlohmann::json& j) {
    EpochStats e;
    e.epoch = j.at("epoch");
    e.steps = j.at("steps");
    e.train_loss = j.at("train_loss");
    e.train_acc = j.at("train_acc");
    // null: not evaluated (checkpoints written before session 39 hold -1 for it)
    e.test_acc = j.at("test_acc").is_null() ? -1.0 : j.at("test_acc").get<double>();
    e.epoch_seconds = j.at("epoch_seconds");
    e.total_seconds = j.at("total_seconds");
    e.eval_seconds = j.at("eval_seconds");
    e.test_images = j.value("test_images", 0);  // (not in checkpoints written before it was kept)
    return e;
}

RunResult Trainer::run(uint64_t seed, bool warmup, const Checkpoint* resume) {
    SR_CHECK(!o_.evaluate_only);  // (made without a training set or training buffers)
    if (resume) {
        seed = resume->state.seed;
        check_resume_images(*resume, n_train_);
        if (!data_fingerprint_.empty()) check_resume_data(*resume, data_fingerprint_, data_source_);
    }
    if (dp_ && dp_->comm().world() > 1) {
        // Each rank reads --resume from its own file system and only rank 0 writes checkpoints,
        // so a rank that read another (stale) file would run other steps than the rest and their
        // collectives would not meet. Rank 0's starting point, compared on every rank.
        // (the recipe too: a resumed rank's comes from its checkpoint)
        // The checkpoint's tensors too: two files of one seed and step (from another attempt)
        // hold other weights and momentum; rank 0's weights are broadcast below, but each rank's
        // momentum would stay its own file's and the ranks would drift apart.
        const uint64_t tensors = resume ? tensors_hash(resume->file) : 0;
        const uint64_t mine[6] = {resume ? 1u : 0u, seed, resume ? uint64_t(resume->state.step) : 0,
                                  resume ? uint64_t(resume->state.steps_in_epoch) : 0,
                                  fnv1a64(recipe_to_json(r_).dump()), tensors};
        uint64_t root_start[6];
        std::copy(mine, mine + 6, root_start);
        dp_->comm().broadcast(root_start, sizeof root_start, 0);
        const bool differs = !std::equal(mine, mine + 6, root_start);
        const int n = count_ranks(dp_->comm(), differs);
        if (n > 0)
            fail("--distributed: {} of {} ranks would start at another step, seed, recipe or checkpoint than "
                 "rank 0 (this rank {}: {}); with --resume every rank must read the checkpoint rank 0 wrote "
                 "(put it on a file system all hosts share)",
                 n, dp_->comm().world(), dp_->comm().rank(),
                 resume ? fmt::format("step {} of seed {}", resume->state.step, seed)
                        : fmt::format("a fresh run of seed {}", seed));
    }
    const int side = r_.net.image_side, pad = r_.translate, B = batch_, O = r_.net.num_classes;
    // data parallel: this rank trains on Bl images of every global batch of B, from `first` on
    const int Bfull = ws_train_->batch(), first = dp_ ? dp_->comm().rank() * Bfull : 0;
    const bool root = !dp_ || dp_->comm().root();  // only rank 0 prints, logs and evaluates
    const bool print = !warmup && !o_.quiet && root;
    const bool bar = print && o_.progress && isatty(2);
    Rng rng(seed);
    RunResult res;
    res.seed = seed;

    if (resume) {  // weights, optimizer and lookahead state as saved
        load_network(*resume, net_, true);
    } else {
        // fresh weights, zero momentum, lookahead state = the initial weights (taken before the
        // whitening init, as airbench94 does)
        net_.init(rng);
        std::vector<float> zero(net_.size(), 0.f);
        b_.upload(net_.momentum.get(), zero.data(), zero.size() * sizeof(float));
        opt_.reset_ema();
    }

    const int spe = steps_per_epoch(n_train_, B, r_.drop_last);
    const int total = total_steps(n_train_, B, r_.epochs, r_.drop_last);
    // the builds that ran this run's steps: a resumed checkpoint's (kBuildsUnrecorded where it
    // predates the record), then this one where it runs steps and is another build
    if (resume) res.builds = resume->state.builds.empty() ? std::vector<std::string>{kBuildsUnrecorded}
                                                           : resume->state.builds;
    const bool other_build = resume && resume->state.step < total && res.builds.back() != git_revision();
    if (!resume || other_build) res.builds.push_back(git_revision());
    const int n_epochs = int(std::ceil(r_.epochs - 1e-9));
    if (resume) {  // a state its own recipe cannot have: a damaged or edited file
        const RunState& rs = resume->state;
        const bool fits = rs.step <= total && rs.epoch <= n_epochs && rs.steps_in_epoch <= spe &&
                          (rs.step == total || rs.step == rs.epoch * spe + rs.steps_in_epoch) &&
                          std::isfinite(rs.timed) && rs.timed >= 0 && std::isfinite(rs.epoch_timed) &&
                          rs.epoch_timed >= 0;
        if (!fits)
            fail("--resume: the checkpoint's run state does not fit its recipe (step {} of {}, epoch {} of "
                 "{} with {} of its {} steps done, {} s timed): a damaged or edited file",
                 rs.step, total, rs.epoch, n_epochs, rs.steps_in_epoch, spe, rs.timed);
        // (a finished run saves none: it draws nothing more)
        if (rs.step < total && std::all_of(rs.rng_epoch_start.begin(), rs.rng_epoch_start.end(),
                                           [](uint64_t w) { return w == 0; }))
            fail("--resume: the checkpoint's state.rng is all zeros, which the generator never reaches (it "
                 "would draw only zeros from there): a damaged or edited file");
    }
    const int whiten_steps = whiten_bias_steps(spe, r_.whiten_bias_epochs);
    const bool jitter = r_.brightness > 0 || r_.contrast > 0;
    res.steps = total;

    // the timed region, on the device's clock (CUDA events on a GPU)
    auto timer = b_.make_timer();
    timer->start();
    double timed = 0;
    // first touch of the training data on the device: normalise + reflect-pad once
    b_.normalize_pad(train_pad_.get(), train_u8_.get(), n_train_, side, side, r_.mean.data(),
                     r_.std.data(), pad);
    const int nw = whitening_images();
    if (!resume) {  // (a resumed run has its whitening filters in the checkpoint)
        if (nw > 0) {
            b_.gather_crops(batch_x_.get(), train_pad_.get(), side, side, pad, nw, nullptr, 0, nullptr,
                            0, 0, nullptr, 0);
            net_.init_whitening(batch_x_.get(), nw, float(r_.whiten_eps), r_.whiten_center,
                                std::min(r_.whiten_splits, nw));
        }
        if (r_.ema_every > 0) opt_.reset_ema();  // the EMA starts from the whitened network
    }
    if (dp_) dp_->broadcast_params();  // every rank starts from rank 0's weights, bit for bit
    timed += timer->stop_seconds();
    // from here to the last step the ranks run in step: a collective that waits longer than
    // SPEEDRUN_MPI_TIMEOUT means a rank stopped or hung, and ends the job (communicator.h).
    // What rank 0 does alone (an epoch's evaluation and log, a periodic checkpoint) the others
    // wait for in a barrier without the limit, not in the next gradient sum.
    std::optional<LimitedWaits> limited;
    if (dp_ && dp_->comm().world() > 1) limited.emplace(&dp_->comm());
    auto wait_for_root = [&] {
        if (!limited) return;
        limited.reset();
        dp_->comm().barrier();
        limited.emplace(&dp_->comm());
    };

    // alternating flip: a random half at the start, then every image flips each epoch
    std::vector<uint8_t> base_flip(size_t(n_train_), 0);
    if (resume) {
        base_flip = resume->state.base_flip;
        timed = resume->state.timed;
        for (const auto& e : resume->state.epochs) res.epochs.push_back(epoch_from_json(e));
    } else if (r_.flip && r_.flip_mode == "alternating") {
        for (auto& f : base_flip) f = rng.uniform() < 0.5 ? 1 : 0;
    }
    // per-epoch evaluation sees the EMA weights when the recipe keeps one (untimed swap)
    auto evaluate_current = [&](int level) {
        if (r_.ema_every <= 0) return evaluate(level);
        const size_t bytes = net_.size() * sizeof(float);
        b_.copy(hold_.get(), net_.params.get(), bytes);
        b_.copy(net_.params.get(), net_.ema.get(), bytes);
        const double acc = evaluate(level);
        b_.copy(net_.params.get(), hold_.get(), bytes);
        return acc;
    };
    std::vector<int32_t> perm(n_train_), idx(n_train_), lab(n_train_);
    std::vector<int8_t> shifts(size_t(2) * n_train_);
    std::vector<uint8_t> flips(n_train_);
    std::vector<uint8_t> cut(r_.cutout > 0 ? size_t(2) * n_train_ : 0);
    std::vector<uint8_t> mix_pos(r_.cutmix > 0 ? size_t(2) * n_train_ : 0);
    const size_t n_mix = r_.cutmix > 0 ? size_t(n_train_) : 0;
    std::vector<int32_t> partner_at(n_mix), partner(n_mix), lab2(n_mix);
    std::vector<int8_t> partner_shifts(2 * n_mix);
    std::vector<uint8_t> partner_flips(n_mix);
    const float mix = float(r_.cutmix * r_.cutmix) / float(side * side);  // the label share by area
    // lookahead starting late (hlb-CIFAR10): the first event step of epoch start_epoch or later
    // only snapshots the weights; 0 = the lookahead state is the initial weights (airbench)
    const int la_every = r_.lookahead_every;
    const int la_first = lookahead_first_step(r_.lookahead_start_epoch, spe, la_every);
    std::vector<float> jit_shift(jitter ? n_train_ : 0), jit_gain(jitter ? n_train_ : 0);

    auto print_row = [](const EpochStats& e) {
        fmt::print("{:>5} | {:>5} | {:>10.4f} | {:>9.4f} | {:>8} | {:>8.2f} | {:>8.2f}\n", e.epoch,
                   e.steps, e.train_loss, e.train_acc,
                   e.test_acc >= 0 ? fmt::format("{:.4f}", e.test_acc) : std::string("-"),
                   e.epoch_seconds, e.total_seconds);
    };
    if (print) {
        if (resume) {  // where the run stands, and the table so far as the checkpoint saved it
            const RunState& st = resume->state;
            fmt::print("resumed       at step {} of {} (epoch {}, {} of its steps done), {:.2f} s "
                       "timed before{}\n",
                       st.step, total, st.epoch, st.steps_in_epoch, st.timed,
                       res.epochs.empty() ? "" : "; the epochs before it as saved:");
            if (other_build) {
                const std::string& before = res.builds[res.builds.size() - 2];
                note("the steps so far ran on {}, this is build {}; where the two differ in arithmetic "
                     "or random draws, the run will not repeat an uninterrupted run of either",
                           before == kBuildsUnrecorded
                               ? std::string("a build the checkpoint does not name (it predates that record)")
                               : "build " + before,
                           res.builds.back());
            }
        }
        fmt::print("{:>5} | {:>5} | {:>10} | {:>9} | {:>8} | {:>8} | {:>8}\n", "epoch", "steps",
                   "train_loss", "train_acc", "test_acc", "epoch_s", "total_s");
        fmt::print("{:-<5}-+-{:-<5}-+-{:-<10}-+-{:-<9}-+-{:-<8}-+-{:-<8}-+-{:-<8}\n", "", "", "",
                   "", "", "", "");
        for (const EpochStats& e : res.epochs) print_row(e);  // (a resumed run's saved epochs)
        int other = 0;  // saved epochs evaluated on another number of test images
        std::vector<int> images;  // (each count once, in the order met: resumed more than once)
        for (const EpochStats& e : res.epochs)
            if (e.test_images > 0 && e.test_images != n_test_) {
                ++other;
                if (std::find(images.begin(), images.end(), e.test_images) == images.end())
                    images.push_back(e.test_images);
            }
        if (other > 0)
            fmt::print("(the {} saved epoch{} above measured test_acc on {} test images, the run's "
                       "--test-subset then; this one evaluates on {})\n",
                       other, other == 1 ? "" : "s", fmt::join(images, " then "), n_test_);
        std::fflush(stdout);
    }

    // Stops the run at a non-finite loss `loss` (the epoch's sum so far), seen at step step_now
    // (on a GPU, read at the epoch's end or at a save: somewhere in the steps before it). The
    // last checkpoint this process saved (every rank keeps the step: only rank 0 writes) had a
    // finite loss up to its step; its weights are finite, but they may be what the next step's
    // forward turned non-finite.
    int saved_step = -1;  // of the checkpoint this process saved last
    auto diverged = [&](float loss, int step_now, int epoch) {
        if (!warmup && log_)  // (no "run" line follows)
            log_->write({{"event", "stopped"}, {"seed", seed}, {"steps", step_now}, {"total_steps", total},
                         {"reason", "non-finite loss"},
                         {"checkpoint", o_.checkpoint_path.empty() || saved_step < 0
                                            ? nlohmann::json(nullptr)
                                            : nlohmann::json(o_.checkpoint_path)},
                         {"checkpoint_step", saved_step >= 0 ? nlohmann::json(saved_step) : nlohmann::json(nullptr)}});
        throw Diverged(fmt::format("the training loss became {} {} step {} (epoch {}); stopped{}", loss,
             b_.device() == Device::cpu ? "at" : "by", step_now, epoch,
             o_.checkpoint_path.empty() ? std::string()
             : saved_step >= 0
                 ? fmt::format("; the last checkpoint, with finite losses up to its step, is {} (step {})",
                               o_.checkpoint_path, saved_step)
                 : fmt::format("; this process saved no checkpoint before it ({} was not written "
                               "by it)", o_.checkpoint_path)));
    };

    // Saves where the run stands (mid-epoch is fine: the epoch's draws are remade from the RNG
    // state of its start, and the steps already done are skipped). Not from a diverged state.
    auto save = [&](int step_now, int epoch, int done_in_epoch, const std::array<uint64_t, 4>& rng0,
                    double timed_now, double epoch_timed, bool finished = false) {
        if (o_.checkpoint_path.empty() || warmup) return;
        // Mid-epoch each rank holds the sums of its own slices (they are added up at the epoch's
        // end): the checkpoint keeps the global batches' (a collective: every rank saves at the
        // same steps), and on resume rank 0 alone starts from them.
        float stats[2];
        b_.download(stats, stats_.get(), sizeof stats);
        if (dp_ && dp_->comm().world() > 1 && done_in_epoch > 0) dp_->comm().allreduce_sum(stats, 2);
        if (!std::isfinite(stats[0])) diverged(stats[0], step_now, epoch);
        saved_step = step_now;
        if (!root) return;
        RunState st;
        st.seed = seed;
        st.step = step_now;
        st.epoch = epoch;
        st.steps_in_epoch = done_in_epoch;
        st.rng_epoch_start = rng0;
        st.base_flip = base_flip;
        std::copy(stats, stats + 2, st.epoch_stats);
        st.timed = timed_now;
        st.epoch_timed = epoch_timed;
        st.n_train = n_train_;
        for (const auto& e : res.epochs) st.epochs.push_back(epoch_json(e));
        st.builds = res.builds;
        st.data_fingerprint = data_fingerprint_;
        st.data_source = data_source_;
        if (!finished) return save_checkpoint(o_.checkpoint_path, net_, r_, st);
        // the finished run's: a file that cannot be written (a full disk) does not take the
        // run's results with it; they are reported, then the failure (RunResult)
        try {
            save_checkpoint(o_.checkpoint_path, net_, r_, st);
        } catch (const std::exception& e) {
            res.checkpoint_error = e.what();
            fmt::print(stderr, "speedrun: the checkpoint {} was not written: {}\n", o_.checkpoint_path, e.what());
        }
    };

    // Stops the run at a non-finite loss (the CPU: after every step; a GPU: at each epoch's end).
    auto check_finite = [&](int step_now, int epoch) {
        float st[2];
        b_.download(st, stats_.get(), sizeof st);
        if (!std::isfinite(st[0])) diverged(st[0], step_now, epoch);
    };

    int step = resume ? resume->state.step : 0;
    int evaluated_epoch = -1;  // the last epoch evaluated in this process (not restored)
    long images_done = 0;  // trained on in this process (a resumed run: since the resume)
    const int first_epoch = resume ? resume->state.epoch : 0;
    if (resume) rng.set_state(resume->state.rng_epoch_start.data());
    for (int epoch = first_epoch; epoch < n_epochs && step < total; ++epoch) {
        // timed from here: the epoch's random draws on the host are part of its work (the peers
        // draw on the GPU inside their timers)
        timer->start();
        std::array<uint64_t, 4> rng0;
        std::copy(rng.state(), rng.state() + 4, rng0.begin());
        const int skip = (resume && epoch == first_epoch) ? resume->state.steps_in_epoch : 0;
        // this epoch's order, translations and flips, made on the host, uploaded once
        std::iota(perm.begin(), perm.end(), 0);
        for (int i = n_train_ - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(uint32_t(i + 1))]);
        const bool per_batch = r_.crop == "batch", half = r_.flip_mode == "half";
        const int hi = r_.crop == "image" ? 2 * pad + 1 : 2 * pad;  // offsets in [-pad, hi - pad)
        const bool random_flip = r_.flip_mode == "random";
        int8_t by = 0, bx = 0;
        for (int j = 0; j < n_train_; ++j) {
            idx[j] = perm[j];
            lab[j] = train_labels_[perm[j]];
            if (per_batch) {  // one offset per batch: x then y, each randint(2 pad) - pad
                if (j % B == 0 && pad) {
                    bx = int8_t(int(rng.below(2 * pad)) - pad);
                    by = int8_t(int(rng.below(2 * pad)) - pad);
                }
                shifts[2 * j] = by;
                shifts[2 * j + 1] = bx;
            } else {
                shifts[2 * j] = int8_t(pad ? int(rng.below(uint32_t(hi))) - pad : 0);
                shifts[2 * j + 1] = int8_t(pad ? int(rng.below(uint32_t(hi))) - pad : 0);
            }
            // "half": the first half of the shuffled epoch (a fresh random half) is mirrored
            flips[j] = !r_.flip ? 0
                       : half   ? uint8_t(j < n_train_ / 2)
                       : random_flip ? uint8_t(rng.below(2))
                                     : uint8_t(base_flip[perm[j]] ^ (epoch & 1));
        }
        if (r_.cutout > 0)  // drawn only when on, so other recipes keep their random stream
            for (int j = 0; j < n_train_; ++j) {
                cut[2 * size_t(j)] = uint8_t(rng.below(uint32_t(side - r_.cutout + 1)));
                cut[2 * size_t(j) + 1] = uint8_t(rng.below(uint32_t(side - r_.cutout + 1)));
            }
        // cutmix from epoch cutmix_from_epoch on: position j's partner is the image at position
        // q[j] of this epoch, q a random permutation of the whole training set, cropped and
        // flipped as it is this epoch (hlb-CIFAR10 mixes its whole augmented training set before
        // batching); and the square's corner (drawn only when on, as above)
        const bool cutmix = r_.cutmix > 0 && epoch >= r_.cutmix_from_epoch;
        if (cutmix) {
            std::iota(partner_at.begin(), partner_at.end(), 0);
            for (int i = n_train_ - 1; i > 0; --i)
                std::swap(partner_at[i], partner_at[rng.below(uint32_t(i + 1))]);
            // (hlb's corners: side - size + 1 per axis for an odd size, one fewer for an even one)
            const uint32_t corners = uint32_t(std::max(1, side - r_.cutmix + r_.cutmix % 2));
            for (int j = 0; j < n_train_; ++j) {
                const int q = partner_at[j];
                partner[j] = idx[q];
                partner_shifts[2 * size_t(j)] = shifts[2 * size_t(q)];
                partner_shifts[2 * size_t(j) + 1] = shifts[2 * size_t(q) + 1];
                partner_flips[j] = flips[q];
                lab2[j] = lab[q];
                mix_pos[2 * size_t(j)] = uint8_t(rng.below(corners));
                mix_pos[2 * size_t(j) + 1] = uint8_t(rng.below(corners));
            }
        }
        if (jitter)  // drawn only when on, so other recipes keep their random stream
            for (int j = 0; j < n_train_; ++j) {
                jit_shift[j] = float((rng.uniform() * 2 - 1) * r_.brightness);
                jit_gain[j] = float((rng.uniform() * 2 - 1) * r_.contrast + 1);
            }
        const auto te = clock_type::now();  // host clock: progress bar only
        b_.upload(ep_idx_.get(), idx.data(), idx.size() * sizeof(int32_t));
        b_.upload(ep_labels_.get(), lab.data(), lab.size() * sizeof(int32_t));
        b_.upload(ep_shifts_.get(), shifts.data(), shifts.size());
        b_.upload(ep_flips_.get(), flips.data(), flips.size());
        if (r_.cutout > 0) b_.upload(ep_cutout_.get(), cut.data(), cut.size());
        if (cutmix) {
            b_.upload(ep_cutmix_.get(), mix_pos.data(), mix_pos.size());
            b_.upload(ep_partner_.get(), partner.data(), partner.size() * sizeof(int32_t));
            b_.upload(ep_partner_shifts_.get(), partner_shifts.data(), partner_shifts.size());
            b_.upload(ep_partner_flips_.get(), partner_flips.data(), partner_flips.size());
            b_.upload(ep_labels2_.get(), lab2.data(), lab2.size() * sizeof(int32_t));
        }
        if (jitter) {
            b_.upload(ep_jitter_.get(), jit_shift.data(), jit_shift.size() * sizeof(float));
            b_.upload(ep_jitter_.get() + n_train_, jit_gain.data(), jit_gain.size() * sizeof(float));
        }
        const float zero2[2] = {0.f, 0.f};
        b_.upload(stats_.get(), skip && root ? resume->state.epoch_stats : zero2, sizeof zero2);

        int steps_here = skip;
        double epoch_time = 0;
        if (skip) {  // a resumed epoch's seconds include those before the stop (saved in timed)
            epoch_time = std::min(resume->state.epoch_timed, timed);
            timed -= epoch_time;
        }
        // Saves and stops (interrupt or stop_after_step), or saves a periodic checkpoint.
        auto stop_or_save = [&] {
            bool interrupted = o_.interrupt && o_.interrupt->load();
            // Every rank stops after the same step. A signal reaches the ranks at different
            // moments (and a GPU rank's host loop runs ahead of its device), so a rank deciding
            // alone would leave the others waiting in the next step's gradient sum, rank 0's
            // checkpoint included. One flag summed over the ranks (host memory, no device wait),
            // after every step on the CPU and every 8th on a GPU, where a step takes milliseconds
            // and the host's time per step counts.
            if (dp_ && dp_->comm().world() > 1)
                interrupted = step % (b_.device() == Device::cpu ? 1 : 8) == 0 &&
                              count_ranks(dp_->comm(), interrupted) > 0;
            // (a planned stop is the timed run's: a warm-up run before it goes to its end)
            const bool stop = interrupted || (!warmup && o_.stop_after_step >= 0 && step >= o_.stop_after_step);
            if (stop || (o_.checkpoint_every > 0 && step % o_.checkpoint_every == 0 && step < total)) {
                epoch_time += timer->stop_seconds();
                const int saved_before = saved_step;
                try {
                    save(step, epoch, steps_here, rng0, timed + epoch_time, epoch_time);
                } catch (const Diverged&) {
                    throw;
                } catch (const Error& e) {
                    // (a full disk, the file's folder gone): the run ends, saying what is kept;
                    // the file is as it was, a failed write never touches it
                    const char* reason = interrupted ? "interrupted" : stop ? "stop_after_step" : "checkpoint not written";
                    if (!warmup && log_)
                        log_->write({{"event", "stopped"}, {"seed", seed}, {"steps", step}, {"total_steps", total},
                                     {"reason", reason}, {"checkpoint_error", e.what()},
                                     {"checkpoint", saved_before >= 0 ? nlohmann::json(o_.checkpoint_path)
                                                                      : nlohmann::json(nullptr)},
                                     {"checkpoint_step",
                                      saved_before >= 0 ? nlohmann::json(saved_before) : nlohmann::json(nullptr)}});
                    fail("{} was not written: {}; {} is as it was ({})",
                         stop ? fmt::format("stopped after step {} of {} ({}), but its checkpoint", step, total,
                                            interrupted ? "a signal" : "--stop-after-step")
                              : fmt::format("the checkpoint of step {} of {}", step, total),
                         e.what(), o_.checkpoint_path,
                         saved_before >= 0 ? fmt::format("step {}, this run's last save", saved_before)
                                           : std::string("this run saved nothing to it before"));
                }
                if (stop) {
                    // (the log's last line then says why no "run" line follows)
                    if (!warmup && log_)
                        log_->write({{"event", "stopped"}, {"seed", seed}, {"steps", step}, {"total_steps", total},
                                     {"reason", interrupted ? "interrupted" : "stop_after_step"},
                                     {"checkpoint", o_.checkpoint_path.empty() ? nlohmann::json(nullptr)
                                                                               : nlohmann::json(o_.checkpoint_path)},
                                     {"total_seconds", timed + epoch_time}});
                    throw Interrupted(o_.checkpoint_path.empty()
                        ? fmt::format("stopped after step {} of {} (no --checkpoint: nothing saved)", step, total)
                        : fmt::format("stopped after step {} of {}; resume with --resume {}", step, total,
                                      o_.checkpoint_path));
                }
                wait_for_root();  // (rank 0 saved; untimed)
                timer->start();
            }
        };
        // Training step s of this epoch: device work only (no host reads), so it can be recorded.
        auto train_step = [&](int s) {
            const size_t at = size_t(s) * B + size_t(first);  // this rank's slice
            // the epoch's last, smaller batch (opt.drop_last false; one process: Bl == B)
            Workspace& ws = (ws_tail_ && s == spe - 1) ? *ws_tail_ : *ws_train_;
            const int Bl = ws.batch();
            b_.gather_crops(batch_x_.get(), train_pad_.get(), side, side, pad, Bl,
                            ep_idx_.get() + at, 0, ep_shifts_.get() + 2 * at, 0, 0,
                            ep_flips_.get() + at, 0);
            if (jitter)
                b_.brightness_contrast(batch_x_.get(), ep_jitter_.get() + at,
                                       ep_jitter_.get() + n_train_ + at, Bl, size_t(side) * side * 3);
            if (r_.cutout > 0)
                b_.cutout(batch_x_.get(), ep_cutout_.get() + 2 * at, Bl, side, side, 3, r_.cutout);
            if (cutmix) {
                b_.gather_crops(cutmix_src_.get(), train_pad_.get(), side, side, pad, Bl,
                                ep_partner_.get() + at, 0, ep_partner_shifts_.get() + 2 * at, 0, 0,
                                ep_partner_flips_.get() + at, 0);
                b_.cutmix(batch_x_.get(), cutmix_src_.get(), ep_cutmix_.get() + 2 * at, Bl, side,
                          side, 3, r_.cutmix);
            }
            const bool whiten_bias = step < whiten_steps;
            const float* logits = ws.forward(batch_x_.get(), true);
            if (cutmix)
                b_.cross_entropy_mixed(ws.dlogits(), stats_.get(), logits, ep_labels_.get() + at,
                                       ep_labels2_.get() + at, mix, Bl, O, r_.label_smoothing);
            else
                b_.cross_entropy(ws.dlogits(), stats_.get(), logits, ep_labels_.get() + at, Bl, O,
                                 r_.label_smoothing);
            ws.backward(ws.dlogits(), whiten_bias);
            // the loss is summed over the batch: the global batch's gradient is the SUM of the
            // ranks' slice gradients (data_parallel.h)
            if (dp_) dp_->finish_step();
            opt_.step(step, total, whiten_steps, spe);
            if (r_.ema_every > 0 && s % r_.ema_every == 0) opt_.ema_update(r_.ema_decay);
            ++step;
            ++steps_here;
            if (la_every > 0 && step >= la_first) {
                if (step == la_first)
                    opt_.reset_ema();  // (a late start: the state begins as these weights)
                else if (step % la_every == 0)
                    opt_.lookahead(lookahead_decay(step, total, la_every, r_.lookahead_base,
                                                   r_.lookahead_power));
                if (step == total) opt_.lookahead(1.0);  // the weights become the EMA
            }
        };
        // The epoch's steps recorded once (a CUDA graph; the first run of this trainer records,
        // later runs of the same recipe replay) where nothing between steps needs the host: no
        // data-parallel exchange, no periodic checkpoint or planned stop, no resumed mid-epoch
        // start. A recording holds each step's scalars (lr, whether the whitening bias trains,
        // lookahead events), which depend only on the step, and the buffers' addresses, which
        // stay; what changes between runs is the buffers' contents (weights, the epoch's order
        // and augmentation, uploaded above).
        const int n_steps = std::max(0, std::min(spe - skip, total - step));
        const bool recordable = o_.record_epochs && graphs_why_.empty() && !dp_ && o_.checkpoint_every == 0 &&
                                o_.stop_after_step < 0 && skip == 0 && n_steps > 0;
        // Records this epoch's steps, from its first (recorded, not run: the step counters are
        // put back); false, and no more recording, when that fails.
        const int step_first = step;
        auto record_epoch = [&]() -> bool {
            if (!b_.begin_recording()) return false;
            const int step_now = step, here_now = steps_here;
            step = step_first;
            steps_here = skip;
            std::string why;
            try {
                for (int s = skip; s < spe && step < total; ++s) train_step(s);
            } catch (const std::exception& e) {
                why = e.what();
            }
            auto rec = b_.end_recording(why.empty() ? &why : nullptr);
            step = step_now;
            steps_here = here_now;
            if (!why.empty() || !rec) {
                // set: every op runs directly from now on
                graphs_why_ = fmt::format("epoch {}: {}", epoch,
                                          why.empty() ? "the backend made no recording" : why);
                if (!o_.quiet && root)
                    fmt::print(stderr, "note: recording failed ({}); the steps run directly\n",
                               graphs_why_);
                return false;
            }
            if (graphs_.size() <= size_t(epoch)) graphs_.resize(size_t(epoch) + 1);
            graphs_[epoch] = std::move(rec);
            return true;
        };
        Recording* graph = recordable && size_t(epoch) < graphs_.size() ? graphs_[epoch].get() : nullptr;
        // (nothing is recorded before one step has run directly: ops that set themselves up on
        // first use, e.g. a library's workspace, must not do so while recorded)
        if (recordable && !graph && stepped_ && record_epoch()) graph = graphs_[epoch].get();
        if (graph) {
            graph->replay();
            step += n_steps;
            steps_here += n_steps;
            ++res.replayed_epochs;
            stop_or_save();  // (only an interrupt can stop here: at the epoch's end)
        }
        const bool direct = !graph;
        for (int s = steps_here; direct && s < spe && step < total; ++s) {
            train_step(s);
            stepped_ = true;
            // NaN guard: on the CPU every step (reading the loss is free there); on a GPU at the
            // end of the epoch, to keep the device free of host round trips
            if (b_.device() == Device::cpu) check_finite(step, epoch);
            stop_or_save();
            if (bar && b_.device() == Device::cpu) {
                float st[2];
                b_.download(st, stats_.get(), sizeof st);
                progress_bar(epoch, s + 1, std::min(spe, total - (step - steps_here)),
                             st[0] / (double(images_in_steps(steps_here, n_train_, B)) * Bfull / B),
                             seconds_since(te));  // (this rank's stats: its share of the images)
            }
        }
        // an epoch that ran directly because nothing had run before (a trainer's first epoch) is
        // recorded now, so that the next run (after a warm-up: the timed one) replays it too
        if (direct && recordable && graphs_why_.empty() && (size_t(epoch) >= graphs_.size() || !graphs_[epoch]))
            record_epoch();
        if (dp_) dp_->allreduce(stats_.get(), 2);  // loss and correct count of the global batches
        const double epoch_s = epoch_time + timer->stop_seconds();
        check_finite(step, epoch);
        timed += epoch_s;
        res.step_seconds += epoch_s;
        if (bar) std::fprintf(stderr, "\r%*s\r", 80, "");

        float st[2];
        b_.download(st, stats_.get(), sizeof st);
        EpochStats es;
        es.epoch = epoch;
        es.steps = step;
        // per image of the epoch (the global batches: every rank's stats were summed above)
        const double seen = double(images_in_steps(steps_here, n_train_, B));
        images_done += images_in_steps(steps_here, n_train_, B) - images_in_steps(skip, n_train_, B);
        es.train_loss = st[0] / seen;
        es.train_acc = st[1] / seen;
        es.epoch_seconds = epoch_s;
        es.total_seconds = timed;
        if (o_.eval_each_epoch && root) {  // untimed
            const auto tv = clock_type::now();
            es.test_acc = evaluate_current(0);
            es.test_images = n_test_;
            evaluated_epoch = epoch;
            b_.synchronize();
            es.eval_seconds = seconds_since(tv);
        }
        res.epochs.push_back(es);
        if (print) {
            print_row(es);
            std::fflush(stdout);
        }
        if (!warmup && log_)
            log_->write({{"event", "epoch"}, {"seed", seed}, {"epoch", epoch}, {"steps", step},
                        {"train_loss", es.train_loss}, {"train_acc", es.train_acc},
                        {"test_acc", test_acc_json(es.test_acc)}, {"test_images", es.test_images},
                        {"epoch_seconds", epoch_s}, {"total_seconds", timed}});
        wait_for_root();  // (rank 0 evaluated and logged; untimed)
    }

    limited.reset();  // (the other ranks wait for rank 0's evaluation at the next start)
    // the final test-time-augmented evaluation is part of the timed region
    timer->start();
    if (r_.ema_every > 0)  // the run ends with the EMA weights (those evaluated and saved)
        b_.copy(net_.params.get(), net_.ema.get(), net_.size() * sizeof(float));
    res.test_accuracy_tta = root ? evaluate(r_.tta_level) : 0.0;
    const double tta_s = timer->stop_seconds();
    const double timed_steps = timed;  // what the finished checkpoint keeps: a resume of it
    timed += tta_s;                    // evaluates again and adds that evaluation's time
    // (a restored epoch's accuracy may be of another --test-subset: evaluated again)
    res.test_accuracy = (!res.epochs.empty() && res.epochs.back().epoch == evaluated_epoch)
                            ? res.epochs.back().test_acc
                            : (root ? evaluate(0) : 0.0);
    res.train_seconds = timed;
    res.recording_failed = graphs_why_;
    save(step, n_epochs, 0, {}, timed_steps, 0, true);  // the finished run (weights: the final EMA)
    res.images_per_second = res.step_seconds > 0 ? double(images_done) / res.step_seconds : 0;
    if (print) {
        fmt::print("{:>5} | {:>5} | {:>10} | {:>9} | {:>8.4f} | {:>8} | {:>8.2f}   (TTA level {}; "
                   "without TTA {:.4f})\n",
                   "eval", step, "", "", res.test_accuracy_tta, "", timed, r_.tta_level,
                   res.test_accuracy);
        if (!o_.checkpoint_path.empty() && res.checkpoint_error.empty())
            fmt::print("checkpoint written to {}\n", o_.checkpoint_path);
        std::fflush(stdout);
    }
    if (!warmup && log_)
        log_->write({{"event", "run"}, {"seed", seed}, {"test_accuracy", res.test_accuracy},
                    {"test_accuracy_tta", res.test_accuracy_tta}, {"train_seconds", timed},
                    {"step_seconds", res.step_seconds}, {"images_per_second", res.images_per_second},
                    {"replayed_epochs", res.replayed_epochs},
                    {"recording_failed", res.recording_failed}, {"steps", total}});
    return res;
}

}  // namespace sr
