//! Connection state recovery, as socket.io 4.6+ speaks it: the CONNECT answer carries a
//! private session id (`pid`), every event a socket is sent carries an offset as its last
//! argument, and socket.io-client reconnecting after a drop sends both back; the session is
//! then restored (`socket.recovered`, the same `socket.id`) and the events it missed follow,
//! once and in order, before any new one.
//!
//! A session lives on the node that holds its socket. While the connection is away (dropped
//! within `--recovery-window-ms`) the socket stays in presence, so its user stays online and
//! what is sent to the user is kept for it ([`Session`]). A reconnect that lands on another
//! node asks this one for the session ([`Recovery::hand_off`]).
//!
//! Files: `session` (one session's events and phases), `resume` (a socket's session from its
//! handshake to its disconnect).

mod resume;
mod session;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use socketioxide::socket::Sid;

pub use crate::outcome::Refusal;
pub use resume::{Asked, Resumed};
pub use session::{is_ack, AckTicket, Claim, Session};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::{cluster::Cluster, config::Config};

/// The `--recovery-*` settings.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryLimits {
    /// How long a dropped session stays recoverable.
    pub window: Duration,
    /// How long a live socket keeps what it was sent: past it, a ping the client answered
    /// (or the timeout that would have closed the connection) proved it read the event.
    pub horizon: Duration,
    /// Events kept per session.
    pub max_events: usize,
    /// Bytes kept per session.
    pub max_bytes: usize,
    /// Bytes kept by all sessions of the node.
    pub max_total_bytes: usize,
}

/// Time past the heartbeat's `pingInterval + pingTimeout` before an event a live socket was
/// sent counts as read: the disconnect that a missing pong causes must have parked the session
/// by then.
const HORIZON_MARGIN: Duration = Duration::from_secs(5);

impl RecoveryLimits {
    /// `None` when `--recovery-window-ms` is 0 (recovery off).
    pub fn of(config: &Config) -> Option<Self> {
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        (config.recovery_window_ms > 0).then(|| Self {
            window: Duration::from_millis(config.recovery_window_ms),
            horizon: config.ping_interval() + config.ping_timeout() + HORIZON_MARGIN,
            max_events: clamp(config.recovery_max_events),
            max_bytes: clamp(config.recovery_max_bytes),
            max_total_bytes: clamp(config.recovery_max_total_bytes),
        })
    }
}

/// Which bound a session went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `--recovery-max-events`.
    Events,
    /// `--recovery-max-bytes`.
    Bytes,
    /// `--recovery-max-total-bytes`.
    TotalBytes,
}

/// The series recovery moves (registered by the metrics module, which serves them).
#[derive(Debug, Clone, Default)]
pub struct RecoveryMetrics {
    /// Sessions whose connection dropped, kept for a recovery now.
    pub away: Gauge,
    /// Bytes kept by this node's sessions.
    pub kept_bytes: Gauge,
    /// Reconnects that asked to recover, by [`RecoveryMetrics::OUTCOMES`].
    pub attempts: [Counter; 5],
    /// Sessions ended by a bound, by [`RecoveryMetrics::BOUNDS`].
    pub overflows: [Counter; 3],
}

impl RecoveryMetrics {
    /// The `outcome` labels: recovered, then each [`Refusal`] in declaration order.
    pub const OUTCOMES: [&'static str; 5] =
        ["recovered", "unknown", "expired", "other_user", "gap"];
    /// The `bound` labels, in [`Overflow`]'s order.
    pub const BOUNDS: [&'static str; 3] = ["events", "bytes", "total_bytes"];

    /// Counts a reconnect that asked to recover a session: `Ok` when it did.
    pub fn attempt(&self, outcome: Result<(), Refusal>) {
        let i = outcome.map_or_else(|refusal| 1 + refusal as usize, |()| 0);
        self.attempts[i].inc();
    }

    /// Counts a dropped session ended by a bound.
    pub fn overflow(&self, bound: Overflow) {
        self.overflows[bound as usize].inc();
    }
}

/// What the sessions of a node share.
pub(crate) struct Shared {
    limits: RecoveryLimits,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    metrics: RecoveryMetrics,
    /// How sessions held by other nodes are asked for.
    cluster: Arc<dyn Cluster>,
    /// This node's id in cluster mode: the suffix of the session ids it gives out.
    node: Option<Arc<str>>,
}

impl Shared {
    /// The bytes kept, read from the gauge itself: one shared atomic per change, not two.
    fn total_bytes(&self) -> usize {
        usize::try_from(self.metrics.kept_bytes.get()).unwrap_or(0)
    }

    fn add_bytes(&self, n: usize) {
        self.metrics.kept_bytes.inc_by(n as i64);
    }

    fn sub_bytes(&self, n: usize) {
        self.metrics.kept_bytes.dec_by(n as i64);
    }

    fn away_entered(&self) {
        self.metrics.away.inc();
    }

    fn away_left(&self) {
        self.metrics.away.dec();
    }

    /// Takes `session` out of the map (not a newer session under the same pid: one handed
    /// back to this node).
    fn forget(&self, session: &Session) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions
            .get(&session.pid)
            .is_some_and(|held| std::ptr::eq(&**held, session))
        {
            sessions.remove(&session.pid);
        }
    }

    fn insert(&self, session: Arc<Session>) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.pid.clone(), session);
    }
}

/// The recoverable sessions of this node.
#[derive(Clone)]
pub struct Recovery(Arc<Shared>);

impl Recovery {
    /// Sessions within `limits`, counted in `metrics`; `cluster` reaches the sessions other
    /// nodes hold.
    pub fn new(
        limits: RecoveryLimits,
        metrics: RecoveryMetrics,
        cluster: Arc<dyn Cluster>,
    ) -> Self {
        let node = cluster.status().map(|status| status.node_id);
        Self(Arc::new(Shared {
            limits,
            sessions: Mutex::default(),
            metrics,
            cluster,
            node,
        }))
    }

    /// The settings.
    pub fn limits(&self) -> RecoveryLimits {
        self.0.limits
    }

    /// A new session of `user` for the socket `holder`, whose id its client sees.
    pub fn open(&self, user: Arc<str>, holder: Sid) -> Arc<Session> {
        let pid = match &self.0.node {
            Some(node) => format!("{}.{node}", random_id(16)),
            None => random_id(16),
        };
        let session = Arc::new(Session::new(Arc::from(pid), user, holder, self.0.clone()));
        self.0.insert(session.clone());
        session
    }

    /// The session `pid` names, if this node holds it.
    pub fn find(&self, pid: &str) -> Option<Arc<Session>> {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pid)
            .cloned()
    }

    /// Sessions this node holds (live, away or being replayed to).
    pub fn len(&self) -> usize {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether this node holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fresh offset: unique across the nodes and restarts of a cluster (a random prefix per
/// process, then a counter), so a client's offset names one event wherever it was sent.
pub fn next_offset() -> Arc<str> {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| random_id(6));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Arc::from(format!("{prefix}{n:x}"))
}

/// `bytes` random bytes, base64url: ids a client cannot guess.
fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the OS random source works");
    URL_SAFE_NO_PAD.encode(buf)
}
