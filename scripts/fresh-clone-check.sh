#!/usr/bin/env bash
# The tests need nothing beside the repository: clone HEAD into an empty
# temporary directory and run the schema tests and the outside-path guard
# there. scripts/test.sh runs this before the whole suite.
# Usage: scripts/fresh-clone-check.sh [extra cargo-nextest args]
#
# The clone builds into its own target directory, seeded with hard links to
# the dependencies already built in this checkout's target directory, so only
# the modelship crate is compiled. It must not share this checkout's target
# directory: the clone's artifacts have the same names and newer times than
# this checkout's, so cargo here would then run the clone's binaries (built
# from HEAD, without uncommitted edits, with the deleted clone as
# CARGO_MANIFEST_DIR) as up to date.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if ! head="$(git -C "$repo" rev-parse --verify -q HEAD)"; then
  echo "==> fresh-clone check: $repo is not a git checkout with a commit; skipped"
  exit 0
fi
export MODELSHIP_TEST_TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
here_target="${CARGO_TARGET_DIR:-$repo/target}"
unset CARGO_TARGET_DIR
work="$(mktemp -d -t modelship-fresh-clone.XXXXXX)"
trap 'rm -rf "$work"' EXIT

echo "==> fresh-clone check: HEAD ${head:0:12} cloned into $work/x"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "    (uncommitted changes here are not part of the clone)"
fi
# The common git dir holds HEAD's objects also when $repo is a worktree.
git clone -q --no-checkout "$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir)" "$work/x"
git -C "$work/x" -c advice.detachedHead=false checkout -q "$head"

# Hard links to the dependencies' artifacts, none to modelship's own (those
# the clone compiles afresh, so nothing here is written through a link).
if [ -d "$here_target/debug/deps" ]; then
  mkdir -p "$work/x/target/debug"
  for dir in deps build .fingerprint; do
    [ -d "$here_target/debug/$dir" ] && cp -al "$here_target/debug/$dir" "$work/x/target/debug/$dir"
  done
  (cd "$work/x" && cargo metadata --no-deps --format-version 1 --offline) | python3 -c '
import json, os, re, shutil, sys
meta = json.load(sys.stdin)
debug = os.path.join(sys.argv[1], "debug")
packages = {p["name"] for p in meta["packages"]}
crates = {t["name"].replace("-", "_") for p in meta["packages"] for t in p["targets"]}
own = re.compile(r"^(lib)?(%s)-[0-9a-f]{16}(\..*)?$" % "|".join(map(re.escape, crates)))
ownpkg = re.compile(r"^(%s)-[0-9a-f]{16}$" % "|".join(map(re.escape, packages)))
for sub, pattern in (("deps", own), ("build", ownpkg), (".fingerprint", ownpkg)):
    top = os.path.join(debug, sub)
    for name in os.listdir(top) if os.path.isdir(top) else []:
        if pattern.match(name):
            path = os.path.join(top, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
' "$work/x/target"
fi

cd "$work/x"
echo "==> fresh-clone check: cargo nextest run (schema tests and the outside-path guard)"
cargo nextest run --no-fail-fast \
  --test manifests_schema --test tekton_schemas --test openshift_build --test no_outside_paths "$@"
