"""A minimal plain-text broadcast room on Python `websockets` (17.x) and its `broadcast()`:
every text message goes to every client, the sender included. A peer for `bench/compare.sh`.
Prints "LISTENING <port>" on stderr. Usage: python bench/peers/python_broadcast.py [PORT]"""
import asyncio
import resource
import sys

from websockets.asyncio.server import broadcast, serve

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

CLIENTS = set()


async def room(ws):
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            broadcast(CLIENTS, msg)
    finally:
        CLIENTS.discard(ws)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with serve(room, "127.0.0.1", port, ping_interval=None, max_queue=None) as server:
        print(f"LISTENING {server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
