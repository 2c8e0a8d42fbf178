#!/usr/bin/env bash
# Runs a command with TEST_DATABASE_URL pointing at a PostgreSQL server.
#
# - TEST_DATABASE_URL already set: used as is.
# - Otherwise, when PostgreSQL's server binaries are installed, a throw-away cluster is
#   created in a temp dir on a free loopback port (trust auth, fsync off) and removed after.
# - Neither: the command runs without it and the PostgreSQL tests report themselves skipped
#   (under CI=true that is an error: CI must run them).
set -euo pipefail

if [ -n "${TEST_DATABASE_URL:-}" ]; then
  exec "$@"
fi

pg_bin=""
if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
  pg_bin=$(dirname "$(command -v pg_ctl)")
else
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && pg_bin=$d
  done
fi
if [ -z "$pg_bin" ]; then
  if [ -n "${CI:-}" ]; then
    echo "with-postgres: no PostgreSQL server binaries and CI is set" >&2
    exit 1
  fi
  echo "with-postgres: PostgreSQL not installed; PostgreSQL tests will be skipped" \
       "(apt-get install postgresql, or set TEST_DATABASE_URL)" >&2
  exec "$@"
fi

dir=$(mktemp -d /tmp/pg-test.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root: the cluster belongs to the postgres user.
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

"${as_pg[@]}" "$pg_bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }

started=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  port=$(( 20000 + RANDOM % 30000 ))
  if "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
       -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
       start >/dev/null 2>&1; then
    started=$port
    break
  fi
done
if [ -z "$started" ]; then
  echo "with-postgres: could not start PostgreSQL" >&2
  cat "$dir/server.log" >&2 || true
  exit 1
fi

export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$started/postgres"
# For scripts that take the server away and bring it back (make chaos): the same pg_ctl,
# data directory and options. `$WITH_PG_CTL stop -m fast` / `$WITH_PG_CTL start -w`.
export WITH_PG_CTL="${as_pg[*]} $pg_bin/pg_ctl -D $dir/data -l $dir/server.log -o '-p $started -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300'"
echo "with-postgres: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$started" >&2
"$@"
