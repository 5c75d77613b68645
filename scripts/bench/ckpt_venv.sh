#!/usr/bin/env bash
# Python venv for the checkpoint benchmarks (ckpt_make.py, zipnn_measure.py): torch (CPU use),
# transformers, safetensors, numpy, zipnn and zstandard from PyPI, pinned. Idempotent: a marker
# file holding the package list makes a second run return at once; a lock keeps two runs from
# building it together. pip's cache (~/.cache/pip) makes a rebuild mostly local. pip's output
# goes to target/bench-venv.log. Prints the venv's python path last.
#   scripts/bench/ckpt_venv.sh            (PYTHON=python3.X to build with another interpreter)
#
# PyPI's Linux torch wheel is a CUDA build: torch is first installed without dependencies (CPU
# use only); if it then cannot be imported (the CUDA libraries it links to are missing), the
# full dependency set (the nvidia-* packages, several GB) is installed instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/bench-venv
py=$venv/bin/python
torch_pin=torch==2.15.0
zipnn_pin=zipnn==0.5.4   # depends on torch: installed without dependencies, which come next
rest="transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6 zstandard==0.25.0"
torch_deps="filelock typing-extensions sympy networkx jinja2 fsspec setuptools>=77.0.3"
pkgs="$torch_pin $zipnn_pin $rest"
check='import torch, transformers, safetensors, numpy, zipnn, zstandard; assert torch.zeros(3).sum().item() == 0'
mkdir -p target
exec 9> target/bench-venv.lock
flock 9

ok() { [ -x "$py" ] && "$py" -c "$check" > /dev/null 2>&1; }
if [ "$(cat "$venv/.ready" 2>/dev/null)" = "$pkgs" ] && ok; then
  echo "$PWD/$py"; exit 0
fi

echo "building $venv ($pkgs)" >&2
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
log=target/bench-venv.log; : > "$log"
pip() { "$py" -m pip install -q "$@" >> "$log" 2>&1 || { tail -20 "$log" >&2; return 1; }; }
pip --no-deps "$torch_pin" "$zipnn_pin"
pip $torch_deps $rest
if ! "$py" -c 'import torch; torch.zeros(3)' > /dev/null 2>&1; then
  echo "torch does not import without its CUDA packages: installing its full dependencies" >&2
  pip "$torch_pin"
fi
ok || { echo "venv check failed: $check" >&2; exit 1; }
echo "$pkgs" > "$venv/.ready"
echo "$PWD/$py"
