#!/usr/bin/env bash
# tools/gpu-data end to end on a stand-in CIFAR-10 (six files of the real size: 1 MB of random
# bytes each, which xz cannot shrink, then zeros, so that xz is quick), cut into pieces of 2.5 MB
# (GPU_DATA_PIECE_BYTES) so that there are several: pack; join the pieces out of order, nothing
# unpacked while one is missing, the missing ones named; compare byte for byte; with --in-order,
# a piece whose earlier parts are not there is refused. A damaged part, a piece without its
# manifest and a file of the wrong size are each refused with a message naming it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tool=$root/tools/gpu-data
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v xz >/dev/null || { echo "SKIPPED: no xz (apt-get install xz-utils)"; exit 77; }

mkdir -p "$t/src"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
  { head -c 1000000 /dev/urandom; head -c 29730000 /dev/zero; } >"$t/src/$f.bin"
done
printf 'label and pixels' | dd of="$t/src/test_batch.bin" conv=notrunc status=none
(cd "$t/src" && sha256sum ./*.bin >SHA256SUMS)

GPU_DATA_PIECE_BYTES=2500000 "$tool" pack "$t/src" "$t/pk" 2>"$t/pack.log" || { cat "$t/pack.log"; fail "pack"; }
[ -f "$t/pk/c1/manifest" ] && [ -x "$t/pk/c1/gpu-data" ] || fail "no piece c1 with manifest and script"
n=$(ls -d "$t"/pk/c* | wc -l)
[ "$n" -ge 3 ] || { cat "$t/pack.log"; fail "6 MB of random bytes in pieces of 2.5 MB: $n pieces, not 3 or more"; }
# the last piece first, then the others but the second: nothing is unpacked yet
order=("$n" 1)
for i in $(seq 3 $((n - 1))); do order+=("$i"); done
order+=(2)
for i in "${order[@]}"; do
  c=$t/pk/c$i
  bash "$c/gpu-data" join "$c" "$t/got" 2>>"$t/join.log" || { cat "$t/join.log"; fail "join $c"; }
  if [ "$i" != 2 ]; then
    ! ls "$t/got"/*.bin >/dev/null 2>&1 || fail "files were unpacked before every part was there (after c$i)"
    ! grep -q "checked" "$t/join.log" || fail "join said 'checked' before every part was there"
  fi
done
grep -q "checked" "$t/join.log" || { cat "$t/join.log"; fail "join did not say the data was checked"; }
grep -q "1 of $n parts in $t/got/.parts (missing: part1 part2" "$t/join.log" || { cat "$t/join.log"; fail "join did not name the missing parts"; }

# --in-order (the device calls): a later piece on a machine without the earlier ones (a fresh
# machine: the last one went cold) is refused, saying so; in order, the pieces join
if bash "$tool" join --in-order "$t/pk/c2" "$t/cold" 2>"$t/cold.log"; then fail "--in-order accepted c2 without c1"; fi
grep -q "part1 is missing in $t/cold/.parts before part2" "$t/cold.log" || { cat "$t/cold.log"; fail "no message for the missing earlier part"; }
for i in $(seq 1 "$n"); do
  bash "$tool" join --in-order "$t/pk/c$i" "$t/inorder" 2>>"$t/inorder.log" || { cat "$t/inorder.log"; fail "--in-order join of c$i"; }
done
cmp -s "$t/src/test_batch.bin" "$t/inorder/test_batch.bin" || fail "--in-order: test_batch.bin differs"
# a call repeated on the same machine after the join: no false "went cold"
bash "$tool" join --in-order "$t/pk/c$n" "$t/inorder" 2>"$t/again.log" || { cat "$t/again.log"; fail "a repeated last join was refused"; }
grep -q "joined and checked before" "$t/again.log" || { cat "$t/again.log"; fail "a repeated last join did not say the data is there"; }
for f in "$t"/src/*.bin; do cmp -s "$f" "$t/got/$(basename "$f")" || fail "$(basename "$f") differs after the round trip"; done
[ ! -d "$t/got/.parts" ] || fail "the parts were left behind"

# a damaged part: the joined sha256 differs (said when the last part comes)
cp -r "$t/pk" "$t/bad"
printf 'X' | dd of="$t/bad/c1/part1" bs=1 seek=100 conv=notrunc status=none
for i in $(seq 1 $((n - 1))); do bash "$tool" join "$t/bad/c$i" "$t/got2" 2>>"$t/bad.log" || fail "join $i of the damaged set"; done
if bash "$tool" join "$t/bad/c$n" "$t/got2" 2>>"$t/bad.log"; then fail "a damaged part was accepted"; fi
grep -q "damaged" "$t/bad.log" || { cat "$t/bad.log"; fail "no message for the damaged part"; }

# a piece without its manifest
mkdir -p "$t/nomanifest" && cp "$t/pk/c1/part1" "$t/nomanifest/"
if bash "$tool" join "$t/nomanifest" "$t/got3" 2>"$t/nm.log"; then fail "a piece without a manifest was accepted"; fi
grep -q "manifest is missing" "$t/nm.log" || fail "no message for the missing manifest"

# a source file of the wrong size is named
head -c 1000 /dev/zero >"$t/src/data_batch_3.bin"
if "$tool" pack "$t/src" "$t/pk2" 2>"$t/short.log"; then fail "a short data_batch_3.bin was packed"; fi
grep -q "data_batch_3.bin is 1000 bytes" "$t/short.log" || { cat "$t/short.log"; fail "the short file was not named"; }
echo "gpu-data: pack, join, and the three refusals: ok"
