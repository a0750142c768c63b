//! `idle` and `storm`: connect every client, hold them, and sample the server around it.

use std::{
    path::Path,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value as Json};

use crate::args::{Common, IdleArgs, StormArgs};
use crate::connect::{connect_all, new_hub};
use crate::figures::{add_errors, add_other_cpu, add_proc, round3, server_sample};
use crate::sys::sample;

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
    let mut out = connect_all(c, &hub, kind).await;
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

/// Clients held idle for --hold seconds: the server's RSS per connection.
pub async fn idle(a: IdleArgs) -> Result<Map<String, Json>, String> {
    let barrier = a.barrier.as_deref().zip(a.barrier_count);
    Ok(connect_scenario(&a.c, "idle", a.hold, barrier).await)
}

/// All clients at once, sampled as soon as presence settled.
pub async fn storm(a: StormArgs) -> Result<Map<String, Json>, String> {
    Ok(connect_scenario(&a.c, "storm", 0.0, None).await)
}

/// Leaves this process's file in `dir`, then waits until `count` processes did, at most
/// `bound`. Returns whether they all came.
pub async fn meet(dir: &Path, count: usize, bound: Duration) -> bool {
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
