#!/usr/bin/env bash
# `make fuzz-api`: checks user-web against its own OpenAPI document with schemathesis (from
# PyPI, into a venv under target/). Starts the Consul double, one user-srv (seeded) and
# user-web on free ports, then runs every check as an admin and as a normal user. Any
# finding fails. FUZZ_EXAMPLES bounds the examples per operation (make test uses a few).
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${FUZZ_EXAMPLES:-100}
SCHEMATHESIS=${SCHEMATHESIS_VERSION:-4.32.5}
TARGET=${CARGO_TARGET_DIR:-target}
VENV=$TARGET/fuzz-venv
ADMIN_MOBILE=18800000000
ADMIN_PASSWORD=admin-password
USER_MOBILE=13900000001
USER_PASSWORD=user-password

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS"; then
  echo "fuzz-api: installing schemathesis $SCHEMATHESIS into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS"
fi
cargo build -q --bin consul-double --bin user-srv --bin user-web
BIN=$(cd "$TARGET/debug" && pwd)

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

wait_ready() {
  for _ in $(seq 1 300); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.1; done
  echo "fuzz-api: $2 did not start; its log:" >&2
  cat "$dir/$2.log" >&2
  exit 1
}

"$BIN/consul-double" --addr 127.0.0.1:0 --ready-file "$dir/consul.ready" >"$dir/consul.log" 2>&1 &
pids+=($!)
export CONSUL_HTTP_ADDR
CONSUL_HTTP_ADDR=$(wait_ready "$dir/consul.ready" consul)
export DATABASE_URL="sqlite://$dir/users.db?mode=rwc"
"$BIN/user-srv" seed --users 5 --admin-mobile "$ADMIN_MOBILE" --admin-password "$ADMIN_PASSWORD" \
  >"$dir/seed.log" 2>&1
USER_SRV__REGISTRATION__CHECK_INTERVAL=200ms \
  "$BIN/user-srv" --port 0 --ready-file "$dir/srv.ready" >"$dir/srv.log" 2>&1 &
pids+=($!)
wait_ready "$dir/srv.ready" srv >/dev/null
# Limits high enough that the fuzzer's many logins are answered, not throttled: the 429
# itself is documented and tested in user-web's own tests.
USER_WEB__AUTH__JWT_SECRET=fuzz-secret-of-at-least-thirty-two-bytes \
USER_WEB__THROTTLE__LOGIN__PER_IP__ATTEMPTS=100000 \
USER_WEB__THROTTLE__LOGIN__PER_MOBILE__ATTEMPTS=100000 \
USER_WEB__THROTTLE__REGISTER__PER_IP__ATTEMPTS=100000 \
USER_WEB__THROTTLE__REGISTER__PER_MOBILE__ATTEMPTS=100000 \
  "$BIN/user-web" --port 0 --ready-file "$dir/web.ready" >"$dir/web.log" 2>&1 &
pids+=($!)
web="http://$(wait_ready "$dir/web.ready" web)"
for _ in $(seq 1 100); do
  curl -sf "$web/metrics" | grep -q '^upstream_endpoints{service="user-srv"} 1' && break
  sleep 0.1
done

token() {
  curl -sf -X POST "$web$1" -H 'content-type: application/json' \
    -d "{\"mobile\":\"$2\",\"password\":\"$3\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/'
}
admin=$(token /u/v1/user/pwd_login "$ADMIN_MOBILE" "$ADMIN_PASSWORD")
user=$(token /u/v1/user/register "$USER_MOBILE" "$USER_PASSWORD")
[ -n "$admin" ] && [ -n "$user" ] || { echo "fuzz-api: could not log in" >&2; exit 1; }

status=0
for who in admin user; do
  echo "fuzz-api: schemathesis --checks all as $who ($EXAMPLES examples per operation)"
  "$VENV/bin/st" run "$web/openapi.json" --checks all --max-examples "$EXAMPLES" \
    --header "Authorization: Bearer ${!who}" --seed 1 --no-color \
    --request-timeout 10 || status=1
done
if [ "$status" -ne 0 ]; then
  echo "fuzz-api: FAILED (user-web log: $dir/web.log is removed on exit; rerun to inspect)" >&2
  exit 1
fi
echo "fuzz-api: passed"
