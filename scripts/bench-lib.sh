# Shared by the bench scripts and test-shared-agent.sh: process bookkeeping, the stacks, one wrk run.
# Sourced, not run.

BIN=${BIN:-target/release}
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
  [ -n "${pg_cleanup:-}" ] && $pg_cleanup
  if [ -n "${KEEP_WORK:-}" ]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_wrk() {
  command -v wrk >/dev/null 2>&1 && return
  echo "installing wrk from Debian packages"
  as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null
}
# oha (open-loop load with latency correction), built from crates.io into target/tools.
need_oha() {
  OHA=${OHA:-$PWD/target/tools/bin/oha}
  [ -x "$OHA" ] && return
  echo "installing oha from crates.io (a few minutes, once)"
  cargo install oha --version 1.16.0 --locked --root "$PWD/target/tools" -q
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A port below the kernel's ephemeral range: one inside it may be the local end of an
# outgoing connection (thousands linger in TIME-WAIT after a load run), and a bind to it fails.
free_port() {
  local p low
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  [ "$low" -gt 12000 ] || low=32768
  for _ in $(seq 1 50); do
    p=$(( 10000 + RANDOM % (low - 10000) ))
    port_open "$p" || { echo "$p"; return; }
  done
  echo "no free port found" >&2; exit 1
}
wait_port() { for _ in $(seq 1 200); do port_open "$1" && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
# Polls `command...` until it succeeds, for at most 20 s.
wait_until() { # what command...
  local what=$1; shift
  for _ in $(seq 1 400); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "timed out waiting for $what" >&2; exit 1
}
start() { # name command...
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
}
stop() { # name: stops the processes whose name starts with it
  local i
  for i in "${!pids[@]}"; do
    [[ "${names[$i]}" == "$1"* ]] || continue
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
    unset 'pids[i]' 'names[i]'
  done
  pids=("${pids[@]}"); names=("${names[@]}")
}

# A Consul for one stack: a real dev agent when `consul` is on PATH, else the double.
# Every port a dev agent opens is a free one (two agents run side by side: ours and the
# peer's), and DNS is off. Sets CONSUL_ADDR and CONSUL_KIND.
start_consul() { # name
  local port; port=$(free_port)
  if command -v consul >/dev/null 2>&1; then
    CHECKPOINT_DISABLE=1 start "$1" consul agent -dev -client 127.0.0.1 -bind 127.0.0.1 \
      -http-port "$port" -dns-port -1 -grpc-port "$(free_port)" \
      -serf-lan-port "$(free_port)" -serf-wan-port "$(free_port)" -server-port "$(free_port)"
    CONSUL_KIND="consul agent -dev"
  else
    # shellcheck disable=SC2086 # CONSUL_DOUBLE_ARGS is a list of flags
    start "$1" "$BIN/consul-double" --addr "127.0.0.1:$port" ${CONSUL_DOUBLE_ARGS:-}
    CONSUL_KIND="consul-double${CONSUL_DOUBLE_ARGS:+ $CONSUL_DOUBLE_ARGS}"
  fi
  wait_port "$port"
  CONSUL_ADDR="127.0.0.1:$port"
}

# Passing instances of a service in a Consul agent.
passing() { # consul-addr service
  curl -sf "http://$1/v1/health/service/$2?passing" | grep -oE '"ID": *"'"$2"'-' | wc -l
}
at_least_passing() { # n consul-addr service
  [ "$(passing "$2" "$3")" -ge "$1" ]
}

# The database of our stack: DB=sqlite (default, a file in the work dir) or DB=postgres (a
# throw-away local cluster, as the tests use). Sets DB_URL and DB_KIND.
setup_db() {
  case "${DB:-sqlite}" in
    sqlite)
      DB_URL="sqlite://$work/users.db?mode=rwc"
      DB_KIND="SQLite" ;;
    postgres)
      # with-postgres.sh starts a cluster, prints its URL and keeps it until told to stop.
      mkfifo "$work/pg-stop"
      scripts/with-postgres.sh bash -c 'echo "$TEST_DATABASE_URL" >"$0"; read -r _ <"$1"' \
        "$work/pg-url" "$work/pg-stop" 2>"$work/pg.log" &
      local pg_pid=$!
      wait_until "PostgreSQL" test -s "$work/pg-url"
      DB_URL=$(cat "$work/pg-url")
      pg_cleanup="eval echo >$work/pg-stop; wait $pg_pid"
      DB_KIND="PostgreSQL" ;;
    *) echo "DB must be sqlite or postgres" >&2; exit 1 ;;
  esac
}

# This project's stack: 2 x user-srv on one seeded database, user-web. LOG=info (the default
# of both binaries: one access line per request in each tier) or LOG=warn (RUST_LOG=warn).
# Sets OURS_URL, OURS_HEALTH_URL and OURS_TOKEN.
build_ours() {
  if [ -z "${NO_BUILD:-}" ]; then
    echo "building release binaries..."
    cargo build --release -q -p user-srv -p user-web -p consul-double
  fi
}
start_ours() { # tag (names the processes, so several stacks can be started and stopped)
  local tag=${1:-ours} log=()
  [ "${LOG:-info}" = info ] || log=(RUST_LOG="$LOG")
  # CONNECT=off: plain text between the tiers (Connect's mutual TLS is on by default).
  [ "${CONNECT:-on}" = on ] || log+=(USER_SRV__CONNECT__ENABLED=false USER_WEB__CONNECT__ENABLED=false)
  start_consul "$tag-consul"
  local consul=$CONSUL_ADDR
  [ -n "${DB_URL:-}" ] || setup_db
  env CONSUL_HTTP_ADDR="$consul" DATABASE_URL="$DB_URL" RUST_LOG=warn "$BIN/user-srv" seed \
    --users "$USERS" --admin-mobile 18800000000 --admin-password "$ADMIN_PASSWORD" >/dev/null
  for i in 1 2; do
    start "$tag-user-srv-$i" env CONSUL_HTTP_ADDR="$consul" DATABASE_URL="$DB_URL" "${log[@]}" \
      "$BIN/user-srv" --port 0
  done
  wait_until "2 passing user-srv" at_least_passing 2 "$consul" user-srv
  local port; port=$(free_port)
  start "$tag-user-web" env CONSUL_HTTP_ADDR="$consul" USER_WEB__AUTH__DEV_MODE=true "${log[@]}" \
    "$BIN/user-web" --port "$port"
  wait_port "$port"
  local base="http://127.0.0.1:$port"
  OURS_HEALTH_URL="$base/health"
  OURS_URL="$base/u/v1/user/list?pn=1&psize=10"
  OURS_TOKEN=$(curl -sf -X POST "$base/u/v1/user/pwd_login" \
    -H 'content-type: application/json' \
    -d "{\"mobile\":\"18800000000\",\"password\":\"$ADMIN_PASSWORD\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
  wait_until "user-web to reach user-srv" smoke
}
smoke() {
  curl -sf "$OURS_URL" -H "Authorization: Bearer $OURS_TOKEN" | grep -q "\"total\":$((USERS + 1))"
}

rss() { ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A IDLE PEAK
# Idle RSS of every process started so far (a peak is kept per process name).
snapshot_idle() { for i in "${!pids[@]}"; do IDLE[${names[$i]}]=$(rss "${pids[$i]}"); PEAK[${names[$i]}]=${IDLE[${names[$i]}]}; done; }

# One wrk run; prints its figures and the CPU each process used. Sets RPS, P50, P99.
run_wrk() { # label url [header]
  local label=$1 url=$2 header=${3:-}
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
  [ -n "$header" ] && args+=(-H "$header")
  ( while sleep 0.5; do
      for i in "${!pids[@]}"; do echo "${names[$i]} $(rss "${pids[$i]}")"; done
    done ) >"$work/rss.txt" &
  local sampler=$!
  declare -A cpu0
  for i in "${!pids[@]}"; do cpu0[$i]=$(cpu_ticks "${pids[$i]}"); done
  wrk "${args[@]}" "$url" >"$work/wrk.txt"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  while read -r n v; do [ "${v:-0}" -gt "${PEAK[$n]:-0}" ] && PEAK[$n]=$v; done <"$work/rss.txt"
  local tick cpu="" errors non2xx total
  tick=$(getconf CLK_TCK)
  total=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  for i in "${!pids[@]}"; do
    cpu+=$(awk -v n="${names[$i]}" -v a="${cpu0[$i]}" -v b="$(cpu_ticks "${pids[$i]}")" -v t="$tick" \
      -v r="$total" 'BEGIN {d=(b-a)/t; if (d >= 0.05) printf "%s %.2fs (%.0f us/req)  ", n, d, d*1e6/r}')
  done
  RPS=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  P50=$(awk '/^ +50%/ {print $2}' "$work/wrk.txt")
  P99=$(awk '/^ +99%/ {print $2}' "$work/wrk.txt")
  errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$work/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
  ERRORS=${errors:-0}; NON2XX=${non2xx:-0}
  echo "$label: $RPS req/s  p50 $P50  p99 $P99  requests $total  socket errors $ERRORS  non-2xx $NON2XX"
  echo "  CPU during the run: $cpu"
}

# Peak RSS under load (and idle before it) of the processes whose names start with `prefix`.
report_rss() { # [prefix]
  echo "RSS idle -> peak under load (MB):"
  local n
  for n in $(printf '%s\n' "${!IDLE[@]}" | sort); do
    [[ "$n" == "${1:-}"* ]] || continue
    awk -v n="$n" -v a="${IDLE[$n]}" -v b="${PEAK[$n]}" \
      'BEGIN {printf "  %-22s %6.1f -> %6.1f\n", n, a/1024, b/1024}'
  done
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000} print v}'; }
