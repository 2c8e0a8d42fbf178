#!/usr/bin/env bash
# `make new-service NAME=goods [WEB=1]`: a new service from templates/service/, wired in
# everywhere a service is: the workspace, proto/, migrations/, `make dev` (scripts/dev.d/),
# deploy/ (compose, Kubernetes, its targets in deploy/Dockerfile) and the deployment check. It checks every path
# first and refuses, touching nothing, when the name is bad or any of them exists.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=${1:-${NAME:-}}
WEB=${WEB:-0}
T=templates/service

die() { echo "new-service: $*" >&2; exit 2; }

[ -n "$NAME" ] || die "give a name: make new-service NAME=goods [WEB=1]"
[[ "$NAME" =~ ^[a-z][a-z0-9-]*$ ]] || die "bad name '$NAME': use [a-z][a-z0-9-]* (e.g. goods, order, user-fav)"
[[ "$NAME" != *- && "$NAME" != *--* ]] || die "bad name '$NAME': no trailing or doubled '-'"
[[ "$NAME" != *-srv && "$NAME" != *-web ]] || die "bad name '$NAME': give the service's name; -srv and -web are added"
SNAKE=${NAME//-/_}
case " as async await break const continue crate dyn else enum extern false fn for gen if impl in let loop match mod move mut pub ref return self static struct super trait true try type unsafe use where while abstract become box do final macro override priv typeof unsized virtual yield proto kit " in
  *" $SNAKE "*) die "bad name '$NAME': '$SNAKE' is a Rust keyword or a crate of this workspace" ;;
esac
UPPER=$(echo "$SNAKE" | tr 'a-z' 'A-Z')
CAMEL=$(echo "$NAME" | awk -F- '{ for (i = 1; i <= NF; i++) printf "%s%s", toupper(substr($i, 1, 1)), substr($i, 2) }')
PREFIX=${NAME:0:1}
# The next free gateway port after the ones already taken (user-web is 8021).
WEB_PORT=$( (echo 8021; cat scripts/dev.d/*.sh 2>/dev/null | grep -o 'WEB_PORT:-[0-9]*' | grep -o '[0-9]*$' || true) | sort -n | tail -1)
WEB_PORT=$((WEB_PORT + 1))

targets=("$NAME-srv" "proto/proto/$SNAKE" "migrations/$NAME" "scripts/dev.d/$NAME.sh"
  "deploy/k8s/$NAME-srv.yaml" "deploy/k8s/$NAME-srv-migrate.yaml"
  "deploy/postgres-init/$SNAKE.sql")
if [ "$WEB" = 1 ]; then
  targets+=("$NAME-web" "deploy/k8s/$NAME-web.yaml")
fi
for t in "${targets[@]}"; do
  [ ! -e "$t" ] || die "'$t' exists: $NAME is already a service here (nothing was changed)"
done
for marker in "Cargo.toml:# new-service: members" "proto/src/lib.rs:// new-service: packages" \
  "deploy/Cargo.toml:# new-service: dev-dependencies" "deploy/tests/manifests.rs:// new-service: binaries" \
  "deploy/docker-compose.yml:# new-service: anchors" "deploy/docker-compose.yml:# new-service: services" \
  "deploy/Dockerfile:# new-service: targets"; do
  grep -qF "${marker#*:}" "${marker%%:*}" || die "${marker%%:*} lacks the line '${marker#*:}' (nothing was changed)"
done
if grep -q "^ *\"$NAME-srv\"," Cargo.toml; then die "$NAME-srv is already a workspace member"; fi

render() { # render TEMPLATE DEST
  mkdir -p "$(dirname "$2")"
  sed -e "s/@name@/$NAME/g; s/@snake@/$SNAKE/g; s/@UPPER@/$UPPER/g; s/@Camel@/$CAMEL/g" \
      -e "s/@prefix@/$PREFIX/g; s/@web_port@/$WEB_PORT/g" "$1" >"$2"
}
# insert FILE MARKER TEXT-FILE: the text goes just above the marker line.
insert() {
  local tmp
  tmp=$(mktemp)
  awk -v marker="$2" -v text="$3" '
    index($0, marker) { while ((getline line < text) > 0) print line; close(text) }
    { print }' "$1" >"$tmp"
  cat "$tmp" >"$1"
  rm -f "$tmp"
}
line() { local f; f=$(mktemp); printf '%s\n' "$1" >"$f"; echo "$f"; }
rendered() { local f; f=$(mktemp); render "$1" "$f"; echo "$f"; }

created=()
for f in $(cd "$T/srv" && find . -type f | sort); do
  render "$T/srv/$f" "$NAME-srv/${f#./}"; created+=("$NAME-srv/${f#./}")
done
render "$T/proto.proto" "proto/proto/$SNAKE/v1/$SNAKE.proto"; created+=("proto/proto/$SNAKE/v1/$SNAKE.proto")
for d in sqlite postgres; do
  render "$T/migrations/$d/0001_items.sql" "migrations/$NAME/$d/0001_items.sql"
  created+=("migrations/$NAME/$d/0001_items.sql")
done
render "$T/dev.sh" "scripts/dev.d/$NAME.sh"; created+=("scripts/dev.d/$NAME.sh")
render "$T/deploy/k8s/srv.yaml" "deploy/k8s/$NAME-srv.yaml"; created+=("deploy/k8s/$NAME-srv.yaml")
render "$T/deploy/k8s/migrate-job.yaml" "deploy/k8s/$NAME-srv-migrate.yaml"; created+=("deploy/k8s/$NAME-srv-migrate.yaml")
render "$T/deploy/postgres-init.sql" "deploy/postgres-init/$SNAKE.sql"; created+=("deploy/postgres-init/$SNAKE.sql")

insert Cargo.toml "# new-service: members" "$(line "    \"$NAME-srv\",")"
insert proto/src/lib.rs "// new-service: packages" "$(line "package!($SNAKE, \"$SNAKE.v1\", \"${SNAKE}_v1_descriptor\");")"
insert deploy/Cargo.toml "# new-service: dev-dependencies" "$(line "$NAME-srv = { path = \"../$NAME-srv\" }")"
insert deploy/tests/manifests.rs "// new-service: binaries" "$(line "    (\"$NAME-srv\", ${SNAKE}_srv::Settings::env_names),")"
insert deploy/docker-compose.yml "# new-service: anchors" "$(rendered "$T/deploy/compose-anchor.yml")"
insert deploy/docker-compose.yml "# new-service: services" "$(rendered "$T/deploy/compose-srv.yml")"
insert deploy/Dockerfile "# new-service: targets" "$(rendered "$T/deploy/srv.dockerfile")"
cat "$(rendered "$T/deploy/configmap.yaml")" >>deploy/k8s/configmap.yaml
cat "$(rendered "$T/deploy/secret.yaml")" >>deploy/k8s/secret.example.yaml
changed=(Cargo.toml proto/src/lib.rs deploy/Cargo.toml deploy/tests/manifests.rs
  deploy/docker-compose.yml deploy/Dockerfile deploy/k8s/configmap.yaml deploy/k8s/secret.example.yaml)

if [ "$WEB" = 1 ]; then
  for f in $(cd "$T/web" && find . -type f | sort); do
    render "$T/web/$f" "$NAME-web/${f#./}"; created+=("$NAME-web/${f#./}")
  done
  insert deploy/Dockerfile "# new-service: targets" "$(rendered "$T/deploy/web.dockerfile")"
  render "$T/deploy/k8s/web.yaml" "deploy/k8s/$NAME-web.yaml"; created+=("deploy/k8s/$NAME-web.yaml")
  insert Cargo.toml "# new-service: members" "$(line "    \"$NAME-web\",")"
  insert deploy/Cargo.toml "# new-service: dev-dependencies" "$(line "$NAME-web = { path = \"../$NAME-web\" }")"
  insert deploy/tests/manifests.rs "// new-service: binaries" "$(line "    (\"$NAME-web\", ${SNAKE}_web::Settings::env_names),")"
  insert deploy/docker-compose.yml "# new-service: services" "$(rendered "$T/deploy/compose-web.yml")"
  cat "$(rendered "$T/deploy/configmap-web.yaml")" >>deploy/k8s/configmap.yaml
  cat "$(rendered "$T/dev-web.sh")" >>"scripts/dev.d/$NAME.sh"
fi

# Generated code follows the workspace's formatting, so `make test`'s format check passes.
if command -v cargo >/dev/null 2>&1; then
  pkgs=(-p "$NAME-srv" -p proto -p deploy-check)
  [ "$WEB" = 1 ] && pkgs+=(-p "$NAME-web")
  cargo fmt "${pkgs[@]}"
fi

echo "created:"
printf '  %s\n' "${created[@]}"
echo "changed:"
printf '  %s\n' "${changed[@]}"
cat <<NEXT

$NAME-srv registers in Consul as $NAME-srv-<uuid>$( [ "$WEB" = 1 ] && echo "; $NAME-web (port $WEB_PORT) finds it round-robin: GET /$PREFIX/v1/$NAME/list").
Next: make dev (it starts $NAME with the rest), make test (its tests on SQLite and PostgreSQL).
NEXT
