//! Chat semantics on the room's seq: replies, edits, deletes and reactions, against real
//! sockets and a real SQLite file. Each event takes the room's next seq, so it reaches every
//! member live, comes back in a resume, is idempotent on its cid, and is refused with a clear
//! error (the connection stays) when what it refers to does not allow it.
#![allow(clippy::unwrap_used)]

mod common;

use common::client::{Client, roomy};
use common::{Peer, TestServer, within};
use futures_util::StreamExt;
use nanachat::auth::{Auth, Claims, Moderates};
use nanachat::chat::{Chat, ChatConfig};
use nanachat::server::ServerConfig;
use nanachat::store::SqliteStore;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn server_on(name: &str, config: ChatConfig) -> TestServer {
    let dir = std::env::temp_dir().join(format!("nanachat-events-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir).unwrap();
    let server = ServerConfig::default();
    let max = server.connection.max_message_bytes;
    TestServer::start(server, Chat::new(store, config, max)).await
}

/// Sends `request` and reads until its ack or error (by cid); returns it.
async fn answer(c: &mut Client, request: Value) -> Value {
    let cid = request["cid"].clone();
    c.send(request).await;
    loop {
        let v = c.recv().await;
        if (v["type"] == "ack" || v["type"] == "error") && v["cid"] == cid {
            return v;
        }
    }
}

/// Reads until a frame of type `kind` with this seq.
async fn event(c: &mut Client, kind: &str, seq: u64) -> Value {
    loop {
        let v = c.recv().await;
        if v["type"] == kind && v["seq"] == seq {
            return v;
        }
    }
}

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["code"].as_str().unwrap()
}

async fn plain_line(ws: &mut Peer, prefix: &str) -> String {
    loop {
        match within("a line", ws.next()).await {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with(prefix) => {
                return t.as_str().to_owned();
            }
            Some(Ok(_)) => {}
            other => panic!("expected a line, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn replies_edits_reactions_and_deletes_take_seqs_reach_members_and_come_back_in_a_resume() {
    let server = server_on("flow", roomy()).await;
    let url = server.url();
    let mut a = Client::hello_with_key(&url, "nana", Some("k-nana")).await;
    let mut b = Client::hello_with_key(&url, "mochi", Some("k-mochi")).await;
    a.join("lobby").await;
    b.join("lobby").await;
    // A plain-text client sees every event as a line.
    let mut p = common::peer(&url).await;
    plain_line(&mut p, "* you joined lobby").await;

    let say = json!({"type": "say", "room": "lobby", "text": "hello", "cid": "s1"});
    assert_eq!(answer(&mut a, say).await["seq"], 1);
    let reply =
        json!({"type": "say", "room": "lobby", "text": "hi back", "cid": "s2", "reply_to": 1});
    assert_eq!(answer(&mut b, reply).await["seq"], 2);
    assert_eq!(event(&mut a, "message", 2).await["reply_to"], 1);
    plain_line(&mut p, "[lobby] mochi (re #1): hi back").await;

    // The author edits; members get the edit under seq 3; a retry is the same edit.
    let edit = json!({"type": "edit", "room": "lobby", "seq": 1, "text": "hello!", "cid": "e1"});
    assert_eq!(answer(&mut a, edit.clone()).await["seq"], 3);
    let seen = event(&mut b, "edit", 3).await;
    assert_eq!(
        (&seen["target"], &seen["from"], &seen["text"]),
        (&json!(1), &json!("nana"), &json!("hello!"))
    );
    plain_line(&mut p, "* nana edited #1 in lobby: hello!").await;
    let again = answer(&mut a, edit).await;
    assert_eq!(
        (&again["seq"], &again["duplicate"]),
        (&json!(3), &json!(true))
    );
    // Someone else may not.
    let theirs = json!({"type": "edit", "room": "lobby", "seq": 1, "text": "mine", "cid": "e2"});
    assert_eq!(code(&answer(&mut b, theirs).await), "forbidden");

    let react = |on: bool, cid: &str| json!({"type": "react", "room": "lobby", "seq": 1, "emoji": "👍", "on": on, "cid": cid});
    assert_eq!(answer(&mut b, react(true, "r1")).await["seq"], 4);
    let seen = event(&mut a, "react", 4).await;
    assert_eq!((&seen["emoji"], &seen["on"]), (&json!("👍"), &json!(true)));
    plain_line(&mut p, "* mochi reacted 👍 to #1 in lobby").await;
    assert_eq!(code(&answer(&mut b, react(true, "r2")).await), "unchanged");

    // History: messages as they stand, no events; the asker's own reactions marked.
    b.send(json!({"type": "history", "room": "lobby"})).await;
    let page = b.expect("history").await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{page}");
    assert_eq!(messages[0]["text"], "hello!");
    assert!(messages[0]["edited"].as_i64().is_some(), "{page}");
    assert_eq!(messages[0]["reactions"], json!({"👍": 1}));
    assert_eq!(messages[0]["mine"], json!(["👍"]));
    assert_eq!(messages[1]["reply_to"], 1);
    a.send(json!({"type": "history", "room": "lobby"})).await;
    let page = a.expect("history").await;
    assert_eq!(page["messages"][0]["mine"], Value::Null, "{page}");

    // The thread of message 1: its reply, as it stands.
    b.send(json!({"type": "thread", "room": "lobby", "seq": 1}))
        .await;
    let thread = b.expect("thread").await;
    assert_eq!(
        (&thread["seq"], &thread["total"]),
        (&json!(1), &json!(1)),
        "{thread}"
    );
    assert_eq!(thread["messages"][0]["text"], "hi back");
    b.send(json!({"type": "thread", "room": "elsewhere", "seq": 1}))
        .await;
    assert_eq!(b.error().await["code"], "not_joined");
    let delete = json!({"type": "delete", "room": "lobby", "seq": 1, "cid": "d1"});
    assert_eq!(answer(&mut a, delete).await["seq"], 5);
    assert_eq!(event(&mut b, "delete", 5).await["target"], 1);
    plain_line(&mut p, "* nana deleted #1 in lobby").await;
    assert_eq!(
        code(&answer(&mut b, react(true, "r3")).await),
        "message_deleted"
    );

    // A resume from 0: every seq once, in order, each as what it is; the deleted message's
    // text (and its edit's) erased.
    let mut c = Client::hello(&url, "cat").await;
    c.send(json!({"type": "join", "room": "lobby", "since": 0}))
        .await;
    c.expect("joined").await;
    let mut replayed = Vec::new();
    while replayed.len() < 5 {
        let v = c.recv().await;
        if v["seq"].is_u64() {
            replayed.push(v);
        }
    }
    let kinds: Vec<&str> = replayed
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["message", "message", "edit", "react", "delete"]);
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(
        (&replayed[0]["deleted"], &replayed[0]["text"]),
        (&json!(true), &json!(""))
    );
    assert_eq!(replayed[2]["text"], "");
}

#[tokio::test]
async fn bad_events_get_clear_errors_and_the_connection_stays() {
    let server = server_on("bad", roomy()).await;
    let mut a = Client::hello_with_key(&server.url(), "nana", Some("k-nana")).await;
    a.join("lobby").await;
    let say = json!({"type": "say", "room": "lobby", "text": "one", "cid": "s1"});
    assert_eq!(answer(&mut a, say).await["seq"], 1);
    let react = |emoji: &str, cid: &str| json!({"type": "react", "room": "lobby", "seq": 1, "emoji": emoji, "on": true, "cid": cid});
    let long = "x".repeat(33);
    for (i, emoji) in ["", "a b", "\u{7}", long.as_str()].iter().enumerate() {
        let cid = format!("bad{i}");
        assert_eq!(
            code(&answer(&mut a, react(emoji, &cid)).await),
            "bad_reaction"
        );
    }
    // At the limit of length, one is fine.
    assert_eq!(
        answer(&mut a, react(&"y".repeat(32), "ok")).await["type"],
        "ack"
    );
    let cases = [
        (
            json!({"type": "edit", "room": "lobby", "seq": 999, "text": "x", "cid": "n1"}),
            "no_such_message",
        ),
        // Seq 2 is the reaction: an event is no message.
        (
            json!({"type": "edit", "room": "lobby", "seq": 2, "text": "x", "cid": "n2"}),
            "no_such_message",
        ),
        (
            json!({"type": "delete", "room": "lobby", "seq": 0, "cid": "n3"}),
            "no_such_message",
        ),
        (
            json!({"type": "say", "room": "lobby", "text": "x", "cid": "n4", "reply_to": 2}),
            "no_such_message",
        ),
        (
            json!({"type": "edit", "room": "lobby", "seq": 1, "text": "x".repeat(5000), "cid": "n5"}),
            "text_too_long",
        ),
        (
            json!({"type": "edit", "room": "elsewhere", "seq": 1, "text": "x", "cid": "n6"}),
            "not_joined",
        ),
        // No text is no message, and an edit to nothing is a delete by another name.
        (
            json!({"type": "say", "room": "lobby", "text": "", "cid": "n7"}),
            "bad_message",
        ),
        (
            json!({"type": "edit", "room": "lobby", "seq": 1, "text": " \t\n", "cid": "n8"}),
            "bad_message",
        ),
        (
            json!({"type": "dm", "to": "nana", "text": "   ", "cid": "n9"}),
            "bad_message",
        ),
    ];
    for (request, want) in cases {
        assert_eq!(
            code(&answer(&mut a, request.clone()).await),
            want,
            "{request}"
        );
    }
    // The same cid for another request is refused, as for `say`.
    let other = json!({"type": "delete", "room": "lobby", "seq": 1, "cid": "s1"});
    assert_eq!(code(&answer(&mut a, other).await), "cid_reused");
    // Still connected, still served; the refusals took no seq.
    let say = json!({"type": "say", "room": "lobby", "text": "two", "cid": "s2"});
    assert_eq!(answer(&mut a, say).await["seq"], 3);
}

#[tokio::test]
async fn a_moderator_token_may_delete_anyone_s_message_in_its_rooms_only() {
    let auth = Auth::new(b"a secret of more than sixteen bytes").unwrap();
    let config = ChatConfig {
        auth: Some(auth.clone()),
        ..roomy()
    };
    let server = server_on("mod", config).await;
    let url = server.url();
    let token = |claims: &Claims| auth.mint(claims);
    let hello = |nick: &str, token: String| json!({"type": "hello", "nick": nick, "token": token});
    let mut user = Client::raw(&url).await;
    user.send(hello("user", token(&Claims::for_nick("user"))))
        .await;
    user.expect("welcome").await;
    let mut moderator = Client::raw(&url).await;
    let claims = Claims {
        moderates: Some(Moderates::Rooms(vec!["lobby".into()])),
        ..Claims::for_nick("boss")
    };
    moderator.send(hello("boss", token(&claims))).await;
    moderator.expect("welcome").await;
    for room in ["lobby", "other"] {
        user.join(room).await;
        moderator.join(room).await;
        let say = json!({"type": "say", "room": room, "text": "spam", "cid": format!("s-{room}")});
        assert_eq!(answer(&mut user, say).await["seq"], 1);
    }
    let delete =
        |room: &str| json!({"type": "delete", "room": room, "seq": 1, "cid": format!("d-{room}")});
    assert_eq!(answer(&mut moderator, delete("lobby")).await["seq"], 2);
    assert_eq!(
        code(&answer(&mut moderator, delete("other")).await),
        "forbidden"
    );
    let edit = json!({"type": "edit", "room": "other", "seq": 1, "text": "x", "cid": "e"});
    assert_eq!(code(&answer(&mut moderator, edit).await), "forbidden");
}

#[tokio::test]
async fn typing_reaches_the_other_members_once_per_two_seconds_and_is_never_stored() {
    let server = server_on("typing", roomy()).await;
    let url = server.url();
    let mut a = Client::hello(&url, "nana").await;
    let mut b = Client::hello(&url, "mochi").await;
    a.join("lobby").await;
    b.join("lobby").await;
    let mut p = common::peer(&url).await;
    plain_line(&mut p, "* you joined lobby").await;
    a.send(json!({"type": "typing", "room": "lobby"})).await;
    a.send(json!({"type": "typing", "room": "lobby"})).await;
    let say = json!({"type": "say", "room": "lobby", "text": "done typing", "cid": "s1"});
    assert_eq!(answer(&mut a, say).await["seq"], 1, "typing took no seq");
    // Once, then the message: the second typing within 2 s went nowhere.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|v: &Value| v["type"] != "message") {
        let v = b.recv().await;
        if v["type"] != "presence" {
            seen.push(v);
        }
    }
    assert_eq!(
        seen[0],
        json!({"type": "typing", "room": "lobby", "nick": "nana"})
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The plain-text client sees no typing line; the typer is not told about itself.
    let next = loop {
        let l = plain_line(&mut p, "").await;
        if !l.ends_with(" joined lobby") {
            break l;
        }
    };
    assert_eq!(
        next, "[lobby] nana: done typing",
        "no typing line for plain-text clients"
    );
    // Not joined: refused, the connection stays.
    a.send(json!({"type": "typing", "room": "elsewhere"})).await;
    assert_eq!(a.error().await["code"], "not_joined");
    // A resume replays no typing.
    let mut c = Client::hello(&url, "cat").await;
    c.send(json!({"type": "join", "room": "lobby", "since": 0}))
        .await;
    c.expect("joined").await;
    assert_eq!(c.recv().await["type"], "message");
}

/// Reads the next frames until one of `kind`, skipping presence, typing and messages.
async fn next_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = c.recv().await;
        if v["type"] == kind {
            return v;
        }
        assert_ne!(v["type"], "error", "waiting for {kind}: {v}");
    }
}

#[tokio::test]
async fn a_known_user_s_read_position_and_inbox_follow_it_across_its_connections() {
    let server = server_on("read", roomy()).await;
    let url = server.url();
    let mut a = Client::hello_with_key(&url, "nana", Some("k-nana")).await;
    let mut a2 = Client::hello_with_key(&url, "nana", Some("k-nana")).await;
    let mut b = Client::hello_with_key(&url, "mochi", Some("k-mochi")).await;
    let joined = a.join("lobby").await;
    assert_eq!(
        (&joined["read_seq"], &joined["unread"]),
        (&json!(0), &json!(0))
    );
    b.join("lobby").await;
    for i in 1..=3 {
        let say = json!({"type": "say", "room": "lobby", "text": format!("m{i}"), "cid": format!("s{i}")});
        assert_eq!(answer(&mut b, say).await["seq"], i);
    }
    // Read up to 2: every connection of nana is told, even one not in the room.
    a.send(json!({"type": "read", "room": "lobby", "seq": 2}))
        .await;
    assert_eq!(
        next_of(&mut a, "read").await,
        json!({"type": "read", "room": "lobby", "seq": 2})
    );
    assert_eq!(next_of(&mut a2, "read").await["seq"], 2);
    // Never back, never past the room's last seq.
    a.send(json!({"type": "read", "room": "lobby", "seq": 1}))
        .await;
    assert_eq!(next_of(&mut a, "read").await["seq"], 2);
    a.send(json!({"type": "read", "room": "lobby", "seq": 999}))
        .await;
    assert_eq!(next_of(&mut a, "read").await["seq"], 3);
    a.send(json!({"type": "read", "room": "lobby", "seq": 2}))
        .await;
    assert_eq!(next_of(&mut a, "read").await["seq"], 3);
    // A direct message to a room nana never joined shows in its inbox, unread.
    let dm = json!({"type": "dm", "to": "nana", "text": "psst", "cid": "d1"});
    assert_eq!(answer(&mut b, dm).await["type"], "ack");
    let say = json!({"type": "say", "room": "lobby", "text": "m4", "cid": "s4"});
    answer(&mut b, say).await;
    a2.send(json!({"type": "inbox"})).await;
    let inbox = next_of(&mut a2, "inbox").await;
    let rooms = inbox["rooms"].as_array().unwrap();
    assert_eq!(inbox["total"], 2, "{inbox}");
    let dm = &rooms[0];
    assert_eq!(
        (&dm["room"], &dm["unread"], &dm["read_seq"]),
        (&json!("@mochi+nana"), &json!(1), &json!(0))
    );
    assert_eq!(dm["last"]["text"], "psst");
    let lobby = &rooms[1];
    assert_eq!(
        (
            &lobby["room"],
            &lobby["read_seq"],
            &lobby["unread"],
            &lobby["last_seq"]
        ),
        (&json!("lobby"), &json!(3), &json!(1), &json!(4))
    );
    assert_eq!(lobby["last"]["text"], "m4");
    // Leaving is for good: the room leaves the inbox; joining again starts at its end.
    a.send(json!({"type": "leave", "room": "lobby"})).await;
    next_of(&mut a, "left").await;
    a.send(json!({"type": "inbox"})).await;
    let inbox = next_of(&mut a, "inbox").await;
    assert_eq!(inbox["total"], 1, "{inbox}");
    let joined = a.join("lobby").await;
    assert_eq!(
        (&joined["read_seq"], &joined["unread"]),
        (&json!(4), &json!(0))
    );
    // A keyless user has no read position nor inbox: a clear refusal, the connection stays.
    let mut guest = Client::hello(&url, "guest").await;
    let joined = guest.join("lobby").await;
    assert!(joined.get("read_seq").is_none(), "{joined}");
    guest
        .send(json!({"type": "read", "room": "lobby", "seq": 1}))
        .await;
    assert_eq!(guest.error().await["code"], "forbidden");
    guest.send(json!({"type": "inbox"})).await;
    assert_eq!(guest.error().await["code"], "forbidden");
}

#[tokio::test]
async fn search_finds_only_what_the_asker_may_read_and_takes_any_text_as_words() {
    let server = server_on("search", roomy()).await;
    let url = server.url();
    let mut a = Client::hello_with_key(&url, "nana", Some("k-nana")).await;
    let mut b = Client::hello_with_key(&url, "mochi", Some("k-mochi")).await;
    a.join("lobby").await;
    b.join("lobby").await;
    b.join("secret").await;
    let said = [
        ("lobby", "the quick brown fox", "s1"),
        ("lobby", "quick, and gone", "s2"),
        ("secret", "a quick secret", "s3"),
    ];
    for (room, text, cid) in said {
        let say = json!({"type": "say", "room": room, "text": text, "cid": cid});
        assert_eq!(answer(&mut b, say).await["type"], "ack");
    }
    let dm = json!({"type": "dm", "to": "nana", "text": "quick word in private", "cid": "d1"});
    assert_eq!(answer(&mut b, dm).await["type"], "ack");
    let delete = json!({"type": "delete", "room": "lobby", "seq": 2, "cid": "x1"});
    assert_eq!(answer(&mut b, delete).await["type"], "ack");
    a.send(json!({"type": "search", "query": "QUICK"})).await;
    let found = next_of(&mut a, "search").await;
    let mut texts: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    texts.sort_unstable();
    // Its room and its direct messages; not a room it is not in, not a deleted message.
    assert_eq!(
        texts,
        ["quick word in private", "the quick brown fox"],
        "{found}"
    );
    a.send(json!({"type": "search", "query": "fox", "room": "lobby", "limit": 1}))
        .await;
    assert_eq!(next_of(&mut a, "search").await["results"][0]["seq"], 1);
    a.send(json!({"type": "search", "query": "quick", "room": "secret"}))
        .await;
    assert_eq!(a.error().await["code"], "not_joined");
    for odd in ["'''", "*", ""] {
        a.send(json!({"type": "search", "query": odd})).await;
        assert_eq!(a.error().await["code"], "bad_message", "{odd:?}");
    }
    // Operators are only words: no error, nothing found.
    a.send(json!({"type": "search", "query": "fox\" OR NOT (quick*"}))
        .await;
    assert_eq!(next_of(&mut a, "search").await["results"], json!([]));
    // A room it joined before (remembered) is searched from a connection that is in none.
    drop(a);
    let mut a = Client::hello_with_key(&url, "nana", Some("k-nana")).await;
    a.send(json!({"type": "search", "query": "fox"})).await;
    let found = next_of(&mut a, "search").await;
    assert_eq!(
        found["results"][0]["text"], "the quick brown fox",
        "{found}"
    );
}

/// From an attack on the docs: a retry of a message edited or deleted since was checked
/// against the text it has now (none, or the new one): `cid_reused` told a client whose message
/// was stored that it was not. Now a retry is recognised as what it is.
#[tokio::test]
async fn a_retry_of_a_message_edited_or_deleted_since_is_a_duplicate() {
    let server = server_on("retry", roomy()).await;
    let mut a = Client::hello_with_key(&server.url(), "nana", Some("k-nana")).await;
    a.join("lobby").await;
    for (cid, change) in [("c1", "delete"), ("c2", "edit")] {
        let say = json!({"type": "say", "room": "lobby", "text": "hello", "cid": cid});
        let seq = answer(&mut a, say.clone()).await["seq"].clone();
        let change = match change {
            "delete" => {
                json!({"type": "delete", "room": "lobby", "seq": seq, "cid": format!("x{cid}")})
            }
            _ => {
                json!({"type": "edit", "room": "lobby", "seq": seq, "text": "bye", "cid": format!("x{cid}")})
            }
        };
        assert_eq!(answer(&mut a, change).await["type"], "ack");
        let again = answer(&mut a, say).await;
        assert_eq!(
            (&again["seq"], &again["duplicate"]),
            (&seq, &json!(true)),
            "{again}"
        );
    }
}

/// From an attack on the docs: a token narrowed to fewer rooms still showed the rooms it no
/// longer allows through `inbox` and `search`.
#[tokio::test]
async fn a_token_narrowed_to_fewer_rooms_reads_none_of_the_others() {
    let auth = Auth::new(b"a secret of more than sixteen bytes").unwrap();
    let config = ChatConfig {
        auth: Some(auth.clone()),
        ..roomy()
    };
    let server = server_on("narrow", config).await;
    let url = server.url();
    let connect = |claims: Claims| {
        let (url, token) = (url.clone(), auth.mint(&claims));
        async move {
            let mut c = Client::raw(&url).await;
            let nick = claims.sub.clone();
            c.send(json!({"type": "hello", "nick": nick, "token": token}))
                .await;
            c.expect("welcome").await;
            c
        }
    };
    let mut bea = connect(Claims::for_nick("bea")).await;
    bea.join("vault").await;
    drop(bea);
    let mut boss = connect(Claims::for_nick("boss")).await;
    boss.join("vault").await;
    let say = json!({"type": "say", "room": "vault", "text": "payroll figures", "cid": "p1"});
    assert_eq!(answer(&mut boss, say).await["type"], "ack");
    let narrowed = Claims {
        rooms: Some(vec!["lobby".into()]),
        ..Claims::for_nick("bea")
    };
    let mut bea = connect(narrowed).await;
    bea.join("lobby").await;
    bea.send(json!({"type": "inbox"})).await;
    let inbox = next_of(&mut bea, "inbox").await;
    assert!(!inbox.to_string().contains("payroll"), "{inbox}");
    assert_eq!(inbox["total"], 1, "{inbox}");
    bea.send(json!({"type": "search", "query": "payroll"}))
        .await;
    assert_eq!(next_of(&mut bea, "search").await["results"], json!([]));
}

/// From an attack on the docs: the presence limit counted connections, so a nick with two
/// made a room of three look like four, and it sent no `presence` nor `typing`.
#[tokio::test]
async fn the_presence_limit_counts_nicks_not_connections() {
    let config = ChatConfig {
        presence_limit: 3,
        ..roomy()
    };
    let server = server_on("limit", config).await;
    let url = server.url();
    let mut a = Client::hello_with_key(&url, "nana", Some("k")).await;
    let mut a2 = Client::hello_with_key(&url, "nana", Some("k")).await;
    let mut b = Client::hello(&url, "mochi").await;
    let mut c = Client::hello(&url, "cat").await;
    for client in [&mut a, &mut a2, &mut b] {
        client.join("lobby").await;
    }
    c.join("lobby").await;
    // Three nicks, four connections: still told.
    c.send(json!({"type": "typing", "room": "lobby"})).await;
    assert_eq!(next_of(&mut b, "typing").await["nick"], "cat");
}

/// From an attack on the docs: invisible and direction-changing characters made reactions
/// that look like others, or turned plain-text lines around.
#[tokio::test]
async fn a_reaction_with_invisible_or_bidi_characters_is_refused_and_emoji_sequences_pass() {
    let server = server_on("bidi", roomy()).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    let say = json!({"type": "say", "room": "lobby", "text": "x", "cid": "s"});
    answer(&mut a, say).await;
    // From an attack on the docs: lone joiners and selectors, soft hyphen, the Arabic letter
    // mark, fillers, blanks, tags without a flag, marks without a base, private use and
    // noncharacters were taken.
    let bad = [
        "👍\u{200B}",
        "\u{202E}ok",
        "\u{FEFF}",
        "a\u{2066}b",
        "\u{200D}",
        "\u{FE0F}",
        "\u{200D}\u{200D}\u{200D}",
        "👍\u{200D}",
        "\u{200D}👍",
        "👍\u{200D}\u{200D}👍",
        "\u{00AD}",
        "\u{061C}",
        "\u{180E}",
        "\u{3164}",
        "\u{E0041}\u{E0042}",
        "\u{0301}",
        "\u{2800}",
        "\u{FFF9}",
        "\u{17B4}",
        "\u{FFFF}",
        "\u{E000}",
    ];
    for (i, bad) in bad.iter().enumerate() {
        let react = json!({"type": "react", "room": "lobby", "seq": 1, "emoji": bad, "on": true, "cid": format!("b{i}")});
        assert_eq!(
            code(&answer(&mut a, react).await),
            "bad_reaction",
            "{bad:?}"
        );
    }
    // Emoji sequences pass: a family (joiners), a heart with its selector, a skin tone, a
    // keycap, England's flag (tags after the black flag), a country's flag, an accented letter.
    let good = [
        "👨\u{200D}👩\u{200D}👧",
        "❤\u{FE0F}",
        "👍\u{1F3FD}",
        "1\u{FE0F}\u{20E3}",
        "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        "🇯🇵",
        "e\u{0301}",
        "+1",
    ];
    for (i, good) in good.iter().enumerate() {
        let react = json!({"type": "react", "room": "lobby", "seq": 1, "emoji": good, "on": true, "cid": format!("g{i}")});
        assert_eq!(answer(&mut a, react).await["type"], "ack", "{good:?}");
    }
}

/// From an attack on the docs: `typing` took from the rate limit, so a client sending one per
/// keystroke was closed (1008). It is throttled on its own now.
#[tokio::test]
async fn typing_does_not_take_from_the_rate_limit() {
    let config = ChatConfig {
        rate_per_sec: 1,
        rate_burst: 3,
        ..roomy()
    };
    // The burst covers hello, join and the say; a hundred typings take none of it.
    let server = server_on("typing-rate", config).await;
    let mut a = Client::hello(&server.url(), "nana").await;
    a.join("lobby").await;
    for _ in 0..100 {
        a.send(json!({"type": "typing", "room": "lobby"})).await;
    }
    let say = json!({"type": "say", "room": "lobby", "text": "still here", "cid": "s1"});
    assert_eq!(answer(&mut a, say).await["type"], "ack");
}

/// A key binds a nick for good: an empty one (anyone's to guess) or one past 256 bytes is
/// refused; at 256 bytes it binds.
#[tokio::test]
async fn a_key_is_one_to_256_bytes() {
    let server = server_on("keys", roomy()).await;
    let long = "k".repeat(257);
    for (nick, key) in [("empty", ""), ("long", long.as_str())] {
        let mut c = Client::raw(&server.url()).await;
        c.send(json!({"type": "hello", "nick": nick, "key": key}))
            .await;
        let answer = c.recv().await;
        assert_eq!(code(&answer), "bad_message", "{nick}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("1 to 256 bytes"),
            "{answer}"
        );
        // Still open: a good hello is welcome.
        c.send(json!({"type": "hello", "nick": nick, "key": "k".repeat(256)}))
            .await;
        assert_eq!(c.recv().await["type"], "welcome");
    }
}

/// A `dm` reaches a known user who is away: it waits in its inbox, unread, and stays unread
/// when the user opens the room. A keyless nick away is nobody's: `no_such_nick`.
#[tokio::test]
async fn a_dm_to_a_known_user_away_waits_unread_and_a_keyless_nick_away_is_nobody() {
    let server = server_on("away", roomy()).await;
    let url = server.url();
    drop(Client::hello_with_key(&url, "mochi", Some("k-mochi")).await);
    drop(Client::hello(&url, "ghost").await);
    let mut nana = Client::hello_with_key(&url, "nana", Some("k-nana")).await;
    let dm =
        |to: &str, cid: &str| json!({"type": "dm", "to": to, "text": "are you there?", "cid": cid});
    let sent = answer(&mut nana, dm("Mochi", "d1")).await;
    assert_eq!(sent["type"], "ack", "{sent}");
    // The keyless nick is free once its connection is gone (a moment after the drop).
    within("the keyless nick to go", async {
        for n in 0.. {
            let answer = answer(&mut nana, dm("ghost", &format!("g{n}"))).await;
            if answer["type"] == "error" {
                assert_eq!(code(&answer), "no_such_nick");
                break;
            }
        }
    })
    .await;

    let mut mochi = Client::hello_with_key(&url, "mochi", Some("k-mochi")).await;
    mochi.send(json!({"type": "inbox"})).await;
    let inbox = next_of(&mut mochi, "inbox").await;
    let rooms = inbox["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{inbox}");
    assert_eq!(rooms[0]["room"], "@mochi+nana");
    assert_eq!(rooms[0]["unread"], 1, "{inbox}");
    assert_eq!(rooms[0]["last"]["text"], "are you there?");
    // Opening the room does not count it read: the first join of a direct-message room starts
    // where the nick became this user's.
    let joined = mochi.join("@mochi+nana").await;
    assert_eq!(joined["unread"], 1, "{joined}");
    assert_eq!(joined["read_seq"], 0, "{joined}");
}

/// From an attack on the docs: whoever bound a nick once used without a key could edit and
/// delete what the earlier holder said, and react and reply to direct messages sent to the
/// nick before — which told it they were there. The author of a message is the nick as held
/// when it was said; what was sent to the nick before is no message of the new holder's.
#[tokio::test]
async fn a_new_holder_of_a_nick_changes_nothing_an_earlier_holder_said_or_was_sent() {
    let server = server_on("takeover", roomy()).await;
    let url = server.url();
    let mut alice = Client::hello_with_key(&url, "alice", Some("k-alice")).await;
    alice.join("lobby").await;
    let mut guest = Client::hello(&url, "eve").await;
    guest.join("lobby").await;
    let said = json!({"type": "say", "room": "lobby", "text": "hi all", "cid": "g1"});
    let lobby_seq = answer(&mut guest, said).await["seq"].as_u64().unwrap();
    let dm = json!({"type": "dm", "to": "alice", "text": "a secret", "cid": "g2"});
    assert_eq!(answer(&mut guest, dm).await["seq"], 1);
    let to_eve = json!({"type": "dm", "to": "eve", "text": "for eve", "cid": "a1"});
    assert_eq!(answer(&mut alice, to_eve).await["seq"], 2);
    drop(guest);
    // The nick is free a moment after; someone else binds it to a key.
    let mut eve = within("the nick to be free", async {
        loop {
            let mut c = Client::raw(&url).await;
            c.send(json!({"type": "hello", "nick": "eve", "key": "k-other"}))
                .await;
            if c.recv().await["type"] == "welcome" {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    eve.join("lobby").await;
    eve.join("@alice+eve").await;
    let tries = [
        (
            json!({"type": "edit", "room": "lobby", "seq": lobby_seq, "text": "send money", "cid": "e1"}),
            "forbidden",
        ),
        (
            json!({"type": "delete", "room": "lobby", "seq": lobby_seq, "cid": "e2"}),
            "forbidden",
        ),
        (
            json!({"type": "edit", "room": "@alice+eve", "seq": 1, "text": "x", "cid": "e3"}),
            "no_such_message",
        ),
        (
            json!({"type": "delete", "room": "@alice+eve", "seq": 1, "cid": "e4"}),
            "no_such_message",
        ),
        (
            json!({"type": "react", "room": "@alice+eve", "seq": 2, "emoji": "👀", "on": true, "cid": "e5"}),
            "no_such_message",
        ),
        (
            json!({"type": "say", "room": "@alice+eve", "text": "re", "reply_to": 2, "cid": "e6"}),
            "no_such_message",
        ),
    ];
    for (request, want) in tries {
        assert_eq!(
            code(&answer(&mut eve, request.clone()).await),
            want,
            "{request}"
        );
    }
    // Its own, said since it bound the nick, it may change.
    let own = json!({"type": "say", "room": "lobby", "text": "mine", "cid": "e7"});
    let own = answer(&mut eve, own).await["seq"].as_u64().unwrap();
    let edit = json!({"type": "edit", "room": "lobby", "seq": own, "text": "mine!", "cid": "e8"});
    assert_eq!(answer(&mut eve, edit).await["type"], "ack");
    // Nothing of the earlier holder's changed.
    alice
        .send(json!({"type": "history", "room": "lobby"}))
        .await;
    let history = next_of(&mut alice, "history").await;
    let first = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["seq"] == lobby_seq)
        .unwrap();
    assert_eq!(first["text"], "hi all", "{history}");
    assert!(first.get("edited").is_none(), "{history}");
}

/// From an attack on the docs: an inbox cut to one frame could not be paged, so the rooms
/// after the cut were out of reach. `after` pages it: every room once.
#[tokio::test]
async fn an_inbox_cut_to_one_frame_is_paged_with_after_every_room_once() {
    let server = server_on("inbox-pages", roomy()).await;
    let mut a = Client::hello_with_key(&server.url(), "nana", Some("k-nana")).await;
    let long = "ü".repeat(2000); // 4,000 bytes: some 15 rooms fill a 64 KiB frame
    let mut want = Vec::new();
    for i in 0..30 {
        let room = format!("r{i:02}");
        a.join(&room).await;
        let say = json!({"type": "say", "room": room, "text": long, "cid": format!("c{i}")});
        assert_eq!(answer(&mut a, say).await["type"], "ack");
        want.push(room);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let mut ask = json!({"type": "inbox"});
        if let Some(last) = seen.last() {
            ask["after"] = json!(last);
        }
        a.send(ask).await;
        let page = next_of(&mut a, "inbox").await;
        pages += 1;
        let rooms = page["rooms"].as_array().unwrap();
        seen.extend(rooms.iter().map(|r| r["room"].as_str().unwrap().to_owned()));
        if rooms.len() as u64 == page["total"].as_u64().unwrap() {
            break;
        }
        assert!(!rooms.is_empty() && pages < 20, "{page}");
    }
    assert!(pages > 1, "the inbox was not cut");
    assert_eq!(seen, want);
}
