"""Memory per idle WebSocket connection: nanachat echo against its peers, in the same run.

For each server: start it, read its RSS (the baseline), open N WebSocket connections to it
(raw handshakes from a separate process, spread over source addresses 127.0.0.2…), wait until
its RSS stops moving, read it again, and report (after - baseline) / N. Repeats each server
`--runs` times and prints the median per server, and the ratio to nanachat.

Usage (from the repository root, after scripts/check has installed the peers):
  .tools/py17/bin/python bench/idle_rss.py [--connections 10000] [--runs 3]
"""
import argparse
import asyncio
import base64
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start(cmd, marker):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if marker in line:
            port = int(line.strip().rsplit(":", 1)[-1].split()[0]) if "ws://" in line else int(line.split()[-1])
            # Keep draining stderr so the server never blocks on a full pipe.
            asyncio.get_event_loop().run_in_executor(None, proc.stderr.read)
            return proc, port
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start")


async def open_ws(port, source, key):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return writer


async def hold(port, n):
    key = base64.b64encode(os.urandom(16)).decode()
    sem = asyncio.Semaphore(200)
    writers = []

    async def one(i):
        async with sem:
            source = f"127.0.0.{2 + i % 4}"
            writers.append(await asyncio.wait_for(open_ws(port, source, key), 30))

    await asyncio.gather(*(one(i) for i in range(n)))
    return writers


async def measure(cmd, marker, n):
    proc, port = start(cmd, marker)
    try:
        await asyncio.sleep(0.5)
        base = rss_kib(proc.pid)
        writers = await hold(port, n)
        # Wait until the server's RSS settles (two reads 0.5 s apart within 0.5 %).
        last = rss_kib(proc.pid)
        for _ in range(40):
            await asyncio.sleep(0.5)
            now = rss_kib(proc.pid)
            if abs(now - last) <= last * 0.005:
                break
            last = now
        after = rss_kib(proc.pid)
        for w in writers:
            w.close()
        return base, after
    finally:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="measure only the servers whose name contains this")
    parser.add_argument("--nanachat-args", default="", help="extra flags for nanachat echo")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    nanachat = os.path.join(ROOT, "target/release/nanachat")
    servers = {
        "nanachat echo": ([nanachat, "echo", "--addr", "127.0.0.1:0", "--max-connections", "20000", "--max-connections-per-ip", "0", "--connect-rate-per-ip", "0", *args.nanachat_args.split()], "listening on ws://"),
        "node ws": (["node", "tests/peers/node/echo_server.js"], "LISTENING"),
        "python websockets": ([sys.executable, "bench/echo_server.py"], "LISTENING"),
    }
    if args.only:
        servers = {k: v for k, v in servers.items() if args.only in k}
    results = {}
    for run in range(args.runs):
        for name, (cmd, marker) in servers.items():
            base, after = asyncio.run(measure(cmd, marker, args.connections))
            per = (after - base) * 1024 / args.connections
            results.setdefault(name, []).append(per)
            print(f"run {run + 1}: {name:18} baseline {base / 1024:7.1f} MiB, "
                  f"with {args.connections} idle: {after / 1024:7.1f} MiB, {per / 1024:5.2f} KiB/conn",
                  flush=True)
    ref = statistics.median(results.get("nanachat echo", [1]))
    print(f"\nmedian KiB per idle connection ({args.connections} connections, {args.runs} runs):")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:18} {med / 1024:5.2f} KiB   ({med / ref:4.2f}x nanachat)")


if __name__ == "__main__":
    main()
