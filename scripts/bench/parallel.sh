#!/usr/bin/env bash
# Writers in parallel, for one or more ml-dash binaries (e.g. an older build to compare with):
#
#  1. `list` and a 1 MiB upload from other processes while one process uploads BIG_MIB of new
#     data: each one's latency (best, median and worst of LISTS runs spread over the upload),
#     and the large upload's own time;
#  2. 1, 2 and 4 processes each uploading EACH_MIB (half of it shared by all) at once: total
#     wall time, and the pack bytes on disk before and after gc (gc --threshold 0.000001:
#     every pack with garbage is rewritten).
#
#   scripts/bench/parallel.sh BIG_MIB EACH_MIB LISTS name=path/to/ml-dash [name=path ...]
#   e.g. scripts/bench/parallel.sh 2048 512 10 before=/tmp/ml-dash-old after=target/release/ml-dash
#
# Data is generated once (urandom); `sync` runs before each timed step.
set -euo pipefail
big=$1; each=$2; lists=$3; shift 3
work=$(mktemp -d /var/tmp/parallel.XXXXXX); trap 'rm -rf "$work"' EXIT
head -c $((big << 20)) /dev/urandom > "$work/big.bin"
head -c $((1 << 20)) /dev/urandom > "$work/small.bin"
head -c $((each << 19)) /dev/urandom > "$work/shared"
for i in 1 2 3 4; do
  { cat "$work/shared"; head -c $((each << 19)) /dev/urandom; } > "$work/rank$i.bin"
done
rm "$work/shared"
now() { date +%s.%N; }
# shellcheck source=scripts/bench/best_of.sh
. "$(dirname "$0")/best_of.sh"

echo "## list and a 1 MiB upload during a $big MiB upload (best / median / worst of $lists, seconds)"
echo
echo "| binary | list | 1 MiB upload | the large upload |"
echo "|---|---|---|---|"
for nb in "$@"; do
  n=${nb%%=*}; b=${nb#*=}
  s=$work/s-$n; rm -rf "$s"
  "$b" --root "$s" upload "$work/small.bin" --to first.bin --project p --experiment e > /dev/null
  cat "$work/big.bin" > /dev/null; sync
  t0=$(now)
  "$b" --root "$s" upload "$work/big.bin" --project p --experiment e > /dev/null &
  pid=$!
  : > "$work/list.t"; : > "$work/up.t"
  for i in $(seq "$lists"); do
    sleep 0.3
    kill -0 "$pid" 2> /dev/null || break
    a=$(now); "$b" --root "$s" list > /dev/null; c=$(now)
    echo "$c - $a" | bc >> "$work/list.t"
    a=$(now); "$b" --root "$s" upload "$work/small.bin" --to "small-$i.bin" --project p --experiment e > /dev/null; c=$(now)
    echo "$c - $a" | bc >> "$work/up.t"
  done
  wait "$pid"
  t1=$(now)
  echo "| $n | $(stats < "$work/list.t") | $(stats < "$work/up.t") | $(echo "$t1 - $t0" | bc) ($(wc -l < "$work/list.t") lists) |"
  rm -rf "$s"
done

echo
echo "## 1, 2 and 4 writers of $each MiB each (half shared), at once"
echo
echo "| binary | writers | wall time (s) | pack bytes | after gc | single writer, after gc |"
echo "|---|---|---|---|---|---|"
packbytes() { du -sb "$1/packs" | cut -f1; }
for nb in "$@"; do
  n=${nb%%=*}; b=${nb#*=}
  for w in 1 2 4; do
    s=$work/w-$n-$w; rm -rf "$s"
    "$b" --root "$s" upload "$work/small.bin" --to first.bin --project p --experiment e > /dev/null
    sync
    t0=$(now)
    pids=()
    for i in $(seq "$w"); do
      "$b" --root "$s" upload "$work/rank$i.bin" --project p --experiment e > /dev/null &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    t1=$(now)
    before=$(packbytes "$s")
    "$b" --root "$s" gc --threshold 0.000001 > /dev/null || true
    after=$(packbytes "$s")
    one=$work/one-$n-$w; rm -rf "$one"
    "$b" --root "$one" upload "$work/small.bin" --to first.bin --project p --experiment e > /dev/null
    for i in $(seq "$w"); do
      "$b" --root "$one" upload "$work/rank$i.bin" --project p --experiment e > /dev/null
    done
    "$b" --root "$one" gc --threshold 0.000001 > /dev/null || true
    "$b" --root "$s" verify > /dev/null
    echo "| $n | $w | $(echo "$t1 - $t0" | bc) | $before | $after | $(packbytes "$one") |"
    rm -rf "$s" "$one"
  done
done
