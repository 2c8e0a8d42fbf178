#!/usr/bin/env bash
# The generator's test (part of `make test`): in a throw-away copy of this repository,
# `make new-service` refuses a bad name and an existing one without touching anything, and
# `NAME=goods WEB=1` gives crates that pass the format check, clippy and their own tests
# (SQLite, and PostgreSQL when TEST_DATABASE_URL is set), beside the deployment check. The
# copy shares this repository's target directory, so only the new crates compile.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$copy"
cd "$copy"

fail() { echo "test-new-service: FAILED: $*" >&2; exit 1; }
tree_sum() { find . -path ./target -prune -o -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum; }

# A bad name: a clear error, exit 2, nothing changed.
before=$(tree_sum)
for bad in Goods 9lives goods_srv goods- "" user-srv; do
  set +e
  out=$(make -s new-service NAME="$bad" 2>&1)
  rc=$?
  set -e
  [ $rc -ne 0 ] || fail "NAME='$bad' was accepted"
  grep -q "new-service:" <<<"$out" || fail "NAME='$bad' gave no clear error: $out"
done
[ "$(tree_sum)" = "$before" ] || fail "a refused name changed files"
echo "test-new-service: bad names refused, nothing touched"

make -s new-service NAME=goods WEB=1 >/dev/null
for f in goods-srv/src/app.rs goods-web/src/routes.rs proto/proto/goods/v1/goods.proto \
  migrations/goods/sqlite/0001_items.sql scripts/dev.d/goods.sh deploy/k8s/goods-srv.yaml; do
  [ -f "$f" ] || fail "$f was not created"
done
grep -q '"goods-srv",' Cargo.toml || fail "goods-srv is not a workspace member"
grep -q 'goods-web:' deploy/docker-compose.yml || fail "goods-web is not in the compose file"

# The same name again: refused, nothing changed.
after=$(tree_sum)
set +e
out=$(make -s new-service NAME=goods WEB=1 2>&1)
rc=$?
set -e
[ $rc -ne 0 ] && grep -q "exists" <<<"$out" || fail "a second 'goods' was not refused: $out"
[ "$(tree_sum)" = "$after" ] || fail "the refused re-run changed files"
echo "test-new-service: goods generated; a second run refused, nothing touched"

cargo fmt --all -- --check
cargo clippy -q -p goods-srv -p goods-web --all-targets -- -D warnings
cargo test -q -p goods-srv -p goods-web -p deploy-check
echo "test-new-service: passed"
