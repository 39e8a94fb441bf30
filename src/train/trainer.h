// trainer.h: one training run of a recipe on a backend: data upload (untimed), then the timed
// region (normalise/pad, whitening init, every training step, the final TTA evaluation), with
// per-epoch statistics and evaluation (untimed) in between.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/cifar10.h"
#include "dist/data_parallel.h"
#include "io/atomic_file.h"
#include "model/network.h"
#include "optim/optimizer.h"
#include "train/checkpoint.h"
#include "train/recipe.h"

namespace sr {

struct TrainOptions {
    int subset = 0;             // train on the first N training images (0 = all)
    int test_subset = 0;        // evaluate on the first N test images (0 = all)
    // images per evaluation batch; 0 = eval_batch_size() (recipe.h): the training batch unless a
    // size from half of it up makes over 5% fewer forwards (hiverge 1250, myrtle-reg 625). The
    // logits of one image depend on the batch size only through the convolution algorithms.
    int eval_batch = 0;
    // evaluation only (`speedrun eval`): no training set or per-epoch buffers on the device, and
    // run() is an error
    bool evaluate_only = false;
    bool eval_each_epoch = true;  // untimed test accuracy after every epoch
    bool progress = true;       // live progress bar on stderr when it is a terminal
    bool quiet = false;         // no per-epoch table
    std::string log_path;       // JSONL log (one line per epoch and per run); empty = none
    // Data parallel (src/dist/): with a communicator of several ranks, each rank trains on its
    // slice (batch / ranks images) of every global batch and the gradients are summed over the
    // ranks each step; only rank 0 prints, logs and evaluates. nullptr: one process.
    Communicator* comm = nullptr;
    bool sync_bn = false;       // BN statistics of the global batch (else per rank, as DDP)
    // Checkpoints (src/train/checkpoint.h): written to checkpoint_path every checkpoint_every
    // steps (0: only at the end of the run) and when interrupted.
    std::string checkpoint_path;
    // data_fingerprint() of the training images where the caller has it already (a resume's
    // early check); empty: computed here when checkpoints are written
    std::string data_fingerprint;
    int checkpoint_every = 0;
    int stop_after_step = -1;   // stop (as if interrupted) after this many steps; -1 = never
    // Each epoch's training steps recorded once and replayed (CUDA graphs) where the backend can
    // record and nothing between steps needs the host (see Trainer::run); false: every op is
    // launched directly. Backends that cannot record (the CPU) run directly either way.
    bool record_epochs = true;
    const std::atomic<bool>* interrupt = nullptr;  // set by SIGINT/SIGTERM: save and stop
};

// The training images a run uses: the first `subset` of `available` (0: all of them).
inline int train_images(int subset, int available) {
    return subset > 0 ? std::min(subset, available) : available;
}
// A resumed run must train on the images its checkpoint was trained on (n_train of the data's
// `available`; -1: not known).
void check_resume_images(const Checkpoint& resume, int n_train, int available = -1);
// Fails unless the checkpoint's training set (RunState::data_fingerprint) is this run's
// (fingerprint: data_fingerprint of its images; source: where they came from, for the message).
void check_resume_data(const Checkpoint& resume, const std::string& fingerprint, const std::string& source);

// Thrown when a run stops early (interrupt or stop_after_step) after saving its checkpoint.
struct Interrupted : Error {
    using Error::Error;
};
// Thrown when the training loss becomes non-finite: a property of the run (its recipe and seed),
// which a sweep records as such, where other errors end it.
struct Diverged : Error {
    using Error::Error;
};

struct EpochStats {
    int epoch = 0, steps = 0;
    double train_loss = 0, train_acc = 0, test_acc = -1;  // test_acc < 0: not evaluated
    int test_images = 0;  // what test_acc was measured on (0: not evaluated, or not recorded)
    double epoch_seconds = 0, total_seconds = 0;
    double eval_seconds = 0;  // the untimed per-epoch evaluation
};

// An epoch's figures as JSON (checkpoints' RunState::epochs, the summary's runs[].epochs).
nlohmann::json epoch_json(const EpochStats& e);
// And back (a checkpoint's saved epochs): test_acc null, or -1 in older files, is "not evaluated".
EpochStats epoch_from_json(const nlohmann::json& j);
// An epoch's test_acc as written to summaries, logs and checkpoints: null when not evaluated.
nlohmann::json test_acc_json(double test_acc);

struct RunResult {
    uint64_t seed = 0;
    double test_accuracy = 0, test_accuracy_tta = 0;
    double train_seconds = 0;  // timed region: prep + whitening + steps + TTA eval
    double step_seconds = 0;   // the training steps alone
    double images_per_second = 0;  // trained images / step_seconds
    int steps = 0;
    int replayed_epochs = 0;   // epochs whose steps ran as a replayed recording
    // Why recording an epoch failed, when it did in this trainer (so far): "epoch E: reason".
    // Its steps and all later ones then run directly; correct, only without the replay's speed.
    std::string recording_failed;
    std::vector<EpochStats> epochs;
    // The builds that ran this run's steps (RunState::builds): those a resumed checkpoint names,
    // then this one's git_revision() where it differs and runs steps.
    std::vector<std::string> builds;
    // Why the finished run's checkpoint could not be written (empty: written, or none asked for);
    // the run's figures stand, and `train` reports them before it fails.
    std::string checkpoint_error;
};

class Trainer {
public:
    Trainer(Backend& b, const Recipe& r, const Cifar10& data, const TrainOptions& o);
    // A full run from a fresh init with this seed (warmup: run but print nothing), or the rest
    // of the run saved in `resume` (its seed; weights, optimizer state and RNG restored).
    RunResult run(uint64_t seed, bool warmup = false, const Checkpoint* resume = nullptr);
    // Test accuracy of the current weights with TTA level 0, 1 or 2.
    double evaluate(int tta_level);
    // The logits of the last evaluate(), (n_test, classes) row-major on the host.
    const std::vector<float>& last_logits() const { return host_logits_; }
    Network& network() { return net_; }
    int n_train() const { return n_train_; }
    // the images the whitening filters are computed from (none for a network without whitening)
    int whitening_images() const { return r_.net.whiten_kernel > 0 ? std::min(r_.whiten_images, n_train_) : 0; }
    // Where the next runs save their checkpoints (Options::checkpoint_path until set).
    void set_checkpoint_path(const std::string& path) { o_.checkpoint_path = path; }
    int n_test() const { return n_test_; }

private:
    Backend& b_;
    Recipe r_;
    TrainOptions o_;
    int n_train_, n_test_, batch_, eval_batch_;
    Network net_;
    Optimizer opt_;
    std::unique_ptr<Workspace> ws_train_;  // this rank's slice of the batch (all of it alone)
    std::unique_ptr<Workspace> ws_tail_;   // opt.drop_last false: the epoch's last, smaller batch
    std::unique_ptr<Workspace> ws_eval_own_;
    Workspace* ws_eval_;
    std::vector<int32_t> train_labels_, test_labels_;
    std::string data_fingerprint_, data_source_;  // of the training set (where checkpoints are written)
    DeviceBuffer<uint8_t> train_u8_, test_u8_;
    DeviceBuffer<float> train_pad_, test_pad_, batch_x_, eval_x_, logits_acc_, zeros_, stats_;
    DeviceBuffer<int32_t> ep_idx_, ep_labels_;
    DeviceBuffer<int32_t> sel_idx_;  // selective TTA: the test images that get the TTA views
    DeviceBuffer<int8_t> ep_shifts_;
    DeviceBuffer<uint8_t> ep_flips_;
    DeviceBuffer<uint8_t> ep_cutout_;  // cutout corners of the epoch: (row, column) per image
    DeviceBuffer<uint8_t> ep_cutmix_;  // cutmix corners of the epoch: (row, column) per image
    // cutmix partner of each position of the epoch: its image, its crop offsets, its mirror (as
    // that image is augmented this epoch) and its label
    DeviceBuffer<int32_t> ep_partner_, ep_labels2_;
    DeviceBuffer<int8_t> ep_partner_shifts_;
    DeviceBuffer<uint8_t> ep_partner_flips_;
    DeviceBuffer<float> cutmix_src_;   // the batch's partners, cropped and flipped
    DeviceBuffer<float> ep_jitter_;  // colour jitter of the epoch: shifts (n), then gains (n)
    DeviceBuffer<float> hold_;       // the training weights while the EMA is evaluated
    std::vector<float> host_logits_;
    std::unique_ptr<JsonlLog> log_;
    // epoch e's recorded steps (TrainOptions::record_epochs), made by the first run that trains
    // epoch e from its start and replayed by later runs; none after a failed recording
    std::vector<std::unique_ptr<Recording>> graphs_;
    std::string graphs_why_;  // why recording failed, "" if it has not (RunResult::recording_failed)
    bool stepped_ = false;  // a training step has run directly (so none is recorded before)
    // With TrainOptions::comm. Declared last, so destroyed first: on an error NCCL's reducer
    // aborts its sums before the buffers' release waits for the device to finish them.
    std::unique_ptr<DataParallel> dp_;
};

}  // namespace sr
