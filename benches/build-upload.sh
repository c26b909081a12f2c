#!/usr/bin/env bash
# Benchmark for issue 5: upload a build context to the sim's
# instantiatebinary the way the openshift-build stage does (gzip tar made on
# the fly, chunked) against `curl -X POST -T context.tar` (streamed from disk) of the same
# files to the same endpoint. Prints both wall times, the ratio
# modelship/curl and modelship's peak RSS (GNU time). Targets: ratio <= 1.25,
# RSS < 64 MiB.
#
# Usage: benches/build-upload.sh              (1 GiB context; needs ~3 GiB free)
#        SIZE_MB=256 benches/build-upload.sh
# The context is random bytes (a model's weights compress poorly), so gzip
# runs at its fast level over incompressible data, as it would in production.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB="${SIZE_MB:-1024}"
for tool in kubectl curl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/test.sh" >&2; exit 2; }
done

# PROFILE=debug only for a smoke run: times from a debug build mean nothing.
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then
  echo "==> cargo build --release --bin modelship --example upload_bench" >&2
  cargo build --release --bin modelship --example upload_bench >&2
else
  cargo build --bin modelship --example upload_bench >&2
fi
TARGET="${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE"

WORK="$(mktemp -d -t modelship-build-bench.XXXXXX)"
SIM_PID=""
cleanup() {
  [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$TARGET/modelship" sim serve --data "$WORK/sim" --kubeconfig "$WORK/kubeconfig" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/sim.log" 2>/dev/null && break; sleep 0.1; done
URL="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/sim.log" | head -1)"
K=(kubectl --kubeconfig "$WORK/kubeconfig")
"${K[@]}" create namespace bench >/dev/null
cat <<YAML | "${K[@]}" apply -f - >/dev/null
apiVersion: image.openshift.io/v1
kind: ImageStream
metadata: {name: big, namespace: bench}
---
apiVersion: build.openshift.io/v1
kind: BuildConfig
metadata: {name: big, namespace: bench}
spec:
  source: {type: Binary, binary: {}}
  strategy: {type: Docker, dockerStrategy: {dockerfilePath: Dockerfile}}
  output: {to: {kind: ImageStreamTag, name: "big:latest"}}
YAML

mkdir -p "$WORK/context"
printf 'FROM scratch\nCOPY . /model\n' > "$WORK/context/Dockerfile"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$WORK/context/weights.bin"
tar -C "$WORK/context" -cf "$WORK/context.tar" .

wait_build() {
  for _ in $(seq 600); do
    phase="$("${K[@]}" get build "$1" -n bench -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    case "$phase" in Complete|Failed|Error|Cancelled) return 0;; esac
    sleep 1
  done
}

/usr/bin/time -v -o "$WORK/time.txt" "$TARGET/examples/upload_bench" "$WORK/kubeconfig" bench big "$WORK/context" 2>"$WORK/ms.txt"
T_MS="$(sed -n 's/.*uploaded in \([0-9.]*\)s.*/\1/p' "$WORK/ms.txt")"
RSS_KB="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time.txt")"
wait_build big-1

START=$(date +%s.%N)
curl -sS -o /dev/null -H 'Content-Type: application/octet-stream' -H 'Authorization: Bearer bench' \
  -X POST -T "$WORK/context.tar" "$URL/apis/build.openshift.io/v1/namespaces/bench/buildconfigs/big/instantiatebinary?name=big&namespace=bench"
T_CURL="$(echo "$(date +%s.%N) - $START" | bc -l)"
wait_build big-2

printf 'context: %s MiB\nmodelship upload: %.2f s\ncurl -T (plain tar): %.2f s\nratio modelship/curl: %.2f (target <= 1.25)\nmodelship peak RSS: %.1f MiB (target < 64)\n' \
  "$SIZE_MB" "$T_MS" "$T_CURL" "$(echo "$T_MS / $T_CURL" | bc -l)" "$(echo "$RSS_KB / 1024" | bc -l)"
