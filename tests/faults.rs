//! Faults a server meets in production, against `nanachat serve` child processes: a damaged or
//! unusable data dir, a full disk while writing, slowloris handshakes, a flood to max
//! connections. (SIGKILL mid-publish is in tests/serve.rs; slow consumers in tests/chat.rs.)
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Proc, WAIT, nanachat, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nanachat-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `nanachat serve` on `data_dir` expecting it to refuse to start; returns stderr.
fn refused_start(data_dir: &std::path::Path) -> String {
    let mut cmd = nanachat();
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    let mut proc = Proc::spawn("nanachat serve", cmd);
    assert_eq!(proc.wait_exit().code(), Some(2), "{}", proc.stderr_text());
    let err = proc.stderr_text();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[test]
fn a_damaged_store_is_refused_by_name_and_left_untouched() {
    let dir = scratch("damaged");
    let file = dir.join("nanachat.sqlite3");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let err = refused_start(&dir);
    assert!(
        err.contains("nanachat.sqlite3") && err.contains("not a database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "the file was changed"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "files were added: {names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_data_dir_is_one_clear_line() {
    let dir = scratch("unusable");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = refused_start(&file);
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(
        refused_start(std::path::Path::new("/proc/nanachat-data")).contains("/proc/nanachat-data")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two servers on one data dir would both ack messages while live delivery between them stops
/// for good; the second is refused, by the first one's pid, and the first keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_one_data_dir_is_refused_by_pid() {
    let dir = scratch("two-on-one");
    let first = common::serve_child(&dir, "127.0.0.1:0", 100);
    let url = first.listening_url();
    let err = refused_start(&dir);
    assert!(
        err.contains(&format!("in use by pid {}", first.pid())) && !err.contains("damaged"),
        "{err}"
    );
    let mut ws = json_client(&url, "nana").await;
    let ack = say(&mut ws, "still here", "c1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Started at the same moment, one of two servers on a new data dir gets it; the other is told
/// the dir is in use — never that a healthy database is damaged.
#[test]
fn two_servers_started_at_once_on_one_data_dir_leave_one_running() {
    for round in 0..5 {
        let dir = scratch(&format!("race-{round}"));
        let mut a = common::serve_child(&dir, "127.0.0.1:0", 100);
        let mut b = common::serve_child(&dir, "127.0.0.1:0", 100);
        // Exactly one of them exits, with 2 and the in-use line; the other listens.
        let deadline = Instant::now() + common::WAIT;
        let (mut refused, running) = loop {
            if a.has_exited() {
                break (a, b);
            }
            if b.has_exited() {
                break (b, a);
            }
            assert!(
                Instant::now() < deadline,
                "both servers run on one data dir"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            refused.wait_exit().code(),
            Some(2),
            "{}",
            refused.stderr_text()
        );
        let err = refused.stderr_text();
        assert!(
            err.contains("is in use by") && !err.contains("damaged"),
            "{err}"
        );
        running.listening_url();
        drop(running);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

async fn json_client(url: &str, nick: &str) -> common::Peer {
    let mut ws = common::protocol_peer(url).await;
    for msg in [
        json!({"type": "hello", "nick": nick}),
        json!({"type": "join", "room": "lobby"}),
    ] {
        ws.send(Message::text(msg.to_string())).await.unwrap();
    }
    ws
}

async fn next_json(ws: &mut common::Peer) -> Value {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if !matches!(v["type"].as_str(), Some("tick" | "presence")) {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Says `text` and waits for its ack (or error).
async fn say(ws: &mut common::Peer, text: &str, cid: &str) -> Value {
    let msg = json!({"type": "say", "room": "lobby", "text": text, "cid": cid});
    ws.send(Message::text(msg.to_string())).await.unwrap();
    loop {
        let v = next_json(ws).await;
        if v["cid"] == cid {
            return v;
        }
    }
}

/// `nanachat serve` on port 0 with history in `dir` and these extra options.
fn serve_with(dir: &std::path::Path, options: &[&str]) -> Proc {
    let mut cmd = nanachat();
    cmd.args(["serve", "--addr", "127.0.0.1:0"])
        .args(options)
        .arg("--data-dir")
        .arg(dir);
    Proc::spawn("nanachat serve", cmd)
}

/// `n` sockets that start a WebSocket handshake and never finish it.
fn lorises(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websoc")
                .unwrap();
            tcp
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_handshakes_do_not_keep_real_clients_out() {
    let dir = scratch("slowloris");
    let server = serve_with(&dir, &["--handshake-timeout", "1s"]);
    let url = server.listening_url();
    let addr = url.trim_start_matches("ws://").to_owned();
    // 300 clients that start a request and never finish it.
    let lorises = lorises(&addr, 300);
    // A real client gets in and is served meanwhile.
    let mut ws = json_client(&url, "real").await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(next_json(&mut ws).await["type"], "joined");
    assert_eq!(say(&mut ws, "still served", "c1").await["type"], "ack");
    // And the half-open ones are dropped once the handshake timeout passes.
    let deadline = Instant::now() + WAIT;
    for mut tcp in lorises {
        tcp.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) if Instant::now() < deadline => break,
                Ok(_) => continue, // an error response (408) before the close
                Err(err) => panic!("a slowloris socket stayed open: {err}"),
            }
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads what the server answers on a raw socket until it closes (or WAIT passes).
fn answer_of(tcp: &mut std::net::TcpStream) -> String {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request head larger than 16 KiB is answered 431 instead of being buffered (4,000 sockets
/// each sending an unfinished 380 KiB head used to add 1.6 GB), and the server serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_16_kib_gets_431() {
    let dir = scratch("big-head");
    let server = common::serve_child(&dir, "127.0.0.1:0", 100);
    let url = server.listening_url();
    let addr = url.trim_start_matches("ws://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
        "a".repeat(20 * 1024)
    );
    // The server may answer and close before all of it is written.
    let _ = tcp.write_all(head.as_bytes());
    let answer = answer_of(&mut tcp);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let mut ws = json_client(&url, "real").await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(say(&mut ws, "still served", "c1").await["type"], "ack");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Handshakes in progress are counted and limited: past `--max-handshakes` a connection is
/// answered 503 at once; once the unfinished ones are gone, real clients get in again.
#[tokio::test(flavor = "multi_thread")]
async fn handshakes_in_progress_are_limited() {
    let dir = scratch("handshakes");
    let server = serve_with(&dir, &["--max-handshakes", "50"]);
    let url = server.listening_url();
    let addr = url.trim_start_matches("ws://").to_owned();
    let lorises = lorises(&addr, 50);
    // The server accepts in order: the 51st connection finds every permit taken.
    let page = common::http_get_blocking(&addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(page.contains("too many handshakes in progress"), "{page}");
    drop(lorises);
    // Real clients get in again once the unfinished handshakes are gone.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let page = common::http_get_blocking(&addr, "/metrics");
        if page.starts_with("HTTP/1.1 200") {
            break page;
        }
        assert!(Instant::now() < deadline, "still refused: {page}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        common::metric(&metrics, "nanachat_handshakes_refused_total") >= 1,
        "{metrics}"
    );
    let mut ws = json_client(&url, "real").await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_to_max_connections_refuses_newcomers_and_serves_those_in() {
    let dir = scratch("flood");
    // The flood comes from 127.0.0.1 alone: only the global limit is under test here.
    let options = [&["--max-connections", "40"][..], &common::NO_PER_IP_LIMITS].concat();
    let server = serve_with(&dir, &options);
    let url = server.listening_url();
    let mut real = json_client(&url, "real").await;
    assert_eq!(next_json(&mut real).await["type"], "welcome");
    let mut flood = Vec::new();
    for _ in 0..39 {
        flood.push(common::peer(&url).await);
    }
    // Full: the next one is refused at the door, with the reason.
    match within("refused", tokio_tungstenite::connect_async(url.clone())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("max connections"), "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // The ones in are served as before.
    assert_eq!(next_json(&mut real).await["type"], "joined");
    assert_eq!(say(&mut real, "while full", "c1").await["type"], "ack");
    // A slot freed is a slot for the next client.
    drop(flood.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        if tokio_tungstenite::connect_async(url.clone()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Needs root (it mounts a 1 MiB tmpfs as the data dir): run by scripts/check with --ignored.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "mounts a tmpfs: root only; scripts/check runs it"]
async fn a_full_disk_refuses_what_it_cannot_store_and_keeps_what_it_acked() {
    let dir = scratch("full-disk");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "cannot mount a tmpfs (not root?)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    let mut cmd = nanachat();
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--rate",
        "100000",
        "--burst",
        "100000",
    ])
    .arg("--data-dir")
    .arg(&dir);
    let server = Proc::spawn("nanachat serve", cmd);
    let url = server.listening_url();
    let mut ws = json_client(&url, "writer").await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    assert_eq!(next_json(&mut ws).await["type"], "joined");
    let text = "x".repeat(2000);
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..2000 {
        let answer = say(&mut ws, &text, &format!("c{i}")).await;
        match answer["type"].as_str() {
            Some("ack") => acked.push(answer["seq"].as_u64().unwrap()),
            Some("error") => {
                assert_eq!(answer["code"], "internal", "{answer}");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused >= 5,
        "the disk never filled ({} acked)",
        acked.len()
    );
    assert!(!acked.is_empty());
    // Everything acked is in the history, in order, once; the server still answers.
    let mut stored = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut req = json!({"type": "history", "room": "lobby", "limit": 200});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        ws.send(Message::text(req.to_string())).await.unwrap();
        let page = loop {
            let v = next_json(&mut ws).await;
            if v["type"] == "history" {
                break v;
            }
        };
        let seqs: Vec<u64> = common::client::seqs(&page);
        if seqs.is_empty() {
            break;
        }
        before = Some(seqs[0]);
        stored.splice(0..0, seqs);
    }
    for seq in &acked {
        assert!(stored.contains(seq), "acked #{seq} is not in the history");
    }
    let mut sorted = stored.clone();
    sorted.dedup();
    assert_eq!(sorted, stored, "a seq twice");
    drop(server);
}
