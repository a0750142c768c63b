//! Cluster mode behind one seam: how a node reaches the sockets other nodes hold.
//!
//! The rest of the gateway never asks which mode runs. The presence registry holds a replica
//! of who is online on the other nodes (empty on a single node), a send delivers locally
//! first and asks only the nodes the replica names ([`deliver_to_nodes`]). The node calls its
//! engine through [`Cluster`]; the engine calls back only through [`LocalSockets`]
//! (`engine.rs`). [`Memory`] is the single node: no other node is ever named, so the local
//! path costs no allocation and no await. [`redis::Redis`] runs the nodes of a cluster on
//! Redis (or a Redis Cluster); it is chosen once at startup by [`connect`].

mod engine;
mod keys;
pub mod mailbox;
mod memory;
pub mod redis;
mod script;

use std::sync::Arc;

pub use engine::{
    deliver_to_nodes, AckCount, Claim, Cluster, ClusterError, ClusterStatus, LocalSockets, Message,
    Unasked,
};
pub use memory::Memory;

use crate::{
    config::{Config, ConfigError},
    cursor::PageCursor,
    mailbox::{self as mail, MailLimits, Mailbox},
    presence::LocalChanges,
};

/// What startup needs from the chosen mode.
pub struct Setup {
    /// How this node reaches the others.
    pub cluster: Arc<dyn Cluster>,
    /// Where offline users' messages are kept: this process, or Redis.
    pub mailbox: Arc<dyn Mailbox>,
    /// Where the presence registry reports local changes (none on a single node).
    pub local_changes: Option<Arc<dyn LocalChanges>>,
    /// Page tokens every node of the cluster can read.
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
