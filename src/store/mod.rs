//! Durable history behind a small trait: every chat message is appended here, given its room's
//! next `seq`, *before* it is acknowledged or broadcast; resume and history paging read it back.
//!
//! Three stores: [`SqliteStore`] (the default — one file, WAL, one writer thread with group
//! commit), [`PgStore`] (PostgreSQL, one history shared by several processes; a writer task with
//! group commit — the two durable stores share their queue of write jobs) and [`MemoryStore`]
//! (ephemeral, for `--memory` and tests). All three keep the same promises, checked by the same
//! tests (the contract suite, feature `test-support`):
//! - a room's seqs start at 1 and increase by one per stored message, never reused, even after
//!   a wipe;
//! - an append with a client id (`cid`) already stored for that sender in that room stores
//!   nothing: with the same text it is a retry, answered with the original record
//!   ([`Appended::Duplicate`]); with another text it is refused ([`Appended::CidReused`]) — a
//!   cid stands for one message, as an idempotency key stands for one request;
//! - each room has an `epoch`, fixed at its creation and changed by a wipe, so a client resuming
//!   from a seq can tell that the history it knew is gone.

mod memory;
mod postgres;
mod queue;
mod sqlite;

use std::future::Future;

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use queue::StoreStats;
pub use sqlite::SqliteStore;

use crate::Result;

/// Most records one history page returns.
pub const MAX_PAGE: usize = 200;

/// One stored chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The room (or direct-message pair) it was said in.
    pub room: String,
    /// Its place in the room, from 1.
    pub seq: u64,
    /// Who said it.
    pub from: String,
    /// What was said.
    pub text: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The room to store it in (created on first use).
    pub room: String,
    /// Who said it.
    pub from: String,
    /// What was said.
    pub text: String,
    /// The sender's id for it: the same cid again is a retry, not a new message.
    pub cid: Option<String>,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored now, under the room's next seq.
    Stored(Record),
    /// A retry: the sender's cid was stored in this room before, with the same text. The
    /// original record; nothing new was stored.
    Duplicate(Record),
    /// The sender's cid was stored in this room before with *another* text: refused, nothing
    /// stored. Answering it with the original would ack a message that was never stored.
    CidReused,
}

impl Appended {
    /// The answer to an append whose cid was stored before as `original`: a retry when the
    /// text is the same, refused when it is not.
    pub(crate) fn again(original: Record, text: &str) -> Self {
        if original.text == text {
            Appended::Duplicate(original)
        } else {
            Appended::CidReused
        }
    }

    /// The record stored, now or before; `None` when the cid was refused.
    pub fn record(&self) -> Option<&Record> {
        match self {
            Appended::Stored(record) | Appended::Duplicate(record) => Some(record),
            Appended::CidReused => None,
        }
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The records with seq greater than this, oldest first (resume, forward paging).
    After(u64),
    /// The records with seq less than this, oldest first (backward paging: the newest ones
    /// before it). `Before(u64::MAX)` is the latest page.
    Before(u64),
}

/// A room's identity and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomState {
    /// Changes when the room's history is wiped; a resume from another epoch is not gapless.
    pub epoch: u64,
    /// The seq of the last message stored (0 for none).
    pub last_seq: u64,
}

/// The history store. Appends are durable when their future resolves.
pub trait Store: Send + Sync + 'static {
    /// Stores a message (or recognises a retry by its cid, or refuses a cid reused for another
    /// text) and says which it did.
    ///
    /// The append takes its place when this is *called*, not when the future is first polled:
    /// appends called one after another get seqs in that order, even if their futures are then
    /// awaited on different tasks.
    fn append(&self, append: Append) -> impl Future<Output = Result<Appended>> + Send + 'static;

    /// Reads up to `limit` (at most [`MAX_PAGE`]) records of `room`, oldest first.
    fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// The room's epoch and last seq; a room never used gets an epoch now.
    fn room_state(&self, room: &str) -> impl Future<Output = Result<RoomState>> + Send;

    /// Deletes a room's history and gives it a new epoch; its seqs go on from where they were.
    fn wipe(&self, room: &str) -> impl Future<Output = Result<RoomState>> + Send;

    /// Resolves once everything appended before the call is committed (or has failed).
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Appends the store's metrics (Prometheus text format).
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }
}

/// When a message is stored (the chat's `tick` reads it here too).
pub(crate) use crate::clock::now_ms;

/// A new epoch: microseconds since the Unix epoch, unlike any earlier one on this machine even
/// if the data directory was deleted and made anew (1 for a clock set before 1970).
pub(crate) fn new_epoch() -> u64 {
    crate::clock::now_us().max(1)
}

/// The promises every store keeps, run against each implementation (the SQLite and memory
/// stores' unit tests, the PostgreSQL store's in `tests/postgres.rs`): not an API, only built
/// for tests (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
#[allow(clippy::unwrap_used, missing_docs)]
pub mod contract {
    use super::*;

    pub fn say(room: &str, from: &str, text: &str, cid: Option<&str>) -> Append {
        Append {
            room: room.into(),
            from: from.into(),
            text: text.into(),
            cid: cid.map(Into::into),
        }
    }

    /// The record of an append that must have stored a new message.
    pub fn stored(appended: Appended) -> Record {
        match appended {
            Appended::Stored(record) => record,
            other => panic!("expected a new record, got {other:?}"),
        }
    }

    pub async fn seqs_start_at_one_per_room_and_never_skip(store: &impl Store) {
        for i in 1..=5u64 {
            let a = store
                .append(say("a", "nana", &format!("a{i}"), None))
                .await
                .unwrap();
            assert_eq!(stored(a).seq, i);
        }
        let b = store.append(say("b", "nana", "b1", None)).await.unwrap();
        assert_eq!(stored(b).seq, 1);
        assert_eq!(store.room_state("a").await.unwrap().last_seq, 5);
        assert_eq!(store.room_state("never").await.unwrap().last_seq, 0);
    }

    pub async fn a_retried_cid_is_stored_once(store: &impl Store) {
        let first = store
            .append(say("r", "nana", "hi", Some("c1")))
            .await
            .unwrap();
        let first = stored(first);
        let again = store
            .append(say("r", "nana", "hi", Some("c1")))
            .await
            .unwrap();
        assert_eq!(again, Appended::Duplicate(first));
        // The same cid from someone else, or in another room, is a different message.
        let other = store
            .append(say("r", "mochi", "hi", Some("c1")))
            .await
            .unwrap();
        assert_eq!(stored(other).seq, 2);
        let elsewhere = store
            .append(say("r2", "nana", "hi", Some("c1")))
            .await
            .unwrap();
        assert_eq!(stored(elsewhere).seq, 1);
        let page = store.history("r", Page::After(0), 10).await.unwrap();
        assert_eq!(page.len(), 2);
    }

    pub async fn a_cid_reused_for_another_text_is_refused(store: &impl Store) {
        let first = stored(
            store
                .append(say("u", "nana", "hi", Some("c1")))
                .await
                .unwrap(),
        );
        let reused = store
            .append(say("u", "nana", "bye", Some("c1")))
            .await
            .unwrap();
        assert_eq!(reused, Appended::CidReused);
        // A true retry is still one, after the refusal.
        let again = store
            .append(say("u", "nana", "hi", Some("c1")))
            .await
            .unwrap();
        assert_eq!(again, Appended::Duplicate(first.clone()));
        // Queued back to back (one batch for the stores that batch): the first is stored,
        // the reuse refused, the retry answered with the first.
        let (one, two, three) = (
            store.append(say("u", "nana", "one", Some("c2"))),
            store.append(say("u", "nana", "two", Some("c2"))),
            store.append(say("u", "nana", "one", Some("c2"))),
        );
        let one = stored(one.await.unwrap());
        assert_eq!(one.seq, 2);
        assert_eq!(two.await.unwrap(), Appended::CidReused);
        assert_eq!(three.await.unwrap(), Appended::Duplicate(one.clone()));
        // Someone else's c1 is theirs.
        let other = store
            .append(say("u", "mochi", "bye", Some("c1")))
            .await
            .unwrap();
        assert_eq!(stored(other).seq, 3);
        // Nothing of the refused ones was stored.
        let page = store.history("u", Page::After(0), 10).await.unwrap();
        let texts: Vec<&str> = page.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["hi", "one", "bye"]);
        assert_eq!(page[0], first);
        assert_eq!(store.room_state("u").await.unwrap().last_seq, 3);
    }

    pub async fn pages_go_both_ways(store: &impl Store) {
        for i in 1..=10 {
            store
                .append(say("p", "nana", &format!("m{i}"), None))
                .await
                .unwrap();
        }
        let seqs = |records: Vec<Record>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.history("p", Page::After(7), 10).await.unwrap()),
            [8, 9, 10]
        );
        assert_eq!(
            seqs(store.history("p", Page::After(0), 3).await.unwrap()),
            [1, 2, 3]
        );
        assert_eq!(
            seqs(store.history("p", Page::Before(8), 3).await.unwrap()),
            [5, 6, 7]
        );
        assert_eq!(
            seqs(store.history("p", Page::Before(u64::MAX), 2).await.unwrap()),
            [9, 10]
        );
        assert_eq!(
            seqs(store.history("p", Page::Before(1), 5).await.unwrap()),
            Vec::<u64>::new()
        );
        let capped = store.history("p", Page::After(0), 10_000).await.unwrap();
        assert_eq!(capped.len(), 10);
        let first = &store.history("p", Page::After(0), 1).await.unwrap()[0];
        assert_eq!((first.from.as_str(), first.text.as_str()), ("nana", "m1"));
        assert!(first.time_ms > 0);
    }

    pub async fn a_wipe_changes_the_epoch_and_keeps_seqs_going(store: &impl Store) {
        store.append(say("w", "nana", "one", None)).await.unwrap();
        let before = store.room_state("w").await.unwrap();
        let after = store.wipe("w").await.unwrap();
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.last_seq, 1);
        assert!(
            store
                .history("w", Page::After(0), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let next = store.append(say("w", "nana", "two", None)).await.unwrap();
        assert_eq!(stored(next).seq, 2);
        assert_eq!(store.room_state("w").await.unwrap().epoch, after.epoch);
    }

    pub async fn concurrent_appends_get_distinct_consecutive_seqs(
        store: std::sync::Arc<impl Store>,
    ) {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let cid = format!("{t}-{i}");
                    let a = store
                        .append(say("c", &format!("u{t}"), "x", Some(&cid)))
                        .await
                        .unwrap();
                    seqs.push(stored(a).seq);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    }
}
