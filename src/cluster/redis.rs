//! Cluster mode on Redis (one server or a Redis Cluster), with the `fred` client.
//!
//! - Presence: each node keeps a hash `mg:{node}:users` (user -> "sockets:since_ms") and a
//!   lease key `mg:{node}:lease` (PX expiry, renewed every lease/5). Local changes are marked
//!   dirty and written by one task, many users per script call, so a connect storm costs a
//!   few round trips, not one per socket. Every write publishes the change on
//!   `mg:presence`; every node applies it to its replica, and resyncs from the hashes at start
//!   and after a reconnect. Events carry (epoch, seq): the epoch changes with each full
//!   republish, seq counts the writes within it, so a missed event is noticed and healed.
//! - A node that misses its lease is swept by any other node (atomically, under a lock key),
//!   so its users leave every replica within about the lease.
//! - Delivery: a node asks only the nodes holding the receiver, on their sharded channel
//!   `mg:{node}:in` (SPUBLISH: one shard per channel, in publish order); they answer the
//!   socket counts on the asker's channel under a correlation id.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, LazyLock, Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fred::{
    clients::{Client, SubscriberClient, WithOptions},
    interfaces::{
        ClientLike, EventInterface, HashesInterface, KeysInterface, PubsubInterface, SetsInterface,
    },
    types::{
        config::{Config as RedisConfig, Options, ReconnectPolicy, Server, ServerConfig},
        Expiration, Message, SetOptions,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::{
    sync::{broadcast::error::RecvError, mpsc, watch, Notify},
    time::Instant,
};

use futures_util::future::BoxFuture;

use super::{
    engine::{Claim, Cluster, ClusterError, ClusterStatus, LocalSockets},
    script::Script,
};
use crate::{
    config::{Config, ConfigError},
    cursor::{random_key, PageCursor, KEY_LEN},
    outcome::{Answered, Reached, Sent},
    presence::{Holding, LocalChanges, NodeIdx, Presence},
};

/// Channel every node listens on for presence changes.
const PRESENCE_CHANNEL: &str = "mg:presence";
/// Channel every node listens on for broadcasts (one publish reaches them all).
const BROADCAST_CHANNEL: &str = "mg:broadcast";
/// Set of the nodes that joined (members are swept when their lease is gone).
const NODES_KEY: &str = "mg:nodes";
/// The page-token key the nodes share.
const CURSOR_KEY: &str = "mg:cursor-key";
/// Users per presence write: bounds the size of one script call and one event.
const WRITE_BATCH: usize = 1000;
/// Hash fields holding the epoch and seq; user ids cannot contain control characters.
const EPOCH_FIELD: &str = "\u{0}e";
const SEQ_FIELD: &str = "\u{0}s";

/// Applies one presence write atomically: hash, seq, publish. KEYS: users hash, lease.
/// ARGV: channel, event, full, epoch, seq, lease ms, then user/count pairs. Returns 0 when
/// an incremental write finds the lease gone (the node was swept: it must republish in full).
const WRITE_SCRIPT: &str = r#"
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[6])
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], '\0e', ARGV[4], '\0s', ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_SCRIPT));

/// Sweeps a node whose lease is gone. KEYS: users hash, lease, lock. ARGV: lock ms.
/// Returns the swept epoch, or nil when the node is alive or another node is sweeping it.
const SWEEP_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return false end
local e = redis.call('HGET', KEYS[1], '\0e')
redis.call('DEL', KEYS[1])
return e or '0'
"#;
static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(SWEEP_SCRIPT));

/// How long a claimed idempotency key stays "in flight" when its owner never settles it (the
/// node died): longer than any call (acks wait at most 60 s).
const IN_FLIGHT: Duration = Duration::from_secs(75);
/// The value of a key claimed but not yet answered.
const PENDING: &str = "-";

fn idempotency_key(key: &str) -> String {
    format!("mg:idem:{key}")
}

fn users_key(node: &str) -> String {
    format!("mg:{{{node}}}:users")
}

fn lease_key(node: &str) -> String {
    format!("mg:{{{node}}}:lease")
}

fn lock_key(node: &str) -> String {
    format!("mg:{{{node}}}:sweep")
}

fn inbox(node: &str) -> String {
    format!("mg:{{{node}}}:in")
}

/// A holding as stored in a node's users hash: "sockets:since_ms", or "0" for none (the
/// write script deletes the field then).
fn holding_field(h: &Holding) -> String {
    match h.sockets {
        0 => "0".into(),
        n => format!("{n}:{}", h.since_ms),
    }
}

fn parse_holding(field: &str) -> Option<Holding> {
    let (sockets, since) = field.split_once(':').unwrap_or((field, "0"));
    Some(Holding {
        sockets: sockets.parse().ok()?,
        since_ms: since.parse().ok()?,
    })
}

/// A presence change of one node, as published on [`PRESENCE_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
struct PresenceEvent {
    n: String,
    e: u64,
    s: u64,
    /// Replaces everything known of the node.
    #[serde(default)]
    f: bool,
    /// The node was swept (epoch `e`).
    #[serde(default)]
    gone: bool,
    #[serde(default)]
    u: Vec<Held>,
}

impl PresenceEvent {
    /// Node `n` (epoch `e`) is gone: it left, or its lease expired and it was swept.
    fn gone(n: String, e: u64) -> Self {
        Self {
            n,
            e,
            s: 0,
            f: false,
            gone: true,
            u: Vec::new(),
        }
    }
}

/// One user's holding in a presence event: `[user, sockets, since_ms]`; nodes from before
/// online-since was kept send `[user, sockets]` (read as since 0).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Held {
    Since(String, u32, u64),
    Count(String, u32),
}

impl Held {
    fn new(user: &str, h: &Holding) -> Self {
        Self::Since(user.to_owned(), h.sockets, h.since_ms)
    }

    fn into_parts(self) -> (String, Holding) {
        match self {
            Self::Since(user, sockets, since_ms) => (user, Holding { sockets, since_ms }),
            Self::Count(user, sockets) => (
                user,
                Holding {
                    sockets,
                    since_ms: 0,
                },
            ),
        }
    }
}

/// What a request asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
enum Kind {
    /// Emit `e` with `m` to the local sockets of each of `u`; answer their counts.
    #[default]
    #[serde(rename = "d")]
    Deliver,
    /// Disconnect the local sockets of `u[0]`, telling them the reason `e`; answer how many.
    #[serde(rename = "x")]
    Disconnect,
    /// Emit `e` with `m` to every local socket; answer (users, sockets, refused).
    #[serde(rename = "b")]
    Broadcast,
}

/// A request, on the holder's inbox (or, for a broadcast, [`BROADCAST_CHANNEL`]), prefixed
/// `q`.
#[derive(Serialize, Deserialize)]
struct Request<'a> {
    c: u64,
    #[serde(default)]
    k: Kind,
    #[serde(borrow)]
    f: &'a str,
    #[serde(borrow)]
    e: &'a str,
    #[serde(borrow)]
    u: Vec<&'a str>,
    #[serde(borrow)]
    m: &'a RawValue,
    /// Milliseconds the sockets have to acknowledge (acknowledged sends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<u64>,
}

/// Its answer, on the asker's inbox, prefixed `a`.
#[derive(Serialize, Deserialize)]
struct Answer {
    c: u64,
    n: Vec<u32>,
    /// Acks per user, when asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    k: Vec<u32>,
}

/// How long after an ack deadline an asker still waits for a node's answer: the node answers
/// at the deadline, so this only covers the trip back.
fn ack_margin(ack: Duration, cluster_timeout: Duration) -> Duration {
    (ack / 20)
        .max(Duration::from_millis(50))
        .min(cluster_timeout)
}

/// What this node knows of another: replica position, or the epoch it was swept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    epoch: u64,
    seq: u64,
}

const SWEPT: u64 = u64::MAX;

#[derive(Default)]
struct Nodes {
    index: HashMap<Arc<str>, NodeIdx>,
    names: Vec<Arc<str>>,
    /// By index; `None` until something was applied.
    positions: Vec<Option<Position>>,
}

impl Nodes {
    fn idx(&mut self, name: &str) -> NodeIdx {
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

    fn alive(&self) -> usize {
        self.positions
            .iter()
            .filter(|p| p.is_some_and(|p| p.seq != SWEPT))
            .count()
    }
}

/// Users whose local socket count changed since the last write.
#[derive(Default)]
struct Dirty {
    users: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Inner {
    client: Client,
    /// The lease's own connection, driven by the lease thread (see [`Inner::keep_lease`]).
    lease_client: Client,
    subscriber: SubscriberClient,
    node_id: Arc<str>,
    inbox: String,
    lease: Duration,
    timeout: Duration,
    idempotency_window: Duration,
    cursor: PageCursor,
    cursor_key: [u8; KEY_LEN],
    dirty: Arc<Dirty>,
    /// The next write replaces this node's hash (start, reconnect, swept, failed write).
    needs_full: AtomicBool,
    last_epoch: AtomicU64,
    resync: Notify,
    nodes: Mutex<Nodes>,
    /// Calls waiting for answers, by correlation id.
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
    next_call: AtomicU64,
    up: watch::Sender<bool>,
    leaving: AtomicBool,
    /// Wakes the lease thread to stop (the node is leaving).
    stop_lease: Notify,
    presence: OnceLock<Arc<Presence>>,
    sockets: OnceLock<Arc<dyn LocalSockets>>,
}

/// A node of a cluster on Redis.
pub struct Redis {
    inner: Arc<Inner>,
}

/// Options for a command a caller waits on: while Redis is unreachable it fails at once
/// instead of queueing in the client until Redis is back; one attempt, at most `timeout`.
fn fail_fast(timeout: Duration) -> Options {
    Options {
        fail_fast: true,
        timeout: Some(timeout),
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// The command connection for calls a caller waits on (the mailbox, idempotency keys):
/// refused at once while Redis is known to be unreachable, and bounded by the cluster timeout
/// otherwise, so a Redis outage is a prompt UNAVAILABLE, never a hung call.
#[derive(Clone)]
pub struct Link {
    client: Client,
    timeout: Duration,
    up: watch::Receiver<bool>,
}

impl Link {
    pub async fn run<T, F>(
        &self,
        command: impl FnOnce(WithOptions<Client>) -> F,
    ) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        self.run_within(self.timeout, command).await
    }

    /// As [`Link::run`], bounded by `timeout` instead of the cluster timeout.
    pub async fn run_within<T, F>(
        &self,
        timeout: Duration,
        command: impl FnOnce(WithOptions<Client>) -> F,
    ) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        if !*self.up.borrow() {
            return Err(ClusterError::Unavailable("connection lost".into()));
        }
        let client = self.client.with_options(&fail_fast(timeout));
        match tokio::time::timeout(timeout, command(client)).await {
            Ok(done) => done.map_err(|e| ClusterError::Unavailable(e.to_string())),
            Err(_) => Err(ClusterError::Unavailable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

fn redis_config(config: &Config) -> Result<RedisConfig, ConfigError> {
    let bad = |url: &str, e: fred::error::Error| {
        ConfigError::Invalid(format!("--redis-url {}: {e}", redact(url)))
    };
    let first = &config.redis_url[0];
    if !config.redis_cluster {
        if config.redis_url.len() > 1 {
            return Err(ConfigError::Invalid(
                "several --redis-url are the seeds of a Redis Cluster: add --redis-cluster".into(),
            ));
        }
        return RedisConfig::from_url_centralized(first).map_err(|e| bad(first, e));
    }
    let mut base = RedisConfig::from_url_clustered(first).map_err(|e| bad(first, e))?;
    for url in &config.redis_url[1..] {
        let seed = RedisConfig::from_url_clustered(url).map_err(|e| bad(url, e))?;
        if let (
            ServerConfig::Clustered { hosts, .. },
            ServerConfig::Clustered { hosts: more, .. },
        ) = (&mut base.server, seed.server)
        {
            hosts.extend(more.into_iter().map(|s: Server| s));
        }
    }
    Ok(base)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// `--node-id`, or the host name plus a random suffix.
fn node_id(config: &Config) -> Result<String, ConfigError> {
    let id = match &config.node_id {
        Some(id) => id.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().replace(['{', '}'], ""))
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into());
            let suffix = random_key();
            format!("{host}-{:02x}{:02x}{:02x}", suffix[0], suffix[1], suffix[2])
        }
    };
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '{' && c != '}');
    if !ok {
        return Err(ConfigError::Invalid(format!(
            "--node-id {id:?}: use 1 to 64 printable characters without spaces, '{{' or '}}'"
        )));
    }
    Ok(id)
}

/// The shared page-token key: this node's proposal wins if none is set yet.
async fn shared_cursor_key(
    client: &Client,
    proposal: &[u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], fred::error::Error> {
    let hex: String = proposal.iter().map(|b| format!("{b:02x}")).collect();
    let _: Option<String> = client
        .set(CURSOR_KEY, hex, None, Some(SetOptions::NX), false)
        .await?;
    let stored: String = client.get(CURSOR_KEY).await?;
    let mut key = [0; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = stored
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    Ok(key)
}

impl Redis {
    /// Connects both clients (commands and subscriptions) and joins the page-token key.
    pub async fn connect(config: &Config) -> Result<Self, ConfigError> {
        let node_id = node_id(config)?;
        let redis = redis_config(config)?;
        let policy = ReconnectPolicy::new_constant(0, 100);
        let build = || {
            let mut builder = fred::types::Builder::from_config(redis.clone());
            builder
                .set_policy(policy.clone())
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                })
                .with_performance_config(|p| {
                    // A lagging listener resyncs, but should not have to under a burst.
                    p.broadcast_channel_capacity = 65_536;
                });
            builder
        };
        let unreachable = |e: fred::error::Error| {
            ConfigError::Invalid(format!(
                "cannot reach Redis at {}: {e}",
                redact(&config.redis_url[0])
            ))
        };
        let client = build().build().map_err(unreachable)?;
        let lease_client = build().build().map_err(unreachable)?;
        let subscriber = build().build_subscriber_client().map_err(unreachable)?;
        let connect = async {
            client.init().await?;
            subscriber.init().await?;
            shared_cursor_key(&client, &random_key()).await
        };
        let cursor_key = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| {
                ConfigError::Invalid(format!(
                    "cannot reach Redis at {}: no answer within 10 s",
                    redact(&config.redis_url[0])
                ))
            })?
            .map_err(unreachable)?;
        tracing::info!(node_id, redis = %redact(&config.redis_url[0]), cluster = config.redis_cluster, "cluster mode: connected to Redis");
        let (up, _) = watch::channel(true);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                lease_client,
                subscriber,
                inbox: inbox(&node_id),
                node_id: Arc::from(node_id),
                lease: config.node_lease(),
                timeout: config.cluster_timeout(),
                idempotency_window: config.idempotency_window(),
                cursor: PageCursor::with_key(cursor_key),
                cursor_key,
                dirty: Arc::default(),
                needs_full: AtomicBool::new(true),
                last_epoch: AtomicU64::new(0),
                resync: Notify::new(),
                nodes: Mutex::default(),
                pending: Mutex::default(),
                next_call: AtomicU64::new(1),
                up,
                leaving: AtomicBool::new(false),
                stop_lease: Notify::new(),
                presence: OnceLock::new(),
                sockets: OnceLock::new(),
            }),
        })
    }

    pub fn cursor(&self) -> PageCursor {
        self.inner.cursor.clone()
    }

    /// For state kept in Redis beside presence (the mailbox).
    pub fn link(&self) -> Link {
        self.inner.link()
    }

    pub fn local_changes(&self) -> Arc<dyn LocalChanges> {
        self.inner.dirty.clone()
    }
}

impl Cluster for Redis {
    fn deliver_remote<'a>(
        &'a self,
        node: NodeIdx,
        users: &'a [&'a str],
        event: &'a str,
        json: &'a RawValue,
        ack: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<Answered>, ClusterError>> {
        Box::pin(async move {
            let answer = self
                .inner
                .ask(node, Kind::Deliver, users, event, json, ack)
                .await?;
            Ok(answer.map(|a| Answered {
                delivered: a.n,
                acked: a.k,
            }))
        })
    }

    fn disconnect_remote<'a>(
        &'a self,
        node: NodeIdx,
        user: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>> {
        Box::pin(async move {
            let users = [user];
            let answer = self
                .inner
                .ask(node, Kind::Disconnect, &users, reason, RawValue::NULL, None)
                .await?;
            Ok(answer.map(|a| a.n.first().copied().unwrap_or(0)))
        })
    }

    fn broadcast_remote<'a>(
        &'a self,
        event: &'a str,
        json: &'a RawValue,
    ) -> BoxFuture<'a, Result<Reached, ClusterError>> {
        Box::pin(self.inner.broadcast(event, json))
    }

    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Claim, ClusterError>> {
        Box::pin(self.inner.claim(key))
    }

    fn settle(&self, key: &str, answer: Option<Sent>) {
        let (client, key) = (self.inner.client.clone(), idempotency_key(key));
        let window = self.inner.idempotency_window.as_millis() as i64;
        tokio::spawn(async move {
            let done: Result<(), fred::error::Error> = match answer {
                Some(sent) => {
                    let json = serde_json::to_string(&sent).unwrap_or_default();
                    client
                        .set(key, json, Some(Expiration::PX(window)), None, false)
                        .await
                }
                None => client.del(key).await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "idempotency answer not stored");
            }
        });
    }

    fn serve(&self, sockets: Arc<dyn LocalSockets>, presence: Arc<Presence>) {
        let inner = &self.inner;
        let _ = inner.presence.set(presence);
        let _ = inner.sockets.set(sockets);
        tokio::spawn(inner.clone().listen());
        tokio::spawn(inner.clone().write_presence());
        let lease = inner.clone();
        let thread = std::thread::Builder::new()
            .name("cluster-lease".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(lease.keep_lease()),
                    Err(e) => tracing::error!(error = %e, "no runtime for the lease thread"),
                }
            });
        if let Err(e) = thread {
            tracing::error!(error = %e, "no lease thread: the lease is not renewed");
        }
        tokio::spawn(inner.clone().resync_replica());
        // Both clients reconnect on their own; then this node resubscribes, republishes
        // everything it holds and rereads everyone else's.
        let on_client = inner.clone();
        inner.client.on_reconnect(move |server| {
            let inner = on_client.clone();
            async move {
                tracing::info!(%server, "Redis reconnected: republishing this node's presence");
                inner.needs_full.store(true, Ordering::SeqCst);
                inner.dirty.wake.notify_one();
                if let Err(e) = shared_cursor_key(&inner.client, &inner.cursor_key).await {
                    tracing::warn!(error = %e, "page-token key not republished");
                }
                inner.check_up();
                Ok(())
            }
        });
        let on_sub = inner.clone();
        inner.subscriber.on_reconnect(move |_| {
            let inner = on_sub.clone();
            async move {
                if let Err(e) = inner.subscribe().await {
                    tracing::warn!(error = %e, "resubscribing failed");
                }
                inner.resync.notify_one();
                inner.check_up();
                Ok(())
            }
        });
        for client in [inner.client.clone(), inner.subscriber.to_client()] {
            let on_error = inner.clone();
            client.on_error(move |(error, server)| {
                let inner = on_error.clone();
                async move {
                    tracing::warn!(%error, server = ?server, "Redis connection error");
                    inner.check_up();
                    Ok(())
                }
            });
        }
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.leaving.store(true, Ordering::SeqCst);
            inner.stop_lease.notify_one();
            let epoch = inner.last_epoch.load(Ordering::SeqCst);
            let node = &*inner.node_id;
            let gone = PresenceEvent::gone(node.to_owned(), epoch);
            let payload = serde_json::to_string(&gone).unwrap_or_default();
            let cleanup = async {
                let _: i64 = inner.client.del((users_key(node), lease_key(node))).await?;
                let _: i64 = inner.client.srem(NODES_KEY, node).await?;
                let _: i64 = inner.client.publish(PRESENCE_CHANNEL, payload).await?;
                Ok::<_, fred::error::Error>(())
            };
            match tokio::time::timeout(inner.timeout, cleanup).await {
                Ok(Ok(())) => tracing::info!(node_id = node, "left the cluster"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leaving the cluster failed; the lease will expire")
                }
                Err(_) => tracing::warn!("leaving the cluster timed out; the lease will expire"),
            }
            let _ = inner.subscriber.quit().await;
            let _ = inner.client.quit().await;
        })
    }

    fn ranked_before(&self) -> Vec<NodeIdx> {
        let me = &*self.inner.node_id;
        let nodes = lock(&self.inner.nodes);
        (0..nodes.names.len() as NodeIdx)
            .filter(|&i| &*nodes.names[i as usize] < me)
            .collect()
    }

    fn status(&self) -> Option<ClusterStatus> {
        let inner = &self.inner;
        Some(ClusterStatus {
            node_id: inner.node_id.clone(),
            redis_up: *inner.up.borrow(),
            nodes: lock(&inner.nodes).alive() + 1,
        })
    }

    fn watch_up(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.up.subscribe())
    }
}

impl Inner {
    fn link(&self) -> Link {
        Link {
            client: self.client.clone(),
            timeout: self.timeout,
            up: self.up.subscribe(),
        }
    }

    fn presence(&self) -> &Presence {
        self.presence.get().expect("serve() set the registry")
    }

    fn is_up(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }

    /// Publishes a change of reachability (metrics, health, fast refusals).
    fn check_up(&self) {
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

    async fn subscribe(&self) -> Result<(), fred::error::Error> {
        self.subscriber.subscribe(PRESENCE_CHANNEL).await?;
        self.subscriber.subscribe(BROADCAST_CHANNEL).await?;
        self.subscriber.ssubscribe(self.inbox.as_str()).await
    }

    /// `SET NX` claims the key; a later call polls it until the owner stores its answer (or
    /// frees the key, or the in-flight bound passes).
    async fn claim(&self, key: &str) -> Result<Claim, ClusterError> {
        let key = &idempotency_key(key);
        let link = self.link();
        let hold = IN_FLIGHT.min(self.idempotency_window).as_millis() as i64;
        let give_up = Instant::now() + IN_FLIGHT;
        loop {
            let claimed: Option<String> = link
                .run(|c| async move {
                    c.set(
                        key,
                        PENDING,
                        Some(Expiration::PX(hold)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                })
                .await?;
            if claimed.is_some() {
                return Ok(Claim::Owner);
            }
            let held: Option<String> = link.run(|c| async move { c.get(key).await }).await?;
            match held.as_deref() {
                Some(PENDING) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(PENDING) => {
                    return Err(ClusterError::Unavailable(
                        "the first call with this idempotency key never finished".into(),
                    ))
                }
                Some(json) => {
                    return serde_json::from_str(json)
                        .map(Claim::Replay)
                        .map_err(|e| ClusterError::Unavailable(e.to_string()))
                }
                None => {} // Freed or expired meanwhile: claim again.
            }
        }
    }

    /// Asks `node` for its share of a call; `None` when it did not answer in time.
    async fn ask(
        &self,
        node: NodeIdx,
        kind: Kind,
        users: &[&str],
        event: &str,
        json: &RawValue,
        ack: Option<Instant>,
    ) -> Result<Option<Answer>, ClusterError> {
        let Some(name) = lock(&self.nodes).names.get(node as usize).cloned() else {
            self.check_reachable()?;
            return Ok(None);
        };
        let request = Request {
            c: 0,
            k: kind,
            f: &self.node_id,
            e: event,
            u: users.to_vec(),
            m: json,
            a: ack.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
        };
        let answers = self.call(Some(&name), request, ack, 1).await?;
        Ok(answers.into_iter().next())
    }

    /// Sends a request to `to`'s inbox, or with `None` to every node at once (one publish),
    /// and gathers up to `expect` answers within the cluster timeout (after `ack`, when the
    /// sockets were asked to acknowledge).
    async fn call(
        &self,
        to: Option<&str>,
        mut request: Request<'_>,
        ack: Option<Instant>,
        expect: usize,
    ) -> Result<Vec<Answer>, ClusterError> {
        self.check_reachable()?;
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        request.c = call;
        let mut payload = Vec::with_capacity(64 + request.m.get().len());
        payload.push(b'q');
        serde_json::to_writer(&mut payload, &request)
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel(expect.max(1));
        lock(&self.pending).insert(call, tx);
        let forget = || {
            lock(&self.pending).remove(&call);
        };
        let client = self.client.with_options(&fail_fast(self.timeout));
        let published: Result<i64, _> = match to {
            Some(name) => client.spublish(inbox(name), payload).await,
            None => client.publish(BROADCAST_CHANNEL, payload).await,
        };
        match published {
            Err(e) => {
                forget();
                return Err(ClusterError::Unavailable(e.to_string()));
            }
            Ok(0) if to.is_some() => {
                // Nobody listens on that inbox: the node is gone or reconnecting.
                forget();
                return Ok(Vec::new());
            }
            Ok(_) => {}
        }
        let wait = match ack {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                left + ack_margin(left, self.timeout)
            }
            None => self.timeout,
        };
        let mut answers = Vec::with_capacity(expect);
        let deadline = Instant::now() + wait;
        while answers.len() < expect {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => answers.push(answer),
                _ => break,
            }
        }
        forget();
        Ok(answers)
    }

    fn check_reachable(&self) -> Result<(), ClusterError> {
        if !*self.up.borrow() {
            return Err(ClusterError::Unavailable("connection lost".into()));
        }
        Ok(())
    }

    /// Asks every other node to broadcast; each answers (users, sockets, refused).
    async fn broadcast(&self, event: &str, json: &RawValue) -> Result<Reached, ClusterError> {
        let expect = lock(&self.nodes).alive();
        let request = Request {
            c: 0,
            k: Kind::Broadcast,
            f: &self.node_id,
            e: event,
            u: Vec::new(),
            m: json,
            a: None,
        };
        let answers = self.call(None, request, None, expect).await?;
        let mut reached = Reached {
            partial: answers.len() < expect,
            ..Reached::default()
        };
        for answer in answers {
            if let [users, sockets, refused] = answer.n[..] {
                reached += Reached {
                    users,
                    sockets,
                    refused,
                    partial: false,
                };
            }
        }
        Ok(reached)
    }

    /// Handles everything the subscriber receives, in arrival order.
    async fn listen(self: Arc<Self>) {
        let mut rx = self.subscriber.message_rx();
        if let Err(e) = self.subscribe().await {
            tracing::warn!(error = %e, "subscribing failed; retried on reconnect");
        }
        self.resync.notify_one();
        loop {
            match rx.recv().await {
                Ok(message) => self.handle(message),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cluster messages missed: resyncing presence");
                    self.resync.notify_one();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn handle(self: &Arc<Self>, message: Message) {
        let Some(bytes) = message.value.as_bytes() else {
            return;
        };
        if message.channel == PRESENCE_CHANNEL {
            match serde_json::from_slice::<PresenceEvent>(bytes) {
                Ok(event) => self.apply(event),
                Err(e) => tracing::warn!(error = %e, "malformed presence event ignored"),
            }
            return;
        }
        match bytes.split_first() {
            Some((b'q', body)) => self.serve_request(body),
            Some((b'a', body)) => {
                if let Ok(answer) = serde_json::from_slice::<Answer>(body) {
                    if let Some(tx) = lock(&self.pending).get(&answer.c) {
                        let _ = tx.try_send(answer);
                    }
                }
            }
            _ => tracing::warn!("malformed cluster message ignored"),
        }
    }

    /// Delivers a request from another node to the local sockets and answers the counts.
    fn serve_request(self: &Arc<Self>, body: &[u8]) {
        let request: Request<'_> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed delivery request ignored");
                return;
            }
        };
        let Some(sockets) = self.sockets.get() else {
            return;
        };
        if request.k == Kind::Broadcast && request.f == &*self.node_id {
            return; // This node's own broadcast, already delivered here.
        }
        let deadline = request
            .a
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let (counts, acks): (Vec<u32>, Vec<_>) = match request.k {
            Kind::Deliver => request
                .u
                .iter()
                .map(|user| sockets.deliver(user, request.e, request.m, deadline))
                .unzip(),
            Kind::Disconnect => (
                request
                    .u
                    .iter()
                    .map(|user| sockets.disconnect(user, request.e))
                    .collect(),
                Vec::new(),
            ),
            Kind::Broadcast => {
                let r = sockets.broadcast(request.e, request.m);
                (vec![r.users, r.sockets, r.refused], Vec::new())
            }
        };
        let (call, to) = (request.c, inbox(request.f));
        let client = self.client.clone();
        // Delivered in arrival order above; only the wait for acks (if asked) happens here.
        tokio::spawn(async move {
            let k = match deadline {
                Some(_) => {
                    futures_util::future::join_all(acks.into_iter().map(|acked| async move {
                        match acked {
                            Some(count) => count.await,
                            None => 0,
                        }
                    }))
                    .await
                }
                None => Vec::new(),
            };
            let mut payload = Vec::with_capacity(32 + 8 * counts.len());
            payload.push(b'a');
            let _ = serde_json::to_writer(
                &mut payload,
                &Answer {
                    c: call,
                    n: counts,
                    k,
                },
            );
            let sent: Result<i64, _> = client.spublish(to, payload).await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "delivery answer not sent");
            }
        });
    }

    /// Applies another node's presence event to the replica.
    fn apply(self: &Arc<Self>, event: PresenceEvent) {
        if *event.n == *self.node_id {
            return;
        }
        let mut nodes = lock(&self.nodes);
        let idx = nodes.idx(&event.n);
        let at = Position {
            epoch: event.e,
            seq: event.s,
        };
        let known = nodes.positions[idx as usize];
        if event.gone {
            if known.is_none_or(|k| k.epoch <= event.e) {
                nodes.positions[idx as usize] = Some(Position {
                    epoch: event.e,
                    seq: SWEPT,
                });
                self.presence().replace_node(idx, &[]);
                tracing::info!(node = event.n, "node left the cluster");
            }
            return;
        }
        if event.f {
            if known.is_none_or(|k| at > k) {
                nodes.positions[idx as usize] = Some(at);
                let holdings: Vec<(String, Holding)> =
                    event.u.into_iter().map(Held::into_parts).collect();
                self.presence().replace_node(idx, &holdings);
            }
            return;
        }
        match known {
            Some(k) if k.epoch == at.epoch && k.seq != SWEPT && at.seq == k.seq + 1 => {
                nodes.positions[idx as usize] = Some(at);
                let presence = self.presence();
                for (user, holding) in event.u.into_iter().map(Held::into_parts) {
                    presence.set_remote(&user, idx, holding);
                }
            }
            Some(k) if at <= k => {}
            _ => {
                // A missed event or a node first heard of mid-stream: reread it.
                drop(nodes);
                self.resync.notify_one();
            }
        }
    }

    /// Rereads every node's hash into the replica whenever asked (start, reconnect, gaps).
    async fn resync_replica(self: Arc<Self>) {
        loop {
            self.resync.notified().await;
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.resync_once().await {
                tracing::warn!(error = %e, "presence resync failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.resync.notify_one();
            }
        }
    }

    async fn resync_once(&self) -> Result<(), fred::error::Error> {
        let members: BTreeSet<String> = self.client.smembers(NODES_KEY).await?;
        let mut seen = HashSet::new();
        for name in members.iter().filter(|n| **n != *self.node_id) {
            let mut hash: HashMap<String, String> = self.client.hgetall(users_key(name)).await?;
            let field = |hash: &mut HashMap<String, String>, f: &str| {
                hash.remove(f).and_then(|v| v.parse::<u64>().ok())
            };
            let (Some(epoch), Some(seq)) =
                (field(&mut hash, EPOCH_FIELD), field(&mut hash, SEQ_FIELD))
            else {
                continue; // Not written yet, or swept: its own events or the sweep will tell.
            };
            let holdings: Vec<(String, Holding)> = hash
                .into_iter()
                .filter_map(|(u, v)| Some((u, parse_holding(&v)?)))
                .collect();
            let mut nodes = lock(&self.nodes);
            let idx = nodes.idx(name);
            seen.insert(idx);
            let at = Position { epoch, seq };
            if nodes.positions[idx as usize]
                .is_none_or(|k| at >= k || k.seq == SWEPT && at.epoch > k.epoch)
            {
                nodes.positions[idx as usize] = Some(at);
                self.presence().replace_node(idx, &holdings);
            }
        }
        // Nodes that left while this one was not listening.
        let mut nodes = lock(&self.nodes);
        for idx in 0..nodes.names.len() as NodeIdx {
            if !seen.contains(&idx) && nodes.positions[idx as usize].is_some_and(|p| p.seq != SWEPT)
            {
                nodes.positions[idx as usize] = None;
                self.presence().replace_node(idx, &[]);
            }
        }
        Ok(())
    }

    /// Writes local presence changes in batches; a full republish when needed.
    async fn write_presence(self: Arc<Self>) {
        let mut seq = 0;
        let mut epoch = 0;
        loop {
            let wake = self.dirty.wake.notified();
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            let full = self.needs_full.swap(false, Ordering::SeqCst);
            let changed = std::mem::take(&mut *lock(&self.dirty.users));
            if !full && changed.is_empty() {
                wake.await;
                continue;
            }
            let presence = self.presence();
            let counts: Vec<(Arc<str>, Holding)> = if full {
                epoch = now_ms().max(self.last_epoch.load(Ordering::SeqCst) + 1);
                self.last_epoch.store(epoch, Ordering::SeqCst);
                seq = 0;
                presence.local_holdings()
            } else {
                changed
                    .into_iter()
                    .map(|u| {
                        let h = presence.local_holding(&u);
                        (u, h)
                    })
                    .collect()
            };
            let result = async {
                let mut batches: Vec<&[(Arc<str>, Holding)]> = counts.chunks(WRITE_BATCH).collect();
                if batches.is_empty() {
                    // A full republish of nobody still replaces what Redis holds.
                    batches.push(&[]);
                }
                for (i, batch) in batches.into_iter().enumerate() {
                    seq += 1;
                    self.write(full && i == 0, epoch, seq, batch).await?;
                }
                if full {
                    let _: i64 = self.client.sadd(NODES_KEY, &*self.node_id).await?;
                }
                Ok::<_, fred::error::Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "presence write failed; republishing in full once Redis is back");
                self.needs_full.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn write(
        &self,
        full: bool,
        epoch: u64,
        seq: u64,
        batch: &[(Arc<str>, Holding)],
    ) -> Result<(), fred::error::Error> {
        let event = PresenceEvent {
            n: self.node_id.to_string(),
            e: epoch,
            s: seq,
            f: full,
            gone: false,
            u: batch.iter().map(|(u, h)| Held::new(u, h)).collect(),
        };
        let mut args: Vec<String> = Vec::with_capacity(6 + 2 * batch.len());
        args.push(PRESENCE_CHANNEL.into());
        args.push(serde_json::to_string(&event).unwrap_or_default());
        args.push(if full { "1" } else { "0" }.into());
        args.push(epoch.to_string());
        args.push(seq.to_string());
        args.push(self.lease.as_millis().to_string());
        for (user, holding) in batch {
            args.push(user.to_string());
            args.push(holding_field(holding));
        }
        let node = &*self.node_id;
        let written: i64 = WRITE
            .run(&self.client, &[users_key(node), lease_key(node)], &args)
            .await?;
        if written == 0 {
            // Swept while still alive (e.g. cut off from Redis longer than the lease).
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "this node's lease had expired",
            ));
        }
        Ok(())
    }

    /// Renews this node's lease and sweeps nodes whose lease is gone, every lease/5. Runs on a
    /// thread of its own with its own Redis connection: on the gateway's runtime, a node busy
    /// with a presence fan-out to thousands of sockets on a loaded machine renewed late (its
    /// timer and each round trip queued behind thousands of tasks), was swept while alive,
    /// and its users left every replica and came back with its full republish, over and over.
    async fn keep_lease(self: Arc<Self>) {
        let _connection = self.lease_client.connect();
        let mut tick = tokio::time::interval(self.lease / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop_lease.notified() => break,
            }
            if self.leaving.load(Ordering::SeqCst) {
                break;
            }
            self.check_up();
            if let Err(e) = self.renew_and_sweep().await {
                tracing::debug!(error = %e, "lease renewal failed");
            }
            self.check_up();
        }
        let _ = self.lease_client.quit().await;
    }

    async fn renew_and_sweep(&self) -> Result<(), fred::error::Error> {
        let node = &*self.node_id;
        let ms = self.lease.as_millis() as i64;
        let client = &self.lease_client;
        let renewed: Option<String> = client
            .set(
                lease_key(node),
                "1",
                Some(Expiration::PX(ms)),
                Some(SetOptions::XX),
                false,
            )
            .await?;
        if self.leaving.load(Ordering::SeqCst) {
            return Ok(()); // Left meanwhile: nothing to republish or sweep.
        }
        if renewed.is_none() {
            tracing::warn!("this node's lease had expired: republishing its presence");
            self.needs_full.store(true, Ordering::SeqCst);
            self.dirty.wake.notify_one();
        }
        let _: i64 = client.sadd(NODES_KEY, node).await?;
        let members: Vec<String> = client.smembers(NODES_KEY).await?;
        for other in members.iter().filter(|n| **n != *node) {
            let swept: Option<String> = SWEEP
                .run(
                    client,
                    &[users_key(other), lease_key(other), lock_key(other)],
                    &[ms.to_string()],
                )
                .await?;
            let Some(epoch) = swept else { continue };
            let epoch = epoch.parse().unwrap_or(0);
            tracing::info!(node = other, "swept a node whose lease expired");
            let _: i64 = client.srem(NODES_KEY, other.as_str()).await?;
            let gone = PresenceEvent::gone(other.clone(), epoch);
            let payload = serde_json::to_string(&gone).unwrap_or_default();
            let _: i64 = client.publish(PRESENCE_CHANNEL, payload).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_round_trip_through_the_hash() {
        let h = Holding {
            sockets: 3,
            since_ms: 1_700_000_000_123,
        };
        assert_eq!(parse_holding(&holding_field(&h)), Some(h));
        assert_eq!(holding_field(&Holding::default()), "0");
        assert_eq!(parse_holding("x"), None);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
