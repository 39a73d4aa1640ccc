//! Slow and stalled readers against a real server: a busy room's burst closes no one who reads;
//! a socket that takes nothing meets the write timeout; a replay or history pages to a client
//! that stopped reading keep the connection's timers running and end, freeing what they held.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::client::{Client, publish, roomy};
use common::{TestServer, within};
use futures_util::{SinkExt, StreamExt};
use nanachat::chat::{Chat, ChatConfig};
use nanachat::config::ConnectionConfig;
use nanachat::server::ServerConfig;
use nanachat::store::{MemoryStore, SqliteStore};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
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

/// A `nanachat.v1` client whose socket takes little (a 4 KiB receive buffer), so that what it
/// does not read backs up into the server at once. It says hello as `nick` and reads the
/// welcome; what it reads after that is up to the test.
async fn small_reader(url: &str, nick: &str) -> WebSocketStream<TcpStream> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "nanachat.v1".parse().unwrap());
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = within("connect", socket.connect(addr.parse().unwrap()))
        .await
        .unwrap();
    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    let hello = json!({"type": "hello", "nick": nick}).to_string();
    within("hello", ws.send(Message::text(hello)))
        .await
        .unwrap();
    loop {
        match within("welcome", ws.next()).await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return ws,
            Some(Ok(_)) => {}
            other => panic!("no welcome: {other:?}"),
        }
    }
}

/// Waits until `watcher` (a member of `room`) sees `nick` leave it.
async fn wait_left(watcher: &mut Client, room: &str, nick: &str) {
    loop {
        let p = watcher.expect("presence").await;
        if p["room"] == room && p["nick"] == nick && p["event"] == "leave" {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_room_of_100_sending_its_full_burst_at_once_closes_no_reader() {
    // Default limits throughout: the outbox budget, the rate (a burst of 40), the history on
    // SQLite whose group commits hand the room many messages at once.
    const MEMBERS: usize = 100;
    // Every request takes a token: after hello and join, 38 of the 40 are left to say with.
    let burst = ChatConfig::default().rate_burst as usize - 2;
    let dir = std::env::temp_dir().join(format!("nanachat-slow-burst-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ServerConfig::default();
    let max = config.connection.max_message_bytes;
    let store = SqliteStore::open(&dir).unwrap();
    let server = TestServer::start(config, Chat::new(store, ChatConfig::default(), max)).await;

    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let mut c = Client::hello(&server.url(), &format!("m{i}")).await;
        c.join("lobby").await;
        members.push(c);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(MEMBERS));
    let total = MEMBERS * burst;
    let line = "an ordinary line of chat, about as long as people type them in a busy room: ok!";
    let tasks: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                for n in 0..burst {
                    let say = json!({"type": "say", "room": "lobby", "text": line,
                                     "cid": format!("{i}-{n}")});
                    c.ws.send(Message::text(say.to_string())).await.unwrap();
                }
                // Read everything: every member's burst, and its own acks.
                let (mut messages, mut acks) = (0, 0);
                while messages < total || acks < burst {
                    match within("the room's burst", c.ws.next()).await {
                        Some(Ok(Message::Text(t))) => {
                            let t = t.as_str();
                            if t.contains("\"type\":\"message\"") {
                                messages += 1;
                            } else if t.contains("\"type\":\"ack\"") {
                                acks += 1;
                            } else {
                                assert!(!t.contains("\"type\":\"error\""), "m{i}: {t}");
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            panic!("m{i} closed after {messages} messages: {frame:?}")
                        }
                        Some(Ok(_)) => {}
                        other => panic!("m{i} after {messages} messages: {other:?}"),
                    }
                }
                messages
            })
        })
        .collect();
    for task in tasks {
        let seen = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the burst is delivered")
            .unwrap();
        assert_eq!(seen, total);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_socket_that_takes_nothing_is_closed_by_the_write_timeout_though_its_outbox_has_room() {
    // An outbox far larger than what is sent: only the write timeout can catch the stall.
    let connection = ConnectionConfig {
        outbox_bytes: 64 << 20,
        write_timeout: Duration::from_secs(1),
        close_timeout: Duration::from_secs(30),
        ..ConnectionConfig::default()
    };
    let server = server(connection, roomy()).await;
    let mut good = Client::hello(&server.url(), "good").await;
    good.join("lobby").await;
    let mut stalled = small_reader(&server.url(), "stalled").await;
    let join = json!({"type": "join", "room": "lobby"}).to_string();
    stalled.send(Message::text(join)).await.unwrap();
    let mut publisher = Client::hello(&server.url(), "pub").await;
    publisher.join("lobby").await;

    // ~8 MB: more than the kernel's buffers take for a reader that reads nothing. The good
    // reader reads all along (it would meet the write timeout too otherwise).
    let text = "z".repeat(3900);
    let publishing = tokio::spawn(async move {
        publish(&mut publisher, "lobby", 1..=2000, Some(&text)).await;
        publisher
    });
    // The others are not held up, and see the stalled one go.
    let mut seen = 0;
    let mut left = false;
    while seen < 2000 || !left {
        let m = good.recv().await;
        match m["type"].as_str() {
            Some("message") => seen = m["seq"].as_u64().unwrap(),
            Some("presence") => left |= m["nick"] == "stalled" && m["event"] == "leave",
            _ => {}
        }
    }
    within("publisher", publishing).await.unwrap();
    // Should it read again, it finds what was in flight, then why it was closed.
    let frame = loop {
        match within("the close frame", stalled.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Library(4001));
    assert!(
        frame.reason.contains("took no data"),
        "the reason says why: {}",
        frame.reason
    );
}

/// Fills `room` with `n` long messages.
async fn big_room(url: &str, room: &str, n: u64) -> Client {
    let mut publisher = Client::hello(url, "pub").await;
    publisher.join(room).await;
    let text = "y".repeat(4000);
    publish(&mut publisher, room, 1..=n, Some(&text)).await;
    publisher
}

#[tokio::test]
async fn a_replay_to_a_client_that_stops_reading_still_meets_the_idle_timeout() {
    // The write timeout is far off: only the idle timer, which must keep running while the
    // replay waits for room, can end this connection.
    let connection = ConnectionConfig {
        ping_interval: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(600),
        close_timeout: Duration::from_secs(1),
        ..ConnectionConfig::default()
    };
    let server = server(connection, roomy()).await;
    let mut watcher = big_room(&server.url(), "big", 300).await;
    let mut replayer = small_reader(&server.url(), "replayer").await;
    let join = json!({"type": "join", "room": "big", "since": 0}).to_string();
    replayer.send(Message::text(join)).await.unwrap();
    // 1.2 MB of replay that is never read, and not even a pong back.
    within(
        "the replayer is closed",
        wait_left(&mut watcher, "big", "replayer"),
    )
    .await;
    // The server still serves the room.
    watcher.say("big", "still here", "after").await;
    assert_eq!(watcher.expect("ack").await["cid"], "after");
    drop(replayer);
}

#[tokio::test]
async fn history_pages_to_a_client_that_stops_reading_meet_the_write_timeout() {
    let connection = ConnectionConfig {
        write_timeout: Duration::from_secs(1),
        close_timeout: Duration::from_secs(1),
        ..ConnectionConfig::default()
    };
    let server = server(connection, roomy()).await;
    let mut watcher = big_room(&server.url(), "big", 300).await;
    let mut asker = small_reader(&server.url(), "asker").await;
    let join = json!({"type": "join", "room": "big"}).to_string();
    asker.send(Message::text(join)).await.unwrap();
    // Each page is a frame of up to 64 KiB: 100 of them, never read.
    for _ in 0..100 {
        let history = json!({"type": "history", "room": "big", "limit": 200}).to_string();
        within("ask", asker.send(Message::text(history)))
            .await
            .unwrap();
    }
    within(
        "the asker is closed",
        wait_left(&mut watcher, "big", "asker"),
    )
    .await;
    watcher.say("big", "still here", "after").await;
    let ack: Value = watcher.expect("ack").await;
    assert_eq!(ack["cid"], "after");
}
