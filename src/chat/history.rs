//! Reading a room's past: the `history` request, and the replay that brings a member who
//! joins with `since` up to date before it goes live. Both read pages from the store; a
//! `history` page is a list reply, fitted into one frame like every other (`list.rs`).
//!
//! It is apart from the session because it is the one part of it that talks to the store on
//! the way *out*, and the seam of resume (replay, then the hub's backlog, then live) wants
//! reading in one piece.

use super::list::{Keep, Listing};
use super::session::{Failure, Session, refuse, unavailable};
use super::types::chat_message;
use crate::connection::{Connection, Message};
use crate::error::StoreError;
use crate::protocol::{ChatMessage, ErrorCode, ServerMsg};
use crate::store::{MAX_PAGE, Page, Record, Store};
use crate::{Error, Result};

impl<S: Store> Session<S> {
    /// Sends `since+1 ..= last` from history, then what arrived live meanwhile, then goes live.
    ///
    /// `joined` promised `since+1 ..= last` without a hole (`since` is at least its
    /// `first_seq - 1`). If retention prunes some of it in the meantime (a resume right at the
    /// edge of what is kept, on a slow link), that promise cannot be kept: the connection is
    /// closed (1011) instead of going on with a hole. The client resumes from the last seq it
    /// got, and is then told `truncated`.
    pub(super) async fn replay(
        &self,
        conn: &mut Connection,
        room: &str,
        since: u64,
        last: u64,
    ) -> Result<()> {
        let mut after = since;
        let dm = room.starts_with('@');
        let pruned_meanwhile = |after| {
            Error::Store(StoreError::PrunedDuringReplay {
                room: room.to_owned(),
                after,
            })
        };
        'pages: while after < last {
            let page = self
                .chat
                .store
                .history(room, Page::After(after), MAX_PAGE)
                .await?;
            if page.is_empty() {
                return Err(pruned_meanwhile(after));
            }
            for record in page {
                if record.seq > last {
                    break 'pages;
                }
                // Out of the room meanwhile (a rename on another connection of the user took
                // it out of the old nick's direct-message rooms): nothing more of it is sent.
                // Only a direct-message room is left so, from elsewhere: no other replay pays
                // for the look.
                if dm && !self.hub().is_member(self.id, room) {
                    return Ok(());
                }
                if record.seq != after + 1 {
                    return Err(pruned_meanwhile(after));
                }
                after = record.seq;
                self.reply(conn, &ServerMsg::chat(chat_message(record)))
                    .await?;
            }
        }
        // Live deliveries are queued without waiting and may fill the whole outbox; replies
        // (the replay's pages, what was held meanwhile) wait while half of it is taken, so
        // going live leaves them room.
        loop {
            let Some(held) = self.hub().finish_replay(self.id, room) else {
                break;
            };
            for d in held {
                conn.send(Message::Text(d.for_mode(self.mode))).await?;
            }
        }
        Ok(())
    }

    /// Messages of `room` as they stand now for this asker: above its floor (a direct-message
    /// room's), with their reactions counted and its own marked.
    async fn as_they_stand(
        &self,
        room: &str,
        floor: u64,
        records: Vec<Record>,
    ) -> Result<Vec<ChatMessage>, Failure> {
        let mut messages: Vec<ChatMessage> = records
            .into_iter()
            .filter(|record| record.seq > floor)
            .map(chat_message)
            .collect();
        let me = self.hub().nick(self.id).unwrap_or_default();
        count_reactions(&*self.chat.store, room, &me, &mut messages)
            .await
            .map_err(unavailable)?;
        Ok(messages)
    }

    /// Answers `thread`: the replies to one message, oldest first, cut to fit in one frame.
    pub(super) async fn thread(
        &self,
        conn: &mut Connection,
        room: String,
        seq: u64,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Failure> {
        if !self.hub().may_use(self.id, &room) {
            refuse(
                ErrorCode::NotJoined,
                format!("join {room} to read its threads"),
            )?;
        }
        let floor = self.hub().floor(self.id, &room);
        let limit = limit.map_or(50, |l| l as usize).min(MAX_PAGE);
        let records = self
            .chat
            .store
            .replies(&room, seq, after.unwrap_or(0).max(floor), limit)
            .await
            .map_err(unavailable)?;
        let messages = self.as_they_stand(&room, floor, records).await?;
        let list = Listing::new(messages, Keep::First, |messages, total| ServerMsg::Thread {
            room: room.clone(),
            seq,
            messages,
            total,
        });
        Ok(self.reply_list(conn, list).await?)
    }

    /// Answers `history`: a page of a room's messages, cut to fit in one frame.
    pub(super) async fn history(
        &self,
        conn: &mut Connection,
        room: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Failure> {
        if !self.hub().may_use(self.id, &room) {
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
        // In a direct-message room, what was sent to this connection's nick before it held it
        // is not its to read: pages start above that (as its `joined` did).
        let floor = self.hub().floor(self.id, &room);
        let page = match page {
            Page::After(seq) => Page::After(seq.max(floor)),
            before => before,
        };
        let store = &self.chat.store;
        let epoch = store.room_state(&room).await.map_err(unavailable)?.epoch;
        let records = store
            .messages(&room, page, limit)
            .await
            .map_err(unavailable)?;
        let messages = self.as_they_stand(&room, floor, records).await?;
        // A page that would not fit in one frame is cut short, keeping the messages nearest to
        // where the client reads from (the newest going back, the oldest going forward); it
        // pages on from there.
        let keep = match page {
            Page::Before(_) => Keep::Last,
            Page::After(_) => Keep::First,
        };
        let list = Listing::new(messages, keep, |messages, total| ServerMsg::History {
            room: room.clone(),
            epoch,
            messages,
            total,
        });
        Ok(self.reply_list(conn, list).await?)
    }
}

/// Puts each message's reactions on it, counted, with `nick`'s own marked (none for an empty
/// nick). `messages` are of `room`, in seq order.
pub(super) async fn count_reactions<S: Store>(
    store: &S,
    room: &str,
    nick: &str,
    messages: &mut [ChatMessage],
) -> Result<()> {
    let seqs: Vec<u64> = messages
        .iter()
        .filter(|m| !m.deleted)
        .map(|m| m.seq)
        .collect();
    if seqs.is_empty() {
        return Ok(());
    }
    for (seq, emoji, count, mine) in store.reactions(room, &seqs, nick).await? {
        if let Ok(i) = messages.binary_search_by_key(&seq, |m| m.seq) {
            let m = &mut messages[i];
            if mine {
                m.mine.push(emoji.clone());
            }
            m.reactions.insert(emoji, count);
        }
    }
    Ok(())
}
