// What the client library's tests share: a real `nanachat serve` on port 0, a WebSocket for
// Node, waiting under a timeout, tokens.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';

export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../..');
export const BIN = process.env.NANACHAT_BIN || path.join(ROOT, 'target/debug/nanachat');
export const WAIT = 10000;

/// Node 22 has a global WebSocket; older ones take `ws` from the interop peers' packages (a
/// test dependency only: the library itself has none).
export const WebSocket = globalThis.WebSocket
  ?? createRequire(path.join(ROOT, 'tests/peers/node/package.json'))('ws').WebSocket;

const children = new Set();
const dirs = [];
after(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

export function tempDir() {
  const d = mkdtempSync(path.join(tmpdir(), 'nanachat-js-'));
  dirs.push(d);
  return d;
}

/// Starts `nanachat serve` (on 127.0.0.1:0 unless `--addr` is given); resolves with
/// { url, addr, proc } once it listens.
export function serve(args = []) {
  const all = ['serve', ...(args.includes('--addr') ? [] : ['--addr', '127.0.0.1:0']), ...args];
  if (!all.includes('--data-dir')) all.push('--data-dir', tempDir());
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, all, { stdio: ['ignore', 'ignore', 'pipe'] });
    children.add(proc);
    proc.on('exit', () => children.delete(proc));
    let err = '';
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), WAIT);
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`serve exited (${code}): ${err}`)); });
    proc.stderr.on('data', (d) => {
      err += d;
      const m = err.match(/listening on (ws:\/\/([0-9.:]+))/);
      if (m) {
        clearTimeout(timer);
        proc.stderr.removeAllListeners('data');
        proc.stderr.resume();
        resolve({ url: m[1], addr: m[2], proc });
      }
    });
  });
}

/// Kills a server with SIGKILL and resolves once it is gone.
export function kill9(proc) {
  return within(new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) { resolve(); return; }
    proc.once('exit', () => resolve());
    proc.kill('SIGKILL');
  }), 'the server to die');
}

/// `promise`, or a rejection after `ms`.
export function within(promise, what, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out (${ms} ms) waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/// Resolves once `cond()` is true; checks every 20 ms, fails after `ms`.
export async function until(what, cond, ms = WAIT) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out (${ms} ms) waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/// The next frame of `type` the client gets that `match`es.
export function next(client, type, match = () => true, what = type) {
  return within(new Promise((resolve) => {
    const off = client.on(type, (f) => { if (match(f)) { off(); resolve(f); } });
  }), what);
}

/// An HS256 token for `sub`, valid for `ttl` seconds (none: no exp).
export function mint(secret, sub, ttl) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const claims = { sub };
  if (ttl !== undefined) claims.exp = Math.floor(Date.now() / 1000) + ttl;
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export function secretFile(secret) {
  const f = path.join(tempDir(), 'secret');
  writeFileSync(f, `${secret}\n`, { mode: 0o600 });
  return f;
}
