//! Several `nanachat serve` processes as one chat service (`--broker redis://…`, with
//! `--store postgres://…`): Redis pub/sub carries what one process stored to the others, and
//! Redis hashes hold who is in which room on every process.
//!
//! Messages. The process that stores a message delivers it to its own members and publishes
//! it on the room's channel ([`room_channel`](redis::room_channel)); every process that holds
//! the room delivers it to its members through the hub, which keeps each room in seq order. A
//! process subscribes to the channels of the rooms it holds and no others — as the hub takes a
//! room in and drops it — so the cluster's intake grows with its processes: each reads only
//! its share. Between a room's state read from the store and its subscription taking effect,
//! another process may publish: each room is filled from the store once its subscription is
//! confirmed. Direct messages go over one channel, [`MESSAGES`](redis::MESSAGES), that every
//! process hears: one must reach the process of either of its two before that process holds
//! the room. Pub/sub is at-most-once: a process that is cut
//! off from Redis misses what was published meanwhile. Two things bring it back, both from the
//! store, which has every seq (a seq is committed only after all seqs before it):
//! - a *jump*: the hub got seq n+2 while waiting for n+1 — after a short grace for the message
//!   in flight, the filler reads the missing seqs from the store and delivers them first;
//! - a *resubscribe*: after Redis comes back, every room held is filled from the store, as a
//!   message published while the link was down may be the last one for a while.
//!
//! Either way the hub drops seqs it has delivered already: no gap, no duplicate.
//!
//! Presence. For each room a hash `nanachat:room:<room>` counts, per nick, the connections in
//! the room on all processes; each process also keeps its own share in `nanachat:node:<id>`.
//! The process whose change takes a nick's count from 0 to 1 (or 1 to 0) publishes the join
//! (leave) on [`PRESENCE`](redis::PRESENCE), and every process tells its members. `who` reads
//! the room's hash. Each process refreshes `nanachat:alive:<id>` (TTL
//! [`ALIVE_TTL`](redis::ALIVE_TTL)) every [`HEARTBEAT`]; a process that finds another's key
//! gone takes that process's share out of the rooms and publishes the leaves: the members of a
//! process that died are gone within TTL + heartbeat. After Redis comes back, each process
//! puts its share in again from what its hub holds. Each change and the event it causes are
//! one Lua step, so a process that stops between them cannot leave a count changed and its
//! event untold.
//!
//! Nicks. On an open server a nick is claimed in `nanachat:nick:<nick>` before it is used,
//! with the key its connections share; its count in the room of nicks online (`*`) then holds
//! the claim, and the last of its connections anywhere releases it.
//!
//! This file holds the tasks that do all this (publisher, subscriber, filler, presence and
//! heartbeat) and the [`Cluster`] the directory asks; the keys, the Lua steps and the commands
//! they send are the link's, in `redis.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::hub::Hub;
use super::types::{Change, Floors, ONLINE, chat_message, dm_pair};
use crate::Result;
use crate::protocol::{ChatMessage, ServerMsg};
use crate::store::{MAX_PAGE, Page, Store};

mod redis;

pub use self::redis::Broker;
use self::redis::{HEARTBEAT, Heard, Link, heard};

/// How long a jump waits for the missing message to come the usual way before reading it.
const GRACE: Duration = Duration::from_millis(30);
/// How long a back-fill that failed (the store is down) waits before it is tried again.
const FILL_RETRY: Duration = Duration::from_millis(100);

/// Counters, for metrics.
#[derive(Debug, Default)]
struct Stats {
    published: AtomicU64,
    received: AtomicU64,
    /// Bytes of the messages received (payloads as published).
    received_bytes: AtomicU64,
    /// Rooms' channels subscribed to now.
    channels: AtomicU64,
    filled: AtomicU64,
    resubscribes: AtomicU64,
    /// Times this process found it had been declared dead, and put its share back.
    revivals: AtomicU64,
    /// 1 while this process is subscribed to the other processes' messages.
    subscribed: AtomicU64,
    /// How long the last message from another process took to arrive, stored to heard, in
    /// milliseconds (clocks of one cluster are taken to agree).
    lag_ms: AtomicU64,
    expired_nodes: AtomicU64,
}

/// This process's part of the cluster. Its tasks hold it weakly: they end when it is dropped.
#[derive(Debug)]
pub(crate) struct Cluster<S> {
    shared: Arc<Shared<S>>,
}

/// What the cluster's tasks work on: this process's hub and store, and the link to Redis.
#[derive(Debug)]
struct Shared<S> {
    link: Link,
    hub: Arc<Hub>,
    store: Arc<S>,
    publish: mpsc::UnboundedSender<ChatMessage>,
    fill: mpsc::UnboundedSender<(String, bool)>,
    /// The presence generation Redis holds this process's share up to.
    applied: tokio::sync::watch::Sender<u64>,
    stats: Stats,
}

impl<S: Store> Cluster<S> {
    /// Makes this process one of several: the hub's joins and leaves go to Redis from now on,
    /// and the cluster's tasks are started (call this inside a Tokio runtime).
    pub(crate) fn start(
        broker: Broker,
        presence_limit: usize,
        hub: Arc<Hub>,
        store: Arc<S>,
    ) -> Self {
        let (publish, publish_rx) = mpsc::unbounded_channel();
        let (fill, fill_rx) = mpsc::unbounded_channel();
        let (changes, changes_rx) = mpsc::unbounded_channel();
        hub.feed_presence(changes);
        let (held, held_rx) = mpsc::unbounded_channel();
        hub.feed_held_rooms(held);
        let node = format!("{:x}-{}", crate::store::new_epoch(), std::process::id());
        info!(broker = %broker.shown(), %node, "cluster: this process is one of several");
        let shared = Arc::new(Shared {
            link: Link::new(broker, node, presence_limit),
            hub,
            store,
            publish,
            fill,
            applied: tokio::sync::watch::Sender::new(0),
            stats: Stats::default(),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(publish_loop(weak.clone(), publish_rx));
        tokio::spawn(fill_loop(weak.clone(), fill_rx));
        tokio::spawn(subscribe_loop(weak.clone(), held_rx));
        tokio::spawn(presence_loop(weak, changes_rx));
        Self { shared }
    }

    /// Ends an append (or hands on another process's message): the hub delivers it in seq
    /// order, and a gap left behind it is filled from the store.
    pub(crate) fn deliver(&self, room: &str, stored: Option<(u64, &ServerMsg)>) {
        self.shared.deliver(room, stored);
    }

    /// Waits (at most `limit`) until Redis holds this process's presence up to `generation`:
    /// a nick connected here is then online for every process (a `dm` to it finds it).
    pub(crate) async fn applied(&self, generation: u64, limit: Duration) {
        let mut rx = self.shared.applied.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|&g| g >= generation)).await;
    }

    /// Tells the other processes holding `room` that `nick` is typing (best effort: never
    /// stored, never retried).
    pub(crate) fn typing(&self, room: &str, nick: &str) {
        let inner = self.shared.clone();
        let (room, nick) = (room.to_owned(), nick.to_owned());
        tokio::spawn(async move {
            if let Err(err) = inner.link.publish_typing(&room, &nick).await {
                debug!(cause = %err, "typing not passed on");
            }
        });
    }

    /// Tells the other processes that `reader` has read `room` up to `seq`, for the reader's
    /// connections there (best effort: the position itself is in the store already).
    pub(crate) fn read(&self, reader: &str, room: &str, seq: u64) {
        let inner = self.shared.clone();
        let (reader, room) = (reader.to_owned(), room.to_owned());
        tokio::spawn(async move {
            if let Err(err) = inner.link.publish_read(&reader, &room, seq).await {
                debug!(cause = %err, "read position not passed on");
            }
        });
    }

    /// Closes `nick`'s connections on the other processes, and with `ban` keeps it from
    /// connecting to any of them for that long.
    pub(crate) async fn kick(&self, nick: &str, reason: &str, ban: Option<Duration>) -> Result<()> {
        self.shared.link.publish_kick(nick, reason, ban).await
    }

    /// Tells the other processes that a user renamed itself from `from` to `to` at `at` (ms
    /// since the epoch): its connections there take `to` (see [`Hub::renamed_elsewhere`]).
    pub(crate) async fn rename(
        &self,
        from: &str,
        to: &str,
        at: i64,
        floors: &Floors,
    ) -> Result<()> {
        self.shared
            .link
            .publish_rename(from, to, at, floors.to_vec())
            .await
    }

    /// A connection here follows nicks (`watch`): their coming online and going offline on
    /// every process is published from now on (kept so at each heartbeat while it does).
    pub(crate) async fn watching(&self) -> Result<()> {
        self.shared.link.watching().await
    }

    /// The public rooms with members on any process and how many nicks each has, by name.
    pub(crate) async fn rooms(&self) -> Result<Vec<(String, usize)>> {
        self.shared.link.rooms().await
    }

    /// Lifts `nick`'s ban; whether there was one.
    pub(crate) async fn unban(&self, nick: &str) -> Result<bool> {
        self.shared.link.unban(nick).await
    }

    /// Why `nick` is banned and for how many more milliseconds, if it is.
    pub(crate) async fn banned(&self, nick: &str) -> Result<Option<(String, u64)>> {
        self.shared.link.banned(nick).await
    }

    /// Hands a stored message to the publisher (never waits).
    pub(crate) fn publish(&self, msg: ChatMessage) {
        let _ = self.shared.publish.send(msg);
    }

    /// Asks for `room` to be filled from the store; `grace` waits a little first, for the
    /// message that may be on its way.
    pub(crate) fn fill(&self, room: &str, grace: bool) {
        self.shared.fill(room, grace);
    }

    /// The nicks in a room on every process, sorted.
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<String>> {
        self.shared.link.members(room).await
    }

    /// Reserves `nick` on every process for connections with `key` (none: this one only).
    /// Returns whether it was granted.
    pub(crate) async fn claim(&self, nick: &str, key: Option<&str>) -> Result<bool> {
        self.shared.link.claim(nick, key).await
    }

    /// A prefix for guests' nicks that no other process uses (but by chance: claims decide).
    pub(crate) fn guest_prefix(&self) -> String {
        let node = self.shared.link.node();
        format!("guest-{}", &node[node.len().saturating_sub(4)..])
    }

    /// Whether anybody is connected as `nick` on any process.
    pub(crate) async fn online(&self, nick: &str) -> Result<bool> {
        self.shared.link.online(nick).await
    }

    /// Appends the cluster's counters (Prometheus text format).
    pub(crate) fn write_metrics(&self, out: &mut String) {
        let stats = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::metrics::write_all(
            out,
            &[
                (
                    "nanachat_cluster_published_total",
                    "counter",
                    "Stored messages published to the other processes.",
                    get(&stats.published),
                ),
                (
                    "nanachat_cluster_received_total",
                    "counter",
                    "Messages received from the other processes.",
                    get(&stats.received),
                ),
                (
                    "nanachat_cluster_received_bytes_total",
                    "counter",
                    "Bytes of the messages received from the other processes (this process's broker intake).",
                    get(&stats.received_bytes),
                ),
                (
                    "nanachat_cluster_room_channels",
                    "gauge",
                    "Rooms whose channel this process is subscribed to: the rooms it holds.",
                    get(&stats.channels),
                ),
                (
                    "nanachat_cluster_backfilled_total",
                    "counter",
                    "Messages read from the store to fill a gap pub/sub left.",
                    get(&stats.filled),
                ),
                (
                    "nanachat_cluster_resubscribes_total",
                    "counter",
                    "Times the link to Redis was made again.",
                    get(&stats.resubscribes),
                ),
                (
                    "nanachat_cluster_expired_processes_total",
                    "counter",
                    "Other processes found dead whose members this one took out.",
                    get(&stats.expired_nodes),
                ),
                (
                    "nanachat_cluster_revivals_total",
                    "counter",
                    "Times this process found the others had declared it dead (a stall) and put its members back.",
                    get(&stats.revivals),
                ),
                (
                    "nanachat_cluster_subscribed",
                    "gauge",
                    "1 while subscribed to the other processes' messages (the link to Redis is up).",
                    get(&stats.subscribed),
                ),
                (
                    "nanachat_cluster_lag_milliseconds",
                    "gauge",
                    "How long the last message from another process took, stored to heard.",
                    get(&stats.lag_ms),
                ),
            ],
        );
    }

    /// Whether Redis answers, holds a presence to believe (not just restarted empty) and this
    /// process is subscribed: `Err` says which is not so.
    pub(crate) async fn ready(&self) -> std::result::Result<(), String> {
        self.shared
            .link
            .ping_settled()
            .await
            .map_err(|err| err.to_string())?;
        if self.shared.stats.subscribed.load(Ordering::Relaxed) == 0 {
            return Err("not subscribed to the other processes' messages (reconnecting)".into());
        }
        Ok(())
    }

    /// Takes this process's members out of every room (graceful shutdown).
    pub(crate) async fn withdraw(&self) -> Result<()> {
        let link = &self.shared.link;
        link.withdraw(link.node()).await.map(drop)
    }
}

impl<S: Store> Shared<S> {
    /// Delivers through the hub; a gap left behind the message is filled after a grace.
    fn deliver(&self, room: &str, stored: Option<(u64, &ServerMsg)>) {
        if self.hub.deliver(room, stored) {
            self.fill(room, true);
        }
    }

    fn fill(&self, room: &str, grace: bool) {
        let _ = self.fill.send((room.to_owned(), grace));
    }
}

/// Publishes stored messages, as many per round trip as are waiting. While Redis is down
/// they are dropped: the other processes fill them from the store once they are back.
async fn publish_loop<S: Store>(
    inner: Weak<Shared<S>>,
    mut rx: mpsc::UnboundedReceiver<ChatMessage>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let Some(inner) = inner.upgrade() else { return };
        let n = batch.len() as u64;
        match inner.link.publish(&mut batch).await {
            Ok(()) => {
                inner.stats.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) => debug!(cause = %err, dropped = n, "publish failed; peers will back-fill"),
        }
    }
}

/// Fills rooms from the store, in seq order, up to the last stored seq.
async fn fill_loop<S: Store>(
    inner: Weak<Shared<S>>,
    mut rx: mpsc::UnboundedReceiver<(String, bool)>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        if batch.iter().any(|(_, grace)| *grace) {
            tokio::time::sleep(GRACE).await;
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
        }
        let rooms: HashSet<String> = batch.drain(..).map(|(room, _)| room).collect();
        let Some(inner) = inner.upgrade() else { return };
        for room in rooms {
            if let Err(err) = fill_room(&inner, &room).await {
                warn!(cause = %err, room = %crate::shown::Shown(&room), "back-fill failed; retrying");
                tokio::time::sleep(FILL_RETRY).await;
                inner.fill(&room, false);
            }
        }
    }
}

async fn fill_room<S: Store>(inner: &Shared<S>, room: &str) -> Result<()> {
    loop {
        let Some(next) = inner.hub.next_seq(room) else {
            return Ok(());
        };
        let page = inner
            .store
            .history(room, Page::After(next - 1), MAX_PAGE)
            .await?;
        let full = page.len() == MAX_PAGE;
        // A seq missing below what the store holds was pruned (a seq is visible only once
        // every one before it is committed): nothing will ever fill it.
        let pruned_to = match page.first() {
            Some(first) => first.seq,
            None => {
                let state = inner.store.room_state(room).await?;
                if state.last_seq >= next {
                    state.first_seq
                } else {
                    next
                }
            }
        };
        if pruned_to > next && inner.hub.skip_pruned(room, pruned_to) {
            warn!(room = %crate::shown::Shown(&room), from = next, to = pruned_to, "messages were pruned before this process delivered them: its members resume");
            inner.hub.deliver(room, None);
        }
        for record in page {
            if record.seq < next {
                continue;
            }
            let seq = record.seq;
            let msg = ServerMsg::chat(chat_message(record));
            inner.hub.deliver(room, Some((seq, &msg)));
            inner.stats.filled.fetch_add(1, Ordering::Relaxed);
        }
        if !full {
            return Ok(());
        }
    }
}

/// Most channels one SUBSCRIBE or UNSUBSCRIBE names.
const CHANNELS_PER_COMMAND: usize = 512;

/// Receives what the other processes publish, on the channels of the rooms this process holds
/// (`held` names each room the hub takes in or drops); on every (re)subscribe, fills every
/// room held and has the presence task put this process's share in again.
async fn subscribe_loop<S: Store>(
    inner: Weak<Shared<S>>,
    mut held: mpsc::UnboundedReceiver<String>,
) {
    let mut backoff = crate::backoff::LINK;
    let mut first = true;
    let mut changed = Vec::new();
    loop {
        let broker = match inner.upgrade() {
            Some(inner) => inner.link.broker().clone(),
            None => return,
        };
        let (mut sink, mut stream) = match broker.subscribe().await {
            Ok(pubsub) => pubsub.split(),
            Err(cause) => {
                debug!(%cause, "cannot subscribe to Redis; retrying");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        let mut listening = HashSet::new();
        {
            let Some(inner) = inner.upgrade() else { return };
            // The rooms held now stand for every change told so far.
            while held.try_recv().is_ok() {}
            // Rooms nobody is in leave memory (read from the store again when someone comes
            // back); the rest are subscribed to, then filled with what was missed meanwhile.
            let rooms = inner.hub.drop_empty_rooms();
            if let Err(cause) = listen(&inner, &mut sink, &mut listening, rooms).await {
                debug!(%cause, "cannot subscribe to the rooms' channels; retrying");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
            backoff.succeeded();
            inner.stats.subscribed.store(1, Ordering::Relaxed);
            if !first {
                info!(broker = %broker.shown(), rooms = listening.len(), "Redis is back: filling the rooms with members from the store");
                inner.stats.resubscribes.fetch_add(1, Ordering::Relaxed);
                // Nicks may have come or gone unheard meanwhile: those followed are looked at
                // again.
                inner.hub.recheck_watched_nicks();
            }
            inner.hub.resync_presence();
        }
        first = false;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(inner) = inner.upgrade() else { return };
                    hear(&inner, &msg);
                }
                n = held.recv_many(&mut changed, 4096) => {
                    if n == 0 {
                        return;
                    }
                    let Some(inner) = inner.upgrade() else { return };
                    let rooms: HashSet<String> = changed.drain(..).collect();
                    if let Err(cause) = follow(&inner, &mut sink, &mut listening, rooms).await {
                        warn!(broker = %broker.shown(), %cause, "cannot change the rooms subscribed to; subscribing again");
                        break;
                    }
                }
            }
        }
        if let Some(inner) = inner.upgrade() {
            inner.stats.subscribed.store(0, Ordering::Relaxed);
            inner.stats.channels.store(0, Ordering::Relaxed);
        }
        warn!(broker = %broker.shown(), "lost the Redis subscription; reconnecting");
    }
}

/// Subscribes to the channels of `rooms` (in a few commands), then fills each from the store:
/// what was published before the subscription took effect.
async fn listen<S: Store>(
    inner: &Shared<S>,
    sink: &mut ::redis::aio::PubSubSink,
    listening: &mut HashSet<String>,
    rooms: Vec<String>,
) -> std::result::Result<(), String> {
    let channels: Vec<(String, String)> = rooms
        .into_iter()
        .filter_map(|room| redis::room_channel(&room).map(|channel| (room, channel)))
        .filter(|(room, _)| !listening.contains(room))
        .collect();
    for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
        let names: Vec<&str> = chunk.iter().map(|(_, channel)| channel.as_str()).collect();
        sink_step(sink.subscribe(&names)).await?;
        listening.extend(chunk.iter().map(|(room, _)| room.clone()));
    }
    inner
        .stats
        .channels
        .store(listening.len() as u64, Ordering::Relaxed);
    // Every room held, subscribed just now or before (a direct-message room too: its channel
    // never stops).
    for room in inner.hub.held_rooms() {
        inner.fill(&room, false);
    }
    Ok(())
}

/// Follows the hub: subscribes to the rooms it took in, unsubscribes from those it dropped,
/// and fills each room taken in (again) once its channel is heard.
async fn follow<S: Store>(
    inner: &Shared<S>,
    sink: &mut ::redis::aio::PubSubSink,
    listening: &mut HashSet<String>,
    rooms: HashSet<String>,
) -> std::result::Result<(), String> {
    let (held, dropped): (Vec<String>, Vec<String>) =
        rooms.into_iter().partition(|room| inner.hub.has_room(room));
    let on: Vec<(String, String)> = held
        .iter()
        .filter(|room| !listening.contains(*room))
        .filter_map(|room| redis::room_channel(room).map(|channel| (room.clone(), channel)))
        .collect();
    for chunk in on.chunks(CHANNELS_PER_COMMAND) {
        let names: Vec<&str> = chunk.iter().map(|(_, channel)| channel.as_str()).collect();
        sink_step(sink.subscribe(&names)).await?;
        listening.extend(chunk.iter().map(|(room, _)| room.clone()));
    }
    let off: Vec<(String, String)> = dropped
        .into_iter()
        .filter(|room| listening.contains(room))
        .filter_map(|room| redis::room_channel(&room).map(|channel| (room, channel)))
        .collect();
    for chunk in off.chunks(CHANNELS_PER_COMMAND) {
        let names: Vec<&str> = chunk.iter().map(|(_, channel)| channel.as_str()).collect();
        sink_step(sink.unsubscribe(&names)).await?;
        for (room, _) in chunk {
            listening.remove(room);
        }
    }
    inner
        .stats
        .channels
        .store(listening.len() as u64, Ordering::Relaxed);
    // A room taken in, even one whose channel was never let go (dropped and taken in again at
    // once): what came between its state read and now is in the store.
    for room in held {
        inner.fill(&room, false);
    }
    Ok(())
}

/// One SUBSCRIBE or UNSUBSCRIBE, confirmed within the link's timeout.
async fn sink_step(
    step: impl std::future::Future<Output = ::redis::RedisResult<()>>,
) -> std::result::Result<(), String> {
    match tokio::time::timeout(redis::TIMEOUT, step).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// One message from another process: a chat message for a room held (or a direct message
/// to open), or a presence event.
fn hear<S: Store>(inner: &Arc<Shared<S>>, msg: &::redis::Msg) {
    match heard(msg, inner.link.node()) {
        Some(Heard::Message(chat)) => {
            inner.stats.received.fetch_add(1, Ordering::Relaxed);
            let bytes = msg.get_payload_bytes().len() as u64;
            inner
                .stats
                .received_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            let lag = crate::clock::now_ms().saturating_sub(chat.time).max(0);
            inner.stats.lag_ms.store(lag as u64, Ordering::Relaxed);
            let (room, seq) = (chat.room.clone(), chat.seq);
            if !inner.hub.has_room(&room) {
                open_dm(inner, chat);
                return;
            }
            inner.deliver(&room, Some((seq, &ServerMsg::chat(chat))));
        }
        Some(Heard::Presence(room, nick, _)) if room == ONLINE => {
            // A nick came online or went offline somewhere: told to who follows it here.
            inner.hub.nick_changed_elsewhere(&nick);
        }
        Some(Heard::Presence(room, nick, event)) => {
            inner.hub.tell_presence(&room, &nick, event);
        }
        Some(Heard::Typing(room, nick)) => inner.hub.tell_typing(&room, &nick),
        Some(Heard::Read(reader, room, seq)) => {
            inner.hub.tell_nick(&reader, &ServerMsg::Read { room, seq });
        }
        Some(Heard::Kick(nick, reason)) => {
            inner.hub.close_nick(&nick, &reason);
        }
        Some(Heard::Rename {
            from,
            to,
            at,
            floors,
        }) => {
            let n = inner
                .hub
                .renamed_elsewhere(&from, &to, at, Floors::new(floors));
            debug!(renamed = n, "a rename on another process");
        }
        None => {}
    }
}

/// A direct message for a pair this process has not opened: if one of the two is connected
/// here, the room is opened just before this message, which is then delivered, and filled.
fn open_dm<S: Store>(inner: &Arc<Shared<S>>, msg: ChatMessage) {
    let Some((a, b)) = dm_pair(&msg.room) else {
        return;
    };
    if !inner.hub.nick_online(&a) && !inner.hub.nick_online(&b) {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let (room, seq) = (msg.room.clone(), msg.seq);
        let epoch = match inner.store.room_state(&room).await {
            Ok(state) => state.epoch,
            Err(err) => {
                return warn!(cause = %err, room = %crate::shown::Shown(&room), "cannot open a direct-message room");
            }
        };
        let state = crate::store::RoomState::empty(epoch, seq - 1);
        inner.hub.open_room(&room, state, Some((a, b)));
        inner.deliver(&room, Some((seq, &ServerMsg::chat(msg))));
        // What came after it while the room was being opened.
        inner.fill(&room, false);
    });
}

/// Keeps this process's share of presence in Redis, says it is alive, and takes out the
/// members of processes that died.
async fn presence_loop<S: Store>(inner: Weak<Shared<S>>, mut rx: mpsc::UnboundedReceiver<Change>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    // The generation up to which Redis holds this process's share; None: put it in again.
    let mut synced: Option<u64> = None;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 4096) => if n == 0 { return },
            _ = heartbeat.tick() => {},
        }
        let Some(inner) = inner.upgrade() else { return };
        // Rooms idle for the room TTL leave memory (and their channels) even while nobody
        // joins anything here.
        inner.hub.sweep();
        if inner.hub.take_resync() {
            synced = None;
        }
        if synced.is_none() {
            let (generation, share) = inner.hub.presence_share();
            match inner.link.put_share(&share, false).await {
                Ok(()) => synced = Some(generation),
                Err(err) => debug!(cause = %err, "presence not in Redis yet; retrying"),
            }
        }
        let Some(generation) = synced else {
            batch.clear();
            continue;
        };
        inner.applied.send_if_modified(|g| {
            let newer = generation > *g;
            *g = (*g).max(generation);
            newer
        });
        let changes: Vec<Change> = batch
            .drain(..)
            .filter(|c| c.generation > generation)
            .collect();
        if !changes.is_empty() {
            match inner.link.apply(&changes).await {
                Ok(()) => {
                    let reached = changes.last().map_or(generation, |c| c.generation);
                    synced = Some(reached);
                    inner.applied.send_if_modified(|g| {
                        let newer = reached > *g;
                        *g = (*g).max(reached);
                        newer
                    });
                }
                Err(err) => {
                    debug!(cause = %err, "presence change failed; will put the share in again");
                    synced = None;
                }
            }
        }
        if inner.hub.watches_nicks()
            && let Err(err) = inner.link.watching().await
        {
            debug!(cause = %err, "cannot say that nicks are followed here");
        }
        match inner.link.beat(&inner.stats.expired_nodes).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                let told = why == redis::Revived::DeclaredDead;
                if told {
                    warn!(
                        "this process was declared dead by the others (stalled or cut off longer than {:?}): putting its members, nicks and presence back",
                        redis::ALIVE_TTL
                    );
                    inner.stats.revivals.fetch_add(1, Ordering::Relaxed);
                } else {
                    info!("Redis restarted empty: putting this process's members and nicks back");
                }
                // Now — with joins for the members the others were told had left — and once
                // more, silently, at the next beat: the process that declared this one dead
                // may still be taking its share out.
                let (generation, share) = inner.hub.presence_share();
                match inner.link.put_share(&share, told).await {
                    Ok(()) => synced = Some(generation),
                    Err(err) => debug!(cause = %err, "presence not back in Redis yet; retrying"),
                }
                inner.hub.resync_presence();
            }
            Err(err) => debug!(cause = %err, "heartbeat failed"),
        }
    }
}
