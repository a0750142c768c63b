//! Write coalescing for the gRPC connections.
//!
//! hyper's HTTP/2 server writes as soon as one response is ready. Under load, the stream
//! task that finishes a call wakes the connection task, which tokio runs next, so every
//! response went out in its own `writev` (measured: 0.9 per SendDirect at 16k calls/s), and
//! on loopback each write also pays the peer's receive path. [`Coalesce`] defers the first
//! write of a round by one trip through the scheduler: the connection task goes to the back
//! of the run queue, the calls already running finish and queue their frames, and h2 writes
//! them together. On an idle runtime the queue is empty and the write happens at once.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// An IO stream whose writes wait for the tasks already queued on this worker.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    yielded: bool,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`: its first write of each round waits one trip through the scheduler.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }

    /// Pending once per write: wakes itself, so the task is queued behind the ready ones.
    fn defer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn wrote<R>(&mut self, result: Poll<R>) -> Poll<R> {
        if result.is_ready() {
            self.yielded = false;
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.defer(cx));
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.defer(cx));
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_pass_through_unchanged() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = Coalesce::new(a);
        a.write_all(b"hello ").await.unwrap();
        a.write_all(b"world").await.unwrap();
        a.flush().await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
    }
}
