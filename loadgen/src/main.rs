//! `loadgen`: drives a Socket.IO + gRPC messaging server through its wire contract only
//! (Engine.IO v4 / Socket.IO v5 over WebSocket, `messaging.v1.Messaging` over gRPC), so the
//! same scenarios run against the gateway and against the Node peer.
//!
//! Scenarios (one per process run, every phase bounded in count and time):
//! `idle` (RSS per idle connection), `storm` (N users connecting at once, until acked and
//! until presence has settled), `direct` (SendDirect at fixed concurrency or offered rate:
//! RPC and end-to-end delivery latency, loss, order), `stream` (SendStream, gateway only).
//! Each prints a table and one JSON line; `report` turns JSON lines into REPORT.md and a
//! latency CDF chart.

mod client;
mod report;
mod sys;
mod unary;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use messaging_gateway::proto::{
    messaging_client::MessagingClient, SendDirectRequest, SendDirectResponse, SendStreamRequest,
};
use prost_types::{value::Kind, Struct, Value};
use serde_json::{json, Map, Value as Json};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use client::{new_histogram, Hub, Spec};
use unary::Unary;

/// jemalloc: the gRPC client allocates per call, and glibc malloc showed up in its profile.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use sys::{sample, ProcSample, Progress};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for Socket.IO + gRPC messaging servers (the gateway and the Node peer)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect clients, let presence settle, hold them idle: server RSS per connection.
    Idle(IdleArgs),
    /// Users connecting at once: time until all are acked and all have seen the full online list.
    Storm(StormArgs),
    /// SendDirect at a fixed concurrency or offered rate: throughput, RPC and delivery latency, loss.
    Direct(DirectArgs),
    /// SendStream (bidirectional, gateway only): delivered messages per second, loss.
    Stream(StreamArgs),
    /// Write REPORT.md and the latency CDF chart (SVG) from JSON result lines.
    Report(report::ReportArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Socket.IO (HTTP) address of the server.
    #[arg(long, default_value = "127.0.0.1:5000")]
    http: SocketAddr,
    /// gRPC address of the server.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc: SocketAddr,
    /// Server process to sample for RSS and CPU time (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of the server in the results (e.g. gateway, node).
    #[arg(long, default_value = "server")]
    server: String,
    /// Name of the scenario in the results.
    #[arg(long)]
    scenario: Option<String>,
    /// Also append the JSON result line to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Sockets (tabs) per user.
    #[arg(long, default_value_t = 1)]
    tabs: usize,
    /// User ids are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// Connect without a userId (presence then carries no ids).
    #[arg(long)]
    no_user_id: bool,
    /// Online count every client must see to count as settled (default: --users). Set it
    /// to the cluster-wide count when several loadgen processes each drive one node.
    #[arg(long)]
    presence_target: Option<u32>,
    /// What presence clients ask for: `list` (the whole getOnlineUsers list on every change)
    /// or `changes` (one list, then onlineUsersChanged change sets; each client keeps only a
    /// count: the last list's length plus the sets' online minus offline).
    #[arg(long, value_enum, default_value_t = PresenceMode::List)]
    presence_mode: PresenceMode,
    /// Source addresses 127.0.0.1..=127.0.0.K to spread clients over; 0 = one per 10k clients.
    #[arg(long, default_value_t = 0)]
    src_ips: usize,
    /// Handshakes in progress at once (TCP connect until the Socket.IO connect ack).
    #[arg(long, default_value_t = 512)]
    connect_concurrency: usize,
    /// Bound on connecting all clients, in seconds.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Bound on waiting for presence to settle after connecting, in seconds.
    #[arg(long, default_value_t = 30.0)]
    settle_timeout: f64,
    /// Presence counts as settled after this long without a getOnlineUsers frame, in ms.
    #[arg(long, default_value_t = 300)]
    quiet_ms: u64,
    /// Presence counts as stalled (a lost update) after this long without a getOnlineUsers
    /// frame while some clients still lack the full list, in ms (at least --quiet-ms). The
    /// gateway spaces broadcasts by its byte budget (list size x sockets): with tens of
    /// thousands of users a gap of many seconds is pacing, not a stall.
    #[arg(long, default_value_t = 3000)]
    stall_ms: u64,
    /// Bound on waiting for the server's ports to accept connections, in seconds.
    #[arg(long, default_value_t = 20.0)]
    ready_timeout: f64,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum PresenceMode {
    List,
    Changes,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    c: Common,
    /// Seconds to hold the idle connections before sampling RSS.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// A directory shared by the loadgen processes of one run: once its clients settled (or
    /// timed out), each process leaves a file there and holds its clients until
    /// --barrier-count files are there (at most --settle-timeout), so no process takes its
    /// users offline while another one's clients still wait for them.
    #[arg(long, requires = "barrier_count")]
    barrier: Option<PathBuf>,
    /// Processes meeting at --barrier.
    #[arg(long)]
    barrier_count: Option<usize>,
}

#[derive(Args, Clone)]
struct StormArgs {
    #[command(flatten)]
    c: Common,
}

#[derive(Args, Clone)]
struct SendArgs {
    /// Messages to send at most.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Seconds to send for at most.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Filler bytes per message (a "z" string field), besides r/s/t.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// gRPC connections (HTTP/2) to spread calls over.
    #[arg(long, default_value_t = 2)]
    grpc_conns: usize,
    /// Seconds to wait after the last send for deliveries still on their way.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
}

#[derive(Args, Clone)]
struct DirectArgs {
    #[command(flatten)]
    c: Common,
    #[command(flatten)]
    s: SendArgs,
    /// Calls in flight (closed loop). Ignored with --rate.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offered rate in calls per second (open loop; latency counted from the scheduled time).
    #[arg(long)]
    rate: Option<f64>,
    /// Calls in flight at most in open loop.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// SendDirect.ack_timeout_ms on every call (0: no ack); the clients ack each message.
    #[arg(long, default_value_t = 0)]
    ack_timeout_ms: u32,
    /// A unique SendDirect.idempotency_key on every call.
    #[arg(long)]
    idempotency_keys: bool,
    /// SendDirect.ttl_seconds on every call (0: off): a message nobody takes is kept in the
    /// offline mailbox.
    #[arg(long, default_value_t = 0)]
    ttl_seconds: u32,
    /// Address users who never connect (`<prefix>offline-N`), so with --ttl-seconds every
    /// call is kept in the mailbox: the cost of the keeping path.
    #[arg(long)]
    offline_receivers: bool,
}

#[derive(Args, Clone)]
struct StreamArgs {
    #[command(flatten)]
    c: Common,
    #[command(flatten)]
    s: SendArgs,
    /// Concurrent SendStream calls.
    #[arg(long, default_value_t = 2)]
    streams: usize,
    /// Requests in flight (sent, not yet answered) per stream.
    #[arg(long, default_value_t = 2048)]
    window: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Report(args) => {
            return match report::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen report: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Idle(a) => a.c.clone(),
        Cmd::Storm(a) => a.c.clone(),
        Cmd::Direct(a) => a.c.clone(),
        Cmd::Stream(a) => a.c.clone(),
    };
    let nofile = sys::raise_nofile();
    let clients = (common.users * common.tabs) as u64;
    if clients + 256 > nofile {
        eprintln!(
            "loadgen: warning: {clients} clients but the open-files limit is {nofile}; \
             connects beyond it will fail"
        );
    }
    let rt = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = common.clone();
    let result = rt.block_on(async move {
        wait_ready(&ready).await?;
        match cli.cmd {
            Cmd::Idle(a) => idle(a).await,
            Cmd::Storm(a) => storm(a).await,
            Cmd::Direct(a) => direct(a).await,
            Cmd::Stream(a) => stream(a).await,
            Cmd::Report(_) => unreachable!(),
        }
    });
    let code = match result {
        Ok(mut out) => {
            out.insert("nofile_limit".into(), json!(nofile));
            if let Err(e) = emit(&common, out) {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    };
    // Thousands of client tasks hold sockets: exit without tearing them down one by one.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
}

/// Prints the table and the JSON line; appends the line to --json-out.
fn emit(c: &Common, mut out: Map<String, Json>) -> Result<(), String> {
    out.insert("server".into(), json!(c.server));
    out.entry("scenario")
        .or_insert_with(|| json!(c.scenario.clone().unwrap_or_default()));
    if let Some(s) = &c.scenario {
        out.insert("scenario".into(), json!(s));
    }
    println!("{:<28} value", "metric");
    for (k, v) in &out {
        if k.ends_with("_cdf") {
            continue;
        }
        let shown = match v {
            Json::Object(o) => o
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        println!("{k:<28} {shown}");
    }
    let line = Json::Object(out).to_string();
    println!("{line}");
    if let Some(path) = &c.json_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

async fn wait_ready(c: &Common) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs_f64(c.ready_timeout);
    for addr in [c.http, c.grpc] {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("{addr} does not accept connections"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn server_sample(c: &Common) -> Option<ProcSample> {
    c.server_pid.and_then(|p| sample(&p.to_string()))
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What connecting all clients took.
struct Connected {
    clients: usize,
    start_ns: u64,
    out: Map<String, Json>,
}

/// Opens users x tabs clients, waits until all are acked (or failed), then until presence
/// has settled: every acked client has seen the full online list and no list has arrived
/// for --quiet-ms. Both waits are bounded.
async fn connect_all(c: &Common, hub: &Arc<Hub>, label: &str) -> Connected {
    let clients = c.users * c.tabs;
    let src_ips = if c.src_ips == 0 {
        clients.div_ceil(10_000).max(1)
    } else {
        c.src_ips
    }
    .min(250);
    let sem = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let start_ns = hub.now_ns();
    let handshake_timeout = Duration::from_secs_f64(c.connect_timeout);
    let spawner = {
        let hub = hub.clone();
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..clients {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    return;
                };
                let user = i / c.tabs;
                let spec = Spec {
                    idx: i,
                    user: user as u64,
                    user_id: (!c.no_user_id).then(|| format!("{}{user}", c.user_prefix)),
                    presence_changes: c.presence_mode == PresenceMode::Changes,
                    src: Ipv4Addr::new(127, 0, 0, (1 + i % src_ips) as u8),
                    server: c.http,
                };
                tokio::spawn(client::run(spec, hub.clone(), permit, handshake_timeout));
            }
        })
    };
    let mut progress = Progress::new(label, clients as u64, !c.quiet);
    let deadline = Instant::now() + Duration::from_secs_f64(c.connect_timeout);
    let mut connect_timed_out = false;
    loop {
        let acked = hub.acked.load(Relaxed);
        let failed = hub.failed.load(Relaxed);
        progress.update(acked as u64, || format!("acked, {failed} failed"));
        if acked + failed >= clients {
            break;
        }
        if Instant::now() >= deadline {
            connect_timed_out = true;
            spawner.abort();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked = hub.acked.load(Relaxed);
    let failed = hub.failed.load(Relaxed);
    let connect_s = secs(hub.last_ack_ns.load(Relaxed).saturating_sub(start_ns));
    progress.finish(format!(
        "{acked}/{clients} acked in {connect_s:.3} s, {failed} failed{}",
        if connect_timed_out {
            " (timed out)"
        } else {
            ""
        }
    ));

    // Presence: every acked client has seen the full list, and the lists have stopped.
    let settle_deadline = Instant::now() + Duration::from_secs_f64(c.settle_timeout);
    let quiet_ns = c.quiet_ms * 1_000_000;
    let mut progress = Progress::new("presence", acked as u64, !c.quiet);
    let mut settle_timed_out = false;
    let mut stalled = false;
    // Lists stopped coming although some clients never saw the full count: a lost update.
    let stall_ns = quiet_ns.max(c.stall_ms * 1_000_000);
    loop {
        let settled = hub.settled.load(Relaxed);
        let now = hub.now_ns();
        let last = hub
            .last_presence_ns
            .load(Relaxed)
            .max(hub.last_ack_ns.load(Relaxed));
        progress.update(settled as u64, || {
            format!(
                "settled, {} lists received",
                hub.presence_frames.load(Relaxed)
            )
        });
        if settled >= acked && now.saturating_sub(last) >= quiet_ns {
            break;
        }
        if settled < acked && now.saturating_sub(last) >= stall_ns {
            stalled = true;
            break;
        }
        if connect_timed_out || Instant::now() >= settle_deadline {
            settle_timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed_s = secs(hub.now_ns().saturating_sub(start_ns));
    let settled = hub.settled.load(Relaxed);
    let settle_s = secs(hub.last_settle_ns.load(Relaxed).saturating_sub(start_ns));
    let presence_end_s = secs(hub.last_presence_ns.load(Relaxed).saturating_sub(start_ns));
    progress.finish(format!(
        "{settled}/{acked} saw the full list, last at {settle_s:.3} s{}",
        if settle_timed_out {
            " (timed out)"
        } else if stalled {
            " (lists stopped before every client saw the full count)"
        } else {
            ""
        }
    ));

    let mut out = Map::new();
    out.insert("users".into(), json!(c.users));
    out.insert("tabs".into(), json!(c.tabs));
    out.insert(
        "presence_mode".into(),
        json!(format!("{:?}", c.presence_mode).to_lowercase()),
    );
    out.insert("clients".into(), json!(clients));
    out.insert("src_ips".into(), json!(src_ips));
    out.insert("connect_concurrency".into(), json!(c.connect_concurrency));
    out.insert("acked".into(), json!(acked));
    out.insert("connect_failed".into(), json!(failed));
    out.insert("connect_s".into(), json!(round3(connect_s)));
    out.insert("connect_timed_out".into(), json!(connect_timed_out));
    out.insert("settled".into(), json!(settled));
    out.insert("settle_s".into(), json!(round3(settle_s)));
    out.insert("settle_timed_out".into(), json!(settle_timed_out));
    out.insert("presence_stalled".into(), json!(stalled));
    out.insert("last_list_s".into(), json!(round3(presence_end_s)));
    // Until the waits ended: a lower bound of the storm's duration when one timed out.
    out.insert("waited_s".into(), json!(round3(elapsed_s)));
    out.insert(
        "presence_target".into(),
        json!(hub.presence_target.load(Relaxed)),
    );
    let online: Vec<u32> = hub
        .stats
        .iter()
        .map(|s| s.online_max.load(Relaxed))
        .collect();
    // Largest online count each client saw: min/max over clients tell a lost final list
    // (every client stuck below the target) from a slow one.
    out.insert(
        "online_seen_min".into(),
        json!(online.iter().min().copied().unwrap_or(0)),
    );
    out.insert(
        "online_seen_max".into(),
        json!(online.iter().max().copied().unwrap_or(0)),
    );
    out.insert(
        "presence_lists_received".into(),
        json!(hub.presence_frames.load(Relaxed)),
    );
    out.insert(
        "bytes_received_mib".into(),
        json!(round3(hub.bytes_in.load(Relaxed) as f64 / 1048576.0)),
    );
    Connected {
        clients,
        start_ns,
        out,
    }
}

fn new_hub(c: &Common) -> Arc<Hub> {
    let target = if c.no_user_id {
        0
    } else {
        c.presence_target.unwrap_or(c.users as u32)
    };
    Arc::new(Hub::new(c.users * c.tabs, target))
}

fn add_errors(out: &mut Map<String, Json>, hub: &Hub) {
    out.insert("errors".into(), json!(hub.error_count.load(Relaxed)));
    let errors = hub.errors.lock().unwrap().clone();
    if !errors.is_empty() {
        out.insert("first_errors".into(), json!(errors));
    }
}

fn add_proc(out: &mut Map<String, Json>, key: &str, s: Option<ProcSample>) {
    if let Some(s) = s {
        out.insert(format!("{key}_rss_kib"), json!(s.rss_kib));
        out.insert(format!("{key}_cpu_s"), json!(round3(s.cpu_s)));
    }
}

fn cpu_delta(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu_s - a?.cpu_s)
}

/// Connects every client, holds them `hold` seconds, and samples the server around it:
/// `idle` and `storm` differ only in what they wait for and what the report shows.
async fn connect_scenario(
    c: &Common,
    kind: &str,
    hold: f64,
    barrier: Option<(&Path, usize)>,
) -> Map<String, Json> {
    let hub = new_hub(c);
    let before = server_sample(c);
    let lg_before = sample("self");
    let conn = connect_all(c, &hub, kind).await;
    let mut out = conn.out;
    if let Some((dir, count)) = barrier {
        let t0 = Instant::now();
        let met = meet(dir, count, Duration::from_secs_f64(c.settle_timeout)).await;
        out.insert("barrier_met".into(), json!(met));
        out.insert(
            "barrier_waited_s".into(),
            json!(round3(t0.elapsed().as_secs_f64())),
        );
    }
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let after = server_sample(c);
    out.insert("kind".into(), json!(kind));
    out.insert("hold_s".into(), json!(hold));
    add_proc(&mut out, "server_before", before);
    add_proc(&mut out, "server_after", after);
    if let (Some(b), Some(x)) = (before, after) {
        let acked = hub.acked.load(Relaxed).max(1) as f64;
        out.insert(
            "rss_per_conn_kib".into(),
            json!(round3((x.rss_kib as f64 - b.rss_kib as f64) / acked)),
        );
        out.insert("server_cpu_s".into(), json!(round3(x.cpu_s - b.cpu_s)));
    }
    let acked = hub.acked.load(Relaxed);
    out.insert(
        "still_connected".into(),
        json!(acked - hub.closed.load(Relaxed).min(acked)),
    );
    let lg_after = sample("self");
    if let (Some(b), Some(x)) = (lg_before, lg_after) {
        out.insert("loadgen_cpu_s".into(), json!(round3(x.cpu_s - b.cpu_s)));
        out.insert("loadgen_rss_kib".into(), json!(x.rss_kib));
    }
    add_other_cpu(&mut out, lg_before, lg_after, before, after);
    add_errors(&mut out, &hub);
    out
}

async fn idle(a: IdleArgs) -> Result<Map<String, Json>, String> {
    let barrier = a.barrier.as_deref().zip(a.barrier_count);
    Ok(connect_scenario(&a.c, "idle", a.hold, barrier).await)
}

async fn storm(a: StormArgs) -> Result<Map<String, Json>, String> {
    Ok(connect_scenario(&a.c, "storm", 0.0, None).await)
}

/// Leaves this process's file in `dir`, then waits until `count` processes did, at most
/// `bound`. Returns whether they all came.
async fn meet(dir: &Path, count: usize, bound: Duration) -> bool {
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(std::process::id().to_string()), b"");
    let deadline = Instant::now() + bound;
    loop {
        if std::fs::read_dir(dir).map_or(0, |d| d.count()) >= count {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- sending -------------------------------------------------------------------------

fn number(n: u64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n as f64)),
    }
}

/// `{"r": receiver user index, "s": per-receiver sequence, "t": send time (ns), "z": filler}`.
fn message(r: u64, s: u64, t: u64, pad: &Option<String>) -> Value {
    let mut fields = BTreeMap::new();
    fields.insert("r".to_string(), number(r));
    fields.insert("s".to_string(), number(s));
    fields.insert("t".to_string(), number(t));
    if let Some(p) = pad {
        fields.insert(
            "z".to_string(),
            Value {
                kind: Some(Kind::StringValue(p.clone())),
            },
        );
    }
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

/// Counters of one send phase.
struct Sent {
    ok: AtomicU64,
    err: AtomicU64,
    offline: AtomicU64,
    delivered_sockets: AtomicU64,
    rpc_us: Mutex<Histogram<u64>>,
}

impl Sent {
    fn new() -> Arc<Self> {
        Arc::new(Sent {
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
            offline: AtomicU64::new(0),
            delivered_sockets: AtomicU64::new(0),
            rpc_us: Mutex::new(new_histogram()),
        })
    }

    fn record(&self, hub: &Hub, t: u64, delivered: Result<u32, String>) {
        let us = hub.now_ns().saturating_sub(t) / 1000;
        self.rpc_us.lock().unwrap().saturating_record(us.max(1));
        match delivered {
            Ok(d) => {
                self.ok.fetch_add(1, Relaxed);
                self.delivered_sockets.fetch_add(d as u64, Relaxed);
                if d == 0 {
                    self.offline.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                self.err.fetch_add(1, Relaxed);
                hub.error(e);
            }
        }
    }
}

async fn channels(c: &Common, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("http://{}", c.grpc))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("gRPC {}: {e}", c.grpc))?;
        out.push(ch);
    }
    Ok(out)
}

fn summary(h: &Histogram<u64>) -> Json {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": h.mean().round(),
    })
}

/// (latency µs, percentile) points for the CDF chart.
fn cdf(h: &Histogram<u64>) -> Json {
    if h.is_empty() {
        return json!([]);
    }
    let mut qs: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
    qs.extend([0.995, 0.999, 0.9995, 0.9999, 1.0]);
    Json::Array(
        qs.into_iter()
            .map(|q| json!([h.value_at_quantile(q), (q * 10_000.0).round() / 100.0]))
            .collect(),
    )
}

/// Waits for deliveries still on their way, then adds the delivery figures to `out`.
#[allow(clippy::too_many_arguments)]
async fn finish_sends(
    c: &Common,
    s: &SendArgs,
    hub: &Arc<Hub>,
    sent: &Sent,
    send_start_ns: u64,
    progress: Progress,
    cpu_start: Option<ProcSample>,
    lg_start: Option<ProcSample>,
    out: &mut Map<String, Json>,
) {
    let send_end_ns = hub.now_ns();
    progress.finish(format!(
        "{} ok, {} errors in {:.3} s",
        sent.ok.load(Relaxed),
        sent.err.load(Relaxed),
        secs(send_end_ns - send_start_ns)
    ));
    let expected = sent.delivered_sockets.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs_f64(s.drain_timeout);
    while hub.delivered.load(Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained_ns = hub.now_ns();
    let cpu_end = server_sample(c);
    let lg_end = sample("self");
    hub.recording.store(false, Relaxed);
    let (mut received, mut reordered, mut dups, mut misrouted, mut last_recv) = (0, 0, 0, 0, 0);
    for st in &hub.stats {
        received += st.received.load(Relaxed);
        reordered += st.reordered.load(Relaxed);
        dups += st.duplicates.load(Relaxed);
        misrouted += st.misrouted.load(Relaxed);
        last_recv = last_recv.max(st.last_recv_ns.load(Relaxed));
    }
    let ok = sent.ok.load(Relaxed);
    let send_s = secs(send_end_ns.saturating_sub(send_start_ns)).max(1e-9);
    let deliver_s = secs(last_recv.max(send_end_ns).saturating_sub(send_start_ns)).max(1e-9);
    out.insert("sent_ok".into(), json!(ok));
    out.insert("rpc_errors".into(), json!(sent.err.load(Relaxed)));
    out.insert(
        "offline_responses".into(),
        json!(sent.offline.load(Relaxed)),
    );
    out.insert("delivered_sockets".into(), json!(expected));
    out.insert("received".into(), json!(received));
    out.insert("lost".into(), json!(expected.saturating_sub(received)));
    out.insert(
        "not_delivered".into(),
        json!((ok * c.tabs as u64).saturating_sub(received)),
    );
    out.insert("reordered".into(), json!(reordered));
    out.insert("duplicates".into(), json!(dups));
    out.insert("misrouted".into(), json!(misrouted));
    out.insert(
        "deliveries_per_message".into(),
        json!(round3(received as f64 / ok.max(1) as f64)),
    );
    out.insert("send_s".into(), json!(round3(send_s)));
    out.insert("rpc_per_s".into(), json!((ok as f64 / send_s).round()));
    out.insert(
        "delivered_per_s".into(),
        json!((received as f64 / deliver_s).round()),
    );
    out.insert(
        "drain_s".into(),
        json!(round3(secs(drained_ns.saturating_sub(send_end_ns)))),
    );
    out.insert(
        "rpc_latency_us".into(),
        summary(&sent.rpc_us.lock().unwrap()),
    );
    let dh = hub.delivery_us.lock().unwrap();
    out.insert("delivery_latency_us".into(), summary(&dh));
    out.insert("delivery_latency_cdf".into(), cdf(&dh));
    if let Some(d) = cpu_delta(cpu_start, cpu_end) {
        out.insert("server_cpu_s".into(), json!(round3(d)));
        out.insert(
            "server_cpu_us_per_msg".into(),
            json!(round3(d * 1e6 / ok.max(1) as f64)),
        );
    }
    add_proc(out, "server_end", cpu_end);
    if let Some(d) = cpu_delta(lg_start, lg_end) {
        out.insert("loadgen_cpu_s".into(), json!(round3(d)));
        out.insert(
            "loadgen_cpu_share".into(),
            json!(round3(d / secs(drained_ns - send_start_ns).max(1e-9))),
        );
    }
    add_other_cpu(out, lg_start, lg_end, cpu_start, cpu_end);
}

/// CPU that neither the server nor the load generator used while measuring: other work on
/// the machine that the numbers should be read against (0 on a quiet machine).
fn add_other_cpu(
    out: &mut Map<String, Json>,
    lg_start: Option<ProcSample>,
    lg_end: Option<ProcSample>,
    server_start: Option<ProcSample>,
    server_end: Option<ProcSample>,
) {
    let (Some(a), Some(b)) = (lg_start, lg_end) else {
        return;
    };
    let machine = b.machine_busy_s - a.machine_busy_s;
    let server = cpu_delta(server_start, server_end).unwrap_or(0.0);
    let other = (machine - server - (b.cpu_s - a.cpu_s)).max(0.0);
    out.insert("machine_busy_s".into(), json!(round3(machine)));
    out.insert("other_cpu_s".into(), json!(round3(other)));
}

/// One SendDirect call: the number of sockets it reached.
async fn send_direct(client: &Unary, req: &SendDirectRequest) -> Result<u32, String> {
    client
        .call::<_, SendDirectResponse>("/messaging.v1.Messaging/SendDirect", req)
        .await
        .map(|r| r.delivered_sockets)
        .map_err(|e| format!("SendDirect: {e}"))
}

/// The gRPC connection for call `i`: always the same one for a user, since the gateway
/// keeps the order of calls per connection, not across connections.
fn pinned(i: u64, users: u64, conns: usize) -> usize {
    (i % users.max(1)) as usize % conns
}

/// The receivers' ids, `<prefix><infix>N` for each of --users.
fn user_ids(c: &Common, infix: &str) -> Arc<Vec<String>> {
    Arc::new(
        (0..c.users)
            .map(|u| format!("{}{infix}{u}", c.user_prefix))
            .collect(),
    )
}

async fn direct(a: DirectArgs) -> Result<Map<String, Json>, String> {
    let c = &a.c;
    let s = &a.s;
    let hub = new_hub(c);
    let conn = connect_all(c, &hub, "connect").await;
    let mut out = conn.out;
    out.insert("kind".into(), json!("direct"));
    out.insert("ack_timeout_ms".into(), json!(a.ack_timeout_ms));
    out.insert("idempotency_keys".into(), json!(a.idempotency_keys));
    out.insert("ttl_seconds".into(), json!(a.ttl_seconds));
    out.insert("offline_receivers".into(), json!(a.offline_receivers));
    let _ = conn.clients;
    let _ = conn.start_ns;
    let mut conns = Vec::new();
    for _ in 0..s.grpc_conns.max(1) {
        conns.push(Unary::connect(c.grpc).await?);
    }
    let pad = (s.payload_bytes > 0).then(|| "x".repeat(s.payload_bytes));
    let pad = Arc::new(pad);
    let ids = user_ids(c, if a.offline_receivers { "offline-" } else { "" });
    let users = c.users as u64;
    let sent = Sent::new();
    let cpu_start = server_sample(c);
    let lg_start = sample("self");
    hub.recording.store(true, Relaxed);
    let start_ns = hub.now_ns();
    let deadline = Instant::now() + Duration::from_secs_f64(s.duration);
    let mut progress = Progress::new("send", s.messages, !c.quiet);
    let (ack_timeout_ms, keyed, ttl_seconds) =
        (a.ack_timeout_ms, a.idempotency_keys, a.ttl_seconds);
    let run = std::process::id();
    let request = {
        let hub = hub.clone();
        let ids = ids.clone();
        let pad = pad.clone();
        move |i: u64, t: u64| {
            let _ = &hub;
            let u = i % users;
            SendDirectRequest {
                receiver_id: ids[u as usize].clone(),
                message: Some(message(u, i / users, t, &pad)),
                sender_id: "loadgen".into(),
                event: String::new(),
                ack_timeout_ms,
                idempotency_key: if keyed {
                    format!("lg-{run}-{i}")
                } else {
                    String::new()
                },
                ttl_seconds,
            }
        }
    };
    match a.rate {
        None => {
            out.insert("mode".into(), json!("concurrency"));
            out.insert("concurrency".into(), json!(a.concurrency));
            let next = Arc::new(AtomicU64::new(0));
            let mut workers = Vec::new();
            let conns = Arc::new(conns);
            for _ in 0..a.concurrency.max(1) {
                let (hub, sent, next, request, conns) = (
                    hub.clone(),
                    sent.clone(),
                    next.clone(),
                    request.clone(),
                    conns.clone(),
                );
                let limit = s.messages;
                workers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        if i >= limit || Instant::now() >= deadline {
                            break;
                        }
                        let t = hub.now_ns();
                        let client = &conns[pinned(i, users, conns.len())];
                        let r = send_direct(client, &request(i, t)).await;
                        sent.record(&hub, t, r);
                    }
                }));
            }
            while !workers.iter().all(|w| w.is_finished()) {
                let done = sent.ok.load(Relaxed) + sent.err.load(Relaxed);
                progress.update(done, || {
                    format!("calls, {} delivered", hub.delivered.load(Relaxed))
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(rate) => {
            out.insert("mode".into(), json!("rate"));
            out.insert("offered_rate".into(), json!(rate));
            let sem = Arc::new(Semaphore::new(a.max_in_flight.max(1)));
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let mut backlogged = 0u64;
            let mut lag_us = new_histogram();
            for i in 0..s.messages {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                if at >= deadline {
                    break;
                }
                if at > Instant::now() {
                    tokio::time::sleep_until(at.into()).await;
                }
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        backlogged += 1;
                        sem.clone().acquire_owned().await.expect("semaphore")
                    }
                };
                // Latency counts from the actual send; how late the timer let us send is
                // recorded apart (it is the load generator's lag, not the server's).
                let scheduled = start_ns + (at - start).as_nanos() as u64;
                let t = hub.now_ns();
                lag_us.saturating_record((t.saturating_sub(scheduled) / 1000).max(1));
                let client = conns[pinned(i, users, conns.len())].clone();
                let (hub2, sent2) = (hub.clone(), sent.clone());
                let req = request(i, t);
                tasks.spawn(async move {
                    let r = send_direct(&client, &req).await;
                    sent2.record(&hub2, t, r);
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
                if i % 256 == 0 {
                    let done = sent.ok.load(Relaxed) + sent.err.load(Relaxed);
                    progress.update(done, || {
                        format!("calls, {} delivered", hub.delivered.load(Relaxed))
                    });
                }
            }
            let wait_until = Instant::now() + Duration::from_secs_f64(s.drain_timeout + 5.0);
            while !tasks.is_empty() && Instant::now() < wait_until {
                let _ = tokio::time::timeout(Duration::from_millis(50), tasks.join_next()).await;
            }
            tasks.abort_all();
            out.insert("backlogged_sends".into(), json!(backlogged));
            out.insert("send_lag_us".into(), summary(&lag_us));
        }
    }
    finish_sends(
        c, s, &hub, &sent, start_ns, progress, cpu_start, lg_start, &mut out,
    )
    .await;
    add_errors(&mut out, &hub);
    Ok(out)
}

async fn stream(a: StreamArgs) -> Result<Map<String, Json>, String> {
    let c = &a.c;
    let s = &a.s;
    if c.users < a.streams.max(1) {
        return Err("--users must be at least --streams (each stream owns its users)".into());
    }
    let hub = new_hub(c);
    let conn = connect_all(c, &hub, "connect").await;
    let mut out = conn.out;
    out.insert("kind".into(), json!("stream"));
    out.insert("streams".into(), json!(a.streams));
    out.insert("window".into(), json!(a.window));
    let chans = channels(c, s.grpc_conns).await?;
    let pad = Arc::new((s.payload_bytes > 0).then(|| "x".repeat(s.payload_bytes)));
    let ids = user_ids(c, "");
    let users = c.users as u64;
    let limit = s.messages.min(100_000_000);
    let send_ns: Arc<Vec<AtomicU64>> = Arc::new((0..limit).map(|_| AtomicU64::new(0)).collect());
    let sent = Sent::new();
    let out_of_order = Arc::new(AtomicU64::new(0));
    let cpu_start = server_sample(c);
    let lg_start = sample("self");
    hub.recording.store(true, Relaxed);
    let start_ns = hub.now_ns();
    let deadline = Instant::now() + Duration::from_secs_f64(s.duration);
    let next = Arc::new(AtomicU64::new(0));
    let requested = Arc::new(AtomicU64::new(0));
    let mut progress = Progress::new("stream", limit, !c.quiet);
    let mut tasks = Vec::new();
    for k in 0..a.streams.max(1) {
        let mut client = MessagingClient::new(chans[k % chans.len()].clone())
            .max_decoding_message_size(16 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel::<SendStreamRequest>(a.window.max(1));
        let window = Arc::new(Semaphore::new(a.window.max(1)));
        let mut responses = client
            .send_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("SendStream: {}", e.message()))?
            .into_inner();
        // Sender.
        {
            let requested = requested.clone();
            let (hub, next, send_ns, ids, pad, window) = (
                hub.clone(),
                next.clone(),
                send_ns.clone(),
                ids.clone(),
                pad.clone(),
                window.clone(),
            );
            // Each stream owns the users u with u % streams == k, so every user's messages
            // travel one stream, in order: any reordering seen by a client is the server's.
            let streams = a.streams.max(1) as u64;
            let own = (users + streams - 1 - k as u64) / streams;
            tasks.push(tokio::spawn(async move {
                for j in 0.. {
                    let Ok(p) = window.acquire().await else { break };
                    p.forget();
                    let i = next.fetch_add(1, Relaxed);
                    if i >= limit || Instant::now() >= deadline {
                        break;
                    }
                    let u = k as u64 + streams * (j % own);
                    let t = hub.now_ns();
                    send_ns[i as usize].store(t, Relaxed);
                    let req = SendStreamRequest {
                        receiver_id: ids[u as usize].clone(),
                        message: Some(message(u, j / own, t, &pad)),
                        sender_id: "loadgen".into(),
                        event: String::new(),
                        id: i,
                    };
                    if tx.send(req).await.is_err() {
                        break;
                    }
                    requested.fetch_add(1, Relaxed);
                }
                // Dropping tx ends the request stream; the server then ends the responses.
            }));
        }
        // Receiver.
        {
            let (hub, sent, send_ns, window, ooo) = (
                hub.clone(),
                sent.clone(),
                send_ns.clone(),
                window.clone(),
                out_of_order.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut last_id: Option<u64> = None;
                loop {
                    match responses.message().await {
                        Ok(Some(r)) => {
                            window.add_permits(1);
                            if last_id.is_some_and(|l| r.id <= l) {
                                ooo.fetch_add(1, Relaxed);
                            }
                            last_id = Some(r.id);
                            let t = send_ns
                                .get(r.id as usize)
                                .map(|x| x.load(Relaxed))
                                .unwrap_or(0);
                            let res = if r.code == 0 {
                                Ok(r.delivered_sockets)
                            } else {
                                Err(format!("SendStream item {}: {} {}", r.id, r.code, r.error))
                            };
                            sent.record(&hub, t, res);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            hub.error(format!("SendStream: {}", e.message()));
                            break;
                        }
                    }
                }
            }));
        }
    }
    let hard_deadline = deadline + Duration::from_secs_f64(s.drain_timeout + 5.0);
    while !tasks.iter().all(|t| t.is_finished()) && Instant::now() < hard_deadline {
        let done = sent.ok.load(Relaxed) + sent.err.load(Relaxed);
        progress.update(done, || {
            format!("answered, {} delivered", hub.delivered.load(Relaxed))
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in &tasks {
        t.abort();
    }
    out.insert(
        "out_of_order_responses".into(),
        json!(out_of_order.load(Relaxed)),
    );
    out.insert("sent_requests".into(), json!(requested.load(Relaxed)));
    finish_sends(
        c, s, &hub, &sent, start_ns, progress, cpu_start, lg_start, &mut out,
    )
    .await;
    add_errors(&mut out, &hub);
    Ok(out)
}
