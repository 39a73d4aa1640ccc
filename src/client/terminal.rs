//! Where `nanachat connect` meets its user: a line editor on its own thread when stdin is a
//! terminal (what arrives is printed above the line being typed), or stdin read line by line
//! when a script drives it. Either way lines reach the client as [`Input`]s on one channel.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::output::Prompt;
use super::{ClientOptions, Exit, Input, Output, Style, run, run_raw};
use crate::{Error, Result};

/// How `nanachat connect` shows what it gets and speaks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speech {
    /// Print the protocol's JSON objects instead of lines.
    pub json: bool,
    /// No subprotocol: plain text frames in and out.
    pub raw: bool,
}

/// Runs `nanachat connect` on its own single-threaded runtime: interactive when stdin is a
/// terminal (and not `json`), scripted otherwise.
pub fn connect(mut opts: ClientOptions, speech: Speech) -> Result<Exit> {
    let interactive = std::io::stdin().is_terminal() && !speech.json;
    opts.commands = interactive;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut out, editor) = if interactive {
        let first = opts.rooms.first().map(String::as_str);
        let (out, editor) = line_editor(tx, first.unwrap_or("lobby"))?;
        (out, Some(editor))
    } else {
        runtime.spawn(read_stdin(tx));
        (Output::Script { json: speech.json }, None)
    };
    let result = runtime.block_on(async {
        if speech.raw {
            run_raw(&opts.target, opts.send_every, opts.reconnect, rx, &mut out).await
        } else {
            run(opts, rx, &mut out).await
        }
    });
    // Input may still be open (the server ended us: a policy close, a token that ended): its
    // reader waits in a read that may never return, and dropping the runtime would wait for it.
    runtime.shutdown_background();
    if let Some(editor) = editor {
        if !editor.thread.is_finished() {
            // The line editor owns the terminal and waits in a read of it: give the terminal
            // back as it was and leave it there (the process ends), so that why we stop (and
            // its exit code) comes at once, without an Enter.
            drop(out);
            let _ = editor.stop.send(None);
            let _ = editor.printing.join();
            if editor.saved.as_deref().is_some_and(restore_terminal) {
                return result;
            }
            // No `stty`: the editor must give the terminal back itself, after a line.
            let mut out = Output::Terminal {
                printer: Box::new(|line| eprintln!("{line}")),
                style: Style { color: false },
                bar: None,
                prompt: None,
            };
            match &result {
                Err(err) => out.notice(&format!("nanachat: {err}")),
                Ok(Exit::Refused(why)) => out.notice(&format!("nanachat: {why}")),
                Ok(Exit::Done) => {}
            }
            out.notice("* press Enter to exit");
            let _ = editor.thread.join();
            return result;
        }
        let _ = editor.thread.join();
        drop(out);
        let _ = editor.stop.send(None);
        let _ = editor.printing.join();
    }
    result
}

/// The line editor's threads, and the terminal's settings from before it.
struct Editor {
    /// Reads lines.
    thread: std::thread::JoinHandle<()>,
    /// Prints what the client shows, in order.
    printing: std::thread::JoinHandle<()>,
    /// Ends `printing` once what is queued before it is printed.
    stop: std::sync::mpsc::Sender<Option<String>>,
    /// `stty -g`: the terminal's settings before the editor took it, if `stty` could say.
    saved: Option<String>,
}

/// The terminal's settings, as `stty -g` gives them.
fn terminal_settings() -> Option<String> {
    let out = std::process::Command::new("stty")
        .arg("-g")
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let saved = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !saved.trim().is_empty()).then(|| saved.trim().to_owned())
}

/// Puts the terminal back as `saved` says (and bracketed paste off), on a fresh row: whether
/// it could.
fn restore_terminal(saved: &str) -> bool {
    use std::io::Write;
    let restored = std::process::Command::new("stty")
        .arg(saved)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut out = std::io::stdout();
    if restored && out.is_terminal() {
        let _ = write!(out, "\x1b[?2004l\r\x1b[2K").and_then(|()| out.flush());
    }
    restored
}

/// A line editor on its own thread: lines go to `tx`; what the client prints appears above the
/// line being typed, which stays intact. The prompt names the current room (see [`Prompt`]).
///
/// Ctrl-C drops the line being typed and says how to quit; a Ctrl-C on an empty line right
/// after another quits (one on a typed line never does), as does Ctrl-D on an empty line.
/// Lines typed ahead or pasted go to the client at once; only a command that may change the
/// room waits (briefly) for the client, so that the next prompt names the room. Ctrl-N and Ctrl-P switch to the user's next and previous room
/// (`/switch >`, `/switch <`, as irssi's windows), keeping the line being typed (history is on
/// the arrows; Alt-digits are rustyline's repeat counts, not free to bind). On a resize
/// (SIGWINCH) rustyline redraws the line from the rows where the terminal has rewrapped it at
/// the new width (the project's copy of rustyline: see `vendor/rustyline/NANACHAT.md`).
fn line_editor(tx: tokio::sync::mpsc::Sender<Input>, room: &str) -> Result<(Output, Editor)> {
    use rustyline::ExternalPrinter;
    use rustyline::error::ReadlineError;
    let terminal = |err| Error::file("open the terminal", std::path::Path::new("/dev/tty"), err);
    let saved = terminal_settings();
    let mut editor = rustyline::DefaultEditor::new().map_err(terminal)?;
    let hotkey = Hotkey::default();
    for key in ['N', 'P', 'C'] {
        editor.bind_sequence(
            rustyline::KeyEvent::ctrl(key),
            rustyline::EventHandler::Conditional(Box::new(hotkey.clone())),
        );
    }
    let mut printer = editor.create_external_printer().map_err(terminal)?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let (prompt, reader) = Prompt::new();
    // Between two lines (the client handles the one just typed) the editor does not hold the
    // terminal: a line printed then is written as it is, and must end its row itself, or the
    // next prompt would be drawn over it.
    let reading = Arc::new(AtomicBool::new(false));
    let editing = reading.clone();
    // The client never waits for the terminal: rustyline's printer blocks while the editor
    // reads what was typed ahead or pasted (it prefers keys), and a client blocked there would
    // stall every line after it. Lines queue here, for a thread that prints them in order.
    // `None` ends the thread.
    let (lines, queue) = std::sync::mpsc::channel::<Option<String>>();
    let stop = lines.clone();
    let printing = std::thread::spawn(move || {
        for mut line in queue.into_iter().map_while(|line| line) {
            if !editing.load(Ordering::SeqCst) {
                line.push('\n');
            }
            let _ = printer.print(line);
        }
    });
    let echoes = lines.clone();
    let mut output = Output::Terminal {
        printer: Box::new(move |line| {
            let _ = lines.send(Some(line));
        }),
        style: Style { color },
        bar: None,
        prompt: Some(prompt),
    };
    output.set_room(Some(room));
    let thread = std::thread::spawn(move || {
        let mut interrupted = false;
        // The line being typed when a hotkey was pressed, and where the cursor was in it.
        let mut kept = (String::new(), 0);
        loop {
            reading.store(true, Ordering::SeqCst);
            let (line, pos) = std::mem::take(&mut kept);
            let prompt = reader.text();
            let columns = editor.dimensions().map_or(0, |(cols, _)| usize::from(cols));
            reader.set_columns(columns);
            let read = editor.readline_with_initial(&prompt, line.split_at(pos));
            reading.store(false, Ordering::SeqCst);
            match read {
                Ok(line) => {
                    interrupted = false;
                    let echo = format!("{prompt}{line}");
                    reader.entered(&echo, rows(&mut editor, &echo), |echo| {
                        let _ = echoes.send(Some(echo));
                    });
                    let _ = editor.add_history_entry(line.as_str());
                    let quit = line.trim() == "/quit" || line.trim() == "/q";
                    let moves = changes_room(&line);
                    reader.forget();
                    if tx.blocking_send(Input::Line(line)).is_err() || quit {
                        break;
                    }
                    // Only a line that may take the user elsewhere waits (briefly) for the next
                    // prompt to name where: text typed ahead or pasted goes on at once.
                    if moves {
                        reader.wait_handled();
                    }
                }
                Err(ReadlineError::Interrupted) => match hotkey.take() {
                    // A hotkey ended the line to run its command; the line comes back after.
                    Some(Pressed::Switch(command, line, pos)) => {
                        kept = (line, pos);
                        reader.forget();
                        if tx.blocking_send(Input::Line(command)).is_err() {
                            break;
                        }
                        reader.wait_handled();
                    }
                    // Ctrl-C on an empty line, right after a Ctrl-C: quit. One on a line being
                    // typed only clears it, however many came before.
                    Some(Pressed::CtrlC { empty: true, .. }) | None if interrupted => {
                        let _ = tx.blocking_send(Input::Line("/quit".into()));
                        break;
                    }
                    pressed => {
                        // The line cleared stays in sight (as a shell shows it), the notice
                        // under it, and the bar, if it shows, below them.
                        interrupted = true;
                        let line = match pressed {
                            Some(Pressed::CtrlC { line, .. }) => line,
                            _ => String::new(),
                        };
                        let echo = format!("{prompt}{line}^C");
                        let send = |text| {
                            let _ = echoes.send(Some(text));
                        };
                        reader.entered(&echo, rows(&mut editor, &echo), send);
                        reader.above(&visible_notice(color, CTRL_C), send);
                    }
                },
                Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    break;
                }
            }
        }
    });
    Ok((
        output,
        Editor {
            thread,
            printing,
            stop,
            saved,
        },
    ))
}

/// How many rows of the terminal `echo` (a prompt and its line) took; one if the width is not
/// known. Characters are counted as one column each (a wide one makes this short).
fn rows(editor: &mut rustyline::DefaultEditor, echo: &str) -> usize {
    let cols = editor.dimensions().map_or(0, |(cols, _)| usize::from(cols));
    if cols == 0 {
        return 1;
    }
    echo.chars().count().div_ceil(cols).max(1)
}

/// Whether a line typed is a command that may change the current room (and so the prompt).
fn changes_room(line: &str) -> bool {
    let verb = line.trim_start().split(' ').next().unwrap_or_default();
    matches!(verb, "/join" | "/switch" | "/leave" | "/nick" | "/msg")
}

/// Ctrl-N, Ctrl-P: ends the line being edited (as an interrupt) after keeping it, and the
/// command it stands for (`/switch >`, `/switch <`), for the editor's thread to run before it
/// edits the line again.
#[derive(Clone, Default)]
struct Hotkey {
    pressed: Arc<Mutex<Option<Pressed>>>,
}

/// A key that ended the line being edited.
enum Pressed {
    /// Ctrl-N, Ctrl-P: the command, the line being typed and the cursor's place in it.
    Switch(String, String, usize),
    /// Ctrl-C, on an empty line or not.
    CtrlC {
        /// Nothing was typed.
        empty: bool,
        /// What was typed (dropped).
        line: String,
    },
}

impl Hotkey {
    /// The key that ended the line, if it was one of ours.
    fn take(&self) -> Option<Pressed> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pressed>> {
        self.pressed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl rustyline::ConditionalEventHandler for Hotkey {
    fn handle(
        &self,
        evt: &rustyline::Event,
        _: rustyline::RepeatCount,
        _: bool,
        ctx: &rustyline::EventContext<'_>,
    ) -> Option<rustyline::Cmd> {
        let way = match evt.get(0)? {
            rustyline::KeyEvent(rustyline::KeyCode::Char('N'), _) => ">",
            rustyline::KeyEvent(rustyline::KeyCode::Char('P'), _) => "<",
            rustyline::KeyEvent(rustyline::KeyCode::Char('C'), _) => {
                let line = ctx.line().to_owned();
                let empty = line.is_empty();
                *self.lock() = Some(Pressed::CtrlC { empty, line });
                return Some(rustyline::Cmd::Interrupt);
            }
            _ => return None,
        };
        let command = format!("/switch {way}");
        *self.lock() = Some(Pressed::Switch(command, ctx.line().to_owned(), ctx.pos()));
        Some(rustyline::Cmd::Interrupt)
    }
}

/// What a first Ctrl-C says (the line being typed is dropped).
const CTRL_C: &str = "* Ctrl-C again or Ctrl-D to quit";

/// A notice as [`Output::notice`] shows it in a terminal: dimmed when in colour.
fn visible_notice(color: bool, text: &str) -> String {
    if color {
        format!("\x1b[2m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Scripting mode: every stdin line is input; the end of stdin is [`Input::Eof`].
async fn read_stdin(tx: tokio::sync::mpsc::Sender<Input>) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(Input::Line(line)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Input::Eof).await;
}
