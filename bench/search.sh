#!/usr/bin/env bash
# Search over a large stored history (issue 17): a store filled with $MESSAGES messages over
# $ROOMS rooms (examples/search_seed.rs: made-up words from a Zipf vocabulary of 5,000, 5 to 30
# a message, and 1,000 rare words a dozen messages each), one `nanachat serve` on it, and
# `nanachat bench search` sending the seed's 120 queries (common words, rare words, two words;
# over all of the user's rooms and in one room) one at a time, timing each reply per kind.
# Every query is checked first against what the seed knows it must find. SQLite (FTS5) and
# PostgreSQL (tsvector + GIN; started here on loopback in a throw-away directory, stopped at
# the end).
#
#   bench/search.sh [sqlite|postgres|all] [RUNS]
#
# Environment: MESSAGES=1000000 ROOMS=100 CONNECTIONS=1 SECONDS_PER_RUN=20 WARMUP=5
# OUT=target/bench-search
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
runs=${2:-3}
messages=${MESSAGES:-1000000}; rooms=${ROOMS:-100}; connections=${CONNECTIONS:-1}
seconds=${SECONDS_PER_RUN:-20}; warmup=${WARMUP:-5}
out=${OUT:-$root/target/bench-search}
mkdir -p "$out"
cargo build --release --quiet --bin nanachat --example search_seed
nanachat=$root/target/release/nanachat
seed=$root/target/release/examples/search_seed
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# measure STORE: the runs against the server up now.
measure() {
  for n in $(seq "$runs"); do
    report=$out/search-$1-$n.json
    "$nanachat" bench search "$url" --connections "$connections" --nick searcher \
      --key search-bench --queries "$out/queries.jsonl" --duration "${seconds}s" \
      --warmup "${warmup}s" --label "$1" --json -q >"$report"
    python3 - "$report" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
wrong = sum(1 for c in r["checks"] if c["wrong"])
load = open("/proc/loadavg").read().split()[0]
print(f"{r['label']} run (load average {load}): {r['deliveries_per_sec']:.0f} queries/s, p50 {r['latency']['p50']} ms, "
      f"p99 {r['latency']['p99']} ms; {len(r['checks'])} queries checked, {wrong} wrong")
PY
  done
}

if [ "$what" = sqlite ] || [ "$what" = all ]; then
  echo "seeding SQLite: $messages messages in $rooms rooms" >&2
  "$seed" "$tmp/sqlite" --messages "$messages" --rooms "$rooms" --nick searcher \
    --queries "$out/queries.jsonl" >"$out/seed-sqlite.json"
  serve --data-dir "$tmp/sqlite"
  measure sqlite
  stop
  rm -rf "$tmp/sqlite"
fi

if [ "$what" = postgres ] || [ "$what" = all ]; then
  start_postgres
  store=$pg
  echo "seeding PostgreSQL: $messages messages in $rooms rooms" >&2
  "$seed" "$store" --messages "$messages" --rooms "$rooms" --nick searcher \
    --queries "$out/queries.jsonl" >"$out/seed-postgres.json"
  serve --store "$store"
  measure postgres
  stop
fi

python3 - "$out" "$runs" "$what" <<'PY'
import json, os, statistics, sys
out, runs, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stores = ["sqlite", "postgres"] if what == "all" else [what]
queries = [json.loads(l) for l in open(f"{out}/queries.jsonl") if l.strip()]
kinds = list(dict.fromkeys(q["kind"] for q in queries))
hits = {k: statistics.median(q["expect"] for q in queries if q["kind"] == k) for k in kinds}
mib = lambda b: f"{b / 2**20:,.1f} MiB"
for store in stores:
    seed = json.load(open(f"{out}/seed-{store}.json"))
    rs = [json.load(open(f"{out}/search-{store}-{n}.json")) for n in range(1, runs + 1)]
    print(f"\n{store}: {seed['messages']:,} messages in {seed['rooms']} rooms, seeded in "
          f"{seed['seconds']:.0f} s (rows {seed['rows_seconds']:.0f} s, index {seed['index_seconds']:.0f} s)")
    if store == "sqlite":
        print(f"  index {mib(seed['index_bytes'])} (FTS5 {mib(seed['fts_bytes'])}, search_docs "
              f"{mib(seed['search_docs_bytes'])}); messages {mib(seed['messages_bytes'])}; file {mib(seed['file_bytes'])}")
    else:
        print(f"  GIN index {mib(seed['index_bytes'])}; tsvector column {mib(seed['tsv_column_bytes'])}; "
              f"messages heap {mib(seed['messages_heap_bytes'])}, with indexes and TOAST {mib(seed['messages_total_bytes'])}")
    wrong = sum(1 for r in rs for c in r["checks"] if c["wrong"])
    print(f"  {statistics.median(r['deliveries_per_sec'] for r in rs):,.1f} queries/s "
          f"({len(rs)} runs, median); checks wrong: {wrong}")
    print(f"  | kind | matches (median) | p50 ms | p99 ms | queries a run |")
    print(f"  |---|---:|---:|---:|---:|")
    for k in kinds:
        ps = [dict(r["kinds"])[k] for r in rs if k in dict(r["kinds"])]
        if not ps:
            continue
        p50 = statistics.median(p["p50"] for p in ps)
        p99 = statistics.median(p["p99"] for p in ps)
        n = statistics.median(p["count"] for p in ps)
        print(f"  | {k} | {hits[k]:,.0f} | {p50:.2f} | {p99:.2f} | {n:,.0f} |")
    allp = [r["latency"] for r in rs]
    print(f"  | all | | {statistics.median(p['p50'] for p in allp):.2f} | "
          f"{statistics.median(p['p99'] for p in allp):.2f} | {statistics.median(p['count'] for p in allp):,.0f} |")
PY
