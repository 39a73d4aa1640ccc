//! The byte stream under a WebSocket, and a read-ahead layer that keeps idle connections cheap.
//!
//! tungstenite zero-fills its whole read buffer before every read, so an idle connection pays
//! for all of it, all the time: with 4 KiB, 10,000 idle peers hold 40 MiB of zeros. A tiny
//! tungstenite buffer alone would cost a system call per few hundred bytes when a peer is busy.
//! [`ReadAhead`] gives both: tungstenite keeps a small buffer, and each read from the socket
//! goes into a per-thread scratch buffer of [`READ_AHEAD_BYTES`]; what tungstenite does not take
//! at once is kept in a buffer that exists only while it holds bytes. An idle connection holds
//! no read-ahead memory; a busy one reads in large gulps.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Any byte stream a WebSocket can run over: a TCP stream, an upgraded HTTP connection, TLS later.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// The transport, boxed, so that one `Connection` type serves the server and the client side.
pub type BoxedTransport = Box<dyn Transport>;

/// Most bytes one read from the socket takes.
pub const READ_AHEAD_BYTES: usize = 16 * 1024;

thread_local! {
    /// One scratch buffer per thread: a read fills it and is copied out before `poll_read`
    /// returns, so no connection ever holds it.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_AHEAD_BYTES].into_boxed_slice());
}

/// Reads ahead of tungstenite in large gulps, keeping leftovers only while there are some.
#[derive(Debug)]
pub struct ReadAhead<T> {
    inner: T,
    /// Bytes read from the socket but not yet taken; empty (and unallocated) most of the time.
    pending: Vec<u8>,
    /// How many bytes of `pending` were already taken.
    taken: usize,
}

impl<T> ReadAhead<T> {
    /// Wraps `inner`; `early` holds bytes that were already read from it (past a handshake).
    pub fn new(inner: T, early: Vec<u8>) -> Self {
        Self {
            inner,
            pending: early,
            taken: 0,
        }
    }

    fn take_pending(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.pending.len() - self.taken);
        out.put_slice(&self.pending[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.pending.len() {
            // Give the memory back: an idle connection should hold none.
            self.pending = Vec::new();
            self.taken = 0;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.pending.len() {
            this.take_pending(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD_BYTES {
            // A big read needs no help.
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut gulp = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut gulp))?;
            let filled = gulp.filled();
            let direct = out.remaining().min(filled.len());
            out.put_slice(&filled[..direct]);
            if direct < filled.len() {
                this.pending = filled[direct..].to_vec();
                this.taken = 0;
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    write_through!(inner);
}

/// The `AsyncWrite` methods of a wrapper that changes only how its stream is read: every
/// write goes straight to `self.$field`.
macro_rules! write_through {
    ($field:tt) => {
        fn poll_write(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &[u8],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            bufs: &[::std::io::IoSlice<'_>],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$field.is_write_vectored()
        }

        fn poll_flush(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.$field).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
        }
    };
}
pub(crate) use write_through;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_gulp_then_memory_is_released() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).await.unwrap();
        let mut ahead = ReadAhead::new(reader, b"early".to_vec());

        let mut got = Vec::new();
        let mut chunk = [0u8; 300];
        while got.len() < data.len() + 5 {
            let n = ahead.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(&got[..5], b"early");
        assert_eq!(&got[5..], &data[..]);
        assert_eq!(
            ahead.pending.capacity(),
            0,
            "leftovers are freed once taken"
        );
    }

    #[tokio::test]
    async fn end_of_stream_reads_as_zero() {
        let (writer, reader) = tokio::io::duplex(1024);
        drop(writer);
        let mut ahead = ReadAhead::new(reader, Vec::new());
        let mut chunk = [0u8; 16];
        assert_eq!(ahead.read(&mut chunk).await.unwrap(), 0);
    }
}
