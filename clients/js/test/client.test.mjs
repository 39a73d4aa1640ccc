// The client library against a real `nanachat serve`. Run by scripts/check:
//   NANACHAT_BIN=target/debug/nanachat node --test clients/js/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Client, NanachatError, dmRoom, tokenClaims } from '../nanachat.js';
import { ROOT, WebSocket, serve, kill9, within, until, next, mint, secretFile, tempDir } from './helpers.mjs';

const clients = [];
function client(url, nick, options = {}) {
  const c = new Client({ url, nick, key: `${nick}-key-0123456789`, WebSocket, backoff: { initialMs: 100, maxMs: 1000 }, ...options });
  clients.push(c);
  return c;
}
test.afterEach(() => { for (const c of clients.splice(0)) c.close(); });

/// Every `message`, `edit`, `delete` and `react` a client gets, in the order it got them.
function log(c) {
  const items = [];
  for (const type of ['message', 'edit', 'delete', 'react']) c.on(type, (f) => items.push(f));
  return items;
}

test('say, edit, react, read, search, thread, delete: round trips, seen by the other in seq order', async () => {
  const { url } = await serve();
  const alice = client(url, 'alice');
  const bob = client(url, 'bob');
  const seen = log(bob);
  const welcome = await within(alice.connect(), 'alice welcome');
  assert.equal(welcome.nick, 'alice');
  await within(bob.connect(), 'bob welcome');
  const joined = await within(alice.join('lobby'), 'alice joined');
  assert.equal(joined.room, 'lobby');
  await within(bob.join('lobby'), 'bob joined');

  const typing = next(bob, 'typing', (f) => f.nick === 'alice');
  alice.typing('lobby');
  await typing;

  const ack = await within(alice.say('lobby', 'the quick brown fox'), 'ack');
  assert.equal(ack.room, 'lobby');
  assert.ok(ack.seq >= 1);
  const reply = await within(bob.say('lobby', 'jumps', { replyTo: ack.seq }), 'reply ack');
  await within(alice.edit('lobby', ack.seq, 'the quick red fox'), 'edit ack');
  await within(bob.react('lobby', ack.seq, '👍'), 'react ack');
  await until('bob sees the message, the reply, the edit and the reaction', () => seen.length >= 4);
  assert.deepEqual(seen.map((f) => f.type), ['message', 'message', 'edit', 'react']);
  assert.equal(seen[0].text, 'the quick brown fox');
  assert.equal(seen[1].reply_to, ack.seq);
  assert.equal(seen[2].target, ack.seq);
  assert.equal(seen[2].text, 'the quick red fox');
  assert.equal(seen[3].emoji, '👍');
  assert.equal(seen[3].on, true);

  const read = await within(bob.read('lobby', reply.seq), 'read');
  assert.equal(read.seq, reply.seq);
  const found = await within(alice.search('red fox'), 'search');
  assert.deepEqual(found.results.map((m) => m.seq), [ack.seq]);
  const thread = await within(alice.thread('lobby', ack.seq), 'thread');
  assert.deepEqual(thread.messages.map((m) => m.text), ['jumps']);
  const members = await within(alice.who('lobby'), 'who');
  assert.deepEqual(members.nicks, ['alice', 'bob']);
  const inbox = await within(bob.inbox(), 'inbox');
  assert.ok(inbox.rooms.some((r) => r.room === 'lobby' && r.read_seq >= reply.seq));

  await within(alice.delete('lobby', ack.seq), 'delete ack');
  await until('bob sees the delete', () => seen.some((f) => f.type === 'delete'));
  const page = await within(bob.history('lobby', { limit: 10 }), 'history');
  const first = page.messages.find((m) => m.seq === ack.seq);
  assert.equal(first.deleted, true);
  assert.equal(first.text, '');
  const gone = await within(alice.search('red fox'), 'search after the delete');
  assert.deepEqual(gone.results, []);

  // A direct message: both get it, in the pair's room.
  const dm = await within(alice.dm('bob', 'psst'), 'dm ack');
  assert.equal(dm.room, dmRoom('alice', 'bob'));
  await until('bob gets the dm', () => seen.some((f) => f.room === dm.room && f.text === 'psst'));

  // Leaving: the room is not joined again, and saying there is refused.
  const left = await within(alice.leave('lobby'), 'left');
  assert.equal(left.room, 'lobby');
  assert.equal(alice.room('lobby').wanted, false);
  const refused = await within(alice.say('lobby', 'gone').catch((e) => e), 'refusal');
  assert.equal(refused.code, 'not_joined');

  const seqs = seen.filter((f) => f.room === 'lobby').map((f) => f.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in seq order');
  assert.equal(new Set(seqs).size, seqs.length, 'once each');
});

test('bad input: the server refuses, the promise rejects with the protocol code, the connection goes on', async () => {
  const { url } = await serve();
  const alice = client(url, 'alice');
  await within(alice.connect(), 'welcome');
  await within(alice.join('lobby'), 'joined');
  const code = async (promise) => {
    const err = await within(promise.then(() => null, (e) => e), 'a refusal');
    assert.ok(err instanceof NanachatError, `a NanachatError, not ${err}`);
    return err.code;
  };
  assert.equal(await code(alice.join('not a room!')), 'bad_room');
  assert.equal(await code(alice.join('lobby')), 'already_joined');
  assert.equal(await code(alice.say('lobby', '   ')), 'bad_message');
  assert.equal(await code(alice.say('elsewhere', 'hi')), 'not_joined');
  assert.equal(await code(alice.edit('lobby', 999, 'no')), 'no_such_message');
  assert.equal(await code(alice.search('+ - !')), 'bad_message');
  assert.equal(await code(alice.history('elsewhere')), 'not_joined');
  const ack = await within(alice.say('lobby', 'one', { cid: 'mine-1' }), 'ack');
  const again = await within(alice.say('lobby', 'one', { cid: 'mine-1' }), 'the same cid again');
  assert.equal(again.seq, ack.seq);
  assert.equal(again.duplicate, true);
  const reused = await within(alice.say('lobby', 'two', { cid: 'mine-1' }).catch((e) => e), 'cid_reused');
  assert.equal(reused.code, 'cid_reused');
  assert.equal(reused.cid, 'mine-1');
  await within(alice.react('lobby', ack.seq, '🎉'), 'react');
  assert.equal(await code(alice.react('lobby', ack.seq, '🎉')), 'unchanged');
  assert.equal(await code(alice.react('lobby', ack.seq, 'two words')), 'bad_reaction');
  // Arguments that could not make a valid frame are refused here, before anything is sent.
  assert.throws(() => alice.edit('lobby', -1, 'x'), (e) => e.code === 'bad_message');
  // Still connected, and answers still match their requests.
  const members = await within(alice.who('lobby'), 'who');
  assert.deepEqual(members.nicks, ['alice']);
  const found = await within(alice.search('one'), 'search');
  assert.equal(found.results.length, 1);
});

test('a nick taken is refused at connect: the promise rejects with nick_taken', async () => {
  const { url } = await serve();
  await within(client(url, 'nana').connect(), 'first nana');
  const other = client(url, 'nana', { key: 'another-key-0123456789' });
  const err = await within(other.connect().catch((e) => e), 'the refusal');
  assert.equal(err.code, 'nick_taken');
  assert.equal(other.state, 'closed');
});

test('kill -9 of the server and a restart on the same data dir and port while messages are sent: each arrives once, in order', async () => {
  const dir = tempDir();
  let server = await serve(['--data-dir', dir]);
  const sender = client(server.url, 'sender');
  const receiver = client(server.url, 'receiver');
  const got = log(receiver);
  await within(Promise.all([sender.connect(), receiver.connect()]), 'welcomes');
  await within(Promise.all([sender.join('lobby'), receiver.join('lobby')]), 'joins');
  const offline = new Set();
  for (const c of [sender, receiver]) c.on('state', (s) => { if (s.state === 'offline') offline.add(c.nick); });

  const N = 60;
  const acks = [];
  let unackedAtKill = -1;
  for (let i = 1; i <= N; i++) {
    acks.push(sender.say('lobby', `m${i}`));
    if (i === 30) {
      // m21…m30 went at once: some are in flight, stored or not, when the server dies.
      unackedAtKill = sender.unacked;
      await kill9(server.proc);
      server = await serve(['--data-dir', dir, '--addr', server.addr]);
    }
    // A steady sender, under the rate limit, but for a burst just before the kill.
    if (i <= 20 || i > 30) await new Promise((r) => setTimeout(r, 40));
  }
  const done = await within(Promise.all(acks), 'every ack', 30000);
  assert.ok(offline.has('sender') && offline.has('receiver'), 'both saw the server go');
  console.log(`unacked at the kill: ${unackedAtKill}; acked as duplicates after it: ${done.filter((a) => a.duplicate).length}`);
  const seqs = done.map((a) => a.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'acked in order');
  assert.equal(new Set(seqs).size, N, 'a seq each');

  await until('the receiver has every message', () => got.some((f) => f.text === `m${N}`), 30000);
  const texts = got.filter((f) => f.from === 'sender').map((f) => f.text);
  assert.deepEqual(texts, Array.from({ length: N }, (_, i) => `m${i + 1}`), 'each once, in order');
  // Stored once each, too.
  const page = await within(receiver.history('lobby', { limit: 200 }), 'history');
  assert.deepEqual(page.messages.map((m) => m.text), texts);
});

test('a token that expires is refreshed ahead of time, and after token_expired; a 4003 close asks for a new one', async () => {
  const secret = 'a secret of at least sixteen bytes';
  const { url } = await serve(['--auth-secret-file', secretFile(secret), '--token-grace', '2s']);

  // Ahead of time: getToken is asked before exp, the connection never sees token_expired.
  const asked = [];
  const ahead = client(url, undefined, {
    key: undefined,
    token: mint(secret, 'early', 3),
    getToken: async ({ reason }) => { asked.push(reason); return mint(secret, 'early', 3); },
  });
  const expired = [];
  ahead.on('token_expired', (f) => expired.push(f));
  const welcome = await within(ahead.connect(), 'welcome');
  assert.equal(welcome.nick, 'early');
  assert.ok(welcome.exp);
  await within(ahead.join('lobby'), 'joined');
  await until('refreshed twice', () => asked.length >= 2);
  assert.ok(asked.every((r) => r === 'refresh'), JSON.stringify(asked));
  await within(ahead.say('lobby', 'still here'), 'say after refreshes');
  assert.deepEqual(expired, []);
  assert.ok(tokenClaims(ahead.token).exp > welcome.exp);

  // Not ahead of time: the server says token_expired; what is said meanwhile waits, then goes.
  const reasons = [];
  const late = client(url, undefined, {
    key: undefined,
    token: mint(secret, 'late', 3),
    refreshAheadMs: null,
    getToken: async ({ reason }) => { reasons.push(reason); return mint(secret, 'late', 3600); },
  });
  await within(late.connect(), 'welcome');
  await within(late.join('lobby'), 'joined');
  const told = next(late, 'token_expired');
  await told;
  const ack = await within(late.say('lobby', 'said after expiry'), 'ack after refresh');
  assert.ok(ack.seq > 0);
  assert.deepEqual(reasons, ['expired']);

  // No refresh within the grace: 4003; getToken gives a new one and the client reconnects.
  let hand = 0;
  reasons.length = 0;
  const ended = client(url, undefined, {
    key: undefined,
    token: mint(secret, 'ended', 3),
    refreshAheadMs: null,
    getToken: async ({ reason }) => {
      reasons.push(reason);
      if (reason === 'expired' && hand++ === 0) return new Promise(() => {}); // the user is away
      return mint(secret, 'ended', 3600);
    },
  });
  const closes = [];
  ended.on('state', (s) => { if (s.state === 'offline') closes.push(s.code); });
  await within(ended.connect(), 'welcome');
  await within(ended.join('lobby'), 'joined');
  await until('closed with 4003', () => closes.includes(4003));
  await until('open again', () => ended.state === 'open');
  const after = await within(ended.say('lobby', 'back with a new token'), 'ack after 4003');
  assert.ok(after.seq > 0);
  assert.deepEqual(reasons, ['expired', 'ended']); // the first answer never came: the user was away
});

test('resume from a seq the application kept: join with since replays what came after it, once', async () => {
  const { url } = await serve();
  const alice = client(url, 'alice');
  await within(alice.connect(), 'welcome');
  await within(alice.join('lobby'), 'joined');
  const acks = [];
  for (const t of ['a', 'b', 'c', 'd']) acks.push(await within(alice.say('lobby', t), 'ack'));
  const bob = client(url, 'bob');
  const got = log(bob);
  await within(bob.connect(), 'bob welcome');
  const joined = await within(bob.join('lobby', { since: acks[1].seq }), 'bob joined');
  await until('the replay', () => got.length >= 2);
  assert.equal(joined.last_seq, acks[3].seq);
  assert.deepEqual(got.map((f) => f.text), ['c', 'd']);
  assert.equal(bob.room('lobby').lastSeq, acks[3].seq);
});

test('the server serves this very file as /nanachat.js, for pages to import', async () => {
  const { url } = await serve();
  const res = await within(fetch(`${url.replace('ws://', 'http://')}/nanachat.js`), 'GET /nanachat.js');
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/javascript/);
  const { readFileSync } = await import('node:fs');
  assert.equal(await res.text(), readFileSync(new URL('../nanachat.js', import.meta.url), 'utf8'));
});

test('a burst of 100 messages at once: paced to the server\'s limits, none refused, all in order', async () => {
  const { url } = await serve();
  const alice = client(url, 'alice');
  const bob = client(url, 'bob');
  const got = log(bob);
  const states = [];
  alice.on('state', (s) => states.push(s.state));
  await within(Promise.all([alice.connect(), bob.connect()]), 'welcomes');
  assert.equal(alice.limits.rate_burst, 40, 'the default limits (the burst must be more than them)');
  await within(Promise.all([alice.join('lobby'), bob.join('lobby')]), 'joins');
  const acks = await within(Promise.all(Array.from({ length: 100 }, (_, i) => alice.say('lobby', `b${i}`))), 'every ack', 20000);
  assert.ok(acks.every((a) => !a.duplicate));
  await until('bob has them all', () => got.length === 100, 20000);
  assert.deepEqual(got.map((f) => f.text), Array.from({ length: 100 }, (_, i) => `b${i}`));
  assert.ok(!states.includes('offline'), 'never closed for going too fast');
});

test('a server that stops answering (SIGSTOP): 2.5 silent heartbeats drop the link; it comes back and resumes', async () => {
  const server = await serve(['--heartbeat', '200ms']);
  const alice = client(server.url, 'alice', { connectTimeoutMs: 1000 });
  const got = log(alice);
  await within(alice.connect(), 'welcome');
  await within(alice.join('lobby'), 'joined');
  await within(alice.say('lobby', 'before'), 'ack');
  server.proc.kill('SIGSTOP');
  try {
    await until('offline', () => alice.state !== 'open', 5000);
  } finally {
    server.proc.kill('SIGCONT');
  }
  await until('open again', () => alice.state === 'open');
  await within(alice.say('lobby', 'after'), 'ack after');
  await until('both delivered', () => got.length === 2);
  assert.deepEqual(got.map((f) => f.text), ['before', 'after']);
});

test('closed with 4004 (put out by the server, or banned): no reconnect, the application is told', async () => {
  // A scripted server: nanachat closes with 4004 when its HTTP API disconnects a user.
  const { WebSocketServer } = createRequire(path.join(ROOT, 'tests/peers/node/package.json'))('ws');
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await within(new Promise((r) => wss.once('listening', r)), 'listening');
  let connections = 0;
  wss.on('connection', (ws) => {
    connections += 1;
    ws.on('message', (data) => {
      if (JSON.parse(data.toString()).type !== 'hello') return;
      ws.send(JSON.stringify({ type: 'welcome', nick: 'nana', limits: { heartbeat_ms: 25000 } }));
      setTimeout(() => ws.close(4004, 'nana is banned for 60 s more'), 50);
    });
  });
  try {
    const nana = client(`ws://127.0.0.1:${wss.address().port}/`, 'nana');
    const fatal = next(nana, 'error', (e) => e.fatal, 'the fatal error');
    await within(nana.connect(), 'welcome');
    const pending = nana.say('lobby', 'never sent').catch((e) => e);
    const err = await fatal;
    assert.equal(err.code, 'disconnected');
    assert.match(err.message, /banned/);
    assert.equal(nana.state, 'closed');
    assert.equal((await within(pending, 'the say refused')).code, 'closed');
    await new Promise((r) => setTimeout(r, 300)); // longer than the first back-off: no retry came
    assert.equal(connections, 1);
  } finally {
    wss.close();
  }
});

test('a real disconnect with a ban (POST /api/v1/users/{nick}/disconnect): told once, no reconnect', async () => {
  const apiKey = 'js-test-api-key-0123456789';
  const keys = path.join(tempDir(), 'api-keys');
  (await import('node:fs')).writeFileSync(keys, `${apiKey}\n`, { mode: 0o600 });
  const { url, addr } = await serve(['--api-key-file', keys]);
  const nana = client(url, 'nana');
  const fatal = next(nana, 'error', (e) => e.fatal, 'the fatal error');
  await within(nana.connect(), 'welcome');
  await within(nana.join('lobby'), 'joined');
  const answer = await within(fetch(`http://${addr}/api/v1/users/nana/disconnect`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ reason: 'spam', ban_seconds: 60 }),
  }), 'the API answer');
  assert.equal(answer.status, 200);
  assert.equal((await answer.json()).closed_here, 1);
  const err = await fatal;
  assert.equal(err.code, 'disconnected');
  assert.match(err.message, /spam/);
  assert.equal(nana.state, 'closed');
  // Still banned: a new client is refused at connect, with the ban's reason.
  const again = client(url, 'nana');
  const refused = await within(again.connect().then(() => null, (e) => e), 'the refusal');
  assert.ok(refused, 'connected while banned');
  assert.match(String(refused.message), /banned/);
});

test('a rename: `renamed` gives the client its new nick (the next hello says it); an unknown event is passed on as it came', async () => {
  // A scripted server: the rename (`renamed` to the user's own connections) comes from the
  // server, then an event this library does not know, then a dropped link.
  const { WebSocketServer } = createRequire(path.join(ROOT, 'tests/peers/node/package.json'))('ws');
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await within(new Promise((r) => wss.once('listening', r)), 'listening');
  const hellos = [];
  wss.on('connection', (ws) => {
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (f.type !== 'hello') return;
      hellos.push(f.nick);
      ws.send(JSON.stringify({ type: 'welcome', nick: f.nick, limits: { heartbeat_ms: 25000 } }));
      if (hellos.length > 1) return;
      ws.send(JSON.stringify({ type: 'renamed', from: 'mochi', to: 'mochi2' }));
      ws.send(JSON.stringify({ type: 'presence', room: 'lobby', nick: 'mochi2', event: 'renamed', from: 'mochi' }));
      ws.send(JSON.stringify({ type: 'from_the_future', room: 'lobby', n: 1 }));
      setTimeout(() => ws.terminate(), 100);
    });
  });
  try {
    const mochi = client(`ws://127.0.0.1:${wss.address().port}/`, 'mochi');
    const renamed = next(mochi, 'renamed');
    const presence = next(mochi, 'presence');
    const unknown = next(mochi, 'from_the_future');
    await within(mochi.connect(), 'welcome');
    assert.deepEqual(await renamed, { type: 'renamed', from: 'mochi', to: 'mochi2' });
    assert.equal(mochi.nick, 'mochi2');
    assert.equal((await presence).from, 'mochi');
    assert.deepEqual(await unknown, { type: 'from_the_future', room: 'lobby', n: 1 });
    await until('the second hello', () => hellos.length === 2);
    assert.deepEqual(hellos, ['mochi', 'mochi2']);
    await until('open again', () => mochi.state === 'open');
  } finally {
    wss.close();
  }
});

test('watch: room counts and a nick online come as live events, without asking again, and again after a reconnect', async () => {
  const dir = tempDir();
  let server = await serve(['--data-dir', dir]);
  const nana = client(server.url, 'nana');
  await within(nana.connect(), 'welcome');
  // Options of the wrong shape are refused here, each saying what is wrong.
  assert.throws(() => nana.watch({ nicks: 'mochi' }), (e) => e.code === 'bad_message' && /array of nicks/.test(e.message));
  assert.throws(() => nana.watch({ rooms: 'yes' }), (e) => e.code === 'bad_message' && /true or false/.test(e.message));
  const answer = await within(nana.watch({ rooms: true, nicks: ['mochi'] }), 'the answer to watch');
  assert.deepEqual(answer, { type: 'live', rooms: [], total: 0, offline: ['mochi'] });
  const counts = new Map();
  const online = new Map();
  nana.on('live', (l) => {
    for (const r of l.rooms) counts.set(r.room, r.members);
    for (const n of l.online ?? []) online.set(n, true);
    for (const n of l.offline ?? []) online.set(n, false);
  });

  const mochi = client(server.url, 'mochi');
  await within(mochi.connect(), 'mochi connects');
  await within(mochi.join('lobby'), 'mochi joins');
  await until('lobby has 1 and mochi is online', () => counts.get('lobby') === 1 && online.get('mochi') === true);
  mochi.close();
  await until('lobby is empty and mochi offline', () => counts.get('lobby') === 0 && online.get('mochi') === false);

  // The server restarts: the library watches again on the new connection.
  await kill9(server.proc);
  server = await serve(['--data-dir', dir, '--addr', server.addr]);
  await until('nana is back', () => nana.state === 'open');
  const again = client(server.url, 'mochi');
  await within(again.connect(), 'mochi again');
  await within(again.join('games'), 'mochi joins games');
  await until('games has 1 and mochi is online', () => counts.get('games') === 1 && online.get('mochi') === true);

  // `watch()` stops: no more live events (another watcher is told, nana is not).
  const kuro = client(server.url, 'kuro');
  await within(kuro.connect(), 'kuro connects');
  await within(kuro.watch({ rooms: true }), 'kuro watches');
  await within(nana.watch(), 'unwatch');
  let after = 0;
  nana.on('live', () => { after += 1; });
  const told = next(kuro, 'live', (l) => l.rooms.some((r) => r.room === 'games' && r.members === 0));
  await within(again.leave('games'), 'mochi leaves');
  await told;
  // That round is over: anything for nana would be ahead of this answer.
  await within(nana.rooms(), 'rooms');
  assert.equal(after, 0);
});
