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

mod connection;
mod idempotency;
mod lease;
mod messages;
mod names;
mod node;
mod outbox;
mod replica;
mod rpc;

use crate::sync::lock;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use fred::{
    interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface, SetsInterface},
    types::{config::ReconnectPolicy, Expiration},
};
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use crate::{
    cluster::engine::{Claim, Cluster, ClusterError, ClusterStatus, LocalSockets},
    config::{Config, ConfigError},
    cursor::{random_key, PageCursor},
    outcome::{Answered, Handoff, Reached, Refusal, Sent},
    presence::{LocalChanges, NodeIdx, Presence},
};
pub use connection::Link;
use connection::{fail_fast, node_id, redact, redis_config, shared_cursor_key, within};
use messages::{Answer, Kind, PresenceEvent};
use names::*;
use node::Inner;
use outbox::Requests;

/// Slots of each of the eight broadcast channels (errors, reconnects, pub/sub messages...)
/// of a fred client that receives no pub/sub: it only hears of its own reconnects and errors.
/// fred allocates and writes every slot when the client is built, whether used or not: at
/// 65,536 slots the three clients held ~145 MiB of an idle node.
const COMMAND_NOTIFICATIONS: usize = 32;

/// The same for the subscriber, whose pub/sub channel is the listener's backlog: a listener
/// lagging past it resyncs presence, and requests it missed time out at their sender. What
/// is in flight to a node is bounded by the calls waiting on it, far below this; ~6 MiB.
const SUBSCRIBER_NOTIFICATIONS: usize = 8_192;

/// A node of a cluster on Redis.
pub struct Redis {
    inner: Arc<Inner>,
}

impl Redis {
    /// Connects both clients (commands and subscriptions) and joins the page-token key.
    pub async fn connect(config: &Config) -> Result<Self, ConfigError> {
        let node_id = node_id(config)?;
        let redis = redis_config(config)?;
        let policy = ReconnectPolicy::new_constant(0, 100);
        let build = |notifications: usize| {
            let mut builder = fred::types::Builder::from_config(redis.clone());
            builder
                .set_policy(policy.clone())
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                })
                .with_performance_config(|p| p.broadcast_channel_capacity = notifications);
            builder
        };
        let unreachable = |e: fred::error::Error| {
            ConfigError::Invalid(format!(
                "cannot reach Redis at {}: {e}",
                redact(&config.redis_url[0])
            ))
        };
        let client = build(COMMAND_NOTIFICATIONS).build().map_err(unreachable)?;
        let lease_client = build(COMMAND_NOTIFICATIONS).build().map_err(unreachable)?;
        let subscriber = build(SUBSCRIBER_NOTIFICATIONS)
            .build_subscriber_client()
            .map_err(unreachable)?;
        let connect = async {
            client.init().await?;
            subscriber.init().await?;
            // A node starting under this id holds no sockets yet: nothing to fence.
            let _: i64 = client.del(swept_key(&node_id)).await?;
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
                idempotency_max_keys: config.idempotency_max_keys,
                cursor: PageCursor::with_key(cursor_key),
                cursor_key,
                dirty: Arc::default(),
                needs_full: AtomicBool::new(true),
                last_epoch: AtomicU64::new(0),
                resync: Notify::new(),
                missing: Mutex::default(),
                nodes: Mutex::default(),
                pending: Mutex::default(),
                requests: Requests::default(),
                next_call: AtomicU64::new(1),
                owned: Mutex::default(),
                late_requests: AtomicU64::new(0),
                fenced: AtomicU64::new(0),
                up,
                leaving: AtomicBool::new(false),
                stop_lease: Notify::new(),
                presence: OnceLock::new(),
                sockets: OnceLock::new(),
            }),
        })
    }

    /// Page tokens under the key the nodes share.
    pub fn cursor(&self) -> PageCursor {
        self.inner.cursor.clone()
    }

    /// For state kept in Redis beside presence (the mailbox).
    pub fn link(&self) -> Link {
        self.inner.link()
    }

    /// Where the registry marks users whose local sockets changed, for the next write.
    pub fn local_changes(&self) -> Arc<dyn LocalChanges> {
        self.inner.dirty.clone()
    }

    /// Asks `node` a request of `kind` about one `user` whose answer is a count (sockets
    /// disconnected, watchlists replaced); `None` when it did not answer in time.
    async fn ask_count(
        &self,
        node: NodeIdx,
        kind: Kind,
        user: &str,
        event: &str,
        json: &RawValue,
    ) -> Result<Option<u32>, ClusterError> {
        let users = [user];
        let request = self.inner.request(kind, &users, event, json, None);
        let answer = self.inner.ask(node, request, None).await?;
        Ok(answer.map(|a| a.n.first().copied().unwrap_or(0)))
    }
}

impl Cluster for Redis {
    fn deliver_remote<'a>(
        &'a self,
        node: NodeIdx,
        users: &'a [&'a str],
        event: &'a str,
        json: &'a RawValue,
        offset: Option<&'a str>,
        ack: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<Answered>, ClusterError>> {
        Box::pin(async move {
            let mut request = self.inner.request(Kind::Deliver, users, event, json, ack);
            request.o = offset.map(std::borrow::Cow::Borrowed);
            let answer = self.inner.ask(node, request, ack).await?;
            Ok(answer.map(|a| Answered {
                delivered: a.n,
                pending: a.p,
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
        Box::pin(self.ask_count(node, Kind::Disconnect, user, reason, RawValue::NULL))
    }

    fn broadcast_remote<'a>(
        &'a self,
        event: &'a str,
        json: &'a RawValue,
    ) -> BoxFuture<'a, Result<Reached, ClusterError>> {
        Box::pin(self.inner.broadcast(event, json))
    }

    fn watchlist_remote<'a>(
        &'a self,
        node: NodeIdx,
        user: &'a str,
        ids: &'a RawValue,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>> {
        Box::pin(self.ask_count(node, Kind::Watchlist, user, "", ids))
    }

    fn take_session<'a>(
        &'a self,
        node_id: &'a str,
        pid: &'a str,
        user: &'a str,
        offset: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Result<Handoff, Refusal>, ClusterError>> {
        Box::pin(async move {
            // This node's presence first: the user is never offline between the two nodes,
            // and what is sent meanwhile reaches this node too.
            let _ = tokio::time::timeout(self.inner.timeout, self.inner.dirty.written()).await;
            let offset = serde_json::value::to_raw_value(&offset)
                .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
            let answer = self
                .inner
                .ask_named(
                    node_id,
                    self.inner
                        .request(Kind::Recover, &[user], pid, &offset, None),
                    None,
                )
                .await?;
            Ok(match answer {
                Some(Answer {
                    h: Some(handoff), ..
                }) => Ok(handoff),
                Some(Answer {
                    x: Some(refusal), ..
                }) => Err(refusal),
                _ => Err(Refusal::Unknown),
            })
        })
    }

    fn place_session(&self, pid: &str, ttl: std::time::Duration) {
        let (client, key) = (self.inner.client.clone(), session_key(pid));
        let node = self.inner.node_id.to_string();
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        tokio::spawn(async move {
            let set: Result<(), _> = client
                .set(key, node, Some(Expiration::PX(ttl)), None, false)
                .await;
            if let Err(e) = set {
                tracing::debug!(error = %e, "session location not recorded");
            }
        });
    }

    fn locate_session<'a>(&'a self, pid: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let client = self.inner.client.with_options(&fail_fast());
            within(
                self.inner.timeout,
                client.get::<Option<String>, _>(session_key(pid)),
            )
            .await
            .and_then(Result::ok)
            .flatten()
        })
    }

    fn claim<'a>(
        &'a self,
        caller: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Claim, ClusterError>> {
        Box::pin(self.inner.claim(caller, key))
    }

    fn settle(&self, caller: &str, key: &str, answer: Option<Sent>) {
        self.inner.settle(caller, key, answer);
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
            late_requests: inner.late_requests.load(Ordering::Relaxed),
            fenced: inner.fenced.load(Ordering::Relaxed),
        })
    }

    fn watch_up(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.up.subscribe())
    }
}
