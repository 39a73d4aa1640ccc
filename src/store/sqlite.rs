//! The default store: one SQLite file (`<data-dir>/nanachat.sqlite3`) in WAL mode.
//!
//! All writes go through one writer thread fed by a bounded channel. It takes every job waiting
//! (up to `MAX_BATCH`) and runs them in one `BEGIN IMMEDIATE` transaction — group commit: under
//! load many messages share one commit, and a message's future resolves only after its commit,
//! so what is acknowledged is on disk. `synchronous=NORMAL` in WAL mode survives a crash of the
//! process (`kill -9`); a power cut may lose the last commits. Reads use their own connection,
//! which WAL lets run beside the writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;
use tracing::debug;

use super::queue::{Done, Job, PruneJob, Queue, StoreStats, answer_batch, take_batch};
use super::{
    Append, Appended, Holding, InboxRoom, Kind, MAX_PAGE, Membership, Op, PRUNE_ROOMS, Page,
    Pruned, ReactionCount, Reactions, ReadState, Record, Referred, Retention, RoomState, Store,
    UNREAD_CAP, judge, kind_code, kind_of, new_epoch,
};
use crate::clock::now_ms;
use crate::error::StoreError;
use crate::{Error, Result};

/// The schema, one migration per version; `PRAGMA user_version` says how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: rooms and their messages, cids unique per sender and room.
    "CREATE TABLE rooms (
        name     TEXT PRIMARY KEY,
        epoch    INTEGER NOT NULL,
        last_seq INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE messages (
        room    TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        sender  TEXT NOT NULL,
        text    TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        cid     TEXT,
        PRIMARY KEY (room, seq)
     ) STRICT, WITHOUT ROWID;
     CREATE UNIQUE INDEX messages_cid ON messages (room, sender, cid) WHERE cid IS NOT NULL;",
    // 2: nicks bound to a key on an open server (case-folded; the key salted and hashed), with
    // where each of the nick's direct-message rooms stood when it was bound; and the two
    // nicks of a direct-message room `@a+b` indexed, to find a nick's rooms.
    "CREATE TABLE nick_keys (
        nick     TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        bound_ms INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE nick_floors (
        nick  TEXT NOT NULL,
        room  TEXT NOT NULL,
        floor INTEGER NOT NULL,
        PRIMARY KEY (nick, room)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX rooms_dm_first ON rooms (substr(name, 2, instr(name, '+') - 2))
        WHERE substr(name, 1, 1) = '@';
     CREATE INDEX rooms_dm_second ON rooms (substr(name, instr(name, '+') + 1))
        WHERE substr(name, 1, 1) = '@';",
    // 3: events on messages, each a row of its own under the room's next seq (kind 1 edit, 2
    // delete, 3 reaction, with its target), replies, a message's current state (edited,
    // deleted), and who reacted with what (nicks case-folded).
    "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE messages ADD COLUMN target INTEGER;
     ALTER TABLE messages ADD COLUMN reply_to INTEGER;
     ALTER TABLE messages ADD COLUMN emoji TEXT;
     ALTER TABLE messages ADD COLUMN flag INTEGER;
     ALTER TABLE messages ADD COLUMN edited_ms INTEGER;
     ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX messages_target ON messages (room, target) WHERE target IS NOT NULL;
     CREATE INDEX messages_reply ON messages (room, reply_to) WHERE reply_to IS NOT NULL;
     CREATE TABLE reactions (
        room  TEXT NOT NULL,
        seq   INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        nick  TEXT NOT NULL,
        PRIMARY KEY (room, seq, emoji, nick)
     ) STRICT, WITHOUT ROWID;",
    // 4: the rooms known users (a token, or a nick with a key) joined and did not leave, and
    // how far each has read (case-folded nicks).
    "CREATE TABLE memberships (
        nick     TEXT NOT NULL,
        room     TEXT NOT NULL,
        read_seq INTEGER NOT NULL,
        PRIMARY KEY (nick, room)
     ) STRICT, WITHOUT ROWID;",
    // 5: full-text search over the messages as they stand (an edit re-indexes, a delete
    // takes the message out): an FTS5 index whose content is `messages` itself (through the
    // view `search_src`: the text is kept once), its rows named by `search_docs`, with
    // 'secure-delete' so that a deleted message's words leave the index's pages at once.
    "CREATE TABLE search_docs (
        id   INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        UNIQUE (room, seq)
     ) STRICT;
     CREATE VIEW search_src AS
        SELECT d.id AS id, m.text AS text FROM search_docs d
        JOIN messages m ON m.room = d.room AND m.seq = d.seq;
     CREATE VIRTUAL TABLE search_fts USING fts5(text, content = 'search_src', content_rowid = 'id');
     INSERT INTO search_fts (search_fts, rank) VALUES ('secure-delete', 1);
     INSERT INTO search_docs (room, seq) SELECT room, seq FROM messages WHERE kind = 0 AND deleted = 0;
     INSERT INTO search_fts (search_fts) VALUES ('rebuild');",
    // 6: the webhook outbox: one row per event and endpoint, written in the transaction of
    // the append (or membership change) it is about, read in `id` (commit) order, deleted once
    // delivered or given up on (docs/webhooks.md). A record's event names its record (room,
    // seq, kind 0-3) and holds no text: it is rendered from the record as it stands when it is
    // sent, so a delete erases the text from pending events too. Membership events (kind 10
    // joined, 11 left) carry the nick; occupancy events (12, 13) nothing more; their seq is
    // the room's last seq when they happened.
    "CREATE TABLE webhook_outbox (
        id       INTEGER PRIMARY KEY,
        endpoint TEXT NOT NULL,
        room     TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        kind     INTEGER NOT NULL,
        nick     TEXT,
        first_ms INTEGER NOT NULL,
        due_ms   INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
     ) STRICT;
     CREATE INDEX webhook_outbox_order ON webhook_outbox (endpoint, id);",
];

/// The search-index row of message (?1, ?2).
const SEARCH_ROW: &str = "(SELECT id FROM search_docs WHERE room = ?1 AND seq = ?2)";

/// Messages of ?1 after ?2 by others than ?3 (case-folded), not deleted, up to ?4.
const UNREAD: &str = "SELECT count(*) FROM (SELECT 1 FROM messages
     WHERE room = ?1 AND seq > ?2 AND kind = 0 AND deleted = 0 AND lower(sender) <> ?3 LIMIT ?4)";

/// The columns of a record, in the order [`record_of`] reads them.
const RECORD: &str =
    "room, seq, sender, text, time_ms, kind, target, reply_to, emoji, flag, edited_ms, deleted";

/// A record from a row of [`RECORD`] columns.
fn record_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let emoji: Option<String> = row.get(8)?;
    let flag: Option<i64> = row.get(9)?;
    Ok(Record {
        room: row.get(0)?,
        seq: row.get::<_, i64>(1)? as u64,
        from: row.get(2)?,
        text: row.get(3)?,
        time_ms: row.get(4)?,
        kind: kind_of(row.get(5)?),
        target: row.get::<_, Option<i64>>(6)?.map(|s| s as u64),
        reply_to: row.get::<_, Option<i64>>(7)?.map(|s| s as u64),
        emoji: emoji.map(|e| (e, flag == Some(1))),
        edited_ms: row.get(10)?,
        deleted: row.get::<_, i64>(11)? != 0,
    })
}

/// A nick's direct-message rooms with messages, and their last seqs (?1: the nick). Each half
/// is one of the indexes of migration 2.
/// A known user's rooms (case-folded `nick`) and how far it read each: its memberships, and
/// its direct-message rooms with messages (read up to 0 if it never said how far).
fn read_positions(conn: &Connection, nick: &str) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut rooms: BTreeMap<String, u64> = conn
        .prepare_cached("SELECT room, read_seq FROM memberships WHERE nick = ?1")?
        .query_map([nick], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let dms: Vec<String> = conn
        .prepare_cached(DM_ROOMS)?
        .query_map([nick], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for dm in dms {
        rooms.entry(dm).or_insert(0);
    }
    Ok(rooms)
}

const DM_ROOMS: &str = "
    SELECT name, last_seq FROM rooms
     WHERE substr(name, 1, 1) = '@' AND substr(name, 2, instr(name, '+') - 2) = ?1
       AND last_seq > 0
    UNION
    SELECT name, last_seq FROM rooms
     WHERE substr(name, 1, 1) = '@' AND substr(name, instr(name, '+') + 1) = ?1
       AND last_seq > 0";

/// History in a SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    queue: Queue,
    reader: Arc<Mutex<Connection>>,
    indexing: Arc<Indexing>,
    path: PathBuf,
    /// Held while the store lives: the data dir is this process's.
    _lock: DirLock,
}

/// An exclusive lock on a data dir: `nanachat.lock` in it, locked with `flock` (the kernel lets
/// go of it when the process ends, however it ends) and holding the owner's pid, so that a second
/// server on the same dir is refused with who has it instead of sharing the database.
#[derive(Debug)]
struct DirLock {
    file: std::fs::File,
    path: PathBuf,
    /// Whether this process made the file (and so takes it away again if the store is refused).
    made: bool,
}

impl DirLock {
    const NAME: &'static str = "nanachat.lock";

    fn take(dir: &Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        let path = dir.join(Self::NAME);
        let made = !path.exists();
        let mut file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| Error::file("open the lock file", &path, err))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = if pid.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("pid {pid}")
                };
                return Err(Error::Config(format!(
                    "data dir {} is in use by {who} (another nanachat serve?): stop it, or give \
                     this one another --data-dir",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(Error::file("lock", &path, err));
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|err| Error::file("write the lock file", &path, err))?;
        Ok(Self { file, path, made })
    }

    /// Lets go of the dir, and takes the lock file away if this process made it: a refused
    /// store leaves the dir as it found it.
    fn give_back(self) {
        if self.made {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.file);
    }
}

/// Options that create a file only its owner may read (0600 on Unix), and leave an existing one
/// as it is.
fn private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates the data dir (and its missing parents) 0700: the history is nobody else's to read.
/// A dir that is already there is left as it is; its mode is returned if others may look into
/// it (the caller warns).
fn make_private_dir(dir: &Path) -> Result<Option<u32>> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let existed = dir.is_dir();
    builder
        .create(dir)
        .map_err(|err| Error::file("create data dir", dir, err))?;
    #[cfg(unix)]
    if existed {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Ok(Some(mode));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = existed;
    Ok(None)
}

fn store_err(err: rusqlite::Error) -> Error {
    err.into()
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, running any pending migrations. The dir
    /// is locked for this process (`nanachat.lock`, held with `flock`, the pid in it): a second
    /// server on it is refused.
    pub fn open(dir: &Path) -> Result<Self> {
        let open_to_others = make_private_dir(dir)?;
        let lock = DirLock::take(dir)?;
        let path = dir.join("nanachat.sqlite3");
        // Made 0600 before SQLite opens it: SQLite gives the -wal and -shm files the mode of the
        // database file.
        let made = !path.exists();
        if let Err(err) = private_file().write(true).open(&path) {
            lock.give_back();
            return Err(Error::file("create", &path, err));
        }
        match Self::open_locked(&path, lock) {
            Ok(store) => {
                // Said once the store is in use: a refused start stays one line.
                if let Some(mode) = open_to_others {
                    tracing::warn!(
                        dir = %dir.display(),
                        mode = format_args!("{mode:04o}"),
                        "the data dir is open to other users; `chmod 700` it to keep the history private"
                    );
                }
                Ok(store)
            }
            Err((err, lock)) => {
                if made {
                    let _ = std::fs::remove_file(&path);
                }
                lock.give_back();
                Err(err)
            }
        }
    }

    fn open_locked(path: &Path, lock: DirLock) -> std::result::Result<Self, (Error, DirLock)> {
        let mut writer = match Connection::open(path) {
            Ok(conn) => conn,
            Err(err) => return Err((Error::file("open", path, err), lock)),
        };
        // A file that is not ours (or is damaged) is refused with its name, and left as it is:
        // nothing is written before it has been read as a database.
        let unusable = |err: rusqlite::Error| {
            let hint = match err.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                    " (a damaged file, or not nanachat's; move it away or pick another --data-dir)"
                }
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    " (another program holds it; stop it or pick another --data-dir)"
                }
                _ => "",
            };
            Error::Service {
                what: format!("{} as the history store", path.display()),
                source: Box::new(err.into()),
                hint,
            }
        };
        let ready = writer
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .and_then(|()| writer.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| writer.pragma_update(None, "synchronous", "NORMAL"))
            // A deleted message's text is overwritten in the file, not just unlinked.
            .and_then(|()| writer.pragma_update(None, "secure_delete", true))
            .and_then(|()| writer.busy_timeout(std::time::Duration::from_secs(5)));
        if let Err(err) = ready {
            return Err((unusable(err), lock));
        }
        if let Err(err) = migrate(&mut writer) {
            let err = match err {
                Error::Store(StoreError::Sqlite(err)) => unusable(err),
                other => other,
            };
            return Err((err, lock));
        }
        let reader = match Connection::open(path)
            .and_then(|r| r.pragma_update(None, "query_only", true).map(|()| r))
        {
            Ok(reader) => reader,
            Err(err) => return Err((store_err(err), lock)),
        };
        let (queue, rx) = Queue::new();
        let writer_stats = queue.stats().clone();
        let indexing = Arc::new(Indexing {
            pending: AtomicBool::new(true),
        });
        let writer_indexing = indexing.clone();
        let spawned = std::thread::Builder::new()
            .name("nanachat-store".into())
            .spawn(move || write_loop(writer, rx, &writer_stats, &writer_indexing));
        if let Err(err) = spawned {
            return Err((err.into(), lock));
        }
        index_while_idle(&queue, &indexing);
        Ok(Self {
            queue,
            reader: Arc::new(Mutex::new(reader)),
            indexing,
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The writer's counters: commits, jobs, commit time.
    pub fn stats(&self) -> &StoreStats {
        self.queue.stats()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(store_err)
        })
        .await
        .map_err(|err| Error::Store(err.into()))?
    }
}

impl SqliteStore {
    /// Up to `limit` records of `room`, oldest first; `only` narrows them (an SQL condition).
    async fn page(
        &self,
        room: &str,
        page: Page,
        limit: usize,
        only: &'static str,
    ) -> Result<Vec<Record>> {
        let room = room.to_owned();
        let limit = limit.min(MAX_PAGE) as i64;
        self.read(move |conn| {
            let (sql, seq) = match page {
                Page::After(seq) => (
                    format!(
                        "SELECT {RECORD} FROM messages
                         WHERE room = ?1 AND seq > ?2 {only} ORDER BY seq LIMIT ?3"
                    ),
                    seq,
                ),
                Page::Before(seq) => (
                    format!(
                        "SELECT {RECORD} FROM messages
                         WHERE room = ?1 AND seq < ?2 {only} ORDER BY seq DESC LIMIT ?3"
                    ),
                    seq,
                ),
            };
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut records = stmt
                .query_map(params![room, seq, limit], record_of)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if matches!(page, Page::Before(_)) {
                records.reverse();
            }
            Ok(records)
        })
        .await
    }
}

impl Store for SqliteStore {
    super::queue::store_methods_on_the_queue!();

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
        // Each word quoted: a phrase of one plain word, never an operator.
        let query: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        let (query, rooms) = (query.join(" "), serde_json::to_string(&rooms)?);
        if self.indexing.pending.load(Ordering::SeqCst) {
            // Every message acked before this search is found by it.
            self.queue.flush().await?;
        }
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {RECORD} FROM messages JOIN (
                    SELECT d.room AS r, d.seq AS s, bm25(search_fts) AS rank
                    FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid
                    WHERE search_fts MATCH ?1 AND d.room IN (SELECT value FROM json_each(?2))
                    ORDER BY rank LIMIT ?3 OFFSET ?4
                 ) AS hit ON room = hit.r AND seq = hit.s
                 ORDER BY hit.rank"
            ))?
            .query_map(
                params![query, rooms, limit.min(MAX_PAGE) as i64, skip as i64],
                record_of,
            )?
            .collect()
        })
        .await
    }

    async fn replies(&self, room: &str, seq: u64, after: u64, limit: usize) -> Result<Vec<Record>> {
        let room = room.to_owned();
        let limit = limit.min(MAX_PAGE) as i64;
        let (seq, after) = (
            seq.min(i64::MAX as u64) as i64,
            after.min(i64::MAX as u64) as i64,
        );
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {RECORD} FROM messages
                 WHERE room = ?1 AND reply_to = ?2 AND kind = 0 AND seq > ?3
                 ORDER BY seq LIMIT ?4"
            ))?
            .query_map(params![room, seq, after, limit], record_of)?
            .collect()
        })
        .await
    }

    async fn rooms_of(&self, nick: &str) -> Result<Vec<String>> {
        let nick = nick.to_ascii_lowercase();
        self.read(move |conn| Ok(read_positions(conn, &nick)?.into_keys().collect()))
            .await
    }

    async fn inbox(&self, nick: &str, floors: Vec<(String, u64)>) -> Result<Vec<InboxRoom>> {
        let nick = nick.to_ascii_lowercase();
        self.read(move |conn| {
            let rooms = read_positions(conn, &nick)?;
            let floor = |room: &str| {
                floors
                    .iter()
                    .find(|(r, _)| r == room)
                    .map_or(0, |(_, f)| *f)
            };
            let mut out = Vec::with_capacity(rooms.len());
            for (room, read) in rooms {
                let floor = floor(&room);
                let read_seq = read.max(floor);
                let last_seq: i64 = conn
                    .prepare_cached("SELECT coalesce(max(last_seq), 0) FROM rooms WHERE name = ?1")?
                    .query_row([&room], |row| row.get(0))?;
                let last = conn
                    .prepare_cached(&format!(
                        "SELECT {RECORD} FROM messages
                         WHERE room = ?1 AND kind = 0 AND seq > ?2 ORDER BY seq DESC LIMIT 1"
                    ))?
                    .query_row(params![room, floor as i64], record_of)
                    .optional()?;
                let unread: i64 = conn.prepare_cached(UNREAD)?.query_row(
                    params![room, read_seq as i64, nick, UNREAD_CAP as i64],
                    |row| row.get(0),
                )?;
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
            Ok(out)
        })
        .await
    }

    async fn reactions(&self, room: &str, seqs: &[u64], nick: &str) -> Result<Vec<ReactionCount>> {
        let (room, nick) = (room.to_owned(), nick.to_ascii_lowercase());
        let seqs: Vec<i64> = seqs.iter().map(|&s| s as i64).collect();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT emoji, count(*), max(nick = ?3) FROM reactions
                 WHERE room = ?1 AND seq = ?2 GROUP BY emoji ORDER BY emoji",
            )?;
            let mut out = Vec::new();
            for seq in seqs {
                let rows = stmt.query_map(params![room, seq, nick], |row| {
                    Ok((
                        seq as u64,
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)? as u32,
                        row.get::<_, i64>(2)? != 0,
                    ))
                })?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn history(&self, room: &str, page: Page, limit: usize) -> Result<Vec<Record>> {
        self.page(room, page, limit, "").await
    }

    async fn messages(&self, room: &str, page: Page, limit: usize) -> Result<Vec<Record>> {
        self.page(room, page, limit, "AND kind = 0").await
    }

    async fn room_state(&self, room: &str) -> Result<RoomState> {
        let name = room.to_owned();
        let known = self.read(move |conn| read_state(conn, &name)).await?;
        match known {
            Some(state) => Ok(state),
            None => {
                self.queue
                    .submit(|tx| Job::Ensure(room.to_owned(), tx))
                    .await
            }
        }
    }

    async fn nick_binding(&self, nick: &str) -> Result<Option<String>> {
        let nick = nick.to_owned();
        self.read(move |conn| key_hash(conn, &nick)).await
    }

    /// Free, or bound already: read beside the writer. Binding: on the writer, in its batch's
    /// transaction, so that the floors kept are where the rooms stood between two appends.
    async fn take_nick(&self, nick: &str, bind: Option<String>) -> Result<Holding> {
        match bind {
            Some(hash) => self.queue.bind(nick, hash).await,
            None => {
                let nick = nick.to_owned();
                self.read(move |conn| holding(conn, &nick)).await
            }
        }
    }

    /// Runs on the writer, in its batch's transaction beside the appends: one bounded round
    /// (a few rooms looked at, at most `limit` rows deleted).
    async fn prune(
        &self,
        retention: Retention,
        now_ms: i64,
        from: &str,
        limit: usize,
    ) -> Result<Pruned> {
        let job = PruneJob {
            retention,
            now_ms,
            from: from.to_owned(),
            limit: limit.max(1),
        };
        self.queue.submit(|tx| Job::Prune(job, tx)).await
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(store_err)? as usize;
    if version > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "the data dir's schema (version {version}) is newer than this nanachat knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(store_err)?;
        tx.execute_batch(sql).map_err(store_err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        debug!(version = i + 1, "store migrated");
    }
    Ok(())
}

fn read_state(conn: &Connection, room: &str) -> rusqlite::Result<Option<RoomState>> {
    conn.prepare_cached(
        "SELECT epoch, last_seq, (SELECT min(seq) FROM messages WHERE room = ?1)
         FROM rooms WHERE name = ?1",
    )?
    .query_row([room], state_of)
    .optional()
}

/// A room's state from (epoch, last_seq, the least seq kept or NULL).
fn state_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<RoomState> {
    let (epoch, last_seq) = (row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
    let first: Option<i64> = row.get(2)?;
    Ok(RoomState {
        epoch,
        last_seq,
        first_seq: first.map_or(last_seq + 1, |seq| seq as u64),
    })
}

/// One round of retention: the rooms from `job.from` on (at most [`PRUNE_ROOMS`]), the oldest
/// messages of each that retention says go, at most `job.limit` rows in all.
fn apply_prune(conn: &Connection, job: &PruneJob) -> rusqlite::Result<Pruned> {
    let mut rooms: Vec<(String, u64)> = conn
        .prepare_cached("SELECT name, last_seq FROM rooms WHERE name >= ?1 ORDER BY name LIMIT ?2")?
        .query_map(params![job.from, (PRUNE_ROOMS + 1) as i64], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let next = (rooms.len() > PRUNE_ROOMS)
        .then(|| rooms.pop().map(|(name, _)| name))
        .flatten();
    let mut deleted = 0;
    for (room, last_seq) in rooms {
        let budget = job.limit - deleted;
        let oldest: Vec<(u64, i64)> = conn
            .prepare_cached(
                "SELECT seq, time_ms FROM messages WHERE room = ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![room, budget as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let doomed = job.retention.doomed(job.now_ms, last_seq, &oldest);
        if doomed > 0 {
            let upto = oldest[doomed - 1].0 as i64;
            unindex(conn, &room, upto)?;
            conn.prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?
                .execute(params![room, upto])?;
            conn.prepare_cached("DELETE FROM reactions WHERE room = ?1 AND seq <= ?2")?
                .execute(params![room, upto])?;
        }
        deleted += doomed;
        if deleted == job.limit {
            return Ok(Pruned {
                deleted: deleted as u64,
                next: Some(room),
            });
        }
    }
    Ok(Pruned {
        deleted: deleted as u64,
        next,
    })
}

/// How long a stored message may wait to be indexed for search while the writer is busy:
/// messages are indexed in passes, many to one FTS5 insert round, not each in its append's
/// transaction (which doubled the cost of an append). A search, and any change that takes
/// words out of the index, indexes what is pending first, so nothing acked is ever missed.
const INDEX_EVERY: Duration = Duration::from_millis(200);

/// What the writer and the rest of the store share about the search index.
#[derive(Debug, Default)]
struct Indexing {
    /// Messages are stored that the index does not have yet (true at start: a crash may
    /// have left some).
    pending: AtomicBool,
}

/// The writer thread: drains waiting jobs into one transaction, commits, then answers them.
/// Every [`INDEX_EVERY`] at most, and before answering a flush, it indexes the messages
/// stored since its last pass (in a transaction of its own, so that an index that failed can
/// never undo a stored message).
fn write_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    stats: &StoreStats,
    indexing: &Indexing,
) {
    let mut last_pass = Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let (flushes, jobs): (Vec<Job>, Vec<Job>) = take_batch(first, &mut rx)
            .into_iter()
            .partition(|job| matches!(job, Job::Flush(_)));
        let started = Instant::now();
        let (mut erased, mut stored) = (false, false);
        for job in &jobs {
            if let Job::Append(append, _) = job {
                erased |= matches!(append.op, Op::Delete { .. });
                stored |= matches!(append.op, Op::Say { .. });
            }
        }
        if !jobs.is_empty() {
            let outcome = commit_batch(&mut conn, &jobs, stats.endpoints()).map_err(Error::from);
            if stored && outcome.is_ok() {
                // Before the acks: whoever learns of the message finds it pending.
                indexing.pending.store(true, Ordering::SeqCst);
            }
            let events = outcome.is_ok()
                && jobs
                    .iter()
                    .any(|job| matches!(job, Job::Append(..) | Job::Member(..)));
            answer_batch(jobs, outcome, started, stats);
            if events && let Some(hooks) = stats.hooks.get() {
                hooks.wake();
            }
        }
        let due = last_pass.elapsed() >= INDEX_EVERY;
        if !flushes.is_empty() || (due && indexing.pending.load(Ordering::SeqCst)) {
            last_pass = Instant::now();
            let pass = index_pass(&mut conn, indexing, stats).map_err(|err| {
                tracing::warn!(cause = %err, "indexing for search failed");
                Arc::new(Error::from(err))
            });
            for flush in flushes {
                if let Job::Flush(tx) = flush {
                    let answer = match &pass {
                        Ok(_) => Ok(()),
                        Err(err) => Err(Error::Store(StoreError::Batch(err.clone()))),
                    };
                    let _ = tx.send(answer);
                }
            }
        }
        if erased {
            // A deleted text must not linger in the write-ahead log until a checkpoint that a
            // quiet server may never reach: copied back and the log emptied now (a reader in
            // the way only postpones it to the next delete).
            // Waiting at most a moment for readers: appends queue behind this.
            let checkpoint = conn
                .busy_timeout(std::time::Duration::from_millis(50))
                .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())));
            if let Err(err) = checkpoint {
                debug!(cause = %err, "checkpoint after a delete failed");
            }
            if let Err(err) = conn.busy_timeout(std::time::Duration::from_secs(5)) {
                debug!(cause = %err, "busy timeout not restored");
            }
        }
    }
    // The store is closing: what is pending is indexed now rather than at the next start.
    if indexing.pending.load(Ordering::SeqCst) {
        let _ = index_pass(&mut conn, indexing, stats);
    }
}

/// While the store lives, asks the writer every [`INDEX_EVERY`] for an indexing pass if
/// messages are pending and no write has come to trigger one (a quiet server indexes its
/// last messages too). Needs a Tokio runtime; without one, searches still index first.
fn index_while_idle(queue: &Queue, indexing: &Arc<Indexing>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Weak: the ticker does not keep the writer alive.
    let (jobs, indexing) = (queue.downgrade(), Arc::downgrade(indexing));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(INDEX_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(jobs), Some(indexing)) = (jobs.upgrade(), indexing.upgrade()) else {
                return;
            };
            if indexing.pending.load(Ordering::SeqCst) {
                // Answered to no one: the pass is what is wanted.
                let (tx, _) = tokio::sync::oneshot::channel();
                let _ = jobs.try_send(Job::Flush(tx));
            }
        }
    });
}

/// One indexing pass in its own transaction; clears `pending` once it is committed. Its time
/// counts as commit time (the write cost of a message includes its indexing).
fn index_pass(
    conn: &mut Connection,
    indexing: &Indexing,
    stats: &StoreStats,
) -> rusqlite::Result<usize> {
    let began = Instant::now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let indexed = index_pending(&tx)?;
    tx.commit()?;
    indexing.pending.store(false, Ordering::SeqCst);
    let took = began.elapsed();
    stats
        .commit_micros
        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    debug!(indexed, ?took, "search index pass");
    Ok(indexed)
}

/// Runs every job in one transaction. Any failure rolls the whole batch back, so a failed
/// append can never leave a seq taken without its message (a gap): every job is answered with
/// the error and nothing of the batch is stored (the caller retries with the same cid).
fn commit_batch(
    conn: &mut Connection,
    jobs: &[Job],
    endpoints: &[String],
) -> rusqlite::Result<Vec<Done>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done = Vec::with_capacity(jobs.len());
    for job in jobs {
        done.push(match job {
            Job::Append(append, _) => Done::Append(Ok(apply_append(&tx, append, endpoints)?)),
            Job::Ensure(room, _) => Done::State(Ok(ensure_room(&tx, room)?)),
            Job::Wipe(room, _) => Done::State(Ok(apply_wipe(&tx, room)?)),
            Job::Prune(job, _) => Done::Pruned(Ok(apply_prune(&tx, job)?)),
            Job::Bind(nick, hash, _) => Done::Held(Ok(apply_bind(&tx, nick, hash)?)),
            Job::Member(nick, room, change, _) => {
                Done::Member(Ok(apply_membership(&tx, nick, room, *change, endpoints)?))
            }
            // Taken out of the batch by the writer, answered after its index pass.
            Job::Flush(_) => Done::Flushed(Ok(())),
        });
    }
    tx.commit()?;
    Ok(done)
}

fn apply_membership(
    conn: &Connection,
    nick: &str,
    room: &str,
    change: Membership,
    endpoints: &[String],
) -> rusqlite::Result<ReadState> {
    use super::outbox::Event;
    // With webhooks on, a membership that begins or ends is an event (and a room's first
    // member, or its last leaving, another), written here in the change's transaction.
    let hooked = !endpoints.is_empty();
    let members = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.prepare_cached("SELECT count(*) FROM memberships WHERE room = ?1")?
            .query_row([room], |row| row.get(0))
    };
    let was_member = hooked
        && matches!(change, Membership::Remember { .. })
        && conn
            .prepare_cached("SELECT 1 FROM memberships WHERE nick = ?1 AND room = ?2")?
            .exists(params![nick, room])?;
    let read_seq: i64 = match change {
        Membership::Forget => {
            let left = conn
                .prepare_cached("DELETE FROM memberships WHERE nick = ?1 AND room = ?2")?
                .execute(params![nick, room])?;
            if hooked && left > 0 {
                hook_event(conn, endpoints, room, Event::Left, Some(nick))?;
                if members(conn)? == 0 {
                    hook_event(conn, endpoints, room, Event::Vacated, None)?;
                }
            }
            return Ok(ReadState::default());
        }
        Membership::Remember { last_seq } => conn
            .prepare_cached(
                "INSERT INTO memberships (nick, room, read_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (nick, room) DO UPDATE SET read_seq = read_seq
                 RETURNING read_seq",
            )?
            .query_row(params![nick, room, last_seq as i64], |row| row.get(0))?,
        Membership::Read { seq } => conn
            .prepare_cached(
                "INSERT INTO memberships (nick, room, read_seq)
                 VALUES (?1, ?2, min(?3, coalesce((SELECT last_seq FROM rooms WHERE name = ?2), 0)))
                 ON CONFLICT (nick, room) DO UPDATE SET read_seq = max(read_seq, excluded.read_seq)
                 RETURNING read_seq",
            )?
            .query_row(
                params![nick, room, seq.min(i64::MAX as u64) as i64],
                |row| row.get(0),
            )?,
    };
    if hooked && matches!(change, Membership::Remember { .. }) && !was_member {
        hook_event(conn, endpoints, room, Event::Joined, Some(nick))?;
        if members(conn)? == 1 {
            hook_event(conn, endpoints, room, Event::Occupied, None)?;
        }
    }
    let unread: i64 = conn
        .prepare_cached(UNREAD)?
        .query_row(params![room, read_seq, nick, UNREAD_CAP as i64], |row| {
            row.get(0)
        })?;
    Ok(ReadState {
        read_seq: read_seq as u64,
        unread: unread as u64,
    })
}

/// Writes a membership or occupancy event of `room` for every endpoint, under the room's last
/// seq now.
fn hook_event(
    conn: &Connection,
    endpoints: &[String],
    room: &str,
    event: super::outbox::Event,
    nick: Option<&str>,
) -> rusqlite::Result<()> {
    let now = now_ms();
    for endpoint in endpoints {
        conn.prepare_cached(
            "INSERT INTO webhook_outbox (endpoint, room, seq, kind, nick, first_ms, due_ms)
             VALUES (?1, ?2, coalesce((SELECT last_seq FROM rooms WHERE name = ?2), 0), ?3, ?4,
                     ?5, ?5)",
        )?
        .execute(params![endpoint, room, event.code(), nick, now])?;
    }
    Ok(())
}

fn ensure_room(conn: &Connection, room: &str) -> rusqlite::Result<RoomState> {
    conn.prepare_cached(
        "INSERT INTO rooms (name, epoch, last_seq) VALUES (?1, ?2, 0)
         ON CONFLICT (name) DO NOTHING",
    )?
    .execute(params![room, new_epoch() as i64])?;
    read_state(conn, room).map(|state| state.unwrap_or(RoomState::empty(0, 0)))
}

fn apply_append(
    conn: &Connection,
    append: &Append,
    endpoints: &[String],
) -> rusqlite::Result<Appended> {
    if let Some(cid) = &append.cid {
        let original = conn
            .prepare_cached(&format!(
                "SELECT {RECORD} FROM messages WHERE room = ?1 AND sender = ?2 AND cid = ?3"
            ))?
            .query_row(params![append.room, append.from, cid], record_of)
            .optional()?;
        if let Some(record) = original {
            return Ok(Appended::again(record, append));
        }
    }
    if let Some(target) = append.op.refers_to() {
        let referred = conn
            .prepare_cached(
                "SELECT kind, sender, deleted, time_ms,
                        (SELECT bound_ms FROM nick_keys WHERE nick = ?3)
                 FROM messages WHERE room = ?1 AND seq = ?2",
            )?
            .query_row(
                params![append.room, target as i64, append.from.to_ascii_lowercase()],
                |row| {
                    Ok(Referred {
                        kind: kind_of(row.get(0)?),
                        from: row.get(1)?,
                        deleted: row.get::<_, i64>(2)? != 0,
                        time: row.get(3)?,
                        sender_bound: row.get(4)?,
                    })
                },
            )
            .optional()?;
        let mut seen = Reactions::default();
        if let Op::React { emoji, .. } = &append.op {
            let (distinct, used, mine): (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT count(DISTINCT emoji), coalesce(max(emoji = ?3), 0),
                            coalesce(max(emoji = ?3 AND nick = ?4), 0)
                     FROM reactions WHERE room = ?1 AND seq = ?2",
                )?
                .query_row(
                    params![
                        append.room,
                        target as i64,
                        emoji,
                        append.from.to_ascii_lowercase()
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?;
            seen = Reactions {
                mine: mine != 0,
                used: used != 0,
                distinct: distinct as usize,
            };
        }
        if let Err(refusal) = judge(append, referred.as_ref(), seen) {
            return Ok(Appended::Refused(refusal));
        }
    }
    // The room usually exists: one UPDATE; a room's first message also creates it.
    let bumped: Option<i64> = conn
        .prepare_cached(
            "UPDATE rooms SET last_seq = last_seq + 1 WHERE name = ?1 RETURNING last_seq",
        )?
        .query_row([&append.room], |row| row.get(0))
        .optional()?;
    let seq = match bumped {
        Some(seq) => seq,
        None => {
            conn.prepare_cached("INSERT INTO rooms (name, epoch, last_seq) VALUES (?1, ?2, 1)")?
                .execute(params![append.room, new_epoch() as i64])?;
            1
        }
    };
    let record = Record::of(append, seq as u64, now_ms());
    let (emoji, flag) = match &record.emoji {
        Some((emoji, on)) => (Some(emoji.as_str()), Some(i64::from(*on))),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO messages (room, seq, sender, text, time_ms, cid, kind, target, reply_to,
                               emoji, flag)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        append.room,
        seq,
        append.from,
        record.text,
        record.time_ms,
        append.cid,
        kind_code(record.kind),
        record.target.map(|s| s as i64),
        record.reply_to.map(|s| s as i64),
        emoji,
        flag,
    ])?;
    // The index first: taking a message's words out needs the text it still has.
    index(conn, &record)?;
    apply_effect(conn, append, record.time_ms)?;
    for endpoint in endpoints {
        conn.prepare_cached(
            "INSERT INTO webhook_outbox (endpoint, room, seq, kind, first_ms, due_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute(params![
            endpoint,
            append.room,
            seq,
            kind_code(record.kind),
            record.time_ms
        ])?;
    }
    Ok(Appended::Stored(record))
}

/// Keeps the search index as the messages stand: a message is named for indexing (by the
/// writer's next pass, [`index_pending`]), an edit re-indexes its message, a delete takes it
/// out.
fn index(conn: &Connection, record: &Record) -> rusqlite::Result<()> {
    let room = &record.room;
    match (record.kind, record.target) {
        (Kind::Message, _) => {
            conn.prepare_cached("INSERT INTO search_docs (room, seq) VALUES (?1, ?2)")?
                .execute(params![room, record.seq as i64])?;
        }
        (Kind::Edit, Some(target)) => {
            unindex_one(conn, room, target)?;
            conn.prepare_cached(&format!(
                "INSERT INTO search_fts (rowid, text) SELECT {SEARCH_ROW}, ?3
                 WHERE {SEARCH_ROW} IS NOT NULL"
            ))?
            .execute(params![room, target as i64, record.text])?;
        }
        (Kind::Delete, Some(target)) => {
            unindex_one(conn, room, target)?;
            conn.prepare_cached("DELETE FROM search_docs WHERE room = ?1 AND seq = ?2")?
                .execute(params![room, target as i64])?;
        }
        _ => {}
    }
    Ok(())
}

/// Indexes every message stored since the last pass: the documents above the highest the
/// index holds. Every document at or below it is indexed, because whatever takes one out of
/// the index ([`unindex_one`], [`unindex`]) indexes what is pending first, and new documents
/// take ids above every one left.
fn index_pending(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO search_fts (rowid, text)
         SELECT d.id, m.text FROM search_docs d
         JOIN messages m ON m.room = d.room AND m.seq = d.seq
         WHERE d.id > (SELECT coalesce(max(id), 0) FROM search_fts_docsize) ORDER BY d.id",
    )?
    .execute([])
}

/// Takes message `seq` of `room` out of the search index, by the text it has now (an index
/// over external content forgets a row by its words).
fn unindex_one(conn: &Connection, room: &str, seq: u64) -> rusqlite::Result<()> {
    index_pending(conn)?;
    conn.prepare_cached(
        "INSERT INTO search_fts (search_fts, rowid, text)
         SELECT 'delete', d.id, m.text FROM search_docs d
         JOIN messages m ON m.room = d.room AND m.seq = d.seq
         WHERE d.room = ?1 AND d.seq = ?2",
    )?
    .execute(params![room, seq as i64])?;
    Ok(())
}

/// Takes the messages of `room` up to `upto` out of the search index (before they are
/// deleted: it needs their text).
fn unindex(conn: &Connection, room: &str, upto: i64) -> rusqlite::Result<()> {
    index_pending(conn)?;
    conn.prepare_cached(
        "INSERT INTO search_fts (search_fts, rowid, text)
         SELECT 'delete', d.id, m.text FROM search_docs d
         JOIN messages m ON m.room = d.room AND m.seq = d.seq
         WHERE d.room = ?1 AND d.seq <= ?2",
    )?
    .execute(params![room, upto])?;
    conn.prepare_cached("DELETE FROM search_docs WHERE room = ?1 AND seq <= ?2")?
        .execute(params![room, upto])?;
    Ok(())
}

/// What an event does to its message: a new text, an erasure, a reaction added or taken back.
fn apply_effect(conn: &Connection, append: &Append, time_ms: i64) -> rusqlite::Result<()> {
    let room = &append.room;
    match &append.op {
        Op::Say { .. } => {}
        Op::Edit { target } => {
            conn.prepare_cached(
                "UPDATE messages SET text = ?3, edited_ms = ?4 WHERE room = ?1 AND seq = ?2",
            )?
            .execute(params![room, *target as i64, append.text, time_ms])?;
        }
        Op::Delete { target } => {
            conn.prepare_cached(
                "UPDATE messages SET text = '', deleted = 1 WHERE room = ?1 AND seq = ?2",
            )?
            .execute(params![room, *target as i64])?;
            conn.prepare_cached(
                "UPDATE messages SET text = '' WHERE room = ?1 AND target = ?2 AND kind = 1",
            )?
            .execute(params![room, *target as i64])?;
            conn.prepare_cached("DELETE FROM reactions WHERE room = ?1 AND seq = ?2")?
                .execute(params![room, *target as i64])?;
        }
        Op::React { target, emoji, on } => {
            let sql = if *on {
                "INSERT INTO reactions (room, seq, emoji, nick) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM reactions WHERE room = ?1 AND seq = ?2 AND emoji = ?3 AND nick = ?4"
            };
            conn.prepare_cached(sql)?.execute(params![
                room,
                *target as i64,
                emoji,
                append.from.to_ascii_lowercase()
            ])?;
        }
    }
    Ok(())
}

fn key_hash(conn: &Connection, nick: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT key_hash FROM nick_keys WHERE nick = ?1")?
        .query_row([nick], |row| row.get(0))
        .optional()
}

/// The nick's binding and its floors: kept with the binding, or (bound to no key) where its
/// direct-message rooms stand now.
fn holding(conn: &Connection, nick: &str) -> rusqlite::Result<Holding> {
    let key_hash = key_hash(conn, nick)?;
    let sql = match key_hash {
        Some(_) => "SELECT room, floor FROM nick_floors WHERE nick = ?1",
        None => DM_ROOMS,
    };
    let floors = conn
        .prepare_cached(sql)?
        .query_map([nick], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Holding { key_hash, floors })
}

/// Binds `nick` to `hash` if it is bound to no key, keeping where its direct-message rooms
/// stand (floors left by a binding an operator deleted go first); then its holding.
fn apply_bind(conn: &Connection, nick: &str, hash: &str) -> rusqlite::Result<Holding> {
    let bound = conn
        .prepare_cached(
            "INSERT INTO nick_keys (nick, key_hash, bound_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (nick) DO NOTHING",
        )?
        .execute(params![nick, hash, now_ms()])?;
    if bound == 1 {
        conn.prepare_cached("DELETE FROM nick_floors WHERE nick = ?1")?
            .execute([nick])?;
        conn.prepare_cached(&format!(
            "INSERT INTO nick_floors (nick, room, floor)
             SELECT ?1, name, last_seq FROM ({DM_ROOMS})"
        ))?
        .execute([nick])?;
    }
    holding(conn, nick)
}

fn apply_wipe(conn: &Connection, room: &str) -> rusqlite::Result<RoomState> {
    ensure_room(conn, room)?;
    unindex(conn, room, i64::MAX)?;
    conn.prepare_cached("DELETE FROM messages WHERE room = ?1")?
        .execute([room])?;
    conn.prepare_cached("DELETE FROM reactions WHERE room = ?1")?
        .execute([room])?;
    conn.prepare_cached(
        "UPDATE rooms SET epoch = max(?2, epoch + 1) WHERE name = ?1
         RETURNING epoch, last_seq",
    )?
    .query_row(params![room, new_epoch() as i64], |row| {
        Ok(RoomState::empty(
            row.get::<_, i64>(0)? as u64,
            row.get::<_, i64>(1)? as u64,
        ))
    })
}

/// The webhook outbox of a SQLite store, on a connection of its own (one per delivery task).
/// Its writes (a round's outcome) are small transactions beside the store's writer: WAL lets
/// one writer in at a time, and the busy timeout waits for the other.
#[derive(Debug)]
pub struct SqliteOutbox {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Turns webhooks on: from now on every append also writes one outbox row per endpoint
    /// of `hooks`, in its own transaction.
    pub fn hook(&self, hooks: Arc<super::outbox::Hooks>) -> Result<()> {
        self.queue.stats().hook(hooks)
    }

    /// A connection to the outbox, for one delivery task.
    pub fn outbox(&self) -> Result<SqliteOutbox> {
        let conn =
            Connection::open(&self.path).map_err(|err| Error::file("open", &self.path, err))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(store_err)?;
        Ok(SqliteOutbox {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

impl SqliteOutbox {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(store_err)
        })
        .await
        .map_err(|err| Error::Store(err.into()))?
    }
}

/// The columns of a pending event and its record (`LEFT JOIN messages m`), as
/// [`pending_of`] reads them.
const PENDING: &str = "o.room, o.seq, o.kind, o.first_ms, o.attempts, o.due_ms, m.room, m.seq,
     m.sender, m.text, m.time_ms, m.kind, m.target, m.reply_to, m.emoji, m.flag, m.edited_ms,
     m.deleted, o.id, o.nick";

fn pending_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<super::outbox::Pending> {
    let found: Option<String> = row.get(6)?;
    let record = match found {
        Some(room) => {
            let emoji: Option<String> = row.get(14)?;
            let flag: Option<i64> = row.get(15)?;
            Some(Record {
                room,
                seq: row.get::<_, i64>(7)? as u64,
                from: row.get(8)?,
                text: row.get(9)?,
                time_ms: row.get(10)?,
                kind: kind_of(row.get(11)?),
                target: row.get::<_, Option<i64>>(12)?.map(|s| s as u64),
                reply_to: row.get::<_, Option<i64>>(13)?.map(|s| s as u64),
                emoji: emoji.map(|e| (e, flag.unwrap_or(0) != 0)),
                edited_ms: row.get(16)?,
                deleted: row.get::<_, i64>(17)? != 0,
            })
        }
        None => None,
    };
    Ok(super::outbox::Pending {
        id: row.get(18)?,
        room: row.get(0)?,
        seq: row.get::<_, i64>(1)? as u64,
        event: super::outbox::Event::of_code(row.get(2)?),
        nick: row.get(19)?,
        first_ms: row.get(3)?,
        attempts: row.get::<_, i64>(4)? as u32,
        due_ms: row.get(5)?,
        record,
    })
}

impl super::outbox::Outbox for SqliteOutbox {
    async fn take(
        &mut self,
        endpoint: &str,
        limit: usize,
    ) -> Result<Option<Vec<super::outbox::Pending>>> {
        let endpoint = endpoint.to_owned();
        // One process has the data dir: the lease is always ours.
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {PENDING} FROM webhook_outbox o
                 LEFT JOIN messages m ON m.room = o.room AND m.seq = o.seq AND o.kind < 10
                 WHERE o.endpoint = ?1 ORDER BY o.id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![endpoint, limit as i64], pending_of)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map(Some)
        })
        .await
    }

    async fn settle(&mut self, _endpoint: &str, settled: &[super::outbox::Settled]) -> Result<()> {
        use super::outbox::Settled;
        if settled.is_empty() {
            return Ok(());
        }
        let settled = settled.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for s in &settled {
                match s {
                    Settled::Done { id } => {
                        tx.prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")?
                            .execute([id])?;
                    }
                    Settled::Retry {
                        id,
                        attempts,
                        due_ms,
                    } => {
                        tx.prepare_cached(
                            "UPDATE webhook_outbox SET attempts = ?2, due_ms = ?3 WHERE id = ?1",
                        )?
                        .execute(params![id, attempts, due_ms])?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    async fn backlog(&mut self, endpoint: &str) -> Result<(u64, Option<i64>)> {
        let endpoint = endpoint.to_owned();
        self.run(move |conn| {
            conn.prepare_cached(
                "SELECT count(*), min(first_ms) FROM webhook_outbox WHERE endpoint = ?1",
            )?
            .query_row([endpoint], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get(1)?))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{contract, search_words};
    use super::*;

    /// From an attack on the docs: a deleted message's words stayed in the search index's
    /// pages (and in the write-ahead log) until later merges or checkpoints. Now no byte of
    /// the data dir holds them once the delete is acked.
    #[tokio::test]
    async fn a_deleted_text_leaves_no_trace_in_the_files() {
        let dir = std::env::temp_dir().join(format!("nanachat-erase-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        for i in 0..50 {
            let text = format!("filler message number {i}");
            store
                .append(contract::say("r", "nana", &text, None))
                .await
                .unwrap();
        }
        let secret = "my password is zqxjkvbwyq";
        let said = store
            .append(contract::say("r", "nana", secret, None))
            .await
            .unwrap();
        let seq = said.record().unwrap().seq;
        let delete = Append {
            op: Op::Delete { target: seq },
            ..contract::say("r", "nana", "", None)
        };
        contract::stored(store.append(delete).await.unwrap());
        store.flush().await.unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let found = bytes.windows(10).any(|w| w == b"zqxjkvbwyq");
            if found {
                let at = bytes.windows(10).position(|w| w == b"zqxjkvbwyq").unwrap();
                let around = &bytes[at.saturating_sub(120)..(at + 40).min(bytes.len())];
                panic!(
                    "{} still holds the deleted text at {at} (page {}): {}",
                    path.display(),
                    at / 4096,
                    String::from_utf8_lossy(around)
                );
            }
        }
    }
    use std::sync::atomic::Ordering;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nanachat-store-{name}-{}-{}",
            std::process::id(),
            new_epoch()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn keeps_the_store_contract() {
        let dir = temp_dir("contract");
        contract::seqs_start_at_one_per_room_and_never_skip(
            &SqliteStore::open(&dir.join("1")).unwrap(),
        )
        .await;
        contract::a_retried_cid_is_stored_once(&SqliteStore::open(&dir.join("2")).unwrap()).await;
        contract::a_cid_reused_for_another_text_is_refused(
            &SqliteStore::open(&dir.join("6")).unwrap(),
        )
        .await;
        contract::pages_go_both_ways(&SqliteStore::open(&dir.join("3")).unwrap()).await;
        contract::events_take_seqs_and_change_their_message(
            &SqliteStore::open(&dir.join("11")).unwrap(),
        )
        .await;
        contract::memberships_remember_read_and_forget(
            &SqliteStore::open(&dir.join("12")).unwrap(),
        )
        .await;
        contract::search_finds_messages_as_they_stand(&SqliteStore::open(&dir.join("13")).unwrap())
            .await;
        contract::prune_by_count_keeps_the_newest_of_each_room(
            &SqliteStore::open(&dir.join("7")).unwrap(),
        )
        .await;
        contract::prune_by_age_deletes_the_oldest_only(&SqliteStore::open(&dir.join("8")).unwrap())
            .await;
        contract::seqs_go_on_after_everything_is_pruned(
            &SqliteStore::open(&dir.join("9")).unwrap(),
        )
        .await;
        contract::a_wipe_changes_the_epoch_and_keeps_seqs_going(
            &SqliteStore::open(&dir.join("4")).unwrap(),
        )
        .await;
        contract::a_nick_bound_to_a_key_stays_bound_and_keeps_where_its_dms_stood(
            &SqliteStore::open(&dir.join("10")).unwrap(),
        )
        .await;
        let store = Arc::new(SqliteStore::open(&dir.join("5")).unwrap());
        contract::concurrent_appends_get_distinct_consecutive_seqs(store.clone()).await;
        // Group commit: eight writers at once shared transactions.
        let commits = store.stats().commits.load(Ordering::Relaxed);
        let jobs = store.stats().jobs.load(Ordering::Relaxed);
        assert!(jobs >= 400, "{jobs} jobs");
        assert!(commits < jobs, "{commits} commits for {jobs} jobs");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn keeps_the_outbox_contract() {
        let dir = temp_dir("outbox");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .hook(crate::store::outbox::Hooks::new(vec![
                "e1".into(),
                "e2".into(),
            ]))
            .unwrap();
        let mut outbox = store.outbox().unwrap();
        contract::the_outbox_holds_one_event_per_stored_append_and_endpoint(&store, &mut outbox)
            .await;
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn history_and_seqs_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let epoch = {
            let store = SqliteStore::open(&dir).unwrap();
            for i in 1..=3 {
                store
                    .append(contract::say(
                        "lobby",
                        "nana",
                        &format!("m{i}"),
                        Some(&format!("c{i}")),
                    ))
                    .await
                    .unwrap();
            }
            store.room_state("lobby").await.unwrap().epoch
        };
        let store = SqliteStore::open(&dir).unwrap();
        let state = store.room_state("lobby").await.unwrap();
        assert_eq!(
            state,
            RoomState {
                epoch,
                last_seq: 3,
                first_seq: 1
            }
        );
        let again = store
            .append(contract::say("lobby", "nana", "m3", Some("c3")))
            .await
            .unwrap();
        assert!(
            matches!(again, Appended::Duplicate(_)),
            "a retry after a restart is still recognised"
        );
        let reused = store
            .append(contract::say("lobby", "nana", "not m3", Some("c3")))
            .await
            .unwrap();
        assert_eq!(reused, Appended::CidReused, "and so is a reuse");
        let next = store
            .append(contract::say("lobby", "nana", "m4", None))
            .await
            .unwrap();
        assert_eq!(contract::stored(next).seq, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_store_of_the_first_schema_is_migrated_in_place_and_bindings_survive_a_reopen() {
        let dir = temp_dir("migrate");
        std::fs::create_dir_all(&dir).unwrap();
        {
            // The database as version 1 left it, with a conversation in it.
            let conn = Connection::open(dir.join("nanachat.sqlite3")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO rooms VALUES ('@alice+bob', 7, 2);
                 INSERT INTO messages VALUES ('@alice+bob', 1, 'bob', 'one', 1, 'c1'),
                                             ('@alice+bob', 2, 'alice', 'two', 2, NULL);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        let state = store.room_state("@alice+bob").await.unwrap();
        assert_eq!((state.epoch, state.first_seq, state.last_seq), (7, 1, 2));
        let page = store.history("@alice+bob", Page::After(0), 10).await;
        assert_eq!(page.unwrap().len(), 2);
        let held = store.take_nick("alice", Some("h".into())).await.unwrap();
        assert_eq!(held.floors, [("@alice+bob".to_owned(), 2)]);
        drop(store);

        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(
            store.nick_binding("alice").await.unwrap().as_deref(),
            Some("h")
        );
        let again = store.take_nick("alice", None).await.unwrap();
        assert_eq!(again, held, "the binding and its floors are kept");
        drop(store);
        let conn = Connection::open(dir.join("nanachat.sqlite3")).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        // A nick's rooms are found by index, not by reading every room.
        for (i, half) in DM_ROOMS.split("UNION").enumerate() {
            let plan: String = conn
                .query_row(&format!("EXPLAIN QUERY PLAN {half}"), ["alice"], |row| {
                    row.get(3)
                })
                .unwrap();
            let index = ["rooms_dm_first", "rooms_dm_second"][i];
            assert!(plan.contains(index), "{plan}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn flush_waits_for_what_was_queued_before_it() {
        let dir = temp_dir("flush");
        let store = SqliteStore::open(&dir).unwrap();
        // Queued, never awaited: flush alone must see them committed.
        let pending: Vec<_> = (0..50)
            .map(|i| store.append(contract::say("f", "nana", &format!("m{i}"), None)))
            .collect();
        store.flush().await.unwrap();
        assert_eq!(
            store.history("f", Page::After(0), 200).await.unwrap().len(),
            50
        );
        drop(pending);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The search index as a reader sees it: (documents named for it, documents it holds),
    /// and whether FTS5's own check of the index against the messages passes.
    fn index_state(dir: &Path) -> (i64, i64, bool) {
        let conn = Connection::open(dir.join("nanachat.sqlite3")).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let count = |table: &str| {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        let checked = conn
            .execute(
                "INSERT INTO search_fts (search_fts, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .is_ok();
        (count("search_docs"), count("search_fts_docsize"), checked)
    }

    /// Polls `index_state` until every named document is indexed (at most 10 s).
    async fn indexed_in_full(dir: &Path) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let (named, held, checked) = index_state(dir);
                if named == held && checked {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "never indexed: {:?}", index_state(dir));
    }

    /// Messages are indexed in passes, not in their appends' transactions: a message is
    /// found by a search the moment it is acked, a quiet store indexes what is pending by
    /// itself, and one that stopped with messages pending (a crash) indexes them after a
    /// restart.
    #[tokio::test]
    async fn the_search_index_catches_up_after_acks_while_idle_and_after_a_crash() {
        let dir = temp_dir("index-passes");
        let store = SqliteStore::open(&dir).unwrap();
        for i in 0..300 {
            let text = format!("word{i} common");
            let said = store.append(contract::say("ix", "nana", &text, None));
            let seq = contract::stored(said.await.unwrap()).seq;
            if i % 50 == 0 {
                // At once, not after a pass: the search indexes what is pending first.
                let found = store
                    .search(search_words(&format!("word{i}")), vec!["ix".into()], 10, 0)
                    .await
                    .unwrap();
                assert_eq!(found.len(), 1, "word{i} not found right after its ack");
                assert_eq!(found[0].seq, seq);
            }
        }
        store
            .append(contract::say("ix", "nana", "lastword", None))
            .await
            .unwrap();
        // No search and no write from here: the store indexes by itself.
        indexed_in_full(&dir).await;
        drop(store);
        // As a crash leaves it: stored messages the index does not hold yet.
        {
            let conn = Connection::open(dir.join("nanachat.sqlite3")).unwrap();
            let taken = conn
                .execute(
                    "INSERT INTO search_fts (search_fts, rowid, text)
                     SELECT 'delete', d.id, m.text FROM search_docs d
                     JOIN messages m ON m.room = d.room AND m.seq = d.seq
                     WHERE d.id > (SELECT max(id) - 10 FROM search_docs)",
                    [],
                )
                .unwrap();
            assert_eq!(taken, 10);
        }
        let (named, held, _) = index_state(&dir);
        assert_eq!(named - held, 10, "the crash's leftovers are in place");
        let store = SqliteStore::open(&dir).unwrap();
        indexed_in_full(&dir).await;
        let found = store
            .search(search_words("lastword"), vec!["ix".into()], 10, 0)
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
    }

    /// Edits, deletes, wipes and retention reach messages that may still wait for their
    /// pass; whatever the timing, the index says what the messages say (FTS5's own check),
    /// and a search finds the words as they stand.
    #[tokio::test]
    async fn changes_to_messages_not_yet_indexed_keep_the_index_true() {
        let dir = temp_dir("index-pending");
        let store = SqliteStore::open(&dir).unwrap();
        let find =
            |word: &str, room: &str| store.search(search_words(word), vec![room.to_owned()], 50, 0);
        for round in 0..5 {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let text = format!("alpha{round} item{i}");
                let said = store.append(contract::say("p", "nana", &text, None));
                seqs.push(contract::stored(said.await.unwrap()).seq);
            }
            let edit = Append {
                op: Op::Edit { target: seqs[19] },
                ..contract::say("p", "nana", &format!("beta{round}"), None)
            };
            contract::stored(store.append(edit).await.unwrap());
            let delete = Append {
                op: Op::Delete { target: seqs[18] },
                ..contract::say("p", "nana", "", None)
            };
            contract::stored(store.append(delete).await.unwrap());
            let alpha = find(&format!("alpha{round}"), "p").await.unwrap();
            let mut found: Vec<u64> = alpha.iter().map(|r| r.seq).collect();
            found.sort();
            assert_eq!(found, seqs[..18], "neither the edited nor the deleted one");
            let beta = find(&format!("beta{round}"), "p").await.unwrap();
            assert_eq!(beta.len(), 1, "the edit's words");
            assert_eq!(beta[0].seq, seqs[19]);
            store
                .append(contract::say("w", "nana", &format!("gamma{round}"), None))
                .await
                .unwrap();
            store.wipe("w").await.unwrap();
            for i in 0..5 {
                let text = format!("delta{round} {i}");
                store
                    .append(contract::say("q", "nana", &text, None))
                    .await
                    .unwrap();
            }
            let keep2 = Retention {
                max_age: None,
                max_messages: Some(2),
            };
            contract::prune_through(&store, keep2, now_ms(), 100).await;
            assert!(
                find(&format!("gamma{round}"), "w")
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(find(&format!("delta{round}"), "q").await.unwrap().len(), 2);
            let (named, held, checked) = index_state(&dir);
            assert!(checked, "FTS5 integrity check failed in round {round}");
            assert!(held <= named, "{held} indexed of {named}");
        }
        indexed_in_full(&dir).await;
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_error() {
        let dir = temp_dir("newer");
        drop(SqliteStore::open(&dir).unwrap());
        let conn = Connection::open(dir.join("nanachat.sqlite3")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&dir).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
