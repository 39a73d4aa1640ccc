#!/usr/bin/env bash
# Echo throughput of `nanachat echo` with tungstenite read buffers of 512 B (the default, behind
# the read-ahead layer) and 4 KiB, alternating, several runs each; prints every run and the
# medians. Usage: bench/read_buffer.sh [RUNS] [CONNECTIONS] [MESSAGES] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}; conns=${2:-50}; msgs=${3:-20000}; size=${4:-100}
cargo build --release --quiet --bin nanachat --example echo_load
declare -A results
for run in $(seq "$runs"); do
  for rb in 512 4KiB; do
    log=$(mktemp)
    target/release/nanachat echo --addr 127.0.0.1:0 --read-buffer-bytes "$rb" \
      --max-connections-per-ip 0 --connect-rate-per-ip 0 2>"$log" &
    pid=$!
    for _ in $(seq 100); do grep -q 'ws://' "$log" && break; sleep 0.05; done
    url=$(grep -oE 'ws://[0-9.:]+' "$log" | head -n1)
    line=$(target/release/examples/echo_load "$url" "$conns" "$msgs" "$size")
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$log"
    rate=$(echo "$line" | grep -oE '[0-9]+ msg/s' | cut -d' ' -f1)
    echo "run $run, read buffer $rb: $line"
    results[$rb]+="$rate "
  done
done
for rb in 512 4KiB; do
  median=$(echo "${results[$rb]}" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "median, read buffer $rb: $median msg/s"
done
