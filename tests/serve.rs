//! `nanachat serve` as users run it: a child process on a real SQLite file, killed with
//! SIGKILL while clients publish, restarted; stopped with SIGTERM; given bad configuration.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Proc, nanachat, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn serve(dir: &Path) -> Proc {
    common::serve_child(dir, "127.0.0.1:0", 100_000)
}

type Ws = common::Peer;

async fn json_client(url: &str, nick: &str) -> Ws {
    let mut ws = common::protocol_peer(url).await;
    for msg in [
        json!({"type": "hello", "nick": nick}),
        json!({"type": "join", "room": "lobby"}),
    ] {
        ws.send(Message::text(msg.to_string())).await.unwrap();
    }
    ws
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match within("next", ws.next()).await {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn every_acked_message_survives_kill_9_of_the_server() {
    let dir = std::env::temp_dir().join(format!("nanachat-serve-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = serve(&dir);
    let url = server.listening_url();

    // Three publishers, each pipelining says (paced, so that they read as fast as they are
    // sent to and are never slow consumers) and recording what was acked, until the kill.
    let total_acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..3 {
        let url = url.clone();
        let total_acked = total_acked.clone();
        publishers.push(tokio::spawn(async move {
            let ws = json_client(&url, &format!("p{p}")).await;
            let (mut sink, mut stream) = ws.split();
            let sending = tokio::spawn(async move {
                for i in 0.. {
                    let say = json!({"type": "say", "room": "lobby", "text": format!("p{p}-{i}"), "cid": format!("p{p}-{i}")});
                    if sink.send(Message::text(say.to_string())).await.is_err() {
                        break;
                    }
                    if i % 4 == 3 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
            let mut acked = Vec::new();
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "ack" {
                        acked.push((v["seq"].as_u64().unwrap(), v["cid"].as_str().unwrap().to_owned()));
                        total_acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            sending.abort();
            acked
        }));
    }
    // Let them get going, then pull the plug mid-stream.
    within("1500 acks", async {
        while total_acked.load(std::sync::atomic::Ordering::Relaxed) < 1500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.kill();
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(within("publisher", p).await.unwrap());
    }
    assert!(acked.len() >= 1000, "only {} acked", acked.len());

    // Restart on the same data dir and read everything back.
    let server = serve(&dir);
    let url = server.listening_url();
    let mut reader = json_client(&url, "reader").await;
    let joined = loop {
        let v = next_json(&mut reader).await.unwrap();
        if v["type"] == "joined" {
            break v;
        }
    };
    let last = joined["last_seq"].as_u64().unwrap();
    let mut stored = std::collections::HashMap::new();
    let mut after = 0;
    while after < last {
        let ask = json!({"type": "history", "room": "lobby", "after": after, "limit": 200});
        reader.send(Message::text(ask.to_string())).await.unwrap();
        let page = loop {
            let v = next_json(&mut reader).await.unwrap();
            if v["type"] == "history" {
                break v;
            }
        };
        for m in page["messages"].as_array().unwrap() {
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, after + 1, "a gap in the history");
            after = seq;
            stored.insert(seq, m["text"].as_str().unwrap().to_owned());
        }
    }
    for (seq, cid) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(cid),
            "acked message {cid} at seq {seq} lost"
        );
    }
    // Seqs go on from where they were.
    let say = json!({"type": "say", "room": "lobby", "text": "after", "cid": "after"});
    reader.send(Message::text(say.to_string())).await.unwrap();
    loop {
        let v = next_json(&mut reader).await.unwrap();
        if v["type"] == "ack" {
            assert_eq!(v["seq"].as_u64().unwrap(), last + 1);
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let dir = std::env::temp_dir().join(format!("nanachat-serve-term-{}", std::process::id()));
    let mut server = serve(&dir);
    let url = server.listening_url();
    let mut ws = json_client(&url, "nana").await;
    loop {
        if next_json(&mut ws).await.unwrap()["type"] == "joined" {
            break;
        }
    }
    server.terminate();
    let frame = common::close_frame(&mut ws).await;
    assert_eq!(u16::from(frame.code), 1001);
    assert!(server.wait_exit().success(), "{}", server.stderr_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configuration_is_one_line_and_exit_2() {
    // Run where a stray data dir would be noticed: none of these may create one.
    let cwd = std::env::temp_dir().join(format!("nanachat-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).unwrap();
    for args in [
        vec!["serve", "--rate", "0"],
        vec!["serve", "--addr", "nowhere"],
        vec!["serve", "--data-dir", "/proc/nanachat-cannot-be-here"],
        vec!["serve", "--heartbeat", "often"],
    ] {
        let out = nanachat()
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("nanachat:") || l.starts_with("error:"))
                .count(),
            1,
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(
        !cwd.join("nanachat-data").exists(),
        "a failed start created a data dir"
    );
    let _ = std::fs::remove_dir_all(&cwd);
}

#[tokio::test]
async fn json_logs_have_one_line_per_connect_and_disconnect_with_peer_and_reason() {
    let mut cmd = nanachat();
    cmd.args([
        "--log-format",
        "json",
        "serve",
        "--memory",
        "--addr",
        "127.0.0.1:0",
    ]);
    let server = Proc::spawn("nanachat serve", cmd);
    let url = server.listening_url();
    let mut ws = json_client(&url, "nana").await;
    loop {
        if next_json(&mut ws).await.unwrap()["type"] == "joined" {
            break;
        }
    }
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let line = server.wait_stderr("\"disconnected\"");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["reason"], "peer closed with 1000 bye");
    assert!(
        v["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let line = server.wait_stderr("\"connected\"");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["subprotocol"], "nanachat.v1");
}

#[tokio::test]
async fn a_config_file_sets_options_and_flags_win_over_it() {
    let dir = std::env::temp_dir().join(format!("nanachat-serve-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nanachat.toml");
    std::fs::write(
        &file,
        "addr = \"127.0.0.1:1\"\nmemory = true\nheartbeat = \"100ms\"\nmax_rooms = 1\n",
    )
    .unwrap();
    let mut cmd = nanachat();
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&file);
    let server = Proc::spawn("nanachat serve", cmd);
    let url = server.listening_url(); // the flag's port 0, not the file's port 1
    assert!(!url.ends_with(":1"), "{url}");
    let mut ws = json_client(&url, "nana").await;
    let mut saw = (false, false);
    while saw != (true, true) {
        let v = next_json(&mut ws).await.unwrap();
        if v["type"] == "tick" {
            saw.0 = true; // the file's heartbeat
        }
        if v["type"] == "joined" {
            let two = json!({"type": "join", "room": "two"});
            ws.send(Message::text(two.to_string())).await.unwrap();
        }
        if v["type"] == "error" {
            assert_eq!(v["code"], "too_many_rooms"); // the file's max_rooms
            saw.1 = true;
        }
    }
    assert!(
        !server.stderr_text().contains("history store"),
        "memory = true keeps no file"
    );

    std::fs::write(&file, "heartbeat = \"often\"\n").unwrap();
    let out = nanachat()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config file") && stderr.contains("not a duration"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The history is its owner's only: a fresh data dir is made 0700, the database, its -wal and
/// -shm files and the lock file 0600, whatever the umask. An existing dir open to others is
/// left as it is, with a warning. Fails on the code before issue 15 (0755 and 0644 under the
/// usual umask 022).
#[test]
fn the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("nanachat-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let fresh = root.join("fresh");
    let server = serve(&fresh);
    server.listening_url();
    assert_eq!(mode(&fresh), 0o700, "the data dir");
    for file in [
        "nanachat.sqlite3",
        "nanachat.sqlite3-wal",
        "nanachat.sqlite3-shm",
        "nanachat.lock",
    ] {
        assert_eq!(mode(&fresh.join(file)), 0o600, "{file}");
    }
    assert!(!server.stderr_text().contains("open to other users"));
    drop(server);

    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = serve(&shared);
    server.listening_url();
    let warning = server.wait_stderr("open to other users");
    assert!(
        warning.contains("0755") && warning.contains("chmod 700"),
        "{warning}"
    );
    assert_eq!(mode(&shared), 0o755, "the user's dir is left as it is");
    assert_eq!(mode(&shared.join("nanachat.sqlite3")), 0o600);
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_log_says_at_start_which_origins_may_connect() {
    for (options, policy) in [
        (&["--memory"][..], "server's own origin only"),
        (
            &["--memory", "--allowed-origin", "*"][..],
            "from any origin",
        ),
        (
            &["--memory", "--allowed-origin", "https://chat.example.org"][..],
            "from https://chat.example.org only",
        ),
    ] {
        let server = common::serve_child_with(Path::new("unused"), "127.0.0.1:0", 10, options);
        let line = server.wait_stderr("origins:");
        assert!(line.contains(policy), "{options:?}: {line}");
    }
}

/// A setting in a misspelt variable is not silently out of force: `serve` and `connect` say
/// which variable was meant (an attacker of issue 18's docs set `NANACHAT_ALLOWED_ORIGINS` and
/// saw nothing; one of issue 19's, `NANACHAT_BORKER` and `NANACHAT_NICKK`).
#[test]
fn a_misspelt_variable_is_named_at_start() {
    let mut cmd = nanachat();
    cmd.args(["serve", "--memory", "--addr", "127.0.0.1:0"])
        .env("NANACHAT_ALLOWED_ORIGINS", "https://chat.example.org");
    let server = Proc::spawn("serve with a misspelt variable", cmd);
    let line = server.wait_stderr("NANACHAT_ALLOWED_ORIGINS");
    assert!(
        line.contains("did you mean NANACHAT_ALLOWED_ORIGIN?"),
        "{line}"
    );
    let url = server.listening_url();
    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "nana"])
        .env("NANACHAT_NICKK", "mochi")
        .stdin(std::process::Stdio::null());
    let mut client = Proc::spawn("connect with a misspelt variable", cmd);
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    let stderr = client.stderr_text();
    assert!(
        stderr.contains("nanachat: NANACHAT_NICKK is not a setting, so it is ignored: did you mean NANACHAT_NICK?"),
        "{stderr}"
    );
}
