// nanachat's browser client: speaks nanachat.v1 (docs/protocol.md) over one WebSocket.
// Everything a peer sends is rendered with textContent, never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  nick: '',
  token: '',
  key: '',
  ws: null,
  connected: false,
  heartbeatMs: 25000,
  lastHeard: 0,
  attempt: 0,
  current: 'lobby',
  rooms: new Map(), // room -> { lastSeq, epoch, oldest, first, seen:Set, unread, members:Set, el:<ol> }
  pending: new Map(), // cid -> { room, text, to, el }
  nextCid: 1,
  loadingHistory: false,
  roomsPaging: false, // the next `rooms` reply continues the list shown
  // Token refresh (docs/protocol.md, "A token's life on an open connection"):
  expired: false, // the server said token_expired: what is said waits for `refreshed`
  offered: null, // the token sent in `refresh`, not answered yet
  ended: false, // closed with 4003: a new token is needed before reconnecting
};

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function isDm(room) { return room.startsWith('@'); }
// A DM room is named by the two nicks in lower case, sorted (nicks are ASCII and unique
// whatever their case: docs/protocol.md).
function dmRoom(a, b) {
  [a, b] = [a.toLowerCase(), b.toLowerCase()];
  return a <= b ? `@${a}+${b}` : `@${b}+${a}`;
}
function dmPeer(room) {
  const [a, b] = room.slice(1).split('+');
  return a === state.nick.toLowerCase() ? b : a;
}
function roomLabel(room) { return isDm(room) ? `@${dmPeer(room)}` : `#${room}`; }

function room(name) {
  let r = state.rooms.get(name);
  if (!r) {
    r = { lastSeq: null, epoch: null, oldest: null, seen: new Set(), unread: 0, members: new Set(), el: el('ol') };
    state.rooms.set(name, r);
    renderRooms();
  }
  return r;
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function setStatus(text, offline) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('offline', !!offline);
}

// ---- rendering ----------------------------------------------------------------------------

function renderRooms() {
  const list = $('room-list');
  list.replaceChildren();
  for (const [name, r] of state.rooms) {
    const li = el('li');
    const b = el('button', '', roomLabel(name));
    b.type = 'button';
    b.dataset.room = name;
    if (name === state.current) b.setAttribute('aria-current', 'true');
    if (r.unread > 0) {
      const u = el('span', 'unread', String(r.unread));
      u.setAttribute('aria-label', `${r.unread} unread`);
      b.append(u);
    }
    b.addEventListener('click', () => show(name));
    li.append(b);
    list.append(li);
  }
}

function renderMembers() {
  const list = $('member-list');
  list.replaceChildren();
  const r = state.rooms.get(state.current);
  if (!r) return;
  for (const nick of [...r.members].sort()) list.append(el('li', '', nick));
}

function show(name) {
  state.current = name;
  const r = room(name);
  r.unread = 0;
  $('room-title').textContent = roomLabel(name);
  const list = $('messages');
  list.replaceChildren(...r.el.children.length ? Array.from(r.el.cloneNode(true).children) : []);
  list.dataset.room = name;
  list.scrollTop = list.scrollHeight;
  renderRooms();
  renderMembers();
  $('say').focus();
}

/// The element of one chat message.
function messageItem(m, pending) {
  const li = el('li', pending ? 'pending' : '');
  const time = m.time ? new Date(m.time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : 'sending…';
  li.append(el('span', 'meta', m.seq ? `#${m.seq} ${time}` : time));
  li.append(el('span', 'from', m.from + ':'));
  li.append(el('span', 'text', m.text));
  if (m.seq) li.dataset.seq = String(m.seq);
  return li;
}

function systemLine(name, text, cls) {
  append(name, el('li', cls || 'system', text));
}

/// Appends to a room's log, and to the screen if the room is shown.
function append(name, li) {
  const r = room(name);
  r.el.append(li);
  if (name === state.current) {
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li.cloneNode(true));
    if (atBottom) list.scrollTop = list.scrollHeight;
  }
}

/// Replaces a pending line (found by its cid) with its stored form, in the log and on screen.
function confirmPending(p, m) {
  const fresh = messageItem(m, false);
  for (const list of [room(p.room).el, $('messages')]) {
    const old = list.querySelector(`[data-cid="${p.cid}"]`);
    if (old) old.replaceWith(list === $('messages') ? fresh.cloneNode(true) : fresh);
  }
}

// ---- protocol -----------------------------------------------------------------------------

function onMessage(m) {
  const r = room(m.room);
  if (r.seen.has(m.seq) || (r.lastSeq !== null && m.seq <= r.lastSeq && !r.replaying)) {
    return; // shown already
  }
  r.seen.add(m.seq);
  if (r.lastSeq === null || m.seq > r.lastSeq) r.lastSeq = m.seq;
  if (r.oldest === null || m.seq < r.oldest) r.oldest = m.seq;
  // Our own message: it replaces its pending line.
  if (m.from === state.nick) {
    for (const p of state.pending.values()) {
      if (p.room === m.room && p.text === m.text && !p.seq) {
        p.seq = m.seq;
        confirmPending(p, m);
        return;
      }
    }
  }
  append(m.room, messageItem(m, false));
  if (m.room !== state.current) {
    r.unread += 1;
    renderRooms();
  }
}

function onServer(msg) {
  switch (msg.type) {
    case 'welcome':
      state.heartbeatMs = msg.limits.heartbeat_ms || 25000;
      $('me').textContent = `as ${msg.nick}`;
      tokenExp(msg.exp);
      state.expired = false;
      state.offered = null;
      hideTokenBar();
      setStatus('connected');
      state.attempt = 0;
      for (const [name, r] of state.rooms) {
        if (isDm(name) && r.lastSeq === null) continue;
        const join = { type: 'join', room: name };
        if (r.lastSeq !== null) { join.since = r.lastSeq; join.epoch = r.epoch; }
        send(join);
      }
      for (const p of state.pending.values()) sendPending(p);
      state.roomsPaging = false;
      send({ type: 'rooms' });
      break;
    case 'joined': {
      const r = room(msg.room);
      if (msg.reset) systemLine(msg.room, 'The history of this room was reset on the server.');
      if (msg.truncated) systemLine(msg.room, 'Some older messages in this room are not shown (removed by retention, or sent to your nick before it was yours): there is a gap here.');
      if (msg.reset || r.lastSeq === null) r.lastSeq = msg.last_seq;
      if (r.oldest === null) r.oldest = msg.last_seq + 1;
      r.epoch = msg.epoch;
      r.first = msg.first_seq || 1; // older ones were removed by retention: nothing to page to
      send({ type: 'who', room: msg.room });
      if (r.el.children.length === 0 && msg.last_seq > 0) send({ type: 'history', room: msg.room, limit: 50 });
      break;
    }
    case 'message': onMessage(msg); break;
    case 'refreshed':
      // The new token is in force: what waited goes now (the same cids: stored once).
      if (state.offered !== null) state.token = state.offered;
      state.offered = null;
      state.expired = false;
      tokenExp(msg.exp);
      hideTokenBar();
      for (const p of state.pending.values()) if (p.held) sendPending(p);
      break;
    case 'ack': {
      const p = state.pending.get(msg.cid);
      if (p) {
        state.pending.delete(msg.cid);
        if (!p.seq) {
          p.seq = msg.seq;
          confirmPending(p, { seq: msg.seq, from: state.nick, text: p.text, time: Date.now() });
          room(msg.room).seen.add(msg.seq);
        }
      }
      break;
    }
    case 'presence': {
      const r = room(msg.room);
      if (msg.event === 'join') r.members.add(msg.nick); else r.members.delete(msg.nick);
      if (msg.room === state.current) renderMembers();
      break;
    }
    case 'members': {
      const r = room(msg.room);
      r.members = new Set(msg.nicks);
      if (msg.room === state.current) renderMembers();
      break;
    }
    case 'rooms': {
      // A list too long for one frame comes cut: the first rooms and the `total` of the list.
      // The button at its end asks for the rooms after the last one shown.
      const list = $('public-rooms');
      if (state.roomsPaging) list.querySelector('li.more')?.remove();
      else list.replaceChildren();
      state.roomsPaging = false;
      for (const info of msg.rooms) {
        const li = el('li', 'room');
        const b = el('button', '', `#${info.room} (${info.members})`);
        b.type = 'button';
        b.addEventListener('click', () => joinRoom(info.room));
        li.append(b);
        list.append(li);
      }
      const more = (msg.total ?? msg.rooms.length) - msg.rooms.length;
      if (more > 0 && msg.rooms.length > 0) {
        const last = msg.rooms[msg.rooms.length - 1];
        const li = el('li', 'more');
        const b = el('button', '', `… and ${more} more`);
        b.type = 'button';
        b.addEventListener('click', () => {
          state.roomsPaging = true;
          send({ type: 'rooms', after: last });
        });
        li.append(b);
        list.append(li);
      }
      break;
    }
    case 'history': {
      state.loadingHistory = false;
      const r = room(msg.room);
      const older = msg.messages.filter((m) => !r.seen.has(m.seq));
      const items = older.map((m) => { r.seen.add(m.seq); return messageItem(m, false); });
      if (older.length) r.oldest = Math.min(r.oldest ?? Infinity, older[0].seq);
      r.el.prepend(...items.map((i) => i.cloneNode(true)));
      if (msg.room === state.current) {
        const list = $('messages');
        const before = list.scrollHeight;
        list.prepend(...items);
        list.scrollTop += list.scrollHeight - before;
      }
      break;
    }
    case 'error': {
      if (msg.code === 'token_expired') { tokenExpired(msg); break; }
      if (msg.code === 'unauthorized' && !msg.cid && state.offered !== null) {
        // The answer to our `refresh`: that token is no good; the bar stays for another.
        state.offered = null;
        askForToken(`That token was refused: ${msg.message}. Paste another one.`);
        break;
      }
      const p = msg.cid ? state.pending.get(msg.cid) : null;
      if (p && (msg.code === 'rate_limited' || msg.code === 'internal')) {
        setTimeout(() => sendPending(p), 1000); // the same cid: stored once
      } else if (p) {
        state.pending.delete(msg.cid);
        for (const list of [room(p.room).el, $('messages')]) {
          const line = list.querySelector(`[data-cid="${p.cid}"]`);
          if (line) { line.className = 'failed'; line.append(el('span', 'why', ` — not sent: ${msg.message}`)); }
        }
      } else {
        systemLine(state.current, `${msg.message} (${msg.code})`, 'failed');
        if (['nick_taken', 'bad_nick', 'unauthorized'].includes(msg.code)) logout(msg.message);
      }
      break;
    }
    case 'tick': case 'left': default: break;
  }
}

/// The token's expiry, shown only as the tooltip of the nick.
function tokenExp(exp) {
  $('me').title = exp ? `token valid until ${new Date(exp * 1000).toLocaleString()}` : '';
}

/// The server said the token expired: what it refused (and what is said from now on) waits
/// for `refreshed`; the bar asks for a new token.
function tokenExpired(msg) {
  const p = msg.cid ? state.pending.get(msg.cid) : null;
  if (p) p.held = true;
  if (state.expired) return;
  state.expired = true;
  const grace = /within (\d+\s*[a-z]*)/.exec(msg.message || '');
  askForToken(`Your token expired. Paste a fresh one${grace ? ` within ${grace[1]}` : ''} to stay connected.`);
}

function askForToken(why) {
  $('token-why').textContent = why;
  $('token-bar').hidden = false;
  $('new-token').value = '';
  $('new-token').focus();
}

function hideTokenBar() {
  $('token-bar').hidden = true;
  $('token-why').textContent = '';
}

function sendPending(p) {
  p.held = state.expired; // if so, sent after `refreshed`
  if (p.held) return;
  if (p.to) send({ type: 'dm', to: p.to, text: p.text, cid: p.cid });
  else send({ type: 'say', room: p.room, text: p.text, cid: p.cid });
}

function say(text) {
  const cid = `${state.key}-${state.nextCid++}`;
  const name = state.current;
  const p = { cid, room: name, text, to: isDm(name) ? dmPeer(name) : null, seq: null };
  state.pending.set(cid, p);
  const li = messageItem({ from: state.nick, text }, true);
  li.dataset.cid = cid;
  append(name, li);
  sendPending(p);
}

function joinRoom(name) {
  room(name);
  send({ type: 'join', room: name });
  show(name);
}

// ---- connection ---------------------------------------------------------------------------

function connect() {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
  const ws = new WebSocket(url, 'nanachat.v1');
  state.ws = ws;
  ws.onopen = () => {
    state.lastHeard = Date.now();
    const hello = { type: 'hello', nick: state.nick, key: state.key };
    if (state.token) hello.token = state.token;
    send(hello);
  };
  ws.onmessage = (e) => {
    state.lastHeard = Date.now();
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    onServer(msg);
  };
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (!state.nick) return;
    state.expired = false;
    state.offered = null;
    if (e.code === 4003) {
      // The token ended (expired with no refresh in time, or no longer valid): reconnecting
      // with it is pointless. What was said stays pending and goes with the new one.
      state.ended = true;
      setStatus('offline — token ended', true);
      askForToken(`Your token ended (${e.reason || 'closed with 4003'}). Paste a new one to reconnect.`);
      return;
    }
    const base = Math.min(10000, 500 * 2 ** state.attempt++);
    const wait = base / 2 + Math.random() * base;
    setStatus(`offline — reconnecting in ${(wait / 1000).toFixed(1)}s`, true);
    setTimeout(connect, wait);
  };
}

// The app-level heartbeat: a link that has been silent for 2.5 ticks is dead; reconnect.
setInterval(() => {
  if (state.ws && state.ws.readyState === WebSocket.OPEN && Date.now() - state.lastHeard > state.heartbeatMs * 2.5) {
    state.ws.close();
  }
}, 1000);

function logout(why) {
  state.nick = '';
  if (state.ws) state.ws.close();
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why;
}

// ---- wiring -------------------------------------------------------------------------------

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.nick = $('nick').value.trim();
  state.token = $('token').value.trim();
  localStorage.setItem('nanachat.nick', state.nick);
  state.key = localStorage.getItem('nanachat.key') || randomKey();
  localStorage.setItem('nanachat.key', state.key);
  $('login').hidden = true;
  $('app').hidden = false;
  room('lobby');
  show('lobby');
  connect();
});

$('token-bar').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('new-token').value.trim();
  if (!token) return;
  if (state.ended) {
    state.ended = false;
    state.token = token;
    hideTokenBar();
    setStatus('connecting…');
    connect();
  } else {
    state.offered = token;
    $('token-why').textContent = 'Sending the new token…';
    send({ type: 'refresh', token });
  }
});

$('say-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('say').value;
  if (!text.trim()) return;
  $('say').value = '';
  say(text);
});

$('join-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('join-room').value.trim();
  $('join-room').value = '';
  if (name) joinRoom(name);
});

$('dm-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const nick = $('dm-nick').value.trim();
  $('dm-nick').value = '';
  if (nick && nick !== state.nick) { room(dmRoom(state.nick, nick)); show(dmRoom(state.nick, nick)); }
});

// Older history when the list is scrolled to its top.
$('messages').addEventListener('scroll', () => {
  const list = $('messages');
  const r = state.rooms.get(state.current);
  if (list.scrollTop > 0 || !r || state.loadingHistory || r.oldest === null || r.oldest <= (r.first || 1)) return;
  state.loadingHistory = true;
  send({ type: 'history', room: state.current, before: r.oldest, limit: 50 });
});

$('nick').value = localStorage.getItem('nanachat.nick') || '';
