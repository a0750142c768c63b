//! `backend`: the gateway's backend as its own process, for tabs held by another one
//! (`loadgen tabs`): SendDirect over h2 spread over the nodes' gRPC addresses, at a fixed
//! rate or at saturation (a fixed number of calls in flight), or as the items of one
//! `SendStream` per connection (`--stream`), each message stamped with `t`
//! in microseconds since the Unix epoch. Message i goes to user i mod --users with that
//! user's sequence i / --users, as `direct` sends them. Prints one JSON line, nothing else,
//! on stdout: what `loadgen tabs` reads as the sender's figures.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Args;
use messaging_gateway::proto::{SendDirectRequest, SendStreamRequest};
use serde_json::json;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::client::{epoch_us, lock, new_histogram};
use crate::direct::send_direct;
use crate::figures::{round3, summary};
use crate::send::message;
use crate::sendstream::ItemStream;
use crate::sys::sample;
use crate::unary::Unary;

/// How long calls still unanswered when sending stops are waited for.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

#[derive(Args, Clone)]
pub struct BackendArgs {
    /// gRPC addresses of the nodes (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub grpc: Vec<SocketAddr>,
    /// Socket.IO nodes the tabs are spread over (user u's tab on node u mod n). User u's
    /// calls go to node (u / n) mod (gRPC nodes), always on the same connection (the gateway
    /// keeps the order of calls per connection): with three of each, a third are delivered
    /// on the node called, the rest cross to another.
    #[arg(long, default_value_t = 3)]
    pub http_nodes: usize,
    /// Receivers: users PREFIX0 .. PREFIX(n-1).
    #[arg(long, default_value_t = 3000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub users: usize,
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Messages to send at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Seconds to send for at most.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Filler bytes per message (a "z" string field), besides r/s/t.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// HTTP/2 connections per node.
    #[arg(long, default_value_t = 2)]
    pub grpc_conns: usize,
    /// Offered rate in calls per second; without it, saturation: --concurrency calls in
    /// flight, each sent once the last one was answered.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Calls in flight at most at a fixed rate.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Send each message as an item of a `SendStream` (one stream per connection) instead of
    /// a unary `SendDirect`; --concurrency and --max-in-flight then count items.
    #[arg(long)]
    pub stream: bool,
}

/// The calls of a run and their answers.
struct Calls {
    conns: Vec<Unary>,
    /// With --stream, used instead of `conns`, one per connection.
    streams: Vec<Arc<ItemStream>>,
    ids: Vec<String>,
    pad: Option<String>,
    a: BackendArgs,
    ok: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    rpc_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Calls {
    /// Sends message `i`; counts its answer.
    async fn send(&self, i: u64) {
        let users = self.ids.len() as u64;
        let u = i % users;
        let node = (u as usize / self.a.http_nodes.max(1)) % self.a.grpc.len();
        let conn = node * self.a.grpc_conns.max(1) + u as usize % self.a.grpc_conns.max(1);
        let receiver_id = self.ids[u as usize].clone();
        let message = Some(message(u, i / users, epoch_us(), &self.pad));
        let sender_id = "loadgen-backend".to_string();
        let t0 = Instant::now();
        let r = match self.streams.get(conn) {
            Some(stream) => {
                let req = SendStreamRequest {
                    receiver_id,
                    message,
                    sender_id,
                    id: i,
                    ..Default::default()
                };
                stream.send(req).await
            }
            None => {
                let req = SendDirectRequest {
                    receiver_id,
                    message,
                    sender_id,
                    ..Default::default()
                };
                send_direct(&self.conns[conn], &req).await
            }
        };
        lock(&self.rpc_us).saturating_record((t0.elapsed().as_micros() as u64).max(1));
        match r {
            Ok(d) => {
                self.ok.fetch_add(1, Relaxed);
                self.delivered.fetch_add(u64::from(d), Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Relaxed);
                lock(&self.first_error).get_or_insert(e);
            }
        }
    }
}

pub async fn backend(a: BackendArgs) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let (mut conns, mut streams) = (Vec::new(), Vec::new());
    for addr in &a.grpc {
        for _ in 0..a.grpc_conns.max(1) {
            match a.stream {
                true => streams.push(ItemStream::open(*addr).await?),
                false => conns.push(Unary::connect(*addr).await?),
            }
        }
    }
    let calls = Arc::new(Calls {
        conns,
        streams,
        ids: (0..a.users)
            .map(|u| format!("{}{u}", a.user_prefix))
            .collect(),
        pad: (a.payload_bytes > 0).then(|| "x".repeat(a.payload_bytes)),
        a: a.clone(),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        first_error: Default::default(),
        rpc_us: std::sync::Mutex::new(new_histogram()),
    });
    let cpu0 = sample("self");
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    match a.rate {
        Some(rate) => at_rate(&calls, rate, deadline).await,
        None => saturate(&calls, deadline).await,
    }
    let cpu = sample("self")
        .zip(cpu0)
        .map_or(0.0, |(b, a)| b.cpu_s - a.cpu_s);
    let ok = calls.ok.load(Relaxed);
    let out = json!({
        "backend": if a.stream { "loadgen-stream" } else { "loadgen" },
        "mode": if a.rate.is_some() { "rate" } else { "saturation" },
        "offered_rate": a.rate.unwrap_or(0.0),
        "in_flight": if a.rate.is_some() { a.max_in_flight } else { a.concurrency },
        "users": a.users,
        // Answered OK: what the tabs must have received (errors are counted apart).
        "sent": ok,
        "errors": calls.errors.load(Relaxed),
        "first_error": *lock(&calls.first_error),
        "delivered_sockets": calls.delivered.load(Relaxed),
        "done_s": round3(start.elapsed().as_secs_f64()),
        "cpu_s": round3(cpu),
        "rpc_latency_us": summary(&lock(&calls.rpc_us)),
    });
    match out {
        serde_json::Value::Object(m) => Ok(m),
        _ => unreachable!("a JSON object"),
    }
}

/// Calls on a schedule of `rate` per second whatever the answers (at most --max-in-flight
/// unanswered).
async fn at_rate(calls: &Arc<Calls>, rate: f64, deadline: Instant) {
    let sem = Arc::new(Semaphore::new(calls.a.max_in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut i = 0;
    while i < calls.a.messages {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let calls = calls.clone();
        tasks.spawn(async move {
            calls.send(i).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    finish(tasks).await;
}

/// --concurrency workers, each sending its next call once the last one was answered.
async fn saturate(calls: &Arc<Calls>, deadline: Instant) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..calls.a.concurrency.max(1) {
        let (calls, next) = (calls.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= calls.a.messages || Instant::now() >= deadline {
                    break;
                }
                calls.send(i).await;
            }
        });
    }
    finish(workers).await;
}

/// Waits for the calls still unanswered, at most `ANSWER_BOUND`; the rest are dropped.
async fn finish(mut tasks: JoinSet<()>) {
    let _ = tokio::time::timeout(ANSWER_BOUND, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}
