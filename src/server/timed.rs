//! A deadline on writes for plain HTTP answers: a client that stops reading a response (a
//! large page it asked for, and then never read) is cut off after the write timeout instead of
//! holding its connection, its handshake slot and the buffered answer for as long as it likes.
//! A WebSocket has its own write timeout (`connection.rs`), so the deadline is disarmed when a
//! request asks for an upgrade.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail with `TimedOut` once one has made no progress for `limit` (while
/// `armed`).
pub(super) struct TimedWrites<IO> {
    io: IO,
    limit: Duration,
    armed: Arc<AtomicBool>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> TimedWrites<IO> {
    /// Wraps `io`; clear `armed` to lift the deadline (the connection became a WebSocket).
    pub(super) fn new(io: IO, limit: Duration, armed: Arc<AtomicBool>) -> Self {
        Self {
            io,
            limit,
            armed,
            stalled: None,
        }
    }

    /// The wrapped stream, without the deadline.
    pub(super) fn into_inner(self) -> IO {
        self.io
    }

    /// A write that made no progress: pending still, or timed out.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed.load(Ordering::Relaxed) {
            self.stalled = None;
            return Poll::Pending;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing of the answer within the write timeout",
        )))
    }

    fn progressed<T>(
        &mut self,
        done: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match done {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for TimedWrites<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TimedWrites<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progressed(done, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progressed(done, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_flush(cx);
        this.progressed(done, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progressed(done, cx)
    }
}
