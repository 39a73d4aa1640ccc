"""A plain Python `websockets` (17.x) echo server, a peer for benchmarks.
Prints "LISTENING <port>" on stderr. Usage: python echo_server.py [PORT]"""
import asyncio
import resource
import sys

import websockets

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with websockets.serve(echo, "127.0.0.1", port, ping_interval=None) as server:
        print(f"LISTENING {server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
