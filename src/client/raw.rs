//! `nanachat connect --raw`: no subprotocol, text frames in and out, so it talks to any
//! WebSocket server — the seed's Python server too. Reconnects, but with nothing to resume.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::{Exit, Input, Output, Session, SessionEnd, offline_bar, redial};
use crate::Result;
use crate::clock::python_now;
use crate::config::ConnectionConfig;
use crate::connection::{CloseCode, Connection, Incoming, Message};
use crate::dial::{Target, connect};

/// Sends each input line as a text frame and prints each text frame received. At the end of
/// input it closes (the close handshake) and prints what arrives until the server's close.
pub async fn run_raw(
    target: &Target,
    send_every: Option<Duration>,
    reconnect: bool,
    inputs: mpsc::Receiver<Input>,
    out: &mut Output,
) -> Result<Exit> {
    let config = ConnectionConfig::default();
    let dial = async || connect(target, &config, CancellationToken::new()).await;
    let mut raw = Raw {
        send_every,
        reconnect,
        inputs,
    };
    redial(dial, reconnect, out, &mut raw).await
}

/// `--raw`'s [`Session`]: lines out, frames in; nothing to resume, and offline, lines wait.
struct Raw {
    send_every: Option<Duration>,
    reconnect: bool,
    inputs: mpsc::Receiver<Input>,
}

impl Session for Raw {
    async fn run(&mut self, conn: &mut Connection, out: &mut Output) -> SessionEnd {
        let mut ticker = self.send_every.map(|every| {
            let mut t = interval(every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let inputs = &mut self.inputs;
        let ended: Result<bool> = async {
            loop {
                tokio::select! {
                    msg = conn.read_msg() => match msg? {
                        Some(incoming) => show(&incoming, out),
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
        if let Ok(true) = ended {
            // The end of input: what was sent goes, then our close; everything the server sends
            // before its close answers ours is still shown (within the close timeout).
            conn.start_close(CloseCode::Normal, "");
            while let Ok(Some(incoming)) = conn.read_msg().await {
                show(&incoming, out);
            }
        }
        match ended {
            // The end of input, or (with nothing to resume) any end when not reconnecting.
            Ok(true) => SessionEnd::Exit(Exit::Done),
            _ if !self.reconnect => SessionEnd::Exit(Exit::Done),
            Ok(false) => SessionEnd::Lost("closed by the server".into()),
            Err(err) => SessionEnd::Lost(err.to_string()),
        }
    }

    async fn offline(&mut self, until: Instant, attempt: u32, out: &mut Output) -> Option<Exit> {
        out.bar(Some(&offline_bar(until, attempt, "")));
        tokio::time::sleep_until(until).await;
        None
    }
}

fn show(incoming: &Incoming, out: &mut Output) {
    match incoming {
        Incoming::Text(text) => out.line(text.as_str()),
        Incoming::Binary(data) => out.line(&format!("<{} bytes>", data.len())),
    }
}
