#!/usr/bin/python3
"""End-to-end test of tools/compare-peers without a GPU (ctest: compare_peers).

Runs the tool against stand-ins (tests/tools/fake_peers.py): a `speedrun` that writes a summary
JSON in the real format, peer wrappers that print each peer's real output format, and an
nvidia-smi. Checks the parsed figures of every format, the ratios, the merge of results from
separate --only invocations and from --merge files, the atomic append (concurrent writers, a
torn line, a short write), the errors of a peer that fails, prints nothing parsable or is cut off
at its budget, and a preset speedrun does not know. Ends with "N passed, N failed".
"""
import importlib.machinery
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree, here or in the stand-ins
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOL = os.path.join(ROOT, "tools", "compare-peers")
sys.path.insert(0, HERE)
import fake_peers  # noqa: E402


def load_tool():
    loader = importlib.machinery.SourceFileLoader("compare_peers", TOOL)
    spec = importlib.util.spec_from_loader("compare_peers", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


cp = load_tool()
TMP = tempfile.mkdtemp(prefix="test-compare-peers-")
CASES, RESULTS = [], {"passed": 0, "failed": 0}


def case(fn):
    CASES.append(fn)
    return fn


def close(a, b, tol=1e-9):
    return a is not None and b is not None and abs(a - b) <= tol


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def mean(xs):
    return sum(xs) / len(xs)


def sample_std(xs):
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ---- the stand-in world ---------------------------------------------------------------------

PY = sys.executable
FAKE = os.path.join(HERE, "fake_peers.py")
PEERS = os.path.join(TMP, "peers")
BIN = os.path.join(TMP, "bin")
DATA = os.path.join(TMP, "cifar")
for d in (PEERS, BIN, DATA):
    os.makedirs(d)
open(os.path.join(DATA, "data_batch_1.bin"), "wb").close()
open(os.path.join(PEERS, "peer_runner.py"), "w").close()
for name, wrapper in fake_peers.WRAPPERS.items():
    with open(os.path.join(PEERS, wrapper), "w") as f:
        f.write("import sys\nsys.path.insert(0, %r)\nimport fake_peers\n"
                "sys.exit(fake_peers.main_peer(%r, sys.argv[1:]))\n" % (HERE, name))
for exe, cmd in (("speedrun", "speedrun"), ("nvidia-smi", "nvidia-smi")):
    path = os.path.join(BIN, exe)
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec %s %s %s \"$@\"\n" % (PY, FAKE, cmd))
    os.chmod(path, 0o755)


def tool(*args, env=None, expect=None, smi=False):
    """Runs compare-peers with the stand-ins (the nvidia-smi one if smi); returns (status,
    stdout, stderr)."""
    argv = [PY, TOOL, "--peers", PEERS, "--speedrun", os.path.join(BIN, "speedrun"),
            "--python", PY, "--data", DATA, "--quiet",
            "--nvidia-smi", os.path.join(BIN, "nvidia-smi") if smi else ""] + list(args)
    e = dict(os.environ)
    e.pop("FAKE_PEERS_MODE", None)
    e.update(env or {})
    p = subprocess.run(argv, capture_output=True, text=True, env=e, timeout=120)
    if expect is not None and p.returncode != expect:
        raise AssertionError("compare-peers %s: status %d, expected %d\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(args), p.returncode, expect, p.stdout, p.stderr))
    return p.returncode, p.stdout, p.stderr


def records(out):
    return cp.read_records(os.path.join(out, "results.jsonl"), warn=lambda m: None)


def by_entry(out):
    return {r["entry"]: r for r in records(out)}


def expected_peer(name, n):
    acc, secs = fake_peers.values(name, n)
    return {"n": n, "acc_mean": mean(acc), "acc_min": min(acc), "acc_max": max(acc),
            "seconds_mean": mean(secs), "acc_std": sample_std(acc)}


# ---- parsers on the stand-ins' output -----------------------------------------------------

def peer_text(name, runs, mode="normal"):
    p = subprocess.run([PY, FAKE, "peer", name, "--runs", str(runs)], capture_output=True,
                       text=True, env=dict(os.environ, FAKE_PEERS_MODE="%s=%s" % (name, mode)))
    return p.stdout


@case
def parses_every_format():
    for name in fake_peers.FORMATS:
        n = 5
        r = cp.parse_peer_output(cp.PEERS[name].fmt, peer_text(name, n))
        acc, secs = fake_peers.values(name, n)
        check([x["acc"] for x in r["runs"]] == acc, "%s accuracies %r" % (name, r["runs"]))
        check([x["seconds"] for x in r["runs"]] == secs, "%s seconds %r" % (name, r["runs"]))
        f = cp.figures(r["runs"], r["printed"])
        exp = expected_peer(name, n)
        tol = 1e-6 if name in ("hiverge", "hlb", "fast-simple") else 6e-5  # printed %.4f
        for k in ("acc_mean", "acc_min", "acc_max", "seconds_mean"):
            check(close(f[k], exp[k], tol), "%s %s: %r, expected %r" % (name, k, f[k], exp[k]))
        check(f["n"] == n, "%s n %r" % (name, f["n"]))
        if name == "fast-simple":  # prints the population std
            pop = math.sqrt(sum((a - mean(acc)) ** 2 for a in acc) / n)
            check(close(f["acc_std"], pop, 1e-9), "fast-simple std %r" % f["acc_std"])
        else:
            check(close(f["acc_std"], exp["acc_std"], 6e-5), "%s std %r vs %r"
                  % (name, f["acc_std"], exp["acc_std"]))
        want = {"hiverge": ["acc_mean", "acc_std", "seconds_mean", "seconds_std"],
                "hlb": ["acc_mean", "acc_std"],
                "fast-simple": ["acc_max", "acc_mean", "acc_min", "acc_std"]}.get(
                    name, ["acc_mean", "acc_std"])
        check(sorted(r["printed"]) == sorted(want), "%s printed %r" % (name, r["printed"]))


@case
def parses_cut_off_output():
    # a killed hlb: two complete runs, the third without its closing bar
    text = peer_text("hlb", 3)
    lines = text.split("\n")
    cut = "\n".join(lines[:-12])  # inside run 3, before its final row and summary
    r = cp.parse_peer_output("hlb", cut)
    check(len(r["runs"]) == 2 and not r["printed"], "hlb cut: %r" % r)
    # hiverge: \r progress lines between rows, the last row cut in the middle
    text = peer_text("hiverge", 4)
    cut = text[:text.index("|       4  |") + 20]
    r = cp.parse_peer_output("hiverge", cut)
    check([x["acc"] for x in r["runs"]] == fake_peers.values("hiverge", 3)[0], "hiverge %r" % r)
    # nothing at all
    for fmt in ("airbench", "hiverge", "hlb", "fast_simple"):
        r = cp.parse_peer_output(fmt, "Traceback (most recent call last):\nOSError: x\n")
        check(r["runs"] == [] and r["printed"] == {}, "%s on garbage: %r" % (fmt, r))


# ---- end to end ---------------------------------------------------------------------------

@case
def end_to_end_all_entries():
    out = os.path.join(TMP, "all")
    st, stdout, stderr = tool("--out", out, "--presets", "airbench94,hiverge,muon94",
                              "--peers-list", "hiverge,airbench94_muon,airbench94,hlb,fast-simple",
                              "--runs", "4", "--peer-runs", "hlb=3,ours:hiverge=2", expect=0,
                              smi=True)
    recs = by_entry(out)
    check(sorted(recs) == sorted(["ours:airbench94", "ours:hiverge", "ours:muon94", "peer:hiverge",
                                  "peer:airbench94_muon", "peer:airbench94", "peer:hlb",
                                  "peer:fast-simple"]), "entries %r" % sorted(recs))
    check(recs["ours:muon94"]["status"] == "skipped" and "muon94" in recs["ours:muon94"]["error"],
          "muon94: %r" % recs["ours:muon94"])
    check("ours:muon94: SKIPPED" in stderr, "skip not reported:\n" + stderr)
    for name, runs in (("airbench94", 4), ("hiverge", 2)):
        r = recs["ours:" + name]
        acc, secs = fake_peers.ours_values(name, runs)
        check(r["status"] == "ok" and r["n"] == runs, "ours %s %r" % (name, r))
        check(close(r["acc_mean"], mean(acc)) and close(r["seconds_mean"], mean(secs)),
              "ours %s figures %r" % (name, r))
        check(close(r["acc_min"], min(acc)) and close(r["acc_max"], max(acc)), "ours min/max")
        check(r["device"].startswith("cuda: NVIDIA H100"), "device %r" % r["device"])
        check("--preset %s --runs %d" % (name, runs) in r["command"], r["command"])
        check(r["warnings"] == [] and r["replayed_epochs_last_run"] == 10, "ours %s %r" % (name, r))
    for name, runs in (("hiverge", 4), ("airbench94_muon", 4), ("airbench94", 4), ("hlb", 3),
                       ("fast-simple", 4)):
        r = recs["peer:" + name]
        exp = expected_peer(name, runs)
        check(r["status"] == "ok" and r["n"] == runs and r["runs_requested"] == runs,
              "peer %s: %r" % (name, r))
        for k in ("acc_mean", "acc_min", "acc_max", "seconds_mean"):
            check(close(r[k], exp[k], 6e-5), "peer %s %s %r vs %r" % (name, k, r[k], exp[k]))
        check(r["gpu"]["name"] == "NVIDIA H100 80GB HBM3" and
              r["gpu_after"]["clocks.sm"] == "1980 MHz", "gpu %r" % r["gpu"])
        check("--runs %d" % runs in r["command"] and "--data %s" % DATA in r["command"],
              r["command"])
        check(r["warnings"] == [], "warnings %r" % r["warnings"])
    # airbench94's slow first run is reported, median kept
    ab = recs["peer:airbench94"]
    check(ab["seconds_first"] == 6.07 and close(ab["seconds_median"], 2.015), "airbench94 %r" % ab)

    j = json.load(open(os.path.join(out, "compare.json")))
    check(j["same_gpu"] and j["gpus"] == ["NVIDIA H100 80GB HBM3"], "gpus %r" % j["gpus"])
    for o in ("airbench94", "hiverge"):  # by median seconds: airbench94's slow first run aside
        for p in ("hiverge", "airbench94_muon", "airbench94", "hlb", "fast-simple"):
            want = recs["peer:" + p]["seconds_median"] / recs["ours:" + o]["seconds_median"]
            check(close(j["ratios"][o][p], want), "ratio %s/%s %r vs %r"
                  % (p, o, j["ratios"][o][p], want))
    md = open(os.path.join(out, "compare.md")).read()
    check(md == stdout, "stdout is not compare.md")
    check("| ours:airbench94 | ours | 4 | 0.9402 |" in md, md)
    check("| ours \\ peer | hiverge | airbench94_muon | airbench94 | hlb | fast-simple |" in md, md)
    ratio = recs["peer:hlb"]["seconds_median"] / recs["ours:airbench94"]["seconds_median"]
    check(("| airbench94 | %.2f |" % (recs["peer:hiverge"]["seconds_median"] /
                                       recs["ours:airbench94"]["seconds_median"])) in md, md)
    check("%.2f" % ratio in md, md)
    check("(median seconds per run;" in md, md)
    ab_ratio = recs["peer:airbench94"]["seconds_median"] / recs["ours:airbench94"]["seconds_median"]
    check(close(j["ratios"]["airbench94"]["airbench94"], ab_ratio), "airbench94's first run counted")
    check("ours:muon94: skipped" in md, md)
    check("NVIDIA H100 80GB HBM3, max SM clock 1980 MHz" in md, md)
    log = open(os.path.join(out, "compare-peers.log")).read()
    check("Accuracies: Mean:" in log and "==== " in log, "log lacks the peers' output")


@case
def merge_across_only_invocations():
    out = os.path.join(TMP, "merged")
    common = ("--out", out, "--runs", "3")
    tool(*common, "--only", "ours:airbench94", expect=0)
    tool(*common, "--only", "peer:hlb", expect=0)
    tool(*common, "--only", "hiverge", expect=0)  # bare: ours:hiverge and peer:hiverge
    check(sorted(by_entry(out)) == ["ours:airbench94", "ours:hiverge", "peer:hiverge", "peer:hlb"],
          "entries %r" % sorted(by_entry(out)))
    # another device call's results, merged in twice: added once
    other = os.path.join(TMP, "other")
    tool("--out", other, "--runs", "2", "--only", "peer:airbench94_muon", expect=0)
    st, stdout, stderr = tool("--out", out, "--merge", os.path.join(other, "results.jsonl"),
                              "--table", expect=0)
    check("merged 1 new record" in stderr, stderr)
    st, stdout, stderr = tool("--out", out, "--merge", os.path.join(other, "results.jsonl"),
                              "--table", expect=0)
    check("merged 0 new record" in stderr, stderr)
    recs = by_entry(out)
    check(len(records(out)) == 5, "records %d" % len(records(out)))
    j = json.load(open(os.path.join(out, "compare.json")))
    for o in ("airbench94", "hiverge"):
        for p in ("hlb", "hiverge", "airbench94_muon"):
            want = recs["peer:" + p]["seconds_median"] / recs["ours:" + o]["seconds_median"]
            check(close(j["ratios"][o][p], want), "merged ratio %s/%s" % (p, o))
    check(stdout.count("| ours:") == 2 and stdout.count("| peer:") == 3, stdout)
    # a repeated entry: the latest ok record is shown, the count of older ones kept
    tool(*common, "--only", "peer:hlb", "--peer-runs", "hlb=2", expect=0)
    tool("--out", out, "--table", expect=0)
    j = json.load(open(os.path.join(out, "compare.json")))
    hlb = [e for e in j["entries"] if e["entry"] == "peer:hlb"][0]
    check(hlb["n"] == 2 and hlb["older_records"] == 1, "hlb %r" % hlb)
    # --skip-done leaves out what is measured
    st, _, stderr = tool("--out", out, "--skip-done", "--presets", "airbench94",
                         "--peers-list", "hlb,airbench94", "--dry-run", expect=0)
    check("peer:hlb: already measured" in stderr and "peer:airbench94 " in stderr
          and "ours:airbench94 " not in stderr.split("already measured")[-1], stderr)


@case
def failures_are_reported():
    out = os.path.join(TMP, "failing")
    st, stdout, stderr = tool(
        "--out", out, "--presets", "airbench94", "--runs", "4", "--budget", "2",
        "--peers-list", "hlb,airbench94,hiverge,airbench94_muon",
        env={"FAKE_PEERS_MODE": "hlb=fail,airbench94=garbage,hiverge=hang:2,"
                                "airbench94_muon=crash:3"}, expect=1)
    recs = by_entry(out)
    r = recs["peer:hlb"]
    check(r["status"] == "failed" and "exit status 1" in r["error"]
          and "before any run finished" in r["error"], "hlb %r" % r)
    check("no kernel image" in r["output_tail"], "hlb tail %r" % r["output_tail"])
    r = recs["peer:airbench94"]
    check(r["status"] == "failed" and "nothing parsable" in r["error"]
          and "exit status 0" in r["error"], "airbench94 %r" % r)
    r = recs["peer:hiverge"]
    check(r["status"] == "partial" and r["n"] == 2 and r["timed_out"]
          and "cut off at its budget of 2 s" in r["error"], "hiverge %r" % r)
    check(close(r["acc_mean"], mean(fake_peers.values("hiverge", 2)[0])), "hiverge partial mean")
    r = recs["peer:airbench94_muon"]
    check(r["status"] == "partial" and r["n"] == 3 and "exit status 1" in r["error"],
          "muon %r" % r)
    check(recs["ours:airbench94"]["status"] == "ok", "ours still measured")
    # ours cut off at its budget after 2 of 4 runs: speedrun writes the finished runs' summary,
    # and they count (partial), as a peer's finished runs do
    out3 = os.path.join(TMP, "ours-cut")
    tool("--out", out3, "--presets", "airbench94", "--runs", "4", "--budget", "2",
         "--peers-list", "", env={"FAKE_SPEEDRUN_MODE": "hang:2"}, expect=1)
    r = by_entry(out3)["ours:airbench94"]
    check(r["status"] == "partial" and r["n"] == 2 and r["timed_out"]
          and "cut off at its budget of 2 s after 2 finished run(s) of 4" in r["error"], "ours %r" % r)
    check(close(r["acc_mean"], mean(fake_peers.ours_values("airbench94", 2)[0])), "ours partial mean")
    for s in ("peer:hlb: FAILED: peer hlb exit status 1", "peer:airbench94: FAILED",
              "printed nothing parsable", "peer:hiverge: PARTIAL", "RuntimeError: CUDA error"):
        check(s in stderr, "%r not in stderr:\n%s" % (s, stderr))
    md = open(os.path.join(out, "compare.md")).read()
    check("PARTIAL: peer hiverge cut off" in md and "peer:hlb: failed" in md, md)
    # a preset unknown to speedrun where `speedrun presets` cannot say: from train's error
    out2 = os.path.join(TMP, "nopresets")
    st, _, stderr = tool("--out", out2, "--presets", "muon94", "--peers-list", "", expect=0,
                         env={"FAKE_SPEEDRUN_NO_PRESETS": "1"})
    r = by_entry(out2)["ours:muon94"]
    check(r["status"] == "skipped" and "unknown preset" in r["error"], "muon94 %r" % r)
    # the --total budget: nothing is started with too little left
    st, _, stderr = tool("--out", out2, "--presets", "", "--peers-list", "hlb", "--total", "1",
                         "--min-entry", "5", expect=1)
    check("peer:hlb: not started" in stderr and "--only peer:hlb" in stderr, stderr)
    # usage errors
    st, _, stderr = tool("--out", out2, "--peers-list", "nosuch", expect=2)
    check("unknown peer 'nosuch'" in stderr, stderr)
    st, _, stderr = tool("--out", out2, "--only", "peer:fast-simple", expect=2)
    check("names no entry" in stderr, stderr)


@case
def recording_failure_is_said():
    # ours measured op by op because the CUDA graphs could not be recorded: said in the table
    out = os.path.join(TMP, "recording-failed")
    _, md, _ = tool("--out", out, "--presets", "airbench94", "--runs", "2", "--peers-list", "hiverge",
                    env={"FAKE_RECORDING_FAILED": "epoch 0: operation not permitted"}, expect=0)
    r = by_entry(out)["ours:airbench94"]
    check(r["status"] == "ok" and r["replayed_epochs_last_run"] == 0, "ours %r" % r)
    check(r["warnings"] == ["CUDA graph recording failed (epoch 0: operation not permitted): "
                            "epochs ran op by op"], "warnings %r" % r["warnings"])
    check("CUDA graph recording failed" in md, md)


@case
def atomic_append():
    path = os.path.join(TMP, "append", "results.jsonl")
    os.makedirs(os.path.dirname(path))
    writer = ("import sys, importlib.machinery as m\n"
              "cp = m.SourceFileLoader('cp', %r).load_module()\n"
              "for i in range(20):\n"
              "    cp.append_record(%r, {'schema': cp.SCHEMA, 'id': '%%s-%%d' %% (sys.argv[1], i),\n"
              "        'entry': 'peer:x', 'pad': 'x' * 20000})\n" % (TOOL, path))
    procs = [subprocess.Popen([PY, "-c", writer, str(k)]) for k in range(6)]
    check(all(p.wait() == 0 for p in procs), "a writer failed")
    raw = open(path, "rb").read().split(b"\n")
    check(raw[-1] == b"" and len(raw) == 121, "lines %d" % len(raw))
    ids = [json.loads(l)["id"] for l in raw[:-1]]  # every line whole JSON
    check(len(set(ids)) == 120, "ids %d" % len(set(ids)))
    # a torn last line (no newline): skipped on reading, the next record starts a new line
    with open(path, "ab") as f:
        f.write(b'{"schema": "compare-peers/1", "id": "torn", "entry": "pe')
    warnings = []
    check(len(cp.read_records(path, warn=warnings.append)) == 120 and len(warnings) == 1,
          "torn line: %r" % warnings)
    cp.append_record(path, {"schema": cp.SCHEMA, "id": "after", "entry": "peer:y"})
    recs = cp.read_records(path, warn=lambda m: None)
    check(len(recs) == 121 and recs[-1]["id"] == "after", "after torn: %d" % len(recs))
    # a short write is rolled back: the file keeps its size
    size = os.path.getsize(path)
    real_write = cp.os.write
    cp.os.write = lambda fd, data: real_write(fd, data[:10])
    try:
        cp.append_record(path, {"schema": cp.SCHEMA, "id": "short", "entry": "peer:z"})
        raise AssertionError("no error on a short write")
    except OSError as e:
        check("short write" in str(e), str(e))
    finally:
        cp.os.write = real_write
    check(os.path.getsize(path) == size, "short write left %d bytes"
          % (os.path.getsize(path) - size))
    # NaN is refused before anything is written
    try:
        cp.append_record(path, {"schema": cp.SCHEMA, "id": "nan", "entry": "x", "v": float("nan")})
        raise AssertionError("NaN written")
    except ValueError:
        pass
    check(os.path.getsize(path) == size, "NaN record left bytes")


@case
def help_and_pack():
    p = subprocess.run([PY, TOOL, "--help"], capture_output=True, text=True)
    check(p.returncode == 0 and "--only" in p.stdout and "--table" in p.stdout, p.stdout)
    dest = os.path.join(TMP, "packed")
    st, _, stderr = tool("--pack-peers", dest, expect=0)
    check(os.path.isfile(os.path.join(dest, "run_hlb_cifar10.py")), stderr)


def main():
    for fn in CASES:
        try:
            fn()
        except Exception:
            RESULTS["failed"] += 1
            print("FAIL %s" % fn.__name__)
            traceback.print_exc()
        else:
            RESULTS["passed"] += 1
            print("ok   %s" % fn.__name__)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    if RESULTS["failed"] == 0:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print("(stand-ins and outputs kept in %s)" % TMP)
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
