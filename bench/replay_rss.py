"""Memory a server holds for clients that ask for a lot of data and then stop reading.

For each run: start `BINARY serve` on a fresh data directory, have one publisher say
`--messages` messages of `--chars` characters in room `big`, read the server's RSS (the
baseline), then open `--clients` raw WebSocket connections (SO_RCVBUF small, set before connect,
spread over source addresses 127.0.0.2, 127.0.0.3, ..., 50 each) that each send hello and

  replay:  {"type":"join","room":"big","since":0}   (the whole history replayed)
  history: {"type":"join","room":"big"} then --requests x {"type":"history","room":"big","limit":200}

and then never read again. The server's RSS is sampled every 0.5 s for `--seconds`; the peak
and final RSS above the baseline are reported, with how many of those connections the server
still holds ESTABLISHED at the end (from /proc/net/tcp: a socket the server closed leaves
ESTABLISHED at once, even while its unread data is still queued). A server that bounds what it
queues for a slow consumer stays flat here, or closes it (4001); one that does not keeps
everything it was asked for in memory for as long as the client stays connected.

The kernel takes its share first: each server socket queues up to net.ipv4.tcp_wmem's maximum
(4 MiB by default, about 2.7 MB of data) before a write blocks, and that memory is not in the
server's RSS. So the RSS only shows what the server keeps beyond it (e.g. --messages 2000), and
the table also gives the bytes still queued on the server's open sockets.

Note: the server's --idle-timeout (60 s by default) closes the silent clients in the end; keep
--seconds below it to measure what they hold while they stay.

Usage (from the repository root):
  .tools/py17/bin/python bench/replay_rss.py BINARY [--clients 200] [--messages 300]
      [--chars 4000] [--mode replay|history] [--requests 200] [--runs 3] [--seconds 30] [--rcvbuf 4096]
      [--server-args "--idle-timeout 90s"]
"""
import argparse
import asyncio
import base64
import json
import os
import re
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

try:
    from websockets.asyncio.client import connect as ws_connect
except ImportError:  # pragma: no cover
    sys.exit("needs the websockets library (>= 13): run with .tools/py17/bin/python")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOM = "big"
PER_SOURCE = 50  # client connections per source address


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_server(binary, data_dir, chars, extra):
    cmd = [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data_dir,
           "--rate", "100000", "--burst", "100000"]
    if chars > 4000:
        cmd += ["--max-text-chars", str(chars)]
    cmd += extra
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    said = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        said.append(line)
        m = re.search(r"listening on ws://[^\s]*:(\d+)", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{binary} did not start: {''.join(said[-5:]).strip()}")


async def publish(port, messages, chars):
    """Say `messages` messages of `chars` characters in ROOM, 20 in flight at a time."""
    async with ws_connect(f"ws://127.0.0.1:{port}/", subprotocols=["nanachat.v1"],
                          max_size=None, compression=None) as ws:

        async def expect(kind):
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == kind:
                    return msg
                if msg["type"] == "error":
                    raise RuntimeError(f"publisher got {msg}")

        await ws.send(json.dumps({"type": "hello", "nick": "pub"}))
        await expect("welcome")
        await ws.send(json.dumps({"type": "join", "room": ROOM}))
        await expect("joined")
        i = 0
        while i < messages:
            burst = range(i, min(i + 20, messages))
            for j in burst:
                head = f"message {j} "
                text = (head + "x" * chars)[:chars]
                await ws.send(json.dumps({"type": "say", "room": ROOM, "text": text, "cid": f"c{j}"}))
            for _ in burst:
                await expect("ack")
            i += len(burst)


def frame(obj):
    """A masked text frame holding obj as JSON."""
    payload = json.dumps(obj).encode()
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def source_addr(i):
    n = 2 + i // PER_SOURCE
    return f"127.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def open_stalled(port, i, mode, rcvbuf, requests):
    """Connect, upgrade, send the requests; the caller never reads from it again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    s.settimeout(10)
    s.bind((source_addr(i), 0))
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: nanachat.v1\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: leave everything after the head unread
        if not chunk:
            raise RuntimeError(f"client {i}: closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101") or b"nanachat.v1" not in head.lower():
        raise RuntimeError(f"client {i}: {head.decode(errors='replace')}")
    out = [frame({"type": "hello", "nick": f"r{i}"})]
    if mode == "replay":
        out.append(frame({"type": "join", "room": ROOM, "since": 0}))
    else:
        out.append(frame({"type": "join", "room": ROOM}))
        out += [frame({"type": "history", "room": ROOM, "limit": 200})] * requests
    s.sendall(b"".join(out))
    return s


def parse_addr(hexaddr):
    ip, port = hexaddr.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(port, 16)


def server_side(port, peers):
    """(established, send-queue bytes) of the server's sockets whose peer is in `peers`."""
    established = queued = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = parse_addr(fields[1]), parse_addr(fields[2]), fields[3]
            if local[1] != port or remote not in peers:
                continue
            if state == "01":  # TCP_ESTABLISHED
                established += 1
                queued += int(fields[4].split(":")[0], 16)  # tx_queue
    return established, queued


def run_once(args):
    data_dir = tempfile.mkdtemp(prefix="replay_rss-")
    proc = None
    socks = []
    try:
        proc, port = start_server(args.binary, data_dir, args.chars, args.server_args.split())
        t0 = time.monotonic()
        asyncio.run(publish(port, args.messages, args.chars))
        published = time.monotonic() - t0
        time.sleep(1.0)
        base = rss_kib(proc.pid)
        t0 = time.monotonic()
        for i in range(args.clients):
            socks.append(open_stalled(port, i, args.mode, args.rcvbuf, args.requests))
        connected = time.monotonic() - t0
        peers = {s.getsockname() for s in socks}
        peak = base
        samples = int(args.seconds / 0.5)
        for _ in range(samples):
            time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            peak = max(peak, rss_kib(proc.pid))
        final = rss_kib(proc.pid)
        peak = max(peak, final)
        open_, queued = server_side(port, peers)
        return {"base": base, "peak": peak, "final": final, "open": open_, "queued": queued,
                "published": published, "connected": connected}
    finally:
        for s in socks:
            s.close()
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="the nanachat binary to measure")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--chars", type=int, default=4000)
    parser.add_argument("--mode", choices=["replay", "history"], default="replay")
    parser.add_argument("--requests", type=int, default=200, help="history requests per client")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30, help="how long to sample RSS")
    parser.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each client")
    parser.add_argument("--server-args", default="", help="extra flags for `serve`, e.g. '--idle-timeout 10s'")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    mib = lambda kib: kib / 1024
    results = []
    for run in range(args.runs):
        r = run_once(args)
        results.append(r)
        print(f"run {run + 1}: {args.mode}, {args.clients} clients: published {args.messages} x "
              f"{args.chars} chars in {r['published']:.1f} s, connected in {r['connected']:.1f} s; "
              f"RSS baseline {mib(r['base']):.1f} MiB, peak +{mib(r['peak'] - r['base']):.1f}, "
              f"after {args.seconds:g} s +{mib(r['final'] - r['base']):.1f} MiB; "
              f"open {r['open']}/{args.clients}, server send queues {r['queued'] / 2**20:.1f} MiB",
              flush=True)

    med = lambda key: statistics.median(x[key] for x in results)
    added = statistics.median(x["final"] - x["base"] for x in results)
    peak = statistics.median(x["peak"] - x["base"] for x in results)
    print()
    print(f"{args.messages} messages x {args.chars} chars, median of {args.runs} run(s), "
          f"RSS added over the baseline after {args.seconds:g} s (peak in brackets); "
          f"the kernel send queues are the bytes queued on the server's sockets still open, "
          f"not counted in its RSS:")
    print()
    queued = med("queued") / 2**20
    print(f"| mode | clients | added RSS MiB | MiB per client | kernel send queues MiB per client "
          f"| open after {args.seconds:g} s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {args.mode} | {args.clients} | {mib(added):.1f} ({mib(peak):.1f}) | "
          f"{mib(added) / args.clients:.2f} ({mib(peak) / args.clients:.2f}) | "
          f"{queued / args.clients:.2f} | {med('open'):g} / {args.clients} |")

if __name__ == "__main__":
    main()
