# Shared by the benchmark scripts (sourced, not run): time both sides the
# same way and report them the same way.
#
# Each side is a whole process started from here under GNU time (start-up
# included); the sides alternate A B A B ... for $PAIRS pairs (at least 3),
# so a slow phase of the machine lands on both. A row gives the median of the
# per-pair ratios A/B, each side's min/median/max wall time and its peak RSS.
#
# A script defines, for each side X it names:
#   X_before   (optional) reset state before a run; not timed
#   X_cmd      sets the array CMD to the command to time
#   X_after    (optional) check the run's result (exit non-zero if wrong);
#              gets the run's stdout in $BENCH_OUT and stderr in $BENCH_ERR
# then calls `bench_pairs ROW_NAME A B TARGET_TEXT`.
# With BENCH_TABLE set (benches/run.sh), rows are appended there as TSV.
# BENCH_SERVER_PIDS (space-separated) names the servers both sides talk to;
# their CPU time during each run is recorded too, to show where time goes.

: "${PAIRS:=3}"
[ "$PAIRS" -ge 3 ] || { echo "PAIRS must be at least 3 (got $PAIRS)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "missing GNU time (/usr/bin/time): apt-get install time" >&2; exit 2; }

BENCH_WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelship-bench-lib.XXXXXX")"
BENCH_OUT="$BENCH_WORK/out"
BENCH_ERR="$BENCH_WORK/err"

# bench_once SIDE : one timed run; appends "wall rss_kib" to $BENCH_WORK/SIDE.
bench_once() {
  local side=$1
  if declare -F "${side}_before" >/dev/null; then "${side}_before"; fi
  CMD=()
  "${side}_cmd"
  local before
  before=$(bench_server_cpu)
  /usr/bin/time -v -o "$BENCH_WORK/time" "${CMD[@]}" >"$BENCH_OUT" 2>"$BENCH_ERR" || {
    echo "$side failed (exit $?): ${CMD[*]}" >&2
    tail -20 "$BENCH_ERR" >&2
    return 1
  }
  local server=$(( $(bench_server_cpu) - before ))
  if declare -F "${side}_after" >/dev/null; then "${side}_after" || { echo "$side: wrong result" >&2; return 1; }; fi
  python3 - "$BENCH_WORK/time" "$server" >>"$BENCH_WORK/$side" <<'PY'
import os, sys
wall = rss = None
cpu = 0.0
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("Elapsed (wall clock)"):
        parts = line.rsplit(" ", 1)[1].split(":")
        wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(parts)))
    elif line.startswith("Maximum resident set size"):
        rss = int(line.rsplit(" ", 1)[1])
    elif line.startswith(("User time (seconds)", "System time (seconds)")):
        cpu += float(line.rsplit(" ", 1)[1])
server = int(sys.argv[2]) / os.sysconf("SC_CLK_TCK")
print(f"{wall:.3f} {rss} {cpu:.2f} {server:.2f}")
PY
  echo "  $side: $(tail -1 "$BENCH_WORK/$side" | awk '{printf "%.3f s, peak RSS %.1f MiB, CPU %.2f s, servers CPU %.2f s", $1, $2/1024, $3, $4}')" >&2
}

# bench_pairs ROW A B TARGET : PAIRS alternating pairs, then one summary row.
bench_pairs() {
  local row=$1 a=$2 b=$3 target=$4 i
  rm -f "$BENCH_WORK/$a" "$BENCH_WORK/$b"
  echo "==> $row: $a vs $b, $PAIRS pairs (A B A B ...)" >&2
  for i in $(seq "$PAIRS"); do
    bench_once "$a"
    bench_once "$b"
  done
  bench_row "$row" "$a" "$b" "$target"
}

# bench_row ROW A B TARGET : the summary of runs already recorded.
bench_row() {
  python3 - "$1" "$2" "$3" "$4" "$BENCH_WORK/$2" "$BENCH_WORK/$3" "${BENCH_TABLE:-}" <<'PY'
import statistics as st, sys
row, a, b, target, fa, fb, table = sys.argv[1:8]
ra = [tuple(map(float, l.split())) for l in open(fa) if l.strip()]
rb = [tuple(map(float, l.split())) for l in open(fb) if l.strip()]
ratios = [x[0] / y[0] for x, y in zip(ra, rb)]
def side(runs):
    t = [r[0] for r in runs]
    cpu = st.median(r[2] for r in runs)
    srv = st.median(r[3] for r in runs)
    return f"{min(t):.3f}/{st.median(t):.3f}/{max(t):.3f}", f"{max(r[1] for r in runs) / 1024:.1f}", f"{cpu:.2f}, servers {srv:.2f}"
ta, ma, ca = side(ra)
tb, mb, cb = side(rb)
cells = [row, f"{st.median(ratios):.2f}", f"{a} {ta} (CPU {ca})", f"{ma}", f"{b} {tb} (CPU {cb})", f"{mb}", target]
print(f"{row}: median ratio {a}/{b} = {cells[1]} ({len(ratios)} pairs; target {target})")
print(f"  {a}: min/median/max {ta} s, median CPU (user+sys) {ca} s, peak RSS {ma} MiB")
print(f"  {b}: min/median/max {tb} s, median CPU (user+sys) {cb} s, peak RSS {mb} MiB")
if table:
    with open(table, "a") as f:
        f.write("\t".join(cells) + "\n")
PY
}

# bench_note ROW TEXT : a row without a peer (e.g. a repeat copy), for the table.
bench_note() {
  echo "$1: $2"
  [ -n "${BENCH_TABLE:-}" ] && printf '%s\t\t%s\t\t\t\t\n' "$1" "$2" >>"$BENCH_TABLE"
  return 0
}

# CPU ticks (user+sys) the servers in BENCH_SERVER_PIDS have used so far.
bench_server_cpu() {
  local total=0 p
  for p in ${BENCH_SERVER_PIDS:-}; do
    [ -r "/proc/$p/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}

bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_s3s_fs DIR : start s3s-fs (scripts/setup.d/20-s3.sh) on a free
# loopback port serving DIR/root with $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY,
# wait until it listens and create bucket `bench`; sets ENDPOINT, SERVER_PID
# and BENCH_SERVER_PIDS. The caller kills SERVER_PID when it is done.
bench_s3s_fs() {
  local dir=$1 tools="${MODELSHIP_TEST_TOOLS:-$HOME/.cache/modelship-test-tools}" port
  port="$(bench_free_port)"
  ENDPOINT="http://127.0.0.1:$port"
  mkdir -p "$dir/root"
  "$tools/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$dir/root" >"$dir/s3s-fs.log" 2>&1 &
  SERVER_PID=$!
  BENCH_SERVER_PIDS="$SERVER_PID"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  "$tools/moto/bin/python" -c 'import sys, boto3; boto3.client("s3", endpoint_url=sys.argv[1]).create_bucket(Bucket="bench")' "$ENDPOINT"
}
