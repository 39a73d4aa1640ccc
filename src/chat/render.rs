//! How server messages look on the wire in each mode: JSON (`nanachat.v1`) or readable lines
//! (plain-text mode). A chat message is rendered once per mode and the same bytes go to every
//! recipient ([`Delivery`]).

use crate::clock::python_now;
use crate::connection::Utf8Bytes;
use crate::protocol::{ChatMessage, Kind, PresenceEvent, ServerMsg};

/// How a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON frames, subprotocol `nanachat.v1`.
    Json,
    /// Readable lines, for clients that asked for no subprotocol.
    Plain,
}

/// One server message, rendered once for each mode; cloning shares the bytes.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    json: Utf8Bytes,
    plain: Utf8Bytes,
}

impl Delivery {
    pub(crate) fn new(msg: &ServerMsg) -> Self {
        Self {
            json: msg.to_json().into(),
            plain: plain(msg).into(),
        }
    }

    pub(crate) fn for_mode(&self, mode: Mode) -> Utf8Bytes {
        match mode {
            Mode::Json => self.json.clone(),
            Mode::Plain => self.plain.clone(),
        }
    }
}

/// Renders one message for one mode (replies that go to a single connection).
pub(crate) fn render(mode: Mode, msg: &ServerMsg) -> Utf8Bytes {
    match mode {
        Mode::Json => msg.to_json().into(),
        Mode::Plain => plain(msg).into(),
    }
}

fn chat_line(m: &ChatMessage) -> String {
    let (room, from) = (&m.room, &m.from);
    match (m.deleted, m.reply_to) {
        (true, _) => format!("[{room}] {from}: (deleted)"),
        (false, Some(to)) => format!("[{room}] {from} (re #{to}): {}", m.text),
        (false, None) => format!("[{room}] {from}: {}", m.text),
    }
}

/// A message in a plain-text `/history` page: its seq first, so that a plain-text user can name
/// it (`/reply 42 …`, `/edit 42 …`), then the message as a live line shows it, with what
/// happened to it since: `(edited)`, and its reactions with their counts.
fn history_line(m: &ChatMessage) -> String {
    let mut line = format!("#{} {}", m.seq, chat_line(m));
    if m.edited.is_some() && !m.deleted {
        line.push_str(" (edited)");
    }
    if !m.reactions.is_empty() {
        let reactions: Vec<String> = m
            .reactions
            .iter()
            .map(|(emoji, n)| format!("{emoji} {n}"))
            .collect();
        line.push_str(&format!(" [{}]", reactions.join(", ")));
    }
    line
}

/// The plain-text line(s) for a server message.
fn plain(msg: &ServerMsg) -> String {
    match msg {
        ServerMsg::Welcome { nick, .. } => {
            format!("* welcome, you are {nick} (/help for commands)")
        }
        ServerMsg::Refreshed { exp: Some(exp) } => {
            format!(
                "* token refreshed: good until {}",
                crate::clock::utc_from_secs(*exp)
            )
        }
        ServerMsg::Refreshed { exp: None } => "* token refreshed".to_owned(),
        ServerMsg::Joined { room, reset, .. } if *reset => {
            format!("* you joined {room} (its history was reset)")
        }
        ServerMsg::Joined { room, .. } => format!("* you joined {room}"),
        ServerMsg::Left { room } => format!("* you left {room}"),
        ServerMsg::Ack { room, seq, .. } => format!("* stored in {room} as #{seq}"),
        ServerMsg::Message(m) => chat_line(m),
        ServerMsg::Edit(m) => m.event_line(Kind::Edit),
        ServerMsg::Delete(m) => m.event_line(Kind::Delete),
        ServerMsg::React(m) => m.event_line(Kind::React),
        ServerMsg::Typing { room, nick } => format!("* {nick} is typing in {room}"),
        ServerMsg::Read { room, seq } => format!("* read {room} up to #{seq}"),
        ServerMsg::Inbox { rooms, .. } if rooms.is_empty() => "* your inbox is empty".into(),
        ServerMsg::Inbox { rooms, total } => {
            let list: Vec<String> = rooms
                .iter()
                .map(|r| format!("{} ({} unread)", r.room, r.unread))
                .collect();
            let more = total.saturating_sub(rooms.len());
            match more {
                0 => format!("* inbox: {}", list.join(", ")),
                _ => format!("* inbox: {} and {more} more", list.join(", ")),
            }
        }
        ServerMsg::Presence {
            room,
            nick,
            event,
            from,
        } => match event {
            PresenceEvent::Join => format!("* {nick} joined {room}"),
            PresenceEvent::Leave => format!("* {nick} left {room}"),
            PresenceEvent::Renamed => {
                format!(
                    "* {} is now {nick} ({room})",
                    from.as_deref().unwrap_or("?")
                )
            }
        },
        ServerMsg::Renamed { to, .. } => format!("* you are now {to}"),
        ServerMsg::Members { room, nicks, total } if *total > nicks.len() => format!(
            "* in {room}: {} and {} more",
            nicks.join(", "),
            total - nicks.len()
        ),
        ServerMsg::Members { room, nicks, .. } => format!("* in {room}: {}", nicks.join(", ")),
        ServerMsg::Rooms { rooms, total } => {
            let list: Vec<String> = rooms
                .iter()
                .map(|r| format!("{} ({})", r.room, r.members))
                .collect();
            let more = total.saturating_sub(rooms.len());
            if more > 0 {
                format!("* rooms: {} and {more} more", list.join(", "))
            } else {
                format!("* rooms: {}", list.join(", "))
            }
        }
        ServerMsg::History { room, messages, .. } if messages.is_empty() => {
            format!("* no history in {room}")
        }
        ServerMsg::History { messages, .. } => messages
            .iter()
            .map(history_line)
            .collect::<Vec<_>>()
            .join("\n"),
        ServerMsg::Thread {
            room,
            seq,
            messages,
            ..
        } if messages.is_empty() => {
            format!("* no replies to #{seq} in {room}")
        }
        ServerMsg::Thread { messages, .. } => messages
            .iter()
            .map(history_line)
            .collect::<Vec<_>>()
            .join("\n"),
        ServerMsg::Search { results, .. } if results.is_empty() => "* nothing found".into(),
        ServerMsg::Search { results, .. } => results
            .iter()
            .map(history_line)
            .collect::<Vec<_>>()
            .join("\n"),
        // The seed's server push, so the seed's client sees what it always saw.
        ServerMsg::Tick { .. } => format!("!Server Send! {}", python_now()),
        ServerMsg::Error { code, message, .. } => format!("! {}: {message}", code.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn plain_lines_are_readable() {
        let msg = ServerMsg::Message(ChatMessage::said("lobby", 1, "nana", "hi", 0));
        assert_eq!(render(Mode::Plain, &msg).as_str(), "[lobby] nana: hi");
        assert!(
            render(Mode::Json, &msg)
                .as_str()
                .starts_with(r#"{"type":"message""#)
        );
        let err = ServerMsg::Error {
            code: ErrorCode::NotJoined,
            message: "join it first".into(),
            cid: None,
        };
        assert_eq!(
            render(Mode::Plain, &err).as_str(),
            "! not_joined: join it first"
        );
        let mut old = ChatMessage::said("lobby", 42, "nana", "hi!", 0);
        old.edited = Some(1);
        old.reactions.insert("👍".into(), 2);
        old.reactions.insert("🎉".into(), 1);
        let mut reply = ChatMessage::said("lobby", 43, "mochi", "yes", 0);
        reply.reply_to = Some(42);
        let history = ServerMsg::History {
            room: "lobby".into(),
            epoch: 1,
            messages: vec![old, reply],
            total: 2,
        };
        assert_eq!(
            render(Mode::Plain, &history).as_str(),
            "#42 [lobby] nana: hi! (edited) [🎉 1, 👍 2]\n#43 [lobby] mochi (re #42): yes"
        );
        let tick = render(Mode::Plain, &ServerMsg::Tick { time: 0 });
        assert!(tick.as_str().starts_with("!Server Send! "));
    }
}
