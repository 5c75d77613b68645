# Shared by the A/B bench scripts (sourced; needs $work and `declare -A best`):
#   t CMD...      run CMD with stdout discarded; print "wall_seconds peak_rss_kib"
#   upd KEY VAL   keep the smallest VAL seen for KEY in ${best[KEY]}
t() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" > /dev/null; cat "$work/t"; }
upd() { local k=$1 v=$2; if [ -z "${best[$k]:-}" ] || awk "BEGIN{exit !($v < ${best[$k]})}"; then best[$k]=$v; fi; }
