#!/usr/bin/env bash
# Real PyTorch checkpoints, and ZipNN / zstd -3 on them. Builds (or reuses) the venv of
# ckpt_venv.sh, trains the small GPT-2 of ckpt_make.py into OUTDIR (skipped when OUTDIR already
# holds its checkpoints; delete it to make them anew), then measures the fp32, bf16 and
# torch.save series with zipnn_measure.py, one XOR-delta chain per series, into OUTDIR/zipnn.json.
#   scripts/bench/checkpoints.sh [OUTDIR=target/bench-ckpt]
# STEPS (25) and COUNT (5) go to ckpt_make.py; RUNS (3) to zipnn_measure.py. Training and
# measuring run under `nice -n 10`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-ckpt}
steps=${STEPS:-25}; count=${COUNT:-5}; runs=${RUNS:-3}
bench=scripts/bench

py=$("$bench/ckpt_venv.sh" | tail -1)
export PYTHONWARNINGS=ignore

if [ -f "$out/.done" ] && [ "$(cat "$out/.done")" = "$steps $count" ]; then
  echo "reusing checkpoints in $out" >&2
else
  rm -rf "$out"
  start=$(date +%s)
  nice -n 10 "$py" "$bench/ckpt_make.py" "$out" --steps-between "$steps" --count "$count"
  echo "checkpoints made in $(( $(date +%s) - start )) s" >&2
  echo "$steps $count" > "$out/.done"
fi

nice -n 10 "$py" "$bench/zipnn_measure.py" --runs "$runs" --json "$out/zipnn.json" \
  --chain "$out"/fp32/step-*/model.safetensors \
  --chain "$out"/bf16/step-*/model.safetensors \
  --chain "$out"/torchsave/step-*.pt

# The ml-dash side on the same checkpoints: the chunk codec on one core, file by file, and each
# series uploaded in order into a fresh store (deltas on), then the table of both.
measure_ours() {
  local out=$1
  cargo build --release -q -p ml-dash-cli
  cargo bench -q --bench codec_files -- "$out"/fp32/step-*/model.safetensors \
    "$out"/bf16/step-*/model.safetensors "$out"/torchsave/step-*.pt > "$out/ours_codec.jsonl"
  python3 "$bench/ckpt_ours.py" --bin target/release/ml-dash --work "$out/work" \
    --runs "$runs" --json "$out/ours_store.json" \
    --series fp32 "$out"/fp32/step-*/model.safetensors \
    --series bf16 "$out"/bf16/step-*/model.safetensors \
    --series torchsave "$out"/torchsave/step-*.pt
  rm -rf "$out/work"
  python3 "$bench/ckpt_table.py" "$out"
}
measure_ours "$out"
