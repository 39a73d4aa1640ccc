//! `nanachat connect` over `wss://`: a TLS WebSocket server with a certificate from a private CA
//! is trusted with `--ca-file`, and refused with one clear line without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Proc, nanachat};
use futures_util::StreamExt;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

/// The CA (PEM) and the certificate and key (DER), for an in-process server.
fn private_ca() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let parts = common::private_ca(&["localhost"]);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(parts.leaf_key.serialize_der()));
    (parts.ca_pem, parts.leaf.der().clone(), key)
}

/// A TLS WebSocket echo server on 127.0.0.1:0; returns its port.
async fn tls_echo_server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let (sink, stream) = ws.split();
                let _ = stream
                    .filter(|m| std::future::ready(m.as_ref().is_ok_and(|m| m.is_text())))
                    .forward(sink)
                    .await;
            });
        }
    });
    port
}

// Multi-threaded: the in-process TLS server must run while this thread waits on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca_is_trusted_with_ca_file_and_refused_without() {
    let (ca_pem, cert, key) = private_ca();
    let port = tls_echo_server(cert, key).await;
    let dir = std::env::temp_dir().join(format!("nanachat-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let url = format!("wss://localhost:{port}");

    let mut cmd = nanachat();
    cmd.args(["connect", "--raw", &url, "--ca-file"])
        .arg(&ca_file);
    let mut client = Proc::spawn_with_stdin("connect --raw wss", cmd, true);
    client.write_line("hello over tls");
    client.wait_stdout("the echo", |l| l.iter().any(|(_, t)| t == "hello over tls"));
    client.close_stdin();
    assert!(client.wait_exit().success(), "{}", client.stderr_text());

    let out = nanachat()
        .args(["connect", "--raw", &url])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("TLS") && stderr.contains("certificate"),
        "{stderr}"
    );

    let out = nanachat()
        .args(["connect", "ws://localhost:1", "--ca-file"])
        .arg(&ca_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CA, the certificate and its key, all PEM, for `nanachat serve --tls-cert --tls-key`.
fn private_ca_pem() -> (String, String, String) {
    let parts = common::private_ca(&["localhost"]);
    (
        parts.ca_pem,
        parts.leaf.pem(),
        parts.leaf_key.serialize_pem(),
    )
}

#[test]
fn serve_speaks_wss_with_a_certificate_and_the_client_verifies_it() {
    let (ca_pem, cert_pem, key_pem) = private_ca_pem();
    let dir = std::env::temp_dir().join(format!("nanachat-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();

    let mut cmd = nanachat();
    cmd.args(["serve", "--memory", "--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    let server = Proc::spawn("nanachat serve --tls", cmd);
    let line = server.wait_stderr("listening on wss://");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap()
        .to_owned();
    let url = format!("wss://localhost:{port}");

    // Plain ws:// to the TLS port fails for that client, and only for it.
    let out = nanachat()
        .args([
            "connect",
            "--raw",
            "--no-reconnect",
            &format!("ws://localhost:{port}"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let mut cmd = nanachat();
    cmd.args(["connect", &url, "--nick", "tls", "--ca-file"])
        .arg(&ca);
    common::connect_says("connect wss", cmd, "hello over wss");

    // A key that is not there: one line, exit 2.
    let out = nanachat()
        .args(["serve", "--memory", "--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(dir.join("missing.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
