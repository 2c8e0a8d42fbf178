#!/usr/bin/env bash
# `make bench`: this stack in release mode -- Consul (a real agent when `consul` is on PATH,
# else the double), 2 x user-srv on one database seeded with USERS users, user-web -- loaded
# with wrk. Each run measures the list path (GET /u/v1/user/list?pn=1&psize=10 as the admin)
# and user-web's own GET /health (the HTTP ceiling) at the same log level, and prints
# requests/s, p50/p99, errors, non-2xx, CPU per process and request, the list/ceiling share
# and RSS.
# Env: DB (sqlite | postgres), LOG (info, the binaries' default | warn), RUNS (1),
# DURATION (15s), CONNECTIONS (64), THREADS (2), USERS (1000), NO_BUILD (skip the build),
# TRACES=on (both tiers export every span, OTEL_TRACES_SAMPLER=always_on, to an OTLP sink
# that counts them; off by default, as the binaries are).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

RUNS=${RUNS:-1}
LOG=${LOG:-info}
need_wrk
build_ours
if [ "${TRACES:-off}" = on ]; then
  [ -n "${NO_BUILD:-}" ] || cargo build --release -q -p test-support --bin otlp-sink
  sink_port=$(free_port)
  start otlp-sink "$BIN/otlp-sink" "127.0.0.1:$sink_port"
  wait_port "$sink_port"
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_TRACES_SAMPLER=always_on
fi
setup_db
start_ours ours
echo "stack: $CONSUL_KIND, 2 x user-srv ($DB_KIND, $USERS users), user-web; log level $LOG;" \
  "traces ${TRACES:-off}; wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
snapshot_idle
lists=() ceilings=()
for run in $(seq 1 "$RUNS"); do
  run_wrk "run $run list  " "$OURS_URL" "Authorization: Bearer $OURS_TOKEN"
  lists+=("$RPS")
  run_wrk "run $run health" "$OURS_HEALTH_URL"
  ceilings+=("$RPS")
done
ml=$(printf '%s\n' "${lists[@]}" | median)
mc=$(printf '%s\n' "${ceilings[@]}" | median)
echo "median over $RUNS run(s): list $ml req/s, health $mc req/s"
awk -v a="$ml" -v b="$mc" 'BEGIN {printf "list / health ceiling: %.1f %%\n", 100*a/b}'
report_rss ours
if [ "${TRACES:-off}" = on ]; then
  stop ours
  stop otlp-sink
  grep -h "spans received" "$work/otlp-sink.log" || true
fi
