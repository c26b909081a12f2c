#!/usr/bin/env bash
# The model registries tests/model_sources.rs talks to, each in its own venv
# (pinned, idempotent: rebuilt only when missing or at another version):
#   $MODELSHIP_TEST_TOOLS/mlflow/  mlflow server (tracking + model registry,
#                                  basic-auth app) with boto3 for its
#                                  artifacts in moto's S3; template.db, an
#                                  empty tracking database, migrated
#   $MODELSHIP_TEST_TOOLS/dvc/     dvc with dvc-s3, pushing to moto
# moto itself comes from 20-s3.sh.
set -euo pipefail
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
mkdir -p "$TOOLS"

MLFLOW_VERSION="3.18.0"
DVC_VERSION="3.67.1"
DVC_S3_VERSION="3.3.0"
BOTO3_VERSION="1.44.18"

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
  || ! command -v git >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv git
fi

MLFLOW="$TOOLS/mlflow"
if ! [ -f "$MLFLOW/.complete-$MLFLOW_VERSION" ]; then
  echo "==> mlflow $MLFLOW_VERSION venv at $MLFLOW"
  rm -rf "$MLFLOW"
  python3 -m venv "$MLFLOW"
  "$MLFLOW/bin/pip" install --quiet --disable-pip-version-check \
    "mlflow[auth]==$MLFLOW_VERSION" "boto3==$BOTO3_VERSION"
  "$MLFLOW/bin/python" -c "import mlflow, boto3; assert mlflow.__version__ == '$MLFLOW_VERSION', mlflow.__version__"
  touch "$MLFLOW/.complete-$MLFLOW_VERSION"
fi
# An empty tracking database with every migration applied: a test's server
# starts from a copy instead of running MLflow's ~50 Alembic migrations.
if ! [ -f "$MLFLOW/template.db" ]; then
  echo "==> mlflow template database"
  rm -f "$MLFLOW/template.db.tmp"
  "$MLFLOW/bin/mlflow" db upgrade "sqlite:///$MLFLOW/template.db.tmp" >/dev/null
  mv "$MLFLOW/template.db.tmp" "$MLFLOW/template.db"
fi

DVC="$TOOLS/dvc"
if ! [ -f "$DVC/.complete-$DVC_VERSION-$DVC_S3_VERSION" ]; then
  echo "==> dvc $DVC_VERSION + dvc-s3 $DVC_S3_VERSION venv at $DVC"
  rm -rf "$DVC"
  python3 -m venv "$DVC"
  "$DVC/bin/pip" install --quiet --disable-pip-version-check "dvc==$DVC_VERSION" "dvc-s3==$DVC_S3_VERSION"
  "$DVC/bin/dvc" version >/dev/null
  touch "$DVC/.complete-$DVC_VERSION-$DVC_S3_VERSION"
fi
echo "model registry test tools ready in $TOOLS (mlflow $MLFLOW_VERSION, dvc $DVC_VERSION)"
