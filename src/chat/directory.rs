//! The one seam between a session and the rest of the chat: whether this process serves the
//! chat alone or as one of several (a Redis broker) is decided here, once, when the server
//! starts; the session asks the same questions either way and never branches on it.
//!
//! Alone, the hub is the whole truth: who is online, who is in a room, and a stored message
//! needs only delivering. In a cluster, Redis also knows every other process's members, a
//! stored message is published to the others, and a gap in a room's seqs is filled from the
//! store (see `cluster/mod.rs`).

use std::sync::Arc;

use super::cluster::{Broker, Cluster};
use super::hub::Hub;
use super::types::{ConnId, Floors, nick_key};
use crate::Result;
use crate::protocol::{ChatMessage, ErrorCode, ServerMsg};
use crate::store::Store;

/// This process's members and rooms, and (in a cluster) its part of the whole.
#[derive(Debug)]
pub(super) struct Directory<S> {
    hub: Arc<Hub>,
    store: Arc<S>,
    /// This process's part of a cluster of several.
    cluster: Option<Cluster<S>>,
    /// Alone: the nicks banned (case-folded), each with its reason and when it ends (ms
    /// since the epoch). In a cluster, Redis keeps them.
    bans: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

impl<S: Store> Directory<S> {
    /// A directory over `store`; with a broker, the cluster's tasks are started (call this
    /// inside a Tokio runtime). Rooms above `presence_limit` members send no presence events;
    /// rooms idle for `room_ttl` leave memory.
    pub(super) fn new(
        store: Arc<S>,
        presence_limit: usize,
        room_ttl: std::time::Duration,
        broker: Option<Broker>,
    ) -> Self {
        let hub = Arc::new(Hub::new(presence_limit, room_ttl));
        let cluster =
            broker.map(|broker| Cluster::start(broker, presence_limit, hub.clone(), store.clone()));
        Self {
            hub,
            store,
            cluster,
            bans: Default::default(),
        }
    }

    /// Whether the store and (in a cluster) the broker answer now, each within a second or
    /// two; `Err` names the one that does not.
    pub(super) async fn ready(&self) -> std::result::Result<(), String> {
        const PROBE: std::time::Duration = std::time::Duration::from_secs(2);
        let store = tokio::time::timeout(PROBE, self.store.ping()).await;
        match store {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(format!("store: {err}")),
            Err(_) => return Err(format!("store: no answer within {PROBE:?}")),
        }
        if let Some(cluster) = &self.cluster {
            match tokio::time::timeout(PROBE, cluster.ready()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(format!("broker: {why}")),
                Err(_) => return Err(format!("broker: no answer within {PROBE:?}")),
            }
        }
        Ok(())
    }

    /// This process's connections, nicks and rooms: the same alone or in a cluster.
    pub(super) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Ends an append that failed (`None`) or hands on a stored message: the hub delivers it
    /// in seq order; in a cluster, a gap left behind it is filled from the store.
    pub(super) fn deliver(&self, room: &str, stored: Option<(u64, &ServerMsg)>) {
        match &self.cluster {
            Some(cluster) => cluster.deliver(room, stored),
            None => {
                self.hub.deliver(room, stored);
            }
        }
    }

    /// Ends an append that stored `message` in `room`: delivers it here (a duplicate was
    /// delivered when first stored) and, in a cluster, publishes it to the other processes.
    pub(super) fn publish(&self, room: &str, message: ChatMessage, duplicate: bool) {
        // Only a cluster needs a copy to publish.
        let copy = self
            .cluster
            .as_ref()
            .filter(|_| !duplicate)
            .map(|cluster| (cluster, message.clone()));
        let seq = message.seq;
        let msg = ServerMsg::chat(message);
        self.deliver(room, (!duplicate).then_some((seq, &msg)));
        if let Some((cluster, message)) = copy {
            cluster.publish(message);
        }
    }

    /// In a cluster, waits (a second at most) until what this process's hub did so far — a
    /// nick connected, say — is in Redis, where the other processes look; alone, at once.
    pub(super) async fn presence_applied(&self) {
        if let Some(cluster) = &self.cluster {
            let generation = self.hub.presence_generation();
            cluster
                .applied(generation, std::time::Duration::from_secs(1))
                .await;
        }
    }

    /// `nick` is typing in `room` (the hub told this process's members): in a cluster, the
    /// other processes holding the room are told too.
    pub(super) fn typing(&self, room: &str, nick: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.typing(room, nick);
        }
    }

    /// A known user's read position is stored: its connections here are told, and in a
    /// cluster those on the other processes too.
    pub(super) fn read(&self, reader: &str, room: &str, seq: u64) {
        let read = ServerMsg::Read {
            room: room.to_owned(),
            seq,
        };
        self.hub.tell_nick(reader, &read);
        if let Some(cluster) = &self.cluster {
            cluster.read(reader, room, seq);
        }
    }

    /// Makes sure the hub holds `room`, loading its state from the store the first time.
    pub(super) async fn open_room(&self, room: &str, pair: Option<(String, String)>) -> Result<()> {
        if !self.hub.hold_room(room) {
            let stored = self.store.room_state(room).await?;
            let dm = pair.is_some();
            self.hub.open_room(room, stored, pair);
            // Another process may have stored one more since the read, and published it
            // before this process held the room. A room's channel is filled once it is
            // subscribed to (the cluster follows the hub); a direct message's is always heard.
            if let Some(cluster) = self.cluster.as_ref().filter(|_| dm) {
                cluster.fill(room, true);
            }
        }
        Ok(())
    }

    /// The nicks in `room`, sorted, for one of its members (`Ok(Err(code))` for anybody
    /// else). In a cluster, Redis knows every process's members of a public room; a DM
    /// room's two are told by the local list.
    pub(super) async fn members(
        &self,
        id: ConnId,
        room: &str,
    ) -> Result<std::result::Result<Vec<String>, ErrorCode>> {
        let local = match self.hub.members(id, room) {
            Ok(nicks) => nicks,
            Err(code) => return Ok(Err(code)),
        };
        match &self.cluster {
            Some(cluster) if !room.starts_with('@') => cluster.members(room).await.map(Ok),
            _ => Ok(Ok(local)),
        }
    }

    /// Reserves `nick` for connections with `key` on every process of a cluster (alone, the
    /// hub decides when the connection registers). False: taken.
    pub(super) async fn claim(&self, nick: &str, key: Option<&str>) -> Result<bool> {
        match &self.cluster {
            Some(cluster) => cluster.claim(nick, key).await,
            None => Ok(true),
        }
    }

    /// A connection here follows nicks (`watch`): in a cluster, nicks coming online and going
    /// offline on the other processes are told to this one from now on. Alone, nothing to do.
    pub(super) async fn watching_nicks(&self) -> Result<()> {
        match &self.cluster {
            Some(cluster) => cluster.watching().await,
            None => Ok(()),
        }
    }

    /// Whether anybody is connected as `nick`, here or (in a cluster) on another process.
    pub(super) async fn nick_online(&self, nick: &str) -> Result<bool> {
        if self.hub.nick_online(nick) {
            return Ok(true);
        }
        match &self.cluster {
            Some(cluster) => cluster.online(nick).await,
            None => Ok(false),
        }
    }

    /// A guest's nick for connection `id`, one no other process gives out (a claim still
    /// decides: a user may have picked it).
    pub(super) fn guest_name(&self, id: ConnId) -> String {
        match &self.cluster {
            Some(cluster) => format!("{}-{id}", cluster.guest_prefix()),
            None => format!("guest-{id}"),
        }
    }

    /// Closes every connection of `nick` (here and on every process) with 4004 and `reason`;
    /// with `ban`, refuses the nick for that long. How many connections this process closed.
    pub(super) async fn kick(
        &self,
        nick: &str,
        reason: &str,
        ban: Option<std::time::Duration>,
    ) -> Result<usize> {
        match &self.cluster {
            // The ban is in Redis before any connection is closed: none comes back in between.
            Some(cluster) => cluster.kick(nick, reason, ban).await?,
            None => {
                if let Some(ban) = ban {
                    let until = crate::clock::now_ms().saturating_add(ban.as_millis() as i64);
                    let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
                    bans.retain(|_, (_, end)| *end > crate::clock::now_ms());
                    bans.insert(nick_key(nick), (reason.to_owned(), until));
                }
            }
        }
        Ok(self.hub.close_nick(nick, reason))
    }

    /// Tells the other processes that a user renamed itself from `from` to `to` at `at` (ms
    /// since the epoch): its connections there take `to` too, reading its direct messages
    /// above `floors`. Nothing to do on a lone process.
    pub(super) async fn renamed(
        &self,
        from: &str,
        to: &str,
        at: i64,
        floors: &Floors,
    ) -> Result<()> {
        match &self.cluster {
            Some(cluster) => cluster.rename(from, to, at, floors).await,
            None => Ok(()),
        }
    }

    /// Lifts `nick`'s ban (on every process); whether there was one.
    pub(super) async fn unban(&self, nick: &str) -> Result<bool> {
        match &self.cluster {
            Some(cluster) => cluster.unban(nick).await,
            None => {
                let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
                Ok(bans
                    .remove(&nick_key(nick))
                    .is_some_and(|(_, until)| until > crate::clock::now_ms()))
            }
        }
    }

    /// Why `nick` may not connect now and for how many more seconds (rounded up), if it is
    /// banned.
    pub(super) async fn banned(&self, nick: &str) -> Result<Option<(String, u64)>> {
        let left_ms = match &self.cluster {
            Some(cluster) => cluster.banned(nick).await?,
            None => {
                let bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
                bans.get(&nick_key(nick)).and_then(|(reason, until)| {
                    let left = until - crate::clock::now_ms();
                    (left > 0).then(|| (reason.clone(), left as u64))
                })
            }
        };
        Ok(left_ms.map(|(reason, ms)| (reason, ms.div_ceil(1000))))
    }

    /// The public rooms with members, with how many nicks each has, by name: this process's
    /// alone, every process's in a cluster.
    pub(super) async fn rooms(&self) -> Result<Vec<(String, usize)>> {
        match &self.cluster {
            Some(cluster) => cluster.rooms().await,
            None => {
                let mut rooms = self.hub.rooms();
                rooms.sort();
                Ok(rooms)
            }
        }
    }

    /// The nicks in `room` on every process, sorted (for the HTTP API: no member check).
    pub(super) async fn room_members(&self, room: &str) -> Result<Vec<String>> {
        match &self.cluster {
            Some(cluster) if !room.starts_with('@') => cluster.members(room).await,
            _ => Ok(self.hub.room_members(room)),
        }
    }

    /// On shutdown: the other processes see this process's members leave now, not when its
    /// heartbeat expires. Alone, nothing to do.
    pub(super) async fn withdraw(&self) -> Result<()> {
        match &self.cluster {
            Some(cluster) => cluster.withdraw().await,
            None => Ok(()),
        }
    }

    /// Appends the cluster's counters (Prometheus text format); alone, none.
    pub(super) fn write_metrics(&self, out: &mut String) {
        if let Some(cluster) = &self.cluster {
            cluster.write_metrics(out);
        }
    }
}
