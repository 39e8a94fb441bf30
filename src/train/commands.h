// commands.h: what each `speedrun` subcommand does, behind the CLI (app/ only parses flags into
// these structs and calls these functions).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/trainer.h"

namespace sr {

struct CommonArgs {
    std::string preset = "airbench94";
    std::string config;              // JSON merged over the preset
    std::vector<std::string> sets;   // key.path=value overrides
    std::string device = "auto";     // auto | cpu | cuda
    int threads = 0;                 // CPU threads (0 = all cores)
    int cuda_device = 0;             // CUDA device index (set per rank by src/dist/, no flag)
    std::string data;                // CIFAR-10 directory
    bool synthetic = false;          // use the synthetic set instead of CIFAR-10
    bool download = true;            // allow downloading CIFAR-10 when not found
    // single-flag overrides (< 0 / empty: keep the recipe's)
    double epochs = -1;
    int batch_size = -1;
    std::string storage;  // activation storage: "" (auto) | auto | fp32 | fp16 | bf16 (make_backend)
    // CPU convolution algorithm: fastest | direct | winograd (ops/cpu/cpu_ops.h, ConvAlgorithm);
    // empty: fastest, or winograd with --deterministic
    std::string cpu_conv;
};

struct TrainArgs : CommonArgs {
    uint64_t seed = 0;
    int runs = 1;
    int subset = 0, test_subset = 0;
    std::string summary_json, log;
    std::string plot;       // PNG: epoch vs test accuracy and train loss (gnuplot)
    std::string dawnbench;  // DAWNBench logs.tsv of the first run
    bool no_epoch_eval = false;
    int warmup = -1;  // -1: one warm-up run on the GPU, none on the CPU
    bool no_graphs = false;  // TrainOptions::record_epochs off
    std::string emulate_precision;  // CPU: fp16 | bf16 | fp8 storage emulated (ops/rounding_backend.h)
    std::string checkpoint;   // safetensors file written at the end (and every N steps)
    int checkpoint_every = 0; // steps between checkpoints (0: only at the end)
    std::string resume;       // continue the run saved in this checkpoint
    bool deterministic = false;  // CPU only: fixed thread count, no dynamic teams
    int stop_after_step = -1;    // for tests and demos: stop as if interrupted
    // data parallel over the ranks of mpirun / srun (flags added by app/dist_cli.cpp)
    bool distributed = false, sync_bn = false;
    Communicator* comm = nullptr;  // set by cmd_train_distributed (src/dist/), never by a flag
};

struct EvalArgs {
    std::string checkpoint, data, device = "auto";
    std::string emulate_precision;  // CPU: evaluate with a format's rounding (ops/rounding_backend.h)
    int threads = 0, test_subset = 0;
    bool download = true;
    bool synthetic = false;  // the built-in synthetic set (that of train --synthetic)
};

struct BenchArgs : CommonArgs {
    int steps = 5;        // timed training steps (after 1 warm-up step)
    int eval_images = 0;  // images for the timed TTA inference (0 = one eval batch)
    std::string json;     // write the result as JSON
    bool profile = false; // also time every op of the training step (ops/profiling_backend.h)
    std::string roofline; // estimate the profiled step on this GPU (train/roofline.h); implies profile
};

struct DescribeArgs : CommonArgs {
    std::string svg;  // network diagram through graphviz
};

struct PredictArgs {
    std::string checkpoint, device = "auto";
    std::vector<std::string> images;  // PNG files (src/io/png_image.h states how they are resized)
    int top = 3;                      // classes listed per image
    int threads = 0;
};

struct ExportArgs {
    std::string checkpoint, onnx;
};

struct DataArgs {
    std::string data;
    bool download = true;
    std::string write_synthetic;  // write a full-size (50,000 + 10,000) synthetic set here
    uint64_t seed = 0;
};

struct AccuracyStats {
    int n = 0;
    double mean = 0, std = 0, min = 0, max = 0;
};
AccuracyStats accuracy_stats(const std::vector<double>& v);  // std: sample (n - 1)

Recipe resolve_recipe(const CommonArgs& a);
// storage (--storage): fp32, fp16 or bf16 (on the CPU, 16-bit is ops/storage_backend.h); "" or
// "auto": 16-bit on a GPU, as the field trains (bf16 from sm_80 on, else fp16), fp32 on the CPU
// --storage auto on a GPU of this compute capability (10 major + minor)
Storage automatic_gpu_storage(int compute_capability);
std::unique_ptr<Backend> make_backend(const std::string& device, int threads, int cuda_device = 0,
                                      const std::string& storage = "");
// The data the flags name. comm: the job's ranks, where several load it (a download then happens
// once: rank 0 first, then one rank per other host, then the rest); a collective there.
Cifar10 load_data(const CommonArgs& a, Communicator* comm = nullptr);
// --cpu-conv's choice for this process (with --deterministic: winograd unless named, not fastest)
void set_cpu_conv(const std::string& name, bool deterministic);
// A command that does not read the data: a note on stderr naming the data flags it was given
// anyway (`describe` has none of them, nor the device's)
void note_unused(const CommonArgs& a, const char* command, const char* why);
// Whether bench's 16-bit roofline halves this op's bytes and gives it the FP16 peak (an op of the
// profile: its kind, ops/forwarding_backend.h op_kind, and its name): not the optimizer's ops,
// the loss, nor the elementwise ones on fp32 parameters and logits (all but the residual add).
bool roofline_half(const std::string& kind, const std::string& op);

// The CIFAR-10 class names in label order (airplane ... truck).
extern const char* const kCifarClassNames[10];

// Class probabilities (n, num_classes) of n 8-bit RGB images (n, side, side, 3) under net (whose
// weights are loaded): the recipe's normalisation, eval-mode BN, the logits averaged over the
// recipe's test-time views exactly as Trainer::evaluate does (level 0: the image; 1: + its
// mirror; 2: + the 1-pixel translations of both, reflect-padded), then softmax.
std::vector<float> predict_probabilities(Network& net, const Recipe& r, const std::vector<uint8_t>& images, int n);

int cmd_train(const TrainArgs& a);
// Where run `seed` of `train --runs N --checkpoint FILE` (N > 1) saves: FILE with ".seed<S>"
// before its extension (run.safetensors -> run.seed3.safetensors), so that no run's weights
// overwrite another's.
std::string checkpoint_of_seed(const std::string& path, uint64_t seed);
int cmd_eval(const EvalArgs& a);
int cmd_bench(const BenchArgs& a);
int cmd_data(const DataArgs& a);
int cmd_presets();
int cmd_describe(const DescribeArgs& a);
// in infer_commands.cpp
int cmd_predict(const PredictArgs& a);
int cmd_export(const ExportArgs& a);

}  // namespace sr
