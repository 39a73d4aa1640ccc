//! The hub: who is connected, under which nick, in which rooms — and the one place where a
//! stored message becomes deliveries.
//!
//! Everything here is synchronous, behind one mutex that is never held across an `.await`:
//! delivering is `try_send` into bounded outboxes, which never waits. A member whose outbox is
//! full is a slow consumer and is closed with 4001; the others are not held up.
//!
//! Order: a room's messages are delivered strictly in seq order. Appends finish in any order
//! (group commit answers a batch at once, tasks wake in any order), so each room keeps the
//! deliveries that arrived early until the ones before them have come ([`Room::pending`]). The
//! store never skips a seq (a failed batch takes none), so nothing waits forever.
//!
//! Resume: a member joining with `since` is registered with a *backlog*: live deliveries are
//! held there while its session replays history up to the room's last delivered seq at the
//! moment of joining; then the backlog is drained and the member goes live. No gap, no
//! duplicate at the seam.
//!
//! Idle rooms leave: a room with no member, nothing pending, no append of this process in
//! flight, and untouched (opened, joined, delivered to) for the room TTL is dropped when rooms
//! are next opened or joined (a sweep at most every half TTL, so a flood of new rooms pays for
//! its own clean-up). Reopening reads the room's state from the store again, which is safe because
//! nothing of the room can be on its way here any more: an append this process started holds
//! the room (`appending`), and in a cluster a reopened room is filled from the store after a
//! grace, as any newly opened one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::debug;

use super::render::{Delivery, Mode, render};
use super::types::{Change, ConnId, Floors, ONLINE, nick_key};
use crate::connection::{CLOSE_SLOW_CONSUMER, CloseCode, CloseFrame, Message, Outbox};
use crate::protocol::{ErrorCode, PresenceEvent, ServerMsg};
use crate::store::RoomState;

#[derive(Debug, Default)]
pub(crate) struct Hub {
    state: Mutex<State>,
    /// The counters, outside the lock: a connection's own ack counts without taking it.
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct State {
    /// Rooms with more members than this send no presence events.
    presence_limit: usize,
    /// A room idle this long (see the module's doc) is dropped at the next sweep.
    room_ttl: Duration,
    /// When idle rooms were last swept.
    swept: Option<Instant>,
    /// The hub's counters (shared with [`Hub::stats`]).
    stats: Arc<Stats>,
    conns: HashMap<ConnId, Conn>,
    /// By case-folded nick ([`nick_key`]): `Alice` is `alice`.
    nicks: HashMap<String, Nick>,
    rooms: HashMap<String, Room>,
    /// With several processes: joins and leaves go to the cluster, which tells everyone.
    feed: Option<Feed>,
    /// With several processes: the name of every room taken in or dropped, so that the
    /// cluster listens to the rooms held and no others.
    held_feed: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// The connections that sent `watch`, and what changed for them since the last `live`.
    watch: Watch,
}

/// Who follows room counts and nicks online (`watch`), and what changed since the last
/// `live` frames. With nobody watching, joins and leaves only check two counts here.
#[derive(Debug, Default)]
struct Watch {
    /// By connection: whether it follows the rooms, and the nicks it follows (each as it
    /// asked, and case-folded).
    conns: HashMap<ConnId, Watcher>,
    /// How many of `conns` follow the rooms.
    rooms_followed: usize,
    /// The nicks followed (case-folded), each with how many connections follow it.
    nicks: HashMap<String, usize>,
    /// Public rooms joined or left since the last `live`.
    changed_rooms: HashSet<String>,
    /// Nicks followed (case-folded) that came online or went offline here since then.
    changed_nicks: HashSet<String>,
}

#[derive(Debug, Clone)]
struct Watcher {
    rooms: bool,
    nicks: Vec<(String, String)>,
    /// Its answer to `watch` is queued: `live` frames may follow it. Until then, what changed
    /// for it is kept for the round after.
    answered: bool,
}

/// What changed for the connections that watch, taken for one round of `live` frames.
#[derive(Debug, Default)]
pub(crate) struct LiveRound {
    /// Public rooms whose count may have changed, by name, with their count now.
    pub(crate) rooms: Vec<crate::protocol::RoomInfo>,
    /// Nicks followed whose being online may have changed (case-folded), with whether a
    /// connection of theirs is here now.
    pub(crate) nicks: Vec<(String, bool)>,
    /// Each watching connection with something to be told.
    pub(crate) to: Vec<LiveTarget>,
}

/// A watching connection with something to be told in a `live` round.
#[derive(Debug)]
pub(crate) struct LiveTarget {
    pub(crate) outbox: Outbox,
    /// It follows the rooms.
    pub(crate) rooms: bool,
    /// The nicks it follows that changed: (as it asked, case-folded).
    pub(crate) nicks: Vec<(String, String)>,
}

/// Where a clustered hub sends its members' joins and leaves (see `cluster.rs`).
#[derive(Debug)]
struct Feed {
    tx: tokio::sync::mpsc::UnboundedSender<Change>,
    generation: u64,
    resync: bool,
}

#[derive(Debug)]
struct Conn {
    nick: String,
    outbox: Outbox,
    mode: Mode,
    rooms: SmallSet<String>,
    /// Where its reading of its nick's direct-message rooms starts: nothing at or below a
    /// room's floor reaches it, live, replayed or paged.
    floors: Floors,
    /// Its nick's direct messages reach it (false while its session makes sure the nick is
    /// its own: see [`Hub::listen`]).
    listening: bool,
    /// When it took its nick (ms since the epoch): a rename on another process takes only
    /// the connections that had it by then (see [`Hub::renamed_elsewhere`]).
    since_ms: i64,
}

/// The hub's counters, for metrics.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Messages handed to members' outboxes.
    pub(crate) deliveries: AtomicU64,
    /// Members closed with 4001.
    pub(crate) slow_closes: AtomicU64,
}

impl Conn {
    fn send(&self, text: crate::connection::Utf8Bytes, stats: &Stats) {
        send_or_close(&self.outbox, text, stats);
    }
}

/// The one rule for everything sent without waiting (deliveries, acks, notices): queued, or —
/// past the outbox's budget — the connection is a slow consumer, closed with 4001 so that it
/// resumes. Never a message silently left out.
fn send_or_close(outbox: &Outbox, text: crate::connection::Utf8Bytes, stats: &Stats) {
    match outbox.try_send(Message::Text(text)) {
        Ok(()) => crate::metrics::bump(&stats.deliveries),
        Err(crate::Error::SlowConsumer) => close_slow(outbox, stats),
        Err(_) => {}
    }
}

#[derive(Debug)]
struct Nick {
    /// The nick as its connections typed it (all the same).
    shown: String,
    key: Option<String>,
    conns: SmallSet<ConnId>,
}

#[derive(Debug)]
struct Room {
    epoch: u64,
    /// The seq to deliver next.
    next_seq: u64,
    /// Deliveries that arrived before the seqs ahead of them.
    pending: BTreeMap<u64, Delivery>,
    /// Members; `Some(backlog)` while the member replays history.
    members: BTreeMap<ConnId, Option<Box<Backlog>>>,
    /// For a direct-message room, the two nicks (case-folded) whose connections all receive it.
    pair: Option<(String, String)>,
    /// The oldest seq the store kept when the room was opened: what `joined` tells when no
    /// retention rule can have moved it since (otherwise the session reads it afresh).
    first_seq: u64,
    /// Appends of this process to the room still on their way to `deliver`.
    appending: u32,
    /// Last opened, joined or delivered to.
    touched: Instant,
    /// Who said they were typing here lately, and when (case-folded nicks; kept for
    /// [`TYPING_EVERY`]).
    typed: Vec<(String, Instant)>,
}

/// A nick's `typing` in a room goes out at most once in this long.
pub(crate) const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Live deliveries held for a member while it replays history (boxed in the member map: most
/// members have none).
#[derive(Debug, Default)]
struct Backlog {
    held: Vec<Delivery>,
    /// Bytes of `held` as the member's mode renders them.
    bytes: usize,
}

/// What a rename did.
#[derive(Debug)]
pub(crate) struct Renamed {
    /// The nick the user had.
    pub(crate) old: String,
    /// Its connections here, all renamed.
    pub(crate) conns: Vec<ConnId>,
}

/// What a join did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Joined {
    /// The room's last delivered seq when the member was added: replay up to here.
    pub(crate) last_seq: u64,
    /// The oldest seq kept, as `joined` told the member: replay from here at the earliest.
    pub(crate) first_seq: u64,
    /// The member was added with a backlog and must replay, then call `finish_replay`.
    pub(crate) replay: bool,
}

/// What a `join` asks for, and what the session read for it first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JoinAsk {
    /// Resume after this seq.
    pub(crate) since: Option<u64>,
    /// The epoch `since` belongs to.
    pub(crate) epoch: Option<u64>,
    /// The oldest seq the store keeps, read just before (`None`: the one read when the room
    /// was opened).
    pub(crate) first_seq: Option<u64>,
    /// A known user's place in the room, for `joined`.
    pub(crate) read: Option<crate::store::ReadState>,
}

impl Hub {
    /// An empty hub; rooms above `presence_limit` members send no presence events; rooms idle
    /// for `room_ttl` leave memory.
    pub(crate) fn new(presence_limit: usize, room_ttl: Duration) -> Self {
        let stats = Arc::new(Stats::default());
        Self {
            state: Mutex::new(State {
                presence_limit,
                room_ttl,
                stats: stats.clone(),
                ..State::default()
            }),
            stats,
        }
    }

    /// Sends joins and leaves to the cluster instead of telling the room directly.
    pub(crate) fn feed_presence(&self, tx: tokio::sync::mpsc::UnboundedSender<Change>) {
        self.state().feed = Some(Feed {
            tx,
            generation: 0,
            resync: true,
        });
    }

    /// Tells `tx` the name of every room taken in or dropped from now on (the cluster
    /// subscribes to the rooms held).
    pub(crate) fn feed_held_rooms(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        self.state().held_feed = Some(tx);
    }

    /// The rooms held now.
    pub(crate) fn held_rooms(&self) -> Vec<String> {
        self.state().rooms.keys().cloned().collect()
    }

    /// The number of the last presence change fed to the cluster (0 alone): once the cluster
    /// has applied up to it, everything this hub did before is in Redis.
    pub(crate) fn presence_generation(&self) -> u64 {
        self.state().feed.as_ref().map_or(0, |f| f.generation)
    }

    /// Asks the cluster's presence task to put this process's share in again.
    pub(crate) fn resync_presence(&self) {
        if let Some(feed) = &mut self.state().feed {
            feed.resync = true;
        }
    }

    /// Whether a resync was asked for since the last call.
    pub(crate) fn take_resync(&self) -> bool {
        self.state()
            .feed
            .as_mut()
            .is_some_and(|f| std::mem::take(&mut f.resync))
    }

    /// This process's members as one change per (room, nick), counted in connections (the
    /// nicks online with their keys), and the generation of the last change they include.
    pub(crate) fn presence_share(&self) -> (u64, Vec<Change>) {
        let state = self.state();
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for conn in state.conns.values() {
            *counts.entry((ONLINE, &conn.nick)).or_insert(0) += 1;
        }
        for (name, room) in &state.rooms {
            if name.starts_with('@') {
                continue;
            }
            for id in room.members.keys() {
                if let Some(conn) = state.conns.get(id) {
                    *counts.entry((name, &conn.nick)).or_insert(0) += 1;
                }
            }
        }
        let generation = state.feed.as_ref().map_or(0, |f| f.generation);
        let share = counts
            .into_iter()
            .map(|((room, nick), delta)| Change {
                generation,
                room: room.to_owned(),
                nick: nick.to_owned(),
                delta,
                key: (room == ONLINE)
                    .then(|| state.nicks.get(&nick_key(nick)).and_then(|n| n.key.clone()))
                    .flatten(),
            })
            .collect();
        (generation, share)
    }

    /// Sends one message to one connection without waiting (an ack from a task, a notice),
    /// under the same rule as a room's deliveries: past its budget it is a slow consumer.
    pub(crate) fn send_to(&self, outbox: &Outbox, text: crate::connection::Utf8Bytes) {
        send_or_close(outbox, text, &self.stats);
    }

    /// Connection `id` follows the room counts (`rooms`) and `nicks` from now on, instead of
    /// what it followed before; nothing at all stops it.
    pub(crate) fn watch(&self, id: ConnId, rooms: bool, nicks: &[String]) {
        let mut state = self.state();
        if !state.conns.contains_key(&id) {
            return;
        }
        state.unwatch(id);
        if !rooms && nicks.is_empty() {
            return;
        }
        let w = &mut state.watch;
        let mut followed: Vec<(String, String)> = Vec::with_capacity(nicks.len());
        for nick in nicks {
            let key = nick_key(nick);
            if followed.iter().all(|(_, k)| *k != key) {
                *w.nicks.entry(key.clone()).or_insert(0) += 1;
                followed.push((nick.clone(), key));
            }
        }
        w.rooms_followed += usize::from(rooms);
        w.conns.insert(
            id,
            Watcher {
                rooms,
                nicks: followed,
                answered: false,
            },
        );
    }

    /// Queues the answer to connection `id`'s `watch` (as anything sent without waiting); the
    /// `live` frames of what changed since it was asked come after it.
    pub(crate) fn answer_watch(&self, id: ConnId, text: crate::connection::Utf8Bytes) {
        let mut state = self.state();
        let Some(conn) = state.conns.get(&id) else {
            return;
        };
        send_or_close(&conn.outbox, text, &self.stats);
        if let Some(w) = state.watch.conns.get_mut(&id) {
            w.answered = true;
        }
    }

    /// Whether any connection here follows nicks.
    pub(crate) fn watches_nicks(&self) -> bool {
        !self.state().watch.nicks.is_empty()
    }

    /// `nick` came online or went offline on another process: in the next `live` round if
    /// anybody here follows it.
    pub(crate) fn nick_changed_elsewhere(&self, nick: &str) {
        self.state().watch_nick(&nick_key(nick));
    }

    /// Every nick followed is in the next `live` round, as if it had changed (what was told of
    /// them may have been missed: Redis was out of reach).
    pub(crate) fn recheck_watched_nicks(&self) {
        let mut state = self.state();
        let keys: Vec<String> = state.watch.nicks.keys().cloned().collect();
        state.watch.changed_nicks.extend(keys);
    }

    /// Takes what changed for the watching connections since the last call (a `live` round),
    /// or `None` when nothing did or nobody watches.
    pub(crate) fn take_live(&self) -> Option<LiveRound> {
        let mut state = self.state();
        let rooms = std::mem::take(&mut state.watch.changed_rooms);
        let nicks = std::mem::take(&mut state.watch.changed_nicks);
        if state.watch.conns.is_empty() || (rooms.is_empty() && nicks.is_empty()) {
            return None;
        }
        let mut round = LiveRound::default();
        if state.watch.rooms_followed > 0 {
            let mut rooms: Vec<String> = rooms.into_iter().collect();
            rooms.sort();
            round.rooms = rooms
                .into_iter()
                .map(|room| {
                    let members = state.nicks_in(&room, usize::MAX);
                    crate::protocol::RoomInfo { room, members }
                })
                .collect();
        }
        round.nicks = nicks
            .into_iter()
            .map(|key| {
                let online = state.nicks.contains_key(&key);
                (key, online)
            })
            .collect();
        let (mut later_rooms, mut later_nicks) = (false, Vec::new());
        for (id, w) in &state.watch.conns {
            let Some(conn) = state.conns.get(id) else {
                continue;
            };
            let rooms = w.rooms && !round.rooms.is_empty();
            let nicks: Vec<(String, String)> = w
                .nicks
                .iter()
                .filter(|(_, key)| round.nicks.iter().any(|(k, _)| k == key))
                .cloned()
                .collect();
            if !w.answered {
                // Its answer is on its way: told in the next round, after it.
                later_rooms |= rooms;
                later_nicks.extend(nicks.into_iter().map(|(_, key)| key));
            } else if rooms || !nicks.is_empty() {
                round.to.push(LiveTarget {
                    outbox: conn.outbox.clone(),
                    rooms: w.rooms,
                    nicks,
                });
            }
        }
        if later_rooms {
            let rooms = round.rooms.iter().map(|r| r.room.clone());
            state.watch.changed_rooms.extend(rooms);
        }
        state.watch.changed_nicks.extend(later_nicks);
        Some(round)
    }

    /// Whether connection `id` is a member of `room`.
    pub(crate) fn is_member(&self, id: ConnId, room: &str) -> bool {
        self.state()
            .conns
            .get(&id)
            .is_some_and(|c| c.rooms.contains(room))
    }

    /// Where connection `id`'s reading of its nick's direct-message rooms starts.
    pub(crate) fn floors(&self, id: ConnId) -> Vec<(String, u64)> {
        self.state()
            .conns
            .get(&id)
            .map(|c| c.floors.to_vec())
            .unwrap_or_default()
    }

    /// Sends `msg` to every connection of `nick` here (its own news: a read position).
    pub(crate) fn tell_nick(&self, nick: &str, msg: &ServerMsg) {
        let state = self.state();
        let Some(n) = state.nicks.get(&nick_key(nick)) else {
            return;
        };
        let d = Delivery::new(msg);
        for id in n.conns.iter() {
            if let Some(conn) = state.conns.get(id) {
                send_or_close(&conn.outbox, d.for_mode(conn.mode), &self.stats);
            }
        }
    }

    /// Closes every connection of `nick` here with 4004 and `reason`; how many there were.
    pub(crate) fn close_nick(&self, nick: &str, reason: &str) -> usize {
        let state = self.state();
        let Some(n) = state.nicks.get(&nick_key(nick)) else {
            return 0;
        };
        let mut closed = 0;
        for id in n.conns.iter() {
            if let Some(conn) = state.conns.get(id) {
                let frame = CloseFrame {
                    code: CloseCode::Library(crate::error::CLOSE_DISCONNECTED),
                    reason: reason.to_owned().into(),
                };
                conn.outbox.request_close(frame, false);
                closed += 1;
            }
        }
        closed
    }

    /// The nicks in `room` here, sorted, once each (none if the room is not held).
    pub(crate) fn room_members(&self, room: &str) -> Vec<String> {
        self.state().nicks_of(room)
    }

    /// Tells a room's members of a join or leave (decided by the cluster).
    pub(crate) fn tell_presence(&self, room: &str, nick: &str, event: PresenceEvent) {
        self.state().presence(room, nick, event);
    }

    /// A member says it is typing in `room`: true when that goes out (to the room's other
    /// members here, and for the caller to pass on to other processes); false when the nick
    /// said so less than [`TYPING_EVERY`] ago, it is not a member, or the room has more
    /// members than the presence limit.
    pub(crate) fn typing(&self, id: ConnId, room: &str) -> bool {
        let mut state = self.state();
        let Some(nick) = state.conns.get(&id).map(|c| c.nick.clone()) else {
            return false;
        };
        let limit = state.presence_limit;
        let now = Instant::now();
        let crowded = state.nicks_in(room, limit + 1) > limit;
        let Some(r) = state.rooms.get_mut(room) else {
            return false;
        };
        if !r.members.contains_key(&id) || crowded {
            return false;
        }
        let key = nick_key(&nick);
        r.typed
            .retain(|(_, at)| now.duration_since(*at) < TYPING_EVERY);
        if r.typed.iter().any(|(n, _)| *n == key) {
            return false;
        }
        r.typed.push((key, now));
        state.typing(room, &nick);
        true
    }

    /// Tells this process's members of `room` (but `nick`'s own connections) that `nick` is
    /// typing: another process's member said so.
    pub(crate) fn tell_typing(&self, room: &str, nick: &str) {
        self.state().typing(room, nick);
    }

    /// The seq a room delivers next, if the hub holds it.
    pub(crate) fn next_seq(&self, room: &str) -> Option<u64> {
        self.state().rooms.get(room).map(|r| r.next_seq)
    }

    /// The rooms a connection is in.
    pub(crate) fn rooms_of(&self, id: ConnId) -> Vec<String> {
        self.state()
            .conns
            .get(&id)
            .map(|c| c.rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops the rooms idle for the room TTL, if a sweep is due (at most every half TTL): a
    /// sweep that does not wait for the next join (the cluster's heartbeat calls it).
    pub(crate) fn sweep(&self) {
        self.state().sweep_if_due(Instant::now());
    }

    /// Drops every room with no member and nothing in flight, however recently used (they are
    /// read from the store again when someone comes back); the names of the rooms still held.
    pub(crate) fn drop_empty_rooms(&self) -> Vec<String> {
        let mut state = self.state();
        state.drop_idle(Instant::now(), Duration::ZERO);
        state.rooms.keys().cloned().collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection under `nick`. The nick is free (whatever its case), or held
    /// with the same key and spelt the same. With `floors` it gets the nick's direct messages
    /// at once; without, once [`listen`](Self::listen) says where its reading starts — the
    /// nick is held meanwhile, so that nobody else takes it while the session checks it is
    /// this connection's.
    pub(crate) fn connect(
        &self,
        id: ConnId,
        nick: &str,
        key: Option<&str>,
        outbox: Outbox,
        mode: Mode,
        floors: Option<Floors>,
    ) -> Result<(), ErrorCode> {
        let mut state = self.state();
        if let Some(held) = state.nicks.get(&nick_key(nick))
            && (held.key.is_none() || held.key.as_deref() != key || held.shown != nick)
        {
            return Err(ErrorCode::NickTaken);
        }
        // Its first connection here: it comes online (told if followed).
        if !state.watch.nicks.is_empty() && !state.nicks.contains_key(&nick_key(nick)) {
            state.watch_nick(&nick_key(nick));
        }
        state
            .nicks
            .entry(nick_key(nick))
            .or_insert_with(|| Nick {
                shown: nick.to_owned(),
                key: key.map(str::to_owned),
                conns: SmallSet::default(),
            })
            .conns
            .insert(id);
        state.conns.insert(
            id,
            Conn {
                nick: nick.to_owned(),
                outbox,
                mode,
                rooms: SmallSet::default(),
                listening: floors.is_some(),
                floors: floors.unwrap_or_default(),
                since_ms: crate::clock::now_ms(),
            },
        );
        state.feed(ONLINE, nick, 1, key);
        Ok(())
    }

    /// The nick is this connection's: its direct messages reach it from now on, above
    /// `floors`.
    pub(crate) fn listen(&self, id: ConnId, floors: Floors) {
        if let Some(conn) = self.state().conns.get_mut(&id) {
            conn.floors = floors;
            conn.listening = true;
        }
    }

    /// The last seq of `room` that connection `id` may not read (0: none).
    pub(crate) fn floor(&self, id: ConnId, room: &str) -> u64 {
        self.state()
            .conns
            .get(&id)
            .map_or(0, |conn| conn.floors.of(room))
    }

    /// Gives a user — every connection of its nick here — another (free) nick in place,
    /// keeping their rooms but the direct-message rooms of the old nick (each connection is
    /// told `left` for those). The members of its rooms are told `renamed` (in a cluster,
    /// where presence goes through Redis, they see the old nick leave and the new one join).
    /// Its own nick in another case is free to it, and stays the same nick online; another
    /// nick's direct messages reach the connections once [`listen`](Self::listen) says where
    /// their reading of them starts. Returns the old nick and the connections renamed.
    pub(crate) fn rename(&self, id: ConnId, nick: &str) -> Result<Renamed, ErrorCode> {
        let mut state = self.state();
        let Some(conn) = state.conns.get(&id) else {
            return Err(ErrorCode::HelloFirst);
        };
        let old = conn.nick.clone();
        // The nicks online are counted by identity: a change of case changes nothing there.
        if nick_key(&old) != nick_key(nick) && state.nicks.contains_key(&nick_key(nick)) {
            return Err(ErrorCode::NickTaken);
        }
        let conns = state
            .nicks
            .get(&nick_key(&old))
            .map_or_else(|| vec![id], |n| n.conns.0.clone());
        state.rename(&old, nick, &conns);
        Ok(Renamed { old, conns })
    }

    /// Another process renamed a user from `old` to `nick` at `at` (ms since the epoch): its
    /// connections here that took `old` before then take `nick` the same way (see
    /// [`rename`](Self::rename)), and are told `renamed`. A connection that took `old` after
    /// (the user taking it back) keeps it. Their reading of `nick`'s direct-message rooms
    /// starts at `floors` (as the renaming process found them). Returns how many were
    /// renamed; none if another user holds `nick` here.
    pub(crate) fn renamed_elsewhere(
        &self,
        old: &str,
        nick: &str,
        at: i64,
        floors: Floors,
    ) -> usize {
        let mut state = self.state();
        let Some(held) = state.nicks.get(&nick_key(old)) else {
            return 0;
        };
        let another = nick_key(old) != nick_key(nick);
        if another
            && let Some(other) = state.nicks.get(&nick_key(nick))
            && other.key != held.key
        {
            return 0;
        }
        let conns: Vec<ConnId> = held
            .conns
            .iter()
            .copied()
            .filter(|id| !another || state.conns.get(id).is_some_and(|c| c.since_ms <= at))
            .collect();
        state.rename(old, nick, &conns);
        let msg = ServerMsg::Renamed {
            from: old.to_owned(),
            to: nick.to_owned(),
        };
        for id in &conns {
            if another && let Some(conn) = state.conns.get_mut(id) {
                conn.floors = floors.clone();
                conn.listening = true;
            }
            state.send_one(*id, &msg);
        }
        conns.len()
    }

    /// Sends `msg` to each of `conns` (rendered for its mode), as the hub sends everything.
    pub(crate) fn send_each(&self, conns: &[ConnId], msg: &ServerMsg) {
        let state = self.state();
        for id in conns {
            state.send_one(*id, msg);
        }
    }

    /// Forgets a connection: it leaves every room, and its nick is freed with its last one.
    pub(crate) fn disconnect(&self, id: ConnId) {
        let mut state = self.state();
        let Some(conn) = state.conns.get(&id) else {
            return;
        };
        let (nick, rooms) = (conn.nick.clone(), conn.rooms.clone());
        for room in &rooms {
            state.leave_room(id, room, false);
        }
        state.release_nick(id, &nick);
        state.feed(ONLINE, &nick, -1, None);
        state.unwatch(id);
        state.conns.remove(&id);
    }

    /// The nick of a connection, and the key it said `hello` with.
    pub(crate) fn nick_and_key(&self, id: ConnId) -> Option<(String, Option<String>)> {
        let state = self.state();
        let nick = state.conns.get(&id)?.nick.clone();
        let key = state
            .nicks
            .get(&nick_key(&nick))
            .and_then(|n| n.key.clone());
        Some((nick, key))
    }

    /// The nick of a connection.
    pub(crate) fn nick(&self, id: ConnId) -> Option<String> {
        self.state().conns.get(&id).map(|c| c.nick.clone())
    }

    /// Whether anybody is connected under `nick`.
    pub(crate) fn nick_online(&self, nick: &str) -> bool {
        self.state().nicks.contains_key(&nick_key(nick))
    }

    /// Connections registered, rooms held, deliveries and slow-consumer closes, for metrics.
    pub(crate) fn counts(&self) -> (usize, usize, u64, u64) {
        let state = self.state();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            state.conns.len(),
            state.rooms.len(),
            get(&self.stats.deliveries),
            get(&self.stats.slow_closes),
        )
    }

    /// Whether the hub holds `room` (its epoch and next seq are known).
    pub(crate) fn has_room(&self, room: &str) -> bool {
        self.state().rooms.contains_key(room)
    }

    /// Whether the hub holds `room`; if so it counts as used now (it will not be swept before
    /// whatever the caller does next with it).
    pub(crate) fn hold_room(&self, room: &str) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        state.sweep_if_due(now);
        match state.rooms.get_mut(room) {
            Some(r) => {
                r.touched = now;
                true
            }
            None => false,
        }
    }

    /// Takes a room in, from what the store says of it; a room already held is kept (and
    /// counts as used now). Sweeps idle rooms first when a sweep is due.
    pub(crate) fn open_room(&self, room: &str, stored: RoomState, pair: Option<(String, String)>) {
        let mut state = self.state();
        let now = Instant::now();
        state.sweep_if_due(now);
        if let Some(r) = state.rooms.get_mut(room) {
            r.touched = now;
            return;
        }
        state.rooms.insert(
            room.to_owned(),
            Room {
                epoch: stored.epoch,
                next_seq: stored.last_seq + 1,
                pending: BTreeMap::new(),
                members: BTreeMap::new(),
                pair,
                first_seq: stored.first_seq,
                appending: 0,
                touched: now,
                typed: Vec::new(),
            },
        );
        if let Some(tx) = &state.held_feed {
            let _ = tx.send(room.to_owned());
        }
    }

    /// An append to `room` starts: the room stays held until [`end_append`](Self::end_append).
    pub(crate) fn begin_append(&self, room: &str) {
        if let Some(r) = self.state().rooms.get_mut(room) {
            r.appending += 1;
        }
    }

    /// An append to `room` was delivered (or failed).
    pub(crate) fn end_append(&self, room: &str) {
        if let Some(r) = self.state().rooms.get_mut(room) {
            r.appending = r.appending.saturating_sub(1);
            r.touched = Instant::now();
        }
    }

    /// Adds a member and queues `joined` for it, all under the lock, so that nothing live can
    /// come before `joined` or slip between the replay and the live stream. `first_seq` is the
    /// oldest seq the store keeps (read just before; `None`: the one read when the room was
    /// opened, as nothing prunes): a `since` older than it is told `truncated`.
    pub(crate) fn join(
        &self,
        id: ConnId,
        room: &str,
        ask: JoinAsk,
        max_rooms: usize,
    ) -> Result<Joined, ErrorCode> {
        let JoinAsk {
            since,
            epoch,
            first_seq,
            read,
        } = ask;
        let mut state = self.state();
        let Some(conn) = state.conns.get(&id) else {
            return Err(ErrorCode::HelloFirst);
        };
        if conn.rooms.contains(room) {
            return Err(ErrorCode::AlreadyJoined);
        }
        if conn.rooms.len() >= max_rooms {
            return Err(ErrorCode::TooManyRooms);
        }
        let (nick, floor) = (nick_key(&conn.nick), conn.floors.of(room));
        let Some(r) = state.rooms.get(room) else {
            return Err(ErrorCode::Internal);
        };
        if let Some((a, b)) = &r.pair
            && *a != nick
            && *b != nick
        {
            return Err(ErrorCode::BadRoom);
        }
        let reset = epoch.is_some_and(|e| e != r.epoch);
        let replay = since.is_some() && !reset;
        let (room_epoch, last_seq) = (r.epoch, r.next_seq - 1);
        // The store may be ahead of the hub (stored, not yet delivered): what it pruned past
        // the hub's last seq is, as far as this member is concerned, all of it up to here.
        // So is what was sent to its nick before it held it (a direct-message room's floor):
        // its reading starts after that.
        let first_seq = first_seq
            .unwrap_or(r.first_seq)
            .max(floor.saturating_add(1))
            .min(last_seq + 1);
        let truncated = replay && since.is_some_and(|s| s.saturating_add(1) < first_seq);
        let joined = ServerMsg::Joined {
            room: room.to_owned(),
            epoch: room_epoch,
            last_seq,
            first_seq,
            reset,
            truncated,
            read_seq: read.map(|r| r.read_seq),
            unread: read.map(|r| r.unread),
        };
        state.send_one(id, &joined);
        state.join_room(id, room, replay);
        Ok(Joined {
            last_seq,
            first_seq,
            replay,
        })
    }

    /// Removes a member.
    pub(crate) fn leave(&self, id: ConnId, room: &str) -> Result<(), ErrorCode> {
        let mut state = self.state();
        if !state.conns.get(&id).is_some_and(|c| c.rooms.contains(room)) {
            return Err(ErrorCode::NotJoined);
        }
        state.leave_room(id, room, true);
        Ok(())
    }

    /// The nicks in a room, sorted, once each.
    pub(crate) fn members(&self, id: ConnId, room: &str) -> Result<Vec<String>, ErrorCode> {
        let state = self.state();
        if !state.conns.get(&id).is_some_and(|c| c.rooms.contains(room)) {
            return Err(ErrorCode::NotJoined);
        }
        Ok(state.nicks_of(room))
    }

    /// The public rooms with members: (room, nicks in it), busiest first.
    pub(crate) fn rooms(&self) -> Vec<(String, usize)> {
        let state = self.state();
        let mut rooms: Vec<(String, usize)> = state
            .rooms
            .iter()
            .filter(|(name, r)| !name.starts_with('@') && !r.members.is_empty())
            .map(|(name, r)| {
                let nicks: BTreeSet<&str> = r
                    .members
                    .keys()
                    .filter_map(|m| state.conns.get(m).map(|c| c.nick.as_str()))
                    .collect();
                (name.clone(), nicks.len())
            })
            .collect();
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rooms
    }

    /// Whether `id` may read or write `room`: a member, or one of a DM room's pair.
    pub(crate) fn may_use(&self, id: ConnId, room: &str) -> bool {
        let state = self.state();
        let Some(conn) = state.conns.get(&id) else {
            return false;
        };
        conn.rooms.contains(room)
            || state
                .rooms
                .get(room)
                .and_then(|r| r.pair.as_ref())
                .is_some_and(|(a, b)| {
                    let me = nick_key(&conn.nick);
                    *a == me || *b == me
                })
    }

    /// Ends an append: delivers the stored message (`None` if it failed or was a duplicate)
    /// and whatever it unblocked, in seq order. Returns whether the room now waits for a seq
    /// it has not got (a gap, which only another process's messages can leave).
    pub(crate) fn deliver(&self, room: &str, stored: Option<(u64, &ServerMsg)>) -> bool {
        let mut state = self.state();
        let Some(r) = state.rooms.get_mut(room) else {
            return false;
        };
        if let Some((seq, msg)) = stored
            && seq >= r.next_seq
        {
            r.pending.insert(seq, Delivery::new(msg));
        }
        let mut ready = Vec::new();
        while let Some(d) = r.pending.remove(&r.next_seq) {
            ready.push((r.next_seq, d));
            r.next_seq += 1;
        }
        // Traffic keeps a room with members warm; heard for nobody here (another process's
        // members), it does not: the room leaves memory, and its channel is let go.
        if !r.members.is_empty() {
            r.touched = Instant::now();
        }
        let gap = !r.pending.is_empty();
        for (seq, d) in &ready {
            state.broadcast(room, d, Some(*seq));
        }
        gap
    }

    /// Retention pruned seqs this process had not delivered yet (it fell behind: a cluster
    /// process whose Redis link was down longer than retention keeps messages). The room jumps
    /// to `to`, dropping what waited before it; its members, whose stream would now have a
    /// hole, are closed with 4001 so that they resume — and are told `truncated`. False if
    /// there was nothing to skip.
    pub(crate) fn skip_pruned(&self, room: &str, to: u64) -> bool {
        let mut state = self.state();
        let Some(r) = state.rooms.get_mut(room) else {
            return false;
        };
        if to <= r.next_seq {
            return false;
        }
        r.next_seq = to;
        r.pending = r.pending.split_off(&to);
        let members: Vec<ConnId> = r.members.keys().copied().collect();
        for id in members {
            if let Some(conn) = state.conns.get(&id) {
                conn.outbox.request_close(
                    CloseFrame {
                        code: CloseCode::Library(CLOSE_SLOW_CONSUMER),
                        reason:
                            "messages were pruned before they reached you: resume with join since"
                                .into(),
                    },
                    true,
                );
            }
        }
        true
    }

    /// After a replay: returns the live deliveries held meanwhile (the caller sends them and
    /// calls again), or `None` once there were none and the member is live.
    pub(crate) fn finish_replay(&self, id: ConnId, room: &str) -> Option<Vec<Delivery>> {
        let mut state = self.state();
        let backlog = state.rooms.get_mut(room)?.members.get_mut(&id)?;
        match backlog {
            Some(b) if !b.held.is_empty() => {
                b.bytes = 0;
                Some(std::mem::take(&mut b.held))
            }
            _ => {
                *backlog = None;
                None
            }
        }
    }
}

impl State {
    /// The nicks in `room`, sorted, once each (none if the room is not held).
    fn nicks_of(&self, room: &str) -> Vec<String> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let nicks: BTreeSet<&str> = r
            .members
            .keys()
            .filter_map(|m| self.conns.get(m).map(|c| c.nick.as_str()))
            .collect();
        nicks.into_iter().map(str::to_owned).collect()
    }

    /// Drops the rooms idle for the room TTL (no member, nothing pending, no append in
    /// flight), at most every half TTL: rooms being opened and joined pay for the clean-up.
    fn sweep_if_due(&mut self, now: Instant) {
        let ttl = self.room_ttl;
        if self.swept.is_some_and(|t| now < t + ttl / 2) {
            return;
        }
        self.swept = Some(now);
        self.drop_idle(now, ttl);
    }

    /// Drops the rooms with no member, nothing in flight, and untouched for `ttl`.
    fn drop_idle(&mut self, now: Instant, ttl: Duration) {
        let before = self.rooms.len();
        let feed = self.held_feed.as_ref();
        self.rooms.retain(|name, r| {
            let idle = r.members.is_empty()
                && r.pending.is_empty()
                && r.appending == 0
                && now.duration_since(r.touched) >= ttl;
            if idle && let Some(tx) = feed {
                let _ = tx.send(name.clone());
            }
            !idle
        });
        let dropped = before - self.rooms.len();
        if dropped > 0 {
            debug!(dropped, held = self.rooms.len(), "dropped idle rooms");
        }
    }

    fn join_room(&mut self, id: ConnId, room: &str, replay: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.rooms.insert(room.to_owned());
        let nick = conn.nick.clone();
        self.watch_room(room);
        if self.feed(room, &nick, 1, None) {
            if let Some(r) = self.rooms.get_mut(room) {
                r.members.insert(id, replay.then(Box::default));
            }
            return;
        }
        // Whether the nick is new here is a walk over the members: only worth it if told.
        let first = self.tells_presence(room) && !self.nick_in_room(&nick, room);
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.insert(id, replay.then(Box::default));
        }
        if first {
            self.presence(room, &nick, PresenceEvent::Join);
        }
    }

    /// Takes connection `id` out of `room`, telling it `left` if it stays connected (a
    /// connection going away is told nothing: a client that reconnects must not take the
    /// server's cleanup for its user leaving the room).
    fn leave_room(&mut self, id: ConnId, room: &str, tell: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.rooms.remove(room);
        let nick = conn.nick.clone();
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.remove(&id);
        }
        self.watch_room(room);
        if tell {
            let left = ServerMsg::Left {
                room: room.to_owned(),
            };
            self.send_one(id, &left);
        }
        if self.feed(room, &nick, -1, None) {
            return;
        }
        if self.tells_presence(room) && !self.nick_in_room(&nick, room) {
            self.presence(room, &nick, PresenceEvent::Leave);
        }
    }

    /// A member joined or left `room`: if anybody follows the room counts, the room is in
    /// the next `live` round.
    fn watch_room(&mut self, room: &str) {
        if self.watch.rooms_followed > 0 && !room.starts_with('@') {
            self.watch.changed_rooms.insert(room.to_owned());
        }
    }

    /// The nick `key` (case-folded) came online or went offline here: if anybody follows it,
    /// it is in the next `live` round.
    fn watch_nick(&mut self, key: &str) {
        if !self.watch.nicks.is_empty() && self.watch.nicks.contains_key(key) {
            self.watch.changed_nicks.insert(key.to_owned());
        }
    }

    /// Connection `id` follows nothing any more.
    fn unwatch(&mut self, id: ConnId) {
        let Some(w) = self.watch.conns.remove(&id) else {
            return;
        };
        self.watch.rooms_followed -= usize::from(w.rooms);
        for (_, key) in w.nicks {
            if let Some(n) = self.watch.nicks.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.watch.nicks.remove(&key);
                    self.watch.changed_nicks.remove(&key);
                }
            }
        }
        if self.watch.rooms_followed == 0 {
            self.watch.changed_rooms.clear();
        }
    }

    /// With a cluster, hands a member's join (+1) or leave (-1) to it and returns true.
    fn feed(&mut self, room: &str, nick: &str, delta: i64, key: Option<&str>) -> bool {
        let Some(feed) = &mut self.feed else {
            return false;
        };
        if !room.starts_with('@') {
            feed.generation += 1;
            let _ = feed.tx.send(Change {
                generation: feed.generation,
                room: room.to_owned(),
                nick: nick.to_owned(),
                delta,
                key: key.map(str::to_owned),
            });
        }
        true
    }

    /// `conns`, connections of `old`, take `nick`: they keep their rooms but the direct-message
    /// rooms of `old` (each is told `left` for those), and the members of their rooms are told
    /// `renamed` (in a cluster, where presence goes through Redis, they see `old` leave and
    /// `nick` join). Another nick's direct messages reach them once [`Hub::listen`] says where
    /// their reading of them starts. The caller has checked that `nick` is free to them.
    fn rename(&mut self, old: &str, nick: &str, conns: &[ConnId]) {
        // Nobody to rename: the new nick is not taken here by an entry with no connection.
        if conns.is_empty() {
            return;
        }
        let (old_key, new_key) = (nick_key(old), nick_key(nick));
        let another = old_key != new_key;
        let key = self.nicks.get(&old_key).and_then(|n| n.key.clone());
        if let Some(held) = self.nicks.get_mut(&old_key) {
            held.conns.0.retain(|c| !conns.contains(c));
            if held.conns.is_empty() {
                self.nicks.remove(&old_key);
            }
        }
        let mut told = BTreeSet::new();
        for conn in conns {
            let rooms = self.conns.get(conn).map(|c| c.rooms.clone());
            for room in rooms.iter().flat_map(|r| r.iter()) {
                if room.starts_with('@') {
                    // The old nick's direct-message rooms are its next holder's, not theirs.
                    if another {
                        self.leave_room(*conn, room, true);
                    }
                } else if self.feed(room, old, -1, None) {
                    self.feed(room, nick, 1, None);
                } else if self.tells_presence(room) {
                    told.insert(room.clone());
                }
            }
            if another {
                self.feed(ONLINE, old, -1, key.as_deref());
                self.feed(ONLINE, nick, 1, key.as_deref());
            }
            if let Some(c) = self.conns.get_mut(conn) {
                c.nick = nick.to_owned();
                if another {
                    c.floors = Floors::default();
                    c.listening = false;
                }
            }
        }
        if another {
            self.watch_nick(&old_key);
            self.watch_nick(&new_key);
        }
        let held = self.nicks.entry(new_key).or_insert_with(|| Nick {
            shown: nick.to_owned(),
            key,
            conns: SmallSet::default(),
        });
        held.shown = nick.to_owned();
        for conn in conns {
            held.conns.insert(*conn);
        }
        for room in told {
            let msg = ServerMsg::Presence {
                room: room.clone(),
                nick: nick.to_owned(),
                event: PresenceEvent::Renamed,
                from: Some(old.to_owned()),
            };
            self.broadcast(&room, &Delivery::new(&msg), None);
        }
    }

    fn release_nick(&mut self, id: ConnId, nick: &str) {
        let nick = nick_key(nick);
        if let Some(n) = self.nicks.get_mut(&nick) {
            n.conns.remove(&id);
            if n.conns.is_empty() {
                self.nicks.remove(&nick);
                self.watch_nick(&nick);
            }
        }
    }

    fn nick_in_room(&self, nick: &str, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| {
            r.members
                .keys()
                .any(|m| self.conns.get(m).is_some_and(|c| c.nick == nick))
        })
    }

    /// Whether a room tells its members of joins and leaves: not a DM room (no audience),
    /// not one too big to tell everyone of everyone (members ask with `who`). Called before a
    /// join's member is added and after a leave's is removed, and counted with that member,
    /// so that a join and its leave are both told or neither.
    fn tells_presence(&self, room: &str) -> bool {
        !room.starts_with('@')
            && self
                .rooms
                .get(room)
                // Fewer connections than the limit: fewer nicks too, without counting them.
                .is_some_and(|r| {
                    r.members.len() < self.presence_limit
                        || self.nicks_in(room, self.presence_limit) < self.presence_limit
                })
    }

    /// How many nicks (not connections: a nick with three is one) are members of `room`,
    /// counted up to `upto`.
    fn nicks_in(&self, room: &str, upto: usize) -> usize {
        let Some(r) = self.rooms.get(room) else {
            return 0;
        };
        let mut seen = std::collections::HashSet::new();
        for id in r.members.keys() {
            if let Some(conn) = self.conns.get(id) {
                seen.insert(nick_key(&conn.nick));
                if seen.len() >= upto {
                    break;
                }
            }
        }
        seen.len()
    }

    /// `typing` to the room's live `nanachat.v1` members other than `nick`'s connections
    /// (plain-text clients would only see noise; a member still replaying has older things
    /// to read first). Never stored, never queued behind anything: dropped for a full outbox
    /// like any live delivery.
    fn typing(&mut self, room: &str, nick: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let text: crate::connection::Utf8Bytes = ServerMsg::Typing {
            room: room.to_owned(),
            nick: nick.to_owned(),
        }
        .to_json()
        .into();
        let key = nick_key(nick);
        for (id, backlog) in &r.members {
            let Some(conn) = self.conns.get(id) else {
                continue;
            };
            if backlog.is_some() || conn.mode != Mode::Json || nick_key(&conn.nick) == key {
                continue;
            }
            send_or_close(&conn.outbox, text.clone(), &self.stats);
        }
    }

    fn presence(&mut self, room: &str, nick: &str, event: PresenceEvent) {
        let msg = ServerMsg::Presence {
            room: room.to_owned(),
            nick: nick.to_owned(),
            event,
            from: None,
        };
        self.broadcast(room, &Delivery::new(&msg), None);
    }

    /// Hands one delivery (the message `seq`, or an event) to every recipient of a room: its
    /// members, and for a DM room every connection of the pair — once each: a member of the
    /// pair is not sent it again, nor is a DM to yourself (the pair `(a, a)`) sent twice. A
    /// DM room's message goes only to connections whose nick is theirs (listening) and above
    /// their floor: sent to the nick before its holder took it, it is not the holder's.
    fn broadcast(&mut self, room: &str, d: &Delivery, seq: Option<u64>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let dm = r.pair.is_some();
        let sees = |conn: &Conn| {
            !dm || (conn.listening && seq.is_none_or(|seq| seq > conn.floors.of(room)))
        };
        let mut live: Vec<ConnId> = Vec::with_capacity(r.members.len());
        let mut overflowed = Vec::new();
        for (id, backlog) in r.members.iter_mut() {
            let Some(b) = backlog else {
                live.push(*id);
                continue;
            };
            // A replaying member may fall behind by what its outbox holds, and no more: past
            // that it is a slow consumer, as it would be live.
            let Some(conn) = self.conns.get(id).filter(|conn| sees(conn)) else {
                continue;
            };
            let len = d.for_mode(conn.mode).len();
            if b.bytes + len > conn.outbox.budget() {
                overflowed.push(*id);
            } else {
                b.bytes += len;
                b.held.push(d.clone());
            }
        }
        if let Some((a, b)) = &r.pair {
            let pair: &[&String] = if a == b { &[a] } else { &[a, b] };
            for nick in pair {
                if let Some(n) = self.nicks.get(*nick) {
                    live.extend(n.conns.iter().filter(|c| !r.members.contains_key(c)));
                }
            }
        }
        for id in overflowed {
            if let Some(conn) = self.conns.get(&id) {
                close_slow(&conn.outbox, &self.stats);
            }
        }
        for id in live {
            if let Some(conn) = self.conns.get(&id).filter(|conn| sees(conn)) {
                conn.send(d.for_mode(conn.mode), &self.stats);
            }
        }
    }

    fn send_one(&self, id: ConnId, msg: &ServerMsg) {
        if let Some(conn) = self.conns.get(&id) {
            conn.send(render(conn.mode, msg), &self.stats);
        }
    }
}

/// A set kept as a vector: a connection is in a few rooms, a nick has a connection or two.
/// A `BTreeSet` would allocate a whole node (hundreds of bytes) for the first one, for every
/// idle connection.
#[derive(Debug, Clone)]
struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: PartialEq> SmallSet<T> {
    fn contains<Q: PartialEq<T> + ?Sized>(&self, item: &Q) -> bool {
        self.0.iter().any(|x| item == x)
    }

    fn insert(&mut self, item: T) {
        if !self.0.contains(&item) {
            self.0.push(item);
        }
    }

    fn remove<Q: PartialEq<T> + ?Sized>(&mut self, item: &Q) {
        self.0.retain(|x| item != x);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn close_slow(outbox: &Outbox, stats: &Stats) {
    debug!("closing a slow consumer");
    crate::metrics::bump(&stats.slow_closes);
    outbox.request_close(
        CloseFrame {
            code: CloseCode::Library(CLOSE_SLOW_CONSUMER),
            reason: "slow consumer: resume with join since".into(),
        },
        true,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(last_seq: u64) -> RoomState {
        RoomState::empty(1, last_seq)
    }

    /// A rename on another process that finds no connection of the old nick from before it
    /// here (the user took the old nick back since) leaves the new nick free here: nobody
    /// holds it, and the old nick's connection keeps it.
    #[test]
    fn a_rename_elsewhere_that_renames_nobody_here_holds_no_nick() {
        let hub = Hub::new(100, Duration::ZERO);
        let outbox = Outbox::new(1 << 20);
        hub.connect(1, "mochi", Some("k"), outbox, Mode::Json, None)
            .unwrap();
        let before = crate::clock::now_ms() - 60_000;
        assert_eq!(
            hub.renamed_elsewhere("mochi", "mochi2", before, Floors::default()),
            0
        );
        assert!(
            !hub.nick_online("mochi2"),
            "no connection holds mochi2 here"
        );
        assert!(hub.nick_online("mochi"));
        assert_eq!(hub.nick(1).as_deref(), Some("mochi"));
    }

    #[test]
    fn an_ack_that_does_not_fit_closes_the_connection_rather_than_going_missing() {
        let hub = Hub::new(100, Duration::ZERO);
        let outbox = Outbox::new(8);
        outbox.try_send(Message::text("12345678")).unwrap();
        hub.send_to(&outbox, "an ack".into());
        assert!(outbox.is_closed(), "closed as a slow consumer (4001)");
        assert_eq!(hub.counts().3, 1);
    }

    /// The texts queued in an outbox, taken out of it.
    fn taken(outbox: &Outbox) -> Vec<String> {
        let mut batch = std::collections::VecDeque::new();
        let _ = outbox.next_batch(&mut batch, usize::MAX);
        batch
            .into_iter()
            .filter_map(|m| m.into_text().ok().map(|t| t.as_str().to_owned()))
            .collect()
    }

    fn dm(seq: u64) -> ServerMsg {
        ServerMsg::Message(crate::protocol::ChatMessage::said(
            "@a+b",
            seq,
            "b",
            &format!("m{seq}"),
            0,
        ))
    }

    #[test]
    fn a_direct_message_reaches_its_nicks_holder_only_above_its_floor() {
        let hub = Hub::new(100, Duration::from_secs(300));
        let pair = Some(("a".to_owned(), "b".to_owned()));
        hub.open_room("@a+b", state(5), pair);
        let outbox = Outbox::new(1 << 20);
        hub.connect(1, "a", None, outbox.clone(), Mode::Json, None)
            .unwrap();
        // Held but not yet its: nothing of the nick's reaches it.
        hub.deliver("@a+b", Some((6, &dm(6))));
        assert!(taken(&outbox).is_empty());
        // Its from seq 7 on: 7 was sent before it held the nick.
        hub.listen(1, Floors::new(vec![("@a+b".into(), 7)]));
        hub.deliver("@a+b", Some((7, &dm(7))));
        assert!(taken(&outbox).is_empty());
        hub.deliver("@a+b", Some((8, &dm(8))));
        let got = taken(&outbox);
        assert!(got.len() == 1 && got[0].contains("\"m8\""), "{got:?}");
        assert_eq!((hub.floor(1, "@a+b"), hub.floor(1, "@a+c")), (7, 0));
        // A resume from 0 starts above the floor, and says that what is below was not its.
        let joined = hub
            .join(
                1,
                "@a+b",
                JoinAsk {
                    since: Some(0),
                    ..JoinAsk::default()
                },
                32,
            )
            .unwrap();
        assert_eq!((joined.first_seq, joined.last_seq), (8, 8));
        let got = taken(&outbox);
        assert!(
            got[0].contains("\"first_seq\":8") && got[0].contains("truncated"),
            "{got:?}"
        );
        // Another nick: the old one's direct-message rooms are left, and its floors forgotten.
        hub.rename(1, "c").unwrap();
        assert_eq!(hub.floor(1, "@a+b"), 0);
        assert!(!hub.may_use(1, "@a+b"));
        assert!(taken(&outbox).iter().any(|t| t.contains("\"left\"")));
    }

    #[test]
    fn only_rooms_idle_with_no_member_and_no_append_in_flight_are_swept() {
        let hub = Hub::new(100, Duration::ZERO);
        let (outbox, id) = (Outbox::new(1 << 20), 1);
        hub.connect(
            id,
            "nana",
            None,
            outbox,
            Mode::Json,
            Some(Floors::default()),
        )
        .unwrap();
        hub.open_room("empty", state(3), None);
        hub.open_room("member", state(0), None);
        hub.join(id, "member", JoinAsk::default(), 32).unwrap();
        hub.open_room("appending", state(7), None);
        hub.begin_append("appending");
        // Opening another room sweeps (the TTL is zero): only "empty" goes.
        hub.open_room("new", state(0), None);
        assert!(!hub.has_room("empty"));
        assert!(hub.has_room("member") && hub.has_room("appending"));
        // The append is delivered: its seq is known, the room may go, and comes back from
        // the store with it.
        let msg = ServerMsg::Tick { time: 0 };
        hub.deliver("appending", Some((8, &msg)));
        hub.end_append("appending");
        hub.leave(id, "member").unwrap();
        hub.open_room("newer", state(0), None);
        assert!(!hub.has_room("appending") && !hub.has_room("member"));
        hub.open_room("appending", state(8), None);
        assert_eq!(hub.next_seq("appending"), Some(9));
    }
}
