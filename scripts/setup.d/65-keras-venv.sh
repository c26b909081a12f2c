#!/usr/bin/env bash
# The TensorFlow/Keras model runtime for tests/keras.rs, pre-warmed in the
# sim's venv cache the tests use (MODELSHIP_SIM_VENV_CACHE):
#   $MODELSHIP_TEST_TOOLS/sim-venvs/<sha256 of the lock, 16 hex>/
# fixtures/requirements-lock/keras.txt is exactly the requirements.txt the
# render stage writes for fixtures/weather-keras-model/ (its own MyModel.py
# and requirements.txt) and for a bare `.keras` file (the generated wrapper's
# default pins); a render unit test holds both to it, so one venv serves both.
# It is what the sim's Seldon controller would build itself (same python,
# same pip command, same `.complete` marker), just ahead of the test run:
# ~1.5 GB, about a minute of pip on a fast link. Idempotent: rebuilt only
# when missing or incomplete, so CI caches it with the tools directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
CACHE="$TOOLS/sim-venvs"
mkdir -p "$CACHE"

# seldon-core 1.17.1 and tensorflow-cpu 2.19.1 both have wheels for 3.11 (the
# UBI 9 python-311 base image's); the sim prefers python3.11 the same way.
PYTHON="$(command -v python3.11 || true)"
if [ -z "$PYTHON" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # Debian 12's python3 is 3.11.
  apt-get install -y --no-install-recommends python3 python3-venv python3-pip
  PYTHON="$(command -v python3.11)"
fi

lock=fixtures/requirements-lock/keras.txt
hash="$(sha256sum "$lock" | cut -c1-16)"
venv="$CACHE/$hash"
if [ -f "$venv/.complete" ]; then
  echo "65-keras-venv: $venv is ready"
  exit 0
fi
echo "65-keras-venv: building $venv from $lock"
started=$SECONDS
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$lock"
# Fail here, not in a test, when TensorFlow and seldon-core do not import together.
"$venv/bin/python" -c 'import keras, seldon_core, tensorflow as tf; print("65-keras-venv: tensorflow", tf.__version__, "keras", keras.__version__)'
cp "$lock" "$venv/requirements.txt"
touch "$venv/.complete"
echo "65-keras-venv: built in $((SECONDS - started))s, $(du -sh "$venv" | cut -f1)"
