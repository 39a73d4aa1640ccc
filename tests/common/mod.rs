//! Helpers shared by the integration tests: a real server on port 0, peers, and bounded waits.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

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
