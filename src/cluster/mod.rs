//! Cluster mode behind one seam: how a node reaches the sockets other nodes hold.
//!
//! The rest of the gateway never asks which mode runs. The presence registry holds a replica
//! of who is online on the other nodes (empty on a single node), a send delivers locally
//! first and asks only the nodes the replica names, through [`Cluster::deliver_remote`].
//! [`Memory`] is the single node: no other node is ever named, so the local path costs no
//! allocation and no await. [`redis::Redis`] runs the nodes of a cluster on Redis (or a Redis
//! Cluster); it is chosen once at startup by [`connect`].

mod keys;
pub mod mailbox;
pub mod redis;
mod script;

use std::{future::Future, pin::Pin, sync::Arc};

use serde_json::value::RawValue;
use tokio::{sync::watch, time::Instant};

use crate::{
    config::{Config, ConfigError},
    cursor::PageCursor,
    gateway::{Gateway, Reached, Sent},
    mailbox::{self as mail, MailLimits, Mailbox},
    presence::{LocalChanges, NodeIdx, Presence},
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why other nodes could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis is down or did not take the request in time.
    #[error("Redis is unreachable ({0})")]
    Unavailable(String),
}

/// What an operator sees of the cluster (metrics and health).
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub node_id: Arc<str>,
    pub redis_up: bool,
    /// Nodes with a live lease, this one included.
    pub nodes: usize,
}

/// What a node answered for a delivery: per user asked, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answered {
    /// Sockets that took the message.
    pub delivered: Vec<u32>,
    /// Sockets that acknowledged it by the deadline (empty when no ack was asked).
    pub acked: Vec<u32>,
}

/// Who answers a call carrying an idempotency key.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// The first call with the key: deliver, then [`Cluster::settle`].
    Owner,
    /// The key was used within the window: this is that call's answer.
    Replay(Sent),
}

/// How a node reaches the others.
pub trait Cluster: Send + Sync {
    /// Asks `node` to emit `event` with `json` to every local socket of each of `users`, with
    /// an acknowledgement due by `ack` when set. Returns their socket counts, in order, or
    /// `None` when the node did not answer within the cluster timeout (or, with `ack`, soon
    /// after the deadline): a partial delivery.
    fn deliver_remote<'a>(
        &'a self,
        node: NodeIdx,
        users: &'a [&'a str],
        event: &'a str,
        json: &'a RawValue,
        ack: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<Answered>, ClusterError>>;

    /// Claims an idempotency key for `--idempotency-window-ms`, cluster-wide. While another
    /// call holds it in flight, waits for that call's answer.
    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Claim, ClusterError>>;

    /// Records the owner's answer for the key, or with `None` (the call failed) frees it.
    fn settle(&self, key: &str, answer: Option<Sent>);
    /// Asks `node` to disconnect every local socket of `user`, each told `reason` first.
    /// Returns how many, or `None` when the node did not answer within the cluster timeout.
    fn disconnect_remote<'a>(
        &'a self,
        node: NodeIdx,
        user: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>>;

    /// Asks every other node at once (one publish) to emit `event` with `json` to all of its
    /// local sockets; adds up what they answer within the cluster timeout.
    fn broadcast_remote<'a>(
        &'a self,
        event: &'a str,
        json: &'a RawValue,
    ) -> BoxFuture<'a, Result<Reached, ClusterError>>;

    /// Starts serving the other nodes (their requests, the presence replica, the lease).
    fn serve(&self, gateway: Gateway, presence: Arc<Presence>);

    /// Leaves the cluster at once on a clean shutdown: this node's users disappear everywhere.
    fn leave(&self) -> BoxFuture<'_, ()>;

    /// The nodes whose id sorts before this node's: a user this node shares with one of them
    /// is counted by that node in a broadcast (empty on a single node).
    fn ranked_before(&self) -> Vec<NodeIdx>;

    /// `None` on a single node.
    fn status(&self) -> Option<ClusterStatus>;

    /// Follows whether Redis is reachable; `None` on a single node.
    fn watch_up(&self) -> Option<watch::Receiver<bool>>;
}

/// The single node: nothing is ever remote; shared state lives in this process.
pub struct Memory {
    keys: keys::Keys,
}

impl Memory {
    pub fn new(config: &Config) -> Self {
        Self {
            keys: keys::Keys::new(
                config.idempotency_window(),
                usize::try_from(config.idempotency_max_keys).unwrap_or(usize::MAX),
            ),
        }
    }
}

impl Cluster for Memory {
    fn deliver_remote<'a>(
        &'a self,
        _node: NodeIdx,
        users: &'a [&'a str],
        _event: &'a str,
        _json: &'a RawValue,
        _ack: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<Answered>, ClusterError>> {
        // The registry names no other node on a single node; answer "none there" if asked.
        Box::pin(std::future::ready(Ok(Some(Answered {
            delivered: vec![0; users.len()],
            acked: Vec::new(),
        }))))
    }

    fn claim<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Claim, ClusterError>> {
        Box::pin(async move { Ok(self.keys.claim(key).await) })
    }

    fn settle(&self, key: &str, answer: Option<Sent>) {
        self.keys.settle(key, answer);
    }

    fn disconnect_remote<'a>(
        &'a self,
        _node: NodeIdx,
        _user: &'a str,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>> {
        Box::pin(std::future::ready(Ok(Some(0))))
    }

    fn broadcast_remote<'a>(
        &'a self,
        _event: &'a str,
        _json: &'a RawValue,
    ) -> BoxFuture<'a, Result<Reached, ClusterError>> {
        // There is no other node.
        Box::pin(std::future::ready(Ok(Reached::default())))
    }

    fn serve(&self, _gateway: Gateway, _presence: Arc<Presence>) {}

    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn ranked_before(&self) -> Vec<NodeIdx> {
        Vec::new()
    }

    fn status(&self) -> Option<ClusterStatus> {
        None
    }

    fn watch_up(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// What startup needs from the chosen mode.
pub struct Setup {
    pub cluster: Arc<dyn Cluster>,
    /// Where offline users' messages are kept: this process, or Redis.
    pub mailbox: Arc<dyn Mailbox>,
    /// Where the presence registry reports local changes (none on a single node).
    pub local_changes: Option<Arc<dyn LocalChanges>>,
    pub cursor: PageCursor,
}

/// Picks the mode from the configuration; in cluster mode, connects to Redis.
pub async fn connect(config: &Config) -> Result<Setup, ConfigError> {
    if config.redis_url.is_empty() {
        if config.redis_cluster {
            return Err(ConfigError::Invalid(
                "--redis-cluster needs --redis-url".into(),
            ));
        }
        return Ok(Setup {
            cluster: Arc::new(Memory::new(config)),
            mailbox: Arc::new(mail::Memory::new(MailLimits::of(config))),
            local_changes: None,
            cursor: PageCursor::new(),
        });
    }
    let redis = redis::Redis::connect(config).await?;
    Ok(Setup {
        cursor: redis.cursor(),
        mailbox: Arc::new(mailbox::RedisMailbox::new(
            redis.link(),
            MailLimits::of(config),
        )),
        local_changes: Some(redis.local_changes()),
        cluster: Arc::new(redis),
    })
}
