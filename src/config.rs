//! Command-line and environment configuration.
//!
//! Every flag has an environment variable and a default that serves on a developer's own
//! machine, so a bare `messaging-gateway` runs: single node, in memory, loopback only.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{parser::ValueSource, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::idle::IdleLimits;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How browsers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Trust the `userId` the client sends, as the Node servers it replaces do.
    None,
    /// Require a signed JWT; the user id is its `sub` claim.
    Jwt,
}

/// Gateway configuration.
#[derive(Debug, Clone, Parser)]
#[command(name = "messaging-gateway", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Socket.IO (HTTP/WebSocket) listen address.
    #[arg(long, env = "GATEWAY_HTTP_ADDR", default_value = "127.0.0.1:5000")]
    pub http_addr: SocketAddr,

    /// gRPC listen address.
    #[arg(long, env = "GATEWAY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Origins allowed by CORS for the Socket.IO endpoint, comma-separated; `*` allows any.
    #[arg(
        long,
        env = "GATEWAY_CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Host names, comma-separated, under which the live page (`/`, its assets) and
    /// `/demo/send` are served besides IP literals and `localhost` (each with any port): any
    /// other `Host` is answered 421, so a page of a DNS-rebinding name cannot read the page or
    /// send. Socket.IO and the probes do not check `Host`.
    #[arg(
        long,
        env = "GATEWAY_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_parser = host_name
    )]
    pub allowed_hosts: Vec<String>,

    /// Engine.IO ping interval in milliseconds.
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout in milliseconds: a client silent this long after a ping is dropped.
    #[arg(long, env = "GATEWAY_PING_TIMEOUT_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_timeout_ms: u64,

    /// Time a client has to finish the Socket.IO handshake after the transport opened, and a
    /// new connection on either port to start its first request (and, with --http-tls-cert,
    /// to finish its TLS handshake before that).
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,

    /// Largest Engine.IO payload a client may send, in bytes.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes: u64,

    /// Bytes per second the `getOnlineUsers` fan-out may cost (list size × sockets): with many
    /// users, broadcasts are spaced further apart than --presence-interval-ms so presence never
    /// swamps message delivery. The latest state is still always sent.
    #[arg(long, env = "GATEWAY_PRESENCE_BUDGET_BYTES_PER_SEC", default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_budget_bytes_per_sec: u64,

    /// Packets queued per socket before further sends to it are refused (and not counted as
    /// delivered): a client that stops reading cannot make the gateway's memory grow.
    #[arg(long, env = "GATEWAY_SOCKET_BUFFER_PACKETS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub socket_buffer_packets: u64,

    /// Minimum spacing of `getOnlineUsers` broadcasts; changes in between are coalesced.
    #[arg(long, env = "GATEWAY_PRESENCE_INTERVAL_MS", default_value_t = 50)]
    pub presence_interval_ms: u64,

    /// Browser authentication: `none` trusts the client's userId (loopback only unless
    /// --insecure), `jwt` requires a token in the handshake (auth `{ token }` or query `token`).
    #[arg(long, env = "GATEWAY_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// HS256 secret for --auth jwt.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true, value_parser = not_blank)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret for --auth jwt (trailing newline ignored).
    #[arg(long, env = "GATEWAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) for --auth jwt.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `aud` claim (with --auth jwt).
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim (with --auth jwt).
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most an hour).
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=MAX_JWT_LEEWAY_SECS))]
    pub jwt_leeway_secs: u64,

    /// API key gRPC callers must send as `authorization: Bearer <key>`, at least 16 bytes;
    /// repeatable (the environment variable holds several, comma-separated). Such a key may
    /// call every RPC: name callers and their permissions in --api-keys-file instead.
    #[arg(long = "api-key", env = "GATEWAY_API_KEYS", hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// File of callers, one per line: `KEY name=NAME allow=SendDirect,SendToUsers` (`allow=*`
    /// for every RPC; without allow= the key may call every RPC, as --api-key), optionally
    /// `mailbox=N watchers=N` shares; `#` starts a comment.
    #[arg(long, env = "GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// PEM certificate chain: serve gRPC over TLS.
    #[arg(long, env = "GATEWAY_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "GATEWAY_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,

    /// PEM CA bundle: require gRPC clients to present a certificate it signed (mTLS).
    #[arg(long, env = "GATEWAY_GRPC_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_client_ca: Option<PathBuf>,

    /// With --grpc-client-ca and no API keys: callers by client certificate, one per line,
    /// `NAME-IN-CERT name=NAME allow=...` as in --api-keys-file, where NAME-IN-CERT is the
    /// subject's common name or a DNS, URI or email alternative name. A certificate not
    /// listed is refused (PERMISSION_DENIED). Unset: every certificate the CA signed may
    /// call every RPC.
    #[arg(
        long,
        env = "GATEWAY_GRPC_CLIENT_CALLERS_FILE",
        requires = "grpc_client_ca"
    )]
    pub grpc_client_callers_file: Option<PathBuf>,

    /// Allow --auth none on a non-loopback Socket.IO address, and gRPC without API keys on a
    /// non-loopback address.
    #[arg(long, env = "GATEWAY_INSECURE")]
    pub insecure: bool,

    /// Serve `POST /demo/send` (the live page's send form) on the HTTP port. Without it the
    /// endpoint exists only with --auth none on a loopback --http-addr; on a non-loopback
    /// address --demo also needs --insecure.
    #[arg(long, env = "GATEWAY_DEMO")]
    pub demo: bool,

    /// PEM certificate chain: serve the Socket.IO port (Socket.IO, the page, the probes) over
    /// TLS, as https and wss (HTTP/1.1).
    #[arg(long, env = "GATEWAY_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,

    /// PEM private key of --http-tls-cert.
    #[arg(long, env = "GATEWAY_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,

    /// Largest message accepted, measured as encoded JSON, in bytes.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub max_message_bytes: u64,

    /// Largest gRPC request accepted, in bytes.
    #[arg(long, env = "GATEWAY_GRPC_MAX_DECODING_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    pub grpc_max_decoding_bytes: u64,

    /// Sockets one user may hold; connecting one more disconnects the user's oldest socket.
    #[arg(long, env = "GATEWAY_MAX_SOCKETS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_sockets_per_user: u64,

    /// User ids a `watch`-mode socket may watch (handshake, `watchlist` claim, SetWatchlist);
    /// a longer list is refused.
    #[arg(long, env = "GATEWAY_MAX_WATCHLIST", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_watchlist: u64,

    /// Sockets the gateway holds in all; beyond, handshakes are refused.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Engine.IO sessions one source address (IPv6: one /64) may hold before connecting to
    /// the namespace (authenticating); further handshakes get 429.
    #[arg(long, env = "GATEWAY_MAX_PENDING_SESSIONS_PER_IP", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_sessions_per_ip: u64,

    /// Engine.IO sessions all clients together may hold before connecting to the namespace.
    #[arg(long, env = "GATEWAY_MAX_PENDING_SESSIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_sessions: u64,

    /// Sends a socket may refuse in a row (its buffer full) before it is disconnected.
    #[arg(long, env = "GATEWAY_MAX_DROPPED_SENDS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_dropped_sends: u32,

    /// After SIGINT/SIGTERM, how long the listeners stay open answering health checks
    /// (NOT_SERVING) while new work is refused, so load balancers see the drain instead of
    /// refused connections.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_MS", default_value_t = 1000)]
    pub shutdown_grace_ms: u64,

    /// Bound on the whole shutdown, from the signal to exit: connections still open then
    /// (a client that stopped reading) are closed at the transport level.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT_MS", default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..))]
    pub shutdown_timeout_ms: u64,

    /// Events a client may send per second: the gateway ignores them, so beyond an ordinary
    /// frontend's rate they only take CPU from deliveries; over it, the socket is told why
    /// (`disconnectReason`) and disconnected.
    #[arg(long, env = "GATEWAY_MAX_CLIENT_EVENTS_PER_SEC", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_events_per_sec: u32,

    /// Bytes of events a client may send per second; over it, as for --max-client-events-per-sec.
    #[arg(long, env = "GATEWAY_MAX_CLIENT_BYTES_PER_SEC", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_client_bytes_per_sec: u64,

    /// HTTP/2 keepalive ping interval on both ports; a connection whose peer does not answer
    /// within --http2-keepalive-timeout-ms is closed.
    #[arg(long, env = "GATEWAY_HTTP2_KEEPALIVE_INTERVAL_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_interval_ms: u64,

    /// Time an HTTP/2 peer has to answer a keepalive ping.
    #[arg(long, env = "GATEWAY_HTTP2_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_timeout_ms: u64,

    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive,
    /// HTTP/2 with no open stream), on both ports.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics; off when unset.
    #[arg(long, env = "GATEWAY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Redis to run as one node of a cluster: `redis://[[user]:password@]host:port[/db]`, or
    /// `rediss://` for TLS; several comma-separated URLs are seeds of a Redis Cluster.
    /// Unset: a single node, everything in memory.
    #[arg(
        long,
        env = "GATEWAY_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_url: Vec<String>,

    /// The --redis-url servers are a Redis Cluster (sharded pub/sub between nodes).
    #[arg(long, env = "GATEWAY_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// PEM CA bundle that a `rediss://` server's certificate must chain to, instead of the
    /// system trust store (a private CA is the usual case for Redis).
    #[arg(long, env = "GATEWAY_REDIS_TLS_CA", requires = "redis_url")]
    pub redis_tls_ca: Option<PathBuf>,

    /// This node's name in the cluster, logs and metrics; default: host name plus a random
    /// suffix. 1..=64 printable characters, no spaces, `{` or `}`.
    #[arg(long, env = "GATEWAY_NODE_ID", value_parser = node_id)]
    pub node_id: Option<String>,

    /// A node that has not renewed its lease for this long is presumed dead and its users
    /// leave presence on every node. Renewed every fifth of it.
    #[arg(long, env = "GATEWAY_NODE_LEASE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..=3_600_000))]
    pub node_lease_ms: u64,

    /// WatchPresence streams open at once; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GATEWAY_MAX_PRESENCE_WATCHERS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_presence_watchers: u64,

    /// WatchPresence streams one caller may hold open unless its `watchers=` in the callers
    /// file says otherwise; one more is refused with RESOURCE_EXHAUSTED naming the caller, so
    /// one caller cannot take every slot of --max-presence-watchers.
    #[arg(long, env = "GATEWAY_MAX_PRESENCE_WATCHERS_PER_CALLER", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_presence_watchers_per_caller: u64,

    /// Presence changes a WatchPresence stream may fall behind (its reader slower than the
    /// changes) before it ends with RESOURCE_EXHAUSTED; one shared ring for all watchers.
    #[arg(long, env = "GATEWAY_WATCH_BUFFER_EVENTS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watch_buffer_events: u64,

    /// How long a send waits for the other nodes holding the receiver to report their counts.
    #[arg(long, env = "GATEWAY_CLUSTER_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub cluster_timeout_ms: u64,

    /// How long a SendDirect idempotency_key is remembered: a retry with it within this window
    /// gets the first call's answer and is not delivered again.
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_WINDOW_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1000..=86_400_000))]
    pub idempotency_window_ms: u64,

    /// Most idempotency keys remembered per caller (its API key's or certificate's name;
    /// one "anonymous" caller when the gRPC port does not authenticate): in memory on a
    /// single node, in Redis in cluster mode. Beyond, the caller's oldest are forgotten
    /// first, never another caller's. Redis holds at most callers x this x about 320 bytes
    /// (a 30-byte receiver id plus key; 890 with 128-byte ones), whatever the window.
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_MAX_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub idempotency_max_keys: u64,

    /// Messages the offline mailbox keeps for one user (SendDirect with ttl_seconds to a user
    /// nobody's socket took); beyond, the user's oldest is dropped.
    #[arg(long, env = "GATEWAY_MAILBOX_MAX_PER_USER", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub mailbox_max_per_user: u64,

    /// Messages the offline mailbox keeps in all (per node on a single node, cluster-wide in
    /// Redis); beyond, the oldest of all is dropped.
    #[arg(long, env = "GATEWAY_MAILBOX_MAX_TOTAL", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub mailbox_max_total: u64,

    /// Bytes the offline mailbox keeps in all (each message counted as its JSON, event name
    /// and user id; per node on a single node, cluster-wide in Redis); beyond, the oldest of
    /// all is dropped. At least --max-message-bytes.
    #[arg(long, env = "GATEWAY_MAILBOX_MAX_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024 * 1024))]
    pub mailbox_max_bytes: u64,

    /// Messages the offline mailbox keeps for one caller (a backend's key or certificate)
    /// unless its `mailbox=` in the callers file says otherwise; beyond, the caller's own
    /// oldest is dropped. 0 (the default): as many as --mailbox-max-total, so one caller
    /// alone loses nothing it kept before; when the mailbox is full, the caller holding the
    /// most loses its oldest, so a caller's flood never evicts one holding less.
    #[arg(long, env = "GATEWAY_MAILBOX_MAX_PER_CALLER", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub mailbox_max_per_caller: u64,

    /// Connection state recovery: how long a socket whose connection dropped (transport closed
    /// or failed, ping timeout) stays recoverable, in milliseconds. Meanwhile what is sent to it
    /// is kept, its user stays online, and socket.io-client reconnecting with its session id
    /// gets its `socket.id` back and every event it missed, once, in order. 0 turns recovery
    /// off (no session id, no offsets).
    #[arg(long, env = "GATEWAY_RECOVERY_WINDOW_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub recovery_window_ms: u64,

    /// Events one session keeps for a recovery; one more and the session can no longer be
    /// recovered (its reconnect gets a new session).
    #[arg(long, env = "GATEWAY_RECOVERY_MAX_EVENTS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub recovery_max_events: u64,

    /// Bytes one session keeps for a recovery (each event counted as its encoded packet);
    /// beyond, as past --recovery-max-events.
    #[arg(long, env = "GATEWAY_RECOVERY_MAX_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub recovery_max_bytes: u64,

    /// Bytes all sessions of this node keep for recoveries; a session that would go past it
    /// can no longer be recovered.
    #[arg(long, env = "GATEWAY_RECOVERY_MAX_TOTAL_BYTES", default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024 * 1024))]
    pub recovery_max_total_bytes: u64,
}

/// Largest `--jwt-leeway-secs`: more would accept long-expired tokens (and, near `u64::MAX`,
/// wrap the expiry arithmetic).
pub const MAX_JWT_LEEWAY_SECS: u64 = 3600;

/// A `--node-id`: 1..=64 printable characters, no spaces, `{` or `}` (the id is part of Redis
/// keys with a hash tag, and of log lines and metric labels). Checked at parse time, so a bad
/// id exits 2 in every mode, not only with `--redis-url`.
pub fn node_id(value: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&value.len())
        && value
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '{' && c != '}');
    if !ok {
        return Err("use 1 to 64 printable characters without spaces, '{' or '}'".into());
    }
    Ok(value.to_owned())
}

/// An `--allowed-hosts` entry: a DNS name (letters, digits, `-`, `.`), without scheme or
/// port, kept in lower case.
fn host_name(value: &str) -> Result<String, String> {
    let ok = (1..=253).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok {
        return Err("use a host name without scheme or port, e.g. chat.example.com".into());
    }
    Ok(value.to_ascii_lowercase())
}

/// Refuses a value of only whitespace (a secret of spaces is no secret).
fn not_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("only whitespace".into());
    }
    Ok(value.to_owned())
}

impl Config {
    /// Parses `args` (the program name first) and the environment; a `GATEWAY_API_KEYS`
    /// holds several keys, comma-separated, while each `--api-key` is one key, commas
    /// included.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut config = Self::from_arg_matches(&matches)?;
        if matches.value_source("api_keys") == Some(ValueSource::EnvVariable) {
            config.api_keys = config
                .api_keys
                .iter()
                .flat_map(|keys| keys.split(','))
                .filter(|k| !k.trim().is_empty())
                .map(str::to_owned)
                .collect();
        }
        Ok(config)
    }

    /// A configuration for tests: ephemeral loopback ports, defaults otherwise.
    pub fn ephemeral() -> Self {
        Self::parse_from([
            "messaging-gateway",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
    }

    /// `--ping-interval-ms`.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// `--ping-timeout-ms`.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    /// `--connect-timeout-ms`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `--node-lease-ms`.
    pub fn node_lease(&self) -> Duration {
        Duration::from_millis(self.node_lease_ms)
    }

    /// `--idempotency-window-ms`.
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_millis(self.idempotency_window_ms)
    }

    /// `--cluster-timeout-ms`.
    pub fn cluster_timeout(&self) -> Duration {
        Duration::from_millis(self.cluster_timeout_ms)
    }

    /// `--presence-interval-ms`.
    pub fn presence_interval(&self) -> Duration {
        Duration::from_millis(self.presence_interval_ms)
    }

    /// `--shutdown-grace-ms`.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// `--shutdown-timeout-ms`.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// HTTP/2 keepalive: ping interval and the time a ping has to be answered.
    pub fn http2_keepalive(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.http2_keepalive_interval_ms),
            Duration::from_millis(self.http2_keepalive_timeout_ms),
        )
    }

    /// How long a connection may go without a request: before its first one (the handshake
    /// timeout) and between them.
    pub fn idle_limits(&self) -> IdleLimits {
        IdleLimits {
            first_request: self.connect_timeout(),
            idle: Duration::from_millis(self.idle_timeout_ms),
        }
    }

    /// The limits the gateway enforces at run time.
    pub fn limits(&self) -> Limits {
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Limits {
            max_message_bytes: clamp(self.max_message_bytes),
            max_sockets_per_user: clamp(self.max_sockets_per_user),
            max_watchlist: clamp(self.max_watchlist),
            max_connections: clamp(self.max_connections),
            max_dropped_sends: self.max_dropped_sends,
            max_client_events_per_sec: self.max_client_events_per_sec,
            max_client_bytes_per_sec: self.max_client_bytes_per_sec,
            max_pending_sessions_per_ip: clamp(self.max_pending_sessions_per_ip),
            max_pending_sessions: clamp(self.max_pending_sessions),
            max_presence_watchers: clamp(self.max_presence_watchers),
            max_presence_watchers_per_caller: clamp(self.max_presence_watchers_per_caller),
            watch_buffer_events: clamp(self.watch_buffer_events),
            socket_buffer_packets: clamp(self.socket_buffer_packets),
        }
    }

    /// Whether `POST /demo/send` is served: anyone who reaches it can message any user.
    pub fn demo_send(&self) -> bool {
        self.demo || (self.auth == AuthMode::None && self.http_addr.ip().is_loopback())
    }

    /// The JWT flags set (on the command line or by their environment variable), named as
    /// `--flag (ENV_VAR)`, or None. Without `--auth jwt` they would be ignored.
    fn jwt_flags_given(&self) -> Option<String> {
        let given: Vec<&str> = [
            (
                self.jwt_secret.is_some(),
                "--jwt-secret (GATEWAY_JWT_SECRET)",
            ),
            (
                self.jwt_secret_file.is_some(),
                "--jwt-secret-file (GATEWAY_JWT_SECRET_FILE)",
            ),
            (
                self.jwt_public_key_file.is_some(),
                "--jwt-public-key-file (GATEWAY_JWT_PUBLIC_KEY_FILE)",
            ),
            (
                self.jwt_audience.is_some(),
                "--jwt-audience (GATEWAY_JWT_AUDIENCE)",
            ),
            (
                self.jwt_issuer.is_some(),
                "--jwt-issuer (GATEWAY_JWT_ISSUER)",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        (!given.is_empty()).then(|| given.join(", "))
    }

    /// Refuses combinations that would expose users: checked once at startup.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.shutdown_grace_ms >= self.shutdown_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "--shutdown-grace-ms ({}) must be shorter than --shutdown-timeout-ms ({})",
                self.shutdown_grace_ms, self.shutdown_timeout_ms
            )));
        }
        if self.mailbox_max_bytes < self.max_message_bytes {
            return Err(ConfigError::Invalid(format!(
                "--mailbox-max-bytes ({}) must be at least --max-message-bytes ({}): a message must fit",
                self.mailbox_max_bytes, self.max_message_bytes
            )));
        }
        if self.auth != AuthMode::Jwt {
            if let Some(flags) = self.jwt_flags_given() {
                return Err(ConfigError::Invalid(format!(
                    "{flags} given without --auth jwt, which would leave browsers unauthenticated: add --auth jwt, or drop the JWT settings"
                )));
            }
        }
        let loopback_http = self.http_addr.ip().is_loopback();
        if self.auth == AuthMode::None && !loopback_http && !self.insecure {
            return Err(ConfigError::Unsafe(format!(
                "--auth none on non-loopback {} lets anyone claim any user id; use --auth jwt or add --insecure",
                self.http_addr
            )));
        }
        if self.demo && !loopback_http && !self.insecure {
            return Err(ConfigError::Unsafe(format!(
                "--demo on non-loopback {} lets anyone message any user; drop --demo or add --insecure",
                self.http_addr
            )));
        }
        if self.auth == AuthMode::Jwt && self.cors_origins.iter().any(|o| o == "*") {
            return Err(ConfigError::Unsafe(
                "--cors-origins * is only allowed with --auth none; list the frontend origins"
                    .into(),
            ));
        }
        // A client CA authenticates callers as keys do.
        let no_callers = self.api_keys.is_empty()
            && self.api_keys_file.is_none()
            && self.grpc_client_ca.is_none();
        if no_callers && !self.grpc_addr.ip().is_loopback() && !self.insecure {
            return Err(ConfigError::Unsafe(format!(
                "gRPC on non-loopback {} without --api-key or --grpc-client-ca lets anyone message anyone; set API keys, require client certificates or add --insecure",
                self.grpc_addr
            )));
        }
        Ok(())
    }
}

/// Limits enforced at run time, each with a safe default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-message-bytes`.
    pub max_message_bytes: usize,
    /// `--max-sockets-per-user`.
    pub max_sockets_per_user: usize,
    /// `--max-watchlist`.
    pub max_watchlist: usize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--max-dropped-sends`.
    pub max_dropped_sends: u32,
    /// `--max-client-events-per-sec`.
    pub max_client_events_per_sec: u32,
    /// `--max-client-bytes-per-sec`.
    pub max_client_bytes_per_sec: u64,
    /// `--max-pending-sessions-per-ip`.
    pub max_pending_sessions_per_ip: usize,
    /// `--max-pending-sessions`.
    pub max_pending_sessions: usize,
    /// `--max-presence-watchers`.
    pub max_presence_watchers: usize,
    /// `--max-presence-watchers-per-caller`.
    pub max_presence_watchers_per_caller: usize,
    /// `--watch-buffer-events`.
    pub watch_buffer_events: usize,
    /// `--socket-buffer-packets`.
    pub socket_buffer_packets: usize,
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A combination that would expose the gateway (e.g. no authentication on a public
    /// address) without the flag that says it is meant.
    #[error("refusing to start: {0}")]
    Unsafe(String),
    /// A file named by a flag cannot be read.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is for (the flag).
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A value or combination of flags that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

/// Reads a whole file, naming it in the error.
pub fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_api_keys_accumulate_and_later_flags_win() {
        let c = Config::parse_from([
            "gw",
            "--api-key",
            "a",
            "--api-key",
            "b,c",
            "--http-addr",
            "127.0.0.1:1",
            "--http-addr",
            "127.0.0.1:2",
        ]);
        assert_eq!(
            c.api_keys,
            ["a", "b,c"],
            "a flag is one key, commas included"
        );
        assert_eq!(c.http_addr.port(), 2);
    }

    #[test]
    fn allowed_hosts_are_names_without_port_in_lower_case() {
        let parse = |v: &str| Config::try_parse_from(["gw", "--allowed-hosts", v]);
        let c = parse("chat.example.com,GW-1.Internal").unwrap();
        assert_eq!(c.allowed_hosts, ["chat.example.com", "gw-1.internal"]);
        for bad in ["chat.example.com:443", "http://chat.example.com", "a b", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_secrets_and_huge_leeways_are_refused() {
        let parse = |args: &[&str]| Config::try_parse_from(["gw"].iter().chain(args));
        assert!(parse(&["--jwt-secret", "                "]).is_err());
        assert!(parse(&["--jwt-secret", " a secret with spaces "]).is_ok());
        assert!(parse(&["--jwt-leeway-secs", "4000000000"]).is_err());
        assert!(parse(&["--jwt-leeway-secs", "3600"]).is_ok());
    }

    #[test]
    fn node_ids_are_checked_without_redis() {
        let parse = |id: &str| Config::try_parse_from(["gw", "--node-id", id]);
        for bad in ["", "a b", "{x}", "tab\t", &"n".repeat(65)] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        for good in ["node-1", "é", &"n".repeat(64)] {
            assert_eq!(parse(good).unwrap().node_id.as_deref(), Some(good));
        }
    }

    #[test]
    fn jwt_settings_need_auth_jwt() {
        let check = |args: &[&str]| {
            Config::try_parse_from(["gw"].iter().chain(args))
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        let err = check(&["--jwt-audience", "web", "--jwt-issuer", "idp"]).unwrap_err();
        assert_eq!(
            err,
            "--jwt-audience (GATEWAY_JWT_AUDIENCE), --jwt-issuer (GATEWAY_JWT_ISSUER) given \
             without --auth jwt, which would leave browsers unauthenticated: add --auth jwt, or \
             drop the JWT settings"
        );
        for flag in ["--jwt-secret", "--jwt-secret-file", "--jwt-public-key-file"] {
            assert!(check(&[flag, "x"]).unwrap_err().starts_with(flag));
        }
        let jwt = ["--auth", "jwt", "--cors-origins", "http://app.test"];
        assert!(
            check(&[&jwt[..], &["--jwt-secret", "x", "--jwt-audience", "web"]].concat()).is_ok()
        );
    }
}
