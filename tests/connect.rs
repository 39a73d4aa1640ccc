//! `nanachat connect`, the terminal client, as a user runs it: scripted through pipes, under a
//! pseudo-terminal, and across a server killed with SIGKILL and restarted.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Line, Proc, nanachat, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn serve(dir: &Path, addr: &str) -> Proc {
    common::serve_child(dir, addr, 1000)
}

fn client(url: &str, nick: &str, extra: &[&str]) -> Proc {
    let mut cmd = nanachat();
    cmd.args(["connect", url, "--nick", nick]).args(extra);
    Proc::spawn_with_stdin(&format!("connect {nick}"), cmd, true)
}

fn texts(lines: &[Line]) -> Vec<String> {
    lines.iter().map(|(_, l)| l.clone()).collect()
}

/// What rexpect reads for `text`: it takes each byte for a character, so a line with an emoji
/// is looked for byte by byte.
fn bytewise(text: &str) -> String {
    text.bytes().map(char::from).collect()
}

/// A protocol client driven by the test itself.
struct Talker {
    ws: common::Peer,
    /// Makes this instance's cids its own: a cid used again is a retry, not a new message.
    run: u128,
    n: u64,
}

impl Talker {
    async fn new(url: &str, nick: &str) -> Self {
        let mut ws = common::protocol_peer(url).await;
        for msg in [
            json!({"type": "hello", "nick": nick, "key": nick}),
            json!({"type": "join", "room": "lobby"}),
        ] {
            ws.send(Message::text(msg.to_string())).await.unwrap();
        }
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self { ws, run, n: 0 }
    }

    /// Says each text and waits for its ack.
    async fn say_all(&mut self, texts: impl IntoIterator<Item = String>) {
        for text in texts {
            self.n += 1;
            let cid = format!("t{}-{}", self.run, self.n);
            let say = json!({"type": "say", "room": "lobby", "text": text, "cid": cid});
            self.ws.send(Message::text(say.to_string())).await.unwrap();
            loop {
                match within("ack", self.ws.next()).await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v["type"] == "ack" && v["cid"] == cid {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    /// The room's history page (up to 200 messages).
    async fn history(&mut self) -> Value {
        let ask = json!({"type": "history", "room": "lobby", "limit": 200});
        self.ws.send(Message::text(ask.to_string())).await.unwrap();
        loop {
            match within("history", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "history" {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// The stored message with this text, once it is in the room's history: whether it was
    /// said before or after this talker joined (the follower may reconnect first).
    async fn stored(&mut self, text: &str) -> Value {
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            let history = self.history().await;
            if let Some(m) = history["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["text"] == text)
            {
                return m.clone();
            }
            assert!(std::time::Instant::now() < deadline, "{text} never stored");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Reads until a frame of this type arrives.
    async fn wait_type(&mut self, kind: &str) -> Value {
        loop {
            match within(kind, self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == kind {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// Reads until a message with this text arrives.
    async fn wait_for(&mut self, text: &str) -> Value {
        loop {
            match within(text, self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "message" && v["text"] == text {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn scripting_mode_sends_each_line_waits_for_acks_and_prints_one_line_per_message() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-script-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let reader = client(&url, "reader", &[]);
    reader.wait_stderr("* joined lobby");
    let mut json_reader = client(&url, "jq", &["--json"]);
    json_reader.wait_stderr("* joined lobby");

    let mut writer = client(&url, "writer", &[]);
    writer.write_line("first line");
    writer.write_line("second: with a colon");
    writer.close_stdin();
    assert!(writer.wait_exit().success(), "{}", writer.stderr_text());

    reader.wait_stdout("both lines", |l| l.len() >= 2);
    assert_eq!(
        texts(&reader.stdout_lines()),
        [
            "[lobby] writer: first line",
            "[lobby] writer: second: with a colon"
        ]
    );
    json_reader.wait_stdout("both objects", |l| l.len() >= 2);
    let objects: Vec<Value> = json_reader
        .stdout_lines()
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects[0]["type"], "message");
    assert_eq!(objects[1]["text"], "second: with a colon");
    assert_eq!(
        objects[1]["seq"].as_u64(),
        Some(objects[0]["seq"].as_u64().unwrap() + 1)
    );
    json_reader.close_stdin();
    assert!(json_reader.wait_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn errors_are_one_line_with_documented_exit_codes() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-errors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let _holder = Talker::new(&url, "taken").await;
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["connect", &url, "--nick", "taken"],
            3,
            "choose another nick",
        ),
        (&["connect", "not a url"], 2, "bad URL"),
        (
            &["connect", &url, "--nick", "bad nick!"],
            2,
            "is not a nick",
        ),
        (
            &["connect", "ws://127.0.0.1:1", "--nick", "x"],
            1,
            "is `nanachat serve` running",
        ),
    ];
    for (args, code, says) in cases {
        let out = nanachat()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("nanachat:"))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(says), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_a_server_kill_and_restart_the_client_resumes_without_gaps_or_repeats() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let addr = url.trim_start_matches("ws://").to_owned();

    let mut follower = client(&url, "follower", &[]);
    follower.wait_stderr("* joined lobby");
    let mut talker = Talker::new(&url, "talker").await;
    talker.say_all((1..=20).map(|i| format!("m{i}"))).await;
    follower.wait_stdout("m20", |l| l.iter().any(|(_, t)| t.ends_with(": m20")));

    server.kill();
    follower.wait_stderr("reconnecting in");
    // Typed while the server is down: must arrive once, after the restart.
    follower.write_line("typed while down");
    let server = serve(&dir, &addr);
    server.listening_url();
    let mut talker = Talker::new(&url, "talker").await;
    talker.say_all((21..=40).map(|i| format!("m{i}"))).await;
    let own = talker.stored("typed while down").await;
    follower.wait_stdout("m40 and its own line", |l| {
        l.iter().any(|(_, t)| t.ends_with(": m40"))
            && l.iter()
                .any(|(_, t)| t.ends_with("follower: typed while down"))
    });

    let shown = texts(&follower.stdout_lines());
    let expected: Vec<String> = (1..=40).map(|i| format!("[lobby] talker: m{i}")).collect();
    let talker_lines: Vec<String> = shown
        .iter()
        .filter(|l| l.contains("talker:"))
        .cloned()
        .collect();
    assert_eq!(
        talker_lines, expected,
        "every message exactly once, in order"
    );
    assert_eq!(
        shown
            .iter()
            .filter(|l| l.ends_with("follower: typed while down"))
            .count(),
        1
    );

    // The history holds the line typed offline exactly once.
    let history = talker.history().await;
    let copies = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "typed while down")
        .count();
    assert_eq!(copies, 1, "{history}");
    assert_eq!(own["from"], "follower");
    follower.close_stdin();
    assert!(follower.wait_exit().success(), "{}", follower.stderr_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn under_a_terminal_a_half_typed_line_survives_incoming_messages() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-pty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let mut talker = Talker::new(&url, "talker").await;

    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "typist"])
        .env("NO_COLOR", "1");
    let mut pty = rexpect::session::spawn_command(cmd, Some(10_000)).unwrap();
    pty.exp_string("joined lobby").unwrap();
    pty.send("hello wor").unwrap();
    pty.flush().unwrap();
    talker
        .say_all(["interrupting you".to_owned(), "and again".to_owned()])
        .await;
    pty.exp_string("talker: and again").unwrap();
    // The line being typed is still there: finish it.
    pty.send_line("ld").unwrap();
    let got = talker.wait_for("hello world").await;
    assert_eq!(got["from"], "typist");
    pty.send_line("/quit").unwrap();
    pty.exp_eof().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Typing is shown in a bar just above the prompt — rewritten in place, never added as a line
/// — and taken away when the typist's message arrives.
#[tokio::test]
async fn under_a_terminal_typing_shows_in_the_bar_until_the_message() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-bar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let mut talker = Talker::new(&url, "talker").await;

    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "reader"])
        .env("NO_COLOR", "1");
    let mut pty = rexpect::session::spawn_command(cmd, Some(10_000)).unwrap();
    pty.exp_string("joined lobby").unwrap();
    let typing = json!({"type": "typing", "room": "lobby"});
    talker
        .ws
        .send(Message::text(typing.to_string()))
        .await
        .unwrap();
    pty.exp_string("talker is typing in lobby").unwrap();
    talker.say_all(["done typing".to_owned()]).await;
    // The bar's row is cleared and given back to the prompt, then the message is a line.
    pty.exp_string("\x1b[1A\r\x1b[2K\x1b[1A").unwrap();
    let between = pty.exp_string("talker: done typing").unwrap();
    assert!(!between.contains("typing in"), "{between:?}");
    pty.send_line("/quit").unwrap();
    pty.exp_eof().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_script_piping_many_lines_is_paced_to_the_servers_rate_and_none_is_refused() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-pace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 20 a second, bursts of 20, closed after 20 refusals in a row: a script piping 100 lines
    // at once would be closed if it did not pace itself.
    let server = common::serve_child(&dir, "127.0.0.1:0", 20);
    let url = server.listening_url();
    let mut writer = client(&url, "bulk", &[]);
    for i in 1..=100 {
        writer.write_line(&format!("line {i}"));
    }
    writer.close_stdin();
    assert!(writer.wait_exit().success(), "{}", writer.stderr_text());
    assert!(
        !writer.stderr_text().contains("rate_limited"),
        "{}",
        writer.stderr_text()
    );
    let shown = texts(&writer.stdout_lines());
    assert_eq!(shown.len(), 100, "every line stored and shown once");
    assert_eq!(shown[99], "[lobby] bulk: line 100");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message that would drive the reader's terminal: retitle the window, erase the line, return
/// to its start.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2Kgone\rX";
/// How the terminal client shows it.
const HOSTILE_SHOWN: &str = r"\x1b]0;pwned\x07\x1b[2Kgone\rX";

#[tokio::test]
async fn control_characters_in_messages_are_shown_escaped_never_sent_to_the_terminal() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-ansi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let reader = client(&url, "reader", &[]);
    reader.wait_stderr("* joined lobby");
    let json_reader = client(&url, "jq", &["--json"]);
    json_reader.wait_stderr("* joined lobby");
    let mut cmd = nanachat();
    cmd.args(["connect", "--raw", &url]);
    let raw_reader = Proc::spawn_with_stdin("connect --raw", cmd, true);
    raw_reader.wait_stdout("joined", |l| {
        l.iter().any(|(_, t)| t.contains("you joined lobby"))
    });

    let mut talker = Talker::new(&url, "talker").await;
    talker.say_all([HOSTILE.to_owned()]).await;

    let expected = format!("[lobby] talker: {HOSTILE_SHOWN}");
    reader.wait_stdout("the message", |l| l.iter().any(|(_, t)| *t == expected));
    raw_reader.wait_stdout("the message", |l| {
        l.iter().any(|(_, t)| t.contains(HOSTILE_SHOWN))
    });
    json_reader.wait_stdout("the message", |l| !l.is_empty());
    for proc in [&reader, &raw_reader, &json_reader] {
        for (_, line) in proc.stdout_lines() {
            assert!(
                !line.contains(['\x1b', '\x07', '\r']),
                "{}: raw control character in {line:?}",
                proc.name
            );
        }
    }
    // --json prints the protocol's object, escaped by JSON itself: the text is intact.
    let object: Value = serde_json::from_str(&json_reader.stdout_lines()[0].1).unwrap();
    assert_eq!(object["text"], HOSTILE);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn raw_mode_at_the_end_of_input_prints_what_comes_back_before_the_close() {
    let mut cmd = nanachat();
    cmd.args(["echo", "--addr", "127.0.0.1:0"]);
    let echo = Proc::spawn("nanachat echo", cmd);
    let url = echo.listening_url();
    // Many times: the echoes race the close (they used to be dropped by both sides).
    for _ in 0..10 {
        let mut cmd = nanachat();
        cmd.args(["connect", "--raw", &url]);
        let mut client = Proc::spawn_with_stdin("connect --raw", cmd, true);
        client.write_line("a");
        client.write_line("b");
        client.close_stdin();
        assert!(client.wait_exit().success(), "{}", client.stderr_text());
        assert_eq!(texts(&client.stdout_lines()), ["a", "b"]);
    }
}

/// A `nanachat.v1` server played by the test: answers `hello` and `join`, then acks the one
/// `say` and only after the ack delivers it; then waits for the client's close.
async fn ack_then_deliver(listener: tokio::net::TcpListener) -> Vec<Value> {
    use nanachat::protocol::{ChatMessage, Limits, ServerMsg};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let (tcp, _) = within("accept", listener.accept()).await.unwrap();
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    let with_protocol = |_: &Request, mut response: Response| {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "nanachat.v1".parse().unwrap());
        Ok(response)
    };
    let mut ws = within(
        "handshake",
        tokio_tungstenite::accept_hdr_async(tcp, with_protocol),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    loop {
        let Some(Ok(msg)) = within("client message", ws.next()).await else {
            return got;
        };
        let Message::Text(text) = msg else {
            continue; // the close (answered by tungstenite), pings
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        got.push(v.clone());
        let replies = match v["type"].as_str().unwrap() {
            "hello" => vec![
                ServerMsg::Welcome {
                    nick: "late".into(),
                    limits: Limits {
                        max_message_bytes: 65536,
                        max_text_chars: 4000,
                        rate_per_sec: 100,
                        rate_burst: 100,
                        max_rooms: 32,
                        heartbeat_ms: 30_000,
                    },
                    exp: None,
                }
                .to_json(),
            ],
            "join" => vec![
                json!({"type": "joined", "room": "lobby", "epoch": 1, "last_seq": 0, "first_seq": 1})
                    .to_string(),
            ],
            "say" => vec![
                ServerMsg::Ack {
                    cid: v["cid"].as_str().unwrap().into(),
                    room: "lobby".into(),
                    seq: 1,
                    duplicate: false,
                }
                .to_json(),
                ServerMsg::Message(ChatMessage::said("lobby", 1, "late", v["text"].as_str().unwrap(), 1_764_000_000_000))
                .to_json(),
            ],
            _ => vec![],
        };
        for reply in replies {
            ws.send(Message::text(reply)).await.unwrap();
        }
    }
}

#[tokio::test]
async fn json_mode_at_the_end_of_input_prints_what_arrives_after_the_last_ack() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(ack_then_deliver(listener));
    let mut client = client(&url, "late", &["--json"]);
    client.write_line("said just before the end");
    client.close_stdin();
    let status = tokio::task::spawn_blocking(move || (client.wait_exit(), client))
        .await
        .unwrap();
    let (status, client) = status;
    assert!(status.success(), "{}", client.stderr_text());
    let lines = texts(&client.stdout_lines());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let object: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(object["type"], "message");
    assert_eq!(object["text"], "said just before the end");
    let got = within("server", server).await.unwrap();
    assert_eq!(got.last().unwrap()["type"], "say", "{got:?}");
}

// ---- tokens that expire on an open connection -------------------------------------------------
//
// The client's side, against a server played by the test (these pass on their own), then
// against the real server (those need the server's side of token refresh: `--token-grace`,
// `token_expired`, `refresh`, close 4003).

/// What the scripted server does in answer to one client message.
enum Act {
    Send(Value),
    Close(u16, &'static str),
}

/// Every client message the scripted server got: the connection's number (0, 1, …) and the
/// message.
type Got = std::sync::Arc<std::sync::Mutex<Vec<(usize, Value)>>>;

/// A `nanachat.v1` server played by the test: accepts connections one after another and
/// answers each client message with what `script` says (given the connection's number).
async fn scripted_server(
    listener: tokio::net::TcpListener,
    got: Got,
    mut script: impl FnMut(usize, &Value) -> Vec<Act> + Send + 'static,
) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    for n in 0.. {
        // No timeout: the test ends this task when it is done with it.
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        #[allow(clippy::result_large_err)] // tungstenite's callback type
        let with_protocol = |_: &Request, mut response: Response| {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "nanachat.v1".parse().unwrap());
            Ok(response)
        };
        let mut ws = within(
            "handshake",
            tokio_tungstenite::accept_hdr_async(tcp, with_protocol),
        )
        .await
        .unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else {
                continue; // the close (answered by tungstenite), pings
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            got.lock().unwrap().push((n, v.clone()));
            for act in script(n, &v) {
                let _ = match act {
                    Act::Send(reply) => ws.send(Message::text(reply.to_string())).await,
                    Act::Close(code, reason) => {
                        ws.close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        }))
                        .await
                    }
                };
            }
        }
    }
}

/// The scripted server's usual answers: `welcome` (with an `exp`) to `hello`, `joined` to
/// `join`, an ack and the message to `say`.
fn usual(v: &Value) -> Vec<Act> {
    match v["type"].as_str().unwrap() {
        "hello" => vec![Act::Send(json!({
            "type": "welcome", "nick": v["nick"], "exp": 1_764_000_000u64,
            "limits": {"max_message_bytes": 65536, "max_text_chars": 4000, "rate_per_sec": 100,
                       "rate_burst": 100, "max_rooms": 32, "heartbeat_ms": 30_000},
        }))],
        "join" => vec![Act::Send(
            json!({"type": "joined", "room": v["room"], "epoch": 1, "last_seq": 0, "first_seq": 1}),
        )],
        "say" => vec![
            Act::Send(json!({"type": "ack", "cid": v["cid"], "room": v["room"], "seq": 1})),
            Act::Send(
                json!({"type": "message", "room": v["room"], "seq": 1, "from": "tokie",
                             "text": v["text"], "time": 1_764_000_000_000u64}),
            ),
        ],
        _ => vec![],
    }
}

fn token_expired(cid: &Value) -> Act {
    Act::Send(json!({"type": "error", "code": "token_expired", "cid": cid,
                     "message": "your token expired: send refresh with a fresh one within 30s"}))
}

/// A scratch directory with a token file holding `token`.
fn token_dir(name: &str, token: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    (dir, file)
}

/// Waits (at most [`common::WAIT`]) until the scripted server got what `done` looks for.
fn wait_got(got: &Got, what: &str, done: impl Fn(&[(usize, Value)]) -> bool) {
    let deadline = std::time::Instant::now() + common::WAIT;
    while !done(&got.lock().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; got {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn of_type<'a>(got: &'a [(usize, Value)], kind: &str) -> Vec<&'a (usize, Value)> {
    got.iter().filter(|(_, v)| v["type"] == kind).collect()
}

/// The client under test on the scripted server, with `--token-file`: says one line, its input
/// ended.
async fn scripted(
    name: &str,
    file: &Path,
    script: impl FnMut(usize, &Value) -> Vec<Act> + Send + 'static,
) -> (Proc, Got, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let got = Got::default();
    let server = tokio::spawn(scripted_server(listener, got.clone(), script));
    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--token-file"])
        .arg(file)
        .env_remove("NANACHAT_NICK")
        .env_remove("NANACHAT_TOKEN");
    let mut client = Proc::spawn_with_stdin(name, cmd, true);
    client.write_line("said as the token expires");
    client.close_stdin();
    (client, got, server)
}

/// A token whose `sub` is `tokie` (unsigned: the scripted server does not check it).
const TOKIE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ0b2tpZSJ9.c2ln";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn told_token_expired_the_client_refreshes_from_its_file_and_sends_the_refused_line_again() {
    let (dir, file) = token_dir("refresh", TOKIE);
    let fresh_file = file.clone();
    let mut refused = false;
    let (mut client, got, server) = scripted("refresh", &file, move |_, v| {
        if v["type"] == "say" && !refused {
            // The token ran out; whatever keeps the file fresh has written a new one.
            refused = true;
            std::fs::write(&fresh_file, "fresh-token\n").unwrap();
            return vec![token_expired(&v["cid"])];
        }
        if v["type"] == "refresh" {
            return vec![Act::Send(
                json!({"type": "refreshed", "exp": 1_764_003_600u64}),
            )];
        }
        usual(v)
    })
    .await;
    let (status, client) = tokio::task::spawn_blocking(move || (client.wait_exit(), client))
        .await
        .unwrap();
    assert!(status.success(), "{}", client.stderr_text());
    server.abort();
    let got = got.lock().unwrap().clone();
    let types: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    // (`inbox`: the client asks for the direct messages it has not seen, at every connect.)
    assert_eq!(
        types,
        ["hello", "join", "inbox", "say", "refresh", "say"],
        "{got:?}"
    );
    // The nick is the token's, read from the file at start.
    assert_eq!(got[0].1["nick"], "tokie");
    assert_eq!(got[0].1["token"], TOKIE);
    assert_eq!(got[4].1["token"], "fresh-token");
    assert_eq!(got[5].1["cid"], got[3].1["cid"], "sent again with its cid");
    assert_eq!(got[5].1["text"], "said as the token expires");
    assert!(got.iter().all(|(n, _)| *n == 0), "one connection: {got:?}");
    assert_eq!(
        texts(&client.stdout_lines()),
        ["[lobby] tokie: said as the token expires"]
    );
    let stderr = client.stderr_text();
    assert!(stderr.contains("* token refreshed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_still_holding_the_expired_token_is_read_again_until_it_changes() {
    let (dir, file) = token_dir("stale", TOKIE);
    let mut refused = false;
    let (mut client, got, server) = scripted("stale", &file, move |_, v| {
        if v["type"] == "say" && !refused {
            refused = true;
            return vec![token_expired(&v["cid"])];
        }
        if v["type"] == "refresh" {
            return vec![Act::Send(json!({"type": "refreshed"}))];
        }
        usual(v)
    })
    .await;
    let notice = client.wait_stderr("token expired; put a fresh one in");
    assert!(notice.contains("nanachat token --sub tokie"), "{notice}");
    assert!(of_type(&got.lock().unwrap(), "refresh").is_empty());
    std::fs::write(&file, "written later\n").unwrap();
    wait_got(&got, "the refresh", |got| {
        !of_type(got, "refresh").is_empty()
    });
    let (status, client) = tokio::task::spawn_blocking(move || (client.wait_exit(), client))
        .await
        .unwrap();
    assert!(status.success(), "{}", client.stderr_text());
    server.abort();
    let got = got.lock().unwrap().clone();
    let refreshes = of_type(&got, "refresh");
    assert_eq!(refreshes.len(), 1, "{got:?}");
    assert_eq!(refreshes[0].1["token"], "written later");
    let says = of_type(&got, "say");
    assert_eq!(says.len(), 2, "{got:?}");
    assert_eq!(says[0].1["cid"], says[1].1["cid"]);
    let stderr = client.stderr_text();
    assert_eq!(
        stderr.matches("put a fresh one").count(),
        1,
        "one notice: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_with_4003_the_client_reconnects_with_a_new_token_from_its_file() {
    let (dir, file) = token_dir("reconnect", TOKIE);
    let fresh_file = file.clone();
    let (mut client, got, server) = scripted("reconnect", &file, move |n, v| {
        if n == 0 && v["type"] == "say" {
            // The secret was rotated (SIGHUP) and a new token written.
            std::fs::write(&fresh_file, "after rotation\n").unwrap();
            return vec![Act::Close(
                4003,
                "token no longer valid: bad token signature",
            )];
        }
        usual(v)
    })
    .await;
    let (status, client) = tokio::task::spawn_blocking(move || (client.wait_exit(), client))
        .await
        .unwrap();
    assert!(status.success(), "{}", client.stderr_text());
    server.abort();
    let got = got.lock().unwrap().clone();
    let hellos = of_type(&got, "hello");
    assert_eq!(hellos.len(), 2, "{got:?}");
    assert_eq!(hellos[1].0, 1, "on a second connection");
    assert_eq!(hellos[1].1["token"], "after rotation");
    let says = of_type(&got, "say");
    assert_eq!(says.len(), 2, "{got:?}");
    assert_eq!((says[0].0, says[1].0), (0, 1));
    assert_eq!(says[0].1["cid"], says[1].1["cid"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_with_4003_and_no_new_token_the_client_exits_3_saying_how_to_get_one() {
    for with_file in [true, false] {
        let (dir, file) = token_dir(&format!("ended-{with_file}"), TOKIE);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let got = Got::default();
        let server = tokio::spawn(scripted_server(listener, got.clone(), |_, v| {
            if v["type"] == "say" {
                return vec![token_expired(&v["cid"]), Act::Close(4003, "token expired")];
            }
            usual(v)
        }));
        let mut cmd = nanachat();
        cmd.args(["connect", &url]).env_remove("NANACHAT_TOKEN");
        if with_file {
            cmd.arg("--token-file").arg(&file);
        } else {
            cmd.args(["--token", TOKIE]);
        }
        let mut client = Proc::spawn_with_stdin("ended", cmd, true);
        // Input stays open: the client ends without waiting for it.
        client.write_line("never stored");
        let (status, client) = tokio::task::spawn_blocking(move || (client.wait_exit(), client))
            .await
            .unwrap();
        server.abort();
        let stderr = client.stderr_text();
        assert_eq!(status.code(), Some(3), "{with_file}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("nanachat:"))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("token expired"), "{stderr}");
        assert!(errors[0].contains("nanachat token --sub tokie"), "{stderr}");
        if with_file {
            assert!(errors[0].contains(&file.display().to_string()), "{stderr}");
            assert!(errors[0].contains("put a fresh one there"), "{stderr}");
        } else {
            // Told when it expired that a --token cannot be renewed, and for how long the server
            // waits (its own words).
            assert!(stderr.contains("cannot be renewed"), "{stderr}");
            assert!(stderr.contains("within 30s"), "{stderr}");
        }
        assert_eq!(of_type(&got.lock().unwrap(), "refresh").len(), 0);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn token_and_token_file_together_are_a_config_error() {
    let (dir, file) = token_dir("both", TOKIE);
    for args in [
        vec![
            "--token".to_owned(),
            TOKIE.to_owned(),
            "--token-file".to_owned(),
            file.display().to_string(),
        ],
        vec![
            "--token-file".to_owned(),
            dir.join("missing").display().to_string(),
        ],
    ] {
        let out = nanachat()
            .args(["connect", "ws://127.0.0.1:1", "--nick", "x"])
            .args(&args)
            .env_remove("NANACHAT_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("token"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the same against the real server ----------------------------------------------------------
//
// NEEDS THE SERVER SIDE of token refresh (`serve --token-grace`, `token_expired` at `exp`,
// `refresh`/`refreshed`, close 4003): these fail until it is merged.

/// A server that wants tokens, with this grace, and a way to mint them.
struct AuthServer {
    dir: std::path::PathBuf,
    secret: std::path::PathBuf,
    url: String,
    _server: Proc,
}

impl AuthServer {
    fn start(name: &str, grace: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("nanachat-connect-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        common::write_secret(&secret, "a connect test secret, long enough\n");
        let secret_arg = secret.display().to_string();
        let server = common::serve_child_with(
            &dir.join("data"),
            "127.0.0.1:0",
            1000,
            &["--auth-secret-file", &secret_arg, "--token-grace", grace],
        );
        let url = server.listening_url();
        Self {
            dir,
            secret,
            url,
            _server: server,
        }
    }

    /// `nanachat token --sub NICK --ttl TTL`.
    fn mint(&self, nick: &str, ttl: &str) -> String {
        let out = nanachat()
            .args(["token", "--sub", nick, "--ttl", ttl, "--auth-secret-file"])
            .arg(&self.secret)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl AuthServer {
    /// `connect --token-file` as `ren`, with a token of 2 s in the file: returned once the
    /// server has said it expired (the file still holds that token).
    fn expiring_client(&self) -> (std::path::PathBuf, Proc) {
        let file = self.dir.join("token");
        std::fs::write(&file, self.mint("ren", "2s")).unwrap();
        let mut cmd = nanachat();
        cmd.args(["connect", &self.url, "--token-file"]).arg(&file);
        let client = Proc::spawn_with_stdin("ren", cmd, true);
        client.wait_stderr("* joined lobby");
        client.wait_stderr("token expired; put a fresh one in");
        (file, client)
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn real_server_a_token_file_renewed_during_the_grace_keeps_the_client_in() {
    let server = AuthServer::start("real-refresh", "30s");
    let (file, mut client) = server.expiring_client();
    client.write_line("said during the grace");
    std::fs::write(&file, server.mint("ren", "1h")).unwrap();
    client.wait_stderr("* token refreshed");
    client.wait_stdout("the line, stored", |l| {
        l.iter()
            .any(|(_, t)| t == "[lobby] ren: said during the grace")
    });
    client.close_stdin();
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    assert_eq!(
        texts(&client.stdout_lines()),
        ["[lobby] ren: said during the grace"]
    );
}

/// From an attack on the docs: when the grace ended (4003) and the file held a new token, the
/// client reconnected into no room — the server had told it `left` for each room as it cleaned
/// up the connection — and the line waiting was refused `not_joined`. A connection the server
/// ends is told nothing of its rooms: the client rejoins them and sends the line.
#[test]
fn real_server_a_token_that_ended_with_a_new_one_in_the_file_rejoins_and_sends_the_line() {
    let server = AuthServer::start("real-ended-renewed", "1s");
    let (file, mut client) = server.expiring_client();
    client.write_line("said as it ended");
    // In the file now, but read only after the grace (1 s) has ended the connection.
    std::fs::write(&file, server.mint("ren", "1h")).unwrap();
    client.wait_stderr("4003");
    client.wait_stdout("the line, stored", |l| {
        l.iter().any(|(_, t)| t == "[lobby] ren: said as it ended")
    });
    client.close_stdin();
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    let stderr = client.stderr_text();
    assert!(
        !stderr.contains("not_joined") && !stderr.contains("left lobby"),
        "{stderr}"
    );
}

#[test]
fn real_server_a_token_that_ends_without_a_new_one_ends_the_client_with_exit_3() {
    let server = AuthServer::start("real-ended", "1s");
    let file = server.dir.join("token");
    std::fs::write(&file, server.mint("ended", "2s")).unwrap();
    for with_file in [true, false] {
        let mut cmd = nanachat();
        cmd.args(["connect", &server.url])
            .env_remove("NANACHAT_TOKEN");
        if with_file {
            cmd.arg("--token-file").arg(&file);
        } else {
            cmd.args(["--token", &server.mint("ended", "2s")]);
        }
        // Input stays open: only the server ends this client.
        let mut client = Proc::spawn_with_stdin("ended", cmd, true);
        client.wait_stderr("* joined lobby");
        let status = client.wait_exit();
        let stderr = client.stderr_text();
        assert_eq!(status.code(), Some(3), "{with_file}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("nanachat:"))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("4003"), "{stderr}");
        assert!(errors[0].contains("nanachat token --sub ended"), "{stderr}");
    }
}

/// `nick` (with a key of its own, so that it stays its) sends nana a direct message, acked.
async fn dm_from(url: &str, nick: &str, text: &str, cid: &str) {
    let mut ws = common::protocol_peer(url).await;
    for msg in [
        json!({"type": "hello", "nick": nick, "key": format!("{nick}'s key")}),
        json!({"type": "dm", "to": "nana", "text": text, "cid": cid}),
    ] {
        ws.send(Message::text(msg.to_string())).await.unwrap();
    }
    loop {
        match within("the dm's ack", ws.next()).await {
            Some(Ok(Message::Text(t))) if t.contains("\"ack\"") => break,
            Some(Ok(Message::Text(t))) => assert!(!t.contains("\"error\""), "{t}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Issue 15 item 5: an open server binds a nick to the first key used with it, for good. So the
/// client keeps its key in a file (made at first use, readable by its owner only) and every
/// run is the same user; a client with another key is refused the nick.
#[tokio::test]
async fn the_client_keeps_its_key_so_its_nick_stays_its_own() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir.join("data"), "127.0.0.1:0");
    let url = server.listening_url();
    let key_file = dir.join("config").join("key");
    for run in ["the first run", "the second run"] {
        let mut cmd = nanachat();
        cmd.args(["connect", &url, "--nick", "keeper", "--key-file"])
            .arg(&key_file);
        common::connect_says(run, cmd, run);
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "keeper", "--no-reconnect"])
        .arg("--key-file")
        .arg(dir.join("another"));
    let mut other = Proc::spawn_with_stdin("connect with another key", cmd, true);
    other.close_stdin();
    assert_eq!(other.wait_exit().code(), Some(3), "{}", other.stderr_text());
    assert!(
        other.stderr_text().contains("bound to a key"),
        "{}",
        other.stderr_text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn under_a_terminal_messages_show_their_seq_and_reply_edit_react_delete_work() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let mut talker = Talker::new(&url, "talker").await;
    talker.say_all(["said before".to_owned()]).await; // #1

    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "typist"])
        .env("NO_COLOR", "1");
    let mut pty = rexpect::session::spawn_command(cmd, Some(10_000)).unwrap();
    pty.exp_string("joined lobby").unwrap();
    // /history shows each message with its seq, as live messages are.
    pty.send_line("/history").unwrap();
    pty.exp_string("#1 [lobby] talker: said before").unwrap();

    pty.send_line("/reply 1 an answer").unwrap(); // #2
    let m = talker.wait_for("an answer").await;
    assert_eq!((&m["seq"], &m["reply_to"]), (&json!(2), &json!(1)), "{m}");
    pty.exp_string("#2 [lobby] typist (re #1): an answer")
        .unwrap();

    pty.send_line("/edit 2 a better answer").unwrap(); // #3
    let e = talker.wait_type("edit").await;
    assert_eq!(
        (&e["target"], &e["text"]),
        (&json!(2), &json!("a better answer"))
    );
    pty.exp_string("* typist edited #2 in lobby: a better answer")
        .unwrap();

    pty.send_line("/react #1 👍").unwrap(); // #4
    let r = talker.wait_type("react").await;
    assert_eq!(
        (&r["target"], &r["emoji"], &r["on"]),
        (&json!(1), &json!("👍"), &json!(true))
    );
    pty.exp_string(&bytewise("* typist reacted 👍 to #1 in lobby"))
        .unwrap();
    // Refusals are shown as errors, saying which command they refuse.
    pty.send_line("/react 1 👍").unwrap();
    pty.exp_string("! nothing to change: that reaction is already so")
        .unwrap();
    pty.exp_string(&bytewise("(/react #1 👍)")).unwrap();
    pty.send_line("/delete 1").unwrap();
    pty.exp_string("! only its author or a moderator may change a message")
        .unwrap();
    pty.exp_string("(/delete #1)").unwrap();
    pty.send_line("/edit one two").unwrap();
    pty.exp_string("usage: /edit SEQ TEXT").unwrap();

    // What others do arrives as lines too.
    let react = json!({"type": "react", "room": "lobby", "seq": 2, "emoji": "🎉", "on": true, "cid": "t-react"});
    talker
        .ws
        .send(Message::text(react.to_string()))
        .await
        .unwrap(); // #5
    pty.exp_string(&bytewise("* talker reacted 🎉 to #2 in lobby"))
        .unwrap();

    pty.send_line("/unreact 1 👍").unwrap(); // #6
    pty.exp_string(&bytewise("* typist took back 👍 on #1 in lobby"))
        .unwrap();
    pty.send_line("/react 1 🔥").unwrap(); // #7
    pty.exp_string(&bytewise("* typist reacted 🔥 to #1 in lobby"))
        .unwrap();
    pty.send_line("/delete 2").unwrap(); // #8
    let d = talker.wait_type("delete").await;
    assert_eq!(d["target"], 2);
    pty.exp_string("* typist deleted #2 in lobby").unwrap();
    talker.say_all(["said after".to_owned()]).await; // #9
    pty.exp_string("#9 [lobby] talker: said after").unwrap();

    // History shows each message as it stands now.
    pty.send_line("/history").unwrap();
    pty.exp_string(&bytewise(
        "#1 [lobby] talker: said before [🔥 1; yours: 🔥]",
    ))
    .unwrap();
    pty.exp_string("#2 [lobby] typist (re #1): (deleted)")
        .unwrap();
    let history = talker.history().await;
    let first = &history["messages"][0];
    assert_eq!(first["reactions"], json!({"🔥": 1}), "{history}");
    pty.send_line("/help").unwrap();
    pty.exp_string("/reply SEQ TEXT, /edit SEQ TEXT, /delete SEQ, /react SEQ EMOJI")
        .unwrap();
    pty.send_line("/quit").unwrap();
    pty.exp_eof().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_and_reactions_are_sent_again_with_their_cids_after_a_lost_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let got = Got::default();
    // The first connection is lost before any of the three is acked; the second acks each.
    let script = |n: usize, v: &Value| match v["type"].as_str().unwrap() {
        "delete" if n == 0 => vec![Act::Close(1001, "going away")],
        "edit" | "react" | "delete" if n == 0 => vec![],
        "edit" | "react" | "delete" => vec![Act::Send(
            json!({"type": "ack", "cid": v["cid"], "room": v["room"], "seq": 9}),
        )],
        _ => usual(v),
    };
    let server = tokio::spawn(scripted_server(listener, got.clone(), script));
    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "retrier"])
        .env("NO_COLOR", "1");
    let seen = got.clone();
    let mut pty = tokio::task::spawn_blocking(move || {
        let mut pty = rexpect::session::spawn_command(cmd, Some(10_000)).unwrap();
        pty.exp_string("joined lobby").unwrap();
        // One at a time: the line editor drops what is typed ahead of its prompt.
        for (line, kind) in [
            ("/edit 1 new text", "edit"),
            ("/react 1 👍", "react"),
            ("/delete 1", "delete"),
        ] {
            pty.send_line(line).unwrap();
            wait_got(&seen, kind, |got| !of_type(got, kind).is_empty());
        }
        pty.exp_string("* reconnected").unwrap();
        pty
    })
    .await
    .unwrap();
    wait_got(&got, "the three sent again and acked", |got| {
        got.iter()
            .filter(|(n, v)| *n == 1 && v["type"] == "delete")
            .count()
            == 1
    });
    let got = got.lock().unwrap().clone();
    for kind in ["edit", "react", "delete"] {
        let sent = of_type(&got, kind);
        assert_eq!(
            sent.len(),
            2,
            "{kind} sent once on each connection: {got:?}"
        );
        assert_eq!((sent[0].0, sent[1].0), (0, 1));
        assert_eq!(
            sent[0].1, sent[1].1,
            "{kind} sent again as it was, with its cid"
        );
        assert!(!sent[0].1["cid"].as_str().unwrap().is_empty());
    }
    assert_eq!(of_type(&got, "edit")[0].1["text"], "new text");
    assert_eq!(of_type(&got, "react")[0].1["on"], true);
    let cids: std::collections::BTreeSet<&str> = ["edit", "react", "delete"]
        .iter()
        .map(|kind| of_type(&got, kind)[0].1["cid"].as_str().unwrap())
        .collect();
    assert_eq!(cids.len(), 3, "a cid each");
    tokio::task::spawn_blocking(move || {
        pty.send_line("/quit").unwrap();
        pty.exp_eof().unwrap();
    })
    .await
    .unwrap();
    server.abort();
}

/// From an attack on the docs: a direct message from someone new, sent while the client was
/// away — closed, or stalled while the server restarted — was never shown (its room was new to
/// the client, which only rejoined the rooms it knew). The client asks its inbox at every
/// connect and joins the direct-message rooms with messages it has not seen.
#[tokio::test(flavor = "multi_thread")]
async fn a_direct_message_sent_while_away_is_shown_on_the_next_connect() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-away-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let addr = url.trim_start_matches("ws://").to_owned();
    let dm = async |url: &str, text: &str, cid: &str| dm_from(url, "mochi", text, cid).await;
    // nana has a key (the test's key file): the server keeps what is sent to her.
    let mut nana = client(&url, "nana", &[]);
    nana.wait_stderr("joined lobby");
    nana.close_stdin();
    assert!(nana.wait_exit().success(), "{}", nana.stderr_text());
    dm(&url, "sent while you were out", "m1").await;
    let nana = client(&url, "nana", &[]);
    nana.wait_stdout("the dm sent while away", |l| {
        l.iter()
            .any(|(_, t)| t.ends_with("mochi: sent while you were out"))
    });
    // Stalled while the server restarts, and written to by the time it is back.
    nana.signal("STOP");
    server.kill();
    let server = serve(&dir, &addr);
    server.listening_url();
    dm(&url, "sent while you were stalled", "m2").await;
    nana.signal("CONT");
    nana.wait_stdout("the dm sent while stalled", |l| {
        l.iter()
            .any(|(_, t)| t.ends_with("mochi: sent while you were stalled"))
    });
    let shown = texts(&nana.stdout_lines());
    assert_eq!(
        shown.iter().filter(|t| t.contains("sent while")).count(),
        2,
        "each once: {shown:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// From an attack on the docs: Ctrl-D on an empty line while offline with a line unsent did
/// nothing — the client waited for the server to take the line, and read no key any more
/// (Ctrl-C, /quit, Ctrl-D all ignored) until the server came back. It quits at once, saying
/// what was not sent.
#[test]
fn under_a_terminal_ctrl_d_while_offline_quits_at_once_saying_what_was_not_sent() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-eof-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "leaver"])
        .env("NO_COLOR", "1");
    let mut pty = rexpect::session::spawn_command(cmd, Some(10_000)).unwrap();
    pty.exp_string("joined lobby").unwrap();
    server.kill();
    pty.exp_string("disconnected").unwrap();
    pty.send_line("never sent").unwrap();
    pty.exp_string("(sending)").unwrap();
    pty.send_control('d').unwrap();
    pty.exp_string("1 line(s) not sent").unwrap();
    pty.exp_eof().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (session 7, left undone): after connecting, the client caught up on direct
/// messages from the first page of its `inbox` only — an inbox longer than one frame left the
/// later DM rooms to `/inbox`. It pages through it: with a frame that holds a few rooms, every
/// DM sent while away is shown, each once.
#[tokio::test(flavor = "multi_thread")]
async fn an_inbox_longer_than_one_frame_is_caught_up_page_by_page() {
    let dir = std::env::temp_dir().join(format!("nanachat-connect-inbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 1 KiB frames: an inbox page holds about six rooms.
    let server =
        common::serve_child_with(&dir, "127.0.0.1:0", 1000, &["--max-message-bytes", "1KiB"]);
    let url = server.listening_url();
    // nana has a key (the test's key file): the server keeps what is sent to her.
    let mut nana = client(&url, "nana", &[]);
    nana.wait_stderr("joined lobby");
    nana.close_stdin();
    assert!(nana.wait_exit().success(), "{}", nana.stderr_text());
    let senders: Vec<String> = (1..=15).map(|i| format!("writer{i:02}")).collect();
    for nick in &senders {
        dm_from(&url, nick, &format!("from {nick}"), "m1").await;
    }
    // The inbox does not fit one frame (else this test shows nothing).
    let mut probe = common::protocol_peer(&url).await;
    let key = std::fs::read_to_string(common::test_key_file()).unwrap();
    for msg in [
        json!({"type": "hello", "nick": "nana", "key": key.trim()}),
        json!({"type": "inbox"}),
    ] {
        probe.send(Message::text(msg.to_string())).await.unwrap();
    }
    loop {
        match within("the inbox", probe.next()).await {
            Some(Ok(Message::Text(t))) if t.contains("\"inbox\"") => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let shown = v["rooms"].as_array().unwrap().len() as u64;
                assert!(shown < v["total"].as_u64().unwrap(), "one page: {v}");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    drop(probe);

    let nana = client(&url, "nana", &[]);
    nana.wait_stdout("every DM sent while away", |l| {
        senders.iter().all(|nick| {
            l.iter()
                .any(|(_, t)| t.ends_with(&format!("{nick}: from {nick}")))
        })
    });
    let shown = texts(&nana.stdout_lines());
    for nick in &senders {
        let n = shown
            .iter()
            .filter(|t| t.ends_with(&format!("{nick}: from {nick}")))
            .count();
        assert_eq!(n, 1, "{nick} once: {shown:?}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from an attack on the docs): the DM catch-up joined every conversation with unread
/// messages, and beyond the server's `--max-rooms` each got `! cannot join @nana+w5` (its raw
/// room name) and was never shown. It opens as many as fit, leaving one room free, and says the
/// rest in one line; a script names DM rooms `@w1` as a terminal does, never `@a+b`.
#[tokio::test(flavor = "multi_thread")]
async fn the_dm_catch_up_stops_at_the_servers_rooms_and_says_the_rest_in_one_line() {
    let dir =
        std::env::temp_dir().join(format!("nanachat-connect-maxrooms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = common::serve_child_with(&dir, "127.0.0.1:0", 1000, &["--max-rooms", "4"]);
    let url = server.listening_url();
    // nana has a key (the test's key file): the server keeps what is sent to her.
    let mut nana = client(&url, "nana", &[]);
    nana.wait_stderr("joined lobby");
    nana.close_stdin();
    assert!(nana.wait_exit().success(), "{}", nana.stderr_text());
    let senders: Vec<String> = (1..=6).map(|i| format!("w{i}")).collect();
    for nick in &senders {
        dm_from(&url, nick, &format!("from {nick}"), "m1").await;
    }

    // lobby, and 4 rooms at most: 2 conversations opened, one room left free, 4 said.
    let mut nana = client(&url, "nana", &[]);
    nana.wait_stderr("* 4 more conversations with unread messages: /inbox lists them");
    nana.wait_stdout("the two conversations opened", |l| l.len() >= 2);
    nana.close_stdin();
    assert!(nana.wait_exit().success(), "{}", nana.stderr_text());
    let stderr = nana.stderr_text();
    let stdout = texts(&nana.stdout_lines());
    assert!(!stderr.contains('!'), "no refusal: {stderr}");
    assert!(
        !stderr.contains('+') && !stdout.iter().any(|l| l.contains('+')),
        "{stderr}{stdout:?}"
    );
    assert_eq!(stderr.matches(" unread from @w").count(), 2, "{stderr}");
    assert_eq!(stdout.len(), 2, "{stdout:?}");
    for line in &stdout {
        let nick = line[2..].split(']').next().unwrap();
        assert_eq!(
            line,
            &format!("[@{nick}] {nick}: from {nick}"),
            "{stdout:?}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
