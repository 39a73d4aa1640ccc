// A Node `ws` client against `nanachat echo`: text, binary, a large message, non-ASCII text and a
// ping must come back as sent; then an oversized message must be refused with close code 1009.
// Usage: node echo_client.js ws://HOST:PORT   — prints "node-ws: ok" and exits 0, or exits 1.
import WebSocket from 'ws';

const url = process.argv[2];
const fail = (why) => {
  console.error(`node-ws: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 10000).unref();

const sent = ['hello', Buffer.from([0, 1, 2, 255]), 'x'.repeat(60000), 'ünïcödé ✓'];

function echoRound() {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let got = 0;
    let pong = false;
    ws.on('open', () => {
      ws.ping('are you there');
      for (const m of sent) ws.send(m);
    });
    ws.on('pong', (data) => {
      if (data.toString() !== 'are you there') fail(`pong payload ${data}`);
      pong = true;
    });
    ws.on('message', (data, isBinary) => {
      const want = sent[got];
      const wantBinary = Buffer.isBuffer(want);
      if (isBinary !== wantBinary) fail(`message ${got}: binary=${isBinary}`);
      if (!Buffer.from(want).equals(Buffer.from(data))) fail(`message ${got} differs`);
      got += 1;
      if (got === sent.length) ws.close(1000, 'done');
    });
    ws.on('close', (code) => {
      if (code !== 1000) fail(`echo round closed with ${code}`);
      if (!pong) fail('no pong');
      if (got !== sent.length) fail(`got ${got} of ${sent.length}`);
      resolve();
    });
    ws.on('error', (e) => fail(e.message));
  });
}

function oversizedRound() {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.on('open', () => ws.send('y'.repeat(70000)));
    ws.on('message', () => fail('an oversized message was echoed'));
    ws.on('close', (code, reason) => {
      if (code !== 1009) fail(`oversized message closed with ${code} ${reason}`);
      resolve();
    });
    ws.on('error', () => {});
  });
}

await echoRound();
await oversizedRound();
console.log('node-ws: ok');
process.exit(0);
