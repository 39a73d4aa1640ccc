//! nanachat: a real-time chat core over WebSocket, as one library and one binary.
//!
//! # Layout
//!
//! - [`auth`]: HS256 tokens (`--auth-secret`, `nanachat token`): who may connect as whom.
//! - `bench`: the load generator (`nanachat bench`): worker processes, HDR latency, reports
//!   (feature `bench`, on by default).
//! - [`clock`]: the wall clock in seconds, milliseconds and microseconds, and the seed's
//!   timestamp text.
//! - [`chat`]: the chat server (`nanachat serve`): sessions, rooms, presence, DMs, resume.
//! - [`connection`]: one WebSocket connection — reading half, writer task fed by a bounded
//!   [`Outbox`](connection::Outbox), pings, idle timeout, close codes — and the [`Handler`]
//!   trait that says what a connection does. Every mode stands on it.
//! - [`metrics`]: counters and the Prometheus text behind `/metrics`.
//! - [`outbox`]: a connection's bounded send queue, shared by its senders, drained by its writer.
//! - [`gate`]: the close gate under a connection: the peer's close is answered only after every
//!   reply queued before it is written.
//! - [`protocol`]: the `nanachat.v1` wire types (JSON), shared by server, clients and tools.
//! - [`rate`]: the token bucket behind rate limits (the server's, and the client's own pacing).
//! - [`server`]: the accept loop on one port (axum on hyper): WebSocket upgrade on any path,
//!   `/healthz`, `/readyz`, connection limit, two-phase graceful shutdown.
//! - [`dial`]: opening a WebSocket from our side, into the same [`Connection`].
//! - [`demo`]: the seed's full-duplex pair (`Server.py` / `Client.py`) as a handler and a client.
//! - [`echo`]: the echo handler, the conformance target.
//! - [`store`]: durable history behind a small trait — SQLite (WAL, group commit) or memory.
//! - [`transport`]: the byte stream under a WebSocket, with a read-ahead layer that keeps idle
//!   connections cheap.
//! - [`client`]: the terminal client (`nanachat connect`): interactive or scripted, reconnects
//!   and resumes without a gap or a repeat.
//! - [`config`]: limits and timers with their defaults, validated once.
//! - [`settings`]: what a user sets, declared once: flags, `NANACHAT_*` variables and config
//!   file keys in one struct per group, merged flag > variable > file > default.
//! - [`webhook`]: signed webhooks delivered at least once from the store's outbox.
//! - [`cli`]: the `nanachat` command line, each command's arguments.
//! - [`error`]: the error type and its mapping to close codes.

pub mod auth;
mod backoff;
#[cfg(feature = "bench")]
pub mod bench;
pub mod chat;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
pub mod demo;
pub mod dial;
pub mod echo;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod rate;
pub mod server;
pub mod settings;
pub mod shown;
pub mod store;
pub mod transport;
pub mod webhook;

pub use connection::{Connection, Handler};
pub use error::{Error, Result};
