//! `watch` and `live` against a real server on loopback: room counts of rooms the watcher is not
//! in reach it within a round or two, coalesced (a burst of joins is a few frames, not one
//! each); whether a followed nick is online follows its connections; `{"type":"watch"}` stops
//! it; and a watcher that stops reading is closed at its outbox limit, not buffered for.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::client::{Client, roomy};
use common::{TestServer, within};
use futures_util::{SinkExt, StreamExt};
use nanachat::chat::{Chat, ChatConfig};
use nanachat::config::ConnectionConfig;
use nanachat::server::ServerConfig;
use nanachat::store::MemoryStore;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn server(connection: ConnectionConfig, chat: ChatConfig) -> TestServer {
    let config = ServerConfig {
        connection,
        ..ServerConfig::default()
    };
    let max = config.connection.max_message_bytes;
    TestServer::start(config, Chat::new(MemoryStore::new(), chat, max)).await
}

/// A client that sent `watch` with `rooms` and `nicks`, and read its answer.
async fn watcher(url: &str, nick: &str, rooms: bool, nicks: &[&str]) -> (Client, Value) {
    let mut c = Client::hello(url, nick).await;
    c.send(json!({"type": "watch", "rooms": rooms, "nicks": nicks}))
        .await;
    let answer = c.expect("live").await;
    (c, answer)
}

/// Reads `live` frames into `counts` (room → members) until `done` holds; how many frames
/// that took.
async fn live_until(
    c: &mut Client,
    counts: &mut HashMap<String, u64>,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) -> usize {
    let mut frames = 0;
    while !done(counts) {
        let live = c.expect("live").await;
        frames += 1;
        let rooms = live["rooms"].as_array().unwrap();
        assert!(
            live["total"].as_u64().unwrap() >= rooms.len() as u64,
            "{live}"
        );
        for r in rooms {
            counts.insert(
                r["room"].as_str().unwrap().to_owned(),
                r["members"].as_u64().unwrap(),
            );
        }
    }
    frames
}

#[tokio::test]
async fn joins_and_leaves_of_others_reach_a_watcher_as_counts_within_a_round_or_two() {
    let server = server(ConnectionConfig::default(), roomy()).await;
    let (mut w, answer) = watcher(&server.url(), "watcher", true, &[]).await;
    assert_eq!(answer["rooms"], json!([]));
    let mut counts = HashMap::new();
    let bound = Duration::from_secs(3);

    let mut a = Client::hello(&server.url(), "a").await;
    let mut b = Client::hello(&server.url(), "b").await;
    let start = Instant::now();
    a.join("lobby").await;
    b.join("lobby").await;
    within(
        "lobby has 2",
        live_until(&mut w, &mut counts, |c| c.get("lobby") == Some(&2)),
    )
    .await;
    assert!(start.elapsed() < bound, "took {:?}", start.elapsed());

    // A connection that goes away leaves; so does one that says `leave`.
    let start = Instant::now();
    drop(b);
    within(
        "lobby has 1",
        live_until(&mut w, &mut counts, |c| c.get("lobby") == Some(&1)),
    )
    .await;
    assert!(start.elapsed() < bound, "took {:?}", start.elapsed());
    let start = Instant::now();
    a.send(json!({"type": "leave", "room": "lobby"})).await;
    within(
        "lobby is empty",
        live_until(&mut w, &mut counts, |c| c.get("lobby") == Some(&0)),
    )
    .await;
    assert!(start.elapsed() < bound, "took {:?}", start.elapsed());
}

#[tokio::test]
async fn a_burst_of_200_joins_reaches_a_watcher_in_a_handful_of_frames() {
    let server = server(ConnectionConfig::default(), roomy()).await;
    let (mut w, _) = watcher(&server.url(), "watcher", true, &[]).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        clients.push(Client::hello(&server.url(), &format!("m{i}")).await);
    }
    // 200 joins at once, each to a room of its own, then each read.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"type": "join", "room": format!("r{i}")}))
            .await;
    }
    for c in &mut clients {
        c.expect("joined").await;
    }
    let mut counts = HashMap::new();
    let frames = within(
        "200 rooms of 1",
        live_until(&mut w, &mut counts, |c| {
            (0..200).all(|i| c.get(&format!("r{i}")) == Some(&1))
        }),
    )
    .await;
    assert!(frames <= 10, "{frames} frames for 200 joins");
}

#[tokio::test]
async fn a_followed_nick_is_told_online_and_offline_as_its_connections_come_and_go() {
    let server = server(ConnectionConfig::default(), roomy()).await;
    let _there = Client::hello(&server.url(), "mochi").await;
    let (mut w, answer) = watcher(&server.url(), "nana", false, &["Mochi", "kuro"]).await;
    assert_eq!(answer["online"], json!(["Mochi"]));
    assert_eq!(answer["offline"], json!(["kuro"]));

    // A second connection of a nick online changes nothing; its last one going does.
    let second = Client::hello(&server.url(), "kuro").await;
    let live = w.expect("live").await;
    assert_eq!(live["online"], json!(["kuro"]), "{live}");
    assert!(live.get("offline").is_none(), "{live}");
    drop(second);
    let live = w.expect("live").await;
    assert_eq!(live["offline"], json!(["kuro"]), "{live}");
    // A room joined is not the watcher's business here: it follows no rooms.
    let mut k = Client::hello(&server.url(), "kuro").await;
    k.join("lobby").await;
    let live = w.expect("live").await;
    assert_eq!(live["online"], json!(["kuro"]), "{live}");
    assert_eq!(live["rooms"], json!([]), "{live}");
}

#[tokio::test]
async fn watch_with_nothing_stops_the_frames() {
    let server = server(ConnectionConfig::default(), roomy()).await;
    let (mut stopped, _) = watcher(&server.url(), "stopped", true, &["a"]).await;
    let (mut still, _) = watcher(&server.url(), "still", true, &["a"]).await;
    stopped.send(json!({"type": "watch"})).await;
    let answer = stopped.expect("live").await;
    assert_eq!(answer, json!({"type": "live", "rooms": [], "total": 0}));

    let mut a = Client::hello(&server.url(), "a").await;
    a.join("lobby").await;
    let mut counts = HashMap::new();
    within(
        "the other watcher is told",
        live_until(&mut still, &mut counts, |c| c.get("lobby") == Some(&1)),
    )
    .await;
    // That round is over: anything for the stopped one would be ahead of this answer.
    stopped.send(json!({"type": "rooms"})).await;
    let next = stopped.recv().await;
    assert_eq!(next["type"], "rooms", "nothing before it: {next}");
}

#[tokio::test]
async fn too_many_nicks_are_refused_with_a_sentence() {
    let server = server(ConnectionConfig::default(), roomy()).await;
    let mut c = Client::hello(&server.url(), "nana").await;
    let nicks: Vec<String> = (0..101).map(|i| format!("n{i}")).collect();
    c.send(json!({"type": "watch", "nicks": nicks})).await;
    let err = c.error().await;
    assert_eq!(err["code"], "bad_message");
    assert!(
        err["message"].as_str().unwrap().contains("at most 100"),
        "{err}"
    );
}

/// From an attack on the docs: `watch` took any string as a nick (empty, spaces, 650 bytes),
/// told each spelling of one nick apart (and only one of them when it came online), and its
/// frames outgrew `max_message_bytes`. A nick must be one, each is followed once as first
/// spelt, and the nicks must fit one frame, as every reply does.
#[tokio::test]
async fn watched_nicks_are_nicks_once_each_and_fit_one_frame() {
    let open = server(ConnectionConfig::default(), roomy()).await;
    let mut c = Client::hello(&open.url(), "nana").await;
    for bad in ["", "a b", "+x", "@a+b", "é", &"n".repeat(33)] {
        c.send(json!({"type": "watch", "nicks": ["mochi", bad]}))
            .await;
        let err = c.error().await;
        assert_eq!(err["code"], "bad_nick", "{bad:?}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains("nicks[1]"),
            "{err}"
        );
    }
    let (mut w, answer) = watcher(
        &open.url(),
        "w",
        false,
        &["mochi", "MOCHI", "Mochi", "mochi"],
    )
    .await;
    assert_eq!(answer["offline"], json!(["mochi"]), "{answer}");
    let _mochi = Client::hello(&open.url(), "MoChI").await;
    let live = w.expect("live").await;
    assert_eq!(live["online"], json!(["mochi"]), "{live}");

    // 57 nicks of 32 letters: the request fits a frame of 2 KiB, but the frames that would
    // tell them, beside the rooms, need more: refused, saying why.
    let small = ConnectionConfig {
        max_message_bytes: 2048,
        ..ConnectionConfig::default()
    };
    let tight = server(small, roomy()).await;
    let mut c = Client::hello(&tight.url(), "nana").await;
    let nicks: Vec<String> = (0..57).map(|i| format!("{i:0>32}")).collect();
    c.send(json!({"type": "watch", "nicks": nicks})).await;
    let err = c.error().await;
    assert_eq!(err["code"], "bad_message", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("would not fit"),
        "{err}"
    );
    // As many as fit are followed, and the answer fits.
    let nicks: Vec<String> = (0..40).map(|i| format!("{i:0>32}")).collect();
    c.send(json!({"type": "watch", "nicks": nicks})).await;
    let answer = c.expect("live").await;
    assert_eq!(answer["offline"].as_array().unwrap().len(), 40);
    assert!(answer.to_string().len() <= 2048);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_closed_at_its_outbox_limit() {
    // Frames of up to 128 KiB, an outbox of 256 KiB: a watcher that reads nothing falls behind
    // by a frame a second, and is closed once its outbox is full — the server holds no more.
    let connection = ConnectionConfig {
        max_message_bytes: 128 << 10,
        outbox_bytes: 256 << 10,
        write_timeout: Duration::from_secs(600),
        ..ConnectionConfig::default()
    };
    let chat = ChatConfig {
        max_rooms: 5000,
        ..roomy()
    };
    let server = server(connection, chat).await;
    let url = server.url();

    // A socket that takes little: what it does not read backs up into the server.
    let mut request = url.clone().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "nanachat.v1".parse().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = url.trim_start_matches("ws://").parse().unwrap();
    let stream = within("connect", socket.connect(addr)).await.unwrap();
    let (mut stalled, _) = within(
        "handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    for m in [
        json!({"type": "hello", "nick": "stalled"}),
        json!({"type": "join", "room": "watchers"}),
        json!({"type": "watch", "rooms": true}),
    ] {
        stalled.send(Message::text(m.to_string())).await.unwrap();
    }
    // Another member of a room it is in sees it go.
    let mut observer = Client::hello(&url, "observer").await;
    observer.join("watchers").await;
    let gone = tokio::spawn(async move {
        // No bound here: the test's loop has its own deadline.
        while let Some(Ok(m)) = observer.ws.next().await {
            if let Message::Text(t) = m
                && t.contains("\"presence\"")
                && t.contains("\"stalled\"")
                && t.contains("\"leave\"")
            {
                return;
            }
        }
    });
    // One that reads along is never closed.
    let (mut reader, _) = watcher(&url, "reader", true, &[]).await;

    // Every round, 2000 rooms with long names change: each frame is cut to 128 KiB.
    let mut churn = Client::hello(&url, "churn").await;
    let names: Vec<String> = (0..2000)
        .map(|i| format!("{i:04}-{}", "x".repeat(58)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut joined = false;
    let mut cut = false;
    while !gone.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the stalled watcher was never closed"
        );
        let kind = if joined { "leave" } else { "join" };
        let want = if joined { "left" } else { "joined" };
        for chunk in names.chunks(100) {
            for room in chunk {
                churn.send(json!({"type": kind, "room": room})).await;
            }
            let mut n = 0;
            while n < chunk.len() {
                if churn.recv().await["type"] == want {
                    n += 1;
                }
            }
        }
        joined = !joined;
        // The reader keeps up, and is told of a cut list.
        let live = reader.expect("live").await;
        let shown = live["rooms"].as_array().unwrap().len() as u64;
        assert!(live.to_string().len() <= 128 << 10);
        cut |= live["total"].as_u64().unwrap() > shown;
    }
    // Should it read again, it finds what was in flight, then why it was closed.
    let frame = loop {
        match within("the close frame", stalled.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Library(4001), "{frame:?}");
    assert!(cut, "a round of 2000 rooms is cut to fit one frame");
    // The reader is still served.
    reader.send(json!({"type": "rooms"})).await;
    reader.expect("rooms").await;
}
