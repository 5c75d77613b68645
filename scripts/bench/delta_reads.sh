#!/usr/bin/env bash
# Verified downloads of each version of a checkpoint series stored as deltas (default depth 2:
# v2 a delta on v1, v3 a delta on v2), per binary, interleaved run by run; best of RUNS, `sync`
# before each step, against `openssl dgst -sha256` of the same file. The series is three
# synthetic checkpoints of 128 M parameters 100 steps apart (fp32 and bf16), written by the
# checkpoint_compression example unless CK_DIR already holds {fp32,bf16}_{0,1,2}.safetensors.
#   scripts/bench/delta_reads.sh RUNS name=path/to/ml-dash [name=path ...]
set -euo pipefail
runs=$1; shift
work=$(mktemp -d /var/tmp/delta_reads.XXXXXX); trap 'rm -rf "$work"' EXIT
ck=${CK_DIR:-$work/ck}
if [ ! -f "$ck/bf16_2.safetensors" ]; then
  mkdir -p "$ck"
  ML_DASH_WRITE_TO=$ck ML_DASH_LR=3e-4 cargo run --release -q --example checkpoint_compression -- 128 3 100 > /dev/null
fi
first=${1#*=}
for v in 0 1 2; do for f in fp32 bf16; do
  "$first" --root "$work/st" upload "$ck/${f}_$v.safetensors" --project p --experiment e --to "$f.safetensors" > /dev/null
done; done
declare -A best
# shellcheck source=scripts/bench/best_of.sh
. "$(dirname "$0")/best_of.sh"
for r in $(seq "$runs"); do
  for f in fp32 bf16; do for v in 1 2 3; do
    sync; read -r s _ < <(t openssl dgst -sha256 "$ck/${f}_$((v - 1)).safetensors"); upd "ssl.$f.$v" "$s"
    for nb in "$@"; do
      n=${nb%%=*}; b=${nb#*=}
      sync
      read -r s _ < <(t sh -c "'$b' --root '$work/st' download --project p --experiment e /$f.safetensors --version $v -o - > /dev/null"); upd "$n.$f.$v" "$s"
    done
  done; done
done
echo "Best of $runs:"
printf "| version | openssl s |"; for nb in "$@"; do printf " %s s |" "${nb%%=*}"; done; echo
printf "|---|---|"; for _ in "$@"; do printf -- "---|"; done; echo
for f in fp32 bf16; do for v in 1 2 3; do
  printf "| %s v%s | %s |" "$f" "$v" "${best[ssl.$f.$v]}"
  for nb in "$@"; do printf " %s |" "${best[${nb%%=*}.$f.$v]}"; done; echo
done; done
