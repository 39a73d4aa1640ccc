// The browser client in a real headless Chromium, driven by Playwright, against a real
// `nanachat serve`. Run by scripts/check:  NANACHAT_BIN=target/debug/nanachat node --test …
// Screenshots of every test go to target/browser/.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.NANACHAT_BIN;
const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../..');
const SHOTS = path.join(ROOT, 'target', 'browser');
mkdirSync(SHOTS, { recursive: true });
const WAIT = 10000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
});
const children = [];
after(async () => {
  await browser.close();
  for (const c of children) c.kill('SIGKILL');
});

/// Starts `nanachat serve`; resolves with { url, proc } once it listens.
function serve(args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, ['serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(proc);
    let err = '';
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), WAIT);
    proc.stderr.on('data', (d) => {
      err += d;
      const m = err.match(/listening on (ws:\/\/[0-9.:]+)/);
      if (m) { clearTimeout(timer); resolve({ url: m[1], http: m[1].replace('ws://', 'http://'), proc }); }
    });
  });
}

/// `nanachat connect` in scripting mode; lines() gives what it printed.
function terminalClient(url, nick) {
  const proc = spawn(BIN, ['connect', url, '--nick', nick], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  proc.stdout.on('data', (d) => { out += d; });
  return { proc, lines: () => out.split('\n').filter(Boolean), say: (t) => proc.stdin.write(`${t}\n`) };
}

async function until(what, cond) {
  const deadline = Date.now() + WAIT;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/// A page logged in as `nick`; in `context` (another page's: the same key) if given.
async function openChat(http, nick, context) {
  const page = context ? await context.newPage() : await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.on('dialog', (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  await page.goto(`${http}/`);
  await page.fill('#nick', nick);
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  return page;
}

async function say(page, text) {
  await page.fill('#say', text);
  await page.press('#say', 'Enter');
}

const texts = (page) => page.$$eval('#messages li .text', (els) => els.map((e) => e.textContent));

test('two pages chat with each other', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const alice = await openChat(http, 'alice');
  const bob = await openChat(http, 'bob');
  await say(alice, 'hello bob');
  await until('bob sees alice', async () => (await texts(bob)).includes('hello bob'));
  await say(bob, 'hi alice');
  await until('alice sees bob', async () => (await texts(alice)).includes('hi alice'));
  // Sent messages lose their pending mark once acknowledged.
  await until('acks', async () => (await alice.$$('#messages li.pending')).length === 0);
  assert.deepEqual(await texts(alice), ['hello bob', 'hi alice']);
  await until('presence', async () => (await alice.$$eval('#member-list li', (l) => l.map((e) => e.textContent))).includes('bob'));
  await alice.screenshot({ path: path.join(SHOTS, 'two-pages-alice.png') });
  await bob.screenshot({ path: path.join(SHOTS, 'two-pages-bob.png') });
});

test('a reload: what the page says then is stored, its cids are new (they never carried the key and a count that starts again)', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openChat(http, 'reloader');
  await say(page, 'before the reload');
  await until('acked', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('before the reload'));
  await page.reload();
  await page.press('#nick', 'Enter'); // the nick and its key are remembered
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await say(page, 'after the reload');
  await until('acked', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('after the reload'));
  assert.equal((await page.$$('#messages li.failed')).length, 0, 'not refused as a reused cid');
  await until('both in the history', async () => {
    const t = await texts(page);
    return t.includes('before the reload') && t.filter((x) => x === 'after the reload').length === 1;
  });
  await page.close();
});

test('a page and a terminal client see each other', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openChat(http, 'web');
  const cli = terminalClient(url, 'cli');
  await until('cli joined', async () => (await page.$$eval('#member-list li', (l) => l.map((e) => e.textContent))).includes('cli'));
  cli.say('from the terminal');
  await until('page sees cli', async () => (await texts(page)).includes('from the terminal'));
  await say(page, 'from the browser');
  await until('cli sees page', async () => cli.lines().includes('[lobby] web: from the browser'));
  await page.screenshot({ path: path.join(SHOTS, 'page-and-terminal.png') });
});

test('a server restart: the page shows what was sent meanwhile exactly once', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nanachat-browser-'));
  let server = await serve(['--data-dir', dir, '--addr', '127.0.0.1:0']);
  const addr = server.url.replace('ws://', '');
  const page = await openChat(server.http, 'watcher');
  const before = terminalClient(server.url, 'talker');
  before.say('before 1');
  before.say('before 2');
  await until('before', async () => (await texts(page)).includes('before 2'));
  server.proc.kill('SIGKILL');
  before.proc.kill('SIGKILL');
  await page.waitForSelector('#status.offline', { timeout: WAIT });
  await say(page, 'typed while offline');
  server = await serve(['--data-dir', dir, '--addr', addr]);
  const meanwhile = terminalClient(server.url, 'talker2');
  for (let i = 1; i <= 5; i++) meanwhile.say(`meanwhile ${i}`);
  await until('everything', async () => {
    const t = await texts(page);
    return t.includes('meanwhile 5') && t.includes('typed while offline');
  });
  await until('acked', async () => (await page.$$('#messages li.pending')).length === 0);
  const t = await texts(page);
  for (const text of ['before 1', 'before 2', 'typed while offline', 'meanwhile 1', 'meanwhile 3', 'meanwhile 5']) {
    assert.equal(t.filter((x) => x === text).length, 1, `${text} once in ${JSON.stringify(t)}`);
  }
  const order = t.filter((x) => x.startsWith('meanwhile'));
  assert.deepEqual(order, ['meanwhile 1', 'meanwhile 2', 'meanwhile 3', 'meanwhile 4', 'meanwhile 5']);
  await page.screenshot({ path: path.join(SHOTS, 'after-restart.png') });
  rmSync(dir, { recursive: true, force: true });
});

test('markup in a message is shown as text', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const a = await openChat(http, 'mallory');
  const b = await openChat(http, 'victim');
  const evil = '<img src=x onerror=alert(1)><b>bold?</b>';
  await say(a, evil);
  await until('victim sees it', async () => (await texts(b)).includes(evil));
  assert.equal(await b.$$eval('#messages img, #messages b', (els) => els.length), 0);
  const csp = (await b.request.get(`${http}/`)).headers()['content-security-policy'];
  assert.match(csp, /script-src 'self'/);
  await b.screenshot({ path: path.join(SHOTS, 'markup-as-text.png') });
});

test('on a phone-sized screen the composer is there and works with the keyboard alone', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await browser.newPage({ viewport: { width: 390, height: 760 } });
  await page.goto(`${http}/`);
  // The nick field has the focus as soon as the page is up: no mouse needed.
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'nick');
  await page.keyboard.type('phone');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await page.keyboard.type('typed without a mouse');
  await page.keyboard.press('Enter');
  await until('shown', async () => (await texts(page)).includes('typed without a mouse'));
  assert.ok(await page.isVisible('#say'));
  assert.equal(await page.textContent('#me'), 'as phone');
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'nothing wider than the screen');
  await page.screenshot({ path: path.join(SHOTS, 'phone.png') });
});

test('direct messages, unread counts and older history on scroll up', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  // Sixty messages before anybody opens the page.
  const cli = terminalClient(url, 'early');
  for (let i = 1; i <= 60; i++) cli.say(`old ${i}`);
  await until('stored', async () => cli.lines().includes('[lobby] early: old 60'));
  const a = await openChat(http, 'ann');
  await until('the latest page', async () => (await texts(a)).includes('old 60'));
  const first = await texts(a);
  assert.ok(first.length < 60, `only the latest page at first, got ${first.length}`);
  await a.$eval('#messages', (list) => { list.scrollTop = 0; list.dispatchEvent(new Event('scroll')); });
  await until('older history', async () => (await texts(a)).includes('old 1'));
  const all = (await texts(a)).filter((t) => t.startsWith('old '));
  assert.deepEqual(all, Array.from({ length: 60 }, (_, i) => `old ${i + 1}`));

  const b = await openChat(http, 'ben');
  await a.fill('#dm-nick', 'ben');
  await a.press('#dm-nick', 'Enter');
  await say(a, 'just between us');
  await until('ben gets a DM room with one unread', async () =>
    (await b.$$eval('#room-list button', (bs) => bs.map((x) => x.textContent))).includes('@ann1'));
  await b.click('#room-list button:has-text("@ann")');
  await until('ben reads it', async () => (await texts(b)).includes('just between us'));
  await b.screenshot({ path: path.join(SHOTS, 'direct-message.png') });
});

test('a server that wants tokens: the page sends the one typed, and shows a refusal', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nanachat-auth-'));
  const secretFile = path.join(dir, 'secret');
  (await import('node:fs')).writeFileSync(secretFile, 'a browser test secret, long enough\n', { mode: 0o600 });
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0', '--auth-secret-file', secretFile]);
  const token = await new Promise((resolve, reject) => {
    const p = spawn(BIN, ['token', '--sub', 'tess', '--auth-secret-file', secretFile]);
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`token exited ${code}`))));
  });
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  await page.goto(`${http}/`);
  // Without a token: back to the login form, with the server's reason.
  await page.fill('#nick', 'tess');
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#login-error:text("token")', { timeout: WAIT });
  // With it: in, and chatting.
  await page.fill('#nick', 'tess');
  await page.fill('#token', token);
  await page.press('#token', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await say(page, 'signed in from a browser');
  await until('the message stored', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('signed in from a browser'));
  // Stored, not refused: the lobby was joined again on the second login.
  assert.equal((await page.$$('#messages li.failed')).length, 0);
  await page.screenshot({ path: path.join(SHOTS, 'token.png') });
  await page.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a rooms list too big for one frame: the page shows the first ones and the total, pages on, and stays connected', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0', '--max-message-bytes', '4096']);
  // 8 connections × 32 rooms with 64-character names: far more than one 4 KiB frame.
  const { default: WebSocket } = await import('ws');
  const idle = [];
  for (let c = 0; c < 8; c++) {
    const ws = new WebSocket(url, 'nanachat.v1');
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    let joined = 0;
    const all = new Promise((resolve) => ws.on('message', (d) => {
      if (JSON.parse(d.toString()).type === 'joined' && ++joined === 32) resolve();
    }));
    ws.send(JSON.stringify({ type: 'hello', nick: `idle${c}` }));
    for (let r = 0; r < 32; r++) {
      const room = `${String(c).padStart(2, '0')}-${String(r).padStart(2, '0')}-${'r'.repeat(58)}`;
      ws.send(JSON.stringify({ type: 'join', room }));
    }
    await all;
    idle.push(ws);
  }
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  let sockets = 0;
  page.on('websocket', () => { sockets += 1; });
  await page.goto(`${http}/`);
  await page.fill('#nick', 'looker');
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  const rooms = () => page.$$eval('#public-rooms li.room', (l) => l.length);
  // 8 × 32 rooms and the lobby: the first page, and how many more there are.
  const more = page.locator('#public-rooms li.more button');
  await more.waitFor({ timeout: WAIT });
  const shown = await rooms();
  assert.ok(shown > 0 && shown < 257, `${shown} rooms shown`);
  assert.equal(await more.textContent(), `… and ${257 - shown} more`);
  // Paging on shows every room once.
  while (await more.count()) {
    const before = await rooms();
    await more.click();
    await until('the next page', async () => (await rooms()) > before);
  }
  const names = await page.$$eval('#public-rooms li.room', (l) => l.map((e) => e.textContent));
  assert.equal(names.length, 257);
  assert.equal(new Set(names).size, 257);
  // Still the first connection, and chatting.
  await say(page, 'still connected');
  await until('acked', async () => (await texts(page)).includes('still connected')
    && (await page.$$('#messages li.pending')).length === 0);
  assert.equal(sockets, 1, 'the page reconnected');
  await page.screenshot({ path: path.join(SHOTS, 'many-rooms.png') });
  for (const ws of idle) ws.close();
  await page.close();
});

// ---- a token that expires on an open connection ------------------------------------------------

/// `nanachat token --sub SUB --ttl TTL` with the server's secret.
function mint(secretFile, sub, ttl) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ['token', '--sub', sub, '--ttl', ttl, '--auth-secret-file', secretFile]);
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`token exited ${code}`))));
  });
}

async function secretFile() {
  const dir = mkdtempSync(path.join(tmpdir(), 'nanachat-refresh-'));
  const file = path.join(dir, 'secret');
  (await import('node:fs')).writeFileSync(file, 'a browser test secret, long enough\n', { mode: 0o600 });
  return { dir, file };
}

const tokenBarShown = (page) => page.isVisible('#token-bar');

// The page's side alone, against a server played by the test (Playwright's routeWebSocket): it
// passes without the server's side of token refresh.
test('a token that expires: an inline bar asks for a new one, the refused message goes again, and a 4003 close asks before reconnecting (scripted server)', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.on('dialog', (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  const got = []; // [connection number, message]
  let connections = 0;
  let refusedOnce = false;
  let current = null;
  await page.routeWebSocket(/.*/, (ws) => {
    const n = connections++;
    current = ws;
    const reply = (m) => ws.send(JSON.stringify(m));
    ws.onMessage((text) => {
      const m = JSON.parse(text);
      got.push([n, m]);
      switch (m.type) {
        case 'hello':
          reply({ type: 'welcome', nick: m.nick, exp: Math.floor(Date.now() / 1000) + 60,
            limits: { max_message_bytes: 65536, max_text_chars: 4000, rate_per_sec: 20, rate_burst: 40, max_rooms: 32, heartbeat_ms: 25000 } });
          break;
        case 'join':
          reply({ type: 'joined', room: m.room, epoch: 1, last_seq: 0, first_seq: 1 });
          break;
        case 'say':
          if (!refusedOnce) {
            refusedOnce = true;
            reply({ type: 'error', code: 'token_expired', cid: m.cid, message: 'your token expired: send refresh with a fresh one within 30s' });
          } else {
            reply({ type: 'ack', cid: m.cid, room: m.room, seq: 1 });
          }
          break;
        case 'refresh':
          if (m.token === 'not-valid') reply({ type: 'error', code: 'unauthorized', message: 'bad token signature' });
          else reply({ type: 'refreshed', exp: Math.floor(Date.now() / 1000) + 3600 });
          break;
        default: break;
      }
    });
  });
  await page.goto(`${http}/`);
  await page.fill('#nick', 'mocky');
  await page.fill('#token', 'first-token');
  await page.press('#token', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  assert.match(await page.getAttribute('#me', 'title'), /token valid until/);
  assert.equal(await tokenBarShown(page), false);

  // Refused with token_expired: kept (pending, not failed), and the bar asks for a new token.
  await say(page, 'said as it expired');
  await page.waitForSelector('#token-bar:not([hidden])', { timeout: WAIT });
  assert.match(await page.textContent('#token-why'), /token expired.*within 30s/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'new-token');
  assert.equal((await page.$$('#messages li.pending')).length, 1);
  assert.equal((await page.$$('#messages li.failed')).length, 0);
  // Said while expired: waits too (nothing is sent until `refreshed`).
  await say(page, 'said while expired');
  // A token the server refuses: told in the bar, which stays.
  await page.fill('#new-token', 'not-valid');
  await page.press('#new-token', 'Enter');
  await page.waitForSelector('#token-why:text("refused")', { timeout: WAIT });
  assert.equal(await tokenBarShown(page), true);
  await page.fill('#new-token', 'second-token');
  await page.press('#new-token', 'Enter');
  await page.waitForSelector('#token-bar', { state: 'hidden', timeout: WAIT });
  await until('both acked', async () => (await page.$$('#messages li.pending')).length === 0);
  const says = got.filter(([, m]) => m.type === 'say').map(([, m]) => m);
  assert.deepEqual(says.map((m) => m.text), ['said as it expired', 'said as it expired', 'said while expired']);
  assert.equal(says[0].cid, says[1].cid, 'sent again with its cid');
  assert.deepEqual(got.filter(([, m]) => m.type === 'refresh').map(([, m]) => m.token), ['not-valid', 'second-token']);
  await page.screenshot({ path: path.join(SHOTS, 'token-refreshed.png') });

  // Closed with 4003: no reconnect until a new token is given, then one with it.
  await current.close({ code: 4003, reason: 'token expired' });
  await page.waitForSelector('#token-bar:not([hidden])', { timeout: WAIT });
  assert.match(await page.textContent('#token-why'), /token ended \(token expired\)/);
  await page.waitForSelector('#status.offline', { timeout: WAIT });
  await page.screenshot({ path: path.join(SHOTS, 'token-ended.png') });
  assert.equal(connections, 1, 'no reconnect without a new token');
  await page.fill('#new-token', 'third-token');
  await page.press('#new-token', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  assert.equal(connections, 2);
  const hellos = got.filter(([, m]) => m.type === 'hello').map(([, m]) => m.token);
  assert.deepEqual(hellos, ['first-token', 'third-token']);
  assert.equal(await tokenBarShown(page), false);
  await page.close();
});

// NEEDS THE SERVER SIDE of token refresh (`serve --token-grace`, `token_expired` at `exp`,
// `refresh`/`refreshed`, close 4003): fails until it is merged.
test('real server: a token that expires is renewed from the bar and the page goes on', async () => {
  const secret = await secretFile();
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0', '--auth-secret-file', secret.file, '--token-grace', '30s']);
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.on('dialog', (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  await page.goto(`${http}/`);
  await page.fill('#nick', 'rita');
  await page.fill('#token', await mint(secret.file, 'rita', '3s'));
  await page.press('#token', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  // At exp (3 s) the server says token_expired.
  await page.waitForSelector('#token-bar:not([hidden])', { timeout: WAIT });
  await say(page, 'said during the grace');
  await page.fill('#new-token', await mint(secret.file, 'rita', '1h'));
  await page.press('#new-token', 'Enter');
  await page.waitForSelector('#token-bar', { state: 'hidden', timeout: WAIT });
  await until('stored', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('said during the grace'));
  assert.equal((await texts(page)).filter((t) => t === 'said during the grace').length, 1);
  assert.equal((await page.$$('#messages li.failed')).length, 0);
  await page.close();
  rmSync(secret.dir, { recursive: true, force: true });
});

// NEEDS THE SERVER SIDE, as above.
test('real server: a token that ends (4003) is asked for again, and the page reconnects with the new one', async () => {
  const secret = await secretFile();
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0', '--auth-secret-file', secret.file, '--token-grace', '1s']);
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  page.on('dialog', (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  let sockets = 0;
  page.on('websocket', () => { sockets += 1; });
  await page.goto(`${http}/`);
  await page.fill('#nick', 'otto');
  await page.fill('#token', await mint(secret.file, 'otto', '2s'));
  await page.press('#token', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  // Expired at 2 s, closed with 4003 a second later.
  await page.waitForSelector('#token-why:text("ended")', { timeout: WAIT });
  await page.waitForSelector('#status.offline', { timeout: WAIT });
  await say(page, 'typed while out');
  assert.equal(sockets, 1);
  await page.fill('#new-token', await mint(secret.file, 'otto', '1h'));
  await page.press('#new-token', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await until('stored', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('typed while out'));
  assert.equal(sockets, 2);
  await page.close();
  rmSync(secret.dir, { recursive: true, force: true });
});

// ---- edits, deletes, reactions and replies ------------------------------------------------------

/// The line of the message whose text is `text`, on `page`.
const line = (page, text) => page.locator('#messages li[data-seq]', { has: page.locator('.text', { hasText: text }) });

/// Clicks a message's action (the actions show on hover, or on focus from the keyboard).
async function act(page, text, action) {
  const li = line(page, text);
  await li.hover();
  await li.locator(`button[data-action="${action}"]`).click();
}

const chips = (page, text) => line(page, text).locator('.reactions .chip')
  .evaluateAll((cs) => cs.map((c) => `${c.textContent}${c.getAttribute('aria-pressed') === 'true' ? ' (mine)' : ''}`));

test('edits, deletes, reactions and replies: one page does each, the other sees it', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  // A context of her own: a second tab later shares her key (local storage), so her nick.
  const aliceTabs = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const alice = await openChat(http, 'alice', aliceTabs);
  const bob = await openChat(http, 'bob');
  const cli = terminalClient(url, 'cli');
  await say(bob, 'a message from bob');
  await say(alice, 'first draft');
  await say(alice, 'to be deleted');
  for (const p of [alice, bob]) {
    await until('all three', async () => (await texts(p)).includes('to be deleted')
      && (await p.$$('#messages li.pending')).length === 0);
  }
  // Only your own messages can be edited or deleted.
  await line(alice, 'a message from bob').hover();
  assert.equal(await line(alice, 'a message from bob').locator('button[data-action="edit"]').count(), 0);
  assert.equal(await line(alice, 'a message from bob').locator('button[data-action="delete"]').count(), 0);

  // Edit: the composer holds the text; Enter sends the new one; both pages mark it edited.
  await act(alice, 'first draft', 'edit');
  assert.equal(await alice.inputValue('#say'), 'first draft');
  assert.match(await alice.textContent('#compose-bar'), /Editing your message at/);
  await alice.fill('#say', 'final <b>text</b>');
  await alice.press('#say', 'Enter');
  for (const p of [alice, bob]) {
    await until('the edit', async () => (await texts(p)).includes('final <b>text</b>'));
    await line(p, 'final <b>text</b>').locator('.edited').waitFor({ timeout: WAIT });
  }
  assert.equal(await alice.isVisible('#compose-bar'), false);
  assert.ok(!(await texts(bob)).includes('first draft'));
  assert.equal(await bob.$$eval('#messages b', (b) => b.length), 0, 'an edit is text too');
  await alice.screenshot({ path: path.join(SHOTS, 'edit-alice.png') });
  await bob.screenshot({ path: path.join(SHOTS, 'edit-bob.png') });

  // Delete: asked once more, then a tombstone on both pages.
  await act(alice, 'to be deleted', 'delete');
  assert.equal(await line(alice, 'to be deleted').locator('button.armed').textContent(), 'Delete?');
  await line(alice, 'to be deleted').locator('button[data-action="delete"]').click();
  for (const p of [alice, bob]) {
    await until('the tombstone', async () => (await texts(p)).includes('message deleted')
      && !(await texts(p)).includes('to be deleted'));
  }
  assert.equal(await bob.locator('#messages li.deleted .tombstone').count(), 1);
  assert.equal(await bob.locator('#messages li.deleted button').count(), 0, 'nothing to do to a tombstone');
  await bob.screenshot({ path: path.join(SHOTS, 'delete-bob.png') });

  // React: bob picks 👍 on alice's message, alice adds hers by clicking the chip, then bob takes
  // his back by clicking it again.
  await act(bob, 'final <b>text</b>', 'pick');
  await line(bob, 'final <b>text</b>').locator('.picker button[data-emoji="👍"]').click();
  await until('alice sees bob\'s 👍', async () => JSON.stringify(await chips(alice, 'final <b>text</b>')) === '["👍 1"]');
  await until('bob sees his own', async () => JSON.stringify(await chips(bob, 'final <b>text</b>')) === '["👍 1 (mine)"]');
  await line(alice, 'final <b>text</b>').locator('.chip[data-emoji="👍"]').click();
  await until('two', async () => JSON.stringify(await chips(bob, 'final <b>text</b>')) === '["👍 2 (mine)"]');
  await until('alice\'s too', async () => JSON.stringify(await chips(alice, 'final <b>text</b>')) === '["👍 2 (mine)"]');
  await act(alice, 'final <b>text</b>', 'pick');
  await line(alice, 'final <b>text</b>').locator('.picker button[data-emoji="🎉"]').click();
  await until('🎉', async () => JSON.stringify(await chips(bob, 'final <b>text</b>')) === '["🎉 1","👍 2 (mine)"]');
  await until('alice\'s 🎉', async () => JSON.stringify(await chips(alice, 'final <b>text</b>')) === '["🎉 1 (mine)","👍 2 (mine)"]');
  await alice.screenshot({ path: path.join(SHOTS, 'react-alice.png') });
  await line(bob, 'final <b>text</b>').locator('.chip[data-emoji="👍"]').click();
  await until('bob\'s taken back', async () => JSON.stringify(await chips(alice, 'final <b>text</b>')) === '["🎉 1 (mine)","👍 1 (mine)"]');
  await until('on bob\'s page too', async () => JSON.stringify(await chips(bob, 'final <b>text</b>')) === '["🎉 1","👍 1"]');
  await bob.screenshot({ path: path.join(SHOTS, 'react-bob.png') });

  // Reply: the original is quoted above the composer, then on the reply, on both pages.
  await act(bob, 'final <b>text</b>', 'reply');
  assert.match(await bob.textContent('#compose-bar'), /Replying to\s*alice\s*final <b>text<\/b>/);
  await bob.screenshot({ path: path.join(SHOTS, 'reply-composing-bob.png') });
  await bob.fill('#say', 'a reply from bob');
  await bob.press('#say', 'Enter');
  for (const p of [alice, bob]) {
    await until('the reply', async () => (await texts(p)).includes('a reply from bob')
      && (await p.$$('#messages li.pending')).length === 0);
    const quote = line(p, 'a reply from bob').locator('.quote');
    assert.equal(await quote.locator('.quote-from').textContent(), 'alice');
    assert.equal(await quote.locator('.quote-text').textContent(), 'final <b>text</b>');
  }
  assert.equal(await bob.isVisible('#compose-bar'), false);
  await until('the terminal client sees it as a reply', async () => cli.lines().includes('[lobby] bob (re #2): a reply from bob'));
  // The quote jumps to the original: scrolled into view (after enough lines to push it out).
  for (let i = 1; i <= 30; i++) await say(bob, `filler ${i}`);
  await until('fillers', async () => (await texts(alice)).includes('filler 30'));
  await alice.$eval('#messages', (l) => { l.scrollTop = l.scrollHeight; });
  const inView = (page) => line(page, 'final <b>text</b>').evaluate((li) => {
    const list = document.getElementById('messages').getBoundingClientRect();
    const r = li.getBoundingClientRect();
    return r.top >= list.top && r.bottom <= list.bottom;
  });
  assert.equal(await inView(alice), false);
  await line(alice, 'a reply from bob').locator('.quote').click();
  await until('the original in view', async () => inView(alice));
  assert.equal(await alice.evaluate(() => document.activeElement.dataset.seq), '2');
  await alice.screenshot({ path: path.join(SHOTS, 'reply-jump-alice.png') });

  // A page opened now gets all of it from history: edited, deleted, reactions (its own marked),
  // the reply's quote.
  const late = await openChat(http, 'alice2');
  await until('history', async () => (await texts(late)).includes('a reply from bob'));
  assert.equal(await line(late, 'final <b>text</b>').locator('.edited').count(), 1);
  assert.ok((await texts(late)).includes('message deleted'));
  assert.deepEqual(await chips(late, 'final <b>text</b>'), ['🎉 1', '👍 1']);
  assert.equal(await line(late, 'a reply from bob').locator('.quote-text').textContent(), 'final <b>text</b>');
  // Alice in a second tab (the same key, so the same user): her own reactions are marked.
  const again = await openChat(http, 'alice', aliceTabs);
  await until('alice\'s history', async () => (await texts(again)).includes('a reply from bob'));
  assert.deepEqual(await chips(again, 'final <b>text</b>'), ['🎉 1 (mine)', '👍 1 (mine)']);
  await again.screenshot({ path: path.join(SHOTS, 'history-state.png') });
  for (const p of [bob, late]) await p.close();
  await aliceTabs.close();
});

test('edits and replies with the keyboard alone: Escape leaves, ArrowUp edits your last message', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openChat(http, 'keys');
  const other = await openChat(http, 'other');
  await say(page, 'typo hre');
  await until('stored', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('typo hre'));
  // ArrowUp in the empty composer: edit the last message; Escape: back to saying.
  await page.focus('#say');
  await page.keyboard.press('ArrowUp');
  assert.equal(await page.inputValue('#say'), 'typo hre');
  await page.keyboard.press('Escape');
  assert.equal(await page.isVisible('#compose-bar'), false);
  assert.equal(await page.inputValue('#say'), '');
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('End');
  await page.keyboard.press('Backspace');
  await page.keyboard.press('Backspace');
  await page.keyboard.type('ere');
  await page.keyboard.press('Enter');
  await until('the other page sees the edit', async () => (await texts(other)).includes('typo here'));
  await line(other, 'typo here').locator('.edited').waitFor({ timeout: WAIT });
  // Reply from the keyboard: Tab to the message's Reply button (the actions show on focus).
  const reply = line(page, 'typo here').locator('button[data-action="reply"]');
  await reply.focus();
  assert.equal(await reply.evaluate((b) => getComputedStyle(b.parentElement).opacity), '1');
  await page.keyboard.press('Enter');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'say');
  await page.keyboard.type('answering myself');
  await page.keyboard.press('Enter');
  await until('the reply on the other page', async () => (await texts(other)).includes('answering myself'));
  assert.equal(await line(other, 'answering myself').locator('.quote-text').textContent(), 'typo here');
  await other.screenshot({ path: path.join(SHOTS, 'keyboard-edit-reply.png') });
  await page.close();
  await other.close();
});

// ---- typing, read positions, search, inbox --------------------------------------------------------

/// A `nanachat.v1` client of the test's own (Node `ws`), for what no page does: `next(pred)`
/// waits for a frame it received.
async function wsClient(url, nick) {
  const { default: WebSocket } = await import('ws');
  const ws = new WebSocket(url, 'nanachat.v1');
  const got = [];
  ws.on('message', (d) => got.push(JSON.parse(d.toString())));
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const send = (m) => ws.send(JSON.stringify(m));
  const next = async (what, pred) => { await until(what, async () => got.some(pred)); return got.find(pred); };
  send({ type: 'hello', nick, key: `${nick}'s test key` });
  await next('welcome', (m) => m.type === 'welcome');
  return { ws, send, next };
}

const typingLine = (page) => page.textContent('#typing');
const members = (page) => page.$$eval('#member-list li', (l) => l.map((e) => e.textContent));
/// The unread count next to a room in the room list ('' for none, null if not listed).
const badge = (page, room) => page.$$eval(`#room-list button[data-room="${room}"]`,
  (bs) => (bs.length ? bs[0].querySelector('.unread')?.textContent ?? '' : null));

test('typing: who types shows under the messages (never yourself), and goes when their message comes or 5 s later', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const ann = await openChat(http, 'ann');
  const bobTabs = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const bob = await openChat(http, 'bob', bobTabs);
  const bob2 = await openChat(http, 'bob', bobTabs); // bob's second tab: the same user
  const cat = await openChat(http, 'cat');
  for (const p of [ann, bob, bob2, cat]) {
    await until('everyone in the lobby', async () => ['ann', 'bob', 'cat'].every((n) => members(p).then((m) => m.includes(n))));
  }
  assert.equal(await ann.getAttribute('#typing', 'aria-live'), 'polite');
  await bob.locator('#say').pressSequentially('hel');
  await until('ann sees bob typing', async () => (await typingLine(ann)) === 'bob is typing…');
  await until('cat too', async () => (await typingLine(cat)) === 'bob is typing…');
  await cat.locator('#say').pressSequentially('me too');
  await until('two typing', async () => (await typingLine(ann)) === 'bob and cat are typing…');
  const catTyped = Date.now();
  await ann.screenshot({ path: path.join(SHOTS, 'typing.png') });
  // Nobody sees themselves typing, in any of their tabs.
  assert.equal(await typingLine(bob), 'cat is typing…');
  assert.equal(await typingLine(bob2), 'cat is typing…');
  assert.equal(await typingLine(cat), 'bob is typing…');
  // Bob's message comes: his name goes at once; cat's stays until 5 s after she typed.
  await bob.locator('#say').pressSequentially('lo');
  await bob.press('#say', 'Enter');
  await until('bob\'s message', async () => (await texts(ann)).includes('hello'));
  assert.equal(await typingLine(ann), 'cat is typing…');
  await until('cat\'s goes by itself', async () => (await typingLine(ann)) === '');
  const shown = Date.now() - catTyped;
  assert.ok(shown > 3500, `cat's typing went after ${shown} ms, not about 5 s`);
  await until('on bob\'s page too', async () => (await typingLine(bob)) === '');
  for (const p of [ann, cat]) await p.close();
  await bobTabs.close();
});

test('unread counts and read positions from the server: two tabs of one user stay in step', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const aliceTabs = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const a = await openChat(http, 'alice', aliceTabs);
  await a.fill('#join-room', 'side');
  await a.press('#join-room', 'Enter');
  await until('alice in side', async () => (await members(a)).includes('alice'));
  await a.click('#room-list button[data-room="lobby"]');
  const bob = await openChat(http, 'bob');
  await bob.fill('#join-room', 'side');
  await bob.press('#join-room', 'Enter');
  await until('bob in side', async () => (await members(bob)).includes('alice'));
  await say(bob, 'side one');
  await say(bob, 'side two');
  await until('tab a counts 2', async () => (await badge(a, 'side')) === '2');
  assert.equal(await a.getAttribute('#room-list button[data-room="side"]', 'aria-label'), '#side, 2 unread');

  // A second tab, opened now, lists side (from the server's inbox: it never joined it itself)
  // with the server's count.
  const b = await openChat(http, 'alice', aliceTabs);
  await until('tab b counts 2', async () => (await badge(b, 'side')) === '2');
  await b.screenshot({ path: path.join(SHOTS, 'unread-second-tab.png') });

  // Tab b opens side: the "new" line above the first unread message; seen to the end, so read,
  // and tab a's count goes too.
  await b.click('#room-list button[data-room="side"]');
  await until('b shows side', async () => (await texts(b)).includes('side two'));
  assert.equal(await b.$eval('#messages .unread-marker', (m) => m.nextElementSibling.querySelector('.text').textContent), 'side one');
  await until('tab a cleared', async () => (await badge(a, 'side')) === '');
  assert.equal(await badge(b, 'side'), '');
  await a.screenshot({ path: path.join(SHOTS, 'unread-read-elsewhere.png') });

  // Both tabs away from side: a new message counts in both; reading it in tab a clears tab b.
  await b.click('#room-list button[data-room="lobby"]');
  await say(bob, 'side three');
  for (const p of [a, b]) await until('1 unread', async () => (await badge(p, 'side')) === '1');
  await a.click('#room-list button[data-room="side"]');
  await until('a shows it', async () => (await texts(a)).includes('side three'));
  await until('tab b cleared', async () => (await badge(b, 'side')) === '');
  assert.equal(await badge(a, 'side'), '');
  // Tab a on side but hidden (another tab in front): a message there counts, under a "new"
  // line; once the tab shows again it is read, and tab b's count goes.
  const setVisibility = (p, v) => p.evaluate((v) => {
    Object.defineProperty(document, 'visibilityState', { value: v, configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  }, v);
  await setVisibility(a, 'hidden');
  await say(bob, 'side four');
  await until('a counts it', async () => (await badge(a, 'side')) === '1');
  await until('b too', async () => (await badge(b, 'side')) === '1');
  assert.equal(await a.$eval('#messages .unread-marker', (m) => m.nextElementSibling.querySelector('.text').textContent), 'side four');
  await a.screenshot({ path: path.join(SHOTS, 'unread-hidden-tab.png') });
  await setVisibility(a, 'visible');
  await until('a read it', async () => (await badge(a, 'side')) === '');
  await until('b cleared once more', async () => (await badge(b, 'side')) === '');
  // A third tab finds it read, too.
  const c = await openChat(http, 'alice', aliceTabs);
  await until('tab c lists side', async () => (await badge(c, 'side')) !== null);
  await until('tab c joined side', async () => (await c.$$('#room-list button[data-room="side"]')).length === 1);
  assert.equal(await badge(c, 'side'), '');
  await bob.close();
  await aliceTabs.close();
});

test('search: results with room, nick, time and text, never a deleted message; a result opens its message; errors are shown', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const saraTabs = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await openChat(http, 'sara', saraTabs);
  await say(page, 'the quick brown fox <b>jumps</b>');
  await say(page, 'a fox to delete');
  await until('stored', async () => (await texts(page)).includes('a fox to delete')
    && (await page.$$('#messages li.pending')).length === 0);
  await act(page, 'a fox to delete', 'delete');
  await line(page, 'a fox to delete').locator('button[data-action="delete"]').click();
  await until('deleted', async () => !(await texts(page)).includes('a fox to delete'));
  // A room sara is not in: not searched.
  const tom = await wsClient(url, 'tom');
  tom.send({ type: 'join', room: 'den' });
  tom.send({ type: 'say', room: 'den', text: 'a fox in the den', cid: 'd1' });
  await tom.next('stored', (m) => m.type === 'ack');

  await page.fill('#search', 'fox');
  await page.press('#search', 'Enter');
  const results = () => page.$$eval('#search-results .result', (rs) => rs.map((r) => r.querySelector('.result-text').textContent));
  await until('results', async () => (await results()).length > 0);
  assert.deepEqual(await results(), ['the quick brown fox <b>jumps</b>']);
  const first = page.locator('#search-results .result').first();
  assert.equal(await first.locator('.result-room').textContent(), '#lobby');
  assert.equal(await first.locator('.result-from').textContent(), 'sara');
  assert.ok(await first.locator('time').getAttribute('datetime'));
  assert.equal(await page.$$eval('#search-results b', (b) => b.length), 0, 'text, not markup');
  assert.match(await page.textContent('#search-status'), /1 message found for “fox”/);
  await page.screenshot({ path: path.join(SHOTS, 'search.png') });
  // A result that is loaded: scrolled to, flashed and focused.
  await first.click();
  await until('focused', async () => (await page.evaluate(() => document.activeElement.dataset.seq)) === '1');
  assert.equal(await page.evaluate(() => document.activeElement.classList.contains('flash')), true);

  // A result not loaded (a tab opened after 60 more messages loads the last 50): older history
  // is paged in until it is there. From the keyboard alone.
  const cli = terminalClient(url, 'chatty');
  for (let i = 1; i <= 60; i++) cli.say(`filler ${i}`);
  await until('fillers', async () => cli.lines().includes('[lobby] chatty: filler 60'));
  const late = await openChat(http, 'sara', saraTabs);
  await until('the latest page', async () => (await texts(late)).includes('filler 60'));
  assert.ok(!(await texts(late)).includes('the quick brown fox <b>jumps</b>'));
  await late.focus('#search');
  await late.keyboard.type('QUICK jumps');
  await late.keyboard.press('Enter');
  await late.waitForSelector('#search-results .result', { timeout: WAIT });
  await late.keyboard.press('ArrowDown'); // from the search box to the first result
  assert.equal(await late.evaluate(() => document.activeElement.className), 'result');
  await late.keyboard.press('Enter');
  await until('paged back to it', async () => (await late.evaluate(() => document.activeElement.dataset.seq)) === '1');
  assert.ok((await texts(late)).includes('the quick brown fox <b>jumps</b>'));
  await late.screenshot({ path: path.join(SHOTS, 'search-jump.png') });
  // Escape closes the results.
  await late.focus('#search');
  await late.keyboard.press('Escape');
  assert.equal(await late.isVisible('#search-panel'), false);

  // The server refuses a search without a word: its error is shown, as an alert.
  await page.fill('#search', '!!! ???');
  await page.press('#search', 'Enter');
  await page.waitForSelector('#search-error:text("bad_message")', { timeout: WAIT });
  assert.equal(await page.getAttribute('#search-error', 'role'), 'alert');
  assert.equal(await page.$$eval('#search-results .result', (rs) => rs.length), 0);
  await page.screenshot({ path: path.join(SHOTS, 'search-error.png') });
  tom.ws.close();
  await saraTabs.close();
});

test('inbox after a reconnect: a direct message sent while the page was offline is listed with 1 unread and opens', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const tabs = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  // The page's connections go through the test, which can cut them and refuse new ones.
  let online = true;
  const links = [];
  await tabs.routeWebSocket(/.*/, (ws) => {
    if (!online) { ws.close({ code: 1001, reason: 'offline' }); return; }
    links.push([ws, ws.connectToServer()]);
  });
  const page = await openChat(http, 'cara', tabs);
  online = false;

  for (const [ws, server] of links) { server.close(); ws.close({ code: 1001, reason: 'offline' }); }
  await page.waitForSelector('#status.offline', { timeout: WAIT });
  // Meanwhile dan writes to cara in their direct-message room (nothing reaches the page).
  const dan = await wsClient(url, 'dan');
  dan.send({ type: 'join', room: '@cara+dan' });
  await dan.next('joined', (m) => m.type === 'joined');
  dan.send({ type: 'say', room: '@cara+dan', text: 'psst, while you were away', cid: 'p1' });
  await dan.next('stored', (m) => m.type === 'ack');
  assert.equal(await badge(page, '@cara+dan'), null);
  online = true;
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await until('the inbox lists it', async () => (await badge(page, '@cara+dan')) === '1');
  assert.equal(await page.textContent('#room-list button[data-room="@cara+dan"]'), '@dan1');
  await page.screenshot({ path: path.join(SHOTS, 'inbox-after-reconnect.png') });
  // A second tab of cara's lists it too; opening it in the first one clears both.
  const other = await openChat(http, 'cara', tabs);
  await until('the second tab lists it', async () => (await badge(other, '@cara+dan')) === '1');
  await page.click('#room-list button[data-room="@cara+dan"]');
  await until('shown', async () => (await texts(page)).includes('psst, while you were away'));
  await until('read', async () => (await badge(page, '@cara+dan')) === '');
  await until('read in the second tab too', async () => (await badge(other, '@cara+dan')) === '');
  // And answered from there.
  await say(page, 'back now');
  await dan.next('the answer', (m) => m.type === 'message' && m.text === 'back now');
  dan.ws.close();
  await tabs.close();
});

// ---- a room as Slack and Element show one (issue 19, item 8) -----------------------------------

/// The terminal client's nick colour (src/client/output.rs: NICK_COLOURS, colour_of), written
/// again here: the page must pick the same one.
function terminalColour(nick) {
  let h = 5381;
  for (const b of Buffer.from(nick, 'utf8')) h = (Math.imul(h, 33) ^ b) >>> 0;
  return [31, 32, 33, 34, 35, 36][h % 6];
}

const publicRooms = (page) => page.$$eval('#public-rooms li.room', (l) => l.map((e) => e.textContent));
/// Each `rooms` request the page sends, counted.
function countRoomsAsked(page) {
  const asked = { n: 0 };
  page.on('websocket', (ws) => ws.on('framesent', (f) => {
    try { if (JSON.parse(f.payload).type === 'rooms') asked.n += 1; } catch { /* not JSON */ }
  }));
  return asked;
}

test('room counts stay live from presence (no polling), and a direct-message room lists both of its members', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  const asked = countRoomsAsked(page);
  await page.goto(`${http}/`);
  await page.fill('#nick', 'alice');
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await until('#lobby (1)', async () => (await publicRooms(page)).includes('#lobby (1)'));
  const bob = await openChat(http, 'bob');
  await until('#lobby (2) once bob is in', async () => (await publicRooms(page)).includes('#lobby (2)'));
  const carol = await openChat(http, 'carol');
  await until('#lobby (3)', async () => (await publicRooms(page)).includes('#lobby (3)'));
  await carol.close();
  await until('#lobby (2) once carol left', async () => (await publicRooms(page)).includes('#lobby (2)'));
  assert.ok(asked.n <= 2, `the rooms list was asked ${asked.n} times: the counts come from presence`);
  // A direct-message room: both of its members listed, each in their colour.
  await page.fill('#dm-nick', 'bob');
  await page.press('#dm-nick', 'Enter');
  await until('the DM room shown', async () => (await page.textContent('#room-title')) === '@bob');
  await until('both members', async () => (await members(page)).join(',') === 'alice,bob');
  assert.equal(await page.getAttribute('#member-list li:has-text("bob")', 'class'), `member nick-c${terminalColour('bob')}`);
  await bob.close();
  await page.close();
});

/// A page logged in as `nick` on a desktop or, with `phone`, a phone-sized screen.
async function openOn(http, nick, phone) {
  const page = phone
    ? await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
    : await browser.newPage({ viewport: { width: 1000, height: 640 } });
  await page.goto(`${http}/`);
  await page.fill('#nick', nick);
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  return page;
}

/// Waits for `cond` for at most `ms` (shorter than the 15 s the rooms list was polled every).
async function soon(what, cond, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

for (const phone of [false, true]) {
  const on = phone ? 'a phone' : 'a desktop';
  test(`on ${on}, the count of a room the page is not in follows joins and leaves within seconds (watch, no polling)`, async () => {
    const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
    const page = await openOn(http, 'alice', phone);
    const asked = countRoomsAsked(page);
    await until('#lobby (1)', async () => (await publicRooms(page)).includes('#lobby (1)'));
    const x = await wsClient(url, 'xavier');
    x.send({ type: 'join', room: 'elsewhere' });
    await soon('#elsewhere (1)', async () => (await publicRooms(page)).includes('#elsewhere (1)'));
    const y = await wsClient(url, 'yuki');
    y.send({ type: 'join', room: 'elsewhere' });
    await soon('#elsewhere (2)', async () => (await publicRooms(page)).includes('#elsewhere (2)'));
    // Busiest first.
    assert.equal((await publicRooms(page))[0], '#elsewhere (2)');
    y.ws.close();
    await soon('#elsewhere (1) once yuki is gone', async () => (await publicRooms(page)).includes('#elsewhere (1)'));
    x.send({ type: 'leave', room: 'elsewhere' });
    await soon('#elsewhere gone once empty', async () => !(await publicRooms(page)).some((r) => r.startsWith('#elsewhere')));
    assert.equal(asked.n, 0, 'the rooms list was not asked again');
    await page.screenshot({ path: path.join(SHOTS, `live-counts-${phone ? 'phone' : 'desktop'}.png`) });
    x.ws.close();
    await page.close();
  });

  test(`on ${on}, a direct-message room shows whether the other one is online, live, as a dot and in words`, async () => {
    const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
    const bobContext = await browser.newContext({ viewport: { width: 1000, height: 640 } });
    let bob = await openChat(http, 'bob', bobContext);
    const page = await openOn(http, 'alice', phone);
    if (phone) {
      // The rooms drawer holds "Message someone".
      await page.click('#rooms-toggle');
      await until('the rooms drawer', () => page.isVisible('#dm-nick'));
    }
    await page.fill('#dm-nick', 'bob');
    await page.press('#dm-nick', 'Enter');
    await until('the DM room shown', async () => (await page.textContent('#room-title')) === '@bob');
    const peer = async () => ({
      shown: await page.isVisible('#peer-presence .dot'),
      online: await page.getAttribute('#peer-presence', 'data-online'),
      words: await page.textContent('#peer-presence-text'),
    });
    await soon('bob online', async () => (await peer()).online === 'true');
    assert.deepEqual(await peer(), { shown: true, online: 'true', words: 'bob is online' });
    assert.equal(await page.getAttribute('#peer-presence', 'role'), 'status');
    await page.screenshot({ path: path.join(SHOTS, `dm-online-${phone ? 'phone' : 'desktop'}.png`) });
    await bob.close();
    await soon('bob offline', async () => (await peer()).online === 'false');
    assert.deepEqual(await peer(), { shown: true, online: 'false', words: 'bob is offline' });
    await page.screenshot({ path: path.join(SHOTS, `dm-offline-${phone ? 'phone' : 'desktop'}.png`) });
    bob = await openChat(http, 'bob', bobContext); // the same key: the nick is bob's
    await soon('bob online again', async () => (await peer()).online === 'true');
    // A public room has no dot.
    if (!phone) {
      await page.click('#room-list button[data-room="lobby"]');
      await until('#lobby shown', async () => (await page.textContent('#room-title')) === '#lobby');
      assert.ok(!(await page.isVisible('#peer-presence')), 'no dot in a public room');
    }
    await bobContext.close();
    await page.close();
  });
}

test('messages: no seqs, one sender\'s run grouped, a day separator, an empty room says so, links, nick colours as in the terminal', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const alice = await openChat(http, 'alice');
  // An empty room says so.
  await until('the empty state', async () => /No messages yet in #lobby/.test(await alice.$eval('#empty', (e) => e.textContent).catch(() => '')));
  assert.ok(await alice.isVisible('#empty'));
  const bob = await openChat(http, 'bob');
  await say(alice, 'first');
  await say(alice, 'see https://example.com/wiki/A_(b)?x=1&y=2. and <b>javascript:alert(1)</b> or JAVASCRIPT://x or ftp://files.test');
  await say(alice, 'third');
  await until('alice\'s three', async () => (await texts(bob)).includes('third'));
  await say(bob, 'bob answers');
  await until('bob\'s', async () => (await texts(bob)).includes('bob answers')
    && (await bob.$$('#messages li.pending')).length === 0);
  assert.ok(!(await bob.isVisible('#empty')), 'no empty state once there are messages');
  // No seq on screen (#1, #2…); each message's time is a link to it.
  const shown = await bob.innerText('#messages');
  assert.doesNotMatch(shown, /#\d+/);
  assert.equal(await bob.locator('#messages li.msg a.permalink').count(), 4);
  assert.match(await bob.getAttribute('#messages li.msg a.permalink >> nth=0', 'href'), /^#lobby\/\d+$/);
  // Grouped: alice's name once for her three, then bob's.
  // Grouped: alice's name and avatar once for her three, then bob's — as they came, and on a
  // page that loads them from history.
  const rows = (page) => page.$$eval('#messages > li', (l) => l.map((li) => (li.classList.contains('day') ? `day:${li.textContent}`
    : li.classList.contains('msg') ? `${li.dataset.from}${li.classList.contains('cont') ? '+' : ''}` : `${li.className}:${li.textContent}`)));
  const live = (await rows(bob)).filter((r) => !r.startsWith('unread-marker')); // a "new" line ends a group
  assert.deepEqual(live.map((r) => r.replace('+', '')), ['day:Today', 'alice', 'alice', 'alice', 'bob']);
  assert.ok(live.includes('alice+'), `grouped as they came: ${live}`);
  const late = await openChat(http, 'late');
  await until('history', async () => (await texts(late)).includes('bob answers'));
  assert.deepEqual(await rows(late), ['day:Today', 'alice', 'alice+', 'alice+', 'bob']);
  assert.equal(await late.locator('#messages li.msg.cont .avatar').first().isVisible(), false);
  assert.equal(await late.locator('#messages li.msg:not(.cont) .avatar').count(), 2);
  await late.close();
  // Links: http(s) only, opening in a new tab with no opener or referrer; the rest stays text.
  const links = await bob.$$eval('#messages a.link', (l) => l.map((a) => ({ href: a.getAttribute('href'), text: a.textContent, target: a.target, rel: a.rel })));
  assert.deepEqual(links, [{ href: 'https://example.com/wiki/A_(b)?x=1&y=2', text: 'https://example.com/wiki/A_(b)?x=1&y=2', target: '_blank', rel: 'noopener noreferrer' }]);
  assert.equal(await bob.$$eval('#messages a', (l) => l.filter((a) => !/^(https?:|#)/.test(a.getAttribute('href'))).length), 0);
  assert.equal(await bob.$$eval('#messages b', (l) => l.length), 0);
  assert.ok((await texts(bob)).includes('see https://example.com/wiki/A_(b)?x=1&y=2. and <b>javascript:alert(1)</b> or JAVASCRIPT://x or ftp://files.test'));
  // Nick colours: the terminal's, by the same hash (alice 36 cyan, bob 31 red).
  assert.equal(terminalColour('alice'), 36);
  assert.equal(terminalColour('bob'), 31);
  assert.equal(terminalColour('émile'), 33);
  for (const nick of ['alice', 'bob']) {
    const cls = await bob.getAttribute(`#messages li.msg[data-from="${nick}"] .from >> nth=0`, 'class');
    assert.ok(cls.split(' ').includes(`nick-c${terminalColour(nick)}`), `${nick}: ${cls}`);
  }
  // The list is a live region: a separator in place stays as it is when messages come (not
  // taken out and put back, to be read out again).
  await bob.$eval('#messages li.day', (d) => { d.dataset.probe = 'kept'; });
  await say(alice, 'one more');
  await until('one more', async () => (await texts(bob)).includes('one more'));
  assert.equal(await bob.$eval('#messages li.day', (d) => d.dataset.probe), 'kept');
  assert.equal(await bob.locator('#messages li.day').count(), 1);
  // A message's link opens it: its room, scrolled to it, focused.
  const href = await bob.getAttribute('#messages li.msg a.permalink >> nth=1', 'href');
  const carol = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  await carol.goto(`${http}/${href}`);
  await carol.fill('#nick', 'carol');
  await carol.press('#nick', 'Enter');
  await until('the linked message focused', async () => carol.evaluate((seq) => document.activeElement?.dataset?.seq === seq, href.split('/')[1]));
  await carol.close();
  const colours = await bob.$$eval('#messages li.msg:not(.cont) .from', (l) => l.map((e) => getComputedStyle(e).color));
  assert.notEqual(colours[0], colours[1]);
  assert.notEqual(colours[0], 'rgb(26, 26, 26)');
  await bob.screenshot({ path: path.join(SHOTS, 'grouped-links-colours.png') });
  await alice.close();
  await bob.close();
});

test('day separators: a day\'s messages under its date, today\'s under "Today"', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const cli = terminalClient(url, 'early');
  cli.say('three days ago');
  cli.say('later that day');
  await until('stored', async () => cli.lines().includes('[lobby] early: later that day'));
  // The page's `history` answers are made three days older on their way (its connection goes
  // through the test): the server cannot be asked to store a message in the past.
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  const old = new Date();
  old.setDate(old.getDate() - 3);
  old.setHours(12, 0, 0, 0);
  await page.routeWebSocket(/.*/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((data) => {
      const msg = JSON.parse(data);
      if (msg.type === 'history') {
        msg.messages.forEach((m, i) => { m.time = old.getTime() + i * 60000; });
        ws.send(JSON.stringify(msg));
      } else {
        ws.send(data);
      }
    });
  });
  await page.goto(`${http}/`);
  await page.fill('#nick', 'dora');
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  await until('history', async () => (await texts(page)).includes('later that day'));
  await say(page, 'and today');
  await until('today\'s', async () => (await texts(page)).includes('and today'));
  const label = old.toLocaleDateString('en-US', { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  const rows = await page.$$eval('#messages > li', (l) => l.map((li) => (li.classList.contains('day') ? `day:${li.textContent}`
    : `${li.dataset.from}${li.classList.contains('cont') ? '+' : ''}`)));
  assert.deepEqual(rows, [`day:${label}`, 'early', 'early+', 'day:Today', 'dora']);
  assert.equal(await page.getAttribute('#messages li.day >> nth=1', 'role'), 'separator');
  await page.close();
});

test('a phone: rooms and members in drawers, opened and closed with the keyboard alone', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const other = await openChat(http, 'otto');
  const page = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await page.goto(`${http}/`);
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'nick');
  await page.keyboard.type('pia');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  const inView = (sel) => page.$eval(sel, (e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.left >= 0 && r.top >= 0 && r.right <= window.innerWidth && r.bottom <= window.innerHeight;
  });
  // The messages take the screen: neither list is in the way, the composer is whole.
  assert.ok(!(await page.isVisible('#member-list')), 'the members are in a drawer');
  assert.ok(!(await page.isVisible('#join-room')), 'the rooms are in a drawer');
  assert.ok(await inView('#say'));
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'nothing wider than the screen');
  await page.screenshot({ path: path.join(SHOTS, 'phone-chat.png') });
  // Members: the toggle opens the drawer, both nicks in it, Escape closes it and gives the
  // focus back to the toggle.
  await page.focus('#members-toggle');
  assert.equal(await page.getAttribute('#members-toggle', 'aria-expanded'), 'false');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#member-list', { state: 'visible', timeout: WAIT });
  await until('both members', async () => ['otto', 'pia'].every((n) => members(page).then((m) => m.includes(n))));
  await until('the drawer in view', async () => inView('#member-list li:has-text("otto")'));
  assert.equal(await page.getAttribute('#members-toggle', 'aria-expanded'), 'true');
  assert.ok(await page.$eval('#say', (e) => !!e.closest('[inert]')), 'the messages are out of reach under the drawer');
  await page.screenshot({ path: path.join(SHOTS, 'phone-members.png') });
  await page.keyboard.press('Escape');
  await page.waitForSelector('#member-list', { state: 'hidden', timeout: WAIT });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'members-toggle');
  assert.ok(await page.$eval('#say', (e) => !e.closest('[inert]')));
  // Rooms: the drawer's inputs are whole; a room joined from it closes it and is shown.
  await page.focus('#rooms-toggle');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#join-room', { state: 'visible', timeout: WAIT });
  await until('the rooms drawer in view', async () => (await inView('#join-room')) && (await inView('#dm-nick')));
  await page.screenshot({ path: path.join(SHOTS, 'phone-rooms.png') });
  await page.focus('#join-room');
  await page.keyboard.type('pocket');
  await page.keyboard.press('Enter');
  await until('#pocket shown', async () => (await page.textContent('#room-title')) === '#pocket');
  await page.waitForSelector('#join-room', { state: 'hidden', timeout: WAIT });
  await page.keyboard.type('from my phone');
  await page.keyboard.press('Enter');
  await until('said', async () => (await texts(page)).includes('from my phone'));
  await other.close();
  await page.close();
});

test('the reconnect countdown ticks: "reconnecting in 2…", then "1…"', async () => {
  const server = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openChat(server.http, 'waiter');
  await page.evaluate(() => {
    window.statuses = [];
    const s = document.getElementById('status');
    new MutationObserver(() => window.statuses.push(s.textContent)).observe(s, { childList: true, characterData: true, subtree: true });
  });
  server.proc.kill('SIGKILL');
  await page.waitForSelector('#status.offline', { timeout: WAIT });
  // Each wait is longer than the one before: one of 2 s or more comes within a few seconds,
  // and is counted down a second at a time.
  await until('a countdown that ticks', async () => {
    const seen = await page.evaluate(() => window.statuses);
    return seen.some((t, i) => {
      const m = /reconnecting in (\d+)…$/.exec(t);
      return m && Number(m[1]) >= 2 && seen.slice(i + 1).find((u) => u !== t) === `offline — reconnecting in ${Number(m[1]) - 1}…`;
    });
  });
  await page.close();
});

test('a favicon at /favicon.ico, linked from the page', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await browser.newPage();
  const missing = [];
  page.on('response', (r) => { if (r.status() >= 400) missing.push(r.url()); });
  await page.goto(`${http}/`);
  const ico = await page.request.get(`${http}/favicon.ico`);
  assert.equal(ico.status(), 200);
  assert.equal(ico.headers()['content-type'], 'image/svg+xml');
  assert.match(await ico.text(), /^<svg /);
  const href = await page.getAttribute('link[rel="icon"]', 'href');
  const linked = await page.request.get(new URL(href, `${http}/`).href);
  assert.equal(linked.status(), 200);
  assert.match(linked.headers()['content-type'], /^image\//);
  assert.deepEqual(missing, []);
  await page.close();
});

test('a rename: the member list takes the new nick out of `presence` renamed, the page its own from `renamed`', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  // The server's side of a rename is played by the test, over a real server's connection.
  let toPage = null;
  await page.routeWebSocket(/.*/, (ws) => {
    ws.connectToServer();
    toPage = (frame) => ws.send(JSON.stringify(frame));
  });
  await page.goto(`${http}/`);
  await page.fill('#nick', 'rita');
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  const bob = await openChat(http, 'bob');
  await until('bob in', async () => (await members(page)).includes('bob'));
  toPage({ type: 'presence', room: 'lobby', nick: 'bobby', event: 'renamed', from: 'bob' });
  await until('bob is bobby', async () => (await members(page)).join(',') === 'bobby,rita');
  toPage({ type: 'renamed', from: 'rita', to: 'rita2' });
  await until('rita is rita2', async () => (await page.textContent('#me')) === 'as rita2');
  toPage({ type: 'some_future_event', room: 'lobby' });
  await say(page, 'still here');
  await until('acked', async () => (await texts(page)).includes('still here') && (await page.$$('#messages li.pending')).length === 0);
  await bob.close();
  await page.close();
});

// ---- issue 19: what an attacker found -------------------------------------------------------

/// A page of `nick` at `viewport` (a phone when narrow), connected.
async function openAt(http, nick, viewport) {
  const phone = viewport.width < 700;
  const page = await browser.newPage({ viewport, ...(phone ? { isMobile: true, hasTouch: true } : {}) });
  page.on('dialog', (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  await page.goto(`${http}/`);
  await page.fill('#nick', nick);
  await page.press('#nick', 'Enter');
  await page.waitForSelector('#status:text("connected")', { timeout: WAIT });
  return page;
}

const pageWidth = (page) => page.evaluate(() => ({ scroll: document.scrollingElement.scrollWidth, inner: window.innerWidth }));

test('long names (a 64-character room, 32-character nicks) never widen the page, on a desktop or a phone: cut with "…", whole in a tooltip', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const ROOM = 'W'.repeat(64);
  const nicks = ['A', 'B', 'C'].map((c) => c.repeat(32));
  const others = [];
  for (const [i, nick] of nicks.entries()) {
    const o = await wsClient(url, nick);
    o.send({ type: 'join', room: ROOM });
    await o.next('joined', (m) => m.type === 'joined');
    o.send({ type: 'say', room: ROOM, text: `message ${i} ${'W'.repeat(20)}`, cid: `l${i}` });
    await o.next('acked', (m) => m.type === 'ack');
    others.push(o);
  }
  for (const viewport of [{ width: 1280, height: 800 }, { width: 390, height: 844 }]) {
    const phone = viewport.width < 700;
    const page = await openAt(http, (phone ? 'P' : 'D').repeat(32), viewport);
    if (phone) { await page.click('#rooms-toggle'); await page.waitForSelector('#join-room', { state: 'visible', timeout: WAIT }); }
    await page.fill('#join-room', ROOM);
    await page.press('#join-room', 'Enter');
    await until('the room shown', async () => (await page.textContent('#room-title')) === `#${ROOM}`);
    await until('its messages', async () => (await texts(page)).includes(`message 2 ${'W'.repeat(20)}`));
    await say(page, 'mine');
    await until('acked', async () => (await page.$$('#messages li.pending')).length === 0 && (await texts(page)).includes('mine'));
    // `typing` goes at most once every 2 s a nick: said again until it shows.
    await until('three typing', async () => {
      for (const o of others) o.send({ type: 'typing', room: ROOM });
      return /, .* and .* are typing/.test(await typingLine(page));
    });
    const w = await pageWidth(page);
    await page.screenshot({ path: path.join(SHOTS, `long-names-${viewport.width}.png`) });
    assert.ok(w.scroll <= w.inner, `${viewport.width} wide: the page is ${w.scroll} px wide`);
    // Each long name is whole in its tooltip.
    assert.equal(await page.getAttribute('#room-title', 'title'), `#${ROOM}`);
    assert.equal(await page.getAttribute(`#room-list button[data-room="${ROOM}"]`, 'title'), `#${ROOM}`);
    assert.equal(await page.getAttribute(`#messages li.msg[data-from="${nicks[0]}"] .from`, 'title'), nicks[0]);
    assert.match(await page.getAttribute('#typing', 'title'), /are typing/);
    // The time next to a 32-character nick stays on one line.
    const meta = await page.$eval(`#messages li.msg[data-from="${nicks[0]}"] .meta`, (e) => e.getClientRects().length);
    assert.equal(meta, 1, 'the time on one line');
    const metaHeight = await page.$eval(`#messages li.msg[data-from="${nicks[0]}"] .meta`, (e) => e.getBoundingClientRect().height);
    assert.ok(metaHeight < 30, `the time is ${metaHeight} px tall`);
    // The members (a drawer on a phone) are on the screen.
    if (phone) {
      await page.click('#members-toggle');
      await page.waitForSelector('#member-list', { state: 'visible', timeout: WAIT });
    }
    await until('the members on screen', async () => page.$eval('#members-panel', (e) => {
      const r = e.getBoundingClientRect();
      return r.left >= 0 && r.right <= window.innerWidth + 0.5 && r.width > 0;
    }));
    assert.equal(await page.getAttribute(`#member-list li:has-text("${nicks[1]}")`, 'title'), nicks[1]);
    const after = await pageWidth(page);
    assert.ok(after.scroll <= after.inner, `${viewport.width} wide, members shown: the page is ${after.scroll} px wide`);
    await page.close();
  }
  for (const o of others) o.ws.close();
});

test('a message keeps its line breaks; room names are shown as they are (not upper-cased)', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const o = await wsClient(url, 'breaker');
  o.send({ type: 'join', room: 'Renroom' });
  await o.next('joined', (m) => m.type === 'joined');
  o.send({ type: 'say', room: 'Renroom', text: 'a\nb\nc', cid: 'n1' });
  await o.next('acked', (m) => m.type === 'ack');
  const page = await openChat(http, 'reader');
  await page.fill('#join-room', 'Renroom');
  await page.press('#join-room', 'Enter');
  await until('the message', async () => (await texts(page)).includes('a\nb\nc'));
  // As rendered (innerText follows the CSS): three lines, the name as it was written.
  assert.equal(await page.$eval('#messages li .text', (e) => e.innerText), 'a\nb\nc');
  assert.equal(await page.$eval('#room-title', (e) => e.innerText), '#Renroom');
  await page.close();
  o.ws.close();
});

test('after a reconnect, lines typed offline take their place by seq once acked (after what others said meanwhile)', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nanachat-browser-'));
  let server = await serve(['--data-dir', dir, '--addr', '127.0.0.1:0']);
  const addr = server.url.replace('ws://', '');
  const page = await openChat(server.http, 'offliner');
  await say(page, 'b1');
  await until('b1 acked', async () => (await page.$$('#messages li.pending')).length === 0 && (await texts(page)).includes('b1'));
  server.proc.kill('SIGKILL');
  await page.waitForSelector('#status.offline', { timeout: WAIT });
  await say(page, 'b4');
  await say(page, 'b5');
  // Back once the page waits 2 s or more: others speak before it comes back.
  let status = '';
  await until('a long wait', async () => Number(/reconnecting in ([\d.]+)/.exec(status = await page.textContent('#status'))?.[1] ?? 0) >= 2)
    .catch((e) => { throw new Error(`${e.message} (the status said ${status})`); });
  server = await serve(['--data-dir', dir, '--addr', addr]);
  const other = await wsClient(server.url, 'other');
  other.send({ type: 'join', room: 'lobby' });
  await other.next('joined', (m) => m.type === 'joined');
  for (let i = 11; i <= 20; i++) other.send({ type: 'say', room: 'lobby', text: `m${i}`, cid: `m${i}` });
  await other.next('m20 acked', (m) => m.type === 'ack' && m.cid === 'm20');
  await until('everything acked', async () => {
    const t = await texts(page);
    return t.includes('m20') && t.includes('b5') && (await page.$$('#messages li.pending')).length === 0;
  });
  const seqs = await page.$$eval('#messages li[data-seq]', (l) => l.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `in seq order: ${JSON.stringify(await texts(page))}`);
  assert.deepEqual((await texts(page)).slice(-3), ['m20', 'b4', 'b5']);
  await page.close();
  other.ws.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a reconnect that hangs (a server that accepts and says nothing) reads "connecting…", not a countdown stuck at "1…"', async () => {
  // A stalled server (SIGSTOP): its socket still takes connections, and nothing answers. The
  // page notices the silence by the missing ticks (a 1 s heartbeat), then tries again.
  const server = await serve(['--memory', '--addr', '127.0.0.1:0', '--heartbeat', '1s']);
  const page = await openChat(server.http, 'patient');
  server.proc.kill('SIGSTOP');
  try {
    await page.waitForSelector('#status.offline', { timeout: WAIT });
    await until('"connecting…" said', async () => /connecting…/.test(await page.textContent('#status')));
    assert.ok(await page.$eval('#status', (e) => e.classList.contains('offline')));
  } finally {
    server.proc.kill('SIGCONT');
    await page.close();
  }
});

test('labels name a message by its sender and time, never its seq; a new message reads as who said what, its buttons after it', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const alice = await openChat(http, 'alice');
  const bob = await openChat(http, 'bob');
  await say(bob, 'the original remark');
  await until('bob\'s', async () => (await texts(alice)).includes('the original remark'));
  await act(alice, 'the original remark', 'reply');
  await say(alice, 'a reply to it');
  await until('the reply acked', async () => (await texts(alice)).includes('a reply to it')
    && (await alice.$$('#messages li.pending')).length === 0);
  const labels = await alice.$$eval('#messages [aria-label], #messages [title]',
    (l) => l.flatMap((e) => [e.getAttribute('aria-label'), e.getAttribute('title')]).filter(Boolean));
  const withSeq = labels.filter((t) => /#\d+/.test(t));
  assert.deepEqual(withSeq, [], 'no seq in a label');
  assert.ok(labels.some((t) => /^Reply to bob's message at \d\d:\d\d/.test(t)), JSON.stringify(labels));
  assert.ok(labels.some((t) => /^In reply to bob: “the original remark”/.test(t)), JSON.stringify(labels));
  // Read in order: the sender and the text come before the buttons.
  const order = await alice.$eval('#messages li.msg:last-child', (li) => {
    const all = Array.from(li.querySelectorAll('.from, .text, .actions'));
    return all.map((e) => e.className.split(' ')[0]);
  });
  assert.deepEqual(order, ['from', 'text', 'actions']);
  // A search result's tooltip: no seq either.
  await alice.fill('#search', 'original');
  await alice.press('#search', 'Enter');
  await alice.waitForSelector('#search-results button.result', { timeout: WAIT });
  assert.doesNotMatch(await alice.getAttribute('#search-results button.result', 'title'), /#\d+/);
  await alice.close();
  await bob.close();
});

test('a phone drawer takes the focus, and Tab stays in it (not the search box or buttons behind it)', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openAt(http, 'thumb', { width: 390, height: 844 });
  for (const which of ['rooms', 'members']) {
    await page.focus(`#${which}-toggle`);
    await page.keyboard.press('Enter');
    await until(`the ${which} drawer has the focus`, async () => page.evaluate((w) => !!document.activeElement?.closest(`#${w}-panel`), which));
    for (let i = 0; i < 4; i++) {
      await page.keyboard.press('Tab');
      const where = await page.evaluate((w) => (document.activeElement?.closest(`#${w}-panel`) ? 'in' : document.activeElement?.id || document.activeElement?.tagName), which);
      assert.ok(where === 'in' || where === 'BODY', `Tab ${i + 1} went to ${where}, behind the ${which} drawer`);
    }
    await page.keyboard.press('Escape');
    await until('the focus back on the toggle', async () => page.evaluate((w) => document.activeElement?.id === `${w}-toggle`, which));
  }
  await page.close();
});

test('message links: a room the page is not in is offered, not joined; a bad name or another pair\'s DM is not followed', async () => {
  const { url, http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const o = await wsClient(url, 'owner');
  o.send({ type: 'join', room: 'elsewhere' });
  await o.next('joined', (m) => m.type === 'joined');
  o.send({ type: 'say', room: 'elsewhere', text: 'linked message', cid: 'e1' });
  const ack = await o.next('acked', (m) => m.type === 'ack');
  const page = await openChat(http, 'visitor');
  const rooms = () => page.$$eval('#room-list button', (l) => l.map((b) => b.dataset.room));
  // Not a room name the server takes: nothing happens.
  await page.evaluate(() => { location.hash = `#${encodeURIComponent('Hacked! Call +1 555')}/1`; });
  await page.evaluate(() => { location.hash = '#@alice+bob/1'; });
  await page.evaluate((seq) => { location.hash = `#elsewhere/${seq}`; }, ack.seq);
  await page.waitForSelector('#messages button.join-link', { timeout: WAIT });
  assert.deepEqual(await rooms(), ['lobby'], 'nothing joined by a link');
  assert.equal(await page.textContent('#room-title'), '#lobby');
  await page.click('#messages button.join-link');
  await until('#elsewhere shown with the message', async () => (await page.textContent('#room-title')) === '#elsewhere'
    && (await texts(page)).includes('linked message'));
  assert.deepEqual((await rooms()).sort(), ['elsewhere', 'lobby']);
  await page.close();
  o.ws.close();
});

test('"Message someone" with your own nick opens your note-to-self room', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openChat(http, 'solo');
  await page.fill('#dm-nick', 'solo'); // exactly as logged in
  await page.press('#dm-nick', 'Enter');
  await until('the note-to-self room shown', async () => (await page.textContent('#room-title')) === '@solo');
  await say(page, 'remember the milk');
  await until('acked', async () => (await page.$$('#messages li.pending')).length === 0
    && (await texts(page)).includes('remember the milk'));
  assert.equal((await page.$$('#messages li.failed')).length, 0);
  await page.close();
});

test('a link ends before closing punctuation (…, 」, 。); a message of only invisible characters is not sent', async () => {
  const { http } = await serve(['--memory', '--addr', '127.0.0.1:0']);
  const page = await openChat(http, 'linker');
  await say(page, '\u200b\u200b');
  await say(page, '「https://example.com/a」 and https://example.com/b… and https://example.com/c。');
  await until('said', async () => (await page.$$('#messages li.pending')).length === 0 && (await texts(page)).length === 1);
  const hrefs = await page.$$eval('#messages a.link', (l) => l.map((a) => a.getAttribute('href')));
  assert.deepEqual(hrefs, ['https://example.com/a', 'https://example.com/b', 'https://example.com/c']);
  await page.close();
});
