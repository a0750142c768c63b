//! This node's state in cluster mode, shared by the tasks of the engine (requests, replica,
//! lease), and what it knows of the other nodes.

use crate::sync::lock;
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, PubsubInterface},
};
use tokio::sync::{mpsc, watch, Notify};

use super::{
    connection::Link,
    names::*,
    outbox::{Reply, Requests},
};
use crate::{
    cluster::engine::{ClusterError, LocalSockets},
    cursor::{PageCursor, KEY_LEN},
    presence::{LocalChanges, NodeIdx, Presence},
};
/// What this node knows of another: replica position, or the epoch it was swept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Position {
    pub(super) epoch: u64,
    pub(super) seq: u64,
}

pub(super) const SWEPT: u64 = u64::MAX;

#[derive(Default)]
pub(super) struct Nodes {
    pub(super) index: HashMap<Arc<str>, NodeIdx>,
    pub(super) names: Vec<Arc<str>>,
    /// By index; `None` until something was applied.
    pub(super) positions: Vec<Option<Position>>,
}

impl Nodes {
    pub(super) fn idx(&mut self, name: &str) -> NodeIdx {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as NodeIdx;
        let name: Arc<str> = Arc::from(name);
        self.index.insert(name.clone(), i);
        self.names.push(name);
        self.positions.push(None);
        i
    }

    pub(super) fn alive(&self) -> usize {
        self.positions
            .iter()
            .filter(|p| p.is_some_and(|p| p.seq != SWEPT))
            .count()
    }
}

/// Users whose local socket count changed since the last write.
#[derive(Default)]
pub(super) struct Dirty {
    pub(super) users: Mutex<HashSet<Arc<str>>>,
    pub(super) wake: Notify,
    /// Write rounds started (each takes the users changed so far) and finished.
    pub(super) started: std::sync::atomic::AtomicU64,
    pub(super) finished: tokio::sync::watch::Sender<u64>,
}

impl Dirty {
    /// Resolves once every change made before the call is written to Redis.
    pub(super) async fn written(&self) {
        let target = self.started.load(std::sync::atomic::Ordering::SeqCst) + 1;
        self.wake.notify_one();
        let mut finished = self.finished.subscribe();
        let _ = finished.wait_for(|&n| n >= target).await;
    }
}

impl LocalChanges for Dirty {
    fn changed(&self, user: &Arc<str>) {
        let mut users = lock(&self.users);
        if users.is_empty() {
            self.wake.notify_one();
        }
        users.insert(user.clone());
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The deadline, in milliseconds since the Unix epoch, to give Redis or another node for a
/// request its sender waits `timeout` for: a quarter earlier than the sender gives up, for
/// the trip back and for clocks that differ a little. What runs later is dropped, so a sender
/// that answered UNAVAILABLE never had it done.
pub(super) fn accept_until(timeout: Duration) -> u64 {
    now_ms() + (timeout * 3 / 4).as_millis() as u64
}

pub(super) struct Inner {
    pub(super) client: Client,
    /// The lease's own connection, driven by the lease thread (see [`Inner::keep_lease`]).
    pub(super) lease_client: Client,
    pub(super) subscriber: SubscriberClient,
    pub(super) node_id: Arc<str>,
    pub(super) inbox: String,
    pub(super) lease: Duration,
    pub(super) timeout: Duration,
    pub(super) idempotency_window: Duration,
    /// `--idempotency-max-keys`: each caller's bound.
    pub(super) idempotency_max_keys: u64,
    pub(super) cursor: PageCursor,
    pub(super) cursor_key: [u8; KEY_LEN],
    pub(super) dirty: Arc<Dirty>,
    /// The next write replaces this node's hash (start, reconnect, swept, failed write).
    pub(super) needs_full: AtomicBool,
    pub(super) last_epoch: AtomicU64,
    pub(super) resync: Notify,
    /// Nodes the replica holds that the last reread did not find in Redis, since when.
    pub(super) missing: Mutex<HashMap<NodeIdx, std::time::Instant>>,
    pub(super) nodes: Mutex<Nodes>,
    /// Calls waiting for answers, by correlation id.
    pub(super) pending: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    /// Requests waiting to be published, gathered from the calls running at once.
    pub(super) requests: Requests,
    pub(super) next_call: AtomicU64,
    /// Idempotency keys this node's calls own (bucket, key), with each claim's marker.
    pub(super) owned: Mutex<HashMap<(String, String), String>>,
    /// Requests from other nodes dropped because they arrived after their deadline.
    pub(super) late_requests: AtomicU64,
    /// Times this node found it had been swept while alive (see [`Inner::fence`]).
    pub(super) fenced: AtomicU64,
    pub(super) up: watch::Sender<bool>,
    pub(super) leaving: AtomicBool,
    /// Wakes the lease thread to stop (the node is leaving).
    pub(super) stop_lease: Notify,
    pub(super) presence: OnceLock<Arc<Presence>>,
    pub(super) sockets: OnceLock<Arc<dyn LocalSockets>>,
}

impl Inner {
    pub(super) fn link(&self) -> Link {
        Link {
            client: self.client.clone(),
            timeout: self.timeout,
            up: self.up.subscribe(),
        }
    }

    pub(super) fn presence(&self) -> &Presence {
        self.presence.get().expect("serve() set the registry")
    }

    pub(super) fn is_up(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }

    /// Publishes a change of reachability (metrics, health, fast refusals).
    pub(super) fn check_up(&self) {
        let up = self.is_up();
        self.up.send_if_modified(|was| {
            if *was == up {
                return false;
            }
            if up {
                tracing::info!("Redis is reachable again");
            } else {
                tracing::warn!("Redis is unreachable: sends to other nodes answer UNAVAILABLE");
            }
            *was = up;
            true
        });
    }

    pub(super) async fn subscribe(&self) -> Result<(), fred::error::Error> {
        self.subscriber.subscribe(PRESENCE_CHANNEL).await?;
        self.subscriber.subscribe(BROADCAST_CHANNEL).await?;
        self.subscriber.ssubscribe(self.inbox.as_str()).await
    }

    pub(super) fn check_reachable(&self) -> Result<(), ClusterError> {
        if !*self.up.borrow() {
            return Err(ClusterError::Unavailable("connection lost".into()));
        }
        Ok(())
    }
}
