#!/usr/bin/env bash
# A single-node Garage (S3-compatible, https://garagehq.deuxfleurs.fr) on 127.0.0.1 for tests.
#
#   scripts/garage.sh start   install garage 2.5.0 if missing (cargo install, ~15 min once; the
#                             binary is cached in ~/.cargo/bin), start a node on free ports with
#                             its data under target/garage/, create a bucket and a key, and write
#                             target/garage/env (sourced by .ci/run; exports the AWS_* variables,
#                             ML_DASH_S3_BUCKET and ML_DASH_S3_TEST=1). Reuses a running node.
#   scripts/garage.sh stop    stop it (its data stays until target/garage is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/target/garage"
bin="${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}"
cfg="$dir/garage.toml"

g() { "$bin" -c "$cfg" "$@"; }

stop() {
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    kill "$(cat "$dir/pid")" && sleep 0.5
  fi
  rm -f "$dir/pid"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  if [ -f "$dir/env" ] && [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    # shellcheck disable=SC1091
    . "$dir/env"
    if curl -s -o /dev/null "$AWS_ENDPOINT_URL"; then
      echo "garage: already running ($AWS_ENDPOINT_URL)"
      return
    fi
  fi
  stop
  if [ ! -x "$bin" ]; then
    echo "garage: installing garage 2.5.0 with cargo (about 15 minutes on 2 cores, once)"
    cargo install garage@2.5.0 --locked > "$PWD/target/garage-install.log" 2>&1 ||
      { tail -30 "$PWD/target/garage-install.log"; exit 1; }
    bin="$HOME/.cargo/bin/garage"
  fi
  rm -rf "$dir" && mkdir -p "$dir/meta" "$dir/data"
  local rpc s3 admin
  rpc=$(free_port) s3=$(free_port) admin=$(free_port)
  cat > "$cfg" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(openssl rand -hex 16)"
TOML
  nohup "$bin" -c "$cfg" server > "$dir/server.log" 2>&1 &
  echo $! > "$dir/pid"
  local node=""
  for _ in $(seq 1 100); do
    node=$(g node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
    sleep 0.2
  done
  [ -n "$node" ] || { tail -20 "$dir/server.log"; echo "garage: did not start"; exit 1; }
  # The node id can be read before the RPC port listens (a busy machine): the first command
  # that needs the server waits for it.
  local ok=""
  for _ in $(seq 1 150); do
    g layout assign -z dc1 -c 1G "$node" > /dev/null 2>&1 && ok=1 && break
    sleep 0.2
  done
  [ -n "$ok" ] || { tail -20 "$dir/server.log"; g layout assign -z dc1 -c 1G "$node"; exit 1; }
  g layout apply --version 1 > /dev/null
  g bucket create ml-dash-test > /dev/null
  local out key secret
  out=$(g key create ml-dash-test-key)
  key=$(echo "$out" | grep -i 'key id' | head -1 | awk '{print $NF}')
  secret=$(echo "$out" | grep -i 'secret key' | head -1 | awk '{print $NF}')
  [ -n "$key" ] && [ -n "$secret" ] || { echo "garage: cannot read the new key"; exit 1; }
  g bucket allow --read --write --owner ml-dash-test --key ml-dash-test-key > /dev/null
  cat > "$dir/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
export AWS_REGION=garage
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export ML_DASH_S3_BUCKET=ml-dash-test
export ML_DASH_S3_TEST=1
ENV
  # Wait until the S3 API answers (the layout takes a moment to apply).
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$s3" && break
    sleep 0.2
  done
  echo "garage: running on http://127.0.0.1:$s3 (bucket ml-dash-test; env in target/garage/env)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
