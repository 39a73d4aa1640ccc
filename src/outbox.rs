//! The outbox: a connection's bounded send queue, shared by whoever sends to the peer (its own
//! handler, a room, a timer) and drained by the connection's writer task.
//!
//! Why not `tokio::sync::mpsc`: a bounded mpsc channel allocates a block of 32 slots up front
//! (about 2 KiB with tungstenite's `Message`), and most chat connections are idle most of the
//! time. This queue is a `VecDeque` behind a mutex that is never held across an `.await`: an
//! idle connection pays for an empty deque and two `Notify`s, a busy one for what it queues.
//! It also carries the two control signals the writer needs besides messages — "flush now"
//! (for the automatic pong) and "close with this frame" — so neither can be stuck behind a full
//! queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::{Error, Result};

/// A queue that grew past this many slots gives the memory back once it is drained.
const KEEP_CAPACITY: usize = 8;

/// The sending side of a connection: a handle on its bounded queue. Cheap to clone; a room keeps
/// one per member.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: a message, a flush or a close is waiting.
    work: Notify,
    /// Wakes senders waiting for room (and tells them when the queue closes).
    room: Notify,
    /// Wakes whoever waits in [`Outbox::closed`].
    closed: Notify,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Message>,
    capacity: usize,
    flush: bool,
    close: Option<CloseFrame>,
    /// No more messages are accepted: a close was requested or the writer stopped.
    closed: bool,
    /// The writer should stop once the queue is written (the connection is gone).
    done: bool,
}

/// What the writer should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Feed this message (one at a time, in tests).
    #[cfg(test)]
    Message(Message),
    /// Feed the messages moved into the caller's buffer.
    Batch,
    /// Everything queued is fed; write the close frame and stop.
    Close(CloseFrame),
    /// Nothing waiting; `flush` says whether a flush was asked for explicitly.
    Idle { flush: bool },
    /// The connection is gone: stop.
    Stop,
}

impl Outbox {
    /// An empty outbox that holds at most `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    capacity,
                    flush: false,
                    close: None,
                    closed: false,
                    done: false,
                }),
                work: Notify::new(),
                room: Notify::new(),
                closed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or a call that can panic with it held
        // corrupting the queue; a poisoned lock still holds a consistent queue.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a message without waiting. A full queue is a slow consumer: the caller should
    /// close that peer ([`Error::SlowConsumer`]) rather than wait for it.
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<()> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(Error::Closed);
            }
            if state.queue.len() >= state.capacity {
                return Err(Error::SlowConsumer);
            }
            state.queue.push_back(msg.into());
            if state.queue.len() > 1 {
                // The writer has not seen the queue empty since the last wake-up: it will
                // come back for this one without being told (a fan-out saves a wake per message).
                return Ok(());
            }
        }
        self.shared.work.notify_one();
        Ok(())
    }

    /// Queues a message, waiting while the queue is full (back-pressure onto the caller).
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let mut msg = Some(msg.into());
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            {
                let mut state = self.state();
                if state.closed {
                    return Err(Error::Closed);
                }
                if state.queue.len() < state.capacity {
                    if let Some(msg) = msg.take() {
                        state.queue.push_back(msg);
                    }
                    drop(state);
                    self.shared.work.notify_one();
                    return Ok(());
                }
                // Register before unlocking, so a wake-up between the two is not lost.
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// How many messages it holds at most.
    pub fn capacity(&self) -> usize {
        self.state().capacity
    }

    /// Waits until at most `n` messages wait to be written, or the outbox is closed. A sender
    /// that is about to hand the queue over to [`try_send`](Self::try_send)ers (a resumed
    /// member going live) leaves them room this way.
    pub async fn drained_to(&self, n: usize) {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            {
                let state = self.state();
                if state.closed || state.queue.len() <= n {
                    return;
                }
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// Whether the outbox takes no more messages (closing, or the writer has stopped).
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Resolves once the outbox is closed: a close was requested (by anyone holding it, e.g. a
    /// room closing a slow consumer) or the writer stopped.
    pub async fn closed(&self) {
        loop {
            let closed = self.shared.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.state().closed {
                return;
            }
            closed.await;
        }
    }

    /// How many messages wait to be written.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Whether no message waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the writer to flush what tungstenite holds (the pong it queued for a ping).
    pub(crate) fn request_flush(&self) {
        self.state().flush = true;
        self.shared.work.notify_one();
    }

    /// Asks the writer to write what is queued, then `frame`, then stop; the connection's reader
    /// sees it and ends the connection. With `discard`, what is
    /// queued is dropped first (a slow consumer would not read it anyway). Later messages are
    /// refused. Only the first request counts.
    pub fn request_close(&self, frame: CloseFrame, discard: bool) {
        {
            let mut state = self.state();
            if state.closed {
                return;
            }
            state.closed = true;
            state.close = Some(frame);
            if discard {
                state.queue = VecDeque::new();
            }
        }
        self.shared.work.notify_one();
        self.shared.room.notify_waiters();
        self.shared.closed.notify_waiters();
    }

    /// The connection is over: refuse messages, drop what waits, and let the writer stop.
    pub(crate) fn shut(&self) {
        {
            let mut state = self.state();
            state.closed = true;
            state.done = true;
            state.queue = VecDeque::new();
        }
        self.shared.work.notify_one();
        self.shared.room.notify_waiters();
        self.shared.closed.notify_waiters();
    }

    /// The writer's side: what to do next, one message at a time.
    #[cfg(test)]
    pub(crate) fn next(&self) -> Next {
        let mut one = VecDeque::with_capacity(1);
        match self.next_batch(&mut one, 1) {
            Next::Batch => Next::Message(one.pop_front().expect("a batch of one")),
            other => other,
        }
    }

    /// The writer's side: moves up to `max` waiting messages into `out` under one lock and
    /// wakes the senders waiting for room ([`Next::Batch`]); or says what else to do.
    pub(crate) fn next_batch(&self, out: &mut VecDeque<Message>, max: usize) -> Next {
        let mut state = self.state();
        if !state.queue.is_empty() {
            if state.queue.len() <= max && out.is_empty() {
                // Take the whole queue, leaving the caller's empty one (and its capacity).
                std::mem::swap(&mut state.queue, out);
            } else {
                let n = max.min(state.queue.len());
                out.extend(state.queue.drain(..n));
            }
            drop(state);
            self.shared.room.notify_waiters();
            return Next::Batch;
        }
        if let Some(frame) = state.close.take() {
            return Next::Close(frame);
        }
        if state.done {
            return Next::Stop;
        }
        if state.queue.capacity() > KEEP_CAPACITY {
            state.queue = VecDeque::new();
        }
        Next::Idle {
            flush: std::mem::take(&mut state.flush),
        }
    }

    /// The writer's side: waits until [`next`](Self::next) may have something new.
    pub(crate) async fn work(&self) {
        self.shared.work.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn close_frame(code: u16) -> CloseFrame {
        CloseFrame {
            code: code.into(),
            reason: "".into(),
        }
    }

    fn text(next: Next) -> String {
        match next {
            Next::Message(Message::Text(t)) => t.as_str().to_owned(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn drained_to_waits_for_the_writer() {
        let outbox = Outbox::new(4);
        for t in ["a", "b", "c", "d"] {
            outbox.try_send(Message::text(t)).unwrap();
        }
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.drained_to(1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "4 queued is more than 1");
        for _ in 0..3 {
            let _ = outbox.next();
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once 1 is left")
            .unwrap();
    }

    #[test]
    fn a_full_outbox_is_a_slow_consumer() {
        let outbox = Outbox::new(2);
        outbox.try_send(Message::text("a")).unwrap();
        outbox.try_send(Message::text("b")).unwrap();
        assert!(matches!(
            outbox.try_send(Message::text("c")),
            Err(Error::SlowConsumer)
        ));
        assert_eq!(text(outbox.next()), "a");
        outbox.try_send(Message::text("c")).unwrap();
        assert_eq!(text(outbox.next()), "b");
        assert_eq!(text(outbox.next()), "c");
        assert!(matches!(outbox.next(), Next::Idle { flush: false }));
    }

    #[test]
    fn close_comes_after_what_is_queued_and_refuses_more() {
        let outbox = Outbox::new(4);
        outbox.try_send(Message::text("last words")).unwrap();
        outbox.request_close(close_frame(1000), false);
        assert!(matches!(
            outbox.try_send(Message::text("late")),
            Err(Error::Closed)
        ));
        assert_eq!(text(outbox.next()), "last words");
        assert!(matches!(outbox.next(), Next::Close(_)));
    }

    #[test]
    fn a_slow_consumer_close_discards_the_queue() {
        let outbox = Outbox::new(4);
        outbox.try_send(Message::text("unread")).unwrap();
        outbox.request_close(close_frame(4001), true);
        assert!(matches!(outbox.next(), Next::Close(_)));
    }

    #[test]
    fn flush_requests_are_reported_once() {
        let outbox = Outbox::new(4);
        outbox.request_flush();
        assert!(matches!(outbox.next(), Next::Idle { flush: true }));
        assert!(matches!(outbox.next(), Next::Idle { flush: false }));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_when_shut() {
        let outbox = Outbox::new(1);
        outbox.send(Message::text("a")).await.unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(Message::text("b")).await }
        });
        // Still waiting while the queue is full…
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // …and through once the writer takes a message.
        assert_eq!(text(outbox.next()), "a");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(text(outbox.next()), "b");

        outbox.send(Message::text("c")).await.unwrap();
        let blocked = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(Message::text("d")).await }
        });
        tokio::task::yield_now().await;
        outbox.shut();
        let result = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(result, Err(Error::Closed)));
        assert!(matches!(outbox.next(), Next::Stop));
    }
}
