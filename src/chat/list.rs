//! The one rule for every reply that carries a list — `rooms`, `members` (the answer to `who`),
//! `history`, and any later one: **it never exceeds one frame.** The server announces the
//! largest message it speaks (`limits.max_message_bytes`), and a frame larger than what its
//! writer may buffer drops the connection with no close frame; a list grows with the server
//! (rooms, members, messages) and would one day outgrow it.
//!
//! So a list reply is a [`Listing`]: the whole list it was asked for, which end of it to keep,
//! and how to build the reply from a part of it and the `total`. [`Listing::fit`] renders the
//! reply for the connection's mode with as many items as fit in the limit, measured on the
//! rendered frame itself (JSON and plain text alike), and says in `total` how many the list
//! held: a reply holding fewer items than its `total` was cut, and the client pages on from
//! its last item (`after` for `rooms` and `who`, `before`/`after` for `history`).
//!
//! [`ServerMsg::list_len`] names every list-carrying variant in an exhaustive match, and
//! [`Session::reply`](super::session::Session::reply) refuses them (in debug builds, loudly),
//! so a new list reply cannot be sent without being fitted.

use super::render::{Mode, render};
use crate::connection::Utf8Bytes;
use crate::protocol::ServerMsg;

/// Which end of a list a cut keeps: the items nearest to where the client reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// The first items (a list read forwards: rooms, nicks, history after a seq).
    First,
    /// The last items (history read backwards from a seq: the newest ones before it).
    Last,
}

/// A reply carrying a list, before it is fitted into one frame.
pub(super) struct Listing<T, F> {
    /// The whole list asked for; its length is the reply's `total`.
    items: Vec<T>,
    keep: Keep,
    /// Builds the reply from a part of the list and the total.
    build: F,
}

impl<T: Clone, F: Fn(Vec<T>, usize) -> ServerMsg> Listing<T, F> {
    /// The list `items` (all of it: its length is the `total`), cut at the `keep` end.
    pub(super) fn new(items: Vec<T>, keep: Keep, build: F) -> Self {
        Self { items, keep, build }
    }

    /// The reply with `n` items from the kept end, rendered for `mode`.
    fn render(&self, mode: Mode, n: usize) -> Utf8Bytes {
        let part = match self.keep {
            Keep::First => &self.items[..n],
            Keep::Last => &self.items[self.items.len() - n..],
        };
        render(mode, &(self.build)(part.to_vec(), self.items.len()))
    }

    /// The reply rendered for `mode` with as many items as fit in `limit` bytes.
    ///
    /// Sizes are measured on the rendered frame, so the result holds for every mode: it
    /// doubles the number of items until the frame is too big (or the list is all in), then
    /// halves the gap — a few renders of at most twice the limit each, however long the list.
    /// Only a limit smaller than the reply with no items at all is not met (none is sent
    /// then: the server's own messages, `welcome` first, are larger than that).
    pub(super) fn fit(&self, mode: Mode, limit: usize) -> Utf8Bytes {
        let len = self.items.len();
        let mut best = self.render(mode, 0);
        // `lo` items fit; `hi` items do not (len + 1: not known not to).
        let (mut lo, mut hi) = (0, len + 1);
        let mut n = 1;
        while n <= len {
            let frame = self.render(mode, n);
            if frame.len() > limit {
                hi = n;
                break;
            }
            (best, lo) = (frame, n);
            if n == len {
                return best;
            }
            n = (n * 2).min(len);
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let frame = self.render(mode, mid);
            if frame.len() <= limit {
                (best, lo) = (frame, mid);
            } else {
                hi = mid;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RoomInfo;

    fn rooms(n: usize) -> Vec<RoomInfo> {
        (0..n)
            .map(|i| RoomInfo {
                room: format!("{i:04}-{}", "r".repeat(59)),
                members: 1,
            })
            .collect()
    }

    fn build(rooms: Vec<RoomInfo>, total: usize) -> ServerMsg {
        ServerMsg::Rooms { rooms, total }
    }

    fn parse(frame: &Utf8Bytes) -> (Vec<String>, usize) {
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap_or_default();
        let names = v["rooms"]
            .as_array()
            .map(|a| a.iter().map(|r| r["room"].to_string()).collect())
            .unwrap_or_default();
        (names, v["total"].as_u64().unwrap_or_default() as usize)
    }

    #[test]
    fn a_list_is_cut_to_the_largest_part_that_fits_and_tells_the_total() {
        for len in [0, 1, 2, 3, 7, 40, 41, 1000] {
            for limit in [300, 1000, 4096, 65536] {
                let list = Listing::new(rooms(len), Keep::First, build);
                let frame = list.fit(Mode::Json, limit);
                let (names, total) = parse(&frame);
                assert_eq!(total, len);
                assert!(frame.len() <= limit, "{len} rooms in {limit}");
                // The largest that fits: one more would not.
                if names.len() < len {
                    assert!(list.render(Mode::Json, names.len() + 1).len() > limit);
                }
                let plain = list.fit(Mode::Plain, limit);
                assert!(plain.len() <= limit, "plain: {len} rooms in {limit}");
            }
        }
    }

    #[test]
    fn a_cut_keeps_the_end_it_is_told_to() {
        let list = Listing::new(rooms(100), Keep::Last, build);
        let (names, total) = parse(&list.fit(Mode::Json, 1000));
        assert_eq!(total, 100);
        assert!(!names.is_empty() && names.len() < 100);
        assert_eq!(names.last(), Some(&format!("\"0099-{}\"", "r".repeat(59))));
    }
}
