#!/usr/bin/env bash
# push / pull against the local Garage (scripts/garage.sh start): a store holding SIZE_MIB of
# random data plus 4 more versions of it with 1 % changed (a checkpoint-like series), pushed to
# a fresh prefix, re-pushed, and pulled into an empty root. Wall seconds, peak RSS, bucket bytes.
#   scripts/bench/remote.sh [SIZE_MIB=1024]
set -euo pipefail
size_mib=${1:-1024}
cd "$(dirname "$0")/../.."
cargo build --release --quiet --bin ml-dash
scripts/garage.sh start > /dev/null
# shellcheck disable=SC1091
. target/garage/env
bin=$PWD/target/release/ml-dash
work=$(mktemp -d /var/tmp/mldash-remote.XXXXXX)
trap 'rm -rf "$work"' EXIT
url="s3://$ML_DASH_S3_BUCKET/bench/$(date +%s)-$$"
head -c $((size_mib << 20)) /dev/urandom > "$work/v0.bin"
"$bin" --root "$work/a" upload "$work/v0.bin" --project p --experiment e --to model.bin > /dev/null
for v in 1 2 3 4; do
  # overwrite 1 % of the file in 64 KiB pieces at random offsets
  python3 - "$work/v0.bin" "$work/v$v.bin" "$v" <<'PY'
import os, random, shutil, sys
src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
shutil.copyfile(src, dst)
n = os.path.getsize(dst); r = random.Random(seed)
with open(dst, "r+b") as f:
    for _ in range(max(1, n // 100 // 65536)):
        f.seek(r.randrange(0, n - 65536)); f.write(os.urandom(65536))
PY
  "$bin" --root "$work/a" upload "$work/v$v.bin" --project p --experiment e --to model.bin > /dev/null
done
logical=$(( size_mib * 5 ))
local_packs=$(du -sm "$work/a/packs" | cut -f1)
t() { /usr/bin/time -f "%e s, %M KiB peak RSS" -o "$work/t" "$@" > "$work/out"; cat "$work/t"; }
echo "store: 5 versions x $size_mib MiB (logical $logical MiB), packs $local_packs MiB"
echo "push:        $(t "$bin" --root "$work/a" push "$url" --json)"
sed 's/^/  /' "$work/out"
echo "re-push:     $(t "$bin" --root "$work/a" push "$url" --json)"
sed 's/^/  /' "$work/out"
echo "pull fresh:  $(t "$bin" --root "$work/b" pull "$url" --json)"
sed 's/^/  /' "$work/out"
echo "files push:  $(t "$bin" --root "$work/a" push "$url" --layout files --json)"
sed 's/^/  /' "$work/out"
"$bin" --root "$work/b" verify > /dev/null && echo "pulled store verifies"
diff <("$bin" --root "$work/a" list --all-versions --json) <("$bin" --root "$work/b" list --all-versions --json) > /dev/null && echo "listings identical"
