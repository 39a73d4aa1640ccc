//! The shared store: history in PostgreSQL (`nanachat serve --store postgres://…`), so that
//! several `nanachat serve` processes are one chat service with one history.
//!
//! Writes go through one writer task per process with group commit, as in the SQLite store:
//! it takes every job waiting and runs them in one transaction. Seqs are assigned *inside* that
//! transaction: the batch first locks each of its rooms' rows (`INSERT … ON CONFLICT DO UPDATE`,
//! in name order so that two processes never deadlock), reads `last_seq`, numbers its messages
//! from there and writes the new `last_seq` before `COMMIT`. Another process appending to the
//! same room waits for that lock, so seqs are unique and gap-free across processes: a seq is
//! visible to anyone only once every seq before it is committed, and a batch that fails rolls
//! its counter back with its messages. An append resolves only after its commit (PostgreSQL's
//! default `synchronous_commit`): acknowledged means stored.
//!
//! Connections: the writer has its own, reads share another (tokio-postgres pipelines them).
//! A connection that breaks is made again on next use, with back-off (0.1 s doubling to 5 s);
//! meanwhile every operation fails at once with a store error — senders get `internal` and
//! retry with their cid — rather than waiting or guessing.
//!
//! Migrations run at start under an advisory lock, so processes starting together migrate once.
//!
//! Retention ([`Store::prune`]) runs on a third connection, made on first use, one bounded round
//! per transaction under a transaction-level advisory lock: when several processes prune at
//! once, one does the round and the others skip it. The deletes are idempotent anyway (a
//! prefix of a room, `seq <= n`), and never touch `rooms.last_seq`, so seqs go on.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls, Statement};
use tracing::{debug, info};

use super::queue::{Done, Job, Queue, StoreStats, answer_batch, take_batch};
use super::{
    Append, Appended, Holding, InboxRoom, MAX_PAGE, Membership, Objection, Op, PRUNE_ROOMS, Page,
    Pruned, ReactionCount, Reactions, ReadState, Record, Referred, Retention, RoomState, Store,
    UNREAD_CAP, is_dm_of, judge, kind_code, kind_of, new_epoch,
};
use crate::backoff::Reconnecting;
use crate::clock::now_ms;
use crate::error::StoreError;
use crate::{Error, Result};

/// The schema, one migration per version; `nanachat_schema.version` says how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: rooms and their messages, cids unique per sender and room.
    "CREATE TABLE rooms (
        name     TEXT PRIMARY KEY,
        epoch    BIGINT NOT NULL,
        last_seq BIGINT NOT NULL
     );
     CREATE TABLE messages (
        room    TEXT NOT NULL,
        seq     BIGINT NOT NULL,
        sender  TEXT NOT NULL,
        text    TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        cid     TEXT,
        PRIMARY KEY (room, seq)
     );
     CREATE UNIQUE INDEX messages_cid ON messages (room, sender, cid) WHERE cid IS NOT NULL;",
    // 2: nicks bound to a key on an open server (case-folded; the key salted and hashed), with
    // where each of the nick's direct-message rooms stood when it was bound; and the two
    // nicks of a direct-message room `@a+b` indexed, to find a nick's rooms. (By equality:
    // a range over names would follow the database's collation, which may skip `+`.)
    "CREATE TABLE nick_keys (
        nick     TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        bound_ms BIGINT NOT NULL
     );
     CREATE TABLE nick_floors (
        nick  TEXT NOT NULL,
        room  TEXT NOT NULL,
        floor BIGINT NOT NULL,
        PRIMARY KEY (nick, room)
     );
     CREATE INDEX rooms_dm_first ON rooms (split_part(substr(name, 2), '+', 1))
        WHERE left(name, 1) = '@';
     CREATE INDEX rooms_dm_second ON rooms (split_part(name, '+', 2))
        WHERE left(name, 1) = '@';",
    // 3: events on messages, each a row of its own under the room's next seq (kind 1 edit, 2
    // delete, 3 reaction, with its target), replies, a message's current state (edited,
    // deleted), and who reacted with what (nicks case-folded).
    "ALTER TABLE messages ADD COLUMN kind SMALLINT NOT NULL DEFAULT 0,
        ADD COLUMN target BIGINT, ADD COLUMN reply_to BIGINT, ADD COLUMN emoji TEXT,
        ADD COLUMN flag SMALLINT, ADD COLUMN edited_ms BIGINT,
        ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;
     CREATE INDEX messages_target ON messages (room, target) WHERE target IS NOT NULL;
     CREATE INDEX messages_reply ON messages (room, reply_to) WHERE reply_to IS NOT NULL;
     CREATE TABLE reactions (
        room  TEXT NOT NULL,
        seq   BIGINT NOT NULL,
        emoji TEXT NOT NULL,
        nick  TEXT NOT NULL,
        PRIMARY KEY (room, seq, emoji, nick)
     );",
    // 4: the rooms known users (a token, or a nick with a key) joined and did not leave, and
    // how far each has read (case-folded nicks).
    "CREATE TABLE memberships (
        nick     TEXT NOT NULL,
        room     TEXT NOT NULL,
        read_seq BIGINT NOT NULL,
        PRIMARY KEY (nick, room)
     );",
    // 5: full-text search over the messages as they stand: a `tsvector` of the text (the
    // 'simple' configuration: words as written, any language), kept by PostgreSQL itself
    // (an edit re-indexes, a delete's erased text has no words), under a GIN index.
    "ALTER TABLE messages ADD COLUMN tsv tsvector
        GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED;
     CREATE INDEX messages_tsv ON messages USING GIN (tsv) WHERE kind = 0 AND NOT deleted;",
    // 6: the webhook outbox: one row per event and endpoint, written in the transaction of
    // the append (or membership change) it is about, read in `id` order, deleted once
    // delivered or given up on (docs/webhooks.md). A record's event names its record (room,
    // seq, kind 0-3) and holds no text: it is rendered from the record as it stands when it is
    // sent, so a delete erases the text from pending events too. Membership events (kind 10
    // joined, 11 left) carry the nick; occupancy events (12, 13) nothing more; their seq is
    // the room's last seq when they happened.
    "CREATE TABLE webhook_outbox (
        id       BIGSERIAL PRIMARY KEY,
        endpoint TEXT NOT NULL,
        room     TEXT NOT NULL,
        seq      BIGINT NOT NULL,
        kind     SMALLINT NOT NULL,
        nick     TEXT,
        first_ms BIGINT NOT NULL,
        due_ms   BIGINT NOT NULL,
        attempts INT NOT NULL DEFAULT 0
     );
     CREATE INDEX webhook_outbox_order ON webhook_outbox (endpoint, id);",
];

/// Messages of $1 after $2 by others than $3 (case-folded), not deleted, up to $4.
const UNREAD: &str = "SELECT count(*) FROM (SELECT 1 FROM messages
     WHERE room = $1 AND seq > $2 AND kind = 0 AND NOT deleted AND lower(sender) <> $3 LIMIT $4) AS u";

/// The columns of a record, in the order [`record_of`] reads them.
const RECORD: &str =
    "room, seq, sender, text, time_ms, kind, target, reply_to, emoji, flag, edited_ms, deleted";

/// A record from a row of [`RECORD`] columns.
fn record_of(row: &tokio_postgres::Row) -> Record {
    let emoji: Option<String> = row.get(8);
    let flag: Option<i16> = row.get(9);
    Record {
        room: row.get(0),
        seq: row.get::<_, i64>(1) as u64,
        from: row.get(2),
        text: row.get(3),
        time_ms: row.get(4),
        kind: kind_of(i64::from(row.get::<_, i16>(5))),
        target: row.get::<_, Option<i64>>(6).map(|s| s as u64),
        reply_to: row.get::<_, Option<i64>>(7).map(|s| s as u64),
        emoji: emoji.map(|e| (e, flag == Some(1))),
        edited_ms: row.get(10),
        deleted: row.get(11),
    }
}

/// A nick's direct-message rooms with messages, and their last seqs ($1: the nick). Each half
/// is one of the indexes of migration 2.
const DM_ROOMS: &str = "
    SELECT name, last_seq FROM rooms
     WHERE left(name, 1) = '@' AND split_part(substr(name, 2), '+', 1) = $1 AND last_seq > 0
    UNION
    SELECT name, last_seq FROM rooms
     WHERE left(name, 1) = '@' AND split_part(name, '+', 2) = $1 AND last_seq > 0";

/// Key of the advisory lock held while migrating ("nanachat" in ASCII).
const MIGRATION_LOCK: i64 = 0x6e61_6e61_6368_6174;

/// Key of the advisory lock held by a round of retention ("nanaprun").
const PRUNE_LOCK: i64 = 0x6e61_6e61_7072_756e;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// History in a PostgreSQL database, shared by every process pointed at it.
#[derive(Debug)]
pub struct PgStore {
    queue: Queue,
    reader: Arc<Link>,
    /// Retention's own connection, made on first use (a server without retention never does).
    pruner: Link,
    shown: String,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`), runs pending migrations and
    /// starts the writer. Fails with a config error if the database cannot be reached now.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, None).await
    }

    /// As [`PgStore::open`]; with `sslmode=require` (or `verify-ca`, `verify-full`) in the URL
    /// the connections speak TLS and verify the server against `ca` (PEM), or the system's
    /// roots without one.
    pub async fn open_with(url: &str, ca: Option<&[u8]>) -> Result<Self> {
        let shown = crate::config::redact_url(url);
        let as_store = format!("{shown} as the history store");
        let (url, wants_tls) = super::pg_tls::ssl_mode(url);
        let tls = match (wants_tls, ca) {
            (true, ca) => Some(super::pg_tls::Rustls::new(ca)?),
            (false, Some(_)) => {
                return Err(Error::Config(format!(
                    "--store-ca-file needs TLS to the store: add ?sslmode=verify-full to '{shown}'"
                )));
            }
            (false, None) => None,
        };
        let mut config = Self::parse_url(&url)?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("nanachat");
        let unreachable = |err: Error| Error::service(&as_store, err);
        // Migrate on a connection of its own: the others prepare statements on the tables.
        let client = connect(&config, tls.as_ref(), &shown)
            .await
            .map_err(|err| unreachable(pg_err(err)))?;
        migrate(&client).await.map_err(unreachable)?;
        drop(client);
        let reader = Arc::new(Link::new(config.clone(), tls.clone(), &shown));
        reader.get().await.map_err(unreachable)?;
        let pruner = Link::new(config.clone(), tls.clone(), &shown);
        let writer = Link::new(config, tls, &shown);
        writer.get().await.map_err(unreachable)?;
        let (queue, rx) = Queue::new();
        tokio::spawn(write_loop(writer, rx, queue.stats().clone()));
        info!(store = %shown, "history store");
        Ok(Self {
            queue,
            reader,
            pruner,
            shown,
        })
    }

    /// Reads `url` as PostgreSQL connection settings, without connecting.
    pub fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
        let (read, _) = super::pg_tls::ssl_mode(url);
        tokio_postgres::Config::from_str(&read).map_err(|err| {
            let shown = crate::config::redact_url(url);
            Error::service(format!("{shown} as the history store"), pg_err(err))
        })
    }

    /// The writer's counters: commits, jobs, commit time, failed batches.
    pub fn stats(&self) -> &StoreStats {
        self.queue.stats()
    }

    /// The database's address, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn pg_err(err: tokio_postgres::Error) -> Error {
    Error::Store(StoreError::Postgres {
        message: describe(&err),
        source: err,
    })
}

/// The error with the server's own message, which tokio-postgres' `Display` leaves out.
fn describe(err: &tokio_postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{}: {}", db.severity(), db.message()),
        (None, Some(cause)) => format!("{err}: {cause}"),
        (None, None) => err.to_string(),
    }
}

/// A client with the statements the store uses, prepared once per connection.
#[derive(Debug)]
struct Conn {
    client: Client,
    lock_room: Statement,
    find_cids: Statement,
    insert: Statement,
    set_last: Statement,
    state: Statement,
    after: Statement,
    before: Statement,
    messages_after: Statement,
    messages_before: Statement,
    wipe_messages: Statement,
    wipe_epoch: Statement,
    prune_rooms: Statement,
    oldest: Statement,
    prune: Statement,
    key_hash: Statement,
    referred: Statement,
    reaction_state: Statement,
    edit_target: Statement,
    delete_target: Statement,
    erase_edits: Statement,
    drop_reactions: Statement,
    react_on: Statement,
    react_off: Statement,
    reactions_of: Statement,
    prune_reactions: Statement,
    wipe_reactions: Statement,
    nick_floors: Statement,
    dm_rooms: Statement,
    bind: Statement,
    clear_floors: Statement,
    keep_floors: Statement,
}

impl Conn {
    async fn prepare(client: Client) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Self {
            // Creates the room if new and locks its row until the transaction ends.
            lock_room: client
                .prepare(
                    "INSERT INTO rooms (name, epoch, last_seq) VALUES ($1, $2, 0)
                     ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
                     RETURNING epoch, last_seq",
                )
                .await?,
            find_cids: client
                .prepare(&format!(
                    "SELECT {RECORD}, m.cid FROM messages m
                     JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(room, sender, cid)
                       USING (room, sender, cid)"
                ))
                .await?,
            insert: client
                .prepare(
                    "INSERT INTO messages (room, seq, sender, text, time_ms, cid, kind, target,
                                           reply_to, emoji, flag)
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[],
                                          $5::int8[], $6::text[], $7::int2[], $8::int8[],
                                          $9::int8[], $10::text[], $11::int2[])",
                )
                .await?,
            referred: client
                .prepare(
                    "SELECT kind, sender, deleted, time_ms,
                            (SELECT bound_ms FROM nick_keys WHERE nick = $3)
                     FROM messages WHERE room = $1 AND seq = $2",
                )
                .await?,
            reaction_state: client
                .prepare(
                    "SELECT count(DISTINCT emoji), coalesce(bool_or(emoji = $3), false),
                            coalesce(bool_or(emoji = $3 AND nick = $4), false)
                     FROM reactions WHERE room = $1 AND seq = $2",
                )
                .await?,
            edit_target: client
                .prepare(
                    "UPDATE messages SET text = $3, edited_ms = $4 WHERE room = $1 AND seq = $2",
                )
                .await?,
            delete_target: client
                .prepare(
                    "UPDATE messages SET text = '', deleted = true WHERE room = $1 AND seq = $2",
                )
                .await?,
            erase_edits: client
                .prepare(
                    "UPDATE messages SET text = '' WHERE room = $1 AND target = $2 AND kind = 1",
                )
                .await?,
            drop_reactions: client
                .prepare("DELETE FROM reactions WHERE room = $1 AND seq = $2")
                .await?,
            react_on: client
                .prepare(
                    "INSERT INTO reactions (room, seq, emoji, nick) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                )
                .await?,
            react_off: client
                .prepare(
                    "DELETE FROM reactions WHERE room = $1 AND seq = $2 AND emoji = $3 AND nick = $4",
                )
                .await?,
            reactions_of: client
                .prepare(
                    "SELECT seq, emoji, count(*), bool_or(nick = $3) FROM reactions
                     WHERE room = $1 AND seq = ANY($2) GROUP BY seq, emoji ORDER BY seq, emoji",
                )
                .await?,
            prune_reactions: client
                .prepare("DELETE FROM reactions WHERE room = $1 AND seq <= $2")
                .await?,
            wipe_reactions: client
                .prepare("DELETE FROM reactions WHERE room = $1")
                .await?,
            set_last: client
                .prepare("UPDATE rooms SET last_seq = $2 WHERE name = $1")
                .await?,
            state: client
                .prepare(
                    "SELECT epoch, last_seq, (SELECT min(seq) FROM messages WHERE room = $1)
                     FROM rooms WHERE name = $1",
                )
                .await?,
            after: client
                .prepare(&format!(
                    "SELECT {RECORD} FROM messages
                     WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
                .await?,
            before: client
                .prepare(&format!(
                    "SELECT {RECORD} FROM messages
                     WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ))
                .await?,
            messages_after: client
                .prepare(&format!(
                    "SELECT {RECORD} FROM messages
                     WHERE room = $1 AND seq > $2 AND kind = 0 ORDER BY seq LIMIT $3"
                ))
                .await?,
            messages_before: client
                .prepare(&format!(
                    "SELECT {RECORD} FROM messages
                     WHERE room = $1 AND seq < $2 AND kind = 0 ORDER BY seq DESC LIMIT $3"
                ))
                .await?,
            wipe_messages: client
                .prepare("DELETE FROM messages WHERE room = $1")
                .await?,
            wipe_epoch: client
                .prepare(
                    "UPDATE rooms SET epoch = GREATEST($2, epoch + 1) WHERE name = $1
                     RETURNING epoch, last_seq",
                )
                .await?,
            prune_rooms: client
                .prepare("SELECT name, last_seq FROM rooms WHERE name >= $1 ORDER BY name LIMIT $2")
                .await?,
            oldest: client
                .prepare("SELECT seq, time_ms FROM messages WHERE room = $1 ORDER BY seq LIMIT $2")
                .await?,
            prune: client
                .prepare("DELETE FROM messages WHERE room = $1 AND seq <= $2")
                .await?,
            key_hash: client
                .prepare("SELECT key_hash FROM nick_keys WHERE nick = $1")
                .await?,
            nick_floors: client
                .prepare("SELECT room, floor FROM nick_floors WHERE nick = $1")
                .await?,
            dm_rooms: client.prepare(DM_ROOMS).await?,
            bind: client
                .prepare(
                    "INSERT INTO nick_keys (nick, key_hash, bound_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (nick) DO NOTHING RETURNING nick",
                )
                .await?,
            clear_floors: client
                .prepare("DELETE FROM nick_floors WHERE nick = $1")
                .await?,
            keep_floors: client
                .prepare(
                    "INSERT INTO nick_floors (nick, room, floor)
                     SELECT $1, * FROM UNNEST($2::text[], $3::int8[])",
                )
                .await?,
            client,
        })
    }
}

/// One connection, made again with back-off when it breaks.
#[derive(Debug)]
struct Link {
    config: tokio_postgres::Config,
    /// TLS, when the URL asks for it.
    tls: Option<super::pg_tls::Rustls>,
    shown: String,
    conn: Reconnecting<Arc<Conn>>,
}

/// A connection made with `config` (over TLS with `tls`), its driving task spawned.
async fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&super::pg_tls::Rustls>,
    shown: &str,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
    let shown = shown.to_owned();
    let ended = move |err: tokio_postgres::Error| {
        debug!(store = %shown, cause = %err, "PostgreSQL connection ended");
    };
    match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move { connection.await.map_err(ended) });
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            tokio::spawn(async move { connection.await.map_err(ended) });
            Ok(client)
        }
    }
}

impl Link {
    fn new(
        config: tokio_postgres::Config,
        tls: Option<super::pg_tls::Rustls>,
        shown: &str,
    ) -> Self {
        Self {
            config,
            tls,
            shown: shown.to_owned(),
            conn: Reconnecting::new(format!("PostgreSQL at {shown}")),
        }
    }

    /// The live connection, or a new one; while the database is unreachable this fails at
    /// once until the back-off has passed.
    async fn get(&self) -> Result<Arc<Conn>> {
        let connect = || async { self.connect().await.map(Arc::new).map_err(pg_err) };
        self.conn.get(|c| !c.client.is_closed(), connect).await
    }

    async fn connect(&self) -> std::result::Result<Conn, tokio_postgres::Error> {
        let client = connect(&self.config, self.tls.as_ref(), &self.shown).await?;
        Conn::prepare(client).await
    }

    /// Forgets a connection that failed mid-transaction, so the next use makes a new one.
    async fn reset(&self) {
        self.conn.reset().await;
    }
}

/// The webhook outbox of a PostgreSQL store, on a connection of its own (one per delivery
/// task). A round runs in one transaction under a transaction-level advisory lock on its
/// endpoint: in a cluster one process at a time delivers an endpoint's events, and what a
/// round settled is committed before another round reads the outbox.
#[derive(Debug)]
pub struct PgOutbox {
    link: Link,
    /// The connection of the round under way (its transaction open).
    round: Option<Arc<Conn>>,
}

impl PgStore {
    /// Turns webhooks on: from now on every append also writes one outbox row per endpoint
    /// of `hooks`, in its own transaction.
    pub fn hook(&self, hooks: Arc<super::outbox::Hooks>) -> Result<()> {
        self.queue.stats().hook(hooks)
    }

    /// A connection to the outbox, for one delivery task (made on first use).
    pub fn outbox(&self) -> PgOutbox {
        PgOutbox {
            link: Link::new(
                self.reader.config.clone(),
                self.reader.tls.clone(),
                &self.shown,
            ),
            round: None,
        }
    }
}

/// A pending event and its record, from a row of `o.room, o.seq, o.kind, o.first_ms,
/// o.attempts, o.due_ms, m.found` then the [`RECORD`] columns of `m`.
fn pending_of(row: &tokio_postgres::Row) -> super::outbox::Pending {
    let found: bool = row.get(6);
    let record = found.then(|| {
        let emoji: Option<String> = row.get(15);
        let flag: Option<i16> = row.get(16);
        Record {
            room: row.get(7),
            seq: row.get::<_, i64>(8) as u64,
            from: row.get(9),
            text: row.get(10),
            time_ms: row.get(11),
            kind: kind_of(i64::from(row.get::<_, i16>(12))),
            target: row.get::<_, Option<i64>>(13).map(|s| s as u64),
            reply_to: row.get::<_, Option<i64>>(14).map(|s| s as u64),
            emoji: emoji.map(|e| (e, flag.unwrap_or(0) != 0)),
            edited_ms: row.get(17),
            deleted: row.get(18),
        }
    });
    super::outbox::Pending {
        id: row.get(19),
        room: row.get(0),
        seq: row.get::<_, i64>(1) as u64,
        event: super::outbox::Event::of_code(i64::from(row.get::<_, i16>(2))),
        nick: row.get(20),
        first_ms: row.get(3),
        attempts: row.get::<_, i32>(4) as u32,
        due_ms: row.get(5),
        record,
    }
}

impl PgOutbox {
    async fn end(&mut self, commit: bool) -> Result<()> {
        if let Some(conn) = self.round.take() {
            let sql = if commit { "COMMIT" } else { "ROLLBACK" };
            if let Err(err) = conn.client.batch_execute(sql).await {
                self.link.reset().await;
                return Err(pg_err(err));
            }
        }
        Ok(())
    }
}

impl super::outbox::Outbox for PgOutbox {
    async fn take(
        &mut self,
        endpoint: &str,
        limit: usize,
    ) -> Result<Option<Vec<super::outbox::Pending>>> {
        self.end(false).await?;
        let conn = self.link.get().await?;
        let key = super::outbox::lock_key(endpoint);
        let taken = async {
            conn.client.batch_execute("BEGIN").await?;
            let locked: bool = conn
                .client
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
                .await?
                .get(0);
            if !locked {
                conn.client.batch_execute("ROLLBACK").await?;
                return Ok(None);
            }
            let rows = conn
                .client
                .query(
                    "SELECT o.room, o.seq, o.kind, o.first_ms, o.attempts, o.due_ms,
                            m.room IS NOT NULL, m.room, m.seq, m.sender, m.text, m.time_ms,
                            m.kind, m.target, m.reply_to, m.emoji, m.flag, m.edited_ms,
                            m.deleted, o.id, o.nick
                     FROM webhook_outbox o
                     LEFT JOIN messages m ON m.room = o.room AND m.seq = o.seq AND o.kind < 10
                     WHERE o.endpoint = $1 ORDER BY o.id LIMIT $2",
                    &[&endpoint, &(limit as i64)],
                )
                .await?;
            Ok(Some(rows.iter().map(pending_of).collect()))
        }
        .await;
        match taken {
            Ok(Some(pending)) => {
                self.round = Some(conn);
                Ok(Some(pending))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                if conn.client.batch_execute("ROLLBACK").await.is_err() {
                    self.link.reset().await;
                }
                Err(pg_err(err))
            }
        }
    }

    async fn settle(&mut self, _endpoint: &str, settled: &[super::outbox::Settled]) -> Result<()> {
        use super::outbox::Settled;
        let Some(conn) = self.round.clone() else {
            return Ok(());
        };
        let written = async {
            for s in settled {
                match s {
                    Settled::Done { id } => {
                        conn.client
                            .execute("DELETE FROM webhook_outbox WHERE id = $1", &[id])
                            .await?;
                    }
                    Settled::Retry {
                        id,
                        attempts,
                        due_ms,
                    } => {
                        conn.client
                            .execute(
                                "UPDATE webhook_outbox SET attempts = $2, due_ms = $3 WHERE id = $1",
                                &[id, &(*attempts as i32), due_ms],
                            )
                            .await?;
                    }
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        match written {
            Ok(()) => self.end(true).await,
            Err(err) => {
                self.end(false).await?;
                Err(pg_err(err))
            }
        }
    }

    async fn backlog(&mut self, endpoint: &str) -> Result<(u64, Option<i64>)> {
        self.end(false).await?;
        let conn = self.link.get().await?;
        let row = conn
            .client
            .query_one(
                "SELECT count(*), min(first_ms) FROM webhook_outbox WHERE endpoint = $1",
                &[&endpoint],
            )
            .await
            .map_err(pg_err)?;
        Ok((row.get::<_, i64>(0) as u64, row.get(1)))
    }
}

/// Brings the schema up to date. Everything, the first table included, happens under the
/// advisory lock: `CREATE TABLE IF NOT EXISTS` is not safe against itself (two processes
/// creating it at once on an empty database, one fails on `pg_type_typname_nsp_index`).
async fn migrate(client: &Client) -> Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS nanachat_schema (version INT NOT NULL);
                 INSERT INTO nanachat_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM nanachat_schema);",
            )
            .await
            .map_err(pg_err)?;
        migrate_locked(client).await
    }
    .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err);
    result.and(unlocked.map(drop))
}

async fn migrate_locked(client: &Client) -> Result<()> {
    let version: i32 = client
        .query_one("SELECT version FROM nanachat_schema", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    let version = version as usize;
    if version > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "the database's schema (version {version}) is newer than this nanachat knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let next = (i + 1) as i32;
        client
            .batch_execute(&format!(
                "BEGIN; {sql}; UPDATE nanachat_schema SET version = {next}; COMMIT;"
            ))
            .await
            .map_err(pg_err)?;
        info!(version = next, "PostgreSQL store migrated");
    }
    Ok(())
}

impl PgStore {
    /// Up to `limit` records of `room`, oldest first (with `only_messages`, no events).
    async fn page(
        &self,
        room: &str,
        page: Page,
        limit: usize,
        only_messages: bool,
    ) -> Result<Vec<Record>> {
        let conn = self.reader.get().await?;
        let limit = limit.min(MAX_PAGE) as i64;
        let (stmt, seq) = match (page, only_messages) {
            (Page::After(seq), false) => (&conn.after, seq),
            (Page::Before(seq), false) => (&conn.before, seq),
            (Page::After(seq), true) => (&conn.messages_after, seq),
            (Page::Before(seq), true) => (&conn.messages_before, seq),
        };
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let rows = conn
            .client
            .query(stmt, &[&room, &seq, &limit])
            .await
            .map_err(pg_err)?;
        let mut records: Vec<Record> = rows.iter().map(record_of).collect();
        if matches!(page, Page::Before(_)) {
            records.reverse();
        }
        Ok(records)
    }
}

impl Store for PgStore {
    super::queue::store_methods_on_the_queue!();

    async fn ping(&self) -> Result<()> {
        let conn = self.reader.get().await?;
        conn.client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(pg_err)
    }

    async fn search(
        &self,
        words: Vec<String>,
        rooms: Vec<String>,
        limit: usize,
        skip: usize,
    ) -> Result<Vec<Record>> {
        if words.is_empty() || rooms.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.reader.get().await?;
        // Plain words only (see `search_words`): `plainto_tsquery` ANDs them.
        let query = words.join(" ");
        let (limit, skip) = (limit.min(MAX_PAGE) as i64, skip as i64);
        let rows = conn
            .client
            .query(
                &format!(
                    "SELECT {RECORD} FROM messages, plainto_tsquery('simple', $1) AS q
                     WHERE tsv @@ q AND kind = 0 AND NOT deleted AND room = ANY($2)
                     ORDER BY ts_rank(tsv, q) DESC, time_ms DESC LIMIT $3 OFFSET $4"
                ),
                &[&query, &rooms, &limit, &skip],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(record_of).collect())
    }

    async fn replies(&self, room: &str, seq: u64, after: u64, limit: usize) -> Result<Vec<Record>> {
        let conn = self.reader.get().await?;
        let limit = limit.min(MAX_PAGE) as i64;
        let (seq, after) = (
            seq.min(i64::MAX as u64) as i64,
            after.min(i64::MAX as u64) as i64,
        );
        let rows = conn
            .client
            .query(
                &format!(
                    "SELECT {RECORD} FROM messages
                     WHERE room = $1 AND reply_to = $2 AND kind = 0 AND seq > $3
                     ORDER BY seq LIMIT $4"
                ),
                &[&room, &seq, &after, &limit],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(record_of).collect())
    }

    async fn rooms_of(&self, nick: &str) -> Result<Vec<String>> {
        let conn = self.reader.get().await?;
        let nick = nick.to_ascii_lowercase();
        let rooms = read_positions(&conn, &nick).await.map_err(pg_err)?;
        Ok(rooms.into_keys().collect())
    }

    async fn inbox(&self, nick: &str, floors: Vec<(String, u64)>) -> Result<Vec<InboxRoom>> {
        let conn = self.reader.get().await?;
        let client = &conn.client;
        let nick = nick.to_ascii_lowercase();
        let inbox = async {
            let rooms = read_positions(&conn, &nick).await?;
            let floor = |room: &str| {
                floors
                    .iter()
                    .find(|(r, _)| r == room)
                    .map_or(0, |(_, f)| *f)
            };
            let last_stmt = format!(
                "SELECT {RECORD} FROM messages
                 WHERE room = $1 AND kind = 0 AND seq > $2 ORDER BY seq DESC LIMIT 1"
            );
            let mut out = Vec::with_capacity(rooms.len());
            for (room, read) in rooms {
                let floor = floor(&room);
                let read_seq = read.max(floor);
                let last_seq: i64 = client
                    .query_one(
                        "SELECT coalesce(max(last_seq), 0)::int8 FROM rooms WHERE name = $1",
                        &[&room],
                    )
                    .await?
                    .get(0);
                let last = client
                    .query_opt(&last_stmt, &[&room, &(floor as i64)])
                    .await?
                    .map(|row| record_of(&row));
                let unread: i64 = client
                    .query_one(
                        UNREAD,
                        &[&room, &(read_seq as i64), &nick, &(UNREAD_CAP as i64)],
                    )
                    .await?
                    .get(0);
                out.push(InboxRoom {
                    room,
                    last_seq: last_seq as u64,
                    state: ReadState {
                        read_seq,
                        unread: unread as u64,
                    },
                    last,
                });
            }
            Ok::<_, tokio_postgres::Error>(out)
        };
        inbox.await.map_err(pg_err)
    }

    async fn reactions(&self, room: &str, seqs: &[u64], nick: &str) -> Result<Vec<ReactionCount>> {
        let conn = self.reader.get().await?;
        let seqs: Vec<i64> = seqs.iter().map(|&s| s as i64).collect();
        let nick = nick.to_ascii_lowercase();
        let rows = conn
            .client
            .query(&conn.reactions_of, &[&room, &seqs, &nick])
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, i64>(0) as u64,
                    row.get(1),
                    row.get::<_, i64>(2) as u32,
                    row.get(3),
                )
            })
            .collect())
    }

    async fn history(&self, room: &str, page: Page, limit: usize) -> Result<Vec<Record>> {
        self.page(room, page, limit, false).await
    }

    async fn messages(&self, room: &str, page: Page, limit: usize) -> Result<Vec<Record>> {
        self.page(room, page, limit, true).await
    }

    async fn room_state(&self, room: &str) -> Result<RoomState> {
        let conn = self.reader.get().await?;
        let known = conn
            .client
            .query_opt(&conn.state, &[&room])
            .await
            .map_err(pg_err)?;
        match known {
            Some(row) => Ok(room_state(&row)),
            // A room never used is created, or found made by another process meanwhile: the
            // upsert returns the row either way (a plain `DO NOTHING` returns none when it
            // lost the race, and a SELECT in the same statement cannot see the winner's row).
            None => {
                let row = conn
                    .client
                    .query_one(&conn.lock_room, &[&room, &(new_epoch() as i64)])
                    .await
                    .map_err(pg_err)?;
                let made = room_state(&row);
                if made.last_seq == 0 {
                    return Ok(made);
                }
                // Another process stored messages meanwhile: ask again for the least kept.
                let row = conn
                    .client
                    .query_one(&conn.state, &[&room])
                    .await
                    .map_err(pg_err)?;
                Ok(room_state(&row))
            }
        }
    }

    async fn nick_binding(&self, nick: &str) -> Result<Option<String>> {
        let conn = self.reader.get().await?;
        let row = conn
            .client
            .query_opt(&conn.key_hash, &[&nick])
            .await
            .map_err(pg_err)?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Free, or bound already: read beside the writer. Binding: by the writer, in its batch's
    /// transaction, so that the floors kept are where the rooms stood between two appends.
    async fn take_nick(&self, nick: &str, bind: Option<String>) -> Result<Holding> {
        match bind {
            Some(hash) => self.queue.bind(nick, hash).await,
            None => {
                let conn = self.reader.get().await?;
                holding(&conn, nick).await.map_err(pg_err)
            }
        }
    }

    async fn prune(
        &self,
        retention: Retention,
        now_ms: i64,
        from: &str,
        limit: usize,
    ) -> Result<Pruned> {
        let conn = self.pruner.get().await?;
        match prune_round(&conn, retention, now_ms, from, limit.max(1)).await {
            Ok(pruned) => Ok(pruned),
            Err(err) => {
                if conn.client.batch_execute("ROLLBACK").await.is_err() {
                    self.pruner.reset().await;
                }
                Err(pg_err(err))
            }
        }
    }
}

/// A known user's rooms (case-folded `nick`) and how far it read each: its memberships, and
/// its direct-message rooms with messages (read up to 0 if it never said how far).
async fn read_positions(
    conn: &Conn,
    nick: &str,
) -> std::result::Result<BTreeMap<String, u64>, tokio_postgres::Error> {
    let mut rooms: BTreeMap<String, u64> = conn
        .client
        .query(
            "SELECT room, read_seq FROM memberships WHERE nick = $1",
            &[&nick],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect();
    for row in conn.client.query(&conn.dm_rooms, &[&nick]).await? {
        rooms.entry(row.get(0)).or_insert(0);
    }
    Ok(rooms)
}

/// The nick's binding and its floors: kept with the binding, or (bound to no key) where its
/// direct-message rooms stand now.
async fn holding(conn: &Conn, nick: &str) -> std::result::Result<Holding, tokio_postgres::Error> {
    let key_hash: Option<String> = conn
        .client
        .query_opt(&conn.key_hash, &[&nick])
        .await?
        .map(|row| row.get(0));
    let stmt = match key_hash {
        Some(_) => &conn.nick_floors,
        None => &conn.dm_rooms,
    };
    let floors = conn
        .client
        .query(stmt, &[&nick])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect();
    Ok(Holding { key_hash, floors })
}

/// In a batch's transaction: binds `nick` to `hash` if it is bound to no key, keeping where
/// its direct-message rooms stand — those this batch appends to, as far as it has gone when
/// the binding comes (floors left by a binding an operator deleted go first); then its holding.
async fn apply_bind(
    conn: &Conn,
    rooms: &BTreeMap<&str, RoomTx>,
    nick: &str,
    hash: &str,
) -> std::result::Result<Holding, tokio_postgres::Error> {
    let client = &conn.client;
    let bound = client
        .query_opt(&conn.bind, &[&nick, &hash, &now_ms()])
        .await?
        .is_some();
    if bound {
        client.execute(&conn.clear_floors, &[&nick]).await?;
        let mut floors: BTreeMap<String, i64> = client
            .query(&conn.dm_rooms, &[&nick])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        for (room, tx) in rooms {
            if tx.last_seq > 0 && is_dm_of(room, nick) {
                floors.insert((*room).to_owned(), tx.last_seq as i64);
            }
        }
        let (names, seqs): (Vec<String>, Vec<i64>) = floors.into_iter().unzip();
        client
            .execute(&conn.keep_floors, &[&nick, &names, &seqs])
            .await?;
    }
    holding(conn, nick).await
}

/// A room's state from a row of (epoch, last_seq[, the least seq kept or NULL]); a row
/// without the third column is a room with nothing kept.
fn room_state(row: &tokio_postgres::Row) -> RoomState {
    let (epoch, last_seq) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
    let first: Option<i64> = if row.len() > 2 { row.get(2) } else { None };
    RoomState {
        epoch,
        last_seq,
        first_seq: first.map_or(last_seq + 1, |seq| seq as u64),
    }
}

/// One round of retention in one transaction, under [`PRUNE_LOCK`]: a process that finds
/// another one pruning skips the round (it is done meanwhile, and the next round is a minute
/// away).
async fn prune_round(
    conn: &Conn,
    retention: Retention,
    now_ms: i64,
    from: &str,
    limit: usize,
) -> std::result::Result<Pruned, tokio_postgres::Error> {
    let client = &conn.client;
    client.batch_execute("BEGIN").await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
        .await?
        .get(0);
    if !locked {
        client.batch_execute("ROLLBACK").await?;
        debug!("another process is pruning: this round is skipped");
        return Ok(Pruned::default());
    }
    let mut rooms: Vec<(String, u64)> = client
        .query(&conn.prune_rooms, &[&from, &((PRUNE_ROOMS + 1) as i64)])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get::<_, i64>(1) as u64))
        .collect();
    let next = (rooms.len() > PRUNE_ROOMS)
        .then(|| rooms.pop().map(|(name, _)| name))
        .flatten();
    let mut deleted = 0;
    let mut stopped = None;
    for (room, last_seq) in rooms {
        let budget = limit - deleted;
        let oldest: Vec<(u64, i64)> = client
            .query(&conn.oldest, &[&room, &(budget as i64)])
            .await?
            .iter()
            .map(|row| (row.get::<_, i64>(0) as u64, row.get(1)))
            .collect();
        let doomed = retention.doomed(now_ms, last_seq, &oldest);
        if doomed > 0 {
            let upto = oldest[doomed - 1].0 as i64;
            client.execute(&conn.prune, &[&room, &upto]).await?;
            client
                .execute(&conn.prune_reactions, &[&room, &upto])
                .await?;
        }
        deleted += doomed;
        if deleted == limit {
            stopped = Some(room);
            break;
        }
    }
    client.batch_execute("COMMIT").await?;
    Ok(Pruned {
        deleted: deleted as u64,
        next: stopped.or(next),
    })
}

/// The writer task: drains waiting jobs into one transaction, commits, then answers them.
async fn write_loop(link: Link, mut rx: mpsc::Receiver<Job>, stats: Arc<StoreStats>) {
    while let Some(first) = rx.recv().await {
        let jobs = take_batch(first, &mut rx);
        let started = Instant::now();
        let outcome = match link.get().await {
            Ok(conn) => match commit_batch(&conn, &jobs, stats.endpoints()).await {
                Ok(done) => Ok(done),
                Err(err) => {
                    // Roll back what the failed batch did; a broken connection is made anew.
                    if conn.client.batch_execute("ROLLBACK").await.is_err() {
                        link.reset().await;
                    }
                    Err(pg_err(err))
                }
            },
            Err(err) => Err(err),
        };
        let events = outcome.is_ok()
            && jobs
                .iter()
                .any(|job| matches!(job, Job::Append(..) | Job::Member(..)));
        answer_batch(jobs, outcome, started, &stats);
        if events && let Some(hooks) = stats.hooks.get() {
            hooks.wake();
        }
    }
}

/// What one room's part of a batch has reached.
struct RoomTx {
    epoch: u64,
    last_seq: u64,
    /// (sender, cid) → the record stored under it, before or earlier in this batch.
    cids: HashMap<(String, String), Record>,
}

/// Rows to insert, column by column (for `UNNEST`).
#[derive(Default)]
struct Rows {
    room: Vec<String>,
    seq: Vec<i64>,
    sender: Vec<String>,
    text: Vec<String>,
    time_ms: Vec<i64>,
    cid: Vec<Option<String>>,
    kind: Vec<i16>,
    target: Vec<Option<i64>>,
    reply_to: Vec<Option<i64>>,
    emoji: Vec<Option<String>>,
    flag: Vec<Option<i16>>,
}

impl Rows {
    fn push(&mut self, record: &Record, cid: Option<String>) {
        self.room.push(record.room.clone());
        self.seq.push(record.seq as i64);
        self.sender.push(record.from.clone());
        self.text.push(record.text.clone());
        self.time_ms.push(record.time_ms);
        self.cid.push(cid);
        self.kind.push(kind_code(record.kind));
        self.target.push(record.target.map(|s| s as i64));
        self.reply_to.push(record.reply_to.map(|s| s as i64));
        self.emoji
            .push(record.emoji.as_ref().map(|(e, _)| e.clone()));
        self.flag
            .push(record.emoji.as_ref().map(|(_, on)| i16::from(*on)));
    }

    async fn write(&mut self, conn: &Conn) -> std::result::Result<(), tokio_postgres::Error> {
        if !self.room.is_empty() {
            conn.client
                .execute(
                    &conn.insert,
                    &[
                        &self.room,
                        &self.seq,
                        &self.sender,
                        &self.text,
                        &self.time_ms,
                        &self.cid,
                        &self.kind,
                        &self.target,
                        &self.reply_to,
                        &self.emoji,
                        &self.flag,
                    ],
                )
                .await?;
            *self = Self::default();
        }
        Ok(())
    }
}

/// Writes a membership or occupancy event of `room` for every endpoint, under the room's last
/// seq now.
async fn hook_event(
    client: &Client,
    endpoints: &[String],
    room: &str,
    event: super::outbox::Event,
    nick: Option<&str>,
) -> std::result::Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO webhook_outbox (endpoint, room, seq, kind, nick, first_ms, due_ms)
             SELECT e.endpoint, $2, coalesce((SELECT last_seq FROM rooms WHERE name = $2), 0),
                    $3, $4, $5, $5
             FROM UNNEST($1::text[]) WITH ORDINALITY AS e(endpoint, i) ORDER BY e.i",
            &[&endpoints, &room, &event.code(), &nick, &now_ms()],
        )
        .await?;
    Ok(())
}

async fn members_of(
    client: &Client,
    room: &str,
) -> std::result::Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM memberships WHERE room = $1", &[&room])
        .await?
        .get(0))
}

async fn apply_membership(
    client: &Client,
    nick: &str,
    room: &str,
    change: Membership,
    endpoints: &[String],
) -> std::result::Result<ReadState, tokio_postgres::Error> {
    use super::outbox::Event;
    // With webhooks on, a membership that begins or ends is an event (and a room's first
    // member, or its last leaving, another), written here in the change's transaction.
    let hooked = !endpoints.is_empty();
    let was_member = hooked
        && matches!(change, Membership::Remember { .. })
        && client
            .query_opt(
                "SELECT 1 FROM memberships WHERE nick = $1 AND room = $2",
                &[&nick, &room],
            )
            .await?
            .is_some();
    let read_seq: i64 = match change {
        Membership::Forget => {
            let left = client
                .execute(
                    "DELETE FROM memberships WHERE nick = $1 AND room = $2",
                    &[&nick, &room],
                )
                .await?;
            if hooked && left > 0 {
                hook_event(client, endpoints, room, Event::Left, Some(nick)).await?;
                if members_of(client, room).await? == 0 {
                    hook_event(client, endpoints, room, Event::Vacated, None).await?;
                }
            }
            return Ok(ReadState::default());
        }
        Membership::Remember { last_seq } => client
            .query_one(
                "INSERT INTO memberships (nick, room, read_seq) VALUES ($1, $2, $3)
                 ON CONFLICT (nick, room) DO UPDATE SET read_seq = memberships.read_seq
                 RETURNING read_seq",
                &[&nick, &room, &(last_seq as i64)],
            )
            .await?
            .get(0),
        Membership::Read { seq } => client
            .query_one(
                "INSERT INTO memberships (nick, room, read_seq)
                 VALUES ($1, $2, LEAST($3, coalesce((SELECT last_seq FROM rooms WHERE name = $2), 0)))
                 ON CONFLICT (nick, room)
                 DO UPDATE SET read_seq = GREATEST(memberships.read_seq, EXCLUDED.read_seq)
                 RETURNING read_seq",
                &[&nick, &room, &(seq.min(i64::MAX as u64) as i64)],
            )
            .await?
            .get(0),
    };
    if hooked && matches!(change, Membership::Remember { .. }) && !was_member {
        hook_event(client, endpoints, room, Event::Joined, Some(nick)).await?;
        if members_of(client, room).await? == 1 {
            hook_event(client, endpoints, room, Event::Occupied, None).await?;
        }
    }
    let unread: i64 = client
        .query_one(UNREAD, &[&room, &read_seq, &nick, &(UNREAD_CAP as i64)])
        .await?
        .get(0);
    Ok(ReadState {
        read_seq: read_seq as u64,
        unread: unread as u64,
    })
}

/// Whether `append`, which refers to a message, may be stored (read in the batch's
/// transaction, with the room locked).
async fn judge_on(
    conn: &Conn,
    append: &Append,
) -> std::result::Result<std::result::Result<(), Objection>, tokio_postgres::Error> {
    let Some(target) = append.op.refers_to() else {
        return Ok(Ok(()));
    };
    let target = target as i64;
    let referred = conn
        .client
        .query_opt(
            &conn.referred,
            &[&append.room, &target, &append.from.to_ascii_lowercase()],
        )
        .await?
        .map(|row| Referred {
            kind: kind_of(i64::from(row.get::<_, i16>(0))),
            from: row.get(1),
            deleted: row.get(2),
            time: row.get(3),
            sender_bound: row.get(4),
        });
    let mut seen = Reactions::default();
    if let Op::React { emoji, .. } = &append.op {
        let nick = append.from.to_ascii_lowercase();
        let row = conn
            .client
            .query_one(&conn.reaction_state, &[&append.room, &target, emoji, &nick])
            .await?;
        seen = Reactions {
            distinct: row.get::<_, i64>(0) as usize,
            used: row.get(1),
            mine: row.get(2),
        };
    }
    Ok(judge(append, referred.as_ref(), seen))
}

/// What an event does to its message: a new text, an erasure, a reaction added or taken back.
async fn apply_effect(
    conn: &Conn,
    append: &Append,
    time_ms: i64,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (room, client) = (&append.room, &conn.client);
    match &append.op {
        Op::Say { .. } => {}
        Op::Edit { target } => {
            let target = *target as i64;
            client
                .execute(&conn.edit_target, &[room, &target, &append.text, &time_ms])
                .await?;
        }
        Op::Delete { target } => {
            let target = *target as i64;
            client
                .execute(&conn.delete_target, &[room, &target])
                .await?;
            client.execute(&conn.erase_edits, &[room, &target]).await?;
            client
                .execute(&conn.drop_reactions, &[room, &target])
                .await?;
        }
        Op::React { target, emoji, on } => {
            let (target, nick) = (*target as i64, append.from.to_ascii_lowercase());
            let stmt = if *on { &conn.react_on } else { &conn.react_off };
            client.execute(stmt, &[room, &target, emoji, &nick]).await?;
        }
    }
    Ok(())
}

/// Runs every job in one transaction. Any failure rolls the whole batch back (the caller
/// issues the `ROLLBACK`), so no seq is ever taken without its message.
async fn commit_batch(
    conn: &Conn,
    jobs: &[Job],
    endpoints: &[String],
) -> std::result::Result<Vec<Done>, tokio_postgres::Error> {
    let client = &conn.client;
    client.batch_execute("BEGIN").await?;
    // Lock every room of the batch, in name order.
    let mut rooms: BTreeMap<&str, RoomTx> = BTreeMap::new();
    for job in jobs {
        if let Job::Append(Append { room, .. }, _) | Job::Ensure(room, _) | Job::Wipe(room, _) = job
        {
            rooms.entry(room).or_insert(RoomTx {
                epoch: 0,
                last_seq: 0,
                cids: HashMap::new(),
            });
        }
    }
    for (name, tx) in rooms.iter_mut() {
        let row = client
            .query_one(&conn.lock_room, &[name, &(new_epoch() as i64)])
            .await?;
        let state = room_state(&row);
        (tx.epoch, tx.last_seq) = (state.epoch, state.last_seq);
    }
    // With webhooks on, membership changes of one room, on any process, one after the other
    // (an advisory lock per room, taken here for the whole batch in name order, after the
    // rooms' rows: taken job by job, two batches deadlocked): of two first joins at once, one
    // sees the other's and only one says `room.occupied`.
    if !endpoints.is_empty() {
        let mut joined: Vec<&str> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Member(_, room, Membership::Remember { .. } | Membership::Forget, _) => {
                    Some(room.as_str())
                }
                _ => None,
            })
            .collect();
        joined.sort_unstable();
        joined.dedup();
        for room in joined {
            client
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext('nanachat-room:' || $1))",
                    &[&room],
                )
                .await?;
        }
    }
    // With the rooms locked, every earlier append of these rooms is committed and visible:
    // look up the cids of this batch among them.
    let (mut k_room, mut k_sender, mut k_cid) = (Vec::new(), Vec::new(), Vec::new());
    for job in jobs {
        if let Job::Append(a, _) = job
            && let Some(cid) = &a.cid
        {
            k_room.push(a.room.as_str());
            k_sender.push(a.from.as_str());
            k_cid.push(cid.as_str());
        }
    }
    if !k_room.is_empty() {
        for row in client
            .query(&conn.find_cids, &[&k_room, &k_sender, &k_cid])
            .await?
        {
            let record = record_of(&row);
            let cid: String = row.get(12);
            if let Some(tx) = rooms.get_mut(record.room.as_str()) {
                tx.cids.insert((record.from.clone(), cid), record);
            }
        }
    }
    let mut rows = Rows::default();
    // The webhook events of the batch (room, seq, kind, time), in seq order per room.
    let mut events: (Vec<String>, Vec<i64>, Vec<i16>, Vec<i64>) = Default::default();
    let mut done = Vec::with_capacity(jobs.len());
    for job in jobs {
        done.push(match job {
            Job::Append(a, _) => {
                let Some(tx) = rooms.get_mut(a.room.as_str()) else {
                    unreachable!("every room of the batch is locked")
                };
                let key = a.cid.as_ref().map(|cid| (a.from.clone(), cid.clone()));
                match key.as_ref().and_then(|k| tx.cids.get(k)) {
                    Some(original) => Done::Append(Ok(Appended::again(original.clone(), a))),
                    None => {
                        if a.op.refers_to().is_some() {
                            // What it refers to may be earlier in this batch: written first.
                            rows.write(conn).await?;
                            if let Err(refusal) = judge_on(conn, a).await? {
                                done.push(Done::Append(Ok(Appended::Refused(refusal))));
                                continue;
                            }
                            apply_effect(conn, a, now_ms()).await?;
                        }
                        tx.last_seq += 1;
                        let record = Record::of(a, tx.last_seq, now_ms());
                        rows.push(&record, a.cid.clone());
                        if !endpoints.is_empty() {
                            events.0.push(record.room.clone());
                            events.1.push(record.seq as i64);
                            events.2.push(kind_code(record.kind));
                            events.3.push(record.time_ms);
                        }
                        if let Some(key) = key {
                            tx.cids.insert(key, record.clone());
                        }
                        Done::Append(Ok(Appended::Stored(record)))
                    }
                }
            }
            Job::Ensure(room, _) => {
                let row = client.query_one(&conn.state, &[room]).await?;
                let tx = &rooms[room.as_str()];
                Done::State(Ok(RoomState {
                    epoch: tx.epoch,
                    last_seq: tx.last_seq,
                    first_seq: room_state(&row).first_seq.min(tx.last_seq + 1),
                }))
            }
            Job::Wipe(room, _) => {
                // What this batch appended before the wipe is wiped with the rest.
                rows.write(conn).await?;
                client.execute(&conn.wipe_messages, &[room]).await?;
                client.execute(&conn.wipe_reactions, &[room]).await?;
                let row = client
                    .query_one(&conn.wipe_epoch, &[room, &(new_epoch() as i64)])
                    .await?;
                let Some(tx) = rooms.get_mut(room.as_str()) else {
                    unreachable!("every room of the batch is locked")
                };
                tx.epoch = room_state(&row).epoch;
                tx.cids.clear();
                Done::State(Ok(RoomState::empty(tx.epoch, tx.last_seq)))
            }
            Job::Bind(nick, hash, _) => Done::Held(Ok(apply_bind(conn, &rooms, nick, hash).await?)),
            Job::Member(nick, room, change, _) => {
                // What this batch appended counts.
                rows.write(conn).await?;
                let read = apply_membership(client, nick, room, *change, endpoints).await?;
                Done::Member(Ok(read))
            }
            // This store prunes on a connection of its own, never through the writer.
            Job::Prune(..) => Done::Pruned(Ok(Pruned::default())),
            Job::Flush(_) => Done::Flushed(Ok(())),
        });
    }
    rows.write(conn).await?;
    if !events.0.is_empty() {
        client
            .execute(
                "INSERT INTO webhook_outbox (endpoint, room, seq, kind, first_ms, due_ms)
                 SELECT e.endpoint, r.room, r.seq, r.kind, r.t, r.t
                 FROM UNNEST($1::text[]) WITH ORDINALITY AS e(endpoint, i)
                 CROSS JOIN UNNEST($2::text[], $3::int8[], $4::int2[], $5::int8[])
                      WITH ORDINALITY AS r(room, seq, kind, t, j)
                 ORDER BY e.i, r.j",
                &[&endpoints, &events.0, &events.1, &events.2, &events.3],
            )
            .await?;
    }
    for (name, tx) in &rooms {
        client
            .execute(&conn.set_last, &[name, &(tx.last_seq as i64)])
            .await?;
    }
    client.batch_execute("COMMIT").await?;
    Ok(done)
}
