//! Helpers shared by the integration tests: a real server on port 0, peers, and bounded waits.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod client;
pub mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use nanachat::Handler;
use nanachat::server::{self, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Every await in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A server running in this process on 127.0.0.1:0; stopped (abruptly) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<nanachat::Result<()>>>,
}

impl TestServer {
    pub async fn start<H: Handler>(config: ServerConfig, handler: H) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(server::run(
            listener,
            config,
            handler,
            stop.cancelled_owned(),
        ));
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Signals a graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> nanachat::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        within("server stop", task).await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub type Peer = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A plain tokio-tungstenite client: a peer that is not our own code.
pub async fn peer(url: &str) -> Peer {
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake");
    ws
}

/// Reads until a data message, skipping pings and pongs. `None` when the stream ends.
pub async fn next_data(ws: &mut Peer) -> Option<Message> {
    loop {
        match within("next message", ws.next()).await {
            None => return None,
            Some(Err(err)) => panic!("read error: {err}"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(msg)) => return Some(msg),
        }
    }
}

/// Reads until the server's close frame arrives, and returns it.
pub async fn close_frame(ws: &mut Peer) -> CloseFrame {
    loop {
        match within("close frame", ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => return frame,
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => panic!("no close frame, read error: {err}"),
            None => panic!("no close frame, stream ended"),
        }
    }
}

/// A line a child process printed, with when we read it.
pub type Line = (std::time::Instant, String);

/// A child process whose stdout and stderr lines are collected as they come; killed on drop.
pub struct Proc {
    pub name: String,
    child: std::process::Child,
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<Line>>>,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<Line>>>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: std::process::Command) -> Self {
        Self::spawn_with_stdin(name, cmd, false)
    }

    /// Like [`Proc::spawn`], with a pipe to the child's stdin when `stdin` is true.
    pub fn spawn_with_stdin(name: &str, mut cmd: std::process::Command, stdin: bool) -> Self {
        use std::process::Stdio;
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONUNBUFFERED", "1");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_lines(&self) -> Vec<Line> {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn stderr_text(&self) -> String {
        let lines = self.stderr.lock().expect("lock");
        lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// Waits (at most [`WAIT`]) until `done` holds for the stdout lines so far.
    pub fn wait_stdout(&self, what: &str, done: impl Fn(&[Line]) -> bool) {
        self.wait(what, &self.stdout, done);
    }

    /// Waits (at most [`WAIT`]) for a stderr line containing `needle`; returns that line.
    pub fn wait_stderr(&self, needle: &str) -> String {
        self.wait(needle, &self.stderr, |lines| {
            lines.iter().any(|(_, l)| l.contains(needle))
        });
        let lines = self.stderr.lock().expect("lock");
        let (_, line) = lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .expect("found");
        line.clone()
    }

    /// The `ws://…` address a nanachat server logged when it started listening.
    pub fn listening_url(&self) -> String {
        let line = self.wait_stderr("listening on ws://");
        let start = line.find("ws://").expect("url");
        line[start..]
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .expect("url")
            .to_owned()
    }

    fn wait(
        &self,
        what: &str,
        lines: &std::sync::Mutex<Vec<Line>>,
        done: impl Fn(&[Line]) -> bool,
    ) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if done(&lines.lock().expect("lock")) {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{}: timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout_lines()
                        .iter()
                        .map(|(_, l)| format!("{l}\n"))
                        .collect::<String>(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most [`WAIT`]) for the process to exit by itself.
    /// Whether the child has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads drain what is left in the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{} did not exit\nstderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes one line to the child's stdin.
    pub fn write_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("spawned with stdin");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Closes the child's stdin (end of input).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Sends SIGTERM (a graceful stop request).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal with this name (`HUP`, `STOP`, `CONT`…).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect(
    pipe: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<Line>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock()
                .expect("lock")
                .push((std::time::Instant::now(), line));
        }
    });
    lines
}

/// Runs `cmd` (a `nanachat connect …` in scripting mode): says `line`, ends its input, and
/// checks that it exits 0 having printed `line` back (stored, acked and delivered).
pub fn connect_says(name: &str, cmd: std::process::Command, line: &str) {
    let mut client = Proc::spawn_with_stdin(name, cmd, true);
    client.write_line(line);
    client.close_stdin();
    assert!(client.wait_exit().success(), "{}", client.stderr_text());
    assert!(
        client.stdout_lines().iter().any(|(_, l)| l.contains(line)),
        "{:?}",
        client.stdout_lines()
    );
}

/// The `nanachat` binary built for these tests. A `connect` keeps its key in a file of this
/// test process's, not in the user's own config folder.
pub fn nanachat() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nanachat"));
    cmd.env("NANACHAT_KEY_FILE", test_key_file());
    cmd
}

/// Where the `nanachat connect`s of this test process keep their key.
pub fn test_key_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nanachat-test-key-{}", std::process::id()))
}

/// A plain HTTP/1.1 GET from a blocking socket; returns the whole answer (or what came before
/// the server closed).
#[allow(dead_code)]
pub fn http_get_blocking(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = tcp.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A plain HTTP/1.1 GET; returns the whole answer (status line, headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("http connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    within("http answer", tcp.read_to_string(&mut answer))
        .await
        .expect("read");
    answer
}

/// One HTTP/1.1 request to the HTTP API; the status and the body (parsed as JSON: every
/// answer is; an error is `{code, message}`).
#[allow(dead_code)]
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before the whole body is in.
    let _ = tcp.write_all(body).await;
    let mut answer = Vec::new();
    within("answer", tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = answer[9..12].parse().unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|err| panic!("{method} {path}: not JSON ({err}): {head}\n{body}"));
    if status != 200 {
        assert!(
            json["code"].is_string() && json["message"].is_string(),
            "an error is {{code, message}}: {json}"
        );
    }
    (status, json)
}

/// The value of an unlabelled Prometheus sample in a `/metrics` answer.
pub fn metric(answer: &str, name: &str) -> u64 {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{answer}"))
}

/// A client that asked for (and got) the `nanachat.v1` subprotocol.
pub async fn protocol_peer(url: &str) -> Peer {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("url");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "nanachat.v1".parse().expect("header"),
    );
    let (ws, response) = within("connect", tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake");
    assert_eq!(response.headers()["sec-websocket-protocol"], "nanachat.v1");
    ws
}

/// `nanachat serve` as a child process on `addr`, history in `dir`, allowing `rate` messages a
/// second (and as many in a burst) per connection.
pub fn serve_child(dir: &std::path::Path, addr: &str, rate: u32) -> Proc {
    serve_child_with(dir, addr, rate, &[])
}

/// [`serve_child`] with more options.
pub fn serve_child_with(dir: &std::path::Path, addr: &str, rate: u32, options: &[&str]) -> Proc {
    let rate = rate.to_string();
    let mut cmd = nanachat();
    cmd.args(["serve", "--addr", addr, "--rate", &rate, "--burst", &rate])
        .args(options)
        .arg("--data-dir")
        .arg(dir);
    Proc::spawn("nanachat serve", cmd)
}

/// The options that lift the per-address limits, for a server every client of a test reaches
/// from 127.0.0.1 by the hundred (benchmarks, floods).
pub const NO_PER_IP_LIMITS: [&str; 4] = [
    "--max-connections-per-ip",
    "0",
    "--connect-rate-per-ip",
    "0",
];

/// Writes a secret file the way a user should: 0600 (the server refuses one others may read).
pub fn write_secret(path: &std::path::Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A private CA and a certificate it signed for `names` (host names or IP addresses).
#[allow(dead_code)]
pub struct PrivateCa {
    pub ca_pem: String,
    pub leaf: rcgen::Certificate,
    pub leaf_key: rcgen::KeyPair,
}

/// Makes a [`PrivateCa`]: what a test needs to serve TLS that only its own clients trust.
#[allow(dead_code)]
pub fn private_ca(names: &[&str]) -> PrivateCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    PrivateCa {
        ca_pem: ca.pem(),
        leaf,
        leaf_key,
    }
}
