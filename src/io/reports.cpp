// reports.cpp: see reports.h.
#include "io/reports.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "io/atomic_file.h"

namespace sr {
namespace fs = std::filesystem;

std::string dawnbench_tsv(const RunResult& run) {
    std::string s = "epoch\thours\ttop1Accuracy\n";
    // The last epoch's row is the run's result: the final (test-time-augmented) evaluation and
    // the timed total that includes it, as the run is scored; the others the untimed evaluation
    // after each epoch (without TTA) at the time the epoch ended.
    for (size_t i = 0; i < run.epochs.size(); ++i) {
        const EpochStats& e = run.epochs[i];
        const bool last = i + 1 == run.epochs.size();
        s += fmt::format("{}\t{:.8f}\t{:.2f}\n", e.epoch + 1, (last ? run.train_seconds : e.total_seconds) / 3600.0,
                         last ? 100.0 * run.test_accuracy_tta : e.test_acc >= 0 ? 100.0 * e.test_acc : 0.0);
    }
    return s;
}

namespace {
// Runs argv (no shell: a path is an argument, never a command line) in folder cwd (empty: ours)
// with input on its stdin; throws with its name when it is missing or fails.
void run_tool(const std::vector<std::string>& argv, const std::string& cwd, const std::string& input,
              const char* what) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) fail("cannot start {}: {}", what, std::strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[0], 0);  // (dup2 clears close-on-exec on 0)
    if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, cwd.c_str());
    std::vector<char*> args;
    for (const auto& x : argv) args.push_back(const_cast<char*>(x.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    const int err = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[0]);
    if (err != 0) {
        ::close(fds[1]);
        if (err == ENOENT) fail("{} was not found: is it installed? (tools/install-deps installs it)", what);
        fail("cannot start {}: {}", what, std::strerror(err));
    }
    // (a tool that exits early closes the pipe: SIGPIPE is ignored for this write, EPIPE told)
    struct sigaction ignore {}, old {};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &ignore, &old);
    bool wrote = true;
    for (size_t at = 0; at < input.size();) {
        const ssize_t w = ::write(fds[1], input.data() + at, input.size() - at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            wrote = false;
            break;
        }
        at += size_t(w);
    }
    ::close(fds[1]);
    ::sigaction(SIGPIPE, &old, nullptr);
    int rc = 0;
    while (::waitpid(pid, &rc, 0) < 0)
        if (errno != EINTR) fail("{}: {}", what, std::strerror(errno));
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
        fail("{} was not found: is it installed? (tools/install-deps installs it)", what);
    if (rc != 0)
        fail("{} failed ({} {})", what, WIFEXITED(rc) ? "exit status" : "signal",
             WIFEXITED(rc) ? WEXITSTATUS(rc) : WTERMSIG(rc));
    if (!wrote) fail("{} did not read its input", what);
}

// A gnuplot string of ours: text from outside (a data folder's name) with quotes, backquotes
// (gnuplot substitutes commands in them), backslashes and control characters replaced.
std::string gnuplot_text(const std::string& s) {
    std::string out;
    for (char ch : s) {
        const unsigned char u = static_cast<unsigned char>(ch);
        out += (u < 0x20 || u == 0x7f || ch == '\'' || ch == '"' || ch == '`' || ch == '\\') ? '?' : ch;
    }
    return out;
}

}  // namespace

void plot_runs(const std::string& png_path, const std::vector<RunResult>& runs, const std::string& title) {
    // gnuplot runs in a folder of ours beside the PNG, on names of ours: no outside path is
    // written into its script (only the title, cleaned); the data files go with the folder
    const std::string target = output_target(png_path);  // (a link's target: see atomic_file.h)
    const TempDirBeside tmp(target);
    std::string plot_acc, plot_loss;
    // each axis's range of values: where it is one value (a 1-epoch run) the range is given, else
    // gnuplot warns on stderr that it widens an empty range
    struct Range {
        double lo = INFINITY, hi = -INFINITY;
        void add(double v) {
            if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
        }
        std::string set(const char* axis, double half) const {
            return lo == hi ? fmt::format("set {}range [{}:{}]\n", axis, lo - half, hi + half) : "";
        }
    } xs, accs, losses;
    for (size_t i = 0; i < runs.size(); ++i) {
        std::string data;
        for (const auto& e : runs[i].epochs) {
            data += fmt::format("{} {} {}\n", e.epoch + 1, e.test_acc >= 0 ? 100 * e.test_acc : NAN, e.train_loss);
            xs.add(e.epoch + 1);
            if (e.test_acc >= 0) accs.add(100 * e.test_acc);
            losses.add(e.train_loss);
        }
        const std::string f = fmt::format("run{}.dat", i);
        write_file_atomic((fs::path(tmp.path()) / f).string(), data);
        plot_acc += fmt::format("{}'{}' using 1:2 with linespoints lw 2 title 'test acc, seed {}'",
                                plot_acc.empty() ? "" : ", ", f, runs[i].seed);
        plot_loss += fmt::format(", '{}' using 1:3 axes x1y2 with lines dt 2 title 'train loss, seed {}'",
                                 f, runs[i].seed);
    }
    const std::string script = fmt::format(
        "set terminal pngcairo size 900,560\nset output 'plot.png'\nset title '{}'\n"
        "set xlabel 'epoch'\nset ylabel 'test accuracy (%)'\nset y2label 'train loss'\n"
        "set ytics nomirror\nset y2tics\nset grid\nset key bottom right\n"
        "set arrow from graph 0, first 94 to graph 1, first 94 nohead dt 3\n"
        "{}{}{}plot {}{}\n",
        gnuplot_text(title), xs.set("x", 0.5), accs.set("y", 1.0),
        losses.set("y2", std::max(0.05, 0.05 * std::abs(losses.lo))), plot_acc, plot_loss);
    try {
        run_tool({"gnuplot"}, tmp.path(), script, "gnuplot");
    } catch (const Error& e) {
        fail("--plot {}: {}", png_path, e.what());
    }
    try {
        rename_durably((fs::path(tmp.path()) / "plot.png").string(), target);
    } catch (const Error& e) {
        fail("--plot {}: cannot write the plot: {}", png_path, e.what());
    }
}

namespace {

std::string act_label(const NetConfig& c) {
    return c.act == Activation::celu ? fmt::format("CELU({:g})", c.celu_alpha)
                                     : std::string(c.act == Activation::relu ? "ReLU"
                                                   : c.act == Activation::gelu ? "GELU" : "SiLU");
}

// The resnet9 family: one node per unit (conv, pool, BN, act in its order), residual adds.
std::string resnet9_dot(const NetConfig& c) {
    const int k = c.whiten_kernel;
    const std::string act = act_label(c);
    const std::string bn = c.ghost_splits > 1 ? fmt::format("ghost BN x{}", c.ghost_splits) : "batch norm";
    std::string s = "digraph net {\n  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];\n";
    s += fmt::format("  input [label=\"input\\n3 x {} x {}\"];\n", c.image_side, c.image_side);
    std::string prev = "input";
    int H = c.image_side, cin = 3;
    if (k > 0) {
        s += fmt::format("  whiten [label=\"whitening conv {0}x{0} (frozen, no bias)\\n{1} x {2} x {2}\"];\n  input -> whiten;\n",
                         k, c.whiten_width(), H);
        prev = "whiten";
        cin = c.whiten_width();
    }
    auto unit = [&](const std::string& id, const std::string& title, int ci, int co, int kk, bool pool) {
        const int Ho = pool ? H / 2 : H;
        std::string steps = fmt::format("conv {0}x{0} {1}->{2}", kk, ci, co);
        const std::string pl = fmt::format("max pool 2");
        if (pool && c.pool_before_norm) steps += "\\n" + pl;
        steps += "\\n" + bn + "\\n" + act;
        if (pool && !c.pool_before_norm) steps += "\\n" + pl;
        s += fmt::format("  {} [label=\"{}\\n{}\\n{} x {} x {}\"];\n", id, title, steps, co, Ho, Ho);
        H = Ho;
    };
    unit("prep", "prep", cin, c.widths[0], k > 0 ? 1 : 3, false);
    s += fmt::format("  {} -> prep;\n", prev);
    prev = "prep";
    for (int L = 1; L <= 3; ++L) {
        const std::string id = fmt::format("layer{}", L);
        unit(id, id, c.widths[L - 1], c.widths[L], 3, true);
        s += fmt::format("  {} -> {};\n", prev, id);
        prev = id;
        if (std::find(c.residual.begin(), c.residual.end(), L) != c.residual.end()) {
            unit(id + "r1", id + ".res1", c.widths[L], c.widths[L], 3, false);
            unit(id + "r2", id + ".res2", c.widths[L], c.widths[L], 3, false);
            s += fmt::format("  {0}add [label=\"+\", shape=circle];\n  {0} -> {0}r1 -> {0}r2 -> {0}add;\n"
                             "  {0} -> {0}add [style=dashed];\n", id);
            prev = id + "add";
        }
    }
    s += fmt::format("  pool [label=\"max pool {0}\\n{1} x {2} x {2}\"];\n", c.final_pool, c.widths[3], H / c.final_pool);
    s += fmt::format("  head [label=\"linear {} -> {} (no bias) x {:.4g}\"];\n", c.widths[3], c.num_classes, c.scaling_factor);
    s += fmt::format("  {} -> pool -> head;\n}}\n", prev);
    return s;
}

// The dawn family: prep conv, each pre-activation block as one node with its shortcut drawn
// beside it (dashed: identity, solid: 1x1 projection), the concatenated pooling and the head.
std::string dawn_dot(const NetConfig& c) {
    const std::string act = act_label(c);
    std::string s = "digraph net {\n  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];\n";
    s += fmt::format("  input [label=\"input\\n3 x {} x {}\"];\n", c.image_side, c.image_side);
    s += fmt::format("  prep [label=\"prep\\nconv 3x3 3->{0}\\n{0} x {1} x {1}\"];\n  input -> prep;\n",
                     c.widths[0], c.image_side);
    std::string prev = "prep";
    int H = c.image_side, cin = c.widths[0];
    for (int L = 1; L <= 4; ++L)
        for (int b = 0; b < 2; ++b) {
            const int co = c.widths[L - 1], stride = (L > 1 && b == 0) ? 2 : 1, Ho = H / stride;
            const bool proj = stride != 1 || cin != co;
            const std::string id = fmt::format("l{}b{}", L, b);
            s += fmt::format("  {0}pre [label=\"layer{1}.block{2}\\nbatch norm\\n{3}\"];\n"
                             "  {0} [label=\"conv 3x3 {4}->{5}{6}\\nbatch norm\\n{3}\\nconv 3x3 {5}->{5}\"];\n"
                             "  {0}add [label=\"+\\n{5} x {7} x {7}\", shape=circle];\n"
                             "  {8} -> {0}pre -> {0} -> {0}add;\n",
                             id, L, b, act, cin, co, stride == 2 ? " stride 2" : "", Ho, prev);
            if (proj)
                s += fmt::format("  {0}sc [label=\"conv 1x1 {1}->{2}{3}\"];\n  {0}pre -> {0}sc -> {0}add;\n",
                                 id, cin, co, stride == 2 ? " stride 2" : "");
            else
                s += fmt::format("  {0}pre -> {0}add [style=dashed];\n", id);
            prev = id + "add";
            cin = co;
            H = Ho;
        }
    s += fmt::format("  pool [label=\"max pool {0} | mean pool {0}, concatenated\\n{1}\"];\n", H, 2 * c.widths[3]);
    s += fmt::format("  head [label=\"linear {} -> {} + bias x {:.4g}\"];\n", 2 * c.widths[3], c.num_classes, c.scaling_factor);
    s += fmt::format("  {} -> pool -> head;\n}}\n", prev);
    return s;
}

}  // namespace

std::string network_dot(const NetConfig& c) {
    if (c.arch == Arch::resnet9) return resnet9_dot(c);
    if (c.arch == Arch::dawn) return dawn_dot(c);
    const int k = c.whiten_kernel, cw = c.whiten_width();
    int H = c.image_side - k + 1, cin = cw;
    std::string s = "digraph net {\n  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];\n";
    s += fmt::format("  input [label=\"input\\n3 x {} x {}\"];\n", c.image_side, c.image_side);
    s += fmt::format("  whiten [label=\"whitening conv {}x{} (frozen) + bias\\n{} x {} x {}\"];\n", k, k, cw, H, H);
    s += "  gelu0 [label=\"GELU\"];\n  input -> whiten -> gelu0;\n";
    std::string prev = "gelu0";
    for (int g = 0; g < 3; ++g) {
        const int co = c.widths[g], Hp = H / 2;
        const std::string p = fmt::format("g{}", g + 1);
        const std::string third = c.group_convs == 3
            ? fmt::format("    {0}c3 [label=\"conv 3x3 {1}->{1}\"]; {0}b3 [label=\"batch norm\"]; "
                          "{0}add [label=\"+\"]; {0}a3 [label=\"GELU\"];\n"
                          "    {0}a2 -> {0}c3 -> {0}b3 -> {0}add -> {0}a3; {0}a1 -> {0}add [style=dashed];\n",
                          p, co)
            : std::string();
        s += fmt::format("  subgraph cluster_{0} {{ label=\"group {1}\"; style=dashed;\n"
                         "    {0}c1 [label=\"conv 3x3 {2}->{3}\\n{3} x {4} x {4}\"];\n"
                         "    {0}p [label=\"max pool 2\\n{3} x {5} x {5}\"];\n"
                         "    {0}b1 [label=\"batch norm\"]; {0}a1 [label=\"GELU\"];\n"
                         "    {0}c2 [label=\"conv 3x3 {3}->{3}\"]; {0}b2 [label=\"batch norm\"]; {0}a2 [label=\"GELU\"];\n"
                         "    {0}c1 -> {0}p -> {0}b1 -> {0}a1 -> {0}c2 -> {0}b2 -> {0}a2;\n{6}  }}\n",
                         p, g + 1, cin, co, H, Hp, third);
        s += fmt::format("  {} -> {}c1;\n", prev, p);
        prev = p + (c.group_convs == 3 ? "a3" : "a2");
        cin = co;
        H = Hp;
    }
    s += fmt::format("  pool [label=\"max pool {0}\\n{1} x {2} x {2}\"];\n", c.final_pool, cin, H / c.final_pool);
    s += fmt::format("  head [label=\"linear {} -> {} (no bias) x {:.4g}\"];\n", cin, c.num_classes, c.scaling_factor);
    s += fmt::format("  {} -> pool -> head;\n}}\n", prev);
    return s;
}

void write_svg(const std::string& svg_path, const std::string& dot) {
    const std::string target = output_target(svg_path);
    const TempDirBeside tmp(target);
    const std::string out = (fs::path(tmp.path()) / "net.svg").string();
    try {
        run_tool({"dot", "-Tsvg", "-o", out}, "", dot, "graphviz (dot)");
    } catch (const Error& e) {
        fail("{}: {}", svg_path, e.what());
    }
    try {
        rename_durably(out, target);
    } catch (const Error& e) {
        fail("{}: cannot write the diagram: {}", svg_path, e.what());
    }
}

}  // namespace sr
