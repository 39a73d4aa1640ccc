//! The PostgreSQL store against a real PostgreSQL server started for each test.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::services::Postgres;
use nanachat::store::{Append, Appended, Page, PgStore, Store, contract};

async fn store(pg: &Postgres) -> PgStore {
    common::within("open the store", PgStore::open(&pg.url()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keeps_the_store_contract() {
    let pg = Postgres::start();
    let s = store(&pg).await;
    common::within("contract", async {
        contract::seqs_start_at_one_per_room_and_never_skip(&s).await;
        contract::a_retried_cid_is_stored_once(&s).await;
        contract::a_cid_reused_for_another_text_is_refused(&s).await;
        contract::pages_go_both_ways(&s).await;
        contract::events_take_seqs_and_change_their_message(&s).await;
        contract::memberships_remember_read_and_forget(&s).await;
        contract::search_finds_messages_as_they_stand(&s).await;
        contract::a_wipe_changes_the_epoch_and_keeps_seqs_going(&s).await;
        contract::prune_by_count_keeps_the_newest_of_each_room(&s).await;
        contract::prune_by_age_deletes_the_oldest_only(&s).await;
        contract::seqs_go_on_after_everything_is_pruned(&s).await;
        contract::a_nick_bound_to_a_key_stays_bound_and_keeps_where_its_dms_stood(&s).await;
        contract::concurrent_appends_get_distinct_consecutive_seqs(Arc::new(s)).await;
    })
    .await;
    // The schema is there once, at its version; a second store on it migrates nothing.
    assert_eq!(pg.sql("SELECT version FROM nanachat_schema").trim(), "6");
    drop(store(&pg).await);
    assert_eq!(pg.sql("SELECT count(*) FROM nanachat_schema").trim(), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn keeps_the_outbox_contract() {
    let pg = Postgres::start();
    let s = store(&pg).await;
    s.hook(nanachat::webhook::Hooks::new(vec![
        "e1".into(),
        "e2".into(),
    ]))
    .unwrap();
    let mut outbox = s.outbox();
    common::within(
        "contract",
        contract::the_outbox_holds_one_event_per_stored_append_and_endpoint(&s, &mut outbox),
    )
    .await;
}

/// Two processes' first joins of a room at the same moment: exactly one `room.occupied`, and
/// after both leave exactly one `room.vacated` (membership changes of a room are serialised by
/// an advisory lock; without it each transaction counts only its own member).
#[tokio::test(flavor = "multi_thread")]
async fn first_joins_on_two_processes_at_once_occupy_a_room_once() {
    use nanachat::store::Membership;
    use nanachat::webhook::{Event, Outbox};
    let pg = Postgres::start();
    let stores = [Arc::new(store(&pg).await), Arc::new(store(&pg).await)];
    for s in &stores {
        s.hook(nanachat::webhook::Hooks::new(vec!["e1".into()]))
            .unwrap();
    }
    let rooms: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    for change in [Membership::Remember { last_seq: 0 }, Membership::Forget] {
        let mut tasks = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            for room in rooms.clone() {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.membership(&format!("n{i}"), &room, change).await.unwrap();
                }));
            }
        }
        for task in tasks {
            common::within("memberships", task).await.unwrap();
        }
    }
    let mut outbox = stores[0].outbox();
    let pending = common::within("the outbox", outbox.take("e1", 1000))
        .await
        .unwrap()
        .unwrap();
    outbox.settle("e1", &[]).await.unwrap();
    for room in &rooms {
        let count = |event| {
            pending
                .iter()
                .filter(|p| &p.room == room && p.event == event)
                .count()
        };
        assert_eq!(count(Event::Joined), 2, "{room}");
        assert_eq!(count(Event::Occupied), 1, "{room}");
        assert_eq!(count(Event::Left), 2, "{room}");
        assert_eq!(count(Event::Vacated), 1, "{room}");
    }
}

fn say(from: &str, text: &str, cid: &str) -> Append {
    contract::say("lobby", from, text, Some(cid))
}

/// Two stores on one database are two processes: their appends to one room interleave, and
/// the seqs stay unique and gap-free, and a retry through the other one is still a retry.
#[tokio::test(flavor = "multi_thread")]
async fn two_stores_share_one_gap_free_sequence() {
    let pg = Postgres::start();
    let stores = [Arc::new(store(&pg).await), Arc::new(store(&pg).await)];
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        for t in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..100 {
                    let cid = format!("{i}-{t}-{n}");
                    let appended = s.append(say(&format!("u{i}"), "x", &cid)).await;
                    seqs.push(contract::stored(appended.unwrap()).seq);
                }
                seqs
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(common::within("appends", task).await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<u64>>());
    let again = stores[1].append(say("u0", "x", "0-0-0")).await.unwrap();
    assert!(
        matches!(again, Appended::Duplicate(_)),
        "a retry through another process is a retry"
    );
    let reused = stores[1].append(say("u0", "y", "0-0-1")).await.unwrap();
    assert_eq!(
        reused,
        Appended::CidReused,
        "and a reuse through another process is refused"
    );
    assert_eq!(stores[0].room_state("lobby").await.unwrap().last_seq, 800);
}

/// Two processes opening the same new room at once both get it, with one epoch.
#[tokio::test(flavor = "multi_thread")]
async fn two_stores_opening_one_new_room_at_once_agree_on_it() {
    let pg = Postgres::start();
    let stores = [Arc::new(store(&pg).await), Arc::new(store(&pg).await)];
    for round in 0..50 {
        let room = format!("new-{round}");
        let opened = stores.iter().map(|s| {
            let (s, room) = (s.clone(), room.clone());
            tokio::spawn(async move { s.room_state(&room).await })
        });
        let mut epochs = Vec::new();
        for task in opened.collect::<Vec<_>>() {
            let state = common::within("room state", task).await.unwrap().unwrap();
            assert_eq!(state.last_seq, 0);
            epochs.push(state.epoch);
        }
        assert_eq!(epochs[0], epochs[1], "{room}");
    }
}

/// Issue 16: three processes started at once on an empty database: one or two exited with
/// `duplicate key value violates unique constraint "pg_type_typname_nsp_index"` (4 of 6
/// trials) — the first table was created before the migration lock was taken.
#[tokio::test(flavor = "multi_thread")]
async fn any_number_of_stores_may_open_an_empty_database_at_once() {
    let pg = Postgres::start();
    for trial in 0..6 {
        let db = format!("cold_{trial}");
        pg.sql(&format!("CREATE DATABASE {db}"));
        let url = pg.url().replace("/postgres", &format!("/{db}"));
        let opening: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::open(&url).await.map(drop) })
            })
            .collect();
        for task in opening {
            let opened = common::within("open the store", task).await.unwrap();
            assert!(opened.is_ok(), "trial {trial}: {:?}", opened.err());
        }
    }
}

/// A database as the first schema left it is migrated in place, history intact; a nick bound
/// through one process is bound for every other, and two processes binding it at once agree
/// on the one key that won.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_schema_database_is_migrated_and_nick_bindings_are_shared() {
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE nanachat_schema (version INT NOT NULL);
         INSERT INTO nanachat_schema VALUES (1);
         CREATE TABLE rooms (name TEXT PRIMARY KEY, epoch BIGINT NOT NULL,
                             last_seq BIGINT NOT NULL);
         CREATE TABLE messages (room TEXT NOT NULL, seq BIGINT NOT NULL, sender TEXT NOT NULL,
                                text TEXT NOT NULL, time_ms BIGINT NOT NULL, cid TEXT,
                                PRIMARY KEY (room, seq));
         CREATE UNIQUE INDEX messages_cid ON messages (room, sender, cid) WHERE cid IS NOT NULL;
         INSERT INTO rooms VALUES ('@alice+bob', 7, 2);
         INSERT INTO messages VALUES ('@alice+bob', 1, 'bob', 'one', 1, 'c1'),
                                     ('@alice+bob', 2, 'alice', 'two', 2, NULL);",
    );
    let stores = [Arc::new(store(&pg).await), Arc::new(store(&pg).await)];
    assert_eq!(pg.sql("SELECT version FROM nanachat_schema").trim(), "6");
    let state = stores[0].room_state("@alice+bob").await.unwrap();
    assert_eq!((state.epoch, state.first_seq, state.last_seq), (7, 1, 2));
    let binds = stores.iter().enumerate().map(|(i, s)| {
        let s = s.clone();
        tokio::spawn(async move { s.take_nick("alice", Some(format!("h{i}"))).await })
    });
    let mut held = Vec::new();
    for task in binds.collect::<Vec<_>>() {
        held.push(common::within("bind", task).await.unwrap().unwrap());
    }
    assert_eq!(held[0], held[1], "one binding, told to both");
    assert_eq!(held[0].floors, [("@alice+bob".to_owned(), 2)]);
    let bound = stores[1].nick_binding("alice").await.unwrap();
    assert_eq!(bound, held[0].key_hash);
    stores[0]
        .append(contract::say("@alice+bob", "bob", "three", None))
        .await
        .unwrap();
    assert_eq!(stores[1].take_nick("alice", None).await.unwrap(), held[0]);
}

/// Stopped database: appends and reads fail with an error (nothing acknowledged that is not
/// stored); started again: the store reconnects by itself and seqs go on without a gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_database_gives_errors_then_the_store_reconnects() {
    let pg = Postgres::start();
    let s = store(&pg).await;
    s.append(say("nana", "before", "c1")).await.unwrap();
    pg.stop();
    let err = common::within("append while down", s.append(say("nana", "down", "c2")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
    assert!(
        common::within("read while down", s.history("lobby", Page::After(0), 10))
            .await
            .is_err()
    );
    pg.start_again();
    // The back-off is at most 5 s: within the wait, the same cid is stored, once.
    let stored = common::within("append after restart", async {
        loop {
            match s.append(say("nana", "down", "c2")).await {
                Ok(a) => break a,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(contract::stored(stored).seq, 2);
    let texts: Vec<String> = s
        .history("lobby", Page::After(0), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect();
    assert_eq!(texts, ["before", "down"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_a_clear_config_error() {
    let pg = Postgres::start();
    let url = pg.url();
    pg.stop();
    let err = common::within("open", PgStore::open(&url))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot use postgres://"), "{text}");
    assert!(matches!(err, nanachat::Error::Service { .. }), "{err:?}");
    assert_eq!(
        err.exit_code(),
        2,
        "a service named at start that cannot be used"
    );
    let err = PgStore::open("postgres://a:secret@127.0.0.1:1/db?bad_option=1")
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret"), "the password is not shown: {err}");
}

/// Issue 16: PostgreSQL had no TLS. `sslmode=verify-full` (or `require`, `verify-ca`) now
/// speaks TLS and verifies the server — against the CA given, or the system's roots, which
/// do not know a private CA; `sslmode` absent stays plain.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_speaks_tls_and_verifies_the_server() {
    let pg = Postgres::start();
    let ca = common::private_ca(&["127.0.0.1"]);
    pg.enable_tls(&ca.leaf.pem(), &ca.leaf_key.serialize_pem());
    // TLS is what the connection uses: the server says so.
    let url = format!("{}?sslmode=verify-full", pg.url());
    let store = common::within(
        "open over TLS",
        PgStore::open_with(&url, Some(ca.ca_pem.as_bytes())),
    )
    .await
    .unwrap();
    let appended = store.append(say("ada", "over tls", "t1")).await.unwrap();
    assert!(matches!(appended, Appended::Stored(_)), "{appended:?}");
    let ssl = pg.sql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name = 'nanachat'",
    );
    assert!(
        ssl.trim().parse::<u32>().unwrap() >= 1,
        "no TLS connection: {ssl}"
    );
    // The system's roots do not know the private CA: refused, saying why.
    let err = common::within("open unverified", PgStore::open_with(&url, None))
        .await
        .expect_err("a certificate from an unknown CA must be refused");
    assert!(format!("{err}").contains("history store"), "{err}");
    // A CA file without TLS asked for is a configuration error.
    let plain = PgStore::open_with(&pg.url(), Some(ca.ca_pem.as_bytes())).await;
    assert!(
        plain
            .err()
            .is_some_and(|e| e.to_string().contains("sslmode"))
    );
}
