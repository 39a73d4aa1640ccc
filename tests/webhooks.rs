//! Webhooks against a real HTTP receiver started by the test, which checks every signature:
//! a receiver down for a while, one that fails then recovers, one that refuses, a server killed
//! with SIGKILL between the commit and the delivery, and (on PostgreSQL) two processes
//! sharing one outbox.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::client::Client;
use common::{Proc, WAIT, within};
use serde_json::{Value, json};

const SECRET: &str = "whsec-0123456789abcdef";

/// What the receiver saw: every request (signature checked), in order of arrival.
#[derive(Default)]
struct Seen {
    /// Events answered 2xx (the body), in order.
    delivered: Mutex<Vec<Value>>,
    /// Requests of any answer.
    requests: AtomicUsize,
    /// Requests whose signature did not verify.
    bad_signatures: AtomicUsize,
    /// What to answer: 0 for 200, else this status.
    status: AtomicU16,
    /// Answer the first this many requests with 500.
    fail_first: AtomicUsize,
    /// Never answer the first this many requests.
    hang_first: AtomicUsize,
}

/// Checks `nanachat-signature: t=…,v1=…` as docs/webhooks.md tells a receiver to.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers
        .get("nanachat-signature")
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - t).abs() > 300 {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    v1.iter().any(|hex| {
        data_encoding::HEXLOWER
            .decode(hex.as_bytes())
            .is_ok_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok())
    })
}

async fn hook(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
    if !verify(&headers, &body) {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    if n < seen.hang_first.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if n < seen.fail_first.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let status = seen.status.load(Ordering::SeqCst);
    if status != 0 {
        return StatusCode::from_u16(status).unwrap();
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        headers["nanachat-event-id"].to_str().unwrap(),
        event["id"].as_str().unwrap()
    );
    seen.delivered.lock().unwrap().push(event);
    StatusCode::NO_CONTENT
}

/// A receiver listening on `addr` (port 0: any), until the returned handle is aborted.
async fn receiver(addr: SocketAddr, seen: Arc<Seen>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nanachat-hooks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    common::write_secret(&dir.join("hook-secret"), &format!("{SECRET}\n"));
    dir
}

/// `nanachat serve` on port 0 with history in `dir` and webhooks to `url`.
fn serve(dir: &std::path::Path, url: &str, more: &[&str]) -> Proc {
    let secret = dir.join("hook-secret");
    let mut options = vec![
        "--webhook-url",
        url,
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ];
    options.extend_from_slice(more);
    common::serve_child_with(&dir.join("data"), "127.0.0.1:0", 1000, &options)
}

/// Waits until `done` holds for what the receiver got.
async fn until(what: &str, seen: &Seen, done: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        if done(&seen.delivered.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; got {:?}",
            seen.delivered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events about records (messages, edits, deletes, reactions), in order.
fn records(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| {
            let kind = e["type"].as_str().unwrap();
            kind.starts_with("message.") || kind.starts_with("reaction.")
        })
        .cloned()
        .collect()
}

/// The ids delivered, each once, and per room the seqs in the order they first arrived.
fn by_room(events: &[Value]) -> (HashSet<String>, BTreeMap<String, Vec<u64>>) {
    let mut ids = HashSet::new();
    let mut rooms: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        if ids.insert(e["id"].as_str().unwrap().to_owned()) {
            rooms
                .entry(e["room"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["seq"].as_u64().unwrap());
        }
    }
    (ids, rooms)
}

/// A labelled webhook metric (the first endpoint's) from `/metrics`.
fn hook_metric(server: &str, name: &str) -> u64 {
    let page = common::http_get_blocking(server, "/metrics");
    page.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{")?;
            rest.split_once("} ")?.1.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

/// `nick` (with a key: a known user, whose joins are membership events; without one a guest,
/// whose are not) joins `room` and says `texts`, each acked.
async fn say_all(url: &str, nick: &str, key: bool, room: &str, texts: &[&str]) -> Client {
    let mut c = Client::hello_with_key(url, nick, key.then_some("k")).await;
    c.join(room).await;
    for (i, text) in texts.iter().enumerate() {
        c.say(room, text, &format!("{room}-{i}")).await;
        c.expect("ack").await;
    }
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_down_for_a_while_then_up_gets_every_event_in_order_per_room() {
    let dir = scratch("down");
    // A port that is ours, then closed: the receiver is down.
    let seen = Arc::new(Seen::default());
    let (addr, task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    task.abort();
    let _ = task.await;
    let url = format!("http://{addr}/hook");
    let server = serve(&dir, &url, &[]);
    let ws = server.listening_url();
    let host = ws.trim_start_matches("ws://").to_owned();
    let mut a = say_all(&ws, "ann", true, "alpha", &["a1", "a2", "secret words"]).await;
    say_all(&ws, "bob", true, "beta", &["b1", "b2"]).await;
    // An edit, a reaction and a delete: events too, with seqs of their own.
    a.send(json!({"type": "edit", "room": "alpha", "seq": 1, "text": "a1 (edited)", "cid": "e1"}))
        .await;
    a.expect("ack").await;
    a.send(
        json!({"type": "react", "room": "alpha", "seq": 2, "emoji": "👍", "on": true, "cid": "r1"}),
    )
    .await;
    a.expect("ack").await;
    a.send(json!({"type": "delete", "room": "alpha", "seq": 3, "cid": "d1"}))
        .await;
    a.expect("ack").await;
    // Nothing could be delivered: all 12 are pending (8 about records, and each room's first
    // member joined and occupied it), and attempts failed.
    let pending = within("pending", async {
        loop {
            let n = hook_metric(&host, "nanachat_webhook_pending");
            if n == 12 && hook_metric(&host, "nanachat_webhook_attempts_failed_total") > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(pending, 12);
    // Up again, on the same port, failing its first two answers with 500.
    seen.fail_first.store(2, Ordering::SeqCst);
    let (_, _task) = receiver(addr, seen.clone()).await;
    until("all 12 events", &seen, |events| {
        by_room(events).0.len() == 12
    })
    .await;
    let all = seen.delivered.lock().unwrap().clone();
    // Membership first in each room (before its first message), then the records.
    let first_types: Vec<&str> = all
        .iter()
        .filter(|e| e["room"] == "beta")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        first_types,
        [
            "member.joined",
            "room.occupied",
            "message.created",
            "message.created"
        ]
    );
    let events = records(&all);
    let (ids, rooms) = by_room(&events);
    assert_eq!(rooms["alpha"], [1, 2, 3, 4, 5, 6]);
    assert_eq!(rooms["beta"], [1, 2]);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    assert!(ids.contains("alpha:4:message.edited"), "{ids:?}");
    let types: Vec<&str> = events
        .iter()
        .filter(|e| e["room"] == "alpha")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "message.created",
            "message.created",
            "message.created",
            "message.edited",
            "reaction.changed",
            "message.deleted"
        ]
    );
    // Rendered as the records stand at delivery: the deleted message's text is gone from
    // its own event too; the edited one carries its new text.
    let third = events
        .iter()
        .find(|e| e["id"] == "alpha:3:message.created")
        .unwrap();
    assert_eq!(third["data"]["text"], "");
    assert_eq!(third["data"]["deleted"], true);
    let react = events
        .iter()
        .find(|e| e["id"] == "alpha:5:reaction.changed")
        .unwrap();
    assert_eq!(
        react["data"],
        json!({"from": "ann", "target": 2, "emoji": "👍", "on": true})
    );
    // Duplicates, if any, only with the same id (and so the same room and seq).
    for e in &events {
        let id = e["id"].as_str().unwrap();
        assert_eq!(
            id,
            format!(
                "{}:{}:{}",
                e["room"].as_str().unwrap(),
                e["seq"],
                e["type"].as_str().unwrap()
            )
        );
    }
    within("the outbox empties", async {
        while hook_metric(&host, "nanachat_webhook_pending") != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(hook_metric(&host, "nanachat_webhook_delivered_total"), 12);
    assert_eq!(hook_metric(&host, "nanachat_webhook_failed_total"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_committed_before_kill_9_are_delivered_after_the_restart() {
    let dir = scratch("kill");
    let seen = Arc::new(Seen::default());
    // The receiver answers 503: the events stay in the outbox.
    seen.status.store(503, Ordering::SeqCst);
    let (addr, _task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let url = format!("http://{addr}/hook");
    let mut server = serve(&dir, &url, &[]);
    let ws = server.listening_url();
    let mut c = say_all(&ws, "ann", false, "lobby", &["one", "two"]).await;
    within("a first attempt", async {
        while seen.requests.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A third message, acked (committed), then SIGKILL before any could be delivered.
    c.say("lobby", "three", "lobby-2").await;
    c.expect("ack").await;
    server.kill();
    assert!(seen.delivered.lock().unwrap().is_empty());
    seen.status.store(0, Ordering::SeqCst);
    let server = serve(&dir, &url, &[]);
    server.listening_url();
    until("the three events", &seen, |events| {
        by_room(events).0.len() == 3
    })
    .await;
    let (_, rooms) = by_room(&seen.delivered.lock().unwrap());
    assert_eq!(rooms["lobby"], [1, 2, 3]);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_refuses_is_not_retried_and_is_counted() {
    let dir = scratch("refuse");
    let seen = Arc::new(Seen::default());
    seen.status.store(410, Ordering::SeqCst);
    let (addr, _task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let server = serve(&dir, &format!("http://{addr}/hook"), &[]);
    let ws = server.listening_url();
    let host = ws.trim_start_matches("ws://").to_owned();
    say_all(&ws, "ann", false, "lobby", &["one", "two"]).await;
    within("both refused", async {
        while hook_metric(&host, "nanachat_webhook_refused_total") < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Given up on: out of the outbox, counted as failed, asked once each.
    assert_eq!(hook_metric(&host, "nanachat_webhook_failed_total"), 2);
    assert_eq!(
        hook_metric(&host, "nanachat_webhook_attempts_failed_total"),
        0
    );
    within("the outbox empties", async {
        while hook_metric(&host, "nanachat_webhook_pending") != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    server.wait_stderr("refused an event; not retried");
    // A 408 and a 429 are "later", not "never": retried until answered.
    seen.status.store(429, Ordering::SeqCst);
    let mut c = Client::hello(&ws, "bob").await;
    c.join("lobby").await;
    c.say("lobby", "three", "b1").await;
    c.expect("ack").await;
    within("a 429", async {
        while hook_metric(&host, "nanachat_webhook_attempts_failed_total") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    seen.status.store(0, Ordering::SeqCst);
    until("the third event", &seen, |events| events.len() == 1).await;
    assert_eq!(seen.delivered.lock().unwrap()[0]["seq"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_and_leaves_of_known_users_are_membership_and_occupancy_events() {
    let dir = scratch("members");
    let seen = Arc::new(Seen::default());
    let (addr, _task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let server = serve(&dir, &format!("http://{addr}/hook"), &[]);
    let ws = server.listening_url();
    let mut ann = say_all(&ws, "Ann", true, "club", &["hi"]).await;
    let mut bob = Client::hello_with_key(&ws, "bob", Some("k")).await;
    bob.join("club").await;
    // A guest (no key, no token) is no member: no event.
    let mut guest = Client::hello(&ws, "guest").await;
    guest.join("club").await;
    ann.send(json!({"type": "leave", "room": "club"})).await;
    ann.expect("left").await;
    bob.send(json!({"type": "leave", "room": "club"})).await;
    bob.expect("left").await;
    until("seven events", &seen, |events| events.len() >= 7).await;
    let events = seen.delivered.lock().unwrap().clone();
    let got: Vec<(String, u64, Value)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
                e["data"]["nick"].clone(),
            )
        })
        .collect();
    let want = [
        ("member.joined", 0, json!("ann")),
        ("room.occupied", 0, Value::Null),
        ("message.created", 1, Value::Null),
        ("member.joined", 1, json!("bob")),
        ("member.left", 1, json!("ann")),
        ("member.left", 1, json!("bob")),
        ("room.vacated", 1, Value::Null),
    ];
    assert_eq!(got.len(), 7, "{events:?}");
    for (got, want) in got.iter().zip(want.iter()) {
        assert_eq!(
            (got.0.as_str(), got.1, &got.2),
            (want.0, want.1, &want.2),
            "{events:?}"
        );
    }
    assert!(
        events[6]["id"]
            .as_str()
            .unwrap()
            .starts_with("club:1:room.vacated:")
    );
    assert!(
        events[0]["id"]
            .as_str()
            .unwrap()
            .starts_with("club:0:member.joined:ann:")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the HTTP API stores is an append like any other: a posted message and a moderator's
/// edit through the API are webhook events, once each even when the request is retried.
#[tokio::test(flavor = "multi_thread")]
async fn messages_posted_and_edited_through_the_http_api_are_events() {
    let dir = scratch("api");
    common::write_secret(&dir.join("api-keys"), "hook-test-api-key-0123456789\n");
    let keys = dir.join("api-keys");
    let seen = Arc::new(Seen::default());
    let (addr, _task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let server = serve(
        &dir,
        &format!("http://{addr}/hook"),
        &["--api-key-file", keys.to_str().unwrap()],
    );
    let at: SocketAddr = server
        .listening_url()
        .trim_start_matches("ws://")
        .parse()
        .unwrap();
    let headers = [
        ("Authorization", "Bearer hook-test-api-key-0123456789"),
        ("Content-Type", "application/json"),
    ];
    let post = json!({"text": "from the backend", "cid": "b1"}).to_string();
    for _ in 0..2 {
        let (status, body) = common::http_json(
            at,
            "POST",
            "/api/v1/rooms/lobby/messages",
            &headers,
            post.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let edit = json!({"text": "edited by the backend", "from": "~mod", "cid": "e1"}).to_string();
    let (status, body) = common::http_json(
        at,
        "PATCH",
        "/api/v1/rooms/lobby/messages/1",
        &headers,
        edit.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    until("two events", &seen, |events| events.len() >= 2).await;
    let events = seen.delivered.lock().unwrap().clone();
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["lobby:1:message.created", "lobby:2:message.edited"]);
    assert_eq!(events[1]["data"]["from"], "~mod");
    assert_eq!(events[1]["data"]["text"], "edited by the backend");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_never_answers_is_timed_out_and_tried_again() {
    let dir = scratch("hang");
    let seen = Arc::new(Seen::default());
    seen.hang_first.store(1, Ordering::SeqCst);
    let (addr, _task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let server = serve(
        &dir,
        &format!("http://{addr}/hook"),
        &["--webhook-timeout", "1s"],
    );
    let ws = server.listening_url();
    let host = ws.trim_start_matches("ws://").to_owned();
    say_all(&ws, "ann", false, "lobby", &["one", "two"]).await;
    let started = std::time::Instant::now();
    until("both events", &seen, |events| events.len() == 2).await;
    // Timed out after --webhook-timeout (1s), not the default 10s.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let (_, rooms) = by_room(&seen.delivered.lock().unwrap());
    assert_eq!(rooms["lobby"], [1, 2]);
    assert!(hook_metric(&host, "nanachat_webhook_attempts_failed_total") >= 1);
    assert_eq!(hook_metric(&host, "nanachat_webhook_delivered_total"), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn webhooks_are_refused_without_a_secret_a_good_secret_file_or_a_durable_store() {
    let dir = scratch("refusals");
    common::write_secret(&dir.join("short"), "short\n");
    let secret = dir.join("hook-secret");
    let short = dir.join("short");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--webhook-url", "http://127.0.0.1:9/h"],
            "needs --webhook-secret-file",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/h",
                "--webhook-secret-file",
                "/nonexistent/s",
            ],
            "cannot read the webhook secret from /nonexistent/s",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/h",
                "--webhook-secret-file",
                short.to_str().unwrap(),
            ],
            "at least 16 characters",
        ),
        (
            &[
                "--memory",
                "--webhook-url",
                "http://127.0.0.1:9/h",
                "--webhook-secret-file",
                secret.to_str().unwrap(),
            ],
            "--memory keeps none",
        ),
        (
            &[
                "--webhook-url",
                "ftp://127.0.0.1:9/h",
                "--webhook-secret-file",
                secret.to_str().unwrap(),
            ],
            "give an http:// or https:// URL",
        ),
    ];
    for (args, expect) in cases {
        let out = common::nanachat()
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two processes on one PostgreSQL (and one broker): every event reaches the receiver once,
/// whichever process took the message, and both processes deliver (or wait their turn).
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_postgresql_deliver_each_event_once() {
    use common::services::{Postgres, Redis};
    let pg = Postgres::start();
    let redis = Redis::start();
    let dir = scratch("pg");
    let seen = Arc::new(Seen::default());
    let (addr, _task) = receiver("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let url = format!("http://{addr}/hook");
    let secret = dir.join("hook-secret");
    let start = || {
        let mut cmd = common::nanachat();
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--rate",
            "1000",
            "--burst",
            "1000",
        ])
        .args(["--store", &pg.url(), "--broker", &redis.url()])
        .args(["--webhook-url", &url, "--webhook-secret-file"])
        .arg(&secret);
        Proc::spawn("nanachat serve (cluster)", cmd)
    };
    let (one, two) = (start(), start());
    let (ws1, ws2) = (one.listening_url(), two.listening_url());
    let mut tasks = Vec::new();
    for (i, ws) in [ws1, ws2].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::hello(&ws, &format!("p{i}")).await;
            for room in ["r1", "r2"] {
                c.join(room).await;
            }
            for n in 0..20 {
                let room = if n % 2 == 0 { "r1" } else { "r2" };
                c.say(room, &format!("{i}-{n}"), &format!("c{i}-{n}")).await;
                c.expect("ack").await;
            }
        }));
    }
    for task in tasks {
        within("publishers", task).await.unwrap();
    }
    until("40 events", &seen, |events| events.len() >= 40).await;
    // Let any duplicate that was in flight arrive, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = seen.delivered.lock().unwrap().clone();
    let (ids, rooms) = by_room(&events);
    assert_eq!(ids.len(), 40);
    assert_eq!(events.len(), 40, "a duplicate was delivered");
    assert_eq!(rooms["r1"], (1..=20).collect::<Vec<u64>>());
    assert_eq!(rooms["r2"], (1..=20).collect::<Vec<u64>>());
    assert_eq!(pg.sql("SELECT count(*) FROM webhook_outbox").trim(), "0");
    let _ = std::fs::remove_dir_all(&dir);
}

/// From an attack on the docs: a receiver that answered 200 with a body of a gigabyte made
/// the server hold all of it (1.1 GB of RSS for three events). The server reads at most
/// 64 KiB of an answer and drops the connection after that.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_answer_is_cut_off_and_the_events_still_count() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let dir = scratch("endless");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Per connection: the requests it carried, and the bytes of answer body the server took.
    let conns: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let record = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let i = {
                    let mut c = record.lock().unwrap();
                    c.push((0, 0));
                    c.len() - 1
                };
                let mut tcp = BufReader::new(tcp);
                // One request: its head, then its body.
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if tcp.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                tcp.read_exact(&mut body).await.unwrap();
                record.lock().unwrap()[i].0 += 1;
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n";
                if tcp.get_mut().write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while tcp.get_mut().write_all(&chunk).await.is_ok() {
                    record.lock().unwrap()[i].1 += chunk.len();
                }
            });
        }
    });
    let server = serve(&dir, &format!("http://{addr}/hook"), &[]);
    let ws = server.listening_url();
    let host = ws.trim_start_matches("ws://").to_owned();
    say_all(&ws, "ann", false, "lobby", &["one", "two"]).await;
    within("both events delivered", async {
        while hook_metric(&host, "nanachat_webhook_delivered_total") < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let conns = conns.lock().unwrap().clone();
    assert!(
        conns.len() >= 2,
        "each cut-off connection is not reused: {conns:?}"
    );
    for (requests, taken) in &conns {
        assert!(*requests <= 1, "{conns:?}");
        assert!(
            *taken < 16 << 20,
            "the server read {taken} bytes of one answer"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
