//! Interop with real peers: the seed's own Python programs (as written, on `websockets` 10.4, and
//! ported to 17.x) against `nanachat demo`, and a Node `ws` client against `nanachat echo`.
//!
//! These need the peers installed, so they are ignored by a plain `cargo test`; `scripts/check`
//! installs them and runs `cargo test --test interop -- --ignored` with these variables set:
//! `NANACHAT_PYTHON10` and `NANACHAT_PYTHON17` (interpreters with each `websockets`) and
//! `NANACHAT_NODE` (a `node` that finds `ws` in `tests/peers/node/node_modules`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Line, Proc, nanachat};

fn peer_tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/check, which installs the interop peers")
    })
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// One of the seed's scripts under `python`, its port redirected by `run_seed.py`.
fn seed_script(python_var: &str, script: &str, target_port: Option<u16>) -> Proc {
    let mut cmd = Command::new(peer_tool(python_var));
    cmd.arg(peers_dir().join("run_seed.py"))
        .arg(peers_dir().join(script));
    if let Some(port) = target_port {
        cmd.env("SEED_TARGET_PORT", port.to_string());
    }
    Proc::spawn(script, cmd)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// The payloads of the lines that start with `prefix` (`"> "` or `"< "`), with their times.
fn said<'a>(lines: &'a [Line], prefix: &str) -> Vec<(std::time::Instant, &'a str)> {
    lines
        .iter()
        .filter_map(|(t, l)| l.strip_prefix(prefix).map(|rest| (*t, rest)))
        .collect()
}

fn count(lines: &[Line], prefix: &str, kind: &str) -> usize {
    said(lines, prefix)
        .iter()
        .filter(|(_, m)| m.starts_with(kind))
        .count()
}

/// A message as the seed builds it: `{kind}{datetime.now()}`.
fn assert_seed_message(msg: &str, kind: &str) {
    let stamp = msg
        .strip_prefix(kind)
        .unwrap_or_else(|| panic!("'{msg}' does not start with '{kind}'"));
    let format = if stamp.contains('.') {
        "%Y-%m-%d %H:%M:%S%.6f"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    chrono::NaiveDateTime::parse_from_str(stamp, format)
        .unwrap_or_else(|err| panic!("'{stamp}' is not a Python timestamp: {err}"));
    if let Some((_, micros)) = stamp.split_once('.') {
        assert_eq!(micros.len(), 6, "{stamp}");
    }
}

/// What both sides printed, checked against the seed's behaviour: every message sent is printed
/// `> …` by its sender and `< …` by its receiver, in order; formats; cadence roughly right; and
/// the client's `INTER BREAK` ticker interleaving with the messages.
fn check_pair(client: &[Line], server: &[Line], server_every: Duration) {
    let sent_by_client = said(client, "> ");
    let sent_by_server = said(server, "> ");
    assert!(
        sent_by_client.len() >= 3,
        "client sent {}",
        sent_by_client.len()
    );
    assert!(
        sent_by_server.len() >= 2,
        "server sent {}",
        sent_by_server.len()
    );
    for (_, msg) in &sent_by_client {
        assert_seed_message(msg, "!Client Send! ");
    }
    for (_, msg) in &sent_by_server {
        assert_seed_message(msg, "!Server Send! ");
    }

    // Both directions, in order: what one side sent is what the other printed (the receiver
    // may not have printed the very last one yet when the run was stopped).
    let got_by_server: Vec<&str> = said(server, "< ").into_iter().map(|(_, m)| m).collect();
    let got_by_client: Vec<&str> = said(client, "< ").into_iter().map(|(_, m)| m).collect();
    let client_msgs: Vec<&str> = sent_by_client.iter().map(|(_, m)| *m).collect();
    let server_msgs: Vec<&str> = sent_by_server.iter().map(|(_, m)| *m).collect();
    assert!(
        got_by_server.len() + 1 >= client_msgs.len(),
        "server got {got_by_server:?}"
    );
    assert_eq!(got_by_server[..], client_msgs[..got_by_server.len()]);
    assert!(
        got_by_client.len() + 1 >= server_msgs.len(),
        "client got {got_by_client:?}"
    );
    assert_eq!(got_by_client[..], server_msgs[..got_by_client.len()]);

    // Cadence: the client every ~1 s, the server every `server_every`. Loose bounds: the
    // machine may be busy; the point is the timers, not their precision.
    for pair in sent_by_client.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            (600..=2000).contains(&gap.as_millis()),
            "client gap {gap:?}"
        );
    }
    let every = server_every.as_millis();
    for pair in sent_by_server.windows(2) {
        let gap = (pair[1].0 - pair[0].0).as_millis();
        assert!(
            (every * 2 / 3..=every * 3 / 2).contains(&gap),
            "server gap {gap} ms"
        );
    }

    // The ticker interleaves: between two sends of the client, several INTER BREAK lines.
    let lines: Vec<&str> = client.iter().map(|(_, l)| l.as_str()).collect();
    let sends: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("> "))
        .map(|(i, _)| i)
        .collect();
    for pair in sends.windows(2) {
        let ticks = lines[pair[0]..pair[1]]
            .iter()
            .filter(|l| **l == "INTER BREAK")
            .count();
        assert!(
            ticks >= 2,
            "only {ticks} INTER BREAK between two sends: {lines:?}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| *l == "INTER BREAK" || l.starts_with("> ") || l.starts_with("< ")),
        "unexpected output: {lines:?}"
    );
}

/// A seed client (Python) against `nanachat demo server`.
fn python_client_against_demo_server(python_var: &str, script: &str) {
    let mut cmd = nanachat();
    cmd.args(["demo", "server", "--addr", "127.0.0.1:0"]);
    let server = Proc::spawn("nanachat demo server", cmd);
    let url = server.listening_url();
    let client = seed_script(python_var, script, Some(port_of(&url)));
    server.wait_stdout("2 pushes and 4 receipts", |lines| {
        count(lines, "> ", "!Server Send!") >= 2 && count(lines, "< ", "!Client Send!") >= 4
    });
    client.wait_stdout("the second push", |lines| {
        count(lines, "< ", "!Server Send!") >= 2
    });
    check_pair(
        &client.stdout_lines(),
        &server.stdout_lines(),
        Duration::from_secs(3),
    );
}

/// `nanachat demo client --count 5` against a seed server (Python).
fn demo_client_against_python_server(python_var: &str, script: &str) {
    let server = seed_script(python_var, script, None);
    let line = server.wait_stderr("LISTENING ");
    let port = line.trim().rsplit(' ').next().unwrap();
    let mut cmd = nanachat();
    cmd.args([
        "demo",
        "client",
        &format!("ws://127.0.0.1:{port}"),
        "--count",
        "5",
    ]);
    let mut client = Proc::spawn("nanachat demo client", cmd);
    let status = client.wait_exit();
    assert!(status.success(), "{}", client.stderr_text());
    let client_lines = client.stdout_lines();
    assert_eq!(count(&client_lines, "> ", "!Client Send!"), 5);
    server.wait_stdout("the client's 5 messages", |lines| {
        count(lines, "< ", "!Client Send!") >= 5
    });
    check_pair(
        &client_lines,
        &server.stdout_lines(),
        Duration::from_secs(3),
    );
    // Our close was clean: the seed's server (which prints a traceback whenever a client
    // leaves, whoever it is) saw 1000 both ways.
    server.wait_stderr("ConnectionClosedOK");
    assert!(
        server
            .stderr_text()
            .contains("received 1000 (OK); then sent 1000 (OK)"),
        "{}",
        server.stderr_text()
    );
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn seed_client_on_websockets_10_against_demo_server() {
    python_client_against_demo_server("NANACHAT_PYTHON10", "seed/Client.py");
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn ported_client_on_websockets_17_against_demo_server() {
    python_client_against_demo_server("NANACHAT_PYTHON17", "ws17/Client.py");
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn demo_client_against_seed_server_on_websockets_10() {
    demo_client_against_python_server("NANACHAT_PYTHON10", "seed/Server.py");
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn demo_client_against_ported_server_on_websockets_17() {
    demo_client_against_python_server("NANACHAT_PYTHON17", "ws17/Server.py");
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn two_seed_clients_each_get_their_own_timer() {
    let mut cmd = nanachat();
    cmd.args(["demo", "server", "--addr", "127.0.0.1:0", "--every", "1s"]);
    let server = Proc::spawn("nanachat demo server", cmd);
    let port = port_of(&server.listening_url());
    let a = seed_script("NANACHAT_PYTHON10", "seed/Client.py", Some(port));
    let b = seed_script("NANACHAT_PYTHON17", "ws17/Client.py", Some(port));
    for client in [&a, &b] {
        client.wait_stdout("3 pushes", |lines| count(lines, "< ", "!Server Send!") >= 3);
    }
    // Each client got its own stream of pushes: no push went to both.
    let pushes = |p: &Proc| -> Vec<String> {
        said(&p.stdout_lines(), "< ")
            .into_iter()
            .map(|(_, m)| m.to_owned())
            .collect()
    };
    let (pa, pb) = (pushes(&a), pushes(&b));
    assert!(pa.iter().all(|m| !pb.contains(m)), "{pa:?} / {pb:?}");
}

#[test]
#[ignore = "needs Node and ws: run scripts/check"]
fn node_ws_client_against_echo() {
    let mut cmd = nanachat();
    cmd.args(["echo", "--addr", "127.0.0.1:0"]);
    let server = Proc::spawn("nanachat echo", cmd);
    let url = server.listening_url();
    let mut node = Command::new(peer_tool("NANACHAT_NODE"));
    node.arg(peers_dir().join("node/echo_client.js")).arg(&url);
    let mut node = Proc::spawn("node ws client", node);
    let status = node.wait_exit();
    let out: Vec<String> = node.stdout_lines().into_iter().map(|(_, l)| l).collect();
    assert!(status.success(), "{out:?}\n{}", node.stderr_text());
    assert_eq!(out, ["node-ws: ok"]);
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn two_seed_clients_chat_through_serve_in_plain_text_mode() {
    let mut cmd = nanachat();
    cmd.args([
        "serve",
        "--memory",
        "--addr",
        "127.0.0.1:0",
        "--heartbeat",
        "3s",
    ]);
    let server = Proc::spawn("nanachat serve", cmd);
    let port = port_of(&server.listening_url());
    let a = seed_script("NANACHAT_PYTHON10", "seed/Client.py", Some(port));
    let b = seed_script("NANACHAT_PYTHON17", "ws17/Client.py", Some(port));
    // Each sees the other's `!Client Send!` lines said in the lobby, and the server's push.
    for (me, other) in [(&a, &b), (&b, &a)] {
        me.wait_stdout("the other's messages and a push", |lines| {
            let theirs = lines
                .iter()
                .filter(|(_, l)| {
                    l.starts_with("< [lobby] guest-") && l.contains(": !Client Send! ")
                })
                .count();
            let pushes = lines
                .iter()
                .filter(|(_, l)| l.starts_with("< !Server Send! "))
                .count();
            theirs >= 4 && pushes >= 1
        });
        // What `other` sent once both were in is what `me` got, text for text (its very first
        // message may have gone out before `me` had joined).
        let sent: Vec<String> = said(&other.stdout_lines(), "> ")
            .into_iter()
            .map(|(_, m)| m.to_owned())
            .collect();
        let got: Vec<String> = said(&me.stdout_lines(), "< ")
            .into_iter()
            .filter_map(|(_, m)| m.split_once(": ").map(|(_, text)| text.to_owned()))
            .collect();
        assert!(
            sent.iter().skip(1).take(2).all(|m| got.contains(m)),
            "{sent:?}\n{got:?}"
        );
    }
}

#[test]
#[ignore = "needs the seed's Python peers: run scripts/check"]
fn connect_raw_talks_to_the_seed_server() {
    let server = seed_script("NANACHAT_PYTHON10", "seed/Server.py", None);
    let line = server.wait_stderr("LISTENING ");
    let port = line.trim().rsplit(' ').next().unwrap();
    let mut cmd = nanachat();
    cmd.args([
        "connect",
        "--raw",
        &format!("ws://127.0.0.1:{port}"),
        "--send-every",
        "0.5s",
    ]);
    let mut client = Proc::spawn_with_stdin("nanachat connect --raw", cmd, true);
    client.write_line("typed by hand");
    // The seed server's pushes arrive as lines; our periodic sends and the typed line reach it.
    client.wait_stdout("a push", |l| {
        l.iter().any(|(_, t)| t.starts_with("!Server Send! "))
    });
    server.wait_stdout("our lines", |l| {
        l.iter().any(|(_, t)| t == "< typed by hand")
            && l.iter()
                .filter(|(_, t)| t.starts_with("< !Client Send! "))
                .count()
                >= 2
    });
    client.close_stdin();
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
}
