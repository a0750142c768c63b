//! The seam between the node and its cluster engine, as centrifuge draws it between its node
//! and its `Broker`/`PresenceManager`: the node calls an engine through [`Cluster`]; an engine
//! calls back into the node only through [`LocalSockets`], which the node implements. An
//! engine never sees the gateway itself.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::{sync::watch, time::Instant};

use crate::{
    outcome::{Answered, Handoff, Reached, Refusal, Sent, Took},
    presence::{NodeIdx, Presence},
};

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
    /// This node's `--node-id` (or the one generated for it).
    pub node_id: Arc<str>,
    /// Whether both Redis connections are up.
    pub redis_up: bool,
    /// Nodes with a live lease, this one included.
    pub nodes: usize,
    /// Requests from other nodes dropped because they arrived after their deadline.
    pub late_requests: u64,
    /// Times this node found it had been swept while alive and closed its sockets.
    pub fenced: u64,
}

/// Who answers a call carrying an idempotency key.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// The first call with the key: deliver, then [`Cluster::settle`].
    Owner,
    /// The key was used within the window: this is that call's answer.
    Replay(Sent),
}

/// Counts a delivery's acknowledgements as they arrive, until the deadline it was asked with.
pub type AckCount = BoxFuture<'static, u32>;

/// What an engine may ask of the node it serves: work on the node's own sockets, for a
/// request another node sent. The gateway implements it.
pub trait LocalSockets: Send + Sync {
    /// Emits `event` with `json` to this node's sockets of `user`, each asked to acknowledge
    /// by `ack` when set, with the message's recovery `offset` when it has one. Returns how
    /// many took it (or kept it for a recovery) and, with `ack`, the count of their acks.
    fn deliver(
        &self,
        user: &str,
        event: &str,
        json: &RawValue,
        offset: Option<&str>,
        ack: Option<Instant>,
    ) -> (Took, Option<AckCount>);

    /// Disconnects this node's sockets of `user`, each told `reason` first; returns how many.
    fn disconnect(&self, user: &str, reason: &str) -> u32;

    /// Offers `event` with `json` to every socket of this node.
    fn broadcast(&self, event: &str, json: &RawValue) -> Reached;

    /// Replaces the watchlist of this node's `watch` sockets of `user` by `ids` (a JSON
    /// array of user ids); returns how many.
    fn set_watchlist(&self, user: &str, ids: &RawValue) -> u32;

    /// Gives up the recoverable session `pid` of `user` to another node its client reconnected
    /// to: what the client missed after `offset`, or why it cannot be recovered here.
    fn hand_off(&self, pid: &str, user: &str, offset: Option<&str>) -> Result<Handoff, Refusal>;

    /// Closes the connection of every socket of this node, each told `reason` first, without
    /// a Socket.IO disconnect, so clients reconnect by themselves. The engine fences the node
    /// with it when the cluster declared the node dead while it was alive: what the others
    /// decided meanwhile about its users (disconnects, kept mail) was never done here, and
    /// a fresh connect is how it gets done. Returns how many.
    fn fence(&self, reason: &str) -> u32;
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
        offset: Option<&'a str>,
        ack: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<Answered>, ClusterError>>;

    /// Claims `caller`'s idempotency key for `--idempotency-window-ms`, cluster-wide. While
    /// another call holds it in flight, waits for that call's answer. Each caller's keys are
    /// its own: another caller's same key is another key, and claiming one of the caller's
    /// beyond `--idempotency-max-keys` forgets that caller's oldest, never another's.
    fn claim<'a>(
        &'a self,
        caller: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Claim, ClusterError>>;

    /// Records the owner's answer for `caller`'s key, or with `None` (the call failed) frees
    /// it.
    fn settle(&self, caller: &str, key: &str, answer: Option<Sent>);

    /// Asks `node` to disconnect every local socket of `user`, each told `reason` first.
    /// Returns how many, or `None` when the node did not answer within the cluster timeout.
    fn disconnect_remote<'a>(
        &'a self,
        node: NodeIdx,
        user: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>>;

    /// Asks `node` to replace the watchlist of its `watch` sockets of `user` by `ids` (a JSON
    /// array). Returns how many, or `None` when the node did not answer in time.
    fn watchlist_remote<'a>(
        &'a self,
        node: NodeIdx,
        user: &'a str,
        ids: &'a RawValue,
    ) -> BoxFuture<'a, Result<Option<u32>, ClusterError>>;

    /// Asks every other node at once (one publish) to emit `event` with `json` to all of its
    /// local sockets; adds up what they answer within the cluster timeout.
    fn broadcast_remote<'a>(
        &'a self,
        event: &'a str,
        json: &'a RawValue,
    ) -> BoxFuture<'a, Result<Reached, ClusterError>>;

    /// Asks the node `node_id` for the recoverable session `pid` of `user` (see
    /// [`LocalSockets::hand_off`]); a node that does not answer in time knows no such
    /// session.
    fn take_session<'a>(
        &'a self,
        node_id: &'a str,
        pid: &'a str,
        user: &'a str,
        offset: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Result<Handoff, Refusal>, ClusterError>>;

    /// Records that this node holds the session `pid` while its client is away, for `ttl`:
    /// a reconnect landing on another node finds it here.
    fn place_session(&self, pid: &str, ttl: std::time::Duration);

    /// The node that recorded holding the session `pid` (see [`Cluster::place_session`]).
    fn locate_session<'a>(&'a self, pid: &'a str) -> BoxFuture<'a, Option<String>>;

    /// Starts serving the other nodes (their requests, the presence replica, the lease):
    /// their requests reach this node's sockets through `sockets`.
    fn serve(&self, sockets: Arc<dyn LocalSockets>, presence: Arc<Presence>);

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

/// A node that could not be asked for its share of a delivery.
#[derive(Debug)]
pub struct Unasked {
    /// Indexes (into the receivers) of the users that node holds.
    pub receivers: Vec<usize>,
    /// Why it could not be asked.
    pub source: ClusterError,
}

/// A message as the nodes deliver it: its event, its JSON and its recovery offset (given by
/// the node that took the call).
#[derive(Clone, Copy)]
pub struct Message<'a> {
    /// The Socket.IO event.
    pub event: &'a str,
    /// The message, as JSON.
    pub json: &'a RawValue,
    /// Its recovery offset, when recovery is on.
    pub offset: Option<&'a str>,
}

/// Asks each other node for its share of a delivery, all at once, and adds what they answer
/// to `sent`. `asks` maps a node to indexes into `receivers` and `sent`. A node that does not
/// answer in time marks its receivers `partial`; one that cannot be asked (Redis down) is an
/// error.
pub async fn deliver_to_nodes(
    cluster: &dyn Cluster,
    asks: BTreeMap<NodeIdx, Vec<usize>>,
    receivers: &[&str],
    message: Message<'_>,
    ack: Option<Instant>,
    sent: &mut [Sent],
) -> Result<(), Unasked> {
    let Message {
        event,
        json,
        offset,
    } = message;
    let batches: Vec<(NodeIdx, Vec<usize>, Vec<&str>)> = asks
        .into_iter()
        .map(|(node, idx)| {
            let users = idx.iter().map(|&i| receivers[i]).collect();
            (node, idx, users)
        })
        .collect();
    let answers =
        futures_util::future::join_all(batches.iter().map(|(node, _, users)| {
            cluster.deliver_remote(*node, users, event, json, offset, ack)
        }))
        .await;
    for ((node, idx, _), answer) in batches.into_iter().zip(answers) {
        match answer {
            Ok(Some(answer)) => {
                for (&i, n) in idx.iter().zip(answer.delivered) {
                    sent[i].delivered += n;
                }
                for (&i, n) in idx.iter().zip(answer.pending) {
                    sent[i].pending += n;
                }
                for (&i, n) in idx.iter().zip(answer.acked) {
                    sent[i].acked += n;
                }
            }
            Ok(None) => {
                tracing::debug!(node, "a node holding receivers did not answer in time");
                for &i in &idx {
                    sent[i].partial = true;
                }
            }
            Err(source) => {
                return Err(Unasked {
                    receivers: idx,
                    source,
                })
            }
        }
    }
    Ok(())
}
