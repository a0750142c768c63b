//! `watch`: tabs in `presence: "watch"` mode, each watching users drawn from the whole
//! population with a fixed seed, over one node; several processes (one per node) make the
//! population. Each tab keeps the exact set its frames build (`getOnlineUsers`, then
//! `onlineUsersChanged`), and a frame that does not apply (a user already online said to come
//! online, an unwatched id) is a breach. Phases, each met by every process at a barrier:
//! connect every tab; exact (every tab holds all its watched users); churn out (a fixed share
//! of the population disconnects: every other tab must drop exactly those of them it
//! watches); churn back (they reconnect: every tab whole again). Reported: time to exact after
//! each phase, bytes received, frames, breaches, and the server's RSS per connection.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::{json, Map, Value as Json};
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::{watch, Semaphore},
};

use crate::args::Common;
use crate::client::{lock, upgrade, CLOSE_FRAME, CONNECT_FRAME, PONG_FRAME};
use crate::figures::{add_proc, round3, server_sample};
use crate::idle::meet;

#[derive(Args, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub c: Common,
    /// Users in all the processes of the run; this one connects users
    /// `--first .. --first + --users`, each once, as `w<N>`.
    #[arg(long)]
    pub population: usize,
    /// Index of this process's first user.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Users each tab watches, drawn from the population (at most 128).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub watch_count: u32,
    /// Seed of the draws (watchlists, churned users): the same in every process of a run.
    #[arg(long, default_value_t = 24)]
    pub seed: u64,
    /// Percent of the population that disconnects and reconnects in the churn phases.
    #[arg(long, default_value_t = 5)]
    pub churn_percent: u64,
    /// Directory the processes of one run meet in, one subdirectory per phase.
    #[arg(long)]
    pub barrier: PathBuf,
    /// Processes of the run.
    #[arg(long, default_value_t = 1)]
    pub barrier_count: usize,
    /// Seconds to hold the exact tabs before sampling the server's RSS.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
}

/// Which tabs are connected, and so what every tab must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Everyone connected (or connecting).
    All,
    /// The churned users are away.
    Out,
    /// The run is over: every tab closes.
    End,
}

/// `41` (Socket.IO disconnect), a client text frame masked with a zero key.
const DISCONNECT_FRAME: &[u8] = &[0x81, 0x82, 0, 0, 0, 0, b'4', b'1'];

/// A splitmix64 step: the draws are the same in every process and every run.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The draws of one run.
struct Draws {
    population: usize,
    count: usize,
    seed: u64,
    churn_percent: u64,
}

impl Draws {
    /// The users `user` watches: `count` distinct others, sorted.
    fn watchlist(&self, user: usize) -> Vec<u32> {
        let want = self.count.min(self.population.saturating_sub(1));
        let mut state = self.seed ^ (user as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        let mut list: Vec<u32> = Vec::with_capacity(want);
        while list.len() < want {
            state = mix(state);
            let u = (state % self.population as u64) as u32;
            if u as usize != user && !list.contains(&u) {
                list.push(u);
            }
        }
        list.sort_unstable();
        list
    }

    /// Whether `user` is one of those who leave and come back.
    fn churned(&self, user: u32) -> bool {
        mix(self.seed ^ 0x00C0_FFEE ^ u64::from(user)) % 100 < self.churn_percent
    }
}

/// What every tab shares: its exactness and the counts of the run.
struct Shared {
    exact: Vec<AtomicBool>,
    acked: AtomicUsize,
    connects: AtomicUsize,
    frames: AtomicU64,
    bytes: AtomicU64,
    breaches: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 5 {
            errors.push(e);
        }
    }
}

/// One tab: its user, what it watches, and the set its frames built (a bit per watched user).
struct Tab {
    idx: usize,
    user: u32,
    churned: bool,
    watched: Vec<u32>,
    /// Watched users who are churned: absent from the set while they are away.
    churn_mask: u128,
    set: u128,
    src: Ipv4Addr,
    server: SocketAddr,
}

impl Tab {
    fn expected(&self, phase: Phase) -> u128 {
        let all = if self.watched.len() == 128 {
            u128::MAX
        } else {
            (1u128 << self.watched.len()) - 1
        };
        match phase {
            Phase::Out => all & !self.churn_mask,
            _ => all,
        }
    }

    fn bit(&self, id: &Json) -> Option<u128> {
        let n: u32 = id.as_str()?.strip_prefix('w')?.parse().ok()?;
        let pos = self.watched.binary_search(&n).ok()?;
        Some(1u128 << pos)
    }

    /// Applies one event; false when it does not apply to the set held (a breach).
    fn apply(&mut self, event: &str, data: &Json) -> bool {
        match event {
            "getOnlineUsers" => {
                self.set = 0;
                data.as_array()
                    .into_iter()
                    .flatten()
                    .all(|id| match self.bit(id) {
                        Some(b) => {
                            self.set |= b;
                            true
                        }
                        None => false,
                    })
            }
            "onlineUsersChanged" => {
                let ids = |key: &str| data.get(key).and_then(Json::as_array).cloned();
                let (Some(on), Some(off)) = (ids("online"), ids("offline")) else {
                    return false;
                };
                let mut ok = true;
                for id in &on {
                    let b = self.bit(id).unwrap_or(0);
                    ok &= b != 0 && self.set & b == 0;
                    self.set |= b;
                }
                for id in &off {
                    let b = self.bit(id).unwrap_or(0);
                    ok &= b != 0 && self.set & b != 0;
                    self.set &= !b;
                }
                ok
            }
            _ => true,
        }
    }
}

/// A WebSocket frame from the server (never masked): opcode, payload and bytes it took.
fn frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, off) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let end = off + usize::try_from(len).ok()?;
    (buf.len() >= end).then_some((b0 & 0x0f, off..end))
}

/// How a connection ended.
enum Ended {
    /// The phase asks this tab to leave (or the run is over).
    Left,
    /// The server or the network closed it.
    Lost,
}

/// Reads one connection until it ends or the phase asks the tab to leave; keeps the tab's
/// set and exactness up to date.
async fn session(
    tab: &mut Tab,
    shared: &Shared,
    stream: &mut TcpStream,
    mut pending: Vec<u8>,
    phase: &mut watch::Receiver<Phase>,
) -> Ended {
    if stream.write_all(CONNECT_FRAME).await.is_err() {
        return Ended::Lost;
    }
    let mut acked = false;
    loop {
        let mut out: Vec<&[u8]> = Vec::new();
        while let Some((op, range)) = frame(&pending) {
            let end = range.end;
            match op {
                8 => return Ended::Lost,
                1 => {
                    let text = &pending[range];
                    if text == b"2" {
                        out.push(PONG_FRAME);
                    } else if text.starts_with(b"40") && !acked {
                        acked = true;
                        shared.acked.fetch_add(1, Relaxed);
                    } else if let Some(body) = text.strip_prefix(b"42") {
                        on_event(tab, shared, body, *phase.borrow());
                    } else if text.starts_with(b"41") || text.starts_with(b"44") {
                        return Ended::Lost;
                    }
                }
                _ => {}
            }
            pending.drain(..end);
        }
        for f in out {
            if stream.write_all(f).await.is_err() {
                return Ended::Lost;
            }
        }
        if pending.capacity() > 64 * 1024 && pending.len() < 1024 {
            pending.shrink_to(4096);
        }
        tokio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return Ended::Lost;
                }
                pending.reserve(4096);
                match stream.try_read_buf(&mut pending) {
                    Ok(0) => return Ended::Lost,
                    Ok(n) => {
                        shared.bytes.fetch_add(n as u64, Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Ended::Lost,
                }
            }
            changed = phase.changed() => {
                let now = *phase.borrow();
                if changed.is_err() || now == Phase::End || (tab.churned && now == Phase::Out) {
                    // A Socket.IO disconnect first: a bare close would keep the session (and
                    // the user online) for a recovery.
                    let _ = stream.write_all(DISCONNECT_FRAME).await;
                    let _ = stream.write_all(CLOSE_FRAME).await;
                    return Ended::Left;
                }
                shared.exact[tab.idx].store(tab.set == tab.expected(now), Relaxed);
            }
        }
    }
}

/// One `42[event, data, offset?]` packet.
fn on_event(tab: &mut Tab, shared: &Shared, body: &[u8], phase: Phase) {
    let Ok(Json::Array(parts)) = serde_json::from_slice::<Json>(body) else {
        return;
    };
    let (Some(event), Some(data)) = (parts.first().and_then(Json::as_str), parts.get(1)) else {
        return;
    };
    if event != "getOnlineUsers" && event != "onlineUsersChanged" {
        return;
    }
    shared.frames.fetch_add(1, Relaxed);
    if !tab.apply(event, data) {
        shared.breaches.fetch_add(1, Relaxed);
        shared.error(format!(
            "tab w{}: {event} {data} does not apply to its set",
            tab.user
        ));
    }
    shared.exact[tab.idx].store(tab.set == tab.expected(phase), Relaxed);
}

/// A tab over the whole run: connected whenever its phase wants it, reconnecting after a
/// loss.
async fn run_tab(
    mut tab: Tab,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    gate: Arc<Semaphore>,
) {
    let names: Vec<String> = tab.watched.iter().map(|u| format!("w{u}")).collect();
    let query = format!(
        "&userId=w{}&presence=watch&watch={}",
        tab.user,
        names.join(",")
    );
    loop {
        let now = *phase.borrow_and_update();
        if now == Phase::End {
            return;
        }
        if tab.churned && now == Phase::Out {
            shared.exact[tab.idx].store(true, Relaxed);
            if phase.changed().await.is_err() {
                return;
            }
            continue;
        }
        shared.exact[tab.idx].store(false, Relaxed);
        let permit = gate.clone().acquire_owned().await;
        let opened = tokio::time::timeout(
            Duration::from_secs(20),
            upgrade(tab.src, tab.server, &query),
        )
        .await;
        drop(permit);
        let (mut stream, early) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                shared.error(format!("tab w{}: {e}", tab.user));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                shared.error(format!("tab w{}: handshake timed out", tab.user));
                continue;
            }
        };
        shared.connects.fetch_add(1, Relaxed);
        tab.set = 0;
        if let Ended::Lost = session(&mut tab, &shared, &mut stream, early, &mut phase).await {
            shared.error(format!("tab w{}: connection lost", tab.user));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Waits until every tab is exact (at most `bound`); returns the seconds it took, or `None`.
async fn until_exact(shared: &Shared, bound: Duration) -> Option<f64> {
    let t0 = Instant::now();
    loop {
        if shared.exact.iter().all(|e| e.load(Relaxed)) {
            return Some(round3(t0.elapsed().as_secs_f64()));
        }
        if t0.elapsed() >= bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Meets the other processes at `phase`'s barrier, bounded by the settle timeout.
async fn meet_at(a: &WatchArgs, phase: &str) -> bool {
    let dir: PathBuf = Path::new(&a.barrier).join(phase);
    meet(
        &dir,
        a.barrier_count,
        Duration::from_secs_f64(a.c.settle_timeout),
    )
    .await
}

/// This process's tabs, each with its draws.
fn new_tabs(a: &WatchArgs) -> Vec<Tab> {
    let c = &a.c;
    let draws = Draws {
        population: a.population,
        count: a.watch_count as usize,
        seed: a.seed,
        churn_percent: a.churn_percent,
    };
    let src_ips = if c.src_ips == 0 {
        c.users / 10_000 + 1
    } else {
        c.src_ips
    };
    (0..c.users)
        .map(|idx| {
            let user = (a.first + idx) as u32;
            let watched = draws.watchlist(user as usize);
            let churn_mask = watched
                .iter()
                .enumerate()
                .filter(|(_, &u)| draws.churned(u))
                .fold(0u128, |m, (pos, _)| m | 1u128 << pos);
            Tab {
                idx,
                user,
                churned: draws.churned(user),
                watched,
                churn_mask,
                set: 0,
                src: Ipv4Addr::new(127, 0, 0, 1 + (idx % src_ips) as u8),
                server: c.http,
            }
        })
        .collect()
}

/// The run's counts, once every tab closed.
fn add_counts(out: &mut Map<String, Json>, shared: &Shared, a: &WatchArgs, exact_bytes: u64) {
    let mib = |bytes: u64| json!(round3(bytes as f64 / 1048576.0));
    out.insert("kind".into(), json!("watch"));
    out.insert("clients".into(), json!(a.c.users));
    out.insert("population".into(), json!(a.population));
    out.insert("watch_count".into(), json!(a.watch_count));
    out.insert("connects".into(), json!(shared.connects.load(Relaxed)));
    out.insert("presence_frames".into(), json!(shared.frames.load(Relaxed)));
    out.insert("breaches".into(), json!(shared.breaches.load(Relaxed)));
    out.insert("bytes_received_mib".into(), mib(shared.bytes.load(Relaxed)));
    out.insert("bytes_until_exact_mib".into(), mib(exact_bytes));
    let errors = lock(&shared.errors).clone();
    out.insert("errors".into(), json!(errors.len()));
    if !errors.is_empty() {
        out.insert("first_errors".into(), json!(errors));
    }
}

/// The scenario: see the module's doc.
pub async fn watch_scenario(a: WatchArgs) -> Result<Map<String, Json>, String> {
    let c = &a.c;
    let tabs = new_tabs(&a);
    let churned_here = tabs.iter().filter(|t| t.churned).count();
    let shared = Arc::new(Shared {
        exact: (0..c.users).map(|_| AtomicBool::new(false)).collect(),
        acked: AtomicUsize::new(0),
        connects: AtomicUsize::new(0),
        frames: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        breaches: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::All);
    let gate = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let before = server_sample(c);
    let t0 = Instant::now();
    let tasks: Vec<_> = tabs
        .into_iter()
        .map(|tab| tokio::spawn(run_tab(tab, shared.clone(), phase_rx.clone(), gate.clone())))
        .collect();
    let mut out = Map::new();
    let connect_bound = Duration::from_secs_f64(c.connect_timeout);
    while shared.acked.load(Relaxed) < c.users && t0.elapsed() < connect_bound {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.insert("acked".into(), json!(shared.acked.load(Relaxed)));
    out.insert(
        "connect_s".into(),
        json!(round3(t0.elapsed().as_secs_f64())),
    );
    let bound = Duration::from_secs_f64(c.settle_timeout);
    // Exact after the last connect of every process.
    out.insert("barrier_met".into(), json!(meet_at(&a, "connected").await));
    let settle = until_exact(&shared, bound).await;
    out.insert("exact_after_last_connect_s".into(), json!(settle));
    let exact_bytes = shared.bytes.load(Relaxed);
    meet_at(&a, "exact").await;
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let after = server_sample(c);
    add_proc(&mut out, "server_before", before);
    add_proc(&mut out, "server_after", after);
    if let (Some(b), Some(x)) = (before, after) {
        let held = shared.acked.load(Relaxed).max(1) as f64;
        let per_conn = (x.rss_kib as f64 - b.rss_kib as f64) / held;
        out.insert("rss_per_conn_kib".into(), json!(round3(per_conn)));
        out.insert("server_cpu_s".into(), json!(round3(x.cpu_s - b.cpu_s)));
    }
    // Churn: the drawn users leave, every other tab must drop exactly them; then they return.
    let _ = phase_tx.send(Phase::Out);
    meet_at(&a, "out").await;
    let out_s = until_exact(&shared, bound).await;
    out.insert("exact_after_churn_out_s".into(), json!(out_s));
    meet_at(&a, "out-exact").await;
    let _ = phase_tx.send(Phase::All);
    meet_at(&a, "back").await;
    let back_s = until_exact(&shared, bound).await;
    out.insert("exact_after_churn_back_s".into(), json!(back_s));
    meet_at(&a, "done").await;
    let exact = shared.exact.iter().filter(|e| e.load(Relaxed)).count();
    out.insert("exact_at_end".into(), json!(exact));
    out.insert("churned_here".into(), json!(churned_here));
    let _ = phase_tx.send(Phase::End);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    add_counts(&mut out, &shared, &a, exact_bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_fixed_distinct_and_sorted() {
        let d = Draws {
            population: 1000,
            count: 100,
            seed: 7,
            churn_percent: 5,
        };
        let a = d.watchlist(3);
        assert_eq!(a, d.watchlist(3));
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && !a.contains(&3));
        let churned = (0..1000).filter(|&u| d.churned(u)).count();
        assert!((20..=80).contains(&churned), "{churned}");
    }

    #[test]
    fn frames_apply_or_are_breaches() {
        let mut tab = Tab {
            idx: 0,
            user: 0,
            churned: false,
            watched: vec![1, 5, 9],
            churn_mask: 0b010,
            set: 0,
            src: Ipv4Addr::LOCALHOST,
            server: "127.0.0.1:1".parse().unwrap(),
        };
        assert!(tab.apply("getOnlineUsers", &json!(["w1", "w9"])));
        assert_eq!(tab.set, 0b101);
        assert!(tab.apply(
            "onlineUsersChanged",
            &json!({"online": ["w5"], "offline": ["w1"]})
        ));
        assert_eq!(tab.set, 0b110);
        assert!(!tab.apply(
            "onlineUsersChanged",
            &json!({"online": ["w5"], "offline": []})
        ));
        assert!(!tab.apply(
            "onlineUsersChanged",
            &json!({"online": ["w2"], "offline": []})
        ));
        assert_eq!(tab.expected(Phase::Out), 0b101);
        assert_eq!(frame(&[0x81, 1, b'2']), Some((1, 2..3)));
        assert_eq!(frame(&[0x81, 126, 0, 2, b'4']), None);
    }
}
