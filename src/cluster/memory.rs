//! The single node: nothing is ever remote; shared state lives in this process.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::{sync::watch, time::Instant};

use super::{
    engine::{Claim, Cluster, ClusterError, ClusterStatus, LocalSockets},
    keys::Keys,
};
use crate::{
    config::Config,
    outcome::{Answered, Handoff, Reached, Refusal, Sent},
    presence::{NodeIdx, Presence},
};

/// The single node's engine: idempotency keys in memory, no other node to ask.
pub struct Memory {
    keys: Keys,
}

impl Memory {
    /// Keys remembered for `--idempotency-window-ms`, at most `--idempotency-max-keys` per
    /// caller.
    pub fn new(config: &Config) -> Self {
        Self {
            keys: Keys::new(
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
        _offset: Option<&'a str>,
        _ack: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<Answered>, ClusterError>> {
        // The registry names no other node on a single node; answer "none there" if asked.
        Box::pin(std::future::ready(Ok(Some(Answered {
            delivered: vec![0; users.len()],
            pending: Vec::new(),
            acked: Vec::new(),
        }))))
    }

    fn claim<'a>(
        &'a self,
        caller: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Claim, ClusterError>> {
        Box::pin(async move { Ok(self.keys.claim(caller, key).await) })
    }

    fn settle(&self, caller: &str, key: &str, answer: Option<Sent>) {
        self.keys.settle(caller, key, answer);
    }

    fn disconnect_remote<'a>(
        &'a self,
        _node: NodeIdx,
        _user: &'a str,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>> {
        Box::pin(std::future::ready(Ok(Some(0))))
    }

    fn watchlist_remote<'a>(
        &'a self,
        _node: NodeIdx,
        _user: &'a str,
        _ids: &'a RawValue,
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

    fn take_session<'a>(
        &'a self,
        _node_id: &'a str,
        _pid: &'a str,
        _user: &'a str,
        _offset: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Result<Handoff, Refusal>, ClusterError>> {
        // Every session is local.
        Box::pin(std::future::ready(Ok(Err(Refusal::Unknown))))
    }

    fn place_session(&self, _pid: &str, _ttl: std::time::Duration) {}

    fn locate_session<'a>(&'a self, _pid: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(std::future::ready(None))
    }

    fn serve(&self, _sockets: Arc<dyn LocalSockets>, _presence: Arc<Presence>) {}

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
