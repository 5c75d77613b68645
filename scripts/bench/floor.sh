#!/usr/bin/env bash
# Ingest / re-ingest / verified download of one random file against `openssl dgst -sha256`
# (the SHA-256 floor), page cache warm, `sync` before every timed step. Prints a markdown table.
#   scripts/bench/floor.sh [SIZE_MIB=1024] [RUNS=3]
set -euo pipefail
size_mib=${1:-1024}
runs=${2:-3}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=$PWD/target/release/ml-dash
work=$(mktemp -d /var/tmp/mldash-floor.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/data.bin
head -c $((size_mib << 20)) /dev/urandom > "$src"
cat "$src" > /dev/null

# best-of-RUNS wall seconds and max RSS (KiB) of a command
measure() {
  local best="" rss=0 t r
  for _ in $(seq "$runs"); do
    [ -n "${PREP:-}" ] && eval "$PREP"
    sync
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" > /dev/null
    read -r t r < "$work/time"
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
    [ "$r" -gt "$rss" ] && rss=$r
  done
  echo "$best $rss"
}

read -r t_ssl _ < <(measure openssl dgst -sha256 "$src")
read -r t_new rss_new < <(PREP="rm -rf $work/store" measure "$bin" --root "$work/store" upload "$src" --project p --experiment e)
read -r t_known rss_known < <(measure "$bin" --root "$work/store" upload "$src" --project p --experiment e)
read -r t_down rss_down < <(PREP="rm -f $work/out.bin" measure "$bin" --root "$work/store" download --project p --experiment e /data.bin --version 1 -o "$work/out.bin")
cmp "$src" "$work/out.bin"

# dedup on a shifted copy: 100 bytes inserted at the front
{ head -c 100 /dev/urandom; cat "$src"; } > "$work/shifted.bin"
new=$("$bin" --root "$work/store" upload "$work/shifted.bin" --project p --experiment e --json | sed 's/.*"newBytes":\([0-9]*\).*/\1/')

gbs() { awk "BEGIN{printf \"%.2f\", $size_mib / 1024 * 1.073741824 / $1}"; }
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $t_ssl}"; }
echo "| step ($size_mib MiB random, best of $runs) | wall s | GB/s | vs openssl | peak RSS MiB |"
echo "|---|---|---|---|---|"
echo "| openssl dgst -sha256 | $t_ssl | $(gbs "$t_ssl") | 1.00x | |"
echo "| upload, new data (packs fsynced) | $t_new | $(gbs "$t_new") | $(ratio "$t_new") | $((rss_new / 1024)) |"
echo "| upload, data already stored | $t_known | $(gbs "$t_known") | $(ratio "$t_known") | $((rss_known / 1024)) |"
echo "| download, every chunk verified | $t_down | $(gbs "$t_down") | $(ratio "$t_down") | $((rss_down / 1024)) |"
echo
echo "Shifted copy (100 bytes inserted at the front): $new new bytes stored for $(( (size_mib << 20) + 100 )) ($(awk "BEGIN{printf \"%.3f\", 100 * $new / ($size_mib * 1048576)}") %)."
