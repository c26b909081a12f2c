#!/usr/bin/env bash
# S3 servers for tests/fetch_s3.rs and benches/fetch.sh (idempotent):
#   - moto_server (PyPI moto[server]) in a venv, with boto3 for the benchmark
#   - the s3s-fs binary (crates.io), installed with --root into the tools dir
#   - GNU time (/usr/bin/time -v) for the benchmark's peak RSS
set -euo pipefail
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
mkdir -p "$TOOLS"

MOTO_VERSION="5.2.5"
S3S_FS_VERSION="0.14.1"

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1 \
  || [ ! -x /usr/bin/time ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv time
fi

MOTO="$TOOLS/moto"
if ! "$MOTO/bin/python" -c "import moto, boto3, flask; assert moto.__version__ == '$MOTO_VERSION'" >/dev/null 2>&1; then
  echo "==> moto[server] $MOTO_VERSION venv at $MOTO"
  rm -rf "$MOTO"
  python3 -m venv "$MOTO"
  "$MOTO/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" boto3
fi

S3S="$TOOLS/s3s-fs"
if ! [ -x "$S3S/bin/s3s-fs" ] || ! grep -q "s3s-fs $S3S_FS_VERSION" "$S3S/.crates.toml" 2>/dev/null; then
  echo "==> s3s-fs $S3S_FS_VERSION into $S3S"
  cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$S3S"
fi
echo "s3 test tools ready in $TOOLS"
