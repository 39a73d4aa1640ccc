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
//!   from a seq can tell that the history it knew is gone;
//! - retention ([`Store::prune`]) deletes a room's *oldest* messages only, so what is kept is
//!   always `first_seq ..= last_seq` without a hole ([`RoomState::first_seq`]), and the seqs go
//!   on from `last_seq` even when every message was pruned (each store keeps a per-room counter,
//!   never `MAX(seq) + 1`). A retried cid whose original was pruned is not recognised any more:
//!   it is stored again as a new message (the window for retries is far shorter than any
//!   sensible retention);
//! - on an open server, a nick used with a key is bound to it for good ([`Store::take_nick`]):
//!   the first binding stays, and so does where each of the nick's direct-message rooms stood
//!   at that moment (the holder of the key reads them from there on).

mod memory;
pub mod outbox;
mod pg_tls;
mod postgres;
mod queue;
mod sqlite;

use std::future::Future;
use std::time::Duration;

pub use memory::MemoryStore;
pub use postgres::{PgOutbox, PgStore};
pub use queue::StoreStats;
pub use sqlite::{SqliteOutbox, SqliteStore};

use crate::Result;
pub use crate::protocol::Kind;
use crate::protocol::MAX_REACTIONS;

/// Most records one history page returns.
pub const MAX_PAGE: usize = 200;

/// One stored item of a room: a chat message, or an event on one (an edit, a delete, a
/// reaction), each under a seq of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The room (or direct-message pair) it was said in.
    pub room: String,
    /// Its place in the room, from 1.
    pub seq: u64,
    /// Who said it.
    pub from: String,
    /// What was said (an edit: the new text; a deleted message, its edits, a delete and a
    /// reaction: empty).
    pub text: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// A message or which event.
    pub kind: Kind,
    /// An event: the message it changes.
    pub target: Option<u64>,
    /// A message: the message it answers.
    pub reply_to: Option<u64>,
    /// A reaction: what it is, and whether it was added (or taken back).
    pub emoji: Option<(String, bool)>,
    /// A message: when it was last edited.
    pub edited_ms: Option<i64>,
    /// A message: deleted (its text, and its edits' texts, erased).
    pub deleted: bool,
}

impl Record {
    /// A plain message as stored.
    pub fn said(room: &str, seq: u64, from: &str, text: &str, time_ms: i64) -> Self {
        Record {
            room: room.to_owned(),
            seq,
            from: from.to_owned(),
            text: text.to_owned(),
            time_ms,
            kind: Kind::Message,
            target: None,
            reply_to: None,
            emoji: None,
            edited_ms: None,
            deleted: false,
        }
    }

    /// What `append` stores under `seq` at `time_ms`.
    pub(crate) fn of(append: &Append, seq: u64, time_ms: i64) -> Self {
        let mut record = Record::said(&append.room, seq, &append.from, &append.text, time_ms);
        record.kind = append.op.kind();
        match &append.op {
            Op::Say { reply_to } => record.reply_to = *reply_to,
            Op::Edit { target } | Op::Delete { target } => record.target = Some(*target),
            Op::React { target, emoji, on } => {
                record.target = Some(*target);
                record.emoji = Some((emoji.clone(), *on));
            }
        }
        if matches!(append.op, Op::Delete { .. } | Op::React { .. }) {
            record.text.clear();
        }
        record
    }

    /// Whether `append` asks for what this record is: a retry of it.
    fn answers(&self, append: &Append) -> bool {
        let wanted = Record::of(append, self.seq, self.time_ms);
        // A message edited or deleted since, or an edit erased since by a delete, no longer
        // holds the text it was sent with (nothing keeps it): its retry is recognised by what
        // it is, not by its text.
        let changed = self.edited_ms.is_some() || self.deleted;
        let erased = self.kind == Kind::Edit && self.text.is_empty();
        let text_ok = wanted.text == self.text || changed || erased;
        self.kind == wanted.kind
            && self.target == wanted.target
            && self.reply_to == wanted.reply_to
            && self.emoji == wanted.emoji
            && text_ok
    }
}

/// A message or event to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The room to store it in (created on first use).
    pub room: String,
    /// Who said it.
    pub from: String,
    /// What was said (a message, an edit's new text; empty for a delete or a reaction).
    pub text: String,
    /// The sender's id for it: the same cid again is a retry, not a new message.
    pub cid: Option<String>,
    /// What it does.
    pub op: Op,
    /// The sender may edit and delete anyone's messages in this room.
    pub moderator: bool,
}

impl Append {
    /// A plain message.
    pub fn say(room: &str, from: &str, text: &str, cid: Option<&str>) -> Self {
        Append {
            room: room.into(),
            from: from.into(),
            text: text.into(),
            cid: cid.map(Into::into),
            op: Op::Say { reply_to: None },
            moderator: false,
        }
    }
}

/// What an append does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new message, maybe answering another of the room.
    Say {
        /// The message it answers.
        reply_to: Option<u64>,
    },
    /// A new text for a message.
    Edit {
        /// The message.
        target: u64,
    },
    /// A message deleted: its text (and its edits') erased, its reactions gone.
    Delete {
        /// The message.
        target: u64,
    },
    /// A reaction added or taken back.
    React {
        /// The message.
        target: u64,
        /// The reaction.
        emoji: String,
        /// Added (true) or taken back.
        on: bool,
    },
}

impl Op {
    /// The kind of record it stores.
    pub fn kind(&self) -> Kind {
        match self {
            Op::Say { .. } => Kind::Message,
            Op::Edit { .. } => Kind::Edit,
            Op::Delete { .. } => Kind::Delete,
            Op::React { .. } => Kind::React,
        }
    }

    /// The message it refers to: the target of an event, the message a reply answers.
    pub fn refers_to(&self) -> Option<u64> {
        match self {
            Op::Say { reply_to } => *reply_to,
            Op::Edit { target } | Op::Delete { target } | Op::React { target, .. } => Some(*target),
        }
    }
}

/// What the store knows of the message an append refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Referred {
    /// A message or an event (an event is no target).
    pub kind: Kind,
    /// Its author.
    pub from: String,
    /// Deleted.
    pub deleted: bool,
    /// When it was stored (ms since the epoch).
    pub time: i64,
    /// When the sender of the append had its nick bound to its key, if it is bound (open
    /// servers): a message by that nick from before was another holder's.
    pub sender_bound: Option<i64>,
}

/// A message's reactions, as a reaction append sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reactions {
    /// The sender's reaction with this emoji is there.
    pub mine: bool,
    /// Someone's reaction with this emoji is there.
    pub used: bool,
    /// Distinct reactions on the message.
    pub distinct: usize,
}

/// How a durable store keeps a record's kind (a small integer column).
pub(crate) fn kind_code(kind: Kind) -> i16 {
    match kind {
        Kind::Message => 0,
        Kind::Edit => 1,
        Kind::Delete => 2,
        Kind::React => 3,
    }
}

/// The kind a durable store's code stands for (an unknown code reads as a message).
pub(crate) fn kind_of(code: i64) -> Kind {
    match code {
        1 => Kind::Edit,
        2 => Kind::Delete,
        3 => Kind::React,
        _ => Kind::Message,
    }
}

/// A known user's place in one of its rooms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadState {
    /// The last seq it has read (never moves back).
    pub read_seq: u64,
    /// Messages after it by others, not deleted (counted up to [`UNREAD_CAP`]).
    pub unread: u64,
}

/// Unread messages are counted up to this many (a client shows "1000+").
pub const UNREAD_CAP: u64 = 1000;

/// A change to a known user's rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// It joined: the room is remembered, read up to `last_seq` if it was not already.
    Remember {
        /// The room's last seq now.
        last_seq: u64,
    },
    /// It left: forgotten.
    Forget,
    /// It read up to `seq` (never moving back, never past the room's last seq); a room not
    /// remembered yet (a direct-message room never joined) is remembered.
    Read {
        /// The seq read.
        seq: u64,
    },
}

/// One room of a known user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRoom {
    /// The room (or direct-message pair).
    pub room: String,
    /// Its last seq.
    pub last_seq: u64,
    /// Where the user is.
    pub state: ReadState,
    /// Its last message (not an event), if any is kept.
    pub last: Option<Record>,
}

/// The words of a search: runs of letters and digits, lower-cased, at most 8 of at most 64
/// bytes each — whatever the asker typed, nothing reaches the full-text engine but plain words
/// (no operator of FTS5 or `tsquery` syntax can be spelt with them).
pub fn search_words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() <= 64)
        .map(str::to_lowercase)
        .take(8)
        .collect()
}

/// One reaction to one message: (seq, reaction, how many nicks gave it, the asker among them).
pub type ReactionCount = (u64, String, u32, bool);

/// Why an append was refused (nothing stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objection {
    /// No message with that seq in the room (never, pruned, or an event's seq).
    NoSuchMessage,
    /// Someone else's message, and the sender is no moderator.
    NotYours,
    /// The message is deleted.
    Deleted,
    /// One more distinct reaction than a message may carry.
    TooManyReactions,
    /// The reaction was there already (added) or was not (taken back).
    Unchanged,
}

/// Whether `append` may be stored, given what it refers to (read in the append's transaction)
/// and, for a reaction, the message's reactions: one rule for every store.
pub(crate) fn judge(
    append: &Append,
    referred: Option<&Referred>,
    reactions: Reactions,
) -> std::result::Result<(), Objection> {
    if append.op.refers_to().is_none() {
        return Ok(());
    }
    let Some(referred) = referred.filter(|r| r.kind == Kind::Message) else {
        return Err(Objection::NoSuchMessage);
    };
    match &append.op {
        Op::Say { .. } => Ok(()),
        _ if referred.deleted => Err(Objection::Deleted),
        Op::Edit { .. } | Op::Delete { .. } => {
            // Its author: the nick, held by the same user — a nick bound to a key since is
            // another user's, who is the author of nothing said before.
            let author = referred.from.eq_ignore_ascii_case(&append.from)
                && referred
                    .sender_bound
                    .is_none_or(|bound| referred.time > bound);
            if author || append.moderator {
                Ok(())
            } else {
                Err(Objection::NotYours)
            }
        }
        Op::React { on, .. } => {
            if *on == reactions.mine {
                Err(Objection::Unchanged)
            } else if *on && !reactions.used && reactions.distinct >= MAX_REACTIONS {
                Err(Objection::TooManyReactions)
            } else {
                Ok(())
            }
        }
    }
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
    /// Refused for what it refers to (one rule for every store): nothing stored.
    Refused(Objection),
}

impl Appended {
    /// The answer to an append whose cid was stored before as `original`: a retry when the
    /// text is the same, refused when it is not.
    pub(crate) fn again(original: Record, append: &Append) -> Self {
        if original.answers(append) {
            Appended::Duplicate(original)
        } else {
            Appended::CidReused
        }
    }

    /// The record stored, now or before; `None` when the cid was refused.
    pub fn record(&self) -> Option<&Record> {
        match self {
            Appended::Stored(record) | Appended::Duplicate(record) => Some(record),
            Appended::CidReused | Appended::Refused(_) => None,
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
    /// The seq of the oldest message still kept; `last_seq + 1` when none is (none stored yet,
    /// or all pruned or wiped). Everything from here to `last_seq` is kept, without a hole.
    pub first_seq: u64,
}

impl RoomState {
    /// The state of a room with nothing kept.
    pub(crate) fn empty(epoch: u64, last_seq: u64) -> Self {
        Self {
            epoch,
            last_seq,
            first_seq: last_seq + 1,
        }
    }
}

/// What history keeps (`--retention-age`, `--retention-messages`): a message goes when either
/// rule says so; with neither, everything is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Messages stored longer ago than this go.
    pub max_age: Option<Duration>,
    /// Each room keeps at most this many of its newest messages.
    pub max_messages: Option<u64>,
}

impl Retention {
    /// Whether this keeps every message (no rule set).
    pub fn keeps_all(&self) -> bool {
        self.max_age.is_none() && self.max_messages.is_none()
    }

    /// How many of a room's oldest messages go. `oldest` are its first messages as (seq,
    /// time_ms), oldest first; `now_ms` is the time to measure ages from. Only a prefix ever
    /// goes: a message newer than the cutoff (a clock that stepped back, another process's
    /// clock) keeps every one after it, so what is kept has no hole.
    pub(crate) fn doomed(&self, now_ms: i64, last_seq: u64, oldest: &[(u64, i64)]) -> usize {
        let by_count = self.max_messages.map_or(0, |n| {
            oldest
                .iter()
                .take_while(|(seq, _)| seq.saturating_add(n) <= last_seq)
                .count()
        });
        let by_age = self.max_age.map_or(0, |age| {
            let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            oldest.iter().take_while(|(_, t)| *t < cutoff).count()
        });
        by_count.max(by_age)
    }
}

/// What one [`Store::prune`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Messages deleted.
    pub deleted: u64,
    /// Where the next call goes on (its `from`); `None` when every room has been looked at.
    pub next: Option<String>,
}

/// Most rooms one [`Store::prune`] call looks at.
pub const PRUNE_ROOMS: usize = 64;

/// A nick as a new holder takes it, on an open server (see [`Store::take_nick`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// What the nick's key is kept as (a salted hash, made by the chat server), if the nick is
    /// bound to one.
    pub key_hash: Option<String>,
    /// Where each of the nick's direct-message rooms stands for its holder: the room's last
    /// seq when the nick was bound (a bound nick), or now (a nick bound to no key). Only rooms
    /// with messages then; a room not listed starts at 0.
    pub floors: Vec<(String, u64)>,
}

/// Whether `room` is a direct-message room of `nick` (case-folded): `@nick+other` or
/// `@other+nick`, as the chat names them.
pub(crate) fn is_dm_of(room: &str, nick: &str) -> bool {
    room.strip_prefix('@')
        .and_then(|pair| pair.split_once('+'))
        .is_some_and(|(a, b)| a == nick || b == nick)
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

    /// As [`Store::history`], messages only (no events), each in its current state: a page of
    /// what people said, for reading back.
    fn messages(
        &self,
        room: &str,
        page: Page,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// The replies to message `seq` of `room` (messages with that `reply_to`) after `after`,
    /// oldest first, each as it stands, at most `limit` (and [`MAX_PAGE`]).
    fn replies(
        &self,
        room: &str,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// The reactions to the messages `seqs` of `room`: (seq, reaction, how many nicks gave
    /// it, whether `nick` is one of them), by seq then reaction.
    fn reactions(
        &self,
        room: &str,
        seqs: &[u64],
        nick: &str,
    ) -> impl Future<Output = Result<Vec<ReactionCount>>> + Send;

    /// Changes a known user's (`nick`, case-folded) hold on `room` and says where it is now.
    fn membership(
        &self,
        nick: &str,
        room: &str,
        change: Membership,
    ) -> impl Future<Output = Result<ReadState>> + Send;

    /// The names of a known user's (`nick`, case-folded) rooms, sorted: those it joined and
    /// did not leave, and its direct-message rooms with messages — the rooms of
    /// [`Store::inbox`], without reading where it is in each.
    fn rooms_of(&self, nick: &str) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// A known user's rooms: those it joined and did not leave, and its direct-message rooms
    /// with messages; each read from its floor at least (`floors`: a room's last seq that is
    /// not the user's to read, see [`Holding::floors`]), sorted by room.
    fn inbox(
        &self,
        nick: &str,
        floors: Vec<(String, u64)>,
    ) -> impl Future<Output = Result<Vec<InboxRoom>>> + Send;

    /// Messages (not deleted) of `rooms` whose text has every word of `words` (already split
    /// into words: letters and digits only), best match first, `limit` of them after the
    /// first `skip`.
    fn search(
        &self,
        words: Vec<String>,
        rooms: Vec<String>,
        limit: usize,
        skip: usize,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// The room's epoch and last seq; a room never used gets an epoch now.
    fn room_state(&self, room: &str) -> impl Future<Output = Result<RoomState>> + Send;

    /// Deletes a room's history and gives it a new epoch; its seqs go on from where they were.
    fn wipe(&self, room: &str) -> impl Future<Output = Result<RoomState>> + Send;

    /// Deletes what `retention` says goes, measuring ages from `now_ms`: the oldest messages of
    /// the rooms named `from` or after (by name, at most [`PRUNE_ROOMS`] of them), at most
    /// `limit` messages in all, so one call never holds the store long. Says how many it
    /// deleted and where the next call goes on. Deleting is idempotent: several processes
    /// pruning one shared history at once delete each message once, and never one that
    /// retention keeps. Seqs are not touched: appends go on from `last_seq`.
    fn prune(
        &self,
        retention: Retention,
        now_ms: i64,
        from: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Pruned>> + Send;

    /// The hash of the key `nick` (case-folded) is bound to, if any (open servers: see
    /// [`Store::take_nick`]).
    fn nick_binding(&self, nick: &str) -> impl Future<Output = Result<Option<String>>> + Send;

    /// What a new holder of `nick` (case-folded) takes, on an open server. With `bind` (the
    /// hash of its key) and the nick bound to no key, the nick is first bound to it, for good,
    /// and where each of its direct-message rooms stands now is kept with the binding; a nick
    /// bound already stays as it is (the caller compares its key with the hash returned). Then
    /// says what the nick is bound to, and where its holder's reading of each of its
    /// direct-message rooms starts ([`Holding::floors`]): for a bound nick, where the rooms
    /// stood when it was bound; for a nick bound to none, where they stand now.
    fn take_nick(
        &self,
        nick: &str,
        bind: Option<String>,
    ) -> impl Future<Output = Result<Holding>> + Send;

    /// Resolves once everything appended before the call is committed (or has failed).
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Appends the store's metrics (Prometheus text format).
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// Whether the store answers now (for `/readyz`): a round trip to a store on the network,
    /// nothing for one in this process.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Most messages one [`Store::prune`] call of [`prune_all`] deletes: one bounded transaction.
pub const PRUNE_BATCH: usize = 500;

/// One full round of retention: [`Store::prune`] over every room, [`PRUNE_BATCH`] messages at
/// a time, letting other tasks (and the store's appends) run between the calls. How many
/// messages went.
pub async fn prune_all(store: &impl Store, retention: Retention) -> Result<u64> {
    if retention.keeps_all() {
        return Ok(0);
    }
    let (mut from, mut total) = (String::new(), 0);
    loop {
        let pruned = store.prune(retention, now_ms(), &from, PRUNE_BATCH).await?;
        total += pruned.deleted;
        match pruned.next {
            Some(next) => from = next,
            None => return Ok(total),
        }
        tokio::task::yield_now().await;
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
        Append::say(room, from, text, cid)
    }

    fn event(room: &str, from: &str, op: Op, text: &str, cid: Option<&str>) -> Append {
        Append {
            op,
            ..Append::say(room, from, text, cid)
        }
    }

    fn refused(appended: Appended) -> Objection {
        match appended {
            Appended::Refused(objection) => objection,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Replies, edits, deletes and reactions: each event takes the room's next seq, changes
    /// its message as the store keeps it, and is refused (nothing stored, no seq taken) when
    /// what it refers to does not allow it. A delete erases the text, its edits' too.
    pub async fn events_take_seqs_and_change_their_message(store: &impl Store) {
        let r = "ev";
        let m1 = stored(store.append(say(r, "nana", "first", None)).await.unwrap());
        let reply = Append {
            op: Op::Say { reply_to: Some(1) },
            ..say(r, "Mochi", "re first", None)
        };
        let m2 = stored(store.append(reply).await.unwrap());
        assert_eq!((m1.seq, m2.seq, m2.reply_to), (1, 2, Some(1)));
        let nowhere = Append {
            op: Op::Say { reply_to: Some(99) },
            ..say(r, "mochi", "re nothing", None)
        };
        assert_eq!(
            refused(store.append(nowhere).await.unwrap()),
            Objection::NoSuchMessage
        );
        // Someone else's message, without being a moderator: refused, and no seq taken.
        let edit =
            |from: &str, target, text: &str, cid| event(r, from, Op::Edit { target }, text, cid);
        assert_eq!(
            refused(
                store
                    .append(edit("mochi", 1, "mine now", None))
                    .await
                    .unwrap()
            ),
            Objection::NotYours
        );
        let e = stored(
            store
                .append(edit("NANA", 1, "first, edited", Some("e1")))
                .await
                .unwrap(),
        );
        assert_eq!((e.seq, e.kind, e.target), (3, Kind::Edit, Some(1)));
        // A retry is the same edit; the cid for another text is refused.
        match store
            .append(edit("NANA", 1, "first, edited", Some("e1")))
            .await
            .unwrap()
        {
            Appended::Duplicate(d) => assert_eq!(d.seq, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store
                .append(edit("NANA", 1, "other", Some("e1")))
                .await
                .unwrap(),
            Appended::CidReused
        );
        // An event is no message: it cannot be edited or replied to.
        assert_eq!(
            refused(store.append(edit("nana", 3, "x", None)).await.unwrap()),
            Objection::NoSuchMessage
        );
        let react = |from: &str, target, emoji: &str, on| {
            event(
                r,
                from,
                Op::React {
                    target,
                    emoji: emoji.into(),
                    on,
                },
                "",
                None,
            )
        };
        assert_eq!(
            stored(store.append(react("mochi", 1, "👍", true)).await.unwrap()).seq,
            4
        );
        // The same nick (in any case) with the same reaction again changes nothing.
        assert_eq!(
            refused(store.append(react("MOCHI", 1, "👍", true)).await.unwrap()),
            Objection::Unchanged
        );
        stored(store.append(react("nana", 1, "👍", true)).await.unwrap());
        stored(store.append(react("nana", 1, "🎉", true)).await.unwrap());
        assert_eq!(
            store.reactions(r, &[1, 2], "Mochi").await.unwrap(),
            vec![(1, "🎉".into(), 1, false), (1, "👍".into(), 2, true)]
        );
        let off = stored(store.append(react("mochi", 1, "👍", false)).await.unwrap());
        assert_eq!((off.seq, off.emoji), (7, Some(("👍".into(), false))));
        assert_eq!(
            refused(store.append(react("mochi", 1, "👍", false)).await.unwrap()),
            Objection::Unchanged
        );
        // At most MAX_REACTIONS distinct reactions; one already there may still be added.
        for i in 0..MAX_REACTIONS {
            stored(
                store
                    .append(react("nana", 2, &format!("r{i}"), true))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            refused(
                store
                    .append(react("nana", 2, "one-more", true))
                    .await
                    .unwrap()
            ),
            Objection::TooManyReactions
        );
        stored(store.append(react("mochi", 2, "r0", true)).await.unwrap());
        // The message as it is now: edited, with its reactions.
        let page = store.messages(r, Page::Before(u64::MAX), 50).await.unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(page[0].text, "first, edited");
        assert!(page[0].edited_ms.is_some() && !page[0].deleted);
        // A moderator deletes someone else's message: text and edits erased, reactions gone.
        let del = Append {
            moderator: true,
            ..event(r, "mochi", Op::Delete { target: 1 }, "", None)
        };
        let d = stored(store.append(del).await.unwrap());
        assert_eq!(
            (d.kind, d.target, d.text.as_str()),
            (Kind::Delete, Some(1), "")
        );
        let all = store.history(r, Page::After(0), MAX_PAGE).await.unwrap();
        assert!(all[0].deleted && all[0].text.is_empty(), "{:?}", all[0]);
        assert_eq!(all[2].text, "", "the edit's text is erased too");
        assert!(
            all.iter().all(|rec| !rec.text.starts_with("first")),
            "no trace of the deleted text: {all:?}"
        );
        assert!(store.reactions(r, &[1], "nana").await.unwrap().is_empty());
        assert_eq!(
            refused(store.append(react("nana", 1, "👍", true)).await.unwrap()),
            Objection::Deleted
        );
        assert_eq!(
            refused(store.append(edit("nana", 1, "back", None)).await.unwrap()),
            Objection::Deleted
        );
        // A reply to a deleted message is still a reply.
        let late = Append {
            op: Op::Say { reply_to: Some(1) },
            ..say(r, "mochi", "what was that?", None)
        };
        let late = stored(store.append(late).await.unwrap());
        assert_eq!(late.seq, d.seq + 1, "refusals took no seq");
        // The thread of message 1: its two replies, oldest first, paged on.
        let thread = store.replies(r, 1, 0, 10).await.unwrap();
        let seqs: Vec<u64> = thread.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [2, late.seq]);
        assert_eq!(store.replies(r, 1, 2, 10).await.unwrap().len(), 1);
        assert_eq!(store.replies(r, 1, 0, 1).await.unwrap().len(), 1);
        assert!(store.replies(r, 2, 0, 10).await.unwrap().is_empty());
    }

    /// A known user's rooms: remembered at join (read up to the end then), read positions
    /// that never move back nor past the end, unread counts of others' messages, forgotten
    /// at leave; direct-message rooms with messages in the inbox unasked, above its floor.
    pub async fn memberships_remember_read_and_forget(store: &impl Store) {
        let read = |seq| Membership::Read { seq };
        for i in 1..=3 {
            store
                .append(say("mem", "kumo", &format!("m{i}"), None))
                .await
                .unwrap();
        }
        let joined = store
            .membership("Yuki", "mem", Membership::Remember { last_seq: 1 })
            .await
            .unwrap();
        assert_eq!((joined.read_seq, joined.unread), (1, 2));
        // Joining again keeps where it was.
        let again = store.membership("yuki", "mem", Membership::Remember { last_seq: 3 });
        assert_eq!(again.await.unwrap().read_seq, 1);
        store
            .append(say("mem", "YUKI", "mine", None))
            .await
            .unwrap();
        let state = store.membership("yuki", "mem", read(2)).await.unwrap();
        assert_eq!(
            (state.read_seq, state.unread),
            (2, 1),
            "its own message is not unread"
        );
        assert_eq!(
            store
                .membership("yuki", "mem", read(1))
                .await
                .unwrap()
                .read_seq,
            2
        );
        assert_eq!(
            store
                .membership("yuki", "mem", read(99))
                .await
                .unwrap()
                .read_seq,
            4
        );
        // Direct messages: one before the floor is not the user's.
        for text in ["old", "new"] {
            store
                .append(say("@kumo+yuki", "kumo", text, None))
                .await
                .unwrap();
        }
        let inbox = store
            .inbox("YUKI", vec![("@kumo+yuki".into(), 1)])
            .await
            .unwrap();
        let rooms: Vec<(&str, u64, u64)> = inbox
            .iter()
            .map(|r| (r.room.as_str(), r.state.read_seq, r.state.unread))
            .collect();
        assert_eq!(rooms, [("@kumo+yuki", 1, 1), ("mem", 4, 0)]);
        assert_eq!(inbox[0].last.as_ref().unwrap().text, "new");
        assert_eq!(inbox[1].last.as_ref().unwrap().text, "mine");
        assert_eq!(inbox[1].last_seq, 4);
        assert_eq!(
            store.rooms_of("Yuki").await.unwrap(),
            ["@kumo+yuki", "mem"],
            "the inbox's rooms, by name"
        );
        store
            .membership("yuki", "mem", Membership::Forget)
            .await
            .unwrap();
        let inbox = store.inbox("yuki", Vec::new()).await.unwrap();
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        assert_eq!(store.rooms_of("yuki").await.unwrap(), ["@kumo+yuki"]);
        assert_eq!(inbox[0].state.unread, 2, "without a floor, both are unread");
        assert_eq!(store.rooms_of("yuki").await.unwrap(), ["@kumo+yuki"]);
        assert!(store.rooms_of("nobody").await.unwrap().is_empty());
    }

    /// Search finds messages as they stand — by every word, in the rooms asked only, never a
    /// deleted one, an edit by its new words — and takes any input as plain words.
    pub async fn search_finds_messages_as_they_stand(store: &impl Store) {
        let (a, b, c) = ("srch-a", "srch-b", "srch-c");
        let said = |room: &'static str, text: &'static str| async move {
            stored(store.append(say(room, "nana", text, None)).await.unwrap()).seq
        };
        let a1 = said(a, "the quick brown fox").await;
        let a2 = said(a, "quick thinking").await;
        let b1 = said(b, "a lazy dog and a quick fox").await;
        said(c, "quick secret").await;
        said(b, "café au lait").await;
        let find = |query: &str, rooms: &[&str], limit, skip| {
            let rooms = rooms.iter().map(|r| r.to_string()).collect();
            store.search(search_words(query), rooms, limit, skip)
        };
        let hits = |found: Vec<Record>| {
            let mut hits: Vec<(String, u64)> = found.into_iter().map(|r| (r.room, r.seq)).collect();
            hits.sort();
            hits
        };
        let ab = [a, b];
        assert_eq!(
            hits(find("Quick FOX", &ab, 10, 0).await.unwrap()),
            [(a.to_owned(), a1), (b.to_owned(), b1)]
        );
        assert_eq!(find("quick", &ab, 10, 0).await.unwrap().len(), 3);
        assert_eq!(find("quick", &ab, 2, 0).await.unwrap().len(), 2);
        assert_eq!(find("quick", &ab, 10, 2).await.unwrap().len(), 1);
        assert!(
            find("secret", &ab, 10, 0).await.unwrap().is_empty(),
            "room c was not asked"
        );
        assert_eq!(find("café", &ab, 10, 0).await.unwrap().len(), 1);
        // Operators of either engine's syntax are only words here: no error.
        for odd in [
            "\"fox\" OR NOT (",
            "NEAR(fox* ^quick)",
            "fox:* & !quick | (",
            "'''",
        ] {
            find(odd, &ab, 10, 0).await.unwrap();
        }
        let edit = Append {
            op: Op::Edit { target: a2 },
            ..say(a, "nana", "slow thinking", None)
        };
        stored(store.append(edit).await.unwrap());
        assert_eq!(
            hits(find("quick", &[a], 10, 0).await.unwrap()),
            [(a.to_owned(), a1)]
        );
        assert_eq!(
            hits(find("slow", &[a], 10, 0).await.unwrap()),
            [(a.to_owned(), a2)]
        );
        let delete = Append {
            op: Op::Delete { target: a1 },
            ..say(a, "nana", "", None)
        };
        stored(store.append(delete).await.unwrap());
        assert_eq!(
            hits(find("fox", &ab, 10, 0).await.unwrap()),
            [(b.to_owned(), b1)]
        );
    }

    /// The record of an append that must have stored a new message.
    pub fn stored(appended: Appended) -> Record {
        match appended {
            Appended::Stored(record) => record,
            other => panic!("expected a new record, got {other:?}"),
        }
    }

    /// The webhook outbox (a store with `hook` called for endpoints "e1" and "e2" before it is
    /// given here): every stored append writes one event per endpoint in commit order; a retry
    /// of a cid and a refused append write none; events are read with their record as it
    /// stands now (a deleted message's text gone); settling deletes or re-schedules.
    pub async fn the_outbox_holds_one_event_per_stored_append_and_endpoint(
        store: &impl Store,
        outbox: &mut impl crate::store::outbox::Outbox,
    ) {
        use crate::store::outbox::{Event, Settled};
        let r = "hooked";
        stored(
            store
                .append(say(r, "nana", "first", Some("h1")))
                .await
                .unwrap(),
        );
        // A retry: no second event.
        store
            .append(say(r, "nana", "first", Some("h1")))
            .await
            .unwrap();
        stored(
            store
                .append(say("other", "nana", "elsewhere", None))
                .await
                .unwrap(),
        );
        stored(store.append(say(r, "nana", "doomed", None)).await.unwrap());
        let react = event(
            r,
            "mochi",
            Op::React {
                target: 1,
                emoji: "👍".into(),
                on: true,
            },
            "",
            None,
        );
        stored(store.append(react).await.unwrap());
        // Refused (no such message): no event.
        let nowhere = event(r, "nana", Op::Delete { target: 99 }, "", None);
        refused(store.append(nowhere).await.unwrap());
        stored(
            store
                .append(event(r, "nana", Op::Delete { target: 2 }, "", None))
                .await
                .unwrap(),
        );
        let pending = outbox.take("e1", 100).await.unwrap().expect("the lease");
        let seen: Vec<(&str, u64, Event)> = pending
            .iter()
            .map(|p| (p.room.as_str(), p.seq, p.event))
            .collect();
        assert_eq!(
            seen,
            [
                (r, 1, Event::Record(Kind::Message)),
                ("other", 1, Event::Record(Kind::Message)),
                (r, 2, Event::Record(Kind::Message)),
                (r, 3, Event::Record(Kind::React)),
                (r, 4, Event::Record(Kind::Delete)),
            ]
        );
        let doomed = pending[2].record.as_ref().expect("the record");
        assert!(doomed.deleted && doomed.text.is_empty(), "{doomed:?}");
        assert_eq!(pending[0].record.as_ref().unwrap().text, "first");
        assert_eq!(pending[0].attempts, 0);
        assert_eq!(
            pending[3].record.as_ref().unwrap().emoji,
            Some(("👍".into(), true))
        );
        // Settled: two delivered, one to try again later.
        outbox
            .settle(
                "e1",
                &[
                    Settled::Done { id: pending[0].id },
                    Settled::Done { id: pending[1].id },
                    Settled::Retry {
                        id: pending[2].id,
                        attempts: 1,
                        due_ms: 42,
                    },
                ],
            )
            .await
            .unwrap();
        let pending = outbox.take("e1", 100).await.unwrap().expect("the lease");
        outbox.settle("e1", &[]).await.unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(
            (pending[0].seq, pending[0].attempts, pending[0].due_ms),
            (2, 1, 42)
        );
        let (count, oldest) = outbox.backlog("e1").await.unwrap();
        assert_eq!(count, 3);
        assert!(oldest.is_some());
        // The other endpoint has its own five, untouched.
        assert_eq!(outbox.backlog("e2").await.unwrap().0, 5);
        assert_eq!(outbox.backlog("nowhere").await.unwrap(), (0, None));
        // Memberships: the first join of a room also occupies it, a join again is nothing,
        // the last leave also vacates it; each under the room's last seq, nick case-folded.
        let m = "club";
        let join = Membership::Remember { last_seq: 0 };
        store.membership("Nana", m, join).await.unwrap();
        store.membership("nana", m, join).await.unwrap();
        store.membership("mochi", m, join).await.unwrap();
        stored(store.append(say(m, "nana", "hello", None)).await.unwrap());
        store
            .membership("nana", m, Membership::Forget)
            .await
            .unwrap();
        store
            .membership("nana", m, Membership::Forget)
            .await
            .unwrap();
        store
            .membership("mochi", m, Membership::Forget)
            .await
            .unwrap();
        let pending = outbox.take("e2", 100).await.unwrap().expect("the lease");
        outbox.settle("e2", &[]).await.unwrap();
        let seen: Vec<(u64, Event, Option<&str>)> = pending
            .iter()
            .filter(|p| p.room == m)
            .map(|p| (p.seq, p.event, p.nick.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (0, Event::Joined, Some("nana")),
                (0, Event::Occupied, None),
                (0, Event::Joined, Some("mochi")),
                (1, Event::Record(Kind::Message), None),
                (1, Event::Left, Some("nana")),
                (1, Event::Left, Some("mochi")),
                (1, Event::Vacated, None),
            ]
        );
        assert!(
            pending
                .iter()
                .filter(|p| p.room == m && p.seq == 0)
                .all(|p| p.record.is_none())
        );
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
        let a = store.room_state("a").await.unwrap();
        assert_eq!((a.first_seq, a.last_seq), (1, 5));
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
        assert_eq!((after.first_seq, after.last_seq), (2, 1));
        assert_eq!(store.room_state("w").await.unwrap(), after);
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

    /// Prunes until every room has been looked at, `limit` messages per call; the total.
    pub async fn prune_through(
        store: &impl Store,
        retention: Retention,
        now_ms: i64,
        limit: usize,
    ) -> u64 {
        let (mut from, mut total) = (String::new(), 0);
        loop {
            let pruned = store.prune(retention, now_ms, &from, limit).await.unwrap();
            assert!(pruned.deleted <= limit as u64, "{pruned:?} over {limit}");
            total += pruned.deleted;
            match pruned.next {
                Some(next) => from = next,
                None => return total,
            }
        }
    }

    fn seqs_of(records: Vec<Record>) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    pub async fn prune_by_count_keeps_the_newest_of_each_room(store: &impl Store) {
        for i in 1..=12 {
            store
                .append(say("k", "nana", &format!("m{i}"), None))
                .await
                .unwrap();
        }
        for i in 1..=3 {
            store
                .append(say("k2", "nana", &format!("m{i}"), None))
                .await
                .unwrap();
        }
        let before = store.room_state("k").await.unwrap();
        assert_eq!((before.first_seq, before.last_seq), (1, 12));
        let keep5 = Retention {
            max_age: None,
            max_messages: Some(5),
        };
        // Keeping everything deletes nothing.
        assert_eq!(
            prune_through(store, Retention::default(), now_ms(), 100).await,
            0
        );
        // Two at a time: bounded calls, the same outcome. (At least: a store shared by the
        // whole suite holds other rooms that go too.)
        assert!(prune_through(store, keep5, now_ms(), 2).await >= 7);
        let after = store.room_state("k").await.unwrap();
        assert_eq!(
            (after.epoch, after.first_seq, after.last_seq),
            (before.epoch, 8, 12)
        );
        assert_eq!(
            seqs_of(store.history("k", Page::After(0), 100).await.unwrap()),
            [8, 9, 10, 11, 12]
        );
        assert_eq!(
            seqs_of(
                store
                    .history("k", Page::Before(u64::MAX), 100)
                    .await
                    .unwrap()
            ),
            [8, 9, 10, 11, 12]
        );
        assert_eq!(
            seqs_of(store.history("k", Page::After(2), 3).await.unwrap()),
            [8, 9, 10]
        );
        // A room under the limit is untouched; pruning again is a no-op.
        assert_eq!(store.room_state("k2").await.unwrap().first_seq, 1);
        assert_eq!(prune_through(store, keep5, now_ms(), 100).await, 0);
        // A room never used has nothing kept: first_seq is last_seq + 1.
        let never = store.room_state("never-k").await.unwrap();
        assert_eq!((never.first_seq, never.last_seq), (1, 0));
    }

    pub async fn prune_by_age_deletes_the_oldest_only(store: &impl Store) {
        let mut old = Vec::new();
        for i in 1..=3 {
            let a = store
                .append(say("g", "nana", &format!("old{i}"), None))
                .await
                .unwrap();
            old.push(stored(a));
        }
        // The clock moves on past the old ones (no fixed sleep: until it has ticked).
        let old_ms = old.last().unwrap().time_ms;
        while now_ms() <= old_ms {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut new = Vec::new();
        for i in 1..=2 {
            let a = store
                .append(say("g", "nana", &format!("new{i}"), None))
                .await
                .unwrap();
            new.push(stored(a));
        }
        let day = Retention {
            max_age: Some(Duration::from_secs(86_400)),
            max_messages: None,
        };
        assert_eq!(prune_through(store, day, now_ms(), 100).await, 0);
        // Measured from the first new message's time, with no age allowed: older ones go.
        let zero = Retention {
            max_age: Some(Duration::ZERO),
            max_messages: None,
        };
        assert!(prune_through(store, zero, new[0].time_ms, 100).await >= 3);
        let state = store.room_state("g").await.unwrap();
        assert_eq!((state.first_seq, state.last_seq), (4, 5));
        assert_eq!(
            seqs_of(store.history("g", Page::After(0), 100).await.unwrap()),
            [4, 5]
        );
        // Either rule: an age that keeps both, a count that keeps one.
        let both = Retention {
            max_age: Some(Duration::from_secs(86_400)),
            max_messages: Some(1),
        };
        assert!(prune_through(store, both, now_ms(), 100).await >= 1);
        assert_eq!(store.room_state("g").await.unwrap().first_seq, 5);
    }

    pub async fn seqs_go_on_after_everything_is_pruned(store: &impl Store) {
        for i in 1..=4 {
            store
                .append(say("z", "nana", &format!("m{i}"), Some(&format!("c{i}"))))
                .await
                .unwrap();
        }
        let none = Retention {
            max_age: None,
            max_messages: Some(0),
        };
        assert!(prune_through(store, none, now_ms(), 3).await >= 4);
        let state = store.room_state("z").await.unwrap();
        assert_eq!((state.first_seq, state.last_seq), (5, 4));
        assert!(
            store
                .history("z", Page::After(0), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let next = store.append(say("z", "nana", "m5", None)).await.unwrap();
        assert_eq!(stored(next).seq, 5, "a seq is never used twice");
        // A retry whose original was pruned cannot be recognised: it is stored again, as a
        // new message under a new seq (documented), never under an old one.
        let again = store
            .append(say("z", "nana", "m4", Some("c4")))
            .await
            .unwrap();
        assert_eq!(stored(again).seq, 6);
        let state = store.room_state("z").await.unwrap();
        assert_eq!((state.first_seq, state.last_seq), (5, 6));
    }

    /// A holding's floors, sorted by room.
    fn floors_of(holding: &Holding) -> Vec<(&str, u64)> {
        let mut floors: Vec<(&str, u64)> = holding
            .floors
            .iter()
            .map(|(room, seq)| (room.as_str(), *seq))
            .collect();
        floors.sort_unstable();
        floors
    }

    pub async fn a_nick_bound_to_a_key_stays_bound_and_keeps_where_its_dms_stood(
        store: &impl Store,
    ) {
        let texts = |n: usize| (1..=n).map(|i| format!("m{i}"));
        // Alice's direct-message rooms, and rooms that are not hers.
        for (room, n) in [
            ("@alice+bob", 2),
            ("@alice+alice", 1),
            ("@alice+bobby", 1),
            ("@aa+alice", 3),
            ("@alicex+bob", 1),
            ("@bob+carol", 1),
            ("@bob+xalice", 1),
            ("alice", 1),
        ] {
            for text in texts(n) {
                store.append(say(room, "x", &text, None)).await.unwrap();
            }
        }
        store.room_state("@alice+zed").await.unwrap(); // made, nothing stored
        assert_eq!(store.nick_binding("alice").await.unwrap(), None);
        let free = store.take_nick("alice", None).await.unwrap();
        assert_eq!(free.key_hash, None);
        let then = [
            ("@aa+alice", 3),
            ("@alice+alice", 1),
            ("@alice+bob", 2),
            ("@alice+bobby", 1),
        ];
        assert_eq!(floors_of(&free), then);
        // Free, the floors are where the rooms stand now.
        store
            .append(say("@alice+bob", "bob", "m3", None))
            .await
            .unwrap();
        let now = store.take_nick("alice", None).await.unwrap();
        assert_eq!(floors_of(&now)[2], ("@alice+bob", 3));

        // Bound: the hash and the floors of that moment stay, whatever comes after.
        let bound = store.take_nick("alice", Some("h1".into())).await.unwrap();
        assert_eq!(bound.key_hash.as_deref(), Some("h1"));
        let at_binding = [
            ("@aa+alice", 3),
            ("@alice+alice", 1),
            ("@alice+bob", 3),
            ("@alice+bobby", 1),
        ];
        assert_eq!(floors_of(&bound), at_binding);
        store
            .append(say("@alice+bob", "bob", "m4", None))
            .await
            .unwrap();
        store
            .append(say("@alice+dan", "dan", "new", None))
            .await
            .unwrap();
        for bind in [None, Some("h2".to_owned())] {
            let again = store.take_nick("alice", bind).await.unwrap();
            assert_eq!(
                again.key_hash.as_deref(),
                Some("h1"),
                "the first binding stays"
            );
            assert_eq!(floors_of(&again), at_binding);
        }
        assert_eq!(
            store.nick_binding("alice").await.unwrap().as_deref(),
            Some("h1")
        );
        // Other nicks are their own.
        assert_eq!(store.nick_binding("bob").await.unwrap(), None);
        let bob = store.take_nick("bob", None).await.unwrap();
        assert_eq!(
            floors_of(&bob),
            [
                ("@alice+bob", 4),
                ("@alicex+bob", 1),
                ("@bob+carol", 1),
                ("@bob+xalice", 1)
            ]
        );
        // Two binding one nick at once: one hash wins, and both are told which.
        let (one, two) = (
            store.take_nick("carol", Some("c1".into())),
            store.take_nick("carol", Some("c2".into())),
        );
        let (one, two) = (one.await.unwrap(), two.await.unwrap());
        assert_eq!(one.key_hash, two.key_hash);
        assert_eq!(floors_of(&one), [("@bob+carol", 1)]);
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
