//! What the store keeps for webhooks (`crate::webhook` delivers them): which event an outbox
//! row is, a pending event as the store hands it to a delivery task, what became of it, the
//! outbox as one endpoint's task sees it, and what the store's writer and the tasks share.
//! Here, under the store, so that the store depends on nothing of the delivery (HTTP,
//! signatures) and the delivery on the store alone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::sync::Notify;

use super::Record;
use crate::Result;
use crate::clock::now_ms;
use crate::protocol::Kind;

/// A URL as it may be logged: no password, no query.
pub fn shown(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    crate::config::redact_url(url)
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
    pub(crate) wake: Vec<Notify>,
    pub(crate) stats: Vec<EndpointStats>,
}

/// One endpoint's counters.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    pub(crate) delivered: AtomicU64,
    pub(crate) attempts_failed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) oldest_ms: AtomicI64,
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

/// A stable 64-bit key for `endpoint` (FNV-1a), for the cluster's advisory lock.
pub fn lock_key(endpoint: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "nanachat-webhook:".bytes().chain(endpoint.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}
