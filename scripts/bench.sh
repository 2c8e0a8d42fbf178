#!/usr/bin/env bash
# `make bench`: this stack in release mode -- Consul (a real agent when `consul` is on PATH,
# else the double), 2 x user-srv on one SQLite file seeded with USERS users, user-web --
# loaded with wrk on GET /u/v1/user/list?pn=1&psize=10 as the admin. Prints requests/s,
# p50/p99, errors, non-2xx, CPU per process and RSS.
# Env: RUNS (1), DURATION (15s), CONNECTIONS (64), THREADS (2), USERS (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

RUNS=${RUNS:-1}
need_wrk
start_ours
echo "stack: $CONSUL_KIND, 2 x user-srv (SQLite, $USERS users), user-web; wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
snapshot_idle
results=()
for run in $(seq 1 "$RUNS"); do
  run_wrk "run $run" "$OURS_URL" "Authorization: Bearer $OURS_TOKEN"
  results+=("$RPS")
done
[ "$RUNS" -gt 1 ] && echo "median: $(printf '%s\n' "${results[@]}" | median) req/s over $RUNS runs"
report_rss
