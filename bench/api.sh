#!/usr/bin/env bash
# HTTP publish against WebSocket publish (issue 18): one room of $RECEIVERS WebSocket receivers
# on SQLite; the room's messages come from
#   ws      1 WebSocket publisher with a window of 32 unacked `say`s (the protocol's way),
#   http1   1 HTTP publisher: `POST /api/v1/rooms/ROOM/messages`, one at a time, kept alive,
#   http16  16 HTTP publishers, each one request at a time (a backend's worker pool).
# `nanachat bench fanout` (--api-key for the HTTP ones) on a fresh `nanachat serve` per run,
# the three alternating; messages/s acked, deliveries/s, latency from send to each receipt.
# Prints each run and the medians.
#
#   bench/api.sh [RUNS]
#
# Environment: RECEIVERS=1000 SECONDS_PER_RUN=10 WARMUP=2 OUT=target/bench-api
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
receivers=${RECEIVERS:-1000}; seconds=${SECONDS_PER_RUN:-10}; warmup=${WARMUP:-2}
out=${OUT:-$root/target/bench-api}
mkdir -p "$out"
cargo build --release --quiet --bin nanachat
nanachat=$root/target/release/nanachat
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
key=bench-api-key-$(date +%s%N)
printf '%s\n' "$key" >"$tmp/keys"; chmod 600 "$tmp/keys"

for n in $(seq "$runs"); do
  for how in ws http1 http16; do
    rm -rf "$tmp/data"
    serve --data-dir "$tmp/data" --api-key-file "$tmp/keys"
    case $how in
      ws) extra=() ;;
      http1) extra=(--api-key "$key") ;;
      http16) extra=(--api-key "$key" --publishers 16) ;;
    esac
    "$nanachat" bench fanout "$url" --receivers "$receivers" --size 100 \
      --duration "${seconds}s" --warmup "${warmup}s" --label "$how" "${extra[@]}" \
      --json -q >"$out/$how-$n.json" || true
    stop
    python3 - "$out/$how-$n.json" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['label']} run: {r['messages_per_sec']:,.0f} messages/s, {r['deliveries_per_sec']:,.0f} deliveries/s, "
      f"p50 {r['latency']['p50']} ms, p99 {r['latency']['p99']} ms, lost {r['lost']}, dup {r['duplicated']}, errors {r['errors']}")
PY
  done
done
python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
for how in ["ws", "http1", "http16"]:
    rs = [json.load(open(f"{out}/{how}-{n}.json")) for n in range(1, runs + 1)]
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"{how}: median {med(lambda r: r['messages_per_sec']):,.0f} messages/s, "
          f"{med(lambda r: r['deliveries_per_sec']):,.0f} deliveries/s, "
          f"p50 {med(lambda r: r['latency']['p50'])} ms, p99 {med(lambda r: r['latency']['p99'])} ms")
PY
