//! The words every part of `chat/` shares: connection ids, the names of nicks, rooms and
//! direct-message rooms, a member's presence change, and a stored record as a chat message.
//!
//! It exists so that the dependency arrows inside `chat/` point one way: the session, the
//! hub and the cluster all use these, and none of them has to import another for them.

use crate::protocol::ChatMessage;
use crate::store::Record;

/// A connection's id, unique for the life of the process.
pub(crate) type ConnId = u64;

/// The pseudo-room (not a valid room name) whose members, in a cluster, are the nicks online.
pub(crate) const ONLINE: &str = "*";

/// One member joining (+1) or leaving (-1) a room on this process, numbered by the hub.
#[derive(Debug)]
pub(crate) struct Change {
    /// The hub's number for this change; they only grow.
    pub(crate) generation: u64,
    /// The room, or [`ONLINE`] for a connect or disconnect.
    pub(crate) room: String,
    /// Whose membership changed.
    pub(crate) nick: String,
    /// +1 for a join, -1 for a leave (a share put in at once counts connections).
    pub(crate) delta: i64,
    /// For the room of nicks online: the key the nick's connections share.
    pub(crate) key: Option<String>,
}

/// Where a connection's reading of each direct-message room of its nick starts, on an open
/// server: the room's last seq that is not its holder's to read — sent before the holder took
/// the nick (see docs/protocol.md, "Whose a nick is"). Sorted by room; a room not listed starts
/// at 0 (all of it is the holder's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Floors(Box<[(String, u64)]>);

impl Floors {
    /// The floors of these rooms.
    pub(crate) fn new(mut floors: Vec<(String, u64)>) -> Self {
        floors.sort_unstable();
        Self(floors.into_boxed_slice())
    }

    /// Every room's floor.
    pub(crate) fn to_vec(&self) -> Vec<(String, u64)> {
        self.0.to_vec()
    }

    /// The last seq of `room` that is not the holder's (0: none).
    pub(crate) fn of(&self, room: &str) -> u64 {
        self.0
            .binary_search_by(|(r, _)| r.as_str().cmp(room))
            .map_or(0, |i| self.0[i].1)
    }
}

/// A room of a user's inbox as the protocol (and the HTTP API) shows it.
pub(crate) fn inbox_entry(r: crate::store::InboxRoom) -> crate::protocol::InboxEntry {
    crate::protocol::InboxEntry {
        room: r.room,
        last_seq: r.last_seq,
        read_seq: r.state.read_seq,
        unread: r.state.unread,
        last: r.last.map(chat_message),
    }
}

/// A stored record as the message clients receive.
pub(crate) fn chat_message(r: Record) -> ChatMessage {
    let (emoji, on) = match r.emoji {
        Some((emoji, on)) => (Some(emoji), Some(on)),
        None => (None, None),
    };
    ChatMessage {
        kind: r.kind,
        reply_to: r.reply_to,
        target: r.target,
        emoji,
        on,
        edited: r.edited_ms,
        deleted: r.deleted,
        room: r.room,
        seq: r.seq,
        from: r.from,
        text: r.text,
        time: r.time_ms,
        reactions: Default::default(),
        mine: Vec::new(),
    }
}

/// Whether `nick` is a valid nick: 1–32 letters, digits, `-` or `_`.
pub fn valid_nick(nick: &str) -> bool {
    (1..=32).contains(&nick.len())
        && nick
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `room` is a valid room name: 1–64 letters, digits, `-`, `_` or `.`. Names starting
/// with `@` are direct-message rooms, made by the server.
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A nick's identity: nicks are unique whatever their case (`Alice` is `alice`), and shown
/// as typed. Nicks are ASCII ([`valid_nick`]), so ASCII case folding is all there is.
pub(crate) fn nick_key(nick: &str) -> String {
    nick.to_ascii_lowercase()
}

/// The direct-message room of two nicks: `@a+b`, both nicks case-folded and in order, so that
/// `dm Alice` and `dm alice` are the one room (a DM to yourself is `@a+a`).
pub(crate) fn dm_room(a: &str, b: &str) -> String {
    let (a, b) = (nick_key(a), nick_key(b));
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("@{x}+{y}")
}

/// The two (case-folded) nicks of a direct-message room's name, if it is one: only the
/// canonical name [`dm_room`] makes is.
pub(crate) fn dm_pair(room: &str) -> Option<(String, String)> {
    let (a, b) = room.strip_prefix('@')?.split_once('+')?;
    let canonical = |n: &str| valid_nick(n) && n == nick_key(n);
    (canonical(a) && canonical(b) && a <= b).then(|| (a.to_owned(), b.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_nick("nana_7-x"));
        for bad in ["", "has space", "émoji", &"x".repeat(33), "a@b"] {
            assert!(!valid_nick(bad), "{bad}");
        }
        assert!(valid_room("lobby.en"));
        for bad in ["", "@a+b", "sp ace", &"r".repeat(65)] {
            assert!(!valid_room(bad), "{bad}");
        }
    }

    #[test]
    fn dm_rooms_are_named_by_the_case_folded_pair() {
        assert_eq!(dm_room("Bob", "alice"), "@alice+bob");
        assert_eq!(dm_room("ALICE", "bob"), dm_room("bob", "alice"));
        assert_eq!(dm_room("Nana", "nana"), "@nana+nana");
        assert_eq!(dm_pair("@alice+bob"), Some(("alice".into(), "bob".into())));
        for bad in ["@Alice+bob", "@bob+alice", "@a b+c", "alice+bob", "@alice"] {
            assert_eq!(dm_pair(bad), None, "{bad}");
        }
    }
}
