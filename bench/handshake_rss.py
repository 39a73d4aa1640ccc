#!/usr/bin/env python3
"""Memory a server spends on unfinished handshakes: N sockets each send HEAD_BYTES of a request
head that never ends; prints the server's RSS before and after (median of 3 samples).

    bench/handshake_rss.py NANACHAT_BINARY [N=4000] [HEAD_BYTES=380000]
"""
import os, socket, subprocess, sys, tempfile, time

binary = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
head_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 380_000

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

data = tempfile.mkdtemp()
server = subprocess.Popen(
    [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data, "--handshake-timeout", "30s"],
    stderr=subprocess.PIPE, text=True)
port = None
for line in server.stderr:
    if "listening on" in line:
        port = int(line.rsplit(":", 1)[1].split()[0].strip().rstrip("\x1b[0m"))
        break
time.sleep(0.5)
before = rss_kib(server.pid)
socks = []
head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * head_bytes
for i in range(count):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
sent = [0] * count
deadline = time.time() + 20
while time.time() < deadline:
    progress = False
    for i, s in enumerate(socks):
        if s is None or sent[i] >= len(head):
            continue
        try:
            n = s.send(head[sent[i]:sent[i] + 65536])
            sent[i] += n
            progress = progress or n > 0
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            socks[i] = None  # answered (431/503) and closed
    if not progress:
        break
samples = []
for _ in range(3):
    time.sleep(0.5)
    samples.append(rss_kib(server.pid))
after = sorted(samples)[1]
open_socks = sum(1 for s in socks if s is not None)
print(f"{count} sockets x {head_bytes} B unfinished head: RSS {before/1024:.1f} MiB -> "
      f"{after/1024:.1f} MiB (+{(after-before)/1024:.1f} MiB); bytes sent {sum(sent)/2**20:.0f} MiB")
server.terminate()
server.wait()
