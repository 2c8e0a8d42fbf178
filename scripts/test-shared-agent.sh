#!/usr/bin/env bash
# The suite against one Consul agent that every test shares, as it runs against a real agent
# (README: `CONSUL_HTTP_ADDR=127.0.0.1:8500 make test`). With CONSUL_HTTP_ADDR set, that agent;
# else one started here by the benchmarks' start_consul (a dev agent when `consul` is on PATH,
# else the double). Tests that must stop or restart the agent say `skipped`; every other test
# must pass beside the others' services.
# Env: CARGO (cargo), CONSUL_HTTP_ADDR.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
BIN=target/debug
source scripts/bench-lib.sh
if [ -z "${CONSUL_HTTP_ADDR:-}" ]; then
  $CARGO build -q -p consul-double
  start_consul consul
  export CONSUL_HTTP_ADDR=$CONSUL_ADDR
  echo "test-shared-agent: one $CONSUL_KIND at $CONSUL_HTTP_ADDR for every test"
else
  echo "test-shared-agent: the agent at $CONSUL_HTTP_ADDR for every test"
fi
$CARGO test --workspace "$@"
