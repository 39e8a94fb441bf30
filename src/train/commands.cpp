// commands.cpp: the train / bench / data / presets subcommands (see commands.h).
#include "train/commands.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>

#include <fmt/format.h>
#include <omp.h>

#include "core/cpu_peak.h"
#include "ops/rounding_backend.h"
#include "ops/storage_backend.h"
#include "train/roofline.h"
#include "core/error.h"
#include "core/notes.h"
#include "core/version.h"
#include "dist/dist_commands.h"
#include "io/atomic_file.h"
#include "io/json_input.h"
#include "io/reports.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/forwarding_backend.h"
#include "ops/profiling_backend.h"
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <atomic>
#include <csignal>
#include <thread>
#include "optim/schedule.h"

namespace sr {
namespace {
using clock_type = std::chrono::steady_clock;
double since(clock_type::time_point t) {
    return std::chrono::duration<double>(clock_type::now() - t).count();
}
}  // namespace

AccuracyStats accuracy_stats(const std::vector<double>& v) {
    AccuracyStats s;
    s.n = int(v.size());
    if (v.empty()) return s;
    s.min = s.max = v[0];
    for (double x : v) {
        s.mean += x;
        s.min = std::min(s.min, x);
        s.max = std::max(s.max, x);
    }
    s.mean /= s.n;
    if (s.n > 1) {
        double ss = 0;
        for (double x : v) ss += (x - s.mean) * (x - s.mean);
        s.std = std::sqrt(ss / (s.n - 1));
    }
    return s;
}

Recipe resolve_recipe(const CommonArgs& a) {
    nlohmann::json j = load_recipe(a.preset, a.config).json;
    for (const auto& s : a.sets) apply_override(j, s);
    if (a.epochs >= 0) j["opt"]["epochs"] = a.epochs;
    if (a.batch_size >= 0) j["opt"]["batch_size"] = a.batch_size;
    if (a.sets.empty()) return recipe_from_json(j);
    try {
        return recipe_from_json(j);
    } catch (const Error& e) {  // the preset and --config passed alone: a --set made it wrong
        std::vector<std::string> shown;  // (each assignment at a bounded length: a value can be huge)
        for (const auto& x : a.sets) shown.push_back(x.size() <= 80 ? x : x.substr(0, 80) + "...");
        fail("--set {}: {}", fmt::join(shown, " --set "), e.what());
    }
}

// --storage "" or auto: chosen by the device (make_backend)
static bool automatic_storage(const std::string& storage) {
    return storage.empty() || storage == "auto";
}

Storage automatic_gpu_storage(int compute_capability) {
    // 16-bit activations, as the peers train; bf16 where cuDNN has bf16 convolutions (sm_80 on)
    return compute_capability >= 80 ? Storage::bf16 : Storage::f16;
}

std::unique_ptr<Backend> make_backend(const std::string& device, int threads, int cuda_device,
                                      const std::string& storage) {
    const bool automatic = automatic_storage(storage);
    Storage s = Storage::f32;
    if (!automatic && !parse_storage(storage, &s))
        fail("--storage {}: unknown format (known: auto, fp32, fp16, bf16)", storage);
    // the CPU computes in fp32; 16-bit storage there is the reference wrapper (slow)
    auto cpu = [&]() -> std::unique_ptr<Backend> {
        // (more threads than cores only wait for each other: 1000 on 2 cores took minutes a step)
        if (const unsigned cores = std::thread::hardware_concurrency(); cores > 0 && threads > int(cores))
            note("--threads {} is more than the {} cores here (slower, not faster)", threads, cores);
        if (s == Storage::f32) return make_cpu_backend(threads);
        return std::make_unique<StorageBackend>(make_cpu_backend(threads), s);
    };
    auto gpu_storage = [&] {
        return automatic ? automatic_gpu_storage(cuda_compute_capability(cuda_device)) : s;
    };
    if (device == "cpu") return cpu();
    std::string why;
    if (device == "cuda") {
        auto b = make_cuda_backend(cuda_device, &why, gpu_storage());
        if (!b) fail("--device cuda: {}", why);
        return b;
    }
    if (device != "auto") fail("--device must be auto, cpu or cuda (got '{}')", device);
    if (auto b = make_cuda_backend(cuda_device, &why, gpu_storage())) return b;
    // a GPU that is there but cannot be used (no code for it in this build, say) is worth a line;
    // no GPU at all is the plain CPU case
    if (cuda_device_count() > 0)
        fmt::print(stderr, "speedrun: not using the GPU: {}; running on the CPU\n", why);
    return cpu();
}

// --cpu-conv (and --deterministic, which needs a path that does not depend on timing)
void set_cpu_conv(const std::string& name, bool deterministic) {
    if (name.empty()) {
        cpu::set_conv_algorithm(deterministic ? cpu::ConvAlgorithm::winograd : cpu::ConvAlgorithm::fastest);
    } else if (name == "fastest") {
        if (deterministic) fail("--cpu-conv fastest times the algorithms: not with --deterministic");
        cpu::set_conv_algorithm(cpu::ConvAlgorithm::fastest);
    } else if (name == "direct") {
        cpu::set_conv_algorithm(cpu::ConvAlgorithm::direct);
    } else if (name == "winograd") {
        cpu::set_conv_algorithm(cpu::ConvAlgorithm::winograd);
    } else {
        fail("--cpu-conv must be fastest, direct or winograd (got '{}')", name);
    }
}

// A command that does not read the data: the data flags it was given anyway, named in one line,
// so that nobody thinks they took effect.
void note_unused(const CommonArgs& a, const char* command, const char* why) {
    const CommonArgs d;
    std::vector<std::string> unused;
    if (!a.data.empty()) unused.push_back("--data");
    if (a.synthetic) unused.push_back("--synthetic");
    if (a.download != d.download) unused.push_back("--no-download");
    if (!unused.empty())
        note("{} {}; {} not used", command, why, fmt::join(unused, ", "));
}

Cifar10 load_data(const CommonArgs& a, Communicator* comm) {
    if (a.synthetic && !a.data.empty()) fail("--synthetic and --data {}: choose one", a.data);
    if (a.synthetic) return make_synthetic_cifar10(10000, 2000, 1);
    if (!comm || comm->world() == 1 || !a.download || !a.data.empty()) return load_cifar10(a.data, a.download);
    // Several ranks, and the data perhaps to be downloaded: where a rank finds none, rank 0 loads
    // first (downloading it into its cache), then the first rank of each other host (whose cache
    // may be the same, on a shared home), then the rest, which find it there. Each rank
    // downloading at once fetched K copies and could trip over another's rename.
    bool found = true;
    try {
        found = !find_cifar10_dir("").empty();
    } catch (const Error&) {  // ($CIFAR10_DIR at an incomplete folder: every rank's load says so)
    }
    if (count_ranks(*comm, found) == comm->world()) return load_cifar10(a.data, true);
    Cifar10 d;
    bool loaded = false;
    const auto turn = [&](bool mine) {  // (a rank that fails ends the job: run_on_all_ranks)
        if (mine && !loaded) {
            d = load_cifar10(a.data, true);
            loaded = true;
        }
        comm->barrier();
    };
    turn(comm->rank() == 0);
    turn(comm->local_rank() == 0);
    turn(true);
    return d;
}

int cmd_presets() {
    size_t w = 0;  // the widest name, and a space
    for (const auto& name : preset_names()) w = std::max(w, name.size() + 1);
    for (const auto& name : preset_names()) {
        const Recipe r = recipe_from_json(preset_json(name));
        fmt::print("{:<{}} {}\n{:<{}} source: {}\n{:<{}} published: {}\n", name, w, r.description, "", w,
                   r.source, "", w, r.published);
    }
    return 0;
}

static void print_recipe(const Recipe& r, const Backend& b, const Cifar10& d, const TrainArgs& a,
                         int n_train, int n_test, uint64_t resumed_seed) {
    const int total = total_steps(n_train, r.batch_size, r.epochs, r.drop_last);
    const int spe = steps_per_epoch(n_train, r.batch_size, r.drop_last), rest = n_train % r.batch_size;
    fmt::print("preset        {}  ({})\n", r.name, r.source);
    fmt::print("device        {}\n", b.name());
    fmt::print("data          {}  ({} train, {} test images used)\n", d.source, n_train, n_test);
    fmt::print("epochs        {}  batch {}  steps/epoch {}{}  total steps {}\n", r.epochs, r.batch_size,
               spe, rest == 0 ? std::string()
                    : r.drop_last ? fmt::format(" (last {} images of each epoch unused)", rest)
                                  : fmt::format(" ({} x {} + 1 x {})", spe - 1, r.batch_size, rest),
               total);
    std::string widths;
    for (int w : r.net.widths) widths += fmt::format("{}{}", widths.empty() ? "" : "/", w);
    if (r.net.arch == Arch::resnet9) {
        std::string res;
        for (int l : r.net.residual) res += fmt::format("{}{}", res.empty() ? "" : ",", l);
        fmt::print("net           resnet9  widths {}  {}  residual layers {}  {} {}  BN eps {:g} momentum {:g}{}  "
                   "pool {} BN  scale {:g}\n",
                   widths,
                   r.net.whiten_kernel > 0 ? fmt::format("whiten {0}x{0} -> {1}", r.net.whiten_kernel, r.net.whiten_width())
                                           : std::string("no whitening"),
                   res.empty() ? "none" : res, activation_name(r.net.act),
                   r.net.act == Activation::celu ? fmt::format("(alpha {:g})", r.net.celu_alpha) : std::string(),
                   r.net.bn_eps, r.net.bn_momentum,
                   r.net.ghost_splits > 1 ? fmt::format("  ghost BN x{}", r.net.ghost_splits) : std::string(),
                   r.net.pool_before_norm ? "before" : "after", r.net.scaling_factor);
    } else if (r.net.arch == Arch::dawn) {
        fmt::print("net           dawn (pre-activation ResNet-18)  widths {}  {}  BN eps {:g} momentum {:g}  "
                   "BN scale init {}  max+mean pool  linear with bias  scale {:g}\n",
                   widths, activation_name(r.net.act), r.net.bn_eps, r.net.bn_momentum,
                   r.net.bn_scale_init, r.net.scaling_factor);
    } else {
        fmt::print("net           widths {}{}  whiten {}x{} -> {}  {}  BN eps {:g} momentum {:g}  scale {:g}\n",
                   widths, r.net.group_convs == 3 ? "  3 convs per group (residual)" : "",
                   r.net.whiten_kernel, r.net.whiten_kernel, r.net.whiten_width(),
                   activation_name(r.net.act), r.net.bn_eps, r.net.bn_momentum, r.net.scaling_factor);
    }
    if (r.optimizer == "muon")
        fmt::print("optimizer     Muon lr {:g} momentum {:g} ({} Newton-Schulz steps) for conv filters; "
                   "SGD Nesterov momentum {:g}, bias lr {:g}, head lr {:g}, wd {:g}  label smoothing {:g}\n",
                   r.muon.lr, r.muon.momentum, r.muon.steps, r.momentum, r.bias_lr, r.head_lr, r.wd,
                   r.label_smoothing);
    else if (r.optimizer == "nesterov")
        fmt::print("optimizer     SGD Nesterov ({})  lr {:g}  momentum {:g}  wd {:g}  "
                   "BN lr x{:g} wd {:g}  label smoothing {:g}\n",
                   r.lr_in_velocity ? "lr inside the velocity" : "PyTorch form", r.lr, r.momentum,
                   r.weight_decay, r.bias_scaler, r.bias_weight_decay, r.label_smoothing);
    else
        fmt::print("optimizer     SGD Nesterov  lr {:g}/1024  momentum {:g}  wd {:g}/1024  bias x{:g}  "
                   "label smoothing {:g}\n",
                   r.lr, r.momentum, r.weight_decay, r.bias_scaler, r.label_smoothing);
    std::string averaging = r.ema_every > 0
        ? fmt::format("EMA every {} steps, decay {:.6g} (evaluated)", r.ema_every, r.ema_decay)
        : r.lookahead_every > 0 ? fmt::format("lookahead every {} steps{}", r.lookahead_every,
                                              r.lookahead_start_epoch > 0
                                                  ? fmt::format(" from epoch {}", r.lookahead_start_epoch)
                                                  : std::string())
                                : std::string("no weight averaging");
    if (r.knots.empty()) {
        fmt::print("schedule      {:g} -> {:g} over {:.0f}% of steps -> {:g};  {}\n", r.lr_start,
                   r.lr_peak, r.warmup_frac * 100, r.lr_end, averaging);
    } else {
        std::string k;
        for (const auto& kn : r.knots) k += fmt::format("{}({:g}, {:g})", k.empty() ? "" : " ", kn[0], kn[1]);
        fmt::print("schedule      lr x linear through {} in {}s{};  {}\n", k, r.knots_unit,
                   r.knots_offset ? fmt::format(" (position = step + {})", r.knots_offset) : std::string(),
                   averaging);
    }
    fmt::print("augmentation  translate +/-{}{}{}  flip {}{}  TTA level {}{}\n", r.translate,
               r.crop == "batch" ? std::string(" (one crop per batch)") : r.crop == "image_randint" ? fmt::format(" (offsets -{}..+{})", r.translate, r.translate - 1) : std::string(),
               (r.cutout > 0 ? fmt::format("  cutout {0}x{0}", r.cutout) : std::string()) +
                   (r.cutmix > 0 ? fmt::format("  cutmix {0}x{0} from epoch {1:g}", r.cutmix, r.cutmix_from_epoch)
                                 : std::string()),
               r.flip ? (r.flip_mode == "half"     ? "a random half each epoch"
                         : r.flip_mode == "random" ? "random"
                                                   : "alternating")
                      : "off",
               r.brightness > 0 || r.contrast > 0
                   ? fmt::format("  brightness +/-{:g} contrast +/-{:g}", r.brightness, r.contrast)
                   : std::string(),
               r.tta_level,
               r.tta_select > 0 ? fmt::format(" on the {:g}% least confident", r.tta_select * 100)
                                : std::string());
    if (!a.resume.empty())  // (the seed of the run it continues)
        fmt::print("runs          1 (the checkpoint's, seed {})\n\n", resumed_seed);
    else
        fmt::print("runs          {} (seeds {}..{})\n\n", a.runs, a.seed, a.seed + a.runs - 1);
    std::fflush(stdout);
}

namespace {
std::atomic<bool> g_interrupt{false};
// The first SIGINT/SIGTERM asks the run to stop after its step (saving); a second one ends the
// program at once, as without the handler (a stop asked for during a long evaluation or save).
// A second signal within a second of the first is taken as the same stop (a launcher can deliver
// one Ctrl-C twice: the terminal's SIGINT and its own forwarded SIGTERM).
std::atomic<long long> g_first_signal_ns{0};
long long monotonic_ns() {  // (clock_gettime: async-signal-safe)
    timespec t{};
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}
extern "C" void on_signal(int sig) {
    if (g_interrupt.exchange(true)) {
        if (monotonic_ns() - g_first_signal_ns.load() < 1000000000LL) return;
        std::signal(sig, SIG_DFL);
        std::raise(sig);
        return;
    }
    g_first_signal_ns.store(monotonic_ns());
    static const char msg[] = "\nspeedrun: stopping after this step (a signal again, a second or more later, ends it at once)\n";
    [[maybe_unused]] const auto n = ::write(2, msg, sizeof msg - 1);
}
}  // namespace

// The storage to ask make_backend for: --emulate-precision rounds an fp32 run, so there the
// automatic choice is fp32 (and the RoundingBackend then says if the device is not the CPU).
static std::string emulation_storage(const std::string& storage, const std::string& emulate) {
    if (emulate.empty() || !automatic_storage(storage)) return storage;
    return "fp32";
}

// --emulate-precision FMT: base (the CPU backend) behind a RoundingBackend
// (ops/rounding_backend.h); nullptr when name is empty
static std::unique_ptr<Backend> rounding_backend(Backend& base, const std::string& name) {
    if (name.empty()) return nullptr;
    if (base.storage() != Storage::f32) fail("--emulate-precision and --storage: choose one");
    const EmulatedPrecision* p = emulated_precision(name);
    if (!p)
        fail("--emulate-precision {}: unknown format (known: {})", name,
             fmt::join(emulated_precision_names(), ", "));
    return std::make_unique<RoundingBackend>(base, *p);
}

std::string checkpoint_of_seed(const std::string& path, uint64_t seed) {
    const std::filesystem::path p(path);
    return (p.parent_path() / fmt::format("{}.seed{}{}", p.stem().string(), seed, p.extension().string())).string();
}

int cmd_train(const TrainArgs& a) {
    if (a.runs < 1) fail("--runs must be >= 1");
    if (a.checkpoint_every < 0) fail("--checkpoint-every must be >= 0");
    // (a resumed run saves to its --resume file unless --checkpoint names another)
    const bool saves = !a.checkpoint.empty() || !a.resume.empty();
    if (a.checkpoint_every > 0 && !saves) fail("--checkpoint-every needs --checkpoint FILE");
    if (a.stop_after_step >= 0 && !saves)
        fail("--stop-after-step stops as if interrupted, to resume later: it needs --checkpoint FILE (or --resume FILE)");
    std::unique_ptr<Checkpoint> resume;
    if (!a.resume.empty()) {
        if (a.runs != 1) fail("--resume continues one run: drop --runs");
        resume = std::make_unique<Checkpoint>(read_checkpoint(a.resume));
        if (a.stop_after_step >= 0 && a.stop_after_step <= resume->state.step)
            fail("--stop-after-step {}: the checkpoint {} is at step {} already (the count is the run's, "
                 "from its first step)", a.stop_after_step, a.resume, resume->state.step);
    }
    // what the run writes, checked before it starts, so that a bad path does not cost the run;
    // with several runs each saves its own checkpoint (FILE with the seed before the extension)
    for (const auto& [path, flag] : {std::pair{a.runs > 1 ? std::string() : a.checkpoint, "--checkpoint"},
                                     {a.summary_json, "--summary-json"}, {a.log, "--log"},
                                     {a.plot, "--plot"}, {a.dawnbench, "--dawnbench"}})
        if (!path.empty()) check_output_path(path, flag, std::string_view(flag) == "--log");
    if (a.checkpoint.empty() && !a.resume.empty()) check_output_path(a.resume, "--resume");  // (saved to)
    {  // no two outputs in one file (--checkpoint may be the --resume file: saved to as it goes)
        std::vector<std::pair<std::string, std::string>> outs = {
            {a.summary_json, "--summary-json"}, {a.log, "--log"}, {a.plot, "--plot"},
            {a.dawnbench, "--dawnbench"}, {a.resume, "--resume"}};
        if (a.checkpoint.empty() || a.resume.empty() || same_file_key(a.checkpoint) != same_file_key(a.resume)) {
            if (a.runs > 1 && !a.checkpoint.empty())
                for (int i = 0; i < a.runs; ++i)
                    outs.emplace_back(checkpoint_of_seed(a.checkpoint, a.seed + i), "--checkpoint");
            else
                outs.emplace_back(a.checkpoint, "--checkpoint");
        }
        check_distinct_outputs(outs);
        check_inputs_kept(outs, {{a.config, "--config"}});
    }
    if (!a.checkpoint.empty() && a.checkpoint.back() == '/')
        fail("--checkpoint {}: names a folder, not a file", a.checkpoint);
    if (a.runs > 1 && !a.checkpoint.empty())
        for (int i = 0; i < a.runs; ++i) check_output_path(checkpoint_of_seed(a.checkpoint, a.seed + i), "--checkpoint");
    if (a.no_epoch_eval && !a.plot.empty())
        fail("--plot draws each epoch's test accuracy: not with --no-epoch-eval");
    if (a.no_epoch_eval && !a.dawnbench.empty())
        fail("--dawnbench logs each epoch's test accuracy: not with --no-epoch-eval");
    if (!a.plot.empty() && !program_on_path("gnuplot"))
        fail("--plot needs gnuplot, which is not on the PATH (tools/install-deps installs it)");
    if (resume && (!a.plot.empty() || !a.dawnbench.empty()))  // (each saved epoch's accuracy is drawn)
        for (const auto& ej : resume->state.epochs)
            if (const EpochStats e = epoch_from_json(ej); e.test_acc < 0)
                fail("{} needs each epoch's test accuracy, but epoch {} of {} was not evaluated "
                     "(--no-epoch-eval)", !a.plot.empty() ? "--plot" : "--dawnbench", e.epoch, a.resume);
    if (resume) {  // the recipe is the checkpoint's; say which flags that leaves unused
        std::vector<std::string> unused;
        if (a.preset != CommonArgs{}.preset) unused.push_back("--preset");
        if (!a.config.empty()) unused.push_back("--config");
        if (!a.sets.empty()) unused.push_back("--set");
        if (a.epochs >= 0) unused.push_back("--epochs");
        if (a.batch_size >= 0) unused.push_back("--batch-size");
        if (a.seed != TrainArgs{}.seed) unused.push_back("--seed");  // (the checkpoint's run goes on)
        if (a.warmup >= 0) unused.push_back("--warmup");
        if (!unused.empty())
            note("--resume continues the recipe saved in {}; {} not used", a.resume, fmt::join(unused, ", "));
    }
    if (a.deterministic) {
        // auto is the CPU where there is no GPU
        if (a.device == "cuda" || (a.device == "auto" && cuda_device_count() > 0))
            fail("--deterministic is for the CPU (GPU convolutions pick algorithms by speed): "
                 "add --device cpu");
        omp_set_dynamic(0);
        // the same convolution paths in every process (not the faster ones timed here)
        cpu::set_conv_data_grad(cpu::ConvDataGrad::library);
    }
    set_cpu_conv(a.cpu_conv, a.deterministic);
    if (a.sync_bn && !a.distributed) fail("--sync-bn needs --distributed");
    if (a.distributed && !a.comm) return cmd_train_distributed(a);  // comes back with comm set
    // a resumed run uses the recipe saved with it
    const Recipe r = resume ? resume->recipe : resolve_recipe(a);
    auto base_backend = make_backend(a.device, a.threads, a.cuda_device,
                                     emulation_storage(a.storage, a.emulate_precision));
    const auto rounding = rounding_backend(*base_backend, a.emulate_precision);
    Backend* backend = rounding ? rounding.get() : base_backend.get();
    const auto tl = clock_type::now();
    const Cifar10 data = load_data(a, a.comm);
    const double load_s = since(tl);
    if (data.synthetic) fmt::print("note: training on SYNTHETIC data ({}), not CIFAR-10\n", data.source);
    // (the trainer checks it too, but after the set-up's tens of seconds)
    std::string fingerprint;  // (of the training images: computed once, given to the trainer)
    // a resume without --subset trains on as many images as its checkpoint was
    const int subset = resume && a.subset == 0 && resume->state.n_train < data.train.n ? resume->state.n_train
                                                                                         : a.subset;
    if (resume) {
        const int n = train_images(subset, data.train.n);
        check_resume_images(*resume, n, data.train.n);
        if (resume->state.n_train == n) {
            fingerprint = data_fingerprint(data.train.images, data.train.labels, n);
            check_resume_data(*resume, fingerprint, data.source);
        }
    }

    TrainOptions o;
    o.subset = subset;
    o.test_subset = a.test_subset;
    o.eval_each_epoch = !a.no_epoch_eval;
    o.log_path = a.log;
    o.comm = a.comm;
    o.sync_bn = a.sync_bn;
    o.checkpoint_path = a.checkpoint.empty() ? a.resume : a.checkpoint;
    o.data_fingerprint = fingerprint;
    o.checkpoint_every = a.checkpoint_every;
    o.stop_after_step = a.stop_after_step;
    o.record_epochs = !a.no_graphs;
    o.interrupt = &g_interrupt;
    const auto tu = clock_type::now();
    Trainer trainer(*backend, r, data, o);
    const double upload_s = since(tu);
    // from here on Ctrl-C finishes the step, saves and exits non-zero; during set-up (tens of
    // seconds of convolution timing on a CPU) there is nothing to save, so it stops the program
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    print_recipe(r, *backend, data, a, trainer.n_train(), trainer.n_test(), resume ? resume->state.seed : 0);
    // a short run (a quick look) whose last steps the lookahead's final copy drops would report
    // figures of fewer steps than it trained: said once (a full run drops a step or two, as the
    // peers' do)
    if (!resume)
        if (const std::string why = short_run_note(r, trainer.n_train()); !why.empty()) note("{}", why);
    // (the trainer records an epoch only where nothing between its steps needs the host)
    if (backend->device() == Device::cuda && !a.no_graphs &&
        (a.checkpoint_every > 0 || a.stop_after_step >= 0 || a.distributed))
        note("{} launches every op (no CUDA-graph replay of the epochs): time runs without it",
                   a.distributed ? "--distributed" : a.checkpoint_every > 0 ? "--checkpoint-every" : "--stop-after-step");
    fmt::print("data loading  {:.2f} s from disk; set-up {:.2f} s (buffers, conv plans, upload); "
               "neither is in the timed region\n\n",
               load_s, upload_s);

    const int warmups = resume ? 0 : a.warmup >= 0 ? a.warmup : (backend->device() == Device::cuda ? 1 : 0);
    for (int w = 0; w < warmups; ++w) {
        fmt::print("warm-up run (untimed)...\n");
        std::fflush(stdout);
        try {
            trainer.run(a.seed + 1000003ull * (w + 1), true);
        } catch (const Interrupted&) {
            std::fflush(stdout);
            fmt::print(stderr, "\nspeedrun: interrupted during the warm-up run (nothing saved)\n");
            return 130;
        }
    }
    std::vector<RunResult> results;
    // The finished runs' summary: printed, then written to --summary-json, --dawnbench (the first
    // run) and --plot. An interrupted --runs N reports the runs that finished before it, marked,
    // so that hours of finished runs are not lost with the one cut off.
    auto report = [&](bool interrupted) {
        std::vector<double> acc, acc_tta, secs;
        for (const RunResult& rr : results) {
            acc.push_back(rr.test_accuracy);
            acc_tta.push_back(rr.test_accuracy_tta);
            secs.push_back(rr.train_seconds);
        }
        const AccuracyStats s = accuracy_stats(acc_tta), s0 = accuracy_stats(acc), t = accuracy_stats(secs);
        int n94 = 0;
        for (double x : acc_tta) n94 += x >= 0.94;
        if (interrupted)
            fmt::print("summary of the {} finished run{} of {} (interrupted):\n", s.n, s.n == 1 ? "" : "s", a.runs);
        fmt::print("summary: n={}  TTA accuracy mean {:.4f} std {:.4f} min {:.4f} max {:.4f}  "
                   "(without TTA mean {:.4f});  >= 94%: {} of {}\n",
                   s.n, s.mean, s.std, s.min, s.max, s0.mean, n94, s.n);
        double eval_s = 0;
        int eval_n = 0;
        for (const auto& rr : results)
            for (const auto& e : rr.epochs)
                if (e.test_acc >= 0) eval_s += e.eval_seconds, ++eval_n;
        struct rusage ru {};
        getrusage(RUSAGE_SELF, &ru);
        const double rss_mib = ru.ru_maxrss / 1024.0;
        fmt::print("         seconds per run mean {:.3f} std {:.3f} min {:.3f} max {:.3f};  peak memory: "
                   "device {:.0f} MiB, host RSS {:.0f} MiB;  eval per epoch {:.2f} s (untimed)\n",
                   t.mean, t.std, t.min, t.max, backend->peak_bytes() / 1048576.0, rss_mib,
                   eval_n ? eval_s / eval_n : 0.0);
        if (!results.empty() && results.back().replayed_epochs > 0)
            fmt::print("         the last run replayed {} of its {} epochs as recorded steps (CUDA graphs; "
                       "--no-graphs launches every op)\n",
                       results.back().replayed_epochs, results.back().epochs.size());
        if (!results.empty() && !results.back().recording_failed.empty())
            fmt::print("         recording the epochs as CUDA graphs failed ({}); those epochs and all "
                       "later ones ran op by op\n",
                       results.back().recording_failed);
        if (!a.summary_json.empty()) {
            nlohmann::json runs = nlohmann::json::array();
            for (const auto& rr : results) {
                nlohmann::json epochs = nlohmann::json::array();
                for (const auto& e : rr.epochs) epochs.push_back(epoch_json(e));
                runs.push_back({{"seed", rr.seed}, {"test_accuracy", rr.test_accuracy},
                                {"test_accuracy_tta", rr.test_accuracy_tta},
                                {"train_seconds", rr.train_seconds}, {"step_seconds", rr.step_seconds},
                                {"images_per_second", rr.images_per_second}, {"steps", rr.steps},
                                {"replayed_epochs", rr.replayed_epochs},
                                {"recording_failed", rr.recording_failed}, {"builds", rr.builds},
                                {"epochs", epochs}});
            }
            nlohmann::json j = {
                {"program", build_json()},
                {"preset", r.name}, {"device", backend->name()}, {"data", data.source},
                {"n_train", trainer.n_train()}, {"n_test", trainer.n_test()}, {"runs", runs},
                {"accuracy_mean", s.mean}, {"accuracy_std", s.std}, {"accuracy_min", s.min},
                {"accuracy_max", s.max}, {"accuracy_no_tta_mean", s0.mean},
                {"share_at_least_94", s.n ? double(n94) / s.n : 0.0},
                {"train_seconds_mean", t.mean}, {"train_seconds_std", t.std},
                {"train_seconds_min", t.min}, {"train_seconds_max", t.max},
                {"data_load_seconds", load_s}, {"peak_device_bytes", backend->peak_bytes()},
                {"peak_host_rss_mib", rss_mib},
                // (an interrupted --runs N: the finished runs, fewer than asked for)
                {"runs_requested", a.runs}, {"interrupted", interrupted},
                {"recipe", recipe_to_json(r)}};
            write_file_atomic(a.summary_json, json_text(j, 2) + "\n");
            fmt::print("summary written to {}\n", a.summary_json);
        }
        // (after the summary: a plot that fails leaves the numbers written)
        if (!a.dawnbench.empty()) {
            write_file_atomic(a.dawnbench, dawnbench_tsv(results.front()));
            fmt::print("DAWNBench log written to {}\n", a.dawnbench);
        }
        if (!a.plot.empty()) {
            plot_runs(a.plot, results, fmt::format("{} on {} ({})", r.name, backend->name(), data.source));
            fmt::print("plot written to {}\n", a.plot);
        }
    };
    // the finished runs whose checkpoint could not be written, named again after the figures
    auto checkpoint_errors = [&] {
        bool any = false;
        for (const RunResult& rr : results)
            if (!rr.checkpoint_error.empty()) {
                fmt::print(stderr, "speedrun: error: the checkpoint of the run with seed {} was not written: {}\n",
                           rr.seed, rr.checkpoint_error);
                any = true;
            }
        return any;
    };
    // a --runs N that ends before its last run: the finished runs reported (a failing plot or
    // summary does not change the exit status, which is the cause's)
    auto finish_early = [&] {
        if (!results.empty()) {
            try {
                report(true);
            } catch (const std::exception& x) {
                fmt::print(stderr, "speedrun: {}\n", x.what());
            }
        }
        checkpoint_errors();
    };
    // runs next.. (0-based) of --runs N did not start: named, with the flags that train them
    auto not_started = [&](int next) {
        const int left = a.runs - next;
        if (left <= 0) return;
        const uint64_t seed = a.seed + uint64_t(next);
        const auto span = [&](uint64_t first) {
            return left == 1 ? fmt::format(" {}", first) : fmt::format("s {}-{}", first, first + left - 1);
        };
        // (one run saves to --checkpoint's FILE itself, not to FILE.seed<S>)
        const std::string keep = a.checkpoint.empty() || left > 1
            ? std::string() : " --checkpoint " + checkpoint_of_seed(a.checkpoint, seed);
        fmt::print(stderr, "speedrun: run{} of {} (seed{}) did not start; to train {}: --seed {} --runs {}{}\n",
                   span(uint64_t(next) + 1), a.runs, span(seed), left == 1 ? "it" : "them", seed, left, keep);
    };
    for (int i = 0; i < a.runs; ++i) {
        if (a.runs > 1) fmt::print("run {} of {} (seed {})\n", i + 1, a.runs, a.seed + i);
        if (a.runs > 1 && !a.checkpoint.empty()) trainer.set_checkpoint_path(checkpoint_of_seed(a.checkpoint, a.seed + i));
        try {
            results.push_back(trainer.run(a.seed + i, false, resume.get()));
        } catch (const Interrupted& e) {
            std::fflush(stdout);
            fmt::print(stderr, "\nspeedrun: interrupted: {}\n", e.what());
            // (--resume continues this one run only; without a checkpoint nothing of it was kept)
            if (a.runs > 1 && a.checkpoint.empty())
                fmt::print(stderr, "speedrun: run {} of {} (seed {}) was cut off with nothing saved (no "
                           "--checkpoint); to train it again: --seed {} --runs 1\n", i + 1, a.runs,
                           a.seed + i, a.seed + i);
            not_started(i + 1);
            finish_early();
            return 130;
        } catch (const Error& e) {  // (a run that fails after others finished: they are reported)
            if (results.empty()) throw;
            std::fflush(stdout);
            fmt::print(stderr, "\nspeedrun: error: run {} of {} (seed {}): {}\n", i + 1, a.runs, a.seed + i, e.what());
            not_started(i + 1);
            finish_early();
            // An error of one rank (rank 0's checkpoint or log write, a rank whose own loss
            // sums overflow first) leaves the others in the run's next collective: the job is
            // ended (run_on_all_ranks aborts it), not this rank alone, which would wait for
            // them in MPI_Finalize while they wait for it
            if (a.comm && a.comm->world() > 1) throw;
            return 1;
        }
        fmt::print("\n");
        // a signal during the run's last evaluation (no step left to stop after): the run is
        // whole; the runs after it do not start. Under MPI every rank decides alike (only rank 0
        // evaluates: the others would already be in the next run's collectives)
        bool signalled = g_interrupt.load();
        if (a.comm && a.comm->world() > 1) {
            float any = signalled ? 1.f : 0.f;
            a.comm->allreduce_sum(&any, 1);
            signalled = any > 0;
        }
        if (signalled) {
            std::fflush(stdout);
            fmt::print(stderr, "speedrun: interrupted during run {}'s final evaluation; that run finished\n", i + 1);
            if (i + 1 < a.runs) {
                not_started(i + 1);
                finish_early();
                return 130;
            }
        }
    }
    report(false);
    // (after the figures: a checkpoint that could not be written does not take them along)
    return checkpoint_errors() ? 1 : 0;
}

int cmd_eval(const EvalArgs& a) {
    const Checkpoint c = read_checkpoint(a.checkpoint);
    auto base_backend = make_backend(a.device, a.threads, 0, emulation_storage("", a.emulate_precision));
    const auto rounding = rounding_backend(*base_backend, a.emulate_precision);
    Backend* backend = rounding ? rounding.get() : base_backend.get();
    CommonArgs ca;
    ca.data = a.data;
    ca.download = a.download;
    ca.synthetic = a.synthetic;
    const Cifar10 data = load_data(ca);
    // a checkpoint trained on other data (a synthetic set) scores on this test set all the same:
    // said, since the figure then measures that
    if (const RunState& st = c.state; !st.data_fingerprint.empty() &&
        (st.n_train > data.train.n || data_fingerprint(data.train.images, data.train.labels, st.n_train) != st.data_fingerprint))
        note("the checkpoint was trained on other images ({}) than this data's ({}); it is evaluated on "
             "this data's test set",
                   st.data_source.empty() ? std::string("unnamed") : st.data_source, data.source);
    TrainOptions o;
    o.test_subset = a.test_subset;
    o.subset = c.state.n_train;  // (the trainer checks the training set's size; nothing more)
    o.evaluate_only = true;
    Recipe r = c.recipe;
    r.batch_size = std::min(r.batch_size, std::min(data.train.n, o.subset));
    Trainer t(*backend, r, data, o);
    load_network(c, t.network(), false);
    if (rounding) fmt::print("device {}\n", backend->name());
    const double acc = t.evaluate(0), acc_tta = t.evaluate(r.tta_level);
    // (an interrupted run's checkpoint: its weights are not the run's final ones)
    const int run_steps = total_steps(c.state.n_train, c.recipe.batch_size, c.recipe.epochs, c.recipe.drop_last);
    fmt::print("checkpoint {} (preset {}, seed {}, step {}{}; {})\n", a.checkpoint, r.name, c.state.seed,
               c.state.step,
               run_steps <= 0 ? std::string()
                              : fmt::format(" of {}{}", run_steps, c.state.step < run_steps ? ", an unfinished run's" : ""),
               c.state.builds.empty()
                   ? std::string("written before checkpoints named their builds")
                   : fmt::format("trained by build {}", fmt::join(c.state.builds, " then ")));
    fmt::print("test accuracy {:.4f} without TTA, {:.4f} with TTA level {} ({} images, {})\n", acc, acc_tta,
               r.tta_level, t.n_test(), data.source);
    return 0;
}

int cmd_describe(const DescribeArgs& a) {
    const Recipe r = resolve_recipe(a);
    check_inputs_kept({{a.svg, "--svg"}}, {{a.config, "--config"}});
    if (!a.svg.empty()) check_output_path(a.svg, "--svg");
    // (the figures are those of a full run: 50,000 training images)
    if (r.batch_size > 50000)
        fail("batch size {} is larger than CIFAR-10's training set (50,000 images)", r.batch_size);
    auto b = make_cpu_backend(1);
    Network net(*b, r.net);
    fmt::print("preset {}: {}\n  source: {}\n  published: {}\n\n", r.name, r.description, r.source, r.published);
    fmt::print("{:<28} {:<18} {:>10}  {}\n", "tensor", "shape", "values", "optimizer group");
    static const char* group_names[] = {"whitening bias (first steps)", "weights", "BN biases",
                                        "BN scales", "frozen", "BN running statistics"};
    for (const auto& t : net.tensors())
        fmt::print("{:<28} {:<18} {:>10}  {}\n", t.name, fmt::format("{}", fmt::join(t.shape, "x")), t.count,
                   group_names[int(t.group)]);
    const double f = net.flops_per_image_forward();
    const long images = images_in_run(50000, r.batch_size, r.epochs, r.drop_last);
    // the final evaluation's forwards as Trainer::evaluate makes them, whole batches included
    const double views = double(eval_forwards(r, 10000, eval_batch_size(r, 10000, r.batch_size))) / 10000;
    fmt::print("\nlearnable parameters  {}\n", net.learnable_count());
    fmt::print("forward FLOPs/image   {:.3f} GFLOP (convolutions and head; multiply-add = 2)\n", f * 1e-9);
    fmt::print("one full run          {:.3f} PFLOP ({} steps: {} training images x 3 x forward, + the final evaluation's {:g} forwards per test image ({}), whole batches counted, x 10,000)\n",
               (3.0 * f * double(images) + f * views * 10000.0) * 1e-15,
               total_steps(50000, r.batch_size, r.epochs, r.drop_last), images, views,
               r.tta_level == 0 ? std::string("no TTA") : fmt::format("TTA level {}", r.tta_level));
    if (!a.svg.empty()) {
        write_svg(a.svg, network_dot(r.net));
        fmt::print("diagram written to {}\n", a.svg);
    }
    return 0;
}

// Whether 16-bit storage (--storage fp16|bf16 on a GPU) halves an op's bytes and gives it the
// FP16 peak: it stores activations and their gradients in 16 bits. The optimizer's ops (fp32
// weights and state; Muon's products in TF32), the loss (fp32 logits and their gradient) and the
// elementwise ones on parameters and logits
// (axpy, scale: Muon's steps, the EMA, TTA's sums) stay fp32; the residual add is the one
// elementwise op on activations.
bool roofline_half(const std::string& kind, const std::string& op) {
    if (kind == op_kind::opt || kind == op_kind::loss) return false;  // (the loss: fp32 logits)
    if (kind == op_kind::elt) return op.rfind("residual add", 0) == 0;
    return true;
}

// Runs `steps` training steps with every op timed and prints where the time goes, by kind and
// by op (the 20 slowest); returns the same as JSON.
// The profiled step's ops on a GPU by the roofline model (train/roofline.h), per kind, with fp32
// and with 16-bit storage; returns the two step estimates in seconds.
static std::pair<double, double> print_roofline(const std::vector<OpTime>& kinds, const std::vector<OpTime>& ops,
                                                int steps, const RooflineDevice& d, nlohmann::json& j) {
    const RooflineAssumptions a;
    fmt::print("\nroofline      the same step estimated on an {} (datasheet dense peaks: TF32 {:.0f}, "
               "FP16 {:.0f} TFLOP/s, {:.2f} TB/s;\n              compute-bound ops at {:.0f}% of the "
               "peak, the rest at {:.0f}% of the bandwidth, {:.0f} us per op launched;\n"
               "              16-bit: the FP16 peak and half the bytes, except the optimizer, the loss and\n"
               "              the elementwise ops on fp32 weights and logits, fp32 as on the GPU)\n",
               d.name, d.tf32_tflops, d.fp16_tflops, d.bandwidth_tbs, 100 * a.compute_eff,
               100 * a.memory_eff, a.launch_us);
    fmt::print("  {:<14} {:>7} {:>12} {:>12} {:>12}\n", "kind", "calls", "measured ms", "est. fp32 ms",
               "est. 16-bit ms");
    double t32 = 0, t16 = 0;
    nlohmann::json rows = nlohmann::json::array();
    for (const OpTime& k : kinds) {
        // each op (one name: one shape) bound by its own compute or memory time, then summed: a
        // kind's totals would hide its memory-bound ops behind its compute-bound ones
        double s32 = 0, s16 = 0;
        for (const OpTime& o : ops)
            if (o.kind == k.name) {
                s32 += roofline_seconds(o.flops, o.bytes, double(o.calls), d, false, a) / steps;
                s16 += roofline_seconds(o.flops, o.bytes, double(o.calls), d, roofline_half(o.kind, o.name), a) / steps;
            }
        t32 += s32;
        t16 += s16;
        fmt::print("  {:<14} {:7.1f} {:12.3f} {:12.4f} {:12.4f}\n", k.name, double(k.calls) / steps,
                   k.seconds / steps * 1e3, s32 * 1e3, s16 * 1e3);
        rows.push_back({{"kind", k.name}, {"fp32_ms", s32 * 1e3}, {"half_ms", s16 * 1e3}});
    }
    fmt::print("  {:<14} {:>7} {:>12} {:12.4f} {:12.4f}\n", "step", "", "", t32 * 1e3, t16 * 1e3);
    j = {{"device", d.name}, {"compute_eff", a.compute_eff}, {"memory_eff", a.memory_eff},
         {"launch_us", a.launch_us}, {"kinds", rows}, {"step_ms_fp32", t32 * 1e3},
         {"step_ms_half", t16 * 1e3}};
    return {t32, t16};
}

static nlohmann::json profile_training_step(ProfilingBackend& prof, int steps,
                                            const std::function<void()>& step,
                                            const RooflineDevice* roof = nullptr,
                                            std::pair<double, double>* roof_step = nullptr) {
    prof.synchronize();
    prof.enable(true);
    for (int i = 0; i < steps; ++i) step();
    prof.enable(false);
    const std::vector<OpTime> ops = prof.collect();  // waits for the timed work
    const std::vector<OpTime> kinds = by_kind(ops);
    double total = 0;
    for (const OpTime& k : kinds) total += k.seconds;
    nlohmann::json j = {{"steps", steps}, {"ms_per_step", total / steps * 1e3}};
    auto row = [&](const OpTime& o, int width) {
        const std::string rate = o.flops > 0 ? fmt::format("{:9.1f}", o.flops / o.seconds * 1e-9)
                                             : std::string(9, ' ');
        const std::string bw = o.bytes > 0 ? fmt::format("{:8.1f}", o.bytes / o.seconds * 1e-9)
                                           : std::string(8, ' ');
        fmt::print("  {:<{}} {:7.1f} {:9.3f} {:6.1f}% {} {}\n", o.name, width, double(o.calls) / steps,
                   o.seconds / steps * 1e3, 100 * o.seconds / total, rate, bw);
        return nlohmann::json{{"name", o.name}, {"kind", o.kind}, {"calls_per_step", double(o.calls) / steps},
                              {"ms_per_step", o.seconds / steps * 1e3}, {"share", o.seconds / total},
                              {"gflop_per_step", o.flops / steps * 1e-9}, {"mb_per_step", o.bytes / steps * 1e-6},
                              {"gflops", o.flops > 0 ? o.flops / o.seconds * 1e-9 : 0.0},
                              {"gb_per_s", o.bytes > 0 ? o.bytes / o.seconds * 1e-9 : 0.0}};
    };
    fmt::print("\nprofile       one training step with its data, every op timed (mean of {} steps; "
               "device timers, no waits between ops): {:.2f} ms\n", steps, total / steps * 1e3);
    fmt::print("  {:<14} {:>7} {:>9} {:>7} {:>9} {:>8}\n", "kind", "calls", "ms", "share", "GFLOP/s", "GB/s");
    for (const OpTime& k : kinds) j["kinds"].push_back(row(k, 14));
    const size_t top = std::min<size_t>(ops.size(), 20);
    fmt::print("  {:<44} {:>7} {:>9} {:>7} {:>9} {:>8}   ({} slowest of {} ops and shapes)\n", "op",
               "calls", "ms", "share", "GFLOP/s", "GB/s", top, ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
        if (i < top) j["ops"].push_back(row(ops[i], 44));
        else j["ops"].push_back(nlohmann::json{{"name", ops[i].name}, {"kind", ops[i].kind},
                                               {"calls_per_step", double(ops[i].calls) / steps},
                                               {"ms_per_step", ops[i].seconds / steps * 1e3},
                                               {"gflop_per_step", ops[i].flops / steps * 1e-9},
                                               {"mb_per_step", ops[i].bytes / steps * 1e-6}});
    }
    fmt::print("  (GB/s: the fp32 tensors each op must read and write at least once, over its time{})\n",
               prof.storage() == Storage::f32 ? "" : "; 16-bit storage moves half those bytes");
    if (roof) {
        nlohmann::json rj;
        const auto t = print_roofline(kinds, ops, steps, *roof, rj);
        if (roof_step) *roof_step = t;
        j["roofline"] = rj;
    }
    return j;
}

int cmd_bench(const BenchArgs& a) {
    if (a.steps < 1) fail("--steps must be >= 1 (got {})", a.steps);
    check_inputs_kept({{a.json, "--json"}}, {{a.config, "--config"}});
    if (!a.json.empty()) check_output_path(a.json, "--json");
    note_unused(a, "bench", "times the ops on random inputs");
    const Recipe r = resolve_recipe(a);
    set_cpu_conv(a.cpu_conv, false);
    auto backend = make_backend(a.device, a.threads, 0, a.storage);
    // --profile: every op goes through a timing wrapper, made before the network so that its
    // convolutions are wrapped too (it times nothing until enabled below)
    const RooflineDevice* roof = nullptr;
    if (!a.roofline.empty()) {
        roof = roofline_device(a.roofline);
        if (!roof)
            fail("--roofline {}: unknown device (known: {})", a.roofline,
                 fmt::join(roofline_device_names(), ", "));
    }
    auto prof = a.profile || roof ? std::make_unique<ProfilingBackend>(*backend) : nullptr;
    Backend& b = prof ? *prof : *backend;
    const int B = r.batch_size, side = r.net.image_side, O = r.net.num_classes;
    fmt::print("bench: preset {}, batch {}, device {}\n", r.name, B, b.name());
    const CpuPeak cpu_peak_before = b.device() == Device::cpu ? measure_cpu_peak(a.threads) : CpuPeak{};
    fmt::print("(random inputs: the speed of these ops does not depend on pixel values)\n");

    Network net(b, r.net);
    Rng rng(1);
    net.init(rng);
    Workspace ws(net, B);
    Optimizer opt(net, r);
    std::vector<float> x(size_t(B) * side * side * 3);
    for (auto& v : x) v = rng.normal();
    std::vector<int32_t> y(B);
    for (auto& v : y) v = int32_t(rng.below(uint32_t(O)));
    DeviceBuffer<float> xd(b, x.size()), stats(b, 2);
    DeviceBuffer<int32_t> yd(b, y.size());
    upload_activations(b, xd.get(), x.data(), x.size());
    b.upload(yd.get(), y.data(), y.size() * sizeof(int32_t));

    const int spe = steps_per_epoch(50000, B, r.drop_last);
    const int total = total_steps(50000, B, r.epochs, r.drop_last);
    // The steps that train the whitening bias (as the trainer counts them) take one more backward
    // pass (the first group's input gradient). The step timed is the one most of the run takes:
    // without it, unless every step trains the bias; the others' extra backward time is timed
    // apart and added to the estimate.
    const bool has_whiten_bias = r.net.arch == Arch::airbench && r.net.whiten_kernel > 0;
    const int whiten_steps =
        has_whiten_bias ? std::min(total, whiten_bias_steps(spe, r.whiten_bias_epochs)) : 0;
    const bool wb = whiten_steps >= total && total > 0;
    auto forward_loss = [&] {  // the training forward and the loss's gradient, as a step makes them
        const float* logits = ws.forward(xd.get(), true);
        b.cross_entropy(ws.dlogits(), stats.get(), logits, yd.get(), B, O, r.label_smoothing);
    };
    double t_fwd = 0, t_bwd = 0, t_opt = 0;
    for (int i = -1; i < a.steps; ++i) {  // step -1 is the warm-up
        b.synchronize();
        auto t0 = clock_type::now();
        forward_loss();
        b.synchronize();
        auto t1 = clock_type::now();
        ws.backward(ws.dlogits(), wb);
        b.synchronize();
        auto t2 = clock_type::now();
        // an early step of a long run: every group but the whitening bias trains, unless every
        // step trains it (epoch-based schedules: the preset's steps per epoch on the full set)
        opt.step(std::max(i, 0), 1000, wb ? 1000 : 0, spe);
        b.synchronize();
        auto t3 = clock_type::now();
        if (i >= 0) {
            t_fwd += std::chrono::duration<double>(t1 - t0).count();
            t_bwd += std::chrono::duration<double>(t2 - t1).count();
            t_opt += std::chrono::duration<double>(t3 - t2).count();
        }
    }
    const double step = (t_fwd + t_bwd + t_opt) / a.steps;
    // the backward of a step that trains the whitening bias, where the step above does not
    double t_bwd_wb = 0;
    if (whiten_steps > 0 && !wb) {
        for (int i = -1; i < a.steps; ++i) {
            forward_loss();
            b.synchronize();
            auto t1 = clock_type::now();
            ws.backward(ws.dlogits(), true);
            b.synchronize();
            if (i >= 0) t_bwd_wb += since(t1);
        }
        t_bwd_wb /= a.steps;
    }
    const double wb_extra = whiten_steps > 0 && !wb ? std::max(0.0, t_bwd_wb - t_bwd / a.steps) : 0.0;
    const double fwd_flop = net.flops_per_image_forward();
    const double step_flop = ws.flops_per_step(wb), step_flop_wb = ws.flops_per_step(true);
    const double gflops = step_flop / step * 1e-9;

    // TTA inference (level of the recipe: 6 views at level 2) in the batches of the final
    // evaluation (eval_batch_size over 10,000 test images: the training batch unless another
    // saves over 5% of the forwards), in a
    // forward-only workspace as the trainer's where that is not the training batch
    const int views = int(tta_views(r, r.tta_level).size());
    const int Be = eval_batch_size(r, 10000, B);
    std::unique_ptr<Workspace> ws_eval_own = Be == B ? nullptr : std::make_unique<Workspace>(net, Be, false);
    Workspace& ws_eval = ws_eval_own ? *ws_eval_own : ws;
    const int n_eval = a.eval_images > 0 ? a.eval_images : Be;
    const int chunks = std::max(1, n_eval / Be);
    ws_eval.forward(xd.get(), false);  // (a first call of a new workspace's convolutions)
    b.synchronize();
    auto te = clock_type::now();
    for (int c = 0; c < chunks; ++c)
        for (int v = 0; v < views; ++v) ws_eval.forward(xd.get(), false);
    b.synchronize();
    const double t_eval = since(te);
    const double eval_ips = double(chunks) * Be / t_eval;  // images given every view
    const double eval_gflops = double(chunks) * Be * views * fwd_flop / t_eval * 1e-9;
    // the final evaluation's seconds: its forwards (selective TTA: one plain pass for all, the
    // views for a share) at the rate measured
    const double t_final_eval = double(eval_forwards(r, 10000, Be)) / (eval_ips * views);

    // data and augmentation of one training batch, as the trainer does it before each step:
    // crops at random shifts (with flips) from the padded images, then the recipe's colour
    // jitter, cutout and cutmix
    const int pad = r.translate, Hp = side + 2 * pad;
    const bool jitter = r.brightness > 0 || r.contrast > 0;
    std::vector<uint8_t> raw(size_t(B) * side * side * 3), flips(static_cast<size_t>(B)), pos(size_t(2) * B);
    std::vector<int32_t> idx(static_cast<size_t>(B)), partner(static_cast<size_t>(B));
    std::vector<int8_t> shifts(size_t(2) * B);
    std::vector<float> jit(size_t(2) * B);
    for (auto& v : raw) v = uint8_t(rng.below(256));
    for (int i = 0; i < B; ++i) {
        idx[size_t(i)] = int32_t(rng.below(uint32_t(B)));
        partner[size_t(i)] = int32_t(rng.below(uint32_t(B)));
        flips[size_t(i)] = uint8_t(rng.below(2));
        for (int k = 0; k < 2; ++k) {
            shifts[size_t(2 * i + k)] = int8_t(int(rng.below(uint32_t(2 * pad + 1))) - pad);
            pos[size_t(2 * i + k)] = uint8_t(rng.below(uint32_t(side / 2)));
        }
        jit[size_t(i)] = float(rng.uniform() * 0.2 - 0.1);
        jit[size_t(B + i)] = float(1 + rng.uniform() * 0.2 - 0.1);
    }
    DeviceBuffer<uint8_t> raw_d(b, raw.size()), flips_d(b, flips.size()), pos_d(b, pos.size());
    DeviceBuffer<int32_t> idx_d(b, idx.size()), partner_d(b, partner.size());
    DeviceBuffer<int8_t> shifts_d(b, shifts.size());
    DeviceBuffer<float> jit_d(b, jit.size()), padded(b, size_t(B) * Hp * Hp * 3),
        batch(b, size_t(B) * side * side * 3), mix_src(b, r.cutmix > 0 ? batch.size() : 1);
    b.upload(raw_d.get(), raw.data(), raw.size());
    b.upload(flips_d.get(), flips.data(), flips.size());
    b.upload(pos_d.get(), pos.data(), pos.size());
    b.upload(idx_d.get(), idx.data(), idx.size() * sizeof(int32_t));
    b.upload(partner_d.get(), partner.data(), partner.size() * sizeof(int32_t));
    b.upload(shifts_d.get(), shifts.data(), shifts.size());
    b.upload(jit_d.get(), jit.data(), jit.size() * sizeof(float));
    b.normalize_pad(padded.get(), raw_d.get(), B, side, side, r.mean.data(), r.std.data(), pad);
    auto data_step = [&] {
        b.gather_crops(batch.get(), padded.get(), side, side, pad, B, idx_d.get(), 0, shifts_d.get(),
                       0, 0, flips_d.get(), 0);
        if (jitter) b.brightness_contrast(batch.get(), jit_d.get(), jit_d.get() + B, B, size_t(side) * side * 3);
        if (r.cutout > 0) b.cutout(batch.get(), pos_d.get(), B, side, side, 3, r.cutout);
        if (r.cutmix > 0) {  // the partners' crops, then row b's square into row b (trainer.cpp)
            b.gather_crops(mix_src.get(), padded.get(), side, side, pad, B, partner_d.get(), 0,
                           shifts_d.get(), 0, 0, flips_d.get(), 0);
            b.cutmix(batch.get(), mix_src.get(), pos_d.get(), B, side, side, 3, r.cutmix);
        }
    };
    data_step();  // warm-up
    b.synchronize();
    const auto td = clock_type::now();
    for (int i = 0; i < a.steps; ++i) data_step();
    b.synchronize();
    const double t_data = since(td) / a.steps;
    std::string augs = "crop + flip";
    if (jitter) augs += " + colour jitter";
    if (r.cutout > 0) augs += " + cutout";
    if (r.cutmix > 0) augs += " + cutmix";

    fmt::print("\nnetwork       {:.3f} GFLOP per image forward, {:.1f} GFLOP per training step "
               "(the convolutions' directions it runs and the head)\n",
               fwd_flop * 1e-9, step_flop * 1e-9);
    if (whiten_steps > 0 && !wb)
        fmt::print("              {} of the run's {} steps also train the whitening bias: {:.1f} GFLOP, "
                   "backward {:.1f} ms (+{:.1f})\n",
                   whiten_steps, total, step_flop_wb * 1e-9, t_bwd_wb * 1e3, wb_extra * 1e3);
    fmt::print("data          {:.2f} ms per batch ({}; before each step)\n", t_data * 1e3, augs);
    fmt::print("train step    {:.1f} ms  (forward+loss {:.1f}, backward {:.1f}, optimizer {:.1f}) "
               "over {} steps\n",
               step * 1e3, t_fwd / a.steps * 1e3, t_bwd / a.steps * 1e3, t_opt / a.steps * 1e3, a.steps);
    fmt::print("              {:.0f} images/s, {:.1f} GFLOP/s\n", B / step, gflops);
    fmt::print("TTA inference {:.0f} images/s ({} views each, batches of {}), {:.1f} GFLOP/s\n", eval_ips,
               views, Be, eval_gflops);
    nlohmann::json j = {{"program", build_json()}, {"preset", r.name}, {"device", b.name()}, {"batch_size", B},
                        {"gflop_per_image_forward", fwd_flop * 1e-9}, {"gflop_per_step", step_flop * 1e-9},
                        {"steps_timed", a.steps}, {"total_steps", total},
                        {"whiten_bias_steps", whiten_steps},
                        {"whiten_bias_step_extra_ms", wb_extra * 1e3},
                        {"step_ms", step * 1e3}, {"forward_ms", t_fwd / a.steps * 1e3},
                        {"backward_ms", t_bwd / a.steps * 1e3}, {"optimizer_ms", t_opt / a.steps * 1e3},
                        {"data_ms", t_data * 1e3},
                        {"train_images_per_second", B / step}, {"train_gflops", gflops},
                        {"tta_images_per_second", eval_ips}, {"tta_views", views},
                        {"eval_batch_size", Be}, {"final_eval_seconds", t_final_eval},
                        {"peak_device_bytes", b.peak_bytes()}};
    // (a drop_last=false epoch's smaller last step is counted by its images)
    const double steps_in_run = double(images_in_run(50000, B, r.epochs, r.drop_last)) / B;
    const double est = steps_in_run * (step + t_data) + whiten_steps * wb_extra + t_final_eval;
    fmt::print("estimate      full run ({} steps with their data{}, + TTA on 10,000 images): {:.1f} s\n",
               total, whiten_steps > 0 && !wb ? fmt::format(" ({} also training the whitening bias)", whiten_steps) : "",
               est);
    j["full_run_estimate_seconds"] = est;
    j["steps_in_run"] = steps_in_run;  // (by images: a drop_last=false epoch's last step a fraction)
    if (b.device() == Device::cpu) {
        // measured before the timings and after them, the faster kept: a machine whose speed
        // changed meanwhile (other load, a shared host) is said, since the shares then mislead
        const CpuPeak after = measure_cpu_peak(a.threads);
        const CpuPeak peak = after.gflops >= cpu_peak_before.gflops ? after : cpu_peak_before;
        fmt::print("CPU peak      {:.1f} GFLOP/s measured ({} FMA chains, {} threads): training "
                   "reaches {:.0f}% of it, TTA inference {:.0f}%\n",
                   peak.gflops, peak.isa, peak.threads, 100 * gflops / peak.gflops,
                   100 * eval_gflops / peak.gflops);
        if (std::min(after.gflops, cpu_peak_before.gflops) < 0.9 * peak.gflops)
            fmt::print("              (the peak measured {:.1f} GFLOP/s before the timings and {:.1f} after: "
                       "the CPU was shared or throttled meanwhile; the figures above are uncertain)\n",
                       cpu_peak_before.gflops, after.gflops);
        j["cpu_peak_gflops_before"] = cpu_peak_before.gflops;
        j["cpu_peak_gflops_after"] = after.gflops;
        // (not the FMA units' utilisation where Winograd runs: an effective rate)
        if (a.cpu_conv != "direct")
            fmt::print("              (FLOPs counted as direct convolutions'; oneDNN's Winograd convolutions, "
                       "used unless direct is timed clearly faster (--cpu-conv), do about a quarter of "
                       "the multiplications: an effective rate)\n");
        j["cpu_peak_gflops"] = peak.gflops;
        j["flops_counted_as"] = "direct convolution";
        j["tta_share_of_peak"] = eval_gflops / peak.gflops;
        j["cpu_isa"] = peak.isa;
        j["train_share_of_peak"] = gflops / peak.gflops;
    }
    // The GPU's measured matrix-multiply peak in the precision its convolutions run in: TF32
    // with fp32 storage, FP16 with 16-bit storage (bf16's dense peak is FP16's).
    double peak_gflops = 0;
    const char* peak_name = b.storage() == Storage::f32 ? "TF32" : "FP16";
    if (b.device() != Device::cpu) {
        const GemmPeak peak = b.measure_gemm_peak();
        peak_gflops = b.storage() == Storage::f32 ? peak.tf32_gflops : peak.fp16_gflops;
        if (peak_gflops > 0) {
            fmt::print("device peak   {:.0f} TFLOP/s TF32, {:.0f} TFLOP/s FP16 (cuBLAS 8192^3, measured): "
                       "training reaches {:.1f}% of the {} figure, TTA inference {:.1f}%\n",
                       peak.tf32_gflops * 1e-3, peak.fp16_gflops * 1e-3, 100 * gflops / peak_gflops,
                       peak_name, 100 * eval_gflops / peak_gflops);
            j["device_peak_tf32_tflops"] = peak.tf32_gflops * 1e-3;
            j["device_peak_fp16_tflops"] = peak.fp16_gflops * 1e-3;
            j["share_of_peak_of"] = peak_name;
            j["train_share_of_peak"] = gflops / peak_gflops;
            j["tta_share_of_peak"] = eval_gflops / peak_gflops;
        }
    }
    // The whole training step recorded once (a CUDA graph) and replayed: how many kernels one
    // step launches, and the step time without per-launch host overhead. Replays repeat the
    // recorded scalars (the lr of one step): right for timing, not for training.
    if (b.begin_recording()) {
        std::string why;
        std::unique_ptr<Recording> rec;
        try {
            forward_loss();
            ws.backward(ws.dlogits(), wb);
            opt.step(1, 1000, wb ? 1000 : 0, spe);
        } catch (const std::exception& e) {
            why = e.what();
        }
        auto ended = b.end_recording(why.empty() ? &why : nullptr);
        if (why.empty()) rec = std::move(ended);
        if (rec) {
            auto timer = b.make_timer();
            rec->replay();  // warm-up
            timer->start();
            const int reps = std::max(a.steps, 5);
            for (int i = 0; i < reps; ++i) rec->replay();
            const double t_graph = timer->stop_seconds() / reps;
            fmt::print("recorded step {} kernels ({} graph nodes) per training step; replayed: {:.2f} ms "
                       "per step ({:.0f} images/s, {:.1f} GFLOP/s), eager {:.2f} ms\n",
                       rec->kernel_count(), rec->node_count(), t_graph * 1e3, B / t_graph,
                       step_flop / t_graph * 1e-9, step * 1e3);
            // the run as the trainer runs it: the steps replayed (the data kernels timed eagerly)
            const double est_graph = steps_in_run * (t_graph + t_data) + whiten_steps * wb_extra + t_final_eval;
            fmt::print("              full run with the steps replayed (the data's kernels timed eagerly, "
                       "as above): {:.2f} s\n",
                       est_graph);
            j["kernels_per_step"] = rec->kernel_count();
            j["graph_nodes_per_step"] = rec->node_count();
            j["graph_step_ms"] = t_graph * 1e3;
            j["full_run_estimate_graph_seconds"] = est_graph;
            if (peak_gflops > 0) {
                fmt::print("              replayed step: {:.1f}% of the {} peak\n",
                           100 * step_flop / t_graph * 1e-9 / peak_gflops, peak_name);
                j["graph_step_share_of_peak"] = step_flop / t_graph * 1e-9 / peak_gflops;
            }
        } else {
            fmt::print("recorded step failed: {}\n", why);
            j["graph_error"] = why;
        }
    }
    std::pair<double, double> roof_step{0, 0};
    if (prof) j["profile"] = profile_training_step(*prof, a.steps, [&] {
        data_step();
        forward_loss();
        ws.backward(ws.dlogits(), wb);
        opt.step(1, 1000, wb ? 1000 : 0, spe);
    }, roof, &roof_step);
    if (prof)
        fmt::print("              (--profile: bench's step, TTA and estimate lines also ran through the op "
                   "timer, which runs each convolution's two gradients as two calls)\n");
    if (roof) {
        // The full run: its steps (those that train the whitening bias larger by their FLOPs),
        // and the final TTA evaluation at the ratio to a step measured here (an assumption:
        // forward-only work scales as the training step does).
        const double wb_steps = wb ? 0.0 : whiten_steps * (step_flop_wb / step_flop - 1);
        const double tta_per_step = t_final_eval / (step + t_data);
        const double f32 = (steps_in_run + wb_steps + tta_per_step) * roof_step.first;
        const double f16 = (steps_in_run + wb_steps + tta_per_step) * roof_step.second;
        fmt::print("              full run on an {}: {:.0f} steps{} + TTA (as {:.1f} steps): {:.2f} s fp32, "
                   "{:.2f} s 16-bit\n",
                   roof->name, steps_in_run,
                   wb_steps > 0 ? fmt::format(" (+{:.1f} for the whitening bias's, by FLOPs)", wb_steps) : "",
                   tta_per_step, f32, f16);
        j["profile"]["roofline"]["full_run_seconds_fp32"] = f32;
        j["profile"]["roofline"]["full_run_seconds_half"] = f16;
    }
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    fmt::print("peak memory   {:.0f} MiB allocated through the backend (tensors and buffers; the "
               "libraries' workspaces not counted), host RSS {:.0f} MiB\n",
               b.peak_bytes() / 1048576.0, ru.ru_maxrss / 1024.0);
    j["peak_host_rss_mib"] = ru.ru_maxrss / 1024.0;
    if (!a.json.empty()) write_file_atomic(a.json, json_text(j, 2) + "\n");
    return 0;
}

int cmd_data(const DataArgs& a) {
    if (!a.write_synthetic.empty()) {
        if (!a.data.empty())
            fail("--write-synthetic {} and --data {}: choose one", a.write_synthetic, a.data);
        // full size: the reader accepts only complete 10,000-record files, as CIFAR-10's are
        const Cifar10 s = make_synthetic_cifar10(5 * kCifarPerFile, kCifarPerFile, a.seed);
        namespace fs = std::filesystem;
        std::error_code ec;
        std::string dir = a.write_synthetic;
        while (dir.size() > 1 && dir.back() == '/') dir.pop_back();  // (the folder, not inside it)
        const fs::path target = fs::path(dir).lexically_normal();
        // never over a data set (a CIFAR-10 directory given by mistake would become synthetic)
        for (const char* name : {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                 "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"})
            if (fs::exists(target / name, ec))
                fail("--write-synthetic {}: the directory already holds {}; give a new or empty one",
                     a.write_synthetic, name);
        // the six files are written into a folder of ours beside the target, which then becomes
        // the target (one rename; an interrupted write leaves no partial set there)
        const TempDirBeside tmp(dir);
        for (int f = 0; f < 5; ++f)
            write_cifar_file(fmt::format("{}/data_batch_{}.bin", tmp.path(), f + 1), s.train, f * kCifarPerFile,
                             kCifarPerFile);
        write_cifar_file(tmp.path() + "/test_batch.bin", s.test, 0, s.test.n);
        ::chmod(tmp.path().c_str(), 0755);  // (mkdtemp makes it 0700)
        if (!fs::exists(target, ec) || (fs::is_directory(target, ec) && fs::is_empty(target, ec))) {
            fs::rename(tmp.path(), target, ec);  // (over an empty folder too)
            if (ec) fail("--write-synthetic {}: cannot move the set into place: {}", a.write_synthetic, ec.message());
            fsync_folder_of(target.string());  // (the files and their folder are synced already)
        } else {  // a folder with other files: the six files join them
            if (!fs::is_directory(target, ec)) fail("--write-synthetic {}: not a directory", a.write_synthetic);
            // all six or none: a part of a set left there would be refused by the next attempt
            // ("already holds") and taken for a data set by nothing (the loader wants all six)
            std::vector<fs::path> moved;
            for (const auto& entry : fs::directory_iterator(tmp.path())) {
                const fs::path to = target / entry.path().filename();
                fs::rename(entry.path(), to, ec);
                if (ec) {
                    std::error_code ec2;
                    for (const auto& m : moved) fs::remove(m, ec2);
                    fail("--write-synthetic {}: cannot move {} into place: {} (nothing of the set is left there)",
                         a.write_synthetic, entry.path().filename().string(), ec.message());
                }
                moved.push_back(to);
            }
            fsync_folder_of((target / "test_batch.bin").string());
        }
        fmt::print("wrote {} to {}\n", s.source, a.write_synthetic);  // (the source names the counts)
        return 0;
    }
    const auto t0 = clock_type::now();
    const Cifar10 d = load_cifar10(a.data, a.download);
    const double secs = since(t0);
    fmt::print("CIFAR-10 from {}: {} train, {} test images, read and checked in {:.2f} s\n", d.source,
               d.train.n, d.test.n, secs);
    for (const auto* set : {&d.train, &d.test}) {
        int counts[10] = {};
        double mean[3] = {};
        for (int i = 0; i < set->n; ++i) counts[set->labels[i]]++;
        for (size_t i = 0; i < set->images.size(); ++i) mean[i % 3] += set->images[i];
        const double px = double(set->n) * kCifarSide * kCifarSide * 255.0;
        fmt::print("  {:<5} classes [{}]  channel means {:.4f} {:.4f} {:.4f}\n",
                   set == &d.train ? "train" : "test", fmt::join(counts, " "), mean[0] / px,
                   mean[1] / px, mean[2] / px);
    }
    // (what a checkpoint keeps of the images it was trained on: compare with its data_fingerprint)
    fmt::print("  training images' fingerprint {} (all {}; a --subset's differs)\n",
               data_fingerprint(d.train.images, d.train.labels, d.train.n), d.train.n);
    return 0;
}

}  // namespace sr
