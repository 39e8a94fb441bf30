#!/usr/bin/env bash
# test_coverage.sh: tools/coverage's report on a program compiled here with --coverage: a line
# never run is counted and listed, a function never called is listed, and so is a template's
# instantiation that never ran beside one that did (the case the emulated CUDA kernels need:
# a kernel run for fp32 but never for bf16). Skips (77) without g++ or gcov.
set -euo pipefail
tool=$(realpath "$1")
command -v g++ > /dev/null && command -v gcov > /dev/null || { echo "no g++ or gcov: skipped"; exit 77; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/src" "$t/obj"
cat > "$t/src/prog.cpp" << 'CPP'
#include <cstdio>
template <class T>
T twice(T x) {
    return x + x;
}
int unused(int x) {
    return x * 3;
}
int main(int argc, char**) {
    std::printf("%d\n", twice(argc));
    if (argc > 5) std::printf("%d\n", unused(argc));
    return twice(1.5) > 100 ? twice(2.5f) > 1 : 0;
}
CPP
(cd "$t/obj" && g++ --coverage -O0 -c ../src/prog.cpp -o prog.o && g++ --coverage prog.o -o prog && ./prog > /dev/null)
out=$("$tool" report-from "$t/obj" "$t/src" --show prog.cpp --functions prog.cpp)
echo "$out"
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
echo "$out" | grep -qE '^ +[1-9][0-9]* +[0-9]+ +[0-9.]+% +prog\.cpp$' || fail "no table row for prog.cpp"
echo "$out" | grep -qE '^ +7: +return x \* 3;' || fail "line 7 (unused's body) not listed"
echo "$out" | grep -qE '^ +4: ' && fail "line 4 (twice's body, run) listed as never run"
echo "$out" | grep -qF 'prog.cpp: unused(int)' || fail "unused() not listed"
echo "$out" | grep -qF 'prog.cpp: float twice<float>(float)' || fail "twice<float> not listed"
echo "$out" | grep -qF 'twice<int>' && fail "twice<int> (run) listed"
echo "$out" | grep -qF 'twice<double>' && fail "twice<double> (run) listed"
rc=0
"$tool" report-from "$t/src" "$t/src" > /dev/null 2> "$t/err.txt" || rc=$?
[ "$rc" = 2 ] || fail "a tree without .gcda files: exit $rc, not 2"
grep -q "no .gcda files" "$t/err.txt" || fail "no message for a tree without .gcda files"
echo "coverage: all checks passed"
