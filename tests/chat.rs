//! The chat server (`Chat` handler) against real sockets: JSON and plain-text clients, rooms,
//! presence, direct messages, idempotent retries, gapless resume while others publish, slow
//! consumers, limits and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::client::{Client, publish, roomy};
use common::{Peer, TestServer, close_frame, within};
use futures_util::{SinkExt, StreamExt};
use nanachat::chat::{Chat, ChatConfig};
use nanachat::config::ConnectionConfig;
use nanachat::server::ServerConfig;
use nanachat::store::{MemoryStore, Retention, SqliteStore, Store, prune_all};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn chat_server(config: ChatConfig) -> TestServer {
    let server = ServerConfig::default();
    let max = server.connection.max_message_bytes;
    TestServer::start(server, Chat::new(MemoryStore::new(), config, max)).await
}

/// A plain-text client (no subprotocol).
async fn plain(url: &str) -> Peer {
    common::peer(url).await
}

async fn line(ws: &mut Peer) -> String {
    loop {
        match within("a line", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a line, got {other:?}"),
        }
    }
}

async fn line_starting(ws: &mut Peer, prefix: &str) -> String {
    loop {
        let l = line(ws).await;
        if l.starts_with(prefix) {
            return l;
        }
    }
}

#[tokio::test]
async fn two_json_clients_chat_with_acks_and_seqs() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    let mut b = Client::hello(&server.url(), "mochi").await;
    let joined = a.join("lobby").await;
    assert_eq!(joined["last_seq"], 0);
    b.join("lobby").await;
    a.say("lobby", "hi mochi", "c1").await;
    // The sender gets its ack and its own message, in either order.
    let (mut ack, mut own) = (None, None);
    while ack.is_none() || own.is_none() {
        let v = a.recv().await;
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            Some("message") => own = Some(v),
            _ => {}
        }
    }
    let (ack, own) = (ack.unwrap(), own.unwrap());
    assert_eq!(
        (ack["cid"].as_str(), ack["seq"].as_u64()),
        (Some("c1"), Some(1))
    );
    assert_eq!(own["seq"], 1);
    let m = b.expect("message").await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str(), m["seq"].as_u64()),
        (Some("nana"), Some("hi mochi"), Some(1))
    );
    b.say("lobby", "hi nana", "x").await;
    assert_eq!(a.expect("message").await["seq"], 2);
}

#[tokio::test]
async fn plain_text_clients_chat_and_cross_modes() {
    let server = chat_server(roomy()).await;
    let mut p = plain(&server.url()).await;
    let mut q = plain(&server.url()).await;
    assert!(line(&mut p).await.starts_with("* welcome, you are guest-"));
    line_starting(&mut p, "* you joined lobby").await;
    line_starting(&mut q, "* you joined lobby").await;
    p.send(Message::text("hello there")).await.unwrap();
    let got = line_starting(&mut q, "[lobby]").await;
    assert!(got.ends_with(": hello there"), "{got}");

    let mut j = Client::hello(&server.url(), "jay").await;
    j.join("lobby").await;
    q.send(Message::text("to json")).await.unwrap();
    let m = j.expect("message").await;
    assert_eq!(m["text"], "to json");
    assert!(m["from"].as_str().unwrap().starts_with("guest-"));
    j.say("lobby", "to plain", "c").await;
    assert_eq!(
        line_starting(&mut p, "[lobby] jay").await,
        "[lobby] jay: to plain"
    );

    // Commands.
    p.send(Message::text("/nick petal")).await.unwrap();
    line_starting(&mut p, "* you are now petal").await;
    p.send(Message::text("/who")).await.unwrap();
    let who = line_starting(&mut p, "* in lobby:").await;
    assert!(who.contains("petal") && who.contains("jay"), "{who}");
    p.send(Message::text("/history 2")).await.unwrap();
    let history = line_starting(&mut p, "#").await;
    assert_eq!(history.lines().count(), 2, "{history}");
    // Each line starts with its message's seq, so that a plain-text user can name it.
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines[1], "#3 [lobby] jay: to plain", "{history}");
    assert!(lines[0].starts_with("#2 [lobby] guest-"), "{history}");
    p.send(Message::text("/frobnicate")).await.unwrap();
    assert!(
        line_starting(&mut p, "!")
            .await
            .starts_with("! bad_message: unknown command")
    );
}

#[tokio::test]
async fn a_retried_cid_is_acked_again_and_delivered_once() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    let mut b = Client::hello(&server.url(), "mochi").await;
    a.join("lobby").await;
    b.join("lobby").await;
    a.say("lobby", "once", "same").await;
    a.say("lobby", "once", "same").await;
    a.say("lobby", "after", "other").await;
    let first = a.expect("ack").await;
    let second = a.expect("ack").await;
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(b.expect("message").await["text"], "once");
    assert_eq!(b.expect("message").await["text"], "after");
}

#[tokio::test]
async fn resume_has_no_gap_and_no_duplicate_while_others_publish() {
    let server = chat_server(roomy()).await;
    let url = server.url();
    let mut publisher = Client::hello(&url, "pub").await;
    publisher.join("lobby").await;
    let mut reader = Client::hello(&url, "reader").await;
    reader.join("lobby").await;

    const TOTAL: u64 = 2000;
    let publishing = tokio::spawn(async move {
        publish(&mut publisher, "lobby", 1..=TOTAL, None).await;
    });

    // Read a little, then drop the connection in the middle of the stream.
    let mut last = 0;
    while last < 100 {
        let m = reader.expect("message").await;
        assert_eq!(m["seq"].as_u64().unwrap(), last + 1);
        last += 1;
    }
    drop(reader);

    let mut again = Client::hello(&url, "reader").await;
    again
        .send(json!({"type": "join", "room": "lobby", "since": last}))
        .await;
    again.expect("joined").await;
    while last < TOTAL {
        let m = again.expect("message").await;
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "a gap or a duplicate at seq {seq}");
        assert_eq!(m["text"], format!("m{seq}"));
        last = seq;
    }
    within("publisher done", publishing).await.unwrap();
}

#[tokio::test]
async fn a_resume_from_another_epoch_is_told_so() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    let joined = a.join("lobby").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    a.say("lobby", "x", "c").await;
    a.expect("ack").await;
    let mut b = Client::hello(&server.url(), "mochi").await;
    b.send(json!({"type": "join", "room": "lobby", "since": 0, "epoch": epoch + 1}))
        .await;
    let joined = b.expect("joined").await;
    assert_eq!(joined["reset"], true);
    // Nothing is replayed on a reset: the next message is a live one.
    a.say("lobby", "live", "d").await;
    assert_eq!(b.expect("message").await["text"], "live");
}

#[tokio::test]
async fn a_stalled_reader_is_closed_as_a_slow_consumer_and_others_get_everything() {
    let config = ServerConfig {
        connection: ConnectionConfig {
            close_timeout: Duration::from_secs(30),
            ..ConnectionConfig::default()
        },
        ..ServerConfig::default()
    };
    let max = config.connection.max_message_bytes;
    let server = TestServer::start(config, Chat::new(MemoryStore::new(), roomy(), max)).await;
    let mut stalled = Client::hello(&server.url(), "stalled").await;
    stalled.join("lobby").await;
    let mut good = Client::hello(&server.url(), "good").await;
    good.join("lobby").await;
    let mut publisher = Client::hello(&server.url(), "pub").await;
    publisher.join("lobby").await;

    // ~12 MB to a reader that reads nothing: more than socket buffers and its outbox hold.
    let text = "z".repeat(3900);
    const TOTAL: u64 = 3000;
    let publishing = tokio::spawn(async move {
        publish(&mut publisher, "lobby", 1..=TOTAL, Some(&text)).await;
        publisher
    });
    let mut seen = 0;
    while seen < TOTAL {
        let m = good.expect("message").await;
        seen = m["seq"].as_u64().unwrap();
    }
    within("publisher", publishing).await.unwrap();
    // The stalled reader finds, after what was already in flight, a 4001 close.
    let frame = close_frame(&mut stalled.ws).await;
    assert_eq!(frame.code, CloseCode::Library(4001));
}

#[tokio::test]
async fn presence_and_who_count_nicks_not_connections() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    let mut b1 = Client::hello_with_key(&server.url(), "mochi", Some("k")).await;
    let mut b2 = Client::hello_with_key(&server.url(), "mochi", Some("k")).await;
    b1.join("lobby").await;
    let p = a.expect("presence").await;
    assert_eq!(
        (p["nick"].as_str(), p["event"].as_str()),
        (Some("nana"), Some("join")),
        "its own join first"
    );
    let p = a.expect("presence").await;
    assert_eq!(
        (p["nick"].as_str(), p["event"].as_str()),
        (Some("mochi"), Some("join"))
    );
    b2.join("lobby").await;
    a.send(json!({"type": "who", "room": "lobby"})).await;
    let who = a.expect("members").await;
    assert_eq!(who["nicks"], json!(["mochi", "nana"]));
    // The first of mochi's connections leaving is not mochi leaving.
    b1.send(json!({"type": "leave", "room": "lobby"})).await;
    b1.expect("left").await;
    b2.send(json!({"type": "leave", "room": "lobby"})).await;
    let p = a.expect("presence").await;
    assert_eq!(
        (p["nick"].as_str(), p["event"].as_str()),
        (Some("mochi"), Some("leave"))
    );
    // Without the key, the nick is taken.
    let mut c = Client::raw(&server.url()).await;
    c.send(json!({"type": "hello", "nick": "mochi"})).await;
    assert_eq!(c.error().await["code"], "nick_taken");
}

#[tokio::test]
async fn a_history_page_never_outgrows_one_frame() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    let long = "é".repeat(4000); // 8,000 bytes of text each
    for i in 0..30 {
        a.say("lobby", &long, &format!("c{i}")).await;
        a.expect("ack").await;
    }
    // 30 × 8 KB is far more than one 64 KiB frame: the page is cut short, newest kept.
    let mut seqs = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut req = json!({"type": "history", "room": "lobby", "limit": 200});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        a.send(req).await;
        let page = a.expect("history").await;
        let page_seqs: Vec<u64> = common::client::seqs(&page);
        assert!(
            page.to_string().len() <= 64 * 1024,
            "a page of {} bytes",
            page.to_string().len()
        );
        if page_seqs.is_empty() {
            break;
        }
        assert!(page_seqs.len() < 30, "the first page was not cut");
        before = Some(page_seqs[0]);
        seqs.splice(0..0, page_seqs);
    }
    // Paging on from the cut gets every message once, and the connection is still there.
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    a.say("lobby", "still here", "last").await;
    assert_eq!(a.expect("ack").await["seq"], 31);
}

#[tokio::test]
async fn who_in_a_room_too_big_for_one_frame_answers_with_the_first_ones_and_the_total() {
    let mut server = ServerConfig::default();
    server.connection.max_message_bytes = 2048;
    let max = server.connection.max_message_bytes;
    let server = TestServer::start(server, Chat::new(MemoryStore::new(), roomy(), max)).await;
    let mut members = Vec::new();
    for i in 0..60 {
        let mut c = Client::hello(&server.url(), &format!("{i:02}-{}", "n".repeat(29))).await;
        c.join("lobby").await;
        members.push(c);
    }
    let who = &mut members[0];
    who.send(json!({"type": "who", "room": "lobby"})).await;
    let answer = who.expect("members").await;
    assert_eq!(answer["total"], 60);
    let shown = answer["nicks"].as_array().unwrap().len();
    assert!(shown > 0 && shown < 60, "{shown} nicks shown");
    assert!(
        answer.to_string().len() <= 2048,
        "{}",
        answer.to_string().len()
    );
    // The connection is still there.
    who.say("lobby", "still here", "c1").await;
    who.expect("ack").await;
}

#[tokio::test]
async fn big_rooms_send_no_presence_but_who_still_answers() {
    let config = ChatConfig {
        presence_limit: 2,
        ..roomy()
    };
    let server = chat_server(config).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    assert_eq!(a.expect("presence").await["nick"], "nana");
    let mut b = Client::hello(&server.url(), "mochi").await;
    b.join("lobby").await;
    assert_eq!(a.expect("presence").await["nick"], "mochi");
    // A third member makes the room bigger than the limit: no more presence, in or out.
    let mut c = Client::hello(&server.url(), "kiki").await;
    c.join("lobby").await;
    c.send(json!({"type": "leave", "room": "lobby"})).await;
    c.expect("left").await;
    b.say("lobby", "after kiki", "b1").await;
    let next = a.recv().await;
    assert_eq!(next["type"], "message", "no presence before it: {next}");
    assert_eq!(next["text"], "after kiki");
    a.send(json!({"type": "who", "room": "lobby"})).await;
    assert_eq!(a.expect("members").await["nicks"], json!(["mochi", "nana"]));
}

#[tokio::test]
async fn direct_messages_reach_every_connection_and_are_resumable() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    let mut b1 = Client::hello_with_key(&server.url(), "mochi", Some("k")).await;
    let mut b2 = Client::hello_with_key(&server.url(), "mochi", Some("k")).await;
    a.send(json!({"type": "dm", "to": "mochi", "text": "psst", "cid": "d1"}))
        .await;
    let ack = a.expect("ack").await;
    assert_eq!(ack["room"], "@mochi+nana");
    for b in [&mut b1, &mut b2] {
        let m = b.expect("message").await;
        assert_eq!(
            (m["room"].as_str(), m["text"].as_str()),
            (Some("@mochi+nana"), Some("psst"))
        );
    }
    let mut b3 = Client::hello_with_key(&server.url(), "mochi", Some("k")).await;
    b3.send(json!({"type": "join", "room": "@mochi+nana", "since": 0}))
        .await;
    b3.expect("joined").await;
    assert_eq!(b3.expect("message").await["text"], "psst");
    // A third party can neither join nor read it.
    let mut eve = Client::hello(&server.url(), "eve").await;
    eve.send(json!({"type": "join", "room": "@mochi+nana"}))
        .await;
    assert_eq!(eve.error().await["code"], "bad_room");
    eve.send(json!({"type": "dm", "to": "nobody", "text": "x", "cid": "e"}))
        .await;
    assert_eq!(eve.error().await["code"], "no_such_nick");
}

/// Issue 15: `Alice` was accepted while `alice` was online, and `dm Alice` was another room.
#[tokio::test]
async fn nicks_are_unique_whatever_their_case_shown_as_typed_and_dms_find_them() {
    let server = chat_server(roomy()).await;
    let url = server.url();
    let mut alice = Client::hello_with_key(&url, "alice", Some("k")).await;
    // Another spelling is taken, even with alice's key.
    for key in [None, Some("k")] {
        let mut c = Client::raw(&url).await;
        let mut hello = json!({"type": "hello", "nick": "Alice"});
        if let Some(key) = key {
            hello["key"] = json!(key);
        }
        c.send(hello).await;
        assert_eq!(c.error().await["code"], "nick_taken", "key {key:?}");
    }
    // Nor can a plain-text client rename itself to it.
    let mut p = plain(&url).await;
    line_starting(&mut p, "* you joined lobby").await;
    within("send", p.send(Message::text("/nick ALICE")))
        .await
        .unwrap();
    let refused = line_starting(&mut p, "!").await;
    assert!(refused.starts_with("! nick_taken"), "{refused}");
    // Its own nick in another case is its to take.
    within("send", p.send(Message::text("/nick petal")))
        .await
        .unwrap();
    line_starting(&mut p, "* you are now petal").await;
    within("send", p.send(Message::text("/nick Petal")))
        .await
        .unwrap();
    line_starting(&mut p, "* you are now Petal").await;
    // A DM to any spelling reaches alice, in the one room of the pair, named in lower case.
    let mut bob = Client::hello(&url, "Bob").await;
    bob.send(json!({"type": "dm", "to": "ALICE", "text": "hi", "cid": "d1"}))
        .await;
    assert_eq!(bob.expect("ack").await["room"], "@alice+bob");
    let m = alice.expect("message").await;
    assert_eq!(
        (m["room"].as_str(), m["from"].as_str(), m["text"].as_str()),
        (Some("@alice+bob"), Some("Bob"), Some("hi"))
    );
    alice
        .send(json!({"type": "dm", "to": "bob", "text": "hello", "cid": "d2"}))
        .await;
    assert_eq!(alice.expect("ack").await["room"], "@alice+bob");
    assert_eq!(bob.expect("message").await["text"], "hello");
    // Either may join it; a spelling that is not the room's name is no room.
    bob.send(json!({"type": "join", "room": "@alice+bob", "since": 0}))
        .await;
    bob.expect("joined").await;
    bob.send(json!({"type": "join", "room": "@Alice+Bob"}))
        .await;
    assert_eq!(bob.error().await["code"], "bad_room");
    // Nicks are shown as typed.
    alice.join("hall").await;
    bob.join("hall").await;
    bob.send(json!({"type": "who", "room": "hall"})).await;
    assert_eq!(
        bob.expect("members").await["nicks"],
        json!(["Bob", "alice"])
    );
}

/// Issue 15: a DM to yourself arrived twice on the one connection (the pair `(a, a)`).
#[tokio::test]
async fn a_dm_to_yourself_arrives_once_on_each_connection() {
    let server = chat_server(roomy()).await;
    let mut one = Client::hello_with_key(&server.url(), "nana", Some("k")).await;
    let mut two = Client::hello_with_key(&server.url(), "nana", Some("k")).await;
    // `two` is also a member of the room: still once.
    two.send(json!({"type": "join", "room": "@nana+nana"}))
        .await;
    two.expect("joined").await;
    one.send(json!({"type": "dm", "to": "nana", "text": "note", "cid": "n1"}))
        .await;
    one.send(json!({"type": "dm", "to": "nana", "text": "marker", "cid": "n2"}))
        .await;
    for c in [&mut one, &mut two] {
        let (mut notes, mut acks) = (0, 0);
        loop {
            let v = c.recv().await;
            assert_ne!(v["type"], "error", "{v}");
            if v["type"] == "ack" {
                acks += 1;
            }
            if v["type"] == "message" {
                assert_eq!(v["room"], "@nana+nana");
                match v["text"].as_str() {
                    Some("note") => notes += 1,
                    Some("marker") => break,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(notes, 1, "the note arrived once");
        assert!(acks <= 2);
    }
    // The sender's acks: one each (the second may come after the marker).
    while one.recv().await["type"] != "ack" {}
}

#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let server = chat_server(roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    for i in 1..=30 {
        a.say("lobby", &format!("m{i}"), &format!("c{i}")).await;
    }
    for _ in 0..30 {
        a.expect("ack").await;
    }
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    a.send(json!({"type": "history", "room": "lobby", "limit": 5}))
        .await;
    assert_eq!(seqs(&a.expect("history").await), [26, 27, 28, 29, 30]);
    a.send(json!({"type": "history", "room": "lobby", "before": 26, "limit": 3}))
        .await;
    assert_eq!(seqs(&a.expect("history").await), [23, 24, 25]);
    a.send(json!({"type": "history", "room": "lobby", "after": 28}))
        .await;
    assert_eq!(seqs(&a.expect("history").await), [29, 30]);
}

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_the_connection_stays() {
    let config = ChatConfig {
        max_rooms: 2,
        max_text_chars: 10,
        ..roomy()
    };
    let server = chat_server(config).await;
    let mut c = Client::raw(&server.url()).await;
    c.ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(c.error().await["code"], "bad_json");
    c.send(json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(c.error().await["code"], "hello_first");
    c.send(json!({"type": "shout"})).await;
    assert_eq!(c.error().await["code"], "bad_message");
    c.send(json!({"type": "hello", "nick": "no spaces"})).await;
    assert_eq!(c.error().await["code"], "bad_nick");
    c.send(json!({"type": "hello", "nick": "nana"})).await;
    c.expect("welcome").await;
    c.send(json!({"type": "hello", "nick": "nana"})).await;
    assert_eq!(c.error().await["code"], "already_hello");
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.error().await["code"], "binary_not_allowed");
    c.say("lobby", "x", "c1").await;
    let err = c.error().await;
    assert_eq!(
        (err["code"].as_str(), err["cid"].as_str()),
        (Some("not_joined"), Some("c1"))
    );
    c.send(json!({"type": "join", "room": "bad room"})).await;
    assert_eq!(c.error().await["code"], "bad_room");
    c.join("one").await;
    c.send(json!({"type": "join", "room": "one"})).await;
    assert_eq!(c.error().await["code"], "already_joined");
    c.join("two").await;
    c.send(json!({"type": "join", "room": "three"})).await;
    assert_eq!(c.error().await["code"], "too_many_rooms");
    c.say("one", "eleven chars", "c2").await;
    assert_eq!(c.error().await["code"], "text_too_long");
    c.send(json!({"type": "who", "room": "zzz"})).await;
    assert_eq!(c.error().await["code"], "not_joined");
    // After all that, the connection still works.
    c.say("one", "still ok", "c3").await;
    assert_eq!(c.expect("ack").await["cid"], "c3");
}

#[tokio::test]
async fn the_rate_limit_refuses_then_closes_with_1008() {
    let config = ChatConfig {
        rate_per_sec: 1,
        rate_burst: 3,
        rate_strikes: 5,
        ..roomy()
    };
    let server = chat_server(config).await;
    let mut c = Client::hello(&server.url(), "fast").await; // hello takes one token
    c.join("lobby").await; // and join another
    c.say("lobby", "1", "c1").await;
    c.expect("ack").await;
    c.say("lobby", "2", "c2").await;
    let err = c.error().await;
    assert_eq!(
        (err["code"].as_str(), err["cid"].as_str()),
        (Some("rate_limited"), Some("c2"))
    );
    for i in 3..10 {
        c.say("lobby", "x", &format!("c{i}")).await;
    }
    let frame = close_frame(&mut c.ws).await;
    assert_eq!(frame.code, CloseCode::Policy);
}

#[tokio::test]
async fn heartbeat_ticks_in_both_modes() {
    let config = ChatConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..roomy()
    };
    let server = chat_server(config).await;
    let mut c = Client::hello(&server.url(), "nana").await;
    loop {
        match within("tick", c.ws.next()).await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"tick\"") => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let mut p = plain(&server.url()).await;
    line_starting(&mut p, "!Server Send! ").await;
}

#[tokio::test]
async fn history_survives_a_restart_on_the_same_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("nanachat-chat-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || async {
        let store = SqliteStore::open(&dir).unwrap();
        let config = ServerConfig::default();
        let max = config.connection.max_message_bytes;
        TestServer::start(config, Chat::new(store, roomy(), max)).await
    };
    let server = start().await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    a.say("lobby", "before", "c1").await;
    a.expect("ack").await;
    drop(a);
    server.stop().await.unwrap();

    let server = start().await;
    let mut b = Client::hello(&server.url(), "nana").await;
    b.send(json!({"type": "join", "room": "lobby", "since": 0}))
        .await;
    assert_eq!(b.expect("joined").await["last_seq"], 1);
    assert_eq!(b.expect("message").await["text"], "before");
    b.say("lobby", "after", "c2").await;
    assert_eq!(b.expect("ack").await["seq"], 2);
    // A direct-message room resumes across the restart too, for its pair only.
    b.send(json!({"type": "join", "room": "@a+nana", "since": 0}))
        .await;
    assert_eq!(b.expect("joined").await["last_seq"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn metrics_and_the_page_tell_what_happened() {
    let dir = std::env::temp_dir().join(format!("nanachat-chat-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ServerConfig::default();
    let max = config.connection.max_message_bytes;
    let store = SqliteStore::open(&dir).unwrap();
    let server = TestServer::start(config, Chat::new(store, roomy(), max)).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    publish(&mut a, "lobby", 1..=5, None).await;
    a.send(json!({"type": "join", "room": "no way"})).await;
    a.error().await;

    let page = common::http_get(server.addr, "/").await;
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("nanachat.v1"),
        "{page}"
    );
    let m = common::http_get(server.addr, "/metrics").await;
    assert_eq!(common::metric(&m, "nanachat_connections_open"), 1);
    assert_eq!(common::metric(&m, "nanachat_chat_connections"), 1);
    assert!(common::metric(&m, "nanachat_deliveries_total") >= 5);
    assert!(common::metric(&m, "nanachat_messages_in_total") >= 8);
    assert!(common::metric(&m, "nanachat_store_jobs_total") >= 5);
    assert!(common::metric(&m, "nanachat_store_commits_total") >= 1);
    assert!(
        m.contains("nanachat_errors_total{code=\"bad_room\"} 1"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A chat server whose frames are at most `max` bytes (the announced `max_message_bytes`).
async fn small_server(max: usize) -> TestServer {
    let mut server = ServerConfig::default();
    server.connection.max_message_bytes = max;
    server.connection.max_frame_bytes = max;
    TestServer::start(server, Chat::new(MemoryStore::new(), roomy(), max)).await
}

/// The text of the next data frame, and its size on the wire.
async fn frame_text(ws: &mut Peer) -> String {
    loop {
        match within("a frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a frame, got {other:?} (the connection was dropped?)"),
        }
    }
}

/// Reads frames until one of this type; returns it parsed, with its size in bytes.
async fn expect_frame(c: &mut Client, kind: &str) -> (Value, usize) {
    loop {
        let text = frame_text(&mut c.ws).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] == kind {
            return (v, text.len());
        }
        assert_ne!(v["type"], "error", "while waiting for {kind}: {v}");
    }
}

/// A fresh directory for a test's SQLite file.
fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nanachat-chat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A chat server on port 0 with its history in a SQLite file in `dir`.
async fn sqlite_chat(dir: &std::path::Path) -> TestServer {
    let store = SqliteStore::open(dir).unwrap();
    let config = ServerConfig::default();
    let max = config.connection.max_message_bytes;
    TestServer::start(config, Chat::new(store, roomy(), max)).await
}

impl Client {
    /// The answer to the last `say` or `dm`: the next `ack` or `error` (messages, presence
    /// and the rest skipped).
    async fn answer(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == "ack" || v["type"] == "error" {
                return v;
            }
        }
    }

    /// The texts of the whole history of `room`, oldest first.
    async fn history_texts(&mut self, room: &str) -> Vec<String> {
        self.send(json!({"type": "history", "room": room, "limit": 200}))
            .await;
        let page = self.expect("history").await;
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn a_rooms_list_larger_than_one_frame_is_cut_and_pages_to_the_end() {
    const MAX: usize = 4096;
    let server = small_server(MAX).await;
    let url = server.url();
    // 8 idle connections × max_rooms (32) rooms with 64-character names: about 23 KB of list,
    // more than the largest frame the server can write (its write buffer plus one message).
    let max_rooms = ChatConfig::default().max_rooms;
    let mut idle = Vec::new();
    let mut expected = Vec::new();
    for c in 0..8 {
        let mut client = Client::hello(&url, &format!("idle{c}")).await;
        for r in 0..max_rooms {
            let room = format!("{c:02}-{r:02}-{}", "r".repeat(58));
            assert_eq!(room.len(), 64);
            client.join(&room).await;
            expected.push(room);
        }
        idle.push(client);
    }
    // The asker and a friend in the lobby, the busiest room.
    let mut asker = Client::hello(&url, "asker").await;
    asker.join("lobby").await;
    let mut friend = Client::hello(&url, "friend").await;
    friend.join("lobby").await;
    expected.push("lobby".into());
    expected.sort();

    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<Value> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"type": "rooms"});
        if let Some(a) = &after {
            req["after"] = a.clone();
        }
        asker.send(req).await;
        let (page, size) = expect_frame(&mut asker, "rooms").await;
        assert!(size <= MAX, "a rooms reply of {size} bytes (limit {MAX})");
        pages += 1;
        let rooms = page["rooms"].as_array().unwrap();
        let total = page["total"].as_u64().unwrap() as usize;
        if pages == 1 {
            assert_eq!(
                total,
                expected.len(),
                "the first page's total is every room"
            );
            assert_eq!(rooms[0]["room"], "lobby", "busiest first");
            assert_eq!(rooms[0]["members"], 2);
        }
        assert_eq!(
            total,
            expected.len() - seen.len(),
            "total: what is left to page through"
        );
        assert!(
            !rooms.is_empty(),
            "a page with nothing in it before the end"
        );
        seen.extend(rooms.iter().map(|r| r["room"].as_str().unwrap().to_owned()));
        if rooms.len() == total {
            break;
        }
        after = rooms.last().cloned();
        assert!(pages < 100, "paging does not end");
    }
    assert!(
        pages > 2,
        "the list fitted in {pages} frames: not a test of the cut"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "every room exactly once");

    // The asker is still connected, and can say and receive.
    asker.say("lobby", "still here", "a1").await;
    asker.expect("ack").await;
    assert_eq!(friend.expect("message").await["text"], "still here");
    friend.say("lobby", "hello asker", "f1").await;
    assert_eq!(asker.expect("message").await["text"], "hello asker");

    // Plain-text mode's /rooms obeys the same rule.
    let mut p = plain(&url).await;
    line_starting(&mut p, "* you joined lobby").await;
    p.send(Message::text("/rooms")).await.unwrap();
    let rooms = line_starting(&mut p, "* rooms:").await;
    assert!(rooms.len() <= MAX, "a /rooms line of {} bytes", rooms.len());
    assert!(rooms.contains("more"), "{rooms}");
    p.send(Message::text("still here")).await.unwrap();
    line_starting(&mut p, "[lobby]").await;
}

#[tokio::test]
async fn who_and_history_at_the_frame_limit_fit_and_tell_the_total() {
    const MAX: usize = 2048;
    let server = small_server(MAX).await;
    let url = server.url();
    let mut members = Vec::new();
    for i in 0..60 {
        let mut c = Client::hello(&url, &format!("{i:02}-{}", "n".repeat(29))).await;
        c.join("lobby").await;
        members.push(c);
    }
    let mut expected: Vec<String> = (0..60)
        .map(|i| format!("{i:02}-{}", "n".repeat(29)))
        .collect();
    expected.sort();
    // who: cut to one frame, the total, and paged with `after` to the end.
    let asker = &mut members[0];
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = json!({"type": "who", "room": "lobby"});
        if let Some(a) = &after {
            req["after"] = json!(a);
        }
        asker.send(req).await;
        let (page, size) = expect_frame(asker, "members").await;
        assert!(size <= MAX, "a members reply of {size} bytes");
        let nicks: Vec<String> = page["nicks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        let total = page["total"].as_u64().unwrap() as usize;
        assert_eq!(total, expected.len() - seen.len());
        assert!(!nicks.is_empty());
        seen.extend(nicks.iter().cloned());
        if nicks.len() == total {
            break;
        }
        after = nicks.last().cloned();
    }
    assert_eq!(seen, expected, "every nick once, in order");

    // history: 40 messages of 200 bytes are far more than one 2 KiB frame.
    let text = "h".repeat(200);
    for i in 0..40 {
        asker.say("lobby", &text, &format!("h{i}")).await;
        asker.expect("ack").await;
    }
    let mut seqs: Vec<u64> = Vec::new();
    let mut before: Option<u64> = None;
    let mut cut = false;
    loop {
        let mut req = json!({"type": "history", "room": "lobby", "limit": 200});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        asker.send(req).await;
        let (page, size) = expect_frame(asker, "history").await;
        assert!(size <= MAX, "a history reply of {size} bytes");
        let page_seqs: Vec<u64> = common::client::seqs(&page);
        // total: the messages the page asked for, before the cut.
        let asked = before.map_or(40, |b| b - 1).min(200);
        assert_eq!(page["total"].as_u64().unwrap(), asked, "{page}");
        if page_seqs.is_empty() {
            break;
        }
        cut |= (page_seqs.len() as u64) < asked;
        before = Some(page_seqs[0]);
        seqs.splice(0..0, page_seqs);
    }
    assert!(cut, "no page was cut");
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    asker.say("lobby", "still here", "last").await;
    asker.expect("ack").await;
}

#[tokio::test]
async fn a_cid_longer_than_64_bytes_is_refused_and_the_connection_stays() {
    let dir = data_dir("long-cid");
    let server = sqlite_chat(&dir).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    let mut b = Client::hello(&server.url(), "mochi").await;
    a.join("lobby").await;
    b.join("lobby").await;

    let fits = "x".repeat(64);
    a.say("lobby", "fits", &fits).await;
    let ack = a.answer().await;
    assert_eq!(
        (ack["type"].as_str(), ack["cid"].as_str()),
        (Some("ack"), Some(fits.as_str()))
    );
    // 33 characters, 65 bytes: the limit is in bytes.
    let over = format!("{}x", "é".repeat(32));
    let huge = "y".repeat(60_000);
    for cid in [over.as_str(), huge.as_str()] {
        a.say("lobby", "too long", cid).await;
        let err = a.answer().await;
        assert_eq!(err["code"], "bad_message", "{err}");
        assert!(
            err["message"].as_str().unwrap().contains("64 bytes"),
            "{err}"
        );
        assert!(err.get("cid").is_none(), "the cid is not echoed: {err}");
        assert!(
            err.to_string().len() < 1024,
            "{} bytes",
            err.to_string().len()
        );
        a.send(json!({"type": "dm", "to": "mochi", "text": "too long", "cid": cid}))
            .await;
        assert_eq!(a.answer().await["code"], "bad_message");
    }
    // The connection stays; the others saw only what was stored.
    a.say("lobby", "still here", "c2").await;
    assert_eq!(a.answer().await["seq"], 2);
    assert_eq!(b.expect("message").await["text"], "fits");
    assert_eq!(b.expect("message").await["text"], "still here");
    assert_eq!(b.history_texts("lobby").await, ["fits", "still here"]);
    let _ = std::fs::remove_dir_all(&dir);
}
#[tokio::test]
async fn a_cid_reused_with_another_text_is_refused_and_a_true_retry_is_acked_again() {
    let dir = data_dir("cid-reused");
    let server = sqlite_chat(&dir).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    let mut b = Client::hello(&server.url(), "mochi").await;
    a.join("lobby").await;
    b.join("lobby").await;

    a.say("lobby", "first", "k1").await;
    let ack = a.answer().await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1))
    );
    a.say("lobby", "something else", "k1").await;
    let err = a.answer().await;
    assert_eq!(
        (
            err["type"].as_str(),
            err["code"].as_str(),
            err["cid"].as_str()
        ),
        (Some("error"), Some("cid_reused"), Some("k1")),
        "{err}"
    );
    a.say("lobby", "first", "k1").await;
    let again = a.answer().await;
    assert_eq!(
        (
            again["type"].as_str(),
            again["seq"].as_u64(),
            again["duplicate"].as_bool()
        ),
        (Some("ack"), Some(1), Some(true)),
        "{again}"
    );

    // The same for a direct message.
    let dm = |text: &str| json!({"type": "dm", "to": "mochi", "text": text, "cid": "d1"});
    a.send(dm("psst")).await;
    let ack = a.answer().await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1))
    );
    a.send(dm("not psst")).await;
    let err = a.answer().await;
    assert_eq!(
        (err["code"].as_str(), err["cid"].as_str()),
        (Some("cid_reused"), Some("d1")),
        "{err}"
    );
    a.send(dm("psst")).await;
    assert_eq!(a.answer().await["duplicate"], true);

    a.say("lobby", "last", "k2").await;
    assert_eq!(a.answer().await["seq"], 2);
    // Mochi got each message once, and neither refused one.
    for (room, text) in [
        ("lobby", "first"),
        ("@mochi+nana", "psst"),
        ("lobby", "last"),
    ] {
        let m = b.expect("message").await;
        assert_eq!(
            (m["room"].as_str(), m["text"].as_str()),
            (Some(room), Some(text))
        );
    }
    assert_eq!(b.history_texts("lobby").await, ["first", "last"]);
    let _ = std::fs::remove_dir_all(&dir);
}
#[tokio::test]
async fn plain_text_answers_all_go_before_the_answer_to_a_close_sent_right_behind() {
    // Lines answered on the spot (`/help` through the outbox, an unknown command as an error
    // reply), then a close in the same burst: every answer comes before the server's close.
    const N: usize = 300;
    let server = chat_server(roomy()).await;
    for round in 0..3 {
        let (mut g, _) = guest(&server.url()).await;
        for i in 0..N {
            let line = match i % 2 {
                0 => "/help".to_owned(),
                _ => format!("/nope{i}"),
            };
            g.feed(Message::text(line)).await.unwrap();
        }
        g.feed(Message::Close(None)).await.unwrap();
        within("flush", g.flush()).await.unwrap();
        let mut answers = Vec::new();
        loop {
            match within("an answer or the close", g.next()).await {
                // Presence lines (this guest's own join among them) are not answers.
                Some(Ok(Message::Text(t)))
                    if t.starts_with("* guest-")
                        && (t.ends_with(" joined lobby") || t.ends_with(" left lobby")) => {}
                Some(Ok(Message::Text(t))) => answers.push(t.as_str().to_owned()),
                Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("after {} answers: {other:?}", answers.len()),
            }
        }
        assert_eq!(answers.len(), N, "round {round}: answers before the close");
        for (i, answer) in answers.iter().enumerate() {
            match i % 2 {
                0 => assert!(answer.starts_with("* commands: "), "{i}: {answer}"),
                _ => assert!(answer.contains(&format!("/nope{i}")), "{i}: {answer}"),
            }
        }
    }
}

/// A plain-text guest, in the lobby; returns it with its welcome line.
async fn guest(url: &str) -> (Peer, String) {
    let mut g = plain(url).await;
    let welcome = line_starting(&mut g, "* welcome, you are ").await;
    line_starting(&mut g, "* you joined lobby").await;
    (g, welcome)
}

#[tokio::test]
async fn a_guest_after_a_restart_is_stored_and_delivered() {
    let dir = data_dir("guest-restart");
    // The same order of connections in both runs: a member first, then a guest, who gets the
    // same connection number (and nick) after the restart as before it.
    for (run, text) in [(1, "before the restart"), (2, "after the restart")] {
        let server = sqlite_chat(&dir).await;
        let mut member = Client::hello(&server.url(), "jay").await;
        member.join("lobby").await;
        let (mut g, _) = guest(&server.url()).await;
        g.send(Message::text(text)).await.unwrap();
        let m = member.expect("message").await;
        assert_eq!(m["text"], text, "run {run}: the guest's line is delivered");
        assert!(m["from"].as_str().unwrap().starts_with("guest-"), "{m}");
        if run == 2 {
            assert_eq!(
                member.history_texts("lobby").await,
                ["before the restart", "after the restart"],
                "both guests' lines are stored"
            );
        }
        drop((member, g));
        server.stop().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_cannot_silence_a_guest_by_using_its_ids_first() {
    let dir = data_dir("silence-guest");
    let server = sqlite_chat(&dir).await;
    let url = server.url();
    let mut member = Client::hello(&url, "jay").await; // connection 1
    member.join("lobby").await;
    // Connection 2 takes the nick the server gives connection 3's guest, and the cids it
    // used to make for that guest's lines (`p3-1`…): a guest's lines must not be taken for
    // retries of these.
    let mut eve = Client::hello(&url, "guest-3").await;
    eve.join("lobby").await;
    for n in 1..=3 {
        eve.say("lobby", "planted", &format!("p3-{n}")).await;
        assert_eq!(eve.answer().await["type"], "ack");
    }
    for _ in 0..3 {
        assert_eq!(member.expect("message").await["text"], "planted");
    }
    drop(eve);
    // Its nick is free once it is gone.
    loop {
        let p = member.expect("presence").await;
        if p["nick"] == "guest-3" && p["event"] == "leave" {
            break;
        }
    }
    let (mut g, welcome) = guest(&url).await;
    assert!(welcome.contains("guest-3 "), "{welcome}");
    g.send(Message::text("the guest speaks")).await.unwrap();
    let m = member.expect("message").await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("guest-3"), Some("the guest speaks"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rooms_nobody_is_in_leave_memory_and_come_back_with_their_history() {
    let config = ChatConfig {
        room_ttl: Duration::from_millis(50),
        ..roomy()
    };
    let server = chat_server(config).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    // Fifty rooms, one message each, then nobody in them.
    for i in 0..50 {
        let room = format!("r{i}");
        a.join(&room).await;
        a.say(&room, "kept", &format!("c{i}")).await;
        a.expect("ack").await;
        a.send(json!({"type": "leave", "room": room})).await;
        a.expect("left").await;
    }
    // Joining rooms sweeps the idle ones when a sweep is due: they go.
    let rooms_held = || async {
        common::metric(
            &common::http_get(server.addr, "/metrics").await,
            "nanachat_chat_rooms",
        )
    };
    a.join("lobby").await;
    within("idle rooms to leave memory", async {
        while rooms_held().await > 1 {
            a.send(json!({"type": "leave", "room": "lobby"})).await;
            a.expect("left").await;
            a.join("lobby").await;
        }
    })
    .await;
    // Coming back finds the room as it was stored: its message replayed, the next seq after it.
    a.send(json!({"type": "join", "room": "r7", "since": 0}))
        .await;
    let joined = a.expect("joined").await;
    assert_eq!(joined["last_seq"], 1);
    let m = a.expect("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["text"].as_str()),
        (Some(1), Some("kept"))
    );
    a.say("r7", "again", "again").await;
    assert_eq!(a.expect("ack").await["seq"], 2);
}

/// A chat config keeping the newest `n` messages of each room, pruning every 20 ms.
fn keeping(n: u64) -> ChatConfig {
    ChatConfig {
        retention: Retention {
            max_age: None,
            max_messages: Some(n),
        },
        prune_interval: Duration::from_millis(20),
        ..roomy()
    }
}

impl Client {
    /// The seqs of the whole history `room` keeps, oldest first.
    async fn history_seqs(&mut self, room: &str) -> Vec<u64> {
        self.send(json!({"type": "history", "room": room, "limit": 200}))
            .await;
        let page = self.expect("history").await;
        common::client::seqs(&page)
    }

    /// Asks for the history of `room` until it starts at `first` (retention's task has run),
    /// under the usual timeout.
    async fn wait_pruned_to(&mut self, room: &str, first: u64) -> Vec<u64> {
        within("retention to prune", async {
            loop {
                let seqs = self.history_seqs(room).await;
                if seqs.first() == Some(&first) {
                    return seqs;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Joins `room` with `since`; the `joined` and the seqs replayed before the answer to a
    /// `history` asked right after (nothing else is said meanwhile).
    async fn resume(&mut self, room: &str, since: u64) -> (Value, Vec<u64>) {
        self.send(json!({"type": "join", "room": room, "since": since}))
            .await;
        let joined = self.expect("joined").await;
        self.send(json!({"type": "history", "room": room, "limit": 1}))
            .await;
        let mut replayed = Vec::new();
        loop {
            let v = self.recv().await;
            match v["type"].as_str() {
                Some("message") => replayed.push(v["seq"].as_u64().unwrap()),
                Some("history") => return (joined, replayed),
                Some("presence") => {}
                _ => panic!("during the replay of {room}: {v}"),
            }
        }
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_and_a_resume_from_before_them_is_told_truncated() {
    let server = chat_server(keeping(5)).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    publish(&mut a, "lobby", 1..=12, None).await;
    assert_eq!(a.wait_pruned_to("lobby", 8).await, [8, 9, 10, 11, 12]);

    // From before the oldest kept: told truncated, replayed from first_seq, exactly 8..12.
    let mut b = Client::hello(&server.url(), "mochi").await;
    let (joined, replayed) = b.resume("lobby", 2).await;
    assert_eq!(
        (
            &joined["first_seq"],
            &joined["last_seq"],
            &joined["truncated"]
        ),
        (&json!(8), &json!(12), &json!(true)),
        "{joined}"
    );
    assert_eq!(replayed, [8, 9, 10, 11, 12]);

    // From inside what is kept: gapless, nothing said about truncation.
    let mut c = Client::hello(&server.url(), "kiki").await;
    let (joined, replayed) = c.resume("lobby", 9).await;
    assert_eq!(joined["first_seq"], 8);
    assert!(joined.get("truncated").is_none(), "{joined}");
    assert_eq!(replayed, [10, 11, 12]);
    // Right at the edge (since = first_seq - 1) is gapless too.
    let mut d = Client::hello(&server.url(), "lulu").await;
    let (joined, replayed) = d.resume("lobby", 7).await;
    assert!(joined.get("truncated").is_none(), "{joined}");
    assert_eq!(replayed, [8, 9, 10, 11, 12]);

    // History pages never reach past what is kept, either way.
    assert_eq!(c.history_seqs("lobby").await, [8, 9, 10, 11, 12]);
    c.send(json!({"type": "history", "room": "lobby", "after": 0, "limit": 3}))
        .await;
    let page = c.expect("history").await;
    let seqs: Vec<u64> = common::client::seqs(&page);
    assert_eq!(seqs, [8, 9, 10]);

    // New messages keep their seqs going, and the window moves on.
    publish(&mut a, "lobby", 13..=14, None).await;
    assert_eq!(a.wait_pruned_to("lobby", 10).await, [10, 11, 12, 13, 14]);
    let m = common::http_get(server.addr, "/metrics").await;
    assert_eq!(common::metric(&m, "nanachat_retention_pruned_total"), 9);
}

#[tokio::test]
async fn seqs_go_on_after_retention_and_a_restart_on_the_same_sqlite_file() {
    let dir = data_dir("retention-restart");
    let start = |chat: ChatConfig| {
        let dir = dir.clone();
        async move {
            let store = SqliteStore::open(&dir).unwrap();
            let config = ServerConfig::default();
            let max = config.connection.max_message_bytes;
            TestServer::start(config, Chat::new(store, chat, max)).await
        }
    };
    let server = start(keeping(5)).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    publish(&mut a, "lobby", 1..=12, None).await;
    a.wait_pruned_to("lobby", 8).await;
    drop(a);
    server.stop().await.unwrap();

    // Every message pruned (the store's own call: a server keeps at least one).
    {
        let store = SqliteStore::open(&dir).unwrap();
        let all = Retention {
            max_age: None,
            max_messages: Some(0),
        };
        assert_eq!(prune_all(&store, all).await.unwrap(), 5);
        let state = store.room_state("lobby").await.unwrap();
        assert_eq!((state.first_seq, state.last_seq), (13, 12));
    }

    let server = start(roomy()).await;
    let mut b = Client::hello(&server.url(), "nana").await;
    let (joined, replayed) = b.resume("lobby", 12).await;
    assert_eq!(
        (&joined["first_seq"], &joined["last_seq"]),
        (&json!(13), &json!(12))
    );
    assert!(joined.get("truncated").is_none(), "{joined}");
    assert!(replayed.is_empty());
    b.say("lobby", "after", "c-after").await;
    assert_eq!(b.answer().await["seq"], 13, "a seq is never used twice");
    let mut c = Client::hello(&server.url(), "mochi").await;
    let (joined, replayed) = c.resume("lobby", 3).await;
    assert_eq!(joined["truncated"], true, "{joined}");
    assert_eq!(replayed, [13]);
    drop((b, c));
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain-text guest's nick, from its welcome line.
fn guest_nick(welcome: &str) -> String {
    let rest = welcome.strip_prefix("* welcome, you are ").unwrap();
    rest.split(' ').next().unwrap().to_owned()
}

/// Sends a plain-text line.
async fn send_plain(ws: &mut Peer, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

#[tokio::test]
async fn plain_text_commands_reply_edit_delete_and_react_by_seq() {
    // Edits and deletes are for users the server knows again: plain-text clients with tokens.
    let auth = nanachat::auth::Auth::new(b"a secret of more than sixteen bytes").unwrap();
    let config = ChatConfig {
        auth: Some(auth.clone()),
        ..roomy()
    };
    let server = chat_server(config).await;
    let url = server.url();
    let token = |nick: &str| auth.mint(&nanachat::auth::Claims::for_nick(nick));
    let (mut p, welcome) = guest(&format!("{url}/?token={}", token("pea"))).await;
    let pn = guest_nick(&welcome);
    let (mut q, welcome) = guest(&format!("{url}/?token={}", token("cue"))).await;
    let qn = guest_nick(&welcome);
    let mut j = Client::raw(&url).await;
    j.send(json!({"type": "hello", "nick": "jay", "token": token("jay")}))
        .await;
    j.expect("welcome").await;
    j.join("lobby").await;

    // A live line is as it always was; /history shows the seq to refer to.
    send_plain(&mut p, "hello").await;
    assert_eq!(
        line_starting(&mut q, "[lobby]").await,
        format!("[lobby] {pn}: hello")
    );
    send_plain(&mut p, "/history 1").await;
    assert_eq!(
        line_starting(&mut p, "#").await,
        format!("#1 [lobby] {pn}: hello")
    );

    // /reply: a `say` with `reply_to`.
    send_plain(&mut q, "/reply 1 hi back").await;
    assert_eq!(
        line_starting(&mut p, &format!("[lobby] {qn}")).await,
        format!("[lobby] {qn} (re #1): hi back")
    );
    let m = j.expect("message").await;
    let m = if m["text"] == "hello" {
        j.expect("message").await
    } else {
        m
    };
    assert_eq!((&m["seq"], &m["reply_to"]), (&json!(2), &json!(1)), "{m}");

    // /edit: the author's own message.
    send_plain(&mut p, "/edit 1 hello!").await;
    assert_eq!(
        line_starting(&mut q, &format!("* {pn} edited")).await,
        format!("* {pn} edited #1 in lobby: hello!")
    );
    let e = j.expect("edit").await;
    assert_eq!((&e["target"], &e["text"]), (&json!(1), &json!("hello!")));

    // /react and /unreact (the seq written as it is shown, #1, works too).
    send_plain(&mut q, "/react #1 👍").await;
    assert_eq!(
        line_starting(&mut p, &format!("* {qn} reacted")).await,
        format!("* {qn} reacted 👍 to #1 in lobby")
    );
    let r = j.expect("react").await;
    assert_eq!(
        (&r["target"], &r["emoji"], &r["on"]),
        (&json!(1), &json!("👍"), &json!(true))
    );
    send_plain(&mut q, "/react 1 👍").await;
    assert!(
        line_starting(&mut q, "!")
            .await
            .starts_with("! unchanged: "),
        "a reaction given twice"
    );
    send_plain(&mut p, "/history 5").await;
    assert_eq!(
        line_starting(&mut p, "#").await,
        format!("#1 [lobby] {pn}: hello! (edited) [👍 1]\n#2 [lobby] {qn} (re #1): hi back")
    );
    send_plain(&mut q, "/unreact 1 👍").await;
    assert_eq!(
        line_starting(&mut p, &format!("* {qn} took back")).await,
        format!("* {qn} took back 👍 on #1 in lobby")
    );
    send_plain(&mut q, "/react 1 two words").await;
    assert!(
        line_starting(&mut q, "!")
            .await
            .starts_with("! bad_reaction: ")
    );

    // Someone else's message: not without being a moderator.
    send_plain(&mut q, "/edit 1 hijacked").await;
    assert!(
        line_starting(&mut q, "!")
            .await
            .starts_with("! forbidden: ")
    );
    send_plain(&mut q, "/delete 1").await;
    assert!(
        line_starting(&mut q, "!")
            .await
            .starts_with("! forbidden: ")
    );
    send_plain(&mut p, "/edit 99 nothing there").await;
    assert!(
        line_starting(&mut p, "!")
            .await
            .starts_with("! no_such_message: ")
    );

    // /delete: a tombstone, which takes no more edits or reactions.
    send_plain(&mut p, "/delete 1").await;
    assert_eq!(
        line_starting(&mut q, &format!("* {pn} deleted")).await,
        format!("* {pn} deleted #1 in lobby")
    );
    send_plain(&mut q, "/react 1 🎉").await;
    assert!(
        line_starting(&mut q, "!")
            .await
            .starts_with("! message_deleted: ")
    );
    send_plain(&mut q, "/history").await;
    assert_eq!(
        line_starting(&mut q, "#").await,
        format!("#1 [lobby] {pn}: (deleted)\n#2 [lobby] {qn} (re #1): hi back")
    );
    assert_eq!(
        j.history_texts("lobby").await,
        ["", "hi back"],
        "the deleted text is gone"
    );
}

/// From an attack on the docs: a guest's nick is anyone's once free (and guests' nicks are
/// numbered), so whoever took it next could edit or delete the last holder's messages.
#[tokio::test]
async fn a_guest_may_not_edit_or_delete_even_its_own_line() {
    let server = chat_server(roomy()).await;
    let (mut p, _) = guest(&server.url()).await;
    send_plain(&mut p, "mine").await;
    line_starting(&mut p, "[lobby]").await;
    for command in ["/edit 1 changed", "/delete 1"] {
        send_plain(&mut p, command).await;
        let refusal = line_starting(&mut p, "!").await;
        assert!(
            refusal.starts_with("! forbidden: ") && refusal.contains("key or a token"),
            "{refusal}"
        );
    }
    // Reactions are anyone's.
    send_plain(&mut p, "/react 1 👍").await;
    line_starting(&mut p, "* ").await;
}

#[tokio::test]
async fn a_malformed_plain_text_command_on_a_message_gets_its_usage() {
    let server = chat_server(roomy()).await;
    let (mut p, _) = guest(&server.url()).await;
    let cases = [
        ("/reply", "/reply SEQ TEXT"),
        ("/reply 1", "/reply SEQ TEXT"),
        ("/reply one hi", "/reply SEQ TEXT"),
        ("/edit", "/edit SEQ TEXT"),
        ("/edit x hi", "/edit SEQ TEXT"),
        ("/edit 1", "/edit SEQ TEXT"),
        ("/delete", "/delete SEQ"),
        ("/delete abc", "/delete SEQ"),
        ("/delete 1 2", "/delete SEQ"),
        ("/react 1", "/react SEQ EMOJI"),
        ("/react 👍 1", "/react SEQ EMOJI"),
        ("/unreact", "/unreact SEQ EMOJI"),
    ];
    for (command, usage) in cases {
        send_plain(&mut p, command).await;
        let answer = line_starting(&mut p, "!").await;
        assert!(
            answer.starts_with(&format!("! bad_message: usage: {usage} ")),
            "{command}: {answer}"
        );
        assert_eq!(answer.lines().count(), 1, "{answer}");
    }
    // Nothing was stored, and the connection is still in the lobby.
    send_plain(&mut p, "/history").await;
    assert_eq!(line_starting(&mut p, "*").await, "* no history in lobby");
    send_plain(&mut p, "/help").await;
    let help = line_starting(&mut p, "* commands:").await;
    for command in [
        "/reply SEQ TEXT",
        "/edit SEQ TEXT",
        "/delete SEQ",
        "/react SEQ EMOJI",
    ] {
        assert!(help.contains(command), "{help}");
    }
}

#[tokio::test]
async fn plain_text_search_and_inbox() {
    let server = chat_server(roomy()).await;
    let (mut p, welcome) = guest(&server.url()).await;
    let pn = guest_nick(&welcome);
    send_plain(&mut p, "hello searchable world").await;
    line_starting(&mut p, "[lobby]").await;
    send_plain(&mut p, "/search WORLD").await;
    assert_eq!(
        line_starting(&mut p, "#").await,
        format!("#1 [lobby] {pn}: hello searchable world")
    );
    send_plain(&mut p, "/search nothing-like-it").await;
    assert_eq!(line_starting(&mut p, "* ").await, "* nothing found");
    send_plain(&mut p, "/search").await;
    assert_eq!(
        line_starting(&mut p, "!").await,
        "! bad_message: usage: /search WORDS"
    );
    // A guest keeps no inbox.
    send_plain(&mut p, "/inbox").await;
    assert!(
        line_starting(&mut p, "!")
            .await
            .starts_with("! forbidden: ")
    );
}
