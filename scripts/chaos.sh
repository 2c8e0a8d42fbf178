#!/usr/bin/env bash
# `make chaos`: the stack in release mode (Consul double or real agent, 3 x user-srv on
# PostgreSQL, user-web), every setting at its default (Consul checks every 5 s), under a
# steady list load (wrk -t2 -c16), through these failures:
#   frozen    one user-srv SIGSTOPped for 10 s, then SIGCONT
#   kill-9    one user-srv killed
#   sigterm   one user-srv stopped with SIGTERM
#   rolling   every user-srv replaced, one at a time
#   consul    Consul stopped for 10 s and started again
#   ca-rotation  Connect's CA rotated to a new root (PUT /v1/connect/ca/configuration); once
#             the leaves are renewed, a new instance joins and the oldest leaves (new
#             connections on the new certificates)
#   database  PostgreSQL stopped for 8 s and started again
#   busy      two CPU hogs (busy loops at normal priority) for the whole scenario; one
#             user-srv stopped with SIGTERM, then another killed with -9
#   overload  the workspace's load generator (test-support's `load`): the capacity measured
#             closed-loop (-c64), then an open loop at half of it, 2x it for 15 s, and half again
# (the consul scenario needs the double: a real agent is not restarted here)
# For each it prints requests, failures (non-2xx and socket errors), p50/p99/max and, where
# one instance is the target, how long after the event user-web still sent it calls.
# For the database it also prints the answers during the outage (503s, the slowest) and how
# long after the database's return the last failure came. For the overload: goodput, p99 of
# the successes and of the refusals, the status codes, and the p99 once the load is back at
# half (from 2 s after the overload ends) against the p99 before it.
# Env: SCENARIOS (all of the above, space-separated), NO_BUILD, BIN, WEB_NICE (a niceness for
# user-web during the overload only, e.g. -5: the CPU share a gateway has on a host or pod of
# its own; unset, every process competes per thread, user-web's one thread among ~60).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TEST_DATABASE_URL:-}" ]; then
  exec scripts/with-postgres.sh "$0" "$@"
fi
source scripts/bench-lib.sh

SCENARIOS=${SCENARIOS:-"frozen kill-9 sigterm rolling consul ca-rotation database busy overload"}
LOAD=(-t2 -c16 --latency --timeout 10s)
need_wrk
build_ours
# The load generator is built here even with NO_BUILD (and taken from this tree with BIN).
LOAD_GEN=$PWD/target/release/load
if [ -z "${NO_BUILD:-}" ] || [ ! -x "$LOAD_GEN" ]; then cargo build --release -q -p test-support --bin load; fi

# The database: a fresh one on the with-postgres cluster.
DB_URL="${TEST_DATABASE_URL%/*}/chaos_$RANDOM"
psql_url=$TEST_DATABASE_URL
command -v psql >/dev/null 2>&1 || psql() { "$(dirname "$(echo "$WITH_PG_CTL" | awk '{for(i=1;i<=NF;i++) if ($i ~ /pg_ctl$/) print $i}')")/psql" "$@"; }
psql -q "$psql_url" -c "CREATE DATABASE ${DB_URL##*/}" >/dev/null
DB_KIND=PostgreSQL

start_consul consul
consul=$CONSUL_ADDR
consul_port=${consul##*:}
srv_env=(CONSUL_HTTP_ADDR="$consul" DATABASE_URL="$DB_URL" RUST_LOG=warn
  USER_SRV__SERVER__DRAIN_TIMEOUT=5s)
env "${srv_env[@]}" "$BIN/user-srv" seed --users "$USERS" --admin-mobile 18800000000 \
  --admin-password "$ADMIN_PASSWORD" >/dev/null
serial=0
add_srv() {
  serial=$((serial + 1))
  start "srv-$serial" env "${srv_env[@]}" "$BIN/user-srv" --port 0 --ready-file "$work/srv-$serial.ready"
  wait_until "user-srv $serial ready" test -s "$work/srv-$serial.ready"
}
pid_of() { local i; for i in "${!names[@]}"; do if [ "${names[$i]}" = "$1" ]; then echo "${pids[$i]}"; fi; done; }
srv_names() { printf '%s\n' "${names[@]}" | grep '^srv-' || true; }
for _ in 1 2 3; do add_srv; done
port=$(free_port)
start web env CONSUL_HTTP_ADDR="$consul" USER_WEB__AUTH__DEV_MODE=true RUST_LOG=warn \
  USER_WEB__UPSTREAM__WAIT=10s "$BIN/user-web" --port "$port"
wait_port "$port"
base="http://127.0.0.1:$port"
url="$base/u/v1/user/list?pn=1&psize=10"
token=$(curl -sf -X POST "$base/u/v1/user/pwd_login" -H 'content-type: application/json' \
  -d "{\"mobile\":\"18800000000\",\"password\":\"$ADMIN_PASSWORD\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
# Instances in user-web's rotation (from its metrics).
in_rotation() { curl -sf "$base/metrics" | awk '/^upstream_endpoints\{/ {print $2}'; }
rotation_is() { [ "$(in_rotation)" = "$1" ]; }
# The Consul ID of the instance that wrote ready file $1's address.
id_of() { # srv-name
  local addr; addr=$(cat "$work/$1.ready")
  curl -sf "http://$consul/v1/health/service/user-srv" | tr '{' '\n' |
    awk -v p="${addr##*:}" '/"ID": *"user-srv-/ {match($0, /user-srv-[0-9a-f-]+/); id=substr($0, RSTART, RLENGTH)} /"Port": *[0-9]+/ {match($0, /"Port": *[0-9]+/); q=substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", q); if (q == p && id != "") {print id; exit}}'
}
now_ms() { date +%s%3N; }
# Every 50 ms: the calls user-web has made to each instance so far (all outcomes).
sample_calls() {
  while :; do
    curl -sf "$base/metrics" | awk -v t="$(now_ms)" '/^upstream_calls_total\{/ {
      match($0, /instance="[^"]*"/); i=substr($0, RSTART+10, RLENGTH-11); n[i]+=$2 }
      END {for (i in n) print t, i, n[i]}'
    sleep 0.05
  done
}
# Every 50 ms during the database scenario: one request's status and time.
probe_answers() {
  while :; do
    curl -s -o /dev/null -w "$(now_ms) %{http_code} %{time_total}\n" -H "Authorization: Bearer $token" "$url"
    sleep 0.05
  done
}

printf '\nstack: %s, 3 x user-srv (%s, %s users), user-web; wrk %s; Consul check interval: the default (5s)\n' \
  "$CONSUL_KIND" "$DB_KIND" "$USERS" "${LOAD[*]}"
printf '%-9s %9s %8s %9s %9s %9s  %s\n' scenario requests failed p50 p99 max "out of rotation after the event"

run_scenario() { # name seconds event-at event-function [target-srv [window-ms]]
  local name=$1 secs=$2 at=$3 event=$4 target=${5:-} window=${6:-999999999} target_id="" t_event
  [ -n "$target" ] && target_id=$(id_of "$target" || true)
  sample_calls >"$work/calls-$name.txt" 2>/dev/null &
  local sampler=$!
  wrk "${LOAD[@]}" -d"${secs}s" -H "Authorization: Bearer $token" "$url" >"$work/wrk-$name.txt" &
  local load=$!
  sleep "$at"
  t_event=$(now_ms)
  "$event"
  wait "$load"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  local w="$work/wrk-$name.txt" total failed p50 p99 max out="-"
  total=$(awk '/requests in/ {print $1}' "$w")
  failed=$(awk '/Non-2xx/ {n+=$5} /Socket errors/ {gsub(",",""); n+=$4+$6+$8+$10} END {print n+0}' "$w")
  p50=$(awk '/^ +50%/ {print $2}' "$w"); p99=$(awk '/^ +99%/ {print $2}' "$w")
  max=$(awk '/^ +Latency/ {print $4}' "$w")
  if [ -n "$target_id" ]; then
    # The last sample (within the window after the event) at which its count still grew.
    out=$(awk -v id="$target_id" -v t0="$t_event" -v w="$window" '$2 == id { if (seen && $3 > last && $1 > t0 && $1 < t0 + w) at = $1; last = $3; seen = 1 }
      END { if (at) printf "%d ms", at - t0; else print "0 ms (no call after the event)" }' "$work/calls-$name.txt")
  fi
  printf '%-9s %9s %8s %9s %9s %9s  %s\n' "$name" "$total" "$failed" "$p50" "$p99" "$max" "$out"
  echo "$name $total $failed" >>"$work/summary.txt"
}

victim=""
frozen() { kill -STOP "$(pid_of "$victim")"; sleep 10; kill -CONT "$(pid_of "$victim")"; }
# Reaped inside the redirected group, so the shell's "Killed" notice goes nowhere.
kill9() { local pid; pid=$(pid_of "$victim"); { kill -KILL "$pid"; wait "$pid"; } 2>/dev/null || true; }
sigterm() { kill -TERM "$(pid_of "$victim")"; }
rolling() {
  local old
  for old in $(srv_names); do
    add_srv
    wait_until "4 in rotation" rotation_is 4
    stop "$old"
    wait_until "3 in rotation" rotation_is 3
  done
}
consul_away() {
  stop consul
  sleep 10
  start consul "$BIN/consul-double" --addr "127.0.0.1:$consul_port"
  wait_port "$consul_port"
}
# Both tiers' leaves carry the cross-signed root after them: renewed by the new root.
leaves_renewed() {
  local svc
  for svc in user-srv user-web; do
    [ "$(curl -sf "http://$consul/v1/agent/connect/ca/leaf/$svc" | grep -o 'BEGIN CERTIFICATE' | wc -l)" = 2 ] || return 1
  done
}
ca_rotation() {
  local key
  key=$("$BIN/consul-double" --new-ca-key | awk '{printf "%s\\n", $0}')
  curl -sf -X PUT "http://$consul/v1/connect/ca/configuration" \
    -d "{\"Provider\":\"consul\",\"Config\":{\"LeafCertTTL\":\"72h\",\"RotationPeriod\":\"2160h\",\"IntermediateCertTTL\":\"8760h\",\"PrivateKey\":\"$key\"}}" >/dev/null
  # The double renews each leaf within 2 s of a rotation; a real agent takes up to 30 s, or
  # (1.10.3) may never, and the old leaf goes on chaining to the old root, still trusted.
  [ "$CONSUL_KIND" != consul-double ] || wait_until "the leaves renewed" leaves_renewed
  add_srv
  wait_until "4 in rotation" rotation_is 4
  stop "$victim"
  wait_until "3 in rotation" rotation_is 3
}
database_away() {
  probe_answers >"$work/answers.txt" 2>/dev/null &
  local prober=$!
  db_down_at=$(now_ms)
  eval "$WITH_PG_CTL stop -m fast" >/dev/null
  sleep 8
  eval "$WITH_PG_CTL start -w" >/dev/null
  db_up_at=$(now_ms)
  sleep 4
  kill "$prober" 2>/dev/null; wait "$prober" 2>/dev/null || true
}
# The busy host: SIGTERM one instance, then kill -9 another, with both cores busy.
busy_host() {
  local second; second=$(srv_names | sed -n 2p)
  sigterm
  sleep 1
  victim=$second kill9
}
start_hogs() { local i; for i in 1 2; do start "hog-$i" sh -c 'while :; do :; done'; done; }
# One run of the workspace's load generator (`load`, JSON summary to $1): closed loop at -c64
# when RATE is empty, else an open loop at RATE: requests are due on schedule whatever the
# latency and their latency counts from when they were due, so queueing anywhere counts
# (the generator's own included). 1,024 connections, so that the generator keeps its
# schedule instead of queueing behind its own connections. Every 503 is checked for
# Retry-After. Requests still running at the end are waited for, not aborted.
load_run() { # out seconds [rate]
  local rate=(-c 64)
  [ -z "${3:-}" ] || rate=(-q "$3" -c 1024)
  "$LOAD_GEN" -z "$2" "${rate[@]}" -t 10 -H "Authorization: Bearer $token" "$url" >"$1"
}
# Reads a summary: goodput (2xx a second), p99 of the 2xx and of the others (ms), the status
# codes, the errors without an answer, the 503s without Retry-After, the generator's own CPU
# seconds, and the p99 of how late it sent requests after they were due (ms; part of the p99s).
load_read() { # file
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d["status"]
ok = sum(n for c, n in codes.items() if c.startswith("2"))
ms = lambda p: "-" if p is None else "%.1f" % p
print("%.0f %s %s %s %s %d %s %s" % (ok / d["seconds"], ms(d["ok_ms"]["p99"]), ms(d["other_ms"]["p99"]),
    ",".join("%sx%d" % (c, n) for c, n in sorted(codes.items())) or "none",
    ",".join("%s:%d" % (k, v) for k, v in d["errors"].items()) or "none",
    d["unavailable_without_retry_after"], d["cpu_seconds"], ms(d["late_ms"]["p99"])))
PY
}
# utime + stime of user-web and of all user-srv together, in clock ticks: "web=N srv=M".
cpu_ticks() {
  local web=0 srv=0 i t
  for i in "${!names[@]}"; do
    t=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat" 2>/dev/null || echo 0)
    case ${names[$i]} in web) web=$((web + t)) ;; srv-*) srv=$((srv + t)) ;; esac
  done
  echo "web=$web srv=$srv"
}
# user-web's sheds and its calls to user-srv by code so far: "shed=N OK=N ...".
web_counts() {
  curl -sf "$base/metrics" | awk '/^http_shed_total / {s = $2}
    /^upstream_calls_total\{/ {match($0, /code="[^"]*"/); c[substr($0, RSTART + 6, RLENGTH - 7)] += $2}
    END {printf "shed=%d", s; for (k in c) printf " %s=%d", k, c[k]; print ""}'
}
# Idle and total clock ticks of the whole host: "idle total".
host_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t}' /proc/stat; }
overload() {
  local cap half double
  [ -z "${WEB_NICE:-}" ] || renice -n "$WEB_NICE" -p "$(pid_of web)" >/dev/null
  local gen_cap gen_over idle_cap
  idle_cap=$(host_ticks)
  load_run "$work/load-capacity.json" 10
  idle_cap=$(echo "$idle_cap $(host_ticks)" | awk '{printf "%.1f", ($3 - $1) * 100 / ($4 - $2)}')
  read -r cap _ _ _ _ _ gen_cap _ <<<"$(load_read "$work/load-capacity.json")"
  half=$((cap / 2)); double=$((cap * 2))
  load_run "$work/load-before.json" 8 "$half"
  local cpu0 cpu1 limit host0 host1
  cpu0=$(cpu_ticks); host0=$(host_ticks); local counts0 counts1; counts0=$(web_counts)
  load_run "$work/load-overload.json" 15 "$double" &
  local load=$!
  sleep 10
  limit=$(curl -sf "$base/metrics" | awk '/^http_concurrency_limit / {print $2}')
  wait "$load"
  cpu1=$(cpu_ticks); host1=$(host_ticks); counts1=$(web_counts)
  load_run "$work/load-settle.json" 2 "$half"
  load_run "$work/load-after.json" 6 "$half"
  local good p99_ok p99_refused codes errors no_retry_after before after late
  read -r good p99_ok p99_refused codes errors no_retry_after gen_over late <<<"$(load_read "$work/load-overload.json")"
  read -r _ before _ _ _ _ _ _ <<<"$(load_read "$work/load-before.json")"
  read -r _ after _ _ _ _ _ _ <<<"$(load_read "$work/load-after.json")"
  printf 'overload  capacity %s req/s (closed loop, -c64); open loop at 2x = %s req/s for 15 s%s:\n' "$cap" "$double" "${WEB_NICE:+, user-web at nice $WEB_NICE}"
  printf '  goodput %s req/s (%s %% of capacity); p99 of the successes %s ms, of the refusals %s ms\n' \
    "$good" "$((good * 100 / cap))" "$p99_ok" "$p99_refused"
  printf '  status codes %s; 503s without Retry-After %s; errors without an answer %s\n' "$codes" "$no_retry_after" "$errors"
  printf '  p99 at half the capacity: before %s ms, from 2 s after the overload %s ms\n' "$before" "$after"
  printf '  user-web concurrency limit 10 s in: %s; CPU seconds during it: %s\n' "$limit" \
    "$(paste <(echo "$cpu0" | tr ' ' '\n') <(echo "$cpu1" | tr ' ' '\n') | awk -v hz="$(getconf CLK_TCK)" '{split($1, a, "="); split($2, b, "="); printf "%s %.1f  ", a[1], (b[2] - a[2]) / hz}')"
  printf '  the load generator'"'"'s own CPU: %s s in the 10 s capacity run, %s s in the 15 s overload, where it sent its requests late by up to %s ms (p99); the host idle %s %% of the capacity run, %s %% of the overload\n' \
    "$gen_cap" "$gen_over" "$late" "$idle_cap" "$(echo "$host0 $host1" | awk '{printf "%.1f", ($3 - $1) * 100 / ($4 - $2)}')"
  printf '  during it, user-web: %s\n' "$(echo "$counts0 / $counts1" | tr ' ' '\n' | awk -F= '$0 == "/" {after = 1; next}
    {if (after) {b[$1] = $2} else {a[$1] = $2}} END {for (k in b) printf "%s %d  ", k, b[k] - a[k]}')"
  echo "overload-after $before $after" >>"$work/summary-overload.txt"
  [ -z "${WEB_NICE:-}" ] || renice -n 0 -p "$(pid_of web)" >/dev/null
}
# Back to three healthy instances in rotation before the next scenario.
restore() {
  local n; n=$(srv_names | wc -l)
  while [ "$n" -lt 3 ]; do add_srv; n=$((n + 1)); done
  wait_until "3 in rotation" rotation_is 3
}

for s in $SCENARIOS; do
  victim=$(srv_names | head -1)
  case $s in
    frozen) run_scenario frozen 25 5 frozen "$victim" 9500 ;;
    kill-9) run_scenario kill-9 15 5 kill9 "$victim"; stop "$victim" ;;
    sigterm) run_scenario sigterm 15 5 sigterm "$victim"; stop "$victim" ;;
    rolling) run_scenario rolling 30 3 rolling ;;
    consul) [ "$CONSUL_KIND" = consul-double ] || { echo "consul: skipped (a real agent is not restarted here)"; continue; }
      run_scenario consul 25 5 consul_away ;;
    ca-rotation) run_scenario ca-rotation 20 5 ca_rotation ;;
    busy) start_hogs
      run_scenario busy 20 5 busy_host "$victim"
      stop hog; stop "$victim"; stop "$(srv_names | head -1)" ;;
    overload) overload ;;
    database) run_scenario database 20 4 database_away
      awk -v d="$db_down_at" -v u="$db_up_at" '
        $1 >= d && $1 < u { n++; if ($2 == 503) s++; else other[$2]++; if ($3 > worst) worst = $3 }
        $1 >= u && $2 != 200 { last = $1 }
        END { printf "  database down %.1f s: %d probes, %d answered 503", (u-d)/1000, n, s;
              for (c in other) printf ", %d answered %s", other[c], c;
              printf ", slowest %.0f ms; last failure %s after its return\n", worst*1000,
                (last ? sprintf("%d ms", last-u) : "none") }' "$work/answers.txt" ;;
    *) echo "unknown scenario $s" >&2; exit 1 ;;
  esac
  restore
done
[ -s "$work/summary.txt" ] || exit 0
awk '$1 != "database" {t+=$2; f+=$3} END {printf "\nevery scenario but the database outage (whose 503s are its point): %d requests, %d failed\n", t, f}' "$work/summary.txt"
