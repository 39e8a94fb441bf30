// speedrun: the command-line front end. It parses flags (CLI11) into the argument structs of
// train/commands.h and calls the command; it holds no other logic. Errors the user can cause
// arrive as sr::Error and are printed as "speedrun: error: ..." with exit status 1.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>

#include "cli_checks.h"
#include <fmt/format.h>

#include "core/error.h"
#include "core/version.h"
#include "train/commands.h"

// Subcommands defined in other files of app/ (each returns true if it ran a command).
// add_dist_commands also adds --distributed / --sync-bn to `train` (into its TrainArgs) and
// gives its subcommands the common flags through add_common.
namespace sr::app {
void add_dist_commands(CLI::App& app, sr::TrainArgs& train,
                       void (*add_common)(CLI::App*, sr::CommonArgs&));
bool run_dist_commands();
}  // namespace sr::app

namespace {

using sr::app::kNonNegative;
using sr::app::kPositive;

// The recipe's flags (--preset, --config, --set, --epochs, --batch-size).
void add_recipe_flags(CLI::App* c, sr::CommonArgs& a) {
    c->add_option("--preset", a.preset, "Recipe preset (see `speedrun presets`)")->capture_default_str();
    c->add_option("--config", a.config, "JSON file merged over the preset");
    c->add_option("--set", a.sets, "Override one recipe value: key.path=value (e.g. opt.lr=10)");
    c->add_option("--epochs", a.epochs, "Override the recipe's epochs")->check(kPositive);
    c->add_option("--batch-size", a.batch_size, "Override the recipe's batch size")->check(kPositive);
}

// The recipe's flags and those of the data and the device.
void add_common(CLI::App* c, sr::CommonArgs& a) {
    add_recipe_flags(c, a);
    c->add_option("--device", a.device, "auto | cpu | cuda (auto: the GPU when there is one)")->capture_default_str();
    c->add_option("--threads", a.threads, "CPU threads (0 = all cores)")
        ->capture_default_str()
        ->check(kNonNegative);
    c->add_option("--data", a.data, "CIFAR-10 binary directory (default: $CIFAR10_DIR, "
                                    "../shared/data/cifar-10-batches-bin from the current "
                                    "directory, the user cache, else download)");
    c->add_flag("--synthetic", a.synthetic, "Use a small synthetic CIFAR-shaped set");
    c->add_flag_callback("--no-download", [&a] { a.download = false; }, "Never download CIFAR-10");
    c->add_option("--cpu-conv", a.cpu_conv,
                  "CPU convolutions: fastest (default: Winograd unless direct is timed >10% faster twice), "
                  "direct, or winograd (oneDNN's F(4x4,3x3) where it applies; the default with --deterministic)");
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"speedrun: train a ResNet on CIFAR-10 to 94% as fast as possible (CPU or CUDA)"};
    app.require_subcommand(1);
    app.set_version_flag("--version", [] { return sr::build_description(); },
                         "Print the version, source commit and what this build includes, and exit");

    sr::TrainArgs ta;
    auto* train = app.add_subcommand("train", "Train a preset (default airbench94) and report accuracy");
    add_common(train, ta);
    train->add_option("--seed", ta.seed, "Seed of the first run")->capture_default_str()->check(kNonNegative);
    train->add_option("--runs", ta.runs, "Number of runs (seeds seed, seed+1, ...)")
        ->capture_default_str()
        ->check(kPositive);
    train->add_option("--subset", ta.subset, "Train on the first N training images (0 = all)")
        ->check(kNonNegative);
    train->add_option("--test-subset", ta.test_subset, "Evaluate on the first N test images (0 = all)")
        ->check(kNonNegative);
    train->add_option("--summary-json", ta.summary_json, "Write the runs and statistics as JSON");
    train->add_option("--log", ta.log, "Append a JSONL log (one line per epoch and per run; a run stopped by a "
                      "signal, --stop-after-step, a non-finite loss or a checkpoint it cannot write ends with a \"stopped\" "
                      "line)");
    train->add_flag("--no-epoch-eval", ta.no_epoch_eval, "Skip the untimed test evaluation after each epoch");
    train->add_option("--plot", ta.plot, "PNG of test accuracy and train loss per epoch (gnuplot)");
    train->add_option("--dawnbench", ta.dawnbench, "DAWNBench logs.tsv of the first run");
    train->add_option("--checkpoint", ta.checkpoint,
                      "Save a checkpoint (safetensors) at the end and when interrupted (--runs N: "
                      "one per run, FILE with .seed<S> before its extension)");
    train->add_option("--checkpoint-every", ta.checkpoint_every, "Also save every N steps (0 = only at the end; on a GPU the "
                      "epochs then run op by op, without CUDA-graph replay)");
    train->add_option("--resume", ta.resume, "Continue the run saved in this checkpoint (and keep saving to it)");
    train->add_flag("--deterministic", ta.deterministic, "CPU: no dynamic threading, so a resumed run is bit-identical");
    train->add_option("--stop-after-step", ta.stop_after_step,
                      "Stop after N steps as if interrupted (saves the checkpoint; needs --checkpoint "
                      "or --resume)")
        ->check(kPositive);
    train->add_option("--warmup", ta.warmup, "Untimed warm-up runs (default: 1 on a GPU, 0 on the CPU)")
        ->check(kNonNegative);
    train->add_flag("--no-graphs", ta.no_graphs,
                    "Launch every op directly instead of replaying each epoch's recorded steps "
                    "(CUDA graphs, made by the first run)");
    train->add_option("--storage", ta.storage,
                      "Activation storage: auto (the default: bf16 on a GPU of sm_80 or newer, fp16 "
                      "on older ones, fp32 on the CPU), fp32, or fp16 / bf16 (mixed precision: "
                      "16-bit activations, fp32 math, weights, BN statistics and optimizer; on "
                      "the CPU this runs the slow 16-bit reference)");
    train->add_option("--emulate-precision", ta.emulate_precision,
                      "CPU: round what a mixed-precision GPU run would store (activations, "
                      "gradients, the weights the math reads) to fp16, bf16 or fp8 (E4M3 "
                      "forward, E5M2 backward, per-tensor scaled), or tf32 (what TF32 tensor "
                      "cores keep), or fp8-conv (bf16 storage, FP8 convolution operands), to see "
                      "whether accuracy holds");

    sr::BenchArgs ba;
    auto* bench = app.add_subcommand("bench", "Time training steps and TTA inference; GFLOP/s and share of peak");
    add_common(bench, ba);
    bench->add_option("--steps", ba.steps, "Timed training steps")->capture_default_str()->check(kPositive);
    bench->add_option("--eval-images", ba.eval_images, "Images for the timed TTA inference (default: one batch)")
        ->check(kNonNegative);
    bench->add_option("--json", ba.json, "Write the result as JSON");
    bench->add_option("--storage", ba.storage, "Activation storage: auto, fp32, fp16 or bf16 (as train)");
    bench->add_flag("--profile", ba.profile,
                    "Also time every op of the training step: time by op and kind, FLOP/s, bytes/s");
    bench->add_option("--roofline", ba.roofline,
                      "Also estimate the profiled step and the full run on this GPU from the ops' "
                      "FLOPs and bytes (a100, h100, h200; implies --profile)");

    sr::DataArgs da;
    auto* data = app.add_subcommand("data", "Find, check and describe CIFAR-10 (or write a synthetic set)");
    data->add_option("--data", da.data, "CIFAR-10 binary directory");
    data->add_flag_callback("--no-download", [&da] { da.download = false; }, "Never download CIFAR-10");
    data->add_option("--write-synthetic", da.write_synthetic,
                     "Write a full-size synthetic set (50,000 + 10,000) in the binary format to DIR");
    data->add_option("--seed", da.seed, "Synthetic seed")->capture_default_str()->check(kNonNegative);

    sr::EvalArgs ea;
    auto* eval = app.add_subcommand("eval", "Test accuracy of a checkpoint, with and without TTA");
    eval->add_option("--checkpoint", ea.checkpoint, "Checkpoint file (safetensors)")->required();
    eval->add_option("--data", ea.data, "CIFAR-10 binary directory");
    eval->add_flag("--synthetic", ea.synthetic, "Evaluate on the small synthetic set of train --synthetic");
    eval->add_option("--device", ea.device, "auto | cpu | cuda")->capture_default_str();
    eval->add_option("--threads", ea.threads, "CPU threads (0 = all cores)")->check(kNonNegative);
    eval->add_option("--test-subset", ea.test_subset, "Evaluate on the first N test images (0 = all)");
    eval->add_option("--emulate-precision", ea.emulate_precision,
                     "CPU: evaluate with the rounding of a format of train's --emulate-precision "
                     "(e.g. weights trained under fp8-conv, evaluated in bf16 or fp32)");
    eval->add_flag_callback("--no-download", [&ea] { ea.download = false; }, "Never download CIFAR-10");

    sr::PredictArgs pa;
    auto* predict = app.add_subcommand("predict", "Classify PNG files with a checkpoint: class, probability, top K");
    predict->footer(
        "Each image becomes 32x32 RGB like a CIFAR-10 image: any PNG (palette, gray, 16-bit, alpha,\n"
        "interlaced) is decoded to 8-bit sRGB (16-bit: round(v/257)), alpha is composited over WHITE,\n"
        "the centred square of the shorter side is cropped, then area-averaged (box filter) down to\n"
        "32x32 if larger or bilinearly scaled up (pixel centres aligned) if smaller, and rounded to\n"
        "8 bits. The recipe's normalisation and test-time views (TTA level) are applied as in `eval`;\n"
        "the probabilities are the softmax of the averaged logits. A file that cannot be read is\n"
        "reported by name, the others are still classified, and the exit status is 1.");
    predict->add_option("--checkpoint", pa.checkpoint, "Checkpoint file (safetensors)")->required();
    predict->add_option("images", pa.images, "PNG files")->required();
    predict->add_option("--device", pa.device, "auto | cpu | cuda")->capture_default_str();
    predict->add_option("--threads", pa.threads, "CPU threads (0 = all cores)")->check(kNonNegative);
    predict->add_option("--top", pa.top, "Classes listed per file, most likely first")->capture_default_str();

    sr::ExportArgs xa;
    auto* exp = app.add_subcommand("export", "Write a checkpoint's network (eval mode) as an ONNX model");
    exp->footer(
        "The model (opset 13): input \"image\" float (N,3,32,32), RGB in [0,1] (pixel/255, NCHW, any\n"
        "N; the recipe's mean/std are applied inside the graph); output \"logits\" (N,10) for that one\n"
        "view (no TTA, no softmax). Needs a build with ONNX (libonnx-dev, libprotobuf-dev).");
    exp->add_option("--checkpoint", xa.checkpoint, "Checkpoint file (safetensors)")->required();
    exp->add_option("--onnx", xa.onnx, "ONNX file to write (atomically)")->required();

    sr::DescribeArgs dsa;
    auto* describe = app.add_subcommand("describe", "Layers, parameter count, FLOPs per image, network diagram");
    add_recipe_flags(describe, dsa);  // (it reads no data and runs on no device)
    describe->add_option("--svg", dsa.svg, "Write the network diagram as SVG (graphviz)");

    auto* presets = app.add_subcommand("presets", "List the built-in presets with their sources");

    sr::app::add_dist_commands(app, ta, add_common);

    // Command-line errors as every other user error: "speedrun: error: ..." and exit status 1
    // (CLI11's own codes are 100 and more); --help and --version as CLI11 prints them.
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string what = e.what();
        // a mistyped command reads as "A subcommand is required" or as an extra argument
        if (argc > 1 && argv[1][0] != '-') {
            std::string known;
            bool found = false;
            for (const CLI::App* c : app.get_subcommands({})) {
                known += (known.empty() ? "" : ", ") + c->get_name();
                found = found || c->check_name(argv[1]);
            }
            if (!found) what = fmt::format("unknown command '{}' (commands: {})", argv[1], known);
        }
        fmt::print(stderr, "speedrun: error: {}\nRun with --help for more information.\n", what);
        return 1;
    }
    try {
        if (train->parsed()) return sr::cmd_train(ta);
        if (bench->parsed()) return sr::cmd_bench(ba);
        if (data->parsed()) return sr::cmd_data(da);
        if (presets->parsed()) return sr::cmd_presets();
        if (describe->parsed()) return sr::cmd_describe(dsa);
        if (eval->parsed()) return sr::cmd_eval(ea);
        if (predict->parsed()) return sr::cmd_predict(pa);
        if (exp->parsed()) return sr::cmd_export(xa);
        if (sr::app::run_dist_commands()) return 0;
    } catch (const sr::Error& e) {
        std::fflush(stdout);
        fmt::print(stderr, "speedrun: error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        fmt::print(stderr, "speedrun: error: {}\n", e.what());
        return 1;
    }
    return 0;
}
