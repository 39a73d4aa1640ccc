// nanachat's JavaScript client: speaks nanachat.v1 (docs/protocol.md) over one WebSocket, in
// browsers and in Node (a global `WebSocket`, Node 22 and later, or any constructor with the
// same API passed as `WebSocket`). No dependencies; plain modern JavaScript, typed by
// nanachat.d.ts beside it, so the server serves this file as it is (`/nanachat.js`).
//
// What it keeps for the application:
// - the connection: `hello` with a nick and key, or a token; reconnection with back-off and
//   jitter; the heartbeat (`tick`s: a link silent for 2.5 of them is dropped and reconnected);
// - rooms: every room joined is joined again after a reconnect with `since` (the last seq
//   delivered) and `epoch`, so the server replays what was missed, with no gap and no
//   duplicate; `message`, `edit`, `delete` and `react` reach the application once each, in
//   seq order per room;
// - the outbox: every `say`, `dm`, `edit`, `delete` and `react` carries a cid and stays in the
//   outbox until acked; after a reconnect (or a refused `rate_limited` / `internal`, or a
//   `token_expired`) it is sent again with the same cid, and the server stores it once;
// - tokens: `getToken()` is asked for a fresh one before the token expires (`refresh`), when
//   the server says `token_expired`, after a 4003 close and before reconnecting with a token
//   that has expired;
// - watching: what `watch` follows (room counts, nicks online) is followed again after a
//   reconnect; `live` events carry what changed;
// - requests: each returns a promise of the server's answer; an `error` rejects it with a
//   `NanachatError` whose `code` is the protocol's.
//
// Answers without a cid are matched to requests by order: the server answers a connection's
// requests one after another. A request this library sends therefore never fails to parse (its
// arguments are checked here first), so every error without a cid answers the oldest request
// waiting for an answer.

/** The WebSocket subprotocol. */
export const PROTOCOL = 'nanachat.v1';

const OPEN = 1;
const MAX_CID_BYTES = 64;
/** The most nicks one `watch` follows. */
const MAX_WATCH_NICKS = 100;
/** Errors after which a request with a cid is sent again, with the same cid. */
const RETRIED = new Set(['rate_limited', 'internal']);
const RETRY_MS = 1000;

/** An `error` from the server (or a request this library refused to send), with its code. */
export class NanachatError extends Error {
  /**
   * @param {string} code the protocol's error code (docs/protocol.md, "Errors")
   * @param {string} message
   * @param {object} [frame] the `error` frame, when the server sent one
   */
  constructor(code, message, frame) {
    super(`${code}: ${message}`);
    this.name = 'NanachatError';
    this.code = code;
    this.cid = frame?.cid;
    this.frame = frame ?? null;
  }
}

/** The room of the direct messages between two nicks: `@a+b`, lower case, sorted. */
export function dmRoom(a, b) {
  const [x, y] = [a.toLowerCase(), b.toLowerCase()];
  return x <= y ? `@${x}+${y}` : `@${y}+${x}`;
}

/** The claims of a JSON Web Token (not verified: the server does that), or null. */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function randomId() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function need(ok, what) {
  if (!ok) throw new NanachatError('bad_message', what);
}
const isSeq = (n) => Number.isSafeInteger(n) && n >= 0;
const isText = (s) => typeof s === 'string';

/** A connection to a nanachat server that comes back by itself. See nanachat.d.ts. */
export class Client {
  #o;
  #WS;
  #ws = null;
  #token;
  #nick;
  #listeners = new Map();
  #state = 'idle'; // idle | connecting | open | offline | closed
  #welcomed = false; // welcomed at least once: a later nick_taken is the old link, not over yet
  #greeted = false; // the current socket got `welcome`
  #expired = false; // told token_expired: requests wait for `refreshed`
  #attempt = 0;
  #timers = new Set();
  #heartbeat = null;
  #lastHeard = 0;
  #heartbeatMs = 25000;
  #refreshTimer = null;
  #refreshing = false;
  #slower = false;
  #ended = false; // closed with 4003: the next token is asked for with reason `ended`
  #first = null; // { resolve, reject } of connect()
  #nextCid = 1;
  #cidPrefix = randomId();
  /** room -> { wanted, joined, lastSeq, epoch } */
  #rooms = new Map();
  /** cid -> { build, resolve, reject, sent }: not acked yet; `sent` on this connection (each
   *  goes again after a reconnect, and after `refreshed` if refused as token_expired) */
  #outbox = new Map();
  /** Requests sent without a cid, oldest first, waiting for their answer. */
  #asks = [];
  /** What `watch` follows: its frame, sent again after every reconnect (null: nothing). */
  #watching = null;
  /** Requests not sent yet (offline, or the token expired), oldest first. */
  #waiting = [];
  /** The pace of what is sent: { tokens, rate, burst, last }, set at `welcome`. */
  #bucket = null;
  /** Frames waiting for the bucket, oldest first. */
  #paced = [];
  #pacer = null;

  /**
   * @param {object} options see `ClientOptions` in nanachat.d.ts
   */
  constructor(options) {
    if (!options || typeof options.url !== 'string') throw new TypeError('nanachat: options.url is required');
    this.#o = {
      backoff: { initialMs: 500, maxMs: 10000 },
      refreshAheadMs: 10000,
      connectTimeoutMs: 10000,
      ...options,
    };
    this.#WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WS !== 'function') {
      throw new TypeError('nanachat: no WebSocket here: pass one as options.WebSocket');
    }
    this.#token = options.token ?? null;
    this.#nick = options.nick ?? (this.#token ? tokenClaims(this.#token)?.sub : undefined) ?? '';
    this.limits = null;
  }

  /** The nick the server welcomed (or the one asked for, before). */
  get nick() { return this.#nick; }
  /** idle, connecting, open, offline (reconnecting) or closed. */
  get state() { return this.#state; }
  /** The token in force. */
  get token() { return this.#token; }
  /** How many requests with a cid wait for their ack. */
  get unacked() { return this.#outbox.size; }
  /** What this client knows of a room: whether it is joined, the last seq delivered, its epoch. */
  room(name) {
    const r = this.#rooms.get(name);
    return r ? { joined: r.joined, wanted: r.wanted, lastSeq: r.lastSeq, epoch: r.epoch } : null;
  }

  // ---- events --------------------------------------------------------------------------------

  /** Calls `fn(frame)` for every frame of `type` (or `*` for all); returns a function that stops it. */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) { this.#listeners.get(type)?.delete(fn); }

  #emit(type, value) {
    for (const key of [type, '*']) {
      for (const fn of [...(this.#listeners.get(key) ?? [])]) {
        try {
          fn(value);
        } catch (err) {
          // An application's handler must not break the connection.
          setTimeout(() => { throw err; });
        }
      }
    }
  }

  #setState(state, detail = {}) {
    this.#state = state;
    this.#emit('state', { type: 'state', state, ...detail });
  }

  // ---- the connection ------------------------------------------------------------------------

  /** Opens the connection; resolves with the first `welcome`. */
  connect() {
    if (this.#state === 'closed') return Promise.reject(new NanachatError('closed', 'this client was closed'));
    if (this.#first) return this.#first.promise;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    this.#first = { promise, resolve, reject };
    if (this.#state === 'idle') this.#open();
    return promise;
  }

  /** Closes the connection for good: what waits is rejected with `closed`. */
  close() {
    if (this.#state === 'closed') return;
    this.#setState('closed');
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    clearInterval(this.#heartbeat);
    clearTimeout(this.#refreshTimer);
    this.#unpace();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) { this.#detach(ws); try { ws.close(1000); } catch { /* closing anyway */ } }
    const err = new NanachatError('closed', 'the client was closed');
    for (const a of [...this.#asks, ...this.#waiting]) a.reject(err);
    for (const p of this.#outbox.values()) p.reject(err);
    this.#asks = [];
    this.#waiting = [];
    this.#outbox.clear();
    this.#first?.reject(err);
  }

  #later(fn, ms) {
    const t = setTimeout(() => { this.#timers.delete(t); fn(); }, ms);
    this.#timers.add(t);
  }

  async #open() {
    this.#setState('connecting', { attempt: this.#attempt });
    try {
      await this.#freshToken(this.#ended ? 'ended' : 'connect');
      this.#ended = false;
    } catch (err) {
      this.#fail(err instanceof NanachatError ? err : new NanachatError('unauthorized', `getToken failed: ${err?.message ?? err}`));
      return;
    }
    if (this.#state === 'closed') return;
    let ws;
    try {
      ws = new this.#WS(this.#o.url, PROTOCOL);
    } catch (err) {
      this.#fail(new NanachatError('bad_url', String(err?.message ?? err)));
      return;
    }
    this.#ws = ws;
    this.#greeted = false;
    // A server that takes the connection and never answers (stopped, overloaded): try again.
    this.#later(() => {
      if (this.#ws !== ws || this.#greeted) return;
      try { ws.close(); } catch { /* dropped below */ }
      this.#dropped(1006, 'no welcome in time');
    }, this.#o.connectTimeoutMs);
    ws.onopen = () => {
      this.#lastHeard = Date.now();
      const hello = { type: 'hello', nick: this.#nick };
      if (this.#o.key) hello.key = this.#o.key;
      if (this.#token) hello.token = this.#token;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (e) => {
      this.#lastHeard = Date.now();
      if (typeof e.data !== 'string') return;
      let frame;
      try { frame = JSON.parse(e.data); } catch { return; }
      if (frame && typeof frame.type === 'string') this.#onFrame(frame);
    };
    ws.onerror = () => {}; // the close that follows says what happened
    ws.onclose = (e) => { if (this.#ws === ws) this.#dropped(e.code, e.reason); };
  }

  #detach(ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  /** A token to connect with: getToken is asked only when there is none or the one held has
   *  expired (one about to expire still connects; the server's `token_expired` follows). */
  async #freshToken(reason) {
    if (!this.#o.getToken) return;
    const exp = this.#token ? tokenClaims(this.#token)?.exp : undefined;
    if (this.#token && (exp === undefined || exp * 1000 > Date.now())) return;
    this.#token = await this.#o.getToken({ reason });
    if (!this.#nick) this.#nick = tokenClaims(this.#token)?.sub ?? '';
  }

  /** The link is gone: requests wait, the rooms are joined again on the next connection. */
  #dropped(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) this.#detach(ws);
    clearInterval(this.#heartbeat);
    clearTimeout(this.#refreshTimer);
    this.#unpace();
    this.#greeted = false;
    this.#expired = false;
    this.#refreshing = false;
    // What was asked and not answered goes again on the next connection.
    this.#waiting = [...this.#asks, ...this.#waiting];
    this.#asks = [];
    for (const p of this.#outbox.values()) p.sent = false;
    for (const [name, r] of this.#rooms) {
      r.joined = false;
      // A room only heard live (a direct-message room not joined) may miss messages now: its
      // next join starts afresh rather than resume across a gap.
      if (!r.wanted) this.#rooms.delete(name);
    }
    if (this.#state === 'closed') return;
    if (code === 4004) {
      // Put out on purpose (the HTTP API's disconnect, a ban): not to be undone by reconnecting.
      this.#fail(new NanachatError('disconnected', reason || 'disconnected by the server (4004)'));
      return;
    }
    if (code === 4003) {
      // The token ended: a new one is needed before reconnecting.
      if (!this.#o.getToken) {
        this.#fail(new NanachatError('token_ended', reason || 'the token ended (4003)'));
        return;
      }
      this.#token = null;
      this.#ended = true;
    }
    if (code === 1008) this.#slower = true;
    const base = Math.min(this.#o.backoff.maxMs, this.#o.backoff.initialMs * 2 ** this.#attempt++) * (this.#slower ? 4 : 1);
    const delayMs = Math.round(base / 2 + Math.random() * base / 2);
    this.#setState('offline', { code, reason, delayMs });
    this.#later(() => this.#open(), delayMs);
  }

  /** A refusal that retrying cannot fix (a bad nick, a nick taken, a token refused). */
  #fail(err) {
    const first = this.#first;
    this.#first = null;
    this.#emit('error', { type: 'error', code: err.code, message: err.message, fatal: true });
    this.close();
    first?.reject(err);
  }

  /**
   * Sends a frame, paced by a token bucket set from `welcome`'s limits as the server's own is
   * (`typing` aside, which it does not count): a burst — the rooms joined again and the outbox
   * after a reconnect, a script saying many lines — is spread out instead of refused with
   * `rate_limited` (and closed with 1008 if it went on), and frames go in the order given.
   */
  #send(frame) {
    if (!this.#ws || this.#ws.readyState !== OPEN) return;
    if (frame.type === 'typing' || !this.#bucket) {
      this.#ws.send(JSON.stringify(frame));
      return;
    }
    this.#paced.push(frame);
    this.#pump();
  }

  #pump() {
    const b = this.#bucket;
    while (b && this.#paced.length) {
      const now = Date.now();
      b.tokens = Math.min(b.burst, b.tokens + (now - b.last) / 1000 * b.rate);
      b.last = now;
      if (b.tokens < 1) {
        if (!this.#pacer) {
          const ms = Math.ceil((1 - b.tokens) / b.rate * 1000);
          this.#pacer = setTimeout(() => { this.#pacer = null; this.#pump(); }, ms);
        }
        return;
      }
      b.tokens -= 1;
      const frame = this.#paced.shift();
      if (this.#ws?.readyState === OPEN) this.#ws.send(JSON.stringify(frame));
    }
  }

  /** Forgets the frames not sent yet (each goes again from the outbox or the requests). */
  #unpace() {
    clearTimeout(this.#pacer);
    this.#pacer = null;
    this.#paced = [];
    this.#bucket = null;
  }

  /** Open, greeted and the token in force: requests may go. */
  get #ready() { return this.#greeted && !this.#expired && this.#ws?.readyState === OPEN; }

  // ---- frames from the server ----------------------------------------------------------------

  #onFrame(f) {
    switch (f.type) {
      case 'welcome': this.#onWelcome(f); return;
      case 'message': case 'edit': case 'delete': case 'react':
        if (!this.#inOrder(f)) return;
        break;
      case 'joined': this.#onJoined(f); break;
      case 'left': {
        // Left by `leave` (which stopped wanting it), by a refreshed token that does not allow
        // the room (stop wanting it too), or on the way out of a connection the server ends
        // (joined again on the next one).
        const r = this.#rooms.get(f.room);
        if (r) r.joined = false;
        if (r && this.#asks.some((a) => a.frame.type === 'refresh')) r.wanted = false;
        break;
      }
      case 'renamed':
        // The user's nick changed (here or on another of its connections): the next `hello`
        // (a reconnect) says the new one.
        if (typeof f.to === 'string' && f.to) this.#nick = f.to;
        break;
      case 'ack': this.#onAck(f); return;
      case 'refreshed': this.#onRefreshed(f); break;
      case 'error': this.#onError(f); return;
      default: break;
    }
    this.#answer(f);
    this.#emit(f.type, f);
  }

  /** Whether an item of a room's log is new: delivered once each, in seq order. */
  #inOrder(f) {
    let r = this.#rooms.get(f.room);
    if (!r) {
      r = { wanted: false, joined: false, lastSeq: null, epoch: null };
      this.#rooms.set(f.room, r);
    }
    if (r.lastSeq !== null && f.seq <= r.lastSeq) return false;
    r.lastSeq = f.seq;
    return true;
  }

  #onWelcome(f) {
    if (f.nick) this.#nick = f.nick;
    this.limits = f.limits ?? null;
    this.#heartbeatMs = f.limits?.heartbeat_ms || 25000;
    const rate = f.limits?.rate_per_sec;
    const burst = f.limits?.rate_burst;
    // The server counted `hello` already.
    this.#bucket = rate > 0 && burst > 0 ? { tokens: burst - 1, rate, burst, last: Date.now() } : null;
    this.#greeted = true;
    this.#welcomed = true;
    this.#attempt = 0;
    this.#slower = false;
    this.#setState('open');
    this.#scheduleRefresh(f.exp);
    clearInterval(this.#heartbeat);
    this.#heartbeat = setInterval(() => {
      if (this.#ws && Date.now() - this.#lastHeard > this.#heartbeatMs * 2.5) {
        try { this.#ws.close(); } catch { /* dropped below */ }
        this.#dropped(1006, 'no tick from the server');
      }
    }, 1000);
    // The rooms again, each from its last seq, before anything that needs them.
    const joining = new Set(this.#waiting.filter((a) => a.frame?.type === 'join').map((a) => a.room));
    const rejoins = [];
    for (const [name, r] of this.#rooms) {
      if (r.wanted && !joining.has(name)) rejoins.push(this.#joinAsk(name, () => {}, () => {}));
    }
    // What was watched, again: its answer (a `live` event) tells who is online now.
    if (this.#watching && !this.#waiting.some((a) => a.frame?.type === 'watch')) {
      rejoins.push({ frame: this.#watching, expect: 'live', internal: true, resolve: () => {}, reject: () => {} });
    }
    this.#waiting = [...rejoins, ...this.#waiting];
    // Sent before the application hears `welcome`: what it asks then comes after its rooms.
    this.#flush();
    this.#first?.resolve(f);
    this.#first = null;
    this.#emit('welcome', f);
  }

  /** Sends what waited: requests, then the outbox (the same cids as before). */
  #flush() {
    if (!this.#ready) return;
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const a of waiting) this.#sendAsk(a);
    for (const [cid, p] of this.#outbox) {
      if (p.sent) continue;
      p.sent = true;
      this.#send(p.build(cid));
    }
  }

  #onJoined(f) {
    const r = this.#rooms.get(f.room) ?? { wanted: true, joined: false, lastSeq: null, epoch: null };
    this.#rooms.set(f.room, r);
    r.wanted = true;
    r.joined = true;
    if (f.reset || r.lastSeq === null) r.lastSeq = f.last_seq;
    r.epoch = f.epoch;
  }

  #onAck(f) {
    const p = this.#outbox.get(f.cid);
    if (!p) return;
    this.#outbox.delete(f.cid);
    p.resolve(f);
    this.#emit('ack', f);
  }

  #onError(f) {
    if (f.cid !== undefined && f.cid !== null) {
      const p = this.#outbox.get(f.cid);
      if (!p) { this.#emit('error', f); return; }
      if (f.code === 'token_expired') {
        p.sent = false; // again after `refreshed`
        this.#tokenExpired(f);
      } else if (RETRIED.has(f.code)) {
        if (f.code === 'rate_limited' && this.#bucket) this.#bucket.tokens = 0;
        this.#later(() => { if (this.#outbox.has(f.cid) && this.#ready) this.#send(p.build(f.cid)); }, RETRY_MS);
      } else {
        this.#outbox.delete(f.cid);
        p.reject(new NanachatError(f.code, f.message, f));
      }
      return;
    }
    if (!this.#greeted) { this.#helloRefused(f); return; }
    if (f.code === 'token_expired') {
      if (!this.#expired) { this.#tokenExpired(f); return; } // the notice, at exp
      const a = this.#asks.shift(); // an answer: the request goes again after `refreshed`
      if (a) this.#waiting.push(a);
      return;
    }
    // `unauthorized` answers only a `refresh` (once greeted); anything else, the oldest request.
    const at = f.code === 'unauthorized' ? this.#asks.findIndex((x) => x.frame.type === 'refresh') : 0;
    const a = at >= 0 ? this.#asks.splice(at, 1)[0] : undefined;
    if (!a) { this.#emit('error', f); return; }
    if (a.frame.type === 'leave' && f.code === 'not_joined') { a.resolve({ type: 'left', room: a.room }); return; }
    if (a.internal && RETRIED.has(f.code)) { this.#later(() => this.#ask(a), RETRY_MS); return; }
    a.reject(new NanachatError(f.code, f.message, f));
  }

  /** The server refused `hello`. */
  #helloRefused(f) {
    // Refused at the first connect: the application's to fix. Later (a reconnect), a keyless
    // nick may still be held by the old link, and a token may have been revoked meanwhile.
    const retry = f.code === 'internal' || (f.code === 'nick_taken' && this.#welcomed && this.#o.key === undefined);
    if (f.code === 'unauthorized' && this.#welcomed && this.#o.getToken) {
      this.#token = null; // ask for another before the next attempt
      this.#ws?.close();
      return;
    }
    if (retry) { this.#ws?.close(); return; }
    this.#fail(new NanachatError(f.code, f.message, f));
  }

  /** Resolves the oldest request waiting that `f` answers (the oldest of all, from a server
   *  that answers every request). */
  #answer(f) {
    const at = this.#asks.findIndex((a) => a.expect === f.type
      && (a.room === undefined || f.room === undefined || a.room === f.room));
    if (at < 0) return;
    const [a] = this.#asks.splice(at, 1);
    a.resolve(f);
  }

  // ---- tokens --------------------------------------------------------------------------------

  #scheduleRefresh(exp) {
    clearTimeout(this.#refreshTimer);
    if (!exp || !this.#o.getToken || this.#o.refreshAheadMs === null) return;
    // Ahead of the expiry, by at most half of what is left (a short-lived token is not
    // refreshed over and over).
    const left = exp * 1000 - Date.now();
    const inMs = Math.max(0, left - Math.min(this.#o.refreshAheadMs, left / 2));
    this.#refreshTimer = setTimeout(() => this.#renew('refresh'), inMs);
  }

  #tokenExpired(f) {
    if (this.#expired) return;
    this.#expired = true;
    this.#emit('token_expired', f);
    this.#renew('expired', f.message);
  }

  /** Asks getToken for a fresh token and sends it in `refresh`, until one is taken. */
  async #renew(reason, message) {
    if (!this.#o.getToken || this.#refreshing) return;
    this.#refreshing = true;
    const ws = this.#ws;
    try {
      for (;;) {
        let token;
        try {
          token = await this.#o.getToken({ reason, message });
        } catch {
          return; // the application gave up: 4003 ends it, and getToken is asked again then
        }
        if (this.#ws !== ws || this.#state === 'closed') return;
        try {
          await this.refresh(token);
          return;
        } catch (err) {
          if (!(err instanceof NanachatError) || err.code !== 'unauthorized' || this.#ws !== ws) return;
          reason = 'refused';
          message = err.frame?.message ?? err.message;
        }
      }
    } finally {
      if (this.#ws === ws) this.#refreshing = false;
    }
  }

  #onRefreshed(f) {
    const a = this.#asks.find((x) => x.frame.type === 'refresh');
    if (a) this.#token = a.frame.token;
    this.#expired = false;
    this.#scheduleRefresh(f.exp);
    // Answer first (the refresh is at the head), then send what waited.
    queueMicrotask(() => this.#flush());
  }

  /** Sends `refresh` with a fresh token for the same nick; resolves with `refreshed`. */
  refresh(token) {
    need(isText(token) && token.length > 0, 'refresh needs a token');
    return this.#ask({ frame: { type: 'refresh', token }, expect: 'refreshed', always: true });
  }

  // ---- requests without a cid ----------------------------------------------------------------

  /** Queues a request; it goes when the connection is ready (or at once if `always`). */
  #ask(a) {
    let promise;
    if (!a.resolve) promise = new Promise((resolve, reject) => { a.resolve = resolve; a.reject = reject; });
    if (this.#greeted && this.#ws?.readyState === OPEN && (a.always || !this.#expired)) this.#sendAsk(a);
    else this.#waiting.push(a);
    return promise;
  }

  #sendAsk(a) {
    if (a.build) a.frame = a.build();
    this.#asks.push(a);
    this.#send(a.frame);
  }

  #joinAsk(name, resolve, reject) {
    return {
      room: name,
      internal: true,
      expect: 'joined',
      frame: { type: 'join', room: name },
      build: () => {
        const r = this.#rooms.get(name);
        const frame = { type: 'join', room: name };
        if (r && r.lastSeq !== null) {
          frame.since = r.lastSeq;
          if (r.epoch !== null) frame.epoch = r.epoch;
        }
        return frame;
      },
      resolve,
      reject: (err) => {
        const r = this.#rooms.get(name);
        if (r && err.code !== 'already_joined') r.wanted = false;
        reject(err);
      },
    };
  }

  /**
   * Joins a room; resolves with `joined`. Joined again after every reconnect, resuming after
   * the last seq delivered. `since` (and `epoch`) resume from what the application kept.
   */
  join(name, options = {}) {
    need(isText(name) && name.length > 0, 'join needs a room');
    const r = this.#rooms.get(name) ?? { wanted: false, joined: false, lastSeq: null, epoch: null };
    this.#rooms.set(name, r);
    if (options.since !== undefined && options.since !== null) {
      need(isSeq(options.since), 'since is a seq');
      r.lastSeq = options.since;
      r.epoch = options.epoch ?? null;
    }
    r.wanted = true;
    return new Promise((resolve, reject) => {
      const a = this.#joinAsk(name, resolve, reject);
      a.internal = false;
      this.#ask(a);
    });
  }

  /** Leaves a room (for good: a known user's inbox forgets it); resolves with `left`. */
  leave(name) {
    need(isText(name), 'leave needs a room');
    const r = this.#rooms.get(name);
    if (r) r.wanted = false;
    return this.#ask({ frame: { type: 'leave', room: name }, room: name, expect: 'left' });
  }

  /** Marks a room read up to `seq`; resolves with the `read` that says where the user now is. */
  read(name, seq) {
    need(isText(name) && isSeq(seq), 'read needs a room and a seq');
    return this.#ask({ frame: { type: 'read', room: name, seq }, room: name, expect: 'read' });
  }

  /** Tells the room's others this user is typing (nothing is answered). */
  typing(name) {
    need(isText(name), 'typing needs a room');
    if (!this.#rooms.get(name)?.joined || !this.#ready) return;
    this.#send({ type: 'typing', room: name });
  }

  /** Searches the messages this user may read; resolves with `search` ({results, total}). */
  search(query, options = {}) {
    need(isText(query), 'search needs a query');
    const frame = { type: 'search', query };
    if (options.room !== undefined && options.room !== null) frame.room = options.room;
    for (const k of ['limit', 'skip']) {
      if (options[k] !== undefined) { need(isSeq(options[k]), `${k} is a count`); frame[k] = options[k]; }
    }
    return this.#ask({ frame, expect: 'search' });
  }

  /** A page of a room's messages as they stand now; resolves with `history`. */
  history(name, options = {}) {
    need(isText(name), 'history needs a room');
    const frame = { type: 'history', room: name };
    for (const k of ['before', 'after', 'limit']) {
      if (options[k] !== undefined) { need(isSeq(options[k]), `${k} is a number`); frame[k] = options[k]; }
    }
    return this.#ask({ frame, room: name, expect: 'history' });
  }

  /** The replies to message `seq`; resolves with `thread`. */
  thread(name, seq, options = {}) {
    need(isText(name) && isSeq(seq), 'thread needs a room and a seq');
    const frame = { type: 'thread', room: name, seq };
    for (const k of ['after', 'limit']) {
      if (options[k] !== undefined) { need(isSeq(options[k]), `${k} is a number`); frame[k] = options[k]; }
    }
    return this.#ask({ frame, room: name, expect: 'thread' });
  }

  /** The user's rooms with read positions and unread counts; resolves with `inbox`. */
  inbox(options = {}) {
    const frame = { type: 'inbox' };
    if (options.after !== undefined) { need(isText(options.after), 'after is a room'); frame.after = options.after; }
    return this.#ask({ frame, expect: 'inbox' });
  }

  /** The nicks in a room; resolves with `members`. */
  who(name, options = {}) {
    need(isText(name), 'who needs a room');
    const frame = { type: 'who', room: name };
    if (options.after !== undefined) { need(isText(options.after), 'after is a nick'); frame.after = options.after; }
    return this.#ask({ frame, room: name, expect: 'members' });
  }

  /** The rooms with members, busiest first; resolves with `rooms`. */
  rooms(options = {}) {
    const frame = { type: 'rooms' };
    if (options.after !== undefined) frame.after = options.after;
    return this.#ask({ frame, expect: 'rooms' });
  }

  /**
   * Follows the member count of every room (`rooms: true`) and whether `nicks` are online:
   * resolves with the answer, a `live` frame with `online` and `offline`; then `live` events
   * come with what changed (at most one a second), also after a reconnect (the library sends
   * `watch` again). `watch()` with nothing stops.
   */
  watch(options = {}) {
    const nicks = options.nicks ?? [];
    need(Array.isArray(nicks) && nicks.every(isText), 'watch: nicks is an array of nicks');
    need(nicks.length <= MAX_WATCH_NICKS, `watch follows at most ${MAX_WATCH_NICKS} nicks`);
    need(options.rooms === undefined || typeof options.rooms === 'boolean', 'watch: rooms is true or false');
    const frame = { type: 'watch' };
    if (options.rooms === true) frame.rooms = true;
    if (nicks.length) frame.nicks = [...nicks];
    this.#watching = frame.rooms || frame.nicks ? frame : null;
    return this.#ask({ frame, expect: 'live' });
  }

  // ---- requests with a cid (the outbox) ------------------------------------------------------

  /** A fresh cid: this client's random prefix and a counter (well under 64 bytes). */
  newCid() { return `${this.#cidPrefix}-${this.#nextCid++}`; }

  #outgoing(build, cid) {
    cid ??= this.newCid();
    need(isText(cid) && new TextEncoder().encode(cid).length <= MAX_CID_BYTES, 'a cid is at most 64 bytes');
    need(!this.#outbox.has(cid), `cid ${cid} is waiting for its ack already`);
    return new Promise((resolve, reject) => {
      const p = { build, resolve, reject, sent: false };
      this.#outbox.set(cid, p);
      if (this.#ready) { p.sent = true; this.#send(build(cid)); }
    });
  }

  /** Says `text` in a room; resolves with the `ack` (its `seq`) once the message is stored. */
  say(name, text, options = {}) {
    need(isText(name) && isText(text), 'say needs a room and a text');
    const replyTo = options.replyTo;
    if (replyTo !== undefined && replyTo !== null) need(isSeq(replyTo), 'replyTo is a seq');
    return this.#outgoing((cid) => {
      const f = { type: 'say', room: name, text, cid };
      if (replyTo !== undefined && replyTo !== null) f.reply_to = replyTo;
      return f;
    }, options.cid);
  }

  /** A direct message to `to`; resolves with the `ack` (its room is `dmRoom(nick, to)`). */
  dm(to, text, options = {}) {
    need(isText(to) && isText(text), 'dm needs a nick and a text');
    return this.#outgoing((cid) => ({ type: 'dm', to, text, cid }), options.cid);
  }

  /** Gives message `seq` a new text; resolves with the `ack` (the `edit` event comes too). */
  edit(name, seq, text, options = {}) {
    need(isText(name) && isSeq(seq) && isText(text), 'edit needs a room, a seq and a text');
    return this.#outgoing((cid) => ({ type: 'edit', room: name, seq, text, cid }), options.cid);
  }

  /** Deletes message `seq`; resolves with the `ack`. */
  delete(name, seq, options = {}) {
    need(isText(name) && isSeq(seq), 'delete needs a room and a seq');
    return this.#outgoing((cid) => ({ type: 'delete', room: name, seq, cid }), options.cid);
  }

  /** Adds (`on`, the default) or takes back a reaction; resolves with the `ack`. */
  react(name, seq, emoji, on = true, options = {}) {
    need(isText(name) && isSeq(seq) && isText(emoji) && typeof on === 'boolean', 'react needs a room, a seq, an emoji and on');
    return this.#outgoing((cid) => ({ type: 'react', room: name, seq, emoji, on, cid }), options.cid);
  }
}
