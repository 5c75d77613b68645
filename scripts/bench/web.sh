#!/usr/bin/env bash
# Server time of every web page on a big experiment: FILES small files in one experiment
# (uploaded with the CLI in one commit), POINTS metric points (in METRICS metrics, appended
# through the API in batches of 10,000), 1,000 parameters and LOGS log lines; then each page
# fetched with curl on 127.0.0.1, one cold fetch (the first read of the journal) and best /
# median of RUNS warm ones. Also the number of points the metrics page sends per series.
#
#   scripts/bench/web.sh [FILES [POINTS [LOGS [RUNS]]]]     defaults: 10000 1000000 100000 5
#   BIN=path/to/ml-dash (default target/release/ml-dash)
set -euo pipefail
cd "$(dirname "$0")/../.."
files=${1:-10000}; points=${2:-1000000}; logs=${3:-100000}; runs=${4:-5}
bin=$(realpath "${BIN:-target/release/ml-dash}")
mkdir -p target
work=$(mktemp -d "$PWD/target/bench-web.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2> /dev/null; wait 2> /dev/null; rm -rf "$work"' EXIT

echo "# web pages: $files files, $points metric points, $logs log lines ($(date -u +%F), $(nproc) cores)"
mkdir -p "$work/src/a" "$work/src/b"
python3 - "$work/src" "$files" << 'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = "a" if i % 2 else "b"
    with open(os.path.join(d, sub, f"file-{i:05d}.json"), "w") as f:
        f.write('{"i": %d, "pad": "%s"}' % (i, "x" * (i % 200)))
PY
t0=$(date +%s.%N)
( cd "$work/src/a" && "$bin" --root "$work/store" upload ./* --project p --experiment big --prefix /a > /dev/null )
( cd "$work/src/b" && "$bin" --root "$work/store" upload ./* --project p --experiment big --prefix /b > /dev/null )
echo "upload of $files files: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"

"$bin" --root "$work/store" serve --listen 127.0.0.1:0 2> "$work/serve.log" &
pid=$!
url=
for _ in $(seq 200); do
  url=$(grep -so 'http://127\.0\.0\.1:[0-9]*' "$work/serve.log" || true)
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { cat "$work/serve.log"; exit 1; }

t0=$(date +%s.%N)
python3 - "$url" "$points" "$logs" << 'PY'
import json, sys, urllib.request
url, points, logs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def post(path, body):
    r = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(r) as resp:
        return json.load(resp)
exp = post("/api/namespaces/local/nodes", {"type": "EXPERIMENT", "name": "big", "projectSlug": "p",
                                            "parentId": "ROOT", "keepStatus": True})
eid = exp["experiment"]["id"]
post(f"/api/experiments/{eid}/parameters",
     {"data": {f"group{g}.key{k}": g * 1000 + k for g in range(20) for k in range(50)}})
metrics = ["train/loss", "train/accuracy", "eval/loss", "eval/accuracy"]
per = points // len(metrics)
for m in metrics:
    for start in range(0, per, 10000):
        batch = [{"value": 1.0 / (1 + i * 1e-4) + (i % 97) * 1e-3, "step": i, "epoch": i // 10000}
                 for i in range(start, min(per, start + 10000))]
        post(f"/api/experiments/{eid}/metrics/{m}/append-batch", {"dataPoints": batch})
for start in range(0, logs, 10000):
    post(f"/api/experiments/{eid}/logs",
         {"logs": [{"level": ["info", "warn", "error"][i % 3], "message": f"line {i} of the run",
                    "timestamp": "2026-11-30T00:00:00Z"} for i in range(start, min(logs, start + 10000))]})
PY
echo "append of $points points and $logs log lines: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"

fetch() { curl -s -o "$work/page" -w '%{time_total}\n' "$url$1"; }
echo
echo "| page | cold s | warm best / median s | bytes |"
echo "|---|---|---|---|"
for page in "/" "/local/p" "/local/p/big?tab=files" "/local/p/big?tab=metrics" \
    "/local/p/big?tab=metrics&x=epoch" "/local/p/big?tab=params" "/local/p/big?tab=logs" \
    "/local/p/big?tab=logs&level=error&q=line%2099" "/local/p/big?tab=storage" "/-/store" "/-/search?q=file-0999"; do
  cold=$(fetch "$page")
  : > "$work/t"
  for _ in $(seq "$runs"); do fetch "$page" >> "$work/t"; done
  warm=$(sort -g "$work/t" | awk '{a[NR]=$1} END{printf "%.3f / %.3f", a[1], a[int((NR+1)/2)]}')
  echo "| \`$page\` | $(printf %.3f "$cold") | $warm | $(wc -c < "$work/page") |"
done
fetch "/local/p/big?tab=metrics" > /dev/null
echo
echo "points per series sent by the metrics page (max): $(grep -o 'data-n="[0-9]*"' "$work/page" | tr -dc '0-9\n' | sort -n | tail -1)"
