#!/usr/bin/env bash
# `make dev`: Consul (a real dev agent when `consul` is on PATH, else the Consul double),
# migrations and demo users, user-srv instances on free ports and user-web on a fixed port,
# all registered in Consul. Ctrl-C stops everything; each service deregisters on its way out.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DIR=${DEV_DIR:-.dev}
CONSUL_PORT=${CONSUL_PORT:-8500}
SRV_COUNT=${SRV_COUNT:-2}
WEB_PORT=${WEB_PORT:-8021}
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
  exit 0
}
trap cleanup EXIT INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in "$CONSUL_PORT" "$WEB_PORT"; do
  if port_open "$p"; then
    echo "port $p is already in use: stop what holds it, or set CONSUL_PORT / WEB_PORT" >&2
    exit 1
  fi
done
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
# Dev mode allows the built-in JWT secret; never set it in production.
USER_WEB__AUTH__DEV_MODE=true "$BIN/user-web" --port "$WEB_PORT" >"$DEV_DIR/user-web.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "user-web listening" "$DEV_DIR/user-web.log" && break; sleep 0.1; done
grep -q "user-web listening" "$DEV_DIR/user-web.log" || { echo "user-web did not start; see $DEV_DIR/user-web.log" >&2; exit 1; }
# Wait until user-web has found the instances, so the curls below work at once.
for _ in $(seq 1 100); do
  grep -q "instances changed.*instances=$SRV_COUNT" "$DEV_DIR/user-web.log" && break; sleep 0.1
done

web="http://127.0.0.1:$WEB_PORT"
cat <<EOF

user-web:  $web   (log $DEV_DIR/user-web.log)
  metrics  $web/metrics
  OpenAPI  $web/openapi.json
Consul:    http://127.0.0.1:$CONSUL_PORT$(command -v consul >/dev/null 2>&1 && echo "/ui")
  instances: curl -s 'http://127.0.0.1:$CONSUL_PORT/v1/health/service/user-srv?passing'

Try it:
  TOKEN=\$(curl -s -X POST $web/u/v1/user/pwd_login -H 'content-type: application/json' \\
    -d '{"mobile":"$ADMIN_MOBILE","password":"$ADMIN_PASSWORD"}' | sed -E 's/.*"token":"([^"]+)".*/\1/')
  curl -s "$web/u/v1/user/list?pn=1&psize=5" -H "Authorization: Bearer \$TOKEN"

Ctrl-C stops everything.
EOF
# Plain `wait`: one service stopping (say, to try a shutdown) leaves the rest running.
wait
