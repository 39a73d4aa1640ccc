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
        if !editor.is_finished() {
            // The line editor owns the terminal; it must give it back before we exit.
            out.notice("* press Enter to exit");
        }
        let _ = editor.join();
    }
    result
}

/// A line editor on its own thread: lines go to `tx`; what the client prints appears above the
/// line being typed, which stays intact. The prompt names the current room (see [`Prompt`]).
///
/// Ctrl-C drops the line being typed and says how to quit; a second Ctrl-C in a row quits, as
/// does Ctrl-D on an empty line. Ctrl-N and Ctrl-P switch to the user's next and previous room
/// (`/switch >`, `/switch <`, as irssi's windows), keeping the line being typed (history is on
/// the arrows; Alt-digits are rustyline's repeat counts, not free to bind). On a resize
/// (SIGWINCH) rustyline redraws the line if it wraps at the new width, from the row its old
/// layout says; a terminal that reflows its rows itself can leave a copy above (rustyline's
/// handler replaces any other while it reads, so the client cannot redraw for it).
fn line_editor(
    tx: tokio::sync::mpsc::Sender<Input>,
    room: &str,
) -> Result<(Output, std::thread::JoinHandle<()>)> {
    use rustyline::ExternalPrinter;
    use rustyline::error::ReadlineError;
    let terminal = |err| Error::file("open the terminal", std::path::Path::new("/dev/tty"), err);
    let mut editor = rustyline::DefaultEditor::new().map_err(terminal)?;
    let hotkey = Hotkey::default();
    for key in ['N', 'P'] {
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
    let mut output = Output::Terminal {
        printer: Box::new(move |mut line| {
            if !editing.load(Ordering::SeqCst) {
                line.push('\n');
            }
            let _ = printer.print(line);
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
            let read = editor.readline_with_initial(&reader.text(), line.split_at(pos));
            reading.store(false, Ordering::SeqCst);
            match read {
                Ok(line) => {
                    interrupted = false;
                    let _ = editor.add_history_entry(line.as_str());
                    let quit = line.trim() == "/quit" || line.trim() == "/q";
                    reader.forget();
                    if tx.blocking_send(Input::Line(line)).is_err() || quit {
                        break;
                    }
                    reader.wait_handled();
                }
                Err(ReadlineError::Interrupted) => {
                    // A hotkey ended the line to run its command; the line comes back after.
                    if let Some((command, line, pos)) = hotkey.take() {
                        kept = (line, pos);
                        reader.forget();
                        if tx.blocking_send(Input::Line(command)).is_err() {
                            break;
                        }
                        reader.wait_handled();
                    } else if !interrupted {
                        // The editor is not reading: nothing else writes to the terminal now.
                        interrupted = true;
                        println!("\n{}", visible_notice(color, CTRL_C));
                    } else {
                        let _ = tx.blocking_send(Input::Line("/quit".into()));
                        break;
                    }
                }
                Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    break;
                }
            }
        }
    });
    Ok((output, thread))
}

/// Ctrl-N, Ctrl-P: ends the line being edited (as an interrupt) after keeping it, and the
/// command it stands for (`/switch >`, `/switch <`), for the editor's thread to run before it
/// edits the line again.
#[derive(Clone, Default)]
struct Hotkey {
    pressed: Arc<Mutex<Option<(String, String, usize)>>>,
}

impl Hotkey {
    /// The command, the line being typed and the cursor's place in it.
    fn take(&self) -> Option<(String, String, usize)> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, String, usize)>> {
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
            _ => return None,
        };
        *self.lock() = Some((format!("/switch {way}"), ctx.line().to_owned(), ctx.pos()));
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
