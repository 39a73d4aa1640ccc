# The seed's Client.py, ported to websockets 17.x: the loop is run by asyncio.run.
# Everything it sends and prints is unchanged.
import asyncio
import datetime
import websockets

async def recv(websocket):
    while True:
        name = await websocket.recv()
        print(f"< {name}")

async def send(websocket):
    while True:
        # Send
        msg = f"!Client Send! {datetime.datetime.now()}"
        await websocket.send(msg)
        print(f"> {msg}")
        await asyncio.sleep(1)

async def socket():
    uri = "ws://localhost:8765"
    async with websockets.connect(uri) as websocket:
        await asyncio.gather(recv(websocket), send(websocket))

async def sayhello():
    while True:
        print("INTER BREAK")
        await asyncio.sleep(0.2)

async def main():
    await asyncio.gather(socket(), sayhello())

asyncio.run(main())
