// checkpoint.h: what a checkpoint holds and how a run continues from one.
// A checkpoint is a safetensors file (src/io/safetensors.h) written atomically with:
//   <tensor name>            F32  the network's parameters and BN running statistics
//   momentum.<tensor name>   F32  SGD momentum buffers
//   ema.<tensor name>        F32  the lookahead (EMA) state
//   state.base_flip          U8   the alternating-flip choice of every training image
//   state.rng                U64  the host RNG at the start of the current epoch
// and metadata: format/version, the resolved recipe (JSON), the run state (JSON: seed, step,
// epoch, steps done in the epoch, the epoch's running loss/accuracy sums, timed seconds so far,
// the finished epochs' statistics, the training-set size, the builds that ran its steps), and
// tensors_fnv1a64, a checksum of the tensors (tensors_hash), so that a damaged file is refused.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/network.h"
#include "train/recipe.h"

namespace sr {

struct EpochStats;

// Where a run stands, besides the network arrays: enough to continue it exactly.
struct RunState {
    uint64_t seed = 0;
    int step = 0;            // optimizer steps done
    int epoch = 0;           // the epoch in progress
    int steps_in_epoch = 0;  // steps of that epoch already done
    std::array<uint64_t, 4> rng_epoch_start{};  // host RNG before this epoch's draws
    std::vector<uint8_t> base_flip;
    float epoch_stats[2] = {0, 0};  // loss sum, correct count of this epoch so far
    double timed = 0;               // timed seconds so far (a finished run: without its TTA)
    double epoch_timed = 0;         // of which in the epoch in progress (its steps so far)
    int n_train = 0;
    nlohmann::json epochs = nlohmann::json::array();  // finished epochs (EpochStats as JSON)
    // The source commits (git_revision()) of the programs that ran the steps so far, in order:
    // a new entry where a resumed run ran steps on another build. Empty in checkpoints written
    // before this was recorded (a run resumed from one starts with kBuildsUnrecorded). A run
    // continued by another build need not repeat an uninterrupted run of either: arithmetic and
    // random draws may differ between them (cutmix's partners changed in 9681a69, say).
    std::vector<std::string> builds;
    // What the run trains on: a hash of its training images and labels (data_fingerprint) and
    // where they came from (Cifar10::source). Empty in checkpoints written before they were kept.
    std::string data_fingerprint, data_source;
};

// "fnv1a64:<16 hex digits>" of the first n training images and their labels: the same files
// (or the same synthetic set) give the same text; CIFAR-10 and a synthetic set, or two subsets,
// do not.
std::string data_fingerprint(const std::vector<uint8_t>& images, const std::vector<int32_t>& labels, int n);

// FNV-1a over every tensor of f (name, dtype, shape, bytes, in name order).
uint64_t tensors_hash(const StFile& f);

// The builds entry that stands for the steps of a checkpoint that predates RunState::builds.
inline constexpr const char* kBuildsUnrecorded = "unrecorded";

struct Checkpoint {
    Recipe recipe;
    RunState state;
    StFile file;
};

void save_checkpoint(const std::string& path, const Network& net, const Recipe& r, const RunState& st);
// Reads and validates (format, version, recipe, state, the tensors' checksum where saved, the
// flips; the generator state is checked where a run resumes from it); throws sr::Error naming
// the file.
Checkpoint read_checkpoint(const std::string& path);
// Copies the checkpoint's arrays into net (whose config must match the checkpoint's recipe);
// every tensor is checked for presence, dtype and shape. with_optimizer: momentum and EMA too.
void load_network(const Checkpoint& c, Network& net, bool with_optimizer);

}  // namespace sr
