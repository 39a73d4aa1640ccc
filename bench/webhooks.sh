#!/usr/bin/env bash
# Webhook delivery (issue 18): rate and lag to a local receiver. A fresh `nanachat serve`
# (SQLite) per run with --webhook-url pointing at bench/webhook_receiver.mjs (Node, checking
# every signature); `nanachat bench fanout` publishes into $ROOMS rooms for $DURATION s at
# $RATE messages/s per room (0: as fast as acks allow); then the outbox is waited for until it
# is empty. Prints per run: events stored, delivered (distinct ids), duplicates, bad
# signatures, events out of order in their room, delivery rate (distinct events / time from
# the first arrival to the last), lag (arrival minus the event's stored time) p50/p99/max, and
# the medians over the runs.
#
#   bench/webhooks.sh [RUNS]
#
# Environment: ROOMS=4 RATE=0 DURATION=5 OUT=target/bench-webhooks
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
rooms=${ROOMS:-4}; rate=${RATE:-0}; duration=${DURATION:-5}
out=${OUT:-$root/target/bench-webhooks}
mkdir -p "$out"
cargo build --release --quiet --bin nanachat
nanachat=$root/target/release/nanachat
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
receiver=
stop_receiver() {
  if [ -n "$receiver" ]; then kill -TERM "$receiver" 2>/dev/null || true; wait "$receiver" 2>/dev/null || true; receiver=; fi
}
trap 'stop_receiver; cleanup' EXIT

printf 'whsec-%s\n' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$tmp/hook-secret"
chmod 600 "$tmp/hook-secret"

metric() { # metric NAME: its (first) value on the server up now
  local host=${url#ws://}
  python3 - "$host" "$1" <<'PY'
import sys, urllib.request
page = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
name = sys.argv[2]
for line in page.splitlines():
    if line.startswith(name + "{") or line.startswith(name + " "):
        print(line.rsplit(" ", 1)[1]); break
PY
}

for n in $(seq "$runs"); do
  summary=$out/webhooks-$n.json
  rm -f "$summary" "$tmp/receiver.out"
  node bench/webhook_receiver.mjs "$tmp/hook-secret" "$summary" >"$tmp/receiver.out" &
  receiver=$!
  for _ in $(seq 200); do grep -qs listening "$tmp/receiver.out" && break; sleep 0.05; done
  port=$(awk '/listening/ {print $2}' "$tmp/receiver.out")
  rm -rf "$tmp/data"
  serve --data-dir "$tmp/data" --webhook-url "http://127.0.0.1:$port/hook" \
    --webhook-secret-file "$tmp/hook-secret"
  "$nanachat" bench fanout "$url" --rooms "$rooms" --receivers 1 --publishers 1 \
    --rate "$rate" --duration "${duration}s" --warmup 0s --json -q >"$out/fanout-$n.json" || true
  stored=$(metric nanachat_store_jobs_total)
  for _ in $(seq 1200); do
    [ "$(metric nanachat_webhook_pending)" = 0 ] && break
    sleep 0.1
  done
  delivered=$(metric nanachat_webhook_delivered_total)
  stop
  stop_receiver
  python3 - "$summary" "$stored" "$delivered" "$rooms" "$rate" "$duration" <<'PY' >&2
import json, sys
s = json.load(open(sys.argv[1]))
load = open("/proc/loadavg").read().split()[0]
secs = max(s["last_ms"] - s["first_ms"], 1) / 1000
print(f"run (load average {load}; {sys.argv[4]} rooms, rate {sys.argv[5]}/room, {sys.argv[6]} s): "
      f"{s['distinct']} events delivered (server counted {sys.argv[3]}; store jobs {sys.argv[2]}), "
      f"{s['events'] - s['distinct']} duplicates, {s['bad_signatures']} bad signatures, "
      f"{s['out_of_order']} out of order; {s['distinct'] / secs:,.0f} events/s; "
      f"lag p50 {s['lag_ms']['p50']} ms, p99 {s['lag_ms']['p99']} ms, max {s['lag_ms']['max']} ms")
PY
done

python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
rs = [json.load(open(f"{sys.argv[1]}/webhooks-{n}.json")) for n in range(1, int(sys.argv[2]) + 1)]
rate = statistics.median(r["distinct"] / (max(r["last_ms"] - r["first_ms"], 1) / 1000) for r in rs)
p50 = statistics.median(r["lag_ms"]["p50"] for r in rs)
p99 = statistics.median(r["lag_ms"]["p99"] for r in rs)
print(f"median of {len(rs)} runs: {rate:,.0f} events/s delivered, lag p50 {p50} ms, p99 {p99} ms")
PY
