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
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::protocol::Kind;
use crate::store::Record;
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
        let text = std::fs::read_to_string(secret_file)
            .map_err(|err| Error::file("read the webhook secret from", secret_file, err))?;
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

/// A URL as it may be logged: no password, no query.
pub fn shown(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    crate::config::redact_url(url)
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

/// Which event an outbox row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// About the stored record under the row's seq: a message, an edit, a delete, a reaction.
    Record(Kind),
    /// A known user (its nick in the row) joined the room: its membership began.
    Joined,
    /// A known user left the room: its membership ended.
    Left,
    /// The room got its first member.
    Occupied,
    /// The room's last member left.
    Vacated,
}

impl Event {
    /// How the outbox's `kind` column keeps it.
    pub fn code(self) -> i16 {
        match self {
            Event::Record(kind) => crate::store::kind_code(kind),
            Event::Joined => 10,
            Event::Left => 11,
            Event::Occupied => 12,
            Event::Vacated => 13,
        }
    }

    /// The event a `kind` column holds.
    pub fn of_code(code: i64) -> Self {
        match code {
            10 => Event::Joined,
            11 => Event::Left,
            12 => Event::Occupied,
            13 => Event::Vacated,
            other => Event::Record(crate::store::kind_of(other)),
        }
    }

    /// Its `type` in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Event::Record(Kind::Message) => "message.created",
            Event::Record(Kind::Edit) => "message.edited",
            Event::Record(Kind::Delete) => "message.deleted",
            Event::Record(Kind::React) => "reaction.changed",
            Event::Joined => "member.joined",
            Event::Left => "member.left",
            Event::Occupied => "room.occupied",
            Event::Vacated => "room.vacated",
        }
    }
}

/// An event waiting in the outbox; a record's event comes with the record as it stands now
/// (`None`: it is gone — pruned by retention, or its room wiped).
#[derive(Debug, Clone)]
pub struct Pending {
    /// The outbox row (one per event and endpoint).
    pub id: i64,
    /// The room.
    pub room: String,
    /// A record's event: the record's seq; a membership or occupancy event: the room's last
    /// seq when it happened.
    pub seq: u64,
    /// Which event.
    pub event: Event,
    /// A membership event: whose (case-folded).
    pub nick: Option<String>,
    /// When it was committed (ms since the epoch).
    pub first_ms: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before this (ms since the epoch).
    pub due_ms: i64,
    /// A record's event: the record.
    pub record: Option<Record>,
}

/// What became of a pending event (its outbox row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Delivered, or given up on: out of the outbox.
    Done {
        /// The row.
        id: i64,
    },
    /// To be tried again at `due_ms`.
    Retry {
        /// The row.
        id: i64,
        /// Failed attempts so far.
        attempts: u32,
        /// Not before this (ms since the epoch).
        due_ms: i64,
    },
}

/// A store's outbox as one endpoint's delivery task sees it (each task has its own).
pub trait Outbox: Send + 'static {
    /// Starts a round for `endpoint`: its lease (in a cluster: `None` while another process
    /// holds it) and its oldest pending events, up to `limit`.
    fn take(
        &mut self,
        endpoint: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Option<Vec<Pending>>>> + Send;
    /// Ends the round: writes what became of its events and lets the lease go.
    fn settle(
        &mut self,
        endpoint: &str,
        settled: &[Settled],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Pending events of `endpoint`, and when the oldest was committed.
    fn backlog(
        &mut self,
        endpoint: &str,
    ) -> impl Future<Output = Result<(u64, Option<i64>)>> + Send;
}

/// What the store's writer and the delivery tasks share: the endpoints every append writes
/// events for, a wake-up per endpoint, and the counters.
#[derive(Debug)]
pub struct Hooks {
    /// The endpoints' URLs, in order.
    pub endpoints: Vec<String>,
    wake: Vec<Notify>,
    stats: Vec<EndpointStats>,
}

#[derive(Debug, Default)]
struct EndpointStats {
    delivered: AtomicU64,
    attempts_failed: AtomicU64,
    refused: AtomicU64,
    expired: AtomicU64,
    pending: AtomicU64,
    oldest_ms: AtomicI64,
}

impl Hooks {
    /// Shared state for `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Arc<Self> {
        let n = endpoints.len();
        Arc::new(Self {
            endpoints,
            wake: (0..n).map(|_| Notify::new()).collect(),
            stats: (0..n).map(|_| EndpointStats::default()).collect(),
        })
    }

    /// Called by the writer after a commit that wrote events: the tasks look now.
    pub fn wake(&self) {
        for wake in &self.wake {
            wake.notify_one();
        }
    }

    /// Appends the webhook metrics (Prometheus text format), one series per endpoint.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let now = now_ms();
        let values: Vec<[u64; 6]> = self
            .stats
            .iter()
            .map(|s| {
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let oldest = s.oldest_ms.load(Ordering::Relaxed);
                let age = if oldest == 0 {
                    0
                } else {
                    (now - oldest).max(0) as u64 / 1000
                };
                [
                    get(&s.delivered),
                    get(&s.attempts_failed),
                    get(&s.refused) + get(&s.expired),
                    get(&s.refused),
                    get(&s.pending),
                    age,
                ]
            })
            .collect();
        for (i, (name, kind, help)) in METRICS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (url, v) in self.endpoints.iter().zip(&values) {
                let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {}", shown(url), v[i]);
            }
        }
    }
}

/// The webhook metrics: name, type, help.
const METRICS: [(&str, &str, &str); 6] = [
    (
        "nanachat_webhook_delivered_total",
        "counter",
        "Webhook events delivered (a 2xx answer).",
    ),
    (
        "nanachat_webhook_attempts_failed_total",
        "counter",
        "Webhook deliveries that failed and will be tried again (no answer, 5xx, 408, 429).",
    ),
    (
        "nanachat_webhook_failed_total",
        "counter",
        "Webhook events given up on: refused (4xx other than 408/429) or older than --webhook-max-age.",
    ),
    (
        "nanachat_webhook_refused_total",
        "counter",
        "Webhook events the endpoint refused with a 4xx other than 408/429 (not retried).",
    ),
    (
        "nanachat_webhook_pending",
        "gauge",
        "Webhook events in the outbox, not yet delivered (as last read by this process).",
    ),
    (
        "nanachat_webhook_oldest_pending_seconds",
        "gauge",
        "Age of the oldest webhook event in the outbox (0: none).",
    ),
];

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
        // Read the answer through, so that the connection can carry the next request.
        let _ = response.into_body().collect().await;
        self.sender = Some(sender);
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

/// A stable 64-bit key for `endpoint` (FNV-1a), for the cluster's advisory lock.
pub fn lock_key(endpoint: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "nanachat-webhook:".bytes().chain(endpoint.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
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
