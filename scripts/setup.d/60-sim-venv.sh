#!/usr/bin/env bash
# Pre-warms the sim's Seldon controller venv cache for tests/seldon_deploy.rs:
#   $MODELSHIP_TEST_TOOLS/sim-venvs/<sha256 of requirements.txt, 16 hex>/
# The tests point the controller at it with MODELSHIP_SIM_VENV_CACHE, so a
# test run never waits for pip. The venv for a lock is the one
# 40-seldon.sh already built from the same file (linked, not copied: venvs
# are not relocatable); without it one is built here. The controller's own
# default cache is ${XDG_CACHE_HOME:-~/.cache}/modelship/venvs.
# Idempotent: only missing or incomplete venvs are (re)made.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
CACHE="$TOOLS/sim-venvs"
mkdir -p "$CACHE"

PYTHON="$(command -v python3.11 || command -v python3 || true)"
if [ -z "$PYTHON" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv python3-pip
  PYTHON="$(command -v python3)"
fi

# Other locks (65-keras-venv.sh) are passed as arguments.
[ $# -gt 0 ] || set -- fixtures/requirements-lock/weather.txt
for lock in "$@"; do
  hash="$(sha256sum "$lock" | cut -c1-16)"
  target="$CACHE/$hash"
  if [ -f "$target/.complete" ]; then
    echo "60-sim-venv: $target is ready"
    continue
  fi
  rm -rf "$target"
  built="$TOOLS/seldon-core-$hash"
  if [ -f "$built/.complete" ]; then
    ln -s "$built" "$target"
    echo "60-sim-venv: $target -> $built"
  else
    echo "60-sim-venv: building $target from $lock"
    "$PYTHON" -m venv "$target"
    "$target/bin/python" -m pip install --disable-pip-version-check --quiet -r "$lock"
    cp "$lock" "$target/requirements.txt"
    touch "$target/.complete"
  fi
done
