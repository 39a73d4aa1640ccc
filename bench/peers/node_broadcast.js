// A minimal plain-text broadcast room on Node's `ws`: every text message goes to every client,
// the sender included. A peer for `bench/compare.sh`. Prints "LISTENING <port>" on stderr.
// Usage: node bench/peers/node_broadcast.js [PORT]
import { WebSocketServer, WebSocket } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] || 0) });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    }
  });
});
wss.on('listening', () => console.error(`LISTENING ${wss.address().port}`));
