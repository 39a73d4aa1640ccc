//! Where the client's output goes: plain lines on stdout for scripts (notices on stderr), or
//! above the line being typed in a terminal, with times and nick colours.
//!
//! Everything printed for a human from what the server sent (nicks, rooms, texts, notices,
//! `--raw` frames) goes through [`visible`] first: a message cannot drive the reader's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;

use crate::protocol::{ChatMessage, ServerMsg};

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

/// `text` made safe to print on a terminal: every control character (C0 but tab, DEL, C1) is
/// shown escaped — `\x1b`, `\x07`, `\r`, `\n`, `\u{9b}` — as are the bidirectional overrides
/// and isolates (`\u{202e}`…) that would reorder what follows them. Everything else, all
/// printable Unicode, is kept as is; so is a tab, which only moves the cursor right. Without
/// this a message could retitle the window (`ESC ] 0 ; … BEL`), erase or rewrite lines already
/// shown (`ESC [ 2K`, `CR`), or forge a line from someone else (`\n[lobby] admin: …`).
pub fn visible(text: &str) -> Cow<'_, str> {
    fn hidden(c: char) -> bool {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.contains(hidden) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => shown.push_str("\\r"),
            '\n' => shown.push_str("\\n"),
            c if hidden(c) && u32::from(c) < 0x80 => {
                let _ = write!(shown, "\\x{:02x}", u32::from(c));
            }
            c if hidden(c) => {
                let _ = write!(shown, "\\u{{{:x}}}", u32::from(c));
            }
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn control_characters_are_shown_escaped_and_the_rest_kept() {
        assert_eq!(
            visible("\x1b]0;pwned\x07\x1b[2Khi\r\nthere\x7f\u{9b}"),
            "\\x1b]0;pwned\\x07\\x1b[2Khi\\r\\nthere\\x7f\\u{9b}"
        );
        assert_eq!(visible("a\u{202e}b"), "a\\u{202e}b");
        let plain = "héllo 世界 🎉\ttab \\x1b";
        assert!(matches!(visible(plain), std::borrow::Cow::Borrowed(p) if p == plain));
    }
}
