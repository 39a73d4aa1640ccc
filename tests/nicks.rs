//! Whose a nick's direct messages are on an open server (no tokens; issue 15 item 5): a nick
//! used with a `key` is bound to that key in the store — for good, across restarts — so that
//! nobody else ever takes it or reads its DMs; a keyless nick is anyone's once it is free, and
//! its next holder reads nothing its earlier holders were sent.
#![allow(clippy::unwrap_used)]

mod common;

use common::client::{Client, roomy};
use common::{Peer, TestServer, within};
use futures_util::{SinkExt, StreamExt};
use nanachat::chat::Chat;
use nanachat::server::ServerConfig;
use nanachat::store::{MemoryStore, SqliteStore};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn memory_chat() -> TestServer {
    let config = ServerConfig::default();
    let max = config.connection.max_message_bytes;
    TestServer::start(config, Chat::new(MemoryStore::new(), roomy(), max)).await
}

/// A chat server on port 0 with its history in a SQLite file in `dir`.
async fn sqlite_chat(dir: &std::path::Path) -> TestServer {
    let store = SqliteStore::open(dir).unwrap();
    let config = ServerConfig::default();
    let max = config.connection.max_message_bytes;
    TestServer::start(config, Chat::new(store, roomy(), max)).await
}

/// A fresh directory for a test's SQLite file.
fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nanachat-nicks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Connects and says `hello`; returns the client and the answer (`welcome` or `error`).
async fn hello(url: &str, nick: &str, key: Option<&str>) -> (Client, Value) {
    let mut c = Client::raw(url).await;
    let mut hello = json!({"type": "hello", "nick": nick});
    if let Some(key) = key {
        hello["key"] = json!(key);
    }
    c.send(hello).await;
    let answer = loop {
        let v = c.recv().await;
        if v["type"] == "welcome" || v["type"] == "error" {
            break v;
        }
    };
    (c, answer)
}

/// Takes `nick` once it is free: its last holder's connection may still be closing.
async fn take(url: &str, nick: &str, key: Option<&str>) -> Client {
    within(&format!("{nick} is free"), async {
        loop {
            let (c, answer) = hello(url, nick, key).await;
            if answer["type"] == "welcome" {
                return c;
            }
            assert_eq!(answer["code"], "nick_taken", "{answer}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Sends a `dm` and returns its `ack`.
async fn dm(c: &mut Client, to: &str, text: &str, cid: &str) -> Value {
    c.send(json!({"type": "dm", "to": to, "text": text, "cid": cid}))
        .await;
    loop {
        let v = c.recv().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "ack" && v["cid"] == cid {
            return v;
        }
    }
}

/// What a client can read of `room`: joins it with `since: 0` and asks its `history`. Returns
/// `joined`, the texts replayed after it, and the texts of the history page.
async fn read_back(c: &mut Client, room: &str) -> (Value, Vec<String>, Vec<String>) {
    c.send(json!({"type": "join", "room": room, "since": 0}))
        .await;
    c.send(json!({"type": "history", "room": room, "after": 0}))
        .await;
    let joined = c.expect("joined").await;
    let mut replayed = Vec::new();
    let page = loop {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("message") if v["room"] == room => {
                replayed.push(v["text"].as_str().unwrap().to_owned());
            }
            Some("history") => break v,
            Some("error") => panic!("{v}"),
            _ => {}
        }
    };
    let history = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    (joined, replayed, history)
}

/// The texts of the messages in `room` that arrive before the answer to a `rooms` request
/// (a marker: everything delivered before it has been read).
async fn live_until_marker(c: &mut Client, room: &str) -> Vec<String> {
    c.send(json!({"type": "rooms"})).await;
    let mut texts = Vec::new();
    loop {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("message") if v["room"] == room => {
                texts.push(v["text"].as_str().unwrap().to_owned());
            }
            Some("rooms") => return texts,
            _ => {}
        }
    }
}

/// Issue 15 item 5: after a keyless `alice` left, whoever took `alice` next could `join`
/// `@alice+bob` with `since: 0` (or ask its `history`) and read everything she was sent.
#[tokio::test]
async fn the_next_holder_of_a_keyless_nick_reads_nothing_sent_to_the_last_one() {
    let server = memory_chat().await;
    let url = server.url();
    let mut alice = take(&url, "alice", None).await;
    let mut bob = take(&url, "bob", None).await;
    assert_eq!(
        dm(&mut alice, "bob", "from the first alice", "a1").await["room"],
        "@alice+bob"
    );
    dm(&mut bob, "alice", "for the first alice", "b1").await;
    assert!(
        live_until_marker(&mut alice, "@alice+bob")
            .await
            .contains(&"for the first alice".to_owned())
    );
    drop(alice);

    let mut mallory = take(&url, "alice", None).await;
    let (joined, replayed, history) = read_back(&mut mallory, "@alice+bob").await;
    assert_eq!(joined["last_seq"], 2, "{joined}");
    assert_eq!(
        joined["first_seq"], 3,
        "her reading starts after what she was not sent: {joined}"
    );
    assert_eq!(joined["truncated"], true, "{joined}");
    assert!(replayed.is_empty(), "replayed {replayed:?}");
    assert!(history.is_empty(), "history {history:?}");
    // A page asked for before that, backwards, is empty too.
    mallory
        .send(json!({"type": "history", "room": "@alice+bob", "before": 3}))
        .await;
    assert_eq!(mallory.expect("history").await["messages"], json!([]));

    // What is sent to the nick from now on is hers, live and stored.
    dm(&mut bob, "alice", "for the new alice", "b2").await;
    assert_eq!(
        live_until_marker(&mut mallory, "@alice+bob").await,
        ["for the new alice"]
    );
    mallory
        .send(json!({"type": "history", "room": "@alice+bob"}))
        .await;
    let page = mallory.expect("history").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["messages"][0]["text"], "for the new alice");
    // Bob, who has held his nick all along, reads the whole conversation.
    let (_, replayed, history) = read_back(&mut bob, "@alice+bob").await;
    let all = [
        "from the first alice",
        "for the first alice",
        "for the new alice",
    ];
    assert_eq!(replayed, all, "replayed");
    assert_eq!(history, all, "history");
    drop(mallory);

    // A plain-text client that renames itself to the nick reads no more of it.
    let mut p = common::peer(&url).await;
    line_starting(&mut p, "* you joined lobby").await;
    within("alice is free", async {
        loop {
            send_line(&mut p, "/nick alice").await;
            let answer = line_among(&mut p, &["* you are now", "!"]).await;
            if answer == "* you are now alice" {
                break;
            }
            assert!(answer.starts_with("! nick_taken"), "{answer}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    send_line(&mut p, "/join @alice+bob").await;
    line_starting(&mut p, "* you joined @alice+bob").await;
    send_line(&mut p, "/history 50").await;
    let answer = line_among(&mut p, &["* no history", "#", "!"]).await;
    assert_eq!(answer, "* no history in @alice+bob");
}

/// Issue 15 item 5: a nick used with a key is that key's — in the store, so after a restart
/// too: without the key, or with another, it is refused; with it, its DMs are all there.
#[tokio::test]
async fn a_keyed_nick_stays_its_key_holders_across_a_restart() {
    let dir = data_dir("keyed-restart");
    let server = sqlite_chat(&dir).await;
    let url = server.url();
    let mut alice = take(&url, "alice", Some("alice's key")).await;
    let mut bob = take(&url, "bob", Some("bob's key")).await;
    dm(&mut alice, "bob", "alice to bob", "a1").await;
    dm(&mut bob, "alice", "bob to alice", "b1").await;
    drop((alice, bob));
    server.stop().await.unwrap();
    // The key is kept salted and hashed: it is nowhere in the store's files.
    let mut kept = Vec::new();
    for file in ["nanachat.sqlite3", "nanachat.sqlite3-wal"] {
        kept.extend(std::fs::read(dir.join(file)).unwrap_or_default());
    }
    let has = |needle: &[u8]| kept.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"hmac-sha256:") && !has(b"alice's key"));

    let server = sqlite_chat(&dir).await;
    let url = server.url();
    for (nick, key) in [
        ("alice", None),
        ("alice", Some("mallory's key")),
        ("Alice", None),
        ("ALICE", Some("mallory's key")),
    ] {
        let (_, answer) = hello(&url, nick, key).await;
        assert_eq!(answer["code"], "nick_taken", "{nick} {key:?}: {answer}");
        let why = answer["message"].as_str().unwrap();
        assert!(why.contains("key"), "the refusal says why: {why}");
    }
    // Plain-text clients cannot rename themselves to it either.
    let mut p = common::peer(&url).await;
    line_starting(&mut p, "* you joined lobby").await;
    send_line(&mut p, "/nick alice").await;
    let refused = line_starting(&mut p, "!").await;
    assert!(refused.starts_with("! nick_taken"), "{refused}");

    let mut alice = take(&url, "alice", Some("alice's key")).await;
    let (joined, replayed, history) = read_back(&mut alice, "@alice+bob").await;
    assert_eq!(
        (&joined["first_seq"], &joined["last_seq"]),
        (&json!(1), &json!(2))
    );
    let both = ["alice to bob", "bob to alice"];
    assert_eq!(replayed, both, "replayed");
    assert_eq!(history, both, "history");
    // Another spelling is the same nick: hers with her key, when she is not online as `alice`.
    drop(alice);
    let (_, answer) = hello(&url, "Alice", None).await;
    assert_eq!(answer["code"], "nick_taken", "{answer}");
    take(&url, "Alice", Some("alice's key")).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Binding a keyless nick's next holding to a key does not hand it what the nick was sent
/// before: the key holder reads the DMs from the binding on.
#[tokio::test]
async fn a_key_binds_a_nick_from_then_on_not_its_past() {
    let dir = data_dir("bind-later");
    let server = sqlite_chat(&dir).await;
    let url = server.url();
    let mut alice = take(&url, "alice", None).await;
    let mut bob = take(&url, "bob", None).await;
    dm(&mut bob, "alice", "for the keyless alice", "b1").await;
    drop(alice.ws.close(None).await);

    alice = take(&url, "alice", Some("mallory's key")).await;
    let (joined, replayed, history) = read_back(&mut alice, "@alice+bob").await;
    assert_eq!(joined["first_seq"], 2, "{joined}");
    assert!(
        replayed.is_empty() && history.is_empty(),
        "{replayed:?} {history:?}"
    );
    dm(&mut bob, "alice", "for the keyed alice", "b2").await;
    drop((alice, bob));
    server.stop().await.unwrap();

    // After a restart, the binding and where it began are still there.
    let server = sqlite_chat(&dir).await;
    let url = server.url();
    let (_, answer) = hello(&url, "alice", None).await;
    assert_eq!(answer["code"], "nick_taken", "{answer}");
    let mut alice = take(&url, "alice", Some("mallory's key")).await;
    let (_, replayed, history) = read_back(&mut alice, "@alice+bob").await;
    let mine = ["for the keyed alice"];
    assert_eq!(replayed, mine, "replayed");
    assert_eq!(history, mine, "history");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn send_line(p: &mut Peer, line: &str) {
    within("send", p.send(Message::text(line))).await.unwrap();
}

async fn line_starting(ws: &mut Peer, prefix: &str) -> String {
    line_among(ws, &[prefix]).await
}

/// The next line starting with one of `prefixes`.
async fn line_among(ws: &mut Peer, prefixes: &[&str]) -> String {
    loop {
        match within("a line", ws.next()).await {
            Some(Ok(Message::Text(t))) if prefixes.iter().any(|p| t.as_str().starts_with(p)) => {
                return t.as_str().to_owned();
            }
            Some(Ok(_)) => {}
            other => panic!("expected a line, got {other:?}"),
        }
    }
}
