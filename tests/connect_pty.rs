//! `nanachat connect` in a pseudo-terminal, as a person uses it, against a real `nanachat serve`
//! on port 0: rooms (`/join`, `/switch`, `/leave`, the prompt, names and recent lines on join,
//! DMs shown as `@nick`), a lost connection (one status line, quiet rejoins, lines marked
//! while they wait), and Ctrl-C.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::client::Client;
use common::{Proc, nanachat};
use rexpect::session::PtySession;
use serde_json::{Value, json};

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nanachat-pty-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve(dir: &Path, addr: &str) -> Proc {
    common::serve_child(dir, addr, 1000)
}

/// `nanachat connect URL --nick NICK` in a pseudo-terminal, without colours.
fn terminal(url: &str, nick: &str) -> PtySession {
    terminal_with(url, nick, &[])
}

/// [`terminal`] with more options.
fn terminal_with(url: &str, nick: &str, extra: &[&str]) -> PtySession {
    let mut cmd = nanachat();
    cmd.args(["connect", url, "--nick", nick])
        .args(extra)
        .env("NO_COLOR", "1");
    rexpect::session::spawn_command(cmd, Some(10_000)).unwrap()
}

/// A protocol client in `lobby`, played by the test.
async fn talker(url: &str, nick: &str) -> Client {
    let mut c = Client::hello(url, nick).await;
    c.join("lobby").await;
    c
}

/// A server on port 0, `mochi` talking in its lobby, and `nana` in a terminal, at her prompt.
struct Scene {
    server: Proc,
    url: String,
    mochi: Client,
    pty: PtySession,
}

impl Scene {
    async fn start(dir: &Path) -> Self {
        let server = serve(dir, "127.0.0.1:0");
        let url = server.listening_url();
        let mochi = talker(&url, "mochi").await;
        let mut pty = terminal(&url, "nana");
        pty.exp_string("* joined lobby").unwrap();
        pty.exp_string("[lobby] > ").unwrap();
        Scene {
            server,
            url,
            mochi,
            pty,
        }
    }
}

/// Reads until a message with this text; returns it.
async fn message(c: &mut Client, text: &str) -> Value {
    loop {
        let v = c.expect("message").await;
        if v["text"] == text {
            return v;
        }
    }
}

/// Says each text in lobby and waits for its ack.
async fn say_all(c: &mut Client, texts: &[&str]) {
    for (i, text) in texts.iter().enumerate() {
        let cid = format!("{text}-{i}");
        c.say("lobby", text, &cid).await;
        loop {
            let v = c.expect("ack").await;
            if v["cid"] == cid.as_str() {
                break;
            }
        }
    }
}

/// What rexpect reads for `text`: it takes each byte for a character, so a line with a
/// character outside ASCII is looked for byte by byte.
fn bytewise(text: &str) -> String {
    text.bytes().map(char::from).collect()
}

/// The exit code of the client once its terminal closed.
fn exit_code(mut pty: PtySession) -> i32 {
    pty.exp_eof().unwrap();
    match pty.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => code,
        other => panic!("{other:?}"),
    }
}

/// A terminal's screen that rewraps its rows when its width changes, as VTE, kitty, iTerm2,
/// tmux and Windows Terminal do: what a person sees of the client's output. It knows what the
/// line editor writes (text, CR, LF, cursor moves, erase in line and below) and ignores other
/// escape sequences.
struct Screen {
    rows: Vec<Row>,
    row: usize,
    col: usize,
    cols: usize,
}

/// One row of a [`Screen`].
#[derive(Default)]
struct Row {
    text: Vec<char>,
    /// The row's text goes on in the next row (it was wrapped, not ended by a newline).
    wraps: bool,
}

impl Screen {
    fn new(cols: usize) -> Self {
        Screen {
            rows: vec![Row::default()],
            row: 0,
            col: 0,
            cols,
        }
    }

    fn feed(&mut self, bytes: &str) {
        let mut chars = bytes.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => self.col = 0,
                '\n' => self.down(1),
                '\x07' => {}
                '\x1b' => {
                    if chars.next_if_eq(&'[').is_none() {
                        chars.next();
                        continue;
                    }
                    let mut params = String::new();
                    let mut last = ' ';
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            last = c;
                            break;
                        }
                        params.push(c);
                    }
                    let n = params.parse::<usize>().unwrap_or(0);
                    self.csi(last, &params, n);
                }
                c => self.put(c),
            }
        }
    }

    fn csi(&mut self, command: char, params: &str, n: usize) {
        let n1 = n.max(1);
        match command {
            'A' => {
                self.col = self.col.min(self.cols - 1);
                self.row = self.row.saturating_sub(n1);
            }
            'B' => {
                self.col = self.col.min(self.cols - 1);
                self.down(n1);
            }
            'C' => self.col = (self.col + n1).min(self.cols - 1),
            'D' => self.col = self.col.min(self.cols - 1).saturating_sub(n1),
            'K' if params == "2" => self.rows[self.row] = Row::default(),
            'K' => {
                let row = &mut self.rows[self.row];
                row.text.truncate(self.col);
                row.wraps = false;
            }
            'J' => {
                let row = &mut self.rows[self.row];
                row.text.truncate(self.col);
                row.wraps = false;
                self.rows.truncate(self.row + 1);
            }
            _ => {}
        }
    }

    fn down(&mut self, n: usize) {
        self.row += n;
        while self.rows.len() <= self.row {
            self.rows.push(Row::default());
        }
    }

    fn put(&mut self, c: char) {
        if self.col >= self.cols {
            self.rows[self.row].wraps = true;
            self.down(1);
            self.col = 0;
        }
        let text = &mut self.rows[self.row].text;
        while text.len() < self.col {
            text.push(' ');
        }
        if self.col < text.len() {
            text[self.col] = c;
        } else {
            text.push(c);
        }
        self.col += 1;
    }

    /// The terminal's new width: rows are rewrapped and the cursor goes where its character went.
    fn resize(&mut self, cols: usize) {
        let mut lines: Vec<Vec<char>> = Vec::new();
        let mut cursor = (0, 0);
        let mut open = false;
        for (i, row) in self.rows.iter().enumerate() {
            if !open {
                lines.push(Vec::new());
            }
            let index = lines.len() - 1;
            let line = &mut lines[index];
            if i == self.row {
                cursor = (index, line.len() + self.col);
            }
            line.extend(&row.text);
            if row.wraps {
                line.resize(
                    line.len().max((line.len()).div_ceil(self.cols) * self.cols),
                    ' ',
                );
            }
            open = row.wraps;
        }
        self.cols = cols;
        self.rows.clear();
        for (i, line) in lines.iter().enumerate() {
            let chunks: Vec<&[char]> = line.chunks(cols).collect();
            let first = self.rows.len();
            if chunks.is_empty() {
                self.rows.push(Row::default());
            }
            for (k, chunk) in chunks.iter().enumerate() {
                self.rows.push(Row {
                    text: chunk.to_vec(),
                    wraps: k + 1 < chunks.len(),
                });
            }
            if i == cursor.0 {
                let (row, col) = (cursor.1 / cols, cursor.1 % cols);
                // The cursor just after a full row stays at its end (a pending wrap).
                let (row, col) = match (row, col) {
                    (r, 0) if r > 0 && r == chunks.len() => (r - 1, cols),
                    rc => rc,
                };
                self.row = first + row;
                self.col = col;
                self.down(0);
            }
        }
    }

    /// Every line on the screen (rows joined where they wrap), without trailing blanks.
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![String::new()];
        for row in &self.rows {
            lines.last_mut().unwrap().extend(&row.text);
            if !row.wraps {
                lines.push(String::new());
            }
        }
        lines
            .iter()
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Gives the pseudo-terminal a new size, as a terminal window does when it is resized (the
/// kernel sends the client SIGWINCH).
fn resize(pty: &PtySession, cols: usize) {
    use std::os::fd::AsRawFd;
    let master = pty.process().get_file_handle().unwrap();
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", master.as_raw_fd())).unwrap();
    let index = info
        .lines()
        .find_map(|l| l.strip_prefix("tty-index:"))
        .expect("a pseudo-terminal's index in fdinfo")
        .trim()
        .to_owned();
    let status = std::process::Command::new("stty")
        .args([
            "-F",
            &format!("/dev/pts/{index}"),
            "cols",
            &cols.to_string(),
            "rows",
            "24",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The end of a redraw of the line being typed (rustyline's synchronized update).
const REDRAWN: &str = "\x1b[?2026l";

/// Issue 19 item 5: a resize redraws the line being typed cleanly, on a terminal that rewraps
/// its rows (as most do): narrowing leaves no copy of the prompt and the line above it, and
/// widening erases none of the output above it. The line typed is then sent whole.
#[tokio::test]
async fn under_a_terminal_a_resize_redraws_the_line_being_typed_once() {
    let dir = scratch("resize");
    let Scene {
        server: _server,
        mut mochi,
        mut pty,
        ..
    } = Scene::start(&dir).await;
    resize(&pty, 80);
    let mut seen = String::new();
    mochi.say("lobby", "hello from mochi", "m1").await;
    seen += &pty.exp_string("hello from mochi").unwrap();
    seen += "hello from mochi";
    let typed: String = ('a'..='z').cycle().take(60).collect();
    pty.send(&typed).unwrap();
    pty.flush().unwrap();
    seen += &pty.exp_string(&typed).unwrap();
    seen += &typed;
    let mut screen = Screen::new(80);
    screen.feed(&seen);
    let shown = |screen: &Screen| screen.lines().join("\n");
    let prompt_and_line = format!("[lobby] > {typed}");
    assert!(
        screen.lines().contains(&prompt_and_line),
        "{}",
        shown(&screen)
    );
    // 70 columns of prompt and line: two rows at 40, one again at 80; then with the cursor at
    // the start of the line, not at its end.
    for (cols, then) in [
        (40, ""),
        (80, ""),
        (30, ""),
        (100, "\x01"),
        (40, ""),
        (80, ""),
    ] {
        resize(&pty, cols);
        screen.resize(cols);
        let redraw = pty.exp_string(REDRAWN).unwrap();
        screen.feed(&redraw);
        let lines = screen.lines();
        let shown = lines.join("\n");
        let prompts: usize = lines.iter().map(|l| l.matches("[lobby] > ").count()).sum();
        assert_eq!(prompts, 1, "at {cols} columns:\n{shown}");
        assert_eq!(lines.last(), Some(&prompt_and_line), "at {cols}:\n{shown}");
        let above = &lines[lines.len() - 2];
        assert!(above.ends_with("hello from mochi"), "at {cols}:\n{shown}");
        if !then.is_empty() {
            // Ctrl-A: the cursor goes back 60 columns, to just after the prompt.
            pty.send(then).unwrap();
            pty.flush().unwrap();
            let moved = "\x1b[60D";
            let before = pty.exp_string(moved).unwrap();
            screen.feed(&(before + moved));
        }
    }
    pty.send("\r").unwrap();
    pty.flush().unwrap();
    assert_eq!(message(&mut mochi, &typed).await["from"], "nana");
}

/// Issue 19 item 5 (from an attack on the docs): a line typed across the right edge stays one
/// line for the terminal — the editor's wrap at the edge is the terminal's own, never a hard
/// line break — so a resize after it redraws it once too (a copy of its first row stayed).
#[tokio::test]
async fn under_a_terminal_a_line_typed_across_the_edge_is_redrawn_once_on_a_resize() {
    let dir = scratch("resize-typed");
    let Scene {
        server: _server,
        mut mochi,
        mut pty,
        ..
    } = Scene::start(&dir).await;
    let mut screen = Screen::new(80);
    mochi.say("lobby", "hello from mochi", "m1").await;
    let mut seen = pty.exp_string("hello from mochi").unwrap();
    seen += "hello from mochi";
    screen.feed(&seen);
    resize(&pty, 40);
    screen.resize(40);
    screen.feed(&pty.exp_string(REDRAWN).unwrap());
    // 10 columns of prompt and 30 of text fill the row to its edge (the editor redraws the
    // line there); 10 more go on below it.
    let (edge, more): (String, String) = (
        ('a'..='z').cycle().take(30).collect(),
        ('0'..='9').collect(),
    );
    pty.send(&edge).unwrap();
    pty.flush().unwrap();
    screen.feed(&pty.exp_string(REDRAWN).unwrap());
    pty.send(&more).unwrap();
    pty.flush().unwrap();
    let echoed = pty.exp_string(&more).unwrap();
    screen.feed(&(echoed + &more));
    let prompt_and_line = format!("[lobby] > {edge}{more}");
    for cols in [80, 40, 25, 120] {
        resize(&pty, cols);
        screen.resize(cols);
        screen.feed(&pty.exp_string(REDRAWN).unwrap());
        let lines = screen.lines();
        let shown = lines.join("\n");
        let prompts: usize = lines.iter().map(|l| l.matches("[lobby] > ").count()).sum();
        assert_eq!(prompts, 1, "at {cols} columns:\n{shown}");
        assert_eq!(lines.last(), Some(&prompt_and_line), "at {cols}:\n{shown}");
        let above = &lines[lines.len() - 2];
        assert!(above.ends_with("hello from mochi"), "at {cols}:\n{shown}");
    }
    pty.send("\r").unwrap();
    pty.flush().unwrap();
    let said = message(&mut mochi, &format!("{edge}{more}")).await;
    assert_eq!(said["from"], "nana");
}

/// What rexpect read (a byte for each character) as the text the terminal was sent.
fn utf8(read: &str) -> String {
    String::from_utf8(read.chars().map(|c| c as u8).collect()).unwrap()
}

/// Issue 19 (from an attack on the docs): on a terminal narrower than the status bar's text,
/// the bar stays one row, cut to fit: a bar that wrapped left a copy of its first row at each
/// retry while offline.
#[tokio::test]
async fn under_a_narrow_terminal_the_status_bar_stays_one_row() {
    let dir = scratch("narrow-bar");
    let mut server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let mut pty = terminal(&url, "nana");
    let mut screen = Screen::new(80);
    screen.feed(&utf8(
        &(pty.exp_string("[lobby] > ").unwrap() + "[lobby] > "),
    ));
    resize(&pty, 30);
    screen.resize(30);
    screen.feed(&utf8(&pty.exp_string(REDRAWN).unwrap()));
    // The width is read as a line starts: an empty one.
    pty.send("\r").unwrap();
    pty.flush().unwrap();
    screen.feed(&utf8(
        &(pty.exp_string("[lobby] > ").unwrap() + "[lobby] > "),
    ));
    server.kill();
    let third = bytewise("try 3 in");
    screen.feed(&utf8(&(pty.exp_string(&third).unwrap() + &third)));
    let lines = screen.lines();
    let bars: Vec<&String> = lines.iter().filter(|l| l.contains("offline")).collect();
    assert_eq!(bars.len(), 1, "{lines:#?}");
    assert!(bars[0].chars().count() < 30, "{lines:#?}");
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 item 3: the current room is in the prompt; `/join` of a room already joined
/// switches to it without an error; `/switch` moves between joined rooms (and to `@nick`, a
/// DM); a first join shows the members and the last lines; `/leave` of the current room moves
/// to another; an unknown command is called unknown; DMs are `@nick`, never `@a+b`.
#[tokio::test]
async fn under_a_terminal_rooms_are_switched_left_and_named_as_a_person_expects() {
    let dir = scratch("rooms");
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let mut mochi = talker(&url, "mochi").await;
    say_all(&mut mochi, &["old one", "old two", "old three"]).await;

    let mut pty = terminal(&url, "nana");
    pty.exp_string("* joined lobby").unwrap();
    // Who is there and what was said last, as IRC's NAMES and a chat's recent history.
    pty.exp_string("* in lobby: mochi, nana").unwrap();
    pty.exp_string("[lobby] mochi: old one").unwrap();
    pty.exp_string("[lobby] mochi: old three").unwrap();
    pty.exp_string("[lobby] > ").unwrap();

    // Already there: no error, just there.
    pty.send_line("/join lobby").unwrap();
    let said = pty.exp_string("* now in lobby").unwrap();
    assert!(!said.contains("already_joined"), "{said:?}");
    pty.exp_string("[lobby] > ").unwrap();

    pty.send_line("/join dev").unwrap();
    pty.exp_string("* joined dev").unwrap();
    pty.exp_string("* in dev: nana").unwrap();
    pty.exp_string("[dev] > ").unwrap();

    pty.send_line("/switch lobby").unwrap();
    pty.exp_string("[lobby] > ").unwrap();
    pty.send_line("said in lobby").unwrap();
    assert_eq!(message(&mut mochi, "said in lobby").await["room"], "lobby");

    pty.send_line("/bogus").unwrap();
    pty.exp_string("unknown command /bogus").unwrap();

    // A DM is shown with the other's nick, and /switch @nick talks to them.
    let dm = json!({"type": "dm", "to": "nana", "text": "psst", "cid": "dm-1"});
    mochi.send(dm).await;
    let shown = pty.exp_string("mochi: psst").unwrap();
    assert!(shown.ends_with("[@mochi] "), "{shown:?}");
    assert!(!shown.contains("@mochi+nana"), "{shown:?}");
    pty.send_line("/switch @mochi").unwrap();
    pty.exp_string("[@mochi] > ").unwrap();
    pty.send_line("back at you").unwrap();
    let back = message(&mut mochi, "back at you").await;
    assert_eq!(
        (&back["room"], &back["from"]),
        (&json!("@mochi+nana"), &json!("nana"))
    );
    let echo = pty.exp_string("nana: back at you").unwrap();
    assert!(echo.ends_with("[@mochi] "), "{echo:?}");

    // By number, in /switch's list: 1 dev, 2 lobby, 3 @mochi.
    pty.send_line("/switch").unwrap();
    pty.exp_string("* your rooms: 1 dev, 2 lobby, 3 @mochi (now: @mochi)")
        .unwrap();
    pty.send_line("/switch 2").unwrap();
    pty.exp_string("[lobby] > ").unwrap();
    // Ctrl-P is the previous room (as irssi's windows), and the line being typed stays.
    pty.send("half").unwrap();
    pty.flush().unwrap();
    pty.exp_string("half").unwrap();
    pty.send_control('p').unwrap();
    pty.exp_string("[dev] > half").unwrap();
    pty.send_line(", then whole").unwrap();
    pty.exp_string("[dev] nana: half, then whole").unwrap();
    // Leaving the current room moves to another: the next line is said there, not refused.
    pty.send_line("/leave").unwrap();
    pty.exp_string("* left dev").unwrap();
    pty.exp_string("* now in lobby").unwrap();
    pty.exp_string("[lobby] > ").unwrap();
    pty.send_line("still talking").unwrap();
    assert_eq!(message(&mut mochi, "still talking").await["room"], "lobby");
    pty.send_line("/leave").unwrap();
    pty.exp_string("* you are in no room now").unwrap();
    pty.send_line("into the void").unwrap();
    let said = pty.exp_string("you are in no room: /join ROOM").unwrap();
    assert!(!said.contains("not_joined"), "{said:?}");
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 item 4: a line the server is slow to acknowledge is marked as sending; a lost
/// connection is one line, then a status bar rewritten in place with each attempt; a line typed
/// meanwhile is marked as sending; the client is back within a few
/// seconds of the server, in one line (no `* joined` burst), and the line is then shown as
/// stored. `/reconnect` reconnects at once.
#[tokio::test]
async fn under_a_terminal_a_lost_connection_is_one_status_line_and_waiting_lines_are_marked() {
    let dir = scratch("reconnect");
    let mut server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let addr = url.trim_start_matches("ws://").to_owned();

    let mut pty = terminal_with(&url, "nana", &["--join", "lobby", "--join", "dev"]);
    // Rooms are joined in the order of their names.
    pty.exp_string("* joined dev").unwrap();
    pty.exp_string("* joined lobby").unwrap();

    // A server that does not answer (stopped): a line not acknowledged within a second is
    // marked; once acknowledged it is shown as stored.
    server.signal("STOP");
    pty.send_line("said to a stopped server").unwrap();
    pty.exp_string(&bytewise(
        "… [lobby] nana: said to a stopped server (sending)",
    ))
    .unwrap();
    server.signal("CONT");
    let stored = pty
        .exp_regex(r"#\d+ \[lobby\] nana: said to a stopped server")
        .unwrap();
    assert!(!stored.0.contains("joined"), "{stored:?}");

    server.kill();
    pty.exp_string("* disconnected (").unwrap();
    pty.exp_string(&bytewise("offline · try 1 in")).unwrap();
    pty.send_line("typed while down").unwrap();
    pty.exp_string(&bytewise("… [lobby] nana: typed while down (sending)"))
        .unwrap();
    // Each attempt rewrites the bar's row (up one row, clear it): no new line per attempt.
    // By the 7th the back-off is at its cap: the next attempt comes within 3 s.
    let between = pty.exp_string(&bytewise("offline · try 7 in")).unwrap();
    assert!(!between.contains("disconnected"), "{between:?}");
    assert!(between.contains("\x1b[1A\r\x1b[2K"), "{between:?}");

    let server = serve(&dir, &addr);
    server.listening_url();
    let back = Instant::now();
    pty.exp_string("* reconnected").unwrap();
    assert!(
        back.elapsed() < Duration::from_millis(4500),
        "back {:?} after the server",
        back.elapsed()
    );
    // Shown as stored (with its seq), and nothing but that: no `* joined` burst.
    let quiet = pty.exp_string("[lobby] nana: typed while down").unwrap();
    assert!(!quiet.contains("joined"), "{quiet:?}");
    assert!(!quiet.contains("connected as"), "{quiet:?}");
    let mut mochi = talker(&url, "mochi").await;
    say_all(&mut mochi, &["welcome back"]).await;
    let quiet = pty.exp_string("mochi: welcome back").unwrap();
    assert!(!quiet.contains("joined dev"), "{quiet:?}");

    pty.send_line("/reconnect").unwrap();
    pty.exp_string("* reconnecting now").unwrap();
    pty.exp_string("* reconnected").unwrap();
    pty.send_line("after reconnect").unwrap();
    assert_eq!(
        message(&mut mochi, "after reconnect").await["room"],
        "lobby"
    );
    // The line typed offline was stored once.
    mochi
        .send(json!({"type": "history", "room": "lobby", "limit": 200}))
        .await;
    let history = mochi.expect("history").await;
    let copies = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "typed while down")
        .count();
    assert_eq!(copies, 1, "{history}");
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 item 5 (and as an attacker tried it): a Ctrl-C on a line being typed only clears
/// it — nothing of it is sent — even right after another Ctrl-C; only a Ctrl-C on an empty
/// line right after one quits (with 0), and so does Ctrl-D on an empty line.
#[tokio::test]
async fn under_a_terminal_ctrl_c_on_a_typed_line_never_quits() {
    let dir = scratch("ctrl-c-draft");
    let Scene {
        server: _server,
        url,
        mut mochi,
        mut pty,
    } = Scene::start(&dir).await;
    // A draft, Ctrl-C; another draft, Ctrl-C: cleared each time, never quitting.
    for draft in ["abc", "important draft"] {
        pty.send(draft).unwrap();
        pty.flush().unwrap();
        pty.exp_string(draft).unwrap();
        pty.send_control('c').unwrap();
        pty.exp_string("* Ctrl-C again or Ctrl-D to quit").unwrap();
        pty.exp_string("[lobby] > ").unwrap();
    }
    pty.send_line("still here").unwrap();
    let m = mochi.expect("message").await;
    assert_eq!(m["text"], "still here", "the cleared lines were not sent");
    // Now an empty line: Ctrl-C, Ctrl-C quits with 0; and so does Ctrl-D on an empty line.
    pty.send_control('c').unwrap();
    pty.exp_string("* Ctrl-C again or Ctrl-D to quit").unwrap();
    pty.send_control('c').unwrap();
    assert_eq!(exit_code(pty), 0);
    let mut pty = terminal(&url, "nana");
    pty.exp_string("* joined lobby").unwrap();
    pty.send_control('d').unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (an attack on items 3-5): 100 lines pasted at once (one write, no bracketed paste;
/// more than the editor hands the client ahead) are all delivered
/// promptly, in order, once: the editor does not wait for the client between lines of text.
#[tokio::test]
async fn under_a_terminal_a_pasted_burst_is_delivered_at_once_in_order() {
    let dir = scratch("paste");
    let Scene {
        server: _server,
        url: _,
        mut mochi,
        mut pty,
    } = Scene::start(&dir).await;
    let paste: String = (1..=100).map(|n| format!("burst {n}\r")).collect();
    pty.send(&paste).unwrap();
    pty.flush().unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < 100 {
        let m = tokio::time::timeout(Duration::from_secs(15), mochi.expect("message"))
            .await
            .unwrap_or_else(|_| panic!("only {} of 100 after {:?}", got.len(), start.elapsed()));
        got.push(m["text"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (1..=100).map(|n| format!("burst {n}")).collect();
    assert_eq!(got, want);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "100 lines took {:?}",
        start.elapsed()
    );
    // Once: nothing more comes after them.
    pty.send_line("the end").unwrap();
    assert_eq!(mochi.expect("message").await["text"], "the end");
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 item 4: while offline, a line typed (or cleared by Ctrl-C) does not leave a copy of
/// the status bar in the scrollback: the line is written over the bar's row and the bar again
/// below it, so the bar's next rewrite (one row up from the prompt) finds it.
#[tokio::test]
async fn under_a_terminal_a_line_typed_offline_leaves_no_frozen_bar() {
    let dir = scratch("offline-bar");
    let mut server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();

    let mut pty = terminal(&url, "nana");
    pty.exp_string("* joined lobby").unwrap();
    server.kill();
    pty.exp_string(&bytewise("offline · try 1 in")).unwrap();
    pty.send_line("typed while down").unwrap();
    // Up two rows from below the entered line (to the bar's), cleared down, the line there,
    // the bar below.
    pty.exp_string(&bytewise(
        "\x1b[2A\r\x1b[J[lobby] > typed while down\r\noffline · try",
    ))
    .unwrap();
    pty.exp_string(&bytewise("… [lobby] nana: typed while down (sending)"))
        .unwrap();
    // A line that wraps (the terminal is 80 columns): up as many rows as it took, and one.
    let long = "x".repeat(100);
    pty.send_line(&long).unwrap();
    pty.exp_string(&bytewise(&format!(
        "\x1b[3A\r\x1b[J[lobby] > {long}\r\noffline · try"
    )))
    .unwrap();
    // A draft cleared by Ctrl-C stays in sight, marked, with the notice under it, above the bar.
    pty.send("a draft").unwrap();
    pty.flush().unwrap();
    pty.exp_string("a draft").unwrap();
    pty.send_control('c').unwrap();
    pty.exp_string(&bytewise(
        "\x1b[2A\r\x1b[J[lobby] > a draft^C\r\noffline · try",
    ))
    .unwrap();
    pty.exp_string(&bytewise(
        "\x1b[1A\r\x1b[2K* Ctrl-C again or Ctrl-D to quit\r\noffline · try",
    ))
    .unwrap();
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (an attack on items 1 and 7: what a failed start shows): when the client cannot connect, the reason
/// comes at once with its exit code, without waiting for an Enter.
#[tokio::test]
async fn under_a_terminal_a_refused_start_says_why_and_exits_without_enter() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut pty = terminal(&url, "nana");
    let said = pty
        .exp_string("is `nanachat serve` running there?")
        .unwrap();
    assert!(!said.contains("press Enter"), "{said:?}");
    assert_ne!(exit_code(pty), 0);

    // A taken nick: refused by the server.
    let dir = scratch("refused-start");
    let server = serve(&dir, "127.0.0.1:0");
    let url = server.listening_url();
    let _mochi = talker(&url, "mochi").await;
    let mut pty = terminal(&url, "mochi");
    let said = pty.exp_string("choose another nick").unwrap();
    assert!(!said.contains("press Enter"), "{said:?}");
    assert_ne!(exit_code(pty), 0);

    // wss:// to a server without TLS.
    let plain = url.replace("ws://", "wss://");
    let mut pty = terminal(&plain, "nana");
    let said = pty.exp_string("does not speak TLS here").unwrap();
    assert!(!said.contains("press Enter"), "{said:?}");
    assert_ne!(exit_code(pty), 0);

    // No token for a server that wants one.
    let secret = dir.join("secret");
    common::write_secret(&secret, "a-secret-of-at-least-32-bytes-for-the-test\n");
    let auth = common::serve_child_with(
        &dir.join("auth"),
        "127.0.0.1:0",
        1000,
        &["--auth-secret-file", secret.to_str().unwrap()],
    );
    let mut pty = terminal(&auth.listening_url(), "nana");
    let said = pty.exp_string("this server needs a token").unwrap();
    assert!(!said.contains("press Enter"), "{said:?}");
    assert_ne!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from the terminal attack): `/switch @nobody` went to a room that does not exist,
/// and `/who` there named the internal `@a+b` room. `/switch @nick` goes only to a
/// conversation the client has (else one line says how to start one, and the room stays);
/// `/who` in a DM lists the two nicks; a refusal about a DM names it `@mochi`, never `@a+b`.
#[tokio::test]
async fn under_a_terminal_switch_to_a_nick_without_a_conversation_stays_and_a_dm_is_never_a_plus_b()
{
    let dir = scratch("switch-nobody");
    let Scene {
        server: _server,
        url: _,
        mut mochi,
        mut pty,
    } = Scene::start(&dir).await;
    pty.send_line("/switch @nobody").unwrap();
    let said = pty
        .exp_string("! no conversation with @nobody (/msg nobody TEXT starts one)")
        .unwrap();
    assert!(!said.contains("+nobody"), "{said:?}");
    pty.exp_string("[lobby] > ").unwrap();
    // The room stays: a line goes to lobby.
    pty.send_line("still in lobby").unwrap();
    assert_eq!(message(&mut mochi, "still in lobby").await["room"], "lobby");
    pty.send_line("/who @nobody").unwrap();
    pty.exp_string("! no conversation with @nobody").unwrap();

    // A conversation we have: /who lists the pair, named as the user knows it.
    let dm = json!({"type": "dm", "to": "nana", "text": "psst", "cid": "dm-1"});
    mochi.send(dm).await;
    pty.exp_string("mochi: psst").unwrap();
    pty.send_line("/switch @mochi").unwrap();
    pty.exp_string("[@mochi] > ").unwrap();
    pty.send_line("/who").unwrap();
    let who = pty.exp_string("* in @mochi: mochi, nana").unwrap();
    assert!(!who.contains("@mochi+nana"), "{who:?}");
    // A refusal about the DM room (no message #99 there) names it @mochi.
    pty.send_line("/edit 99 better").unwrap();
    let refused = pty.exp_string("(/edit #99)").unwrap();
    assert!(refused.contains("@mochi"), "{refused:?}");
    assert!(!refused.contains("@mochi+nana"), "{refused:?}");
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from the terminal attack): refusals began with the protocol's code
/// (`! no_such_nick: …`). They are the sentence alone, for a person who never read the
/// protocol; and where the server's words are for programs, the client's.
#[tokio::test]
async fn under_a_terminal_refusals_are_sentences_without_protocol_codes() {
    let dir = scratch("refusals");
    let Scene {
        server: _server,
        url: _,
        mochi: _mochi,
        mut pty,
    } = Scene::start(&dir).await;
    pty.send_line("/msg nobody are you there?").unwrap();
    let refused = pty
        .exp_regex(r"! [^\r\n]*nobody is connected as nobody[^\r\n]*")
        .unwrap()
        .1;
    assert!(
        refused.starts_with("! nobody is connected as nobody"),
        "{refused:?}"
    );
    // A room name the server refuses, and a room not joined.
    pty.send_line("/join bad!room").unwrap();
    let refused = pty.exp_regex(r"! [^\r\n]*\(/join bad!room\)").unwrap().1;
    assert!(refused.starts_with("! a room is 1 to 64"), "{refused:?}");
    pty.send_line("/who elsewhere").unwrap();
    let refused = pty.exp_regex(r"! [^\r\n]*elsewhere[^\r\n]*").unwrap().1;
    for code in ["no_such_nick", "bad_room", "not_joined", "forbidden"] {
        assert!(!refused.contains(code), "{refused:?}");
    }
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The key of the terminal clients of this test process (their key file).
fn test_key() -> String {
    std::fs::read_to_string(common::test_key_file())
        .unwrap()
        .trim()
        .to_owned()
}

/// `mochi` writes to nana and nana, at her prompt, switches to the conversation.
async fn in_a_dm_with_mochi(mochi: &mut Client, pty: &mut PtySession) {
    let dm = json!({"type": "dm", "to": "nana", "text": "psst", "cid": "dm-1"});
    mochi.send(dm).await;
    pty.exp_string("mochi: psst").unwrap();
    pty.send_line("/switch @mochi").unwrap();
    pty.exp_string("[@mochi] > ").unwrap();
}

/// Issue 19 (from an attack on the docs): after `/nick` in a DM the prompt still named the DM
/// (`[@mochi] > `) while the next line went to lobby. The prompt after `/nick` names the room
/// the line goes to.
#[tokio::test]
async fn under_a_terminal_the_prompt_after_a_rename_in_a_dm_names_where_lines_go() {
    let dir = scratch("rename-prompt");
    let Scene {
        server: _server,
        mut mochi,
        mut pty,
        ..
    } = Scene::start(&dir).await;
    in_a_dm_with_mochi(&mut mochi, &mut pty).await;
    pty.send_line("/nick nana2").unwrap();
    pty.exp_string("* you are now nana2").unwrap();
    let prompt = pty.exp_string("[lobby] > ").unwrap();
    assert!(!prompt.contains("[@mochi] > "), "{prompt:?}");
    pty.send_line("where does this go").unwrap();
    let said = message(&mut mochi, "where does this go").await;
    assert_eq!(
        (&said["room"], &said["from"]),
        (&json!("lobby"), &json!("nana2"))
    );
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from an attack on the docs): renamed from another device while in a DM, the
/// client moved to lobby but the prompt still said `[@mochi] > `, and the private line typed
/// there went to lobby. A line typed under a prompt that named another room is not sent.
#[tokio::test]
async fn under_a_terminal_a_line_typed_in_a_dm_is_never_said_in_lobby_after_a_remote_rename() {
    let dir = scratch("rename-remote");
    let Scene {
        server: _server,
        url,
        mut mochi,
        mut pty,
    } = Scene::start(&dir).await;
    in_a_dm_with_mochi(&mut mochi, &mut pty).await;
    // nana's other device (same nick, same key) renames her: every connection of hers.
    let mut other = Client::hello_with_key(&url, "nana", Some(&test_key())).await;
    other.send(json!({"type": "nick", "nick": "nana3"})).await;
    other.expect("renamed").await;
    pty.exp_string("* you are now nana3").unwrap();
    pty.send_line("private words for mochi only").unwrap();
    pty.exp_string("! not sent: the prompt said @mochi, but you are in lobby now")
        .unwrap();
    pty.exp_string("[lobby] > ").unwrap();
    pty.send_line("said in lobby").unwrap();
    // The first line of nana3's that mochi gets is the one typed under `[lobby] > `.
    loop {
        let m = mochi.expect("message").await;
        if m["from"] == "nana3" {
            assert_eq!(
                (&m["room"], &m["text"]),
                (&json!("lobby"), &json!("said in lobby"))
            );
            break;
        }
    }
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from an attack on the docs): taking the old nick back within seconds of a rename
/// showed its DMs again (read positions went at most every 5 s, and the rename dropped them).
/// What was shown is told read before the `nick` goes out.
#[tokio::test]
async fn under_a_terminal_taking_a_nick_back_at_once_shows_its_dms_once() {
    let dir = scratch("rename-back");
    let Scene {
        server: _server,
        mut mochi,
        mut pty,
        ..
    } = Scene::start(&dir).await;
    for (text, cid) in [("one", "dm-1"), ("two", "dm-2")] {
        let dm = json!({"type": "dm", "to": "nana", "text": text, "cid": cid});
        mochi.send(dm).await;
        pty.exp_string(&format!("mochi: {text}")).unwrap();
    }
    pty.send_line("/nick nana4").unwrap();
    pty.exp_string("* you are now nana4").unwrap();
    pty.exp_string("[lobby] > ").unwrap();
    pty.send_line("/nick nana").unwrap();
    pty.exp_string("* you are now nana").unwrap();
    pty.exp_string("[lobby] > ").unwrap();
    pty.send_line("/inbox").unwrap();
    let before = pty.exp_string("@mochi (0 unread)").unwrap();
    assert!(!before.contains("unread from"), "{before:?}");
    pty.send_line("/quit").unwrap();
    let rest = pty.exp_eof().unwrap();
    assert!(!rest.contains("mochi: one"), "{rest:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19 (from an attack on the docs): beyond the server's `--max-rooms` the DM catch-up
/// printed `! cannot join …` for each conversation it could not open, and `/switch @nick`
/// refused a conversation `/inbox` lists (after `/leave @nick` too). The catch-up says the rest
/// in one line, and `/switch @nick` opens any conversation the server has for the user.
#[tokio::test]
async fn under_a_terminal_switch_opens_a_conversation_the_catch_up_left_or_the_user_closed() {
    let dir = scratch("switch-inbox");
    let server = common::serve_child_with(&dir, "127.0.0.1:0", 1000, &["--max-rooms", "3"]);
    let url = server.listening_url();
    // nana has a key (the test's key file): the server keeps what is sent to her.
    let mut pty = terminal(&url, "nana");
    pty.exp_string("[lobby] > ").unwrap();
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    for nick in ["w1", "w2", "w3"] {
        let key = format!("{nick}'s key");
        let mut w = Client::hello_with_key(&url, nick, Some(&key)).await;
        let text = format!("from {nick}");
        w.send(json!({"type": "dm", "to": "nana", "text": text, "cid": "m1"}))
            .await;
        w.expect("ack").await;
    }
    // lobby and one conversation: the server's 3 rooms, one left free.
    let mut pty = terminal(&url, "nana");
    pty.exp_string("* 1 unread from @w1").unwrap();
    let said = pty
        .exp_string("* 2 more conversations with unread messages: /inbox lists them")
        .unwrap();
    assert!(!said.contains('!') && !said.contains('+'), "{said:?}");
    pty.exp_string("w1: from w1").unwrap();
    pty.send_line("/switch @w3").unwrap();
    pty.exp_string("w3: from w3").unwrap();
    pty.exp_string("[@w3] > ").unwrap();
    pty.send_line("/leave @w1").unwrap();
    pty.exp_string("* left @w1").unwrap();
    pty.send_line("/switch @w1").unwrap();
    let switched = pty.exp_string("[@w1] > ").unwrap();
    assert!(!switched.contains("no conversation"), "{switched:?}");
    pty.send_line("/quit").unwrap();
    assert_eq!(exit_code(pty), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
