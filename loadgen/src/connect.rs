//! Connecting all clients of a run: opening users x tabs Socket.IO clients, waiting until
//! all are acked, then until presence has settled, and the figures of both waits.

use std::{
    net::Ipv4Addr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value as Json};
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::args::{Common, PresenceMode};
use crate::client::{self, Hub, Spec};
use crate::figures::{round3, secs};
use crate::sys::Progress;

/// The hub the clients of a run report to; presence counts as settled at --presence-target
/// (default --users) online, or at 0 without user ids.
pub fn new_hub(c: &Common) -> Arc<Hub> {
    let target = if c.no_user_id {
        0
    } else {
        c.presence_target.unwrap_or(c.users as u32)
    };
    Arc::new(Hub::new(c.users * c.tabs, target))
}

/// How the connect wait ended.
struct Acks {
    acked: usize,
    failed: usize,
    connect_s: f64,
    timed_out: bool,
}

/// How the presence wait ended.
struct Presence {
    settled: usize,
    settle_s: f64,
    last_list_s: f64,
    waited_s: f64,
    timed_out: bool,
    stalled: bool,
}

/// Opens users x tabs clients, waits until all are acked (or failed), then until presence
/// has settled: every acked client has seen the full online list and no list has arrived
/// for --quiet-ms. Both waits are bounded. Returns the figures of both.
pub async fn connect_all(c: &Common, hub: &Arc<Hub>, label: &str) -> Map<String, Json> {
    let clients = c.users * c.tabs;
    let src_ips = if c.src_ips == 0 {
        clients.div_ceil(10_000).max(1)
    } else {
        c.src_ips
    }
    .min(250);
    let start_ns = hub.now_ns();
    let spawner = spawn_clients(c, hub, clients, src_ips);
    let acks = await_acks(c, hub, label, clients, start_ns, &spawner).await;
    let presence = await_presence(c, hub, &acks, start_ns).await;
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
    out.insert("acked".into(), json!(acks.acked));
    out.insert("connect_failed".into(), json!(acks.failed));
    out.insert("connect_s".into(), json!(round3(acks.connect_s)));
    out.insert("connect_timed_out".into(), json!(acks.timed_out));
    out.insert("settled".into(), json!(presence.settled));
    out.insert("settle_s".into(), json!(round3(presence.settle_s)));
    out.insert("settle_timed_out".into(), json!(presence.timed_out));
    out.insert("presence_stalled".into(), json!(presence.stalled));
    out.insert("last_list_s".into(), json!(round3(presence.last_list_s)));
    // Until the waits ended: a lower bound of the storm's duration when one timed out.
    out.insert("waited_s".into(), json!(round3(presence.waited_s)));
    add_presence_traffic(&mut out, hub);
    out
}

/// Starts the clients, at most --connect-concurrency handshakes at once, spread over
/// `src_ips` source addresses.
fn spawn_clients(c: &Common, hub: &Arc<Hub>, clients: usize, src_ips: usize) -> JoinHandle<()> {
    let sem = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let handshake_timeout = Duration::from_secs_f64(c.connect_timeout);
    let hub = hub.clone();
    let c = c.clone();
    tokio::spawn(async move {
        for i in 0..clients {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                return;
            };
            let user = i / c.tabs;
            let server = match i % (1 + c.http_more.len()) {
                0 => c.http,
                n => c.http_more[n - 1],
            };
            let spec = Spec {
                idx: i,
                user: user as u64,
                user_id: (!c.no_user_id).then(|| format!("{}{user}", c.user_prefix)),
                presence: c.presence_mode,
                src: Ipv4Addr::new(127, 0, 0, (1 + i % src_ips) as u8),
                server,
            };
            tokio::spawn(client::run(spec, hub.clone(), permit, handshake_timeout));
        }
    })
}

/// Waits until every client is acked or failed, at most --connect-timeout (then stops
/// starting clients).
async fn await_acks(
    c: &Common,
    hub: &Hub,
    label: &str,
    clients: usize,
    start_ns: u64,
    spawner: &JoinHandle<()>,
) -> Acks {
    let mut progress = Progress::new(label, clients as u64, !c.quiet);
    let deadline = Instant::now() + Duration::from_secs_f64(c.connect_timeout);
    let mut timed_out = false;
    loop {
        let acked = hub.acked.load(Relaxed);
        let failed = hub.failed.load(Relaxed);
        progress.update(acked as u64, || format!("acked, {failed} failed"));
        if acked + failed >= clients {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
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
        if timed_out { " (timed out)" } else { "" }
    ));
    Acks {
        acked,
        failed,
        connect_s,
        timed_out,
    }
}

/// Waits until every acked client has seen the full list and the lists have stopped, at
/// most --settle-timeout; gives up early when the lists stop short of it (a lost update).
async fn await_presence(c: &Common, hub: &Hub, acks: &Acks, start_ns: u64) -> Presence {
    let acked = acks.acked;
    let settle_deadline = Instant::now() + Duration::from_secs_f64(c.settle_timeout);
    let quiet_ns = c.quiet_ms * 1_000_000;
    let mut progress = Progress::new("presence", acked as u64, !c.quiet);
    let mut timed_out = false;
    let mut stalled = false;
    if c.presence_mode == PresenceMode::None {
        progress.finish("no presence asked".into());
        return Presence {
            settled: acked,
            settle_s: acks.connect_s,
            last_list_s: 0.0,
            waited_s: secs(hub.now_ns().saturating_sub(start_ns)),
            timed_out: false,
            stalled: false,
        };
    }
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
        if acks.timed_out || Instant::now() >= settle_deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited_s = secs(hub.now_ns().saturating_sub(start_ns));
    let settled = hub.settled.load(Relaxed);
    let settle_s = secs(hub.last_settle_ns.load(Relaxed).saturating_sub(start_ns));
    let last_list_s = secs(hub.last_presence_ns.load(Relaxed).saturating_sub(start_ns));
    progress.finish(format!(
        "{settled}/{acked} saw the full list, last at {settle_s:.3} s{}",
        if timed_out {
            " (timed out)"
        } else if stalled {
            " (lists stopped before every client saw the full count)"
        } else {
            ""
        }
    ));
    Presence {
        settled,
        settle_s,
        last_list_s,
        waited_s,
        timed_out,
        stalled,
    }
}

/// What presence cost the clients: the online counts they saw, the lists, the bytes.
fn add_presence_traffic(out: &mut Map<String, Json>, hub: &Hub) {
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
}
