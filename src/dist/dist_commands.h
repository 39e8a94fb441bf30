// dist_commands.h: the commands that run over several processes (issue 9): `sweep` (seeds x
// settings, a share of the jobs per rank), `train --distributed` (data parallel), and
// `dist-check` (one data-parallel step against one process on the full batch). app/dist_cli.cpp
// parses their flags; README, "Several processes", says how to launch them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "train/commands.h"

namespace sr {

struct SweepArgs : CommonArgs {
    int runs = 5;  // seeds seed..seed+runs-1 for every setting
    uint64_t seed = 0;
    std::vector<std::string> grid;  // "key.path=v1,v2,..." (commas inside [] or {} stay)
    std::string results;       // JSON lines, one per finished run (default <preset>-sweep.jsonl)
    std::string summary_json;  // default: the results path with .summary.json
    int subset = 0, test_subset = 0;
    bool epoch_eval = false;  // untimed evaluation after every epoch (off: faster)
    int warmup = -1;          // -1: one untimed run per rank on a GPU, none on the CPU
};

struct DistCheckArgs : CommonArgs {
    bool sync_bn = false;
    int steps = 1;
    uint64_t seed = 0;
    // max |difference| / rms of the reference, per tensor. Rounding alone gives up to ~2e-5, and
    // ~2e-4 for the whitening bias, whose gradient nearly cancels
    // (tests/dist/test_data_parallel.cpp)
    double tolerance = 1e-3;
};

// Where one rank runs: a GPU chosen by local rank when there are GPUs (and device is auto or
// cuda), else the CPU with the cores split between this host's ranks (unless threads > 0).
struct RankPlacement {
    std::string device;  // "cpu" or "cuda"
    int threads = 0;
    int cuda_device = 0;
    std::string text;  // e.g. "GPU 1 of 4" or "CPU, 8 threads (32 cores / 4 ranks)"
};
RankPlacement place_rank(const Communicator& comm, const std::string& device, int threads);

int cmd_sweep(const SweepArgs& a);
int cmd_dist_check(const DistCheckArgs& a);
// `train --distributed`: starts the communicator, places the rank, silences every rank but 0,
// and runs cmd_train with TrainArgs::comm set.
int cmd_train_distributed(const TrainArgs& a);

}  // namespace sr
