#!/usr/bin/env bash
# Benchmark (issue 3): fetch one 1 GiB object from s3s-fs on loopback with
# modelship's fetch-model path and with boto3's download_file (default
# TransferConfig: 8 MiB chunks, 10 threads), in the same run, and print the
# time ratio and modelship's peak RSS (GNU time -v).
#
#   benches/fetch.sh            # 1 GiB, best of 2 runs each
#   SIZE_MIB=256 RUNS=1 benches/fetch.sh
#
# Needs scripts/setup.d/20-s3.sh (s3s-fs, a venv with boto3, GNU time) and a
# release build of the example `fetch_bench` (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
PY="$TOOLS/moto/bin/python"
S3S="$TOOLS/s3s-fs/bin/s3s-fs"
SIZE_MIB="${SIZE_MIB:-1024}"
RUNS="${RUNS:-2}"
for need in "$PY" "$S3S" /usr/bin/time; do
  [ -x "$need" ] || { echo "missing $need: run scripts/test.sh (or scripts/setup.d/20-s3.sh) first" >&2; exit 1; }
done

# BENCH_PROFILE=debug only checks the script itself; numbers need release.
if [ "${BENCH_PROFILE:-release}" = debug ]; then
  cargo build --quiet --example fetch_bench
  BENCH="target/debug/examples/fetch_bench"
else
  echo "==> cargo build --release --example fetch_bench"
  cargo build --release --quiet --example fetch_bench
  BENCH="target/release/examples/fetch_bench"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelship-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench-access-key AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
ENDPOINT="http://127.0.0.1:$PORT"
mkdir -p "$WORK/root"
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
  "$WORK/root" >"$WORK/s3s-fs.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

echo "==> uploading a ${SIZE_MIB} MiB object to s3s-fs at $ENDPOINT"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/object.bin"
WANT="$(sha256sum "$WORK/object.bin" | cut -d' ' -f1)"
"$PY" - "$ENDPOINT" "$WORK/object.bin" <<'PYEOF'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="bench")
s3.upload_file(sys.argv[2], "bench", "models/big/model.bin")
PYEOF
rm -f "$WORK/object.bin"

# Prints "<wall seconds> <peak RSS KiB>" of a command run under GNU time.
measure() {
  local log="$WORK/time.log"
  /usr/bin/time -v -o "$log" "$@" >"$WORK/out.log" 2>"$WORK/err.log" || { cat "$WORK/err.log" >&2; return 1; }
  "$PY" - "$log" <<'PYEOF'
import sys
wall = rss = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("Elapsed (wall clock)"):
        t = line.rsplit(" ", 1)[1].split(":")
        wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(t)))
    if line.startswith("Maximum resident set size"):
        rss = int(line.rsplit(" ", 1)[1])
print(f"{wall:.3f} {rss}")
PYEOF
}

BOTO_BEST="" MS_BEST="" MS_RSS="" BOTO_RSS=""
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/boto" "$WORK/ms"; mkdir -p "$WORK/boto"
  read -r t rss < <(measure "$PY" -c '
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1]).download_file("bench", "models/big/model.bin", sys.argv[2])
' "$ENDPOINT" "$WORK/boto/model.bin")
  [ "$(sha256sum "$WORK/boto/model.bin" | cut -d' ' -f1)" = "$WANT" ] || { echo "boto3 download differs" >&2; exit 1; }
  echo "run $run: boto3 download_file   ${t}s  peak RSS $((rss / 1024)) MiB"
  if [ -z "$BOTO_BEST" ] || "$PY" -c "import sys; sys.exit(0 if $t < $BOTO_BEST else 1)"; then BOTO_BEST=$t; BOTO_RSS=$rss; fi
  rm -rf "$WORK/boto"

  read -r t rss < <(measure "$BENCH" "s3://bench/models/big/model.bin" "$WORK/ms" "$ENDPOINT")
  got="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$WORK/out.log")"
  [ "$got" = "$WANT" ] || { echo "modelship download differs" >&2; exit 1; }
  cmp -s <(sha256sum <"$WORK/ms/model/model.bin" | cut -d' ' -f1) <(echo "$WANT") || { echo "file on disk differs" >&2; exit 1; }
  echo "run $run: modelship fetch-model ${t}s  peak RSS $((rss / 1024)) MiB"
  if [ -z "$MS_BEST" ] || "$PY" -c "import sys; sys.exit(0 if $t < $MS_BEST else 1)"; then MS_BEST=$t; MS_RSS=$rss; fi
  rm -rf "$WORK/ms"
done

"$PY" - "$SIZE_MIB" "$BOTO_BEST" "$MS_BEST" "$MS_RSS" "$BOTO_RSS" <<'PYEOF'
import sys
size, boto, ms, rss, brss = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print()
print(f"object            {size} MiB from s3s-fs on loopback (best of runs)")
print(f"boto3             {boto:.2f} s  {size / boto:.0f} MiB/s  peak RSS {brss / 1024:.0f} MiB")
print(f"modelship         {ms:.2f} s  {size / ms:.0f} MiB/s  peak RSS {rss / 1024:.0f} MiB")
print(f"ratio             modelship/boto3 = {ms / boto:.2f}  (target <= 0.50)")
print(f"peak RSS          {rss / 1024:.1f} MiB  (target < 64 MiB)")
PYEOF
