//! `nanachat connect --raw`: no subprotocol, text frames in and out, so it talks to any
//! WebSocket server — the seed's Python server too. Reconnects, but with nothing to resume.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::{Exit, Input, Output, RECONNECT};
use crate::Result;
use crate::clock::python_now;
use crate::config::ConnectionConfig;
use crate::connection::{Incoming, Message};
use crate::dial::{Target, connect};

/// Sends each input line as a text frame and prints each text frame received.
pub async fn run_raw(
    target: &Target,
    send_every: Option<Duration>,
    reconnect: bool,
    mut inputs: mpsc::Receiver<Input>,
    out: &mut Output,
) -> Result<Exit> {
    let config = ConnectionConfig::default();
    let mut connected_once = false;
    let mut backoff = RECONNECT;
    loop {
        let mut conn = match connect(target, &config, CancellationToken::new()).await {
            Ok(conn) => conn,
            Err(err) if !connected_once => return Err(err),
            Err(err) => {
                let wait = backoff.failed_jittered();
                out.status(&format!(
                    "* {err}; reconnecting in {:.1}s",
                    wait.as_secs_f64()
                ));
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        connected_once = true;
        backoff.succeeded();
        let mut ticker = send_every.map(|every| {
            let mut t = interval(every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let ended: Result<bool> = async {
            loop {
                tokio::select! {
                    msg = conn.read_msg() => match msg? {
                        Some(Incoming::Text(text)) => out.line(text.as_str()),
                        Some(Incoming::Binary(data)) => out.line(&format!("<{} bytes>", data.len())),
                        None => return Ok(false),
                    },
                    input = inputs.recv() => match input {
                        Some(Input::Line(line)) => conn.send(Message::text(line)).await?,
                        Some(Input::Eof) | None => return Ok(true),
                    },
                    _ = async { ticker.as_mut().expect("checked").tick().await }, if ticker.is_some() => {
                        let msg = format!("!Client Send! {}", python_now());
                        conn.send(Message::text(msg.clone())).await?;
                        out.line(&format!("> {msg}"));
                    }
                }
            }
        }
        .await;
        let done = matches!(ended, Ok(true));
        conn.finish(&Ok(())).await;
        if done {
            return Ok(Exit::Done);
        }
        if !reconnect {
            return Ok(Exit::Done);
        }
        out.status("* disconnected; reconnecting");
    }
}
