#!/usr/bin/env bash
# `make dev`: Consul (a real dev agent when `consul` is on PATH, else the Consul double),
# then every service: user-srv (migrated, demo users seeded) and user-web, and each service
# `make new-service` added (scripts/dev.d/*.sh), all on free ports except the gateways, all
# registered in Consul. Ctrl-C stops everything; each service deregisters on its way out.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DIR=${DEV_DIR:-.dev}
CONSUL_PORT=${CONSUL_PORT:-8500}
SRV_COUNT=${SRV_COUNT:-2}
WEB_PORT=${WEB_PORT:-8021}
ADMIN_MOBILE=${ADMIN_MOBILE:-18800000000}
ADMIN_PASSWORD=${ADMIN_PASSWORD:-admin-password}
# Absolute, as services run from inside $DEV_DIR; CARGO_TARGET_DIR is honoured.
BIN=$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)

mkdir -p "$DEV_DIR"
rm -f "$DEV_DIR"/*.ready
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

# Waits for a server's --ready-file (the address it serves on) and prints the address.
wait_ready() {
  local file=$1 log=$2
  for _ in $(seq 1 200); do [ -s "$file" ] && break; sleep 0.1; done
  [ -s "$file" ] || { echo "not ready in 20s; see $log" >&2; exit 1; }
  cat "$file"
}

# kv_example SERVICE TEXT: SERVICE's settings document in Consul KV (the config center),
# written only when none is there (cas=0), so an edited one survives.
kv_example() {
  curl -sf -o /dev/null -X PUT "http://127.0.0.1:$CONSUL_PORT/v1/kv/config/$1/data?cas=0" \
    --data-binary "$2" || echo "could not write config/$1/data to Consul KV" >&2
}

# start_srv NAME COUNT: COUNT instances of NAME-srv on free ports, after migrating, with
# their settings also taken from Consul KV.
start_srv() {
  local name=$1 count=$2 addr upper
  upper=$(echo "$name" | tr 'a-z-' 'A-Z_')
  kv_example "$name-srv" "# $name-srv settings over its defaults; only server.log_filter changes live.
[server]
log_filter = \"info\"
"
  export "${upper}_SRV__CONSUL__CONFIG__ENABLED=true"
  (cd "$DEV_DIR" && "$BIN/$name-srv" migrate >/dev/null)
  for i in $(seq 1 "$count"); do
    (cd "$DEV_DIR" && exec "$BIN/$name-srv" --port 0 --ready-file "$name-srv-$i.ready") \
      >"$DEV_DIR/$name-srv-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 "$count"); do
    addr=$(wait_ready "$DEV_DIR/$name-srv-$i.ready" "$DEV_DIR/$name-srv-$i.log")
    echo "$name-srv #$i: grpc://$addr (log $DEV_DIR/$name-srv-$i.log)"
  done
}

# start_web NAME PORT: NAME-web on PORT in dev mode (the built-in JWT secret, shared by
# every gateway; never in production), once it has found every NAME-srv instance.
start_web() {
  local name=$1 port=$2 upper
  upper=$(echo "$name" | tr 'a-z-' 'A-Z_')
  if port_open "$port"; then
    echo "port $port is already in use: stop what holds it, or set ${upper}_WEB_PORT" >&2
    exit 1
  fi
  kv_example "$name-web" "# $name-web settings over its defaults. Live: server.log_filter,
# upstream.deadline and upstream.balancer (policy, outlier, probes); the rest at a restart.
[upstream]
deadline = \"3s\"

[upstream.balancer]
policy = \"round_robin\"
"
  env "${upper}_WEB__AUTH__DEV_MODE=true" "${upper}_WEB__CONSUL__CONFIG__ENABLED=true" \
    "$BIN/$name-web" --port "$port" --ready-file "$DEV_DIR/$name-web.ready" \
    >"$DEV_DIR/$name-web.log" 2>&1 &
  pids+=($!)
  wait_ready "$DEV_DIR/$name-web.ready" "$DEV_DIR/$name-web.log" >/dev/null
  for _ in $(seq 1 100); do
    grep -q "instances changed.*instances=$SRV_COUNT" "$DEV_DIR/$name-web.log" && break; sleep 0.1
  done
  echo "$name-web: http://127.0.0.1:$port (log $DEV_DIR/$name-web.log)"
}

if port_open "$CONSUL_PORT"; then
  echo "port $CONSUL_PORT is already in use: stop what holds it, or set CONSUL_PORT" >&2
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

(cd "$DEV_DIR" && "$BIN/user-srv" seed --users 20 \
   --admin-mobile "$ADMIN_MOBILE" --admin-password "$ADMIN_PASSWORD" >/dev/null)
echo "database: $DEV_DIR/data/users.db (SQLite), 20 demo users (password demo-password)"
echo "admin login: $ADMIN_MOBILE / $ADMIN_PASSWORD"
start_srv user "$SRV_COUNT"
start_web user "$WEB_PORT"

web="http://127.0.0.1:$WEB_PORT"
tries="  TOKEN=\$(curl -s -X POST $web/u/v1/user/pwd_login -H 'content-type: application/json' \\
    -d '{\"mobile\":\"$ADMIN_MOBILE\",\"password\":\"$ADMIN_PASSWORD\"}' | sed -E 's/.*\"token\":\"([^\"]+)\".*/\\1/')
  curl -s \"$web/u/v1/user/list?pn=1&psize=5\" -H \"Authorization: Bearer \$TOKEN\""
services="user-srv"
# Each service make new-service added starts here, and adds its curls to $tries.
for snippet in scripts/dev.d/*.sh; do
  [ -e "$snippet" ] || continue
  # shellcheck source=/dev/null
  source "$snippet"
done

cat <<SUMMARY

user-web:  $web   (metrics $web/metrics, OpenAPI $web/openapi.json)
Consul:    http://127.0.0.1:$CONSUL_PORT$(command -v consul >/dev/null 2>&1 && echo "/ui")
SUMMARY
for s in $services; do
  echo "  $s instances: curl -s 'http://127.0.0.1:$CONSUL_PORT/v1/health/service/$s?passing'"
done
cat <<SUMMARY

Try it:
$tries

Change user-web's balancer policy live (Consul KV; no restart, see $DEV_DIR/user-web.log):
  curl -X PUT http://127.0.0.1:$CONSUL_PORT/v1/kv/config/user-web/data --data-binary '[upstream.balancer]
policy = "random"'

Zero trust between the tiers (Consul Connect): user-srv admits only callers with a Connect
certificate that intentions allow. Cut user-web off, watch the list answer 503 within 2 s
and $DEV_DIR/user-srv-1.log name the refused caller, then let it back in:
  curl -X PUT 'http://127.0.0.1:$CONSUL_PORT/v1/connect/intentions/exact?source=user-web&destination=user-srv' -d '{"Action":"deny"}'
  curl -X DELETE 'http://127.0.0.1:$CONSUL_PORT/v1/connect/intentions/exact?source=user-web&destination=user-srv'

Ctrl-C stops everything.
SUMMARY
# Plain `wait`: one service stopping (say, to try a shutdown) leaves the rest running.
wait
