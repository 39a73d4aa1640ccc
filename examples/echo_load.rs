//! A small echo load: C connections each send M messages of S bytes to an echo server, as fast
//! as back-pressure allows, and read every echo back. Prints messages per second (both ways).
//! Used by `bench/read_buffer.sh` to weigh read-buffer sizes; `nanachat bench` will be the
//! full load generator.
//!
//! `cargo run --release --example echo_load -- ws://127.0.0.1:9002 [C] [M] [S]`

use std::time::Instant;

use nanachat::config::ConnectionConfig;
use nanachat::connection::{Incoming, Message};
use nanachat::dial::{Target, connect};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> nanachat::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("ws://127.0.0.1:9002", String::as_str);
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (connections, messages, size) = (arg(2, 50), arg(3, 20_000), arg(4, 100));
    let target = Target::parse(url)?;
    let config = ConnectionConfig::default();
    let payload = "x".repeat(size);

    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(connect(&target, &config, CancellationToken::new()).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let outbox = conn.outbox();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                let outbox: nanachat::connection::Outbox = outbox;
                for _ in 0..messages {
                    outbox.send(Message::text(payload.clone())).await?;
                }
                Ok::<(), nanachat::Error>(())
            });
            let mut got = 0;
            while got < messages {
                match conn.read_msg().await? {
                    Some(Incoming::Text(_)) => got += 1,
                    Some(Incoming::Binary(_)) => {}
                    None => break,
                }
            }
            sender
                .await
                .map_err(|e| nanachat::Error::Protocol(e.to_string()))??;
            conn.finish(&Ok(())).await;
            Ok::<usize, nanachat::Error>(got)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .map_err(|e| nanachat::Error::Protocol(e.to_string()))??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{connections} connections x {messages} messages of {size} B: {total} echoes in {secs:.2} s, {:.0} msg/s",
        total as f64 / secs
    );
    Ok(())
}
