//! Fills a store with a synthetic history for `bench/search.sh`: N messages over R rooms, each
//! 5 to 30 words drawn from a Zipf vocabulary of 5,000 made-up words, plus 1,000 rare words put
//! into a dozen messages each; a user (`--nick`) who remembers every room; and a list of
//! queries for `nanachat bench search` with how many messages hold each one's words.
//!
//! ```sh
//! cargo run --release --example search_seed -- DATA_DIR_OR_POSTGRES_URL \
//!     [--messages 1000000] [--rooms 100] [--nick searcher] [--queries FILE] [--seed 1]
//! ```
//!
//! The schema is made by the store's own code (`SqliteStore::open`, `PgStore::open`: schema
//! v5); the rows then go in by bulk SQL, as nothing but this tool would write them: SQLite in
//! one transaction, then the FTS5 index rebuilt from its content (as migration 5 does);
//! PostgreSQL by `COPY` with the GIN index dropped and made again after (its `tsvector` column
//! is generated, so PostgreSQL computes it as the rows come). The store must be new (no
//! server on it). Prints what it did and the index's size as one JSON object.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use futures_util::SinkExt;
use serde_json::json;

/// Words in the Zipf vocabulary, and rare words beside it.
const VOCABULARY: usize = 5_000;
const RARE_WORDS: usize = 1_000;
/// Messages each rare word is put into.
const RARE_USES: usize = 12;
/// The Zipf exponent.
const ZIPF_S: f64 = 1.0;
/// Senders.
const USERS: usize = 500;

/// SplitMix64: small, fast, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A made-up word of `syllables` syllables.
fn word(rng: &mut Rng, syllables: usize) -> String {
    const ONSETS: [&str; 20] = [
        "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "st",
        "tr", "ch",
    ];
    const VOWELS: [&str; 8] = ["a", "e", "i", "o", "u", "ai", "ou", "ea"];
    const CODAS: [&str; 6] = ["", "", "n", "r", "s", "t"];
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(ONSETS[rng.below(ONSETS.len())]);
        w.push_str(VOWELS[rng.below(VOWELS.len())]);
    }
    w.push_str(CODAS[rng.below(CODAS.len())]);
    w
}

/// The vocabulary, most frequent first (short words first, as in a language), and the rare
/// words, none of them in it.
fn vocabulary(rng: &mut Rng) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::new();
    while words.len() < VOCABULARY {
        let syllables = 1 + words.len() * 4 / VOCABULARY + rng.below(2);
        let w = word(rng, syllables);
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    let mut rare = Vec::new();
    while rare.len() < RARE_WORDS {
        let syllables = 4 + rng.below(2);
        let w = word(rng, syllables);
        if seen.insert(w.clone()) {
            rare.push(w);
        }
    }
    (words, rare)
}

struct Corpus {
    words: Vec<String>,
    rare: Vec<String>,
    cdf: Vec<f64>,
    /// Message index → the rare words (indices) it carries.
    rare_in: HashMap<usize, Vec<usize>>,
    /// Rare word → the first message it is in.
    first_use: Vec<usize>,
}

impl Corpus {
    fn new(rng: &mut Rng, messages: usize) -> Self {
        let (words, rare) = vocabulary(rng);
        let mut cdf = Vec::with_capacity(words.len());
        let mut sum = 0.0;
        for rank in 1..=words.len() {
            sum += 1.0 / (rank as f64).powf(ZIPF_S);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        let mut rare_in: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut first_use = Vec::with_capacity(rare.len());
        for r in 0..rare.len() {
            let mut chosen = std::collections::BTreeSet::new();
            while chosen.len() < RARE_USES.min(messages) {
                chosen.insert(rng.below(messages));
            }
            first_use.push(*chosen.first().expect("at least one"));
            for m in chosen {
                rare_in.entry(m).or_default().push(r);
            }
        }
        Self {
            words,
            rare,
            cdf,
            rare_in,
            first_use,
        }
    }

    fn zipf(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }

    /// Message `i`: its text and the ids of its words (rare ones after the vocabulary's).
    fn message(&self, rng: &mut Rng, i: usize) -> (String, Vec<usize>) {
        let n = 5 + rng.below(26);
        let mut ids: Vec<usize> = (0..n).map(|_| self.zipf(rng)).collect();
        if let Some(rare) = self.rare_in.get(&i) {
            for r in rare {
                let at = rng.below(ids.len() + 1);
                ids.insert(at, self.words.len() + r);
            }
        }
        let text = ids
            .iter()
            .map(|&id| self.name(id))
            .collect::<Vec<_>>()
            .join(" ");
        ids.sort_unstable();
        ids.dedup();
        (text, ids)
    }

    fn name(&self, id: usize) -> &str {
        match id.checked_sub(self.words.len()) {
            Some(r) => &self.rare[r],
            None => &self.words[id],
        }
    }
}

/// A query of the list: its word ids, its room, its kind; how many messages hold its words.
struct Query {
    ids: Vec<usize>,
    room: Option<usize>,
    kind: &'static str,
    count: u64,
}

/// The room of message `i`: the same for every run of one seed, whatever else is drawn.
fn room_of(seed: u64, i: usize, rooms: usize) -> usize {
    Rng(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)).below(rooms)
}

/// The queries: common words, rare words and two common words, over all the user's rooms and
/// in one room (the room of one of the rare word's messages), 20 of each kind.
fn queries(rng: &mut Rng, corpus: &Corpus, args: &Args) -> Vec<Query> {
    let mut out = Vec::new();
    let vocab = corpus.words.len();
    for k in 0..20 {
        let common = vec![k % 10 + rng.below(20)];
        let r = rng.below(RARE_WORDS);
        let rare = vec![vocab + r];
        let one_room = room_of(args.seed, corpus.first_use[r], args.rooms);
        let first = rng.below(50);
        let mut second = rng.below(200);
        while second == first {
            second = rng.below(200);
        }
        let two = vec![first.min(second), first.max(second)];
        for (ids, kind, room) in [
            (common.clone(), "common", None),
            (rare.clone(), "rare", None),
            (two.clone(), "two words", None),
            (common, "common, one room", Some(one_room)),
            (rare, "rare, one room", Some(one_room)),
            (two, "two words, one room", Some(one_room)),
        ] {
            out.push(Query {
                ids,
                room,
                kind,
                count: 0,
            });
        }
    }
    out
}

struct Args {
    store: String,
    messages: usize,
    rooms: usize,
    nick: String,
    queries: Option<PathBuf>,
    seed: u64,
}

fn args() -> Args {
    let mut args = Args {
        store: String::new(),
        messages: 1_000_000,
        rooms: 100,
        nick: "searcher".into(),
        queries: None,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--messages" => args.messages = value().parse().expect("--messages N"),
            "--rooms" => args.rooms = value().parse().expect("--rooms N"),
            "--nick" => args.nick = value(),
            "--queries" => args.queries = Some(value().into()),
            "--seed" => args.seed = value().parse().expect("--seed N"),
            _ if args.store.is_empty() && !a.starts_with("--") => args.store = a,
            _ => panic!("unknown argument {a}"),
        }
    }
    assert!(
        !args.store.is_empty(),
        "usage: search_seed DATA_DIR|postgres://… [--messages N] [--rooms N] [--nick NICK] [--queries FILE] [--seed N]"
    );
    assert!(args.rooms >= 1 && args.messages >= 1);
    args
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn room_name(r: usize) -> String {
    format!("room{r:03}")
}

/// One generated message: room index, seq, sender, text, time.
type Row = (usize, u64, String, String, i64);

/// Generates the messages in order, counting each query's matches; `sink` takes each row.
fn generate(
    args: &Args,
    corpus: &Corpus,
    rng: &mut Rng,
    queries: &mut [Query],
    mut sink: impl FnMut(Row),
) -> Vec<u64> {
    let mut last_seq = vec![0u64; args.rooms];
    let start_ms = now_ms() - 30 * 24 * 3_600_000;
    for i in 0..args.messages {
        let room = room_of(args.seed, i, args.rooms);
        last_seq[room] += 1;
        let (text, ids) = corpus.message(rng, i);
        for q in queries.iter_mut() {
            if q.room.is_none_or(|r| r == room)
                && q.ids.iter().all(|id| ids.binary_search(id).is_ok())
            {
                q.count += 1;
            }
        }
        let sender = format!("user{}", rng.below(USERS));
        let time = start_ms + (i as i64) * 2_000;
        sink((room, last_seq[room], sender, text, time));
    }
    last_seq
}

fn seed_sqlite(
    args: &Args,
    corpus: &Corpus,
    rng: &mut Rng,
    queries: &mut [Query],
) -> serde_json::Value {
    let dir = PathBuf::from(&args.store);
    // The schema, by the store itself; then it lets go of the directory.
    drop(nanachat::store::SqliteStore::open(&dir).expect("open the store"));
    let path = dir.join("nanachat.sqlite3");
    let mut conn = rusqlite::Connection::open(&path).expect("open the database");
    conn.pragma_update(None, "synchronous", "OFF")
        .expect("pragma");
    let used: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .expect("count");
    assert_eq!(used, 0, "the store is not new");
    let t0 = Instant::now();
    let tx = conn.transaction().expect("begin");
    let last_seq = {
        let mut insert = tx
            .prepare("INSERT INTO messages (room, seq, sender, text, time_ms) VALUES (?1, ?2, ?3, ?4, ?5)")
            .expect("prepare");
        let names: Vec<String> = (0..args.rooms).map(room_name).collect();
        generate(
            args,
            corpus,
            rng,
            queries,
            |(room, seq, sender, text, time)| {
                insert
                    .execute(rusqlite::params![
                        names[room],
                        seq as i64,
                        sender,
                        text,
                        time
                    ])
                    .expect("insert");
            },
        )
    };
    insert_rooms_sqlite(&tx, args, &last_seq);
    tx.commit().expect("commit");
    let rows_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    // What migration 5 does for the messages it finds: rows named, the index rebuilt.
    conn.execute_batch(
        "BEGIN;
         INSERT INTO search_docs (room, seq) SELECT room, seq FROM messages WHERE kind = 0 AND deleted = 0;
         INSERT INTO search_fts (search_fts) VALUES ('rebuild');
         COMMIT;",
    )
    .expect("index");
    let index_secs = t1.elapsed().as_secs_f64();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
        .expect("checkpoint");
    let mut sizes = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
        .expect("dbstat");
    for row in stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("dbstat")
    {
        let (name, bytes) = row.expect("row");
        sizes.insert(name, bytes);
    }
    let sum = |f: &dyn Fn(&str) -> bool| {
        sizes
            .iter()
            .filter(|(n, _)| f(n))
            .map(|(_, b)| b)
            .sum::<i64>()
    };
    let fts = sum(&|n| n.starts_with("search_fts"));
    let docs = sum(&|n| n == "search_docs" || n.starts_with("sqlite_autoindex_search_docs"));
    let messages = sum(&|n| n == "messages" || n.starts_with("messages_"));
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    json!({
        "store": "sqlite",
        "rows_seconds": rows_secs,
        "index_seconds": index_secs,
        "index_bytes": fts + docs,
        "fts_bytes": fts,
        "search_docs_bytes": docs,
        "messages_bytes": messages,
        "file_bytes": file,
        "objects": sizes,
    })
}

fn insert_rooms_sqlite(tx: &rusqlite::Transaction<'_>, args: &Args, last_seq: &[u64]) {
    let epoch = now_ms() * 1000;
    let nick = args.nick.to_ascii_lowercase();
    for (r, last) in last_seq.iter().enumerate() {
        tx.execute(
            "INSERT INTO rooms (name, epoch, last_seq) VALUES (?1, ?2, ?3)",
            rusqlite::params![room_name(r), epoch, *last as i64],
        )
        .expect("room");
        // Remembered, and read to its end.
        tx.execute(
            "INSERT INTO memberships (nick, room, read_seq) VALUES (?1, ?2, ?3)",
            rusqlite::params![nick, room_name(r), *last as i64],
        )
        .expect("membership");
    }
}

async fn seed_postgres(
    args: &Args,
    corpus: &Corpus,
    rng: &mut Rng,
    queries: &mut [Query],
) -> serde_json::Value {
    drop(
        nanachat::store::PgStore::open(&args.store)
            .await
            .expect("open the store"),
    );
    let (client, connection) = tokio_postgres::connect(&args.store, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let used: i64 = client
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(used, 0, "the store is not new");
    let def: String = client
        .query_one("SELECT pg_get_indexdef('messages_tsv'::regclass)", &[])
        .await
        .expect("index definition")
        .get(0);
    client
        .batch_execute("DROP INDEX messages_tsv")
        .await
        .expect("drop index");
    let t0 = Instant::now();
    let sink = client
        .copy_in("COPY messages (room, seq, sender, text, time_ms) FROM STDIN")
        .await
        .expect("copy");
    let mut sink = std::pin::pin!(sink);
    let mut buf = String::with_capacity(1 << 20);
    let mut chunks = Vec::new();
    let last_seq = generate(
        args,
        corpus,
        rng,
        queries,
        |(room, seq, sender, text, time)| {
            use std::fmt::Write;
            // Made-up words and digits only: nothing to escape in COPY's text format.
            let _ = writeln!(buf, "{}\t{seq}\t{sender}\t{text}\t{time}", room_name(room));
            if buf.len() > 1 << 20 {
                chunks.push(bytes::Bytes::from(std::mem::take(&mut buf)));
            }
        },
    );
    chunks.push(bytes::Bytes::from(buf));
    for chunk in chunks {
        sink.send(chunk).await.expect("copy a chunk");
    }
    sink.as_mut().finish().await.expect("copy done");
    let epoch = now_ms() * 1000;
    let nick = args.nick.to_ascii_lowercase();
    for (r, last) in last_seq.iter().enumerate() {
        client
            .execute(
                "INSERT INTO rooms (name, epoch, last_seq) VALUES ($1, $2, $3)",
                &[&room_name(r), &epoch, &(*last as i64)],
            )
            .await
            .expect("room");
        client
            .execute(
                "INSERT INTO memberships (nick, room, read_seq) VALUES ($1, $2, $3)",
                &[&nick, &room_name(r), &(*last as i64)],
            )
            .await
            .expect("membership");
    }
    let rows_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    client
        .batch_execute(&format!("SET maintenance_work_mem = '256MB'; {def}"))
        .await
        .expect("make the index again");
    let index_secs = t1.elapsed().as_secs_f64();
    client
        .batch_execute("VACUUM ANALYZE messages")
        .await
        .expect("analyze");
    let size = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect("size")
                .get::<_, i64>(0)
        }
    };
    json!({
        "store": "postgres",
        "rows_seconds": rows_secs,
        "index_seconds": index_secs,
        "index_definition": def,
        "index_bytes": size("SELECT pg_relation_size('messages_tsv')").await,
        "tsv_column_bytes": size("SELECT sum(pg_column_size(tsv))::bigint FROM messages").await,
        "messages_heap_bytes": size("SELECT pg_relation_size('messages')").await,
        "messages_total_bytes": size("SELECT pg_total_relation_size('messages')").await,
    })
}

#[tokio::main]
async fn main() {
    let args = args();
    let mut rng = Rng(args.seed);
    let t0 = Instant::now();
    let corpus = Corpus::new(&mut rng, args.messages);
    let mut queries = queries(&mut rng, &corpus, &args);
    let mut report = if args.store.starts_with("postgres") {
        seed_postgres(&args, &corpus, &mut rng, &mut queries).await
    } else {
        seed_sqlite(&args, &corpus, &mut rng, &mut queries)
    };
    report["messages"] = json!(args.messages);
    report["rooms"] = json!(args.rooms);
    report["nick"] = json!(args.nick);
    report["seconds"] = json!(t0.elapsed().as_secs_f64());
    if let Some(path) = &args.queries {
        let lines: Vec<String> = queries
            .iter()
            .map(|q| {
                let words: Vec<&str> = q.ids.iter().map(|&id| corpus.name(id)).collect();
                let mut line = json!({
                    "query": words.join(" "),
                    "kind": q.kind,
                    "expect": q.count,
                });
                if let Some(r) = q.room {
                    line["room"] = json!(room_name(r));
                }
                line.to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n").expect("write the queries");
    }
    println!("{report}");
}
