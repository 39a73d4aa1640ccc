//! The seed's hello server: reads a name, answers `Hello {name}!`, printing `< {name}` and
//! `> {greeting}` as the seed does. Built on the library's public API: a [`Handler`] served by
//! [`server::run`]. Run: `cargo run --example hello_server [HOST:PORT]` (default
//! `127.0.0.1:8765`), then `cargo run --example hello_client`.

use nanachat::connection::{Connection, Handler, Incoming, Message};
use nanachat::server::{self, ServerConfig};

/// Answers the first text message with a greeting, then closes.
struct Hello;

impl Handler for Hello {
    async fn handle(&self, conn: &mut Connection) -> nanachat::Result<()> {
        let Some(Incoming::Text(name)) = conn.read_msg().await? else {
            return Ok(());
        };
        println!("< {name}");
        let greeting = format!("Hello {name}!");
        conn.send(Message::text(greeting.clone())).await?;
        println!("> {greeting}");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> nanachat::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server::run(listener, ServerConfig::default(), Hello, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanachat::config::ConnectionConfig;
    use nanachat::dial::{Target, connect};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn greets_by_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(server::run(
            listener,
            ServerConfig::default(),
            Hello,
            stop.clone().cancelled_owned(),
        ));
        let config = ConnectionConfig::default();
        let target = Target::parse(&url).unwrap();
        let mut conn = connect(&target, &config, CancellationToken::new())
            .await
            .unwrap();
        conn.send(Message::text("Nana")).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), conn.read_msg())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, Some(Incoming::Text("Hello Nana!".into())));
        conn.finish(&Ok(())).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
