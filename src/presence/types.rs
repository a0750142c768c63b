//! The values the registry hands out and takes in: presence modes, transitions, holdings,
//! changes, pages and the online list.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::value::RawValue;
use socketioxide::{extract::SocketRef, socket::Sid};

/// What presence events a socket asked for at its handshake (`presence` in the query or auth).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PresenceMode {
    /// `getOnlineUsers` with the whole list on every change: what existing frontends expect.
    #[default]
    List,
    /// `getOnlineUsers` once (and again whenever the socket must resync), then only
    /// `onlineUsersChanged` with who came online and who went offline.
    Changes,
    /// No presence events at all.
    Off,
    /// Only the users on the socket's watchlist: `getOnlineUsers` with the watched users
    /// online, once, then `onlineUsersChanged` with watched ids only (see `watch`).
    Watch,
}

impl std::str::FromStr for PresenceMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "list" => Ok(Self::List),
            "changes" => Ok(Self::Changes),
            "none" => Ok(Self::Off),
            "watch" => Ok(Self::Watch),
            _ => Err(()),
        }
    }
}

/// What the registry needs of a socket handle: a stable id.
pub trait SocketHandle: Clone + Send + Sync + 'static {
    /// The socket id, unique on this node.
    fn sid(&self) -> Sid;
}

impl SocketHandle for SocketRef {
    fn sid(&self) -> Sid {
        self.id
    }
}

impl SocketHandle for Sid {
    fn sid(&self) -> Sid {
        *self
    }
}

/// What a connect or disconnect did to the set of online users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The user's first socket: the user came online.
    CameOnline,
    /// The user's last socket: the user went offline.
    WentOffline,
    /// Another tab of a user who stays online.
    Unchanged,
}

/// The outcome of registering a socket.
#[derive(Debug)]
pub struct Joined<S> {
    /// Whether the user came online with this socket.
    pub transition: Transition,
    /// The user's oldest socket, dropped from the registry because the user reached the
    /// per-user limit; the caller disconnects it.
    pub evicted: Option<S>,
}

/// A cluster node, as numbered by the replica that feeds the registry.
pub type NodeIdx = u32;

/// A user's sockets on one node: how many, and since when the node has held any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// Live sockets of the user there.
    pub sockets: u32,
    /// Milliseconds since the Unix epoch; 0 when the node holds no socket.
    pub since_ms: u64,
}

/// The other nodes holding a user, with their holdings.
pub type Holders = Vec<(NodeIdx, Holding)>;

/// One user's presence, cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserPresence {
    /// Live sockets on every node; the user is online while it is above 0.
    pub sockets: u32,
    /// The earliest `since_ms` over the nodes holding the user; 0 when offline.
    pub since_ms: u64,
}

/// A user came online (first socket on any node) or went offline (last socket gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The user id.
    pub user: Arc<str>,
    /// True when the user came online, false when they went offline.
    pub online: bool,
    /// The registry version this change produced: consecutive, one per change.
    pub seq: u64,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Told of every change to a user's local socket count, so it can be published to the other
/// nodes; the count itself is read back from the registry when it is written out.
pub trait LocalChanges: Send + Sync {
    /// `user`'s local socket count changed (read it back later, not now).
    fn changed(&self, user: &Arc<str>);
}

/// One page of online users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// User ids, sorted.
    pub user_ids: Vec<String>,
    /// Whether users sort after the last one returned.
    pub more: bool,
    /// Users online now.
    pub total: usize,
}

/// The online list as a JSON array, tagged with the registry version it reflects.
#[derive(Debug, Clone)]
pub struct OnlineList {
    /// The registry version: one more per change of the online set.
    pub version: u64,
    /// The ids as a JSON array, shared by every socket it is sent to.
    pub json: Arc<RawValue>,
}

/// What a socket did with a message offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the client.
    Taken,
    /// Kept for a socket whose connection dropped within its recovery window: its client
    /// gets it if it reconnects in time (connection state recovery).
    Kept,
    /// Its buffer is full: the client is not reading fast enough.
    Full,
    /// Its connection is already gone.
    Gone,
}

/// The outcome of offering a message to sockets (one user's, or everyone's for the online
/// list).
#[derive(Debug)]
pub struct Delivered<S> {
    /// Sockets that took the message.
    pub accepted: u32,
    /// Sockets away within their recovery window that kept it for their replay.
    pub pending: u32,
    /// Sockets that refused it.
    pub refused: u32,
    /// Sockets that just reached the limit of sends refused in a row, with their user; the
    /// caller cuts them off.
    pub overflowing: Vec<(Arc<str>, S)>,
    /// Sockets whose connection is gone without their disconnect having reached us, with their
    /// user; the caller removes them.
    pub gone: Vec<(Arc<str>, S)>,
    /// Other nodes holding sockets of the user (empty on a single node: no allocation).
    pub remote: Vec<NodeIdx>,
}

impl<S> Default for Delivered<S> {
    fn default() -> Self {
        Self {
            accepted: 0,
            pending: 0,
            refused: 0,
            overflowing: Vec::new(),
            gone: Vec::new(),
            remote: Vec::new(),
        }
    }
}

/// What a socket is offered in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The whole online list (`getOnlineUsers`).
    List,
    /// The change set since the round's base (`onlineUsersChanged`).
    Changes,
}

/// Frames of one kind offered in a round, and how many were taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Sockets offered one.
    pub offered: u32,
    /// Sockets whose buffer took it.
    pub taken: u32,
}
