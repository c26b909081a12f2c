#!/usr/bin/env bash
# Benchmark: `modelship image copy` against `skopeo copy --preserve-digests`
# between two real registries (Debian docker-registry, distribution 2.8) on
# loopback, with a ~310 MB four-layer image, both timed as whole processes
# (benches/lib.sh).
#
#   1. cold copy to an empty registry (restarted empty before every run)
#   2. repeat copy to a registry that already has the image
#   3. same-registry promotion to another repository (cross-repo mounts)
#
# Targets: cold <= 0.7x skopeo; repeat < 0.3 s with 0 bytes; same-registry
# 0 bytes; peak RSS < 64 MiB.
#
# Usage: benches/image-copy.sh            (needs scripts/setup.d/30-registry.sh)
#        PAIRS=5 benches/image-copy.sh
#        MODELSHIP_BIN=target/debug/modelship SIZES="1000000 2000000" benches/image-copy.sh
#                                          (a quick try of the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
for tool in /usr/bin/docker-registry skopeo sha256sum; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.d/30-registry.sh" >&2; exit 2; }
done

if [ -n "${MODELSHIP_BIN:-}" ]; then
  MODELSHIP="$MODELSHIP_BIN"
else
  # The same build as benches/run.sh's (the examples' dev-dependencies
  # change feature unification; a different set would rebuild everything).
  echo "==> cargo build --release --bin modelship --example fetch_bench --example upload_bench" >&2
  cargo build --release --quiet --bin modelship --example fetch_bench --example upload_bench
  MODELSHIP="${CARGO_TARGET_DIR:-$PWD/target}/release/modelship"
fi
# Layer sizes in bytes before gzip (default ~310 MB in four layers).
read -r -a SIZES <<< "${SIZES:-146800640 94371840 52428800 31457280}"

WORK="$(mktemp -d -t modelship-bench.XXXXXX)"
cleanup() {
  for f in "$WORK"/*.pid; do if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi; done
  sleep 0.2
  rm -rf "$WORK" "$BENCH_WORK"
}
trap cleanup EXIT

POLICY="$WORK/policy.json"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$POLICY"
# skopeo reads credentials from here (none); docker-registry must not see
# it: it takes every REGISTRY_* variable as a config override.
SKOPEO=(env REGISTRY_AUTH_FILE="$WORK/no-auth.json" /usr/bin/skopeo --policy "$POLICY")
unset REGISTRY_AUTH_FILE

# start_registry NAME [PORT]: an empty registry; prints host:port.
start_registry() {
  local name=$1 port dir
  port=${2:-$(bench_free_port)}
  dir="$WORK/$name"
  [ -f "$WORK/$name.pid" ] && { kill "$(cat "$WORK/$name.pid")" 2>/dev/null; sleep 0.3; }
  rm -rf "$dir"; mkdir -p "$dir"
  cat > "$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
  /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  echo $! > "$WORK/$name.pid"
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && { echo "127.0.0.1:$port"; return; }
    sleep 0.05
  done
  echo "registry $name did not start:" >&2; cat "$dir/log" >&2; exit 1
}
# An OCI layout with one image of four random layers (~350 MB).
make_layout() {
  local dir=$1 sizes=("${SIZES[@]}") layers="" diffs="" i f d
  mkdir -p "$dir/blobs/sha256"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$dir/oci-layout"
  # Real images carry gzip layers; random content keeps them ~incompressible,
  # so the image is ~350 MB on the wire. (Uncompressed layers would make
  # skopeo gzip them unless told to preserve digests.)
  local raw diff size
  for i in "${!sizes[@]}"; do
    raw="$dir/layer$i.tar"; f="$dir/blobs/layer$i"
    head -c "${sizes[$i]}" /dev/urandom > "$raw"
    diff=$(sha256sum "$raw" | cut -d' ' -f1)
    gzip -1 -c "$raw" > "$f"; rm "$raw"
    d=$(sha256sum "$f" | cut -d' ' -f1); size=$(stat -c %s "$f")
    mv "$f" "$dir/blobs/sha256/$d"
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$size}"
    diffs+="${diffs:+,}\"sha256:$diff\""
  done
  printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs" > "$dir/config"
  local cd cs md ms
  cd=$(sha256sum "$dir/config" | cut -d' ' -f1); cs=$(stat -c %s "$dir/config"); mv "$dir/config" "$dir/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cd" "$cs" "$layers" > "$dir/manifest"
  md=$(sha256sum "$dir/manifest" | cut -d' ' -f1); ms=$(stat -c %s "$dir/manifest"); mv "$dir/manifest" "$dir/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' "$md" "$ms" > "$dir/index.json"
  echo "sha256:$md"
}

# Blob bytes modelship uploaded, from its "image copied" log event.
uploaded() { grep -o '"bytes_uploaded":[0-9]*' "$BENCH_ERR" | tail -1 | cut -d: -f2; }
mounted() { grep -o '"blobs_mounted":[0-9]*' "$BENCH_ERR" | tail -1 | cut -d: -f2; }
same_digest() { # REF: the manifest there hashes to $DIGEST
  [ "sha256:$("${SKOPEO[@]}" inspect --raw --tls-verify=false "docker://$1" | sha256sum | cut -d' ' -f1)" = "$DIGEST" ]
}

A=$(start_registry a)
echo "==> generating a four-layer image" >&2
DIGEST=$(make_layout "$WORK/layout")
"${SKOPEO[@]}" copy --preserve-digests --dest-tls-verify=false "oci:$WORK/layout:v1" "docker://$A/bench/app:v1" >/dev/null
SIZE=$(du -sb "$WORK/layout/blobs" | cut -f1)
echo "image $DIGEST, $((SIZE / 1048576)) MiB in registry A ($A)" >&2
B=$(start_registry b)
BPORT=${B##*:}
servers() { BENCH_SERVER_PIDS="$(cat "$WORK/a.pid") $(cat "$WORK/b.pid")"; }
servers

ms_copy() { CMD=("$MODELSHIP" --log-format json image copy "docker://$A/bench/app@$DIGEST" "docker://$1/prod/app:v1" --src-insecure --dest-insecure); }
sk_copy() { CMD=("${SKOPEO[@]}" copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false "docker://$A/bench/app@$DIGEST" "docker://$1/prod/app:v1"); }

# 1. Cold: B empty before every run.
empty_b() { start_registry b "$BPORT" >/dev/null; servers; }
modelship_before() { empty_b; }
modelship_cmd() { ms_copy "$B"; }
modelship_after() { [ "$(cat "$BENCH_OUT")" = "$DIGEST" ] && same_digest "$B/prod/app:v1"; }
skopeo_before() { empty_b; }
skopeo_cmd() { sk_copy "$B"; }
skopeo_after() { same_digest "$B/prod/app:v1"; }
bench_pairs "image copy, $((SIZE / 1048576)) MB in ${#SIZES[@]} layers" modelship skopeo "<= 0.7x"

# 2. Repeat: the image is already in B.
REPEAT_BYTES=0
modelship_repeat_cmd() { ms_copy "$B"; }
modelship_repeat_after() { modelship_after && REPEAT_BYTES=$((REPEAT_BYTES + $(uploaded))); }
skopeo_repeat_cmd() { sk_copy "$B"; }
skopeo_repeat_after() { skopeo_after; }
bench_pairs "repeat copy (image present)" modelship_repeat skopeo_repeat "< 0.3 s, 0 bytes"
bench_note "repeat copy bytes uploaded" "$REPEAT_BYTES bytes over $PAIRS runs (target 0)"

# 3. Same registry, another repository: cross-repository mounts.
modelship_promote_cmd() { CMD=("$MODELSHIP" --log-format json image copy "docker://$A/bench/app@$DIGEST" "docker://$A/prod-$RANDOM/app:v1" --src-insecure --dest-insecure); }
modelship_promote_after() { PROMOTE_BYTES=$(uploaded); PROMOTE_MOUNTS=$(mounted); }
bench_once modelship_promote
bench_note "same-registry promotion" "$PROMOTE_BYTES bytes uploaded, $PROMOTE_MOUNTS blobs mounted (target 0 bytes)"
