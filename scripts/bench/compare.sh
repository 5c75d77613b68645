#!/usr/bin/env bash
# Checkpoint series vs peers: ml-dash (this repo), restic, borg, DVC and the ml-dash 0.11 Python
# SDK (local mode), against the `openssl dgst -sha256` floor. Prints a markdown table and writes
# it to scripts/bench/results/compare-<date>.md.
#   scripts/bench/compare.sh [RUNS=2]          (COMPARE_SKIP="borg dvc" leaves tools out)
#
# Installs the peers itself, idempotently (skipped when already there): restic and borgbackup
# from Debian (borg from PyPI into the venv if Debian's is missing or older than 1.2), and a
# venv at scripts/bench/.venv with dvc, ml-dash==0.11.0 and numpy. A peer that cannot be installed is
# reported in the table as not installed; the run goes on without it.
#
# Data (scripts/bench/gen_data.py, seeded): 5 checkpoints x 256 MiB = a 192 MiB frozen part (float32
# weights, byte-identical in all 5) + a 64 MiB part that is new in each one; and a 1 GiB random
# file for the SHA-256 floor. Each tool ingests the 5 files in order into one fresh store/repo.
# Page cache warm for the sources. Before every timed step: `sync`. Per step we time the tool
# (wall) and then a `sync` right after it (wall+sync: until its bytes are on disk, which
# matters for tools that do not fsync). Best of RUNS (by wall+sync), a fresh store every run.
set -euo pipefail
runs=${1:-2}
cd "$(dirname "$0")/../.."
repo=$PWD
bench=$repo/scripts/bench
venv=$bench/.venv
mkdir -p "$bench/results"
stamp=$(date +%F)
out_md=$bench/results/compare-$stamp.md
log=$bench/results/compare-$stamp.log
: > "$log"
say() { echo "$*" >&2; echo "# $*" >> "$log"; }
t_start=$(date +%s.%N)
load_start=$(cut -d' ' -f1 /proc/loadavg)

n_ckpt=5 frozen_mib=192 delta_mib=64 floor_mib=1024
ckpt_mib=$((frozen_mib + delta_mib))
series_mib=$((n_ckpt * ckpt_mib))

# ---------------------------------------------------------------- install (idempotent)
declare -A skip=()          # tool -> reason it is not available
apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then apt-get update -q >> "$log" 2>&1 || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >> "$log" 2>&1
}
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

missing=()
command -v restic > /dev/null || missing+=(restic)
command -v borg > /dev/null || missing+=(borgbackup)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing from Debian: ${missing[*]}"
  apt_install "${missing[@]}" || say "apt-get install ${missing[*]} failed (see $log)"
fi
command -v restic > /dev/null || skip[restic]="not installed: apt-get install restic failed"

if [ ! -x "$venv/bin/python" ]; then
  say "creating venv $venv"
  python3 -m venv "$venv" >> "$log" 2>&1 || say "python3 -m venv failed"
fi
vpy=$venv/bin/python
have_py() { [ -x "$vpy" ] && "$vpy" -c "$1" > /dev/null 2>&1; }
pip_install() { [ -x "$vpy" ] && "$vpy" -m pip install -q "$@" >> "$log" 2>&1; }
if [ -x "$vpy" ]; then
  have_py 'import numpy' || { say "pip install numpy"; pip_install numpy || true; }
  have_py 'import dvc' || { say "pip install dvc"; pip_install dvc || true; }
  have_py 'import importlib.metadata as m; assert m.version("ml-dash") == "0.11.0"' \
    || { say "pip install ml-dash==0.11.0"; pip_install ml-dash==0.11.0 || true; }
fi
have_py 'import dvc' || skip[dvc]="not installed: pip install dvc failed (see log)"
have_py 'import importlib.metadata as m; assert m.version("ml-dash") == "0.11.0"' \
  || skip[ml011]="not installed: pip install ml-dash==0.11.0 failed (see log)"

borg=""
if command -v borg > /dev/null && ver_ge "$(borg --version | awk '{print $2}')" 1.2; then
  borg=$(command -v borg)
elif [ -x "$venv/bin/borg" ]; then
  borg=$venv/bin/borg
elif [ -x "$vpy" ]; then
  say "Debian borg missing or older than 1.2: building borgbackup from PyPI in the venv"
  apt_install libacl1-dev libssl-dev liblz4-dev libzstd-dev libxxhash-dev pkg-config build-essential \
    || true
  pip_install borgbackup || true
  [ -x "$venv/bin/borg" ] && borg=$venv/bin/borg
fi
[ -n "$borg" ] || skip[borg]="not installed: Debian borgbackup missing/too old and pip build failed"

# COMPARE_SKIP="restic dvc ..." leaves tools out (names: mldash restic borg dvc ml011)
for t in ${COMPARE_SKIP:-}; do skip[$t]="left out (COMPARE_SKIP)"; done

# ---------------------------------------------------------------- ml-dash binary
# Another engineer may rebuild target/ at any time: build, then run a private copy.
work=$(mktemp -d /var/tmp/mldash-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
if ! cargo build --release --quiet >> "$log" 2>&1; then
  say "cargo build --release failed (see $log); using the existing target/release/ml-dash"
fi
cp target/release/ml-dash "$work/ml-dash"
bin=$work/ml-dash
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit="$commit+dirty"

# ---------------------------------------------------------------- data
data=$work/data
say "generating data in $data"
if have_py 'import numpy'; then
  "$vpy" "$bench/gen_data.py" "$data" "$n_ckpt" "$frozen_mib" "$delta_mib" "$floor_mib"
  datakind="float32 weights N(0, 0.02) from numpy PCG64"
else
  # fallback without numpy: AES-256-CTR keystream (incompressible bytes, not float-like)
  mkdir -p "$data"
  ks() { head -c $(($2 << 20)) /dev/zero | openssl enc -aes-256-ctr -nosalt \
    -K "$(printf '%064x' "$1")" -iv 00000000000000000000000000000000; }
  ks 1000 "$frozen_mib" > "$work/frozen"
  for k in $(seq "$n_ckpt"); do cat "$work/frozen" <(ks $((2000 + k)) "$delta_mib") > "$data/ckpt_$k.bin"; done
  rm "$work/frozen"
  ks 3000 "$floor_mib" > "$data/floor.bin"
  datakind="AES-256-CTR keystream (numpy missing)"
fi
cmp -n $((frozen_mib << 20)) "$data/ckpt_1.bin" "$data/ckpt_$n_ckpt.bin"
cat "$data"/*.bin > /dev/null
ckpts=()
for k in $(seq "$n_ckpt"); do ckpts+=("$data/ckpt_$k.bin"); done

# ---------------------------------------------------------------- per-tool steps
# prep_T K (untimed) and cmd_T K (sets CMD, the timed command, run in directory RUNDIR).
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache
export BORG_BASE_DIR=$work/borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export DVC_NO_ANALYTICS=1 DVC_SITE_CACHE_DIR=$work/dvc-site ML_DASH_NO_VERSION_CHECK=1
store=$work/store

init_mldash() { :; }
cmd_mldash() { CMD=("$bin" --root "$store" upload "${ckpts[$1 - 1]}" --project p --experiment e --prefix /checkpoints); }
size_mldash() { du -sb "$store" | cut -f1; }
check_mldash() { "$bin" --root "$store" stats --json | grep -q "\"versions\":$n_ckpt,.*\"logicalBytes\":$((series_mib << 20))"; }

init_restic() { restic -r "$store" init >> "$log" 2>&1; }
cmd_restic() { CMD=(restic -r "$store" backup --quiet "${ckpts[$1 - 1]}"); }
size_restic() { du -sb "$store" | cut -f1; }
check_restic() { [ "$(restic -r "$store" snapshots --json | grep -o '"short_id"' | wc -l)" = "$n_ckpt" ]; }
cache_restic() { du -sb "$RESTIC_CACHE_DIR" 2>/dev/null | cut -f1; }

init_borg() { "$borg" init --encryption=none "$store" >> "$log" 2>&1; }
cmd_borg() { CMD=("$borg" create --compression lz4 "$store::ck$1" "${ckpts[$1 - 1]}"); }
size_borg() { du -sb "$store" | cut -f1; }
check_borg() { [ "$("$borg" list --short "$store" | wc -l)" = "$n_ckpt" ]; }
cache_borg() { du -sb "$BORG_BASE_DIR" 2>/dev/null | cut -f1; }

init_dvc() {
  mkdir -p "$store" && cd "$store" && git init -q && "$venv/bin/dvc" init -q \
    && "$venv/bin/dvc" config core.analytics false && "$venv/bin/dvc" config core.autostage false
  cd "$repo"
}
# the training job writes the checkpoint into the workspace (untimed), then `dvc add` versions it
prep_dvc() { rm -f "$store/model.bin"; cp "${ckpts[$1 - 1]}" "$store/model.bin"; }
cmd_dvc() { CMD=("$venv/bin/dvc" add -q model.bin); RUNDIR=$store; }
size_dvc() { du -sb "$store/.dvc/cache" | cut -f1; }
check_dvc() { [ "$(find "$store/.dvc/cache" -type f | wc -l)" = "$n_ckpt" ]; }
cache_dvc() { du -sb "$DVC_SITE_CACHE_DIR" 2>/dev/null | cut -f1; }

# one Python process uploads the 5 files in order (as a training loop would): a single step
init_ml011() { :; }
cmd_ml011() { CMD=("$vpy" "$bench/mldash011_upload.py" "$store" "${ckpts[@]}"); }
size_ml011() { du -sb "$store" | cut -f1; }
check_ml011() { [ "$(find "$store" -type f -name 'ckpt_*.bin' | wc -l)" = "$n_ckpt" ]; }

now() { date +%s.%N; }
add() { awk "BEGIN{printf \"%.3f\", $1 + $2}"; }

# run_series TOOL NSTEPS -> "wall wall+sync maxrss_kib cpu" (cpu: user+sys seconds)
run_series() {
  local t=$1 n=$2 wall=0 dur=0 rss=0 cpu=0 k t0 t1 t2 r u s
  rm -rf "$store" "$RESTIC_CACHE_DIR" "$BORG_BASE_DIR" "$DVC_SITE_CACHE_DIR"
  "init_$t" || return 1
  for k in $(seq "$n"); do
    RUNDIR=$repo
    if declare -F "prep_$t" > /dev/null; then "prep_$t" "$k"; fi
    "cmd_$t" "$k"
    sync
    t0=$(now)
    (cd "$RUNDIR" && /usr/bin/time -f "%M %U %S" -o "$work/rss" "${CMD[@]}") >> "$log" 2>&1 || return 1
    t1=$(now)
    sync
    t2=$(now)
    wall=$(add "$wall" "$(awk "BEGIN{print $t1 - $t0}")")
    dur=$(add "$dur" "$(awk "BEGIN{print $t2 - $t0}")")
    read -r r u s < <(tail -1 "$work/rss"); [ "$r" -gt "$rss" ] && rss=$r
    cpu=$(add "$cpu" "$(awk "BEGIN{print $u + $s}")")
  done
  echo "$wall $dur $rss $cpu"
}

tools=(mldash restic borg dvc ml011)
declare -A label=([mldash]="ml-dash (this repo, CLI)" [restic]="restic" [borg]="borg" [dvc]="DVC (\`dvc add\`)" [ml011]="ml-dash 0.11 (PyPI, Python SDK, local mode)")
declare -A steps=([mldash]=$n_ckpt [restic]=$n_ckpt [borg]=$n_ckpt [dvc]=$n_ckpt [ml011]=1)
declare -A version=()
version[mldash]="0.1.0 ($commit)"
command -v restic > /dev/null && version[restic]=$(restic version | awk '{print $2}')
[ -n "$borg" ] && version[borg]=$("$borg" --version | awk '{print $2}')
have_py 'import dvc' && version[dvc]=$("$venv/bin/dvc" --version)
have_py 'import ml_dash' && version[ml011]=$("$vpy" -c 'import importlib.metadata as m; print(m.version("ml-dash"))')

declare -A best_wall=() best_dur=() best_rss=() best_cpu=() bytes=() cache=() note=()
for run in $(seq "$runs"); do
  for t in "${tools[@]}"; do
    [ -n "${skip[$t]:-}" ] && continue
    say "run $run/$runs: ${label[$t]}"
    if ! res=$(run_series "$t" "${steps[$t]}"); then
      say "${label[$t]} failed (see $log)"; note[$t]="failed in run $run (see log)"; skip[$t]="failed"
      continue
    fi
    read -r w d r c <<< "$res"
    say "  wall $w s, wall+sync $d s, cpu $c s"
    if ! "check_$t" 2>> "$log"; then note[$t]="CHECK FAILED: store does not hold the $n_ckpt versions"; fi
    if [ -z "${best_dur[$t]:-}" ] || awk "BEGIN{exit !($d < ${best_dur[$t]})}"; then
      best_wall[$t]=$w best_dur[$t]=$d best_rss[$t]=$r best_cpu[$t]=$c
    fi
    bytes[$t]=$("size_$t")   # from the last run: it repeats exactly, except restic's (random chunker polynomial)
    if declare -F "cache_$t" > /dev/null; then cache[$t]=$("cache_$t"); fi
    [ "$t" = mldash ] && mldash_stats=$("$bin" --root "$store" stats --json)
    rm -rf "$store"
  done
done

# openssl floor: best of RUNS
best_of() {
  local best="" t0 t1 d
  for _ in $(seq "$runs"); do
    sync; t0=$(now); "$@" > "$work/dgst"; t1=$(now)
    d=$(awk "BEGIN{printf \"%.3f\", $t1 - $t0}")
    if [ -z "$best" ] || awk "BEGIN{exit !($d < $best)}"; then best=$d; fi
  done
  echo "$best"
}
ssl_floor=$(best_of openssl dgst -sha256 "$data/floor.bin")
ssl_series=$(best_of openssl dgst -sha256 "${ckpts[@]}")
ckpt1_sha=$(head -1 "$work/dgst" | awk '{print $NF}')

# ---------------------------------------------------------------- table
mbs() { awk "BEGIN{printf \"%.0f\", $1 * 1.048576 / $2}"; }
mib() { awk "BEGIN{printf \"%.1f\", $1 / 1048576}"; }
ratio() { awk "BEGIN{if ($2 + 0 == 0) print \"-\"; else printf \"%.2fx\", $1 / $2}"; }
{
  echo "| tool | version | series wall s | MB/s | wall+sync s | CPU s (user+sys) | peak RSS MiB | on disk MiB | time vs ml-dash (wall+sync) | disk vs ml-dash | notes |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for t in "${tools[@]}"; do
    if [ -z "${best_dur[$t]:-}" ]; then
      echo "| ${label[$t]} | ${version[$t]:--} | - | - | - | - | - | - | - | - | ${note[$t]:-${skip[$t]}} |"
      continue
    fi
    n=${note[$t]:-}
    [ -n "${cache[$t]:-}" ] && n="${n:+$n; }+$(mib "${cache[$t]}") MiB client cache outside the repo"
    [ "$t" = ml011 ] && n="${n:+$n; }one process, 5 uploads (buffered, written at close)"
    [ "$t" = dvc ] && n="${n:+$n; }\`.dvc/cache\`; cp into workspace untimed"
    [ "$t" = mldash ] && n="${n:+$n; }stored $(mib "$(sed 's/.*"storedBytes":\([0-9]*\).*/\1/' <<< "$mldash_stats")") MiB in packs"
    echo "| ${label[$t]} | ${version[$t]} | ${best_wall[$t]} | $(mbs $series_mib "${best_wall[$t]}") | ${best_dur[$t]} | ${best_cpu[$t]} | $((best_rss[$t] / 1024)) | $(mib "${bytes[$t]}") | $(ratio "${best_dur[$t]}" "${best_dur[mldash]:-0}") | $(ratio "${bytes[$t]}" "${bytes[mldash]:-0}") | $n |"
  done
  echo "| openssl dgst -sha256, the 5 checkpoints | $(openssl version | awk '{print $2}') | $ssl_series | $(mbs $series_mib "$ssl_series") | | | | | | | floor for the series (hash only, nothing written) |"
  echo "| openssl dgst -sha256, 1 GiB random | $(openssl version | awk '{print $2}') | $ssl_floor | $(mbs $floor_mib "$ssl_floor") | | | | | | | SHA-256 floor |"
} > "$work/table.md"

t_end=$(date +%s.%N)
{
  echo "\`scripts/bench/compare.sh $runs\` ($stamp, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(df -T /var/tmp | awk 'NR==2{print $2}') under /var/tmp; total script time $(awk "BEGIN{printf \"%.0f\", $t_end - $t_start}") s; 1-min load average $load_start at start, $(cut -d' ' -f1 /proc/loadavg) at end):"
  echo
  echo "Series: $n_ckpt checkpoints x $ckpt_mib MiB = $series_mib MiB ($frozen_mib MiB frozen + $delta_mib MiB new each; $((frozen_mib + n_ckpt * delta_mib)) MiB unique), $datakind; best of $runs by wall+sync, fresh store each run. ckpt_1.bin sha256 $ckpt1_sha."
  echo
  cat "$work/table.md"
} > "$out_md"
cat "$out_md"
say "written $out_md (log: $log)"
