//! One chat connection: reads requests, checks them, answers them, and publishes what is said.
//!
//! A request becomes a [`ClientMsg`] — parsed from JSON for `nanachat.v1` clients, from a line
//! in plain-text mode (`plain.rs`) — and [`Session::dispatch`] hands each kind to a method of
//! its own (`history` and the replay of a resume are in `history.rs`; taking a nick — its
//! binding to a key, its claim, where its holder's reading starts — in `nicks.rs`). What
//! depends on whether this process is alone or one of several is asked of the
//! [`Directory`](super::directory::Directory), never decided here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{MissedTickBehavior, interval_at};
use tracing::warn;

use super::config::ChatConfig;
use super::directory::Directory;
use super::hub::{Hub, JoinAsk};
use super::list::{Keep, Listing};
use super::render::{Mode, render};
use super::token::{HeldToken, TokenEvent};
use super::types::{
    ConnId, Floors, chat_message, dm_pair, dm_room, inbox_entry, nick_key, valid_nick, valid_room,
};
use crate::auth::Claims;
use crate::connection::{Connection, Incoming, Message, Outbox};
use crate::protocol::{
    ClientMsg, ErrorCode, InboxEntry, LIVE_EVERY_MS, LIVE_FRAME_BYTES, Limits, Live,
    MAX_EMOJI_BYTES, MAX_REACTIONS, MAX_WATCH_NICKS, RoomInfo, SUBPROTOCOL, ServerMsg,
    parse_client,
};
use crate::rate::Bucket;
use crate::store::{Append, Appended, Membership, Objection, Op, Store, now_ms, search_words};
use crate::{Error, Result};

/// The longest `key` a `hello` may bring (a client's own is 32 characters).
const MAX_KEY_BYTES: usize = 256;

/// The hub key of every authenticated connection: a valid token for a nick makes it that nick's.
pub(super) const AUTHENTICATED: &str = "\u{0}token";

/// What every session of one chat server shares.
#[derive(Debug)]
pub(super) struct Inner<S> {
    /// Where messages are kept.
    pub(super) store: Arc<S>,
    /// Members, rooms and delivery, alone or in a cluster.
    pub(super) directory: Directory<S>,
    pub(super) config: ChatConfig,
    /// The connection layer's limit on a message, told to clients in `welcome`.
    pub(super) max_message_bytes: usize,
    /// The id of the next connection.
    pub(super) next_id: AtomicU64,
    /// The task that sends `live` frames runs (started by the first `watch`).
    pub(super) live_started: std::sync::atomic::AtomicBool,
    /// Error frames sent, by [`ErrorCode`] (indexed by its discriminant).
    pub(super) errors: [AtomicU64; ErrorCode::ALL.len()],
}

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
        claims: None,
        token: None,
        known: false,
    };
    let outcome = session.serve(conn).await;
    session.hub().disconnect(id);
    outcome
}

/// One connection's state.
pub(super) struct Session<S> {
    pub(super) chat: Arc<Inner<S>>,
    pub(super) id: ConnId,
    pub(super) mode: Mode,
    pub(super) outbox: Outbox,
    /// `hello` done (plain-text mode: at once).
    pub(super) greeted: bool,
    /// Plain-text mode: the room a bare line is said in.
    pub(super) current: Option<String>,
    bucket: Bucket,
    /// Rate-limit refusals in a row.
    strikes: u32,
    /// What the connection's token allows, when the server wants tokens.
    pub(super) claims: Option<Claims>,
    /// The token itself, and its clock (boxed: open servers carry none).
    token: Option<Box<HeldToken>>,
    /// A user the server knows again (a token, or a nick with a key): its rooms and how far
    /// it has read them are kept.
    pub(super) known: bool,
}

/// Sends the watching connections what changed, at most once every [`LIVE_EVERY_MS`], until
/// the chat server is dropped. A round costs nothing when nothing changed or nobody watches.
///
/// Room counts are this process's, as `rooms` tells them. Whether a nick is online is looked
/// at when it may have changed — its first connection here came or its last one went, or (in
/// a cluster) another process published that it came online or went offline anywhere — and
/// then asked of the whole cluster, once this process's own changes are in Redis.
async fn live_loop<S: Store>(chat: std::sync::Weak<Inner<S>>) {
    let every = std::time::Duration::from_millis(LIVE_EVERY_MS);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(chat) = chat.upgrade() else { return };
        let directory = &chat.directory;
        let Some(round) = directory.hub().take_live() else {
            continue;
        };
        let mut online = std::collections::HashMap::new();
        if round.nicks.iter().any(|(_, here)| !here) {
            // Gone from here; maybe not from the cluster. What this process did is in
            // Redis first.
            directory.presence_applied().await;
        }
        for (key, here) in &round.nicks {
            let on = match *here {
                true => Some(true),
                false => directory.nick_online(key).await.ok(),
            };
            if on.is_none() {
                // Not known now (Redis out of reach, or settling): told in a later round.
                directory.hub().nick_changed_elsewhere(key);
            }
            online.insert(key.clone(), on);
        }
        let limit = chat.max_message_bytes;
        let live = |rooms: bool| Live {
            rooms: if rooms {
                round.rooms.clone()
            } else {
                Vec::new()
            },
            total: if rooms { round.rooms.len() } else { 0 },
            online: Vec::new(),
            offline: Vec::new(),
        };
        // Most watchers are told the same rooms and no nick: rendered once for them all.
        let mut rooms_only: Option<crate::connection::Utf8Bytes> = None;
        for target in &round.to {
            let text = if target.nicks.is_empty() {
                rooms_only
                    .get_or_insert_with(|| live(true).fit(limit).into())
                    .clone()
            } else {
                let mut frame = live(target.rooms);
                for (asked, key) in &target.nicks {
                    match online.get(key).copied().flatten() {
                        Some(true) => frame.online.push(asked.clone()),
                        Some(false) => frame.offline.push(asked.clone()),
                        None => {}
                    }
                }
                if frame.rooms.is_empty() && frame.online.is_empty() && frame.offline.is_empty() {
                    continue;
                }
                frame.fit(limit).into()
            };
            directory.hub().send_to(&target.outbox, text);
        }
    }
}

/// A refusal to send back: an error frame, the connection stays.
pub(super) struct Refusal(pub(super) ErrorCode, pub(super) String);

/// Refuses with `code` and a message for the client.
pub(super) fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(code, message.into()))
}

/// Why a request did not go through.
pub(super) enum Failure {
    /// Refused: answered with an error frame, the connection stays.
    Refused(Refusal),
    /// The connection (or the store) failed: the connection ends.
    Fatal(Error),
}

/// The one answer to a store or broker that failed a request *before it changed anything*
/// (`who`, a `dm`'s lookup, `history`, opening a room to `join`): `internal`, retry later, and
/// the connection stays (a PostgreSQL or Redis outage must not send every client into a
/// reconnect loop). A failure after the client was promised something — a replay under way —
/// still ends the connection (1011), so that it resumes rather than miss messages.
pub(super) fn unavailable(err: Error) -> Failure {
    warn!(cause = %err, "request refused: the store or the broker failed");
    Failure::Refused(Refusal(
        ErrorCode::Internal,
        "the server cannot reach its store or broker just now: retry later".into(),
    ))
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

impl<S: Store> Session<S> {
    /// This process's connections, nicks and rooms.
    pub(super) fn hub(&self) -> &Hub {
        self.chat.directory.hub()
    }

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
                event = async { self.token.as_mut().expect("checked").next().await }, if self.token.is_some() => {
                    self.on_token_event(conn, event).await?;
                }
            }
        }
    }

    /// Sends one message to this connection, rendered for its mode. Not a list: those go
    /// through [`Session::reply_list`].
    pub(super) async fn reply(&self, conn: &mut Connection, msg: &ServerMsg) -> Result<()> {
        debug_assert!(
            msg.list_len().is_none(),
            "a reply carrying a list is sent with reply_list, fitted into one frame"
        );
        conn.send(Message::Text(render(self.mode, msg))).await
    }

    /// Sends a reply carrying a list — the one way one is sent: cut to fit in one frame no
    /// larger than the largest message the server announces, with its `total` (`list.rs`).
    pub(super) async fn reply_list<T: Clone>(
        &self,
        conn: &mut Connection,
        list: Listing<T, impl Fn(Vec<T>, usize) -> ServerMsg>,
    ) -> Result<()> {
        let frame = list.fit(self.mode, self.chat.max_message_bytes);
        conn.send(Message::Text(frame)).await
    }

    /// Sends an error frame (and counts it).
    pub(super) async fn reply_error(
        &self,
        conn: &mut Connection,
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

    async fn on_text(&mut self, conn: &mut Connection, text: &str) -> Result<()> {
        let request = match self.mode {
            Mode::Json => parse_client(text)
                .map(Some)
                .map_err(|(code, why)| Failure::Refused(Refusal(code, why))),
            Mode::Plain => self.parse_plain(text).await,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()), // a plain-text command answered on the spot
            Err(Failure::Refused(Refusal(code, why))) => {
                return self.reply_error(conn, code, &why, None).await;
            }
            Err(Failure::Fatal(err)) => return Err(err),
        };
        let cid = request.cid().and_then(|cid| self.client_cid(cid));
        // `typing` is throttled on its own (one a nick every 2 s goes out): a client that
        // sends one per keystroke is not a client that floods.
        let counted = !matches!(request, ClientMsg::Typing { .. });
        if counted && !self.bucket.take() {
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

    /// The cid a `say` or `dm` is stored under: a `nanachat.v1` client's own. A plain-text line
    /// has none: its client never sees an ack nor retries, so an id would protect nothing, and
    /// one the server made up could repeat (after a restart, on another process) or be taken
    /// first by a client, and the store would take the line for a retry of another message.
    /// Stored without a cid, it can never match one (see docs/protocol.md, plain-text mode).
    fn client_cid(&self, cid: &str) -> Option<String> {
        (self.mode == Mode::Json).then(|| cid.to_owned())
    }

    /// Answers one request: `hello` first, then any kind, each by a method of its own.
    async fn dispatch(&mut self, conn: &mut Connection, request: ClientMsg) -> Result<(), Failure> {
        if !self.greeted && !matches!(request, ClientMsg::Hello { .. }) {
            refuse(
                ErrorCode::HelloFirst,
                "say hello first: {\"type\":\"hello\",\"nick\":…}",
            )?;
        }
        if self.token.as_ref().is_some_and(|t| t.expired())
            && !matches!(request, ClientMsg::Refresh { .. })
        {
            refuse(ErrorCode::TokenExpired, self.expired_advice())?;
        }
        match request {
            ClientMsg::Hello { nick, key, token } => self.hello(conn, &nick, key, token).await,
            ClientMsg::Join { room, since, epoch } => self.join(conn, &room, since, epoch).await,
            ClientMsg::Leave { room } => self.leave(&room).await,
            ClientMsg::Read { room, seq } => self.read(room, seq).await,
            ClientMsg::Inbox { after } => self.inbox(conn, after).await,
            ClientMsg::Thread {
                room,
                seq,
                after,
                limit,
            } => self.thread(conn, room, seq, after, limit).await,
            ClientMsg::Search {
                query,
                room,
                limit,
                skip,
            } => self.search(conn, &query, room, limit, skip).await,
            ClientMsg::Say {
                room,
                text,
                cid,
                reply_to,
            } => {
                self.check_text(&text)?;
                self.change(room, text, self.client_cid(&cid), Op::Say { reply_to })
            }
            ClientMsg::Edit {
                room,
                seq,
                text,
                cid,
            } => {
                self.check_author()?;
                self.check_text(&text)?;
                self.change(room, text, self.client_cid(&cid), Op::Edit { target: seq })
            }
            ClientMsg::Delete { room, seq, cid } => {
                self.check_author()?;
                let op = Op::Delete { target: seq };
                self.change(room, String::new(), self.client_cid(&cid), op)
            }
            ClientMsg::Typing { room } => {
                if !self.hub().may_use(self.id, &room) {
                    refuse(ErrorCode::NotJoined, format!("join {room} first"))?;
                }
                if self.hub().typing(self.id, &room) {
                    let nick = self.hub().nick(self.id).unwrap_or_default();
                    self.chat.directory.typing(&room, &nick);
                }
                Ok(())
            }
            ClientMsg::React {
                room,
                seq,
                emoji,
                on,
                cid,
            } => {
                check_reaction(&emoji)?;
                let op = Op::React {
                    target: seq,
                    emoji,
                    on,
                };
                self.change(room, String::new(), self.client_cid(&cid), op)
            }
            ClientMsg::Dm { to, text, cid } => self.dm(to, text, self.client_cid(&cid)).await,
            ClientMsg::Who { room, after } => self.who(conn, room, after).await,
            ClientMsg::History {
                room,
                before,
                after,
                limit,
            } => self.history(conn, room, before, after, limit).await,
            ClientMsg::Rooms { after } => self.rooms(conn, after).await,
            ClientMsg::Watch { rooms, nicks } => self.watch(rooms, nicks).await,
            ClientMsg::Refresh { token } => self.refresh(conn, token).await,
            ClientMsg::Nick { nick } => self.rename(&nick).await,
        }
    }

    async fn hello(
        &mut self,
        conn: &mut Connection,
        nick: &str,
        key: Option<String>,
        token: Option<String>,
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
        if key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_BYTES)
        {
            refuse(
                ErrorCode::BadMessage,
                format!("a key is 1 to {MAX_KEY_BYTES} bytes"),
            )?;
        }
        if self.chat.config.auth.is_some() {
            let token = token.or_else(|| conn.token().map(str::to_owned));
            let claims = self.check_token(token.as_deref())?;
            if claims.sub != nick {
                refuse(
                    ErrorCode::Unauthorized,
                    format!("the token is for {}, not {nick}", claims.sub),
                )?;
            }
            self.hold_token(token.unwrap_or_default(), claims);
            // Every connection with a valid token for a nick is that nick's, all of its
            // direct messages included.
            let (outbox, mode) = (self.outbox.clone(), self.mode);
            self.hub()
                .connect(
                    self.id,
                    nick,
                    Some(AUTHENTICATED),
                    outbox,
                    mode,
                    Some(Floors::default()),
                )
                .or_else(|code| refuse(code, format!("{nick} is taken")))?;
        } else {
            self.take_nick(nick, key.as_deref()).await?;
        }
        self.known = self.claims.is_some() || key.is_some();
        // `welcome` says the nick is connected: in a cluster, for the other processes too (a
        // `dm` sent to it from one of them the moment it is welcomed finds it).
        self.chat.directory.presence_applied().await;
        self.refuse_banned(nick).await?;
        self.greeted = true;
        Ok(self.welcome(conn, nick).await?)
    }

    /// Ends the connection (4004) if `nick` is banned. Asked once the connection is the
    /// nick's: a ban that comes after this closes it instead, so none slips between.
    pub(super) async fn refuse_banned(&self, nick: &str) -> Result<()> {
        match self.chat.directory.banned(nick).await {
            Ok(None) => Ok(()),
            Ok(Some((reason, secs))) => Err(Error::Disconnected(format!(
                "{nick} is banned for {secs} s more: {reason}"
            ))),
            Err(err) => Err(Error::Refused(format!(
                "cannot check bans now ({err}); retry"
            ))),
        }
    }

    /// Keeps `token` (verified into `claims`) as the connection's, with its clock.
    pub(super) fn hold_token(&mut self, token: String, claims: Claims) {
        if let Some(auth) = &self.chat.config.auth {
            let held = HeldToken::new(auth, token, &claims, self.chat.config.token_grace);
            self.token = Some(Box::new(held));
        }
        self.claims = Some(claims);
    }

    /// What to do once a token has expired, said the way this connection sends requests.
    fn expired_advice(&self) -> String {
        let grace = self.chat.config.token_grace;
        match self.mode {
            Mode::Json => format!(
                "your token expired: send {{\"type\":\"refresh\",\"token\":…}} with a fresh one within {grace:?}"
            ),
            Mode::Plain => {
                format!("your token expired: /token TOKEN with a fresh one within {grace:?}")
            }
        }
    }

    /// The token expired (told once; the grace begins), its grace ended, or it was revoked.
    async fn on_token_event(&mut self, conn: &mut Connection, event: TokenEvent) -> Result<()> {
        match event {
            TokenEvent::Expired => {
                let advice = self.expired_advice();
                self.reply_error(conn, ErrorCode::TokenExpired, &advice, None)
                    .await
            }
            TokenEvent::GraceOver => Err(Error::TokenEnded(format!(
                "token expired: no fresh one within {:?}",
                self.chat.config.token_grace
            ))),
            TokenEvent::Revoked(why) => {
                Err(Error::TokenEnded(format!("token no longer valid: {why}")))
            }
        }
    }

    /// `refresh`: a fresh token for this connection's nick. Rooms it does not allow are left
    /// (a `left` each), then `refreshed`; a token that does not verify changes nothing.
    async fn refresh(&mut self, conn: &mut Connection, token: String) -> Result<(), Failure> {
        if self.chat.config.auth.is_none() {
            refuse(ErrorCode::BadMessage, "this server takes no tokens")?;
        }
        let claims = self.check_token(Some(&token))?;
        let nick = self.hub().nick(self.id).unwrap_or_default();
        if claims.sub != nick {
            refuse(
                ErrorCode::Unauthorized,
                format!("the token is for {}, not {nick}", claims.sub),
            )?;
        }
        for room in self.hub().rooms_of(self.id) {
            if dm_pair(&room).is_none() && !claims.may_join(&room) {
                self.leave(&room).await?;
            }
        }
        let exp = claims.exp;
        self.hold_token(token, claims);
        Ok(self.reply(conn, &ServerMsg::Refreshed { exp }).await?)
    }

    /// The claims of a valid token; a missing or bad one is refused with the reason.
    pub(super) fn check_token(&self, token: Option<&str>) -> Result<Claims, Refusal> {
        let Some(auth) = &self.chat.config.auth else {
            return refuse(ErrorCode::Internal, "no auth configured");
        };
        let Some(token) = token else {
            return refuse(
                ErrorCode::Unauthorized,
                "this server wants a token: hello with \"token\" (nanachat token --sub NICK)",
            );
        };
        super::verify_token(auth, token).or_else(|why| refuse(ErrorCode::Unauthorized, why))
    }

    /// Sends `welcome`, with the limits this connection is held to.
    pub(super) async fn welcome(&self, conn: &mut Connection, nick: &str) -> Result<()> {
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
            exp: self.claims.as_ref().and_then(|c| c.exp),
        };
        self.reply(conn, &msg).await
    }

    /// Joins a room (replaying from `since` when asked) and makes it the current one.
    pub(super) async fn join(
        &mut self,
        conn: &mut Connection,
        room: &str,
        since: Option<u64>,
        epoch: Option<u64>,
    ) -> Result<(), Failure> {
        // A direct-message room is named by its pair; only the two of them may join it.
        let me = nick_key(&self.hub().nick(self.id).unwrap_or_default());
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
        self.chat
            .directory
            .open_room(room, pair)
            .await
            .map_err(unavailable)?;
        // The oldest message kept, read now when retention may have moved it (without a rule
        // the hub's is current, and a join costs no store read): `joined` tells it, and a
        // `since` before it is a resume that retention has cut short (told `truncated`).
        let first_seq = match self.chat.config.retention.keeps_all() {
            true => None,
            false => Some(
                (self.chat.store.room_state(room).await)
                    .map_err(unavailable)?
                    .first_seq,
            ),
        };
        // A known user's room is remembered (read up to here the first time), and `joined`
        // tells it where it is.
        let read = match self.known && !self.hub().is_member(self.id, room) {
            true => {
                // A room is read from where it stands when first joined; a direct-message room
                // from where the nick became this user's (what was sent to it while away is
                // unread).
                let last_seq = match dm_pair(room) {
                    Some(_) => self.hub().floor(self.id, room),
                    None => self.hub().next_seq(room).map_or(0, |next| next - 1),
                };
                let nick = self.hub().nick(self.id).unwrap_or_default();
                let change = Membership::Remember { last_seq };
                let store = &self.chat.store;
                Some(
                    store
                        .membership(&nick, room, change)
                        .await
                        .map_err(unavailable)?,
                )
            }
            false => None,
        };
        let joined = self
            .hub()
            .join(
                self.id,
                room,
                JoinAsk {
                    since,
                    epoch,
                    first_seq,
                    read,
                },
                self.chat.config.max_rooms,
            )
            .or_else(|code| refuse(code, format!("cannot join {room}")))?;
        self.current = Some(room.to_owned());
        if joined.replay {
            let since = since.unwrap_or(0).max(joined.first_seq - 1);
            self.replay(conn, room, since, joined.last_seq).await?;
        }
        Ok(())
    }

    async fn leave(&mut self, room: &str) -> Result<(), Failure> {
        if !self.hub().is_member(self.id, room) {
            refuse(ErrorCode::NotJoined, format!("you are not in {room}"))?;
        }
        // A known user's leave is for good: the room leaves its inbox (on every device).
        if self.known {
            let nick = self.hub().nick(self.id).unwrap_or_default();
            let store = &self.chat.store;
            store
                .membership(&nick, room, Membership::Forget)
                .await
                .map_err(unavailable)?;
        }
        self.hub()
            .leave(self.id, room)
            .or_else(|code| refuse(code, format!("you are not in {room}")))?;
        if self.current.as_deref() == Some(room) {
            self.current = None;
        }
        Ok(())
    }

    /// Keeps how far a known user has read a room (its own, or one of its direct-message
    /// rooms) and tells its connections, on every process.
    async fn read(&mut self, room: String, seq: u64) -> Result<(), Failure> {
        if !self.known {
            refuse(
                ErrorCode::Forbidden,
                "read positions are kept for users with a key or a token",
            )?;
        }
        let nick = self.hub().nick(self.id).unwrap_or_default();
        let me = nick_key(&nick);
        let mine = dm_pair(&room).is_some_and(|(a, b)| a == me || b == me);
        if !mine && !self.hub().may_use(self.id, &room) {
            refuse(ErrorCode::NotJoined, format!("join {room} first"))?;
        }
        let store = &self.chat.store;
        let state = store
            .membership(&nick, &room, Membership::Read { seq })
            .await
            .map_err(unavailable)?;
        self.chat.directory.read(&nick, &room, state.read_seq);
        Ok(())
    }

    /// Whether this user may read `room` now: its token (if any) lets it join the room, or
    /// the room is one of its direct-message rooms. What a token no longer allows is not read
    /// through `inbox` or `search` either.
    fn may_read(&self, room: &str) -> bool {
        dm_pair(room).is_some() || self.claims.as_ref().is_none_or(|c| c.may_join(room))
    }

    /// Answers `search`: messages by their words, in the rooms this user may read only.
    async fn search(
        &mut self,
        conn: &mut Connection,
        query: &str,
        room: Option<String>,
        limit: Option<u32>,
        skip: Option<u32>,
    ) -> Result<(), Failure> {
        let words = search_words(query);
        if words.is_empty() {
            refuse(
                ErrorCode::BadMessage,
                "search for a word (letters or digits)",
            )?;
        }
        let nick = self.hub().nick(self.id).unwrap_or_default();
        let me = nick_key(&nick);
        let rooms = match room {
            Some(room) => {
                let mine = dm_pair(&room).is_some_and(|(a, b)| a == me || b == me);
                if !mine && !self.hub().may_use(self.id, &room) {
                    refuse(ErrorCode::NotJoined, format!("join {room} to search it"))?;
                }
                vec![room]
            }
            None => {
                let mut rooms = self.hub().rooms_of(self.id);
                if self.known {
                    let store = &self.chat.store;
                    rooms.extend(store.rooms_of(&nick).await.map_err(unavailable)?);
                }
                rooms.sort();
                rooms.dedup();
                rooms.retain(|room| self.may_read(room));
                rooms
            }
        };
        let limit = limit.map_or(20, |l| l as usize).clamp(1, 50);
        let skip = skip.unwrap_or(0) as usize;
        let found = self
            .chat
            .store
            .search(words, rooms, limit, skip)
            .await
            .map_err(unavailable)?;
        // In a direct-message room, what was sent to the nick before its holder took it is not
        // the holder's to find.
        let results: Vec<_> = found
            .into_iter()
            .filter(|r| r.seq > self.hub().floor(self.id, &r.room))
            .map(chat_message)
            .collect();
        let list = Listing::new(results, Keep::First, |results, total| ServerMsg::Search {
            results,
            total,
        });
        Ok(self.reply_list(conn, list).await?)
    }

    /// Answers `inbox`: a known user's rooms, with where it is in each, cut to fit a frame.
    async fn inbox(&mut self, conn: &mut Connection, after: Option<String>) -> Result<(), Failure> {
        if !self.known {
            refuse(
                ErrorCode::Forbidden,
                "an inbox is kept for users with a key or a token",
            )?;
        }
        let nick = self.hub().nick(self.id).unwrap_or_default();
        let floors = self.hub().floors(self.id);
        let rooms = self
            .chat
            .store
            .inbox(&nick, floors)
            .await
            .map_err(unavailable)?;
        let entries: Vec<InboxEntry> = rooms
            .into_iter()
            // Not what the token no longer allows; not a direct-message room with nothing of
            // this holder's in it (that someone wrote to the nick before is not its to know).
            .filter(|r| self.may_read(&r.room))
            .filter(|r| r.last.is_some() || dm_pair(&r.room).is_none())
            .filter(|r| after.as_ref().is_none_or(|after| r.room > *after))
            .map(inbox_entry)
            .collect();
        let list = Listing::new(entries, Keep::First, |rooms, total| ServerMsg::Inbox {
            rooms,
            total,
        });
        Ok(self.reply_list(conn, list).await?)
    }

    /// A message (`say`), or an event on one (`edit`, `delete`, `react`), in a joined room:
    /// stored under the room's next seq, like any message.
    pub(super) fn change(
        &self,
        room: String,
        text: String,
        cid: Option<String>,
        op: Op,
    ) -> Result<(), Failure> {
        if !self.hub().may_use(self.id, &room) {
            refuse(
                ErrorCode::NotJoined,
                format!("join {room} before saying anything there"),
            )?;
        }
        // What was sent to the nick before this user held it is not its to read — nor to
        // react to, reply to, edit or delete (which would tell it the message is there).
        if op
            .refers_to()
            .is_some_and(|target| target <= self.hub().floor(self.id, &room))
        {
            refuse(
                ErrorCode::NoSuchMessage,
                format!("no such message in {room} (a seq of a message, not of an event)"),
            )?;
        }
        self.publish(room, text, cid, op);
        Ok(())
    }

    async fn dm(&self, to: String, text: String, cid: Option<String>) -> Result<(), Failure> {
        self.check_text(&text)?;
        if !valid_nick(&to) {
            refuse(ErrorCode::BadNick, format!("'{to}' is not a nick"))?;
        }
        if !self.knows(&to).await? {
            refuse(
                ErrorCode::NoSuchNick,
                format!("nobody is connected as {to}, and nobody holds it for good"),
            )?;
        }
        let me = self.hub().nick(self.id).unwrap_or_default();
        // Named by the case-folded pair: `dm Alice` and `dm alice` are the one room.
        let room = dm_room(&me, &to);
        self.chat
            .directory
            .open_room(&room, dm_pair(&room))
            .await
            .map_err(unavailable)?;
        self.publish(room, text, cid, Op::Say { reply_to: None });
        Ok(())
    }

    /// Whether a `dm` to `nick` has somebody to reach: a nick connected now (on any process),
    /// or a known user's while it is away — on a server without tokens a nick bound to a key
    /// (only its holder ever takes it again), with tokens one that joined a room before. A
    /// keyless nick away is nobody's: its next holder would not read what was sent to it.
    async fn knows(&self, nick: &str) -> Result<bool, Failure> {
        let directory = &self.chat.directory;
        if directory.nick_online(nick).await.map_err(unavailable)? {
            return Ok(true);
        }
        let store = &self.chat.store;
        Ok(match self.chat.config.auth.is_some() {
            true => !store.rooms_of(nick).await.map_err(unavailable)?.is_empty(),
            false => self.nick_binding(nick).await?.is_some(),
        })
    }

    /// Answers `who`: the room's nicks, sorted (those after `after`), as many as fit.
    async fn who(
        &self,
        conn: &mut Connection,
        room: String,
        after: Option<String>,
    ) -> Result<(), Failure> {
        let mut nicks = self
            .chat
            .directory
            .members(self.id, &room)
            .await
            .map_err(unavailable)?
            .or_else(|code| refuse(code, format!("you are not in {room}")))?;
        if let Some(after) = after {
            nicks.retain(|nick| *nick > after);
        }
        let list = Listing::new(nicks, Keep::First, |nicks, total| ServerMsg::Members {
            room: room.clone(),
            nicks,
            total,
        });
        Ok(self.reply_list(conn, list).await?)
    }

    /// Answers `rooms`: this process's public rooms with members, busiest first (those after
    /// `after` in that order), as many as fit.
    async fn rooms(&self, conn: &mut Connection, after: Option<RoomInfo>) -> Result<(), Failure> {
        let mut rooms: Vec<RoomInfo> = self
            .hub()
            .rooms()
            .into_iter()
            .map(|(room, members)| RoomInfo { room, members })
            .collect();
        if let Some(after) = after {
            // The hub's order: most members first, then by name.
            rooms.retain(|r| {
                r.members < after.members || (r.members == after.members && r.room > after.room)
            });
        }
        let list = Listing::new(rooms, Keep::First, |rooms, total| ServerMsg::Rooms {
            rooms,
            total,
        });
        Ok(self.reply_list(conn, list).await?)
    }

    /// Answers `watch`: from now on the connection follows the room counts (`rooms`) and
    /// whether `nicks` are online, told in `live` frames (see [`live_loop`]); the answer says
    /// whether each nick is online now (on any process of a cluster).
    async fn watch(&self, rooms: bool, nicks: Vec<String>) -> Result<(), Failure> {
        if nicks.len() > MAX_WATCH_NICKS {
            refuse(
                ErrorCode::BadMessage,
                format!("watch follows at most {MAX_WATCH_NICKS} nicks"),
            )?;
        }
        // Each nick once, whatever its case, as the watcher first spelt it: it is told under
        // that spelling.
        let mut followed: Vec<String> = Vec::with_capacity(nicks.len());
        for (i, nick) in nicks.into_iter().enumerate() {
            if !valid_nick(&nick) {
                refuse(
                    ErrorCode::BadNick,
                    format!("nicks[{i}] is not a nick (a nick is 1 to 32 letters, digits, - or _)"),
                )?;
            }
            if followed.iter().all(|f| nick_key(f) != nick_key(&nick)) {
                followed.push(nick);
            }
        }
        // A frame tells each followed nick at most once, beside the rooms (which are cut to
        // fit): all of them must fit one frame, the rule of every reply.
        let bytes = LIVE_FRAME_BYTES + followed.iter().map(|n| n.len() + 3).sum::<usize>();
        if bytes > self.chat.max_message_bytes {
            refuse(
                ErrorCode::BadMessage,
                format!(
                    "these {} nicks would not fit one frame of this server's max_message_bytes                      ({}): follow fewer",
                    followed.len(),
                    self.chat.max_message_bytes
                ),
            )?;
        }
        let nicks = followed;
        // Followed before the state is read: a change after this is told in the next round.
        self.hub().watch(self.id, rooms, &nicks);
        if !self.chat.live_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(live_loop(Arc::downgrade(&self.chat)));
        }
        let mut live = Live {
            rooms: Vec::new(),
            total: 0,
            online: Vec::new(),
            offline: Vec::new(),
        };
        let directory = &self.chat.directory;
        if !nicks.is_empty() {
            directory.watching_nicks().await.map_err(unavailable)?;
        }
        for nick in nicks {
            if directory.nick_online(&nick).await.map_err(unavailable)? {
                live.online.push(nick);
            } else {
                live.offline.push(nick);
            }
        }
        // Through the hub: no `live` frame of this watch goes before it.
        let text = live.fit(self.chat.max_message_bytes);
        self.hub().answer_watch(self.id, text.into());
        Ok(())
    }

    /// Edits and deletes go by authorship, and a nick without a key is anyone's once free:
    /// only a user the server knows again (a key or a token) may change messages.
    fn check_author(&self) -> Result<(), Failure> {
        if !self.known {
            refuse(
                ErrorCode::Forbidden,
                "edits and deletes are for users with a key or a token (a nick without one is \
                 anyone's once free)",
            )?;
        }
        Ok(())
    }

    fn check_text(&self, text: &str) -> Result<(), Failure> {
        match text_refusal(text, self.chat.config.max_text_chars) {
            Some((code, message)) => Ok(refuse(code, message)?),
            None => Ok(()),
        }
    }

    /// Stores and delivers a message. The append is queued now (so this connection's messages
    /// keep their order); the rest runs on its own task, so the session goes on reading while
    /// the store commits, and nothing is lost if this connection goes away meanwhile. A message
    /// without a cid (plain-text mode) is stored as a new one, always, and gets no ack: its
    /// sender sees it come back.
    fn publish(&self, room: String, text: String, cid: Option<String>, op: Op) {
        let from = self.hub().nick(self.id).unwrap_or_default();
        // Moderators moderate rooms, not somebody's direct messages.
        let moderator =
            dm_pair(&room).is_none() && self.claims.as_ref().is_some_and(|c| c.moderates(&room));
        // The room stays held until this append is delivered (or has failed): an idle-room
        // sweep must not drop it and have it reopened from a state without this message.
        self.hub().begin_append(&room);
        let pending = self.chat.store.append(Append {
            room: room.clone(),
            from,
            text,
            cid: cid.clone(),
            op,
            moderator,
        });
        let (chat, outbox, mode) = (self.chat.clone(), self.outbox.clone(), self.mode);
        tokio::spawn(async move {
            let held = room.clone();
            let answer = match settle(&chat, &room, cid.as_deref(), pending.await) {
                // A message without a cid gets no ack: a plain-text client sees its own line
                // come back.
                Settled::Stored { seq, duplicate } => cid.map(|cid| ServerMsg::Ack {
                    cid,
                    room,
                    seq,
                    duplicate,
                }),
                Settled::Refused(code, message) => {
                    crate::metrics::bump(&chat.errors[code as usize]);
                    Some(ServerMsg::Error { code, message, cid })
                }
                Settled::Failed(err) => {
                    warn!(cause = %err, room = %crate::shown::Shown(&room), "append failed");
                    crate::metrics::bump(&chat.errors[ErrorCode::Internal as usize]);
                    let message = match cid {
                        Some(_) => "not stored; retry with the same cid",
                        None => "not stored; say it again",
                    };
                    Some(ServerMsg::Error {
                        code: ErrorCode::Internal,
                        message: message.into(),
                        cid,
                    })
                }
            };
            chat.directory.hub().end_append(&held);
            if let Some(answer) = answer {
                chat.directory.hub().send_to(&outbox, render(mode, &answer));
            }
        });
    }
}

/// The error for an append the store refused.
pub(super) fn refused(objection: Objection, room: &str) -> (ErrorCode, String) {
    match objection {
        Objection::NoSuchMessage => (
            ErrorCode::NoSuchMessage,
            format!("no such message in {room} (a seq of a message, not of an event)"),
        ),
        Objection::NotYours => (
            ErrorCode::Forbidden,
            "only its author or a moderator may change a message".into(),
        ),
        Objection::Deleted => (ErrorCode::MessageDeleted, "that message was deleted".into()),
        Objection::TooManyReactions => (
            ErrorCode::BadReaction,
            format!("a message carries at most {MAX_REACTIONS} different reactions"),
        ),
        Objection::Unchanged => (
            ErrorCode::Unchanged,
            "nothing to change: that reaction is already so".into(),
        ),
    }
}

/// A reaction is 1 to [`MAX_EMOJI_BYTES`] bytes of characters one can see (see
/// [`visible_reaction`]).
fn check_reaction(emoji: &str) -> Result<(), Failure> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES || !visible_reaction(emoji) {
        refuse(
            ErrorCode::BadReaction,
            format!(
                "a reaction is 1 to {MAX_EMOJI_BYTES} bytes one can see: no spaces, no \
                 invisible or direction-changing characters"
            ),
        )?;
    }
    Ok(())
}

/// Whether every character of a reaction shows, so that it cannot pass for another or turn
/// the text around it: no spaces, controls, format or direction marks, fillers, blanks,
/// private-use or noncharacters. What joins emoji into one is kept where it joins: the
/// zero-width joiner between two characters, a variation selector or a combining mark after
/// one, tag characters after the black flag (a subdivision flag, 🏴 and its tags).
pub(super) fn visible_reaction(emoji: &str) -> bool {
    const ZWJ: char = '\u{200D}';
    let never = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c,
                '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
                | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200C}'
                | '\u{200E}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
                | '\u{2800}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
                | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{10FFFF}' | '\u{FDD0}'..='\u{FDEF}')
            || (c as u32 & 0xFFFE) == 0xFFFE
    };
    // Characters that only mean something after another one.
    let mark = |c: char| {
        matches!(c,
            '\u{FE00}'..='\u{FE0F}' | '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}'
            | '\u{1F3FB}'..='\u{1F3FF}' | '\u{E0100}'..='\u{E01EF}')
    };
    let tag = |c: char| ('\u{E0020}'..='\u{E007F}').contains(&c);
    let chars: Vec<char> = emoji.chars().collect();
    let mut base = None; // the last character that shows on its own
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let fine = if never(c) {
            false
        } else if c == ZWJ {
            // Between two characters, not doubled, not next to nothing.
            base.is_some() && prev != Some(ZWJ) && i + 1 < chars.len()
        } else if mark(c) {
            base.is_some() && prev != Some(ZWJ)
        } else if tag(c) {
            base == Some('\u{1F3F4}')
        } else {
            base = Some(c);
            true
        };
        if !fine {
            return false;
        }
    }
    base.is_some()
}

/// Why a message's text is refused (empty, or over `max` characters), if it is: the one rule
/// for a session's and the HTTP API's.
pub(super) fn text_refusal(text: &str, max: usize) -> Option<(ErrorCode, String)> {
    if text.trim().is_empty() {
        return Some((
            ErrorCode::BadMessage,
            "a message needs some text (to take one back, delete it)".into(),
        ));
    }
    (text.chars().count() > max).then(|| {
        (
            ErrorCode::TextTooLong,
            format!("a message has at most {max} characters"),
        )
    })
}

/// What became of an append, once it is settled.
pub(super) enum Settled {
    /// Stored (or stored before: a retried cid), and handed on to be delivered.
    Stored { seq: u64, duplicate: bool },
    /// Refused by the store's rules, nothing stored: the code and the sentence to answer with.
    Refused(ErrorCode, String),
    /// The store failed; nothing stored.
    Failed(Error),
}

/// Ends an append, whatever became of it, the one way for every door (a session, the HTTP
/// API): a stored record goes on to the room (a duplicate went when it was first stored);
/// anything else lets the room's seq order go on without it.
pub(super) fn settle<S: Store>(
    chat: &Inner<S>,
    room: &str,
    cid: Option<&str>,
    outcome: Result<Appended>,
) -> Settled {
    let directory = &chat.directory;
    let (record, duplicate) = match outcome {
        Ok(Appended::Stored(record)) => (record, false),
        Ok(Appended::Duplicate(record)) => (record, true),
        Ok(Appended::Refused(objection)) => {
            directory.deliver(room, None);
            let (code, message) = refused(objection, room);
            return Settled::Refused(code, message);
        }
        Ok(Appended::CidReused) => {
            directory.deliver(room, None);
            let shown = cid.unwrap_or_default();
            return Settled::Refused(
                ErrorCode::CidReused,
                format!(
                    "cid {shown} was used for another message in {room}: a new message needs \
                     a new cid"
                ),
            );
        }
        Err(err) => {
            directory.deliver(room, None);
            return Settled::Failed(err);
        }
    };
    let seq = record.seq;
    directory.publish(room, chat_message(record), duplicate);
    Settled::Stored { seq, duplicate }
}
