// A webhook receiver for bench/webhooks.sh: Node's own HTTP server (keep-alive), checking every
// signature with the recipe of docs/webhooks.md, answering 204. On SIGTERM it writes a summary
// (JSON) to the file named by its second argument: events, distinct ids, bad signatures,
// events out of seq order in their room, lag (arrival minus the event's time_ms) percentiles,
// first and last arrival.
//
//   node bench/webhook_receiver.mjs SECRET_FILE SUMMARY_FILE   (prints "listening PORT")
import http from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
import { createHmac, timingSafeEqual } from "node:crypto";

// docs/webhooks.md, as written there.
export function verify(secret, header, rawBody, tolerance = 300) {
  const parts = header.split(",").map((p) => p.split("="));
  const t = parts.find(([k]) => k === "t")?.[1];
  if (!t || Math.abs(Date.now() / 1000 - Number(t)) > tolerance) return false;
  const expected = createHmac("sha256", secret).update(`${t}.`).update(rawBody).digest();
  return parts.some(([k, v]) => k === "v1" && v.length === 64 &&
    timingSafeEqual(expected, Buffer.from(v, "hex")));
}

const [secretFile, summaryFile] = process.argv.slice(2);
const secret = readFileSync(secretFile, "utf8").split("\n")[0].trim();
const lags = [];
const ids = new Set();
const lastSeq = new Map();
let events = 0, bad = 0, disorder = 0, first = 0, last = 0;

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const now = Date.now();
    const body = Buffer.concat(chunks);
    if (!verify(secret, req.headers["nanachat-signature"] ?? "", body)) {
      bad += 1;
      res.writeHead(400).end();
      return;
    }
    const event = JSON.parse(body);
    events += 1;
    if (!ids.has(event.id)) {
      ids.add(event.id);
      if ((lastSeq.get(event.room) ?? 0) > event.seq) disorder += 1;
      lastSeq.set(event.room, event.seq);
      lags.push(now - event.time_ms);
    }
    first ||= now;
    last = now;
    res.writeHead(204).end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));

process.on("SIGTERM", () => {
  lags.sort((a, b) => a - b);
  const at = (q) => (lags.length ? lags[Math.min(lags.length - 1, Math.floor(q * lags.length))] : null);
  const summary = {
    events, distinct: ids.size, bad_signatures: bad, out_of_order: disorder,
    lag_ms: { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: lags.at(-1) ?? null },
    first_ms: first, last_ms: last,
  };
  writeFileSync(summaryFile, JSON.stringify(summary));
  process.exit(0);
});
