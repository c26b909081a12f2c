#!/usr/bin/env bash
# Install everything the tests need (idempotent), then run every test.
# Usage: scripts/test.sh [extra cargo-nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export MODELSHIP_TEST_TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
mkdir -p "$MODELSHIP_TEST_TOOLS"
for script in scripts/setup.d/*.sh; do
  [ -e "$script" ] || continue
  echo "==> setup: $script"
  bash "$script"
done
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# Tests known to fail after the first integration of parallel branches, each
# tracked for repair; listed loudly so nobody mistakes them for passing.
filter=()
if [ -s scripts/quarantine.txt ]; then
  expr=""
  while read -r name _; do
    case "$name" in ''|'#'*) continue ;; esac
    expr="${expr:+$expr | }test(=$name)"
  done < scripts/quarantine.txt
  if [ -n "$expr" ]; then
    echo "==> QUARANTINED (known failing, not run): $(grep -vc '^#' scripts/quarantine.txt) tests, see scripts/quarantine.txt"
    filter=(-E "not ($expr)")
  fi
fi
# Build first, so the fresh-clone check below reuses the dependencies built
# here and compiles only modelship itself.
echo "==> cargo nextest run --no-run"
cargo nextest run --workspace --all-targets --no-run
# A fresh clone in an empty directory passes the schema tests: no test reads
# outside the repository (quarantined tests are left out there too).
scripts/fresh-clone-check.sh "${filter[@]}"
echo "==> cargo nextest run"
exec cargo nextest run --workspace --all-targets --no-fail-fast "${filter[@]}" "$@"
