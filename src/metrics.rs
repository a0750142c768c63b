//! What an operator watches, served by `prometheus-client` in the Prometheus text format
//! (version 0.0.4) on `--metrics-addr` (off by default, so nothing extra is exposed on the
//! public ports).
//!
//! Every series a hot path touches is created once, up front or on its first use, and kept as
//! a handle: an event costs one atomic add (an RPC's latency: one uncontended histogram lock),
//! never a label lookup or an allocation. Gauges of state the gateway already keeps (online
//! users, sockets, Redis) are read from it when scraped.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock, RwLock},
    task::{ready, Context, Poll},
    time::Instant,
};

use axum::{
    extract::State,
    http::{self, header, HeaderMap},
    response::IntoResponse,
    routing::get,
    Router,
};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        gauge::Gauge,
        histogram::Histogram,
        MetricType,
    },
    registry::{Metric, Registry},
};
use prost::Message;

use crate::{caller::Caller, cluster::Cluster, presence::Presence, recovery::RecoveryMetrics};

/// Why a Socket.IO handshake was refused (the `cause` label of
/// `gateway_handshakes_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// No user id in the handshake (`--auth none`).
    MissingUserId,
    /// A user id outside the rules.
    InvalidUserId,
    /// No, bad or expired token (`--auth jwt`).
    Unauthorized,
    /// `--max-connections` reached.
    AtCapacity,
    /// HTTP 429: too many sessions not yet connected to the namespace, for the address or in all.
    PendingSessions,
    /// A `presence` handshake parameter other than `list`, `changes` or `none`.
    InvalidPresenceMode,
}

impl HandshakeRefusal {
    /// In declaration order: `cause as usize` indexes it.
    const ALL: [Self; 6] = [
        Self::MissingUserId,
        Self::InvalidUserId,
        Self::Unauthorized,
        Self::AtCapacity,
        Self::PendingSessions,
        Self::InvalidPresenceMode,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::MissingUserId => "missing_user_id",
            Self::InvalidUserId => "invalid_user_id",
            Self::Unauthorized => "unauthorized",
            Self::AtCapacity => "at_capacity",
            Self::PendingSessions => "pending_sessions",
            Self::InvalidPresenceMode => "invalid_presence_mode",
        }
    }
}

/// The gateway's counters, each registered once; gauges are read when scraped.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sockets that connected to the namespace (identified and admitted).
    pub connections: Counter,
    /// Messages a socket accepted.
    pub deliveries: Counter,
    /// Messages a socket refused (buffer full or connection gone).
    pub refusals: Counter,
    /// Sockets disconnected by the gateway (per-user limit, slow reader, flood).
    pub sockets_cut_off: Counter,
    /// Sockets disconnected for sending more than the inbound limit (also in `sockets_cut_off`).
    pub client_floods: Counter,
    /// Online-list broadcast rounds (a resend to sockets that refused the list counts again).
    pub presence_broadcasts: Counter,
    /// JSON bytes of the online lists and change sets times the sockets that took them.
    pub presence_broadcast_bytes: Counter,
    /// `onlineUsersChanged` change sets taken by `presence: "changes"` sockets.
    pub presence_changes: Counter,
    /// Whole lists taken by `presence: "changes"` sockets in broadcast rounds (their first,
    /// or a resync after a refused send).
    pub presence_resyncs: Counter,
    /// Acknowledgements sockets on this node sent in time (SendDirect with ack_timeout_ms).
    pub acked: Counter,
    /// SendDirect calls answered from an earlier call with the same idempotency key.
    pub idempotent_replays: Counter,
    /// `Broadcast` calls served (on the node that took the call).
    pub broadcasts: Counter,
    /// Sockets of this node disconnected by `DisconnectUser` (whichever node took the call).
    pub user_disconnects: Counter,
    /// `WatchPresence` streams opened.
    pub watchers_opened: Counter,
    /// `WatchPresence` streams open now.
    pub watchers: Gauge,
    /// SendDirect messages kept in the offline mailbox.
    pub mail_queued: Counter,
    /// Kept messages handed over and done: acked by a socket, or taken without acks.
    pub mail_delivered: Counter,
    /// Kept messages dropped undelivered: user limit, caller limit, total limit, expired.
    pub mail_dropped: [Counter; 4],
    handshakes_refused: [Counter; HandshakeRefusal::ALL.len()],
    /// Connection state recovery.
    pub recovery: RecoveryMetrics,
    rpc: RpcLatency,
}

impl Metrics {
    /// Registers every metric; `presence` and `cluster` are read at each scrape.
    pub fn new(presence: Arc<Presence>, cluster: Arc<dyn Cluster>) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let r = &mut registry;
        // Fields are evaluated, so registered, in the order written: the order of a scrape.
        // `register` appends a full stop to each help text.
        Self {
            connections: counter(
                r,
                "connections",
                "Sockets that connected to the namespace (identified and admitted)",
            ),
            deliveries: counter(r, "deliveries", "Messages accepted by a socket."),
            refusals: counter(r, "refusals", "Messages a socket could not take."),
            sockets_cut_off: counter(r, "sockets_cut_off", "Sockets the gateway disconnected."),
            client_floods: counter(
                r,
                "client_floods",
                "Sockets disconnected for sending events over the inbound limit",
            ),
            presence_broadcasts: counter(
                r,
                "presence_broadcasts",
                "Online-list broadcast rounds (resends to sockets that refused the list included)",
            ),
            presence_broadcast_bytes: counter(
                r,
                "presence_broadcast_bytes",
                "JSON bytes of online lists and change sets times the sockets that took them",
            ),
            presence_resyncs: counter(
                r,
                "presence_resyncs",
                "Whole online lists taken in broadcast rounds by sockets in presence mode changes (first list or resync)",
            ),
            presence_changes: counter(
                r,
                "presence_changes",
                "onlineUsersChanged change sets taken by sockets in presence mode changes",
            ),
            acked: counter(
                r,
                "acked",
                "Acknowledgements sockets on this node sent in time for SendDirect with ack_timeout_ms",
            ),
            idempotent_replays: counter(
                r,
                "idempotent_replays",
                "SendDirect calls answered from an earlier call with the same idempotency_key, not delivered again",
            ),
            broadcasts: counter(r, "broadcasts", "Broadcast calls served by this node"),
            user_disconnects: counter(
                r,
                "user_disconnects",
                "Sockets of this node disconnected by DisconnectUser",
            ),
            watchers_opened: counter(r, "presence_watchers_opened", "WatchPresence streams opened"),
            mail_queued: counter(
                r,
                "mailbox_queued",
                "SendDirect messages kept in the offline mailbox (ttl_seconds, nobody reached)",
            ),
            mail_delivered: counter(
                r,
                "mailbox_delivered",
                "Kept messages handed to a user's sockets and done: acked, or taken without acks",
            ),
            watchers: registered(
                r,
                "presence_watchers",
                "WatchPresence streams open now",
                Gauge::default(),
            ),
            mail_dropped: by_label(
                r,
                "mailbox_dropped",
                "Kept messages dropped undelivered, by reason",
                "reason",
                ["user_limit", "caller_limit", "total_limit", "expired"],
            ),
            handshakes_refused: by_label(
                r,
                "handshakes_refused",
                "Socket.IO handshakes refused, by cause",
                "cause",
                HandshakeRefusal::ALL.map(HandshakeRefusal::label),
            ),
            recovery: RecoveryMetrics {
                away: registered(
                    r,
                    "recovery_sessions_away",
                    "Sessions whose connection dropped, kept for a connection state recovery now",
                    Gauge::default(),
                ),
                kept_bytes: registered(
                    r,
                    "recovery_kept_bytes",
                    "Bytes of events this node's sessions keep for connection state recoveries",
                    Gauge::default(),
                ),
                attempts: by_label(
                    r,
                    "recovery_attempts",
                    "Reconnects that asked to recover a session, by outcome",
                    "outcome",
                    RecoveryMetrics::OUTCOMES,
                ),
                overflows: by_label(
                    r,
                    "recovery_overflows",
                    "Dropped sessions that could no longer be recovered because their kept events went past a bound",
                    "bound",
                    RecoveryMetrics::BOUNDS,
                ),
            },
            rpc: RpcLatency::new(r),
            registry: {
                r.register_collector(Box::new(Live { presence, cluster }));
                registry
            },
        }
    }

    /// Adds `n` to `counter` and returns the new total. Adding nothing (a delivery that no
    /// socket refused) writes nothing: the counter's cache line, which both cores share,
    /// stays clean.
    pub fn add(counter: &Counter, n: u64) -> u64 {
        if n == 0 {
            return counter.get();
        }
        counter.inc_by(n) + n
    }

    /// Counts the kept messages a mailbox push or take dropped.
    pub fn mail_dropped(&self, dropped: crate::mailbox::Dropped) {
        let by_reason = [
            dropped.user_limit,
            dropped.caller_limit,
            dropped.total_limit,
            dropped.expired,
        ];
        for (counter, n) in self.mail_dropped.iter().zip(by_reason) {
            if n > 0 {
                Self::add(counter, n.into());
            }
        }
    }

    /// Counts a refused handshake; returns the total for this cause.
    pub fn handshake_refused(&self, cause: HandshakeRefusal) -> u64 {
        Self::add(&self.handshakes_refused[cause as usize], 1)
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Registers `metric` under `name` and returns the handle kept for updates.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    registered(registry, name, help, Counter::default())
}

/// One counter per value of a single label, created up front so counting looks nothing up.
fn by_label<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = registered(
        registry,
        name,
        help,
        Family::<[(&'static str, &'static str); 1], Counter>::default(),
    );
    values.map(|value| family.get_or_create(&[(label, value)]).clone())
}

/// The gauges read from the gateway's own state at each scrape.
struct Live {
    presence: Arc<Presence>,
    cluster: Arc<dyn Cluster>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut gauge = |name: &str, help: &str, value: i64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            "online_users",
            "Users with at least one live socket (on any node of a cluster).",
            count(self.presence.online_count()),
        )?;
        gauge(
            "local_online_users",
            "Users with at least one live socket on this node.",
            count(self.presence.local_user_count()),
        )?;
        gauge(
            "sockets",
            "Live sockets registered in presence on this node.",
            count(self.presence.total_sockets()),
        )?;
        let Some(status) = self.cluster.status() else {
            return Ok(());
        };
        gauge(
            "redis_up",
            "1 while Redis is reachable (cluster mode); 0: sends to other nodes fail.",
            i64::from(status.redis_up),
        )?;
        gauge(
            "cluster_nodes",
            "Nodes with a live lease known to this node, itself included.",
            count(status.nodes),
        )?;
        let mut counter = |name: &str, help: &str, value: u64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)
        };
        counter(
            "cluster_late_requests",
            "Requests from other nodes dropped: they arrived after their deadline, when the asker had answered without them.",
            status.late_requests,
        )?;
        counter(
            "cluster_fenced",
            "Times this node found it had been swept while alive and closed its sockets.",
            status.fenced,
        )?;
        let mut info =
            encoder.encode_descriptor("node", "This node's id.", None, MetricType::Info)?;
        info.encode_info(&[("node_id", &*status.node_id)])
    }
}

/// The `/metrics` router.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        metrics.render(),
    )
}

/// gRPC status names, indexed by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// Bucket bounds in seconds: 100 µs (a local unary call) to 10 s (streams, stalls).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: String,
    method: String,
    caller: String,
    code: &'static str,
}

/// The `caller` label of a call nobody was authenticated for (a health check, a refused key).
const NO_CALLER: &str = "none";

/// One caller's histograms of one method, one per status code, created on the first call
/// that ends with it.
type CodeSeries = [OnceLock<Histogram>; CODES.len()];

/// RPC latency per method, caller and code. The methods are every method of every service
/// the gRPC port serves, read from their descriptors, so a new RPC is covered without a
/// change here; any other path is `unknown` (so a scanner cannot grow the label set). The
/// callers are the configured ones, a bounded set.
struct RpcLatency {
    family: Family<RpcLabels, Histogram>,
    by_path: HashMap<String, usize>,
    /// (service, method) by index.
    methods: Vec<(String, String)>,
    by_caller: RwLock<HashMap<Arc<str>, Arc<[CodeSeries]>>>,
    /// [`NO_CALLER`].
    none: Arc<str>,
}

impl std::fmt::Debug for RpcLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLatency")
            .field("methods", &self.by_path.len())
            .finish()
    }
}

impl RpcLatency {
    /// Builds the method table and registers the histogram family in `registry`.
    fn new(registry: &mut Registry) -> Self {
        let mut methods = Vec::new();
        let mut by_path = HashMap::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("a built-in descriptor");
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = format!("{package}.{}", service.name());
                    for method in &service.method {
                        by_path.insert(format!("/{service_name}/{}", method.name()), methods.len());
                        methods.push((service_name.clone(), method.name().to_owned()));
                    }
                }
            }
        }
        methods.push(("unknown".into(), "unknown".into()));
        let family: Family<RpcLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register(
            "rpc_duration_seconds",
            "gRPC calls by service, method, caller and status code: time from the request's \
             arrival to the end of the response (for a streaming call, the end of the stream)",
            family.clone(),
        );
        Self {
            family,
            by_path,
            methods,
            by_caller: RwLock::default(),
            none: NO_CALLER.into(),
        }
    }

    /// The method index of a request path.
    fn index(&self, path: &str) -> usize {
        self.by_path
            .get(path)
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    /// The histograms of `caller`, made on its first call.
    fn of_caller(&self, caller: &Arc<str>) -> Arc<[CodeSeries]> {
        if let Some(series) = self.by_caller.read().expect("not poisoned").get(caller) {
            return series.clone();
        }
        self.by_caller
            .write()
            .expect("not poisoned")
            .entry(caller.clone())
            .or_insert_with(|| self.methods.iter().map(|_| CodeSeries::default()).collect())
            .clone()
    }

    fn observe(&self, caller: Option<&Arc<str>>, index: usize, code: usize, started: Instant) {
        let caller = caller.unwrap_or(&self.none);
        let (service, method) = &self.methods[index];
        self.of_caller(caller)[index][code]
            .get_or_init(|| {
                let labels = RpcLabels {
                    service: service.clone(),
                    method: method.clone(),
                    caller: caller.to_string(),
                    code: CODES[code],
                };
                self.family.get_or_create(&labels).clone()
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The `grpc-status` of a header map (a trailers-only response or the trailers), if any.
fn grpc_status(headers: &HeaderMap) -> Option<usize> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()?;
    Some(if code < CODES.len() { code } else { UNKNOWN })
}

/// Tower layer for the gRPC server (outermost, so it sees the final status): records each
/// call in `gateway_rpc_duration_seconds` when its response ends.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC server.
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// A call being timed; recorded once, when it ends (or is dropped: `CANCELLED`).
struct Timing {
    metrics: Arc<Metrics>,
    index: usize,
    started: Instant,
    /// Known once the response names it.
    caller: Option<Arc<str>>,
}

impl Timing {
    fn record(self, code: usize) {
        self.metrics
            .rpc
            .observe(self.caller.as_ref(), self.index, code, self.started);
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TimedBody<ResBody>>;
    type Error = S::Error;
    type Future = TimedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timing = Timing {
            index: self.metrics.rpc.index(req.uri().path()),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            caller: None,
        };
        TimedCall {
            call: self.inner.call(req),
            timing: Some(timing),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcMetricsService`].
    pub struct TimedCall<F> {
        #[pin]
        call: F,
        timing: Option<Timing>,
    }
}

impl<F, ResBody, E> Future for TimedCall<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<TimedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.call.poll(cx));
        let mut timing = this.timing.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                timing.caller = response
                    .extensions()
                    .get::<Arc<Caller>>()
                    .map(|c| c.name.clone());
                // A trailers-only response (most errors) carries its status in the headers.
                let timing = match grpc_status(response.headers()) {
                    Some(code) => {
                        timing.record(code);
                        None
                    }
                    None => Some(timing),
                };
                Ok(response.map(|body| TimedBody { body, timing }))
            }
            Err(e) => {
                timing.record(UNKNOWN);
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call at the trailers.
    pub struct TimedBody<B> {
        #[pin]
        body: B,
        timing: Option<Timing>,
    }

    impl<B> PinnedDrop for TimedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its trailers: the client reset the stream or went away.
            if let Some(timing) = this.project().timing.take() {
                timing.record(CANCELLED);
            }
        }
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| grpc_status(t).unwrap_or(UNKNOWN)),
            Some(Err(_)) | None => Some(UNKNOWN),
        };
        if let Some(code) = code {
            if let Some(timing) = this.timing.take() {
                timing.record(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
