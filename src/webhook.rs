//! Webhooks (`--webhook-url`): what happened in rooms, sent as signed JSON to HTTP endpoints,
//! at least once, from a durable outbox in the store (docs/webhooks.md).
//!
//! The path of an event: the store's writer, in the transaction that appends a message (or an
//! edit, a delete, a reaction), also writes one outbox row per endpoint naming it (room, seq,
//! kind) — so what is committed has its event committed with it, and `kill -9` loses none. A
//! known user's membership beginning or ending (and a room's first member, or last) is written
//! the same way, in the membership change's transaction.
//! One [`deliver`] task per endpoint reads the pending rows in the order they were committed,
//! renders each from the record as it stands *now* (a deleted message's text is gone from
//! its events too: the outbox keeps no copy of any text), signs it, POSTs it, and settles the
//! row: delivered (deleted), refused (a 4xx other than 408/429: deleted and counted), too old
//! (`--webhook-max-age`: deleted and counted), or to be tried again after an exponential
//! back-off. A room whose oldest pending event is waiting holds the room's later events back:
//! events arrive in seq order per room.
//!
//! In a cluster (PostgreSQL), each delivery round of an endpoint runs under a transaction-level
//! advisory lock on that endpoint: one process at a time delivers an endpoint's events, and a
//! round's outcome is committed before the next round (of any process) reads the outbox.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::protocol::Kind;
use crate::store::outbox::EndpointStats;
pub use crate::store::outbox::{Event, Hooks, Outbox, Pending, Settled, lock_key, shown};
use crate::{Error, Result};

/// How long one delivery may take (connect, send, answer) before it counts as failed, by
/// default (`--webhook-timeout`).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the outbox is read when nothing woke the task (events committed by another
/// process of a cluster, retries falling due).
pub const POLL: Duration = Duration::from_millis(500);

/// Most pending events one round reads.
pub const ROUND: usize = 256;

/// The first retry waits this long; each one after twice as long, up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);

/// The most of an answer's body read; a longer one is cut off with its connection (the status
/// is what counts).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest wait between two attempts at one event.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// The webhooks a server sends, checked at start.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The endpoints, each sent every event.
    pub urls: Vec<String>,
    /// The signing secret (never logged).
    pub secret: Arc<[u8]>,
    /// An event not delivered this long after it happened is dropped (counted as failed).
    pub max_age: Duration,
    /// How long one delivery may take (connect, send, answer).
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| shown(u)).collect::<Vec<_>>(),
            )
            .field("secret", &"***")
            .field("max_age", &self.max_age)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookConfig {
    /// The configuration for `urls`, signed with the secret in `secret_file` (its first line).
    pub fn new(urls: Vec<String>, secret_file: &Path, max_age: Duration) -> Result<Self> {
        for url in &urls {
            Endpoint::parse(url)?;
        }
        let text = crate::config::SecretFile {
            holds: "webhook secret",
            reading: "read the webhook secret from",
        }
        .read_text(secret_file)?;
        let secret = text.lines().next().unwrap_or("").trim();
        if secret.len() < 16 {
            return Err(Error::Config(format!(
                "the webhook secret in {} must be at least 16 characters on its first line",
                secret_file.display()
            )));
        }
        if max_age.is_zero() {
            return Err(Error::Config("--webhook-max-age must be above 0".into()));
        }
        Ok(Self {
            urls,
            secret: secret.as_bytes().into(),
            max_age,
            timeout: DELIVERY_TIMEOUT,
        })
    }
}

/// An endpoint's address, parsed once.
#[derive(Debug, Clone)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    uri: http::Uri,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("--webhook-url '{}': {why}", shown(url)));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("give an http:// or https:// URL")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            tls,
            host,
            port,
            uri,
        })
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn authority(&self) -> &str {
        self.uri
            .authority()
            .map_or(self.host.as_str(), |a| a.as_str())
    }
}

/// The event's id, stable across retries and processes: `room:seq:type` for a record's
/// event (a room's seqs are never reused), with `:nick:time` after it for a membership event
/// and `:time` for an occupancy event.
pub fn event_id(event: &Pending) -> String {
    let base = format!("{}:{}:{}", event.room, event.seq, event.event.name());
    match (event.event, &event.nick) {
        (Event::Record(_), _) => base,
        (_, Some(nick)) => format!("{base}:{nick}:{}", event.first_ms),
        (_, None) => format!("{base}:{}", event.first_ms),
    }
}

/// The JSON body of a pending event.
pub fn render(event: &Pending) -> String {
    use serde_json::json;
    let data = match event.event {
        Event::Record(_) => event.record.as_ref().map(|r| match r.kind {
            Kind::Message => json!({
                "from": r.from,
                "text": r.text,
                "reply_to": r.reply_to,
                "edited_ms": r.edited_ms,
                "deleted": r.deleted,
            }),
            Kind::Edit => json!({ "from": r.from, "target": r.target, "text": r.text }),
            Kind::Delete => json!({ "from": r.from, "target": r.target }),
            Kind::React => json!({
                "from": r.from,
                "target": r.target,
                "emoji": r.emoji.as_ref().map(|(e, _)| e),
                "on": r.emoji.as_ref().is_some_and(|(_, on)| *on),
            }),
        }),
        Event::Joined | Event::Left => Some(json!({ "nick": event.nick })),
        Event::Occupied | Event::Vacated => Some(json!({})),
    };
    let gone = matches!(event.event, Event::Record(_)) && event.record.is_none();
    json!({
        "id": event_id(event),
        "type": event.event.name(),
        "room": event.room,
        "seq": event.seq,
        "time_ms": event.record.as_ref().map_or(event.first_ms, |r| r.time_ms),
        "gone": gone,
        "data": data,
    })
    .to_string()
}

/// The `nanachat-signature` header for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let tag = ctx.sign();
    format!("t={t},v1={}", data_encoding::HEXLOWER.encode(tag.as_ref()))
}

/// How one attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Delivered,
    /// A 4xx other than 408 and 429: retrying will not help.
    Refused(u16),
    /// No answer, or one that says "later".
    Failed,
}

fn judge(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        408 | 429 => Answer::Failed,
        400..=499 => Answer::Refused(status),
        _ => Answer::Failed,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One endpoint's HTTP/1.1 connection, kept alive between deliveries.
struct Client {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    sender: Option<Sender>,
}

impl Client {
    fn new(endpoint: Endpoint) -> Self {
        let tls = endpoint.tls.then(|| {
            tokio_rustls::TlsConnector::from(crate::dial::tls_config(crate::dial::platform_roots()))
        });
        Self {
            endpoint,
            tls,
            sender: None,
        }
    }

    async fn handshake<S>(io: S) -> Result<Sender>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|err| Error::Config(format!("HTTP handshake: {err}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn connect(&self) -> Result<Sender> {
        let tcp = tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Self::handshake(tcp).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.endpoint.host.clone())
                    .map_err(|_| Error::Config("bad host name".into()))?;
                let stream = tls.connect(name, tcp).await?;
                Self::handshake(stream).await
            }
        }
    }

    /// POSTs `body`; the status, or an error.
    async fn post(&mut self, id: &str, body: String, signature: String) -> Result<u16> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|err| Error::Config(format!("HTTP: {err}")))?;
        let request = Request::post(self.endpoint.path())
            .header(http::header::HOST, self.endpoint.authority())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("nanachat/", env!("CARGO_PKG_VERSION")),
            )
            .header("nanachat-event-id", id)
            .header("nanachat-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| Error::Config(format!("HTTP request: {err}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| Error::Config(format!("HTTP: {err}")))?;
        let status = response.status().as_u16();
        // Read the answer through, so that the connection can carry the next request; but no
        // more than MAX_ANSWER_BYTES of it, each piece dropped as read: a receiver that
        // answers with an endless body loses the connection, not the server its memory.
        let mut body = response.into_body();
        let (mut read, mut whole) = (0usize, true);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    read += frame.data_ref().map_or(0, |d| d.len());
                    if read > MAX_ANSWER_BYTES {
                        whole = false;
                        break;
                    }
                }
                Err(_) => {
                    whole = false;
                    break;
                }
            }
        }
        if whole {
            self.sender = Some(sender);
        }
        Ok(status)
    }
}

/// The delay before attempt `attempts + 1`, after `attempts` failures.
fn retry_delay(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    (FIRST_RETRY_DELAY * factor).min(MAX_RETRY_DELAY)
}

/// Delivers endpoint number `index` of `hooks` from `outbox` until `shutdown`.
pub async fn deliver<O: Outbox>(
    mut outbox: O,
    hooks: Arc<Hooks>,
    index: usize,
    config: WebhookConfig,
    shutdown: CancellationToken,
) {
    let url = hooks.endpoints[index].clone();
    let shown_url = shown(&url);
    let Ok(endpoint) = Endpoint::parse(&url) else {
        return;
    };
    let mut client = Client::new(endpoint);
    let stats = &hooks.stats[index];
    let mut store_backoff = crate::backoff::LINK;
    tracing::info!(endpoint = %shown_url, "webhooks: delivering");
    loop {
        let (busy, wait) = match round(&mut outbox, &url, &mut client, &config, stats).await {
            Ok(busy) => {
                store_backoff.succeeded();
                (busy, POLL)
            }
            Err(err) => {
                tracing::warn!(endpoint = %shown_url, cause = %err, "webhooks: the outbox cannot be read");
                (false, store_backoff.failed())
            }
        };
        if let Ok((pending, oldest)) = outbox.backlog(&url).await {
            stats.pending.store(pending, Ordering::Relaxed);
            stats
                .oldest_ms
                .store(oldest.unwrap_or(0), Ordering::Relaxed);
        }
        if busy {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hooks.wake[index].notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round: the oldest pending events, delivered in order per room; whether it delivered
/// a full round (more may be waiting).
async fn round<O: Outbox>(
    outbox: &mut O,
    url: &str,
    client: &mut Client,
    config: &WebhookConfig,
    stats: &EndpointStats,
) -> Result<bool> {
    let Some(pending) = outbox.take(url, ROUND).await? else {
        return Ok(false);
    };
    let full = pending.len() == ROUND;
    let shown_url = shown(url);
    let mut held: HashSet<String> = HashSet::new();
    let mut settled = Vec::new();
    let mut progressed = false;
    for event in pending {
        if held.contains(&event.room) {
            continue;
        }
        let now = now_ms();
        let id = event_id(&event);
        if now - event.first_ms > config.max_age.as_millis() as i64 {
            stats.expired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %shown_url, id, attempts = event.attempts, "webhooks: an event older than --webhook-max-age is dropped");
            settled.push(Settled::Done { id: event.id });
            progressed = true;
            continue;
        }
        if event.due_ms > now {
            held.insert(event.room);
            continue;
        }
        let body = render(&event);
        let sig = signature(&config.secret, now / 1000, &body);
        let answer = match tokio::time::timeout(config.timeout, client.post(&id, body, sig)).await {
            Ok(Ok(status)) => (judge(status), Some(status)),
            Ok(Err(err)) => {
                tracing::debug!(endpoint = %shown_url, id, cause = %err, "webhooks: delivery failed");
                (Answer::Failed, None)
            }
            Err(_) => {
                client.sender = None;
                (Answer::Failed, None)
            }
        };
        match answer {
            (Answer::Delivered, _) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                progressed = true;
                settled.push(Settled::Done { id: event.id });
            }
            (Answer::Refused(status), _) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                progressed = true;
                tracing::warn!(endpoint = %shown_url, id, status, "webhooks: the endpoint refused an event; not retried");
                settled.push(Settled::Done { id: event.id });
            }
            (Answer::Failed, status) => {
                stats.attempts_failed.fetch_add(1, Ordering::Relaxed);
                let attempts = event.attempts + 1;
                let delay = retry_delay(attempts);
                tracing::info!(endpoint = %shown_url, id, ?status, attempts, retry_in = ?delay, "webhooks: delivery failed; will retry");
                settled.push(Settled::Retry {
                    id: event.id,
                    attempts,
                    due_ms: now + delay.as_millis() as i64,
                });
                held.insert(event.room);
            }
        }
    }
    outbox.settle(url, &settled).await?;
    Ok(full && progressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_stripes_scheme() {
        // HMAC-SHA256("0123456789abcdef", "1700000000.{}"), computed with Python's hmac module.
        let sig = signature(b"0123456789abcdef", 1_700_000_000, "{}");
        assert_eq!(
            sig,
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    #[test]
    fn statuses_are_judged_as_documented() {
        assert_eq!(judge(200), Answer::Delivered);
        assert_eq!(judge(204), Answer::Delivered);
        assert_eq!(judge(408), Answer::Failed);
        assert_eq!(judge(429), Answer::Failed);
        assert_eq!(judge(410), Answer::Refused(410));
        assert_eq!(judge(400), Answer::Refused(400));
        assert_eq!(judge(500), Answer::Failed);
        assert_eq!(judge(302), Answer::Failed);
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(1), FIRST_RETRY_DELAY);
        assert_eq!(retry_delay(2), FIRST_RETRY_DELAY * 2);
        assert_eq!(retry_delay(40), MAX_RETRY_DELAY);
    }

    #[test]
    fn urls_are_checked_and_shown_without_secrets() {
        assert!(Endpoint::parse("ftp://x/").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:9/hook").is_ok());
        assert_eq!(
            shown("https://u:pw@h.example/x?token=abc"),
            "https://u:***@h.example/x"
        );
    }
}
