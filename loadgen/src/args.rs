//! The scenarios' command-line flags: those every scenario shares (`Common`), those of the
//! two that send (`SendArgs`), and each scenario's own.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};

#[derive(Args, Clone)]
pub struct Common {
    /// Socket.IO (HTTP) address of the server.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub http: SocketAddr,
    /// More Socket.IO addresses (nodes of one cluster, comma-separated): client i connects to
    /// the (i mod n)-th of --http and these.
    #[arg(long, value_delimiter = ',')]
    pub http_more: Vec<SocketAddr>,
    /// gRPC address of the server.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,
    /// Server process to sample for RSS and CPU time (/proc/PID).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Name of the server in the results (e.g. gateway, node).
    #[arg(long, default_value = "server")]
    pub server: String,
    /// Name of the scenario in the results.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Also append the JSON result line to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Distinct users (at least 1).
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub users: usize,
    /// Sockets (tabs) per user.
    #[arg(long, default_value_t = 1)]
    pub tabs: usize,
    /// User ids are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Connect without a userId (presence then carries no ids).
    #[arg(long)]
    pub no_user_id: bool,
    /// Online count every client must see to count as settled (default: --users). Set it
    /// to the cluster-wide count when several loadgen processes each drive one node.
    #[arg(long)]
    pub presence_target: Option<u32>,
    /// What presence clients ask for: `list` (the whole getOnlineUsers list on every change),
    /// `changes` (one list, then onlineUsersChanged change sets; each client keeps only a
    /// count: the last list's length plus the sets' online minus offline) or `none` (no
    /// presence events: a client counts as settled once acked).
    #[arg(long, value_enum, default_value_t = PresenceMode::List)]
    pub presence_mode: PresenceMode,
    /// Source addresses 127.0.0.1..=127.0.0.K to spread clients over; 0 = one per 10k clients.
    #[arg(long, default_value_t = 0)]
    pub src_ips: usize,
    /// Handshakes in progress at once (TCP connect until the Socket.IO connect ack).
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,
    /// Bound on connecting all clients, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Bound on waiting for presence to settle after connecting, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub settle_timeout: f64,
    /// Presence counts as settled after this long without a getOnlineUsers frame, in ms.
    #[arg(long, default_value_t = 300)]
    pub quiet_ms: u64,
    /// Presence counts as stalled (a lost update) after this long without a getOnlineUsers
    /// frame while some clients still lack the full list, in ms (at least --quiet-ms). The
    /// gateway spaces broadcasts by its byte budget (list size x sockets): with tens of
    /// thousands of users a gap of many seconds is pacing, not a stall.
    #[arg(long, default_value_t = 3000)]
    pub stall_ms: u64,
    /// Bound on waiting for the server's ports to accept connections, in seconds.
    #[arg(long, default_value_t = 20.0)]
    pub ready_timeout: f64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum PresenceMode {
    List,
    Changes,
    None,
}

#[derive(Args, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub c: Common,
    /// Seconds to hold the idle connections before sampling RSS.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// A directory shared by the loadgen processes of one run: once its clients settled (or
    /// timed out), each process leaves a file there and holds its clients until
    /// --barrier-count files are there (at most --settle-timeout), so no process takes its
    /// users offline while another one's clients still wait for them.
    #[arg(long, requires = "barrier_count")]
    pub barrier: Option<PathBuf>,
    /// Processes meeting at --barrier.
    #[arg(long)]
    pub barrier_count: Option<usize>,
}

#[derive(Args, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub c: Common,
}

#[derive(Args, Clone)]
pub struct SendArgs {
    /// Messages to send at most.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Seconds to send for at most.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Filler bytes per message (a "z" string field), besides r/s/t.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// gRPC connections (HTTP/2) to spread calls over.
    #[arg(long, default_value_t = 2)]
    pub grpc_conns: usize,
    /// Seconds to wait after the last send for deliveries still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
}

#[derive(Args, Clone)]
pub struct DirectArgs {
    #[command(flatten)]
    pub c: Common,
    #[command(flatten)]
    pub s: SendArgs,
    /// Calls in flight (closed loop). Ignored with --rate.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Offered rate in calls per second (open loop; latency counted from the scheduled time).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Calls in flight at most in open loop.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// SendDirect.ack_timeout_ms on every call (0: no ack); the clients ack each message.
    #[arg(long, default_value_t = 0)]
    pub ack_timeout_ms: u32,
    /// A unique SendDirect.idempotency_key on every call.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// SendDirect.ttl_seconds on every call (0: off): a message nobody takes is kept in the
    /// offline mailbox.
    #[arg(long, default_value_t = 0)]
    pub ttl_seconds: u32,
    /// Address users who never connect (`<prefix>offline-N`), so with --ttl-seconds every
    /// call is kept in the mailbox: the cost of the keeping path.
    #[arg(long)]
    pub offline_receivers: bool,
}

#[derive(Args, Clone)]
pub struct StreamArgs {
    #[command(flatten)]
    pub c: Common,
    #[command(flatten)]
    pub s: SendArgs,
    /// Concurrent SendStream calls.
    #[arg(long, default_value_t = 2)]
    pub streams: usize,
    /// Requests in flight (sent, not yet answered) per stream.
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
}
