//! Bounds on connections that do no work, on both ports.
//!
//! A connection must start its first request within the handshake timeout and is closed once
//! it has had no request in progress for the idle timeout. HTTP/1's header timeout covers a
//! partial request head only; an HTTP/2 connection that sent its preface (or nothing), or
//! keeps no stream open, had no bound at all. [`IdleIo`] wraps the TCP stream and reports
//! end-of-file to the server once the connection's [`Activity`] says it is idle, which closes
//! it; requests hold a [`Busy`] guard for as long as they run (on gRPC, until the response
//! body ends, so an open stream counts as work). HTTP/2 keepalive pings, configured where the
//! servers are built, close connections whose peer went away while a stream was open.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tonic::{
    codegen::http,
    transport::server::{Connected, TcpConnectInfo, TlsConnectInfo},
};

/// How long a connection may wait for its first request, and then between requests.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// Longest wait for the first request of a connection.
    pub first_request: Duration,
    /// Longest wait between requests once one was served.
    pub idle: Duration,
}

/// What one connection is doing, shared by its IO and its requests.
pub struct Activity {
    opened: Instant,
    limits: IdleLimits,
    busy: AtomicUsize,
    /// When the last request ended, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
    served: AtomicBool,
    /// Upgraded to a WebSocket: the socket's own heartbeat bounds it from now on.
    exempt: AtomicBool,
    reader: AtomicWaker,
}

impl Activity {
    /// A connection opened now.
    pub fn new(limits: IdleLimits) -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            limits,
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            exempt: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        })
    }

    /// Marks a request in progress until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.served.store(true, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection counts as idle for good, or `None` while it is working.
    fn deadline(&self) -> Option<Instant> {
        if self.exempt.load(Ordering::Acquire) || self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Relaxed) {
            return Some(self.opened + self.limits.first_request);
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened + since + self.limits.idle)
    }
}

/// A request in progress on a connection.
pub struct Busy(Arc<Activity>);

impl Busy {
    /// The connection became a WebSocket: never close it for being idle.
    pub fn upgraded(&self) {
        self.0.exempt.store(true, Ordering::Release);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let now = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(now, Ordering::Release);
        if a.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The connection task re-polls its read, which arms the idle timer.
            a.reader.wake();
        }
    }
}

/// A connection's IO that reads as closed once the connection is idle past its limit.
pub struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// Armed on the first read; dropped once the connection is a WebSocket.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> IdleIo<T> {
    /// Wraps a connection opened now; it closes itself past `limits`.
    pub fn new(inner: T, limits: IdleLimits) -> Self {
        Self {
            inner,
            activity: Activity::new(limits),
            timer: None,
        }
    }

    /// What the requests on this connection report their activity to.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.activity.exempt.load(Ordering::Acquire) {
            // A WebSocket now, read by its own task. The timer and the waker still hold the
            // HTTP connection's task, which ended with the upgrade: dropping them frees its
            // 2 KiB at once instead of when the timer fires (--connect-timeout-ms later).
            if self.timer.take().is_some() {
                self.activity.reader.take();
            }
            return false;
        }
        self.activity.reader.register(cx.waker());
        let Some(deadline) = self.activity.deadline() else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            tracing::debug!("closing a connection with no request in progress");
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// tonic hands a connection's info to every request on it: that is how a gRPC request finds
/// its connection's [`Activity`].
#[derive(Clone)]
pub struct ConnActivity<I> {
    /// What tonic's listener attached to the connection.
    pub inner: I,
    activity: Arc<Activity>,
}

impl<T: Connected> Connected for IdleIo<T> {
    type ConnectInfo = ConnActivity<T::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnActivity {
            inner: self.inner.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

/// Tower layer for the gRPC server: each call holds its connection busy until its response
/// body (for a stream, the whole stream) has ended.
#[derive(Clone, Copy, Default)]
pub struct TrackCalls;

impl<S> tower::Layer<S> for TrackCalls {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tracked(inner)
    }
}

#[derive(Clone)]
/// A gRPC service that reports each request to its connection's [`Activity`].
pub struct Tracked<S>(S);

/// What tonic's TCP listener (plain or TLS) attaches to each request, with the activity.
pub type GrpcConn = ConnActivity<TcpConnectInfo>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let ext = req.extensions();
        let conn = ext
            .get::<GrpcConn>()
            .or_else(|| ext.get::<TlsConnectInfo<GrpcConn>>().map(|t| t.get_ref()));
        let busy = conn.map(|c| c.activity.busy());
        let call = self.0.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(match busy {
                Some(busy) => {
                    response.map(|body| tonic::body::Body::new(Held { body, _busy: busy }))
                }
                None => response,
            })
        })
    }
}

/// A response body that keeps its connection busy until it is dropped.
struct Held {
    body: tonic::body::Body,
    _busy: Busy,
}

impl Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
