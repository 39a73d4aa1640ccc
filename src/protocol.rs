//! The wire protocol `nanachat.v1`: JSON text frames, one message per frame, chosen by the
//! client with the WebSocket subprotocol `nanachat.v1`. Types only, no I/O: the server, the
//! terminal client, the load generator and the fuzz targets share them. `docs/protocol.md`
//! describes every message with examples; the tests below keep the two in step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The subprotocol name a client asks for to speak this protocol.
pub const SUBPROTOCOL: &str = "nanachat.v1";

/// The longest `cid` of a `say` or `dm`, in bytes (UTF-8). A cid is stored, indexed and echoed
/// in every ack: a longer one is refused with `bad_message`, and nothing is stored.
pub const MAX_CID_BYTES: usize = 64;

impl ClientMsg {
    /// The client's id of a request that stores something (`say`, `dm`, `edit`, `delete`,
    /// `react`): its ack or error carries it back. Every variant is named, so a new request
    /// has to say whether it has one.
    pub fn cid(&self) -> Option<&str> {
        match self {
            ClientMsg::Say { cid, .. }
            | ClientMsg::Dm { cid, .. }
            | ClientMsg::Edit { cid, .. }
            | ClientMsg::Delete { cid, .. }
            | ClientMsg::React { cid, .. } => Some(cid),
            ClientMsg::Hello { .. }
            | ClientMsg::Join { .. }
            | ClientMsg::Leave { .. }
            | ClientMsg::Who { .. }
            | ClientMsg::Rooms { .. }
            | ClientMsg::Watch { .. }
            | ClientMsg::Refresh { .. }
            | ClientMsg::Nick { .. }
            | ClientMsg::Typing { .. }
            | ClientMsg::Read { .. }
            | ClientMsg::Inbox { .. }
            | ClientMsg::Search { .. }
            | ClientMsg::Thread { .. }
            | ClientMsg::History { .. } => None,
        }
    }
}

/// The longest reaction, in bytes (UTF-8): an emoji with its modifiers, or a short word.
pub const MAX_EMOJI_BYTES: usize = 32;

/// The most distinct reactions one message may carry.
pub const MAX_REACTIONS: usize = 20;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message: who I am.
    Hello {
        /// The nick to use.
        nick: String,
        /// A secret the client chose: further connections with the same nick and key are the
        /// same user (one member, several connections); a different or no key gets
        /// `nick_taken` while the nick is connected. On a server without tokens the first key
        /// used with a nick binds it, for good: from then on only that key takes the nick.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// A signed token (`nanachat token`) whose `sub` is this nick: required when the
        /// server has an auth secret, unless one came with the upgrade request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Join a room, optionally resuming after `since` (replayed from history, then live).
    Join {
        /// The room.
        room: String,
        /// The last seq this client has; messages after it are replayed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The room epoch `since` belongs to; if the room's epoch differs, its history was
        /// wiped and the server says so instead of replaying a wrong stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// Say something in a joined room.
    Say {
        /// The room.
        room: String,
        /// The text.
        text: String,
        /// The client's id for this message (at most [`MAX_CID_BYTES`]): a retry with the same
        /// cid is acked, not repeated.
        cid: String,
        /// The seq of the message (of this room) this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    /// Change the text of one of your messages (a moderator: anyone's), in a joined room.
    Edit {
        /// The room.
        room: String,
        /// The message's seq.
        seq: u64,
        /// Its new text.
        text: String,
        /// As for `say`.
        cid: String,
    },
    /// Delete one of your messages (a moderator: anyone's): its text is erased from the store.
    Delete {
        /// The room.
        room: String,
        /// The message's seq.
        seq: u64,
        /// As for `say`.
        cid: String,
    },
    /// You have read a room up to `seq` (a user with a key or a token): kept by the server,
    /// never moving back, and told to your other connections.
    Read {
        /// The room (or direct-message pair room).
        room: String,
        /// The last seq read.
        seq: u64,
    },
    /// Your rooms (a user with a key or a token): those you joined and did not leave, and
    /// your direct-message rooms, each with where you are and its last message.
    Inbox {
        /// Only the rooms after this one (by name): the last room of the page before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// The replies to one message (its thread), oldest first, each as it stands.
    Thread {
        /// The room.
        room: String,
        /// The message replied to.
        seq: u64,
        /// Only the replies after this seq (paging on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// At most this many (≤ 200; 50 unless told).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Find messages by their words, in one of your rooms or all of them (the rooms you are
    /// in, and with a key or token your remembered and direct-message rooms), best first.
    Search {
        /// The words to find (any text: only its letters and digits count, every word must be
        /// there).
        query: String,
        /// Only in this room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// At most this many (≤ 50; 20 unless told).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Skip the first this many (paging on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<u32>,
    },
    /// Say you are typing in a joined room: its other members are told (never stored; at most
    /// one a nick every 2 s goes out).
    Typing {
        /// The room.
        room: String,
    },
    /// Add (`on`) or take back a reaction to a message, in a joined room.
    React {
        /// The room.
        room: String,
        /// The message's seq.
        seq: u64,
        /// The reaction: one emoji (or a short word), at most [`MAX_EMOJI_BYTES`].
        emoji: String,
        /// True adds it, false takes it back.
        on: bool,
        /// As for `say`.
        cid: String,
    },
    /// Send a direct message to every connection of a nick.
    Dm {
        /// The nick.
        to: String,
        /// The text.
        text: String,
        /// As for `say`.
        cid: String,
    },
    /// Ask who is in a room: the nicks, sorted. A list cut to fit one frame is paged on with
    /// `after`.
    Who {
        /// The room.
        room: String,
        /// Only the nicks after this one (the last nick of the page before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Ask which rooms have people in them, busiest first. A list cut to fit one frame is
    /// paged on with `after`.
    Rooms {
        /// Only the rooms after this one in that order: the last entry of the page before, as
        /// it came.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<RoomInfo>,
    },
    /// Follow the room counts (`rooms`) and whether some nicks are online (`nicks`, at most
    /// [`MAX_WATCH_NICKS`]): answered at once with a `live` frame telling whether each nick is
    /// online, then sent a `live` frame with what changed, at most one every
    /// [`LIVE_EVERY_MS`]. Replaces what the connection followed before; `{"type":"watch"}`
    /// stops.
    Watch {
        /// Follow the member count of every public room.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rooms: bool,
        /// The nicks whose being online to follow.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nicks: Vec<String>,
    },
    /// Another nick for this user, in place: every connection of its nick (on this process)
    /// takes it, keeping its rooms — not the old nick's direct-message rooms. Answered with
    /// `renamed` to each of them, or an `error` that leaves the old nick in force.
    Nick {
        /// The nick to take.
        nick: String,
    },
    /// A fresh token for the same nick, to go on past the current one's `exp` (or before it):
    /// answered with `refreshed`, or an `error` (`unauthorized`) that leaves the old one in
    /// force.
    Refresh {
        /// The new token: signed with a secret the server accepts, `sub` this connection's nick.
        token: String,
    },
    /// Ask for a page of a room's history.
    History {
        /// The room.
        room: String,
        /// Messages before this seq (the newest ones before it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Messages after this seq (the oldest ones after it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// At most this many (≤ 200).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
}

/// The server's limits, told in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame accepted, in bytes.
    pub max_message_bytes: usize,
    /// Longest `text`, in characters.
    pub max_text_chars: usize,
    /// Messages per second allowed, sustained.
    pub rate_per_sec: u32,
    /// Messages allowed in a burst.
    pub rate_burst: u32,
    /// Rooms one connection may be in.
    pub max_rooms: usize,
    /// Interval of the server's `tick`, in milliseconds.
    pub heartbeat_ms: u64,
}

/// One chat message as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The room (for a direct message, its pair room, see `docs/protocol.md`).
    pub room: String,
    /// Its place in the room.
    pub seq: u64,
    /// Who said it.
    pub from: String,
    /// What was said (an `edit`: the new text; a `delete`, a `react`: empty).
    pub text: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub time: i64,
    /// What it is: a message, or an event on one (carried in the frame's `type`).
    #[serde(skip)]
    pub kind: Kind,
    /// A message: the seq of the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// An event: the seq of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// A `react`: the reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// A `react`: added (true) or taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// A message in `history` (or replayed): when it was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<i64>,
    /// A message in `history` (or replayed): deleted, its text erased.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// A message in `history`: its reactions, with how many nicks gave each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, u32>,
    /// A message in `history`: the reactions among them that are the asker's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mine: Vec<String>,
}

/// What a stored item of a room is: each takes the room's next seq.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A message.
    #[default]
    Message,
    /// A new text for the message `target`.
    Edit,
    /// The message `target` deleted.
    Delete,
    /// A reaction to the message `target` added or taken back.
    React,
}

impl ChatMessage {
    /// An event on a message (`kind`), as a line for people: who changed which message
    /// (`#seq`) in which room, and how.
    pub fn event_line(&self, kind: Kind) -> String {
        let (room, from, target) = (&self.room, &self.from, self.target.unwrap_or_default());
        match (kind, self.emoji.as_deref(), self.on) {
            (Kind::Edit, _, _) => format!("* {from} edited #{target} in {room}: {}", self.text),
            (Kind::Delete, _, _) => format!("* {from} deleted #{target} in {room}"),
            (Kind::React, Some(emoji), Some(false)) => {
                format!("* {from} took back {emoji} on #{target} in {room}")
            }
            (Kind::React, Some(emoji), _) => {
                format!("* {from} reacted {emoji} to #{target} in {room}")
            }
            _ => format!("[{room}] {from}: {}", self.text),
        }
    }

    /// A plain message (no reply, no event), as most are.
    pub fn said(room: &str, seq: u64, from: &str, text: &str, time: i64) -> Self {
        ChatMessage {
            room: room.to_owned(),
            seq,
            from: from.to_owned(),
            text: text.to_owned(),
            time,
            kind: Kind::Message,
            reply_to: None,
            target: None,
            emoji: None,
            on: None,
            edited: None,
            deleted: false,
            reactions: BTreeMap::new(),
            mine: Vec::new(),
        }
    }
}

/// A room in an `inbox` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The room (or direct-message pair room).
    pub room: String,
    /// Its last seq.
    pub last_seq: u64,
    /// The last seq the user has read.
    pub read_seq: u64,
    /// Messages after it by others (counted up to 1,000).
    pub unread: u64,
    /// Its last message, as it stands, if any is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ChatMessage>,
}

/// A room in a `rooms` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room.
    pub room: String,
    /// How many nicks are in it.
    pub members: usize,
}

/// The most nicks one `watch` may follow.
pub const MAX_WATCH_NICKS: usize = 100;

/// The bytes of a `live` frame without its rooms and nicks: `{"type":"live","rooms":[],
/// "total":N,"online":[],"offline":[]}` with room to spare; each nick adds its length and 3.
pub const LIVE_FRAME_BYTES: usize = 96;

/// A watching connection is sent at most one `live` frame in this long (milliseconds).
pub const LIVE_EVERY_MS: u64 = 1000;

/// Answer to `watch`, and then what changed for a watching connection (at most one every
/// [`LIVE_EVERY_MS`]): the frame `{"type":"live",…}`. Only a connection that sent `watch` gets
/// one, so it is not a [`ServerMsg`] (whose every variant each client handles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "live")]
pub struct Live {
    /// The public rooms whose member count changed, by name, each with its count now (0: empty
    /// now); only the first ones when they would not fit in one frame. Empty in the answer to
    /// `watch` (ask `rooms` for the list).
    pub rooms: Vec<RoomInfo>,
    /// How many rooms changed: more than `rooms` when the frame was cut (then ask `rooms`
    /// again for the whole list).
    #[serde(default)]
    pub total: usize,
    /// Nicks followed that are online now (in an update: that came online).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub online: Vec<String>,
    /// Nicks followed that are not online now (in an update: that went offline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<String>,
}

impl Live {
    /// The JSON text of this frame, with as many of its rooms as fit in `limit` bytes (at least
    /// none); `total` is kept.
    pub fn fit(mut self, limit: usize) -> String {
        let whole = serde_json::to_string(&self).unwrap_or_default();
        if whole.len() <= limit {
            return whole;
        }
        let rooms = std::mem::take(&mut self.rooms);
        // `lo` rooms fit, `hi` do not.
        let (mut lo, mut hi) = (0, rooms.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            self.rooms = rooms[..mid].to_vec();
            if serde_json::to_string(&self).map_or(usize::MAX, |t| t.len()) <= limit {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.rooms = rooms[..lo].to_vec();
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// Presence events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    /// The nick's first connection joined the room.
    Join,
    /// The nick's last connection left the room.
    Leave,
    /// The nick took another (`from` says which it had): the same member.
    Renamed,
}

/// Why a request was refused. Sent in `error` frames; the connection stays open unless a close
/// frame follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON.
    BadJson,
    /// The JSON had an unknown `type` or missing or unknown fields.
    BadMessage,
    /// A binary frame, where only JSON text frames are spoken.
    BinaryNotAllowed,
    /// Anything but `hello` before `hello`.
    HelloFirst,
    /// A second `hello`.
    AlreadyHello,
    /// The nick is malformed (length or characters).
    BadNick,
    /// The nick is in use by someone else.
    NickTaken,
    /// The room name is malformed.
    BadRoom,
    /// `join` for a room already joined.
    AlreadyJoined,
    /// `say`, `leave` or `who` for a room not joined.
    NotJoined,
    /// More rooms than the limit.
    TooManyRooms,
    /// The text is longer than the limit.
    TextTooLong,
    /// No connected user has that nick.
    NoSuchNick,
    /// Too many messages too fast; slow down.
    RateLimited,
    /// The server failed; the message was not stored.
    Internal,
    /// The server wants a valid token for this nick (missing, expired, forged, another nick).
    Unauthorized,
    /// The token does not allow this room; or an edit or delete of someone else's message
    /// by a user who is not a moderator of the room.
    Forbidden,
    /// The `cid` was used before by this nick in this room for another text: refused, nothing
    /// stored (a true retry, with the same text, is acked again as a duplicate).
    CidReused,
    /// The connection's token has expired: every request but `refresh` is refused with this
    /// until a fresh token comes, and the connection is closed with 4003 after the grace.
    TokenExpired,
    /// No message with that seq in that room (never, pruned, or the seq is an event's), or a
    /// `reply_to` that is not a message of the room.
    NoSuchMessage,
    /// The message was deleted: it cannot be edited or reacted to any more.
    MessageDeleted,
    /// A reaction that is empty, too long (more than 32 bytes) or holds spaces or control
    /// characters; or one more distinct reaction than a message may carry (20).
    BadReaction,
    /// A reaction added that was there already, or taken back that was not: nothing stored.
    Unchanged,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answer to `hello`.
    Welcome {
        /// The nick, as accepted.
        nick: String,
        /// The server's limits.
        limits: Limits,
        /// When the connection's token expires (seconds since the Unix epoch): `refresh`
        /// before then. Absent when it does not (no token, or a token without `exp`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
    },
    /// Answer to `refresh`: the new token is in force, until `exp` if it has one.
    Refreshed {
        /// When the new token expires (seconds since the Unix epoch), if it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
    },
    /// Answer to `join`: the room's epoch and last seq; replayed messages follow, then live ones.
    Joined {
        /// The room.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// The seq of the last message stored when the join took effect.
        last_seq: u64,
        /// The seq of the oldest message the server still keeps (`last_seq + 1` when it keeps
        /// none): older ones were removed by retention (or a wipe). 0 from a server that does
        /// not say.
        #[serde(default)]
        first_seq: u64,
        /// True when the client's `epoch` did not match: its `since` means nothing any more.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reset: bool,
        /// True when the client's `since` is older than `first_seq - 1`: the messages
        /// `since+1 … first_seq-1` were removed by retention, the replay starts at `first_seq`,
        /// and this resume is not gapless.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
        /// A user with a key or a token: the last seq it has read here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_seq: Option<u64>,
        /// With `read_seq`: messages after it by others (counted up to 1,000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
    },
    /// Answer to `leave`.
    Left {
        /// The room.
        room: String,
    },
    /// The message with this cid is stored under this seq.
    Ack {
        /// The client's id.
        cid: String,
        /// The room it was stored in.
        room: String,
        /// Its seq.
        seq: u64,
        /// It had been stored before (a retry).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// A chat message (live, or replayed on resume).
    Message(ChatMessage),
    /// A message's new text (`target`), live or replayed: it takes a seq of its own.
    Edit(ChatMessage),
    /// A message (`target`) deleted, live or replayed: it takes a seq of its own.
    Delete(ChatMessage),
    /// A reaction to a message (`target`) added or taken back, live or replayed.
    React(ChatMessage),
    /// Where this user has read a room up to now (after a `read` on any of its connections).
    Read {
        /// The room.
        room: String,
        /// The last seq read.
        seq: u64,
    },
    /// Answer to `inbox`: the user's rooms, by name; only the first ones when they would not
    /// fit in one frame.
    Inbox {
        /// Each room and where the user is in it.
        rooms: Vec<InboxEntry>,
        /// How many rooms the list held: more than `rooms` when it was cut.
        #[serde(default)]
        total: usize,
    },
    /// Answer to `thread`: the replies to message `seq`, oldest first.
    Thread {
        /// The room.
        room: String,
        /// The message replied to.
        seq: u64,
        /// The replies, each as it stands.
        messages: Vec<ChatMessage>,
        /// How many the page held: more than `messages` when it was cut to fit one frame.
        #[serde(default)]
        total: usize,
    },
    /// Answer to `search`: the messages found, best first, each as it stands.
    Search {
        /// The messages.
        results: Vec<ChatMessage>,
        /// How many the page held: more than `results` when it was cut to fit one frame.
        #[serde(default)]
        total: usize,
    },
    /// A member of a room is typing (show it for about 5 s).
    Typing {
        /// The room.
        room: String,
        /// Who.
        nick: String,
    },
    /// Someone joined or left a room, or took another nick.
    Presence {
        /// The room.
        room: String,
        /// The nick (the new one, for `renamed`).
        nick: String,
        /// Joined, left or renamed.
        event: PresenceEvent,
        /// For `renamed`: the nick it had.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// Answer to `nick`, to every connection of the user: it is `to` now.
    Renamed {
        /// The nick it had.
        from: String,
        /// The nick it has.
        to: String,
    },
    /// Answer to `who`.
    Members {
        /// The room.
        room: String,
        /// Nicks in it, sorted; only the first ones when they would not fit in one frame.
        nicks: Vec<String>,
        /// How many nicks the list held (all of the room's, or those after `after`): more
        /// than `nicks` when it was cut.
        #[serde(default)]
        total: usize,
    },
    /// Answer to `rooms`: the rooms with members, busiest first (most members, then by name);
    /// only the first ones when they would not fit in one frame.
    Rooms {
        /// Each room and how many nicks are in it.
        rooms: Vec<RoomInfo>,
        /// How many rooms the list held (all of them, or those after `after`): more than
        /// `rooms` when it was cut.
        #[serde(default)]
        total: usize,
    },
    /// Answer to `history`.
    History {
        /// The room.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// The page, oldest first; cut to fit in one frame, keeping the messages nearest to
        /// where the page starts (the newest before `before`, the oldest after `after`).
        messages: Vec<ChatMessage>,
        /// How many messages the page asked for held: more than `messages` when it was cut.
        #[serde(default)]
        total: usize,
    },
    /// The heartbeat: the link is alive.
    Tick {
        /// Server time, milliseconds since the Unix epoch.
        time: i64,
    },
    /// A request was refused.
    Error {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
        /// The cid of the refused `say` or `dm`, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::BinaryNotAllowed,
        ErrorCode::HelloFirst,
        ErrorCode::AlreadyHello,
        ErrorCode::BadNick,
        ErrorCode::NickTaken,
        ErrorCode::BadRoom,
        ErrorCode::AlreadyJoined,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::TextTooLong,
        ErrorCode::NoSuchNick,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::CidReused,
        ErrorCode::TokenExpired,
        ErrorCode::NoSuchMessage,
        ErrorCode::MessageDeleted,
        ErrorCode::BadReaction,
        ErrorCode::Unchanged,
    ];

    /// The code as it appears on the wire, e.g. `rate_limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BinaryNotAllowed => "binary_not_allowed",
            ErrorCode::HelloFirst => "hello_first",
            ErrorCode::AlreadyHello => "already_hello",
            ErrorCode::BadNick => "bad_nick",
            ErrorCode::NickTaken => "nick_taken",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::NoSuchNick => "no_such_nick",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::CidReused => "cid_reused",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::NoSuchMessage => "no_such_message",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::BadReaction => "bad_reaction",
            ErrorCode::Unchanged => "unchanged",
        }
    }
}

impl ServerMsg {
    /// The frame of a stored item: a `message`, or the event its kind says.
    pub fn chat(m: ChatMessage) -> Self {
        match m.kind {
            Kind::Message => ServerMsg::Message(m),
            Kind::Edit => ServerMsg::Edit(m),
            Kind::Delete => ServerMsg::Delete(m),
            Kind::React => ServerMsg::React(m),
        }
    }

    /// The stored item a frame carries (with its kind), if it carries one.
    pub fn into_chat(self) -> Option<ChatMessage> {
        let (mut m, kind) = match self {
            ServerMsg::Message(m) => (m, Kind::Message),
            ServerMsg::Edit(m) => (m, Kind::Edit),
            ServerMsg::Delete(m) => (m, Kind::Delete),
            ServerMsg::React(m) => (m, Kind::React),
            _ => return None,
        };
        m.kind = kind;
        Some(m)
    }

    /// For a reply that carries a list, how many items it holds; `None` for the others.
    ///
    /// Every variant is named (no wildcard), so a new one has to say whether it is a list: a
    /// list reply must be sent through the one rule that fits it into one frame (the chat
    /// server's `chat/list.rs`), never as it is.
    pub fn list_len(&self) -> Option<usize> {
        match self {
            ServerMsg::Members { nicks, .. } => Some(nicks.len()),
            ServerMsg::Rooms { rooms, .. } => Some(rooms.len()),
            ServerMsg::History { messages, .. } => Some(messages.len()),
            ServerMsg::Inbox { rooms, .. } => Some(rooms.len()),
            ServerMsg::Search { results, .. } => Some(results.len()),
            ServerMsg::Thread { messages, .. } => Some(messages.len()),
            ServerMsg::Welcome { .. }
            | ServerMsg::Refreshed { .. }
            | ServerMsg::Joined { .. }
            | ServerMsg::Left { .. }
            | ServerMsg::Ack { .. }
            | ServerMsg::Message(_)
            | ServerMsg::Edit(_)
            | ServerMsg::Delete(_)
            | ServerMsg::React(_)
            | ServerMsg::Typing { .. }
            | ServerMsg::Read { .. }
            | ServerMsg::Presence { .. }
            | ServerMsg::Renamed { .. }
            | ServerMsg::Tick { .. }
            | ServerMsg::Error { .. } => None,
        }
    }

    /// The JSON text of this message, as sent.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
    }
}

/// A frame that is not a valid client message: the error to answer it with. A `cid` longer
/// than [`MAX_CID_BYTES`] is `bad_message` (the refusal does not echo it).
pub fn parse_client(text: &str) -> Result<ClientMsg, (ErrorCode, String)> {
    match serde_json::from_str::<ClientMsg>(text) {
        Ok(msg) if msg.cid().is_some_and(|cid| cid.len() > MAX_CID_BYTES) => Err((
            ErrorCode::BadMessage,
            format!(
                "a cid is at most {MAX_CID_BYTES} bytes (this one has {})",
                msg.cid().unwrap_or_default().len()
            ),
        )),
        Ok(msg) => Ok(msg),
        Err(err) if err.is_syntax() || err.is_eof() => {
            Err((ErrorCode::BadJson, format!("not JSON: {err}")))
        }
        Err(err) => Err((ErrorCode::BadMessage, err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_read_as_documented() {
        let cases = [
            (
                r#"{"type":"hello","nick":"nana","key":"s3cret"}"#,
                ClientMsg::Hello {
                    nick: "nana".into(),
                    key: Some("s3cret".into()),
                    token: None,
                },
            ),
            (
                r#"{"type":"join","room":"lobby","since":41,"epoch":7}"#,
                ClientMsg::Join {
                    room: "lobby".into(),
                    since: Some(41),
                    epoch: Some(7),
                },
            ),
            (
                r#"{"type":"say","room":"lobby","text":"hi","cid":"c1"}"#,
                ClientMsg::Say {
                    room: "lobby".into(),
                    text: "hi".into(),
                    cid: "c1".into(),
                    reply_to: None,
                },
            ),
            (
                r#"{"type":"say","room":"lobby","text":"yes","cid":"c2","reply_to":41}"#,
                ClientMsg::Say {
                    room: "lobby".into(),
                    text: "yes".into(),
                    cid: "c2".into(),
                    reply_to: Some(41),
                },
            ),
            (
                r#"{"type":"edit","room":"lobby","seq":41,"text":"hi!","cid":"c3"}"#,
                ClientMsg::Edit {
                    room: "lobby".into(),
                    seq: 41,
                    text: "hi!".into(),
                    cid: "c3".into(),
                },
            ),
            (
                r#"{"type":"delete","room":"lobby","seq":41,"cid":"c4"}"#,
                ClientMsg::Delete {
                    room: "lobby".into(),
                    seq: 41,
                    cid: "c4".into(),
                },
            ),
            (
                r#"{"type":"react","room":"lobby","seq":41,"emoji":"👍","on":true,"cid":"c5"}"#,
                ClientMsg::React {
                    room: "lobby".into(),
                    seq: 41,
                    emoji: "👍".into(),
                    on: true,
                    cid: "c5".into(),
                },
            ),
            (r#"{"type":"rooms"}"#, ClientMsg::Rooms { after: None }),
            (
                r#"{"type":"rooms","after":{"room":"lobby","members":2}}"#,
                ClientMsg::Rooms {
                    after: Some(RoomInfo {
                        room: "lobby".into(),
                        members: 2,
                    }),
                },
            ),
            (
                r#"{"type":"who","room":"lobby","after":"mochi"}"#,
                ClientMsg::Who {
                    room: "lobby".into(),
                    after: Some("mochi".into()),
                },
            ),
            (
                r#"{"type":"history","room":"lobby","before":100,"limit":50}"#,
                ClientMsg::History {
                    room: "lobby".into(),
                    before: Some(100),
                    after: None,
                    limit: Some(50),
                },
            ),
        ];
        for (json, msg) in cases {
            assert_eq!(parse_client(json), Ok(msg.clone()), "{json}");
            assert_eq!(parse_client(&serde_json::to_string(&msg).unwrap()), Ok(msg));
        }
    }

    #[test]
    fn bad_frames_get_the_right_error_code() {
        assert_eq!(parse_client("{not json").unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(parse_client("").unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(
            parse_client(r#"{"type":"shout","room":"x"}"#)
                .unwrap_err()
                .0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse_client(r#"{"type":"say","room":"x"}"#).unwrap_err().0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse_client(r#"{"type":"hello","nick":"a","extra":1}"#)
                .unwrap_err()
                .0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse_client(r#"[1,2]"#).unwrap_err().0,
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn a_cid_is_at_most_max_cid_bytes() {
        let say = |cid: &str| format!(r#"{{"type":"say","room":"r","text":"t","cid":"{cid}"}}"#);
        let dm = |cid: &str| format!(r#"{{"type":"dm","to":"n","text":"t","cid":"{cid}"}}"#);
        let fits = "x".repeat(MAX_CID_BYTES);
        // One byte over in characters that take two: the limit counts bytes.
        let over = format!("{}x", "é".repeat(MAX_CID_BYTES / 2));
        for frame in [say(&fits), dm(&fits)] {
            assert!(parse_client(&frame).is_ok(), "{frame}");
        }
        for frame in [say(&over), dm(&over)] {
            let (code, why) = parse_client(&frame).unwrap_err();
            assert_eq!(code, ErrorCode::BadMessage);
            assert!(why.contains("64 bytes"), "{why}");
        }
    }

    #[test]
    fn error_codes_print_as_serialized() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn server_messages_write_as_documented() {
        let msg = ServerMsg::Message(ChatMessage::said(
            "lobby",
            42,
            "nana",
            "hi",
            1_764_000_000_000,
        ));
        assert_eq!(
            msg.to_json(),
            r#"{"type":"message","room":"lobby","seq":42,"from":"nana","text":"hi","time":1764000000000}"#
        );
        let ack = ServerMsg::Ack {
            cid: "c1".into(),
            room: "lobby".into(),
            seq: 42,
            duplicate: false,
        };
        assert_eq!(
            ack.to_json(),
            r#"{"type":"ack","cid":"c1","room":"lobby","seq":42}"#
        );
        let joined = ServerMsg::Joined {
            room: "lobby".into(),
            epoch: 1_764_000_000_000_000,
            last_seq: 41,
            first_seq: 30,
            reset: false,
            truncated: true,
            read_seq: None,
            unread: None,
        };
        assert_eq!(
            joined.to_json(),
            r#"{"type":"joined","room":"lobby","epoch":1764000000000000,"last_seq":41,"first_seq":30,"truncated":true}"#
        );
        assert!(
            include_str!("../docs/protocol.md").contains(&joined.to_json()),
            "docs/protocol.md shows a truncated joined"
        );
        let err = ServerMsg::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            cid: Some("c9".into()),
        };
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down","cid":"c9"}"#
        );
    }

    #[test]
    fn a_live_frame_is_cut_to_fit_and_keeps_its_total() {
        let live = Live {
            rooms: vec![RoomInfo {
                room: "lobby".into(),
                members: 3,
            }],
            total: 1,
            online: vec![],
            offline: vec!["mochi".into()],
        };
        let text = live.clone().fit(1 << 16);
        assert_eq!(
            text,
            r#"{"type":"live","rooms":[{"room":"lobby","members":3}],"total":1,"offline":["mochi"]}"#
        );
        assert_eq!(serde_json::from_str::<Live>(&text).ok(), Some(live));
        let many = Live {
            rooms: (0..1000)
                .map(|i| RoomInfo {
                    room: format!("room-{i}"),
                    members: i,
                })
                .collect(),
            total: 1000,
            online: vec![],
            offline: vec![],
        };
        let text = many.fit(4096);
        assert!(text.len() <= 4096);
        let cut: Live = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(cut.total, 1000);
        assert!(cut.rooms.len() > 10 && cut.rooms.len() < 1000);
        let doc = include_str!("../docs/protocol.md");
        assert!(doc.contains(r#"{"type":"live","rooms":[],"total":0,"online":["mochi"]}"#));
    }

    #[test]
    fn the_protocol_document_shows_every_message_type() {
        let doc = include_str!("../docs/protocol.md");
        for kind in [
            "hello", "join", "leave", "say", "dm", "who", "rooms", "history", "welcome", "joined",
            "left", "ack", "message", "presence", "members", "tick", "error", "edit", "delete",
            "react", "typing", "read", "inbox", "search", "thread", "watch", "live",
        ] {
            assert!(
                doc.contains(&format!("\"type\":\"{kind}\"")),
                "docs/protocol.md lacks {kind}"
            );
        }
        for code in ErrorCode::ALL.map(ErrorCode::as_str) {
            assert!(
                doc.contains(&format!("`{code}`")),
                "docs/protocol.md lacks {code}"
            );
        }
    }
}
