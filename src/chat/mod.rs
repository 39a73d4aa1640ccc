//! The chat server (`nanachat serve`): a [`Handler`] that turns connections into members of
//! rooms. A `say` travels: session (parse, validate, rate limit) → [`Store::append`] (durable,
//! seq assigned) → `ack` to the sender and the message, rendered once per mode, to every member's
//! outbox via the hub (`chat/hub.rs`). Clients that ask for the `nanachat.v1` subprotocol speak
//! JSON; the rest get plain-text mode (see `docs/protocol.md`).
//!
//! Its parts depend on each other one way only: `session.rs` (one connection; `plain.rs`,
//! `history.rs` and `nicks.rs` are more of it) → `directory.rs` (the one seam: alone or one of several) →
//! `cluster/` (Redis) → `hub.rs` (this process's members and rooms) → `render.rs`; the session
//! sends every reply that carries a list through `list.rs` (→ `render.rs`), which fits it into
//! one frame; every part may use `types.rs`, and `config.rs` (the settings) names the
//! cluster's `Broker`. `retention.rs` is the task that prunes old history (it uses the store
//! only); `token.rs` is a connection's token over time (expiry, grace, re-read secrets).

mod api;
mod cluster;
mod config;
mod directory;
mod history;
mod hub;
mod list;
mod nicks;
mod plain;
mod render;
mod retention;
mod serve;
mod session;
mod token;
mod types;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::Result;
use crate::connection::{Asset, Connection, Handler};
use crate::protocol::{ErrorCode, SUBPROTOCOL};
use crate::store::Store;

pub use api::{ApiKeys, OPENAPI};
pub use cluster::Broker;
pub use config::ChatConfig;
pub use render::Mode;
pub use serve::{History, ServePlan, serve};
pub use types::{valid_nick, valid_room};

/// The fan-out path without sockets, for the micro-benchmarks in `benches/`: not an API.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod bench_support;

/// The chat server's handler, over a history store.
#[derive(Debug)]
pub struct Chat<S> {
    inner: Arc<session::Inner<S>>,
    pruner: retention::Pruner,
}

impl<S: Store> Chat<S> {
    /// A chat server storing history in `store`. `max_message_bytes` is the connection layer's
    /// limit, told to clients in `welcome`.
    ///
    /// With a broker in `config`, the cluster's tasks are started, and with a retention rule
    /// the task that prunes history: call this inside a Tokio runtime.
    pub fn new(store: S, config: ChatConfig, max_message_bytes: usize) -> Self {
        let store = Arc::new(store);
        let pruner = retention::Pruner::start(&store, &config);
        let directory = directory::Directory::new(
            store.clone(),
            config.presence_limit,
            config.room_ttl,
            config.broker.clone(),
        );
        let inner = Arc::new(session::Inner {
            store,
            directory,
            config,
            max_message_bytes,
            next_id: AtomicU64::new(1),
            live_started: std::sync::atomic::AtomicBool::new(false),
            errors: [const { AtomicU64::new(0) }; ErrorCode::ALL.len()],
        });
        Self { inner, pruner }
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
            Some(token) => verify_token(auth, token).map(|_| ()),
            // A nanachat.v1 client may bring its token in `hello`; a plain-text one cannot.
            None if subprotocol == Some(SUBPROTOCOL) => Ok(()),
            None => Err("this server wants a token: add ?token=… to the URL".into()),
        }
    }

    async fn handle(&self, conn: &mut Connection) -> Result<()> {
        session::run(self.inner.clone(), conn).await
    }

    fn api(&self, body_timeout: std::time::Duration) -> Option<axum::Router> {
        api::router(&self.inner, body_timeout)
    }

    async fn ready(&self) -> std::result::Result<(), String> {
        self.inner.directory.ready().await
    }

    async fn drain(&self) {
        // No more pruning: the store is this server's to close.
        self.pruner.stop().await;
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
                (
                    "nanachat_retention_pruned_total",
                    "counter",
                    "Messages deleted by retention (--retention-age, --retention-messages).",
                    self.pruner.pruned(),
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

/// Checks a token (signature, algorithm, expiry) and that its `sub` is a nick by the rules of
/// `hello` — a plain-text client is named by it unasked. The error says why, fit to send back.
fn verify_token(
    auth: &crate::auth::Auth,
    token: &str,
) -> std::result::Result<crate::auth::Claims, String> {
    let claims = auth.verify(token, crate::auth::now_secs())?;
    if !valid_nick(&claims.sub) {
        return Err(
            "the token's sub is not a nick (1 to 32 letters, digits, - or _): mint another".into(),
        );
    }
    Ok(claims)
}

/// The browser client (`web/`) and the JavaScript client library it runs on
/// (`clients/js/nanachat.js`, also for any page of the application's own), embedded: `GET /`
/// is the chat page. Its icon is one SVG, at `/favicon.svg` (linked from the page) and at
/// `/favicon.ico`, where browsers and tools look unasked.
static ASSETS: [Asset; 7] = [
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
        path: "/nanachat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../clients/js/nanachat.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: FAVICON,
    },
    Asset {
        path: "/favicon.ico",
        content_type: "image/svg+xml",
        body: FAVICON,
    },
    Asset {
        path: "/about.txt",
        content_type: "text/plain; charset=utf-8",
        body: ABOUT,
    },
];

/// The browser client's icon: a speech bubble.
const FAVICON: &str = include_str!("../../web/favicon.svg");

/// How to connect without a browser.
const ABOUT: &str = "nanachat chat server\n\n\
Connect a WebSocket client to this address (ws://HOST:PORT/ or /ws).\n\
- Ask for the subprotocol nanachat.v1 to speak JSON: see docs/protocol.md.\n\
- Ask for none and you are in plain-text mode: you join `lobby`, each line you send is said\n  \
there, /help lists the commands.\n\n\
/healthz answers ok while the process runs; /readyz answers 200 while the store and the broker\n\
are reachable (503 naming which is not); /metrics has Prometheus metrics.\n";
