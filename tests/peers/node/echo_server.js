// A plain Node `ws` echo server, a peer for benchmarks. Prints "LISTENING <port>" on stderr.
// Usage: node echo_server.js [PORT]   (0 or nothing: a free port)
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] || 0) });
wss.on('listening', () => console.error(`LISTENING ${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
