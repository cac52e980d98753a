//! Receive buffers that an idle connection does not hold.
//!
//! Why: a relayed connection needs a receive buffer only while bytes are on their way
//! through it. Holding one per direction for the life of a session made the two 8 KiB
//! buffers the larger part of an idle session's memory (docs/performance.md, "Memory").
//! A relay pump therefore reads with [`read_buf`]: when its buffer is empty, the buffer goes
//! back to this thread's pool and the pump waits for the socket to become readable without
//! one; it takes a buffer again only when there is something to read. Session workers are
//! single-threaded (decision 0013), so the pool is per thread and needs no lock; taking and
//! giving back is a `Vec` pop and push, not an allocation per read.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The size of a pooled receive buffer: large enough that a pgbench or sysbench round trip
/// is one read.
pub const READ_CHUNK: usize = 8 * 1024;

/// At most this many buffers wait in one thread's pool (512 KiB); more go back to the
/// allocator.
const MAX_POOLED: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A reader that can say when a read would not block, so that [`read_buf`] waits without a
/// buffer.
pub trait ReadReady: AsyncRead + Unpin {
    /// Ready when a read may return data (or EOF, or an error); may be ready spuriously.
    /// A reader that cannot tell (TLS keeps bytes of its own) is always ready.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// An empty buffer with room for [`READ_CHUNK`] bytes, from this thread's pool if it has one.
pub fn take() -> BytesMut {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Give an empty buffer back to this thread's pool. A buffer that grew for a large message
/// (or is too small to be worth keeping) goes back to the allocator instead.
pub fn give(mut buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    // An empty buffer that was read from and advanced has its room at the end only; this
    // takes the whole allocation back without copying or allocating.
    buf.reserve(READ_CHUNK);
    if buf.capacity() > 2 * READ_CHUNK {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buf);
        }
    });
}

/// Read what is available from `rd` into `buf`, like `AsyncReadExt::read_buf`, but while
/// `buf` is empty it holds no memory: its buffer goes back to the pool, the read waits for
/// readiness, and a pooled buffer is taken when bytes are there. A buffer holding part of a
/// message is kept and grows as it must. Cancel-safe: nothing is read unless it returns.
pub fn poll_read_buf<R: ReadReady + ?Sized>(rd: &mut R, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        if buf.capacity() > 0 {
            give(std::mem::take(buf));
        }
        match rd.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        *buf = take();
    }
    let read = std::pin::pin!(rd.read_buf(&mut *buf)).poll(cx);
    if read.is_pending() && buf.is_empty() {
        // Readiness was stale (or the reader cannot tell): wait without the buffer.
        give(std::mem::take(buf));
    }
    read
}

/// [`poll_read_buf`] as a future.
pub async fn read_buf<R: ReadReady + ?Sized>(rd: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_buf(rd, buf, cx)).await
}

impl<R: ReadReady + ?Sized> ReadReady for &mut R {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

impl<R: ReadReady + ?Sized> ReadReady for Box<R> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

impl ReadReady for tokio::net::tcp::OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }
}

impl ReadReady for tokio::net::unix::OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }
}

impl<T: AsyncRead + Unpin> ReadReady for tokio::io::ReadHalf<T> {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A pump's buffer is given back while it waits, and what arrives is read whole.
    #[tokio::test]
    async fn an_empty_buffer_waits_in_the_pool() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut rd, _w) = a.into_split();
        let (_r, mut wr) = b.into_split();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let pooled = || POOL.with(|p| p.borrow().len());
        let before = pooled();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), read_buf(&mut rd, &mut buf)).await;
        assert!(waiting.is_err(), "nothing was sent, the read must wait");
        assert_eq!(buf.capacity(), 0, "an idle reader holds no buffer");
        assert_eq!(pooled(), before + 1);
        wr.write_all(b"hello").await.unwrap();
        assert_eq!(read_buf(&mut rd, &mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        assert_eq!(pooled(), before, "the pooled buffer was taken again");
        // A buffer that holds part of a message is kept.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), read_buf(&mut rd, &mut buf)).await;
        assert!(waiting.is_err());
        assert_eq!(&buf[..], b"hello");
        drop(wr);
        drop(_r);
        assert_eq!(read_buf(&mut rd, &mut buf).await.unwrap(), 0, "EOF");
    }

    /// Buffers that grew for a large message go back to the allocator, not to the pool.
    #[test]
    fn a_grown_buffer_is_not_pooled() {
        let before = POOL.with(|p| p.borrow().len());
        give(BytesMut::with_capacity(1 << 20));
        assert_eq!(POOL.with(|p| p.borrow().len()), before);
        let mut used = take();
        used.extend_from_slice(&[1; 100]);
        bytes::Buf::advance(&mut used, 100);
        give(used);
        let again = take();
        assert!(again.capacity() >= READ_CHUNK && again.capacity() <= 2 * READ_CHUNK);
    }
}
