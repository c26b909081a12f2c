#!/usr/bin/env bash
# Benchmark for issue 7: `modelship image copy` against `skopeo copy`
# between two real registries (Debian docker-registry, distribution 2.8) on
# loopback, with a ~350 MB four-layer image.
#
#   1. cold copy A -> fresh target (modelship), A -> fresh target (skopeo)
#   2. repeat copy to a target that already has the image
#   3. same-registry promotion to another repository (cross-repo mounts)
#
# Prints wall times, ratios against skopeo, blob bytes uploaded (from
# modelship's JSON log) and peak RSS (GNU time). Targets: cold <= 0.8x skopeo,
# repeat < 0.3 s with 0 bytes, promotion 0 bytes, RSS < 64 MiB.
#
# Usage: benches/image-copy.sh            (needs scripts/setup.d/30-registry.sh)
#        ROUNDS=3 benches/image-copy.sh   (cold copies repeated; best of each)
#        MODELSHIP_BIN=target/debug/modelship SIZES="1000000 2000000" benches/image-copy.sh
#                                          (a quick try of the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-1}"
for tool in /usr/bin/docker-registry skopeo /usr/bin/time sha256sum; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/setup.d/30-registry.sh" >&2; exit 2; }
done

if [ -n "${MODELSHIP_BIN:-}" ]; then
  MODELSHIP="$MODELSHIP_BIN"   # e.g. a debug binary, to try the script quickly
else
  echo "==> cargo build --release --bin modelship" >&2
  cargo build --release --bin modelship >&2
  MODELSHIP="${CARGO_TARGET_DIR:-$PWD/target}/release/modelship"
fi
# Layer sizes in bytes before gzip (default ~350 MB in four layers).
read -r -a SIZES <<< "${SIZES:-167772160 104857600 62914560 31457280}"

WORK="$(mktemp -d -t modelship-bench.XXXXXX)"
# Registries are started in command substitutions (subshells): keep their pids in a file.
cleanup() {
  if [ -f "$WORK/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done < "$WORK/pids"
  fi
  sleep 0.2
  rm -rf "$WORK"
}
trap cleanup EXIT

POLICY="$WORK/policy.json"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$POLICY"
# skopeo reads credentials from here (none); docker-registry must not see
# it: it takes every REGISTRY_* variable as a config override.
SKOPEO_ENV=(env REGISTRY_AUTH_FILE="$WORK/no-auth.json")
skopeo() { "${SKOPEO_ENV[@]}" /usr/bin/skopeo "$@"; }
unset REGISTRY_AUTH_FILE

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_registry NAME -> prints host:port
start_registry() {
  local name=$1 port dir
  port=$(free_port)
  dir="$WORK/$name"
  mkdir -p "$dir"
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
  echo $! >> "$WORK/pids"
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && { echo "127.0.0.1:$port"; return; }
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

# timed LABEL CMD... : runs under GNU time; sets ELAPSED (s), RSS_KB, and keeps stderr in $WORK/LABEL.err
timed() {
  local label=$1; shift
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$WORK/$label.time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
    echo "$label failed:" >&2; cat "$WORK/$label.err" >&2; exit 1; }
  end=$(date +%s.%N)
  ELAPSED=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.3f", b-a}')
  RSS_KB=$(awk -F': ' '/Maximum resident set size/{print $2}' "$WORK/$label.time")
}

# Blob bytes modelship uploaded, from its "image copied" log event.
uploaded() { grep -o '"bytes_uploaded":[0-9]*' "$WORK/$1.err" | tail -1 | cut -d: -f2; }
mounted() { grep -o '"blobs_mounted":[0-9]*' "$WORK/$1.err" | tail -1 | cut -d: -f2; }

A=$(start_registry a)
echo "==> generating a ~350 MB four-layer image" >&2
DIGEST=$(make_layout "$WORK/layout")
skopeo --policy "$POLICY" copy --preserve-digests --dest-tls-verify=false "oci:$WORK/layout:v1" "docker://$A/bench/app:v1" >/dev/null
SIZE=$(du -sb "$WORK/layout/blobs" | cut -f1)
echo "image $DIGEST, $((SIZE / 1048576)) MiB in registry A ($A)"

best_ms=""; best_sk=""; ms_rss=0
for r in $(seq "$ROUNDS"); do
  B1=$(start_registry "b-ms-$r"); B2=$(start_registry "b-sk-$r")
  timed "skopeo-cold-$r" "${SKOPEO_ENV[@]}" /usr/bin/skopeo --policy "$POLICY" copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
    "docker://$A/bench/app@$DIGEST" "docker://$B2/prod/app:v1"
  sk=$ELAPSED; sk_rss=$RSS_KB
  got=$(skopeo inspect --raw --tls-verify=false "docker://$B2/prod/app:v1" | sha256sum | cut -d' ' -f1)
  [ "sha256:$got" = "$DIGEST" ] || { echo "skopeo changed the digest (sha256:$got): not a like-for-like copy" >&2; exit 1; }
  timed "ms-cold-$r" "$MODELSHIP" --log-format json image copy "docker://$A/bench/app@$DIGEST" "docker://$B1/prod/app:v1" \
    --src-insecure --dest-insecure
  ms=$ELAPSED; [ "$RSS_KB" -gt "$ms_rss" ] && ms_rss=$RSS_KB
  [ "$(cat "$WORK/ms-cold-$r.out")" = "$DIGEST" ] || { echo "modelship printed $(cat "$WORK/ms-cold-$r.out"), expected $DIGEST" >&2; exit 1; }
  got=$(skopeo inspect --raw --tls-verify=false "docker://$B1/prod/app:v1" | sha256sum | cut -d' ' -f1)
  [ "sha256:$got" = "$DIGEST" ] || { echo "digest changed in copy: sha256:$got" >&2; exit 1; }
  printf 'round %s cold copy: modelship %6.3f s (%s bytes uploaded, RSS %s KiB) | skopeo %6.3f s (RSS %s KiB) | ratio %.2f\n' \
    "$r" "$ms" "$(uploaded "ms-cold-$r")" "$RSS_KB" "$sk" "$sk_rss" "$(awk -v a="$ms" -v b="$sk" 'BEGIN{print a/b}')"
  best_ms=$(awk -v a="$ms" -v b="${best_ms:-1e9}" 'BEGIN{print (a<b)?a:b}')
  best_sk=$(awk -v a="$sk" -v b="${best_sk:-1e9}" 'BEGIN{print (a<b)?a:b}')
done

timed ms-repeat "$MODELSHIP" --log-format json image copy "docker://$A/bench/app@$DIGEST" "docker://$B1/prod/app:v1" \
  --src-insecure --dest-insecure
ms_rep=$ELAPSED; rep_bytes=$(uploaded ms-repeat); [ "$RSS_KB" -gt "$ms_rss" ] && ms_rss=$RSS_KB
timed sk-repeat "${SKOPEO_ENV[@]}" /usr/bin/skopeo --policy "$POLICY" copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
  "docker://$A/bench/app@$DIGEST" "docker://$B2/prod/app:v1"
sk_rep=$ELAPSED

timed ms-promote "$MODELSHIP" --log-format json image copy "docker://$A/bench/app@$DIGEST" "docker://$A/prod/app:v1" \
  --src-insecure --dest-insecure
ms_pro=$ELAPSED; pro_bytes=$(uploaded ms-promote); pro_mounts=$(mounted ms-promote); [ "$RSS_KB" -gt "$ms_rss" ] && ms_rss=$RSS_KB
timed sk-promote "${SKOPEO_ENV[@]}" /usr/bin/skopeo --policy "$POLICY" copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
  "docker://$A/bench/app@$DIGEST" "docker://$A/prod2/app:v1"
sk_pro=$ELAPSED

ratio=$(awk -v a="$best_ms" -v b="$best_sk" 'BEGIN{printf "%.2f", a/b}')
verdict() { if awk "BEGIN{exit !($1)}"; then echo ok; else echo MISSED; fi; }
echo
echo "summary (best of $ROUNDS cold round(s); CPU shared with other work, so absolute times vary)"
printf '  cold copy      modelship %6.3f s  skopeo %6.3f s  ratio %s  (target <= 0.80: %s)\n' "$best_ms" "$best_sk" "$ratio" "$(verdict "$ratio <= 0.8")"
printf '  repeat copy    modelship %6.3f s  skopeo %6.3f s  bytes uploaded %s  (target < 0.3 s and 0 bytes: %s)\n' "$ms_rep" "$sk_rep" "${rep_bytes:-?}" "$(verdict "$ms_rep < 0.3 && ${rep_bytes:-1} == 0")"
printf '  same-registry  modelship %6.3f s  skopeo %6.3f s  bytes uploaded %s, blobs mounted %s  (target 0 bytes: %s)\n' "$ms_pro" "$sk_pro" "${pro_bytes:-?}" "${pro_mounts:-?}" "$(verdict "${pro_bytes:-1} == 0")"
printf '  peak RSS       modelship %s KiB  (target < 65536 KiB: %s)\n' "$ms_rss" "$(verdict "$ms_rss < 65536")"
