#!/usr/bin/env bash
# Compare ml-dash binaries on the checkpoint series of compare.sh (5 x 256 MiB, a 192 MiB frozen
# part and 64 MiB of new float32 weights each), upload by upload: each round uploads the five
# files in order into a fresh store with each binary, the binaries' order alternating from
# round to round (on a VM, whichever runs second may pay for pages the host just took back).
# A `sync` before each upload. Prints, per binary, the series' wall time and the user CPU of
# uploads 2-5 (the ones that deduplicate), best, median and worst over the rounds.
#   scripts/bench/series_ab.sh ROUNDS name=path/to/ml-dash [name=path ...]
# Needs numpy: the venv compare.sh creates (scripts/bench/.venv), or python3 with numpy.
set -euo pipefail
rounds=$1; shift
bench=$(cd "$(dirname "$0")" && pwd)
py=$bench/.venv/bin/python; [ -x "$py" ] || py=python3
work=$(mktemp -d /var/tmp/series-ab.XXXXXX); trap 'rm -rf "$work"' EXIT
"$py" "$bench/gen_data.py" "$work/data" 5 192 64 0 > /dev/null
cat "$work"/data/ckpt_*.bin > /dev/null

# shellcheck source=scripts/bench/best_of.sh
. "$bench/best_of.sh"
declare -A walls=() users=()
for r in $(seq "$rounds"); do
  order_for "$r" "$@"
  for nb in "${order[@]}"; do
    n=${nb%%=*}; b=${nb#*=}
    rm -rf "$work/store"
    wall=0 user=0
    for k in 1 2 3 4 5; do
      sync
      /usr/bin/time -f "%e %U" -o "$work/t" "$b" --root "$work/store" upload "$work/data/ckpt_$k.bin" \
        --project p --experiment e --prefix /checkpoints > /dev/null
      read -r w u < "$work/t"
      wall=$(awk "BEGIN{print $wall + $w}")
      [ "$k" = 1 ] || user=$(awk "BEGIN{print $user + $u}")
    done
    "$b" --root "$work/store" stats --json | grep -q "\"versions\":5,.*\"logicalBytes\":$((5 * 256 << 20))" \
      || { echo "$n: the store does not hold the five versions" >&2; exit 1; }
    echo "round $r $n: series wall $wall s, user CPU of uploads 2-5 $user s" >&2
    walls[$n]="${walls[$n]:-} $wall"; users[$n]="${users[$n]:-} $user"
  done
done

echo "| binary | series wall, best / median / worst s | user CPU of uploads 2-5, best / median / worst s | ($rounds rounds) |"
echo "|---|---|---|---|"
for nb in "$@"; do n=${nb%%=*}
  # shellcheck disable=SC2086 # one value per round, split on purpose
  echo "| $n | $(printf '%s\n' ${walls[$n]} | stats) | $(printf '%s\n' ${users[$n]} | stats) | |"
done
