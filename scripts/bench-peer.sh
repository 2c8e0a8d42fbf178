#!/usr/bin/env bash
# `make bench-peer`: this stack and the Go peer (gin + grpc-go round_robin + Consul, built
# from Debian's Go packages) side by side on this machine, loaded alternately with the same
# wrk command on the list endpoint. For each log level in LEVELS our stack is started at that
# level (info is both binaries' default: one access line per request in each tier; the peer
# logs nothing by default) and RUNS runs of each stack alternate; it prints each run, the
# medians, the ratio, both p99s and the peak RSS of every process under load. Our stack runs
# with Connect's mutual TLS between the tiers (its default) and, alternating with it, the same
# build with connect.enabled = false (PLAIN=0 leaves that out); the peer is plain text.
# The peer's source tree is PEER_DIR (default ../shared/peers/go-gin-grpc); it is copied and
# built in a temp dir. Each stack gets its own Consul (a real agent when `consul` is on PATH,
# else the double). Env: LEVELS ("info warn"), RUNS (3 per stack and level), DURATION,
# CONNECTIONS, THREADS, USERS, NO_BUILD.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_DIR=${PEER_DIR:-../shared/peers/go-gin-grpc}
[ -f "$PEER_DIR/build.sh" ] || { echo "no Go peer at PEER_DIR=$PEER_DIR" >&2; exit 1; }
source scripts/bench-lib.sh

RUNS=${RUNS:-3}
LEVELS=${LEVELS:-info warn}
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
build_ours
setup_db

start_consul peer-consul
peer_consul=$CONSUL_ADDR
srv=("$peer/bin/user-srv" -ip 127.0.0.1 -port 0 -db "$work/peer-users.db" -consul "$peer_consul" -name user-srv)
start peer-srv-1 "${srv[@]}" -seed "$USERS"
wait_until "the peer's first user-srv" at_least_passing 1 "$peer_consul" user-srv
start peer-srv-2 "${srv[@]}"
peer_port=$(free_port)
start peer-web "$peer/bin/user-web" -ip 127.0.0.1 -port "$peer_port" -consul "$peer_consul" -srv user-srv
wait_until "the peer's user-srv both passing" at_least_passing 2 "$peer_consul" user-srv
wait_port "$peer_port"
peer_url="http://127.0.0.1:$peer_port/u/v1/user/list?pn=1&psize=10"
peer_smoke() { curl -sf "$peer_url" | grep -q "\"total\":$USERS"; }
wait_until "the peer's smoke request" peer_smoke

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION on /u/v1/user/list?pn=1&psize=10; $RUNS runs each, alternating"
echo "ours: $CONSUL_KIND, 2 x user-srv ($DB_KIND, $USERS users), user-web (admin token)"
echo "peer: gin + grpc-go round_robin, 2 x user-srv (SQLite, $USERS users)"
summary=()
for level in $LEVELS; do
  plain_url="" plain_token=""
  if [ "${PLAIN:-1}" = 1 ]; then
    LOG=$level CONNECT=off start_ours "plain-$level"
    plain_url=$OURS_URL plain_token=$OURS_TOKEN
  fi
  LOG=$level start_ours "ours-$level"
  snapshot_idle
  echo "== our log level: $level (peer: its default, no request log)"
  ours=() theirs=() plain=() ours_p99=() theirs_p99=()
  for run in $(seq 1 "$RUNS"); do
    run_wrk "ours run $run (mTLS)" "$OURS_URL" "Authorization: Bearer $OURS_TOKEN"
    ours+=("$RPS"); ours_p99+=("$P99")
    if [ -n "$plain_url" ]; then
      run_wrk "ours run $run (plain)" "$plain_url" "Authorization: Bearer $plain_token"
      plain+=("$RPS")
    fi
    run_wrk "peer run $run" "$peer_url"
    theirs+=("$RPS"); theirs_p99+=("$P99")
  done
  stop "ours-$level"
  [ -z "$plain_url" ] || stop "plain-$level"
  mo=$(printf '%s\n' "${ours[@]}" | median)
  mt=$(printf '%s\n' "${theirs[@]}" | median)
  po=$(printf '%s\n' "${ours_p99[@]}" | to_ms | median)
  pt=$(printf '%s\n' "${theirs_p99[@]}" | to_ms | median)
  line=$(awk -v l="$level" -v a="$mo" -v b="$mt" -v pa="$po" -v pb="$pt" 'BEGIN {
    printf "log %-4s: ours %s req/s (p99 %s ms), peer %s req/s (p99 %s ms): ratio %.2fx, p99 %s",
      l, a, pa, b, pb, a/b, (pa <= pb ? "ours <= peer" : "ours > peer") }')
  if [ -n "$plain_url" ]; then
    mp=$(printf '%s\n' "${plain[@]}" | median)
    line+=$(awk -v a="$mo" -v p="$mp" 'BEGIN { printf "; mTLS vs plain %s req/s: %+.1f %%", p, (a/p - 1) * 100 }')
  fi
  echo "$line"
  summary+=("$line")
  report_rss "ours-$level"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
report_rss peer
