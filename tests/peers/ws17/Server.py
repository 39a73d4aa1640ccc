#!/usr/bin/env python
# The seed's Server.py, ported to websockets 17.x: the handler takes no `path`, and the loop is
# run by asyncio.run. Everything it sends and prints is unchanged.
import datetime
import asyncio
import websockets

async def recv(websocket):
    while True:
        name = await websocket.recv()
        print(f"< {name}")

async def send(websocket):
    while True:
        # Send
        msg = f"!Server Send! {datetime.datetime.now()}"
        await websocket.send(msg)
        print(f"> {msg}")
        await asyncio.sleep(3)

async def socket(websocket):
    await asyncio.gather(recv(websocket), send(websocket))

async def main():
    async with websockets.serve(socket, "localhost", 8765):
        await asyncio.get_running_loop().create_future()  # run forever

asyncio.run(main())
