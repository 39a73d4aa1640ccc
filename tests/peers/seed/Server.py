#!/usr/bin/env python
# WS server example
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

async def socket(websocket, path):
    await asyncio.gather(recv(websocket), send(websocket))

start_server = websockets.serve(socket, "localhost", 8765)

asyncio.get_event_loop().run_until_complete(start_server)
asyncio.get_event_loop().run_forever()
