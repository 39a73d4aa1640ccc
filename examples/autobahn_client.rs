//! The client under test for Autobahn|Testsuite's `fuzzingserver` mode: for every case the suite
//! offers, connect, echo every message back with the library's own echo loop, close; then ask the
//! suite to write its reports. `scripts/autobahn` runs it; by hand:
//!
//! ```text
//! wstest -m fuzzingserver -s spec.json &
//! cargo run --release --example autobahn_client -- ws://127.0.0.1:9001
//! ```

use nanachat::config::ConnectionConfig;
use nanachat::connection::{Incoming, serve_connection};
use nanachat::dial::{Target, connect};
use nanachat::echo::Echo;
use tokio_util::sync::CancellationToken;

const AGENT: &str = "nanachat";

#[tokio::main(flavor = "current_thread")]
async fn main() -> nanachat::Result<()> {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    // The suite sends messages and frames of up to 16 MiB.
    let config = ConnectionConfig {
        max_message_bytes: 20 << 20,
        max_frame_bytes: 20 << 20,
        ..ConnectionConfig::default()
    };
    let stop = CancellationToken::new();

    let mut conn = connect(
        &Target::parse(&format!("{base}/getCaseCount"))?,
        &config,
        stop.clone(),
    )
    .await?;
    let count: u32 = match conn.read_msg().await? {
        Some(Incoming::Text(text)) => text.as_str().trim().parse().map_err(|_| {
            nanachat::Error::Protocol(format!("case count is not a number: {}", text.as_str()))
        })?,
        other => {
            return Err(nanachat::Error::Protocol(format!(
                "expected a case count, got {other:?}"
            )));
        }
    };
    conn.finish(&Ok(())).await;
    eprintln!("autobahn_client: {count} cases");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={AGENT}");
        match connect(&Target::parse(&url)?, &config, stop.clone()).await {
            Ok(conn) => {
                let _ = serve_connection(&Echo, conn).await;
            }
            Err(err) => eprintln!("autobahn_client: case {case}: {err}"),
        }
    }

    let url = format!("{base}/updateReports?agent={AGENT}");
    let conn = connect(&Target::parse(&url)?, &config, stop).await?;
    let _ = serve_connection(&Echo, conn).await;
    eprintln!("autobahn_client: reports updated");
    Ok(())
}
