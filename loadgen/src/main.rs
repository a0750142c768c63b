//! `loadgen`: drives a Socket.IO + gRPC messaging server through its wire contract only
//! (Engine.IO v4 / Socket.IO v5 over WebSocket, `messaging.v1.Messaging` over gRPC), so the
//! same scenarios run against the gateway and against the Node peer.
//!
//! Scenarios (one per process run, every phase bounded in count and time):
//! `idle` (RSS per idle connection), `storm` (N users connecting at once, until acked and
//! until presence has settled), `direct` (SendDirect at fixed concurrency or offered rate:
//! RPC and end-to-end delivery latency, loss, order), `stream` (SendStream, gateway only),
//! `watch` (tabs in presence mode watch, each checking the exact set of its watched users).
//! Each prints a table and one JSON line; `report` turns JSON lines into REPORT.md and a
//! latency CDF chart.

mod args;
mod backend;
mod client;
mod connect;
mod direct;
mod figures;
mod idle;
mod report;
mod send;
mod sendstream;
mod stream;
mod sys;
mod tabs;
mod unary;
mod watch;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value as Json};

use args::{Common, DirectArgs, IdleArgs, StormArgs, StreamArgs};

/// jemalloc: the gRPC client allocates per call, and glibc malloc showed up in its profile.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Tabs on one or more Socket.IO addresses counting what a backend in another process
    /// sends them, through phases driven by files (scripts/bench's cluster-peer section).
    Tabs(tabs::TabsArgs),
    /// SendDirect to the gateway's nodes at a fixed rate or at saturation, for tabs held by
    /// `loadgen tabs`; prints only its JSON line.
    Backend(backend::BackendArgs),
    /// Tabs in presence mode watch, each watching users drawn from the population: time until
    /// every tab is exact, after connecting and after churn; bytes and RSS per connection.
    Watch(watch::WatchArgs),
    /// Write REPORT.md and the latency CDF chart (SVG) from JSON result lines.
    Report(report::ReportArgs),
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
        Cmd::Backend(a) => return run_backend(a.clone()),
        Cmd::Tabs(a) => a.c.clone(),
        Cmd::Idle(a) => a.c.clone(),
        Cmd::Storm(a) => a.c.clone(),
        Cmd::Direct(a) => a.c.clone(),
        Cmd::Stream(a) => a.c.clone(),
        Cmd::Watch(a) => a.c.clone(),
    };
    let nofile = sys::raise_nofile();
    let clients = (common.users * common.tabs) as u64;
    if clients + 256 > nofile {
        eprintln!(
            "loadgen: warning: {clients} clients but the open-files limit is {nofile}; \
             connects beyond it will fail"
        );
    }
    let rt = match runtime(common.threads) {
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
            Cmd::Idle(a) => idle::idle(a).await,
            Cmd::Storm(a) => idle::storm(a).await,
            Cmd::Direct(a) => direct::direct(a).await,
            Cmd::Stream(a) => stream::stream(a).await,
            Cmd::Tabs(a) => tabs::tabs(a).await,
            Cmd::Watch(a) => watch::watch_scenario(a).await,
            Cmd::Backend(_) | Cmd::Report(_) => unreachable!(),
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

/// A current-thread runtime for one thread, else a multi-thread one.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// `backend`: two runtime threads, its JSON line alone on stdout.
fn run_backend(a: backend::BackendArgs) -> ExitCode {
    let result = runtime(2)
        .map_err(|e| format!("runtime: {e}"))
        .and_then(|rt| rt.block_on(backend::backend(a)));
    match result {
        Ok(out) => {
            println!("{}", Json::Object(out));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen backend: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Waits until the server's addresses accept connections (every Socket.IO address given,
/// and the gRPC one).
async fn wait_ready(c: &Common) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs_f64(c.ready_timeout);
    for &addr in std::iter::once(&c.http)
        .chain(&c.http_more)
        .chain([&c.grpc])
    {
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
