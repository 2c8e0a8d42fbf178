#!/usr/bin/env bash
# `make bench-peer`: this stack and the Go peer (gin + grpc-go round_robin + Consul, built
# from Debian's Go packages) side by side on this machine, loaded alternately with the
# same wrk command; prints each run and the ratio of the medians.
# The peer's source tree is PEER_DIR (default ../shared/peers/go-gin-grpc); it is copied
# and built in a temp dir. Each stack gets its own Consul (a real agent when `consul` is on
# PATH, else the double). Env: RUNS (3 per stack), DURATION, CONNECTIONS, THREADS, USERS.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_DIR=${PEER_DIR:-../shared/peers/go-gin-grpc}
[ -f "$PEER_DIR/build.sh" ] || { echo "no Go peer at PEER_DIR=$PEER_DIR" >&2; exit 1; }
source scripts/bench-lib.sh

RUNS=${RUNS:-3}
need_wrk
if ! command -v go >/dev/null 2>&1 || ! command -v protoc-gen-go-grpc >/dev/null 2>&1; then
  echo "installing the Go toolchain and libraries the peer builds with (Debian packages)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
    golang-google-grpc-dev golang-google-protobuf-dev golang-github-gin-gonic-gin-dev \
    golang-github-golang-protobuf-1-5-dev golang-github-mattn-go-sqlite3-dev \
    golang-github-google-uuid-dev libsqlite3-dev >/dev/null
fi
peer="$work/peer"
cp -r "$PEER_DIR" "$peer"
chmod -R u+w "$peer"
echo "building the Go peer..."
"$peer/build.sh" >"$work/peer-build.log" 2>&1 || { cat "$work/peer-build.log" >&2; exit 1; }

start_ours
start_consul peer-consul
peer_consul=$CONSUL_ADDR
passing() { curl -sf "http://$peer_consul/v1/health/service/user-srv?passing" | grep -oE '"ID": *"user-srv-' | wc -l; }
srv=("$peer/bin/user-srv" -ip 127.0.0.1 -port 0 -db "$work/peer-users.db" -consul "$peer_consul" -name user-srv)
start peer-srv-1 "${srv[@]}" -seed "$USERS"
for _ in $(seq 1 300); do [ "$(passing)" -ge 1 ] && break; sleep 0.1; done
start peer-srv-2 "${srv[@]}"
peer_port=$(free_port)
start peer-web "$peer/bin/user-web" -ip 127.0.0.1 -port "$peer_port" -consul "$peer_consul" -srv user-srv
for _ in $(seq 1 300); do [ "$(passing)" -ge 2 ] && break; sleep 0.1; done
[ "$(passing)" -ge 2 ] || { echo "the peer's user-srv never both passed" >&2; exit 1; }
wait_port "$peer_port"
peer_url="http://127.0.0.1:$peer_port/u/v1/user/list?pn=1&psize=10"
for _ in $(seq 1 100); do curl -sf "$peer_url" | grep -q "\"total\":$USERS" && break; sleep 0.1; done
curl -sf "$peer_url" | grep -q "\"total\":$USERS" || { echo "peer smoke request failed" >&2; exit 1; }

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION on /u/v1/user/list?pn=1&psize=10; $RUNS runs each, alternating"
echo "ours: $CONSUL_KIND, 2 x user-srv (SQLite, $USERS users), user-web (admin token)"
echo "peer: gin + grpc-go round_robin, 2 x user-srv (SQLite, $USERS users)"
snapshot_idle
ours=() theirs=() ours_p99=() theirs_p99=()
for run in $(seq 1 "$RUNS"); do
  run_wrk "ours run $run" "$OURS_URL" "Authorization: Bearer $OURS_TOKEN"
  ours+=("$RPS"); ours_p99+=("$P99")
  run_wrk "peer run $run" "$peer_url"
  theirs+=("$RPS"); theirs_p99+=("$P99")
done
mo=$(printf '%s\n' "${ours[@]}" | median)
mt=$(printf '%s\n' "${theirs[@]}" | median)
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000} print v}'; }
po=$(printf '%s\n' "${ours_p99[@]}" | to_ms | median)
pt=$(printf '%s\n' "${theirs_p99[@]}" | to_ms | median)
echo "median: ours $mo req/s (p99 ${po} ms), peer $mt req/s (p99 ${pt} ms)"
awk -v a="$mo" -v b="$mt" 'BEGIN {printf "ratio ours/peer: %.2fx requests/s\n", a/b}'
report_rss
