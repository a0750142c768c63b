//! Command-line and environment configuration.
//!
//! Every flag has an environment variable and a default that serves on a developer's own
//! machine, so a bare `messaging-gateway` runs: single node, in memory, loopback only.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Gateway configuration.
#[derive(Debug, Clone, Parser)]
#[command(name = "messaging-gateway", version, about, long_about = None)]
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

    /// Engine.IO ping interval in milliseconds.
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS", default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout in milliseconds: a client silent this long after a ping is dropped.
    #[arg(long, env = "GATEWAY_PING_TIMEOUT_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_timeout_ms: u64,

    /// Time a client has to finish the Socket.IO handshake after the transport opened.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,

    /// Largest Engine.IO payload a client may send, in bytes.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes: u64,

    /// Packets queued per socket before further sends to it are refused (and not counted as
    /// delivered): a client that stops reading cannot make the gateway's memory grow.
    #[arg(long, env = "GATEWAY_SOCKET_BUFFER_PACKETS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub socket_buffer_packets: u64,

    /// Minimum spacing of `getOnlineUsers` broadcasts; changes in between are coalesced.
    #[arg(long, env = "GATEWAY_PRESENCE_INTERVAL_MS", default_value_t = 50)]
    pub presence_interval_ms: u64,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
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

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn presence_interval(&self) -> Duration {
        Duration::from_millis(self.presence_interval_ms)
    }
}
