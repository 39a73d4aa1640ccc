//! The chat server (`nanachat serve`): a [`Handler`] that turns connections into members of
//! rooms. A `say` travels: session (parse, validate, rate limit) → [`Store::append`] (durable,
//! seq assigned) → `ack` to the sender and the message, rendered once per mode, to every member's
//! outbox via the hub (`chat/hub.rs`). Clients that ask for the `nanachat.v1` subprotocol speak JSON; the
//! rest get plain-text mode (see `docs/protocol.md`).

mod cluster;
mod directory;
mod history;
mod hub;
mod plain;
mod render;
mod session;
mod types;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::connection::{Asset, Connection, Handler};
use crate::protocol::{ErrorCode, SUBPROTOCOL};
use crate::store::Store;
use crate::{Error, Result};

pub use cluster::Broker;
pub use render::Mode;
pub use types::{valid_nick, valid_room};

/// The fan-out path without sockets, for the micro-benchmarks in `benches/`: not an API.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod bench_support;

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
    /// With a secret, only holders of a valid token may connect, each as its token's nick
    /// ([`crate::auth`]); without one the server is open.
    pub auth: Option<crate::auth::Auth>,
    /// With a broker (and a shared store), this process is one of several serving one chat:
    /// see `docs/scaling.md`.
    pub broker: Option<Broker>,
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
            auth: None,
            broker: None,
        }
    }
}

impl ChatConfig {
    /// Checks the values once, at start.
    pub fn validate(&self) -> Result<()> {
        if self.max_text_chars == 0 || self.max_rooms == 0 {
            return Err(Error::Config(
                "max text chars and max rooms must be above 0".into(),
            ));
        }
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            return Err(Error::Config("the rate and burst must be above 0".into()));
        }
        Ok(())
    }
}

/// The chat server's handler, over a history store.
#[derive(Debug)]
pub struct Chat<S> {
    inner: Arc<Inner<S>>,
}

#[derive(Debug)]
struct Inner<S> {
    store: Arc<S>,
    /// Members, rooms and delivery, alone or in a cluster.
    directory: directory::Directory<S>,
    config: ChatConfig,
    max_message_bytes: usize,
    next_id: AtomicU64,
    /// Error frames sent, by [`ErrorCode`] (indexed by its discriminant).
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl<S: Store> Chat<S> {
    /// A chat server storing history in `store`. `max_message_bytes` is the connection layer's
    /// limit, told to clients in `welcome`.
    ///
    /// With a broker in `config`, the cluster's tasks are started: call this inside a Tokio
    /// runtime.
    pub fn new(store: S, config: ChatConfig, max_message_bytes: usize) -> Self {
        let store = Arc::new(store);
        let directory =
            directory::Directory::new(store.clone(), config.presence_limit, config.broker.clone());
        let inner = Arc::new(Inner {
            store,
            directory,
            config,
            max_message_bytes,
            next_id: AtomicU64::new(1),
            errors: [const { AtomicU64::new(0) }; ErrorCode::ALL.len()],
        });
        Self { inner }
    }
}

impl<S: Store> Handler for Chat<S> {
    fn subprotocols(&self) -> &'static [&'static str] {
        &[SUBPROTOCOL]
    }

    fn assets(&self) -> &'static [Asset] {
        &ASSETS
    }

    fn authorize(
        &self,
        token: Option<&str>,
        subprotocol: Option<&'static str>,
    ) -> std::result::Result<(), String> {
        let Some(auth) = &self.inner.config.auth else {
            return Ok(());
        };
        match token {
            Some(token) => auth.verify(token, crate::auth::now_secs()).map(|_| ()),
            // A nanachat.v1 client may bring its token in `hello`; a plain-text one cannot.
            None if subprotocol == Some(SUBPROTOCOL) => Ok(()),
            None => Err("this server wants a token: add ?token=… to the URL".into()),
        }
    }

    async fn handle(&self, conn: &mut Connection) -> Result<()> {
        session::run(self.inner.clone(), conn).await
    }

    async fn drain(&self) {
        // Appends already queued are committed (and their tasks deliver and ack) before exit.
        if let Err(err) = self.inner.store.flush().await {
            tracing::warn!(cause = %err, "store flush on shutdown failed");
        }
        // The others see this process's members leave now, not when its heartbeat expires.
        if let Err(err) = self.inner.directory.withdraw().await {
            tracing::warn!(cause = %err, "taking this process's members out of Redis failed");
        }
    }

    fn write_metrics(&self, out: &mut String) {
        use crate::metrics::write_labelled;
        let (members, rooms, deliveries, slow_closes) = self.inner.directory.hub().counts();
        let get = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        crate::metrics::write_all(
            out,
            &[
                (
                    "nanachat_chat_connections",
                    "gauge",
                    "Chat connections past hello.",
                    members as u64,
                ),
                (
                    "nanachat_chat_rooms",
                    "gauge",
                    "Rooms held in memory.",
                    rooms as u64,
                ),
                (
                    "nanachat_deliveries_total",
                    "counter",
                    "Messages handed to members' outboxes.",
                    deliveries,
                ),
                (
                    "nanachat_slow_consumer_closes_total",
                    "counter",
                    "Members closed with 4001: their outbox was full.",
                    slow_closes,
                ),
            ],
        );
        write_labelled(
            out,
            "nanachat_errors_total",
            "counter",
            "Error frames sent, by code.",
            "code",
            ErrorCode::ALL.map(|c| (c.as_str(), get(&self.inner.errors[c as usize]))),
        );
        self.inner.store.write_metrics(out);
        self.inner.directory.write_metrics(out);
    }
}

/// The browser client (`web/`), embedded: `GET /` is the chat page.
static ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    Asset {
        path: "/about.txt",
        content_type: "text/plain; charset=utf-8",
        body: ABOUT,
    },
];

/// How to connect without a browser.
const ABOUT: &str = "nanachat chat server\n\n\
Connect a WebSocket client to this address (ws://HOST:PORT/ or /ws).\n\
- Ask for the subprotocol nanachat.v1 to speak JSON: see docs/protocol.md.\n\
- Ask for none and you are in plain-text mode: you join `lobby`, each line you send is said\n  \
there, /help lists the commands.\n\n\
/healthz answers ok; /metrics has Prometheus metrics.\n";
