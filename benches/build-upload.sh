#!/usr/bin/env bash
# Benchmark: upload a 1 GiB build context to the sim's instantiatebinary
# (HTTPS, client certificate) the way the openshift-build stage does (gzip
# tar made on the fly, streamed chunked through the kube client) against
# `curl -T` of the same gzip tar already on disk, to the same endpoint with
# the same identity. Both are whole processes timed from outside
# (benches/lib.sh); each run waits first until the previous Build finished
# (runPolicy Serial would otherwise hold the upload). Targets: <= 1.1x curl,
# peak RSS < 64 MiB.
#
#   benches/build-upload.sh          # 1 GiB of random bytes, 3 pairs
#   SIZE_MIB=256 benches/build-upload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
SIZE_MIB="${SIZE_MIB:-1024}"
for tool in kubectl curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/test.sh" >&2; exit 2; }
done
PROFILE="${BENCH_PROFILE:-release}"   # debug only checks the script itself
if [ "$PROFILE" = release ]; then
  echo "==> cargo build --release --bin modelship --example upload_bench" >&2
  cargo build --release --quiet --bin modelship --example fetch_bench --example upload_bench
else
  cargo build --quiet --bin modelship --example upload_bench
fi
TARGET="${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelship-build-bench.XXXXXX")"
SIM_PID=""
cleanup() {
  [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK" "$BENCH_WORK"
}
trap cleanup EXIT

"$TARGET/modelship" sim serve --data "$WORK/sim" --kubeconfig "$WORK/kubeconfig" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
BENCH_SERVER_PIDS="$SIM_PID"
for _ in $(seq 200); do grep -q "listening on" "$WORK/sim.log" 2>/dev/null && break; sleep 0.1; done
URL="$(sed -n 's/.*listening on \(https[^ ]*\).*/\1/p' "$WORK/sim.log" | head -1)"
[ -n "$URL" ] || { cat "$WORK/sim.log" >&2; exit 1; }
K=(kubectl --kubeconfig "$WORK/kubeconfig")
# curl gets the kubeconfig's CA and client certificate: the same identity.
"${K[@]}" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$WORK/ca.pem"
"${K[@]}" config view --raw -o jsonpath='{.users[0].user.client-certificate-data}' | base64 -d >"$WORK/cert.pem"
"${K[@]}" config view --raw -o jsonpath='{.users[0].user.client-key-data}' | base64 -d >"$WORK/key.pem"
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
printf 'FROM scratch\nCOPY . /model\n' >"$WORK/context/Dockerfile"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/context/weights.bin"
"$TARGET/examples/upload_bench" --write "$WORK/context.tar.gz" "$WORK/context"
gzip -t "$WORK/context.tar.gz"

# Every Build finished, so the next upload is taken at once.
builds_idle() {
  local phases
  for _ in $(seq 1200); do
    phases="$("${K[@]}" get builds -n bench -o jsonpath='{.items[*].status.phase}')"
    if ! grep -qwE 'New|Pending|Running' <<<"$phases"; then
      "${K[@]}" delete builds --all -n bench >/dev/null 2>&1 || true
      return 0
    fi
    sleep 0.5
  done
  echo "builds did not finish: $phases" >&2; return 1
}
started() { grep -q . "$BENCH_OUT"; }
modelship_before() { builds_idle; }
modelship_cmd() { CMD=("$TARGET/examples/upload_bench" "$WORK/kubeconfig" bench big "$WORK/context"); }
modelship_after() { started; }
curl_before() { builds_idle; }
curl_cmd() {
  CMD=(curl -sS --fail-with-body --cacert "$WORK/ca.pem" --cert "$WORK/cert.pem" --key "$WORK/key.pem"
    -H 'Content-Type: application/octet-stream' -X POST -T "$WORK/context.tar.gz"
    "$URL/apis/build.openshift.io/v1/namespaces/bench/buildconfigs/big/instantiatebinary?name=big&namespace=bench")
}
curl_after() { grep -q Build "$BENCH_OUT"; }

bench_pairs "upload $SIZE_MIB MiB context" modelship curl "<= 1.1x, RSS < 64 MiB"
