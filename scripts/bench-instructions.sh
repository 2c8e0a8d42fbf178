#!/usr/bin/env bash
# `make bench-instructions`: instructions (callgrind's Ir) user-web spends per list request,
# a count this noisy machine cannot move. The double, 2 x user-srv (SQLite, 1000 users) and
# user-web under callgrind with instrumentation off; 300 warm-up lists, then instrumentation
# on for N lists (oha -c4), off, and total Ir / N.
# Env: BIN (target/release; build it first), N (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; N=${N:-2000}
source scripts/bench-lib.sh
need_oha
command -v valgrind >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq valgrind >/dev/null; }
P=$(free_port); WP=$(free_port)
start consul "$BIN/consul-double" --addr "127.0.0.1:$P"
wait_port "$P"
export CONSUL_HTTP_ADDR=127.0.0.1:$P DATABASE_URL="sqlite://$work/users.db?mode=rwc" RUST_LOG=warn
"$BIN/user-srv" seed --users 1000 --admin-mobile 18800000000 --admin-password "$ADMIN_PASSWORD" >/dev/null
for i in 1 2; do
  start "srv-$i" "$BIN/user-srv" --port 0 --ready-file "$work/srv-$i.ready"
  wait_until "user-srv $i" test -s "$work/srv-$i.ready"
done
start web env USER_WEB__AUTH__DEV_MODE=true valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/cg.out" "$BIN/user-web" --port "$WP"
for _ in $(seq 1 600); do port_open "$WP" && break; sleep 0.1; done
base="http://127.0.0.1:$WP"
wait_until "user-web sees both instances" sh -c "curl -sf $base/metrics | grep -q '^upstream_endpoints{.*} 2'"
token=$(curl -sf -X POST "$base/u/v1/user/pwd_login" -H 'content-type: application/json' \
  -d "{\"mobile\":\"18800000000\",\"password\":\"$ADMIN_PASSWORD\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
url="$base/u/v1/user/list?pn=1&psize=10"
web=$(pgrep -f "callgrind-out-file=$work/cg.out")
"$OHA" --no-tui -n 300 -c 4 -H "Authorization: Bearer $token" "$url" >/dev/null
callgrind_control -i on "$web" >/dev/null
"$OHA" --no-tui -n "$N" -c 4 -H "Authorization: Bearer $token" "$url" --output-format json >"$work/oha.json"
callgrind_control -i off "$web" >/dev/null
callgrind_control -d "$web" >/dev/null
ok=$(python3 -c "import json; print(json.load(open('$work/oha.json'))['statusCodeDistribution'].get('200', 0))")
ir=$(grep -h '^totals:' "$work"/cg.out* | awk '{s += $2} END {print s}')
echo "user-web: $ir instructions for $N list requests ($ok answered 200): $((ir / N)) per request"
