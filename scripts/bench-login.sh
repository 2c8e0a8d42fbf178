#!/usr/bin/env bash
# `make bench-login`: does a login's timing tell whether a mobile is registered? The release
# stack (as `make bench` starts it), then bench/login_timing.py: N logins with an unknown
# mobile and N with a registered mobile and a wrong password, interleaved, side by side.
# Env: N (300), DB (sqlite | postgres), NO_BUILD (skip the build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

# The measurement is the answer's timing, not the limits: let every attempt through.
for limit in LOGIN__PER_IP LOGIN__PER_MOBILE; do
  export "USER_WEB__THROTTLE__${limit}__ATTEMPTS=0"
done
USERS=${USERS:-100}
build_ours
setup_db
start_ours ours
echo "stack: $CONSUL_KIND, 2 x user-srv ($DB_KIND, $USERS users), user-web"
python3 bench/login_timing.py "${OURS_URL%%/u/v1/*}" 18800000000 "${N:-300}"
