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
echo "==> cargo nextest run"
exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
