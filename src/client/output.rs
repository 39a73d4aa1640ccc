//! Where the client's output goes: plain lines on stdout for scripts (notices on stderr), or
//! above the line being typed in a terminal, with times and nick colours.
//!
//! Everything printed for a human from what the server sent (nicks, rooms, texts, notices,
//! `--raw` frames) goes through [`visible`] first: a message cannot drive the reader's terminal.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
        /// The status bar shown just above the prompt (who is typing, the connection while
        /// it is lost), if any: a line that is rewritten in place, never added to.
        bar: Option<String>,
        /// The prompt the line editor shows (it names the current room), if there is an editor.
        prompt: Option<Prompt>,
    },
}

/// The line editor's prompt, shared between the client, which changes the current room, and
/// the editor's thread, which shows it before each line: `[lobby] > `.
///
/// The editor waits (briefly) after each line for the client to have handled it, so that the
/// prompt of the next line already says where a `/switch`, `/join` or `/leave` took the user.
/// The room can also change while a line is being typed (a rename from another device, a room
/// the server left): each line handed over carries the prompt it was typed under (see
/// [`Output::typed_elsewhere`]), so that a line is never said in a room its prompt did not name.
#[derive(Debug, Clone)]
pub struct Prompt {
    text: Arc<Mutex<String>>,
    handled: SyncSender<()>,
    bar: Arc<Mutex<Option<String>>>,
    typed: Typed,
    columns: Arc<AtomicUsize>,
}

/// The editor's end of a [`Prompt`].
#[derive(Debug)]
pub struct PromptReader {
    text: Arc<Mutex<String>>,
    handled: Receiver<()>,
    bar: Arc<Mutex<Option<String>>>,
    typed: Typed,
    /// The terminal's width when the editor last started a line (0: not known).
    columns: Arc<AtomicUsize>,
}

/// The prompt the editor shows, and, in order, the prompts of the lines handed over and not yet
/// handled by the client.
#[derive(Debug, Clone, Default)]
struct Typed {
    shown: Arc<Mutex<String>>,
    lines: Arc<Mutex<VecDeque<String>>>,
}

/// At most this many prompts of lines handed over are kept (more than the input channel holds):
/// a client that never asks (`--raw`) keeps no more.
const TYPED_KEPT: usize = 256;

/// How long the editor waits for the client to handle a line before it shows the next prompt
/// anyway (the client is busy, e.g. waiting for the server to answer a `/join`).
const HANDLED_WAIT: Duration = Duration::from_secs(2);

impl Prompt {
    /// A prompt that names no room yet, and the editor's end of it.
    pub fn new() -> (Prompt, PromptReader) {
        let text = Arc::new(Mutex::new("> ".to_owned()));
        let (handled, rx) = sync_channel(16);
        let bar = Arc::new(Mutex::new(None));
        let typed = Typed::default();
        let columns = Arc::new(AtomicUsize::new(0));
        (
            Prompt {
                text: text.clone(),
                handled,
                bar: bar.clone(),
                typed: typed.clone(),
                columns: columns.clone(),
            },
            PromptReader {
                text,
                handled: rx,
                bar,
                typed,
                columns,
            },
        )
    }
}

impl PromptReader {
    /// The terminal is `columns` wide (0: not known): the status bar fits in one row of it.
    pub fn set_columns(&self, columns: usize) {
        self.columns.store(columns, Ordering::Relaxed);
    }

    /// The prompt to show now: the editor shows it until the next call.
    pub fn text(&self) -> String {
        let text = self
            .text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        *lock(&self.typed.shown) = text.clone();
        text
    }

    /// Forgets that earlier lines were handled: called before a line is handed over (once
    /// for each), which is typed under the prompt shown last.
    pub fn forget(&self) {
        while self.handled.try_recv().is_ok() {}
        let shown = lock(&self.typed.shown).clone();
        let mut lines = lock(&self.typed.lines);
        if lines.len() == TYPED_KEPT {
            lines.pop_front();
        }
        lines.push_back(shown);
    }

    /// Waits (at most a moment) until the client has handled the line just handed over.
    pub fn wait_handled(&self) {
        let _ = self.handled.recv_timeout(HANDLED_WAIT);
    }

    /// The user just ended the line `echo` (the prompt and the line, on `rows` rows of the
    /// terminal: Enter, or Ctrl-C) while the status bar shows: the terminal moved on to a new
    /// row, below the rows the bar is rewritten from. Writes, with `print`, the line over the
    /// bar's row and the bar below it, where the next prompt's row-up finds it: the bar stays
    /// one row, never left in the scrollback.
    pub fn entered(&self, echo: &str, rows: usize, print: impl FnOnce(String)) {
        let bar = self.bar.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bar) = bar.as_ref() {
            let up = rows + 1;
            print(format!("\x1b[{up}A\r\x1b[J{}\n{bar}", visible(echo)));
        }
    }

    /// `text` (from the editor, between two lines) printed as [`Output`] prints a line: above
    /// the bar if it shows.
    pub fn above(&self, text: &str, print: impl FnOnce(String)) {
        let bar = self.bar.lock().unwrap_or_else(PoisonError::into_inner);
        match bar.as_ref() {
            Some(bar) => print(format!("{TO_BAR}{text}\n{bar}")),
            None => print(text.to_owned()),
        }
    }
}

/// Moves the cursor up to the bar's row and clears it.
const TO_BAR: &str = "\x1b[1A\r\x1b[2K";

/// The longest bar, in characters: twice as many columns at most (wide characters), so it
/// stays on one row of an 80-column terminal.
const BAR_CHARS: usize = 38;

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Script { json } => f.debug_struct("Script").field("json", json).finish(),
            Output::Terminal {
                style, bar, prompt, ..
            } => f
                .debug_struct("Terminal")
                .field("style", style)
                .field("bar", bar)
                .field("prompt", prompt)
                .finish(),
        }
    }
}

/// `mutex` locked, even if a thread panicked holding it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

const NICK_COLOURS: [u8; 6] = [31, 32, 33, 34, 35, 36];

fn colour_of(nick: &str) -> u8 {
    let hash = nick
        .bytes()
        .fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
    NICK_COLOURS[hash as usize % NICK_COLOURS.len()]
}

impl Output {
    /// A chat message: in a terminal with its seq (`#42`, what `/reply`, `/edit`… name), what it
    /// answers (`(re #41)`) and what happened to it (`(edited)`, deleted, reactions); for a
    /// script as `[room] nick: text`, as the server's plain-text mode says it.
    pub fn message(&mut self, m: &ChatMessage) {
        match self {
            Output::Script { json: true } => stdout_line(&ServerMsg::Message(m.clone()).to_json()),
            Output::Script { json: false } => stdout_line(&format!(
                "[{}] {}{}: {}",
                visible(&m.room),
                visible(&m.from),
                re(m),
                body(m)
            )),
            Output::Terminal { style, .. } => {
                let style = *style;
                let time = crate::clock::local_hh_mm(m.time);
                let from = visible(&m.from);
                let nick = if style.color {
                    format!("\x1b[1;{}m{from}\x1b[0m", colour_of(&m.from))
                } else {
                    from.into_owned()
                };
                let line = format!(
                    "{time} #{} [{}] {nick}{}: {}{}",
                    m.seq,
                    visible(&m.room),
                    re(m),
                    body(m),
                    changes(m)
                );
                self.print(line);
            }
        }
    }

    /// Something the user should see: presence, errors, answers to commands (shown
    /// [`visible`]: it may quote the server).
    pub fn notice(&mut self, text: &str) {
        let text = visible(text);
        match self {
            Output::Script { .. } => eprintln!("{text}"),
            Output::Terminal { style, .. } if style.color => {
                self.print(format!("\x1b[2m{text}\x1b[0m"))
            }
            Output::Terminal { .. } => self.print(text.into_owned()),
        }
    }

    /// Shows `text` in the status bar just above the prompt (`None` takes the bar away): in a
    /// terminal only — a script's output has no place that changes.
    pub fn bar(&mut self, text: Option<&str>) {
        let Output::Terminal {
            printer,
            style,
            bar,
            prompt,
        } = self
        else {
            return;
        };
        // One row, whatever the width: a bar that wrapped would leave its first row behind
        // each time it is rewritten.
        let columns = prompt
            .as_ref()
            .map_or(0, |p| p.columns.load(Ordering::Relaxed));
        let most = match columns {
            0 => BAR_CHARS,
            n => BAR_CHARS.min(n - 1).max(1),
        };
        let text = text.map(|t| {
            let t = visible(t);
            let mut short: String = t.chars().take(most).collect();
            if short.len() < t.len() {
                short.pop();
                short.push('…');
            }
            if style.color {
                format!("\x1b[2m{short}\x1b[0m")
            } else {
                short
            }
        });
        if *bar == text {
            return;
        }
        // The editor's thread reads the bar when a line is entered (see
        // [`PromptReader::entered`]): it is changed and written under the same lock.
        let shared = prompt.as_ref().map(|p| p.bar.clone());
        let mut shared = shared
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(shared) = shared.as_mut() {
            **shared = text.clone();
        }
        match (bar.is_some(), &text) {
            (false, Some(new)) => printer(new.clone()),
            (true, Some(new)) => printer(format!("{TO_BAR}{new}")),
            // Up to the bar, clear it, and one more up: the editor's own newline puts the
            // prompt back where the bar was.
            (true, None) => printer(format!("{TO_BAR}\x1b[1A")),
            (false, None) => {}
        }
        *bar = text;
    }

    /// Prints a line in a terminal above the prompt — and above the bar, which is written
    /// again below it.
    fn print(&mut self, line: String) {
        if let Output::Terminal {
            printer,
            bar,
            prompt,
            ..
        } = self
        {
            let shared = prompt.as_ref().map(|p| p.bar.clone());
            let _held = shared
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner));
            match bar {
                Some(bar) => printer(format!("{TO_BAR}{line}\n{bar}")),
                None => printer(line),
            }
        }
    }

    /// The connection's state: connected, joined, disconnected, reconnecting.
    pub fn status(&mut self, text: &str) {
        self.notice(text);
    }

    /// Whether this output is a terminal's (a person reads it as it comes).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Output::Terminal { .. })
    }

    /// Names the current room in the prompt (`[lobby] > `; `> ` for none): `room` as the user
    /// sees it (`@mochi` for a direct-message room).
    pub fn set_room(&mut self, room: Option<&str>) {
        if let Output::Terminal {
            prompt: Some(prompt),
            ..
        } = self
        {
            let text = match room {
                Some(room) => format!("[{}] > ", visible(room)),
                None => "> ".to_owned(),
            };
            *prompt.text.lock().unwrap_or_else(PoisonError::into_inner) = text;
        }
    }

    /// Called once for each line the editor hands over, in order: the room its prompt named
    /// (`@mochi`, or `no room`) when that is not the room of the prompt now — the room changed
    /// while the line was typed; `None` when it is (or without an editor).
    pub fn typed_elsewhere(&mut self) -> Option<String> {
        let Output::Terminal {
            prompt: Some(prompt),
            ..
        } = self
        else {
            return None;
        };
        let typed = lock(&prompt.typed.lines).pop_front()?;
        let now = lock(&prompt.text).clone();
        if typed == now {
            return None;
        }
        let room = typed
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix("] > "))
            .unwrap_or("no room");
        Some(room.to_owned())
    }

    /// Tells the line editor that the line it handed over is handled: it may show its prompt.
    pub fn handled(&mut self) {
        if let Output::Terminal {
            prompt: Some(prompt),
            ..
        } = self
        {
            let _ = prompt.handled.try_send(());
        }
    }

    /// A line the user said that the server has not acknowledged yet (offline, or slow), in a
    /// terminal: marked `…` and `(sending)`; it is shown again, with its seq, once stored.
    /// Nothing for a script, whose output holds what was stored only.
    pub fn sending(&mut self, room: &str, from: &str, text: &str) {
        if let Output::Terminal { style, .. } = self {
            let colour = colour_of(from);
            let from = visible(from);
            let nick = if style.color {
                format!("\x1b[1;{colour}m{from}\x1b[0m")
            } else {
                from.into_owned()
            };
            let line = format!("… [{}] {nick}: {} (sending)", visible(room), visible(text));
            self.print(line);
        }
    }

    /// A raw line (raw mode): as it came, [`visible`].
    pub fn line(&mut self, text: &str) {
        let text = visible(text);
        match self {
            Output::Script { .. } => stdout_line(&text),
            Output::Terminal { .. } => self.print(text.into_owned()),
        }
    }
}

/// ` (re #41)` for a reply.
fn re(m: &ChatMessage) -> String {
    m.reply_to
        .map(|seq| format!(" (re #{seq})"))
        .unwrap_or_default()
}

/// The text, [`visible`]; `(deleted)` for a deleted message (its text is erased).
fn body(m: &ChatMessage) -> String {
    if m.deleted {
        "(deleted)".to_owned()
    } else {
        visible(&m.text).into_owned()
    }
}

/// What happened to a message since it was said, as `history` tells it: ` (edited)`, and its
/// reactions with their counts (` [🎉 1, 👍 2; yours: 👍]`).
fn changes(m: &ChatMessage) -> String {
    let mut line = String::new();
    if m.edited.is_some() && !m.deleted {
        line.push_str(" (edited)");
    }
    if !m.reactions.is_empty() {
        let counts: Vec<String> = m
            .reactions
            .iter()
            .map(|(emoji, n)| format!("{} {n}", visible(emoji)))
            .collect();
        let mine: Vec<String> = m.mine.iter().map(|e| visible(e).into_owned()).collect();
        let yours = if mine.is_empty() {
            String::new()
        } else {
            format!("; yours: {}", mine.join(" "))
        };
        line.push_str(&format!(" [{}{yours}]", counts.join(", ")));
    }
    line
}

fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn terminal() -> (Output, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let out = Output::Terminal {
            printer: Box::new(move |line| seen.lock().unwrap().push(line)),
            style: Style { color: false },
            bar: None,
            prompt: None,
        };
        (out, lines)
    }

    /// The bar is one row above the prompt, rewritten in place: a line printed while it shows
    /// takes its row and the bar is written again below it; taking it away leaves no row.
    #[test]
    fn the_bar_is_rewritten_in_place_and_lines_go_above_it() {
        let (mut out, lines) = terminal();
        out.bar(Some("mochi is typing in lobby"));
        out.bar(Some("mochi is typing in lobby"));
        out.notice("* nana joined lobby");
        out.bar(Some(
            "mochi and nana are typing in lobby and a very long room name",
        ));
        out.bar(None);
        out.bar(None);
        out.notice("* bye");
        let lines = lines.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "mochi is typing in lobby",
                "\x1b[1A\r\x1b[2K* nana joined lobby\nmochi is typing in lobby",
                "\x1b[1A\r\x1b[2Kmochi and nana are typing in lobby an…",
                "\x1b[1A\r\x1b[2K\x1b[1A",
                "* bye",
            ]
        );
    }

    #[test]
    fn a_message_in_a_terminal_shows_its_seq_reply_and_changes() {
        let (mut out, lines) = terminal();
        let mut m = ChatMessage::said("lobby", 42, "nana", "hi!", 0);
        out.message(&m);
        m.edited = Some(1);
        m.reply_to = Some(41);
        m.reactions.insert("👍".into(), 2);
        m.reactions.insert("🎉".into(), 1);
        m.mine.push("👍".into());
        out.message(&m);
        m.deleted = true;
        m.text.clear();
        m.reactions.clear();
        out.message(&m);
        let lines: Vec<String> = lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.split_once(' ').unwrap().1.to_owned()) // without the local time
            .collect();
        assert_eq!(
            lines,
            [
                "#42 [lobby] nana: hi!",
                "#42 [lobby] nana (re #41): hi! (edited) [🎉 1, 👍 2; yours: 👍]",
                "#42 [lobby] nana (re #41): (deleted)",
            ]
        );
    }

    /// Each line handed over carries the prompt it was typed under: one typed before the room
    /// changed names the room its prompt said, one typed after names none.
    #[test]
    fn a_line_typed_under_another_rooms_prompt_is_told() {
        let (prompt, reader) = Prompt::new();
        let mut out = Output::Terminal {
            printer: Box::new(|_| {}),
            style: Style { color: false },
            bar: None,
            prompt: Some(prompt),
        };
        out.set_room(Some("@mochi"));
        assert_eq!(reader.text(), "[@mochi] > ");
        // Typed in the DM; the room changes (a rename elsewhere) before the client reads it.
        reader.forget();
        out.set_room(Some("lobby"));
        assert_eq!(reader.text(), "[lobby] > ");
        reader.forget();
        assert_eq!(out.typed_elsewhere().as_deref(), Some("@mochi"));
        assert_eq!(out.typed_elsewhere(), None);
        assert_eq!(out.typed_elsewhere(), None, "no line left");
        out.set_room(None);
        assert_eq!(reader.text(), "> ");
        reader.forget();
        out.set_room(Some("lobby"));
        assert_eq!(out.typed_elsewhere().as_deref(), Some("no room"));
    }
}
