#!/usr/bin/env bash
# `ml-dash serve` against the local CLI, on loopback (127.0.0.1):
#
#  1. upload of one SIZE_MIB file of random data into a fresh store: local CLI (`--root`),
#     our CLI through the server (`--server`), and the ml-dash 0.11 Python client (upload +
#     flush, timed inside Python; the run's open and close are not counted); openssl dgst
#     -sha256 of the same file is the floor;
#  2. verified download of that version: local CLI and `--server`;
#  3. 4 processes each uploading a different EACH_MIB file at once: 4 `--server` clients into
#     one server, and 4 local CLI processes into one store (wall time, aggregate GB/s);
#  4. `ml-dash --server URL list` and a raw GraphQL list (curl, ListExperimentFilesPaginated)
#     while one BIG_MIB upload streams into the server: LISTS of each, spaced over the time the
#     body is expected to take, started once the server has written its first 8 MiB of packs;
#  5. peak RSS (VmHWM) of the server process: over the runs of 1 and 3, the download server,
#     the upload of 4, and one HUGE_MIB upload.
#
#   scripts/bench/serve.sh [SIZE_MIB [EACH_MIB [BIG_MIB [HUGE_MIB [RUNS [LISTS]]]]]]
#   defaults: 1024 512 2048 3072 3 9;  SMALL=1 scripts/bench/serve.sh: 64 32 128 192 1 5
#   BIN=path/to/ml-dash (default target/release/ml-dash), PY=python of a venv with ml-dash
#   0.11 (default target/mldash-venv/bin/python; skipped if missing), PY_RUNS (default 1),
#   STREAM=1: the HUGE_MIB upload from a stream even if a file would fit.
#
# Best of RUNS for 1-3, a fresh store (and server) for every upload run, `sync` before every
# timed step, page cache warm for the sources. Data is generated once per size from
# /dev/urandom under target/ (not /tmp: the Python client deletes sources under its tempdir).
# Free disk needed: the largest of 3 x SIZE_MIB, 8 x EACH_MIB, 2 x BIG_MIB and HUGE_MIB (+ 512
# MiB); the HUGE_MIB upload comes from a file when 2 x HUGE_MIB fit, else from a stream (curl,
# multipart body made on the fly from AES-CTR keystream, no checksum part: the server hashes).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${SMALL:-0}" = 1 ]; then d=(64 32 128 192 1 5); else d=(1024 512 2048 3072 3 9); fi
size=${1:-${d[0]}}; each=${2:-${d[1]}}; big=${3:-${d[2]}}; huge=${4:-${d[3]}}
runs=${5:-${d[4]}}; lists=${6:-${d[5]}}
# The ml-dash 0.11 client needs minutes per GiB (its HTTP stack copies the rest of the body
# after every send()): fewer runs of it.
py_runs=${PY_RUNS:-1}
bin=$(realpath "${BIN:-target/release/ml-dash}")
py=${PY:-target/mldash-venv/bin/python}; [ -x "$py" ] && py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") || py=
mkdir -p target
work=$(mktemp -d "$PWD/target/bench-serve.XXXXXX")
srv_pid=
started=()
stop_server() {
  if [ -n "$srv_pid" ]; then
    kill -TERM "$srv_pid" 2> /dev/null || true; wait "$srv_pid" 2> /dev/null || true
    local p left=(); for p in "${started[@]}"; do [ "$p" = "$srv_pid" ] || left+=("$p"); done
    started=("${left[@]}"); srv_pid=
  fi
}
# On exit, stop the servers still running (only ours: stop_server forgets each one it stops).
trap 'for p in "${started[@]}"; do kill -TERM "$p" 2> /dev/null || true; done; wait; rm -rf "$work"' EXIT
avail() { df -B1 --output=avail "$work" | tail -1; }
need=$(printf '%s\n' $((3 * size)) $((8 * each)) $((2 * big)) "$huge" | sort -n | tail -1)
need=$(( (need + 512) << 20 ))
[ "$(avail)" -gt "$need" ] || { echo "need $need bytes free under target/, have $(avail)" >&2; exit 1; }

now() { date +%s.%N; }
sec() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f\n", b - a}'; }  # seconds since $1
gen() { head -c $(($2 << 20)) /dev/urandom > "$1"; }
gbs() { awk "BEGIN{printf \"%.2f\", $1 / $2 / 1e9}"; }
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }
# Time one command: "wall user+sys maxrss_kib" (its stdout discarded, stderr kept in $work/err).
t() {
  if ! /usr/bin/time -f "%e %U %S %M" -o "$work/t" "$@" > /dev/null 2> "$work/err"; then
    echo "failed: $*" >&2; cat "$work/err" >&2; exit 1
  fi
  awk '{printf "%s %.2f %d\n", $1, $2 + $3, $4}' "$work/t" > "$work/res"
}
declare -A best
# upd KEY VALUE [KEY2 VALUE2 ...]: keep the smallest VALUE, and the other pairs of that run.
upd() {
  if [ -z "${best[$1]:-}" ] || awk "BEGIN{exit !($2 < ${best[$1]})}"; then
    while [ $# -gt 0 ]; do best[$1]=$2; shift 2; done
  fi
}
updmax() { if [ -z "${best[$1]:-}" ] || [ "$2" -gt "${best[$1]}" ]; then best[$1]=$2; fi; }
stats() { sort -g | awk '{a[NR]=$1} END{printf "%.3f / %.3f / %.3f", a[1], a[int((NR+1)/2)], a[NR]}'; }

# The server over a fresh store at $1; sets srv_pid and url.
start_server() {
  rm -rf "$1" "$work/serve.err"  # (else the last server's address may be read before the shell truncates it)
  "$bin" --root "$1" serve --listen 127.0.0.1:0 2> "$work/serve.err" &
  srv_pid=$!
  started+=("$srv_pid")
  for _ in $(seq 200); do
    url=$(grep -so 'http://127\.0\.0\.1:[0-9]*' "$work/serve.err" || true)
    [ -n "$url" ] && return
    sleep 0.05
  done
  echo "the server did not start:" >&2; cat "$work/serve.err" >&2; exit 1
}
status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$srv_pid/status"; }  # kB
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$srv_pid/stat"; }
wchar() { awk '$1 == "wchar:" {print $2}' "/proc/$srv_pid/io"; }  # recv() is not in rchar

mkdir -p "$work/cfg"; echo '{"ml-dash-token":"x"}' > "$work/cfg/tokens.json"
cat > "$work/up.py" << 'EOF'
import sys, time
from ml_dash import Experiment
url, path, name, out = sys.argv[1:5]
with Experiment(prefix="local/p/" + name, dash_url=url, dash_root=None).run as e:
    t0 = time.perf_counter()
    e.files("x").upload(path, to="data.bin")
    e.flush()
    t1 = time.perf_counter()
open(out, "w").write(f"{t1 - t0:.3f}\n")
EOF
pyrun=(env ML_DASH_NO_VERSION_CHECK=1 ML_DASH_CONFIG_DIR="$work/cfg"
  PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring "$py" "$work/up.py")

src=$work/data.bin
gen "$src" "$size"
bytes=$((size << 20))
echo "# ml-dash serve vs local CLI ($(date -u +%F), $(nproc) cores, loadavg $(cut -d' ' -f1-3 /proc/loadavg); $size / $each / $big / $huge MiB, best of $runs)"

## 1. upload of one file, 2. download
for r in $(seq "$runs"); do
  cat "$src" > /dev/null; sync
  t openssl dgst -sha256 "$src"; read -r s _ _ < "$work/res"; upd ssl "$s"

  rm -rf "$work/local"; sync
  t "$bin" --root "$work/local" upload "$src" --project p --experiment e; read -r s c m < "$work/res"
  upd local "$s" local.cpu "$c"; updmax local.rss "$m"
  rm -rf "$work/local"

  start_server "$work/srv"
  c0=$(cpu); sync
  t "$bin" --server "$url" upload "$src" --project p --experiment e; read -r s c m < "$work/res"
  upd server "$s" server.ccpu "$c" server.scpu "$(awk "BEGIN{printf \"%.2f\", $(cpu) - $c0}")"
  updmax server.crss "$m"; updmax rss1 "$(status VmHWM)"
  if [ "$r" -lt "$runs" ]; then stop_server; fi

  if [ -n "$py" ] && [ "$r" -le "$py_runs" ]; then
    keep=$srv_pid; keepurl=$url; srv_pid=
    start_server "$work/srv-py"
    c0=$(cpu); sync
    t "${pyrun[@]}" "$url" "$src" py "$work/py.t"; read -r s c m < "$work/res"
    upd py "$(cat "$work/py.t")" py.wall "$s" py.ccpu "$c" py.scpu "$(awk "BEGIN{printf \"%.2f\", $(cpu) - $c0}")"
    updmax py.rss "$m"; updmax rss1 "$(status VmHWM)"
    stop_server; rm -rf "$work/srv-py"; srv_pid=$keep; url=$keepurl
  fi
done
# The server of the last run still holds its store: download through it, and locally from the
# same store (a reader beside the server, as other processes may be).
# The store's packs are read into the page cache right before each timed download (this VM
# evicts cold pages within seconds), so both read warm packs.
warm() { cat "$work"/srv/packs/* > /dev/null; }
for r in $(seq "$runs"); do
  rm -f "$work/out"; sync; warm
  t "$bin" --root "$work/srv" download --project p --experiment e /data.bin -o "$work/out"; read -r s _ _ < "$work/res"
  upd dlocal "$s"; cmp "$src" "$work/out"
  rm -f "$work/out"; sync; warm
  t "$bin" --server "$url" download --project p --experiment e /data.bin -o "$work/out"; read -r s _ m < "$work/res"
  upd dserver "$s"; updmax dserver.crss "$m"; cmp "$src" "$work/out"
done
rss_dl=$(status VmHWM)
stop_server; rm -rf "$work/out" "$work/srv"
# Where one `--server` upload spends its time (not timed above): strace timestamps of the open
# of the source (after the experiment and its folders are set up; the file is read once, checked
# as it is sent) and of the exit.
split=
if command -v strace > /dev/null; then
  start_server "$work/srv"
  cat "$src" > /dev/null; sync
  strace -f --seccomp-bpf -ttt -e trace=openat -o "$work/strace" \
    "$bin" --server "$url" upload "$src" --project p --experiment e > /dev/null
  split=$(awk -v f="\"$src\"" '
    NR == 1 {t0 = $2} index($0, f) {o[++n] = $2} /exited with/ {t1 = $2}
    END {printf "setup %.2f s, body and commit %.2f s", o[1] - t0, t1 - o[1]}' "$work/strace")
  stop_server; rm -rf "$work/srv"
fi
rm -f "$src"

## 3. four uploads at once
for i in 1 2 3 4; do gen "$work/rank$i.bin" "$each"; done
head -c 4096 /dev/urandom > "$work/small.bin"
four() {  # $1...: the ml-dash arguments selecting the store or server
  local pids=() t0 i
  sync
  t0=$(now)
  for i in 1 2 3 4; do
    "$bin" "$@" upload "$work/rank$i.bin" --project p --experiment e > /dev/null &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  # wall time, then the CPU time of the 4 processes (this subshell's children)
  times > "$work/times"
  echo "$(sec "$t0") $(tail -1 "$work/times" | sed 's/m/ /g; s/s//g' | awk '{printf "%.2f", $1 * 60 + $2 + $3 * 60 + $4}')"
}
for r in $(seq "$runs"); do
  cat "$work"/rank*.bin > /dev/null
  rm -rf "$work/local"
  "$bin" --root "$work/local" upload "$work/small.bin" --project p --experiment e > /dev/null
  read -r s c < <(four --root "$work/local")
  upd four.local "$s" four.lcpu "$c"
  rm -rf "$work/local"
  start_server "$work/srv"
  "$bin" --server "$url" upload "$work/small.bin" --project p --experiment e > /dev/null
  c0=$(cpu)
  read -r s c < <(four --server "$url")
  upd four.server "$s" four.ccpu "$c" four.scpu "$(awk "BEGIN{printf \"%.2f\", $(cpu) - $c0}")"
  n=$("$bin" --server "$url" list --json | grep -c '"rank' || true)
  [ "$n" = 4 ] || { echo "4 concurrent uploads through the server stored $n files" >&2; exit 1; }
  updmax rss3 "$(status VmHWM)"
  stop_server
done
rm -rf "$work"/rank*.bin "$work/srv"

## 4. list latency during a large upload
gen "$work/big.bin" "$big"
start_server "$work/srv"
rss_idle=$(status VmRSS)
"$bin" --server "$url" upload "$work/small.bin" --project p --experiment e > /dev/null
exp_id=$(curl -sf "$url/api/search/files?namespace=local&project=p&experiment=e&limit=1" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["experimentId"])')
python3 - "$exp_id" > "$work/gql.json" << 'EOF'
import json, sys
q = """query ListExperimentFilesPaginated($experimentId: ID!, $limit: Int!, $offset: Int!) {
  experimentById(id: $experimentId) { filesPaginated(limit: $limit, offset: $offset) {
    files { id name description tags metadata createdAt pPath
      physicalFile { id filename contentType sizeBytes checksum s3Url } }
    totalCount hasMore } } }"""
print(json.dumps({"query": q, "variables": {"experimentId": sys.argv[1], "limit": 500, "offset": 0}}))
EOF
gql() {  # prints curl's total time; fails unless the answer lists the files
  curl -sf -o "$work/gql.out" -w '%{time_total}\n' -H 'Content-Type: application/json' \
    --data @"$work/gql.json" "$url/graphql"
  grep -q '"small.bin"' "$work/gql.out"
}
cli_list() { local a; a=$(now); "$bin" --server "$url" list > /dev/null; sec "$a"; }
: > "$work/idle.list"; : > "$work/idle.gql"
for i in $(seq "$lists"); do cli_list >> "$work/idle.list"; gql >> "$work/idle.gql"; done
# Space the lists over the expected body time: the 1 GiB server upload, scaled.
body=$(awk "BEGIN{b = ${best[server]} * $big / $size; print (b < 0.5 ? 0.5 : b)}")
gap=$(awk "BEGIN{printf \"%.3f\", $body / ($lists + 1)}")
cat "$work/big.bin" > /dev/null; sync
w0=$(wchar)
t0=$(now)
"$bin" --server "$url" upload "$work/big.bin" --project p --experiment e > /dev/null &
up=$!
# The body has started once the server has written its first 8 MiB of packs.
while kill -0 "$up" 2> /dev/null && [ $(($(wchar) - w0)) -lt $((8 << 20)) ]; do sleep 0.02; done
tbody=$(sec "$t0")
: > "$work/busy.list"; : > "$work/busy.gql"
for i in $(seq "$lists"); do
  sleep "$gap"
  kill -0 "$up" 2> /dev/null || break
  cli_list >> "$work/busy.list"
  kill -0 "$up" 2> /dev/null || break
  gql >> "$work/busy.gql"
done
wait "$up"
tbig=$(sec "$t0")
rss4=$(status VmHWM)
stop_server; rm -rf "$work/big.bin" "$work/srv"

## 5. one huge upload
start_server "$work/srv"
if [ "${STREAM:-0}" != 1 ] && [ "$(avail)" -gt $(( (2 * huge + 512) << 20 )) ]; then
  how="\`--server\` upload of a file"
  gen "$work/huge.bin" "$huge"
  cat "$work/huge.bin" > /dev/null; sync
  t "$bin" --server "$url" upload "$work/huge.bin" --project p --experiment e; read -r thuge _ _ < "$work/res"
else
  how="curl, multipart body streamed from AES-CTR keystream, no source file on disk"
  "$bin" --server "$url" upload "$work/small.bin" --project p --experiment e > /dev/null
  exp_id=$(curl -sf "$url/api/search/files?namespace=local&project=p&experiment=e&limit=1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["files"][0]["experimentId"])')
  stream() {
    printf -- '--B0undary\r\nContent-Disposition: form-data; name="experimentId"\r\n\r\n%s\r\n' "$exp_id"
    printf -- '--B0undary\r\nContent-Disposition: form-data; name="name"\r\n\r\nhuge.bin\r\n'
    printf -- '--B0undary\r\nContent-Disposition: form-data; name="file"; filename="huge.bin"\r\n\r\n'
    openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:serve < /dev/zero 2> /dev/null | head -c $((huge << 20)) || true
    printf -- '\r\n--B0undary--\r\n'
  }
  sync
  t0=$(now)
  stream | curl -sf -o /dev/null -X POST -H 'Content-Type: multipart/form-data; boundary=B0undary' \
    -T - "$url/api/namespaces/local/nodes"
  thuge=$(sec "$t0")
  "$bin" --server "$url" list | grep -q "huge.bin.*$((huge << 20))" || { echo "the streamed upload is not listed" >&2; exit 1; }
fi
rss5=$(status VmHWM)
stop_server; rm -rf "$work/huge.bin" "$work/srv"

## Tables
mib() { awk "BEGIN{printf \"%.0f\", $1 / 1024}"; }
echo
echo "| $size MiB, best of $runs | wall s | GB/s | vs local CLI | CPU s | peak RSS MiB |"
echo "|---|---|---|---|---|---|"
echo "| openssl dgst -sha256 (the floor) | ${best[ssl]} | $(gbs $bytes "${best[ssl]}") | $(ratio "${best[ssl]}" "${best[local]}") | | |"
echo "| upload, local CLI (\`--root\`, new store) | ${best[local]} | $(gbs $bytes "${best[local]}") | 1.00x | ${best[local.cpu]} | $(mib "${best[local.rss]}") |"
echo "| upload, our CLI through the server (\`--server\`) | ${best[server]} | $(gbs $bytes "${best[server]}") | $(ratio "${best[server]}" "${best[local]}") | client ${best[server.ccpu]} + server ${best[server.scpu]} | client $(mib "${best[server.crss]}"), server $(mib "${best[rss1]}") |"
if [ -n "$py" ]; then
  echo "| upload, ml-dash 0.11 client through the server (upload + flush, best of $py_runs; process ${best[py.wall]} s) | ${best[py]} | $(gbs $bytes "${best[py]}") | $(ratio "${best[py]}" "${best[local]}") | client ${best[py.ccpu]} + server ${best[py.scpu]} | client $(mib "${best[py.rss]}") |"
fi
[ -n "$split" ] && echo "| (one \`--server\` upload under strace: $split) | | | | | |"
echo "| download, local CLI | ${best[dlocal]} | $(gbs $bytes "${best[dlocal]}") | 1.00x | | |"
echo "| download, \`--server\` | ${best[dserver]} | $(gbs $bytes "${best[dserver]}") | $(ratio "${best[dserver]}" "${best[dlocal]}") | | client $(mib "${best[dserver.crss]}"), server $(mib "$rss_dl") |"
echo "| 4 x $each MiB at once, 4 local CLI processes, one store | ${best[four.local]} | $(gbs $((4 * each << 20)) "${best[four.local]}") | 1.00x | ${best[four.lcpu]} | |"
echo "| 4 x $each MiB at once, 4 \`--server\` clients, one server | ${best[four.server]} | $(gbs $((4 * each << 20)) "${best[four.server]}") | $(ratio "${best[four.server]}" "${best[four.local]}") | clients ${best[four.ccpu]} + server ${best[four.scpu]} | server $(mib "${best[rss3]}") |"
echo
echo "Lists during one $big MiB upload through the server (seconds, best / median / worst; idle: the same server before it):"
echo
echo "| request | idle | during the upload |"
echo "|---|---|---|"
echo "| \`ml-dash --server URL list\` | $(stats < "$work/idle.list") ($lists) | $(stats < "$work/busy.list") ($(wc -l < "$work/busy.list")) |"
echo "| curl POST /graphql ListExperimentFilesPaginated | $(stats < "$work/idle.gql") ($lists) | $(stats < "$work/busy.gql") ($(wc -l < "$work/busy.gql")) |"
echo
echo "The $big MiB upload: $tbig s ($(gbs $((big << 20)) "$tbig") GB/s, with the lists); its body started after $tbody s; lists $gap s apart."
echo
echo "| server peak RSS (VmHWM) | MiB |"
echo "|---|---|"
echo "| idle, after start (VmRSS) | $(mib "$rss_idle") |"
echo "| $size MiB uploads (step 1, max over runs) | $(mib "${best[rss1]}") |"
echo "| $runs downloads of $size MiB, one server | $(mib "$rss_dl") |"
echo "| 4 x $each MiB at once (max over runs) | $(mib "${best[rss3]}") |"
echo "| $big MiB upload with lists | $(mib "$rss4") |"
echo "| $huge MiB upload ($how: $thuge s, $(gbs $((huge << 20)) "$thuge") GB/s) | $(mib "$rss5") |"
