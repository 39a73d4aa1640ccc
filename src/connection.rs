//! One WebSocket connection, the same for every mode: the demo pair, the echo server and the chat
//! server all stand on it.
//!
//! The socket is split in two. The *writer task* owns the sending half and is fed by a bounded
//! queue, the [`Outbox`]: it feeds every message that is waiting (up to `max_batch`) and then
//! flushes once, so a burst costs one write, not one per message. The *reading half* stays with
//! the connection's own task, which calls [`Connection::read_msg`]; that call also keeps the link
//! honest: it sends our pings on a timer, closes a peer that has been silent for the idle timeout,
//! nudges the writer so that the automatic pong leaves at once, and turns a shutdown into a close
//! frame with code 1001. Protocol errors become close frames with the right code (1002, 1007,
//! 1009) in one place, [`Error::close_code`].
//!
//! What a connection *does* is a [`Handler`]; the server and client entry points run one over a
//! `Connection` and then [`Connection::finish`] it: close handshake under a timeout, writer done.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::config::ConnectionConfig;
pub use crate::error::CLOSE_SLOW_CONSUMER;
pub use crate::gate::CloseGate;
use crate::metrics;
use crate::outbox::Next;
pub use crate::outbox::Outbox;
pub use crate::transport::{BoxedTransport, ReadAhead, Transport};
use crate::{Error, Result};

/// The longest close reason the protocol allows (a control frame carries 125 bytes, 2 are the code).
const MAX_CLOSE_REASON: usize = 123;

/// A WebSocket over a transport behind a [`CloseGate`]: the peer's close is answered only after
/// what was queued before it.
pub type Socket = WebSocketStream<CloseGate>;

/// What the peer sent: a whole data message. Control frames are handled by the connection itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (valid UTF-8, checked).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl From<Incoming> for Message {
    fn from(msg: Incoming) -> Self {
        match msg {
            Incoming::Text(text) => Message::Text(text),
            Incoming::Binary(data) => Message::Binary(data),
        }
    }
}

/// What one turn of the link brought (see [`Connection::turn`]).
enum Turn {
    Frame(Option<std::result::Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Timer,
    Shutdown,
    ClosedByOther,
}

/// One open WebSocket connection: the reading half, the writer task's queue, and the timers.
pub struct Connection {
    stream: SplitStream<Socket>,
    outbox: Outbox,
    writer: JoinHandle<()>,
    shutdown: CancellationToken,
    peer: Option<SocketAddr>,
    ping_interval: Duration,
    idle_timeout: Duration,
    close_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    last_heard: Instant,
    next_ping: Instant,
    /// Set once the close handshake has begun (our close queued, or the peer's received): it
    /// must be over by then.
    close_deadline: Option<Instant>,
    /// The close frame the peer sent, if it started the close.
    peer_close: Option<CloseFrame>,
    /// The stream has ended: nothing more will be read.
    ended: bool,
    /// A data message that arrived while [`Connection::send`] waited, for the next read
    /// (boxed: an idle connection carries one pointer for it).
    held: Option<Box<Incoming>>,
    /// The subprotocol agreed in the handshake.
    subprotocol: Option<&'static str>,
    /// The token that came with the upgrade request (`Authorization: Bearer …` or `?token=`).
    token: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("closing", &self.close_deadline.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps an established WebSocket (handshake done) and starts its writer task.
    /// `shutdown` is the server's (or the client's) stop signal: when it fires, the connection
    /// closes with 1001.
    pub fn new(
        mut socket: Socket,
        peer: Option<SocketAddr>,
        config: &ConnectionConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let outbox = Outbox::new(config.outbox_bytes);
        socket.get_mut().arm(outbox.clone());
        let (sink, stream) = socket.split();
        let writer = tokio::spawn(write_loop(sink, outbox.clone(), Pace::new(config)));
        let now = Instant::now();
        let mut conn = Self {
            stream,
            outbox,
            writer,
            shutdown,
            peer,
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
            close_timeout: config.close_timeout,
            timer: Box::pin(tokio::time::sleep_until(now)),
            last_heard: now,
            next_ping: now + config.ping_interval,
            close_deadline: None,
            peer_close: None,
            ended: false,
            held: None,
            subprotocol: None,
            token: None,
        };
        conn.rearm_timer();
        conn
    }

    /// Runs the server side of the WebSocket protocol over an upgraded transport.
    pub async fn accept(
        transport: BoxedTransport,
        peer: Option<SocketAddr>,
        config: &ConnectionConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let ws_config = Some(config.websocket_config());
        let transport = CloseGate::server(transport);
        let socket = WebSocketStream::from_raw_socket(transport, Role::Server, ws_config).await;
        Self::new(socket, peer, config, shutdown)
    }

    /// Records the subprotocol agreed in the handshake.
    pub fn with_subprotocol(mut self, subprotocol: Option<&'static str>) -> Self {
        self.subprotocol = subprotocol;
        self
    }

    /// The subprotocol agreed in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&'static str> {
        self.subprotocol
    }

    /// Records the token the upgrade request carried.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The token the upgrade request carried, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The peer's address, when known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// A handle for sending to this peer from anywhere (a room, a timer task).
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// The close frame the peer sent, when the peer started the close handshake.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_ref()
    }

    /// Sends a message, waiting while the outbox holds half its budget or more. While it waits
    /// the link is kept as [`read_msg`](Self::read_msg) keeps it — pings go out, a silent peer
    /// meets the idle timeout, a shutdown or a close by someone else ends the wait — so a peer
    /// that stops reading cannot park this connection with its timers stopped. A data message
    /// that arrives meanwhile is kept for the next `read_msg` (and no more is read until then).
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        let len = msg.len();
        match self.outbox.has_room(len) {
            Ok(true) => {}
            // Boxed: waiting is the exception, and a turn of the link inline would size the
            // task of every caller (the session's, for as long as the connection lives).
            Ok(false) => Box::pin(self.wait_for_room(len)).await?,
            Err(_) => return Err(self.outbox_closed()),
        }
        self.outbox.push(msg).map_err(|_| self.outbox_closed())
    }

    /// Keeps the link until the outbox has room for a reply of `len` bytes. A close read meanwhile
    /// waits for this reply too (the [`CloseGate`] lets it through only once the handler asks
    /// for its next message).
    async fn wait_for_room(&mut self, len: usize) -> Result<()> {
        self.outbox.set_reading(false);
        loop {
            match self.outbox.has_room(len) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(_) => return Err(self.outbox_closed()),
            }
            if self.ended {
                return Err(Error::Closed);
            }
            let read = self.held.is_none();
            tokio::select! {
                () = self.outbox.room(len) => {}
                turn = Self::turn(
                    &mut self.stream, &mut self.timer, &self.shutdown, &self.outbox,
                    self.close_deadline.is_some(), read,
                ) => {
                    if let Some(data) = self.on_turn(turn)? {
                        self.held = Some(Box::new(data));
                    }
                }
            }
        }
    }

    /// Reads the next data message. `Ok(None)` means the connection is over: the peer closed it,
    /// or we closed it (shutdown, [`Connection::start_close`]) and the handshake has ended.
    ///
    /// Calling it says that the replies to every message read before are queued: the peer's
    /// close, if it comes next, is answered once they are written (see [`CloseGate`]).
    ///
    /// Cancel-safe: it may lose a `select!` without losing a message.
    pub async fn read_msg(&mut self) -> Result<Option<Incoming>> {
        if let Some(held) = self.held.take() {
            return Ok(Some(*held));
        }
        self.outbox.set_reading(true);
        loop {
            if self.ended {
                return Ok(None);
            }
            let turn = Self::turn(
                &mut self.stream,
                &mut self.timer,
                &self.shutdown,
                &self.outbox,
                self.close_deadline.is_some(),
                true,
            )
            .await;
            if let Some(data) = self.on_turn(turn)? {
                return Ok(Some(data));
            }
        }
    }

    /// Waits for one thing to happen on the link: a frame (when `read`), the timer, a shutdown,
    /// or a close requested by someone else. Cancel-safe: nothing is taken until it resolves.
    async fn turn(
        stream: &mut SplitStream<Socket>,
        timer: &mut Pin<Box<Sleep>>,
        shutdown: &CancellationToken,
        outbox: &Outbox,
        closing: bool,
        read: bool,
    ) -> Turn {
        tokio::select! {
            frame = stream.next(), if read => Turn::Frame(frame),
            () = timer.as_mut() => Turn::Timer,
            () = shutdown.cancelled(), if !closing => Turn::Shutdown,
            () = outbox.closed(), if !closing => Turn::ClosedByOther,
        }
    }

    /// Acts on what [`turn`](Self::turn) brought; returns a data message if one arrived.
    fn on_turn(&mut self, turn: Turn) -> Result<Option<Incoming>> {
        match turn {
            Turn::Frame(None) => {
                self.ended = true;
                Ok(None)
            }
            Turn::Frame(Some(Ok(msg))) => {
                self.last_heard = Instant::now();
                Ok(self.on_message(msg))
            }
            Turn::Frame(Some(Err(err))) => Err(self.on_error(err.into())),
            Turn::Timer => match self.on_timer() {
                Some(err) => Err(err),
                None => Ok(None),
            },
            Turn::Shutdown => {
                self.start_close(CloseCode::Away, "shutting down");
                Ok(None)
            }
            Turn::ClosedByOther => Err(self.outbox_closed()),
        }
    }

    /// The outbox refuses messages. If we did not start a close, someone else did (a room
    /// closing a slow consumer, the writer after its write timeout): the close frame is on its
    /// way; finish the handshake.
    fn outbox_closed(&mut self) -> Error {
        if self.close_deadline.is_some() || self.ended {
            return Error::Closed;
        }
        self.close_deadline = Some(Instant::now() + self.close_timeout);
        self.rearm_timer();
        Error::SlowConsumer
    }

    /// Starts the close handshake with this code and reason (once; later calls do nothing).
    /// Keep calling [`read_msg`](Self::read_msg) until it returns `None` to complete it, or call
    /// [`finish`](Self::finish).
    pub fn start_close(&mut self, code: CloseCode, reason: &str) {
        if self.close_deadline.is_some() || self.ended {
            return;
        }
        let frame = CloseFrame {
            code,
            reason: truncate_reason(reason).into(),
        };
        debug!(peer = ?self.peer, code = u16::from(code), reason = %crate::shown::Shown(reason), "closing");
        // A slow consumer's queue is dropped: it would not read it, and the close should go first.
        let discard = code == CloseCode::Library(CLOSE_SLOW_CONSUMER);
        self.outbox.request_close(frame, discard);
        self.close_deadline = Some(Instant::now() + self.close_timeout);
        self.rearm_timer();
    }

    /// Ends the connection after its handler returned `outcome`: closes with the code the outcome
    /// calls for (1000 when it is `Ok`), completes the close handshake within the close timeout,
    /// and waits for the writer. Never takes longer than the close timeout (twice, at worst).
    pub async fn finish(mut self, outcome: &Result<()>) {
        let failed_fast = match outcome {
            Ok(()) => {
                self.start_close(CloseCode::Normal, "");
                false
            }
            Err(err) => {
                if let Some(code) = err.close_code() {
                    self.start_close(code, &err.to_string());
                }
                // After a broken frame nothing more can be trusted from the peer: fail fast.
                matches!(
                    err,
                    Error::Protocol(_)
                        | Error::InvalidUtf8
                        | Error::TooBig(_)
                        | Error::Closed
                        | Error::Io(_)
                )
            }
        };
        if !failed_fast {
            // Read (and drop) until the peer answers our close, or the deadline passes.
            while let Ok(Some(_)) = self.read_msg().await {}
        }
        self.outbox.shut();
        let mut writer = self.writer;
        if tokio::time::timeout(self.close_timeout, &mut writer)
            .await
            .is_err()
        {
            trace!(peer = ?self.peer, "writer did not finish in time");
            writer.abort();
        }
    }

    /// Handles one frame that arrived; returns it when it is data.
    fn on_message(&mut self, msg: Message) -> Option<Incoming> {
        match msg {
            Message::Text(text) => {
                metrics::bump(&metrics::MESSAGES_IN);
                Some(Incoming::Text(text))
            }
            Message::Binary(data) => {
                metrics::bump(&metrics::MESSAGES_IN);
                Some(Incoming::Binary(data))
            }
            Message::Ping(_) => {
                // tungstenite queued the pong; it leaves on the next write or flush, so ask now.
                self.outbox.request_flush();
                None
            }
            Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(frame) => {
                // tungstenite queued the reply; the next read flushes it and then ends the stream.
                // The close gate let the close up only once what we queued before was written,
                // so the reply follows it. A close that answers ours is not the peer closing.
                if self.close_deadline.is_none() {
                    self.peer_close = Some(frame.unwrap_or(CloseFrame {
                        code: CloseCode::Status,
                        reason: Utf8Bytes::default(),
                    }));
                    self.close_deadline = Some(Instant::now() + self.close_timeout);
                    self.rearm_timer();
                }
                None
            }
        }
    }

    /// Turns a read error into a close frame with the right code.
    fn on_error(&mut self, err: Error) -> Error {
        if err.is_disconnect() {
            self.ended = true;
        } else if let Some(code) = err.close_code() {
            self.start_close(code, &err.to_string());
        }
        err
    }

    /// The one timer fired: close deadline, idle timeout or ping, whichever is due.
    fn on_timer(&mut self) -> Option<Error> {
        let now = Instant::now();
        if let Some(deadline) = self.close_deadline {
            if now >= deadline {
                debug!(peer = ?self.peer, "close handshake timed out");
                self.ended = true;
                return None;
            }
        } else if now >= self.last_heard + self.idle_timeout {
            let err = Error::IdleTimeout(self.idle_timeout);
            self.start_close(CloseCode::Away, "idle timeout");
            return Some(err);
        } else if !self.ping_interval.is_zero() && now >= self.next_ping {
            let _ = self.outbox.try_send(Message::Ping(Bytes::new()));
            self.next_ping = now + self.ping_interval;
        }
        self.rearm_timer();
        None
    }

    fn rearm_timer(&mut self) {
        let next = match self.close_deadline {
            Some(deadline) => deadline,
            None if self.ping_interval.is_zero() => self.last_heard + self.idle_timeout,
            None => (self.last_heard + self.idle_timeout).min(self.next_ping),
        };
        self.timer.as_mut().reset(next);
    }
}

/// A file a handler serves over plain HTTP (its page, script, style sheet).
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The request path, e.g. `/app.js`.
    pub path: &'static str,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The content.
    pub body: &'static str,
}

/// What a connection does: the demo server, the echo server and the chat server are handlers.
///
/// `handle` reads with [`Connection::read_msg`] until it returns `None` or an error, and sends
/// through the connection or its [`Outbox`]. It does not need to close: the caller runs
/// [`Connection::finish`] with whatever `handle` returned.
pub trait Handler: Send + Sync + 'static {
    /// The WebSocket subprotocols this handler speaks, in order of preference. The server
    /// agrees to the first one the client offers; a client that offers none gets none.
    fn subprotocols(&self) -> &'static [&'static str] {
        &[]
    }

    /// The files served to plain `GET`s (the first one on `/`), embedded in the binary.
    fn assets(&self) -> &'static [Asset] {
        &[Asset {
            path: "/",
            content_type: "text/plain; charset=utf-8",
            body: "nanachat: connect a WebSocket client to this address.\n",
        }]
    }

    /// Decides, before the upgrade, whether a request may open a WebSocket, from the token it
    /// carried (if any) and the subprotocol agreed: `Err(reason)` refuses it with 401.
    fn authorize(
        &self,
        token: Option<&str>,
        subprotocol: Option<&'static str>,
    ) -> std::result::Result<(), String> {
        let _ = (token, subprotocol);
        Ok(())
    }

    /// Appends this handler's metrics (Prometheus text format) for `/metrics`.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// Whether the handler can serve now, for `/readyz`: `Err` names what it cannot reach
    /// (answered 503). A handler without outside services is always ready.
    fn ready(&self) -> impl Future<Output = std::result::Result<(), String>> + Send {
        std::future::ready(Ok(()))
    }

    /// Called once on shutdown, after every connection has ended: finish what is in flight
    /// (the chat server waits here for its store's last commits).
    fn drain(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Routes of an HTTP API, served under `/api/v1` on the same port; none by default.
    fn api(&self) -> Option<axum::Router> {
        None
    }

    /// Serves one connection.
    fn handle(&self, conn: &mut Connection) -> impl Future<Output = Result<()>> + Send;
}

/// How a connection ended, for the disconnect log line.
#[derive(Debug)]
pub struct Ended {
    /// What the handler returned (a peer closing its side counts as `Ok`).
    pub outcome: Result<()>,
    /// The close frame the peer sent, if the peer closed.
    pub peer_close: Option<CloseFrame>,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.outcome, &self.peer_close) {
            (Err(err), _) => write!(f, "{err}"),
            (Ok(()), Some(frame)) if frame.reason.is_empty() => {
                write!(f, "peer closed with {}", u16::from(frame.code))
            }
            (Ok(()), Some(frame)) => {
                write!(
                    f,
                    "peer closed with {} {}",
                    u16::from(frame.code),
                    frame.reason
                )
            }
            (Ok(()), None) => write!(f, "closed"),
        }
    }
}

/// Runs `handler` over `conn` and then ends the connection properly. Returns how it ended,
/// for the caller to log.
pub async fn serve_connection<H: Handler>(handler: &H, mut conn: Connection) -> Ended {
    let outcome = handler.handle(&mut conn).await;
    let outcome = match outcome {
        // The peer closing its side is the normal end of a connection, not a failure.
        Err(Error::Closed) => Ok(()),
        other => other,
    };
    let peer_close = conn.peer_close().cloned();
    // Boxed: the close handshake is rare next to the idle wait, and should not size every
    // connection's task.
    Box::pin(conn.finish(&outcome)).await;
    Ended {
        outcome,
        peer_close,
    }
}

/// The writer's limits, from the connection's config.
#[derive(Debug, Clone, Copy)]
struct Pace {
    max_batch: usize,
    write_timeout: Duration,
    close_timeout: Duration,
}

impl Pace {
    fn new(config: &ConnectionConfig) -> Self {
        Self {
            max_batch: config.max_batch,
            write_timeout: config.write_timeout,
            close_timeout: config.close_timeout,
        }
    }
}

/// Why the writer stopped.
enum Stopped {
    /// The socket took no data for the write timeout.
    Stalled,
    /// The link failed (or was closed).
    Failed(Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for Stopped {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        Stopped::Failed(err.into())
    }
}

/// One socket operation under the write timeout: each writes at most the write buffer and one
/// message, so a peer that does not take that much in the time is not reading. The timer is
/// made only once the operation has had to wait (a boxed `Sleep`): most writes finish at once,
/// and an idle writer should not carry a timer's space in its task.
async fn timed<T>(
    limit: Duration,
    op: impl Future<Output = std::result::Result<T, tokio_tungstenite::tungstenite::Error>>,
) -> std::result::Result<T, Stopped> {
    let mut op = std::pin::pin!(op);
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(done) = op.as_mut().poll(cx) {
            return std::task::Poll::Ready(done.map_err(Stopped::from));
        }
        let deadline = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        deadline.as_mut().poll(cx).map(|()| Err(Stopped::Stalled))
    })
    .await
}

/// The writer task: feeds what waits in the outbox, up to `max_batch` messages, then flushes
/// once; on a close request, writes the close frame after what was queued, and stops. A socket
/// that takes no data for the write timeout makes the peer a slow consumer: the queue is
/// dropped, the close (4001) is tried once more within the close timeout, and the writer stops.
async fn write_loop(mut sink: SplitSink<Socket, Message>, outbox: Outbox, pace: Pace) {
    let limit = pace.write_timeout;
    let result: std::result::Result<(), Stopped> = async {
        let mut batch = std::collections::VecDeque::new();
        loop {
            let mut fed = 0;
            let flush = loop {
                match outbox.next_batch(&mut batch, pace.max_batch - fed) {
                    Next::Batch => {
                        let n = batch.len();
                        for msg in batch.drain(..) {
                            timed(limit, sink.feed(msg)).await?;
                        }
                        metrics::MESSAGES_OUT
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        fed += n;
                        if fed >= pace.max_batch {
                            break true;
                        }
                    }
                    #[cfg(test)]
                    Next::Message(_) => unreachable!("next_batch gives batches"),
                    Next::Close(frame) => {
                        timed(limit, sink.send(Message::Close(Some(frame)))).await?;
                        return Ok(());
                    }
                    Next::Stop => return Ok(()),
                    Next::Idle { flush } => {
                        if batch.capacity() > 0 {
                            // An idle connection keeps no buffer of a past burst.
                            batch = std::collections::VecDeque::new();
                        }
                        break flush || fed > 0;
                    }
                }
            };
            if flush {
                timed(limit, sink.flush()).await?;
                outbox.flushed();
                metrics::bump(&metrics::FLUSHES);
            }
            if fed < pace.max_batch {
                outbox.work().await;
            }
        }
    }
    .await;
    match result {
        Ok(()) => {}
        Err(Stopped::Failed(err)) => trace!(cause = %err, "writer stopped"),
        Err(Stopped::Stalled) => {
            metrics::bump(&metrics::WRITE_TIMEOUTS);
            let frame = CloseFrame {
                code: CloseCode::Library(CLOSE_SLOW_CONSUMER),
                reason: format!(
                    "slow consumer: took no data for {}s; resume with join since",
                    limit.as_secs_f64()
                )
                .into(),
            };
            debug!("closing a slow consumer: write timeout");
            // The reader sees the outbox close and finishes the connection.
            outbox.request_close(frame.clone(), true);
            // What was being written still goes first, should the peer read again. (Boxed:
            // rare, and a timer inline would size every writer's task.)
            let _ = Box::pin(tokio::time::timeout(
                pace.close_timeout,
                sink.send(Message::Close(Some(frame))),
            ))
            .await;
        }
    }
    // Whatever happened, nothing more can be written: refuse further messages.
    outbox.shut();
}

/// Cuts a close reason to what fits in a close frame, on a character boundary.
fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_in_a_control_frame() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
