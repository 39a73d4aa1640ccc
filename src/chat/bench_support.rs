//! The fan-out path without sockets, for the micro-benchmarks in `benches/micro.rs`: one room
//! of JSON members in a hub, and the delivery a stored message takes, so that its cost can be
//! measured alone. Not an API: built only with the `test-support` feature.

use super::hub::Hub;
use super::render::Mode;
use crate::connection::Message;
use crate::outbox::{Next, Outbox};
use crate::protocol::{ChatMessage, ServerMsg};
use crate::store::RoomState;

/// One room of `members` JSON connections in a hub.
#[derive(Debug)]
pub struct FanoutRoom {
    hub: Hub,
    outboxes: Vec<Outbox>,
    seq: u64,
    batch: std::collections::VecDeque<Message>,
}

impl FanoutRoom {
    /// A hub with one room and `members` connections in it.
    pub fn new(members: usize) -> Self {
        let hub = Hub::new(0, std::time::Duration::from_secs(300));
        hub.open_room("lobby", RoomState::empty(1, 0), None);
        let mut outboxes = Vec::with_capacity(members);
        for id in 0..members as u64 {
            let outbox = Outbox::new(1024);
            let nick = format!("n{id}");
            hub.connect(
                id,
                &nick,
                None,
                outbox.clone(),
                Mode::Json,
                Some(Default::default()),
            )
            .expect("a free nick");
            hub.join(id, "lobby", super::hub::JoinAsk::default(), 1)
                .expect("joined");
            outboxes.push(outbox);
        }
        let mut room = Self {
            hub,
            outboxes,
            seq: 0,
            batch: Default::default(),
        };
        room.drain();
        room
    }

    /// Stores-and-delivers one message as the server does after an append: rendered once,
    /// queued to every member; then empties the outboxes as their writers would.
    pub fn deliver(&mut self, text: &str) {
        self.seq += 1;
        let msg = ServerMsg::Message(ChatMessage::said(
            "lobby",
            self.seq,
            "nana",
            text,
            1_764_000_000_000,
        ));
        self.hub.deliver("lobby", Some((self.seq, &msg)));
        self.drain();
    }

    fn drain(&mut self) {
        for outbox in &self.outboxes {
            while let Next::Batch = outbox.next_batch(&mut self.batch, usize::MAX) {
                self.batch.clear();
            }
        }
    }
}
