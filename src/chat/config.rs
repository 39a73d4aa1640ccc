//! The chat layer's settings, checked once at start. Apart from the server that uses them so
//! that every part of `chat/` can read them without importing the handler.

use std::time::Duration;

use super::cluster::Broker;
use crate::store::Retention;
use crate::{Error, Result};

/// Limits and timers of the chat layer; the connection's own are in
/// [`ConnectionConfig`](crate::config::ConnectionConfig).
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Longest text of one message, in characters.
    pub max_text_chars: usize,
    /// Messages per second a connection may send, sustained.
    pub rate_per_sec: u32,
    /// Messages a connection may send in a burst.
    pub rate_burst: u32,
    /// Refusals in a row for rate after which the connection is closed with 1008.
    pub rate_strikes: u32,
    /// Rooms one connection may be in.
    pub max_rooms: usize,
    /// Interval of the app-level heartbeat (`tick`); zero sends none.
    pub heartbeat_interval: Duration,
    /// Rooms with more members than this get no join/leave `presence` events (members ask
    /// with `who`): each event goes to every member, so filling a room of n costs n² otherwise,
    /// and a crowd joining at once must not send a member more events than its outbox holds.
    pub presence_limit: usize,
    /// A room with no member and no traffic for this long leaves memory (it is read from the
    /// store again when someone comes back).
    pub room_ttl: Duration,
    /// With a secret, only holders of a valid token may connect, each as its token's nick
    /// ([`crate::auth`]); without one the server is open.
    pub auth: Option<crate::auth::Auth>,
    /// How long a connection whose token expired may take to `refresh` it before it is
    /// closed with 4003 (meanwhile every other request is refused with `token_expired`).
    pub token_grace: Duration,
    /// With a broker (and a shared store), this process is one of several serving one chat:
    /// see `docs/scaling.md`.
    pub broker: Option<Broker>,
    /// What history keeps (`--retention-age`, `--retention-messages`); the default keeps
    /// everything. With a rule, a task prunes the rest at start and every `prune_interval`.
    pub retention: Retention,
    /// How often retention prunes (a minute; tests make it short).
    pub prune_interval: Duration,
    /// With keys, the HTTP API under `/api/v1/` is on (`--api-key-file`); without, off.
    pub api_keys: Option<std::sync::Arc<super::ApiKeys>>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            rate_per_sec: 20,
            rate_burst: 40,
            rate_strikes: 20,
            max_rooms: 32,
            heartbeat_interval: Duration::from_secs(25),
            presence_limit: 100,
            room_ttl: Duration::from_secs(300),
            auth: None,
            token_grace: Duration::from_secs(30),
            broker: None,
            retention: Retention::default(),
            prune_interval: Duration::from_secs(60),
            api_keys: None,
        }
    }
}

impl ChatConfig {
    /// Checks the values once, at start.
    pub fn validate(&self) -> Result<()> {
        let counts = [
            ("--max-text-chars", self.max_text_chars as u64),
            ("--max-rooms", self.max_rooms as u64),
            ("--rate", u64::from(self.rate_per_sec)),
            ("--burst", u64::from(self.rate_burst)),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(Error::Config(format!("{flag} must be above 0")));
        }
        if self.room_ttl < Duration::from_secs(1) {
            return Err(Error::Config(
                "--room-ttl must be at least 1s (a room nobody is in would be read again at every join)".into(),
            ));
        }
        if self.retention.max_age.is_some_and(|age| age.is_zero()) {
            return Err(Error::Config(
                "--retention-age must be above 0 (leave it out to keep history)".into(),
            ));
        }
        if self.retention.max_messages == Some(0) {
            return Err(Error::Config(
                "--retention-messages must be above 0 (leave it out to keep history)".into(),
            ));
        }
        if !self.retention.keeps_all() && self.prune_interval.is_zero() {
            return Err(Error::Config("the prune interval must be above 0".into()));
        }
        Ok(())
    }
}
