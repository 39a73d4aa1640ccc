// nanachat's browser client, on the JavaScript client library (clients/js/nanachat.js, served
// as /nanachat.js): the library keeps the connection — reconnection with back-off, the
// heartbeat, rooms joined again with `since`, the outbox resent with its cids, token refresh
// (asked of the user in the token bar) — and this page renders what it delivers.
// Everything a peer sends is rendered with textContent, never as HTML.
import { Client, dmRoom } from '/nanachat.js';

const $ = (id) => document.getElementById(id);
const state = {
  nick: '',
  token: '',
  key: '',
  client: null, // the library's Client of this login
  current: 'lobby',
  // room -> { lastSeq, epoch, oldest, first, seen:Set, unread, members:Set, el:<ol>, msgs:Map,
  //           member, joined, readSeq, readSent, countedTo, marker }: see room()
  rooms: new Map(),
  // cid -> { kind: say|dm|edit|delete|react, room, text, to, reply_to, seq, emoji, on }: sent
  // and not acked yet (the library's outbox sends it again after a reconnect)
  pending: new Map(),
  compose: null, // { mode: 'reply'|'edit', room, seq }: what the composer's next submit does
  jumpTo: null, // { room, seq }: a quoted message being looked for in older history
  loadingHistory: false,
  roomsPaging: false, // the next `rooms` reply continues the list shown
  // Token refresh (docs/protocol.md, "A token's life on an open connection"): the library asks
  // getToken, which shows the token bar and resolves when a token is typed there.
  expired: false, // the server said token_expired: what is said waits for `refreshed`
  tokenReason: null, // why the bar asks (getToken's reason), while it does
  tokenWaiters: [], // getToken's promises, resolved by the bar
  closeReason: '', // the reason of the last close (shown for a 4003)
  maxRooms: 32, // welcome's limits.max_rooms
  // The server keeps this user's read positions and inbox (a key or a token: the page always
  // brings a key); false once it says `forbidden` to them, and the page counts on its own.
  known: true,
  typing: new Map(), // room -> Map(nick in lower case -> { nick, timer }): who is typing there
  typingSent: new Map(), // room -> when this page last said it was typing there (ms)
  // Each `search` sent and not answered yet, oldest first ({ query, room, skip, limit, next }).
  // Only the last one's answer is shown.
  searches: [],
  lastSearch: null, // the one whose results are shown (for "More results")
  publicRooms: new Map(), // room -> members, from `rooms` ("Also here"), busiest first
  publicTotal: 0, // how many rooms the server has with members
  publicLast: null, // the last entry of the last `rooms` page
  online: new Map(), // nick (lower case) -> whether it is online, for the direct-message rooms' others (`watch`)
  watched: null, // the nicks `watch` follows now, joined with ',' (null: not watching yet)
  roomsPaged: false, // the user paged the list past its first page: it is not refreshed
  retryAt: 0, // offline: when the library connects again (ms), for the countdown
  countdown: null, // its interval
};


/// How often this page says it is typing, and how long another's `typing` is shown.
const TYPING_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 5000;

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

/// The terminal client's nick colours (src/client/output.rs, NICK_COLOURS: ANSI 31 to 36) and
/// its hash, so a nick has the same colour in both; style.css maps each to a readable colour
/// (the classes nick-c31 … nick-c36).
const NICK_COLOURS = [31, 32, 33, 34, 35, 36];
const utf8 = new TextEncoder();
function colourOf(nick) {
  let h = 5381;
  for (const b of utf8.encode(nick)) h = (Math.imul(h, 33) ^ b) >>> 0;
  return NICK_COLOURS[h % NICK_COLOURS.length];
}
function nickClass(nick) { return `nick-c${colourOf(nick)}`; }

/// http(s) addresses in a message: shown as links. Nothing else is (no other scheme, no markup):
/// the rest stays text.
const URL_RE = /\bhttps?:\/\/[^\s<>"]+/gi;

/// Fills `span` with `text`, its http(s) addresses as links that open in a new tab.
function linkify(span, text) {
  let at = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    // Punctuation after an address ends the sentence, not the address (a closing bracket
    // belongs to it when it opened one).
    for (;;) {
      const last = url.at(-1);
      if ('.,;:!?\'*…。、，！？」』）】》'.includes(last)) url = url.slice(0, -1);
      else if (last === ')' && url.split('(').length < url.split(')').length) url = url.slice(0, -1);
      else if (last === ']' && url.split('[').length < url.split(']').length) url = url.slice(0, -1);
      else break;
    }
    let href = null;
    try {
      const u = new URL(url);
      if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
    } catch { /* not an address after all: text */ }
    if (!href) continue;
    if (match.index > at) span.append(text.slice(at, match.index));
    const a = el('a', 'link', url);
    a.href = href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    span.append(a);
    at = match.index + url.length;
  }
  if (at < text.length) span.append(text.slice(at));
  return span;
}

/// A day separator's words: Today, Yesterday, or the date.
function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date();
  yesterday.setDate(today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

/// Messages of one sender this close together are shown as one group (name and avatar once).
const GROUP_MS = 5 * 60 * 1000;

function isDm(room) { return room.startsWith('@'); }
function dmPeer(room) {
  const [a, b] = room.slice(1).split('+');
  return a === state.nick.toLowerCase() ? b : a;
}
function roomLabel(room) { return isDm(room) ? `@${dmPeer(room)}` : `#${room}`; }

function room(name) {
  let r = state.rooms.get(name);
  if (!r) {
    r = {
      lastSeq: null, epoch: null, oldest: null, seen: new Set(), unread: 0, members: new Set(), el: el('ol'), msgs: new Map(),
      member: false, // this page joined it (or asked to): joined again after every reconnect
      joined: false, // on the current connection
      readSeq: null, // where the server says this user has read it up to (known users)
      readSent: null, // the last seq this page sent in `read`
      countedTo: 0, // `unread` accounts for every message up to this seq
      marker: null, // the "new" line goes after this seq (set when the room is shown)
    };
    state.rooms.set(name, r);
    renderRooms();
    if (isDm(name)) watch();
  }
  return r;
}

/// Follows the room counts and whether the other one of each direct-message room is online
/// (`watch`; the library follows them again after a reconnect): asked again only when the
/// direct-message rooms change.
function watch() {
  const c = state.client;
  if (!c || c.state !== 'open') return;
  const nicks = [...new Set([...state.rooms.keys()].filter(isDm).map(dmPeer))]
    .filter((n) => n !== state.nick.toLowerCase()).sort().slice(0, 100);
  const key = nicks.join(',');
  if (state.watched === key) return;
  state.watched = key;
  c.watch({ rooms: true, nicks }).catch(failed);
}

/// `live`: room counts now (0: empty now), and who of those followed came online or went.
function onLive(msg) {
  for (const n of msg.online ?? []) state.online.set(n.toLowerCase(), true);
  for (const n of msg.offline ?? []) state.online.set(n.toLowerCase(), false);
  if (msg.rooms.length) {
    for (const { room: name, members } of msg.rooms) {
      const had = state.publicRooms.has(name);
      if (members > 0) state.publicRooms.set(name, members); else state.publicRooms.delete(name);
      if (had && members === 0) state.publicTotal = Math.max(0, state.publicTotal - 1);
      if (!had && members > 0) state.publicTotal += 1;
    }
    // Busiest first, as the server lists them.
    state.publicRooms = new Map([...state.publicRooms].sort((a, b) => b[1] - a[1] || byCodePoint(a[0], b[0])));
    state.publicTotal = Math.max(state.publicTotal, state.publicRooms.size);
  }
  // More changed than one frame holds: the whole list again.
  if (msg.total > msg.rooms.length && !state.roomsPaging) state.client.rooms().catch(failed);
  renderPublic();
  renderPeer();
}

/// The dot beside a direct-message room's title: whether the other one is online, said in words
/// to a screen reader (and read out when it changes).
function renderPeer() {
  const box = $('peer-presence');
  const name = state.current;
  if (!name || !isDm(name)) { box.hidden = true; return; }
  const peer = dmPeer(name);
  const known = state.online.has(peer);
  const on = state.online.get(peer) === true;
  box.hidden = !known;
  box.dataset.online = String(on);
  box.title = on ? 'online' : 'offline';
  const text = `${dmPeerNick(name)} is ${on ? 'online' : 'offline'}`;
  if ($('peer-presence-text').textContent !== text) $('peer-presence-text').textContent = text;
}

/// A request's refusal, shown in the room on screen (a closed client's are not: it is gone).
function failed(err) {
  if (!err || err.code === 'closed') return;
  systemLine(state.current, `${err.frame?.message ?? err.message} (${err.code})`, 'failed');
}

/// Asks the server for the user's rooms and read positions; a user it cannot know again (no
/// key or token) is refused, and the page counts unread messages on its own.
function askInbox() {
  state.client.inbox().catch((err) => {
    if (err.code === 'forbidden') state.known = false; else failed(err);
  });
}

function setStatus(text, offline) {
  const s = $('status');
  delete s.dataset.countdown;
  // The countdown sets it often: the same words are not said again to a screen reader.
  if (s.textContent !== text) s.textContent = text;
  s.classList.toggle('offline', !!offline);
}

// ---- rendering ----------------------------------------------------------------------------

function renderRooms() {
  const list = $('room-list');
  list.replaceChildren();
  for (const [name, r] of state.rooms) {
    const li = el('li');
    const b = el('button');
    b.append(el('span', 'clip', roomLabel(name)));
    b.type = 'button';
    b.title = roomLabel(name);
    b.dataset.room = name;
    if (name === state.current) b.setAttribute('aria-current', 'true');
    if (r.unread > 0) {
      // The server counts up to 1,000.
      const n = r.unread >= 1000 ? '1000+' : String(r.unread);
      const u = el('span', 'unread', n);
      u.setAttribute('aria-label', `${n} unread`);
      b.append(u);
      b.setAttribute('aria-label', `${roomLabel(name)}, ${n} unread`);
    }
    b.addEventListener('click', () => { closeDrawer(); show(name); });
    li.append(b);
    list.append(li);
  }
}

/// The members of the room on screen, each in their colour; a direct-message room's two are
/// always listed (the user and the other one). Also how many are in each room listed.
function renderMembers() {
  const list = $('member-list');
  list.replaceChildren();
  const name = state.current;
  const r = state.rooms.get(name);
  renderPublic();
  if (!r) { $('member-count').textContent = ''; return; }
  const nicks = new Map([...r.members].map((n) => [n.toLowerCase(), n]));
  if (isDm(name)) {
    for (const n of [state.nick, dmPeerNick(name)]) if (!nicks.has(n.toLowerCase())) nicks.set(n.toLowerCase(), n);
  }
  const sorted = [...nicks.values()].sort((a, b) => byCodePoint(a.toLowerCase(), b.toLowerCase()));
  for (const nick of sorted) {
    const li = el('li', `member ${nickClass(nick)}`, nick);
    li.title = nick.toLowerCase() === state.nick.toLowerCase() ? `${nick} (you)` : nick;
    list.append(li);
  }
  $('member-count').textContent = String(sorted.length);
  $('members-title').setAttribute('aria-label', `Members of ${roomLabel(name)}: ${sorted.length}`);
}

/// The other one of a direct-message room, as they write their nick when this page has seen
/// them (the room's name has it in lower case).
function dmPeerNick(name) {
  const peer = dmPeer(name);
  for (const m of state.rooms.get(name)?.msgs.values() ?? []) if (m.from.toLowerCase() === peer) return m.from;
  return peer;
}

/// The rooms with members ("Also here"), busiest first as the server listed them; the counts are
/// kept live from `live` frames (`watch`), a room this page is in also from its `presence`
/// events.
function renderPublic() {
  const list = $('public-rooms');
  list.replaceChildren();
  for (const [name, count] of state.publicRooms) {
    const r = state.rooms.get(name);
    const n = r && r.joined && r.members.size > 0 ? r.members.size : count;
    const li = el('li', 'room');
    const b = el('button');
    b.append(el('span', 'clip', `#${name} (${n})`));
    b.type = 'button';
    b.title = `#${name}`;
    b.dataset.room = name;
    b.setAttribute('aria-label', `#${name}, ${n} ${n === 1 ? 'member' : 'members'}`);
    b.addEventListener('click', () => joinRoom(name));
    li.append(b);
    list.append(li);
  }
  const more = state.publicTotal - state.publicRooms.size;
  if (more > 0 && state.publicRooms.size > 0) {
    const last = state.publicLast;
    const li = el('li', 'more');
    const b = el('button', '', `… and ${more} more`);
    b.type = 'button';
    b.addEventListener('click', () => {
      state.roomsPaging = true;
      state.roomsPaged = true;
      state.client.rooms({ after: last }).catch(failed);
    });
    li.append(b);
    list.append(li);
  }
}

function show(name) {
  if (state.compose && state.compose.room !== name) endCompose();
  state.current = name;
  const r = room(name);
  enter(name);
  // A known user's messages are read when seen at the bottom of the list (see markRead); the
  // "new" line marks where they begin, for as long as the room is shown.
  if (!state.known) r.unread = 0;
  r.marker = state.known && r.unread > 0 && r.readSeq !== null ? r.readSeq : null;
  $('room-title').textContent = roomLabel(name);
  $('room-title').title = roomLabel(name);
  renderPeer();
  const list = $('messages');
  list.replaceChildren(...r.el.children.length ? Array.from(r.el.cloneNode(true).children) : []);
  list.dataset.room = name;
  decorate();
  const marker = drawMarker(name);
  if (marker) list.scrollTop += marker.getBoundingClientRect().top - list.getBoundingClientRect().top;
  else list.scrollTop = list.scrollHeight;
  renderRooms();
  renderMembers();
  renderTyping();
  $('say').focus();
  markRead();
}

/// Joins `name` unless this page already did (or asked to): its messages come live, and a
/// known user's `joined` says how far it has read. The library joins it again after every
/// reconnect, resuming after the last seq it delivered.
function enter(name) {
  const r = room(name);
  if (r.member) return;
  r.member = true;
  state.client.join(name).catch((err) => {
    if (err.code !== 'already_joined') r.member = false;
    failed(err);
  });
}

/// Forgets what this page loaded of a room it never joined (a direct-message room whose
/// messages only came live): after a reconnect it may have missed some, so opening it loads
/// it afresh rather than resume across a gap.
function forgetLog(r) {
  r.lastSeq = null;
  r.epoch = null;
  r.oldest = null;
  r.seen = new Set();
  r.msgs = new Map();
  r.el = el('ol');
}

// ---- unread counts and read positions (docs/protocol.md, "Read state and inbox") -------------

function isAtBottom() {
  const list = $('messages');
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

/// Whether what comes into the room on screen is seen: the tab visible, the list at its end.
function isSeen() { return document.visibilityState === 'visible' && isAtBottom(); }

/// The messages of others this page has of `r` after `seq` (not deleted): unread ones.
function countAfter(r, seq, upTo = Infinity) {
  let n = 0;
  for (const m of r.msgs.values()) if (m.seq > seq && m.seq <= upTo && !m.deleted && !isMine(m)) n++;
  return n;
}

/// What the server says of a room (`joined`, an `inbox` entry): read up to `readSeq`, `unread`
/// messages after it, counted up to `lastSeq`.
function readState(name, readSeq, unread, lastSeq) {
  const r = room(name);
  r.readSeq = Math.max(r.readSeq ?? 0, readSeq);
  if (lastSeq >= r.countedTo) {
    r.unread = unread;
    r.countedTo = lastSeq;
  } else {
    // Messages that came live after the server counted: add this page's count of them.
    r.unread = unread + countAfter(r, Math.max(lastSeq, r.readSeq), r.countedTo);
  }
  if (name === state.current) { drawMarker(name); markRead(); }
  renderRooms();
}

/// Tells the server the room on screen is read up to its last seq, when it is seen: the tab
/// visible, the list scrolled to the bottom.
function markRead() {
  const name = state.current;
  const r = state.rooms.get(name);
  if (!r || !state.known || state.expired || !r.joined || r.loading || r.lastSeq === null || !isSeen()) return;
  const seq = r.lastSeq; // events take seqs too: read up to the last one
  // Sent once seen even when the server has it read already (the first `join` of a room marks
  // it read, and tells no other connection): the user's other tabs learn it from the answer.
  if (seq > 0 && (r.readSent ?? -1) < seq) {
    r.readSent = seq;
    state.client.read(name, seq).catch((err) => {
      if (err.code === 'forbidden') state.known = false; else failed(err);
    });
  }
  if (r.unread !== 0) { r.unread = 0; renderRooms(); }
}

/// `read` from the server: this user read `room` up to `seq`, here or on another connection.
function onRead(msg) {
  const r = state.rooms.get(msg.room);
  if (!r) return; // a room this page does not show: its next `inbox` says so
  const mine = r.readSent !== null && msg.seq === r.readSent;
  r.readSeq = Math.max(r.readSeq ?? 0, msg.seq);
  if (r.readSeq >= r.countedTo) {
    r.unread = 0;
  } else if (r.oldest !== null && r.oldest <= r.readSeq + 1) {
    r.unread = countAfter(r, r.readSeq); // every message after it is here: count them
  } else {
    askInbox(); // some are not loaded: the server counts
  }
  // Read on another connection: the "new" line moves there (or goes).
  if (!mine && msg.room === state.current) {
    r.marker = r.unread > 0 ? r.readSeq : null;
    drawMarker(msg.room);
  }
  renderRooms();
}

/// Puts the "new messages" line of the room on screen after seq `r.marker`, before the first
/// message after it; returns it (null when there is none).
function drawMarker(name) {
  const list = $('messages');
  const had = list.querySelector('.unread-marker');
  had?.remove();
  const r = state.rooms.get(name);
  if (name !== state.current || !r || r.marker === null) {
    if (had) decorate();
    return null;
  }
  const first = Array.from(list.querySelectorAll('li[data-seq]')).find((li) => Number(li.dataset.seq) > r.marker);
  if (!first) return null;
  const line = el('li', 'unread-marker', 'new');
  line.setAttribute('role', 'separator');
  line.setAttribute('aria-label', 'New messages below');
  first.before(line);
  decorate();
  return line;
}

// ---- who is typing ------------------------------------------------------------------------

/// Says (at most once every 2 s a room) that the user is typing in the room on screen.
function typed() {
  const name = state.current;
  const r = state.rooms.get(name);
  if (!r || !r.joined || state.expired || state.compose?.mode === 'edit' || !$('say').value.trim()) return;
  const now = Date.now();
  if (now - (state.typingSent.get(name) ?? -Infinity) < TYPING_EVERY_MS) return;
  state.typingSent.set(name, now);
  state.client.typing(name);
}

/// `typing` from the server: `nick` is typing in `room`, shown for 5 s or until its message.
function onTyping(msg) {
  if (!msg.nick || msg.nick.toLowerCase() === state.nick.toLowerCase()) return;
  let who = state.typing.get(msg.room);
  if (!who) { who = new Map(); state.typing.set(msg.room, who); }
  const key = msg.nick.toLowerCase();
  clearTimeout(who.get(key)?.timer);
  who.set(key, { nick: msg.nick, timer: setTimeout(() => stopTyping(msg.room, msg.nick), TYPING_SHOWN_MS) });
  if (msg.room === state.current) renderTyping();
}

function stopTyping(name, nick) {
  const who = state.typing.get(name);
  const key = nick.toLowerCase();
  if (!who || !who.has(key)) return;
  clearTimeout(who.get(key).timer);
  who.delete(key);
  if (name === state.current) renderTyping();
}

function renderTyping() {
  const nicks = [...(state.typing.get(state.current)?.values() ?? [])].map((t) => t.nick).sort(byCodePoint);
  let text = '';
  if (nicks.length === 1) text = `${nicks[0]} is typing…`;
  else if (nicks.length === 2) text = `${nicks[0]} and ${nicks[1]} are typing…`;
  else if (nicks.length === 3) text = `${nicks[0]}, ${nicks[1]} and ${nicks[2]} are typing…`;
  else if (nicks.length > 3) text = `${nicks[0]}, ${nicks[1]} and ${nicks.length - 2} others are typing…`;
  const line = $('typing');
  if (line.textContent !== text) { line.textContent = text; line.title = text; }
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

/// A message as labels name it (never by its seq): "alice's message at 01:16".
function whose(m) {
  const time = new Date(m.time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return `${isMine(m) ? 'your' : `${m.from}'s`} message at ${time}`;
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
    q.append(el('span', 'quote-text', 'an earlier message'));
  }
  q.title = 'Show the message';
  const said = orig && !orig.deleted ? `: “${snippet(orig.text).slice(0, 40)}”` : '';
  q.setAttribute('aria-label', orig ? `In reply to ${orig.from}${said} (show it)` : 'In reply to an earlier message (show it)');
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
/// (no seq yet). An avatar and a head (who, when: a link to the message), then what was said;
/// `decorate` groups a sender's messages that follow each other (the head shown once).
function messageItem(m, pending) {
  const li = el('li', pending ? 'msg pending' : 'msg');
  const name = m.room || state.current;
  li.dataset.from = m.from;
  li.dataset.time = String(m.time || Date.now());
  const colour = nickClass(m.from);
  const avatar = el('span', `avatar ${colour}`, Array.from(m.from)[0]?.toUpperCase() ?? '?');
  avatar.setAttribute('aria-hidden', 'true');
  const head = el('span', 'head');
  const from = el('span', `from clip ${colour}`, m.from);
  from.title = m.from;
  head.append(from);
  const when = m.time ? new Date(m.time) : null;
  const time = when ? when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : 'sending…';
  if (m.seq) {
    // No seq on screen: the time is a link to the message (#room/seq), for its address.
    const link = el('a', 'meta permalink', time);
    link.href = `#${encodeURIComponent(name)}/${m.seq}`;
    link.title = `${when ? when.toLocaleString() : ''} · link to this message`;
    link.setAttribute('aria-label', `${time}, link to this message`);
    head.append(link);
  } else {
    head.append(el('span', 'meta', time));
  }
  const body = el('div', 'body');
  if (m.reply_to) body.append(quoteOf(name, m.reply_to));
  if (m.deleted) {
    li.classList.add('deleted');
    body.append(el('span', 'text tombstone', 'message deleted'));
  } else {
    body.append(linkify(el('span', 'text'), m.text));
    if (m.edited) {
      const mark = el('span', 'edited', '(edited)');
      mark.title = `edited ${new Date(m.edited).toLocaleString()}`;
      body.append(mark);
    }
  }
  li.append(avatar, head, body);
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
  const which = whose(m);
  const add = actionButton('pick', '☺+', `React to ${which}`);
  add.setAttribute('aria-expanded', 'false');
  actions.append(picker, add, actionButton('reply', 'Reply', `Reply to ${which}`));
  if (isMine(m)) {
    actions.append(actionButton('edit', 'Edit', `Edit ${which}`));
    actions.append(actionButton('delete', 'Delete', `Delete ${which}`));
  }
  // Over the end of the first line (style.css), but after the text in the page: the list is a
  // live region, and a new message is read as who said what, its buttons last.
  li.append(actions);
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
  body.append(reactions);
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
    if (shown) { shown.replaceWith(fresh.cloneNode(true)); decorate(); }
  }
}

/// Draws again the replies that quote `seq` (its text changed, or it just came in).
function redrawReplies(name, seq) {
  for (const m of room(name).msgs.values()) if (m.reply_to === seq) redraw(name, m.seq);
}

function systemLine(name, text, cls) {
  append(name, el('li', cls || 'system', text));
}

/// Appends to a room's log, and to the screen if the room is shown: a stored message before the
/// lines still waiting for their ack (those stay at the bottom until they have a seq).
function append(name, li) {
  const r = room(name);
  place(r.el, li);
  if (name === state.current) {
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    place(list, li.cloneNode(true));
    decorate();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }
}

/// Puts `li` in `list`: a stored message in seq order (before the first one with a higher seq,
/// else before the first line waiting for its ack), anything else at the end.
function place(list, li) {
  const seq = Number(li.dataset.seq);
  let at = null;
  if (seq) {
    at = Array.from(list.querySelectorAll(':scope > li[data-seq]')).find((x) => Number(x.dataset.seq) > seq)
      ?? list.querySelector(':scope > li.pending[data-cid]');
  }
  if (at) at.before(li); else list.append(li);
}

/// Replaces a pending line (found by its cid) with its stored form, in the log and on screen:
/// in seq order among the room's messages (what others said while it waited came before it).
function confirmPending(p, m) {
  const fresh = messageItem(remember(p.room, m), false);
  for (const list of [room(p.room).el, $('messages')]) {
    const old = list.querySelector(`[data-cid="${p.cid}"]`);
    if (!old) continue;
    old.remove();
    place(list, list === $('messages') ? fresh.cloneNode(true) : fresh);
  }
  if (p.room === state.current) decorate();
}

/// Groups the messages on screen and puts in what goes between them: a day's separator before
/// its first message; a message right after another of the same sender (within 5 minutes, the
/// same day, not a reply, nothing between them) shows no name or avatar. Says so when the room
/// has no messages yet.
function decorate() {
  const list = $('messages');
  // The separators: each day's first message has one right before it (before the "new" line
  // when that is there). One already in place stays: the list is a live region, and a
  // separator taken out and put back would be read out again.
  const stale = new Set(list.querySelectorAll(':scope > li.day'));
  let day = null;
  for (const li of list.querySelectorAll(':scope > li.msg')) {
    const when = new Date(Number(li.dataset.time));
    const key = when.toDateString();
    if (key === day) continue;
    day = key;
    const label = dayLabel(when);
    const marker = li.previousElementSibling;
    const at = marker?.classList.contains('unread-marker') ? marker : li;
    const before = at.previousElementSibling;
    if (before?.classList.contains('day') && before.dataset.day === key && before.textContent === label) {
      stale.delete(before);
      continue;
    }
    const sep = el('li', 'day');
    sep.dataset.day = key;
    sep.setAttribute('role', 'separator');
    sep.setAttribute('aria-label', label);
    sep.append(el('span', '', label));
    at.before(sep);
  }
  for (const d of stale) d.remove();
  // The groups: anything between two messages (a day, the "new" line, a notice) ends one.
  let prev = null;
  for (const li of list.children) {
    if (!li.classList.contains('msg')) { prev = null; continue; }
    const time = Number(li.dataset.time);
    const grouped = prev !== null && !li.querySelector(':scope > .body > .quote')
      && prev.dataset.from.toLowerCase() === li.dataset.from.toLowerCase()
      && time - Number(prev.dataset.time) < GROUP_MS && !prev.classList.contains('failed');
    li.classList.toggle('cont', grouped);
    prev = li;
  }
  const name = state.current;
  const r = state.rooms.get(name);
  const empty = $('empty');
  const none = !list.querySelector(':scope > li.msg') && !!r && !r.loading && (r.joined || isDm(name));
  if (none) {
    empty.textContent = isDm(name)
      ? `No messages yet with ${roomLabel(name)}. Say hello: only the two of you see this conversation.`
      : `No messages yet in ${roomLabel(name)}. Say something to start the conversation.`;
  }
  empty.hidden = !none;
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
  const mine = isMine(m);
  if (!mine) stopTyping(m.room, m.from); // their message came: they are not typing any more
  // Unread: a message of someone else's after where this user has read, not counted yet (a
  // replay after `joined` is counted in its `unread` already).
  let counted = false;
  if (!state.known) {
    counted = !mine && m.room !== state.current;
  } else if (m.seq > r.countedTo) {
    r.countedTo = m.seq;
    counted = !mine && (r.readSeq === null || m.seq > r.readSeq);
  }
  if (counted) {
    // The first one since all was read, while the room is on screen but not seen (another
    // tab in front, scrolled up): the "new" line moves above it.
    if (m.room === state.current && r.unread === 0 && state.known && !isSeen()) r.marker = m.seq - 1;
    r.unread += 1;
    renderRooms();
  }
  // Our own message: it replaces its pending line.
  if (m.from === state.nick) {
    for (const p of state.pending.values()) {
      if ((p.kind === 'say' || p.kind === 'dm') && p.room === m.room && p.text === m.text && !p.seq) {
        p.seq = m.seq;
        confirmPending(p, m);
        if (m.room === state.current) markRead();
        return;
      }
    }
  }
  append(m.room, messageItem(remember(m.room, m), false));
  if (m.room === state.current) {
    if (counted) drawMarker(m.room);
    markRead();
  }
}

/// An `edit`, `delete` or `react`: it takes a seq of the room (so a resume goes on after it) and
/// changes the message `target`, if this page has it (one it loads later comes as it is now).
function onEvent(ev) {
  const r = room(ev.room);
  if (r.seen.has(ev.seq) || (r.lastSeq !== null && ev.seq <= r.lastSeq)) return;
  r.seen.add(ev.seq);
  if (r.lastSeq === null || ev.seq > r.lastSeq) r.lastSeq = ev.seq;
  r.countedTo = Math.max(r.countedTo, ev.seq);
  const m = r.msgs.get(ev.target);
  if (!m || ev.seq <= m.asOf) return;
  m.asOf = ev.seq;
  if (ev.type === 'delete' && !m.deleted && state.known && !isMine(m) && r.unread > 0
      && m.seq > (r.readSeq ?? 0) && m.seq <= r.countedTo) {
    r.unread -= 1; // the server counts messages not deleted
    renderRooms();
  }
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
      state.maxRooms = msg.limits.max_rooms || 32;
      $('me').textContent = `as ${msg.nick}`;
      tokenExp(msg.exp, msg.nick);
      state.expired = false;
      hideTokenBar();
      setStatus('connected');
      // The library joins the rooms again (from their last seq) and resends what waits for an
      // ack; a room only heard live (a direct-message room not joined) may have a gap now.
      for (const r of state.rooms.values()) if (!r.member && r.lastSeq !== null) forgetLog(r);
      state.roomsPaging = false;
      state.roomsPaged = false;
      // Watched before the list is asked: no change falls between the two. After a reconnect
      // the library watches again by itself.
      watch();
      state.client.rooms().catch(failed);
      // The user's rooms and where it is in each, also what came while it was away (direct
      // messages to it included): after every reconnect.
      if (state.known) askInbox();
      break;
    case 'joined': {
      const r = room(msg.room);
      if (msg.reset) systemLine(msg.room, 'The history of this room was reset on the server.');
      if (msg.truncated) systemLine(msg.room, 'Some older messages in this room are not shown (removed by retention, or sent to your nick before it was yours): there is a gap here.');
      if (msg.reset || r.lastSeq === null) r.lastSeq = msg.last_seq;
      if (r.oldest === null) r.oldest = msg.last_seq + 1;
      r.epoch = msg.epoch;
      r.first = msg.first_seq || 1; // older ones were removed by retention: nothing to page to
      r.member = true;
      r.joined = true;
      state.client.who(msg.room).catch(failed);
      const loading = r.el.children.length === 0 && msg.last_seq > 0;
      r.loading = loading; // its first page, asked for now
      if (loading) state.client.history(msg.room, { limit: 50 }).catch(failed);
      if (msg.room === state.current) decorate();
      if (msg.read_seq !== undefined && msg.read_seq !== null) readState(msg.room, msg.read_seq, msg.unread ?? 0, msg.last_seq);
      else if (msg.room === state.current) markRead();
      // A search result in this room, shown once it is loaded.
      if (!loading && state.jumpTo && state.jumpTo.room === msg.room) jump(msg.room, state.jumpTo.seq);
      break;
    }
    case 'left': {
      const r = state.rooms.get(msg.room);
      if (r) { r.joined = false; r.member = false; }
      break;
    }
    case 'read': onRead(msg); break;
    case 'inbox': onInbox(msg); break;
    case 'typing': onTyping(msg); break;
    case 'message': onMessage(msg); break;
    case 'edit': case 'delete': case 'react': onEvent(msg); break;
    case 'refreshed':
      // The new token is in force: the library sends what waited (the same cids: stored once).
      state.token = state.client.token;
      state.expired = false;
      tokenExp(msg.exp);
      hideTokenBar();
      markRead();
      break;
    case 'presence': {
      const r = room(msg.room);
      if (msg.event === 'join') {
        r.members.add(msg.nick);
      } else if (msg.event === 'renamed') {
        // One member took another nick: the old one goes, the new one comes.
        if (msg.from) { r.members.delete(msg.from); stopTyping(msg.room, msg.from); }
        r.members.add(msg.nick);
      } else {
        r.members.delete(msg.nick);
        stopTyping(msg.room, msg.nick);
      }
      if (msg.room === state.current) renderMembers(); else renderPublic();
      break;
    }
    case 'renamed': {
      // The user's nick changed (on this connection or another of theirs).
      if (!msg.to) break;
      state.nick = msg.to;
      localStorage.setItem('nanachat.nick', msg.to);
      $('me').textContent = `as ${msg.to}`;
      tokenExp(state.tokenExp, msg.to);
      renderMembers();
      break;
    }
    case 'members': {
      const r = room(msg.room);
      r.members = new Set(msg.nicks);
      if (msg.room === state.current) renderMembers(); else renderPublic();
      break;
    }
    case 'live': onLive(msg); break;
    case 'rooms': {
      // A list too long for one frame comes cut: the first rooms and the `total` of the list.
      // The button at its end asks for the rooms after the last one shown.
      // A page's `total` counts the rooms from its first one on.
      if (!state.roomsPaging) { state.publicRooms = new Map(); state.roomsPaged = false; }
      state.roomsPaging = false;
      const before = state.publicRooms.size;
      for (const info of msg.rooms) state.publicRooms.set(info.room, info.members);
      if (msg.rooms.length) state.publicLast = msg.rooms.at(-1); // the next page's `after`, as it came
      state.publicTotal = Math.max(before + (msg.total ?? msg.rooms.length), state.publicRooms.size);
      renderPublic();
      break;
    }
    case 'history': {
      state.loadingHistory = false;
      const r = room(msg.room);
      r.loading = false;
      const older = msg.messages.filter((m) => !r.seen.has(m.seq));
      // Each message as it stands now, with every event the page has seen so far in it.
      const asOf = Math.max(r.lastSeq ?? 0, ...msg.messages.map((m) => m.seq));
      const models = older.map((m) => { r.seen.add(m.seq); const k = remember(msg.room, m); k.asOf = asOf; return k; });
      const items = models.map((m) => messageItem(m, false));
      if (older.length) r.oldest = Math.min(r.oldest ?? Infinity, older[0].seq);
      r.el.prepend(...items.map((i) => i.cloneNode(true)));
      let firstPage = false;
      if (msg.room === state.current) {
        const list = $('messages');
        firstPage = !list.querySelector('li[data-seq]');
        const before = list.scrollHeight;
        list.prepend(...items);
        decorate();
        list.scrollTop += list.scrollHeight - before;
      }
      // Replies shown before the message they quote: their quote can say what it was now.
      for (const m of models) redrawReplies(msg.room, m.seq);
      if (msg.room === state.current) {
        const marker = drawMarker(msg.room);
        // The first page of a room opened with unread messages: shown from the first of them.
        if (marker && firstPage && items.length) {
          const list = $('messages');
          list.scrollTop += marker.getBoundingClientRect().top - list.getBoundingClientRect().top;
        }
        markRead();
      }
      if (state.jumpTo && state.jumpTo.room === msg.room) jump(msg.room, state.jumpTo.seq);
      break;
    }
    case 'tick': default: break;
  }
}

/// The nick in full and the token's expiry, shown as the tooltip of the nick.
function tokenExp(exp, nick = state.nick) {
  state.tokenExp = exp;
  $('me').title = exp ? `${nick}: token valid until ${new Date(exp * 1000).toLocaleString()}` : nick;
}

/// The library's `getToken`: the bar asks the user, and the promise resolves with what is
/// typed there. `expired` (the server said token_expired: what is said meanwhile waits for
/// `refreshed`), `refused` (the token sent was not taken), `ended` (closed with 4003: no
/// reconnect until a new one comes), `connect` (the token held has expired).
function getToken({ reason, message }) {
  state.tokenReason = reason;
  if (reason === 'expired') {
    const grace = /within (\d+\s*[a-z]*)/.exec(message || '');
    askForToken(`Your token expired. Paste a fresh one${grace ? ` within ${grace[1]}` : ''} to stay connected.`);
  } else if (reason === 'refused') {
    askForToken(`That token was refused: ${message}. Paste another one.`);
  } else {
    setStatus('offline — token ended', true);
    askForToken(reason === 'ended'
      ? `Your token ended (${state.closeReason || 'closed with 4003'}). Paste a new one to reconnect.`
      : 'Your token has expired. Paste a new one to reconnect.');
  }
  return new Promise((resolve) => state.tokenWaiters.push(resolve));
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
  state.tokenReason = null;
}

/// A request with a cid was acked: stored. An edit, delete or reaction shows when its event
/// comes (to everyone alike); what was said replaces its pending line.
function acked(p, ack) {
  state.pending.delete(p.cid);
  if ((p.kind === 'say' || p.kind === 'dm') && !p.seq) {
    p.seq = ack.seq;
    confirmPending(p, { seq: ack.seq, from: state.nick, text: p.text, time: Date.now(), reply_to: p.reply_to });
    room(ack.room).seen.add(ack.seq);
  }
}

/// A request with a cid was refused for good (the library retries `rate_limited` and
/// `internal`, and holds what `token_expired` refused until `refreshed`).
function refused(p, err) {
  if (err.code === 'closed') return;
  state.pending.delete(p.cid);
  const why = err.frame?.message ?? err.message;
  if (p.kind === 'react' && err.code === 'unchanged') {
    // The reaction already was as asked (another tab of ours): the page was behind.
    const m = room(p.room).msgs.get(p.seq);
    if (m) { if (p.on) m.mine.add(p.emoji); else m.mine.delete(p.emoji); redraw(p.room, p.seq); }
  } else if (!(p.kind === 'say' || p.kind === 'dm')) {
    const what = { edit: 'edit', delete: 'delete', react: 'react to' }[p.kind];
    const m = room(p.room).msgs.get(p.seq);
    systemLine(p.room, `Could not ${what} ${m ? whose(m) : 'that message'}: ${why} (${err.code})`, 'failed');
  } else {
    for (const list of [room(p.room).el, $('messages')]) {
      const line = list.querySelector(`[data-cid="${p.cid}"]`);
      if (line) {
        line.classList.remove('pending');
        line.classList.add('failed');
        (line.querySelector('.body') ?? line).append(el('span', 'why', ` — not sent: ${why}`));
      }
    }
  }
}

/// Hands a request with a cid to the library (its outbox: sent again after a reconnect until
/// acked, stored once), and follows its answer.
function sendPending(p) {
  const c = state.client;
  const { cid, room: name } = p;
  let sent;
  switch (p.kind) {
    case 'dm': sent = c.dm(p.to, p.text, { cid }); break;
    case 'edit': sent = c.edit(name, p.seq, p.text, { cid }); break;
    case 'delete': sent = c.delete(name, p.seq, { cid }); break;
    case 'react': sent = c.react(name, p.seq, p.emoji, p.on, { cid }); break;
    default: sent = c.say(name, p.text, { cid, replyTo: p.reply_to ?? undefined });
  }
  sent.then((ack) => acked(p, ack), (err) => refused(p, err));
}

/// Says `text` in the current room (a reply to the message `replyTo` if given).
function say(text, replyTo) {
  const cid = state.client.newCid();
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
  const full = { ...p, cid: state.client.newCid() };
  state.pending.set(full.cid, full);
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
  what.append(el('span', 'compose-mode', mode === 'edit' ? `Editing ${whose(m)}` : 'Replying to'));
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
/// it is there (or there is no more: then `state.jumpTo.onMissing`, if any, is called).
function jump(name, seq) {
  if (name !== state.current) return;
  const li = $('messages').querySelector(`[data-seq="${seq}"]`);
  const r = room(name);
  const to = state.jumpTo && state.jumpTo.room === name && state.jumpTo.seq === seq ? state.jumpTo : { room: name, seq };
  if (li) {
    state.jumpTo = null;
    li.scrollIntoView({ block: 'center' });
    li.classList.add('flash');
    li.focus({ preventScroll: true });
    setTimeout(() => li.classList.remove('flash'), 1500);
    return;
  }
  if (r.oldest === null || r.oldest <= (r.first || 1) || seq >= r.oldest) {
    state.jumpTo = null;
    if (to.onMissing) to.onMissing();
    return;
  }
  state.jumpTo = to;
  state.loadingHistory = true;
  state.client.history(name, { before: r.oldest, limit: 50 }).catch(failed);
}

// ---- the inbox ----------------------------------------------------------------------------

/// `inbox`: the user's rooms with where it is in each — also direct-message rooms whose
/// messages came while it was away — listed with their unread counts. The rooms it joined
/// (on another tab, another day) are joined here too; a direct-message room when opened.
function onInbox(msg) {
  let joined = [...state.rooms.values()].filter((r) => r.member).length;
  for (const entry of msg.rooms || []) {
    const r = room(entry.room);
    readState(entry.room, entry.read_seq, entry.unread, entry.last_seq);
    if (!isDm(entry.room) && !r.member && joined < state.maxRooms) {
      enter(entry.room);
      joined += 1;
    }
  }
  renderRooms();
}

// ---- search -------------------------------------------------------------------------------

/// Sends `search` for what the search box holds (in the room on screen if so ticked), or for
/// the next page of the last one.
function search(more) {
  let s;
  if (more && state.lastSearch) {
    s = { ...state.lastSearch, skip: state.lastSearch.next };
  } else {
    const query = $('search').value.trim();
    if (!query) return;
    s = { query, room: $('search-here').checked ? state.current : null, skip: 0, limit: 20, next: 0 };
  }
  const panel = $('search-panel');
  panel.hidden = false;
  $('search-title').textContent = `Search: “${s.query}”${s.room ? ` in ${roomLabel(s.room)}` : ''}`;
  $('search-error').textContent = '';
  if (!more) {
    $('search-results').replaceChildren();
    $('search-more').hidden = true;
  }
  if (state.client?.state !== 'open') {
    $('search-status').textContent = '';
    $('search-error').textContent = 'Search failed: not connected; search again once the page is back online';
    return;
  }
  state.searches.push(s);
  $('search-status').textContent = 'Searching…';
  state.client.search(s.query, { room: s.room, limit: s.limit, skip: s.skip || undefined })
    .then((msg) => onSearch(s, msg), (err) => searchFailed(s, err));
}

/// Takes `s` off the searches waiting; whether it is the one whose answer is shown (the last
/// one sent, still waited for: a dropped connection gave up on those before it).
function lastSearch(s) {
  const at = state.searches.indexOf(s);
  if (at < 0) return false;
  state.searches.splice(at, 1);
  return state.searches.length === 0;
}

/// `search`'s answer: each message found (room, nick, time, text), a button that shows it.
function onSearch(s, msg) {
  if (!lastSearch(s)) return; // a newer search was sent since: its answer follows
  state.lastSearch = s;
  const list = $('search-results');
  for (const m of msg.results || []) list.append(resultItem(m));
  const found = list.children.length;
  const where = s.room ? ` in ${roomLabel(s.room)}` : '';
  $('search-status').textContent = found === 0 ? `Nothing found for “${s.query}”${where}.`
    : `${found} ${found === 1 ? 'message' : 'messages'} found for “${s.query}”${where}, best first.`;
  const got = (msg.results || []).length;
  s.next = s.skip + got;
  $('search-more').hidden = !(got > 0 && (got >= s.limit || got < (msg.total ?? 0)));
}

function resultItem(m) {
  const li = el('li');
  const b = el('button', 'result');
  b.type = 'button';
  b.dataset.room = m.room;
  b.dataset.seq = String(m.seq);
  const when = new Date(m.time);
  const time = el('time', 'result-time', when.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' }));
  time.dateTime = when.toISOString();
  b.append(el('span', 'result-room', roomLabel(m.room)), el('span', 'result-from', m.from), time, el('span', 'result-text', m.text));
  if (m.edited) b.append(el('span', 'edited', ' (edited)'));
  b.title = `Show ${m.from}'s message in ${roomLabel(m.room)}`;
  li.append(b);
  return li;
}

function searchFailed(s, err) {
  if (!lastSearch(s) || err.code === 'closed') return;
  $('search-status').textContent = '';
  $('search-error').textContent = `Search failed: ${err.frame?.message ?? err.message} (${err.code})`;
}

/// Opens a result: its room, scrolled to the message and flashed, once loaded (older history
/// is paged in until it is there); if it cannot be, the result says so.
function openResult(b) {
  const name = b.dataset.room;
  const seq = Number(b.dataset.seq);
  b.parentElement.querySelector('.result-note')?.remove();
  show(name);
  state.jumpTo = {
    room: name,
    seq,
    onMissing: () => {
      if (!b.isConnected || b.parentElement.querySelector('.result-note')) return;
      b.after(el('span', 'result-note', `This message could not be loaded in ${roomLabel(name)} (removed since?)`));
    },
  };
  const r = room(name);
  if (r.joined && !r.loading) jump(name, seq);
  // Otherwise its `joined`, then its first `history` page, jump there.
}

function closeSearch() {
  $('search-panel').hidden = true;
  $('search').focus();
}

function joinRoom(name) { closeDrawer(); show(name); }

// ---- the phone layout: rooms and members in drawers ---------------------------------------

/// Opens the drawer `which` ('rooms' or 'members'; on a narrow screen only), its first control
/// focused; Escape, a tap outside it or a choice in it closes it.
function openDrawer(which) {
  closeDrawer(false);
  const app = $('app');
  app.dataset.drawer = which;
  $(`${which}-toggle`).setAttribute('aria-expanded', 'true');
  // What is under the scrim is out of reach (of Tab too) while the drawer is open.
  for (const e of drawerCovers(which)) e.inert = true;
  // The focus goes in: to its first control, or to the drawer itself (the members have none).
  const panel = $(`${which}-panel`);
  panel.tabIndex = -1;
  (panel.querySelector('button, input, [tabindex]') ?? panel).focus();
}

function closeDrawer(refocus) {
  const which = $('app').dataset.drawer;
  if (!which) return;
  delete $('app').dataset.drawer;
  $(`${which}-toggle`).setAttribute('aria-expanded', 'false');
  for (const e of drawerCovers(which)) e.inert = false;
  if (refocus) $(`${which}-toggle`).focus();
}

/// What the drawer `which` covers: the top bar, the messages and the other drawer.
function drawerCovers(which) {
  return [document.querySelector('.top'), document.querySelector('.chat'), $(which === 'rooms' ? 'members-panel' : 'rooms-panel')];
}

/// A room's name as the server takes it, or a direct-message room of this user's.
const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const DM_RE = /^@([a-z0-9_-]{1,32})\+([a-z0-9_-]{1,32})$/;
function linkable(name) {
  if (ROOM_RE.test(name)) return true;
  const dm = DM_RE.exec(name);
  const me = state.nick.toLowerCase();
  return !!dm && (dm[1] === me || dm[2] === me);
}

/// Opens a message's link (#room/seq): its room, scrolled to it once loaded. A link never joins
/// a room on its own: one the page is not in asks first ("Join #room"); a name the server would
/// refuse, or another pair's direct-message room, is not followed.
function openPermalink() {
  const m = /^#([^/]+)\/(\d+)$/.exec(location.hash);
  if (!m || !state.client) return;
  let name;
  try { name = decodeURIComponent(m[1]); } catch { return; }
  if (!linkable(name)) return;
  const seq = Number(m[2]);
  if (!state.rooms.get(name)?.member && !isDm(name)) { offerJoin(name, seq); return; }
  if (name !== state.current) show(name);
  state.jumpTo = { room: name, seq };
  const r = room(name);
  if (r.joined && !r.loading) jump(name, seq);
}

/// A link to a room the page is not in: a notice in the room on screen, with a button that
/// joins it and shows the message.
function offerJoin(name, seq) {
  const li = el('li', 'system join-offer', `That link is to a message in #${name}, which you have not joined. `);
  const b = el('button', 'join-link', `Join #${name}`);
  b.type = 'button';
  b.addEventListener('click', () => {
    li.remove();
    show(name);
    state.jumpTo = { room: name, seq };
  });
  li.append(b);
  const list = $('messages');
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

// ---- connection ---------------------------------------------------------------------------

/// What the library delivers that this page renders (answers come this way too: `joined`,
/// `history`, `members`, `rooms`, `inbox`; `live` for `watch`; `message`, `edit`, `delete` and `react` once each,
/// in seq order per room).
const FRAMES = ['welcome', 'joined', 'left', 'read', 'inbox', 'typing', 'message', 'edit', 'delete',
  'react', 'refreshed', 'presence', 'members', 'rooms', 'live', 'history', 'renamed'];

/// Opens this login's connection: the library's Client, which comes back by itself.
function connect() {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
  const client = new Client({
    url,
    nick: state.nick,
    key: state.key,
    ...(state.token ? { token: state.token, getToken } : {}),
    refreshAheadMs: null, // the user is asked when the server says the token expired, not before
  });
  state.client = client;
  state.watched = null;
  for (const type of FRAMES) client.on(type, onServer);
  client.on('token_expired', () => { state.expired = true; });
  client.on('state', onState);
  // An error no request waits for; a fatal one (refused at the first connect, put out with
  // 4004) closed the client: back to the login form with the reason.
  client.on('error', (msg) => {
    if (!msg.fatal) systemLine(state.current, `${msg.message} (${msg.code})`, 'failed');
    else if (state.client === client) logout(msg.message.replace(/^[a-z_]+: /, ''));
  });
  client.connect().catch((err) => {
    if (state.client === client && err.code !== 'closed') logout(err.frame?.message ?? err.message);
  });
}

/// The connection's ups and downs, as the library tells them.
function onState(s) {
  stopCountdown();
  // A reconnect under way (it may take a while against a hung server): said so, not a
  // countdown stuck at "1…".
  if (s.state === 'connecting' && $('status').classList.contains('offline')) setStatus('offline — connecting…', true);
  if (s.state !== 'offline') return;
  for (const r of state.rooms.values()) { r.joined = false; r.loading = false; r.readSent = null; }
  if (state.searches.length) {
    state.searches = [];
    $('search-status').textContent = '';
    $('search-error').textContent = 'Search failed: the connection dropped; search again once the page is back online';
  }
  state.expired = false;
  state.closeReason = s.reason || '';
  if (s.code === 4003) {
    // The token ended (expired with no refresh in time, or no longer valid): the library asks
    // getToken (the bar) for a new one before reconnecting. What was said stays pending and
    // goes with the new one.
    setStatus('offline — token ended', true);
  } else {
    // Counted down a second at a time: "reconnecting in 3…", "2…", "1…".
    state.retryAt = Date.now() + s.delayMs;
    tick();
    state.countdown = setInterval(tick, 250);
  }
}

/// The reconnect countdown's words, now.
function tick() {
  const left = Math.ceil((state.retryAt - Date.now()) / 1000);
  const s = $('status');
  // The seconds are shown, not read out each one (the status is a live region): a screen
  // reader hears "offline — reconnecting" once.
  if (s.dataset.countdown === undefined) {
    const secs = el('span', 'countdown');
    secs.setAttribute('aria-hidden', 'true');
    s.replaceChildren('offline — reconnecting', secs);
    s.classList.add('offline');
    s.dataset.countdown = '';
  }
  const secs = s.querySelector('.countdown');
  const text = left > 0 ? ` in ${left}…` : '…';
  if (secs.textContent !== text) secs.textContent = text;
}

function stopCountdown() {
  clearInterval(state.countdown);
  state.countdown = null;
}

function logout(why) {
  stopCountdown();
  state.nick = '';
  const client = state.client;
  state.client = null;
  client?.close(); // its joins waiting are refused with `closed`: joined again at the next login
  for (const r of state.rooms.values()) r.joined = false;
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
  connect();
  room('lobby');
  show('lobby');
  openPermalink();
});

for (const which of ['rooms', 'members']) {
  $(`${which}-toggle`).addEventListener('click', () => {
    if ($('app').dataset.drawer === which) closeDrawer(true); else openDrawer(which);
  });
}
$('scrim').addEventListener('click', () => closeDrawer(true));
// Wider than a phone: no drawers (the lists are beside the messages).
window.matchMedia('(max-width: 700px)').addEventListener('change', (e) => { if (!e.matches) closeDrawer(false); });
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && $('app').dataset.drawer) { e.preventDefault(); closeDrawer(true); }
});
window.addEventListener('hashchange', openPermalink);

$('token-bar').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('new-token').value.trim();
  if (!token || !state.tokenWaiters.length) return;
  if (state.tokenReason === 'expired' || state.tokenReason === 'refused') {
    $('token-why').textContent = 'Sending the new token…'; // `refreshed` hides the bar
  } else {
    state.token = token;
    hideTokenBar();
    setStatus('connecting…');
  }
  for (const resolve of state.tokenWaiters.splice(0)) resolve(token);
});

$('say-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('say').value;
  // Nothing to see (spaces, zero-width characters only): nothing to send.
  if (!text.replace(/[\s\u200b-\u200d\u2060\ufeff]/g, '')) return;
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
        b.setAttribute('aria-label', `Really delete ${whose(m)}? Click again`);
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
  // Your own nick opens your note-to-self room (docs/protocol.md: a `dm` to yourself).
  if (nick) { closeDrawer(); room(dmRoom(state.nick, nick)); show(dmRoom(state.nick, nick)); }
});

// Typing in the composer: the room's others are told (at most once every 2 s).
$('say').addEventListener('input', typed);

// A room is read when seen: scrolled to its end, the tab visible again.
document.addEventListener('visibilitychange', markRead);
window.addEventListener('focus', markRead);

$('search-form').addEventListener('submit', (e) => {
  e.preventDefault();
  search(false);
});
$('search-more').addEventListener('click', () => search(true));
$('search-close').addEventListener('click', closeSearch);
$('search-results').addEventListener('click', (e) => {
  const b = e.target.closest('button.result');
  if (b) openResult(b);
});
// Escape in the search box or the results closes them; ArrowDown and ArrowUp go from the box
// through the results.
for (const id of ['search', 'search-panel']) {
  $(id).addEventListener('keydown', (e) => {
    if ($('search-panel').hidden) return;
    if (e.key === 'Escape') {
      e.preventDefault();
      closeSearch();
      return;
    }
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
    const results = Array.from($('search-results').querySelectorAll('button.result'));
    if (!results.length) return;
    const at = results.indexOf(document.activeElement);
    if (e.target.id === 'search' && e.key === 'ArrowDown') {
      e.preventDefault();
      results[0].focus();
    } else if (at >= 0) {
      e.preventDefault();
      if (e.key === 'ArrowUp' && at === 0) $('search').focus();
      else results[Math.min(results.length - 1, e.key === 'ArrowDown' ? at + 1 : at - 1)].focus();
    }
  });
}

// Older history when the list is scrolled to its top; read when scrolled to its end.
$('messages').addEventListener('scroll', () => {
  markRead();
  const list = $('messages');
  const r = state.rooms.get(state.current);
  if (list.scrollTop > 0 || !r || state.loadingHistory || r.oldest === null || r.oldest <= (r.first || 1)) return;
  state.loadingHistory = true;
  state.client.history(state.current, { before: r.oldest, limit: 50 }).catch(failed);
});

$('nick').value = localStorage.getItem('nanachat.nick') || '';
