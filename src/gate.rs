//! The close gate: the peer's close frame reaches tungstenite only after every reply queued
//! before it is written.
//!
//! tungstenite answers a close frame by itself, at the moment it reads it, and from then on
//! refuses to send anything else. Our replies go through the [`Outbox`] and the writer task, so
//! a reply still waiting there when the close is read would be lost, and the peer would get our
//! close before answers to messages it sent before its own: a client that sends ten lines and
//! closes would get only some of their answers. One rule for every handler, then, kept below
//! tungstenite rather than in each handler: **the answer to a close goes after every reply to
//! what came before it**.
//!
//! [`CloseGate`] sits between tungstenite and the byte stream and follows the frames going by
//! (a frame header tells where the next frame starts; payloads are skipped, never copied). At
//! the first byte of a close frame it stops handing bytes up. The next time the connection's
//! handler asks for a message (`Outbox::set_reading` — it has queued its answers to every
//! message before the close), the gate notes how many messages were queued by then, and lets
//! the close through once the writer has flushed that many into the socket
//! (`Outbox::poll_written`); tungstenite then reads it and answers as it always does, same
//! code. Whatever is queued later (a room's delivery, a ping) is not waited for.
//!
//! A peer that closes and stops reading does not hold the connection: its writer meets the
//! write timeout, drops the queue and stops — and a writer that has stopped lets the close
//! through. A shutdown or a close of our own is written after the queue, then the writer stops,
//! and the peer's close reaches tungstenite as the answer to ours.
//!
//! On the client side the gate first lets through the server's handshake answer and nothing
//! past it ([`CloseGate::client`]), so that it starts following frames at the first one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::outbox::Outbox;
use crate::transport::BoxedTransport;

/// The opcode of a close frame (RFC 6455, 5.5.1).
const OPCODE_CLOSE: u8 = 0x8;

/// The byte stream under a [`Connection`](crate::connection::Connection)'s WebSocket, holding
/// the peer's close frame back until what was queued before it is written (see the
/// [module](self)).
pub struct CloseGate {
    inner: BoxedTransport,
    /// Where the bytes going up are.
    state: State,
    /// The outbox of the connection, once there is one ([`CloseGate::arm`]).
    outbox: Option<Outbox>,
    /// How many messages had been queued when the handler asked for the message after the
    /// close: those go first.
    mark: Option<u64>,
    /// Bytes read but not handed up yet (from a close frame on, or past the handshake answer);
    /// empty, and unallocated, nearly always.
    held: Vec<u8>,
    /// How many bytes of `held` were handed up.
    taken: usize,
}

impl std::fmt::Debug for CloseGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseGate")
            .field("state", &self.state)
            .field("mark", &self.mark)
            .field("held", &(self.held.len() - self.taken))
            .finish_non_exhaustive()
    }
}

/// Where the bytes handed up are in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the server's handshake answer: `newlines` is how far into a blank line the last bytes
    /// went (1 after `\n`, 2 after `\n\r`).
    Answer { newlines: u8 },
    /// At the first byte of a frame.
    FrameStart,
    /// In a frame header of `size` bytes, `seen` of them so far: the first two, `extended`
    /// bytes of payload length, and a masking key; `len` is the payload length read so far.
    Header {
        seen: u8,
        extended: u8,
        size: u8,
        len: u64,
    },
    /// In a payload: this many bytes left.
    Payload(u64),
    /// The close went up: everything after it goes up as it comes.
    Open,
}

/// How many of `bytes` may go up now, following the frames over them from `state`. Stops at the
/// first byte of a close frame, and right after the handshake answer.
fn admit(state: &mut State, bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        match state {
            State::Open => return bytes.len(),
            State::Answer { newlines } => {
                let byte = bytes[at];
                at += 1;
                *newlines = match (byte, *newlines) {
                    (b'\n', 1 | 2) => {
                        *state = State::FrameStart;
                        return at;
                    }
                    (b'\n', _) => 1,
                    (b'\r', 1) => 2,
                    _ => 0,
                };
            }
            State::FrameStart => {
                if bytes[at] & 0x0f == OPCODE_CLOSE {
                    return at;
                }
                at += 1;
                *state = State::Header {
                    seen: 1,
                    extended: 0,
                    size: 2,
                    len: 0,
                };
            }
            State::Header {
                seen,
                extended,
                size,
                len,
            } => {
                let byte = bytes[at];
                at += 1;
                if *seen == 1 {
                    (*extended, *len) = match byte & 0x7f {
                        126 => (2, 0),
                        127 => (8, 0),
                        short => (0, u64::from(short)),
                    };
                    let mask = if byte & 0x80 != 0 { 4 } else { 0 };
                    *size = 2 + *extended + mask;
                } else if *seen < 2 + *extended {
                    *len = (*len << 8) | u64::from(byte);
                }
                *seen += 1;
                if *seen == *size {
                    *state = match *len {
                        0 => State::FrameStart,
                        n => State::Payload(n),
                    };
                }
            }
            State::Payload(left) => {
                let n = (bytes.len() - at).min(usize::try_from(*left).unwrap_or(usize::MAX));
                at += n;
                *left -= n as u64;
                if *left == 0 {
                    *state = State::FrameStart;
                }
            }
        }
    }
    at
}

impl CloseGate {
    /// The server's side: the stream starts with the first frame.
    pub fn server(inner: BoxedTransport) -> Self {
        Self::new(inner, State::FrameStart)
    }

    /// The client's side: the stream starts with the server's handshake answer, which goes up
    /// alone — what follows it waits for the next read, followed as frames.
    pub fn client(inner: BoxedTransport) -> Self {
        Self::new(inner, State::Answer { newlines: 0 })
    }

    fn new(inner: BoxedTransport, state: State) -> Self {
        Self {
            inner,
            state,
            outbox: None,
            mark: None,
            held: Vec::new(),
            taken: 0,
        }
    }

    /// From now on a close waits for the replies queued in `outbox` before it. Until then
    /// (during a handshake) it would go up as it comes.
    pub(crate) fn arm(&mut self, outbox: Outbox) {
        self.outbox = Some(outbox);
    }

    /// Whether the close at the front of `held` may go up; wakes `cx` when that may change.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(outbox) = &self.outbox else {
            return Poll::Ready(());
        };
        let mark = match self.mark {
            Some(mark) => mark,
            // The handler is waiting to queue a reply (to a message before the close): not
            // yet. It asks for its next message once that is queued, which polls this again.
            None if !outbox.is_reading() => return Poll::Pending,
            None => *self.mark.insert(outbox.pushed()),
        };
        outbox.poll_written(mark, cx)
    }

    /// Hands up what may go up of `held` (at least one byte), the close once it had its turn.
    fn poll_held(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<()> {
        loop {
            let end = self.held.len().min(self.taken + out.remaining());
            let n = admit(&mut self.state, &self.held[self.taken..end]);
            if n > 0 || end == self.taken {
                out.put_slice(&self.held[self.taken..self.taken + n]);
                self.taken += n;
                if self.taken == self.held.len() {
                    // Give the memory back: a connection holds none nearly always.
                    self.held = Vec::new();
                    self.taken = 0;
                }
                return Poll::Ready(());
            }
            ready!(self.poll_release(cx));
            self.state = State::Open;
        }
    }
}

impl AsyncRead for CloseGate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.held.len() {
            ready!(this.poll_held(cx, out));
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
        let fresh = &out.filled()[before..];
        if fresh.is_empty() || this.state == State::Open {
            return Poll::Ready(Ok(()));
        }
        let n = admit(&mut this.state, fresh);
        if n < fresh.len() {
            this.held = fresh[n..].to_vec();
            this.taken = 0;
            out.set_filled(before + n);
        }
        if n == 0 {
            // A close first of all: it waits its turn (the bytes are kept meanwhile).
            ready!(this.poll_held(cx, out));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CloseGate {
    crate::transport::write_through!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    /// One frame: FIN, `opcode`, a payload of `len` bytes, masked or not.
    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![0x80 | opcode];
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        // Payload bytes that look like close opcodes, to be skipped, not taken for frames.
        out.extend(std::iter::repeat_n(0x88, len));
        out
    }

    #[test]
    fn frames_are_followed_in_any_chunks_up_to_the_close() {
        for masked in [true, false] {
            let mut stream = Vec::new();
            for (opcode, len) in [(0x1, 5), (0x2, 0), (0x9, 3), (0x2, 200), (0x1, 70_000)] {
                stream.extend(frame(opcode, len, masked));
            }
            // A fragment, a close in the middle of the message, the rest after.
            stream.extend(frame(0x0, 7, masked));
            let close_at = stream.len();
            stream.extend(frame(0x8, 2, masked));
            stream.extend(frame(0x0, 7, masked));
            for chunk in [1, 2, 3, 7, 64, 1000, stream.len()] {
                let mut state = State::FrameStart;
                let mut admitted = 0;
                for piece in stream.chunks(chunk) {
                    let n = admit(&mut state, piece);
                    admitted += n;
                    if n < piece.len() {
                        break;
                    }
                }
                assert_eq!(admitted, close_at, "masked {masked}, chunks of {chunk}");
                assert_eq!(state, State::FrameStart);
                assert_eq!(admit(&mut state, &stream[close_at..]), 0, "it stays held");
            }
        }
    }

    #[test]
    fn the_handshake_answer_goes_up_alone() {
        for answer in [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"[..],
            &b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n\n"[..],
        ] {
            let mut stream = answer.to_vec();
            stream.extend(frame(0x8, 2, false));
            let mut state = State::Answer { newlines: 0 };
            assert_eq!(admit(&mut state, &stream), answer.len());
            assert_eq!(state, State::FrameStart);
            assert_eq!(admit(&mut state, &stream[answer.len()..]), 0);
        }
    }

    async fn read_some(gate: &mut CloseGate) -> Option<Vec<u8>> {
        let mut buf = vec![0; 4096];
        match tokio::time::timeout(Duration::from_millis(100), gate.read(&mut buf)).await {
            Ok(n) => Some(buf[..n.unwrap()].to_vec()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_close_goes_up_once_what_was_queued_before_it_is_written() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut gate = CloseGate::server(Box::new(ours));
        let outbox = Outbox::new(1 << 16);
        gate.arm(outbox.clone());
        let text = frame(0x1, 5, true);
        let close = frame(0x8, 2, true);
        peer.write_all(&[text.clone(), close.clone()].concat())
            .await
            .unwrap();

        // The handler reads the message, and queues its answer while the close is read.
        outbox.set_reading(true);
        assert_eq!(read_some(&mut gate).await.unwrap(), text);
        outbox.set_reading(false);
        assert_eq!(
            read_some(&mut gate).await,
            None,
            "the answer is not queued yet"
        );
        outbox.push(Message::text("answer")).unwrap();
        outbox.set_reading(true);
        assert_eq!(
            read_some(&mut gate).await,
            None,
            "the answer is not written"
        );
        // Queued after the handler asked for more: not waited for.
        outbox.push(Message::text("a delivery")).unwrap();
        let mut batch = std::collections::VecDeque::new();
        outbox.next_batch(&mut batch, 1);
        assert_eq!(read_some(&mut gate).await, None, "taken is not written");
        outbox.flushed();
        assert_eq!(read_some(&mut gate).await.unwrap(), close);
        // After the close everything goes up as it comes.
        peer.write_all(&close).await.unwrap();
        assert_eq!(read_some(&mut gate).await.unwrap(), close);
    }

    #[tokio::test]
    async fn a_writer_that_stopped_lets_the_close_through() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut gate = CloseGate::server(Box::new(ours));
        let outbox = Outbox::new(1 << 16);
        gate.arm(outbox.clone());
        outbox.push(Message::text("never written")).unwrap();
        outbox.set_reading(true);
        let close = frame(0x8, 2, true);
        peer.write_all(&close).await.unwrap();
        let reader = tokio::spawn(async move { read_some(&mut gate).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.shut();
        assert_eq!(
            reader.await.unwrap().unwrap(),
            close,
            "woken by the writer's end"
        );
    }
}
