#!/usr/bin/env bash
# The webhook server under a burst: N signed GitHub push deliveries (default
# 1,000) spread over SECS seconds (default 60) to a real `modelship serve`
# whose runs are real engine runs (fetch from files, render) into a state
# directory. Half the deliveries are duplicates of the other half (sent
# again at a random later moment), 10% of the ids are for an unknown
# repository and 10% are badly signed; --max-parallel bounds the runs.
# Prints the answers by status, p50/p99 answer time, the runs started and
# recorded (runs of the one model queued behind a running one are superseded
# by the next delivery), and the server's peak RSS (/usr/bin/time -v).
# Usage: MODELSHIP_BIN=target/release/modelship benches/webhook-load.sh [N] [SECS] [MAX_PARALLEL]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000}"
secs="${2:-60}"
parallel="${3:-2}"
bin="${MODELSHIP_BIN:-target/release/modelship}"
[ -x "$bin" ] || { echo "no $bin: cargo build --release (or set MODELSHIP_BIN)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed for the peak RSS" >&2; exit 2; }
work="$(mktemp -d)"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

# A checkout: c0 adds the pipeline, c1 changes the model it watches.
repo="$work/repo"
mkdir -p "$repo/pipelines" "$repo/models/weather"
cp -r fixtures/weather-model/. "$repo/models/weather/"
cat > "$repo/pipelines/weather.yaml" <<EOF
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {name: weather}
spec:
  model: {name: weather, source: 'file://$repo/models/weather/'}
  environments: {dev: {namespace: models-dev}}
  state: {keepRuns: 100000}
  stages:
    - {name: fetch, uses: fetch-model}
    - {name: render, uses: render, with: {modelClass: MyModel}}
  triggers:
    push: {branches: [main], paths: ["models/weather/**"]}
EOF
git -C "$repo" init -q -b main
git -C "$repo" remote add origin https://github.com/example/models.git
git -C "$repo" -c user.name=bench -c user.email=bench@example.com add pipelines
git -C "$repo" -c user.name=bench -c user.email=bench@example.com commit -qm pipelines
c0="$(git -C "$repo" rev-parse HEAD)"
git -C "$repo" -c user.name=bench -c user.email=bench@example.com add models
git -C "$repo" -c user.name=bench -c user.email=bench@example.com commit -qm model
c1="$(git -C "$repo" rev-parse HEAD)"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
secret="bench-$(date +%s%N)"
printf '%s' "$secret" > "$work/secret"
/usr/bin/time -v -o "$work/time.txt" "$bin" --log-format json serve --listen "127.0.0.1:$port" \
  --repo "$repo" --pipelines "$repo/pipelines" --secret-file "$work/secret" --no-fetch \
  --state-dir "$work/state" --max-parallel "$parallel" --max-queued-runs 100000 \
  > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

python3 - "$port" "$secret" "$n" "$secs" "$c0" "$c1" "$work/state" <<'EOF'
import hashlib, hmac, http.client, json, os, random, sys, threading, time
port, secret, n, secs, c0, c1, state = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:]
fixture = json.load(open("fixtures/webhooks/github/push.recorded-pac-main-2-commits.json"))
fixture.update({"ref": "refs/heads/main", "before": c0, "after": c1, "created": False, "deleted": False})
good = json.dumps(fixture).replace("openshift-pipelines/pipelines-as-code", "example/models").encode()
foreign = json.dumps(fixture).replace("openshift-pipelines/pipelines-as-code", "someone/else").encode()
rng = random.Random(21)
ids = n // 2
# (time to send, id, kind): each id once, then its duplicate later.
plan = []
for i in range(ids):
    kind = "badsig" if i % 10 == 0 else "foreign" if i % 10 == 1 else "push"
    t = rng.uniform(0, secs * 0.8)
    plan.append((t, i, kind))
    plan.append((rng.uniform(t, secs), i, kind))
plan += [(rng.uniform(0, secs), ids + j, "push") for j in range(n - 2 * ids)]
plan.sort()
results, lock = [], threading.Lock()
def send(i, kind):
    body = foreign if kind == "foreign" else good
    key = b"not-the-secret" if kind == "badsig" else secret
    sig = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
               "X-GitHub-Delivery": f"load-{i}", "X-Hub-Signature-256": sig}
    start = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
        c.request("POST", "/hooks/github", body, headers)
        status = c.getresponse().status
        c.close()
    except Exception as e:
        status = f"error {type(e).__name__}"
    with lock:
        results.append((status, time.monotonic() - start, i, kind))
threads, t0 = [], time.monotonic()
for at, i, kind in plan:
    delay = at - (time.monotonic() - t0)
    if delay > 0:
        time.sleep(delay)
    th = threading.Thread(target=send, args=(i, kind)); th.start(); threads.append(th)
for th in threads:
    th.join()
sent_for = time.monotonic() - t0
by_status = {}
for s, _, _, _ in results:
    by_status[s] = by_status.get(s, 0) + 1
lat = sorted(r[1] for r in results)
pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000
accepted_ids = [r[2] for r in results if r[0] == 202]
print(f"sent {len(results)} deliveries in {sent_for:.1f} s ({ids} ids each twice); answers: {dict(sorted(by_status.items(), key=str))}")
print(f"accepted {len(accepted_ids)} (ids accepted twice: {len(accepted_ids) - len(set(accepted_ids))}); refused {len(results) - len(accepted_ids)}")
print(f"answer time p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, max {lat[-1]*1000:.1f} ms")
# Wait for the runs to finish (bounds a hang; times nothing).
for _ in range(6000):
    m = http.client.HTTPConnection("127.0.0.1", int(port)); m.request("GET", "/metrics")
    text = m.getresponse().read().decode(); m.close()
    vals = {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines() if l and not l.startswith("#")}
    if vals.get("modelship_runs_queued", 1) == 0 and vals.get("modelship_runs_running", 1) == 0:
        break
    time.sleep(0.5)
get = lambda what: int(vals.get('modelship_runs_%s_total{pipeline="weather"}' % what, 0))
records = len([f for f in os.listdir(os.path.join(state, "runs", "weather")) if f.endswith(".yaml") and not f.startswith(".")]) if os.path.isdir(os.path.join(state, "runs", "weather")) else 0
# One model: a queued run is superseded by the next delivery's and never starts.
print(f"runs started {get('started')}, succeeded {get('succeeded')}, failed {get('failed')}, superseded {get('superseded')}; run records in the state dir {records}")
if records + get('superseded') != len(accepted_ids):
    print(f"MISMATCH: {len(accepted_ids)} accepted deliveries but {records} run records and {get('superseded')} superseded")
    sys.exit(1)
EOF
# SIGTERM to modelship itself (time(1) would not pass it on).
kill -TERM "$(ps -o pid= --ppid "$server" | tr -d ' ')"
wait "$server" || true
server=""
echo "serve peak RSS: $(awk -F': ' '/Maximum resident set size/ {printf "%.1f MiB", $2/1024}' "$work/time.txt")"
