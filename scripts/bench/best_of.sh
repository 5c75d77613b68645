# Shared by the A/B bench scripts (sourced; needs $work and `declare -A best`):
#   t CMD...      run CMD with stdout discarded; print "wall_seconds peak_rss_kib"
#   upd KEY VAL   keep the smallest VAL seen for KEY in ${best[KEY]}
#   order_for RUN ARGS...  set ${order[@]} to ARGS, reversed on even runs: on a VM, whichever
#                 binary runs second may write into pages the host has just taken back
#   stats         values on stdin, one a line -> "best / median / worst" (the lower middle one
#                 for an even count)
t() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" > /dev/null; cat "$work/t"; }
upd() { local k=$1 v=$2; if [ -z "${best[$k]:-}" ] || awk "BEGIN{exit !($v < ${best[$k]})}"; then best[$k]=$v; fi; }
order_for() {
  local r=$1 i; shift
  order=("$@")
  if [ $((r % 2)) = 0 ]; then order=(); for ((i = $#; i >= 1; i--)); do order+=("${!i}"); done; fi
}
stats() { sort -g | awk '{a[NR]=$1} END{printf "%.3f / %.3f / %.3f", a[1], a[int((NR+1)/2)], a[NR]}'; }
