//! The HTTP port's own server, in clear text or over TLS, and the checks in front of
//! Socket.IO: connections that do no work are closed, new sessions are refused while draining,
//! off-list origins get 403, and sessions not yet authenticated are bounded per address.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, Extensions, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri},
    response::IntoResponse,
    Router,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto::Builder as ConnBuilder,
        graceful::{GracefulShutdown, Watcher},
    },
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    idle::{IdleIo, IdleLimits},
    metrics::{HandshakeRefusal, Metrics},
    pending::{PendingSessions, PendingSlot},
};

/// Where socketioxide serves Engine.IO (its default, which clients assume).
const SOCKET_IO_PATH: &str = "/socket.io";

/// Refuses browser requests from origins off the allow-list with 403. CORS alone only hides
/// polling responses from the page; WebSocket handshakes are not covered by CORS at all, so
/// without this a foreign page could still open a socket.
pub(crate) async fn check_origin(
    allowed: Option<Arc<[String]>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let (Some(allowed), Some(origin)) = (&allowed, req.headers().get(header::ORIGIN)) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            tracing::debug!(
                ?origin,
                "request from an origin not in --cors-origins refused"
            );
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    next.run(req).await
}

/// Refuses new Engine.IO sessions (requests without a `sid`) once the drain started, so no
/// client connects to a node that is about to close it; it retries and reaches another one.
/// Other paths (the probes, the page) are still answered.
pub(crate) async fn refuse_new_sessions(
    draining: CancellationToken,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if draining.is_cancelled() && is_engine_io(req.uri()) && !has_sid(req.uri()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// A request that opens an Engine.IO session (no `sid`) takes a pre-authentication slot for
/// its peer address, or is answered 429 before any session state exists. The probes and the
/// page take none.
pub(crate) async fn limit_pending_sessions(
    sessions: Arc<PendingSessions>,
    metrics: Arc<Metrics>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let (true, false, Some(ip)) = (is_engine_io(req.uri()), has_sid(req.uri()), peer) {
        match sessions.acquire(ip) {
            Ok(slot) => {
                req.extensions_mut().insert(slot);
            }
            Err(e) => {
                metrics.handshake_refused(HandshakeRefusal::PendingSessions);
                tracing::debug!(%ip, error = %e, "handshake refused before a session was created");
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    format!("{e}\n"),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// Socket.IO sessions keep their opening request's parts for as long as they live
/// (engineioxide's `Socket::req_parts`): every header a browser sends (cookies, user agent,
/// ...) and every extension the layers above added, ~1 KiB per idle tab or more. Once those
/// layers have read them, only what is read later passes on to Socket.IO: the two headers
/// engineioxide reads (a polling body's content type, the WebSocket key), hyper's upgrade
/// handle and the pre-authentication slot (`socket.rs` reads the slot and the query).
pub(crate) async fn keep_what_sessions_read(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !is_engine_io(req.uri()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let kept: Vec<_> = [header::CONTENT_TYPE, header::SEC_WEBSOCKET_KEY]
        .into_iter()
        .filter_map(|name| parts.headers.remove(&name).map(|value| (name, value)))
        .collect();
    // Sized to what is kept: an empty map inserted into reserves room for six headers.
    let mut headers = HeaderMap::with_capacity(kept.len());
    headers.extend(kept);
    let mut extensions = Extensions::new();
    if let Some(upgrade) = parts.extensions.remove::<OnUpgrade>() {
        extensions.insert(upgrade);
    }
    if let Some(slot) = parts.extensions.remove::<PendingSlot>() {
        extensions.insert(slot);
    }
    parts.headers = headers;
    parts.extensions = extensions;
    next.run(Request::from_parts(parts, body)).await
}

fn is_engine_io(uri: &Uri) -> bool {
    let path = uri.path();
    path.strip_prefix(SOCKET_IO_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn has_sid(uri: &Uri) -> bool {
    let query = uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "sid")
}

/// Serves HTTP/1.1 and HTTP/2 with WebSocket upgrades, over TLS when `tls` is set. Unlike
/// `axum::serve`, connections that do no work are closed: one that does not finish its TLS
/// handshake, or start a request (or finish its request head), within the handshake timeout,
/// one idle past `--idle-timeout-ms`, an HTTP/2 peer that does not answer keepalive pings; so
/// half-open, slowloris and preface-only connections cannot pile up.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: IdleLimits,
    keepalive: (Duration, Duration),
    stop: CancellationToken,
) {
    let builder = Arc::new(conn_builder(limits, keepalive));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            builder: builder.clone(),
            app: app.clone(),
            peer,
            watcher: graceful.watcher(),
        };
        match &tls {
            None => tokio::spawn(conn.serve(IdleIo::new(stream, limits))),
            Some(tls) => tokio::spawn(conn.serve_tls(tls.clone(), stream, limits, stop.clone())),
        };
    }
    drop(listener);
    graceful.shutdown().await;
}

fn conn_builder(
    limits: IdleLimits,
    (ping_interval, ping_timeout): (Duration, Duration),
) -> ConnBuilder<TokioExecutor> {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.first_request);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(ping_interval))
        .keep_alive_timeout(ping_timeout)
        .enable_connect_protocol();
    builder
}

/// One accepted connection, served on its own task (so a slow TLS handshake never holds up
/// the accept loop) and watched by the graceful shutdown from the moment it was accepted.
struct Connection {
    builder: Arc<ConnBuilder<TokioExecutor>>,
    app: Router,
    peer: SocketAddr,
    watcher: Watcher,
}

impl Connection {
    /// The TLS handshake, bounded by the handshake timeout (a client that opens TCP and sends
    /// nothing, or a plain-HTTP request, ends here), then the connection as in clear text.
    /// A handshake still running when the listener closes is dropped: it has no request yet.
    async fn serve_tls(
        self,
        tls: TlsAcceptor,
        stream: TcpStream,
        limits: IdleLimits,
        stop: CancellationToken,
    ) {
        let peer = self.peer;
        let handshake = tokio::time::timeout(limits.first_request, tls.accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within --connect-timeout-ms");
                    return;
                }
            },
            () = stop.cancelled() => return,
        };
        self.serve(IdleIo::new(stream, limits)).await;
    }

    async fn serve<I>(self, io: IdleIo<I>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            builder,
            app,
            peer,
            watcher,
        } = self;
        let activity = io.activity().clone();
        let service = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let busy = activity.busy();
            let connect = req.method() == Method::CONNECT;
            let mut req = detach_head(req.map(Body::new));
            req.extensions_mut().insert(ConnectInfo(peer));
            let call = app.clone().oneshot(req);
            async move {
                let response = call.await;
                if let Ok(r) = &response {
                    let status = r.status();
                    if status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success())
                    {
                        busy.upgraded();
                    }
                }
                response
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::trace!(error = %e, "HTTP connection ended with an error");
        }
    }
}

/// Copies the request target and header values out of hyper's read buffer. hyper parses them
/// zero-copy and socketioxide keeps every socket's request parts for the socket's lifetime,
/// so without the copy each connection pins the whole 8-16 KiB buffer its handshake was read
/// into (measured: 16 KiB of a ~40 KiB idle connection).
fn detach_head<B>(req: Request<B>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    for value in parts.headers.values_mut() {
        if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
            *value = copy;
        }
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;

    use super::*;

    /// The point of `detach_head`: nothing of the request may still point into the buffer the
    /// head was parsed from.
    #[test]
    fn detached_head_does_not_borrow_the_read_buffer() {
        let buffer = Bytes::from_static(b"/socket.io/?EIO=4&transport=websocket&userId=alice");
        let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
        let mut req = Request::new(());
        *req.uri_mut() = Uri::from_maybe_shared(buffer.clone()).unwrap();
        let value = HeaderValue::from_maybe_shared(buffer.slice(12..21)).unwrap();
        req.headers_mut().insert(header::ORIGIN, value);
        assert!(within(req.headers()[header::ORIGIN].as_bytes().as_ptr()));

        let req = detach_head(req);
        assert_eq!(
            req.uri().query(),
            Some("EIO=4&transport=websocket&userId=alice")
        );
        assert_eq!(req.headers()[header::ORIGIN], "EIO=4&tra");
        assert!(!within(req.headers()[header::ORIGIN].as_bytes().as_ptr()));
        assert!(!within(req.uri().path().as_ptr()));
        assert!(!within(req.uri().query().unwrap().as_ptr()));
    }
}
