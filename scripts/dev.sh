#!/usr/bin/env bash
# `make dev`: Consul (a real dev agent when `consul` is on PATH, else the Consul double),
# migrations and demo users, then user-srv instances on free ports registered in Consul.
# Ctrl-C stops everything; each user-srv deregisters on its way out.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DIR=${DEV_DIR:-.dev}
CONSUL_PORT=${CONSUL_PORT:-8500}
SRV_COUNT=${SRV_COUNT:-2}
ADMIN_MOBILE=${ADMIN_MOBILE:-18800000000}
ADMIN_PASSWORD=${ADMIN_PASSWORD:-admin-password}
BIN=target/debug

mkdir -p "$DEV_DIR"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "stopping..."
  # Reverse order: the services leave Consul before Consul goes.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  echo "stopped."
}
trap cleanup EXIT INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if port_open "$CONSUL_PORT"; then
  echo "port $CONSUL_PORT is already in use: stop what holds it or set CONSUL_PORT" >&2
  exit 1
fi
# Consul runs in its own session so a Ctrl-C in this terminal does not stop it before the
# services have deregistered; cleanup stops it last.
if command -v consul >/dev/null 2>&1; then
  CHECKPOINT_DISABLE=1 setsid consul agent -dev -client 127.0.0.1 -bind 127.0.0.1 \
    -http-port "$CONSUL_PORT" >"$DEV_DIR/consul.log" 2>&1 &
  pids+=($!)
  echo "Consul: started a real 'consul agent -dev' (UI http://127.0.0.1:$CONSUL_PORT/ui)"
else
  setsid "$BIN/consul-double" --addr "127.0.0.1:$CONSUL_PORT" >"$DEV_DIR/consul.log" 2>&1 &
  pids+=($!)
  echo "Consul: no 'consul' binary on PATH, started the Consul double (a stand-in for dev and tests)"
fi
for _ in $(seq 1 100); do port_open "$CONSUL_PORT" && break; sleep 0.1; done
port_open "$CONSUL_PORT" || { echo "Consul did not come up; see $DEV_DIR/consul.log" >&2; exit 1; }

export CONSUL_HTTP_ADDR="127.0.0.1:$CONSUL_PORT"
(cd "$DEV_DIR" && "../$BIN/user-srv" migrate >/dev/null)
(cd "$DEV_DIR" && "../$BIN/user-srv" seed --users 20 \
   --admin-mobile "$ADMIN_MOBILE" --admin-password "$ADMIN_PASSWORD" >/dev/null)
echo "database: $DEV_DIR/data/users.db (SQLite), 20 demo users (password demo-password)"
echo "admin login: $ADMIN_MOBILE / $ADMIN_PASSWORD"

for i in $(seq 1 "$SRV_COUNT"); do
  (cd "$DEV_DIR" && exec "../$BIN/user-srv" --port 0) >"$DEV_DIR/user-srv-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$SRV_COUNT"); do
  for _ in $(seq 1 100); do grep -q "user-srv listening" "$DEV_DIR/user-srv-$i.log" && break; sleep 0.1; done
  addr=$(grep -o 'addr=[^ ]*' "$DEV_DIR/user-srv-$i.log" | head -1 | cut -d= -f2)
  echo "user-srv #$i: grpc://$addr (log $DEV_DIR/user-srv-$i.log)"
done
echo
echo "instances in Consul:  curl -s 'http://127.0.0.1:$CONSUL_PORT/v1/health/service/user-srv?passing'"
echo "Ctrl-C stops everything."
wait -n "${pids[@]}"
