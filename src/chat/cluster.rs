//! Several `nanachat serve` processes as one chat service (`--broker redis://…`, with
//! `--store postgres://…`): Redis pub/sub carries what one process stored to the others, and
//! Redis hashes hold who is in which room on every process.
//!
//! Messages. The process that stores a message delivers it to its own members and publishes
//! it on [`MESSAGES`]; every other process delivers it to its members through the hub, which
//! keeps each room in seq order. Pub/sub is at-most-once: a process that is cut off from Redis
//! misses what was published meanwhile. Two things bring it back, both from the store, which
//! has every seq (a seq is committed only after all seqs before it):
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
//! (leave) on [`PRESENCE`], and every process tells its members. `who` reads the room's hash.
//! Each process refreshes `nanachat:alive:<id>` (TTL [`ALIVE_TTL`]) every [`HEARTBEAT`]; a
//! process that finds another's key gone takes that process's share out of the rooms and
//! publishes the leaves: the members of a process that died are gone within TTL + heartbeat.
//! After Redis comes back, each process puts its share in again from what its hub holds.
//! Each change and the event it causes are one Lua step, so a process that stops between
//! them cannot leave a count changed and its event untold.
//!
//! Nicks. On an open server a nick is claimed in `nanachat:nick:<nick>` before it is used,
//! with the key its connections share; its count in the room of nicks online (`*`) then holds
//! the claim, and the last of its connections anywhere releases it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::hub::Hub;
use super::types::{Change, ONLINE, chat_message, dm_pair};
use crate::backoff::Reconnecting;
use crate::protocol::{ChatMessage, PresenceEvent, ServerMsg};
use crate::store::{MAX_PAGE, Page, Store};
use crate::{Error, Result};

/// The channel of stored messages.
pub(crate) const MESSAGES: &str = "nanachat:messages";
/// The channel of presence events.
pub(crate) const PRESENCE: &str = "nanachat:presence";
/// How long a process counts as alive after its last heartbeat.
pub(crate) const ALIVE_TTL: Duration = Duration::from_secs(10);
/// How often a process says it is alive and looks for dead ones.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a jump waits for the missing message to come the usual way before reading it.
const GRACE: Duration = Duration::from_millis(30);
/// How long a back-fill that failed (the store is down) waits before it is tried again.
const FILL_RETRY: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(3);

/// Adds `delta` to a nick's count in a room and to this process's share (never taking out
/// more than the share holds: a change that comes after the share was withdrawn is a no-op);
/// a count that reaches 0 is removed. If the change takes the nick's count from 0 to 1 (1 to 0)
/// and `tell` is set, publishes the join (leave) in the same step — while the room, counted
/// without the nick, has fewer nicks than the presence limit. For the room of nicks online,
/// also holds the nick's claim: set (to its key, for good) while it is online, deleted when not.
/// KEYS: room hash, node hash. ARGV: nick, delta, "room\nnick", claim ("" for other rooms),
/// key, room, tell ("1" or "0"), presence limit, presence channel.
const CHANGE: &str = r"
local d = tonumber(ARGV[2])
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
if have + d < 0 then return 0 end
local mine = redis.call('HINCRBY', KEYS[2], ARGV[3], d)
if mine <= 0 then redis.call('HDEL', KEYS[2], ARGV[3]) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], d)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
if ARGV[4] ~= '' then
  if n <= 0 then redis.call('DEL', ARGV[4])
  elseif d > 0 then redis.call('SET', ARGV[4], ARGV[5]) end
end
local event = nil
if d == 1 and n == 1 then event = 'join' elseif d == -1 and n == 0 then event = 'leave' end
if event and ARGV[7] == '1' then
  local others = redis.call('HLEN', KEYS[1])
  if event == 'join' then others = others - 1 end
  if others < tonumber(ARGV[8]) then
    redis.call('PUBLISH', ARGV[9], cjson.encode({room = ARGV[6], nick = ARGV[1], event = event}))
  end
end
return n
";

/// Takes a process's whole share out of the rooms and deletes it, publishing the leave of
/// every nick that is then in a room no more (while the room is under the presence limit); a
/// nick no longer online anywhere loses its claim. Returns how many nicks left rooms.
/// KEYS: node hash. ARGV: the room hash prefix, the room of nicks online, the claim prefix,
/// presence limit, presence channel.
const WITHDRAW: &str = r"
local share = redis.call('HGETALL', KEYS[1])
local gone = 0
for i = 1, #share, 2 do
  local sep = string.find(share[i], '\n', 1, true)
  local room = string.sub(share[i], 1, sep - 1)
  local nick = string.sub(share[i], sep + 1)
  local key = ARGV[1] .. room
  local n = redis.call('HINCRBY', key, nick, -tonumber(share[i + 1]))
  if n <= 0 then
    redis.call('HDEL', key, nick)
    if room == ARGV[2] then
      redis.call('DEL', ARGV[3] .. nick)
    else
      gone = gone + 1
      if redis.call('HLEN', key) < tonumber(ARGV[4]) then
        redis.call('PUBLISH', ARGV[5], cjson.encode({room = room, nick = nick, event = 'leave'}))
      end
    end
  end
end
redis.call('DEL', KEYS[1])
return gone
";

/// Reserves a nick on every process: free, it is claimed (for [`CLAIM_TTL`], until its first
/// connection makes it for good); held, it is granted only to the same key (none: to nobody).
/// KEYS: the claim. ARGV: the key ("" for none), the TTL in ms. Returns 1 if granted.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held ~= '' and held == ARGV[1] then return 1 end
return 0
";

/// How long a claim lasts if no connection follows it (the process died in between).
const CLAIM_TTL: Duration = Duration::from_secs(30);

const ROOM_PREFIX: &str = "nanachat:room:";
const CLAIM_PREFIX: &str = "nanachat:nick:";

/// A Redis server that processes share (`--broker redis://…`).
#[derive(Debug, Clone)]
pub struct Broker {
    client: redis::Client,
    shown: String,
}

impl Broker {
    /// Checks the URL and that the server answers now (a config error otherwise).
    pub async fn connect(url: &str) -> Result<Self> {
        let shown = crate::config::redact_url(url);
        let client = redis::Client::open(url)
            .map_err(|err| Error::Config(format!("--broker {shown}: {err}")))?;
        let broker = Self { client, shown };
        let mut conn = broker.connection().await.map_err(|err| {
            Error::Config(format!("cannot use {} as the broker: {err}", broker.shown))
        })?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|err| {
                Error::Config(format!("cannot use {} as the broker: {err}", broker.shown))
            })?;
        Ok(broker)
    }

    /// The server's address, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// A command connection, made again with back-off when it breaks.
#[derive(Debug)]
struct Link {
    broker: Broker,
    conn: Reconnecting<MultiplexedConnection>,
}

impl Link {
    fn new(broker: Broker) -> Self {
        let conn = Reconnecting::new(format!("Redis at {}", broker.shown));
        Self { broker, conn }
    }

    /// Runs a pipeline; a failure drops the connection so that the next use makes a new one.
    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let connect = || self.broker.connection();
        let mut conn = self.conn.get(|_| true, connect).await?;
        match pipe.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(err) => {
                if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                    self.conn.reset().await;
                }
                Err(Error::Store(format!("Redis: {err}")))
            }
        }
    }
}

/// What goes over [`MESSAGES`].
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    node: String,
    msg: ChatMessage,
}

/// What goes over [`PRESENCE`].
#[derive(Debug, Serialize, Deserialize)]
struct PresenceNote {
    room: String,
    nick: String,
    event: PresenceEvent,
}

/// Counters, for metrics.
#[derive(Debug, Default)]
struct Stats {
    published: AtomicU64,
    received: AtomicU64,
    filled: AtomicU64,
    resubscribes: AtomicU64,
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
    node: String,
    link: Link,
    hub: Arc<Hub>,
    store: Arc<S>,
    publish: mpsc::UnboundedSender<ChatMessage>,
    fill: mpsc::UnboundedSender<(String, bool)>,
    stats: Stats,
    presence_limit: usize,
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
        let node = format!("{:x}-{}", crate::store::new_epoch(), std::process::id());
        info!(broker = %broker.shown, %node, "cluster: this process is one of several");
        let shared = Arc::new(Shared {
            node,
            link: Link::new(broker),
            hub,
            store,
            publish,
            fill,
            stats: Stats::default(),
            presence_limit,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(publish_loop(weak.clone(), publish_rx));
        tokio::spawn(fill_loop(weak.clone(), fill_rx));
        tokio::spawn(subscribe_loop(weak.clone()));
        tokio::spawn(presence_loop(weak, changes_rx));
        Self { shared }
    }

    /// Ends an append (or hands on another process's message): the hub delivers it in seq
    /// order, and a gap left behind it is filled from the store.
    pub(crate) fn deliver(&self, room: &str, stored: Option<(u64, &ServerMsg)>) {
        self.shared.deliver(room, stored);
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
        let mut pipe = redis::pipe();
        pipe.cmd("HKEYS").arg(format!("{ROOM_PREFIX}{room}"));
        let (mut nicks,): (Vec<String>,) = self.shared.link.run(&pipe).await?;
        nicks.sort();
        Ok(nicks)
    }

    /// Reserves `nick` on every process for connections with `key` (none: this one only).
    /// Returns whether it was granted.
    pub(crate) async fn claim(&self, nick: &str, key: Option<&str>) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(CLAIM)
            .arg(1)
            .arg(format!("{CLAIM_PREFIX}{nick}"))
            .arg(key.unwrap_or(""))
            .arg(CLAIM_TTL.as_millis() as u64);
        let (granted,): (bool,) = self.shared.link.run(&pipe).await?;
        Ok(granted)
    }

    /// A prefix for guests' nicks that no other process uses (but by chance: claims decide).
    pub(crate) fn guest_prefix(&self) -> String {
        let node = &self.shared.node;
        format!("guest-{}", &node[node.len().saturating_sub(4)..])
    }

    /// Whether anybody is connected as `nick` on any process.
    pub(crate) async fn online(&self, nick: &str) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("HEXISTS")
            .arg(format!("{ROOM_PREFIX}{}", ONLINE))
            .arg(nick);
        let (online,): (bool,) = self.shared.link.run(&pipe).await?;
        Ok(online)
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
            ],
        );
    }

    /// Takes this process's members out of every room (graceful shutdown).
    pub(crate) async fn withdraw(&self) -> Result<()> {
        self.shared.withdraw_node(&self.shared.node).await.map(drop)
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

    /// Takes a process's members out of every room; returns how many nicks left rooms.
    async fn withdraw_node(&self, node: &str) -> Result<u64> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(WITHDRAW)
            .arg(1)
            .arg(node_key(node))
            .arg(ROOM_PREFIX)
            .arg(ONLINE)
            .arg(CLAIM_PREFIX)
            .arg(self.presence_limit)
            .arg(PRESENCE);
        let (gone,): (u64,) = self.link.run(&pipe).await?;
        Ok(gone)
    }
}

fn node_key(node: &str) -> String {
    format!("nanachat:node:{node}")
}

fn alive_key(node: &str) -> String {
    format!("nanachat:alive:{node}")
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
        let cluster = &*inner;
        let mut pipe = redis::pipe();
        let n = batch.len() as u64;
        for msg in batch.drain(..) {
            let payload = Published {
                node: cluster.node.clone(),
                msg,
            };
            if let Ok(json) = serde_json::to_string(&payload) {
                pipe.cmd("PUBLISH").arg(MESSAGES).arg(json).ignore();
            }
        }
        match cluster.link.run::<()>(&pipe).await {
            Ok(()) => {
                cluster.stats.published.fetch_add(n, Ordering::Relaxed);
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
                warn!(cause = %err, %room, "back-fill failed; retrying");
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
        for record in page {
            if record.seq < next {
                continue;
            }
            let seq = record.seq;
            let msg = ServerMsg::Message(chat_message(record));
            inner.hub.deliver(room, Some((seq, &msg)));
            inner.stats.filled.fetch_add(1, Ordering::Relaxed);
        }
        if !full {
            return Ok(());
        }
    }
}

/// Receives what the other processes publish; on every (re)subscribe, fills every room held
/// and has the presence task put this process's share in again.
async fn subscribe_loop<S: Store>(inner: Weak<Shared<S>>) {
    let mut backoff = crate::backoff::LINK;
    let mut first = true;
    loop {
        let broker = match inner.upgrade() {
            Some(inner) => inner.link.broker.clone(),
            None => return,
        };
        let subscribed = async {
            let mut pubsub = broker.client.get_async_pubsub().await?;
            pubsub.subscribe(&[MESSAGES, PRESENCE]).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                let cause = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_owned(),
                };
                debug!(%cause, "cannot subscribe to Redis; retrying");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        backoff.succeeded();
        {
            let Some(inner) = inner.upgrade() else { return };
            let cluster = &*inner;
            if !first {
                info!(broker = %broker.shown, "Redis is back: filling every room from the store");
                cluster.stats.resubscribes.fetch_add(1, Ordering::Relaxed);
            }
            for room in inner.hub.held_rooms() {
                cluster.fill(&room, false);
            }
            inner.hub.resync_presence();
        }
        first = false;
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            let Some(inner) = inner.upgrade() else { return };
            let payload = msg.get_payload_bytes();
            match msg.get_channel_name() {
                MESSAGES => {
                    let Ok(p) = serde_json::from_slice::<Published>(payload) else {
                        continue;
                    };
                    let cluster = &*inner;
                    if p.node == cluster.node {
                        continue;
                    }
                    cluster.stats.received.fetch_add(1, Ordering::Relaxed);
                    let (room, seq) = (p.msg.room.clone(), p.msg.seq);
                    if !inner.hub.has_room(&room) {
                        open_dm(&inner, p.msg);
                        continue;
                    }
                    inner.deliver(&room, Some((seq, &ServerMsg::Message(p.msg))));
                }
                PRESENCE => {
                    if let Ok(p) = serde_json::from_slice::<PresenceNote>(payload) {
                        inner.hub.tell_presence(&p.room, &p.nick, p.event);
                    }
                }
                _ => {}
            }
        }
        warn!(broker = %broker.shown, "lost the Redis subscription; reconnecting");
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
            Err(err) => return warn!(cause = %err, %room, "cannot open a direct-message room"),
        };
        let state = crate::store::RoomState {
            epoch,
            last_seq: seq - 1,
        };
        inner.hub.open_room(&room, state, Some((a, b)));
        inner.deliver(&room, Some((seq, &ServerMsg::Message(msg))));
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
        let cluster = &*inner;
        if inner.hub.take_resync() {
            synced = None;
        }
        if synced.is_none() {
            let (generation, share) = inner.hub.presence_share();
            match put_share(cluster, &share).await {
                Ok(()) => synced = Some(generation),
                Err(err) => debug!(cause = %err, "presence not in Redis yet; retrying"),
            }
        }
        let Some(generation) = synced else {
            batch.clear();
            continue;
        };
        let changes: Vec<Change> = batch
            .drain(..)
            .filter(|c| c.generation > generation)
            .collect();
        if !changes.is_empty() {
            match apply(cluster, &changes).await {
                Ok(()) => synced = Some(changes.last().map_or(generation, |c| c.generation)),
                Err(err) => {
                    debug!(cause = %err, "presence change failed; will put the share in again");
                    synced = None;
                }
            }
        }
        if let Err(err) = beat(cluster).await {
            debug!(cause = %err, "heartbeat failed");
        }
    }
}

/// Puts this process's share in, replacing what Redis held of it (no events).
async fn put_share<S: Store>(cluster: &Shared<S>, share: &[Change]) -> Result<()> {
    cluster.withdraw_node(&cluster.node).await?;
    if !share.is_empty() {
        cluster
            .link
            .run::<()>(&changes_pipe(cluster, share, false))
            .await?;
    }
    Ok(())
}

/// Applies joins and leaves; each publishes its event if it changed who is in a room.
async fn apply<S>(cluster: &Shared<S>, changes: &[Change]) -> Result<()> {
    cluster
        .link
        .run(&changes_pipe(cluster, changes, true))
        .await
}

fn changes_pipe<S>(cluster: &Shared<S>, changes: &[Change], tell: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for c in changes {
        let online = c.room == ONLINE;
        let claim = if online {
            format!("{CLAIM_PREFIX}{}", c.nick)
        } else {
            String::new()
        };
        pipe.cmd("EVAL")
            .arg(CHANGE)
            .arg(2)
            .arg(format!("{ROOM_PREFIX}{}", c.room))
            .arg(node_key(&cluster.node))
            .arg(&c.nick)
            .arg(c.delta)
            .arg(format!("{}\n{}", c.room, c.nick))
            .arg(claim)
            .arg(c.key.as_deref().unwrap_or(""))
            .arg(&c.room)
            .arg(if tell && !online { "1" } else { "0" })
            .arg(cluster.presence_limit)
            .arg(PRESENCE)
            .ignore();
    }
    pipe
}

/// Says this process is alive; takes out the share of every process that is not.
async fn beat<S: Store>(cluster: &Shared<S>) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(alive_key(&cluster.node))
        .arg(1)
        .arg("PX")
        .arg(ALIVE_TTL.as_millis() as u64)
        .ignore()
        .cmd("SADD")
        .arg("nanachat:nodes")
        .arg(&cluster.node)
        .ignore()
        .cmd("SMEMBERS")
        .arg("nanachat:nodes");
    let (nodes,): (Vec<String>,) = cluster.link.run(&pipe).await?;
    let others: Vec<&String> = nodes.iter().filter(|n| **n != cluster.node).collect();
    if others.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for node in &others {
        pipe.cmd("EXISTS").arg(alive_key(node));
    }
    let alive: Vec<bool> = cluster.link.run(&pipe).await?;
    for (node, alive) in others.into_iter().zip(alive) {
        if alive {
            continue;
        }
        // Whoever removes it from the set takes its members out, once.
        let mut pipe = redis::pipe();
        pipe.cmd("SREM").arg("nanachat:nodes").arg(node);
        let (removed,): (i64,) = cluster.link.run(&pipe).await?;
        if removed == 1 {
            let gone = cluster.withdraw_node(node).await?;
            warn!(%node, left = gone, "a process stopped answering: its members left");
            cluster.stats.expired_nodes.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
