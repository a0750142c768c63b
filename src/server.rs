//! Server wiring: binds both listeners, builds the Socket.IO and gRPC stacks over one shared
//! [`Gateway`], and runs them until shutdown, which drains in a fixed order.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{body::Body, extract::ConnectInfo, Router};
use axum::{
    http::{header, HeaderValue, Method, Request, StatusCode, Uri},
    response::IntoResponse,
};
use futures_util::TryStreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder as ConnBuilder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use socketioxide::SocketIo;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::interceptor::InterceptedService,
    transport::{server::TcpIncoming, Certificate, Identity, ServerTlsConfig},
};
use tonic_health::ServingStatus;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

use crate::{
    auth::{ApiKeys, BrowserAuth},
    cluster,
    coalesce::Coalesce,
    config::{read_file, AuthMode, Config, ConfigError},
    error,
    gateway::Gateway,
    grpc::MessagingService,
    idle::{IdleIo, IdleLimits, TrackCalls},
    metrics::{self, HandshakeRefusal, Metrics, RpcMetricsLayer},
    order::ArrivalOrderLayer,
    page::{self, PageOptions},
    pending::PendingSessions,
    presence::Presence,
    proto::{self, messaging_server::MessagingServer},
    readiness::{self, Readiness},
    socket::{self, SocketContext},
};

/// Health service name that follows Redis in cluster mode.
pub const CLUSTER_HEALTH: &str = "cluster";
/// WebSocket read buffer per connection: small, since clients send little and every
/// connection pays for it.
const WS_READ_BUFFER: usize = 1024;

/// Where socketioxide serves Engine.IO (its default, which clients assume).
const SOCKET_IO_PATH: &str = "/socket.io";

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({role}): {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid CORS origin {0:?}")]
    CorsOrigin(String),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ServerError {
    /// The process exit status: 2 for a configuration that cannot be served, as for a bad
    /// flag, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::CorsOrigin(_) => 2,
            _ => 1,
        }
    }
}

/// A started gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// The bound Socket.IO address (resolves port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound gRPC address (resolves port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Starts the drain: new work is refused, health goes NOT_SERVING, sockets are closed,
    /// the listeners close after `--shutdown-grace-ms`, and everything is over within
    /// `--shutdown-timeout-ms`.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The bound metrics address, when `--metrics-addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A handle that starts the drain when cancelled, for signal handlers.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the gateway has stopped.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown();
        self.wait().await
    }
}

async fn bind(role: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { role, addr, source })
}

fn local_addr(
    role: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|source| ServerError::Bind { role, addr, source })
}

/// CORS for the Socket.IO endpoint. `*` answers any origin without credentials; an explicit
/// list also allows credentials, for frontends using `withCredentials`.
fn cors(origins: &[String]) -> Result<CorsLayer, ServerError> {
    let methods = [Method::GET, Method::POST, Method::OPTIONS];
    if origins.iter().any(|o| o == "*") {
        return Ok(CorsLayer::new()
            .allow_origin(Any)
            .allow_methods(methods)
            .allow_headers(Any));
    }
    let list = origins
        .iter()
        .map(|o| o.parse().map_err(|_| ServerError::CorsOrigin(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods(methods)
        .allow_headers(AllowHeaders::mirror_request())
        .allow_credentials(true))
}

/// The explicit origin allow-list, or `None` when any origin is allowed.
fn allowed_origins(origins: &[String]) -> Option<Arc<[String]>> {
    (!origins.iter().any(|o| o == "*")).then(|| origins.iter().cloned().collect())
}

/// Refuses browser requests from origins off the allow-list with 403. CORS alone only hides
/// polling responses from the page; WebSocket handshakes are not covered by CORS at all, so
/// without this a foreign page could still open a socket.
async fn check_origin(
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
async fn refuse_new_sessions(
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
async fn limit_pending_sessions(
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

fn is_engine_io(uri: &Uri) -> bool {
    let path = uri.path();
    path.strip_prefix(SOCKET_IO_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn has_sid(uri: &Uri) -> bool {
    let query = uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "sid")
}

/// Serves HTTP/1.1 and HTTP/2 with WebSocket upgrades. Unlike `axum::serve`, connections
/// that do no work are closed: one that does not start a request (or finish its request head)
/// within the handshake timeout, one idle past `--idle-timeout-ms`, an HTTP/2 peer that does
/// not answer keepalive pings; so half-open, slowloris and preface-only connections cannot
/// pile up.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: IdleLimits,
    (ping_interval, ping_timeout): (Duration, Duration),
    stop: CancellationToken,
) {
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
        let io = IdleIo::new(stream, limits);
        let activity = io.activity().clone();
        let app = app.clone();
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
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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

/// TLS for the gRPC listener, with client certificates required when a CA is given.
fn grpc_tls(config: &Config) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.grpc_tls_cert, &config.grpc_tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(
        read_file("--grpc-tls-cert", cert)?,
        read_file("--grpc-tls-key", key)?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.grpc_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_file("--grpc-client-ca", ca)?));
    }
    Ok(Some(tls))
}

/// Binds the listeners and starts serving; returns once both accept connections.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    config.check()?;
    let auth = BrowserAuth::from_config(&config)?;
    let api_keys = ApiKeys::from_config(&config)?;
    let tls = grpc_tls(&config)?;
    let limits = config.limits();
    if config.auth == AuthMode::None {
        tracing::warn!(
            "--auth none: clients are trusted to say which user they are (userId); use --auth jwt in production"
        );
    }
    if !api_keys.is_enabled() {
        tracing::warn!("no --api-key: any process that reaches the gRPC port can send messages");
    }
    if tls.is_none() && !config.grpc_addr.ip().is_loopback() {
        tracing::warn!(
            grpc_addr = %config.grpc_addr,
            "gRPC without TLS on a non-loopback address: API keys and messages cross the network in clear text; set --grpc-tls-cert and --grpc-tls-key"
        );
    }
    if let Some(addr) = config.metrics_addr.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            metrics_addr = %addr,
            "--metrics-addr on a non-loopback address: the metrics endpoint has no authentication; anyone who reaches it can read it"
        );
    }
    let http_listener = bind("Socket.IO", config.http_addr).await?;
    let grpc_listener = bind("gRPC", config.grpc_addr).await?;
    let http_addr = local_addr("Socket.IO", &http_listener, config.http_addr)?;
    let grpc_addr = local_addr("gRPC", &grpc_listener, config.grpc_addr)?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(bind("metrics", addr).await?),
        None => None,
    };
    let metrics_addr = match (&metrics_listener, config.metrics_addr) {
        (Some(l), Some(addr)) => Some(local_addr("metrics", l, addr)?),
        _ => None,
    };
    let cors = cors(&config.cors_origins)?;

    let setup = cluster::connect(&config).await?;
    let presence: Arc<Presence> = Arc::new(Presence::with_options(
        setup.local_changes,
        limits.watch_buffer_events,
    ));
    let metrics = Arc::new(Metrics::new(presence.clone(), setup.cluster.clone()));
    let (sio_layer, io) = SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .connect_timeout(config.connect_timeout())
        .max_payload(config.max_payload_bytes)
        .max_buffer_size(config.socket_buffer_packets as usize)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .ws_max_message_size(usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX))
        .build_layer();
    let cluster = setup.cluster;
    let gateway = Gateway::new(
        presence.clone(),
        cluster.clone(),
        setup.mailbox,
        setup.cursor,
        limits,
        metrics.clone(),
    );
    socket::attach(
        &io,
        Arc::new(SocketContext {
            presence: presence.clone(),
            gateway: gateway.clone(),
            auth,
            metrics: metrics.clone(),
            limits,
        }),
    );
    cluster.serve(Arc::new(gateway.clone()), presence.clone());

    let (mut health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessagingServer<MessagingService>>()
        .await;
    if let Some(mut up) = cluster.watch_up() {
        // `cluster` is SERVING while Redis is reachable; local delivery goes on either way,
        // so the Messaging service itself stays SERVING.
        let health = health.clone();
        tokio::spawn(async move {
            loop {
                let status = if *up.borrow_and_update() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status(CLUSTER_HEALTH, status).await;
                if up.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    // grpcurl 1.8 asks v1alpha, newer clients v1: serve both, each listing both.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = InterceptedService::new(reflection().build_v1()?, api_keys.clone());
    let reflection_v1alpha =
        InterceptedService::new(reflection().build_v1alpha()?, api_keys.clone());
    let max_decoding = usize::try_from(config.grpc_max_decoding_bytes).unwrap_or(usize::MAX);
    let messaging = InterceptedService::new(
        MessagingServer::new(MessagingService::new(gateway.clone()))
            .max_decoding_message_size(max_decoding),
        api_keys,
    );

    // Servers stop on their own token, cancelled only after health went NOT_SERVING and the
    // sockets were told, so watchers see the drain before the listeners close.
    let shutdown = CancellationToken::new();
    let stop_servers = CancellationToken::new();

    let allowed = allowed_origins(&config.cors_origins);
    let draining = shutdown.clone();
    let pending = PendingSessions::new(
        limits.max_pending_sessions_per_ip,
        limits.max_pending_sessions,
    );
    let refused = metrics.clone();
    let page_options = PageOptions {
        auth: config.auth,
        demo_send: config.demo_send(),
        max_message_bytes: limits.max_message_bytes,
        grpc_port: grpc_addr.port(),
    };
    let app = Router::new()
        .merge(readiness::router(Readiness::new(
            shutdown.clone(),
            cluster.watch_up(),
        )))
        .merge(page::router(gateway.clone(), &page_options))
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(move |req, next| {
                    refuse_new_sessions(draining.clone(), req, next)
                }))
                .layer(axum::middleware::from_fn(move |req, next| {
                    check_origin(allowed.clone(), req, next)
                }))
                .layer(cors)
                .layer(axum::middleware::from_fn(move |req, next| {
                    limit_pending_sessions(pending.clone(), refused.clone(), req, next)
                }))
                .layer(sio_layer),
        );
    let http = serve_http(
        http_listener,
        app,
        config.idle_limits(),
        config.http2_keepalive(),
        stop_servers.clone(),
    );
    let (ping_interval, ping_timeout) = config.http2_keepalive();
    let idle_limits = config.idle_limits();
    let mut grpc_builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping_interval))
        .http2_keepalive_timeout(Some(ping_timeout))
        .layer(RpcMetricsLayer(metrics.clone()))
        .layer(TrackCalls)
        .layer(tower::util::MapResponseLayer::new(
            error::size_limit_response::<tonic::body::Body>,
        ));
    if let Some(tls) = tls {
        grpc_builder = grpc_builder.tls_config(tls).map_err(|e| {
            // tonic's own text is only "transport error"; the cause is in its source.
            let cause = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            ConfigError::Invalid(format!(
                "--grpc-tls-cert / --grpc-tls-key: not a usable PEM certificate chain and key: {cause}"
            ))
        })?;
    }
    let grpc = grpc_builder
        .layer(ArrivalOrderLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(messaging)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener)
                .with_nodelay(Some(true))
                .map_ok(move |tcp| IdleIo::new(Coalesce::new(tcp), idle_limits)),
            stop_servers.clone().cancelled_owned(),
        );
    if let Some(listener) = metrics_listener {
        let app = metrics::router(metrics.clone());
        let stop = stop_servers.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    tokio::spawn(gateway.clone().sweep_mailbox(shutdown.clone()));
    let presence_task = tokio::spawn(socket::broadcast_presence(
        presence,
        metrics,
        limits.max_dropped_sends,
        config.presence_interval(),
        config.presence_budget_bytes_per_sec,
        shutdown.clone(),
    ));

    let token = shutdown.clone();
    let (grace, bound) = (config.shutdown_grace(), config.shutdown_timeout());
    let task = tokio::spawn(async move {
        let mut http = tokio::spawn(http);
        let mut grpc = tokio::spawn(grpc);
        let early = tokio::select! {
            () = token.cancelled() => None,
            r = &mut http => Some(r.map_err(ServerError::from)),
            r = &mut grpc => Some(r.map_err(ServerError::from).and_then(|r| r.map_err(ServerError::from))),
        };
        let deadline = tokio::time::Instant::now() + bound;
        // The order matters: refuse new work first (callers get UNAVAILABLE and retry
        // elsewhere, never "0 sockets" for a user who is online), then close the sockets,
        // and only after the grace period the listeners, so health checks see NOT_SERVING.
        token.cancel();
        gateway.drain();
        for service in ["", MessagingServer::<MessagingService>::NAME] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("shutting down: new work refused, closing sockets");
        let close_sockets = async {
            if tokio::time::timeout_at(deadline, io.close()).await.is_err() {
                tracing::warn!("sockets not closed by --shutdown-timeout-ms; dropping them");
            }
            // This node's users leave every other node's presence now, not at lease expiry.
            let _ = tokio::time::timeout_at(deadline, cluster.leave()).await;
        };
        tokio::join!(close_sockets, tokio::time::sleep(grace));
        stop_servers.cancel();
        // Dropping the statuses ends open Health/Watch streams, which would otherwise hold
        // their connections open until the deadline.
        for service in ["", MessagingServer::<MessagingService>::NAME] {
            health.clear_service_status(service).await;
        }
        let _ = presence_task.await;
        if let Some(result) = early {
            return result;
        }
        let drained = tokio::time::timeout_at(deadline, async {
            let h = http.await;
            let g = grpc.await;
            (h, g)
        })
        .await;
        match drained {
            Ok((h, g)) => {
                h?;
                g??;
            }
            Err(_) => {
                tracing::warn!("connections still open at --shutdown-timeout-ms; closing them")
            }
        }
        tracing::info!("stopped");
        Ok(())
    });

    tracing::info!(%http_addr, "Socket.IO listening on http://{http_addr}/socket.io/");
    tracing::info!(
        demo_send = page_options.demo_send,
        "live page on http://{http_addr}/"
    );
    tracing::info!(%grpc_addr, "gRPC listening on {grpc_addr}");
    if let Some(addr) = metrics_addr {
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
    }
    Ok(Running {
        http_addr,
        grpc_addr,
        metrics_addr,
        shutdown,
        task,
    })
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
