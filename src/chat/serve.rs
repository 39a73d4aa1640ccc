//! `nanachat serve` put together: the history store (and broker) its settings name, the chat
//! handler over them, on one listening port. What to open is decided from the settings in
//! [`ServeArgs::plan`](crate::settings::ServeArgs::plan); this only opens it, in order: bind
//! first (a bad address touches nothing), then the store, then the broker.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{Broker, Chat, ChatConfig};
use crate::Result;
use crate::server::{self, Listen, ServerConfig};
use crate::store::{MemoryStore, PgStore, SqliteStore, Store};
use crate::webhook::{Hooks, Outbox, WebhookConfig};

/// Where history is kept.
#[derive(Debug, Clone)]
pub enum History {
    /// A SQLite file in this directory (the default).
    File(PathBuf),
    /// Memory only: gone when the server stops.
    Memory,
    /// PostgreSQL, shared by every process pointed at it; with a broker (Redis URL), those
    /// processes serve as one chat.
    Postgres {
        /// `postgres://…`.
        url: String,
        /// `redis://…`.
        broker: Option<String>,
        /// The CA certificate (PEM) the database's certificate is verified with (TLS).
        store_ca: Option<Vec<u8>>,
        /// The CA certificate (PEM) a `rediss://` broker's certificate is verified with.
        broker_ca: Option<Vec<u8>>,
    },
}

/// Everything `nanachat serve` runs on, checked.
#[derive(Debug, Clone)]
pub struct ServePlan {
    /// Where it listens.
    pub listen: Listen,
    /// Limits of the server and its connections.
    pub server: ServerConfig,
    /// Limits and timers of the chat, and who may connect.
    pub chat: ChatConfig,
    /// Where history is kept.
    pub history: History,
    /// The webhooks to send, if any (a durable history only).
    pub webhooks: Option<WebhookConfig>,
}

/// Runs the chat server `plan` describes until `shutdown` is cancelled.
pub async fn serve(plan: ServePlan, shutdown: CancellationToken) -> Result<()> {
    let ServePlan {
        listen,
        server,
        chat,
        history,
        webhooks,
    } = plan;
    let hooks_stop = shutdown.clone();
    match history {
        History::Memory if webhooks.is_some() => Err(crate::Error::Config(
            "--webhook-url needs a durable outbox: --memory keeps none".into(),
        )),
        History::Memory => {
            on(&listen, server, chat, None, shutdown, async || {
                Ok(MemoryStore::new())
            })
            .await
        }
        History::File(dir) => {
            on(&listen, server, chat, None, shutdown, async move || {
                data_dir_not_a_file(&dir)?;
                let store = SqliteStore::open(&dir)?;
                tracing::info!(path = %store.path().display(), "history store");
                if let Some(config) = webhooks {
                    let hooks = Hooks::new(config.urls.clone());
                    store.hook(hooks.clone())?;
                    let outboxes = (0..config.urls.len())
                        .map(|_| store.outbox())
                        .collect::<Result<Vec<_>>>()?;
                    start_webhooks(outboxes, hooks, config, hooks_stop);
                }
                Ok(store)
            })
            .await
        }
        History::Postgres {
            url,
            broker,
            store_ca,
            broker_ca,
        } => {
            let broker = broker.map(|url| (url, broker_ca));
            on(&listen, server, chat, broker, shutdown, async move || {
                let store = PgStore::open_with(&url, store_ca.as_deref()).await?;
                if let Some(config) = webhooks {
                    let hooks = Hooks::new(config.urls.clone());
                    store.hook(hooks.clone())?;
                    let outboxes = (0..config.urls.len()).map(|_| store.outbox()).collect();
                    start_webhooks(outboxes, hooks, config, hooks_stop);
                }
                Ok(store)
            })
            .await
        }
    }
}

/// `--data-dir` names a directory, or a path to make one at: a file there (or in its way) is
/// said as such, not as the OS's `File exists`.
fn data_dir_not_a_file(dir: &std::path::Path) -> Result<()> {
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else {
        return Ok(());
    };
    if existing.is_dir() {
        return Ok(());
    }
    Err(crate::Error::Config(if existing == dir {
        format!(
            "--data-dir {} is a file, not a directory: give a directory (made if missing)",
            dir.display()
        )
    } else {
        format!(
            "--data-dir {}: {} is a file, not a directory",
            dir.display(),
            existing.display()
        )
    }))
}

/// Starts one delivery task per endpoint, each on its own outbox connection.
fn start_webhooks<O: Outbox>(
    outboxes: Vec<O>,
    hooks: std::sync::Arc<Hooks>,
    config: WebhookConfig,
    shutdown: CancellationToken,
) {
    for (index, outbox) in outboxes.into_iter().enumerate() {
        tokio::spawn(crate::webhook::deliver(
            outbox,
            hooks.clone(),
            index,
            config.clone(),
            shutdown.clone(),
        ));
    }
}

/// Re-reads a file of secrets (`what`, for the log: `["auth", "secrets"]`, `["api", "keys"]`)
/// on every SIGHUP with `reload`, which says how many it holds; open connections then check their tokens again
/// (`chat/token.rs`). A file that cannot be used is logged and the secrets in force stay.
fn reload_on_hangup(
    [area, what]: [&'static str; 2],
    file: String,
    reload: impl Fn() -> Result<usize> + Send + 'static,
) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match reload() {
                    Ok(n) => tracing::info!(%file, count = n, "{area}: {what} re-read (SIGHUP)"),
                    Err(err) => tracing::warn!(
                        %file,
                        cause = %err,
                        "{area}: cannot re-read the {what} (SIGHUP); the old ones stay in force"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (area, what, file, reload);
    Ok(())
}

/// Serves a chat over the store `open` opens (and the broker at `broker`, if any).
async fn on<S: Store>(
    listen: &Listen,
    server: ServerConfig,
    mut chat: ChatConfig,
    broker: Option<(String, Option<Vec<u8>>)>,
    shutdown: CancellationToken,
    open: impl AsyncFnOnce() -> Result<S>,
) -> Result<()> {
    let max_message_bytes = server.connection.max_message_bytes;
    let make = async move || {
        let store = open().await?;
        if let Some((url, ca)) = &broker {
            let mut broker = Broker::connect(url, ca.as_deref()).await?;
            // What a client is told, and what rooms do, must not depend on the process.
            broker
                .agree(&[
                    ("max-text-chars", chat.max_text_chars.to_string()),
                    ("max-message-bytes", max_message_bytes.to_string()),
                    ("presence-limit", chat.presence_limit.to_string()),
                ])
                .await?;
            tracing::info!(broker = %broker.shown(), "broker");
            chat.broker = Some(broker);
        }
        let retention = chat.retention;
        if !retention.keeps_all() {
            tracing::info!(
                max_age = ?retention.max_age,
                max_messages_per_room = ?retention.max_messages,
                every = ?chat.prune_interval,
                "retention: older history is pruned"
            );
        }
        if let Some(auth) = &chat.auth {
            tracing::info!("auth: a valid token is required (HS256, sub = nick)");
            if let Some(file) = auth.file() {
                let (file, auth) = (file.display().to_string(), auth.clone());
                reload_on_hangup(["auth", "secrets"], file, move || auth.reload())?;
            }
        } else {
            tracing::warn!(
                "no --auth-secret: the server is open, anyone may connect under any free nick"
            );
        }
        if let Some(keys) = &chat.api_keys {
            let (file, keys) = (keys.file().display().to_string(), keys.clone());
            tracing::info!(%file, "api: the HTTP API is on under /api/v1/");
            reload_on_hangup(["api", "keys"], file, move || keys.reload())?;
        }
        Ok(Chat::new(store, chat, max_message_bytes))
    };
    server::serve(listen, server, make, shutdown).await
}
