//! The binary's command line: bad input gets one line and exit code 2, a failure at run time one
//! line and exit code 1 (never a panic), and SIGTERM a graceful stop with exit code 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::process::Output;

use common::{Proc, nanachat};

fn run(args: &[&str]) -> Output {
    let mut cmd = nanachat();
    cmd.args(args).env("RUST_LOG", "warn");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Exactly one error line, starting `nanachat:` (clap's own usage errors start `error:`), no panic.
fn one_error_line(out: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nanachat:") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expect), "{stderr}");
}

#[test]
fn bad_url_is_a_usage_error() {
    for url in [
        "localhost:8765",
        "http://localhost:8765",
        "ftp://localhost:8765",
        "ws://",
    ] {
        let out = run(&["demo", "client", url]);
        assert_eq!(out.status.code(), Some(2), "{url}");
        one_error_line(&out, "bad URL");
    }
}

#[test]
fn bad_address_is_a_usage_error() {
    for addr in ["nonsense", "127.0.0.1", "127.0.0.1:99999", ":80"] {
        let out = run(&["echo", "--addr", addr]);
        assert_eq!(out.status.code(), Some(2), "{addr}");
        one_error_line(&out, "bad address");
    }
}

#[test]
fn bad_option_values_are_usage_errors() {
    let out = run(&["demo", "client", "--every", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out, "soon");
    let out = run(&["demo", "client", "--every", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out, "--every");
    let out = run(&["echo", "--idle-timeout", "1s", "--ping-interval", "5s"]);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out, "idle timeout");
    let out = run(&["echo", "--max-message-bytes", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out, "lots");
    // A count that must be above 0 names its flag (issue 19: "max text chars and max rooms
    // must be above 0" named neither).
    for flag in ["--max-text-chars", "--max-rooms", "--rate", "--burst"] {
        let out = run(&["serve", "--memory", "--addr", "127.0.0.1:0", flag, "0"]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        one_error_line(&out, &format!("{flag} must be above 0"));
    }
}

#[test]
fn address_in_use_fails_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["echo", "--addr", &addr]);
    assert_eq!(out.status.code(), Some(1));
    one_error_line(&out, "cannot listen");
}

#[test]
fn connection_refused_fails_with_one_line() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = run(&[
        "demo",
        "client",
        &format!("ws://127.0.0.1:{port}"),
        "--tick",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    one_error_line(&out, "cannot connect");
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let mut cmd = nanachat();
    cmd.args(["echo", "--addr", "127.0.0.1:0"]);
    let mut server = Proc::spawn("nanachat echo", cmd);
    let url = server.listening_url();
    let mut client = nanachat();
    client.args(["demo", "client", &url, "--tick", "0", "--every", "0.1s"]);
    let mut client = Proc::spawn("nanachat demo client", client);
    client.wait_stdout("an echo", |lines| {
        lines.iter().any(|(_, l)| l.starts_with("< !Client Send! "))
    });
    server.terminate();
    assert!(server.wait_exit().success(), "{}", server.stderr_text());
    // The client was told the server is going away, and ends cleanly.
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    assert!(
        client.stderr_text().contains("code=1001"),
        "{}",
        client.stderr_text()
    );
}

/// `nanachat serve` on a free port with history in memory, and `options`.
fn memory_server(options: &[&str]) -> Proc {
    let mut cmd = nanachat();
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--memory"])
        .args(options);
    Proc::spawn("nanachat serve", cmd)
}

/// `nanachat connect ARGS` in scripting mode saying `lines`; returns it once it exited.
fn connect(args: &[&str], lines: &[&str]) -> Proc {
    let mut cmd = nanachat();
    cmd.arg("connect").args(args).env("USER", "someone-else");
    let mut client = Proc::spawn_with_stdin("nanachat connect", cmd, true);
    for line in lines {
        client.write_line(line);
    }
    client.close_stdin();
    client
}

/// What a user is told, and the exit code, when a first connect goes wrong.
fn said(mut client: Proc) -> (Option<i32>, String) {
    let code = client.wait_exit().code();
    (code, client.stderr_text())
}

#[test]
fn a_token_server_says_how_to_get_a_token_which_one_it_refused_and_a_token_alone_names_the_nick() {
    let dir = std::env::temp_dir().join(format!("nanachat-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    common::write_secret(&secret, "a secret of at least sixteen bytes\n");
    let secret = secret.to_str().unwrap();
    let server = memory_server(&["--auth-secret-file", secret]);
    let url = server.listening_url();

    // No token: a sentence that says what to do, not the protocol's words.
    let (code, stderr) = said(connect(&[&url, "--nick", "alice"], &["hi"]));
    assert_eq!(code, Some(3), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("nanachat:")).unwrap();
    assert!(line.contains("this server needs a token"), "{stderr}");
    assert!(line.contains("ask its operator"), "{stderr}");
    assert!(line.contains("nanachat token --sub alice"), "{stderr}");
    assert!(line.contains("--token"), "{stderr}");
    assert!(!line.contains("hello"), "protocol words: {stderr}");

    // A token and no --nick: the token's nick, whatever $USER says.
    let token = run(&["token", "--sub", "alice", "--auth-secret-file", secret]);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap();
    let mut client = connect(&[&url, "--token", token.trim()], &["hello from alice"]);
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    let out = client.stdout_lines();
    assert!(
        out.iter()
            .any(|(_, l)| l.contains("alice: hello from alice")),
        "{out:?}"
    );

    // A token the server does not take: which one, why, and where a good one comes from.
    let other = dir.join("other-secret");
    common::write_secret(&other, "another secret, not the server's\n");
    let forged = run(&[
        "token",
        "--sub",
        "alice",
        "--auth-secret-file",
        other.to_str().unwrap(),
    ]);
    let forged = String::from_utf8(forged.stdout).unwrap();
    let (code, stderr) = said(connect(&[&url, "--token", forged.trim()], &["hi"]));
    assert_eq!(code, Some(3), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("nanachat:")).unwrap();
    assert!(
        line.contains("the server refused the token given with --token"),
        "{stderr}"
    );
    assert!(line.contains("ask its operator"), "{stderr}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wss_to_a_plain_server_says_it_does_not_speak_tls_and_which_url_to_try() {
    let server = memory_server(&[]);
    let url = server.listening_url();
    let wss = url.replacen("ws://", "wss://", 1);
    let (code, stderr) = said(connect(&[&wss, "--nick", "nana"], &["hi"]));
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("nanachat:")).unwrap();
    assert!(line.contains("does not speak TLS here"), "{stderr}");
    assert!(line.contains(&format!("try {url}")), "{stderr}");
    assert!(!line.contains("InvalidContentType"), "{stderr}");
}

#[test]
fn a_data_dir_that_is_a_file_is_said_to_be_a_file() {
    let file = std::env::temp_dir().join(format!("nanachat-cli-file-{}", std::process::id()));
    std::fs::write(&file, "not a directory\n").unwrap();
    let shown = file.to_str().unwrap();
    for dir in [shown.to_owned(), format!("{shown}/history")] {
        let out = run(&["serve", "--addr", "127.0.0.1:0", "--data-dir", &dir]);
        assert_eq!(out.status.code(), Some(2), "{dir}");
        one_error_line(&out, "is a file, not a directory");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("File exists"));
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_port_out_of_range_is_said_to_be_out_of_range() {
    for args in [
        &["serve", "--memory", "--addr", "127.0.0.1:99999"][..],
        &["echo", "--addr", "[::1]:65536"],
        &["demo", "client", "ws://127.0.0.1:99999", "--tick", "0"],
        &["connect", "ws://127.0.0.1:99999", "--nick", "nana"],
        &["connect", "wss://localhost:70000/chat", "--nick", "nana"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        one_error_line(&out, "out of range (1–65535");
    }
}

#[test]
fn serve_logs_where_the_browser_client_is() {
    let server = memory_server(&[]);
    let ws = server.listening_url();
    let line = server.wait_stderr("browser client at http://");
    let start = line.find("http://").unwrap();
    let page = line[start..].split_whitespace().next().unwrap();
    assert_eq!(
        page.trim_end_matches('/'),
        ws.replacen("ws://", "http://", 1).trim_end_matches('/'),
        "{line}"
    );
    // It is where the page is.
    let addr = page.trim_start_matches("http://").trim_end_matches('/');
    let answer = common::http_get_blocking(addr, "/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("<html")
            || answer.contains("<!doctype html")
            || answer.contains("<!DOCTYPE html"),
        "{answer}"
    );
}

/// Issue 19 (from the terminal attack): clap's errors spanned several lines (the error, a
/// usage block, "For more information…"). Every usage error is one line on stderr that says
/// what is wrong and which `--help` to read, with exit code 2; `--help` and `--version` still
/// print and exit 0.
#[test]
fn every_usage_error_is_one_line_naming_the_help_to_read() {
    for (args, expect, help) in [
        (
            &["demo", "client", "--every", "soon"][..],
            "soon",
            "nanachat demo client --help",
        ),
        (
            &["serve", "--bogus"][..],
            "--bogus",
            "nanachat serve --help",
        ),
        (
            &["connect", "--nickk", "x"][..],
            "--nick",
            "nanachat connect --help",
        ),
        (
            &["serve", "--log-format", "xml"][..],
            "text, json",
            "nanachat serve --help",
        ),
        (&["token", "--sub"][..], "--sub", "nanachat token --help"),
        (&["bench", "nope"][..], "fanout", "nanachat bench --help"),
        (
            &["token"][..],
            "not provided: --sub",
            "nanachat token --help",
        ),
        (&["demo"][..], "server, client", "nanachat demo --help"),
        (&[][..], "serve, connect", "nanachat --help"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("nanachat: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(
            stderr.trim_end().ends_with(&format!("(see {help})")),
            "{args:?}: {stderr}"
        );
    }
    for args in [&["--help"][..], &["--version"], &["token", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

/// Issue 19 (from the terminal attack): `token --ttl 0s` made a token that never expires. A
/// 0 is refused, saying how to ask for that on purpose: `--ttl never`, a token without `exp`.
#[test]
fn a_token_ttl_of_0_is_refused_and_never_is_asked_for_by_name() {
    let dir = std::env::temp_dir().join(format!("nanachat-cli-ttl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    common::write_secret(&secret, "a secret of at least sixteen bytes\n");
    let secret = secret.to_str().unwrap();
    for zero in ["0s", "0", "0ms"] {
        let out = run(&[
            "token",
            "--sub",
            "alice",
            "--ttl",
            zero,
            "--auth-secret-file",
            secret,
        ]);
        assert_eq!(out.status.code(), Some(2), "{zero}");
        assert!(out.stdout.is_empty(), "{zero}: no token");
        one_error_line(&out, "--ttl never");
    }
    let claims = |out: &Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let token = String::from_utf8(out.stdout.clone()).unwrap();
        let payload = token.trim().split('.').nth(1).unwrap().to_owned();
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let never = claims(&run(&[
        "token",
        "--sub",
        "alice",
        "--ttl",
        "never",
        "--auth-secret-file",
        secret,
    ]));
    assert!(never.get("exp").is_none(), "{never}");
    let hour = claims(&run(&[
        "token",
        "--sub",
        "alice",
        "--ttl",
        "1h",
        "--auth-secret-file",
        secret,
    ]));
    assert!(hour["exp"].as_u64().is_some(), "{hour}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-shot HTTP server that answers every request with `status` and `body`.
fn answers_http(status: &'static str, body: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            // One write: the head and the body in one segment, as a server sends a short answer.
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    format!("ws://{addr}")
}

/// Issue 19 (session 7): a server that refused the handshake at the HTTP level (a token in the
/// URL it does not take: 401) ended `connect` with exit 1 and "handshake failed: server
/// answered HTTP 401". A refused credential is the user's input: exit 2 and a sentence that
/// says what was refused and why; 403, 429 and 503 each get a sentence of their own.
#[test]
fn a_handshake_refused_over_http_is_a_sentence_with_the_exit_code_of_its_cause() {
    let dir = std::env::temp_dir().join(format!("nanachat-cli-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    common::write_secret(&secret, "a secret of at least sixteen bytes\n");
    let server = memory_server(&[
        "--auth-secret-file",
        secret.to_str().unwrap(),
        "--max-connections-per-ip",
        "1",
    ]);
    let url = server.listening_url();
    let check = |url: &str, code: i32, says: &[&str]| {
        let (got, stderr) = said(connect(&[url, "--nick", "alice"], &["hi"]));
        assert_eq!(got, Some(code), "{url}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("nanachat:"))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        for part in says {
            assert!(errors[0].contains(part), "{part}: {stderr}");
        }
        assert!(!errors[0].contains("HTTP 4"), "jargon: {stderr}");
        assert!(!errors[0].contains("HTTP 5"), "jargon: {stderr}");
    };
    // 401: the server's reason, and where a good token comes from.
    check(
        &format!("{}/?token=not.a.token", url.trim_end_matches('/')),
        2,
        &[
            "refused the token in the URL",
            "malformed token",
            "nanachat token",
        ],
    );
    let (_, stderr) = said(connect(
        &[&format!("{}/?token=not.a.token", url.trim_end_matches('/'))],
        &[],
    ));
    assert!(
        !stderr.contains("not.a.token"),
        "the token on the screen: {stderr}"
    );
    // 429: one connection per address, and it is taken.
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    write!(
        held,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: nanachat.v1\r\n\r\n"
    )
    .unwrap();
    let mut answer = [0u8; 12];
    held.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101", "the first connection is taken");
    check(&url, 1, &["refused the connection", "too many connections"]);
    drop(held);
    // 403 and 503 (a proxy's origin rule; a server at its limit): stand-ins that answer so.
    let forbidden = answers_http(
        "403 Forbidden",
        "origin not allowed: \"x\" (see --allowed-origin)\n",
    );
    check(
        &forbidden,
        2,
        &["refused this client", "origin not allowed"],
    );
    let busy = answers_http(
        "503 Service Unavailable",
        "server full: max connections reached\n",
    );
    check(&busy, 1, &["cannot take a connection now", "server full"]);
    // A 401 to a URL without a token (a proxy that wants one) does not speak of one.
    let wants = answers_http("401 Unauthorized", "a token is needed\n");
    check(
        &wants,
        2,
        &["wants a token", "a token is needed", "--token"],
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
