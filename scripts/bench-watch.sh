#!/usr/bin/env bash
# `make bench-watch N=1000`: what one membership change costs a gateway when Consul lists N
# instances. Registers N fake `user-srv` instances (no process behind them: user-web sends no
# call, its channels connect lazily) in the Consul double, or in the agent at CONSUL_HTTP_ADDR,
# starts user-web watching them, then makes CHANGES changes EVERY seconds apart, each one
# instance leaving or joining again. Prints user-web's CPU per change (all its threads, from
# /proc/<pid>/task/*/schedstat, less the same span of idle), the time from each change to
# user-web's log line that the change is in rotation (p50/p90/max), the bytes Consul sent per
# change and user-web's RSS at the end. user-web logs at info, its default: each "instances
# changed" line carries the answers and bytes read since the line before it.
# FORMAT=compact has the double write JSON as an agent out of dev mode does (about half the
# bytes); by default it indents as `consul agent -dev` does.
# Env: N (1000), CHANGES (60), EVERY (0.5), FORMAT (dev), NO_BUILD, BIN, CONSUL_HTTP_ADDR.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
N=${N:-1000}
CHANGES=${CHANGES:-60}
EVERY=${EVERY:-0.5}
build_ours

if [ -n "${CONSUL_HTTP_ADDR:-}" ]; then
  consul=${CONSUL_HTTP_ADDR#http://}
  CONSUL_KIND="the agent at $consul"
else
  case ${FORMAT:-dev} in
    dev) ;;
    compact) CONSUL_DOUBLE_ARGS=--compact ;;
    *) echo "FORMAT must be dev or compact" >&2; exit 2 ;;
  esac
  start_consul consul
  consul=$CONSUL_ADDR
fi
service=user-srv-bench-$RANDOM

python3 - "$consul" "$service" "$N" <<'PY'
import http.client, json, sys
consul, service, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection(consul, timeout=10)
for i in range(n):
    body = json.dumps({"ID": "%s-%05d" % (service, i), "Name": service, "Tags": ["bench"],
                       "Address": "127.0.%d.%d" % (i // 250, i % 250 + 1), "Port": 20000 + i % 30000,
                       "Meta": {"version": "1"}})
    c.request("PUT", "/v1/agent/service/register", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit("register %d: %d" % (i, r.status))
PY
bytes=$(curl -sf "http://$consul/v1/health/service/$service?passing" | wc -c)

port=$(free_port)
start web env CONSUL_HTTP_ADDR="$consul" USER_WEB__AUTH__DEV_MODE=true LOG_FORMAT=json \
  RUST_LOG=info USER_WEB__UPSTREAM__SERVICE="$service" "$BIN/user-web" --port "$port"
wait_port "$port"
web=${pids[-1]}
wait_until "user-web to see $N instances" grep -q "\"instances\":$N[,}]" "$work/web.log"

python3 - "$consul" "$service" "$N" "$CHANGES" "$EVERY" "$web" "$work/web.log" "$bytes" "$CONSUL_KIND" <<'PY'
import calendar, http.client, json, os, sys, time
consul, service, n, changes, every, pid, log, size, kind = sys.argv[1:10]
n, changes, every, size = int(n), int(changes), float(every), int(size)

def cpu_ns():
    total = 0
    for t in os.listdir("/proc/%s/task" % pid):
        try:
            total += int(open("/proc/%s/task/%s/schedstat" % (pid, t)).read().split()[0])
        except OSError:
            pass
    return total

def rss_mb():
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def when(ts):  # RFC 3339 with a Z
    secs = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    frac = ts[19:].rstrip("Z")
    return secs + (float(frac) if frac else 0.0)

def log_lines(message="instances changed"):
    out = []
    for line in open(log):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        f = d.get("fields", {})
        if f.get("message") == message:
            out.append((when(d["timestamp"]), f))
    return out

c = http.client.HTTPConnection(consul, timeout=10)
def put(path, body=None):
    c.request("PUT", path, body, {"Content-Type": "application/json"} if body else {})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit("%s: %d" % (path, r.status))

span = changes * every + 1.0
idle0 = cpu_ns(); time.sleep(span); idle = cpu_ns() - idle0
before = log_lines()
events = []
cpu0 = cpu_ns()
start = time.time()
for k in range(changes):
    time.sleep(max(0.0, start + k * every - time.time()))
    i = (k // 2 * 7919) % n
    ident = "%s-%05d" % (service, i)
    t0 = time.time()
    if k % 2 == 0:
        put("/v1/agent/service/deregister/" + ident)
        events.append((t0, n - 1))
    else:
        put("/v1/agent/service/register", json.dumps({
            "ID": ident, "Name": service, "Tags": ["bench"],
            "Address": "127.0.%d.%d" % (i // 250, i % 250 + 1), "Port": 20000 + i % 30000,
            "Meta": {"version": "1"}}))
        events.append((t0, n))
time.sleep(max(0.0, start + changes * every + 1.0 - time.time()))
cpu = cpu_ns() - cpu0
changed = log_lines()[len(before):]
lines = [(t, int(f["instances"])) for t, f in changed]
# Each line counts the answers read since the line before it, and their bytes.
answers = sum(int(f.get("answers", 1)) for _, f in changed)
read = sum(int(f.get("bytes", 0)) for _, f in changed)
parsed = sum(int(f.get("parsed", 0)) for _, f in changed)
delays, j = [], 0
for t0, want in events:
    while j < len(lines) and not (lines[j][0] >= t0 - 0.002 and lines[j][1] == want):
        j += 1
    if j < len(lines):
        delays.append((lines[j][0] - t0) * 1000)
        j += 1
delays.sort()
pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")
per = max(0, cpu - idle) / changes / 1e6
print("N=%d: %d changes %.1f s apart; Consul's answer %.0f kB (%s)" % (n, changes, every, size / 1024, kind))
print("  user-web CPU per change %.3f ms (%.1f ms over the changes, %.1f ms idle over as long)" %
      (per, cpu / 1e6, idle / 1e6))
print("  in rotation after: p50 %.0f ms  p90 %.0f ms  max %.0f ms  (%d of %d changes seen)" %
      (pick(0.5), pick(0.9), delays[-1] if delays else float("nan"), len(delays), changes))
print("  Consul's answers per change %.2f, bytes read per change %.0f kB, parsed %.1f kB" %
      (answers / changes, read / changes / 1024, parsed / changes / 1024))
print("  user-web RSS %.1f MB" % rss_mb())
PY
if [ -z "${CONSUL_HTTP_ADDR:-}" ]; then :; else
  # A real agent outlives the run: take the fake instances out again.
  python3 - "$consul" "$service" "$N" <<'PY'
import http.client, sys
consul, service, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection(consul, timeout=10)
for i in range(n):
    c.request("PUT", "/v1/agent/service/deregister/%s-%05d" % (service, i)); c.getresponse().read()
PY
fi
