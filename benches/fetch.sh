#!/usr/bin/env bash
# Benchmark: fetch one object from s3s-fs on loopback with modelship's
# fetch-model path (the `fetch_bench` example: the library's fetch, verified
# as in a run) against boto3's `download_file` with default settings (8 MiB
# chunks, 10 threads), both timed as whole processes (see benches/lib.sh).
# Targets: time <= 0.5x boto3, peak RSS < 64 MiB.
#
#   benches/fetch.sh                         # 512 MiB and 1 GiB, 3 pairs each
#   SIZES_MIB=256 PAIRS=5 benches/fetch.sh
#   FETCH_BENCH=/tmp/fetch_bench-o3 SIZES_MIB=512 benches/fetch.sh   # a given binary
#
# Needs scripts/setup.d/20-s3.sh (s3s-fs, a venv with boto3) and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
PY="$TOOLS/moto/bin/python"
S3S="$TOOLS/s3s-fs/bin/s3s-fs"
read -r -a SIZES <<<"${SIZES_MIB:-512 1024}"
for need in "$PY" "$S3S"; do
  [ -x "$need" ] || { echo "missing $need: run scripts/setup.d/20-s3.sh first" >&2; exit 2; }
done

PROFILE="${BENCH_PROFILE:-release}"   # debug only checks the script itself
if [ -n "${FETCH_BENCH:-}" ]; then
  BENCH="$FETCH_BENCH"                # a build kept aside, e.g. to compare profiles
else
  if [ "$PROFILE" = release ]; then
    echo "==> cargo build --release --example fetch_bench" >&2
    cargo build --release --quiet --bin modelship --example fetch_bench --example upload_bench
  else
    cargo build --quiet --example fetch_bench
  fi
  BENCH="${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE/examples/fetch_bench"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelship-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK" "$BENCH_WORK"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench-access-key AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
bench_s3s_fs "$WORK"

KEY=""
WANT=""
boto_before() { rm -rf "$WORK/out"; mkdir -p "$WORK/out"; }
boto_cmd() {
  CMD=("$PY" -c 'import sys, boto3; boto3.client("s3", endpoint_url=sys.argv[1]).download_file("bench", sys.argv[2], sys.argv[3])'
    "$ENDPOINT" "$KEY" "$WORK/out/model.bin")
}
boto_after() { [ "$(sha256sum <"$WORK/out/model.bin" | cut -d' ' -f1)" = "$WANT" ]; }
modelship_before() { rm -rf "$WORK/out"; }
modelship_cmd() { CMD=("$BENCH" "s3://bench/$KEY" "$WORK/out" "$ENDPOINT"); }
modelship_after() {
  [ "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$BENCH_OUT")" = "$WANT" ] &&
    [ "$(sha256sum <"$WORK/out/model/model.bin" | cut -d' ' -f1)" = "$WANT" ]
}

for size in "${SIZES[@]}"; do
  KEY="models/m$size/model.bin"
  echo "==> uploading a $size MiB object (boto3 upload_file: multipart, 8 MiB parts)" >&2
  head -c "$((size * 1024 * 1024))" /dev/urandom >"$WORK/object.bin"
  WANT="$(sha256sum <"$WORK/object.bin" | cut -d' ' -f1)"
  "$PY" -c 'import sys, boto3; boto3.client("s3", endpoint_url=sys.argv[1]).upload_file(sys.argv[2], "bench", sys.argv[3])' \
    "$ENDPOINT" "$WORK/object.bin" "$KEY"
  rm -f "$WORK/object.bin"
  bench_pairs "fetch $size MiB from s3s-fs" modelship boto "<= 0.5x, RSS < 64 MiB"
  rm -rf "$WORK/root/bench/models/m$size"
done
