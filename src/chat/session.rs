//! One chat connection: reads requests, checks them, answers them, and publishes what is said.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::{MissedTickBehavior, interval_at};
use tracing::warn;

use super::render::{Mode, PLAIN_HELP, render};
use super::Inner;
use super::types::{ConnId, chat_message, dm_pair, dm_room, valid_nick, valid_room};
use crate::auth::Claims;
use crate::connection::{Connection, Incoming, Message, Outbox};
use crate::protocol::{
    ChatMessage, ClientMsg, ErrorCode, Limits, RoomInfo, SUBPROTOCOL, ServerMsg, parse_client,
};
use crate::rate::Bucket;
use crate::store::{Append, MAX_PAGE, Page, Store, now_ms};
use crate::{Error, Result};

/// The hub key of every authenticated connection: a valid token for a nick makes it that nick's.
const AUTHENTICATED: &str = "\u{0}token";

/// The room plain-text clients are put in.
const LOBBY: &str = "lobby";

/// How many messages `/history` shows unless told.
const PLAIN_HISTORY: u32 = 20;

/// Serves one connection until it ends, then takes it out of the hub.
pub(super) async fn run<S: Store>(chat: Arc<Inner<S>>, conn: &mut Connection) -> Result<()> {
    let id = chat.next_id.fetch_add(1, Ordering::Relaxed);
    let mode = if conn.subprotocol() == Some(SUBPROTOCOL) {
        Mode::Json
    } else {
        Mode::Plain
    };
    let bucket = Bucket::new(chat.config.rate_per_sec, chat.config.rate_burst);
    let mut session = Session {
        outbox: conn.outbox(),
        chat,
        id,
        mode,
        greeted: false,
        current: None,
        bucket,
        strikes: 0,
        said: 0,
        claims: None,
    };
    let outcome = session.serve(conn).await;
    session.chat.hub.disconnect(id);
    outcome
}

struct Session<S> {
    chat: Arc<Inner<S>>,
    id: ConnId,
    mode: Mode,
    outbox: Outbox,
    /// `hello` done (plain-text mode: at once).
    greeted: bool,
    /// Plain-text mode: the room a bare line is said in.
    current: Option<String>,
    bucket: Bucket,
    /// Rate-limit refusals in a row.
    strikes: u32,
    /// Plain-text mode: messages said, for their cids.
    said: u64,
    /// What the connection's token allows, when the server wants tokens.
    claims: Option<Claims>,
}

/// A refusal to send back: an error frame, the connection stays.
struct Refusal(ErrorCode, String);

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(code, message.into()))
}

impl<S: Store> Session<S> {
    async fn serve(&mut self, conn: &mut Connection) -> Result<()> {
        if self.mode == Mode::Plain {
            Box::pin(self.start_plain(conn)).await?;
        }
        let every = self.chat.config.heartbeat_interval;
        let mut heartbeat = (!every.is_zero()).then(|| {
            let mut t = interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                msg = conn.read_msg() => match msg? {
                    None => return Ok(()),
                    // Boxed: handling a request needs a large future (history pages, replay),
                    // and an idle connection should not carry its space between requests.
                    Some(Incoming::Text(text)) => Box::pin(self.on_text(conn, text.as_str())).await?,
                    Some(Incoming::Binary(_)) => {
                        self.reply_error(conn, ErrorCode::BinaryNotAllowed,
                            "send text frames: JSON in nanachat.v1, lines in plain-text mode", None).await?;
                    }
                },
                _ = async { heartbeat.as_mut().expect("checked").tick().await }, if heartbeat.is_some() => {
                    self.reply(conn, &ServerMsg::Tick { time: now_ms() }).await?;
                }
            }
        }
    }

    async fn reply(&self, conn: &Connection, msg: &ServerMsg) -> Result<()> {
        conn.send(Message::Text(render(self.mode, msg))).await
    }

    async fn reply_error(
        &self,
        conn: &Connection,
        code: ErrorCode,
        message: &str,
        cid: Option<String>,
    ) -> Result<()> {
        crate::metrics::bump(&self.chat.errors[code as usize]);
        let msg = ServerMsg::Error {
            code,
            message: message.to_owned(),
            cid,
        };
        self.reply(conn, &msg).await
    }

    async fn on_text(&mut self, conn: &Connection, text: &str) -> Result<()> {
        let request = match self.mode {
            Mode::Json => parse_client(text)
                .map(Some)
                .map_err(|(code, why)| Refusal(code, why)),
            Mode::Plain => self.parse_plain(text).await,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()), // a plain-text command answered on the spot
            Err(Refusal(code, why)) => return self.reply_error(conn, code, &why, None).await,
        };
        let cid = match &request {
            ClientMsg::Say { cid, .. } | ClientMsg::Dm { cid, .. } => Some(cid.clone()),
            _ => None,
        };
        if !self.bucket.take() {
            self.strikes += 1;
            if self.strikes >= self.chat.config.rate_strikes {
                return Err(Error::Policy("rate limit exceeded".into()));
            }
            let why = format!(
                "slow down: {} messages a second",
                self.chat.config.rate_per_sec
            );
            return self
                .reply_error(conn, ErrorCode::RateLimited, &why, cid)
                .await;
        }
        self.strikes = 0;
        match self.dispatch(conn, request).await {
            Ok(()) => Ok(()),
            Err(Failure::Refused(Refusal(code, why))) => {
                self.reply_error(conn, code, &why, cid).await
            }
            Err(Failure::Fatal(err)) => Err(err),
        }
    }

    async fn dispatch(&mut self, conn: &Connection, request: ClientMsg) -> Result<(), Failure> {
        if !self.greeted && !matches!(request, ClientMsg::Hello { .. }) {
            refuse(
                ErrorCode::HelloFirst,
                "say hello first: {\"type\":\"hello\",\"nick\":…}",
            )?;
        }
        match request {
            ClientMsg::Hello { nick, key, token } => {
                self.hello(conn, &nick, key.as_deref(), token.as_deref())
                    .await
            }
            ClientMsg::Join { room, since, epoch } => self.join(conn, &room, since, epoch).await,
            ClientMsg::Leave { room } => {
                self.chat
                    .hub
                    .leave(self.id, &room)
                    .or_else(|code| refuse(code, format!("you are not in {room}")))?;
                if self.current.as_deref() == Some(room.as_str()) {
                    self.current = None;
                }
                Ok(())
            }
            ClientMsg::Say { room, text, cid } => {
                self.check_text(&text)?;
                if !self.chat.hub.may_use(self.id, &room) {
                    refuse(
                        ErrorCode::NotJoined,
                        format!("join {room} before saying anything there"),
                    )?;
                }
                self.publish(room, text, cid);
                Ok(())
            }
            ClientMsg::Dm { to, text, cid } => {
                self.check_text(&text)?;
                if !valid_nick(&to) {
                    refuse(ErrorCode::BadNick, format!("'{to}' is not a nick"))?;
                }
                if !self.nick_online(&to).await? {
                    refuse(
                        ErrorCode::NoSuchNick,
                        format!("nobody is connected as {to}"),
                    )?;
                }
                let me = self.chat.hub.nick(self.id).unwrap_or_default();
                let room = dm_room(&me, &to);
                self.open_room(&room, Some((me, to))).await?;
                self.publish(room, text, cid);
                Ok(())
            }
            ClientMsg::Who { room } => {
                let mut nicks = self
                    .chat
                    .hub
                    .members(self.id, &room)
                    .or_else(|code| refuse(code, format!("you are not in {room}")))?;
                // In a cluster, Redis knows every process's members (of public rooms: a DM
                // room's two are told by the local list).
                if let Some(cluster) = &self.chat.cluster
                    && !room.starts_with('@')
                {
                    nicks = cluster.members(&room).await?;
                }
                let total = nicks.len();
                // One frame at most, like a history page: a huge room's list is cut.
                nicks.truncate(self.fitting(nicks.iter().map(|n| n.len() + 3)));
                Ok(self
                    .reply(conn, &ServerMsg::Members { room, nicks, total })
                    .await?)
            }
            ClientMsg::History {
                room,
                before,
                after,
                limit,
            } => self.history(conn, room, before, after, limit).await,
            ClientMsg::Rooms => {
                let rooms = self
                    .chat
                    .hub
                    .rooms()
                    .into_iter()
                    .map(|(room, members)| RoomInfo { room, members })
                    .collect();
                Ok(self.reply(conn, &ServerMsg::Rooms { rooms }).await?)
            }
        }
    }

    async fn hello(
        &mut self,
        conn: &Connection,
        nick: &str,
        key: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), Failure> {
        if self.greeted {
            refuse(ErrorCode::AlreadyHello, "you said hello already")?;
        }
        if !valid_nick(nick) {
            refuse(
                ErrorCode::BadNick,
                "a nick is 1 to 32 letters, digits, - or _",
            )?;
        }
        let key = if self.chat.config.auth.is_some() {
            let claims = self.check_token(token.or(conn.token()))?;
            if claims.sub != nick {
                refuse(
                    ErrorCode::Unauthorized,
                    format!("the token is for {}, not {nick}", claims.sub),
                )?;
            }
            self.claims = Some(claims);
            // Every connection with a valid token for a nick is that nick's.
            Some(AUTHENTICATED)
        } else {
            if !self.claim(nick, key).await? {
                refuse(ErrorCode::NickTaken, format!("{nick} is taken"))?;
            }
            key
        };
        self.chat
            .hub
            .connect(self.id, nick, key, self.outbox.clone(), self.mode)
            .or_else(|code| refuse(code, format!("{nick} is taken")))?;
        self.greeted = true;
        Ok(self.welcome(conn, nick).await?)
    }

    /// The claims of a valid token; a missing or bad one is refused with the reason.
    fn check_token(&self, token: Option<&str>) -> Result<Claims, Refusal> {
        let Some(auth) = &self.chat.config.auth else {
            return refuse(ErrorCode::Internal, "no auth configured");
        };
        let Some(token) = token else {
            return refuse(
                ErrorCode::Unauthorized,
                "this server wants a token: hello with \"token\" (nanachat token --sub NICK)",
            );
        };
        auth.verify(token, crate::auth::now_secs())
            .or_else(|why| refuse(ErrorCode::Unauthorized, why))
    }

    async fn welcome(&self, conn: &Connection, nick: &str) -> Result<()> {
        let config = &self.chat.config;
        let limits = Limits {
            max_message_bytes: self.chat.max_message_bytes,
            max_text_chars: config.max_text_chars,
            rate_per_sec: config.rate_per_sec,
            rate_burst: config.rate_burst,
            max_rooms: config.max_rooms,
            heartbeat_ms: config.heartbeat_interval.as_millis() as u64,
        };
        let msg = ServerMsg::Welcome {
            nick: nick.to_owned(),
            limits,
        };
        self.reply(conn, &msg).await
    }

    /// Makes sure the hub holds `room`, loading its state from the store the first time.
    async fn open_room(&self, room: &str, pair: Option<(String, String)>) -> Result<(), Failure> {
        if !self.chat.hub.has_room(room) {
            let stored = self.chat.store.room_state(room).await?;
            self.chat.hub.open_room(room, stored, pair);
            // Another process may have stored one more since the read, and published it
            // before this process held the room.
            if let Some(cluster) = &self.chat.cluster {
                cluster.fill(room, true);
            }
        }
        Ok(())
    }

    /// In a cluster of open servers, reserves `nick` on every process for connections with
    /// `key` (a token's nick is its holder's everywhere: nothing to reserve). False: taken.
    async fn claim(&self, nick: &str, key: Option<&str>) -> Result<bool, Refusal> {
        match &self.chat.cluster {
            Some(cluster) if self.chat.config.auth.is_none() => {
                cluster.claim(nick, key).await.map_err(|err| {
                    warn!(cause = %err, "cannot reserve a nick");
                    Refusal(
                        ErrorCode::Internal,
                        "cannot reserve the nick now; retry".into(),
                    )
                })
            }
            _ => Ok(true),
        }
    }

    /// Whether anybody is connected as `nick`, here or (in a cluster) on another process.
    async fn nick_online(&self, nick: &str) -> Result<bool, Failure> {
        if self.chat.hub.nick_online(nick) {
            return Ok(true);
        }
        match &self.chat.cluster {
            Some(cluster) => Ok(cluster.online(nick).await?),
            None => Ok(false),
        }
    }

    async fn join(
        &mut self,
        conn: &Connection,
        room: &str,
        since: Option<u64>,
        epoch: Option<u64>,
    ) -> Result<(), Failure> {
        // A direct-message room is named by its pair; only the two of them may join it.
        let me = self.chat.hub.nick(self.id).unwrap_or_default();
        let pair = dm_pair(room).filter(|(a, b)| *a == me || *b == me);
        if !valid_room(room) && pair.is_none() {
            refuse(
                ErrorCode::BadRoom,
                "a room is 1 to 64 letters, digits, -, _ or .",
            )?;
        }
        if let Some(claims) = &self.claims
            && pair.is_none()
            && !claims.may_join(room)
        {
            refuse(
                ErrorCode::Forbidden,
                format!("your token does not allow {room}"),
            )?;
        }
        self.open_room(room, pair).await?;
        let joined = self
            .chat
            .hub
            .join(self.id, room, since, epoch, self.chat.config.max_rooms)
            .or_else(|code| refuse(code, format!("cannot join {room}")))?;
        self.current = Some(room.to_owned());
        if joined.replay {
            self.replay(conn, room, since.unwrap_or(0), joined.last_seq)
                .await?;
        }
        Ok(())
    }

    /// Sends `since+1 ..= last` from history, then what arrived live meanwhile, then goes live.
    async fn replay(&self, conn: &Connection, room: &str, since: u64, last: u64) -> Result<()> {
        let mut after = since;
        'pages: while after < last {
            let page = self
                .chat
                .store
                .history(room, Page::After(after), MAX_PAGE)
                .await?;
            if page.is_empty() {
                break;
            }
            for record in page {
                if record.seq > last {
                    break 'pages;
                }
                after = record.seq;
                self.reply(conn, &ServerMsg::Message(chat_message(record)))
                    .await?;
            }
        }
        // Live deliveries are queued without waiting, and a full outbox is a slow consumer:
        // the replay may have filled it, so go live only once half of it is free again.
        let headroom = self.outbox.capacity() / 2;
        loop {
            self.outbox.drained_to(headroom).await;
            let Some(held) = self.chat.hub.finish_replay(self.id, room) else {
                break;
            };
            for d in held {
                conn.send(Message::Text(d.for_mode(self.mode))).await?;
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        conn: &Connection,
        room: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Failure> {
        if !self.chat.hub.may_use(self.id, &room) {
            refuse(
                ErrorCode::NotJoined,
                format!("join {room} to read its history"),
            )?;
        }
        let page = match (before, after) {
            (Some(_), Some(_)) => refuse(ErrorCode::BadMessage, "give before or after, not both")?,
            (Some(seq), None) => Page::Before(seq),
            (None, Some(seq)) => Page::After(seq),
            (None, None) => Page::Before(u64::MAX),
        };
        let limit = limit.map_or(50, |l| l as usize).min(MAX_PAGE);
        let store = &self.chat.store;
        let epoch = store.room_state(&room).await?.epoch;
        let mut messages: Vec<ChatMessage> = store
            .history(&room, page, limit)
            .await?
            .into_iter()
            .map(chat_message)
            .collect();
        // A page that would not fit in one frame is cut short, keeping the messages nearest to
        // where the client reads from (the newest going back, the oldest going forward); it
        // pages on from there.
        let size = |m: &ChatMessage| serde_json::to_string(m).map_or(0, |j| j.len() + 1);
        match page {
            Page::Before(_) => {
                let keep = self.fitting(messages.iter().rev().map(size));
                messages.drain(..messages.len() - keep);
            }
            Page::After(_) => messages.truncate(self.fitting(messages.iter().map(size))),
        }
        let msg = ServerMsg::History {
            room,
            epoch,
            messages,
        };
        Ok(self.reply(conn, &msg).await?)
    }

    /// How many of these parts, taken in order, fit in one frame (at least one): no frame we
    /// send may be larger than the largest message we announce (`limits.max_message_bytes`),
    /// with room left for the message around them.
    fn fitting(&self, sizes: impl Iterator<Item = usize>) -> usize {
        let budget = self.chat.max_message_bytes.saturating_sub(512);
        let mut used = 0;
        sizes
            .enumerate()
            .take_while(|&(i, size)| {
                used += size;
                i == 0 || used <= budget
            })
            .count()
    }

    fn check_text(&self, text: &str) -> Result<(), Failure> {
        let max = self.chat.config.max_text_chars;
        if text.chars().count() > max {
            refuse(
                ErrorCode::TextTooLong,
                format!("a message has at most {max} characters"),
            )?;
        }
        Ok(())
    }

    /// Stores and delivers a message. The append is queued now (so this connection's messages
    /// keep their order); the rest runs on its own task, so the session goes on reading while
    /// the store commits, and nothing is lost if this connection goes away meanwhile.
    fn publish(&self, room: String, text: String, cid: String) {
        let from = self.chat.hub.nick(self.id).unwrap_or_default();
        let pending = self.chat.store.append(Append {
            room: room.clone(),
            from,
            text,
            cid: Some(cid.clone()),
        });
        let (chat, outbox, mode) = (self.chat.clone(), self.outbox.clone(), self.mode);
        tokio::spawn(async move {
            let answer = match pending.await {
                Ok(appended) => {
                    let seq = appended.record.seq;
                    let message = chat_message(appended.record);
                    // Only a cluster needs a copy to publish.
                    let copy = chat.cluster.as_ref().map(|_| message.clone());
                    let msg = ServerMsg::Message(message);
                    let fresh = (!appended.duplicate).then_some((seq, &msg));
                    chat.deliver(&room, fresh);
                    if let (Some(cluster), Some(message)) = (&chat.cluster, copy)
                        && !appended.duplicate
                    {
                        cluster.publish(message);
                    }
                    ServerMsg::Ack {
                        cid,
                        room,
                        seq,
                        duplicate: appended.duplicate,
                    }
                }
                Err(err) => {
                    warn!(cause = %err, %room, "append failed");
                    crate::metrics::bump(&chat.errors[ErrorCode::Internal as usize]);
                    chat.deliver(&room, None);
                    ServerMsg::Error {
                        code: ErrorCode::Internal,
                        message: "not stored; retry with the same cid".into(),
                        cid: Some(cid),
                    }
                }
            };
            // Plain-text clients see their own line come back; they need no ack.
            if mode == Mode::Json || matches!(answer, ServerMsg::Error { .. }) {
                let _ = outbox.try_send(Message::Text(render(mode, &answer)));
            }
        });
    }

    /// Plain-text mode: a generated nick, and the lobby.
    async fn start_plain(&mut self, conn: &Connection) -> Result<()> {
        let nick = if self.chat.config.auth.is_some() {
            // `authorize` let it in with a valid token: it is its token's nick.
            let claims = match self.check_token(conn.token()) {
                Ok(claims) => claims,
                Err(Refusal(_, why)) => return Err(Error::Policy(why)),
            };
            let nick = claims.sub.clone();
            self.chat
                .hub
                .connect(
                    self.id,
                    &nick,
                    Some(AUTHENTICATED),
                    self.outbox.clone(),
                    self.mode,
                )
                .map_err(|_| Error::Policy(format!("{nick} is taken")))?;
            self.claims = Some(claims);
            nick
        } else {
            // A name no other process gives out; a claim still decides (a user may have
            // picked it). Without Redis, the name alone is taken to be free.
            let base = match &self.chat.cluster {
                Some(cluster) => format!("{}-{}", cluster.guest_prefix(), self.id),
                None => format!("guest-{}", self.id),
            };
            let mut nick = base.clone();
            let mut n = 1;
            while !self.claim(&nick, None).await.unwrap_or(true)
                || self
                    .chat
                    .hub
                    .connect(self.id, &nick, None, self.outbox.clone(), self.mode)
                    .is_err()
            {
                nick = format!("{base}-{n}");
                n += 1;
            }
            nick
        };
        self.greeted = true;
        self.welcome(conn, &nick).await?;
        match self.join(conn, LOBBY, None, None).await {
            Ok(()) => Ok(()),
            Err(Failure::Fatal(err)) => Err(err),
            Err(Failure::Refused(Refusal(code, why))) => {
                self.reply_error(conn, code, &why, None).await
            }
        }
    }

    /// Plain-text mode: a line is a command or something to say in the current room.
    async fn parse_plain(&mut self, line: &str) -> Result<Option<ClientMsg>, Refusal> {
        let line = line.trim_end_matches(['\r', '\n']);
        let Some(command) = line.strip_prefix('/') else {
            let Some(room) = self.current.clone() else {
                return refuse(ErrorCode::NotJoined, "join a room first: /join ROOM");
            };
            self.said += 1;
            return Ok(Some(ClientMsg::Say {
                room,
                text: line.to_owned(),
                cid: format!("p{}-{}", self.id, self.said),
            }));
        };
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = rest.trim();
        let current = || {
            self.current.clone().ok_or_else(|| {
                Refusal(ErrorCode::NotJoined, "join a room first: /join ROOM".into())
            })
        };
        let arg_or_current = |arg: &str| {
            if arg.is_empty() {
                current()
            } else {
                Ok(arg.to_owned())
            }
        };
        Ok(Some(match verb {
            "nick" => {
                if self.claims.is_some() {
                    return refuse(
                        ErrorCode::Unauthorized,
                        "your nick is your token's: it cannot change",
                    );
                }
                if !valid_nick(rest) {
                    return refuse(
                        ErrorCode::BadNick,
                        "a nick is 1 to 32 letters, digits, - or _",
                    );
                }
                if !self.claim(rest, None).await? {
                    return refuse(ErrorCode::NickTaken, format!("{rest} is taken"));
                }
                self.chat
                    .hub
                    .rename(self.id, rest)
                    .or_else(|code| refuse(code, format!("{rest} is taken")))?;
                let _ = self
                    .outbox
                    .try_send(Message::Text(format!("* you are now {rest}").into()));
                return Ok(None);
            }
            "join" => ClientMsg::Join {
                room: rest.to_owned(),
                since: None,
                epoch: None,
            },
            "leave" => ClientMsg::Leave {
                room: arg_or_current(rest)?,
            },
            "msg" => {
                let Some((to, text)) = rest.split_once(' ') else {
                    return refuse(ErrorCode::BadMessage, "usage: /msg NICK TEXT");
                };
                self.said += 1;
                ClientMsg::Dm {
                    to: to.to_owned(),
                    text: text.to_owned(),
                    cid: format!("p{}-{}", self.id, self.said),
                }
            }
            "who" => ClientMsg::Who {
                room: arg_or_current(rest)?,
            },
            "rooms" => ClientMsg::Rooms,
            "history" => ClientMsg::History {
                room: current()?,
                before: None,
                after: None,
                limit: Some(rest.parse().unwrap_or(PLAIN_HISTORY)),
            },
            "help" => {
                let _ = self.outbox.try_send(Message::Text(PLAIN_HELP.into()));
                return Ok(None);
            }
            other => {
                return refuse(
                    ErrorCode::BadMessage,
                    format!("unknown command /{other} (try /help)"),
                );
            }
        }))
    }
}

/// Why a request did not go through.
enum Failure {
    /// Refused: answered with an error frame, the connection stays.
    Refused(Refusal),
    /// The connection (or the store) failed: the connection ends.
    Fatal(Error),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refused(r)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Fatal(err)
    }
}
