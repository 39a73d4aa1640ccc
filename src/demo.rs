//! The seed's full-duplex pair (`Server.py` / `Client.py`), on the connection layer.
//!
//! Server: for each client, at once and concurrently, print `< {msg}` for every message the
//! moment it arrives, and every interval send `!Server Send! {timestamp}` and print `> {msg}`.
//! Client: every interval send `!Client Send! {timestamp}` and print `> {msg}`, print `< {msg}`
//! for every message at once, while a third task prints `INTER BREAK` every tick — receiving,
//! sending and other work interleaving on one event loop, as in the seed.
//!
//! The printed lines and the messages on the wire are the seed's, byte for byte, so the seed's
//! own Python programs talk to these and a reader cannot tell which side is which.

use std::io::Write;
use std::time::Duration;

use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::clock::python_now;
use crate::config::ConnectionConfig;
use crate::connection::{Connection, Handler, Incoming, Message, Utf8Bytes};
use crate::dial::{self, Target};
use crate::{Error, Result};

/// The seed's server side as a [`Handler`]: one timer per client, printing both directions.
#[derive(Debug, Clone)]
pub struct DemoServer {
    /// How often each client gets `!Server Send! …` (the seed: 3 s).
    pub every: Duration,
}

impl Default for DemoServer {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(3),
        }
    }
}

impl Handler for DemoServer {
    async fn handle(&self, conn: &mut Connection) -> Result<()> {
        let mut push = interval(self.every);
        push.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = conn.read_msg() => match msg? {
                    Some(msg) => print_line(&format!("< {}", show(&msg)))?,
                    None => return Ok(()),
                },
                _ = push.tick() => {
                    let text = Utf8Bytes::from(format!("!Server Send! {}", python_now()));
                    conn.send(Message::Text(text.clone())).await?;
                    print_line(&format!("> {}", text.as_str()))?;
                }
            }
        }
    }
}

/// Options of the seed's client side.
#[derive(Debug, Clone)]
pub struct DemoClient {
    /// How often to send `!Client Send! …` (the seed: 1 s).
    pub every: Duration,
    /// How often the third task prints `INTER BREAK` (the seed: 0.2 s); zero turns it off.
    pub tick: Duration,
    /// Close cleanly after this many sends; `None` runs until the server or a signal ends it.
    pub count: Option<u64>,
}

impl Default for DemoClient {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            tick: Duration::from_millis(200),
            count: None,
        }
    }
}

impl DemoClient {
    /// Runs the client against `target` until the connection ends. The ticker runs from the
    /// start, while the connection is still being made, as the seed's `sayhello` does.
    pub async fn run(
        &self,
        target: &Target,
        config: &ConnectionConfig,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let socket = async {
            let mut conn = dial::connect(target, config, shutdown).await?;
            let outcome = self.talk(&mut conn).await;
            if let Some(frame) = conn.peer_close() {
                info!(code = u16::from(frame.code), reason = %crate::shown::Shown(&frame.reason), "server closed the connection");
            }
            conn.finish(&outcome).await;
            outcome
        };
        tokio::select! {
            outcome = socket => outcome,
            outcome = inter_break(self.tick) => outcome,
        }
    }

    async fn talk(&self, conn: &mut Connection) -> Result<()> {
        let mut send = interval(self.every);
        send.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = 0;
        let mut sending = self.count != Some(0);
        if !sending {
            conn.start_close(crate::connection::CloseCode::Normal, "");
        }
        loop {
            tokio::select! {
                msg = conn.read_msg() => match msg? {
                    Some(msg) => print_line(&format!("< {}", show(&msg)))?,
                    None => return Ok(()),
                },
                _ = send.tick(), if sending => {
                    let text = Utf8Bytes::from(format!("!Client Send! {}", python_now()));
                    conn.send(Message::Text(text.clone())).await?;
                    print_line(&format!("> {}", text.as_str()))?;
                    sent += 1;
                    if Some(sent) == self.count {
                        sending = false;
                        conn.start_close(crate::connection::CloseCode::Normal, "");
                    }
                }
            }
        }
    }
}

/// The seed's `sayhello`: other work on the same loop. Never returns unless stdout is gone.
async fn inter_break(tick: Duration) -> Result<()> {
    if tick.is_zero() {
        return std::future::pending().await;
    }
    let mut ticker = interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        print_line("INTER BREAK")?;
    }
}

/// A message as the seed prints it: text as is, bytes as Python's `b'…'`.
fn show(msg: &Incoming) -> String {
    match msg {
        Incoming::Text(text) => text.as_str().to_owned(),
        Incoming::Binary(data) => {
            let mut out = String::from("b'");
            for &b in data.iter() {
                match b {
                    b'\\' => out.push_str("\\\\"),
                    b'\'' => out.push_str("\\'"),
                    b'\n' => out.push_str("\\n"),
                    b'\r' => out.push_str("\\r"),
                    b'\t' => out.push_str("\\t"),
                    0x20..=0x7e => out.push(b as char),
                    _ => out.push_str(&format!("\\x{b:02x}")),
                }
            }
            out.push('\'');
            out
        }
    }
}

/// Prints one line and flushes it, so a pipe sees it the moment it happens. A closed stdout ends
/// the caller with an error instead of a panic.
fn print_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_as_python_prints_them() {
        let msg = Incoming::Binary(vec![b'h', b'i', 0, b'\'', 0xff].into());
        assert_eq!(show(&msg), r"b'hi\x00\'\xff'");
        assert_eq!(show(&Incoming::Text("héllo".into())), "héllo");
    }
}
