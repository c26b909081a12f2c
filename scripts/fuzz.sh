#!/usr/bin/env bash
# Fuzz the pipeline parser, the template renderer and the webhook payload
# parser for a bounded time each (scripts/test.sh runs it with CI=true; it needs cargo-fuzz
# and minutes). Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60).
# Seeds come from fixtures/ (the hostile corpus and the good pipelines);
# new findings land in fuzz/artifacts/TARGET/. FUZZ_DEV=1 builds the targets
# without optimisation, FUZZ_SANITIZER=none without AddressSanitizer (both
# build faster; scripts/test.sh sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer); the machine has one
# stable toolchain, so let it accept them.
export RUSTC_BOOTSTRAP=1
seed() { # TARGET DIR...
  local corpus="fuzz/corpus/$1"; shift
  mkdir -p "$corpus"
  for dir in "$@"; do
    # Sizes in bytes: `-size -1M` rounds up to whole MiB and keeps only empty files.
    [ -d "$dir" ] && find "$dir" -type f -size -1048576c -exec cp -n {} "$corpus/" \;
  done
}
seed pipeline fixtures/hostile/pipelines fixtures/pipelines pipelines
seed template fixtures/hostile/templates
seed webhook fixtures/hostile/webhooks fixtures/webhooks
for target in pipeline template webhook; do
  echo "==> fuzz $target for ${secs}s"
  cargo fuzz run ${FUZZ_DEV:+--dev} ${FUZZ_SANITIZER:+--sanitizer "$FUZZ_SANITIZER"} --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=1024 -timeout=10
done
