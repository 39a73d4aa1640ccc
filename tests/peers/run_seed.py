"""Runs one of the seed's Python programs, unchanged, on a port the test chooses.

The seed's programs hard-code localhost:8765, but tests start servers on port 0 and may run side
by side. So this runner patches asyncio, under whichever websockets version is installed:
- a server asked to listen on 8765 listens on 127.0.0.1, port 0, and prints `LISTENING <port>`
  on stderr once it does;
- a client asked to connect to 8765 connects to 127.0.0.1, port $SEED_TARGET_PORT.
Then it runs the script as __main__, as `python SCRIPT` would.

Usage: python run_seed.py SCRIPT
"""

import asyncio
import os
import runpy
import sys

SEED_PORT = 8765


def _port_arg(args, kwargs):
    """(host, port) of a create_server/create_connection call, positional or keyword."""
    host = args[0] if len(args) > 0 else kwargs.get("host")
    port = args[1] if len(args) > 1 else kwargs.get("port")
    return host, port


def _with_addr(args, kwargs, host, port):
    args = list(args)
    for i, (name, value) in enumerate((("host", host), ("port", port))):
        if len(args) > i:
            args[i] = value
        else:
            kwargs[name] = value
    return args, kwargs


_create_server = asyncio.BaseEventLoop.create_server
_create_connection = asyncio.BaseEventLoop.create_connection


async def create_server(self, factory, *args, **kwargs):
    _, port = _port_arg(args, kwargs)
    if port != SEED_PORT:
        return await _create_server(self, factory, *args, **kwargs)
    args, kwargs = _with_addr(args, kwargs, "127.0.0.1", 0)
    server = await _create_server(self, factory, *args, **kwargs)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", file=sys.stderr, flush=True)
    return server


async def create_connection(self, factory, *args, **kwargs):
    _, port = _port_arg(args, kwargs)
    if port == SEED_PORT:
        target = int(os.environ["SEED_TARGET_PORT"])
        args, kwargs = _with_addr(args, kwargs, "127.0.0.1", target)
    return await _create_connection(self, factory, *args, **kwargs)


asyncio.BaseEventLoop.create_server = create_server
asyncio.BaseEventLoop.create_connection = create_connection

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
