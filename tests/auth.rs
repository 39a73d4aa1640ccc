//! Token auth as users meet it: `nanachat serve --auth-secret-file`, tokens minted by
//! `nanachat token` (and by Python's standard library), checked at the upgrade and in `hello`,
//! rooms limited by the token, plain-text clients named by theirs.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Proc, nanachat, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "correct horse battery staple, thirty-two";

struct Setup {
    dir: std::path::PathBuf,
    server: Proc,
    url: String,
}

fn setup(name: &str) -> Setup {
    setup_with(name, &[])
}

/// [`setup`] with more options for `serve`.
fn setup_with(name: &str, options: &[&str]) -> Setup {
    let dir = std::env::temp_dir().join(format!("nanachat-auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    common::write_secret(&dir.join("secret"), &format!("{SECRET}\n"));
    let mut cmd = nanachat();
    cmd.args([
        "serve",
        "--memory",
        "--addr",
        "127.0.0.1:0",
        "--auth-secret-file",
    ])
    .arg(dir.join("secret"))
    .args(options);
    let server = Proc::spawn("nanachat serve --auth", cmd);
    let url = server.listening_url();
    Setup { dir, server, url }
}

fn mint(dir: &std::path::Path, args: &[&str]) -> String {
    let out = nanachat()
        .args(["token", "--auth-secret-file"])
        .arg(dir.join("secret"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Opens a `nanachat.v1` WebSocket, the token in the URL if given; the HTTP status on refusal.
async fn open(url: &str, token: Option<&str>) -> Result<common::Peer, (u16, String)> {
    let url = match token {
        Some(t) => format!("{url}/?token={t}"),
        None => url.to_owned(),
    };
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "nanachat.v1".parse().unwrap());
    match within("handshake", tokio_tungstenite::connect_async(request)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Err(other) => panic!("{other}"),
    }
}

async fn next_json(ws: &mut common::Peer) -> Value {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "tick" && v["type"] != "presence" {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn send(ws: &mut common::Peer, v: Value) {
    within("send", ws.send(Message::text(v.to_string())))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn only_valid_tokens_get_in_each_as_its_nick() {
    let s = setup("hello");
    s.server.wait_stderr("a valid token is required");
    let alice = mint(
        &s.dir,
        &["--sub", "alice", "--ttl", "1h", "--room", "lobby"],
    );

    // No token: a nanachat.v1 client may still bring one in hello, but cannot skip it.
    let mut ws = open(&s.url, None).await.unwrap();
    send(&mut ws, json!({"type": "hello", "nick": "alice"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "unauthorized");
    // Someone else's token.
    send(
        &mut ws,
        json!({"type": "hello", "nick": "mallory", "token": alice}),
    )
    .await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["code"], "unauthorized");
    assert!(
        err["message"].as_str().unwrap().contains("for alice"),
        "{err}"
    );
    // Its own: welcome, the listed room, not another.
    send(
        &mut ws,
        json!({"type": "hello", "nick": "alice", "token": alice}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    send(&mut ws, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "joined");
    send(&mut ws, json!({"type": "join", "room": "ops"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "forbidden");
    // A token's nick is its sub: `nick` cannot change it, and the session goes on.
    send(&mut ws, json!({"type": "nick", "nick": "mallory"})).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["code"], "unauthorized", "{err}");
    send(&mut ws, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "already_joined");

    // With the token in the URL: a second connection of alice, no key needed.
    let mut again = open(&s.url, Some(&alice)).await.unwrap();
    send(&mut again, json!({"type": "hello", "nick": "alice"})).await;
    assert_eq!(next_json(&mut again).await["type"], "welcome");

    // A token signed with another secret, or garbage, at the upgrade: 401 with the reason.
    let out = nanachat()
        .args([
            "token",
            "--sub",
            "alice",
            "--auth-secret",
            "another secret, long enough",
        ])
        .output()
        .unwrap();
    let forged = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, body) = open(&s.url, Some(&forged)).await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("signature"), "{body}");
    let (status, body) = open(&s.url, Some("nonsense")).await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("malformed"), "{body}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_and_tokenless_plain_clients_are_refused() {
    let s = setup("expiry");
    // Minted by another implementation: Python's standard library, already expired.
    let script = r#"
import base64, hashlib, hmac, json, sys
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bob", "exp": int(sys.argv[2])}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
"#;
    let python_token = |exp: u64| {
        let out = std::process::Command::new("python3")
            .args(["-c", script, SECRET, &exp.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let now = nanachat::auth::now_secs();
    let (status, body) = open(&s.url, Some(&python_token(now - 10)))
        .await
        .err()
        .unwrap();
    assert_eq!((status, body.trim()), (401, "token expired"));
    // The same implementation, not expired: in.
    let mut ws = open(&s.url, Some(&python_token(now + 600))).await.unwrap();
    send(&mut ws, json!({"type": "hello", "nick": "bob"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");

    // A plain-text client has no hello: without a token it is refused at the door...
    let plain = tokio_tungstenite::connect_async(s.url.clone()).await;
    match plain {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // ...and with one it is its token's nick.
    let carol = mint(&s.dir, &["--sub", "carol"]);
    let (mut plain, _) = within(
        "plain",
        tokio_tungstenite::connect_async(format!("{}/?token={carol}", s.url)),
    )
    .await
    .unwrap();
    let first = within("welcome", plain.next()).await.unwrap().unwrap();
    assert!(
        first.to_text().unwrap().contains("you are carol"),
        "{first:?}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Issue 15: a token's `sub` became a plain-text client's nick unchecked ("ad min", "",
/// 300 characters, RTL marks; `evil+victim` showed as "@evil" in the victim's room list).
#[tokio::test(flavor = "multi_thread")]
async fn a_token_whose_sub_is_not_a_nick_is_refused_at_the_upgrade_and_not_minted() {
    let s = setup("badsub");
    let auth = nanachat::auth::Auth::new(SECRET.as_bytes()).unwrap();
    let long = "x".repeat(300);
    let subs = [
        "ad min",
        "",
        &long,
        "\u{202e}nimda",
        "evil+victim",
        "ok\u{200f}",
    ];
    for sub in subs {
        let token = auth.mint(&nanachat::auth::Claims::for_nick(sub));
        // Plain-text (its nick would be the sub) and nanachat.v1 alike: 401 with the reason.
        match within(
            "plain",
            tokio_tungstenite::connect_async(format!("{}/?token={token}", s.url)),
        )
        .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 401, "{sub:?}");
            }
            other => panic!("{sub:?}: expected 401, got {:?}", other.map(|_| ())),
        }
        let (status, body) = open(&s.url, Some(&token)).await.err().unwrap();
        assert_eq!(status, 401, "{sub:?}");
        assert!(body.contains("not a nick"), "{sub:?}: {body}");
        // Nor is it minted: one line, exit 2.
        let out = nanachat()
            .args(["token", "--sub", sub, "--auth-secret", SECRET])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Issue 15: nicks are unique whatever their case, tokens included.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_spelling_of_an_online_nick_is_taken() {
    let s = setup("case");
    let lower = mint(&s.dir, &["--sub", "alice"]);
    let upper = mint(&s.dir, &["--sub", "Alice"]);
    let mut ws = open(&s.url, Some(&lower)).await.unwrap();
    send(&mut ws, json!({"type": "hello", "nick": "alice"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let mut other = open(&s.url, Some(&upper)).await.unwrap();
    send(&mut other, json!({"type": "hello", "nick": "Alice"})).await;
    assert_eq!(next_json(&mut other).await["code"], "nick_taken");
    // A plain-text client named by its token: closed, the nick taken.
    let (mut plain, _) = within(
        "plain",
        tokio_tungstenite::connect_async(format!("{}/?token={upper}", s.url)),
    )
    .await
    .unwrap();
    loop {
        match within("close", plain.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert!(frame.reason.contains("taken"), "{frame:?}");
                break;
            }
            Some(Ok(Message::Text(t))) => assert!(!t.contains("you are"), "{t}"),
            Some(Ok(_)) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    }
    // Another connection of alice herself is welcome.
    let mut again = open(&s.url, Some(&lower)).await.unwrap();
    send(&mut again, json!({"type": "hello", "nick": "alice"})).await;
    assert_eq!(next_json(&mut again).await["type"], "welcome");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn connect_takes_a_token_and_token_refuses_bad_input() {
    let s = setup("connect");
    let token = mint(&s.dir, &["--sub", "dave"]);
    let mut cmd = nanachat();
    cmd.args(["connect", &s.url, "--nick", "dave", "--token", &token]);
    common::connect_says("connect --token", cmd, "signed in");
    // Without it: refused by the server, exit 3.
    let mut cmd = nanachat();
    cmd.args(["connect", &s.url, "--nick", "dave", "--no-reconnect"]);
    let mut client = Proc::spawn_with_stdin("connect without token", cmd, true);
    client.close_stdin();
    assert_eq!(
        client.wait_exit().code(),
        Some(3),
        "{}",
        client.stderr_text()
    );

    for args in [
        &["token", "--sub", "x"][..],
        &["token", "--sub", "x", "--auth-secret", "short"][..],
        &["token", "--sub", "not a nick", "--auth-secret", SECRET][..],
    ] {
        let out = nanachat().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn an_open_server_says_so() {
    let mut cmd = nanachat();
    cmd.args(["serve", "--memory", "--addr", "127.0.0.1:0"]);
    let server = Proc::spawn("nanachat serve", cmd);
    server.wait_stderr("the server is open");
}

/// Like ssh with keys: a secret file others may read is refused, one line, exit 2, for `serve`
/// and `token` alike, and so are a webhook secret and an API key file. Fails on the code
/// before issue 15 (the server started), and for the last two before issue 19.
#[test]
fn a_secret_file_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("nanachat-auth-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = nanachat();
    cmd.args([
        "serve",
        "--memory",
        "--addr",
        "127.0.0.1:0",
        "--auth-secret-file",
    ])
    .arg(&secret);
    let mut server = Proc::spawn("serve with a 0644 secret", cmd);
    assert_eq!(
        server.wait_exit().code(),
        Some(2),
        "{}",
        server.stderr_text()
    );
    let stderr = server.stderr_text();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    let mut cmd = nanachat();
    cmd.args(["token", "--sub", "x", "--auth-secret-file"])
        .arg(&secret);
    let mut token = Proc::spawn("token with a 0644 secret", cmd);
    assert_eq!(token.wait_exit().code(), Some(2), "{}", token.stderr_text());

    // The same file, 16 characters or more on its first line, as a webhook secret and as API
    // keys: each refused alike, and the server starts once it is 0600.
    let data = dir.join("data");
    let hook = [
        "--webhook-url",
        "http://127.0.0.1:9/hook",
        "--webhook-secret-file",
    ];
    for (what, flags) in [
        ("webhook secret", &hook[..]),
        ("API key", &["--api-key-file"]),
    ] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let serve = |name| {
            let mut cmd = nanachat();
            cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
                .arg(&data)
                .args(flags)
                .arg(&secret);
            Proc::spawn(name, cmd)
        };
        let mut server = serve("serve with a 0644 file");
        assert_eq!(
            server.wait_exit().code(),
            Some(2),
            "{what}: {}",
            server.stderr_text()
        );
        let stderr = server.stderr_text();
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
        assert!(
            stderr.contains(what) && stderr.contains("0644") && stderr.contains("chmod 600"),
            "{what}: {stderr}"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        serve("serve with a 0600 file").listening_url();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token is client text, and a refused one's reason quotes its header's `alg`: a newline in
/// it must not start a line of the client's in the log. Fails on the code before issue 15
/// (a line starting with the forged text).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_cannot_write_lines_into_the_log() {
    let s = setup("inject");
    let b64 = data_encoding::BASE64URL_NOPAD;
    let header = br#"{"alg":"HS256\nFORGED INFO nanachat: admin signed in\u001b[2J","typ":"JWT"}"#;
    let token = format!(
        "{}.{}.{}",
        b64.encode(header),
        b64.encode(br#"{"sub":"x"}"#),
        b64.encode(b"sig")
    );
    let mut request = s.url.clone().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match within("handshake", tokio_tungstenite::connect_async(request)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    s.server.wait_stderr("FORGED");
    let stderr = s.server.stderr_text();
    assert!(
        !stderr.lines().any(|l| l.starts_with("FORGED")),
        "a forged line: {stderr}"
    );
    assert!(
        stderr.contains(r"HS256\nFORGED INFO nanachat: admin signed in\x1b[2J"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// RFC 9110 §11.1: the auth scheme is case-insensitive. Fails on the code before issue 15
/// (`bearer` was not read: 401 for want of a token).
#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let s = setup("scheme");
    let token = mint(&s.dir, &["--sub", "erin"]);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let mut request = s.url.clone().into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("{scheme}  {token}").parse().unwrap(),
        );
        let (mut plain, _) = within("handshake", tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|err| panic!("{scheme}: {err}"));
        let first = within("welcome", plain.next()).await.unwrap().unwrap();
        assert!(
            first.to_text().unwrap().contains("you are erin"),
            "{first:?}"
        );
        let _ = within("close", plain.close(None)).await;
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Says hello with `token` on a new connection and waits for `welcome`; returns it too.
async fn hello(url: &str, nick: &str, token: &str) -> (common::Peer, Value) {
    let mut ws = open(url, None).await.unwrap();
    send(
        &mut ws,
        json!({"type": "hello", "nick": nick, "token": token}),
    )
    .await;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// Issue 15: a connected client kept saying and joining after its token expired.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused_until_refreshed_and_closed_with_4003_after_the_grace() {
    let s = setup_with("refresh", &["--token-grace", "3s"]);
    let short = mint(&s.dir, &["--sub", "alice", "--ttl", "2s"]);
    let (mut alice, welcome) = hello(&s.url, "alice", &short).await;
    let exp = welcome["exp"].as_u64().expect("welcome carries exp");
    assert!(exp > nanachat::auth::now_secs() - 1, "{welcome}");
    send(&mut alice, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_json(&mut alice).await["type"], "joined");
    let bob_token = mint(&s.dir, &["--sub", "bob", "--ttl", "2s"]);
    let (mut bob, _) = hello(&s.url, "bob", &bob_token).await;

    // At exp: told once, unasked.
    let told = next_json(&mut alice).await;
    assert_eq!(told["code"], "token_expired", "{told}");
    assert!(
        told["message"].as_str().unwrap().contains("refresh"),
        "{told}"
    );
    // Then every request but refresh is refused, a say with its cid; nothing is stored.
    send(
        &mut alice,
        json!({"type": "say", "room": "lobby", "text": "late", "cid": "c1"}),
    )
    .await;
    let refused = next_json(&mut alice).await;
    assert_eq!(
        (&refused["code"], &refused["cid"]),
        (&json!("token_expired"), &json!("c1"))
    );
    send(&mut alice, json!({"type": "join", "room": "ops"})).await;
    assert_eq!(next_json(&mut alice).await["code"], "token_expired");
    // Someone else's token, or a forged one, changes nothing.
    let other = mint(&s.dir, &["--sub", "mallory", "--ttl", "1h"]);
    send(&mut alice, json!({"type": "refresh", "token": other})).await;
    let wrong = next_json(&mut alice).await;
    assert_eq!(wrong["code"], "unauthorized", "{wrong}");
    send(
        &mut alice,
        json!({"type": "say", "room": "lobby", "text": "late", "cid": "c1"}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await["code"], "token_expired");
    // A fresh token for alice: refreshed with its exp, and the say goes through, once.
    let fresh = mint(&s.dir, &["--sub", "alice", "--ttl", "1h"]);
    send(&mut alice, json!({"type": "refresh", "token": fresh})).await;
    let refreshed = next_json(&mut alice).await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert!(
        refreshed["exp"].as_u64().unwrap() > exp + 3000,
        "{refreshed}"
    );
    send(
        &mut alice,
        json!({"type": "say", "room": "lobby", "text": "late", "cid": "c1"}),
    )
    .await;
    // The ack and the message itself, in either order.
    let two = [next_json(&mut alice).await, next_json(&mut alice).await];
    let ack = two.iter().find(|v| v["type"] == "ack").expect("an ack");
    assert_eq!(ack["seq"], 1, "{two:?}");
    assert!(
        two.iter()
            .any(|v| v["type"] == "message" && v["text"] == "late"),
        "{two:?}"
    );

    // Bob never refreshes: told, then closed with 4003 once the grace is over.
    assert_eq!(next_json(&mut bob).await["code"], "token_expired");
    let close = common::close_frame(&mut bob).await;
    assert_eq!(u16::from(close.code), 4003, "{close:?}");
    assert!(close.reason.contains("token expired"), "{close:?}");
    // Alice, refreshed, is still there after bob's grace.
    send(&mut alice, json!({"type": "who", "room": "lobby"})).await;
    assert_eq!(next_json(&mut alice).await["type"], "members");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_that_lists_fewer_rooms_leaves_the_others() {
    let s = setup("narrow");
    let wide = mint(
        &s.dir,
        &["--sub", "alice", "--room", "lobby", "--room", "ops"],
    );
    let (mut alice, _) = hello(&s.url, "alice", &wide).await;
    for room in ["lobby", "ops"] {
        send(&mut alice, json!({"type": "join", "room": room})).await;
        assert_eq!(next_json(&mut alice).await["type"], "joined");
    }
    send(
        &mut alice,
        json!({"type": "dm", "to": "alice", "text": "note", "cid": "n1"}),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next_json(&mut alice).await["type"].clone());
    }
    let narrow = mint(&s.dir, &["--sub", "alice", "--room", "lobby"]);
    send(&mut alice, json!({"type": "refresh", "token": narrow})).await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"type": "left", "room": "ops"})
    );
    assert_eq!(next_json(&mut alice).await["type"], "refreshed");
    send(&mut alice, json!({"type": "join", "room": "ops"})).await;
    assert_eq!(next_json(&mut alice).await["code"], "forbidden");
    send(
        &mut alice,
        json!({"type": "say", "room": "lobby", "text": "hi", "cid": "c1"}),
    )
    .await;
    let two = [next_json(&mut alice).await, next_json(&mut alice).await];
    assert!(two.iter().any(|v| v["type"] == "ack"), "{two:?}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Issue 15: no token could be revoked. The secret file rotates: several secrets, re-read on
/// SIGHUP; connections whose token no longer verifies are closed with 4003.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_rotate_on_sighup_and_tokens_of_a_removed_secret_are_closed() {
    const NEW: &str = "the next secret, thirty-two bytes long";
    let s = setup("rotate");
    let old_token = mint(&s.dir, &["--sub", "alice"]);
    let (mut alice, _) = hello(&s.url, "alice", &old_token).await;
    let secret = s.dir.join("secret");

    // The new secret first, the old one kept: both verify, the new one signs.
    common::write_secret(&secret, &format!("{NEW}\n{SECRET}\n"));
    s.server.signal("HUP");
    s.server.wait_stderr("secrets re-read");
    let new_token = mint(&s.dir, &["--sub", "bob"]);
    let only_new = nanachat::auth::Auth::new(NEW.as_bytes()).unwrap();
    assert!(
        only_new.verify(&new_token, 0).is_ok(),
        "the first secret signs"
    );
    let (mut bob, _) = hello(&s.url, "bob", &new_token).await;
    send(&mut alice, json!({"type": "who", "room": "lobby"})).await;
    assert_eq!(next_json(&mut alice).await["code"], "not_joined");

    // A file others may read is not taken: the secrets in force stay, and the log says why.
    std::fs::write(&secret, format!("{NEW}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    s.server.signal("HUP");
    s.server.wait_stderr("cannot re-read the secrets");
    send(&mut alice, json!({"type": "who", "room": "lobby"})).await;
    assert_eq!(next_json(&mut alice).await["code"], "not_joined");

    // The old secret removed: alice's token no longer verifies and she is closed; bob stays.
    common::write_secret(&secret, &format!("{NEW}\n"));
    s.server.signal("HUP");
    let close = common::close_frame(&mut alice).await;
    assert_eq!(u16::from(close.code), 4003, "{close:?}");
    assert!(close.reason.contains("no longer valid"), "{close:?}");
    send(&mut bob, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_json(&mut bob).await["type"], "joined");
    let (status, _) = open(&s.url, Some(&old_token)).await.err().unwrap();
    assert_eq!(status, 401);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn nbf_iss_and_aud_are_honoured() {
    let s = setup_with(
        "claims",
        &[
            "--token-issuer",
            "https://auth.example.org",
            "--token-audience",
            "chat",
        ],
    );
    // `nanachat token` with the same settings writes them into the token.
    let good = nanachat()
        .args(["token", "--sub", "alice", "--auth-secret-file"])
        .arg(s.dir.join("secret"))
        .args([
            "--token-issuer",
            "https://auth.example.org",
            "--token-audience",
            "chat",
        ])
        .output()
        .unwrap();
    let good = String::from_utf8(good.stdout).unwrap().trim().to_owned();
    assert!(open(&s.url, Some(&good)).await.is_ok());
    let plain = mint(&s.dir, &["--sub", "alice"]);
    let (status, body) = open(&s.url, Some(&plain)).await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("issuer"), "{body}");
    let auth = nanachat::auth::Auth::new(SECRET.as_bytes()).unwrap();
    let later = nanachat::auth::Claims {
        nbf: Some(nanachat::auth::now_secs() + 3600),
        iss: Some("https://auth.example.org".into()),
        aud: Some(nanachat::auth::Audience::Many(vec![
            "web".into(),
            "chat".into(),
        ])),
        ..nanachat::auth::Claims::for_nick("alice")
    };
    let (status, body) = open(&s.url, Some(&auth.mint(&later))).await.err().unwrap();
    assert_eq!((status, body.trim()), (401, "token not valid yet (nbf)"));
    let now = nanachat::auth::Claims { nbf: None, ..later };
    assert!(open(&s.url, Some(&auth.mint(&now))).await.is_ok());
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_text_client_refreshes_with_slash_token() {
    let s = setup_with("plainrefresh", &["--token-grace", "30s"]);
    let short = mint(&s.dir, &["--sub", "carol", "--ttl", "1s"]);
    let (mut plain, _) = within(
        "plain",
        tokio_tungstenite::connect_async(format!("{}/?token={short}", s.url)),
    )
    .await
    .unwrap();
    let mut lines = Vec::new();
    let mut wait_for = async |plain: &mut common::Peer, needle: &str| loop {
        let msg = within(needle, plain.next()).await.unwrap().unwrap();
        if let Message::Text(t) = msg {
            lines.push(t.to_string());
            if t.contains(needle) {
                return;
            }
        }
    };
    wait_for(&mut plain, "! token_expired").await;
    plain.send(Message::text("still here?")).await.unwrap();
    wait_for(&mut plain, "! token_expired").await;
    let fresh = mint(&s.dir, &["--sub", "carol", "--ttl", "1h"]);
    plain
        .send(Message::text(format!("/token {fresh}")))
        .await
        .unwrap();
    wait_for(&mut plain, "* token refreshed").await;
    plain.send(Message::text("back")).await.unwrap();
    wait_for(&mut plain, "carol: back").await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// Issue 17: `nanachat token --moderator ROOM` (or `*`) writes the `mod` claim the server
/// reads; a malformed room is refused with one line, exit 2.
#[test]
fn token_mints_the_moderator_claim() {
    let dir = std::env::temp_dir().join(format!("nanachat-auth-mod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    common::write_secret(&dir.join("secret"), &format!("{SECRET}\n"));
    let auth = nanachat::auth::Auth::new(SECRET.as_bytes()).unwrap();
    let now = nanachat::auth::now_secs();
    let some = mint(
        &dir,
        &[
            "--sub",
            "boss",
            "--moderator",
            "lobby",
            "--moderator",
            "ops",
        ],
    );
    let claims = auth.verify(&some, now).unwrap();
    assert!(claims.moderates("lobby") && claims.moderates("ops") && !claims.moderates("x"));
    let all = auth.verify(&mint(&dir, &["--sub", "boss", "--moderator", "*"]), now);
    assert!(all.unwrap().moderates("anywhere"));
    let plain = auth.verify(&mint(&dir, &["--sub", "pleb"]), now).unwrap();
    assert!(!plain.moderates("lobby"));
    let out = nanachat()
        .args([
            "token",
            "--sub",
            "boss",
            "--moderator",
            "a room",
            "--auth-secret-file",
        ])
        .arg(dir.join("secret"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--moderator") && err.lines().count() == 1,
        "{err}"
    );
}
