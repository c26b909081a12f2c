#!/usr/bin/env bash
# Benchmark: `modelship model push DIR s3://bench/m/` against the upload the
# practitioner writes in a notebook, boto3's `upload_file` for every file of
# the directory (default TransferConfig: multipart above 8 MiB in 8 MiB
# parts, 10 threads), to s3s-fs on loopback, both timed as whole processes
# (see benches/lib.sh). modelship does more per byte: it reads a multipart
# file once more to compute its SHA-256 first (S3 takes metadata when the
# upload is created), sends each part with Content-MD5, and checks every
# object with a HEAD afterwards. Before each run the uploaded objects are
# removed, so both sides upload everything.
# Target: time <= 1.2x boto3, peak RSS < 128 MiB.
#
#   benches/model-push.sh                      # a 512 MiB model, 3 pairs
#   SIZES_MIB="256 1024" PAIRS=5 benches/model-push.sh
#
# Needs scripts/setup.d/20-s3.sh (s3s-fs, a venv with boto3) and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
PY="$TOOLS/moto/bin/python"
S3S="$TOOLS/s3s-fs/bin/s3s-fs"
read -r -a SIZES <<<"${SIZES_MIB:-512}"
for need in "$PY" "$S3S"; do
  [ -x "$need" ] || { echo "missing $need: run scripts/setup.d/20-s3.sh first" >&2; exit 2; }
done
if [ -n "${MODELSHIP_BIN:-}" ]; then
  BIN="$MODELSHIP_BIN"
else
  echo "==> cargo build --release --bin modelship" >&2
  cargo build --release --quiet --bin modelship
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/modelship"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelship-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK" "$BENCH_WORK"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench-access-key AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
# modelship's record of open uploads stays in the work directory.
export XDG_CACHE_HOME="$WORK/cache"
bench_s3s_fs "$WORK"

MODEL="$WORK/model"
WANT=""
clear_bucket() { rm -rf "$WORK/root/bench/m"; }
boto_before() { clear_bucket; }
boto_cmd() {
  CMD=("$PY" -c '
import os, sys, boto3
endpoint, root, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint)
for d, _, names in os.walk(root):
    for n in sorted(names):
        path = os.path.join(d, n)
        s3.upload_file(path, "bench", prefix + os.path.relpath(path, root))
' "$ENDPOINT" "$MODEL" "m/")
}
uploaded_ok() { [ "$(sha256sum <"$WORK/root/bench/m/weights.bin" | cut -d' ' -f1)" = "$WANT" ]; }
boto_after() { uploaded_ok; }
modelship_before() { clear_bucket; rm -rf "$XDG_CACHE_HOME"; }
modelship_cmd() { CMD=("$BIN" -q model push "$MODEL" s3://bench/m/ --endpoint "$ENDPOINT" --insecure -o json); }
modelship_after() {
  uploaded_ok && [ "$("$PY" -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(f["action"]=="uploaded" for f in m["files"]))' "$BENCH_OUT")" = 4 ]
}

for size in "${SIZES[@]}"; do
  rm -rf "$MODEL"
  cp -r fixtures/weather-model "$MODEL"
  head -c "$((size * 1024 * 1024))" /dev/urandom >"$MODEL/weights.bin"
  WANT="$(sha256sum <"$MODEL/weights.bin" | cut -d' ' -f1)"
  bench_pairs "model push $size MiB to s3s-fs" modelship boto "<= 1.2x, RSS < 128 MiB"
done
