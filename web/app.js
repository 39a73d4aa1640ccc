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
  rooms: new Map(), // room -> { lastSeq, epoch, oldest, first, seen:Set, unread, members:Set, el:<ol>, msgs:Map }
  // cid -> { kind: say|dm|edit|delete|react, room, text, to, reply_to, seq, emoji, on }
  pending: new Map(),
  compose: null, // { mode: 'reply'|'edit', room, seq }: what the composer's next submit does
  jumpTo: null, // { room, seq }: a quoted message being looked for in older history
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
    r = { lastSeq: null, epoch: null, oldest: null, seen: new Set(), unread: 0, members: new Set(), el: el('ol'), msgs: new Map() };
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
  if (state.compose && state.compose.room !== name) endCompose();
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

/// The reactions any client may add from the picker (any other reaction shows as a chip too).
const PICKER = ['👍', '❤️', '😂', '🎉'];

function isMine(m) { return !!state.nick && m.from.toLowerCase() === state.nick.toLowerCase(); }

/// A message as this page knows it: what `history` says of one (docs/protocol.md), kept up to
/// date by the `edit`, `delete` and `react` events that follow.
function model(m) {
  return {
    room: m.room,
    seq: m.seq,
    from: m.from,
    text: m.text,
    time: m.time,
    reply_to: m.reply_to ?? null,
    edited: m.edited ?? null,
    deleted: !!m.deleted,
    reactions: new Map(Object.entries(m.reactions || {})),
    mine: new Set(m.mine || []),
    // The last seq of the room this state includes: events up to it are in it already.
    asOf: m.seq,
  };
}

/// Keeps a stored message's state (once: the first one known is kept).
function remember(name, m) {
  const r = room(name);
  let known = r.msgs.get(m.seq);
  if (!known) {
    known = model({ ...m, room: name });
    r.msgs.set(m.seq, known);
  }
  return known;
}

function byCodePoint(a, b) {
  const [x, y] = [Array.from(a), Array.from(b)];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

function snippet(text) { return text.length > 80 ? `${text.slice(0, 79)}…` : text; }

/// The quote above a reply: who said what (a button that scrolls to it).
function quoteOf(name, seq) {
  const q = el('button', 'quote');
  q.type = 'button';
  q.dataset.jump = String(seq);
  const orig = state.rooms.get(name)?.msgs.get(seq);
  if (orig) {
    q.append(el('span', 'quote-from', orig.from), el('span', 'quote-text', orig.deleted ? 'message deleted' : snippet(orig.text)));
  } else {
    q.append(el('span', 'quote-text', `#${seq}`));
  }
  q.title = `Show #${seq}`;
  q.setAttribute('aria-label', `In reply to #${seq}${orig ? ` by ${orig.from}` : ''}: show it`);
  return q;
}

function actionButton(action, text, label) {
  const b = el('button', action, text);
  b.type = 'button';
  b.dataset.action = action;
  b.setAttribute('aria-label', label);
  b.title = label;
  return b;
}

/// The element of one chat message: `m` is a message as stored (a `model`), or a pending one
/// (no seq yet).
function messageItem(m, pending) {
  const li = el('li', pending ? 'pending' : '');
  const name = m.room || state.current;
  if (m.reply_to) li.append(quoteOf(name, m.reply_to));
  const time = m.time ? new Date(m.time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : 'sending…';
  li.append(el('span', 'meta', m.seq ? `#${m.seq} ${time}` : time));
  li.append(el('span', 'from', m.from + ':'));
  if (m.deleted) {
    li.classList.add('deleted');
    li.append(el('span', 'text tombstone', 'message deleted'));
  } else {
    li.append(el('span', 'text', m.text));
    if (m.edited) {
      const mark = el('span', 'edited', '(edited)');
      mark.title = `edited ${new Date(m.edited).toLocaleString()}`;
      li.append(mark);
    }
  }
  if (!m.seq) return li;
  li.dataset.seq = String(m.seq);
  li.tabIndex = -1; // a quote's jump focuses it
  if (m.deleted) return li;
  const actions = el('span', 'actions');
  const picker = el('span', 'picker');
  picker.hidden = true;
  for (const emoji of PICKER) {
    const b = actionButton('react', emoji, `React ${emoji}`);
    b.dataset.emoji = emoji;
    picker.append(b);
  }
  const add = actionButton('pick', '☺+', `React to #${m.seq}`);
  add.setAttribute('aria-expanded', 'false');
  actions.append(picker, add, actionButton('reply', 'Reply', `Reply to #${m.seq}`));
  if (isMine(m)) {
    actions.append(actionButton('edit', 'Edit', `Edit #${m.seq}`));
    actions.append(actionButton('delete', 'Delete', `Delete #${m.seq}`));
  }
  li.prepend(actions); // floats right, on the first line
  if (m.reactions.size === 0) return li;
  const reactions = el('div', 'reactions');
  // In the order `history` gives them (by code point), so every page and every reload agrees.
  for (const [emoji, count] of [...m.reactions].sort(([a], [b]) => byCodePoint(a, b))) {
    const mine = m.mine.has(emoji);
    const chip = el('button', 'chip', `${emoji} ${count}`);
    chip.type = 'button';
    chip.dataset.action = 'toggle';
    chip.dataset.emoji = emoji;
    chip.setAttribute('aria-pressed', String(mine));
    chip.title = mine ? `${emoji}: ${count}, yours among them (click to take it back)` : `${emoji}: ${count} (click to add yours)`;
    reactions.append(chip);
  }
  li.append(reactions);
  return li;
}

/// Draws a stored message again (after an event), in the room's log and on screen.
function redraw(name, seq) {
  const r = state.rooms.get(name);
  const m = r?.msgs.get(seq);
  if (!m) return;
  const fresh = messageItem(m, false);
  const old = r.el.querySelector(`[data-seq="${seq}"]`);
  if (old) old.replaceWith(fresh);
  if (name === state.current) {
    const shown = $('messages').querySelector(`[data-seq="${seq}"]`);
    if (shown) shown.replaceWith(fresh.cloneNode(true));
  }
}

/// Draws again the replies that quote `seq` (its text changed, or it just came in).
function redrawReplies(name, seq) {
  for (const m of room(name).msgs.values()) if (m.reply_to === seq) redraw(name, m.seq);
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
  const fresh = messageItem(remember(p.room, m), false);
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
      if ((p.kind === 'say' || p.kind === 'dm') && p.room === m.room && p.text === m.text && !p.seq) {
        p.seq = m.seq;
        confirmPending(p, m);
        return;
      }
    }
  }
  append(m.room, messageItem(remember(m.room, m), false));
  if (m.room !== state.current) {
    r.unread += 1;
    renderRooms();
  }
}

/// An `edit`, `delete` or `react`: it takes a seq of the room (so a resume goes on after it) and
/// changes the message `target`, if this page has it (one it loads later comes as it is now).
function onEvent(ev) {
  const r = room(ev.room);
  if (r.seen.has(ev.seq) || (r.lastSeq !== null && ev.seq <= r.lastSeq)) return;
  r.seen.add(ev.seq);
  if (r.lastSeq === null || ev.seq > r.lastSeq) r.lastSeq = ev.seq;
  const m = r.msgs.get(ev.target);
  if (!m || ev.seq <= m.asOf) return;
  m.asOf = ev.seq;
  if (ev.type === 'edit') {
    m.text = ev.text;
    m.edited = ev.time;
  } else if (ev.type === 'delete') {
    m.deleted = true;
    m.text = '';
    m.reactions.clear();
    m.mine.clear();
    const c = state.compose;
    if (c && c.room === ev.room && c.seq === ev.target) endCompose();
  } else if (ev.type === 'react') {
    const byMe = isMine(ev);
    // Our own reaction as the page already has it (from `history`): counted there.
    if (byMe && m.mine.has(ev.emoji) === ev.on) return;
    const count = (m.reactions.get(ev.emoji) || 0) + (ev.on ? 1 : -1);
    if (count > 0) m.reactions.set(ev.emoji, count); else m.reactions.delete(ev.emoji);
    if (byMe) { if (ev.on) m.mine.add(ev.emoji); else m.mine.delete(ev.emoji); }
  }
  redraw(ev.room, ev.target);
  if (ev.type !== 'react') redrawReplies(ev.room, ev.target);
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
    case 'edit': case 'delete': case 'react': onEvent(msg); break;
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
        // An edit, delete or reaction shows when its event comes (to everyone alike).
        if ((p.kind === 'say' || p.kind === 'dm') && !p.seq) {
          p.seq = msg.seq;
          confirmPending(p, { seq: msg.seq, from: state.nick, text: p.text, time: Date.now(), reply_to: p.reply_to });
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
      // Each message as it stands now, with every event the page has seen so far in it.
      const asOf = Math.max(r.lastSeq ?? 0, ...msg.messages.map((m) => m.seq));
      const models = older.map((m) => { r.seen.add(m.seq); const k = remember(msg.room, m); k.asOf = asOf; return k; });
      const items = models.map((m) => messageItem(m, false));
      if (older.length) r.oldest = Math.min(r.oldest ?? Infinity, older[0].seq);
      r.el.prepend(...items.map((i) => i.cloneNode(true)));
      if (msg.room === state.current) {
        const list = $('messages');
        const before = list.scrollHeight;
        list.prepend(...items);
        list.scrollTop += list.scrollHeight - before;
      }
      // Replies shown before the message they quote: their quote can say what it was now.
      for (const m of models) redrawReplies(msg.room, m.seq);
      if (state.jumpTo && state.jumpTo.room === msg.room) jump(msg.room, state.jumpTo.seq);
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
      } else if (p && p.kind === 'react' && msg.code === 'unchanged') {
        // The reaction already was as asked (another tab of ours): the page was behind.
        state.pending.delete(msg.cid);
        const m = room(p.room).msgs.get(p.seq);
        if (m) { if (p.on) m.mine.add(p.emoji); else m.mine.delete(p.emoji); redraw(p.room, p.seq); }
      } else if (p && !(p.kind === 'say' || p.kind === 'dm')) {
        state.pending.delete(msg.cid);
        const what = { edit: 'edit', delete: 'delete', react: 'react to' }[p.kind];
        systemLine(p.room, `Could not ${what} #${p.seq}: ${msg.message} (${msg.code})`, 'failed');
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
  const { cid, room: name } = p;
  switch (p.kind) {
    case 'dm': send({ type: 'dm', to: p.to, text: p.text, cid }); break;
    case 'edit': send({ type: 'edit', room: name, seq: p.seq, text: p.text, cid }); break;
    case 'delete': send({ type: 'delete', room: name, seq: p.seq, cid }); break;
    case 'react': send({ type: 'react', room: name, seq: p.seq, emoji: p.emoji, on: p.on, cid }); break;
    default: {
      const say = { type: 'say', room: name, text: p.text, cid };
      if (p.reply_to) say.reply_to = p.reply_to;
      send(say);
    }
  }
}

function newCid() { return `${state.key}-${state.nextCid++}`; }

/// Says `text` in the current room (a reply to the message `replyTo` if given).
function say(text, replyTo) {
  const cid = newCid();
  const name = state.current;
  // A reply goes as a `say` with `reply_to`, in a direct-message room too.
  const kind = isDm(name) && !replyTo ? 'dm' : 'say';
  const p = { kind, cid, room: name, text, to: isDm(name) ? dmPeer(name) : null, seq: null, reply_to: replyTo || null };
  state.pending.set(cid, p);
  const li = messageItem({ room: name, from: state.nick, text, reply_to: p.reply_to }, true);
  li.dataset.cid = cid;
  append(name, li);
  sendPending(p);
}

/// An edit, delete or reaction: sent with a cid, again after a reconnect until acked (stored
/// once), like what is said.
function change(p) {
  const cid = newCid();
  const full = { ...p, cid };
  state.pending.set(cid, full);
  sendPending(full);
}

function react(name, seq, emoji, on) { change({ kind: 'react', room: name, seq, emoji, on }); }

// ---- composing a reply or an edit ---------------------------------------------------------

/// The composer's next submit replies to, or edits, message `seq`: said above it, with a way
/// out (Escape, or Cancel).
function startCompose(mode, name, seq) {
  const m = room(name).msgs.get(seq);
  if (!m || m.deleted) return;
  state.compose = { mode, room: name, seq };
  const what = $('compose-what');
  what.replaceChildren();
  what.append(el('span', 'compose-mode', mode === 'edit' ? `Editing #${seq}` : 'Replying to'));
  if (mode === 'reply') what.append(quoteOf(name, seq));
  $('compose-bar').hidden = false;
  const input = $('say');
  if (mode === 'edit') input.value = m.text;
  input.placeholder = mode === 'edit' ? 'Edit your message' : 'Say something';
  input.focus();
}

function endCompose() {
  if (state.compose?.mode === 'edit') $('say').value = '';
  state.compose = null;
  $('compose-bar').hidden = true;
  $('compose-what').replaceChildren();
  $('say').placeholder = 'Say something';
}

/// Scrolls to message `seq` of room `name` and flashes it; older history is asked for until
/// it is there (or there is no more).
function jump(name, seq) {
  const li = $('messages').querySelector(`[data-seq="${seq}"]`);
  const r = room(name);
  if (li) {
    state.jumpTo = null;
    li.scrollIntoView({ block: 'center' });
    li.classList.add('flash');
    li.focus({ preventScroll: true });
    setTimeout(() => li.classList.remove('flash'), 1500);
    return;
  }
  if (r.oldest === null || r.oldest <= (r.first || 1) || seq >= r.oldest) { state.jumpTo = null; return; }
  state.jumpTo = { room: name, seq };
  state.loadingHistory = true;
  send({ type: 'history', room: name, before: r.oldest, limit: 50 });
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
  const c = state.compose;
  if (c && c.mode === 'edit') {
    const m = room(c.room).msgs.get(c.seq);
    if (m && m.text !== text) change({ kind: 'edit', room: c.room, seq: c.seq, text });
    endCompose();
    $('say').value = '';
    return;
  }
  $('say').value = '';
  endCompose();
  say(text, c ? c.seq : null);
});

// Escape leaves a reply or an edit; ArrowUp in an empty composer edits your last message.
$('say').addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.compose) {
    e.preventDefault();
    endCompose();
  } else if (e.key === 'ArrowUp' && !$('say').value && !state.compose) {
    const mine = [...room(state.current).msgs.values()].filter((m) => isMine(m) && !m.deleted);
    if (mine.length) {
      e.preventDefault();
      startCompose('edit', state.current, mine.reduce((a, b) => (b.seq > a.seq ? b : a)).seq);
    }
  }
});
$('compose-cancel').addEventListener('click', () => { endCompose(); $('say').focus(); });
$('compose-what').addEventListener('click', (e) => {
  const q = e.target.closest('[data-jump]');
  if (q && state.compose) jump(state.compose.room, Number(q.dataset.jump));
});

// What is done to a message, from the buttons on it (one listener: what is on screen is a
// copy of each room's log).
$('messages').addEventListener('click', (e) => {
  const b = e.target.closest('button');
  const li = e.target.closest('li[data-seq]');
  if (!b || !li) return;
  const name = state.current;
  const seq = Number(li.dataset.seq);
  const m = room(name).msgs.get(seq);
  if (b.dataset.jump) { jump(name, Number(b.dataset.jump)); return; }
  if (!m) return;
  switch (b.dataset.action) {
    case 'reply': startCompose('reply', name, seq); break;
    case 'edit': startCompose('edit', name, seq); break;
    case 'delete':
      // Twice: the first click asks.
      if (b.dataset.armed) {
        change({ kind: 'delete', room: name, seq });
        b.disabled = true;
      } else {
        b.dataset.armed = '1';
        b.textContent = 'Delete?';
        b.classList.add('armed');
        b.setAttribute('aria-label', `Really delete #${seq}? Click again`);
        setTimeout(() => { if (b.isConnected) { delete b.dataset.armed; b.textContent = 'Delete'; b.classList.remove('armed'); } }, 4000);
      }
      break;
    case 'toggle': react(name, seq, b.dataset.emoji, !m.mine.has(b.dataset.emoji)); break;
    case 'pick': {
      const picker = li.querySelector('.picker');
      picker.hidden = !picker.hidden;
      b.setAttribute('aria-expanded', String(!picker.hidden));
      if (!picker.hidden) picker.querySelector('button').focus();
      break;
    }
    case 'react': {
      const emoji = b.dataset.emoji;
      li.querySelector('.picker').hidden = true;
      if (!m.mine.has(emoji)) react(name, seq, emoji, true);
      break;
    }
    default: break;
  }
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
