#!/usr/bin/env bash
# Install everything the tests need (idempotent), then run every test.
# Usage: scripts/test.sh [extra cargo-nextest args]
# Fuzzing: with CI=true (or MODELSHIP_FUZZ_SECS=N) each fuzz target runs for
# 20 s (N s) after the build and before the tests, seeded from
# fixtures/hostile/ (scripts/fuzz.sh); MODELSHIP_FUZZ_SECS=0 skips it. A
# finding fails the script, but only after the tests ran, so the output still
# ends with nextest's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
export MODELSHIP_TEST_TOOLS="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}"
mkdir -p "$MODELSHIP_TEST_TOOLS"
for script in scripts/setup.d/*.sh; do
  [ -e "$script" ] || continue
  echo "==> setup: $script"
  bash "$script"
done
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# Tests known to fail after the first integration of parallel branches, each
# tracked for repair; listed loudly so nobody mistakes them for passing.
filter=()
if [ -s scripts/quarantine.txt ]; then
  expr=""
  while read -r name _; do
    case "$name" in ''|'#'*) continue ;; esac
    expr="${expr:+$expr | }test(=$name)"
  done < scripts/quarantine.txt
  if [ -n "$expr" ]; then
    echo "==> QUARANTINED (known failing, not run): $(grep -vc '^#' scripts/quarantine.txt) tests, see scripts/quarantine.txt"
    filter=(-E "not ($expr)")
  fi
fi
# Build first, so the fresh-clone check below reuses the dependencies built
# here and compiles only modelship itself.
echo "==> cargo nextest run --no-run"
cargo nextest run --workspace --all-targets --no-run
# The production build (no `sim` feature) compiles without the openshift-sim
# crate: only the `sim` commands may use it, and this makes it an error.
echo "==> cargo check --no-default-features --lib --bins"
cargo check -p modelship --no-default-features --lib --bins
# A fresh clone in an empty directory passes the schema tests: no test reads
# outside the repository (quarantined tests are left out there too).
scripts/fresh-clone-check.sh "${filter[@]}"
fuzz_secs="${MODELSHIP_FUZZ_SECS:-}"
if [ -z "$fuzz_secs" ] && [ "${CI:-}" = "true" ]; then fuzz_secs=20; fi
fuzz_failed=0
if [ -n "$fuzz_secs" ] && [ "$fuzz_secs" != 0 ]; then
  # A debug build without debug info or AddressSanitizer (safe Rust; the C
  # in the dependencies is not instrumented either way): the fuzz targets
  # need their own build of every dependency, and this is the quickest one;
  # 20 s of fuzzing does not need the speed of a release build.
  if FUZZ_DEV=1 FUZZ_SANITIZER=none CARGO_PROFILE_DEV_DEBUG=0 scripts/fuzz.sh "$fuzz_secs"; then
    echo "==> fuzz: no finding in ${fuzz_secs}s per target"
  else
    fuzz_failed=1
    echo "==> FUZZ FAILED: see the output above and fuzz/artifacts/ (the tests run anyway)"
  fi
fi
echo "==> cargo nextest run"
if [ "$fuzz_failed" = 0 ]; then
  exec cargo nextest run --workspace --all-targets --no-fail-fast "${filter[@]}" "$@"
fi
# Nothing is printed after nextest: its summary stays the last line.
cargo nextest run --workspace --all-targets --no-fail-fast "${filter[@]}" "$@" || true
exit 1
