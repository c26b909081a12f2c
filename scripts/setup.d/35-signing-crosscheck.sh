#!/usr/bin/env bash
# Independent implementations for tests/signing.rs to cross-check modelship's
# cosign-format keys, signatures and DSSE attestations against:
# securesystemslib (the DSSE authors' library: PAE, envelopes, ECDSA P-256
# via OpenSSL) and PyNaCl (libsodium's secretbox, what cosign's encrypted key
# uses beside scrypt). skopeo itself is in 30-registry.sh, but Debian's
# build has sigstore disabled. Idempotent.
set -euo pipefail

TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
DEST="$TOOLS/signing-py"
PINS=(securesystemslib[crypto]==1.6.0 pynacl==1.6.2)

if [ -f "$DEST/.complete" ] && [ "$(cat "$DEST/.complete")" = "${PINS[*]}" ]; then
  echo "signing cross-check venv: $DEST/venv"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
fi
rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m venv "$DEST/venv"
"$DEST/venv/bin/pip" install --quiet --no-input "${PINS[@]}"
echo "${PINS[*]}" > "$DEST/.complete"
echo "signing cross-check venv: $DEST/venv"
