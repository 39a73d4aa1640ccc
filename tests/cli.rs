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
