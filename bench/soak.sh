#!/usr/bin/env bash
# Soak: clients chatting on one `nanachat serve` for a while — steady fan-out traffic plus
# connections coming and going — while the server's RSS and open files are sampled. Fails if
# either keeps growing: the median of the last third of the samples against the first third
# (after a warm-up), RSS by more than 20 % and 4 MiB, open files by more than 16.
#
#   bench/soak.sh [SECONDS=600] [RECEIVERS=200] [RATE=20]     (PROFILE=debug for a quick run)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-600}; receivers=${2:-200}; rate=${3:-20}
profile=${PROFILE:-release}
if [ "$profile" = release ]; then cargo build --release --quiet --bin nanachat; else cargo build --quiet --bin nanachat; fi
nanachat=$root/target/$profile/nanachat
work=$(mktemp -d)
log=$work/serve.log
# Every client is on 127.0.0.1: no per-address limits.
"$nanachat" serve --addr 127.0.0.1:0 --data-dir "$work/data" --rate 1000 --burst 1000 \
  --max-connections-per-ip 0 --connect-rate-per-ip 0 2>"$log" &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 200); do grep -q 'listening on' "$log" && break; sleep 0.05; done
url=ws://$(grep -oE '127\.0\.0\.1:[0-9]+' "$log" | head -n1)

# Steady traffic for the whole run, and churn: 50 connections opened and closed, again and again.
"$nanachat" bench fanout "$url" --receivers "$receivers" --rate "$rate" --duration "${seconds}s" \
  --warmup 0s -q --json >"$work/fanout.json" &
traffic=$!
(
  end=$((SECONDS + seconds))
  while [ $SECONDS -lt $end ]; do
    "$nanachat" bench connect "$url" --connections 50 --duration 0.5s -q --json >/dev/null || exit 1
  done
) &
churn=$!

samples=$work/samples
every=$(( seconds / 30 > 0 ? seconds / 30 : 1 ))
end=$((SECONDS + seconds))
while [ $SECONDS -lt $end ]; do
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status")
  fds=$(ls "/proc/$server/fd" | wc -l)
  echo "$SECONDS $rss $fds" >>"$samples"
  sleep "$every"
done
wait "$churn"
wait "$traffic" || { echo "soak: the traffic run failed:"; cat "$work/fanout.json"; exit 1; }

python3 - "$samples" "$work/fanout.json" <<'PY'
import json, statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
rows = rows[len(rows) // 5:]                     # the first fifth is warm-up
third = max(1, len(rows) // 3)
first, last = rows[:third], rows[-third:]
rss0, rss1 = (statistics.median(r[1] for r in part) for part in (first, last))
fd0, fd1 = (statistics.median(r[2] for r in part) for part in (first, last))
report = json.load(open(sys.argv[2]))
print(f"soak: {len(rows)} samples; RSS {rss0/1024:.1f} -> {rss1/1024:.1f} MiB; open files {fd0:.0f} -> {fd1:.0f}; "
      f"{report['deliveries']} deliveries, lost {report['lost']}, duplicated {report['duplicated']}")
bad = []
if rss1 > rss0 * 1.2 and rss1 - rss0 > 4096:
    bad.append("RSS keeps growing")
if fd1 - fd0 > 16:
    bad.append("open files keep growing")
if report["lost"] or report["duplicated"]:
    bad.append("messages lost or duplicated")
if bad:
    print("soak: FAILED: " + ", ".join(bad), file=sys.stderr)
    sys.exit(1)
PY
