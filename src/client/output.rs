//! Where the client's output goes: plain lines on stdout for scripts (notices on stderr), or
//! above the line being typed in a terminal, with times and nick colours.
//!
//! Everything printed for a human from what the server sent (nicks, rooms, texts, notices,
//! `--raw` frames) goes through [`visible`] first: a message cannot drive the reader's terminal.

use std::io::Write;

use crate::protocol::{ChatMessage, ServerMsg};
pub use crate::shown::escaped as visible;

/// How messages look in a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Colour nicks (off with `NO_COLOR`, or when not a terminal).
    pub color: bool,
}

/// The client's output.
pub enum Output {
    /// Scripting: one line per message on stdout (`[room] nick: text`, or the protocol's JSON
    /// object with `json`); notices on stderr.
    Script {
        /// Print messages as JSON objects.
        json: bool,
    },
    /// A terminal with a line editor: everything is printed above the prompt.
    Terminal {
        /// Prints above the line being edited without breaking it.
        printer: Box<dyn FnMut(String) + Send>,
        /// Colours.
        style: Style,
    },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Script { json } => f.debug_struct("Script").field("json", json).finish(),
            Output::Terminal { style, .. } => {
                f.debug_struct("Terminal").field("style", style).finish()
            }
        }
    }
}

const NICK_COLOURS: [u8; 6] = [31, 32, 33, 34, 35, 36];

fn colour_of(nick: &str) -> u8 {
    let hash = nick
        .bytes()
        .fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
    NICK_COLOURS[hash as usize % NICK_COLOURS.len()]
}

impl Output {
    /// A chat message.
    pub fn message(&mut self, m: &ChatMessage) {
        match self {
            Output::Script { json: true } => stdout_line(&ServerMsg::Message(m.clone()).to_json()),
            Output::Script { json: false } => stdout_line(&format!(
                "[{}] {}: {}",
                visible(&m.room),
                visible(&m.from),
                visible(&m.text)
            )),
            Output::Terminal { printer, style } => {
                let time = crate::clock::local_hh_mm(m.time);
                let from = visible(&m.from);
                let nick = if style.color {
                    format!("\x1b[1;{}m{from}\x1b[0m", colour_of(&m.from))
                } else {
                    from.into_owned()
                };
                printer(format!(
                    "{time} [{}] {nick}: {}",
                    visible(&m.room),
                    visible(&m.text)
                ));
            }
        }
    }

    /// Something the user should see: presence, errors, answers to commands (shown
    /// [`visible`]: it may quote the server).
    pub fn notice(&mut self, text: &str) {
        let text = visible(text);
        match self {
            Output::Script { .. } => eprintln!("{text}"),
            Output::Terminal { printer, style } if style.color => {
                printer(format!("\x1b[2m{text}\x1b[0m"))
            }
            Output::Terminal { printer, .. } => printer(text.into_owned()),
        }
    }

    /// The connection's state: connected, joined, disconnected, reconnecting.
    pub fn status(&mut self, text: &str) {
        self.notice(text);
    }

    /// A raw line (raw mode): as it came, [`visible`].
    pub fn line(&mut self, text: &str) {
        let text = visible(text);
        match self {
            Output::Script { .. } => stdout_line(&text),
            Output::Terminal { printer, .. } => printer(text.into_owned()),
        }
    }
}

fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
