//! The seed's hello client: asks for a name on stdin, sends it, prints `> {name}`, waits for the
//! greeting and prints `< {greeting}`. Built on the library's [`dial::connect`].
//! Run: `cargo run --example hello_client [URL]` (default `ws://localhost:8765`) against
//! `cargo run --example hello_server` — or against the seed's own Python hello server.

use std::io::{BufRead, Write};

use nanachat::config::ConnectionConfig;
use nanachat::connection::{Incoming, Message};
use nanachat::dial::{self, Target};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> nanachat::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://localhost:8765".to_owned());
    let target = Target::parse(&url)?;
    let mut conn = dial::connect(
        &target,
        &ConnectionConfig::default(),
        CancellationToken::new(),
    )
    .await?;

    print!("What's your name? ");
    std::io::stdout().flush()?;
    let mut name = String::new();
    std::io::stdin().lock().read_line(&mut name)?;
    let name = name.trim_end_matches(['\r', '\n']).to_owned();

    conn.send(Message::text(name.clone())).await?;
    println!("> {name}");
    if let Some(Incoming::Text(greeting)) = conn.read_msg().await? {
        println!("< {greeting}");
    }
    conn.finish(&Ok(())).await;
    Ok(())
}
