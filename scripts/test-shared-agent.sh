#!/usr/bin/env bash
# The suite against one Consul agent that every test shares, as it runs against a real agent
# (README: `CONSUL_HTTP_ADDR=127.0.0.1:8500 make test`). With CONSUL_HTTP_ADDR set, that agent;
# else the double, started once here, stands in for it. Tests that must stop or restart the
# agent say `skipped`; every other test must pass beside the others' services.
# Env: CARGO (cargo), CONSUL_HTTP_ADDR.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
if [ -z "${CONSUL_HTTP_ADDR:-}" ]; then
  $CARGO build -q -p consul-double
  port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  port=
  for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 30000 ))
    port_open "$p" || { port=$p; break; }
  done
  [ -n "$port" ] || { echo "no free port found" >&2; exit 1; }
  target/debug/consul-double --addr "127.0.0.1:$port" >/dev/null 2>&1 &
  double=$!
  trap 'kill $double 2>/dev/null || true; wait $double 2>/dev/null || true' EXIT
  for _ in $(seq 1 200); do port_open "$port" && break; sleep 0.05; done
  port_open "$port" || { echo "the Consul double never opened $port" >&2; exit 1; }
  export CONSUL_HTTP_ADDR="127.0.0.1:$port"
  echo "test-shared-agent: one Consul double at $CONSUL_HTTP_ADDR for every test"
else
  echo "test-shared-agent: the agent at $CONSUL_HTTP_ADDR for every test"
fi
$CARGO test --workspace "$@"
