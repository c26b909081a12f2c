#!/usr/bin/env bash
# Model servers for tests/prediction_check.rs (idempotent):
#   check-seldon/   venv with seldon-core 1.17.1 (Seldon protocol v1)
#   check-mlserver/ venv with MLServer + mlserver-sklearn (Open Inference
#                   Protocol v2) and model/model.joblib, trained by
#                   fixtures/check-models/train_sklearn.py
# Each venv is rebuilt only when its pinned requirements change (stamp file).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
mkdir -p "$TOOLS"

PYTHON="${MODELSHIP_PYTHON:-}"
if [ -z "$PYTHON" ]; then
  # seldon-core 1.17.1 pins numpy<2 and grpcio<2: Python 3.9..3.11 have wheels.
  for candidate in python3.11 python3.10 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
if [ -z "$PYTHON" ] || ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-venv
  PYTHON=python3
fi

# make_venv DIR REQUIREMENTS...: (re)create DIR when its stamp differs.
make_venv() {
  local dir="$1"; shift
  local want
  want="$("$PYTHON" --version 2>&1) $*"
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$want" ]; then
    echo "$dir: up to date"
    return
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  printf '%s' "$want" > "$dir/.stamp"
  echo "$dir: installed $*"
}

make_venv "$TOOLS/check-seldon" "seldon-core==1.17.1" "setuptools<70"
make_venv "$TOOLS/check-mlserver" "mlserver==1.7.1" "mlserver-sklearn==1.7.1"

# Train the tiny scikit-learn model once per version of the training script.
TRAIN=fixtures/check-models/train_sklearn.py
MODEL_DIR="$TOOLS/check-mlserver/model"
want="$(sha256sum "$TRAIN" | cut -d' ' -f1)"
if [ -f "$MODEL_DIR/.stamp" ] && [ "$(cat "$MODEL_DIR/.stamp")" = "$want" ]; then
  echo "$MODEL_DIR: up to date"
else
  rm -rf "$MODEL_DIR"
  mkdir -p "$MODEL_DIR"
  "$TOOLS/check-mlserver/bin/python" "$TRAIN" "$MODEL_DIR/model.joblib"
  printf '%s' "$want" > "$MODEL_DIR/.stamp"
  echo "$MODEL_DIR: trained"
fi
