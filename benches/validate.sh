#!/usr/bin/env bash
# Benchmark (not a test): how long `modelship validate` takes on the example
# pipeline and on 1,000 generated pipelines in one invocation.
# Targets (issue 2): under 20 ms for one file, under 1 s for the thousand.
#
# Usage: benches/validate.sh [PATH-TO-RELEASE-BINARY]
# Without an argument it builds `cargo build --release` and uses that.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-}"
if [[ -z "$bin" ]]; then
    (cd "$root" && cargo build --release --bin modelship --example fetch_bench --example upload_bench >&2)
    bin="${CARGO_TARGET_DIR:-$root/target}/release/modelship"
fi
example="$root/fixtures/pipelines/weather.yaml"
runs="${RUNS:-20}"

work="$(mktemp -d)"
. "$root/benches/lib.sh"
trap 'rm -rf "$work" "$BENCH_WORK"' EXIT

# 1,000 distinct pipelines: the example shape with names, params and
# references varied so nothing is trivially identical.
for i in $(seq -w 0 999); do
    cat > "$work/p$i.yaml" <<YAML
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: model-$i
spec:
  model:
    name: model-$i
    source: s3://models/model-$i/
  params:
    tag:
      default: v$i
  environments:
    dev:
      namespace: models-dev-$i
    prod:
      namespace: models-prod-$i
  stages:
    - name: fetch
      uses: fetch-model
    - name: render
      uses: render
      with: { modelClass: Model$i }
    - name: build
      uses: openshift-build
      timeout: 20m
      with:
        environment: dev
    - name: deploy
      uses: seldon-deploy
      if: "{{stages.build.outputs.imageDigest}}"
      with:
        environment: dev
    - name: check
      uses: prediction-check
      if: "{{stages.deploy.outputs.endpoint}} {{params.tag}}"
      with:
        environment: dev
        cases:
          - name: case $i
            request: { data: { names: [x], ndarray: ["$i"] } }
            expect: { meta.tags.answer: "$i" }
    - name: promote
      uses: promote
      with: { from: dev, to: prod }
YAML
done

# Best and median wall time of `$@` over $runs runs, in milliseconds.
measure() {
    local times=()
    for _ in $(seq "$runs"); do
        local start end
        start=$(date +%s%N)
        "$@" > /dev/null 2>"$work/err" || { echo "failed (exit $?): $*" >&2; cat "$work/err" >&2; exit 1; }
        end=$(date +%s%N)
        times+=($(( (end - start) / 1000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f\n", a[1]/1000, a[int((NR+1)/2)]/1000}'
}

echo "modelship validate ($bin), best/median of $runs runs"
read -r best med < <(measure "$bin" validate "$example") || exit 1
[ -n "$med" ] || exit 1
bench_note "validate 1 pipeline" "median $med ms, best $best ms over $runs runs (target < 20 ms)" >/dev/null
echo "one file (example pipeline):   best ${best} ms, median ${med} ms  target < 20 ms   ratio to target $(awk "BEGIN{printf \"%.3f\", $med/20}")"
read -r best med < <(measure "$bin" validate "$work"/p*.yaml) || exit 1
[ -n "$med" ] || exit 1
bench_note "validate 1,000 pipelines" "median $med ms, best $best ms over $runs runs (target < 1 s)" >/dev/null
echo "1,000 files, one invocation:   best ${best} ms, median ${med} ms  target < 1000 ms ratio to target $(awk "BEGIN{printf \"%.3f\", $med/1000}")"
ok=$("$bin" validate "$work"/p*.yaml 2>/dev/null | grep -c ': ok$' || true)
echo "generated files reported ok: $ok / 1000"
# Numbers for files that fail validation early would flatter the tool.
[ "$ok" = 1000 ] || { echo "generated pipelines are not all valid: fix the template above" >&2; exit 1; }
