//! The terminal client (`nanachat connect`): chat from a terminal, or from a script.
//!
//! One loop serves both: input lines come in on a channel (from a line editor in its own thread
//! when stdin is a terminal, from stdin's lines otherwise), output goes to an [`Output`]. The
//! client keeps, per room, the last seq it has shown, and every message it sent that has no ack
//! yet. When the connection drops it reconnects with back-off and jitter, rejoins every room
//! with `since` = that seq (nothing missed; anything at or below it is not shown again) and
//! sends the unacknowledged messages again with their original `cid` (the server stores each
//! once).
//!
//! A token can come from a file (`--token-file`), read at start, on every reconnect and when the
//! server says the token expired: the client then sends the file's token in `refresh`, holds
//! what it says meanwhile, and sends again what the server refused with `token_expired` once
//! `refreshed` comes (see `Expiry`).

mod key;
mod output;
mod raw;
mod terminal;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::python_now;
use crate::config::ConnectionConfig;
use crate::connection::{CloseCode, Connection, Incoming, Message};
use crate::dial::{Target, connect_with};
use crate::error::CLOSE_TOKEN_ENDED;
use crate::protocol::{
    ChatMessage, ClientMsg, ErrorCode, Kind, PresenceEvent, SUBPROTOCOL, ServerMsg,
};
use crate::rate::Bucket;
use crate::{Error, Result};

pub use key::default_key_file;
pub use output::{Output, Style, visible};
pub use raw::run_raw;
pub use terminal::{Speech, connect};

/// What the user (or the script) typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One line.
    Line(String),
    /// No more input.
    Eof,
}

/// How `connect` ended (the binary exits 0, or 3 through [`Error::Refused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Input ended and every message was acknowledged, or the user quit.
    Done,
    /// The server refused us for good (nick taken, policy close…): what it said.
    Refused(String),
}

/// Options of the chat client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server.
    pub target: Target,
    /// The nick to ask for.
    pub nick: String,
    /// Rooms to join at start; the first is where lines are said.
    pub rooms: Vec<String>,
    /// Send the seed's `!Client Send! …` this often.
    pub send_every: Option<Duration>,
    /// Reconnect when the connection drops (after the first one succeeded).
    pub reconnect: bool,
    /// Lines are chat input with `/commands` (interactive), or each line is a message (script).
    pub commands: bool,
    /// A token for servers that want one (`nanachat token`): the one in force (with
    /// `token_file`, the file's latest).
    pub token: Option<String>,
    /// Where the token comes from and is read again (`--token-file`): on every reconnect, and
    /// when the server says it expired.
    pub token_file: Option<PathBuf>,
    /// Where the key that makes the nick ours on a server without tokens is kept (made at
    /// first use); `None`: no key (the nick is anyone's once we leave).
    pub key_file: Option<PathBuf>,
}

/// The token in `path`: its contents without surrounding whitespace, not empty.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::file("read the token from", path, err))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::file(
            "read the token from",
            path,
            "the file is empty",
        ));
    }
    Ok(token.to_owned())
}

/// The `sub` (the nick) of a JSON Web Token, read without checking its signature: only to
/// choose the nick to ask for; the server verifies the token.
pub fn token_sub(token: &str) -> Option<String> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.trim_end_matches('=').as_bytes())
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// How often a token file that holds no new token is read again, while the server waits for
/// one (its grace).
const RECHECK_TOKEN: Duration = Duration::from_secs(2);

/// The server said the token expired and no `refreshed` came yet: what is said meanwhile waits.
#[derive(Debug, Default)]
struct Expiry {
    /// The token sent in a `refresh`, not answered yet.
    offered: Option<String>,
    /// The last token the server refused in answer to a `refresh`: not offered again.
    refused: Option<String>,
    /// When to read the token file again: now (just expired), or a while after it held no new
    /// token.
    recheck: Option<Instant>,
    /// The user was told to put a fresh token in the file.
    told: bool,
}

struct Cursor {
    last_seq: Option<u64>,
    epoch: Option<u64>,
}

/// The client's memory across connections.
struct State {
    opts: ClientOptions,
    /// Our key (see `key.rs`): reconnecting with it, we are the same user even if the server
    /// still holds our old connection — and on a server without tokens our nick stays ours.
    key: Option<String>,
    /// This run's id, the start of every cid (never the key: cids are stored as they come).
    run: String,
    rooms: BTreeMap<String, Cursor>,
    /// Where lines are said (a room, or a direct-message room `@a+b`); none after leaving the
    /// last room.
    current: Option<String>,
    /// A room the user asked to `/join`, until the server answers: then it becomes current.
    joining: Option<String>,
    /// Requests to send once the server message being handled is: `who` and `history` after a
    /// room is joined for the first time (its members and last lines, as IRC's NAMES).
    outgoing: Vec<ClientMsg>,
    /// The nick the server last welcomed us as: a reconnect under the same nick is quiet.
    welcomed_as: Option<String>,
    /// Said and not yet acknowledged, in order: `true` once sent on this connection.
    pending: VecDeque<(String, ClientMsg, bool)>,
    /// The cids of those already shown marked as sending (offline, lost or slow).
    marked: BTreeSet<String>,
    /// When each of those sent on this connection was first sent: one unacknowledged after
    /// [`SENDING_AFTER`] is shown marked as sending.
    sent_at: BTreeMap<String, Instant>,
    /// Paces what we say to the rate the server announced.
    bucket: Bucket,
    /// When the bucket will have a token for what waits unsent.
    wake: Option<Instant>,
    next_cid: u64,
    input_done: bool,
    /// The server said `welcome` on this connection.
    welcomed: bool,
    /// The server said the token expired, on this connection, and no `refreshed` came yet.
    expiry: Option<Expiry>,
    /// Who is typing where, until when: shown in the terminal's status bar.
    typing: Vec<Typist>,
    /// The nicks we had before a rename, this run (at most [`FORMER_KEPT`]).
    former: Vec<String>,
    /// The nick we asked the server for with `nick`, until it answers.
    renaming: Option<String>,
    /// The last rename of another nick shown (`from`, `to`): each of our shared rooms tells it.
    last_rename: Option<(String, String)>,
    /// An `inbox` we asked for on our own, to catch up on direct messages (see
    /// [`State::catch_up`]): its answer is not shown.
    catching_up: bool,
    /// Rooms shown up to a seq that the server does not know we read yet, and when to tell it.
    read_due: BTreeMap<String, u64>,
    read_at: Option<Instant>,
    /// How many rooms the server lets a connection be in (its `welcome` says), DM rooms
    /// included.
    max_rooms: Option<usize>,
    /// The direct-message rooms the server knows for us (its `inbox` lists them), with how far
    /// we read each: `/switch @nick` opens one even if it is not followed this session.
    dms: BTreeMap<String, u64>,
    /// The rooms the server said we joined on this connection (a direct-message room closed
    /// here with `/leave` stays joined there).
    joined: BTreeSet<String>,
    /// Conversations with unread messages the catch-up did not open (no room left for them).
    more_unread: usize,
    /// The line being handled was typed under a prompt naming another room than the current
    /// one (the room changed while it was typed): what that prompt said.
    typed_elsewhere: Option<String>,
}

/// A member typing in a room (the server says so at most every 2 s while it types).
struct Typist {
    room: String,
    nick: String,
    until: Instant,
}

/// How long a line sent may wait for its ack before it is shown marked as sending.
const SENDING_AFTER: Duration = Duration::from_secs(1);

/// How many of a room's last lines are shown when it is joined (in a terminal).
const RECENT: u32 = 10;

/// How many of our former nicks are kept, to name their direct-message rooms `@mochi`.
const FORMER_KEPT: usize = 8;

/// How many of the server's rooms the catch-up of direct messages leaves free, for a `/join`.
const ROOMS_SPARE: usize = 1;

/// How often, at most, the rooms read are told to the server.
const READ_EVERY: Duration = Duration::from_secs(5);

/// How long a `typing` is shown, unless the nick's message comes first.
const TYPING_SHOWN: Duration = Duration::from_secs(5);

/// Why a connection ended.
enum SessionEnd {
    /// Lost or closed by the server for a reason worth a reconnect.
    Lost(String),
    /// Done, or refused for good.
    Exit(Exit),
    /// Reconnect at once (`/reconnect`).
    Again,
}

/// Runs the chat client until input ends (and everything is acknowledged, and what the server
/// sent before answering our close is shown), the user quits, or the server refuses us. An error means the first connection could not be made.
pub async fn run(
    opts: ClientOptions,
    mut inputs: mpsc::Receiver<Input>,
    out: &mut Output,
) -> Result<Exit> {
    let run = format!(
        "{:x}{:x}",
        std::process::id(),
        crate::clock::now_us().max(1)
    );
    let key = match &opts.key_file {
        Some(path) => Some(key::load_or_make(path)?),
        None => {
            out.notice("* no key file (neither $XDG_CONFIG_HOME nor $HOME is set; --key-file): your nick is anyone's once you leave");
            None
        }
    };
    let current = Some(
        opts.rooms
            .first()
            .cloned()
            .unwrap_or_else(|| "lobby".into()),
    );
    let rooms = opts
        .rooms
        .iter()
        .map(|r| {
            (
                r.clone(),
                Cursor {
                    last_seq: None,
                    epoch: None,
                },
            )
        })
        .collect();
    let mut state = State {
        opts,
        key,
        run,
        rooms,
        current,
        joining: None,
        outgoing: Vec::new(),
        welcomed_as: None,
        pending: VecDeque::new(),
        marked: BTreeSet::new(),
        sent_at: BTreeMap::new(),
        bucket: Bucket::new(1, 1),
        wake: None,
        next_cid: 1,
        input_done: false,
        welcomed: false,
        expiry: None,
        typing: Vec::new(),
        renaming: None,
        former: Vec::new(),
        last_rename: None,
        catching_up: false,
        read_due: BTreeMap::new(),
        read_at: None,
        max_rooms: None,
        dms: BTreeMap::new(),
        joined: BTreeSet::new(),
        more_unread: 0,
        typed_elsewhere: None,
    };
    state.enter(state.current.clone(), out);
    let config = ConnectionConfig::default();
    let target = state.opts.target.clone();
    let reconnect = state.opts.reconnect;
    let dial = async || {
        connect_with(
            &target,
            &config,
            CancellationToken::new(),
            Some(SUBPROTOCOL),
        )
        .await
    };
    let mut chat = Chat {
        state: &mut state,
        inputs: &mut inputs,
    };
    redial(dial, reconnect, out, &mut chat)
        .await
        .map_err(|err| match err {
            // Only the first connection's failure is an error: say what is likely wrong.
            Error::Io(io) => Error::Io(std::io::Error::new(
                io.kind(),
                format!("{io} — is `nanachat serve` running there?"),
            )),
            other => other,
        })
}

/// A conversation over a connection that may be lost, and what is done while it is: the chat
/// client's ([`Chat`]) or `--raw`'s.
trait Session {
    /// Talks over `conn` until it ends.
    async fn run(&mut self, conn: &mut Connection, out: &mut Output) -> SessionEnd;

    /// Offline until `until`, the next attempt (`attempt`, from 1): shows it in the status bar;
    /// `Some` ends the client (the user quit), and an earlier return tries at once.
    async fn offline(&mut self, until: Instant, attempt: u32, out: &mut Output) -> Option<Exit>;
}

/// The client's one reconnect loop (the chat client's and `--raw`'s): dials, runs `session` on
/// the connection, and when the session is lost waits ([`RECONNECT`], jittered) and dials again
/// — unless `reconnect` is off. Failing to connect the first time is an error; later it is one
/// more loss to wait out. A loss is told in one line; the attempts that follow, in the status
/// bar (a terminal's), and the way back in one line (`* reconnected`).
async fn redial(
    dial: impl AsyncFn() -> Result<Connection>,
    reconnect: bool,
    out: &mut Output,
    session: &mut impl Session,
) -> Result<Exit> {
    let mut backoff = RECONNECT;
    let mut connected_once = false;
    let mut attempt = 0;
    loop {
        let end = match dial().await {
            Ok(mut conn) => {
                if connected_once {
                    out.bar(None);
                    out.notice("* reconnected");
                }
                connected_once = true;
                attempt = 0;
                backoff.succeeded();
                let end = session.run(&mut conn, out).await;
                let outcome = match &end {
                    SessionEnd::Lost(_) => Err(Error::Closed),
                    _ => Ok(()),
                };
                conn.finish(&outcome).await;
                end
            }
            Err(err) if !connected_once => return Err(err),
            // Refused for something the user gave (a token in the URL that expired since):
            // trying again changes nothing.
            Err(err @ Error::Config(_)) => return Err(err),
            Err(err) => SessionEnd::Lost(err.to_string()),
        };
        match end {
            SessionEnd::Exit(exit) => return Ok(exit),
            SessionEnd::Again => continue,
            SessionEnd::Lost(why) if reconnect => {
                let wait = backoff.failed_jittered();
                attempt += 1;
                if attempt == 1 {
                    out.status(&format!(
                        "* disconnected ({why}); reconnecting in {:.1}s",
                        wait.as_secs_f64()
                    ));
                }
                if let Some(exit) = session.offline(Instant::now() + wait, attempt, out).await {
                    out.bar(None);
                    return Ok(exit);
                }
            }
            SessionEnd::Lost(why) => {
                return Err(Error::Handshake(format!("connection lost: {why}")));
            }
        }
    }
}

/// What the status bar says while offline: the next attempt, and (`hint`) how to hurry it.
fn offline_bar(until: Instant, attempt: u32, hint: &str) -> String {
    let wait = until.saturating_duration_since(Instant::now());
    format!(
        "offline · try {attempt} in {:.1}s{hint}",
        wait.as_secs_f64()
    )
}

/// The wait before a reconnect: exponential back-off from 100 ms to 2 s, with ±50 % jitter
/// ([`Backoff::failed_jittered`]) so that clients dropped together do not come back together:
/// at most 3 s, so a server that is back is found within seconds.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// The chat client: its memory and its input, as a [`Session`].
struct Chat<'a> {
    state: &'a mut State,
    inputs: &'a mut mpsc::Receiver<Input>,
}

impl Session for Chat<'_> {
    async fn run(&mut self, conn: &mut Connection, out: &mut Output) -> SessionEnd {
        self.state.session(conn, self.inputs, out).await
    }

    async fn offline(&mut self, until: Instant, attempt: u32, out: &mut Output) -> Option<Exit> {
        self.state.offline(until, attempt, self.inputs, out).await
    }
}

impl State {
    async fn send(&self, conn: &mut Connection, msg: &ClientMsg) -> Result<()> {
        let json = serde_json::to_string(msg)?;
        conn.send(Message::text(json)).await
    }

    fn cid(&mut self) -> String {
        let cid = format!("{}-{}", self.run, self.next_cid);
        self.next_cid += 1;
        cid
    }

    /// Queues a request that stores something — `say`, `dm`, `edit`, `delete`, `react` — with
    /// its cid: sent now if connected, again after a reconnect until acked (stored once).
    fn queue(&mut self, msg: ClientMsg) -> ClientMsg {
        let cid = msg.cid().unwrap_or_default().to_owned();
        self.pending.push_back((cid, msg.clone(), false));
        msg
    }

    /// Sends what waits unsent, as fast as the bucket allows; sets `wake` for the rest.
    /// Offline (`conn` is `None`), everything waits for the next connection.
    async fn pump(&mut self, conn: Option<&mut Connection>) -> Result<()> {
        self.wake = None;
        let Some(conn) = conn else {
            return Ok(());
        };
        for msg in std::mem::take(&mut self.outgoing) {
            self.send(conn, &msg).await?;
        }
        if !self.welcomed || self.expiry.is_some() {
            return Ok(()); // held until `welcome`, or until `refreshed`
        }
        for i in 0..self.pending.len() {
            if self.pending[i].2 {
                continue;
            }
            if !self.bucket.take() {
                self.wake = Some(Instant::now() + self.bucket.wait());
                return Ok(());
            }
            self.pending[i].2 = true;
            let cid = self.pending[i].0.clone();
            self.sent_at.entry(cid).or_insert_with(Instant::now);
            let msg = self.pending[i].1.clone();
            self.send(conn, &msg).await?;
        }
        Ok(())
    }

    /// Says `text` in the current room (`None`: the user is in no room, and is told so).
    fn say(&mut self, text: String, out: &mut Output) -> Option<ClientMsg> {
        let room = self.here(out)?;
        Some(self.reply(room, text, None))
    }

    /// Says `text` in `room` (a direct message to the other nick in a DM room), as a reply to
    /// the message `reply_to` if given.
    fn reply(&mut self, room: String, text: String, reply_to: Option<u64>) -> ClientMsg {
        let cid = self.cid();
        let msg = match self.peer(&room) {
            Some(to) if reply_to.is_none() => ClientMsg::Dm { to, text, cid },
            _ => ClientMsg::Say {
                room,
                text,
                cid,
                reply_to,
            },
        };
        self.queue(msg)
    }

    /// The current room, or `None` after telling the user there is none — or that the line
    /// was typed under a prompt that named another room (the room changed meanwhile: a rename,
    /// a room the server left): it is not said, rather than said where the user did not look.
    fn here(&self, out: &mut Output) -> Option<String> {
        if let Some(seen) = &self.typed_elsewhere {
            let now = match &self.current {
                Some(room) => format!("you are in {} now", self.shown(room)),
                None => "you are in no room now".to_owned(),
            };
            out.notice(&format!(
                "! not sent: the prompt said {seen}, but {now} (Up brings the line back)"
            ));
            return None;
        }
        if self.current.is_none() {
            out.notice("! you are in no room: /join ROOM, or /switch to one of yours");
        }
        self.current.clone()
    }

    /// A command on a message of the current room (`/reply`, `/edit`, `/delete`, `/react`,
    /// `/unreact`), queued with a cid like `say`; `None` when `args` do not fit its usage.
    fn on_message_command(&mut self, verb: &str, args: &str, room: String) -> Option<ClientMsg> {
        let (seq, rest) = seq_and_rest(args)?;
        let msg = match verb {
            "reply" if !rest.is_empty() => {
                return Some(self.reply(room, rest.to_owned(), Some(seq)));
            }
            "edit" if !rest.is_empty() => ClientMsg::Edit {
                room,
                seq,
                text: rest.to_owned(),
                cid: self.cid(),
            },
            "delete" if rest.is_empty() => ClientMsg::Delete {
                room,
                seq,
                cid: self.cid(),
            },
            "react" | "unreact" if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
                ClientMsg::React {
                    room,
                    seq,
                    emoji: rest.to_owned(),
                    on: verb == "react",
                    cid: self.cid(),
                }
            }
            _ => return None,
        };
        Some(self.queue(msg))
    }

    async fn session(
        &mut self,
        conn: &mut Connection,
        inputs: &mut mpsc::Receiver<Input>,
        out: &mut Output,
    ) -> SessionEnd {
        let end = match self.session_inner(conn, inputs, out).await {
            Ok(end) => end,
            Err(err) => SessionEnd::Lost(err.to_string()),
        };
        // Nobody is typing to a connection that is gone.
        self.typing.clear();
        out.bar(None);
        if let SessionEnd::Lost(_) = end {
            // Said, maybe stored, not acknowledged: sent again once reconnected.
            let unacked: Vec<ClientMsg> = self.pending.iter().map(|(_, m, _)| m.clone()).collect();
            for msg in &unacked {
                self.mark_sending(msg, out);
            }
        }
        end
    }

    /// When the first line sent and not yet acknowledged nor marked becomes slow.
    fn slow_from(&self) -> Option<Instant> {
        if !self.opts.commands {
            return None;
        }
        self.sent_at
            .iter()
            .filter(|(cid, _)| !self.marked.contains(*cid))
            .map(|(_, at)| *at + SENDING_AFTER)
            .min()
    }

    /// Marks as sending each line sent [`SENDING_AFTER`] ago or more and not acknowledged.
    fn mark_slow(&mut self, out: &mut Output) {
        let now = Instant::now();
        let slow: Vec<ClientMsg> = self
            .pending
            .iter()
            .filter(|(cid, _, _)| {
                self.sent_at
                    .get(cid)
                    .is_some_and(|at| *at + SENDING_AFTER <= now)
            })
            .map(|(_, msg, _)| msg.clone())
            .collect();
        for msg in &slow {
            self.mark_sending(msg, out);
        }
        // Not a line (an edit, a reaction…): nothing to show, nothing to wait for.
        let marked = &self.marked;
        self.sent_at
            .retain(|cid, at| *at + SENDING_AFTER > now && !marked.contains(cid));
    }

    /// Shows a line said and not acknowledged yet as sending (once).
    fn mark_sending(&mut self, msg: &ClientMsg, out: &mut Output) {
        let (cid, room, text) = match msg {
            ClientMsg::Say {
                cid, room, text, ..
            } => (cid, self.shown(room), text),
            ClientMsg::Dm { cid, to, text } => (cid, format!("@{to}"), text),
            _ => return,
        };
        if self.opts.commands && self.marked.insert(cid.clone()) {
            out.sending(&room, &self.opts.nick, text);
        }
    }

    /// Offline until `until`, the next attempt: what the user types is handled (lines wait,
    /// marked as sending; `/reconnect` tries at once; `/quit` quits).
    async fn offline(
        &mut self,
        until: Instant,
        attempt: u32,
        inputs: &mut mpsc::Receiver<Input>,
        out: &mut Output,
    ) -> Option<Exit> {
        self.welcomed = false;
        out.bar(Some(&offline_bar(until, attempt, " · /reconnect")));
        loop {
            if self.input_done && self.pending.is_empty() {
                return Some(Exit::Done);
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return None,
                input = inputs.recv(), if !self.input_done => match input {
                    Some(Input::Line(line)) => {
                        let end = self.on_line(None, line, out).await;
                        out.handled();
                        match end {
                            Ok(Some(SessionEnd::Exit(exit))) => return Some(exit),
                            Ok(Some(_)) => return None,
                            _ => {}
                        }
                    }
                    Some(Input::Eof) | None => {
                        self.input_done = true;
                        // A person who quits (Ctrl-D) while offline means it: waiting for the
                        // server to take the lines still unsent would leave them stuck in a
                        // client that no longer reads the keyboard. A script waits (its input
                        // ends before its lines are acked as a rule).
                        if self.opts.commands && !self.pending.is_empty() {
                            out.notice(&format!(
                                "* quitting offline: {} line(s) not sent",
                                self.pending.len()
                            ));
                            return Some(Exit::Done);
                        }
                    }
                },
            }
        }
    }

    async fn session_inner(
        &mut self,
        conn: &mut Connection,
        inputs: &mut mpsc::Receiver<Input>,
        out: &mut Output,
    ) -> Result<SessionEnd> {
        self.expiry = None;
        // A rename asked on a connection lost since gets no answer.
        self.renaming = None;
        self.outgoing.clear();
        self.sent_at.clear();
        if let Some(path) = &self.opts.token_file {
            match read_token(path) {
                Ok(token) => self.opts.token = Some(token),
                Err(err) => out.notice(&format!("* {err}; trying the token read before")),
            }
        }
        self.send(
            conn,
            &ClientMsg::Hello {
                nick: self.opts.nick.clone(),
                key: self.key.clone(),
                token: self.opts.token.clone(),
            },
        )
        .await?;
        for (room, cursor) in &self.rooms {
            let join = ClientMsg::Join {
                room: room.clone(),
                since: cursor.last_seq,
                epoch: cursor.epoch,
            };
            self.send(conn, &join).await?;
        }
        self.read_due.clear();
        self.read_at = None;
        self.joined.clear();
        self.more_unread = 0;
        self.catch_up();
        for entry in &mut self.pending {
            entry.2 = false; // a new connection: everything unacked goes again
        }
        let mut ticker = self.opts.send_every.map(|every| {
            let mut t = interval(every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        self.welcomed = false;
        self.wake = None;
        loop {
            if self.input_done && self.pending.is_empty() && self.welcomed {
                return Ok(self.close_and_drain(conn, out).await);
            }
            tokio::select! {
                msg = conn.read_msg() => match msg {
                    Ok(Some(Incoming::Text(text))) => {
                        if let Some(end) = self.on_server(text.as_str(), out) {
                            return Ok(end);
                        }
                        self.pump(Some(conn)).await?;
                    }
                    Ok(Some(Incoming::Binary(_))) => {}
                    Ok(None) => return Ok(self.closed_by_server(conn, out)),
                    Err(err) => return Ok(SessionEnd::Lost(err.to_string())),
                },
                input = inputs.recv(), if !self.input_done => match input {
                    Some(Input::Line(line)) => {
                        let end = self.on_line(Some(conn), line, out).await?;
                        // A `/join` or a `/nick` is handled once the server answers it.
                        if self.joining.is_none() && self.renaming.is_none() {
                            out.handled();
                        }
                        if let Some(end) = end {
                            return Ok(end);
                        }
                    }
                    Some(Input::Eof) | None => self.input_done = true,
                },
                _ = async { ticker.as_mut().expect("checked").tick().await }, if ticker.is_some() => {
                    self.say(format!("!Client Send! {}", python_now()), out);
                    self.pump(Some(conn)).await?;
                }
                () = async { tokio::time::sleep_until(self.wake.expect("checked")).await }, if self.wake.is_some() => {
                    self.pump(Some(conn)).await?;
                }
                () = async { tokio::time::sleep_until(self.read_at.expect("checked")).await }, if self.read_at.is_some() => {
                    self.queue_reads();
                    self.pump(Some(conn)).await?;
                }
                () = async { tokio::time::sleep_until(self.recheck().expect("checked")).await }, if self.recheck().is_some() => {
                    self.renew(conn, out).await?;
                }
                () = async { tokio::time::sleep_until(self.slow_from().expect("checked")).await }, if self.slow_from().is_some() => {
                    self.mark_slow(out);
                }
                () = async { tokio::time::sleep_until(self.typing_ends().expect("checked")).await }, if self.typing_ends().is_some() => {
                    let now = Instant::now();
                    self.typing.retain(|t| t.until > now);
                    self.show_typing(out);
                }
            }
        }
    }

    /// Input is over and everything said is acknowledged: closes (the close handshake) and
    /// shows what the server sends until its close answers ours — a message that arrived just
    /// after the last ack is not lost. Bounded by the connection's close timeout.
    async fn close_and_drain(&mut self, conn: &mut Connection, out: &mut Output) -> SessionEnd {
        conn.start_close(CloseCode::Normal, "");
        while let Ok(Some(incoming)) = conn.read_msg().await {
            if let Incoming::Text(text) = incoming {
                // Closing anyway: a refusal now changes nothing.
                let _ = self.on_server(text.as_str(), out);
            }
        }
        SessionEnd::Exit(Exit::Done)
    }

    /// When to read the token file again, if the token expired and no new one is on its way.
    fn recheck(&self) -> Option<Instant> {
        self.expiry.as_ref().and_then(|e| e.recheck)
    }

    /// The token expired: sends the token file's in `refresh` if it holds a new one, or tells
    /// the user (once) and reads it again a while later.
    async fn renew(&mut self, conn: &mut Connection, out: &mut Output) -> Result<()> {
        let (Some(expiry), Some(path)) = (&mut self.expiry, &self.opts.token_file) else {
            return Ok(());
        };
        expiry.recheck = None;
        if expiry.offered.is_some() {
            return Ok(()); // its answer comes first
        }
        let fresh = read_token(path);
        match fresh {
            Ok(token)
                if Some(&token) != self.opts.token.as_ref()
                    && Some(&token) != expiry.refused.as_ref() =>
            {
                expiry.offered = Some(token.clone());
                out.status(&format!(
                    "* token expired; sending the new one from {}",
                    path.display()
                ));
                self.send(conn, &ClientMsg::Refresh { token }).await?;
            }
            other => {
                if !expiry.told {
                    expiry.told = true;
                    let why = match other {
                        Err(err) => format!(" ({err})"),
                        Ok(_) => String::new(),
                    };
                    out.notice(&format!(
                        "* token expired; put a fresh one in {}{why} (`nanachat token --sub {}`)",
                        path.display(),
                        self.opts.nick
                    ));
                }
                expiry.recheck = Some(Instant::now() + RECHECK_TOKEN);
            }
        }
        Ok(())
    }

    /// The server closed the connection with 4003, the token ended: goes on with a new token
    /// from the token file if it holds one, or ends saying how to get one.
    fn token_ended(&self, reason: &str) -> SessionEnd {
        let mint = format!("`nanachat token --sub {}`", self.opts.nick);
        let Some(path) = &self.opts.token_file else {
            return SessionEnd::Exit(Exit::Refused(format!(
                "the token expired (the server closed the connection: {CLOSE_TOKEN_ENDED} \
                 {reason}): get a new one ({mint}) and connect again with it"
            )));
        };
        let refused = self.expiry.as_ref().and_then(|e| e.refused.as_ref());
        match read_token(path) {
            Ok(token) if Some(&token) != self.opts.token.as_ref() && Some(&token) != refused => {
                SessionEnd::Lost(format!(
                    "the token ended ({CLOSE_TOKEN_ENDED} {reason}); {} holds a new one",
                    path.display()
                ))
            }
            _ => SessionEnd::Exit(Exit::Refused(format!(
                "the token expired (the server closed the connection: {CLOSE_TOKEN_ENDED} \
                 {reason}) and {} holds no new one: put a fresh one there ({mint}) and connect \
                 again",
                path.display()
            ))),
        }
    }

    fn closed_by_server(&self, conn: &mut Connection, out: &mut Output) -> SessionEnd {
        let Some(frame) = conn.peer_close() else {
            return SessionEnd::Lost("connection closed".into());
        };
        let code = u16::from(frame.code);
        let reason = output::visible(&frame.reason);
        if code == CLOSE_TOKEN_ENDED {
            let end = self.token_ended(&reason);
            if let SessionEnd::Lost(why) = &end {
                out.status(&format!("* {why}"));
            }
            return end;
        }
        match frame.code {
            CloseCode::Policy | CloseCode::Size | CloseCode::Protocol | CloseCode::Invalid => {
                SessionEnd::Exit(Exit::Refused(format!(
                    "the server closed the connection: {code} {reason}"
                )))
            }
            _ => SessionEnd::Lost(format!("server closed with {code} {reason}")),
        }
    }

    /// Handles one server message; `Some` ends the session.
    fn on_server(&mut self, text: &str, out: &mut Output) -> Option<SessionEnd> {
        let Ok(msg) = serde_json::from_str::<ServerMsg>(text) else {
            out.notice(&format!("* unreadable message from the server: {text}"));
            return None;
        };
        // Our own joins and leaves are told by `* joined`/`* left` (and a reconnect's, not at
        // all): the room's presence event for our nick would say them twice.
        if let ServerMsg::Presence { nick, event, .. } = &msg
            && matches!(event, PresenceEvent::Join | PresenceEvent::Leave)
            && nick.eq_ignore_ascii_case(&self.opts.nick)
        {
            return None;
        }
        // A rename is said once: ours by `* you are now`, another's once for all the rooms we
        // share with it (each room tells it).
        if let ServerMsg::Presence {
            nick,
            event: PresenceEvent::Renamed,
            from,
            ..
        } = &msg
        {
            let from = from.clone().unwrap_or_default();
            let ours = from.eq_ignore_ascii_case(&self.opts.nick)
                || nick.eq_ignore_ascii_case(&self.opts.nick);
            let pair = (from, nick.clone());
            if ours || self.last_rename.as_ref() == Some(&pair) {
                return None;
            }
            self.last_rename = Some(pair);
        }
        match msg {
            ServerMsg::Welcome { nick, limits, exp } => {
                self.welcomed = true;
                // Half the burst: room left for joins and commands.
                self.bucket = Bucket::new(limits.rate_per_sec, limits.rate_burst / 2);
                self.max_rooms = Some(limits.max_rooms);
                // A reconnect as the same nick is quiet: `* reconnected` said it.
                if self.welcomed_as.as_ref() != Some(&nick) {
                    out.status(&format!("* connected as {nick}{}", until(exp)));
                }
                self.welcomed_as = Some(nick);
            }
            ServerMsg::Joined {
                room,
                epoch,
                last_seq,
                reset,
                truncated,
                ..
            } => {
                let shown = self.shown(&room);
                let cursor = self.rooms.entry(room.clone()).or_insert(Cursor {
                    last_seq: None,
                    epoch: None,
                });
                if reset {
                    out.notice(&format!("* the history of {shown} was reset on the server"));
                }
                if truncated {
                    out.notice(&format!(
                        "* some older messages in {shown} are not shown (removed by retention, \
                         or sent to the nick before it was yours)"
                    ));
                }
                self.joined.insert(room.clone());
                // A room joined before is joined again quietly on a reconnect.
                let first = cursor.last_seq.is_none();
                if reset || first {
                    cursor.last_seq = Some(last_seq);
                }
                cursor.epoch = Some(epoch);
                if first {
                    out.status(&format!("* joined {}", self.shown(&room)));
                    if self.opts.commands {
                        self.introduce(&room, last_seq);
                    }
                }
                if self.joining.as_ref() == Some(&room) {
                    self.joining = None;
                    self.enter(Some(room), out);
                    out.handled();
                }
            }
            // Unless the user's `/leave` said it already.
            ServerMsg::Left { room } => {
                self.joined.remove(&room);
                if self.rooms.remove(&room).is_some() {
                    out.status(&format!("* left {}", self.shown(&room)));
                    if self.current.as_ref() == Some(&room) {
                        self.move_on(&room, out);
                    }
                }
            }
            ServerMsg::Ack { cid, .. } => {
                self.pending.retain(|(c, _, _)| *c != cid);
                self.marked.remove(&cid);
                self.sent_at.remove(&cid);
            }
            ServerMsg::Message(m) => self.show(m, out),
            ServerMsg::Edit(m) => self.show_event(Kind::Edit, m, out),
            ServerMsg::Delete(m) => self.show_event(Kind::Delete, m, out),
            ServerMsg::React(m) => self.show_event(Kind::React, m, out),
            ServerMsg::Typing { room, nick } => {
                let until = Instant::now() + TYPING_SHOWN;
                match self
                    .typing
                    .iter_mut()
                    .find(|t| t.room == room && t.nick == nick)
                {
                    Some(t) => t.until = until,
                    None => self.typing.push(Typist { room, nick, until }),
                }
                self.show_typing(out);
            }
            // Kept by the server and shown by the browser client; a line would be noise here.
            ServerMsg::Read { .. } => {}
            ServerMsg::Inbox { rooms, total } if self.catching_up => {
                // A page cut to fit one frame: ask for the next one, from its last room.
                self.catching_up = false;
                if rooms.len() < total
                    && let Some(last) = rooms.last()
                {
                    self.catching_up = true;
                    self.outgoing.push(ClientMsg::Inbox {
                        after: Some(last.room.clone()),
                    });
                }
                for r in rooms {
                    if !r.room.starts_with('@') {
                        continue;
                    }
                    self.dms.insert(r.room.clone(), r.read_seq);
                    if r.unread == 0 || self.rooms.contains_key(&r.room) {
                        continue;
                    }
                    // Beyond the server's rooms the join would be refused: said in one line.
                    if !self.room_for_one_more() {
                        self.more_unread += 1;
                        continue;
                    }
                    out.notice(&format!(
                        "* {} unread from {}",
                        r.unread,
                        self.shown(&r.room)
                    ));
                    self.open(r.room, r.read_seq);
                }
                if !self.catching_up && self.more_unread > 0 {
                    let more = std::mem::take(&mut self.more_unread);
                    let s = if more == 1 { "" } else { "s" };
                    out.notice(&format!(
                        "* {more} more conversation{s} with unread messages: /inbox lists them, \
                         /switch @NICK opens one"
                    ));
                }
            }
            ServerMsg::Inbox { rooms, total } => {
                for r in rooms.iter().filter(|r| r.room.starts_with('@')) {
                    self.dms.insert(r.room.clone(), r.read_seq);
                }
                let list = rooms
                    .iter()
                    .map(|r| format!("{} ({} unread)", self.shown(&r.room), r.unread));
                out.notice(&listed("inbox", list, total, rooms.len()));
            }
            ServerMsg::Presence {
                room,
                nick,
                event,
                from,
            } => out.notice(&match event {
                PresenceEvent::Join => format!("* {nick} joined {}", self.shown(&room)),
                PresenceEvent::Leave => format!("* {nick} left {}", self.shown(&room)),
                PresenceEvent::Renamed => {
                    format!("* {} is now {nick}", from.unwrap_or_default())
                }
            }),
            ServerMsg::Members { room, nicks, total } => out.notice(&format!(
                "* in {}: {}{}",
                self.shown(&room),
                nicks.join(", "),
                and_more(total, nicks.len())
            )),
            ServerMsg::Rooms { rooms, total } => {
                let list = rooms
                    .iter()
                    .map(|r| format!("{} ({})", self.shown(&r.room), r.members));
                out.notice(&listed("rooms", list, total, rooms.len()));
            }
            ServerMsg::History { messages, .. } | ServerMsg::Thread { messages, .. } => {
                for m in messages {
                    out.message(&self.as_shown(m));
                }
            }
            ServerMsg::Search { results, total } => {
                out.notice(&format!("* found {total}"));
                for m in results {
                    out.message(&self.as_shown(m));
                }
            }
            ServerMsg::Renamed { from, to } => {
                let asked = self.renaming.take().is_some();
                if !from.eq_ignore_ascii_case(&to) {
                    // The old nick's direct-message rooms are not ours under the new one.
                    self.rooms.retain(|room, _| !room.starts_with('@'));
                    self.dms.clear();
                    if let Some(here) = self.current.clone().filter(|r| r.starts_with('@')) {
                        self.move_on(&here, out);
                    }
                }
                if !from.eq_ignore_ascii_case(&to) {
                    if self.former.len() == FORMER_KEPT {
                        self.former.remove(0);
                    }
                    self.former.push(from.clone());
                }
                self.opts.nick = to.clone();
                out.status(&format!("* you are now {to}"));
                if !from.eq_ignore_ascii_case(&to) {
                    self.catch_up();
                }
                // The prompt after `/nick` waited for this: it names where lines go now.
                if asked {
                    out.handled();
                }
            }
            ServerMsg::Refreshed { exp } => {
                if let Some(token) = self.expiry.take().and_then(|e| e.offered) {
                    self.opts.token = Some(token);
                }
                out.status(&format!("* token refreshed{}", until(exp)));
            }
            ServerMsg::Tick { .. } => {}
            ServerMsg::Error { code, message, cid } => {
                return self.on_error(code, &message, cid, out);
            }
        }
        None
    }

    /// `m` with its room as the user sees it ([`State::shown`]).
    fn as_shown(&self, mut m: ChatMessage) -> ChatMessage {
        m.room = self.shown(&m.room);
        m
    }

    /// A room joined for the first time, in a terminal: asks for its members and its last
    /// lines (as IRC's NAMES and a chat's recent history), sent after the `joined`.
    fn introduce(&mut self, room: &str, last_seq: u64) {
        if !room.starts_with('@') {
            self.outgoing.push(ClientMsg::Who {
                room: room.to_owned(),
                after: None,
            });
        }
        if last_seq > 0 {
            self.outgoing.push(ClientMsg::History {
                room: room.to_owned(),
                before: None,
                after: None,
                limit: Some(RECENT),
            });
        }
    }

    /// When the first of those typing stops being shown.
    fn typing_ends(&self) -> Option<Instant> {
        self.typing.iter().map(|t| t.until).min()
    }

    /// Shows who is typing, room by room, in the status bar (a terminal's; none in a script):
    /// `mochi is typing in lobby`, `mochi, nana and 2 more are typing in dev`.
    fn show_typing(&self, out: &mut Output) {
        let mut rooms: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in &self.typing {
            rooms.entry(&t.room).or_default().push(&t.nick);
        }
        let parts: Vec<String> = rooms
            .into_iter()
            .map(|(room, nicks)| {
                let names = match nicks.as_slice() {
                    [one] => format!("{one} is"),
                    [a, b] => format!("{a} and {b} are"),
                    [a, b, rest @ ..] => format!("{a}, {b} and {} more are", rest.len()),
                    [] => String::new(), // a room is listed for a typist
                };
                format!("{names} typing in {}", self.shown(room))
            })
            .collect();
        out.bar((!parts.is_empty()).then(|| parts.join("; ")).as_deref());
    }

    /// A message, shown once: anything at or below the room's last shown seq was shown already.
    fn show(&mut self, m: ChatMessage, out: &mut Output) {
        // Their message is what they were typing.
        let before = self.typing.len();
        self.typing.retain(|t| t.room != m.room || t.nick != m.from);
        if self.typing.len() != before {
            self.show_typing(out);
        }
        if self.advance(&m) {
            out.message(&self.as_shown(m));
        }
    }

    /// An event on a message: it takes a seq of the room like a message (so a resume goes on
    /// after it), and is shown as a line of its own.
    fn show_event(&mut self, kind: Kind, m: ChatMessage, out: &mut Output) {
        if self.advance(&m) {
            out.notice(&self.as_shown(m).event_line(kind));
        }
    }

    /// Moves the room's cursor to `m`'s seq; false when it was there already (shown before).
    fn advance(&mut self, m: &ChatMessage) -> bool {
        let cursor = self.rooms.entry(m.room.clone()).or_insert(Cursor {
            last_seq: None,
            epoch: None,
        });
        if cursor.last_seq.is_some_and(|last| m.seq <= last) {
            return false;
        }
        cursor.last_seq = Some(m.seq);
        // Shown is read: the server keeps it for a known user (its inbox, its other devices),
        // told at most every READ_EVERY.
        if self.known() {
            self.read_due.insert(m.room.clone(), m.seq);
            self.read_at
                .get_or_insert_with(|| Instant::now() + READ_EVERY);
        }
        true
    }

    /// Queues a `read` for each room shown further than the server knows — only rooms we
    /// still follow: one left meanwhile would be refused (`not_joined`), a line of noise.
    fn queue_reads(&mut self) {
        self.read_at = None;
        for (room, seq) in std::mem::take(&mut self.read_due) {
            if self.rooms.contains_key(&room) {
                self.outgoing.push(ClientMsg::Read { room, seq });
            }
        }
    }

    /// Whether the server keeps our rooms and reading: we have a key or a token.
    fn known(&self) -> bool {
        self.key.is_some() || self.opts.token.is_some()
    }

    /// Asks for our inbox, to join the direct-message rooms with messages we have not seen
    /// and do not follow yet (someone new wrote while we were away, or to a nick we took
    /// back): a message is never left unseen because its room was new to us.
    fn catch_up(&mut self) {
        if self.known() {
            self.catching_up = true;
            self.outgoing.push(ClientMsg::Inbox { after: None });
        }
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        cid: Option<String>,
        out: &mut Output,
    ) -> Option<SessionEnd> {
        // What the user reads: a sentence, never the protocol's code or a `@a+b` room.
        let message = &self.unmask(&refusal(code, message));
        // The answer to our `nick`: refused, we keep the nick we have.
        if let Some(wanted) = self.renaming.take_if(|_| {
            cid.is_none()
                && matches!(
                    code,
                    ErrorCode::NickTaken
                        | ErrorCode::BadNick
                        | ErrorCode::Unauthorized
                        | ErrorCode::Forbidden
                        | ErrorCode::Internal
                        | ErrorCode::RateLimited
                )
        }) {
            let wanted = output::visible(&wanted);
            out.notice(&format!(
                "! not {wanted}: {message}; you are still {}",
                self.opts.nick
            ));
            out.handled();
            return None;
        }
        let join_refused = matches!(
            code,
            ErrorCode::BadRoom
                | ErrorCode::Forbidden
                | ErrorCode::TooManyRooms
                | ErrorCode::BadMessage
                | ErrorCode::AlreadyJoined
        );
        if cid.is_none()
            && join_refused
            && let Some(room) = self.joining.take()
        {
            // The `/join` the prompt waits for: refused, the user stays where they were.
            if code == ErrorCode::AlreadyJoined {
                self.enter(Some(room), out);
            } else {
                self.rooms.remove(&room);
                let here = match &self.current {
                    Some(here) => format!("; still in {}", self.shown(here)),
                    None => String::new(),
                };
                out.notice(&format!("! {message} (/join {}){here}", self.shown(&room)));
            }
            out.handled();
            return None;
        }
        match code {
            ErrorCode::NickTaken | ErrorCode::BadNick => {
                return Some(SessionEnd::Exit(Exit::Refused(format!(
                    "{message}: choose another nick with --nick"
                ))));
            }
            // The answer to our `refresh`: the file's token is no good; wait for another.
            ErrorCode::Unauthorized
                if cid.is_none() && self.expiry.as_ref().is_some_and(|e| e.offered.is_some()) =>
            {
                let path = self.opts.token_file.as_deref().unwrap_or(Path::new(""));
                out.notice(&format!(
                    "! the server refused the token in {}: {message}; put a valid one there",
                    path.display()
                ));
                if let Some(expiry) = &mut self.expiry {
                    expiry.refused = expiry.offered.take();
                    expiry.recheck = Some(Instant::now() + RECHECK_TOKEN);
                }
                return None;
            }
            // No token at all: the server's words are for programs; say what to do.
            ErrorCode::Unauthorized if self.opts.token.is_none() => {
                return Some(SessionEnd::Exit(Exit::Refused(format!(
                    "this server needs a token: ask its operator for one, or, if you run it, mint \
                     one with `nanachat token --sub {} --auth-secret-file FILE` (FILE: its \
                     secret); then connect with --token TOKEN or --token-file FILE",
                    self.opts.nick
                ))));
            }
            ErrorCode::Unauthorized => {
                let given = match &self.opts.token_file {
                    Some(path) => format!("the token in {}", path.display()),
                    None => "the token given with --token".into(),
                };
                return Some(SessionEnd::Exit(Exit::Refused(format!(
                    "the server refused {given}: {message}; ask its operator for a valid one, \
                     or mint one with `nanachat token --sub {} --auth-secret-file FILE` (FILE: \
                     its secret)",
                    self.opts.nick
                ))));
            }
            // Refused until a fresh token comes: held, and sent again after `refreshed`.
            ErrorCode::TokenExpired => {
                for entry in &mut self.pending {
                    if Some(&entry.0) == cid.as_ref() {
                        entry.2 = false;
                    }
                }
                if self.expiry.is_none() {
                    self.expiry = Some(Expiry {
                        // With a token file: read it at once.
                        recheck: self.opts.token_file.is_some().then(Instant::now),
                        ..Expiry::default()
                    });
                    if self.opts.token_file.is_none() {
                        out.notice(&format!(
                            "! {message} — a --token cannot be renewed: once \
                             the server closes the connection, get a new one (`nanachat token \
                             --sub {}`), or give --token-file FILE and keep FILE fresh",
                            self.opts.nick
                        ));
                    }
                } else if cid.is_none() && self.opts.commands {
                    out.notice(&format!("! {message}"));
                }
                return None;
            }
            // Worth another try, with the same cid, once the bucket allows.
            ErrorCode::RateLimited | ErrorCode::Internal if cid.is_some() => {
                self.bucket.drain();
                for entry in &mut self.pending {
                    if Some(&entry.0) == cid.as_ref() {
                        entry.2 = false;
                    }
                }
                return None;
            }
            _ => {}
        }
        // What was refused, when it was a command on a message: ` (/edit #42)`.
        let mut what = String::new();
        if let Some(cid) = cid {
            if let Some((_, msg, _)) = self.pending.iter().find(|(c, _, _)| *c == cid) {
                what = refused_command(msg);
            }
            self.pending.retain(|(c, _, _)| *c != cid);
        }
        out.notice(&format!("! {message}{what}"));
        None
    }

    /// One input line: a message, or (interactive) a command. Offline (`conn` is `None`), what
    /// is said waits for the next connection, marked as sending. A line typed under a prompt
    /// that named another room than the current one says nothing in either (see
    /// [`State::here`]).
    async fn on_line(
        &mut self,
        conn: Option<&mut Connection>,
        line: String,
        out: &mut Output,
    ) -> Result<Option<SessionEnd>> {
        self.typed_elsewhere = out.typed_elsewhere();
        let end = self.on_line_here(conn, line, out).await;
        self.typed_elsewhere = None;
        end
    }

    /// [`State::on_line`], once it is known where the line was typed.
    async fn on_line_here(
        &mut self,
        conn: Option<&mut Connection>,
        line: String,
        out: &mut Output,
    ) -> Result<Option<SessionEnd>> {
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.trim().is_empty() {
            return Ok(None);
        }
        let command = if self.opts.commands {
            line.strip_prefix('/')
        } else {
            None
        };
        // `//TEXT` says `/TEXT`.
        let command = command.filter(|c| !c.starts_with('/'));
        let line = if command.is_none() && self.opts.commands && line.starts_with("//") {
            line[1..].to_owned()
        } else {
            line.clone()
        };
        let Some(command) = command else {
            if let Some(msg) = self.say(line, out) {
                self.said(conn, &msg, out).await?;
            }
            return Ok(None);
        };
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        // Commands in any case, as IRC's: `/QUIT` is `/quit`.
        let verb = &verb.to_ascii_lowercase();
        let rest = rest.trim().to_owned();
        let msg = match verb.as_str() {
            "quit" | "q" => return Ok(Some(SessionEnd::Exit(Exit::Done))),
            "nick" if !rest.is_empty() => {
                let Some(conn) = conn else {
                    out.notice("! offline: /nick needs the server; try again once reconnected");
                    return Ok(None);
                };
                // What was shown under the old nick is told read first: the old nick, taken
                // back, does not show it again.
                self.queue_reads();
                self.pump(Some(conn)).await?;
                self.renaming = Some(rest.clone());
                self.send(conn, &ClientMsg::Nick { nick: rest }).await?;
                return Ok(None);
            }
            "reconnect" => {
                out.notice("* reconnecting now");
                return Ok(Some(SessionEnd::Again));
            }
            "join" if !rest.is_empty() && !rest.contains(' ') => {
                return self.join(conn, rest, out).await.map(|()| None);
            }
            "switch" => {
                self.switch(&rest, out);
                // A conversation opened by the switch is joined now.
                if conn.is_some() {
                    self.pump(conn).await?;
                }
                return Ok(None);
            }
            "leave" => return self.leave(conn, &rest, out).await.map(|()| None),
            "msg" => {
                let Some((to, text)) = rest.split_once(' ') else {
                    out.notice("usage: /msg NICK TEXT");
                    return Ok(None);
                };
                let to = to.strip_prefix('@').unwrap_or(to);
                let cid = self.cid();
                let msg = self.queue(ClientMsg::Dm {
                    to: to.to_owned(),
                    text: text.trim().to_owned(),
                    cid,
                });
                self.said(conn, &msg, out).await?;
                return Ok(None);
            }
            "who" => {
                let Some(room) = self.named_or_here(&rest, out) else {
                    return Ok(None);
                };
                // A direct-message room is the two of us: no need to ask.
                if let Some(peer) = self.peer(&room) {
                    if self.has(&room) {
                        let mut pair = vec![peer, self.opts.nick.clone()];
                        pair.sort_by_key(|n| n.to_ascii_lowercase());
                        pair.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
                        out.notice(&format!("* in {}: {}", self.shown(&room), pair.join(", ")));
                    } else {
                        self.no_conversation(&room, out);
                    }
                    return Ok(None);
                }
                ClientMsg::Who { room, after: None }
            }
            "rooms" => ClientMsg::Rooms { after: None },
            "inbox" => ClientMsg::Inbox { after: None },
            "search" if rest.trim().is_empty() => {
                out.notice("usage: /search WORDS");
                return Ok(None);
            }
            "search" => ClientMsg::Search {
                query: rest.clone(),
                room: None,
                limit: None,
                skip: None,
            },
            "reply" | "edit" | "delete" | "react" | "unreact" => {
                let Some(room) = self.here(out) else {
                    return Ok(None);
                };
                match self.on_message_command(verb, &rest, room) {
                    Some(msg) => self.said(conn, &msg, out).await?,
                    None => out.notice(&format!("usage: {}", usage(verb))),
                }
                return Ok(None);
            }
            "history" => {
                let Some(room) = self.here(out) else {
                    return Ok(None);
                };
                ClientMsg::History {
                    room,
                    before: None,
                    after: None,
                    limit: Some(rest.parse().unwrap_or(20)),
                }
            }
            "help" => {
                out.notice(HELP);
                return Ok(None);
            }
            "join" if rest.contains(' ') => {
                out.notice("! a room name has no spaces: /join ROOM");
                return Ok(None);
            }
            _ if COMMANDS.contains(&verb.as_str()) => {
                out.notice(&format!("! /{verb} needs more; {HELP}"));
                return Ok(None);
            }
            _ => {
                out.notice(&format!(
                    "! unknown command /{verb} (/help lists the commands; //TEXT says /TEXT)"
                ));
                return Ok(None);
            }
        };
        match conn {
            Some(conn) => self.send(conn, &msg).await?,
            None => out.notice(&format!(
                "! offline: /{verb} needs the server; try again once reconnected"
            )),
        }
        Ok(None)
    }

    /// What the user said was queued: sent now if connected; offline, marked as sending.
    async fn said(
        &mut self,
        conn: Option<&mut Connection>,
        msg: &ClientMsg,
        out: &mut Output,
    ) -> Result<()> {
        if conn.is_none() {
            self.mark_sending(msg, out);
        }
        self.pump(conn).await
    }

    /// `/join ROOM`: a room already joined becomes the current one; a new one is joined, and
    /// becomes current when the server says `joined` (the prompt waits for it; offline, at
    /// once). `@nick` is the direct-message room with nick.
    async fn join(
        &mut self,
        conn: Option<&mut Connection>,
        name: String,
        out: &mut Output,
    ) -> Result<()> {
        let Some(room) = self.room_named(&name, out) else {
            return Ok(());
        };
        if self.rooms.contains_key(&room) || room.starts_with('@') {
            out.notice(&format!("* now in {}", self.shown(&room)));
            self.enter(Some(room), out);
            return Ok(());
        }
        self.rooms.insert(
            room.clone(),
            Cursor {
                last_seq: None,
                epoch: None,
            },
        );
        match conn {
            Some(conn) => {
                self.joining = Some(room.clone());
                let join = ClientMsg::Join {
                    room,
                    since: None,
                    epoch: None,
                };
                self.send(conn, &join).await?;
            }
            None => {
                out.notice(&format!("* {room} is joined once reconnected"));
                self.enter(Some(room), out);
            }
        }
        Ok(())
    }

    /// `/switch`: lists the user's rooms, numbered; `/switch ROOM` (or its number, or `@nick`)
    /// makes it the current one; `/switch >` and `/switch <` the next and the previous.
    fn switch(&mut self, name: &str, out: &mut Output) {
        let mine = self.my_rooms();
        if name.is_empty() {
            let list: Vec<String> = mine
                .iter()
                .enumerate()
                .map(|(i, room)| format!("{} {}", i + 1, self.shown(room)))
                .collect();
            let now = match &self.current {
                Some(room) => self.shown(room),
                None => "none".to_owned(),
            };
            out.notice(&format!(
                "* your rooms: {} (now: {now}); /switch ROOM or /switch N",
                list.join(", ")
            ));
            return;
        }
        // `>` and `<` (Ctrl-N, Ctrl-P): the next and the previous, round.
        let at = self
            .current
            .as_ref()
            .and_then(|c| mine.iter().position(|r| r == c));
        let len = mine.len();
        let step = match name {
            ">" => Some(at.map_or(0, |i| (i + 1) % len.max(1))),
            "<" => Some(at.map_or(0, |i| (i + len.max(1) - 1) % len.max(1))),
            _ => None,
        };
        if let Some(i) = step {
            match mine.get(i) {
                Some(room) => self.enter(Some(room.clone()), out),
                None => out.notice("! you are in no room: /join ROOM"),
            }
            return;
        }
        let room = match name.parse::<usize>() {
            Ok(n) if (1..=mine.len()).contains(&n) => mine[n - 1].clone(),
            Ok(_) => {
                out.notice(&format!(
                    "! no room number {name}: you are in {} (/switch lists them)",
                    mine.len()
                ));
                return;
            }
            Err(_) => match self.room_named(name, out) {
                Some(room) => room,
                None => return,
            },
        };
        if !room.starts_with('@') && !self.rooms.contains_key(&room) {
            out.notice(&format!("! you are not in {room}: /join {room}"));
            return;
        }
        // Only to a conversation we have, or the server has for us (`/inbox` lists it):
        // `@nobody` is no room to be in.
        if room.starts_with('@') && !self.has(&room) {
            let Some(&read) = self.dms.get(&room) else {
                self.no_conversation(&room, out);
                return;
            };
            self.open(room.clone(), read);
        }
        self.enter(Some(room), out);
    }

    /// Opens a direct-message room the server knows for us: joined from where we read it, so
    /// what we have not seen is shown.
    fn open(&mut self, room: String, read_seq: u64) {
        self.rooms.insert(
            room.clone(),
            Cursor {
                last_seq: Some(read_seq),
                epoch: None,
            },
        );
        // Closed here only: the server still has us in it, and sends what comes.
        if self.joined.contains(&room) {
            return;
        }
        self.outgoing.push(ClientMsg::Join {
            room,
            since: Some(read_seq),
            epoch: None,
        });
    }

    /// Whether the server lets us be in one more room, with one left over for a `/join`.
    fn room_for_one_more(&self) -> bool {
        self.max_rooms
            .is_none_or(|max| self.rooms.len() + 1 + ROOMS_SPARE <= max)
    }

    /// Whether `room` is one of the user's: followed, or the current one.
    fn has(&self, room: &str) -> bool {
        self.rooms.contains_key(room) || self.current.as_deref() == Some(room)
    }

    /// Tells the user there is no direct-message room `room` to switch to, and how to start one.
    fn no_conversation(&self, room: &str, out: &mut Output) {
        let shown = self.shown(room);
        let nick = shown.trim_start_matches('@');
        out.notice(&format!(
            "! no conversation with @{nick} (/msg {nick} TEXT starts one)"
        ));
    }

    /// `text` (from the server) with each direct-message room of ours, `@a+b`, named as the
    /// user sees it (`@mochi`).
    fn unmask(&self, text: &str) -> String {
        let nick_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        let mut said = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('@') {
            said.push_str(&rest[..at]);
            let tail = &rest[at + 1..];
            let first = tail.find(|c| !nick_char(c)).unwrap_or(tail.len());
            let second = tail[first..]
                .strip_prefix('+')
                .map(|after| after.find(|c| !nick_char(c)).unwrap_or(after.len()));
            match second {
                Some(len) if first > 0 && len > 0 => {
                    let end = at + 1 + first + 1 + len;
                    said.push_str(&self.shown(&rest[at..end]));
                    rest = &rest[end..];
                }
                _ => {
                    said.push('@');
                    rest = tail;
                }
            }
        }
        said.push_str(rest);
        said
    }

    /// `/leave [ROOM]`: leaves it (the current room without ROOM); leaving the current room
    /// makes another of the user's rooms current, or none (said).
    async fn leave(
        &mut self,
        conn: Option<&mut Connection>,
        name: &str,
        out: &mut Output,
    ) -> Result<()> {
        let room = if name.is_empty() {
            self.here(out)
        } else {
            self.room_named(name, out)
        };
        let Some(room) = room else {
            return Ok(());
        };
        let dm = room.starts_with('@');
        if !dm && !self.rooms.contains_key(&room) {
            out.notice(&format!("! you are not in {room}"));
            return Ok(());
        }
        if dm && !self.has(&room) {
            self.no_conversation(&room, out);
            return Ok(());
        }
        // A conversation closed here stays one the server knows: `/switch @nick` opens it again.
        if let Some(cursor) = self.rooms.remove(&room)
            && dm
        {
            self.dms.insert(room.clone(), cursor.last_seq.unwrap_or(0));
        }
        // Offline, the room is simply not joined again; a direct-message room is only closed
        // here (its messages still come, as every DM does).
        if let Some(conn) = conn
            && !dm
        {
            self.send(conn, &ClientMsg::Leave { room: room.clone() })
                .await?;
        }
        out.notice(&format!("* left {}", self.shown(&room)));
        if self.current.as_ref() == Some(&room) {
            self.move_on(&room, out);
        }
        Ok(())
    }

    /// The current room was left: another of the user's rooms becomes current, or none; said.
    fn move_on(&mut self, left: &str, out: &mut Output) {
        let next = self
            .my_rooms()
            .into_iter()
            .find(|r| r != left && !r.starts_with('@'));
        match &next {
            Some(next) => out.notice(&format!("* now in {}", self.shown(next))),
            None => out.notice("* you are in no room now: /join ROOM to talk"),
        }
        self.enter(next, out);
    }

    /// The user's rooms in `/switch`'s order: rooms by name, then direct-message rooms.
    fn my_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.rooms.keys().cloned().collect();
        if let Some(current) = &self.current
            && !rooms.contains(current)
        {
            rooms.push(current.clone());
        }
        rooms.sort_by_key(|r| (r.starts_with('@'), r.clone()));
        rooms
    }

    /// The room the user names: `@nick` is the direct-message room with nick (`None`, told,
    /// for a name that is no nick).
    fn room_named(&self, name: &str, out: &mut Output) -> Option<String> {
        let Some(nick) = name.strip_prefix('@') else {
            return Some(name.to_owned());
        };
        if let Some(room) = self.rooms.keys().find(|r| self.shown(r) == name) {
            return Some(room.clone()); // an older name of the pair's room, as the server gave it
        }
        if !crate::chat::valid_nick(nick) {
            out.notice(&format!(
                "! {name}: @ and a nick names a direct-message room"
            ));
            return None;
        }
        Some(dm_room(&self.opts.nick, nick))
    }

    /// `name` if given, else the current room (`None`, told, when there is none).
    fn named_or_here(&self, name: &str, out: &mut Output) -> Option<String> {
        if name.is_empty() {
            self.here(out)
        } else {
            self.room_named(name, out)
        }
    }

    /// Makes `room` the current one, and says so in the prompt.
    fn enter(&mut self, room: Option<String>, out: &mut Output) {
        let shown = room.as_deref().map(|r| self.shown(r));
        self.current = room;
        out.set_room(shown.as_deref());
    }

    /// A room as the user sees it, in a terminal and in a script alike: a direct-message room
    /// `@mochi+nana` is `@mochi` (the other nick); `--json` prints the protocol's objects as
    /// they come.
    /// A room of a nick we had before a rename (its `left` may come after the rename) is named
    /// the same way.
    fn shown(&self, room: &str) -> String {
        let former = || {
            let (a, b) = room.strip_prefix('@')?.split_once('+')?;
            self.former.iter().rev().find_map(|nick| {
                let nick = nick.to_ascii_lowercase();
                (a == nick)
                    .then(|| b.to_owned())
                    .or_else(|| (b == nick).then(|| a.to_owned()))
            })
        };
        match self.peer(room).or_else(former) {
            Some(peer) => format!("@{peer}"),
            None => room.to_owned(),
        }
    }

    /// The other nick of a direct-message room of ours (ourselves in a note to self).
    fn peer(&self, room: &str) -> Option<String> {
        let (a, b) = room.strip_prefix('@')?.split_once('+')?;
        let me = self.opts.nick.to_ascii_lowercase();
        if a == me {
            Some(b.to_owned())
        } else if b == me {
            Some(a.to_owned())
        } else {
            None
        }
    }
}

/// A refusal as the user reads it: the server's `message` when it is a sentence for people,
/// else the client's words for its code — never the code itself. The one mapping from
/// [`ErrorCode`] to wording (the server's words are [`visible`](output::visible)).
fn refusal(code: ErrorCode, message: &str) -> String {
    let message = output::visible(message.trim());
    // Words for programs: the protocol's JSON, or a request this client should not have sent.
    let jargon = message.is_empty() || message.contains("{\"") || message.contains('`');
    let ours = match code {
        ErrorCode::BadJson
        | ErrorCode::BinaryNotAllowed
        | ErrorCode::HelloFirst
        | ErrorCode::AlreadyHello => {
            "the server could not take what this client sent (a bug in nanachat connect: please \
             report it)"
        }
        ErrorCode::CidReused => "that line was taken for another one already sent; say it again",
        // The server's words name a request; the grace they tell is the user's to know.
        ErrorCode::TokenExpired => {
            return match message.rsplit_once(" within ") {
                Some((_, grace)) if !grace.is_empty() && !grace.contains(' ') => format!(
                    "your token expired: the server ends the connection unless a fresh one \
                     comes within {grace}"
                ),
                _ => "your token expired".to_owned(),
            };
        }
        // The server's words name the room, not why: say it.
        ErrorCode::TooManyRooms if !jargon => {
            return format!(
                "{message}: you are in as many rooms as the server allows (/leave one)"
            );
        }
        _ if !jargon => return message.into_owned(),
        ErrorCode::BadMessage => {
            "the server could not take that request (a bug in nanachat connect: please report it)"
        }
        ErrorCode::BadNick => "that is not a nick: 1 to 32 letters, digits, - or _",
        ErrorCode::NickTaken => "that nick is taken",
        ErrorCode::BadRoom => "that is not a room name: 1 to 64 letters, digits, -, _ or .",
        ErrorCode::AlreadyJoined => "you are in that room already",
        ErrorCode::NotJoined => "you are not in that room: /join it first",
        ErrorCode::TooManyRooms => "you are in as many rooms as the server allows: /leave one",
        ErrorCode::TextTooLong => "that line is longer than the server allows",
        ErrorCode::NoSuchNick => "nobody has that nick",
        ErrorCode::RateLimited => "slow down: you are sending faster than the server allows",
        ErrorCode::Internal => "the server failed to store that: try again later",
        ErrorCode::Unauthorized => "the server wants a valid token for that",
        ErrorCode::Forbidden => "you are not allowed to do that",
        ErrorCode::NoSuchMessage => "there is no such message",
        ErrorCode::MessageDeleted => "that message was deleted",
        ErrorCode::BadReaction => "that is not a reaction the server takes",
        ErrorCode::Unchanged => "nothing to change",
    };
    ours.to_owned()
}

/// The direct-message room of two nicks, as docs/protocol.md names it: `@a+b`, both in lower
/// case, in order.
fn dm_room(a: &str, b: &str) -> String {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("@{x}+{y}")
}

/// The commands, for telling a known one used wrongly from an unknown one.
const COMMANDS: [&str; 19] = [
    "join",
    "leave",
    "switch",
    "rooms",
    "msg",
    "who",
    "history",
    "search",
    "inbox",
    "nick",
    "reconnect",
    "quit",
    "q",
    "help",
    "reply",
    "edit",
    "delete",
    "react",
    "unreact",
];

/// What `/help` shows.
pub const HELP: &str = "commands: /join ROOM, /switch [ROOM|N|@NICK] (Ctrl-N, Ctrl-P: next, \
previous), /leave [ROOM], /rooms, \
/msg NICK TEXT, /who [ROOM], /history [N], /search WORDS, /inbox, /nick NAME, /reconnect, /quit \
(Ctrl-C twice, or Ctrl-D); on a message of the current room (SEQ: its #number, shown \
before it): /reply SEQ TEXT, /edit SEQ TEXT, /delete SEQ, /react SEQ EMOJI, /unreact SEQ \
EMOJI; anything else is said in the current room";

/// The usage of a command on a message.
fn usage(verb: &str) -> &'static str {
    match verb {
        "reply" => "/reply SEQ TEXT (SEQ: the #number before a message)",
        "edit" => "/edit SEQ TEXT (SEQ: the #number before a message)",
        "delete" => "/delete SEQ (SEQ: the #number before a message)",
        "react" => "/react SEQ EMOJI (SEQ: the #number before a message)",
        _ => "/unreact SEQ EMOJI (SEQ: the #number before a message)",
    }
}

/// A command's `SEQ REST`: the seq (`42` or `#42`) and the rest of the line, trimmed; `None`
/// when the seq is missing or not a number.
fn seq_and_rest(args: &str) -> Option<(u64, &str)> {
    let (seq, rest) = args.split_once(' ').unwrap_or((args, ""));
    let seq = seq.strip_prefix('#').unwrap_or(seq).parse().ok()?;
    Some((seq, rest.trim()))
}

/// ` (/edit #42)`: which command on a message the server refused, for its error line; empty
/// for anything else.
fn refused_command(msg: &ClientMsg) -> String {
    match msg {
        ClientMsg::Say {
            reply_to: Some(seq),
            ..
        } => format!(" (/reply #{seq})"),
        ClientMsg::Edit { seq, .. } => format!(" (/edit #{seq})"),
        ClientMsg::Delete { seq, .. } => format!(" (/delete #{seq})"),
        ClientMsg::React {
            seq,
            emoji,
            on: true,
            ..
        } => format!(" (/react #{seq} {emoji})"),
        ClientMsg::React { seq, emoji, .. } => format!(" (/unreact #{seq} {emoji})"),
        _ => String::new(),
    }
}

/// " (token valid until …)" when the token has an `exp`.
fn until(exp: Option<u64>) -> String {
    exp.map(|exp| format!(" (token valid until {})", crate::clock::utc_from_secs(exp)))
        .unwrap_or_default()
}

/// " and N more" when a list reply holds fewer than its `total` (it was cut to fit one frame).
/// A list reply as one line: `* LABEL: a, b and N more`.
fn listed(label: &str, items: impl Iterator<Item = String>, total: usize, shown: usize) -> String {
    let items: Vec<String> = items.collect();
    format!("* {label}: {}{}", items.join(", "), and_more(total, shown))
}

fn and_more(total: usize, shown: usize) -> String {
    match total.saturating_sub(shown) {
        0 => String::new(),
        more => format!(" and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn state() -> State {
        let opts = ClientOptions {
            target: Target::parse("ws://127.0.0.1:1").unwrap(),
            nick: "nana".into(),
            rooms: vec!["lobby".into()],
            send_every: None,
            reconnect: true,
            commands: true,
            token: None,
            token_file: None,
            key_file: None,
        };
        State {
            opts,
            key: Some("k".into()),
            run: "r".into(),
            rooms: BTreeMap::new(),
            current: Some("lobby".into()),
            joining: None,
            outgoing: Vec::new(),
            welcomed_as: None,
            pending: VecDeque::new(),
            marked: BTreeSet::new(),
            sent_at: BTreeMap::new(),
            bucket: Bucket::new(1, 1),
            wake: None,
            next_cid: 1,
            input_done: false,
            welcomed: true,
            expiry: None,
            typing: Vec::new(),
            renaming: None,
            former: Vec::new(),
            last_rename: None,
            catching_up: false,
            read_due: BTreeMap::new(),
            read_at: None,
            max_rooms: None,
            dms: BTreeMap::new(),
            joined: BTreeSet::new(),
            more_unread: 0,
            typed_elsewhere: None,
        }
    }

    /// A terminal output that keeps what it printed.
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

    /// Typing is shown in the bar above the prompt, never as a line; the typist's message
    /// takes it away, and so does time.
    #[tokio::test(start_paused = true)]
    async fn typing_shows_in_the_bar_until_the_message_or_five_seconds() {
        let mut state = state();
        let (mut out, lines) = terminal();
        let typing = |nick: &str| format!(r#"{{"type":"typing","room":"lobby","nick":"{nick}"}}"#);
        assert!(state.on_server(&typing("mochi"), &mut out).is_none());
        assert!(state.on_server(&typing("kiki"), &mut out).is_none());
        let message =
            r#"{"type":"message","room":"lobby","seq":1,"from":"mochi","text":"hi","time":0}"#;
        assert!(state.on_server(message, &mut out).is_none());
        tokio::time::advance(TYPING_SHOWN).await;
        assert_eq!(state.typing_ends(), Some(Instant::now()));
        state.typing.retain(|t| t.until > Instant::now());
        state.show_typing(&mut out);
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], "mochi is typing in lobby");
        assert_eq!(
            lines[1],
            "\x1b[1A\r\x1b[2Kmochi and kiki are typing in lobby"
        );
        assert_eq!(lines[2], "\x1b[1A\r\x1b[2Kkiki is typing in lobby");
        assert!(
            lines[3].ends_with("[lobby] mochi: hi\nkiki is typing in lobby"),
            "{lines:?}"
        );
        assert_eq!(lines[4], "\x1b[1A\r\x1b[2K\x1b[1A");
    }

    /// What is shown is told read, but not for a room left since (the server would refuse it:
    /// a `! not_joined` line out of nowhere).
    #[tokio::test]
    async fn reads_are_told_for_the_rooms_still_followed() {
        let mut state = state();
        for room in ["lobby", "dev"] {
            let cursor = Cursor {
                last_seq: Some(0),
                epoch: Some(1),
            };
            state.rooms.insert(room.into(), cursor);
        }
        let (mut out, _lines) = terminal();
        for room in ["lobby", "dev"] {
            let m = format!(
                r#"{{"type":"message","room":"{room}","seq":3,"from":"mochi","text":"hi","time":0}}"#
            );
            assert!(state.on_server(&m, &mut out).is_none());
        }
        assert!(state.read_at.is_some(), "a read is due");
        state
            .on_line(None, "/leave dev".into(), &mut out)
            .await
            .unwrap();
        state.queue_reads();
        assert_eq!(
            state.outgoing,
            [ClientMsg::Read {
                room: "lobby".into(),
                seq: 3
            }]
        );
        assert!(state.read_at.is_none() && state.read_due.is_empty());
    }

    /// Commands are taken in any case; a room name with a space is said to be one.
    #[tokio::test]
    async fn commands_in_any_case_and_a_room_with_a_space_said_so() {
        let mut state = state();
        let (mut out, lines) = terminal();
        let end = state.on_line(None, "/QUIT".into(), &mut out).await.unwrap();
        assert!(matches!(end, Some(SessionEnd::Exit(Exit::Done))));
        state
            .on_line(None, "/join bad room".into(), &mut out)
            .await
            .unwrap();
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines, ["! a room name has no spaces: /join ROOM"]);
    }

    /// A rename is said once: another's once for all the rooms we share with it, ours not by
    /// the rooms at all (`* you are now` says it); a refused `/nick` keeps ours.
    #[tokio::test]
    async fn a_rename_is_said_once() {
        let mut state = state();
        let (mut out, lines) = terminal();
        let renamed = |room: &str, from: &str, to: &str| {
            format!(
                r#"{{"type":"presence","room":"{room}","nick":"{to}","event":"renamed","from":"{from}"}}"#
            )
        };
        for room in ["lobby", "dev"] {
            assert!(
                state
                    .on_server(&renamed(room, "mochi", "mochi2"), &mut out)
                    .is_none()
            );
            assert!(
                state
                    .on_server(&renamed(room, "nana", "nana2"), &mut out)
                    .is_none()
            );
        }
        assert!(
            state
                .on_server(r#"{"type":"renamed","from":"nana","to":"nana2"}"#, &mut out)
                .is_none()
        );
        // Asked on a connection (`/nick mochi`; offline it is not asked at all).
        state.renaming = Some("mochi".into());
        let refusal = r#"{"type":"error","code":"nick_taken","message":"mochi is taken"}"#;
        assert!(
            state.on_server(refusal, &mut out).is_none(),
            "the session goes on"
        );
        let lines = lines.lock().unwrap().clone();
        let said: Vec<&String> = lines.iter().filter(|l| l.contains(" is now ")).collect();
        assert_eq!(said, ["* mochi is now mochi2"], "{lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("you are now nana2")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("mochi is taken; you are still nana2")),
            "{lines:?}"
        );
        assert_eq!(state.opts.nick, "nana2");
    }

    /// A direct-message room is `@mochi` in a script too, also one of the nick we had before a
    /// rename (its `left` may come after the rename).
    #[test]
    fn a_dm_room_is_the_other_nick_in_a_script_and_after_a_rename() {
        let mut state = state();
        state.opts.commands = false;
        let (mut out, _lines) = terminal();
        assert_eq!(state.shown("@mochi+nana"), "@mochi");
        let renamed = r#"{"type":"renamed","from":"nana","to":"nana2"}"#;
        assert!(state.on_server(renamed, &mut out).is_none());
        assert_eq!(state.shown("@mochi+nana"), "@mochi");
        assert_eq!(state.shown("@mochi+nana2"), "@mochi");
        assert_eq!(
            state.shown("@a+b"),
            "@a+b",
            "not ours: as the server names it"
        );
        assert_eq!(state.shown("lobby"), "lobby");
    }

    /// DMs are `@nick`; `/switch >` goes round the user's rooms (rooms by name, then DMs); a
    /// current room the server says is left gives way to another; offline, a line waits marked.
    #[tokio::test]
    async fn rooms_go_round_dms_are_named_by_the_other_nick_and_a_left_room_gives_way() {
        let mut state = state();
        for room in ["lobby", "dev"] {
            let cursor = Cursor {
                last_seq: Some(0),
                epoch: Some(1),
            };
            state.rooms.insert(room.into(), cursor);
        }
        let (mut out, lines) = terminal();
        let dm = r#"{"type":"message","room":"@mochi+nana","seq":1,"from":"mochi","text":"psst","time":0}"#;
        assert!(state.on_server(dm, &mut out).is_none());
        let mut went = Vec::new();
        for _ in 0..3 {
            state
                .on_line(None, "/switch >".into(), &mut out)
                .await
                .unwrap();
            went.push(state.current.clone().unwrap());
        }
        assert_eq!(went, ["@mochi+nana", "dev", "lobby"]);
        state
            .on_line(None, "/switch @MOCHI".into(), &mut out)
            .await
            .unwrap();
        assert_eq!(state.current.as_deref(), Some("@mochi+nana"));
        state.on_line(None, "back".into(), &mut out).await.unwrap();
        assert!(
            matches!(&state.pending[0].1, ClientMsg::Dm { to, .. } if to == "mochi"),
            "{:?}",
            state.pending
        );
        state
            .on_line(None, "/switch dev".into(), &mut out)
            .await
            .unwrap();
        assert!(
            state
                .on_server(r#"{"type":"left","room":"dev"}"#, &mut out)
                .is_none()
        );
        assert_eq!(state.current.as_deref(), Some("lobby"));
        state
            .on_line(None, "/bogus".into(), &mut out)
            .await
            .unwrap();
        let lines = lines.lock().unwrap().clone();
        let lines: Vec<&str> = lines
            .iter()
            .map(|l| l.split_once(' ').map_or(l.as_str(), |(_, rest)| rest))
            .collect();
        assert_eq!(
            lines,
            [
                "#1 [@mochi] mochi: psst",
                "[@mochi] nana: back (sending)",
                "left dev",
                "now in lobby",
                "unknown command /bogus (/help lists the commands; //TEXT says /TEXT)",
            ]
        );
    }

    /// A refusal is a sentence: the server's when it is one, the client's for the protocol's
    /// words; a DM room of ours in it is `@mochi`.
    #[test]
    fn refusals_are_sentences_and_dm_rooms_are_named_by_the_other_nick() {
        let state = state();
        assert_eq!(
            refusal(ErrorCode::NoSuchNick, "nobody is connected as bob"),
            "nobody is connected as bob"
        );
        assert_eq!(refusal(ErrorCode::Unchanged, ""), "nothing to change");
        assert_eq!(
            refusal(ErrorCode::TooManyRooms, "cannot join dev"),
            "cannot join dev: you are in as many rooms as the server allows (/leave one)"
        );
        let hello = refusal(
            ErrorCode::HelloFirst,
            r#"say hello first: {"type":"hello"}"#,
        );
        assert!(!hello.contains('{') && hello.contains("bug"), "{hello}");
        let expired = refusal(
            ErrorCode::TokenExpired,
            r#"your token expired: send {"type":"refresh","token":…} with a fresh one within 30s"#,
        );
        assert!(
            expired.ends_with("within 30s") && !expired.contains('{'),
            "{expired}"
        );
        assert_eq!(
            state.unmask("join @mochi+nana before saying anything there (@a+b, @, a@b+)"),
            "join @mochi before saying anything there (@a+b, @, a@b+)"
        );
    }

    #[test]
    fn a_truncated_resume_is_told_to_the_user() {
        let mut state = state();
        let (mut out, lines) = terminal();
        let joined = r#"{"type":"joined","room":"lobby","epoch":1,"last_seq":41,"first_seq":30,"truncated":true}"#;
        assert!(state.on_server(joined, &mut out).is_none());
        let gapless = r#"{"type":"joined","room":"dev","epoch":1,"last_seq":41,"first_seq":1}"#;
        assert!(state.on_server(gapless, &mut out).is_none());
        let lines = lines.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "* some older messages in lobby are not shown (removed by retention, or sent to \
                 the nick before it was yours)",
                "* joined lobby",
                "* joined dev",
            ]
        );
    }

    #[test]
    fn the_nick_of_a_token_is_its_sub_read_without_verifying() {
        let b64 = data_encoding::BASE64URL_NOPAD;
        let token = format!(
            "{}.{}.c2ln",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(br#"{"sub":"Tess","exp":1764000000}"#)
        );
        assert_eq!(token_sub(&token).as_deref(), Some("Tess"));
        assert_eq!(token_sub(&format!(" {token}\n")).as_deref(), Some("Tess"));
        for not_a_token in ["", "abc", "a.b.c", "a.e30.c", "a.eyJzdWIiOjF9.c"] {
            assert_eq!(token_sub(not_a_token), None, "{not_a_token}");
        }
    }

    #[test]
    fn a_token_file_is_read_without_its_newline_and_must_hold_one() {
        let dir = std::env::temp_dir().join(format!("nanachat-token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc.def.ghi\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), "abc.def.ghi");
        std::fs::write(&file, "\n").unwrap();
        let err = read_token(&file).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains("token"), "{err}");
        assert_eq!(read_token(&dir.join("missing")).unwrap_err().exit_code(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn back_off_grows_with_jitter_and_a_cap() {
        let mut backoff = RECONNECT;
        for attempt in 0..20 {
            let wait = backoff.failed_jittered().as_millis() as u64;
            let base = (100u64 << attempt.min(7)).min(2_000);
            assert!(
                (base / 2..=base / 2 + base).contains(&wait),
                "{attempt}: {wait}"
            );
        }
    }
}
