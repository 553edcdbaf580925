//! A futures-io byte stream (glommio's `TcpStream`) as a tokio-io stream, which is what h2
//! drives: the server's and the client's HTTP/2 connections go through [`TokioIo`].
//!
//! tokio-util's `Compat` does the same, but it must hand the inner stream an initialized
//! `&mut [u8]`, and the buffer h2's frame reader offers is the spare capacity of a `BytesMut`,
//! never known to be initialized: so it zeroed about 8 KiB before every read, also before
//! each read that found nothing (4% of the raft core's time at 100 writing clients). Here a
//! read goes into one scratch buffer per thread, which is initialized once, and only the
//! bytes received are copied on.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// The most one read takes from the socket (h2's reader asks for at most its spare capacity).
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    // Shared by every stream of the thread: a read runs to completion (copied out) before
    // the next one starts, and the inner stream never reads through another `TokioIo`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// The tokio-io view of a futures-io stream, optionally with bytes already read from it
/// replayed first (the listener sniffs the HTTP/2 preface, which h2 then reads again).
pub struct TokioIo<T> {
    inner: T,
    /// Bytes still to replay (a few dozen: the sniffed preface).
    prefix: Vec<u8>,
}

impl<T> TokioIo<T> {
    pub fn new(inner: T) -> TokioIo<T> {
        TokioIo::with_prefix(inner, Vec::new())
    }

    pub fn with_prefix(inner: T, prefix: Vec<u8>) -> TokioIo<T> {
        TokioIo { inner, prefix }
    }
}

impl<T: AsyncRead + Unpin> tokio::io::AsyncRead for TokioIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let count = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..count]);
            self.prefix.drain(..count);
            return Poll::Ready(Ok(()));
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let want = buf.remaining().min(scratch.len());
            let read = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut scratch[..want]))?;
            buf.put_slice(&scratch[..read]);
            Poll::Ready(Ok(()))
        })
    }
}

impl<T: AsyncWrite + Unpin> tokio::io::AsyncWrite for TokioIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncRead as _;

    /// A stream that yields `chunks` one per read (at most the reader's buffer), then EOF.
    struct Chunks(Vec<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
            let Some(chunk) = self.0.first_mut() else { return Poll::Ready(Ok(0)) };
            let count = chunk.len().min(out.len());
            out[..count].copy_from_slice(&chunk[..count]);
            chunk.drain(..count);
            if chunk.is_empty() {
                self.0.remove(0);
            }
            Poll::Ready(Ok(count))
        }
    }

    fn read_all(stream: &mut TokioIo<Chunks>, capacity: usize, initialized: bool) -> Vec<u8> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut all = Vec::new();
        loop {
            let mut storage = vec![std::mem::MaybeUninit::<u8>::uninit(); capacity];
            let mut buf = tokio::io::ReadBuf::uninit(&mut storage);
            if initialized {
                buf.initialize_unfilled();
            }
            match Pin::new(&mut *stream).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return all,
                Poll::Ready(Ok(())) => all.extend_from_slice(buf.filled()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn reads_pass_every_byte_through_in_order_whatever_the_buffer() {
        let chunks: Vec<Vec<u8>> = vec![b"ab".to_vec(), (0..=255u8).cycle().take(100_000).collect(), b"z".to_vec()];
        let expected: Vec<u8> = chunks.concat();
        for (capacity, initialized) in [(1, false), (7, true), (8192, false), (8192, true), (200_000, false)] {
            let mut stream = TokioIo::new(Chunks(chunks.clone()));
            assert_eq!(read_all(&mut stream, capacity, initialized), expected, "capacity {capacity}");
            let prefix = b"PRI * HTTP/2.0".to_vec();
            let mut stream = TokioIo::with_prefix(Chunks(chunks.clone()), prefix.clone());
            let with_prefix: Vec<u8> = [prefix, expected.clone()].concat();
            assert_eq!(read_all(&mut stream, capacity, initialized), with_prefix, "prefix, capacity {capacity}");
        }
    }
}
