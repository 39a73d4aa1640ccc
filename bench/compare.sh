#!/usr/bin/env bash
# One scenario, one run, several servers: nanachat and the peers users would pick instead, on the
# same machine, interleaved, each run on a fresh server. Prints a Markdown table of medians and
# ratios, and keeps every report (JSON) and a latency plot (SVG) per server in target/bench/.
#
#   bench/compare.sh [fanout|latency|idle|resume|all] [RUNS]
#
#   fanout   1 room x $RECEIVERS receivers, $SIZE-byte messages, as fast as the room drains
#   latency  the same room at a fixed $RATE msg/s (50 x 1,000 receivers = 50,000 deliveries/s)
#   idle     $IDLE connections held by one server process: its RSS per connection
#   resume   nanachat only: $RESUME clients drop at once and resume (lost and duplicated: 0)
#
# Servers: bare (tokio-tungstenite broadcast loop, the ceiling of the library under nanachat),
# node (ws), python (websockets broadcast()), nanachat in plain-text mode (the same raw frames as
# the peers) and in nanachat.v1 (JSON, acks); both nanachat rows store every message in SQLite.
# Environment: RECEIVERS=1000 SIZE=100 SECONDS=10 WARMUP=2 RATE=50 IDLE=19000 RESUME=10000,
# PROFILE=release (debug for a quick smoke run), OUT=target/bench, STRICT=1 to fail on a
# missing report or any lost or duplicated message (scripts/check runs a tiny strict smoke).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
runs=${2:-3}
receivers=${RECEIVERS:-1000}; size=${SIZE:-100}; seconds=${SECONDS_PER_RUN:-10}
warmup=${WARMUP:-2}; rate=${RATE:-50}; idle=${IDLE:-19000}; resume=${RESUME:-10000}
profile=${PROFILE:-release}
out=${OUT:-$root/target/bench}
mkdir -p "$out"

scripts/setup-peers
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin nanachat --example bare_broadcast
else
  cargo build --quiet --bin nanachat --example bare_broadcast
fi
bin=$root/target/$profile
nanachat=$bin/nanachat
py=${NANACHAT_TOOLS:-$root/.tools}/py17/bin/python

server_pid=
server_url=
data=
# start NAME: starts that server on a free port; sets server_pid and server_url.
start() {
  local log
  log=$(mktemp)
  data=$(mktemp -d)
  case $1 in
    bare) "$bin/examples/bare_broadcast" 2>"$log" & ;;
    node) node bench/peers/node_broadcast.js 2>"$log" & ;;
    python) "$py" bench/peers/python_broadcast.py 2>"$log" & ;;
    nanachat*) "$nanachat" serve --addr 127.0.0.1:0 --data-dir "$data" --rate 1000000 \
      --burst 1000000 --max-connections 30000 --max-connections-per-ip 0 \
      --connect-rate-per-ip 0 --heartbeat 0 2>"$log" & ;;
  esac
  server_pid=$!
  for _ in $(seq 400); do
    grep -qE 'LISTENING|listening on' "$log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.05
  done
  local port
  port=$(grep -oE 'LISTENING [0-9]+|127\.0\.0\.1:[0-9]+' "$log" | head -n1 | grep -oE '[0-9]+$')
  server_url=ws://127.0.0.1:$port
  rm -f "$log"
}
stop() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT

# mode NAME: the bench flags that speak each server's language.
# nanachat-plain puts a client in the lobby just after the handshake: it is ready at "* you joined".
mode() {
  case $1 in
    nanachat) ;;
    nanachat-plain) printf '%s\n' --raw --ready-line '* you joined' ;;
    *) echo --raw ;;
  esac
}

servers="bare node python nanachat-plain nanachat"
# run SCENARIO RUN SERVER ARGS...: one bench run on a fresh server; its report in $out.
run() {
  local scenario=$1 n=$2 server=$3
  shift 3
  start "$server"
  local report=$out/$scenario-$server-$n.json
  # A failed run (lost messages, say) keeps its report; the table shows it.
  local flags
  mapfile -t flags < <(mode "$server")
  "$nanachat" bench "$@" "$server_url" "${flags[@]}" --label "$server" --json -q \
    --plot "$out/$scenario-$server.svg" >"$report" || true
  stop
  [ -s "$report" ] || echo '{}' >"$report"
  echo "$scenario run $n, $server: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(round(r.get('deliveries_per_sec',0)), 'deliveries/s, p99', r.get('latency',{}).get('p99'), 'ms, lost', r.get('lost'), 'dup', r.get('duplicated'), 'errors', r.get('errors'))" "$report")" >&2
}

for n in $(seq "$runs"); do
  for server in $servers; do
    if [ "$what" = fanout ] || [ "$what" = all ]; then
      run fanout "$n" "$server" fanout --receivers "$receivers" --size "$size" \
        --duration "${seconds}s" --warmup "${warmup}s"
    fi
    if [ "$what" = latency ] || [ "$what" = all ]; then
      run latency "$n" "$server" fanout --receivers "$receivers" --size "$size" --rate "$rate" \
        --duration "${seconds}s" --warmup "${warmup}s"
    fi
    if [ "$what" = idle ] || [ "$what" = all ]; then
      [ "$server" = nanachat-plain ] && continue
      start "$server"
      report=$out/idle-$server-$n.json
      mapfile -t flags < <(mode "$server")
      "$nanachat" bench connect "$server_url" "${flags[@]}" --connections "$idle" \
        --ramp 4000 --duration 5s --server-pid "$server_pid" --label "$server" --json -q \
        >"$report" || true
      stop
      [ -s "$report" ] || echo '{}' >"$report"
      echo "idle run $n, $server: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get('connected'), 'connections,', r.get('server_rss_per_conn_kib'), 'KiB each')" "$report")" >&2
    fi
  done
  if [ "$what" = resume ] || [ "$what" = all ]; then
    run resume "$n" nanachat resume --connections "$resume" --missed 100 --rate 100 --duration 2s
  fi
done

STRICT=${STRICT:-0} python3 - "$out" "$runs" "$what" <<'PY'
import json, os, statistics, sys
out, runs, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
broken = []
servers = ["bare", "node", "python", "nanachat-plain", "nanachat"]
def reports(scenario, server):
    rs = []
    for n in range(1, runs + 1):
        try:
            with open(f"{out}/{scenario}-{server}-{n}.json") as f:
                rs.append(json.load(f))
        except (OSError, ValueError):
            rs.append({})
    if any(not r for r in rs):
        broken.append({"missing": f"{scenario}-{server}"})
    return [r for r in rs if r]
def med(rs, get):
    vals = [get(r) for r in rs if get(r) is not None]
    return statistics.median(vals) if vals else None
def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"
def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.2f}×"
def losses(rs):
    broken.extend(r for r in rs if r.get("lost") or r.get("duplicated"))
    return f"{sum(r.get('lost', 0) for r in rs)} / {sum(r.get('duplicated', 0) for r in rs)}"
if what in ("fanout", "all"):
    print(f"\n### fan-out, as fast as the room drains (median of {runs})\n")
    print("| server | deliveries/s | p50 ms | p99 ms | vs bare | vs node | vs python | lost / dup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rate = {s: med(reports("fanout", s), lambda r: r.get("deliveries_per_sec")) for s in servers}
    for s in servers:
        rs = reports("fanout", s)
        print(f"| {s} | {fmt(rate[s])} | {fmt(med(rs, lambda r: r['latency']['p50']), 1)} | "
              f"{fmt(med(rs, lambda r: r['latency']['p99']), 1)} | {ratio(rate[s], rate['bare'])} | "
              f"{ratio(rate[s], rate['node'])} | {ratio(rate[s], rate['python'])} | {losses(rs)} |")
if what in ("latency", "all"):
    print(f"\n### latency at a fixed rate (median of {runs})\n")
    print("| server | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 vs bare | lost / dup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    p99 = {s: med(reports("latency", s), lambda r: r["latency"]["p99"]) for s in servers}
    for s in servers:
        rs = reports("latency", s)
        cols = [med(rs, lambda r, k=k: r["latency"][k]) for k in ("p50", "p90", "p99", "p999", "max")]
        print(f"| {s} | {fmt(med(rs, lambda r: r.get('deliveries_per_sec')))} | "
              + " | ".join(fmt(c, 2) for c in cols)
              + f" | {ratio(p99[s], p99['bare'])} | {losses(rs)} |")
if what in ("idle", "all"):
    print(f"\n### idle connections held by one process (median of {runs})\n")
    print("| server | connections | RSS MiB | KiB per connection | vs bare |")
    print("|---|---:|---:|---:|---:|")
    kib = {s: med(reports("idle", s), lambda r: r.get("server_rss_per_conn_kib"))
           for s in servers if s != "nanachat-plain"}
    for s in kib:
        rs = reports("idle", s)
        print(f"| {s} | {fmt(med(rs, lambda r: r.get('connected')))} | "
              f"{fmt(med(rs, lambda r: r.get('server_rss_mib')), 1)} | {fmt(kib[s], 2)} | {ratio(kib[s], kib['bare'])} |")
if what in ("resume", "all"):
    rs = reports("resume", "nanachat")
    print(f"\n### resume storm, nanachat (median of {runs})\n")
    print("| clients | resumed in s | resume p50 ms | p99 ms | lost / dup | errors |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {fmt(med(rs, lambda r: r.get('connected')))} | {fmt(med(rs, lambda r: r.get('resume_seconds')), 2)} | "
          f"{fmt(med(rs, lambda r: r['connect_latency']['p50']), 1)} | {fmt(med(rs, lambda r: r['connect_latency']['p99']), 1)} | "
          f"{losses(rs)} | {sum(r.get('errors', 0) for r in rs)} |")
if os.environ.get("STRICT") == "1" and broken:
    print(f"\ncompare: {len(broken)} run(s) missing or with lost/duplicated messages", file=sys.stderr)
    sys.exit(1)
PY
