#!/usr/bin/env bash
# nanachat as 1, 2 and 4 processes on one PostgreSQL and one Redis (docs/scaling.md), sharing
# one port with --reuse-port, on this machine: fan-out and latency of one room whose receivers
# the kernel spreads over the processes; then many idle connections held by several processes,
# with the servers' RSS per connection. PostgreSQL and Redis are started here, on loopback, in
# a throw-away directory, and stopped at the end.
#
#   bench/scale.sh [fanout|idle|rooms|all] [RUNS]
#
# rooms: $ROOM_PROCS processes on ports of their own, each holding $ROOMS rooms nobody else
# holds ($ROOM_RECEIVERS receivers and one publisher each, as fast as they drain), all at once:
# the cluster's deliveries/s, and each process's broker intake (messages received from Redis)
# against all that was published. With COMPARE=/path/to/another/nanachat (a release with one
# channel for all rooms, say) the same runs alternate with that binary.
#
# Environment: PROCS="1 2 4" RECEIVERS=1000 SECONDS_PER_RUN=10 WARMUP=2 RATE=50
# ROOM_PROCS=4 ROOMS=40 ROOM_RECEIVERS=10 COMPARE=(unset)
# IDLE=100000 IDLE_PROCS=6 OUT=target/bench-scale, PORT=18765 (the processes' shared port:
# below the ephemeral range, so no client socket of an earlier run can hold it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
runs=${2:-3}
procs_list=${PROCS:-1 2 4}; receivers=${RECEIVERS:-1000}; seconds=${SECONDS_PER_RUN:-10}
warmup=${WARMUP:-2}; rate=${RATE:-50}; idle=${IDLE:-100000}; idle_procs=${IDLE_PROCS:-6}
room_procs=${ROOM_PROCS:-4}; rooms=${ROOMS:-40}; room_receivers=${ROOM_RECEIVERS:-10}
compare=${COMPARE:-}
port=${PORT:-18765}
out=${OUT:-$root/target/bench-scale}
mkdir -p "$out"
scripts/setup-services
cargo build --release --quiet --bin nanachat
nanachat=$root/target/release/nanachat

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres "$tmp"; as_pg=(runuser -u postgres --); fi
pg_port=$(free_port); redis_port=$(free_port)
"${as_pg[@]}" "$pg_bin/initdb" -A trust -U nanachat -E UTF8 -D "$tmp/data" >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w start \
  -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!
store=postgres://nanachat@127.0.0.1:$pg_port/postgres
broker=redis://127.0.0.1:$redis_port/
pids=()
stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_servers
  kill "$redis_pid" 2>/dev/null || true
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 200); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $redis_port))" 2>/dev/null && break; sleep 0.05; done

url=
# start N: a fresh database and Redis, then N processes on one port; sets url and pids.
start() {
  psql -q -X -d "$store" -c "SET client_min_messages = warning;" -c 'DROP SCHEMA public CASCADE' -c 'CREATE SCHEMA public' >/dev/null
  redis-cli -p "$redis_port" FLUSHALL >/dev/null
  local log
  for i in $(seq "$1"); do
    log=$tmp/serve-$i.log
    "$nanachat" serve --addr "127.0.0.1:$port" --reuse-port --store "$store" --broker "$broker" \
      --rate 1000000 --burst 1000000 --max-connections 19500 --max-connections-per-ip 0 \
      --connect-rate-per-ip 0 --heartbeat 0 2>"$log" &
    pids+=($!)
    for _ in $(seq 400); do grep -q 'listening on' "$log" && break; sleep 0.05; done
    grep -q 'listening on' "$log" || { cat "$log" >&2; exit 1; }
  done
  url=ws://127.0.0.1:$port
}

summary() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(round(r.get('deliveries_per_sec',0)), 'deliveries/s, p99', r.get('latency',{}).get('p99'), 'ms, lost', r.get('lost'), 'dup', r.get('duplicated'))" "$1"; }

if [ "$what" = fanout ] || [ "$what" = all ]; then
  for n in $(seq "$runs"); do
    for procs in $procs_list; do
      for scenario in fanout latency; do
        start "$procs"
        extra=(); [ "$scenario" = latency ] && extra=(--rate "$rate")
        report=$out/$scenario-$procs-$n.json
        "$nanachat" bench fanout "$url" --receivers "$receivers" --duration "${seconds}s" \
          --warmup "${warmup}s" "${extra[@]}" --label "nanachat x$procs" --json -q >"$report" || true
        stop_servers
        [ -s "$report" ] || echo '{}' >"$report"
        echo "$scenario run $n, $procs process(es): $(summary "$report")" >&2
      done
    done
  done
fi

if [ "$what" = rooms ] || [ "$what" = all ]; then
  metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2; exit}'; }
  bins=("this=$nanachat"); [ -n "$compare" ] && bins+=("compare=$compare")
  for n in $(seq "$runs"); do
    for entry in "${bins[@]}"; do
      label=${entry%%=*}; bin=${entry#*=}
      psql -q -X -d "$store" -c "SET client_min_messages = warning;" -c 'DROP SCHEMA public CASCADE' -c 'CREATE SCHEMA public' >/dev/null
      redis-cli -p "$redis_port" FLUSHALL >/dev/null
      ports=()
      for i in $(seq "$room_procs"); do
        log=$tmp/rooms-$i.log
        "$bin" serve --addr 127.0.0.1:0 --store "$store" --broker "$broker" --rate 1000000 \
          --burst 1000000 --max-connections-per-ip 0 --connect-rate-per-ip 0 --heartbeat 0 2>"$log" &
        pids+=($!)
        for _ in $(seq 400); do grep -q 'listening on' "$log" && break; sleep 0.05; done
        grep -q 'listening on' "$log" || { cat "$log" >&2; exit 1; }
        ports+=("$(grep -oE 'listening on ws://127\.0\.0\.1:[0-9]+' "$log" | head -n1 | grep -oE '[0-9]+$')")
      done
      benches=()
      for i in "${!ports[@]}"; do
        "$nanachat" bench fanout "ws://127.0.0.1:${ports[$i]}" --rooms "$rooms" \
          --receivers "$room_receivers" --duration "${seconds}s" --warmup "${warmup}s" \
          --label "$label" --json -q >"$out/rooms-$label-$n-$i.json" &
        benches+=($!)
      done
      for b in "${benches[@]}"; do wait "$b" || true; done
      intake=$tmp/intake-$label-$n
      : >"$intake"
      for p in "${ports[@]}"; do
        echo "$(metric "$p" nanachat_cluster_published_total) $(metric "$p" nanachat_cluster_received_total)" >>"$intake"
      done
      stop_servers
      python3 - "$out" "$label" "$n" "$intake" <<'PY'
import glob, json, sys
out, label, n, intake = sys.argv[1:5]
reports = []
for path in sorted(glob.glob(f"{out}/rooms-{label}-{n}-*.json")):
    try:
        reports.append(json.load(open(path)))
    except ValueError:
        reports.append({})
rows = [tuple(int(float(x or 0)) for x in line.split()) for line in open(intake) if line.strip()]
published = sum(p for p, _ in rows)
received = [r for _, r in rows]
summary = {
    "label": label,
    "deliveries_per_sec": sum(r.get("deliveries_per_sec", 0) for r in reports),
    "lost": sum(r.get("lost", 0) for r in reports),
    "duplicated": sum(r.get("duplicated", 0) for r in reports),
    "published": published,
    "received_per_process": received,
}
json.dump(summary, open(f"{out}/rooms-{label}-{n}.json", "w"))
share = max(received) / published if published else 0
print(f"rooms run {n}, {label}: {summary['deliveries_per_sec']:,.0f} deliveries/s, published {published:,}, "
      f"received per process {received} (at most {share:.1%} of all), lost {summary['lost']} dup {summary['duplicated']}",
      file=sys.stderr)
PY
    done
  done
fi

if [ "$what" = idle ] || [ "$what" = all ]; then
  for n in $(seq "$runs"); do
    start "$idle_procs"
    rss() { ps -o rss= -p "$(IFS=,; echo "${pids[*]}")" | awk '{s+=$1} END {print s}'; }
    before=$(rss)
    report=$out/idle-$n.json
    "$nanachat" bench connect "$url" --connections "$idle" --ramp 5000 --duration 10s \
      --label "nanachat x$idle_procs" --json -q >"$report" &
    bench=$!
    peak=$before
    while kill -0 "$bench" 2>/dev/null; do
      now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
      sleep 1
    done
    wait "$bench" || true
    stop_servers
    python3 - "$report" "$before" "$peak" "$idle_procs" <<'PY'
import json, sys
path, before, peak, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    r = json.load(open(path))
except ValueError:
    r = {}
conns = r.get("connected") or 0
r["servers"] = procs
r["servers_rss_before_mib"] = before / 1024
r["servers_rss_peak_mib"] = peak / 1024
r["servers_rss_per_conn_kib"] = (peak - before) / conns if conns else None
json.dump(r, open(path, "w"))
print(f"idle: {conns} connections over {procs} processes, RSS {before/1024:.0f} -> {peak/1024:.0f} MiB, "
      f"{r['servers_rss_per_conn_kib'] or 0:.2f} KiB per connection", file=sys.stderr)
PY
  done
fi

python3 - "$out" "$runs" "$what" "$procs_list" <<'PY'
import json, statistics, sys
out, runs, what, procs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
def load(name):
    rs = []
    for n in range(1, runs + 1):
        try:
            rs.append(json.load(open(f"{out}/{name}-{n}.json")))
        except (OSError, ValueError):
            pass
    return [r for r in rs if r]
def med(rs, get):
    vals = [v for v in (get(r) for r in rs) if v is not None]
    return statistics.median(vals) if vals else None
fmt = lambda v, d=0: "—" if v is None else f"{v:,.{d}f}"
if what in ("fanout", "all"):
    print(f"\n### one room, receivers spread over N processes (median of {runs})\n")
    print("| processes | fan-out deliveries/s | vs 1 | p99 ms | latency @ fixed rate: p50 ms | p99 ms | lost / dup |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    failed = []
    def ran(rs, name):
        # A run that sent nothing (a connection failed at set-up) is left out and named.
        failed.extend(f"{name}: {r.get('connect_failed')} connect(s) failed" for r in rs if not r.get("deliveries"))
        return [r for r in rs if r.get("deliveries")]
    for p in procs:
        f, l = ran(load(f"fanout-{p}"), f"fanout x{p}"), ran(load(f"latency-{p}"), f"latency x{p}")
        rate = med(f, lambda r: r.get("deliveries_per_sec"))
        base = base or rate
        lost = sum(r.get("lost", 0) for r in f + l); dup = sum(r.get("duplicated", 0) for r in f + l)
        print(f"| {p} | {fmt(rate)} | {(rate / base if rate and base else 0):.2f}× | "
              f"{fmt(med(f, lambda r: r['latency']['p99']), 1)} | {fmt(med(l, lambda r: r['latency']['p50']), 2)} | "
              f"{fmt(med(l, lambda r: r['latency']['p99']), 2)} | {lost} / {dup} |")
    for f in failed:
        print(f"\nleft out, {f}")
if what in ("rooms", "all"):
    print(f"\n### rooms spread over processes, each held by one (median of {runs})\n")
    print("| binary | deliveries/s (cluster) | vs this | messages published | a process's intake (median) | share of all | lost / dup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for label in ("this", "compare"):
        rs = load(f"rooms-{label}")
        if not rs:
            continue
        rate = med(rs, lambda r: r.get("deliveries_per_sec"))
        base = base or rate
        pub = med(rs, lambda r: r.get("published"))
        intake = med(rs, lambda r: statistics.median(r["received_per_process"]) if r.get("received_per_process") else None)
        share = intake / pub if pub else 0
        lost = sum(r.get("lost", 0) for r in rs); dup = sum(r.get("duplicated", 0) for r in rs)
        print(f"| {label} | {fmt(rate)} | {(rate / base if rate and base else 0):.2f}× | {fmt(pub)} | {fmt(intake)} | {share:.1%} | {lost} / {dup} |")
if what in ("idle", "all"):
    rs = load("idle")
    print(f"\n### idle connections over several processes (median of {runs})\n")
    print("| processes | connections held | failed | connects/s | connect p99 ms | servers' RSS MiB (before → peak) | KiB per connection |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {fmt(med(rs, lambda r: r.get('servers')))} | {fmt(med(rs, lambda r: r.get('connected')))} | "
          f"{sum(r.get('connect_failed', 0) for r in rs)} | {fmt(med(rs, lambda r: r.get('connect_rate')))} | "
          f"{fmt(med(rs, lambda r: r['connect_latency']['p99']))} | "
          f"{fmt(med(rs, lambda r: r.get('servers_rss_before_mib')))} → {fmt(med(rs, lambda r: r.get('servers_rss_peak_mib')))} | "
          f"{fmt(med(rs, lambda r: r.get('servers_rss_per_conn_kib')), 2)} |")
PY
