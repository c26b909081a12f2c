#!/usr/bin/env bash
# The TensorFlow/Keras model runtime for tests/keras.rs, pre-warmed in the
# sim's venv cache the tests use (MODELSHIP_SIM_VENV_CACHE) by
# 60-sim-venv.sh's recipe:
#   $MODELSHIP_TEST_TOOLS/sim-venvs/<sha256 of the lock, 16 hex>/
# fixtures/requirements-lock/keras.txt is exactly the requirements.txt the
# render stage writes for fixtures/weather-keras-model/ (its own MyModel.py
# and requirements.txt) and for a bare `.keras` file (the generated wrapper's
# default pins); a render unit test holds both to it, so one venv serves both.
# 40-seldon.sh builds it first (it makes a venv per lock) and 60-sim-venv.sh
# links it here. ~1.5 GB; about 80 s of pip with a warm wheel cache, minutes
# without.
# Idempotent: rebuilt only when missing or incomplete, so CI keeps it with
# the tools directory between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
lock=fixtures/requirements-lock/keras.txt
started=$SECONDS
bash scripts/setup.d/60-sim-venv.sh "$lock"
venv="$TOOLS/sim-venvs/$(sha256sum "$lock" | cut -c1-16)"
# Fail here, not in a test, when TensorFlow and seldon-core do not import together.
TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -c 'import keras, seldon_core, tensorflow as tf; print("65-keras-venv: tensorflow", tf.__version__, "keras", keras.__version__)'
echo "65-keras-venv: $venv ready after $((SECONDS - started))s, $(du -shL "$venv" | cut -f1)"
