//! `tabs`: browser tabs held open on one or more Socket.IO addresses while a backend in
//! another process sends to them (the cluster-peer runs of issue 23: three gateway nodes or
//! three socket.io + Redis adapter processes, and a backend that is `loadgen backend`,
//! grpc-js or `@socket.io/redis-emitter`). Every message is counted at the tabs: none lost,
//! duplicated or misrouted, latency from its epoch `t`.
//!
//! scripts/bench drives the phases through files in --control: after connecting (and
//! sampling RSS) this process writes `connected`; then for each of --phases it waits for
//! `PHASE.go`, samples the servers' and Redis's CPU, writes `PHASE.ready`, and waits for
//! `PHASE.sent`: the sender's JSON line (with `sent`, the messages it sent), written once
//! the sender is done. It then waits for the deliveries still on their way, writes the
//! phase's result line and `PHASE.done`. Every wait is bounded.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{json, Map, Value as Json};

use crate::args::Common;
use crate::client::{lock, new_histogram, Hub};
use crate::connect::{connect_all, new_hub};
use crate::figures::{add_errors, cdf, round3, secs, summary};
use crate::sys::{sample, ProcSample};

#[derive(Args, Clone)]
pub struct TabsArgs {
    #[command(flatten)]
    pub c: Common,
    /// Directory of the files through which the phases are driven (see `loadgen tabs`).
    #[arg(long)]
    pub control: PathBuf,
    /// Send phases, in order (comma-separated); each result line's scenario is
    /// `<--scenario>-<phase>`.
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<String>,
    /// The server processes (every node) to sample for RSS and CPU time.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// The Redis process, whose CPU time is reported apart from the servers'.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Seconds to hold the tabs idle after connecting, before sampling RSS.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Bound on waiting for a phase's start, and then for its sender's end, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub phase_timeout: f64,
    /// Bound on waiting for deliveries after the sender ended, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
}

/// The sampled processes at one moment: each server, Redis, and this process (whose
/// sample also carries the whole machine's busy time).
struct Samples {
    servers: Vec<Option<ProcSample>>,
    redis: Option<ProcSample>,
    tabs: Option<ProcSample>,
}

impl Samples {
    fn take(a: &TabsArgs) -> Self {
        Samples {
            servers: a
                .server_pids
                .iter()
                .map(|p| sample(&p.to_string()))
                .collect(),
            redis: a.redis_pid.and_then(|p| sample(&p.to_string())),
            tabs: sample("self"),
        }
    }

    fn rss_kib(&self) -> Vec<u64> {
        self.servers
            .iter()
            .map(|s| s.map_or(0, |s| s.rss_kib))
            .collect()
    }

    /// CPU seconds of the servers (summed) and of Redis since `before`.
    fn cpu_since(&self, before: &Samples) -> (f64, f64) {
        let servers = self
            .servers
            .iter()
            .zip(&before.servers)
            .filter_map(|(b, a)| Some(b.as_ref()?.cpu_s - a.as_ref()?.cpu_s))
            .sum();
        let redis = self
            .redis
            .zip(before.redis)
            .map_or(0.0, |(b, a)| b.cpu_s - a.cpu_s);
        (servers, redis)
    }
}

pub async fn tabs(a: TabsArgs) -> Result<Map<String, Json>, String> {
    let c = &a.c;
    std::fs::create_dir_all(&a.control).map_err(|e| format!("{}: {e}", a.control.display()))?;
    let hub = new_hub(c);
    hub.epoch_clock.store(true, Relaxed);
    let idle = Samples::take(&a);
    let mut out = connect_all(c, &hub, "connect").await;
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let held = Samples::take(&a);
    add_memory(&mut out, &hub, &idle, &held);
    add_errors(&mut out, &hub);
    out.insert("kind".into(), json!("tabs-connect"));
    crate::emit(&phase_common(c, "connect"), out)?;
    touch(&a.control.join("connected"));
    for phase in &a.phases {
        let out = run_phase(&a, &hub, phase).await;
        crate::emit(&phase_common(c, phase), out)?;
        touch(&a.control.join(format!("{phase}.done")));
    }
    let mut out = Map::new();
    let acked = hub.acked.load(Relaxed);
    out.insert("kind".into(), json!("tabs-end"));
    out.insert(
        "still_connected".into(),
        json!(acked - hub.closed.load(Relaxed).min(acked)),
    );
    add_errors(&mut out, &hub);
    Ok(out)
}

/// The common flags with the scenario of one of this run's result lines.
fn phase_common(c: &Common, phase: &str) -> Common {
    let mut c = c.clone();
    let base = c.scenario.take().unwrap_or_else(|| "tabs".into());
    c.scenario = Some(format!("{base}-{phase}"));
    c
}

/// RSS of each node idle (before any tab) and with the tabs held: per tab, the delta of
/// all nodes over the tabs acked.
fn add_memory(out: &mut Map<String, Json>, hub: &Hub, idle: &Samples, held: &Samples) {
    let (before, after) = (idle.rss_kib(), held.rss_kib());
    let acked = hub.acked.load(Relaxed).max(1) as f64;
    let delta: i64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| *a as i64 - *b as i64)
        .sum();
    out.insert("idle_node_rss_kib".into(), json!(before));
    out.insert("held_node_rss_kib".into(), json!(after));
    out.insert(
        "idle_node_rss_mib_mean".into(),
        json!(round3(
            before.iter().sum::<u64>() as f64 / before.len().max(1) as f64 / 1024.0
        )),
    );
    out.insert(
        "rss_per_tab_kib".into(),
        json!(round3(delta as f64 / acked)),
    );
}

/// One send phase: wait for its start, sample, wait for the sender's line, drain, figures.
async fn run_phase(a: &TabsArgs, hub: &Arc<Hub>, phase: &str) -> Map<String, Json> {
    let mut out = Map::new();
    out.insert("kind".into(), json!("tabs-phase"));
    out.insert("phase".into(), json!(phase));
    let bound = Duration::from_secs_f64(a.phase_timeout);
    if !wait_file(&a.control.join(format!("{phase}.go")), bound).await {
        out.insert("phase_timed_out".into(), json!("go"));
        return out;
    }
    reset(hub);
    let before = Samples::take(a);
    let start_ns = hub.now_ns();
    touch(&a.control.join(format!("{phase}.ready")));
    let sent_file = a.control.join(format!("{phase}.sent"));
    let deadline = Instant::now() + bound;
    let mut first_ns = None;
    while !sent_file.exists() && Instant::now() < deadline {
        if first_ns.is_none() && hub.delivered.load(Relaxed) > 0 {
            first_ns = Some(hub.now_ns());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sender: Json = std::fs::read_to_string(&sent_file)
        .ok()
        .and_then(|s| serde_json::from_str(s.trim()).ok())
        .unwrap_or(Json::Null);
    let sent = sender["sent"].as_u64();
    if sent.is_none() {
        out.insert("phase_timed_out".into(), json!("sent"));
    }
    let expected = sent.unwrap_or(0) * a.c.tabs as u64;
    let drain_end = Instant::now() + Duration::from_secs_f64(a.drain_timeout);
    while hub.delivered.load(Relaxed) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = Samples::take(a);
    hub.recording.store(false, Relaxed);
    let (servers_cpu, redis_cpu) = after.cpu_since(&before);
    let first_ns = first_ns.unwrap_or(start_ns);
    counts(&mut out, a, hub, sent.unwrap_or(0));
    let received = out["received"].as_u64().unwrap_or(0);
    let last_ns = hub
        .stats
        .iter()
        .map(|s| s.last_recv_ns.load(Relaxed))
        .max()
        .unwrap_or(0);
    let per_msg = |cpu: f64| round3(cpu * 1e6 / received.max(1) as f64);
    out.insert(
        "delivered_per_s".into(),
        json!((received as f64 / secs(last_ns.saturating_sub(first_ns)).max(1e-9)).round()),
    );
    out.insert("servers_cpu_s".into(), json!(round3(servers_cpu)));
    out.insert("redis_cpu_s".into(), json!(round3(redis_cpu)));
    out.insert("servers_cpu_us_per_msg".into(), json!(per_msg(servers_cpu)));
    out.insert("redis_cpu_us_per_msg".into(), json!(per_msg(redis_cpu)));
    out.insert(
        "cpu_us_per_msg".into(),
        json!(per_msg(servers_cpu + redis_cpu)),
    );
    // Messages per CPU second of servers + Redis: sends per second per core used.
    out.insert(
        "msgs_per_core_s".into(),
        json!((received as f64 / (servers_cpu + redis_cpu).max(1e-9)).round()),
    );
    out.insert(
        "phase_s".into(),
        json!(round3(secs(hub.now_ns() - start_ns))),
    );
    add_machine(&mut out, &before, &after, servers_cpu + redis_cpu, &sender);
    let h = lock(&hub.delivery_us);
    out.insert("delivery_latency_us".into(), summary(&h));
    out.insert("delivery_latency_cdf".into(), cdf(&h));
    out.insert("sender".into(), sender);
    out
}

/// This process's CPU over the phase, and the CPU of other work on the machine meanwhile
/// (busy time of every core, less the servers, Redis, the tabs and the sender): the noise
/// the phase's figures should be read against.
fn add_machine(
    out: &mut Map<String, Json>,
    before: &Samples,
    after: &Samples,
    measured_cpu: f64,
    sender: &Json,
) {
    let (Some(a), Some(b)) = (before.tabs, after.tabs) else {
        return;
    };
    let tabs = b.cpu_s - a.cpu_s;
    let busy = b.machine_busy_s - a.machine_busy_s;
    let sender_cpu = sender["cpu_s"].as_f64().unwrap_or(0.0);
    out.insert("tabs_cpu_s".into(), json!(round3(tabs)));
    out.insert("machine_busy_s".into(), json!(round3(busy)));
    out.insert(
        "other_cpu_s".into(),
        json!(round3((busy - measured_cpu - tabs - sender_cpu).max(0.0))),
    );
}

/// Zeroes the per-tab counters and the latency histogram, and starts recording.
fn reset(hub: &Hub) {
    for s in &hub.stats {
        for counter in [
            &s.received,
            &s.next_seq,
            &s.reordered,
            &s.duplicates,
            &s.misrouted,
            &s.last_recv_ns,
        ] {
            counter.store(0, Relaxed);
        }
    }
    hub.delivered.store(0, Relaxed);
    *lock(&hub.delivery_us) = new_histogram();
    hub.recording.store(true, Relaxed);
}

/// What each tab got against what it should have: message i went to user i mod --users,
/// once per tab of that user.
fn counts(out: &mut Map<String, Json>, a: &TabsArgs, hub: &Hub, sent: u64) {
    let users = a.c.users as u64;
    let (mut received, mut lost, mut extra, mut dups, mut reordered, mut misrouted) =
        (0, 0, 0, 0, 0, 0);
    for (i, s) in hub.stats.iter().enumerate() {
        let user = (i / a.c.tabs) as u64;
        let want = sent / users + u64::from(user < sent % users);
        let got = s.received.load(Relaxed);
        received += got;
        lost += want.saturating_sub(got);
        extra += got.saturating_sub(want);
        dups += s.duplicates.load(Relaxed);
        reordered += s.reordered.load(Relaxed);
        misrouted += s.misrouted.load(Relaxed);
    }
    out.insert("sent".into(), json!(sent));
    out.insert("expected".into(), json!(sent * a.c.tabs as u64));
    out.insert("received".into(), json!(received));
    out.insert("lost".into(), json!(lost));
    out.insert("extra".into(), json!(extra));
    out.insert("duplicates".into(), json!(dups));
    out.insert("reordered".into(), json!(reordered));
    out.insert("misrouted".into(), json!(misrouted));
}

/// Waits until `path` exists, at most `bound`.
async fn wait_file(path: &Path, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn touch(path: &Path) {
    let _ = std::fs::write(path, b"");
}
