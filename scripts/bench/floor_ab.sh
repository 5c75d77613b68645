#!/usr/bin/env bash
# Compare ml-dash binaries on the floor.sh steps (upload of new data, upload of stored data,
# verified download), interleaved run by run (in alternating order) so that machine noise hits
# all alike; best of RUNS, `sync` before each step, page cache warm. Build the binaries first
# (e.g. a worktree of an older commit: `cargo build --release -p ml-dash-cli`, then copy
# target/release/ml-dash).
#   scripts/bench/floor_ab.sh SIZE_MIB RUNS name=path/to/ml-dash [name=path ...]
set -euo pipefail
size=$1; runs=$2; shift 2
work=$(mktemp -d /var/tmp/floor2.XXXXXX); trap 'rm -rf "$work"' EXIT
src=$work/data.bin
head -c $((size << 20)) /dev/urandom > "$src"
declare -A best
# shellcheck source=scripts/bench/best_of.sh
. "$(dirname "$0")/best_of.sh"
for r in $(seq "$runs"); do
  cat "$src" > /dev/null; sync
  read -r s _ < <(t openssl dgst -sha256 "$src"); upd ssl "$s"
  order_for "$r" "$@"
  for nb in "${order[@]}"; do
    n=${nb%%=*}; b=${nb#*=}
    rm -rf "$work/s-$n"; sync
    read -r s m < <(t "$b" --root "$work/s-$n" upload "$src" --project p --experiment e); upd "$n.new" "$s"
    sync
    read -r s m < <(t "$b" --root "$work/s-$n" upload "$src" --project p --experiment e); upd "$n.known" "$s"
    rm -f "$work/out"; sync
    read -r s m < <(t "$b" --root "$work/s-$n" download --project p --experiment e /data.bin --version 1 -o "$work/out"); upd "$n.down" "$s"
    cmp "$src" "$work/out"
  done
done
ssl=${best[ssl]}
echo "| binary | upload new | upload known | download | (openssl $ssl s, $size MiB, best of $runs) |"
echo "|---|---|---|---|---|"
for nb in "$@"; do n=${nb%%=*}
  printf "| %s | %s s (%.2fx) | %s s (%.2fx) | %s s (%.2fx) | |\n" "$n" "${best[$n.new]}" "$(awk "BEGIN{print ${best[$n.new]}/$ssl}")" "${best[$n.known]}" "$(awk "BEGIN{print ${best[$n.known]}/$ssl}")" "${best[$n.down]}" "$(awk "BEGIN{print ${best[$n.down]}/$ssl}")"
done
