//! Where `nanachat connect` meets its user: a line editor on its own thread when stdin is a
//! terminal (what arrives is printed above the line being typed), or stdin read line by line
//! when a script drives it. Either way lines reach the client as [`Input`]s on one channel.

use std::io::IsTerminal;

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
        let (out, editor) = line_editor(tx)?;
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
/// line being typed, which stays intact.
fn line_editor(
    tx: tokio::sync::mpsc::Sender<Input>,
) -> Result<(Output, std::thread::JoinHandle<()>)> {
    use rustyline::ExternalPrinter;
    let terminal = |err| Error::file("open the terminal", std::path::Path::new("/dev/tty"), err);
    let mut editor = rustyline::DefaultEditor::new().map_err(terminal)?;
    let mut printer = editor.create_external_printer().map_err(terminal)?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let output = Output::Terminal {
        printer: Box::new(move |line| {
            let _ = printer.print(line);
        }),
        style: Style { color },
        bar: None,
    };
    let thread = std::thread::spawn(move || {
        loop {
            match editor.readline("> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    let quit = line.trim() == "/quit" || line.trim() == "/q";
                    if tx.blocking_send(Input::Line(line)).is_err() || quit {
                        break;
                    }
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    let _ = tx.blocking_send(Input::Line("/quit".into()));
                    break;
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
