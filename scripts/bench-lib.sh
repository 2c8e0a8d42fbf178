# Shared by bench.sh and bench-peer.sh: process bookkeeping, the stacks, one wrk run.
# Sourced, not run.

BIN=target/release
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
USERS=${USERS:-1000}
ADMIN_PASSWORD=bench-admin-pw

work=$(mktemp -d /tmp/bench.XXXXXX)
pids=()
names=()
cleanup() {
  trap - EXIT INT TERM
  for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_wrk() {
  command -v wrk >/dev/null 2>&1 && return
  echo "installing wrk from Debian packages"
  as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 30000 ))
    port_open "$p" || { echo "$p"; return; }
  done
  echo "no free port found" >&2; exit 1
}
wait_port() { for _ in $(seq 1 200); do port_open "$1" && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
wait_log() { # file pattern
  for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
start() { # name command...
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
}

# A Consul for one stack: a real dev agent when `consul` is on PATH, else the double.
# Sets CONSUL_ADDR and CONSUL_KIND.
start_consul() { # name
  local port; port=$(free_port)
  if command -v consul >/dev/null 2>&1; then
    start "$1" consul agent -dev -client 127.0.0.1 -bind 127.0.0.1 -http-port "$port" -dns-port -1 \
      -serf-lan-port "$(free_port)" -serf-wan-port "$(free_port)" -server-port "$(free_port)"
    CONSUL_KIND="consul agent -dev"
  else
    start "$1" "$BIN/consul-double" --addr "127.0.0.1:$port"
    CONSUL_KIND="consul-double"
  fi
  wait_port "$port"
  CONSUL_ADDR="127.0.0.1:$port"
}

# This project's stack: 2 x user-srv on one seeded SQLite file, user-web. Per-request info
# logs are off (RUST_LOG=warn) so the figures measure the services, not the log sink.
# Sets OURS_URL and OURS_TOKEN.
start_ours() {
  echo "building release binaries..."
  cargo build --release -q -p user-srv -p user-web -p consul-double
  start_consul consul
  local db="sqlite://$work/users.db?mode=rwc"
  CONSUL_HTTP_ADDR=$CONSUL_ADDR DATABASE_URL=$db RUST_LOG=warn "$BIN/user-srv" seed --users "$USERS" \
    --admin-mobile 18800000000 --admin-password "$ADMIN_PASSWORD" >/dev/null
  for i in 1 2; do
    start "user-srv-$i" env CONSUL_HTTP_ADDR="$CONSUL_ADDR" DATABASE_URL="$db" \
      RUST_LOG=warn,discovery=info "$BIN/user-srv" --port 0
    wait_log "$work/user-srv-$i.log" "registered in Consul"
  done
  local port; port=$(free_port)
  start user-web env CONSUL_HTTP_ADDR="$CONSUL_ADDR" RUST_LOG=warn,discovery=info \
    USER_WEB__AUTH__DEV_MODE=true "$BIN/user-web" --port "$port"
  wait_log "$work/user-web.log" "instances=2"
  wait_port "$port"
  OURS_URL="http://127.0.0.1:$port/u/v1/user/list?pn=1&psize=10"
  OURS_TOKEN=$(curl -sf -X POST "http://127.0.0.1:$port/u/v1/user/pwd_login" \
    -H 'content-type: application/json' \
    -d "{\"mobile\":\"18800000000\",\"password\":\"$ADMIN_PASSWORD\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
  curl -sf "$OURS_URL" -H "Authorization: Bearer $OURS_TOKEN" | grep -q "\"total\":$((USERS + 1))" \
    || { echo "smoke request failed" >&2; exit 1; }
}

rss() { ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A IDLE PEAK
snapshot_idle() { for i in "${!pids[@]}"; do IDLE[$i]=$(rss "${pids[$i]}"); PEAK[$i]=${IDLE[$i]}; done; }

# One wrk run; prints its figures and the CPU each process used. Sets RPS, P50, P99.
run_wrk() { # label url [header]
  local label=$1 url=$2 header=${3:-}
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  ( while sleep 0.5; do
      for i in "${!pids[@]}"; do echo "$i $(rss "${pids[$i]}")"; done
    done ) >"$work/rss.txt" &
  local sampler=$!
  declare -A cpu0
  for i in "${!pids[@]}"; do cpu0[$i]=$(cpu_ticks "${pids[$i]}"); done
  wrk "${args[@]}" "$url" >"$work/wrk.txt"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  while read -r i v; do [ "${v:-0}" -gt "${PEAK[$i]}" ] && PEAK[$i]=$v; done <"$work/rss.txt"
  local tick cpu="" errors non2xx total
  tick=$(getconf CLK_TCK)
  for i in "${!pids[@]}"; do
    cpu+=$(awk -v n="${names[$i]}" -v a="${cpu0[$i]}" -v b="$(cpu_ticks "${pids[$i]}")" -v t="$tick" \
      'BEGIN {d=(b-a)/t; if (d >= 0.05) printf "%s %.2fs  ", n, d}')
  done
  RPS=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  P50=$(awk '/^ +50%/ {print $2}' "$work/wrk.txt")
  P99=$(awk '/^ +99%/ {print $2}' "$work/wrk.txt")
  total=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$work/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
  ERRORS=${errors:-0}; NON2XX=${non2xx:-0}
  echo "$label: $RPS req/s  p50 $P50  p99 $P99  requests $total  socket errors $ERRORS  non-2xx $NON2XX"
  echo "  CPU during the run: $cpu"
}

report_rss() {
  echo "RSS idle -> peak (MB):"
  for i in "${!pids[@]}"; do
    awk -v n="${names[$i]}" -v a="${IDLE[$i]}" -v b="${PEAK[$i]}" \
      'BEGIN {printf "  %-14s %6.1f -> %6.1f\n", n, a/1024, b/1024}'
  done
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
