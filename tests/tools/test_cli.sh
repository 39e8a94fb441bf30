#!/usr/bin/env bash
# test_cli.sh: the `speedrun` program as a user runs it. The unit tests call the commands'
# functions; this checks the command line in front of them (app/speedrun.cpp): every subcommand
# on a small synthetic set that `speedrun data` writes, the files each promises (summary, log,
# DAWNBench TSV, plot, checkpoint, ONNX model, SVG diagram, bench JSON), that `eval` of the
# checkpoint gives the accuracy the run reported, that an interrupted run exits with 130 and
# `--resume` ends where an uninterrupted run ends, and that bad input stops with exit status 1
# and a "speedrun: error:" line naming what is wrong.
# Usage: test_cli.sh SPEEDRUN PRESETS_DIR VERSION   (ctest `cli`)
set -euo pipefail
B=$(realpath "$1")
presets=$(realpath "$2")
version=$3
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
contains() {  # contains FILE TEXT
    grep -qF -- "$2" "$1" || { echo "--- $1:" >&2; cat "$1" >&2; fail "$1 lacks '$2'"; }
}
json() {  # json FILE EXPR: prints EXPR of the parsed file (j)
    /usr/bin/python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print($2)" "$1"
}
# expect_error TEXT -- COMMAND...: exits with 1 and says "speedrun: error: ...TEXT..."
expect_error() {
    local text=$1
    shift 2
    local rc=0
    "$@" > out.txt 2> err.txt || rc=$?
    [ "$rc" = 1 ] || { cat err.txt >&2; fail "$* exited with $rc, not 1"; }
    contains err.txt "speedrun: error: "
    contains err.txt "$text"
}

# -- presets, describe
"$B" presets > presets.txt
for f in "$presets"/*.json; do
    n=$(basename "$f" .json)
    grep -q "^$n " presets.txt || fail "speedrun presets does not list $n"
done
"$B" describe --preset airbench94 > describe.txt
contains describe.txt "forward FLOPs/image   0.236 GFLOP"  # airbench94: ~0.24 GFLOP (the peers')
contains describe.txt "one full run          0.360 PFLOP"
if command -v dot > /dev/null; then
    "$B" describe --svg diagrams/net.svg > /dev/null  # (a folder to be made)
    head -c 200 diagrams/net.svg | grep -q "<?xml" || fail "net.svg is not SVG"
    grep -q "<svg" diagrams/net.svg || fail "net.svg is not SVG"
    # a path is an argument, never a command line: quotes and $(...) in it are a file's name
    "$B" describe --svg "diagrams/it's \$(touch injected).svg" > /dev/null
    [ ! -e injected ] || fail "describe --svg ran a command written in its path"
    grep -q "<svg" "diagrams/it's \$(touch injected).svg" || fail "--svg with a quote in its path: no SVG"
    # a symbolic link stays one: the file it points to (dangling: made) is written
    ln -s target.svg diagrams/link.svg
    "$B" describe --svg diagrams/link.svg > /dev/null
    [ -L diagrams/link.svg ] && grep -q "<svg" diagrams/target.svg || fail "--svg replaced a symbolic link"
    if ls -a diagrams | grep -q "tmp"; then ls -a diagrams >&2; fail "--svg left a temporary file"; fi
else
    echo "note: graphviz (dot) not installed: describe --svg not checked"
fi

# -- data: a synthetic set in CIFAR-10's binary format, read back and checked
"$B" data --write-synthetic syn --seed 3 > data-write.txt
contains data-write.txt "to syn"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    [ "$(stat -c %s syn/$f.bin)" = 30730000 ] || fail "syn/$f.bin is not 10,000 records of 3,073 bytes"
done
if ls -a . | grep -q "speedrun-tmp"; then fail "--write-synthetic left its temporary folder"; fi
[ "$(stat -c %a syn)" = 755 ] || fail "--write-synthetic: the folder is not readable by others (mode $(stat -c %a syn))"
"$B" data --data syn --no-download > data.txt
contains data.txt "50000 train, 10000 test images"
contains data.txt "train classes [5000 5000 5000 5000 5000 5000 5000 5000 5000 5000]"
contains data.txt "training images' fingerprint fnv1a64:"

# -- train: a tiny run with every output; a config file and --set over the preset
tiny=(--data syn --no-download --device cpu --threads 2 --set 'net.widths=[8,16,16]'
      --batch-size 256 --epochs 2 --subset 1024 --test-subset 256)
echo '{"opt": {"lr": 10.0}}' > cfg.json
plot=()  # (without gnuplot, --plot is refused before the run)
if command -v gnuplot > /dev/null; then plot=(--plot plots/p.png); fi  # (a folder to be made)
"$B" train "${tiny[@]}" --config cfg.json --summary-json s.json --log l.jsonl \
    --dawnbench db.tsv "${plot[@]}" --checkpoint c.safetensors > train.txt 2> train-err.txt
# (8 steps: the lookahead's final copy drops the last 3, which a short run is told)
contains train-err.txt "the last 3 of the run's 8 steps are not in its final weights"
[ "$(json s.json 'j["recipe"]["opt"]["lr"]')" = 10.0 ] || fail "--config: opt.lr is not 10"
[ "$(json s.json 'j["recipe"]["net"]["widths"]')" = "[8, 16, 16]" ] || fail "--set net.widths not applied"
[ "$(json s.json 'len(j["runs"]), j["n_train"], j["n_test"]')" = "1 1024 256" ] || fail "summary counts"
acc=$(sed -n 's/.*TTA accuracy mean \([0-9.]*\) .*/\1/p' train.txt)  # as the program rounds it
[ -n "$acc" ] || fail "train printed no TTA accuracy"
[ "$(json s.json "abs(j['runs'][0]['test_accuracy_tta'] - $acc) <= 5e-5")" = True ] \
    || fail "the summary's TTA accuracy is not the printed $acc"
# --version: the project's version, the source commit at build time (HEAD or an earlier commit of
# the clone, where the sources are a git clone: a commit since the build is not in the binary) and
# what the build includes; the summary records the same
"$B" --version > version.txt
contains version.txt "speedrun $version (git "
contains version.txt "CUDA backend: "
rev=$(sed -n 's/^speedrun [^ ]* (git \(.*\))$/\1/p' version.txt)
[ "$(json s.json 'j["program"]["version"], j["program"]["git"]')" = "$version $rev" ] \
    || fail "the summary's program is not $version $rev"
parts=$(sed -n 's/^MPI: \(on\|off\), NCCL: \(on\|off\), ONNX export: \(on\|off\)$/\1 \2 \3/p' version.txt)
[ -n "$parts" ] || fail "--version has no 'MPI: .., NCCL: .., ONNX export: ..' line"
[ "$(json s.json '" ".join("on" if j["program"][k] else "off" for k in ("mpi", "nccl", "onnx_export"))')" = "$parts" ] \
    || fail "the summary's program does not say MPI, NCCL, ONNX export: $parts"
if [ -e "$presets/../.git" ] && git -C "$presets/.." rev-parse HEAD > /dev/null 2>&1; then
    git -C "$presets/.." merge-base --is-ancestor "${rev%%-dirty*}" HEAD \
        || fail "--version says git $rev, not a commit of the clone's history"
else
    echo "note: the sources are not a git clone: the commit --version names not checked"
fi
[ "$(wc -l < l.jsonl)" = 3 ] || fail "l.jsonl: not 2 epoch lines and a run line"
/usr/bin/python3 -c "import json, sys; [json.loads(l) for l in open(sys.argv[1])]" l.jsonl \
    || fail "l.jsonl: a line is not a JSON object"
head -1 db.tsv | grep -qP '^epoch\thours\ttop1Accuracy$' || fail "db.tsv header"
[ "$(wc -l < db.tsv)" = 3 ] || fail "db.tsv: not a header and 2 epochs"
# its last row is the run's score: the TTA accuracy and the timed total
[ "$(tail -1 db.tsv | cut -f3)" = "$(json s.json '"%.2f" % (100 * j["runs"][0]["test_accuracy_tta"])')" ] \
    || { cat db.tsv >&2; fail "db.tsv: the last row is not the TTA accuracy"; }
[ "$(tail -1 db.tsv | cut -f2)" = "$(json s.json '"%.8f" % (j["runs"][0]["train_seconds"] / 3600)')" ] \
    || { cat db.tsv >&2; fail "db.tsv: the last row's hours are not the timed total"; }
if command -v gnuplot > /dev/null; then
    [ "$(head -c 4 plots/p.png | od -An -c | tr -d ' ')" = '211PNG' ] || fail "plots/p.png is not a PNG"
    # quotes and backquotes in the PNG's path and the data folder's name (the plot's title): no
    # command runs, the plot is written; gnuplot's files are beside the PNG, not in $TMPDIR
    q="syn 'q\"\`touch injected\`"
    ln -s syn "$q"
    qargs=()
    for x in "${tiny[@]}"; do [ "$x" = syn ] && x=$q; qargs+=("$x"); done
    TMPDIR=/nonexistent "$B" train "${qargs[@]}" --plot "plots/it's \`touch injected\`.png" > /dev/null
    [ ! -e injected ] || fail "--plot ran a command written in a path"
    [ "$(head -c 4 "plots/it's \`touch injected\`.png" | od -An -c | tr -d ' ')" = '211PNG' ] \
        || fail "--plot with quotes in its path: no PNG"
    if ls -a plots | grep -q "tmp"; then ls -a plots >&2; fail "--plot left a temporary file"; fi
else
    echo "note: gnuplot not installed: --plot not checked"
fi

# -- eval of the checkpoint: the accuracy the run reported (same weights, same test images)
"$B" eval --checkpoint c.safetensors --data syn --no-download --device cpu --threads 2 \
    --test-subset 256 > eval.txt
contains eval.txt "$acc with TTA level 2 (256 images"
contains eval.txt "; trained by build $rev)"
[ "$(json s.json 'j["runs"][0]["builds"]')" = "['$rev']" ] || fail "the summary's run builds are not ['$rev']"

# -- predict: a 32x32 PNG written here
/usr/bin/python3 - << 'EOF'
import struct, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
raw = b"".join(b"\0" + b"".join(bytes((x * 8, y * 8, 128)) for x in range(32)) for y in range(32))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
open("img.png", "wb").write(png)
EOF
"$B" predict --checkpoint c.safetensors --device cpu --threads 2 --top 3 img.png > predict.txt
grep -qE '^img\.png +[a-z]+ +[01]\.[0-9]{4} ' predict.txt || { cat predict.txt >&2; fail "predict: no class for img.png"; }

# -- export: an ONNX model where --version says the build has ONNX export, else the message
rc=0
"$B" export --checkpoint c.safetensors --onnx m.onnx > export.txt 2> export-err.txt || rc=$?
if [ "${parts##* }" = on ]; then
    [ "$rc" = 0 ] || { cat export-err.txt >&2; fail "export: exit status $rc in a build with ONNX export"; }
    [ -s m.onnx ] || fail "export said it wrote m.onnx"
    contains export.txt "wrote m.onnx"
else
    [ "$rc" = 1 ] || fail "export: exit status $rc in a build without ONNX export, not 1"
    contains export-err.txt "built without ONNX"
fi

# -- bench: one timed step, as JSON
"$B" bench --device cpu --threads 2 --set 'net.widths=[8,16,16]' \
    --batch-size 64 --steps 1 --json b.json > bench.txt
[ "$(json b.json 'j["batch_size"], j["train_images_per_second"] > 0')" = "64 True" ] || fail "b.json"

# -- interrupted and resumed: exit 130 with the checkpoint saved; the resumed run ends as the
#    uninterrupted one (--deterministic: bit-identical on the CPU)
"$B" train "${tiny[@]}" --deterministic --summary-json full.json > full.txt
rc=0
"$B" train "${tiny[@]}" --deterministic --checkpoint r.safetensors --stop-after-step 5 \
    > stop.txt 2> stop-err.txt || rc=$?
[ "$rc" = 130 ] || fail "--stop-after-step: exit status $rc, not 130"
contains stop-err.txt "interrupted"
cp r.safetensors r5.safetensors
"$B" train "${tiny[@]}" --deterministic --resume r.safetensors --summary-json resumed.json \
    > resumed.txt 2> resumed-err.txt
contains resumed-err.txt "--resume continues the recipe saved in r.safetensors; --set, --epochs, --batch-size not used"
contains resumed.txt "resumed       at step 5 of 8"  # (a run that started again from step 0 would end alike)
# --stop-after-step with --resume alone: the resumed run stops again, saving to its file
rc=0
"$B" train "${tiny[@]}" --deterministic --resume r5.safetensors --stop-after-step 6 > resume-stop.txt 2> resume-stop-err.txt || rc=$?
[ "$rc" = 130 ] || { cat resume-stop-err.txt >&2; fail "--resume r5.safetensors --stop-after-step 6: exit status $rc, not 130"; }
contains resume-stop-err.txt "stopped after step 6 of 8; resume with --resume r5.safetensors"
contains resume-stop.txt "resumed       at step 5 of 8"
[ "$(json resumed.json 'j["runs"][0]["test_accuracy_tta"]')" = \
  "$(json full.json 'j["runs"][0]["test_accuracy_tta"]')" ] || fail "the resumed run ends elsewhere"

# -- a finished checkpoint resumed on fewer test images: both accuracies are of those images
#    (the one without TTA was the saved last epoch's, on the run's 256)
"$B" train "${tiny[@]:0:${#tiny[@]}-2}" --resume c.safetensors --test-subset 128 > resume128.txt 2> /dev/null  # (tiny ends with --test-subset 256)
"$B" eval --checkpoint c.safetensors --data syn --no-download --device cpu --threads 2 \
    --test-subset 128 > eval128.txt
no_tta=$(sed -n 's/^test accuracy \([0-9.]*\) without TTA, .*(128 images.*/\1/p' eval128.txt)
[ -n "$no_tta" ] || { cat eval128.txt >&2; fail "eval --test-subset 128 printed no accuracy"; }
contains resume128.txt "without TTA $no_tta)"
# the saved epochs' figures are of the run's 256 images: said, and kept in the summary
contains resume128.txt "saved epochs above measured test_acc on 256 test images, the run's --test-subset then; this one evaluates on 128"
"$B" train "${tiny[@]}" --resume c.safetensors --summary-json resumed256.json > resume256.txt 2> /dev/null
if grep -q "test images, the run's --test-subset then" resume256.txt; then fail "a resume on the same test images says they differ"; fi
[ "$(json resumed256.json '{e["test_images"] for e in j["runs"][0]["epochs"]}')" = "{256}" ] \
    || fail "the summary's epochs do not say they were measured on 256 test images"
# resumed twice, on 256 then 128 test images, then on 64: the note names both earlier counts
three=("${tiny[@]:0:${#tiny[@]}-2}")
for i in "${!three[@]}"; do [ "${three[$i]}" = --epochs ] && three[$((i + 1))]=3; done
"$B" train "${three[@]}" --test-subset 256 --checkpoint m.safetensors --stop-after-step 5 > /dev/null 2>&1 || true
"$B" train "${three[@]}" --test-subset 128 --resume m.safetensors --stop-after-step 9 > /dev/null 2>&1 || true
"$B" train "${three[@]}" --test-subset 64 --resume m.safetensors > resume64.txt 2> /dev/null
contains resume64.txt "the 2 saved epochs above measured test_acc on 256 then 128 test images"

# another --subset than the checkpoint's is refused before the set-up
more=("${tiny[@]}")
for i in "${!more[@]}"; do [ "${more[$i]}" = --subset ] && more[$((i + 1))]=2048; done
expect_error "the checkpoint was trained on 1024 images, this run has 2048" -- "$B" train "${more[@]}" --resume c.safetensors
# other images of the same count (the built-in synthetic set, not syn/): refused before the set-up
other=()
for x in "${tiny[@]}"; do [ "$x" = syn ] && x=--synthetic; [ "$x" = --data ] && continue; other+=("$x"); done
expect_error "the checkpoint was trained on other images than this run's (it read syn" -- \
    "$B" train "${other[@]}" --resume c.safetensors
if grep -q "set-up" out.txt; then fail "--resume on other images: refused only after the set-up"; fi
if grep -q "set-up" out.txt; then fail "--resume with another --subset: refused only after the set-up"; fi

# -- several runs with --checkpoint: one file per run, named by its seed
one_epoch=("${tiny[@]}")
for i in "${!one_epoch[@]}"; do [ "${one_epoch[$i]}" = --epochs ] && one_epoch[$((i + 1))]=1; done
"$B" train "${one_epoch[@]}" --runs 2 --seed 7 --checkpoint runs.safetensors > runs.txt
[ -s runs.seed7.safetensors ] && [ -s runs.seed8.safetensors ] && [ ! -e runs.safetensors ] \
    || { ls >&2; fail "--runs 2 --checkpoint runs.safetensors: not runs.seed7/8.safetensors"; }
contains runs.txt "checkpoint written to runs.seed8.safetensors"
"$B" eval --checkpoint runs.seed7.safetensors --data syn --no-download --device cpu --threads 2 > eval7.txt
contains eval7.txt "seed 7"
# eval --synthetic: the set of train --synthetic (no note); --data syn is other images (a note)
synth=()
for x in "${one_epoch[@]}"; do [ "$x" = syn ] && x=--synthetic; [ "$x" = --data ] && continue; synth+=("$x"); done
"$B" train "${synth[@]}" --checkpoint synth.safetensors > synth.txt
"$B" eval --checkpoint synth.safetensors --synthetic --device cpu --threads 2 --test-subset 256 > evalsyn.txt 2> evalsyn-err.txt
contains evalsyn.txt "synthetic"
if grep -q "other images" evalsyn-err.txt; then fail "eval --synthetic of a --synthetic checkpoint: noted as other images"; fi
"$B" eval --checkpoint synth.safetensors --data syn --no-download --device cpu --threads 2 --test-subset 256 > evalo.txt 2> evalo-err.txt
contains evalo-err.txt "the checkpoint was trained on other images"
expect_error "--synthetic and --data syn: choose one" -- "$B" eval --checkpoint synth.safetensors --synthetic --data syn
# interrupted in the first of three runs: the runs that did not start are named, with the flags
rc=0
"$B" train "${one_epoch[@]}" --runs 3 --seed 7 --checkpoint three.safetensors --stop-after-step 2 \
    > /dev/null 2> three-err.txt || rc=$?
[ "$rc" = 130 ] || { cat three-err.txt >&2; fail "--runs 3 --stop-after-step 2: exit status $rc, not 130"; }
contains three-err.txt "runs 2-3 of 3 (seeds 8-9) did not start; to train them: --seed 8 --runs 2"
# one run left: --runs 1 would save to FILE itself, so the advice names the file of its seed
rc=0
"$B" train "${one_epoch[@]}" --runs 2 --seed 7 --checkpoint two.safetensors --stop-after-step 2 \
    > /dev/null 2> two-err.txt || rc=$?
[ "$rc" = 130 ] || { cat two-err.txt >&2; fail "--runs 2 --stop-after-step 2: exit status $rc, not 130"; }
contains two-err.txt "run 2 of 2 (seed 8) did not start; to train it: --seed 8 --runs 1 --checkpoint two.seed8.safetensors"
# interrupted (SIGINT) after the first of three runs finished: the finished runs' summary is
# printed and written, marked as interrupted; the exit status is still 130
"$B" train "${one_epoch[@]}" --runs 3 --seed 7 --summary-json cut.json > cut.txt 2> cut-err.txt &
pid=$!
for _ in $(seq 1200); do grep -q "run 2 of 3" cut.txt && break; sleep 0.05; done
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" = 130 ] || { cat cut.txt cut-err.txt >&2; fail "--runs 3 interrupted in run 2 or 3: exit status $rc, not 130"; }
done_runs=$(json cut.json 'len(j["runs"])')
case "$done_runs" in 1|2) ;; *) cat cut.txt >&2; fail "interrupted --runs 3: $done_runs runs in the summary, not the 1 or 2 finished";; esac
[ "$(json cut.json '(j["interrupted"], j["runs_requested"], j["runs"][0]["seed"])')" = "(True, 3, 7)" ] \
    || fail "interrupted --runs 3: the summary does not say it was cut off after seed 7"
contains cut.txt "summary of the $done_runs finished run"
contains cut.txt "of 3 (interrupted):"
[ "$(json full.json 'j["interrupted"]')" = False ] || fail "a finished run's summary says it was interrupted"

# interrupted (SIGINT) during run 1's final evaluation (no step left to stop after): run 1 is
# whole, run 2 does not start; a second SIGINT ends the program at once
# (all 10,000 test images, a wider network: an evaluation of a few seconds)
noeval=("${one_epoch[@]:0:${#one_epoch[@]}-2}" --no-epoch-eval --set 'net.widths=[32,64,64]')
signal_at_eval() {  # signal_at_eval COUNT OUT: SIGINT COUNT times once the epoch's row is printed
    "$B" train "${noeval[@]}" --runs 2 --summary-json "$2.json" > "$2.txt" 2> "$2-err.txt" &
    local pid=$! rc=0
    for _ in $(seq 1200); do grep -q "^ *0 |" "$2.txt" && break; sleep 0.05; done
    kill -INT "$pid"
    # (a second signal within a second of the first counts as the same one)
    if [ "$1" = 2 ]; then sleep 1.2; kill -INT "$pid" 2> /dev/null || true; fi
    wait "$pid" || rc=$?
    echo "$rc"
}
rc=$(signal_at_eval 1 ev)
[ "$rc" = 130 ] || { cat ev.txt ev-err.txt >&2; fail "SIGINT at run 1's final evaluation: exit status $rc, not 130"; }
contains ev-err.txt "interrupted during run 1's final evaluation; that run finished"
contains ev-err.txt "run 2 of 2 (seed 1) did not start"
[ "$(json ev.json '(len(j["runs"]), j["interrupted"])')" = "(1, True)" ] || fail "SIGINT at evaluation: not run 1 alone in the summary"
[ "$(json ev.json 'j["runs"][0]["epochs"][0]["test_acc"]')" = None ] \
    || fail "--no-epoch-eval: the summary's epoch has a test_acc, not null"
# a run without per-epoch evaluation, resumed with --dawnbench: refused (its epochs have no accuracy)
"$B" train "${tiny[@]}" --no-epoch-eval --stop-after-step 5 --checkpoint ne.safetensors > ne.txt 2>&1 || true
[ -s ne.safetensors ] || { cat ne.txt >&2; fail "--stop-after-step 5: no checkpoint"; }
expect_error "--dawnbench needs each epoch's test accuracy, but epoch 0 of ne.safetensors was not evaluated" -- \
    "$B" train --resume ne.safetensors --data syn --no-download --device cpu --threads 2 --dawnbench ne.tsv
# a stop at or before the checkpoint's step is refused; eval says the checkpoint is unfinished
expect_error "--stop-after-step 3: the checkpoint ne.safetensors is at step 5 already" -- \
    "$B" train --resume ne.safetensors --data syn --no-download --device cpu --threads 2 --stop-after-step 3
"$B" eval --checkpoint ne.safetensors --data syn --no-download --device cpu --threads 2 --test-subset 256 > ne-eval.txt
contains ne-eval.txt "step 5 of 8, an unfinished run's"
# a resume without --subset trains on the checkpoint's 1024 images (here: to its end)
"$B" train --resume ne.safetensors --data syn --no-download --device cpu --threads 2 --test-subset 256 --summary-json ne.json > ne-resume.txt
[ "$(json ne.json '(j["n_train"], j["runs"][0]["steps"])')" = "(1024, 8)" ] || { cat ne-resume.txt >&2; fail "resume without --subset"; }
rc=$(signal_at_eval 2 ev2)
[ "$rc" = 130 ] || fail "two SIGINTs: exit status $rc, not 130 (the signal's)"
[ ! -e ev2.json ] || fail "two SIGINTs: the program went on to write its summary"

# -- presets: the descriptions, sources and published figures start in one column
cols=$(awk '/^ / {print index($0, $1)} /^[^ ]/ {match($0, /^[^ ]+ +/); print RLENGTH + 1}' presets.txt | sort -u | wc -l)
[ "$cols" = 1 ] || { cat presets.txt >&2; fail "speedrun presets: the columns do not line up"; }

# -- dist-check and sweep take --cpu-conv (a named algorithm times nothing); dist-check trains on
#    random batches and says that --data is not used
small=(--device cpu --threads 2 --set 'net.widths=[16,32,32]' --batch-size 64)
SPEEDRUN_CPU_CONV_LOG=1 "$B" dist-check "${small[@]}" --data syn > dc.txt 2> dc-err.txt
contains dc-err.txt "dist-check trains on seeded random batches; --data not used"
contains dc-err.txt "algorithm:"  # (timed: the default, fastest)
SPEEDRUN_CPU_CONV_LOG=1 "$B" dist-check "${small[@]}" --cpu-conv direct > dc.txt 2> dc-err.txt
if grep -q "algorithm:" dc-err.txt; then fail "dist-check --cpu-conv direct still timed the algorithms"; fi
SPEEDRUN_CPU_CONV_LOG=1 "$B" sweep "${small[@]}" --data syn --no-download --subset 256 --test-subset 64 \
    --epochs 1 --runs 1 --cpu-conv direct --results sw.jsonl > sw.txt 2> sw-err.txt
[ -s sw.jsonl ] || { cat sw.txt sw-err.txt >&2; fail "sweep --cpu-conv direct wrote no results"; }
if grep -q "algorithm:" sw-err.txt; then fail "sweep --cpu-conv direct still timed the algorithms"; fi

# -- bad input: exit status 1 and a message naming the cause
expect_error "unknown preset 'nope'" -- "$B" train --preset nope
expect_error "/nonexistent" -- "$B" train --data /nonexistent --no-download
expect_error "--storage fp12" -- "$B" train "${tiny[@]}" --storage fp12
echo '{"opt": {"lr": 10.0,}}' > broken.json
expect_error "broken.json: not valid JSON" -- "$B" train "${tiny[@]}" --config broken.json
expect_error "opt.lerning_rate" -- "$B" train "${tiny[@]}" --set opt.lerning_rate=1
expect_error "s.json" -- "$B" eval --checkpoint s.json --data syn --no-download
expect_error "nothere.png: no such file" -- "$B" predict --checkpoint c.safetensors nothere.png
expect_error "--resume continues one run" -- "$B" train "${tiny[@]}" --resume r.safetensors --runs 2
head -c 1000 syn/test_batch.bin > short.bin && mkdir -p short && cp syn/data_batch_*.bin short/ \
    && mv short.bin short/test_batch.bin
expect_error "test_batch.bin" -- "$B" data --data short --no-download
mkdir -p above && ln -s ../syn above/cifar-10-batches-bin
expect_error "; above/cifar-10-batches-bin has them" -- "$B" data --data above --no-download
expect_error "--frobnicate" -- "$B" train --frobnicate
expect_error "unknown command 'trian' (commands: train, " -- "$B" trian
expect_error "--epochs: must be a positive number (got -1)" -- "$B" train --epochs -1
expect_error "--batch-size: must be a positive number (got nan)" -- "$B" describe --batch-size nan
expect_error "'opt.batch_size' must be an integer (got 1.5)" -- "$B" describe --set opt.batch_size=1.5
expect_error "opt.epochs must be at most 10000" -- "$B" describe --epochs 1e9
expect_error "batch size 50001 is larger than CIFAR-10's training set" -- "$B" describe --batch-size 50001
expect_error "--grid opt.lr=x" -- "$B" sweep "${tiny[@]}" --grid opt.lr=1,x
# a setting the trainer would refuse: before any job runs, not when its turn comes
nobs=()  # (tiny without its --batch-size 256, which would override the grid's)
skip=0
for x in "${tiny[@]}"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    if [ "$x" = --batch-size ]; then skip=1; continue; fi
    nobs+=("$x")
done
expect_error "--grid setting opt.batch_size=2048: batch size 2048 is larger than the training set (1024 images)" -- \
    "$B" sweep "${nobs[@]}" --runs 1 --grid opt.batch_size=256,2048 --results late.jsonl
[ ! -s late.jsonl ] || fail "sweep ran a job before refusing a setting it cannot run"
expect_error "--stop-after-step stops as if interrupted, to resume later: it needs --checkpoint FILE" -- \
    "$B" train "${tiny[@]}" --stop-after-step 3
expect_error "--warmup: must be" -- "$B" train "${tiny[@]}" --warmup -5
expect_error "--threads: must be" -- "$B" eval --checkpoint c.safetensors --threads -3
mkdir -p cfgdir
expect_error "cfgdir: is a directory, not a config file" -- "$B" describe --config cfgdir
echo '{"opt": {"lrr": 1}}' > typo.json
expect_error "typo.json (merged over preset airbench94): config: unknown key 'opt.lrr'" -- \
    "$B" describe --config typo.json
expect_error "the directory already holds data_batch_1.bin" -- "$B" data --write-synthetic syn
expect_error "--synthetic and --data syn: choose one" -- "$B" train "${tiny[@]}" --synthetic
# describe reads no data and runs on no device: it has no such flags (its --help lists none)
expect_error "The following argument was not expected: --synthetic" -- "$B" describe --synthetic
"$B" describe --help > describe-help.txt
contains describe-help.txt "--batch-size"
if grep -qE -- "--(data|device|threads|synthetic|cpu-conv)" describe-help.txt; then
    fail "describe --help lists the data's or the device's flags"
fi
# outputs that cannot be written stop the run before it trains, not after
touch afile
for flag in --checkpoint --summary-json --log --dawnbench; do
    expect_error "$flag afile/x: afile is not a directory" -- "$B" train "${tiny[@]}" $flag afile/x
    if grep -q "train_loss" out.txt; then fail "$flag afile/x: the run trained first"; fi
done
expect_error "--summary-json cfgdir: is a directory" -- "$B" train "${tiny[@]}" --summary-json cfgdir
expect_error "--summary-json /proc/s.json: cannot write in /proc" -- "$B" train "${tiny[@]}" --summary-json /proc/s.json
# ... and those of the other commands that write files, before their work
expect_error "--summary-json cfgdir: is a directory" -- "$B" sweep "${tiny[@]}" --runs 1 --summary-json cfgdir
if grep -q "jobs\? in" out.txt; then fail "sweep --summary-json cfgdir: the sweep ran first"; fi
expect_error "--results afile/r.jsonl: afile is not a directory" -- "$B" sweep "${tiny[@]}" --runs 1 --results afile/r.jsonl
expect_error "--json cfgdir: is a directory" -- "$B" bench --device cpu --threads 2 --set 'net.widths=[8,16,16]' \
    --batch-size 64 --steps 1 --json cfgdir
if grep -q "train step" out.txt; then fail "bench --json cfgdir: the bench ran first"; fi
expect_error "--svg afile/n.svg: afile is not a directory" -- "$B" describe --svg afile/n.svg
# a final pool that leaves more than 1x1, a whitening eps <= 0: config errors, not an internal
# check or a NaN loss at step 1
expect_error "config: net.final_pool 1 leaves 3x3 of the last group's 3x3" -- "$B" train "${tiny[@]}" --set net.final_pool=1
expect_error "whiten.eps must be > 0" -- "$B" describe --set whiten.eps=0
expect_error "1e-300 epochs of 1024 images at batch size 256 make no training step" -- "$B" train "${three[@]/#3/1e-300}"
# a negative seed would wrap to 2^64 - 5; sweep's counts are checked as train's
expect_error "--seed: must be >= 0 (got -5)" -- "$B" train "${tiny[@]}" --seed -5
expect_error "--warmup: must be >= 0 (got -3)" -- "$B" sweep "${tiny[@]}" --warmup -3
# two outputs in one file: the later write would replace the earlier (the checkpoint)
expect_error "--summary-json ./same and --checkpoint same are the same file" -- \
    "$B" train "${tiny[@]}" --checkpoint same --summary-json ./same
expect_error "--log c.safetensors and --resume c.safetensors are the same file" -- \
    "$B" train "${tiny[@]}" --resume c.safetensors --log c.safetensors
# ... but the --resume file saved to again under another spelling is one output, and a log (appended
# to, not replaced) may go to a device
cp c.safetensors c2.safetensors
"$B" train "${tiny[@]}" --resume c2.safetensors --checkpoint ./c2.safetensors --log /dev/null > /dev/null \
    || fail "--resume c2 --checkpoint ./c2 --log /dev/null was refused"
# a FIFO (or a device) would be replaced by the renamed temporary file: refused at the start
mkfifo fifo
expect_error "--summary-json fifo: not a regular file (a FIFO)" -- "$B" train "${tiny[@]}" --summary-json fifo
[ -p fifo ] || fail "--summary-json fifo: the FIFO was replaced"
if [ -s m.onnx ]; then
    expect_error "--onnx cfgdir: is a directory" -- "$B" export --checkpoint c.safetensors --onnx cfgdir
    # an output over an input: the trained checkpoint (the expensive file) stays
    before=$(sha256sum < c.safetensors)
    expect_error "--onnx ./c.safetensors is the file --checkpoint c.safetensors names" -- \
        "$B" export --checkpoint c.safetensors --onnx ./c.safetensors
    [ "$(sha256sum < c.safetensors)" = "$before" ] || fail "export --onnx over its --checkpoint changed it"
fi
expect_error "--summary-json cfg.json is the file --config ./cfg.json names" -- \
    "$B" train "${tiny[@]}" --config ./cfg.json --summary-json cfg.json
expect_error "--svg cfg.json is the file --config cfg.json names" -- "$B" describe --config cfg.json --svg cfg.json
[ "$(cat cfg.json)" = '{"opt": {"lr": 10.0}}' ] || fail "cfg.json was changed by a refused run"
[ -z "$(find . /proc -maxdepth 1 -name '.speedrun-probe*' 2> /dev/null)" ] || fail "the output checks left files behind"
if ! command -v gnuplot > /dev/null; then
    expect_error "--plot needs gnuplot" -- "$B" train "${tiny[@]}" --plot q.png
fi
expect_error "--plot draws each epoch's test accuracy: not with --no-epoch-eval" -- \
    "$B" train "${tiny[@]}" --no-epoch-eval --plot q.png
expect_error "--dawnbench logs each epoch's test accuracy" -- \
    "$B" train "${tiny[@]}" --no-epoch-eval --dawnbench q.tsv
expect_error "not a safetensors file" -- "$B" eval --checkpoint img.png --data syn --no-download
# --deterministic with the automatic device: the CPU, where there is no GPU
if ! command -v nvidia-smi > /dev/null; then
    auto=()
    for x in "${tiny[@]}"; do [ "$x" = --device ] || [ "$x" = cpu ] || auto+=("$x"); done
    "$B" train "${auto[@]}" --deterministic > det.txt
    contains det.txt "TTA accuracy mean"
fi
echo "cli: all checks passed"
