//! A `nanachat.v1` client for the chat tests: hello, join, say, and reading by type.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nanachat::chat::ChatConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Peer, within};

/// A `nanachat.v1` client.
pub struct Client {
    pub ws: Peer,
}

impl Client {
    pub async fn raw(url: &str) -> Self {
        Self {
            ws: super::protocol_peer(url).await,
        }
    }

    pub async fn hello(url: &str, nick: &str) -> Self {
        Self::hello_with_key(url, nick, None).await
    }

    pub async fn hello_with_key(url: &str, nick: &str, key: Option<&str>) -> Self {
        let mut c = Self::raw(url).await;
        let mut hello = json!({"type": "hello", "nick": nick});
        if let Some(key) = key {
            hello["key"] = json!(key);
        }
        c.send(hello).await;
        let welcome = c.expect("welcome").await;
        assert_eq!(welcome["nick"], nick);
        c
    }

    pub async fn send(&mut self, v: Value) {
        within("send", self.ws.send(Message::text(v.to_string())))
            .await
            .unwrap();
    }

    /// The next JSON message (ticks skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            match within("a message", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] != "tick" {
                        return v;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Reads until a message of this type; returns it.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
            assert_ne!(v["type"], "error", "while waiting for {kind}: {v}");
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        self.expect("joined").await
    }

    pub async fn say(&mut self, room: &str, text: &str, cid: &str) {
        self.send(json!({"type": "say", "room": room, "text": text, "cid": cid}))
            .await;
    }

    pub async fn error(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == "error" {
                return v;
            }
        }
    }
}

/// Says `text` (or `m{i}`) for every i in `range`, in bursts, reading its own acks between
/// bursts as a well-behaved client does (a member that never reads is a slow consumer).
pub async fn publish(
    c: &mut Client,
    room: &str,
    range: std::ops::RangeInclusive<u64>,
    text: Option<&str>,
) {
    let ids: Vec<u64> = range.collect();
    for burst in ids.chunks(20) {
        for i in burst {
            let body = text.map_or_else(|| format!("m{i}"), str::to_owned);
            c.say(room, &body, &format!("c{i}")).await;
        }
        let mut acked = 0;
        while acked < burst.len() {
            if c.recv().await["type"] == "ack" {
                acked += 1;
            }
        }
    }
}

/// A chat config that lets tests send as fast as they like, with no heartbeat in the way.
pub fn roomy() -> ChatConfig {
    ChatConfig {
        rate_per_sec: 100_000,
        rate_burst: 100_000,
        heartbeat_interval: Duration::ZERO,
        ..ChatConfig::default()
    }
}

/// The seqs of the messages in a `history` page.
pub fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}
