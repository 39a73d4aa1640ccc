//! The cluster's link to Redis: what is kept under which key, the Lua steps that change it,
//! and one method per command the cluster's tasks send. Nothing here runs on its own; the
//! loops that decide when to call these are in `cluster/mod.rs`.
//!
//! Keys and channels:
//! - [`MESSAGES`]`:<room>`: a room's stored messages, published by the process that stored
//!   them; a process subscribes to the rooms it holds and no others ([`room_channel`]).
//! - [`MESSAGES`]: direct messages, which every process hears: a direct message must reach the
//!   process of either of its two before that process holds the room.
//! - [`PRESENCE`]: joins and leaves that changed who is in a room.
//! - `nanachat:room:<room>`: per nick, its connections in the room on all processes; the
//!   pseudo-room [`ONLINE`] (`*`) counts the nicks online, by case-folded nick
//!   ([`nick_key`]: `Alice` is `alice`).
//! - `nanachat:node:<id>`: one process's share of those counts (`room\nnick` → connections),
//!   so that its members can be taken out when it stops.
//! - `nanachat:alive:<id>` (TTL [`ALIVE_TTL`]) and the set `nanachat:nodes`: which processes
//!   there are and which still beat.
//! - `nanachat:nick:<nick>`: an open server's claim on a nick (case-folded), holding the key
//!   its connections share — as its SHA-256: Redis never holds a key — and the nick as they
//!   spell it (`sha256(key)\nNick`), so that the same key cannot take `Alice` while `alice`
//!   is online.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::{MultiplexedConnection, PubSub};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::super::types::{Change, ONLINE, nick_key};
use crate::backoff::Reconnecting;
use crate::protocol::{ChatMessage, Kind, PresenceEvent};
use crate::{Error, Result};

/// The channel of direct messages, and the prefix of each room's channel.
pub(crate) const MESSAGES: &str = "nanachat:messages";
/// A room's channel: `nanachat:messages:<room>`.
const ROOM_CHANNEL_PREFIX: &str = "nanachat:messages:";

/// The channel `room`'s messages go over: its own, or (a direct-message room) [`MESSAGES`],
/// which every process hears; `None` for the latter, which no process subscribes to alone.
pub(super) fn room_channel(room: &str) -> Option<String> {
    (!room.starts_with('@')).then(|| format!("{ROOM_CHANNEL_PREFIX}{room}"))
}
/// The channel of presence events.
pub(crate) const PRESENCE: &str = "nanachat:presence";
/// Set (for [`ALIVE_TTL`], refreshed every [`HEARTBEAT`]) while a connection on some process
/// follows nicks with `watch`: only then does a nick coming online or going offline anywhere
/// publish an event (room `*`) on [`PRESENCE`].
const WATCHING: &str = "nanachat:watching";
/// How long a process counts as alive after its last heartbeat.
pub(crate) const ALIVE_TTL: Duration = Duration::from_secs(10);
/// How often a process says it is alive and looks for dead ones.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a connection, a command or a subscription may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(3);

/// Adds `delta` to a nick's count in a room and to this process's share (never taking out
/// more than the share holds: a change that comes after the share was withdrawn is a no-op);
/// a count that reaches 0 is removed. If the change takes the nick's count from 0 to 1 (1 to 0)
/// and `tell` is set, publishes the join (leave) in the same step — while the room, counted
/// without the nick, has fewer nicks than the presence limit. For the room of nicks online,
/// also holds the nick's claim: set (to its key, for good) while it is online, deleted when not;
/// and, if `watching` names a key that exists (someone follows nicks), publishes the nick's
/// coming online (going offline) everywhere as a join (leave) of the room of nicks online.
/// KEYS: room hash, node hash. ARGV: nick, delta, "room\nnick", claim ("" for other rooms),
/// key, room, tell ("1" or "0"), presence limit, presence channel, watching ("" for other
/// rooms, or not to tell).
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
if ARGV[10] ~= '' and ((d == 1 and n == 1) or (d == -1 and n <= 0))
    and redis.call('EXISTS', ARGV[10]) == 1 then
  local online = 'leave'
  if d == 1 then online = 'join' end
  redis.call('PUBLISH', ARGV[9], cjson.encode({room = ARGV[6], nick = ARGV[1], event = online}))
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
/// nick no longer online anywhere loses its claim (and, while someone follows nicks, its going
/// offline is published). Returns how many nicks left rooms.
/// KEYS: node hash. ARGV: the room hash prefix, the room of nicks online, the claim prefix,
/// presence limit, presence channel ("" not to tell), the key set while nicks are followed.
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
      if ARGV[5] ~= '' and redis.call('EXISTS', ARGV[6]) == 1 then
        redis.call('PUBLISH', ARGV[5], cjson.encode({room = room, nick = nick, event = 'leave'}))
      end
    else
      gone = gone + 1
      if ARGV[5] ~= '' and redis.call('HLEN', key) < tonumber(ARGV[4]) then
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
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = redis.call('GET', KEYS[2])
if not since then
  redis.call('SET', KEYS[2], now)
  return -1
end
since = tonumber(since)
if since > 0 and now - since < tonumber(ARGV[3]) then return -1 end
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held ~= '' and held == ARGV[1] then return 1 end
return 0
";

/// Key of when Redis's state began, in ms ("0": a fresh cluster, nothing to protect). Missing
/// after Redis restarted empty: the first claim or heartbeat then starts the clock, and for
/// [`SETTLE`] claims answer "retry" while every live process puts its share (its nicks)
/// back — otherwise a stranger could take a connected user's nick in between.
const SINCE: &str = "nanachat:since";

/// How long after Redis restarted empty claims wait: a live process puts its share back
/// within its lease.
const SETTLE: Duration = ALIVE_TTL;

/// How long a claim lasts if no connection follows it (the process died in between).
const CLAIM_TTL: Duration = Duration::from_secs(30);

const ROOM_PREFIX: &str = "nanachat:room:";

/// What a claim on a nick holds: "" for none (nobody else may have it), else the key's SHA-256
/// and the nick as spelt, so that only the same key *and* spelling is granted it again. (Only
/// the hash: the store keeps keys salted and hashed, and Redis should not hold them either.)
fn claim_value(key: Option<&str>, nick: &str) -> String {
    key.map_or_else(String::new, |key| {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        format!(
            "{}\n{nick}",
            data_encoding::HEXLOWER.encode(digest.as_ref())
        )
    })
}
const CLAIM_PREFIX: &str = "nanachat:nick:";

/// A Redis server that processes share (`--broker redis://…`).
#[derive(Debug, Clone)]
pub struct Broker {
    client: redis::Client,
    shown: String,
    /// The settings every process of the cluster must share, as `(option, value)`: see
    /// [`Broker::agree`].
    agreed: Arc<Vec<(String, String)>>,
}

/// Key of the set of live processes.
const NODES: &str = "nanachat:nodes";

/// A banned nick's key (case-folded), holding the ban's reason and expiring with it.
const BAN_PREFIX: &str = "nanachat:ban:";

/// Why a process found itself missing from the live set at a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Revived {
    /// Another process declared it dead (it was stalled or cut off past the lease) and told
    /// everyone its members left.
    DeclaredDead,
    /// Redis restarted empty: nobody was told anything.
    RedisRestarted,
}

/// Key of the settings every process must share (a hash; it lives while processes beat).
const SETTINGS: &str = "nanachat:settings";

/// KEYS: the settings hash, [`SINCE`], the set of live processes. ARGV: TTL in ms, "start"
/// or "beat", then option, value, option, value… Puts them in if no process has, keeps them
/// alive; starts the clock of [`SINCE`] if Redis lost it (at the start of a fresh cluster,
/// with no live process, there is nothing to wait for: "0"). Returns what the cluster holds.
const AGREE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('EXISTS', KEYS[2]) == 0 then
  if ARGV[2] == 'start' and redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('SET', KEYS[2], '0')
  else
    local t = redis.call('TIME')
    redis.call('SET', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
";

impl Broker {
    /// Checks the URL and that the server answers now (a config error otherwise). A
    /// `rediss://` URL speaks TLS (rustls), verifying the server against `ca` (PEM) when
    /// given, else the system's roots.
    pub async fn connect(url: &str, ca: Option<&[u8]>) -> Result<Self> {
        let shown = crate::config::redact_url(url);
        let as_broker = format!("{shown} as the broker");
        let mut client = Self::parse_url(url)?;
        if let Some(ca) = ca {
            if !url.starts_with("rediss://") {
                return Err(Error::Config(format!(
                    "--broker-ca-file is for a rediss:// broker, not '{shown}'"
                )));
            }
            client = redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )
            .map_err(|err| Error::service(&as_broker, err))?;
        }
        let broker = Self {
            client,
            shown,
            agreed: Arc::default(),
        };
        let mut conn = broker
            .connection()
            .await
            .map_err(|err| Error::service(&as_broker, err))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|err| Error::service(&as_broker, err))?;
        Ok(broker)
    }

    /// Reads `url` as a Redis address (`redis://`, `rediss://`, `redis+unix://`), without
    /// connecting.
    pub fn parse_url(url: &str) -> Result<redis::Client> {
        let shown = crate::config::redact_url(url);
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(Error::Config(format!(
                "--broker takes a redis://… URL, not '{shown}'"
            )));
        }
        redis::Client::open(url)
            .map_err(|err| Error::service(format!("{shown} as the broker"), err))
    }

    /// Checks `settings` (`(option, value)`, e.g. `("max-text-chars", "4000")`) against those
    /// of the processes already serving through this broker, or sets them if there are none.
    /// A process that disagrees is refused (a config error naming the option and both
    /// values). The settings stay in Redis while any process beats, and are put back after a
    /// Redis restart.
    pub async fn agree(&mut self, settings: &[(&str, String)]) -> Result<()> {
        self.agreed = Arc::new(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        );
        let mut conn = self
            .connection()
            .await
            .map_err(|err| Error::service(format!("{} as the broker", self.shown), err))?;
        let held: Vec<String> = agree_cmd(&self.agreed, true)
            .query_async(&mut conn)
            .await
            .map_err(|err| Error::service(format!("{} as the broker", self.shown), err))?;
        match disagreement(&self.agreed, &held) {
            None => Ok(()),
            Some((option, ours, theirs)) => Err(Error::Config(format!(
                "--{option} is {ours} on this process but {theirs} on the others serving through {}: every process of a cluster must agree (docs/scaling.md)",
                self.shown
            ))),
        }
    }

    /// The server's address, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A new subscription to [`MESSAGES`] (direct messages) and [`PRESENCE`]; the cause if it
    /// cannot be made. Rooms' channels are added by the caller.
    pub(super) async fn subscribe(&self) -> std::result::Result<PubSub, String> {
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&[MESSAGES, PRESENCE]).await?;
            redis::RedisResult::Ok(pubsub)
        };
        match tokio::time::timeout(TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
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

/// The script call that agrees on `settings`.
fn agree_cmd(settings: &[(String, String)], at_start: bool) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(AGREE)
        .arg(3)
        .arg(SETTINGS)
        .arg(SINCE)
        .arg(NODES)
        .arg(ALIVE_TTL.as_millis() as u64)
        .arg(if at_start { "start" } else { "beat" });
    for (option, value) in settings {
        cmd.arg(option).arg(value);
    }
    cmd
}

/// The first of `ours` whose value `held` (a flat HGETALL answer) has otherwise:
/// `(option, ours, theirs)`.
fn disagreement(ours: &[(String, String)], held: &[String]) -> Option<(String, String, String)> {
    let held: std::collections::HashMap<&str, &str> = held
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.as_str(), kv.get(1)?.as_str())))
        .collect();
    ours.iter().find_map(|(option, value)| {
        let theirs = held.get(option.as_str())?;
        (*theirs != value).then(|| (option.clone(), value.clone(), (*theirs).to_owned()))
    })
}

/// This process's command connection to the broker, made again with back-off when it breaks,
/// and the commands the cluster sends on it.
#[derive(Debug)]
pub(super) struct Link {
    broker: Broker,
    conn: Reconnecting<MultiplexedConnection>,
    /// This process's id among the others.
    node: String,
    /// Rooms with this many nicks or more get no presence events.
    presence_limit: usize,
    /// When the last heartbeat went through: past [`ALIVE_TTL`] the others may have declared
    /// this process dead, and it grants no nick claims until a heartbeat goes through again.
    last_beat: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Link {
    /// A link for process `node`; nothing is sent until the first command.
    pub(super) fn new(broker: Broker, node: String, presence_limit: usize) -> Self {
        let conn = Reconnecting::new(format!("Redis at {}", broker.shown));
        Self {
            broker,
            conn,
            node,
            presence_limit,
            last_beat: std::sync::Mutex::new(None),
        }
    }

    /// This process's id among the others.
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// The broker this link is to.
    pub(super) fn broker(&self) -> &Broker {
        &self.broker
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
                Err(err.into())
            }
        }
    }

    /// Publishes stored messages in one round trip, draining `batch`.
    pub(super) async fn publish(&self, batch: &mut Vec<ChatMessage>) -> Result<()> {
        let mut pipe = redis::pipe();
        for msg in batch.drain(..) {
            let payload = Published {
                node: self.node.clone(),
                kind: msg.kind,
                msg,
            };
            if let Ok(json) = serde_json::to_string(&payload) {
                let channel = room_channel(&payload.msg.room);
                let channel = channel.as_deref().unwrap_or(MESSAGES);
                pipe.cmd("PUBLISH").arg(channel).arg(json).ignore();
            }
        }
        self.run(&pipe).await
    }

    /// Publishes that `nick` is typing in `room`, on the room's channel.
    pub(super) async fn publish_typing(&self, room: &str, nick: &str) -> Result<()> {
        let note = TypingNote {
            node: self.node.clone(),
            room: room.to_owned(),
            typing: nick.to_owned(),
        };
        let json = serde_json::to_string(&note)?;
        let channel = room_channel(room);
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(channel.as_deref().unwrap_or(MESSAGES))
            .arg(json)
            .ignore();
        self.run(&pipe).await
    }

    /// Publishes that `reader` has read `room` up to `seq`, on the channel every process
    /// hears (the reader's connections may be on any of them).
    pub(super) async fn publish_read(&self, reader: &str, room: &str, seq: u64) -> Result<()> {
        let note = ReadNote {
            node: self.node.clone(),
            room: room.to_owned(),
            reader: reader.to_owned(),
            seq,
        };
        let json = serde_json::to_string(&note)?;
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(MESSAGES).arg(json).ignore();
        self.run(&pipe).await
    }

    /// Publishes that every connection of `nick` is to be closed with `reason`, on the
    /// channel every process hears; with `ban`, first keeps the ban (its reason) in Redis for
    /// that long, where every process looks when the nick connects.
    pub(super) async fn publish_kick(
        &self,
        nick: &str,
        reason: &str,
        ban: Option<std::time::Duration>,
    ) -> Result<()> {
        let note = KickNote {
            node: self.node.clone(),
            kick: nick.to_owned(),
            reason: reason.to_owned(),
        };
        let json = serde_json::to_string(&note)?;
        let mut pipe = redis::pipe();
        if let Some(ban) = ban {
            pipe.cmd("SET")
                .arg(format!("{BAN_PREFIX}{}", nick_key(nick)))
                .arg(reason)
                .arg("PX")
                .arg(ban.as_millis().max(1) as u64)
                .ignore();
        }
        pipe.cmd("PUBLISH").arg(MESSAGES).arg(json).ignore();
        self.run(&pipe).await
    }

    /// Publishes that a user renamed itself from `from` to `to` at `at` (ms since the epoch),
    /// with the floors of `to`'s direct-message rooms, on the channel every process hears.
    pub(super) async fn publish_rename(
        &self,
        from: &str,
        to: &str,
        at: i64,
        floors: Vec<(String, u64)>,
    ) -> Result<()> {
        let note = RenameNote {
            node: self.node.clone(),
            rename: from.to_owned(),
            to: to.to_owned(),
            at,
            floors,
        };
        let json = serde_json::to_string(&note)?;
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(MESSAGES).arg(json).ignore();
        self.run(&pipe).await
    }

    /// Lifts `nick`'s ban; whether there was one.
    pub(super) async fn unban(&self, nick: &str) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{BAN_PREFIX}{}", nick_key(nick)));
        let (gone,): (u64,) = self.run(&pipe).await?;
        Ok(gone > 0)
    }

    /// The reason `nick` is banned, and for how many more milliseconds; `None` if it is not.
    pub(super) async fn banned(&self, nick: &str) -> Result<Option<(String, u64)>> {
        let key = format!("{BAN_PREFIX}{}", nick_key(nick));
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (reason, left): (Option<String>, i64) = self.run(&pipe).await?;
        Ok(reason.map(|reason| (reason, left.max(0) as u64)))
    }

    /// The public rooms with members on any process, each with how many nicks are in it, by
    /// name. Walks the room hashes with `SCAN` (a room with no member has none), so it is for
    /// an operator's listing, not a hot path.
    pub(super) async fn rooms(&self) -> Result<Vec<(String, usize)>> {
        let (since, time): (Option<i64>, (i64, i64)) = self.run(&self.settle_pipe()).await?;
        self.settled(since, time)?;
        let mut names = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{ROOM_PREFIX}*"))
                .arg("COUNT")
                .arg(1000);
            let ((next, keys),): ((u64, Vec<String>),) = self.run(&pipe).await?;
            names.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(ROOM_PREFIX).map(str::to_owned))
                    .filter(|room| room != ONLINE && !room.starts_with('@')),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        names.sort();
        names.dedup();
        let mut rooms = Vec::with_capacity(names.len());
        for chunk in names.chunks(1000) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("HLEN").arg(format!("{ROOM_PREFIX}{room}"));
            }
            let counts: Vec<usize> = self.run(&pipe).await?;
            rooms.extend(chunk.iter().cloned().zip(counts).filter(|(_, n)| *n > 0));
        }
        Ok(rooms)
    }

    /// The nicks in a room on every process, sorted.
    pub(super) async fn members(&self, room: &str) -> Result<Vec<String>> {
        let mut pipe = self.settle_pipe();
        pipe.cmd("HKEYS").arg(format!("{ROOM_PREFIX}{room}"));
        let (since, time, mut nicks): (Option<i64>, (i64, i64), Vec<String>) =
            self.run(&pipe).await?;
        self.settled(since, time)?;
        nicks.sort();
        Ok(nicks)
    }

    /// A pipeline that starts by reading [`SINCE`] and Redis's clock, for [`Link::settled`].
    fn settle_pipe(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(SINCE).cmd("TIME");
        pipe
    }

    /// Whether what Redis holds of presence can be believed: not in the [`SETTLE`] after it
    /// restarted empty, while the live processes put their shares back (an answer then would
    /// be short: `who` without them, `no_such_nick` for them). An error says to retry.
    fn settled(&self, since: Option<i64>, (secs, micros): (i64, i64)) -> Result<()> {
        let now = secs * 1000 + micros / 1000;
        let settling = match since {
            None => true,
            Some(since) => since > 0 && now - since < SETTLE.as_millis() as i64,
        };
        if settling {
            return Err(Error::Store(crate::error::StoreError::Unreachable(
                format!(
                    "Redis at {}, just restarted: presence is being put back (for up to {SETTLE:?})",
                    self.broker.shown
                ),
            )));
        }
        Ok(())
    }

    /// Whether Redis answers and holds a presence that can be believed (see
    /// [`Link::settled`]).
    pub(super) async fn ping_settled(&self) -> Result<()> {
        let pipe = self.settle_pipe();
        let (since, time): (Option<i64>, (i64, i64)) = self.run(&pipe).await?;
        self.settled(since, time)
    }

    /// Reserves `nick` on every process for connections with `key` (none: this one only).
    /// Returns whether it was granted.
    pub(super) async fn claim(&self, nick: &str, key: Option<&str>) -> Result<bool> {
        let last = *self.last_beat.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() >= ALIVE_TTL) {
            // Stalled, or cut off from Redis: the others may have taken this process's
            // members out, and a claim granted now could be taken from under it.
            return Err(Error::Store(crate::error::StoreError::Unreachable(
                format!(
                    "Redis at {} (no heartbeat for {:?})",
                    self.broker.shown,
                    last.map(|at| at.elapsed()).unwrap_or_default()
                ),
            )));
        }
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(CLAIM)
            .arg(2)
            .arg(format!("{CLAIM_PREFIX}{}", nick_key(nick)))
            .arg(SINCE)
            .arg(claim_value(key, nick))
            .arg(CLAIM_TTL.as_millis() as u64)
            .arg(SETTLE.as_millis() as u64);
        let (granted,): (i64,) = self.run(&pipe).await?;
        if granted < 0 {
            return Err(Error::Store(crate::error::StoreError::Unreachable(
                format!(
                    "Redis at {}, just restarted: nicks are being put back (for up to {SETTLE:?})",
                    self.broker.shown
                ),
            )));
        }
        Ok(granted == 1)
    }

    /// Whether anybody is connected as `nick` on any process.
    pub(super) async fn online(&self, nick: &str) -> Result<bool> {
        let mut pipe = self.settle_pipe();
        pipe.cmd("HEXISTS")
            .arg(format!("{ROOM_PREFIX}{ONLINE}"))
            .arg(nick_key(nick));
        let (since, time, online): (Option<i64>, (i64, i64), bool) = self.run(&pipe).await?;
        self.settled(since, time)?;
        Ok(online)
    }

    /// Takes a process's members out of every room; returns how many nicks left rooms.
    pub(super) async fn withdraw(&self, node: &str) -> Result<u64> {
        let mut pipe = redis::pipe();
        pipe.add_command(self.withdraw_cmd(node, true));
        let (gone,): (u64,) = self.run(&pipe).await?;
        Ok(gone)
    }

    /// The script call that takes `node`'s share out, publishing the leaves if `tell`.
    fn withdraw_cmd(&self, node: &str, tell: bool) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(WITHDRAW)
            .arg(1)
            .arg(node_key(node))
            .arg(ROOM_PREFIX)
            .arg(ONLINE)
            .arg(CLAIM_PREFIX)
            .arg(self.presence_limit)
            .arg(if tell { PRESENCE } else { "" })
            .arg(WATCHING);
        cmd
    }

    /// Puts this process's share in, replacing what Redis held of it, in one transaction (no
    /// moment without its nicks' claims). Silent, except with `tell`, after this process was
    /// declared dead and its members announced as left: then their joins are published.
    pub(super) async fn put_share(&self, share: &[Change], tell: bool) -> Result<()> {
        let mut pipe = self.changes_pipe(share, tell);
        let mut whole = redis::pipe();
        whole
            .atomic()
            .add_command(self.withdraw_cmd(&self.node, false))
            .ignore();
        for cmd in pipe.cmd_iter() {
            whole.add_command(cmd.clone()).ignore();
        }
        pipe.clear();
        self.run::<()>(&whole).await
    }

    /// Says that a connection here follows nicks (`watch`): for the next [`ALIVE_TTL`], nicks
    /// coming online and going offline on any process are published.
    pub(super) async fn watching(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(WATCHING)
            .arg(1)
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64)
            .ignore();
        self.run(&pipe).await
    }

    /// Applies joins and leaves; each publishes its event if it changed who is in a room.
    pub(super) async fn apply(&self, changes: &[Change]) -> Result<()> {
        self.run(&self.changes_pipe(changes, true)).await
    }

    fn changes_pipe(&self, changes: &[Change], tell: bool) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for c in changes {
            let online = c.room == ONLINE;
            // The nicks online are counted, and claimed, by identity; rooms show them as typed.
            let (nick, claim) = if online {
                let key = nick_key(&c.nick);
                (key.clone(), format!("{CLAIM_PREFIX}{key}"))
            } else {
                (c.nick.clone(), String::new())
            };
            pipe.cmd("EVAL")
                .arg(CHANGE)
                .arg(2)
                .arg(format!("{ROOM_PREFIX}{}", c.room))
                .arg(node_key(&self.node))
                .arg(&nick)
                .arg(c.delta)
                .arg(format!("{}\n{nick}", c.room))
                .arg(claim)
                .arg(claim_value(c.key.as_deref(), &c.nick))
                .arg(&c.room)
                .arg(if tell && !online { "1" } else { "0" })
                .arg(self.presence_limit)
                .arg(PRESENCE)
                .arg(if tell && online { WATCHING } else { "" })
                .ignore();
        }
        pipe
    }

    /// Says this process is alive; takes out the share of every process that is not,
    /// counting each in `expired`. True when this process itself had been taken out (it was
    /// stalled, or cut off, longer than [`ALIVE_TTL`]): its share must be put in again.
    pub(super) async fn beat(&self, expired: &AtomicU64) -> Result<Option<Revived>> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(alive_key(&self.node))
            .arg(1)
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(NODES)
            .arg(&self.node)
            .cmd("SMEMBERS")
            .arg(NODES);
        // Before the agreement puts it back: gone means Redis lost its state.
        pipe.cmd("EXISTS").arg(SINCE);
        pipe.add_command(agree_cmd(&self.broker.agreed, false));
        let (added, nodes, kept, held): (i64, Vec<String>, bool, Vec<String>) =
            self.run(&pipe).await?;
        if let Some((option, ours, theirs)) = disagreement(&self.broker.agreed, &held) {
            // Redis lost them and a process with other settings put its own first.
            warn!(%option, %ours, %theirs, "the cluster's settings disagree with this process's");
        }
        let first = self
            .last_beat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(std::time::Instant::now())
            .is_none();
        // Not in the set of live processes any more: another one found this one dead.
        let revived = (added == 1 && !first).then_some(if kept {
            Revived::DeclaredDead
        } else {
            Revived::RedisRestarted
        });
        let others: Vec<&String> = nodes.iter().filter(|n| **n != self.node).collect();
        if others.is_empty() {
            return Ok(revived);
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("EXISTS").arg(alive_key(node));
        }
        let alive: Vec<bool> = self.run(&pipe).await?;
        for (node, alive) in others.into_iter().zip(alive) {
            if alive {
                continue;
            }
            // Whoever removes it from the set takes its members out, once.
            let mut pipe = redis::pipe();
            pipe.cmd("SREM").arg(NODES).arg(node);
            let (removed,): (i64,) = self.run(&pipe).await?;
            if removed == 1 {
                let gone = self.withdraw(node).await?;
                warn!(%node, left = gone, "a process stopped answering: its members left");
                expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(revived)
    }
}

fn node_key(node: &str) -> String {
    format!("nanachat:node:{node}")
}

fn alive_key(node: &str) -> String {
    format!("nanachat:alive:{node}")
}

/// What goes over [`MESSAGES`] and the rooms' channels.
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    node: String,
    msg: ChatMessage,
    /// A message or an event (the message's own `kind` is not written).
    #[serde(default)]
    kind: Kind,
}

/// A member typing, on the room's channel (never stored).
#[derive(Debug, Serialize, Deserialize)]
struct TypingNote {
    node: String,
    room: String,
    typing: String,
}

/// A known user's read position, on [`MESSAGES`] (never stored here: the store keeps it).
#[derive(Debug, Serialize, Deserialize)]
struct ReadNote {
    node: String,
    room: String,
    reader: String,
    seq: u64,
}

/// Every connection of a nick to be closed (the HTTP API's disconnect), on [`MESSAGES`].
#[derive(Debug, Serialize, Deserialize)]
struct KickNote {
    node: String,
    kick: String,
    reason: String,
}

/// A user's connections to take another nick (a `nick` request on one process), on
/// [`MESSAGES`].
#[derive(Debug, Serialize, Deserialize)]
struct RenameNote {
    node: String,
    /// The nick it had.
    rename: String,
    /// The nick it took.
    to: String,
    /// When (ms since the epoch): connections that took `rename` later keep it.
    at: i64,
    /// Where the new nick's reading of its direct-message rooms starts.
    floors: Vec<(String, u64)>,
}

/// What a message channel carries: a stored message or event, a typing note, a read
/// position, a disconnect or a rename.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OnRoom {
    Stored(Published),
    Typing(TypingNote),
    Read(ReadNote),
    Kick(KickNote),
    Rename(RenameNote),
}

/// What goes over [`PRESENCE`].
#[derive(Debug, Serialize, Deserialize)]
struct PresenceNote {
    room: String,
    nick: String,
    event: PresenceEvent,
}

/// What a subscription heard, from another process.
#[derive(Debug)]
pub(super) enum Heard {
    /// A message another process stored.
    Message(ChatMessage),
    /// A join or leave that changed who is in a room.
    Presence(String, String, PresenceEvent),
    /// A member of a room typing: (room, nick).
    Typing(String, String),
    /// A known user's read position: (reader, room, seq).
    Read(String, String, u64),
    /// Every connection of a nick to be closed: (nick, reason).
    Kick(String, String),
    /// A user took another nick.
    Rename {
        /// The nick it had.
        from: String,
        /// The nick it took.
        to: String,
        /// When (ms since the epoch).
        at: i64,
        /// Where the new nick's reading of its direct-message rooms starts.
        floors: Vec<(String, u64)>,
    },
}

/// What `msg` says, unless it is this process's own message or not one of ours.
pub(super) fn heard(msg: &redis::Msg, node: &str) -> Option<Heard> {
    let payload = msg.get_payload_bytes();
    match msg.get_channel_name() {
        channel if channel == MESSAGES || channel.starts_with(ROOM_CHANNEL_PREFIX) => {
            match serde_json::from_slice::<OnRoom>(payload).ok()? {
                OnRoom::Stored(mut p) => {
                    p.msg.kind = p.kind;
                    (p.node != node).then_some(Heard::Message(p.msg))
                }
                OnRoom::Typing(t) => (t.node != node).then_some(Heard::Typing(t.room, t.typing)),
                OnRoom::Read(r) => (r.node != node).then_some(Heard::Read(r.reader, r.room, r.seq)),
                OnRoom::Kick(k) => (k.node != node).then_some(Heard::Kick(k.kick, k.reason)),
                OnRoom::Rename(r) => (r.node != node).then_some(Heard::Rename {
                    from: r.rename,
                    to: r.to,
                    at: r.at,
                    floors: r.floors,
                }),
            }
        }
        PRESENCE => {
            let p = serde_json::from_slice::<PresenceNote>(payload).ok()?;
            Some(Heard::Presence(p.room, p.nick, p.event))
        }
        _ => None,
    }
}
