#!/usr/bin/env bash
# The `ml-dash serve` suite: the real ml-dash 0.11.0 client and raw HTTP against the server,
# and its web pages in Debian's headless Chromium (scripts/chromium.sh installs it).
#
#   tests/serve/run.sh [PYTEST ARGS...]
#
# Makes (or reuses) a venv in target/serve-venv with ml-dash==0.11.0 and pytest, builds the
# release binary if it is missing, and runs pytest on tests/serve. Environment:
#   ML_DASH_BIN           the binary under test (default target/release/ml-dash)
#   ML_DASH_SERVE_SMALL=1 shrink the big uploads 8x (1 GiB, 3 GiB, 4 x 512 MiB) for quick runs
#   ML_DASH_S3_TEST=1     also test write-behind to S3 (`scripts/garage.sh start &&
#                         . target/garage/env` first)
#   ML_DASH_SERVE_KEEP=1  keep the stores and sources of the tests (default: removed)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
venv="$repo/target/serve-venv"
py="$venv/bin/python"

if ! { [ -x "$py" ] && "$py" -c 'import ml_dash, pytest, httpx, importlib.metadata as m; assert m.version("ml-dash") == "0.11.0"' 2>/dev/null; }; then
  echo "serve tests: making $venv (ml-dash==0.11.0, pytest)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$py" -m pip install -q --disable-pip-version-check 'ml-dash==0.11.0' pytest
fi
if ! "$py" -c 'import selenium, importlib.metadata as m; assert m.version("selenium") == "4.51.0"' 2>/dev/null; then
  "$py" -m pip install -q --disable-pip-version-check 'selenium==4.51.0'
fi
scripts/chromium.sh > /dev/null

export ML_DASH_BIN="${ML_DASH_BIN:-$repo/target/release/ml-dash}"
if [ ! -x "$ML_DASH_BIN" ]; then
  echo "serve tests: building the release binary" >&2
  cargo build --release -p ml-dash-cli
fi
# The main job, which the browser test runs to fill its store.
[ -x target/release/examples/training_checkpoints ] || cargo build --release --example training_checkpoints

# The ml-dash client's buffered uploader deletes uploaded source files that sit under
# tempfile.gettempdir(): temporary files (pytest's tmp_path, the stores) go to serve-tmp, and
# the sources the client uploads to serve-src, which is not under it.
export TMPDIR="$repo/target/serve-tmp"
mkdir -p "$TMPDIR" "$repo/target/serve-src"
export ML_DASH_NO_VERSION_CHECK=1
export PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring
unset DREAMLAKE_EXPERIMENT_BROKER DREAMLAKE_EXPERIMENT_BROKER_TOKEN ML_DASH_ROOT || true

# Without a path among the arguments, the whole suite.
paths=()
for a in "$@"; do
  case "$a" in -*) ;; *) [ -e "${a%%::*}" ] && paths+=("$a") ;; esac
done
if [ ${#paths[@]} -eq 0 ]; then set -- tests/serve "$@"; fi
exec "$py" -m pytest -q "$@"
