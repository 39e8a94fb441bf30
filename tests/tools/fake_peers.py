#!/usr/bin/python3
"""Stand-ins for tests/tools/test_compare_peers.py: the peers' wrappers and our `speedrun`.

The peers' stand-ins print what the real scripts in ../shared/peers print, line for line in form
(the same column heads, widths, number formats, bars, summary lines, hiverge's \\r progress
line), written here from reading their print statements; the figures are made up and
deterministic (values()), so the test knows what must be parsed.

    fake_peers.py peer FMT [--runs N] [--data DIR] [--workdir DIR]   # FMT: a key of FORMATS
    fake_peers.py speedrun train --preset P --runs N --summary-json F ...  |  speedrun presets
    fake_peers.py nvidia-smi --query-gpu=... --format=csv,noheader

$FAKE_PEERS_MODE ("hlb=fail,hiverge=hang:2,...") makes a peer misbehave: fail (a traceback,
exit 1, no run), garbage (exit 0, nothing parsable), hang:K (K runs, then sleeps), crash:K (K
runs, then exit 1). $FAKE_PRESETS: the presets the fake speedrun knows (default
airbench94,hiverge); $FAKE_SPEEDRUN_NO_PRESETS=1: its `presets` subcommand fails;
$FAKE_RECORDING_FAILED=WHY: its runs say their CUDA-graph recording failed (WHY);
$FAKE_SPEEDRUN_MODE=hang:K: K runs finish, then it waits for SIGTERM, writes their summary
marked interrupted and exits 130.
"""
import argparse
import json
import math
import os
import signal
import sys
import time

# peer stand-in name -> (printing format, default runs, warm-up run printed first)
FORMATS = {
    "airbench94": ("legacy", 25, False),
    "airbench94_compiled": ("legacy", 25, True),
    "airbench95": ("legacy", 25, False),
    "airbench96": ("legacy", 25, False),
    "airbench96_faster": ("legacy_proxy", 25, False),
    "airbench94_muon": ("muon", 200, True),
    "hiverge": ("hiverge", 200, True),
    "hlb": ("hlb", 25, False),
    "fast-simple": ("fast_simple", 100, False),
}
WRAPPERS = {  # the real wrapper file names in ../shared/peers
    "airbench94": "run_airbench94.py", "airbench94_compiled": "run_airbench94_compiled.py",
    "airbench95": "run_airbench95.py", "airbench96": "run_airbench96.py",
    "airbench96_faster": "run_airbench96_faster.py", "airbench94_muon": "run_airbench94_muon.py",
    "hiverge": "run_hiverge_speedrun.py", "hlb": "run_hlb_cifar10.py",
    "fast-simple": "run_cifar10_fast_simple.py",
}
BASE_SECONDS = {"airbench94": 2.0, "airbench94_compiled": 1.6, "airbench95": 5.2,
                "airbench96": 16.8, "airbench96_faster": 14.0, "airbench94_muon": 1.5,
                "hiverge": 1.1, "hlb": 3.1, "fast-simple": 7.7}


def values(name, n):
    """(accuracies, seconds) of runs 0..n-1 as the stand-in prints them: accuracies with 4
    decimals, seconds with 4 (2 for fast-simple); airbench94's first run is slow (autotuning)."""
    acc = [round(0.9400 + 0.0010 * ((3 * i) % 5 - 2), 4) for i in range(n)]
    base = BASE_SECONDS[name]
    secs = [round(base + 0.01 * (i % 3), 4) for i in range(n)]
    if name == "airbench94" and n:
        secs[0] = 6.07
    if name == "fast-simple":
        secs = [round(s, 2) for s in secs]
    return acc, secs


def torch_std(xs):  # torch.std: n-1
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")


def out(s="", end="\n"):
    sys.stdout.write(s + end)
    sys.stdout.flush()


# -- airbench / hiverge tables: print_columns + print_training_details, as in their scripts ----

def columns_line(cells):
    return "".join("|  %s  " % c for c in cells) + "|"


def print_head(cols):
    line = columns_line(cols)
    out("-" * len(line))
    out(line)
    out("-" * len(line))


def print_row(cols, values_by_name, final):
    cells = []
    for col in cols:
        v = values_by_name.get(col.strip())
        if type(v) in (int, str):
            s = str(v)
        elif type(v) is float:
            s = "{:0.4f}".format(v)
        else:
            s = ""
        cells.append(s.rjust(len(col)))
    line = columns_line(cells)
    out(line)
    if final:
        out("-" * len(line))


LEGACY_COLS = ["run   ", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc",
               "total_time_seconds"]
MUON_COLS = ["run   ", "epoch", "train_acc", "val_acc", "tta_val_acc", "time_seconds"]


def airbench_run(cols, run, acc, secs, epochs, proxy):
    if proxy:
        out("Training small proxy...")
    tcol = cols[-1].strip()
    v = {"run": run}
    for epoch in range(epochs):
        v.update(epoch=epoch, train_loss=0.5 - 0.01 * epoch, train_acc=0.8 + 0.01 * epoch,
                 val_acc=0.85 + 0.005 * epoch)
        v[tcol] = secs * (epoch + 1) / (epochs + 1)
        print_row(cols, v, False)
        v["run"] = None
    v.update(epoch="eval", tta_val_acc=acc)
    v[tcol] = secs
    print_row(cols, v, True)


def print_peer(name, runs, mode):
    fmt, _, warmup = FORMATS[name]
    kind, _, k = mode.partition(":")
    stop_after = int(k) if k else None
    if kind == "fail":
        out("-" * 20)
        sys.stderr.write("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                         "RuntimeError: CUDA error: no kernel image is available\n")
        return 1
    if kind == "garbage":
        out("Mean accuracy: pending")
        out("something else entirely")
        return 0
    accs, secs = values(name, runs)

    def finished(i):  # after run i (0-based) has printed: stop here?
        if stop_after is not None and i + 1 >= stop_after:
            if kind == "hang":
                time.sleep(120)
            return True
        return False

    if fmt in ("legacy", "legacy_proxy", "muon"):
        cols = MUON_COLS if fmt == "muon" else LEGACY_COLS
        epochs = 8 if fmt == "muon" else 10
        print_head(cols)
        if warmup:
            airbench_run(cols, "warmup", 0.1012, 9.5, epochs, False)
        for i in range(runs):
            airbench_run(cols, i, accs[i], secs[i], epochs, fmt == "legacy_proxy")
            if finished(i):
                return 1
        out("Mean: %.4f    Std: %.4f" % (sum(accs) / runs, torch_std(accs)))
        out("/tmp/cifar10-peers/%s/logs/0b6c1c2e-uuid/log.pt" % name)
    elif fmt == "hiverge":
        print_head(MUON_COLS)
        print_row(MUON_COLS, {"run": "warmup", "epoch": "eval", "train_acc": 0.1, "val_acc": 0.1,
                              "tta_val_acc": 0.1, "time_seconds": 88.1}, True)
        for i in range(runs):
            print_row(MUON_COLS, {"run": i + 1, "epoch": "eval", "train_acc": 0.97,
                                  "val_acc": 0.935, "tta_val_acc": accs[i],
                                  "time_seconds": secs[i]}, True)
            out("Mean accuracy after %d runs: %.6f | Mean time: %.6fs" % (
                i + 1, sum(accs[:i + 1]) / (i + 1), sum(secs[:i + 1]) / (i + 1)), end="\r")
            if finished(i):
                return 1
        out()
        out("Accuracies: Mean: %.6f    Std: %.6f" % (sum(accs) / runs, torch_std(accs)))
        out("Times (s):  Mean: %.6f    Std: %.6f" % (sum(secs) / runs, torch_std(secs)))
    elif fmt == "hlb":
        cols = ["epoch", "train_loss", "val_loss", "train_acc", "val_acc", "ema_val_acc",
                "total_time_seconds"]
        head = "".join("|  %s  " % c for c in cols) + "|"
        out("-" * len(head))
        out(head)
        out("-" * len(head))
        for i in range(runs):
            for epoch in range(13):
                v = {"epoch": epoch, "train_loss": 2.0 - 0.1 * epoch, "val_loss": 1.1,
                     "train_acc": 0.5 + 0.03 * epoch, "val_acc": 0.6 + 0.025 * epoch,
                     "ema_val_acc": (accs[i] if epoch == 12 else 0.9) if epoch >= 10 else None,
                     "total_time_seconds": secs[i] * (epoch + 1) / 13}
                cells = [(str(v[c]).rjust(len(c)) if type(v[c]) == int else
                          "{:0.4f}".format(v[c]).rjust(len(c))) if v[c] is not None
                         else " " * len(c) for c in cols]
                line = "".join("|  %s  " % c for c in cells) + "|"
                out(line)
                if epoch == 12:
                    out("-" * len(line))
            if finished(i):
                return 1
        m = sum(accs) / runs
        var = sum((x - m) ** 2 for x in accs) / (runs - 1) if runs > 1 else float("nan")
        out("Mean and variance: %s" % ((m, var),))
    elif fmt == "fast_simple":
        out("File   : train.py 3f1e0c5a9d")
        out("Model  : model.py 77aa0b12cd")
        out("PyTorch: 2.11.0+cu130")
        for i in range(runs):
            if i == 0:
                out("Device : NVIDIA H100 80GB HBM3")
                out("Dtype  : torch.float16")
                out()
            out("Preprocessing: 1.52 seconds")
            out("\nepoch    batch    train time [sec]    validation accuracy")
            for epoch in range(1, 11):
                out(f"{epoch:5} {epoch * 97:8d} {secs[i] * epoch / 10:19.2f} "
                    f"{(accs[i] if epoch == 10 else 0.9):22.4f}")
            got = accs[:i + 1]
            out()
            out(f"{sum(a >= 0.94 for a in got)} of {i + 1} runs >= {0.94 * 100.0} % accuracy")
            mean = sum(got) / len(got)
            std = (sum((a - mean) ** 2 for a in got) / len(got)) ** 0.5
            out(f"Min  accuracy: {min(got)}")
            out(f"Max  accuracy: {max(got)}")
            out(f"Mean accuracy: {mean} +- {std}")
            out()
            if finished(i):
                return 1
    return 0


def main_peer(name, argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=FORMATS[name][1])
    ap.add_argument("--data")
    ap.add_argument("--workdir")
    a = ap.parse_args(argv)
    sys.stderr.write("[peers] stand-in %s, runs %d, data %s\n" % (name, a.runs, a.data))
    modes = dict(kv.split("=", 1) for kv in os.environ.get("FAKE_PEERS_MODE", "").split(",")
                 if "=" in kv)
    return print_peer(name, a.runs, modes.get(name, "normal"))


# -- our speedrun -----------------------------------------------------------------------------

OURS_SECONDS = {"airbench94": 1.0, "hiverge": 0.8, "muon94": 0.9}


def ours_values(preset, n):
    acc = [0.9395 + 0.0005 * (i % 4) for i in range(n)]
    secs = [OURS_SECONDS.get(preset, 1.5) + 0.02 * (i % 2) for i in range(n)]
    return acc, secs


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def main_speedrun(argv):
    known = os.environ.get("FAKE_PRESETS", "airbench94,hiverge").split(",")
    if argv[:1] == ["presets"]:
        if os.environ.get("FAKE_SPEEDRUN_NO_PRESETS"):
            sys.stderr.write("speedrun: error: presets: not in this build\n")
            return 1
        for p in known:  # the layout of cmd_presets
            out("%-14s %s\n%-14s source: %s\n%-14s published: %s" % (p, "a preset", "", "x",
                                                                      "", "y"))
        return 0
    assert argv[:1] == ["train"], argv
    ap = argparse.ArgumentParser()
    for opt in ("--device", "--preset", "--summary-json", "--data"):
        ap.add_argument(opt)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-download", action="store_true")
    a, _ = ap.parse_known_args(argv[1:])
    if a.preset not in known:
        sys.stderr.write("speedrun: error: unknown preset '%s' (known: %s)\n" % (
            a.preset, ", ".join(known)))
        return 1
    acc, secs = ours_values(a.preset, a.runs)
    failed = os.environ.get("FAKE_RECORDING_FAILED", "")  # why recording the epochs failed
    # $FAKE_SPEEDRUN_MODE "hang:K": K runs finish, then the next one hangs until SIGTERM (or
    # SIGINT), which writes the K runs' summary marked interrupted and exits 130, as speedrun does
    mode = os.environ.get("FAKE_SPEEDRUN_MODE", "")
    finished = int(mode.split(":")[1]) if mode.startswith("hang:") else a.runs
    for i in range(min(finished + 1, a.runs)):
        out("run %d of %d (seed %d)" % (i + 1, a.runs, i))
    if finished < a.runs:
        def cut(signum, frame):
            write_summary(a, acc[:finished], secs[:finished], failed, True)
            sys.exit(130)
        signal.signal(signal.SIGTERM, cut)
        signal.signal(signal.SIGINT, cut)
        while True:
            time.sleep(1)
    write_summary(a, acc, secs, failed, False)
    return 0


def write_summary(a, acc, secs, failed, interrupted):
    am, asd = mean_std(acc)
    sm, ssd = mean_std(secs)
    j = {"preset": a.preset, "device": "cuda: NVIDIA H100 80GB HBM3 (fake)", "data": a.data,
         "n_train": 50000, "n_test": 10000,
         "runs": [{"seed": i, "test_accuracy": acc[i] - 0.007, "test_accuracy_tta": acc[i],
                   "train_seconds": secs[i], "step_seconds": secs[i] / 97,
                   "images_per_second": 50000 * 10 / secs[i], "steps": 97,
                   "replayed_epochs": 0 if failed else 10, "recording_failed": failed,
                   "epochs": []} for i in range(len(acc))],
         "accuracy_mean": am, "accuracy_std": asd, "accuracy_min": min(acc),
         "accuracy_max": max(acc), "accuracy_no_tta_mean": am - 0.007,
         "share_at_least_94": sum(x >= 0.94 for x in acc) / len(acc),
         "train_seconds_mean": sm, "train_seconds_std": ssd, "data_load_seconds": 0.1,
         "peak_device_bytes": 1 << 30, "peak_host_rss_mib": 500.0,
         "runs_requested": a.runs, "interrupted": interrupted, "recipe": {}}
    with open(a.summary_json, "w") as f:
        json.dump(j, f, indent=2)
    out("summary written to %s" % a.summary_json)


def main_nvidia_smi(argv):
    fields = [a for a in argv if a.startswith("--query-gpu=")][0].split("=", 1)[1].split(",")
    known = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-fake-0001",
             "driver_version": "580.159.04", "pci.bus_id": "00000000:01:00.0", "pstate": "P0",
             "temperature.gpu": "35", "power.limit": "700.00 W", "clocks.sm": "1980 MHz",
             "clocks.mem": "2619 MHz", "clocks.max.sm": "1980 MHz",
             "clocks.applications.graphics": "1755 MHz"}
    out(", ".join(known[f] for f in fields))
    return 0


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "peer":
        sys.exit(main_peer(rest[0], rest[1:]))
    if cmd == "speedrun":
        sys.exit(main_speedrun(rest))
    if cmd == "nvidia-smi":
        sys.exit(main_nvidia_smi(rest))
    sys.exit("fake_peers.py: unknown command %r" % cmd)
