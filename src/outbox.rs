//! The outbox: a connection's bounded send queue, shared by whoever sends to the peer (its own
//! handler, a room, a timer) and drained by the connection's writer task.
//!
//! It is bounded in **bytes** (the payloads waiting), not in messages: a burst of short lines
//! and one long history page weigh what they cost. Two kinds of sender share the budget:
//! - *live* senders (a room fanning a message out) never wait: [`Outbox::try_send`] takes up to
//!   the whole budget, and past it the peer is a slow consumer, closed by the caller;
//! - the connection's *own* replies (answers, a replay, history pages) wait for room instead
//!   ([`Outbox::has_room`] / [`Outbox::room`]), and only while at most half the budget is
//!   taken — so a replay never leaves live deliveries without room, and what one connection
//!   holds stays within its budget plus the message in hand.
//!
//! A peer that stops reading altogether is caught by the writer's write timeout
//! (`connection.rs`), not here: a queue below its budget says nothing about a stalled socket.
//!
//! Why not `tokio::sync::mpsc`: a bounded mpsc channel allocates a block of 32 slots up front
//! (about 2 KiB with tungstenite's `Message`), and most chat connections are idle most of the
//! time. This queue is a `VecDeque` behind a mutex that is never held across an `.await`: an
//! idle connection pays for an empty deque and two `Notify`s, a busy one for what it queues.
//! It also carries the two control signals the writer needs besides messages — "flush now"
//! (for the automatic pong) and "close with this frame" — so neither can be stuck behind a full
//! queue.
//!
//! And it counts: messages queued, and messages the writer has flushed into the socket. The
//! [`CloseGate`](crate::gate::CloseGate) under the connection holds the peer's close frame back
//! until everything queued before it is written (`Outbox::poll_written`), so the answer to a
//! close never overtakes a reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

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
    /// The connection's handler is asking for its next message: what it answers to every
    /// message before is queued (see [`Outbox::set_reading`]).
    reading: AtomicBool,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Message>,
    /// Payload bytes in `queue`.
    bytes: usize,
    /// Most payload bytes `queue` may hold (live senders; replies wait at half of it).
    budget: usize,
    flush: bool,
    close: Option<CloseFrame>,
    /// No more messages are accepted: a close was requested or the writer stopped.
    closed: bool,
    /// The writer should stop once the queue is written (the connection is gone).
    done: bool,
    /// Messages ever queued.
    pushed: u64,
    /// Messages the writer ever took from the queue.
    taken: u64,
    /// Messages the writer ever flushed into the socket (the first `written` queued).
    written: u64,
    /// The connection's reader, waiting in [`Outbox::poll_written`].
    reader: Option<Waker>,
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
    /// An empty outbox that holds at most `budget` payload bytes (and always one message,
    /// however large).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    bytes: 0,
                    budget,
                    flush: false,
                    close: None,
                    closed: false,
                    done: false,
                    pushed: 0,
                    taken: 0,
                    written: 0,
                    reader: None,
                }),
                work: Notify::new(),
                room: Notify::new(),
                closed: Notify::new(),
                reading: AtomicBool::new(false),
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

    /// Queues a message without waiting. A message that would take the queue past its budget
    /// is a slow consumer: the caller should close that peer ([`Error::SlowConsumer`]) rather
    /// than wait for it.
    pub fn try_send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        {
            let mut state = self.state();
            if state.closed {
                return Err(Error::Closed);
            }
            let len = msg.len();
            if !state.queue.is_empty() && state.bytes + len > state.budget {
                return Err(Error::SlowConsumer);
            }
            state.bytes += len;
            state.pushed += 1;
            state.queue.push_back(msg);
            if state.queue.len() > 1 {
                // The writer has not seen the queue empty since the last wake-up: it will
                // come back for this one without being told (a fan-out saves a wake per message).
                return Ok(());
            }
        }
        self.shared.work.notify_one();
        Ok(())
    }

    /// Whether a reply of `len` bytes may be queued now: the queue is empty, or it stays
    /// within half the budget (the other half is the live senders'). `Err(Closed)` once the
    /// outbox takes nothing more.
    pub fn has_room(&self, len: usize) -> Result<bool> {
        let state = self.state();
        if state.closed {
            return Err(Error::Closed);
        }
        Ok(state.queue.is_empty() || state.bytes + len <= state.budget / 2)
    }

    /// Resolves when [`has_room`](Self::has_room) may have changed: the writer took messages,
    /// or the outbox closed. Registered before it checks, so no wake-up is lost.
    pub async fn room(&self, len: usize) {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !matches!(self.has_room(len), Ok(false)) {
                return;
            }
            room.await;
        }
    }

    /// Queues a reply the caller waited room for with [`has_room`](Self::has_room) (it may
    /// take the queue a message past half the budget, never the live senders' limit into
    /// account: it is the connection's own answer).
    pub fn push(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        {
            let mut state = self.state();
            if state.closed {
                return Err(Error::Closed);
            }
            state.bytes += msg.len();
            state.pushed += 1;
            state.queue.push_back(msg);
        }
        self.shared.work.notify_one();
        Ok(())
    }

    /// Queues a reply, waiting while the queue holds half its budget or more (back-pressure
    /// onto the caller). A connection waits with [`Connection::send`](crate::connection::Connection::send)
    /// instead, which keeps its timers running meanwhile.
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        while !self.has_room(msg.len())? {
            self.room(msg.len()).await;
        }
        self.push(msg)
    }

    /// The most payload bytes it holds for live senders.
    pub fn budget(&self) -> usize {
        self.state().budget
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

    /// Payload bytes waiting to be written.
    pub fn bytes(&self) -> usize {
        self.state().bytes
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
                state.bytes = 0;
            }
        }
        self.shared.work.notify_one();
        self.shared.room.notify_waiters();
        self.shared.closed.notify_waiters();
    }

    /// The connection is over: refuse messages, drop what waits, and let the writer stop.
    pub(crate) fn shut(&self) {
        let reader = {
            let mut state = self.state();
            state.closed = true;
            state.done = true;
            state.queue = VecDeque::new();
            state.bytes = 0;
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
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
                state.bytes = 0;
                state.taken += out.len() as u64;
            } else {
                let n = max.min(state.queue.len());
                let before = out.len();
                out.extend(state.queue.drain(..n));
                let taken: usize = out.iter().skip(before).map(Message::len).sum();
                state.bytes -= taken;
                state.taken += n as u64;
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

    /// The writer's side: everything it took is flushed into the socket (see
    /// [`poll_written`](Self::poll_written)).
    pub(crate) fn flushed(&self) {
        let reader = {
            let mut state = self.state();
            state.written = state.taken;
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// The reader's side: the connection's handler is asking for its next message (`true`), or
    /// is waiting to queue a reply (`false`). Only the one task that reads the connection sets
    /// and reads it.
    pub(crate) fn set_reading(&self, reading: bool) {
        self.shared.reading.store(reading, Ordering::Relaxed);
    }

    /// See [`set_reading`](Self::set_reading).
    pub(crate) fn is_reading(&self) -> bool {
        self.shared.reading.load(Ordering::Relaxed)
    }

    /// How many messages were ever queued: a mark for [`poll_written`](Self::poll_written).
    pub(crate) fn pushed(&self) -> u64 {
        self.state().pushed
    }

    /// The reader's side: ready once the first `mark` messages ever queued are flushed into the
    /// socket — or will never be (dropped for a slow consumer, the writer stopped): the writer
    /// is done. Otherwise wakes `cx` when that may have changed.
    pub(crate) fn poll_written(&self, mark: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state();
        if state.written >= mark || state.done {
            return Poll::Ready(());
        }
        match &mut state.reader {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
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

    #[test]
    fn written_counts_what_the_writer_flushed_not_what_it_took() {
        let outbox = Outbox::new(1024);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            outbox.poll_written(0, &mut cx).is_ready(),
            "nothing to wait for"
        );
        outbox.try_send(Message::text("one")).unwrap();
        outbox.push(Message::text("two")).unwrap();
        let mark = outbox.pushed();
        assert_eq!(mark, 2);
        outbox.try_send(Message::text("after the mark")).unwrap();
        let mut batch = VecDeque::new();
        assert!(matches!(outbox.next_batch(&mut batch, 2), Next::Batch));
        // Taken, not yet flushed: a close answered now would still overtake them.
        assert!(outbox.poll_written(mark, &mut cx).is_pending());
        outbox.flushed();
        assert!(outbox.poll_written(mark, &mut cx).is_ready());
        assert!(outbox.poll_written(mark + 1, &mut cx).is_pending());
        // What will never be written is not waited for.
        outbox.shut();
        assert!(outbox.poll_written(mark + 1, &mut cx).is_ready());
    }

    #[tokio::test]
    async fn room_waits_for_the_writer_to_take_half_the_budget() {
        let outbox = Outbox::new(8);
        for t in ["aa", "bb", "cc", "dd"] {
            outbox.try_send(Message::text(t)).unwrap();
        }
        assert!(
            !outbox.has_room(1).unwrap(),
            "8 bytes queued, a reply gets 4"
        );
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.room(1).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        for _ in 0..3 {
            let _ = outbox.next();
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once 2 bytes are left")
            .unwrap();
        assert!(outbox.has_room(2).unwrap());
        assert!(!outbox.has_room(3).unwrap());
    }

    #[test]
    fn a_full_outbox_is_a_slow_consumer() {
        let outbox = Outbox::new(4);
        outbox.try_send(Message::text("a")).unwrap();
        outbox.try_send(Message::text("bcd")).unwrap();
        assert_eq!(outbox.bytes(), 4);
        assert!(matches!(
            outbox.try_send(Message::text("e")),
            Err(Error::SlowConsumer)
        ));
        assert_eq!(text(outbox.next()), "a");
        outbox.try_send(Message::text("e")).unwrap();
        assert_eq!(text(outbox.next()), "bcd");
        assert_eq!(text(outbox.next()), "e");
        assert_eq!(outbox.bytes(), 0);
        assert!(matches!(outbox.next(), Next::Idle { flush: false }));
    }

    #[test]
    fn one_message_larger_than_the_budget_still_goes() {
        let outbox = Outbox::new(4);
        outbox.try_send(Message::text("a long line")).unwrap();
        assert!(matches!(
            outbox.try_send(Message::text("x")),
            Err(Error::SlowConsumer)
        ));
        assert_eq!(text(outbox.next()), "a long line");
        assert!(
            outbox.has_room(100).unwrap(),
            "an empty queue takes any reply"
        );
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
        let outbox = Outbox::new(2);
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
