#!/usr/bin/env bash
# Small writes at scale: many tiny files in one `ml-dash upload`, their export, an import of
# many metric points, and the latency of one small upload into an existing store. Best of RUNS,
# `sync` before every timed step; with BASE (another ml-dash binary, e.g. one built from an
# older commit) every step also runs with it, interleaved with this tree's binary. Prints a
# markdown table.
#
#   scripts/bench/small_writes.sh [BASE_BIN] [FILES=20000] [POINTS=100000] [RUNS=3]
#
#   BASE_RUNS (default 1): runs of the BASE binary per step (an old binary may take minutes).
#   LAT_RUNS (default 10): runs of the single small upload (best of).
#
# Example, before/after against the commit this tree started from:
#   git worktree add /tmp/ml-dash-base <commit> && (cd /tmp/ml-dash-base && cargo build --release)
#   scripts/bench/small_writes.sh /tmp/ml-dash-base/target/release/ml-dash
set -euo pipefail
base=${1:-}
files=${2:-20000}
points=${3:-100000}
runs=${4:-3}
base_runs=${BASE_RUNS:-1}
lat_runs=${LAT_RUNS:-10}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=$PWD/target/release/ml-dash
[ -z "$base" ] || base=$(realpath "$base")
work=$(mktemp -d /var/tmp/mldash-small.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

# FILES files of 100 random bytes; an ml-dash 0.11 tree with POINTS points of one metric.
python3 - "$files" "$points" <<'EOF'
import json, os, sys
files, points = int(sys.argv[1]), int(sys.argv[2])
os.makedirs("tiny")
for i in range(files):
    with open(f"tiny/f{i:06d}.txt", "wb") as f:
        f.write(os.urandom(100))
d = "tree/local/proj/run1/metrics/loss"
os.makedirs(d)
with open(f"{d}/data.jsonl", "w") as f:
    for i in range(points):
        f.write(json.dumps({"index": i, "data": {"value": 1.0 / (i + 1), "step": i, "_ts": 1767225600.0 + i},
                            "createdAt": "2026-01-01T00:00:00.%06dZ" % (i % 1000000)}) + "\n")
EOF
mapfile -t tiny < <(ls tiny | sed 's|^|tiny/|')

# What one fsync costs on this disk right now (it varies with the machine's other I/O, and
# the old per-file and per-point costs follow it): median of 50 new 4 KiB files.
fsync_ms=$(python3 - <<'EOF'
import os, statistics, time
ts = []
for i in range(50):
    t = time.perf_counter()
    fd = os.open(f"probe{i}", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * 4096)
    os.fsync(fd)
    os.close(fd)
    ts.append(time.perf_counter() - t)
print(f"{statistics.median(ts) * 1000:.2f}")
EOF
)
rm -f probe*

# Wall seconds of one run of "$@" (after PREP and a sync), with millisecond resolution.
once() {
  [ -n "${PREP:-}" ] && eval "$PREP"
  sync
  local s e
  s=$(date +%s%N)
  "$@" > /dev/null
  e=$(date +%s%N)
  awk "BEGIN{printf \"%.4f\", ($e - $s) / 1e9}"
}
min() { if [ -z "$1" ]; then echo "$2"; else awk "BEGIN{print ($2 < $1) ? $2 : $1}"; fi; }

# Run STEP (a function taking the binary and a name for its files) RUNS times with this tree's
# binary and BASE_RUNS times with BASE, interleaved; prints "best_new best_base".
compare() {
  local step=$1 bn="" bb="" r t
  for r in $(seq "$(( runs > base_runs ? runs : base_runs ))"); do
    if [ -n "$base" ] && [ "$r" -le "$base_runs" ]; then
      t=$($step "$base" base); bb=$(min "$bb" "$t")
    fi
    if [ "$r" -le "$runs" ]; then
      t=$($step "$bin" new); bn=$(min "$bn" "$t")
    fi
  done
  echo "$bn ${bb:--}"
}

upload_many() { PREP="rm -rf st-$2" once "$1" --root "st-$2" upload "${tiny[@]}" --project p --experiment e --json; }
export_all() { PREP="rm -rf out-$2" once "$1" --root "st-$2" export "out-$2" --json; }
import_points() { PREP="rm -rf imp-$2" once "$1" --root "imp-$2" import tree --json; }
# One 1 KiB file of new bytes into an existing store (100 files in it).
upload_one() {
  [ -d "one-$2" ] || "$1" --root "one-$2" upload "${tiny[@]:0:100}" --project p --experiment e > /dev/null
  head -c 1024 /dev/urandom > "one-$2.bin"
  once "$1" --root "one-$2" upload "one-$2.bin" --project p --experiment one
}

# A table row: WHAT, STEP, and the unit to show (s or ms).
row() {
  local what=$1 unit=${3:-s} n b x="-"
  read -r n b < <(compare "$2")
  [ "$b" = "-" ] || x=$(awk "BEGIN{printf \"%.1fx\", $b / $n}")
  if [ "$unit" = ms ]; then
    n=$(awk "BEGIN{printf \"%.1f ms\", $n * 1000}")
    [ "$b" = "-" ] || b=$(awk "BEGIN{printf \"%.1f ms\", $b * 1000}")
  fi
  echo "| $what | $b | $n | $x |"
}

echo "fsync of a new 4 KiB file: $fsync_ms ms (median of 50)"
echo
echo "| step (best of $runs; before: best of $base_runs) | before | after | speedup |"
echo "|---|---|---|---|"
row "upload of $files files of 100 bytes, one command" upload_many
row "export of those $files files (\`export DIR\`)" export_all
row "import of $points metric points (ml-dash 0.11 tree)" import_points
runs=$lat_runs base_runs=$lat_runs \
  row "upload of one 1 KiB file into a store of 100 files (best of $lat_runs)" upload_one ms
