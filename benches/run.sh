#!/usr/bin/env bash
# Every benchmark, then one table (Markdown) of their rows. Not part of the
# tests: run on demand on a machine doing nothing else, and quote its state.
#
#   benches/run.sh                 # 3 alternating pairs per benchmark
#   PAIRS=5 benches/run.sh
#   BENCHES="fetch image-copy" benches/run.sh
#   benches/run.sh --readme        # and rewrite the README's table with it
set -euo pipefail
cd "$(dirname "$0")/.."
README=""
case "${1:-}" in
  "") ;;
  --readme) README=README.md ;;
  *) echo "usage: benches/run.sh [--readme]" >&2; exit 2 ;;
esac
export BENCH_TABLE
BENCH_TABLE="$(mktemp "${TMPDIR:-/tmp}/modelship-bench-table.XXXXXX")"
trap 'rm -f "$BENCH_TABLE"' EXIT
echo "==> cargo build --release --bin modelship --examples" >&2
cargo build --release --quiet --bin modelship --example fetch_bench --example upload_bench
# One build for every script: building the binary alone would unify the
# dependencies' features differently and compile them all again.
export MODELSHIP_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/modelship"
for b in ${BENCHES:-validate fetch model-push build-upload image-copy}; do
  echo "==> benches/$b.sh" >&2
  if [ "$b" = validate ]; then
    benches/validate.sh "${CARGO_TARGET_DIR:-$PWD/target}/release/modelship"
  else
    "benches/$b.sh"
  fi
done

STATE="$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; ${PAIRS:-3} pairs per row; times in seconds (min/median/max; CPU = median user+sys of the process)"
TABLE="$(python3 - "$BENCH_TABLE" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| benchmark | median ratio | modelship | peak RSS MiB | peer | peak RSS MiB | target |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    r += [""] * (7 - len(r))
    print("| " + " | ".join(r[:7]) + " |")
PY
)"
printf '\n%s\n\n%s\n' "$STATE" "$TABLE"

if [ -n "$README" ]; then
  # The block between the markers is this script's output and nothing else.
  python3 - "$README" "$STATE" "$TABLE" <<'PY'
import sys
path, state, table = sys.argv[1:]
text = open(path).read()
start, end = "<!-- benches/run.sh:start -->", "<!-- benches/run.sh:end -->"
if text.count(start) != 1 or text.count(end) != 1:
    sys.exit(f"{path}: expected one `{start}` ... `{end}` block")
head, rest = text.split(start)
_, tail = rest.split(end)
open(path, "w").write(f"{head}{start}\n{state}:\n\n{table}\n{end}{tail}")
print(f"rewrote the benchmark table in {path}", file=sys.stderr)
PY
fi
