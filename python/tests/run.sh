#!/usr/bin/env bash
# Build and install the Python module into a venv (target/py-venv, reused), then run pytest.
# `pip install ./python` is exactly what a user runs; maturin builds the Rust extension in
# release mode into the workspace's target/ (incremental after the first build).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/py-venv
if [ ! -x "$venv/bin/pytest" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "maturin>=1.16,<2" pytest matplotlib
fi
"$venv/bin/pip" install -q --force-reinstall --no-deps ./python
[ -x target/release/ml-dash ] || cargo build --release --bin ml-dash
"$venv/bin/python" -m pytest -q python/tests "$@"
