//! A whole chat session over an in-memory socket: the input's lines become text frames from a
//! client, in plain-text mode (commands like `/join`, `/nick`, `/msg`) or in `nanachat.v1`
//! (JSON) — the first byte picks. The server must answer or close, never panic or hang.
#![no_main]

use futures_util::SinkExt;
use libfuzzer_sys::fuzz_target;
use nanachat::chat::{Chat, ChatConfig};
use nanachat::config::ConnectionConfig;
use nanachat::connection::{Connection, serve_connection};
use nanachat::protocol::SUBPROTOCOL;
use nanachat::store::MemoryStore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let config = ChatConfig {
            heartbeat_interval: std::time::Duration::ZERO,
            ..ChatConfig::default()
        };
        let chat = Chat::new(MemoryStore::new(), config, 64 * 1024);
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let conn_config = ConnectionConfig::default();
        let subprotocol = (mode % 2 == 0).then_some(SUBPROTOCOL);
        let server = async {
            let conn = Connection::accept(
                Box::new(nanachat::connection::ReadAhead::new(server_io, Vec::new())),
                None,
                &conn_config,
                tokio_util::sync::CancellationToken::new(),
            )
            .await
            .with_subprotocol(subprotocol);
            serve_connection(&chat, conn).await;
        };
        let client = async {
            let mut ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
            for line in text.split('\n') {
                if ws.send(Message::text(line)).await.is_err() {
                    break;
                }
            }
            let _ = ws.close(None).await;
            // Read what comes back until the server closes.
            use futures_util::StreamExt;
            while let Some(Ok(_)) = ws.next().await {}
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(server, client);
        })
        .await
        .expect("the session ends");
    });
});
