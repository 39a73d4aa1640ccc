//! Plain-text mode: clients that ask for no subprotocol (a bare `websocat`, a browser console)
//! get a generated nick and the lobby at once; each line they send is said in their current
//! room, and a line starting with `/` is a command (`/help` lists them).
//!
//! It exists apart from the session because it is a second way in, not a second way through:
//! a line becomes the same [`ClientMsg`] a `nanachat.v1` client sends, and everything after
//! parsing is the session's. Only `/nick` (by `nicks.rs`) and `/help` are answered on the
//! spot. One difference: a line has no cid (it is stored as a new message every time, and
//! acked by coming back), so that no id made up here can repeat or be taken by a client first.

use super::session::{AUTHENTICATED, Failure, Refusal, Session};
use super::types::Floors;
use crate::connection::Connection;
use crate::protocol::{ClientMsg, ErrorCode};
use crate::store::Store;
use crate::{Error, Result};

/// The room plain-text clients are put in.
const LOBBY: &str = "lobby";

/// The `cid` of a line's request: none. The session stores a plain-text line without a cid
/// (`Session::client_cid`), so no id is made up that could repeat or that a client could take.
const NO_CID: String = String::new();

/// How many messages `/history` shows unless told.
const PLAIN_HISTORY: u32 = 20;

/// The help text of plain-text mode.
const PLAIN_HELP: &str = "* commands: /nick NAME, /join ROOM, /leave [ROOM], \
/msg NICK TEXT, /who [ROOM], /rooms, /history [N] (each line starts with its message's #SEQ), \
/reply SEQ TEXT, /edit SEQ TEXT, /delete SEQ, /react SEQ EMOJI, /unreact SEQ EMOJI, \
/search WORDS, /inbox, /token TOKEN (a fresh token), /help; anything else is said in your \
current room";

/// The usage line of each command on a message, for a malformed one.
const USAGE_REPLY: &str = "usage: /reply SEQ TEXT (SEQ: a message's number, #SEQ in /history)";
const USAGE_EDIT: &str = "usage: /edit SEQ TEXT (SEQ: a message's number, #SEQ in /history)";
const USAGE_DELETE: &str = "usage: /delete SEQ (SEQ: a message's number, #SEQ in /history)";
const USAGE_REACT: &str = "usage: /react SEQ EMOJI (SEQ: a message's number, #SEQ in /history)";
const USAGE_UNREACT: &str = "usage: /unreact SEQ EMOJI (SEQ: a message's number, #SEQ in /history)";

/// A command's `SEQ REST` (with `rest` required or not): the seq (`42` or `#42`) and what
/// follows it, trimmed; `None` when the seq is missing or not a number, or `rest` is required
/// and empty.
fn seq_and_rest(args: &str, rest_required: bool) -> Option<(u64, &str)> {
    let (seq, rest) = args.split_once(' ').unwrap_or((args, ""));
    let seq = seq.strip_prefix('#').unwrap_or(seq).parse().ok()?;
    let rest = rest.trim();
    (!rest_required || !rest.is_empty()).then_some((seq, rest))
}

impl<S: Store> Session<S> {
    /// Plain-text mode: a generated nick, and the lobby.
    pub(super) async fn start_plain(&mut self, conn: &mut Connection) -> Result<()> {
        let nick = if self.chat.config.auth.is_some() {
            // `authorize` let it in with a valid token: it is its token's nick.
            let token = conn.token().unwrap_or_default().to_owned();
            let claims = match self.check_token(Some(&token)) {
                Ok(claims) => claims,
                Err(Refusal(_, why)) => return Err(Error::Policy(why)),
            };
            let nick = claims.sub.clone();
            self.hub()
                .connect(
                    self.id,
                    &nick,
                    Some(AUTHENTICATED),
                    self.outbox.clone(),
                    self.mode,
                    Some(Floors::default()),
                )
                .map_err(|_| Error::Policy(format!("{nick} is taken")))?;
            self.hold_token(token, claims);
            self.known = true;
            nick
        } else {
            // A name no other process gives out; taking it still decides (a user may have
            // picked it, or bound it to a key).
            let base = self.chat.directory.guest_name(self.id);
            let mut nick = base.clone();
            let mut n = 1;
            loop {
                match self.take_guest_nick(&nick).await {
                    Ok(()) => break,
                    Err(Refusal(ErrorCode::NickTaken, _)) => {
                        nick = format!("{base}-{n}");
                        n += 1;
                    }
                    // The store cannot say whose the name is: closed (1011), to come back.
                    Err(Refusal(_, why)) => return Err(Error::Refused(why)),
                }
            }
            nick
        };
        self.chat.directory.presence_applied().await;
        self.refuse_banned(&nick).await?;
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
    pub(super) async fn parse_plain(&mut self, line: &str) -> Result<Option<ClientMsg>, Failure> {
        let refused = |code, why: &str| Err(Failure::Refused(Refusal(code, why.to_owned())));
        let line = line.trim_end_matches(['\r', '\n']);
        let Some(command) = line.strip_prefix('/') else {
            let Some(room) = self.current.clone() else {
                return refused(ErrorCode::NotJoined, "join a room first: /join ROOM");
            };
            return Ok(Some(ClientMsg::Say {
                room,
                text: line.to_owned(),
                cid: NO_CID,
                reply_to: None,
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
                self.rename(rest).await?;
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
                    return refused(ErrorCode::BadMessage, "usage: /msg NICK TEXT");
                };
                ClientMsg::Dm {
                    to: to.to_owned(),
                    text: text.to_owned(),
                    cid: NO_CID,
                }
            }
            "who" => ClientMsg::Who {
                room: arg_or_current(rest)?,
                after: None,
            },
            "rooms" => ClientMsg::Rooms { after: None },
            "inbox" => ClientMsg::Inbox { after: None },
            "search" if rest.trim().is_empty() => {
                return refused(ErrorCode::BadMessage, "usage: /search WORDS");
            }
            "search" => ClientMsg::Search {
                query: rest.to_owned(),
                room: None,
                limit: None,
                skip: None,
            },
            "token" if rest.is_empty() => {
                return refused(ErrorCode::BadMessage, "usage: /token TOKEN (a fresh token)");
            }
            "token" => ClientMsg::Refresh {
                token: rest.to_owned(),
            },
            "history" => ClientMsg::History {
                room: current()?,
                before: None,
                after: None,
                limit: Some(rest.parse().unwrap_or(PLAIN_HISTORY)),
            },
            "reply" => {
                let Some((seq, text)) = seq_and_rest(rest, true) else {
                    return refused(ErrorCode::BadMessage, USAGE_REPLY);
                };
                ClientMsg::Say {
                    room: current()?,
                    text: text.to_owned(),
                    cid: NO_CID,
                    reply_to: Some(seq),
                }
            }
            "edit" => {
                let Some((seq, text)) = seq_and_rest(rest, true) else {
                    return refused(ErrorCode::BadMessage, USAGE_EDIT);
                };
                ClientMsg::Edit {
                    room: current()?,
                    seq,
                    text: text.to_owned(),
                    cid: NO_CID,
                }
            }
            "delete" => {
                let Some((seq, "")) = seq_and_rest(rest, false) else {
                    return refused(ErrorCode::BadMessage, USAGE_DELETE);
                };
                ClientMsg::Delete {
                    room: current()?,
                    seq,
                    cid: NO_CID,
                }
            }
            "react" | "unreact" => {
                let on = verb == "react";
                let Some((seq, emoji)) = seq_and_rest(rest, true) else {
                    let usage = if on { USAGE_REACT } else { USAGE_UNREACT };
                    return refused(ErrorCode::BadMessage, usage);
                };
                ClientMsg::React {
                    room: current()?,
                    seq,
                    emoji: emoji.to_owned(),
                    on,
                    cid: NO_CID,
                }
            }
            "help" => {
                self.hub().send_to(&self.outbox, PLAIN_HELP.into());
                return Ok(None);
            }
            other => {
                return refused(
                    ErrorCode::BadMessage,
                    &format!("unknown command /{other} (try /help)"),
                );
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::seq_and_rest;

    #[test]
    fn a_command_on_a_message_reads_its_seq_then_the_rest() {
        assert_eq!(seq_and_rest("42 hi there", true), Some((42, "hi there")));
        assert_eq!(seq_and_rest("#42  hi ", true), Some((42, "hi")));
        assert_eq!(seq_and_rest("7", false), Some((7, "")));
        for bad in ["", "x hi", "#x hi", "-1 hi", "42"] {
            assert_eq!(seq_and_rest(bad, true), None, "{bad:?}");
        }
    }
}
