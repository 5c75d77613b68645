#!/usr/bin/env bash
# Compare the store's chunkers on the floor.sh steps: upload of new data, upload of stored
# data, a shifted copy (100 bytes inserted at the front) and verified download, with one
# ml-dash binary. Each store is created with a 1-byte file, then moved to the chunker with
# `ml-dash chunker --set`. Interleaved run by run, best of RUNS, `sync` before each step,
# page cache warm. KIND is random (from /dev/urandom) or fp32 (weights, cut by content: a
# raw .bin, not a tensor file).
#   scripts/bench/chunker_ab.sh SIZE_MIB RUNS [KIND] [ml-dash binary]
set -euo pipefail
size=$1; runs=$2; kind=${3:-random}; bin=${4:-target/release/ml-dash}
work=$(mktemp -d /var/tmp/chunker_ab.XXXXXX); trap 'rm -rf "$work"' EXIT
src=$work/data.bin
case $kind in
  random) head -c $((size << 20)) /dev/urandom > "$src" ;;
  fp32) python3 - "$src" "$size" <<'EOF'
import os, sys
# fp32 weights of magnitude 2^-7 .. 2^-4 with random signs and mantissas: random mantissa
# bytes, a narrow exponent (what trained weights look like to a chunker and a compressor).
path, mib = sys.argv[1], int(sys.argv[2])
table = bytes((b & 0x80) | 0x3C for b in range(256))
with open(path, "wb") as f:
    for _ in range(mib):
        a = bytearray(os.urandom(1 << 20))
        a[3::4] = a[3::4].translate(table)
        f.write(a)
EOF
  ;;
  *) echo "KIND: random or fp32" >&2; exit 2 ;;
esac
{ head -c 100 /dev/urandom; cat "$src"; } > "$work/shifted.bin"
printf 'x' > "$work/tiny"
declare -A best
# shellcheck source=scripts/bench/best_of.sh
. "$(dirname "$0")/best_of.sh"
declare -A shifted_new
algs="fastcdc-2020 hash16"
for r in $(seq "$runs"); do
  cat "$src" > /dev/null; sync
  read -r s _ < <(t openssl dgst -sha256 "$src"); upd ssl "$s"
  for a in $algs; do
    st=$work/s-$a
    rm -rf "$st"
    "$bin" --root "$st" upload "$work/tiny" --project p --experiment init > /dev/null
    "$bin" --root "$st" chunker --set "$a" > /dev/null
    sync
    read -r s _ < <(t "$bin" --root "$st" upload "$src" --project p --experiment e); upd "$a.new" "$s"
    sync
    read -r s _ < <(t "$bin" --root "$st" upload "$src" --project p --experiment e); upd "$a.known" "$s"
    rm -f "$work/out"; sync
    read -r s _ < <(t "$bin" --root "$st" download --project p --experiment e /data.bin --version 1 -o "$work/out"); upd "$a.down" "$s"
    cmp "$src" "$work/out"
    shifted_new[$a]=$("$bin" --root "$st" upload "$work/shifted.bin" --project p --experiment e --json \
      | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["newBytes"])')
  done
done
ssl=${best[ssl]}
echo "| chunker | upload new | upload known | download | shifted copy: new bytes | ($kind, $size MiB, openssl $ssl s, best of $runs) |"
echo "|---|---|---|---|---|---|"
for a in $algs; do
  printf "| %s | %s s (%.2fx) | %s s (%.2fx) | %s s (%.2fx) | %s | |\n" "$a" \
    "${best[$a.new]}" "$(awk "BEGIN{print ${best[$a.new]}/$ssl}")" \
    "${best[$a.known]}" "$(awk "BEGIN{print ${best[$a.known]}/$ssl}")" \
    "${best[$a.down]}" "$(awk "BEGIN{print ${best[$a.down]}/$ssl}")" "${shifted_new[$a]}"
done
