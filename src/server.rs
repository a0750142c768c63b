//! Server wiring: binds both listeners, builds the Socket.IO and gRPC stacks over one shared
//! [`Gateway`], and runs them until shutdown, which drains in a fixed order. [`start`] reads
//! as its steps: the exposure checks (`Access::check`), the listeners, the core state, the
//! HTTP app, the gRPC stack, the background tasks, and the drain (`Drain::drain`, where the
//! shutdown order is written down).

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{http::Method, Router};
use futures_util::TryStreamExt;
use socketioxide::{layer::SocketIoLayer, SocketIo};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    transport::{server::TcpIncoming, Certificate, Identity, ServerTlsConfig},
};
use tonic_health::{
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
    ServingStatus,
};
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

use crate::recovery::{Recovery, RecoveryLimits};
use crate::{
    auth::BrowserAuth,
    caller::{Authenticate, Callers},
    cluster::{self, Cluster},
    coalesce::Coalesce,
    config::{read_file, AuthMode, Config, ConfigError, Limits},
    error,
    gateway::Gateway,
    grpc::MessagingService,
    http_port::{
        check_origin, keep_what_sessions_read, limit_pending_sessions, refuse_new_sessions,
        serve_http,
    },
    idle::{IdleIo, TrackCalls},
    metrics::{self, Metrics, RpcMetricsLayer},
    order::ArrivalOrderLayer,
    page::{self, PageOptions},
    pending::PendingSessions,
    presence::Presence,
    proto::{self, messaging_server::MessagingServer},
    readiness::{self, Readiness},
    socket::{self, SocketContext},
    tls,
};

/// Health service name that follows Redis in cluster mode.
pub const CLUSTER_HEALTH: &str = "cluster";
/// WebSocket read buffer per connection: small, since clients send little and every
/// connection pays for it.
const WS_READ_BUFFER: usize = 1024;

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A port could not be bound (in use, or not this host's address).
    #[error("cannot listen on {addr} ({role}): {source}")]
    Bind {
        /// Which listener: Socket.IO, gRPC or metrics.
        role: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        source: io::Error,
    },
    /// A configuration that cannot be served (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `--cors-origins` entry that is not an origin (exit status 2).
    #[error("invalid CORS origin {0:?}")]
    CorsOrigin(String),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed while serving.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// A server task panicked.
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

    fn log_addresses(&self, demo_send: bool, scheme: &str) {
        let (http_addr, grpc_addr) = (self.http_addr, self.grpc_addr);
        tracing::info!(%http_addr, "Socket.IO listening on {scheme}://{http_addr}/socket.io/");
        tracing::info!(demo_send, "live page on {scheme}://{http_addr}/");
        tracing::info!(%grpc_addr, "gRPC listening on {grpc_addr}");
        if let Some(addr) = self.metrics_addr {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
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

/// What the gateway exposes and to whom, read and checked before anything is bound.
struct Access {
    auth: BrowserAuth,
    callers: Arc<Callers>,
    tls: Option<ServerTlsConfig>,
    http_tls: Option<TlsAcceptor>,
}

impl Access {
    /// Refuses configurations that cannot be served and warns about each open door left
    /// open on purpose (no browser auth, no API key, clear-text gRPC or tokens, or metrics off
    /// loopback).
    fn check(config: &Config) -> Result<Self, ServerError> {
        config.check()?;
        let access = Self {
            auth: BrowserAuth::from_config(config)?,
            callers: Arc::new(Callers::from_config(config)?),
            tls: grpc_tls(config)?,
            http_tls: tls::http_acceptor(config)?,
        };
        if config.auth == AuthMode::None {
            tracing::warn!(
                "--auth none: clients are trusted to say which user they are (userId); use --auth jwt in production"
            );
        }
        for warning in access.callers.warnings() {
            tracing::warn!("{warning}");
        }
        if access.tls.is_none() && !config.grpc_addr.ip().is_loopback() {
            tracing::warn!(
                grpc_addr = %config.grpc_addr,
                "gRPC without TLS on a non-loopback address: API keys and messages cross the network in clear text; set --grpc-tls-cert and --grpc-tls-key"
            );
        }
        if access.http_tls.is_none()
            && config.auth == AuthMode::Jwt
            && !config.http_addr.ip().is_loopback()
        {
            tracing::warn!(
                http_addr = %config.http_addr,
                "Socket.IO without TLS on a non-loopback address with --auth jwt: tokens cross the network in clear text; set --http-tls-cert and --http-tls-key, or terminate TLS in a proxy"
            );
        }
        if let Some(addr) = config.metrics_addr.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                metrics_addr = %addr,
                "--metrics-addr on a non-loopback address: the metrics endpoint has no authentication; anyone who reaches it can read it"
            );
        }
        Ok(access)
    }
}

/// The bound listeners, with their resolved addresses (port 0 becomes the port taken).
struct Listeners {
    http: TcpListener,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Self, ServerError> {
        let http = bind("Socket.IO", config.http_addr).await?;
        let grpc = bind("gRPC", config.grpc_addr).await?;
        let http_addr = local_addr("Socket.IO", &http, config.http_addr)?;
        let grpc_addr = local_addr("gRPC", &grpc, config.grpc_addr)?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(bind("metrics", addr).await?),
            None => None,
        };
        let metrics_addr = match (&metrics, config.metrics_addr) {
            (Some(l), Some(addr)) => Some(local_addr("metrics", l, addr)?),
            _ => None,
        };
        Ok(Self {
            http,
            grpc,
            metrics,
            http_addr,
            grpc_addr,
            metrics_addr,
        })
    }
}

/// The state both listeners serve, built once over the cluster engine.
struct Core {
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    cluster: Arc<dyn Cluster>,
    gateway: Gateway,
    limits: Limits,
    recovery: Option<Recovery>,
}

impl Core {
    /// Connects the cluster engine (memory, or Redis with `--redis-url`) and builds the
    /// presence registry, the metrics and the gateway over it.
    async fn connect(config: &Config) -> Result<Self, ServerError> {
        let limits = config.limits();
        let setup = cluster::connect(config).await?;
        let presence = Arc::new(Presence::with_options(
            setup.local_changes,
            limits.watch_buffer_events,
        ));
        let metrics = Arc::new(Metrics::new(presence.clone(), setup.cluster.clone()));
        let recovery = RecoveryLimits::of(config)
            .map(|limits| Recovery::new(limits, metrics.recovery.clone(), setup.cluster.clone()));
        let gateway = Gateway::new(
            presence.clone(),
            setup.cluster.clone(),
            setup.mailbox,
            setup.cursor,
            limits,
            metrics.clone(),
            recovery.clone(),
        );
        Ok(Self {
            presence,
            metrics,
            cluster: setup.cluster,
            gateway,
            limits,
            recovery,
        })
    }
}

/// Binds the listeners and starts serving; returns once both accept connections.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let Access {
        auth,
        callers,
        tls,
        http_tls,
    } = Access::check(&config)?;
    let listeners = Listeners::bind(&config).await?;
    let cors = cors(&config.cors_origins)?;
    let core = Core::connect(&config).await?;
    let (sio_layer, io) = socket_io(&config, &core, auth);
    // From here on the engine delivers to this node's sockets.
    core.cluster
        .serve(Arc::new(core.gateway.clone()), core.presence.clone());
    let (health, health_service) = health(&core.cluster).await;

    // Servers stop on their own token, cancelled only after health went NOT_SERVING and the
    // sockets were told, so watchers see the drain before the listeners close.
    let shutdown = CancellationToken::new();
    let stop_servers = CancellationToken::new();
    let app = http_app(
        &config,
        &core,
        sio_layer,
        cors,
        &shutdown,
        listeners.grpc_addr.port(),
    );
    let scheme = if http_tls.is_some() { "https" } else { "http" };
    let http = serve_http(
        listeners.http,
        app,
        http_tls,
        config.idle_limits(),
        config.http2_keepalive(),
        stop_servers.clone(),
    );
    let grpc = grpc_stack(
        &config,
        &core,
        tls,
        callers,
        health_service,
        listeners.grpc,
        &stop_servers,
    )?;
    let presence_task =
        spawn_background(&config, &core, listeners.metrics, &shutdown, &stop_servers);
    let drain = Drain {
        shutdown: shutdown.clone(),
        stop_servers,
        gateway: core.gateway,
        health,
        io,
        cluster: core.cluster,
        presence_task,
        grace: config.shutdown_grace(),
        bound: config.shutdown_timeout(),
    };
    let running = Running {
        http_addr: listeners.http_addr,
        grpc_addr: listeners.grpc_addr,
        metrics_addr: listeners.metrics_addr,
        shutdown,
        task: tokio::spawn(serve(http, grpc, drain)),
    };
    running.log_addresses(config.demo_send(), scheme);
    Ok(running)
}

/// The Socket.IO layer, with the connection limits from the configuration, and its handle,
/// with the gateway's handlers attached.
fn socket_io(config: &Config, core: &Core, auth: BrowserAuth) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .ping_interval(config.ping_interval())
        .ping_timeout(config.ping_timeout())
        .connect_timeout(config.connect_timeout())
        .max_payload(config.max_payload_bytes)
        .max_buffer_size(config.socket_buffer_packets as usize)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .ws_max_message_size(usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX))
        .build_layer();
    socket::attach(
        &io,
        Arc::new(SocketContext {
            presence: core.presence.clone(),
            gateway: core.gateway.clone(),
            auth,
            metrics: core.metrics.clone(),
            limits: core.limits,
            recovery: core.recovery.clone(),
        }),
    );
    (layer, io)
}

/// gRPC health: the whole server and Messaging SERVING; `cluster` follows Redis in cluster
/// mode (local delivery goes on either way, so Messaging itself stays SERVING).
async fn health(cluster: &Arc<dyn Cluster>) -> (HealthReporter, HealthServer<impl Health>) {
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessagingServer<MessagingService>>()
        .await;
    if let Some(mut up) = cluster.watch_up() {
        let health = health.clone();
        tokio::spawn(async move {
            loop {
                let status = if *up.borrow_and_update() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status(CLUSTER_HEALTH, status).await;
                if up.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    (health, service)
}

/// The HTTP port: Socket.IO, the probes and the live page, behind (outermost first) the
/// drain's refusal of new sessions, the origin check, CORS, the pending-session limit and
/// the trimming of what Socket.IO sessions keep of their request.
fn http_app(
    config: &Config,
    core: &Core,
    sio_layer: SocketIoLayer,
    cors: CorsLayer,
    draining: &CancellationToken,
    grpc_port: u16,
) -> Router {
    let allowed = allowed_origins(&config.cors_origins);
    let draining = draining.clone();
    let pending = PendingSessions::new(
        core.limits.max_pending_sessions_per_ip,
        core.limits.max_pending_sessions,
    );
    let refused = core.metrics.clone();
    let page_options = PageOptions {
        auth: config.auth,
        demo_send: config.demo_send(),
        max_message_bytes: core.limits.max_message_bytes,
        grpc_port,
        allowed_hosts: page::AllowedHosts::new(&config.allowed_hosts),
    };
    Router::new()
        .merge(readiness::router(Readiness::new(
            draining.clone(),
            core.cluster.watch_up(),
        )))
        .merge(page::router(core.gateway.clone(), &page_options))
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
                .layer(axum::middleware::from_fn(keep_what_sessions_read))
                .layer(sio_layer),
        )
}

/// The gRPC port: Messaging, health and reflection (v1 and v1alpha) behind the caller
/// check, served until `stop` over idle-limited, write-coalescing connections.
fn grpc_stack(
    config: &Config,
    core: &Core,
    tls: Option<ServerTlsConfig>,
    callers: Arc<Callers>,
    health: HealthServer<impl Health>,
    listener: TcpListener,
    stop: &CancellationToken,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ServerError> {
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
    let max_decoding = usize::try_from(config.grpc_max_decoding_bytes).unwrap_or(usize::MAX);
    let messaging = MessagingServer::new(MessagingService::new(core.gateway.clone()))
        .max_decoding_message_size(max_decoding);
    let (ping_interval, ping_timeout) = config.http2_keepalive();
    let idle_limits = config.idle_limits();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping_interval))
        .http2_keepalive_timeout(Some(ping_timeout))
        .layer(RpcMetricsLayer(core.metrics.clone()))
        .layer(Authenticate(callers))
        .layer(TrackCalls)
        .layer(tower::util::MapResponseLayer::new(
            error::size_limit_response::<tonic::body::Body>,
        ));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| {
            // tonic's own text is only "transport error"; the cause is in its source.
            let cause = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            ConfigError::Invalid(format!(
                "--grpc-tls-cert / --grpc-tls-key: not a usable PEM certificate chain and key: {cause}"
            ))
        })?;
    }
    Ok(builder
        .layer(ArrivalOrderLayer)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(messaging)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map_ok(move |tcp| IdleIo::new(Coalesce::new(tcp), idle_limits)),
            stop.clone().cancelled_owned(),
        ))
}

/// Starts the tasks beside the listeners: the metrics endpoint (until `stop_servers`), the
/// mailbox sweep and the presence broadcast (until `shutdown`). Returns the broadcast, which
/// the drain waits for.
fn spawn_background(
    config: &Config,
    core: &Core,
    metrics_listener: Option<TcpListener>,
    shutdown: &CancellationToken,
    stop_servers: &CancellationToken,
) -> JoinHandle<()> {
    if let Some(listener) = metrics_listener {
        let app = metrics::router(core.metrics.clone());
        let stop = stop_servers.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    tokio::spawn(core.gateway.clone().sweep_mailbox(shutdown.clone()));
    tokio::spawn(socket::broadcast_presence(
        core.presence.clone(),
        core.metrics.clone(),
        core.limits.max_dropped_sends,
        config.presence_interval(),
        config.presence_budget_bytes_per_sec,
        shutdown.clone(),
    ))
}

/// Serves both listeners until [`Running::shutdown`] or until one of them stops on its own
/// (whose error is then the result), and drains either way.
async fn serve(
    http: impl Future<Output = ()> + Send + 'static,
    grpc: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    drain: Drain,
) -> Result<(), ServerError> {
    let mut http = tokio::spawn(http);
    let mut grpc = tokio::spawn(grpc);
    let early = tokio::select! {
        () = drain.shutdown.cancelled() => None,
        r = &mut http => Some(r.map_err(ServerError::from)),
        r = &mut grpc => Some(r.map_err(ServerError::from).and_then(|r| r.map_err(ServerError::from))),
    };
    drain.drain(early, http, grpc).await
}

/// What the drain stops, each in its turn (see [`Drain::drain`]).
struct Drain {
    /// Cancelled first: refuses new work and ends the background tasks.
    shutdown: CancellationToken,
    /// Cancelled after the grace period: closes the listeners.
    stop_servers: CancellationToken,
    gateway: Gateway,
    health: HealthReporter,
    io: SocketIo,
    cluster: Arc<dyn Cluster>,
    presence_task: JoinHandle<()>,
    /// `--shutdown-grace-ms`: how long the listeners stay open after health went NOT_SERVING.
    grace: Duration,
    /// `--shutdown-timeout-ms`: when everything is over, however far it got.
    bound: Duration,
}

impl Drain {
    /// The shutdown order, which matters:
    ///
    /// 1. Refuse new work: the shutdown token (new Engine.IO sessions get 503, readiness
    ///    fails, the background tasks end) and [`Gateway::drain`] (calls get UNAVAILABLE and
    ///    are retried elsewhere, never "0 sockets" for a user who is online).
    /// 2. Health goes NOT_SERVING, for the server and for Messaging.
    /// 3. The sockets are closed and this node's users leave every other node's presence
    ///    (now, not at lease expiry), both by the deadline; meanwhile the grace period runs,
    ///    so health checks see NOT_SERVING while the listeners are still open.
    /// 4. After both, the listeners close.
    /// 5. The health statuses are dropped, which ends open Health/Watch streams that would
    ///    otherwise hold their connections open until the deadline.
    /// 6. The presence broadcast ends.
    /// 7. Connections still open get until the deadline (unless a server had already
    ///    stopped on its own: its result is returned at once).
    async fn drain(
        mut self,
        early: Option<Result<(), ServerError>>,
        http: JoinHandle<()>,
        grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    ) -> Result<(), ServerError> {
        let deadline = tokio::time::Instant::now() + self.bound;
        self.shutdown.cancel();
        self.gateway.drain();
        for service in ["", MessagingServer::<MessagingService>::NAME] {
            self.health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("shutting down: new work refused, closing sockets");
        let close_sockets = async {
            if tokio::time::timeout_at(deadline, self.io.close())
                .await
                .is_err()
            {
                tracing::warn!("sockets not closed by --shutdown-timeout-ms; dropping them");
            }
            let _ = tokio::time::timeout_at(deadline, self.cluster.leave()).await;
        };
        tokio::join!(close_sockets, tokio::time::sleep(self.grace));
        self.stop_servers.cancel();
        for service in ["", MessagingServer::<MessagingService>::NAME] {
            self.health.clear_service_status(service).await;
        }
        let _ = self.presence_task.await;
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
    }
}
