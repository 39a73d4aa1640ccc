#!/usr/bin/env bash
# A reaction burst (issue 17): $MEMBERS members join one room, one message is said, then every
# member reacts to it once, the reactions spread over $SPREAD s; every member gets every
# reaction (MEMBERS² deliveries). `nanachat bench react` on a fresh `nanachat serve` per run:
# deliveries/s, latency from when each reaction was due to each receipt, acks, errors, and the
# store's commits during the burst (from /metrics). SQLite, and PostgreSQL (started here on
# loopback in a throw-away directory, stopped at the end). Prints each run and the medians.
#
#   bench/react.sh [sqlite|postgres|all] [RUNS]
#
# Environment: MEMBERS=1000 SPREAD=1 WARMUP=1 OUT=target/bench-react
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
runs=${2:-3}
members=${MEMBERS:-1000}; spread=${SPREAD:-1}; warmup=${WARMUP:-1}
out=${OUT:-$root/target/bench-react}
mkdir -p "$out"
cargo build --release --quiet --bin nanachat
nanachat=$root/target/release/nanachat
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# burst STORE N: one run on the server up now.
burst() {
  local report=$out/react-$1-$2.json
  "$nanachat" bench react "$url" --receivers "$members" --duration "${spread}s" \
    --warmup "${warmup}s" --label "$1" --json -q >"$report" || true
  python3 - "$report" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
load = open("/proc/loadavg").read().split()[0]
print(f"{r['label']} run (load average {load}): {r['deliveries_per_sec']:,.0f} deliveries/s in {r['seconds']:.2f} s, "
      f"p50 {r['latency']['p50']} ms, p99 {r['latency']['p99']} ms, acked {r['acked']}, errors {r['errors']}, "
      f"lost {r['lost']}, commits {r.get('store_commits')} for {r.get('store_jobs')} jobs, "
      f"{r.get('store_commit_ms') or 0:.0f} ms committing")
PY
}

stores=()
if [ "$what" = sqlite ] || [ "$what" = all ]; then stores+=(sqlite); fi
if [ "$what" = postgres ] || [ "$what" = all ]; then
  stores+=(postgres)
  start_postgres max_connections=200
fi
# Runs alternate between the stores, so that drift in the machine's load hits both.
for n in $(seq "$runs"); do
  for store in "${stores[@]}"; do
    if [ "$store" = sqlite ]; then
      rm -rf "$tmp/data"
      serve --data-dir "$tmp/data"
    else
      psql -q -X -d "$pg" -c "SET client_min_messages = warning;" -c 'DROP SCHEMA public CASCADE' \
        -c 'CREATE SCHEMA public' >/dev/null
      serve --store "$pg"
    fi
    burst "$store" "$n"
    stop
  done
done

python3 - "$out" "$runs" "${stores[@]}" <<'PY'
import json, statistics, sys
out, runs, stores = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("| store | deliveries/s (runs) | median | burst s | p50 / p99 ms (median) | acked | errors | lost / dup | store commits (runs) | ms committing (median) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for store in stores:
    rs = [json.load(open(f"{out}/react-{store}-{n}.json")) for n in range(1, runs + 1)]
    med = lambda f: statistics.median(f(r) for r in rs)
    each = " · ".join(f"{r['deliveries_per_sec']:,.0f}" for r in rs)
    print(f"| {store} | {each} | "
          f"{med(lambda r: r['deliveries_per_sec']):,.0f} | {med(lambda r: r['seconds']):.2f} | "
          f"{med(lambda r: r['latency']['p50']):.1f} / "
          f"{med(lambda r: r['latency']['p99']):.1f} | {min(r['acked'] for r in rs)} | "
          f"{max(r['errors'] for r in rs)} | {max(r['lost'] for r in rs)} / {max(r['duplicated'] for r in rs)} | "
          f"{' · '.join(str(r.get('store_commits')) for r in rs)} | "
          f"{med(lambda r: r.get('store_commit_ms') or 0):,.0f} |")
PY
