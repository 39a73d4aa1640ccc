//! The ceiling of the library under nanachat: a bare tokio-tungstenite broadcast room. Every
//! text message goes to every client, the sender included — no protocol, no store, no limits.
//! Each connection has a writer task fed by an unbounded channel that writes every message
//! waiting and then flushes once. A peer for `bench/compare.sh`; prints "LISTENING <port>" on
//! stderr. Usage: cargo run --release --example bare_broadcast [PORT]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;

type Peers = Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let port: u16 = std::env::args().nth(1).map_or(0, |p| p.parse().unwrap());
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("LISTENING {}", listener.local_addr()?.port());
    let peers: Peers = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(tcp, id, peers.clone()));
    }
}

async fn serve(tcp: tokio::net::TcpStream, id: u64, peers: Peers) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = unbounded_channel();
    peers.lock().unwrap().insert(id, tx);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if msg.is_text() {
            for peer in peers.lock().unwrap().values() {
                let _ = peer.send(msg.clone());
            }
        }
    }
    peers.lock().unwrap().remove(&id);
    writer.abort();
}
