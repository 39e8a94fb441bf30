// dist_cli.cpp: the command line of the commands that run over several processes (issue 9):
// `sweep`, `dist-check`, and `--distributed` / `--sync-bn` on `train`. Parsing only; the
// commands are in src/dist/ (dist_commands.h).
#include <cstdio>
#include <cstdlib>

#include <CLI/CLI.hpp>

#include "cli_checks.h"

#include "dist/dist_commands.h"

namespace sr::app {
namespace {
SweepArgs sweep_args;
DistCheckArgs check_args;
CLI::App* sweep_cmd = nullptr;
CLI::App* check_cmd = nullptr;
}  // namespace

void add_dist_commands(CLI::App& app, TrainArgs& ta, void (*add_common)(CLI::App*, CommonArgs&)) {
    CLI::App* train = app.get_subcommand("train");
    train->add_flag("--distributed", ta.distributed,
                    "Data parallel over the ranks of mpirun / srun: each rank trains on a slice of "
                    "every batch, gradients summed each step; only rank 0 prints and writes");
    train->add_flag("--sync-bn", ta.sync_bn,
                    "With --distributed: BN statistics of the global batch (default: per rank)");

    SweepArgs& s = sweep_args;
    sweep_cmd = app.add_subcommand(
        "sweep", "Runs seeds x settings; under mpirun/srun every rank takes a share of the jobs");
    add_common(sweep_cmd, s);
    sweep_cmd->add_option("--runs", s.runs, "Seeds per setting (seed, seed+1, ...)")
        ->capture_default_str();
    sweep_cmd->add_option("--seed", s.seed, "First seed")->capture_default_str()->check(kNonNegative);
    sweep_cmd->add_option("--grid", s.grid,
                          "An axis of settings: key.path=v1,v2,... (repeat for more axes; all "
                          "combinations run)");
    sweep_cmd->add_option("--results", s.results,
                          "Results file, one JSON line per finished run; a restart skips the runs "
                          "in it (default <preset>-sweep.jsonl)");
    sweep_cmd->add_option(
        "--summary-json", s.summary_json,
        "Per-setting statistics (default: the results file's name with .summary.json)");
    sweep_cmd->add_option("--subset", s.subset, "Train on the first N training images (0 = all)")
        ->check(kNonNegative);
    sweep_cmd->add_option("--test-subset", s.test_subset,
                          "Evaluate on the first N test images (0 = all)")
        ->check(kNonNegative);
    sweep_cmd->add_flag("--epoch-eval", s.epoch_eval, "Evaluate (untimed) after every epoch; each "
                        "results line then lists its epochs' figures under \"epochs\"");
    sweep_cmd->add_option("--warmup", s.warmup,
                          "Untimed warm-up runs per rank and setting it runs (default: 1 on a GPU, 0 on the CPU)")
        ->check(kNonNegative);

    DistCheckArgs& c = check_args;
    check_cmd = app.add_subcommand(
        "dist-check",
        "One data-parallel training step (under mpirun/srun) against one process on "
        "the full batch: gradients and weights, tensor by tensor");
    add_common(check_cmd, c);
    check_cmd->add_flag("--sync-bn", c.sync_bn,
                        "BN statistics of the global batch (compare with the full batch)");
    check_cmd->add_option("--steps", c.steps, "Optimizer steps")->capture_default_str();
    check_cmd->add_option("--seed", c.seed, "Seed of the batches and the weights")->check(kNonNegative)
        ->capture_default_str();
    check_cmd
        ->add_option("--tolerance", c.tolerance,
                     "Largest allowed max |difference| / rms, per tensor")
        ->capture_default_str();
}

bool run_dist_commands() {
    int rc = -1;
    if (sweep_cmd && sweep_cmd->parsed())
        rc = cmd_sweep(sweep_args);
    else if (check_cmd && check_cmd->parsed())
        rc = cmd_dist_check(check_args);
    if (rc < 0) return false;
    if (rc != 0) {  // main() returns 0 for a command that ran; a failed check must not
        std::fflush(stdout);
        std::exit(rc);
    }
    return true;
}

}  // namespace sr::app
