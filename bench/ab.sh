#!/usr/bin/env bash
# Two nanachat binaries, one scenario, runs alternating on fresh servers (SQLite, one process):
# did a change cost anything on the hot path? Prints each run and the medians.
#
#   bench/ab.sh BASELINE [CANDIDATE] [RUNS]
#
# BASELINE and CANDIDATE are paths to `nanachat` binaries (CANDIDATE: this tree's release
# build). The scenario is `nanachat bench fanout` with $BENCH_ARGS (default: 1 room, 1,000
# receivers, 100 B, 10 s after a 2 s warm-up); the load generator is always CANDIDATE's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
baseline=${1:?usage: bench/ab.sh BASELINE [CANDIDATE] [RUNS]}
candidate=${2:-}
runs=${3:-3}
if [ -z "$candidate" ]; then
  cargo build --release --quiet --bin nanachat
  candidate=$root/target/release/nanachat
fi
args=${BENCH_ARGS:---receivers 1000 --size 100 --duration 10s --warmup 2s}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in $(seq "$runs"); do
  for side in baseline candidate; do
    bin=$baseline; [ "$side" = candidate ] && bin=$candidate
    data=$(mktemp -d)
    "$bin" serve --addr 127.0.0.1:0 --data-dir "$data" --rate 1000000 --burst 1000000 \
      --max-connections 30000 --max-connections-per-ip 0 --connect-rate-per-ip 0 \
      --heartbeat 0 2>"$out/log" &
    pid=$!
    for _ in $(seq 400); do grep -q 'listening on' "$out/log" && break; sleep 0.05; done
    port=$(grep -oE 'listening on ws://127\.0\.0\.1:[0-9]+' "$out/log" | grep -oE '[0-9]+$')
    # shellcheck disable=SC2086
    "$candidate" bench fanout "ws://127.0.0.1:$port" $args --json -q >"$out/$side-$n.json" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
    echo "run $n, $side: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(round(r['deliveries_per_sec']), 'deliveries/s, p99', r['latency']['p99'], 'ms, lost', r['lost'], 'dup', r['duplicated'])" "$out/$side-$n.json")" >&2
  done
done
python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
med = {}
for side in ("baseline", "candidate"):
    rs = [json.load(open(f"{out}/{side}-{n}.json")) for n in range(1, runs + 1)]
    med[side] = (statistics.median(r["deliveries_per_sec"] for r in rs),
                 statistics.median(r["latency"]["p99"] for r in rs))
    print(f"{side}: median {med[side][0]:,.0f} deliveries/s, p99 {med[side][1]:.1f} ms")
print(f"candidate / baseline: {med['candidate'][0] / med['baseline'][0]:.2f}x deliveries/s")
PY
