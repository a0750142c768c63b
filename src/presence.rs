//! The presence registry: which users are online, and through which sockets.
//!
//! A user may hold many sockets (tabs, devices) and is online while at least one is live.
//! Users are kept sorted so `ListOnline` pages by key without copying the whole set, and the
//! online list that `getOnlineUsers` carries is serialized at most once per change.
//!
//! Each user's sockets sit behind their own small lock, taken for each delivery: every tab
//! of a user sees messages in the same order, and the count of sockets that took a message is
//! exact. No lock here is ever held across an await.
//!
//! In cluster mode the registry also holds the replica of the other nodes' presence (which
//! nodes hold a user, with how many sockets), so the online list, paging and "who else must
//! be asked" are answered locally. A user is online while some node holds a socket of theirs.
//!
//! Each socket chooses at its handshake what presence it gets ([`PresenceMode`]): the whole
//! list on every change (the default), the whole list once and then only the changes, or
//! nothing. For the changes, the registry keeps the users who flipped since the last broadcast
//! round with their state at the round's start, and each socket the version of the list its
//! client holds: a socket gets a change set only on the exact version it applies to.

use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap},
    ops::Bound,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::value::RawValue;
use socketioxide::{extract::SocketRef, socket::Sid};
use tokio::sync::{broadcast, Notify};

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
}

impl std::str::FromStr for PresenceMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "list" => Ok(Self::List),
            "changes" => Ok(Self::Changes),
            "none" => Ok(Self::Off),
            _ => Err(()),
        }
    }
}

/// What the registry needs of a socket handle: a stable id.
pub trait SocketHandle: Clone + Send + Sync + 'static {
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
    pub transition: Transition,
    /// The user's oldest socket, dropped from the registry because the user reached the
    /// per-user limit; the caller disconnects it.
    pub evicted: Option<S>,
}

/// What a socket did with a message offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the client.
    Taken,
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
            refused: 0,
            overflowing: Vec::new(),
            gone: Vec::new(),
            remote: Vec::new(),
        }
    }
}

impl<S: SocketHandle> Delivered<S> {
    /// Records what one socket did with an offer; both messages and online lists count
    /// toward the refusals in a row that cut a socket off.
    fn record(&mut self, user: &Arc<str>, slot: &mut Slot<S>, offer: Offer, max_refused: u32) {
        match offer {
            Offer::Taken => {
                self.accepted += 1;
                slot.refused_in_row = 0;
            }
            Offer::Full => {
                self.refused += 1;
                slot.refused_in_row += 1;
                if slot.refused_in_row == max_refused {
                    self.overflowing.push((user.clone(), slot.socket.clone()));
                }
            }
            Offer::Gone => {
                self.refused += 1;
                self.gone.push((user.clone(), slot.socket.clone()));
            }
        }
    }
}

/// A cluster node, as numbered by the replica that feeds the registry.
pub type NodeIdx = u32;

/// A user's sockets on one node: how many, and since when the node has held any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
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
    pub user: Arc<str>,
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
    fn changed(&self, user: &Arc<str>);
}

/// One page of online users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub user_ids: Vec<String>,
    /// Whether users sort after the last one returned.
    pub more: bool,
    pub total: usize,
}

/// The online list as a JSON array, tagged with the registry version it reflects.
#[derive(Debug, Clone)]
pub struct OnlineList {
    pub version: u64,
    pub json: Arc<RawValue>,
}

struct Slot<S> {
    socket: S,
    /// Sends refused in a row (full buffer): a reader that stopped is cut off eventually.
    refused_in_row: u32,
    mode: PresenceMode,
    /// `List` mode: it refused the last online list offered to it, so a resend is owed to it
    /// (and only it).
    missed_list: bool,
    /// `Changes` mode: the registry version of the list its client holds; `None` until it took
    /// one, and after a refused send (its client then lacks a step: it gets a whole list next).
    holds: Option<u64>,
}

impl<S> Slot<S> {
    fn new(socket: S, mode: PresenceMode) -> Self {
        Self {
            socket,
            refused_in_row: 0,
            mode,
            missed_list: false,
            holds: None,
        }
    }
}

/// The users who came online or went offline since the last broadcast round.
#[derive(Default)]
struct Flips {
    /// Each user's state (online?) at the round's base; a user back in that state is removed,
    /// so this holds only net changes and never more entries than users.
    by_user: HashMap<Arc<str>, bool>,
    /// The registry version the last round ended at.
    base: u64,
}

/// One presence broadcast round: the online list at `list.version` and, for clients holding the
/// list at `base`, the net change that leads to it.
#[derive(Debug, Clone)]
pub struct Round {
    pub base: u64,
    pub list: OnlineList,
    /// `{"online":[...],"offline":[...]}` (sorted ids); `None` when nothing changed net.
    pub changes: Option<Arc<RawValue>>,
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
    pub offered: u32,
    pub taken: u32,
}

/// What a broadcast round did.
#[derive(Debug)]
pub struct RoundOutcome<S> {
    pub delivered: Delivered<S>,
    /// Whole lists offered to `list`-mode sockets.
    pub lists: Tally,
    /// Whole lists offered to `changes`-mode sockets (first list or resync).
    pub resyncs: Tally,
    /// Change sets offered to `changes`-mode sockets.
    pub changes: Tally,
    /// Sockets left without the round's state (a full buffer): a resend is owed to them.
    pub behind: u32,
}

/// The JSON of a change set, with the ids in order.
#[derive(serde::Serialize)]
struct ChangeSet<'a> {
    online: Vec<&'a str>,
    offline: Vec<&'a str>,
}

type Sockets<S> = Arc<Mutex<Vec<Slot<S>>>>;

struct Users<S> {
    /// Users with sockets on this node.
    by_id: BTreeMap<Arc<str>, Sockets<S>>,
    /// Users with sockets on other nodes (always empty on a single node).
    remote: BTreeMap<Arc<str>, Holders>,
    /// When each local user's first socket of their current stay on this node connected.
    since: HashMap<Arc<str>, u64>,
    /// Users in either map: the cluster-wide online count.
    online: usize,
    /// Bumped whenever a user comes online or goes offline.
    version: u64,
    /// Net changes since the last broadcast round. A mutex (changed only under the write lock)
    /// so a round can take them under the read lock, consistent with the list it builds.
    flips: Mutex<Flips>,
    /// Every online/offline change, in version order, for presence watchers. Sent under the
    /// write lock, so watchers see the changes in the order they happened; a watcher more
    /// than the channel's capacity behind is told it lagged.
    changes: broadcast::Sender<Change>,
}

impl<S> Users<S> {
    /// Records that `user` came online or went offline, and tells the watchers.
    fn flip(&mut self, user: Arc<str>, online: bool) {
        if online {
            self.online += 1;
        } else {
            self.online -= 1;
        }
        self.version += 1;
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Change {
                user: user.clone(),
                online,
                seq: self.version,
            });
        }
        let flips = self.flips.get_mut().unwrap_or_else(|e| e.into_inner());
        match flips.by_user.entry(user) {
            // Back to its state at the round's base: no net change.
            Entry::Occupied(e) => {
                e.remove();
            }
            Entry::Vacant(e) => {
                e.insert(!online);
            }
        }
    }

    fn is_online(&self, user: &str) -> bool {
        self.by_id.contains_key(user) || self.remote.contains_key(user)
    }

    /// Online user ids after `lower`, ascending, each once: the two maps merged.
    fn ids(&self, lower: Bound<&str>) -> impl Iterator<Item = &Arc<str>> {
        let mut local = self
            .by_id
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(id, _)| id)
            .peekable();
        let mut remote = self
            .remote
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(id, _)| id)
            .peekable();
        std::iter::from_fn(move || match (local.peek(), remote.peek()) {
            (Some(l), Some(r)) => match l.cmp(r) {
                std::cmp::Ordering::Less => local.next(),
                std::cmp::Ordering::Greater => remote.next(),
                std::cmp::Ordering::Equal => {
                    remote.next();
                    local.next()
                }
            },
            (Some(_), None) => local.next(),
            (None, _) => remote.next(),
        })
    }
}

/// Changes a presence watcher may fall behind by default.
pub const DEFAULT_WATCH_BUFFER: usize = 4096;

/// Thread-safe registry of users and their sockets.
pub struct Presence<S = SocketRef> {
    users: RwLock<Users<S>>,
    sockets: AtomicUsize,
    cached: Mutex<Option<OnlineList>>,
    changed: Notify,
    local_changes: Option<Arc<dyn LocalChanges>>,
}

impl<S: SocketHandle> Default for Presence<S> {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: SocketHandle> Presence<S> {
    pub fn new() -> Self {
        Self::with_local_changes(None)
    }

    /// A registry that reports every local socket count change to `local_changes`.
    pub fn with_local_changes(local_changes: Option<Arc<dyn LocalChanges>>) -> Self {
        Self::with_options(local_changes, DEFAULT_WATCH_BUFFER)
    }

    /// As [`Presence::with_local_changes`]; a presence watcher may fall `watch_buffer`
    /// changes behind before it is told it lagged.
    pub fn with_options(local_changes: Option<Arc<dyn LocalChanges>>, watch_buffer: usize) -> Self {
        Self {
            users: RwLock::new(Users {
                by_id: BTreeMap::new(),
                remote: BTreeMap::new(),
                since: HashMap::new(),
                online: 0,
                version: 0,
                flips: Mutex::new(Flips::default()),
                changes: broadcast::channel(watch_buffer.max(1)).0,
            }),
            sockets: AtomicUsize::new(0),
            cached: Mutex::new(None),
            changed: Notify::new(),
            local_changes,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Users<S>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Users<S>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new live socket of `user`. When the user already holds `max_per_user`
    /// sockets, the oldest is evicted: the tab just opened is the one the person looks at.
    pub fn connect(&self, user: &str, socket: S, max_per_user: usize) -> Joined<S> {
        self.connect_with(user, socket, max_per_user, PresenceMode::List)
    }

    /// As [`Presence::connect`], for a socket that asked for `mode`.
    pub fn connect_with(
        &self,
        user: &str,
        socket: S,
        max_per_user: usize,
        mode: PresenceMode,
    ) -> Joined<S> {
        let mut users = self.write();
        let joined = match users.by_id.get(user) {
            Some(sockets) => {
                let mut sockets = lock(sockets);
                let evicted = (sockets.len() >= max_per_user.max(1)).then(|| sockets.remove(0));
                sockets.push(Slot::new(socket, mode));
                Joined {
                    transition: Transition::Unchanged,
                    evicted: evicted.map(|slot| slot.socket),
                }
            }
            None => {
                let slot = Slot::new(socket, mode);
                let elsewhere = users.remote.contains_key(user);
                let key: Arc<str> = Arc::from(user);
                users
                    .by_id
                    .insert(key.clone(), Arc::new(Mutex::new(vec![slot])));
                users.since.insert(key.clone(), unix_ms());
                if elsewhere {
                    Joined {
                        transition: Transition::Unchanged,
                        evicted: None,
                    }
                } else {
                    users.flip(key, true);
                    Joined {
                        transition: Transition::CameOnline,
                        evicted: None,
                    }
                }
            }
        };
        if joined.evicted.is_none() {
            self.sockets.fetch_add(1, Ordering::Relaxed);
        }
        self.report_local(&users, user);
        drop(users);
        self.notify(joined.transition);
        joined
    }

    /// Forgets a socket of `user`; unknown sockets (already evicted) are ignored.
    pub fn disconnect(&self, user: &str, sid: Sid) -> Transition {
        let mut users = self.write();
        let Some(sockets) = users.by_id.get(user) else {
            return Transition::Unchanged;
        };
        let mut sockets = lock(sockets);
        let before = sockets.len();
        sockets.retain(|s| s.socket.sid() != sid);
        let removed = before - sockets.len();
        let empty = sockets.is_empty();
        drop(sockets);
        self.sockets.fetch_sub(removed, Ordering::Relaxed);
        if removed > 0 {
            self.report_local(&users, user);
        }
        let transition = if empty {
            Self::remove_local(&mut users, user)
        } else {
            Transition::Unchanged
        };
        drop(users);
        self.notify(transition);
        transition
    }

    /// Forgets `user`'s entry on this node (its sockets already gone or taken).
    fn remove_local(users: &mut Users<S>, user: &str) -> Transition {
        let Some((key, _)) = users.by_id.remove_entry(user) else {
            return Transition::Unchanged;
        };
        users.since.remove(user);
        if users.remote.contains_key(user) {
            Transition::Unchanged
        } else {
            users.flip(key, false);
            Transition::WentOffline
        }
    }

    /// Takes every local socket of `user` out of the registry at once (the caller disconnects
    /// them) and names the other nodes holding the user.
    pub fn take_user(&self, user: &str) -> (Vec<S>, Vec<NodeIdx>) {
        let mut users = self.write();
        let remote = users
            .remote
            .get(user)
            .map(|h| h.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        let Some(sockets) = users.by_id.get(user) else {
            return (Vec::new(), remote);
        };
        let taken: Vec<S> = std::mem::take(&mut *lock(sockets))
            .into_iter()
            .map(|slot| slot.socket)
            .collect();
        self.sockets.fetch_sub(taken.len(), Ordering::Relaxed);
        let transition = Self::remove_local(&mut users, user);
        self.report_local(&users, user);
        drop(users);
        self.notify(transition);
        (taken, remote)
    }

    /// Passes a local change on, with the user's key as stored (no allocation).
    fn report_local(&self, users: &Users<S>, user: &str) {
        if let Some(sink) = &self.local_changes {
            if let Some((key, _)) = users.by_id.get_key_value(user) {
                sink.changed(key);
            } else {
                sink.changed(&Arc::from(user));
            }
        }
    }

    /// Sets what `node` holds of `user` (0 sockets: none). Returns whether the online set
    /// changed.
    pub fn set_remote(&self, user: &str, node: NodeIdx, holding: Holding) -> bool {
        let mut users = self.write();
        let changed = Self::set_remote_locked(&mut users, user, node, holding);
        drop(users);
        self.remote_changed(changed);
        changed
    }

    fn set_remote_locked(
        users: &mut Users<S>,
        user: &str,
        node: NodeIdx,
        holding: Holding,
    ) -> bool {
        let was_online = users.is_online(user);
        match users.remote.get_mut(user) {
            Some(holders) => {
                holders.retain(|(n, _)| *n != node);
                if holding.sockets > 0 {
                    holders.push((node, holding));
                } else if holders.is_empty() {
                    users.remote.remove(user);
                }
            }
            None if holding.sockets > 0 => {
                users.remote.insert(Arc::from(user), vec![(node, holding)]);
            }
            None => {}
        }
        let online = users.is_online(user);
        if was_online == online {
            return false;
        }
        let key = users.remote.get_key_value(user).map(|(k, _)| k.clone());
        users.flip(key.unwrap_or_else(|| Arc::from(user)), online);
        true
    }

    /// Replaces everything known of `node` by `holdings`; an empty list forgets the node.
    /// O(users on other nodes): for resyncs and dead nodes, not per event.
    pub fn replace_node(&self, node: NodeIdx, holdings: &[(String, Holding)]) {
        let mut users = self.write();
        let stale: Vec<Arc<str>> = users
            .remote
            .iter()
            .filter(|(_, h)| h.iter().any(|(n, _)| *n == node))
            .map(|(u, _)| u.clone())
            .collect();
        let mut changed = false;
        for user in stale {
            changed |= Self::set_remote_locked(&mut users, &user, node, Holding::default());
        }
        for (user, holding) in holdings {
            changed |= Self::set_remote_locked(&mut users, user, node, *holding);
        }
        drop(users);
        self.remote_changed(changed);
    }

    fn remote_changed(&self, changed: bool) {
        if changed {
            self.changed.notify_one();
        }
    }

    /// This node's users and their holdings, for a full republish.
    pub fn local_holdings(&self) -> Vec<(Arc<str>, Holding)> {
        let users = self.read();
        users
            .by_id
            .keys()
            .map(|u| (u.clone(), Self::holding_locked(&users, u)))
            .collect()
    }

    /// What this node holds of `user` (0 sockets once the user left it).
    pub fn local_holding(&self, user: &str) -> Holding {
        Self::holding_locked(&self.read(), user)
    }

    fn holding_locked(users: &Users<S>, user: &str) -> Holding {
        match users.by_id.get(user) {
            Some(sockets) => Holding {
                sockets: lock(sockets).len() as u32,
                since_ms: users.since.get(user).copied().unwrap_or_default(),
            },
            None => Holding::default(),
        }
    }

    /// `user`'s sockets on every node and since when the user is online, from this node's
    /// sockets and its replica of the others (no round trip).
    pub fn lookup(&self, user: &str) -> UserPresence {
        let users = self.read();
        let local = Self::holding_locked(&users, user);
        let remote = users.remote.get(user).into_iter().flatten().map(|(_, h)| h);
        std::iter::once(&local)
            .chain(remote)
            .filter(|h| h.sockets > 0)
            .fold(UserPresence::default(), |acc, h| UserPresence {
                sockets: acc.sockets + h.sockets,
                since_ms: match acc.since_ms {
                    0 => h.since_ms,
                    t => t.min(h.since_ms),
                },
            })
    }

    /// Subscribes to every online/offline change from now on; returns the registry version
    /// the first change will follow.
    pub fn watch(&self) -> (broadcast::Receiver<Change>, u64) {
        let users = self.read();
        (users.changes.subscribe(), users.version)
    }

    fn notify(&self, transition: Transition) {
        if transition != Transition::Unchanged {
            self.changed.notify_one();
        }
    }

    /// Resolves once the online set changed since the last call returned.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Offers a message to every socket of `user` through `send`, which returns whether the
    /// socket took it. The user's sockets stay locked meanwhile, so concurrent deliveries
    /// reach all tabs in one order; `send` must not block.
    pub fn deliver(
        &self,
        user: &str,
        max_refused_in_row: u32,
        mut offer: impl FnMut(&S) -> Offer,
    ) -> Delivered<S> {
        let mut delivered = Delivered::default();
        let users = self.read();
        if let Some(holders) = users.remote.get(user) {
            delivered.remote = holders.iter().map(|(n, _)| *n).collect();
        }
        let Some((user, sockets)) = users
            .by_id
            .get_key_value(user)
            .map(|(u, s)| (u.clone(), s.clone()))
        else {
            return delivered;
        };
        drop(users);
        for slot in lock(&sockets).iter_mut() {
            let outcome = offer(&slot.socket);
            delivered.record(&user, slot, outcome, max_refused_in_row);
        }
        delivered
    }

    /// Takes the net changes since the last round, with the online list they lead to (both
    /// read under one lock, so they agree), and starts the next round from there.
    pub fn round(&self) -> Round {
        let users = self.read();
        let (base, flips) = {
            let mut flips = lock(&users.flips);
            let base = std::mem::replace(&mut flips.base, users.version);
            (base, std::mem::take(&mut flips.by_user))
        };
        let list = self.list_locked(&users);
        drop(users);
        let (mut online, mut offline): (Vec<_>, Vec<_>) =
            flips.into_iter().partition(|(_, was_online)| !was_online);
        let changes = (!online.is_empty() || !offline.is_empty()).then(|| {
            online.sort_unstable();
            offline.sort_unstable();
            let set = ChangeSet {
                online: online.iter().map(|(u, _)| &**u).collect(),
                offline: offline.iter().map(|(u, _)| &**u).collect(),
            };
            Arc::from(serde_json::value::to_raw_value(&set).expect("lists of strings serialize"))
        });
        Round {
            base,
            list,
            changes,
        }
    }

    /// Offers a round to every socket as its mode asks. `list` sockets get the whole list, or
    /// when the online set did not change since the last round (a resend) only those that
    /// refused the previous one. `changes` sockets holding the round's base get the change
    /// set, others the whole list, and sockets already holding the round's version nothing.
    /// Refusals count toward cutting a socket off like refused messages do. The registry is
    /// not locked while offering, only each user's sockets in turn.
    pub fn offer_round(
        &self,
        round: &Round,
        max_refused_in_row: u32,
        mut offer: impl FnMut(&S, Frame) -> Offer,
    ) -> RoundOutcome<S> {
        let version = round.list.version;
        let resend = round.base == version;
        let (mut lists, mut resyncs, mut changes, mut behind) =
            (Tally::default(), Tally::default(), Tally::default(), 0);
        let (delivered, _) = self.offer_each(max_refused_in_row, &[], |slot| {
            let (frame, tally) = match slot.mode {
                PresenceMode::Off => return None,
                PresenceMode::List if resend && !slot.missed_list => return None,
                PresenceMode::List => (Frame::List, &mut lists),
                PresenceMode::Changes => match slot.holds {
                    Some(held) if held >= version => return None,
                    Some(held) if held == round.base && round.changes.is_none() => {
                        slot.holds = Some(version);
                        return None;
                    }
                    Some(held) if held == round.base => (Frame::Changes, &mut changes),
                    _ => (Frame::List, &mut resyncs),
                },
            };
            let outcome = offer(&slot.socket, frame);
            tally.offered += 1;
            tally.taken += u32::from(outcome == Offer::Taken);
            behind += u32::from(outcome == Offer::Full);
            match slot.mode {
                PresenceMode::Changes => slot.holds = (outcome == Offer::Taken).then_some(version),
                _ => slot.missed_list = outcome == Offer::Full,
            }
            Some(outcome)
        });
        RoundOutcome {
            delivered,
            lists,
            resyncs,
            changes,
            behind,
        }
    }

    /// Gives one `changes` socket of `user` the current list unless it already holds it or a
    /// newer one, and records the version, under the user's sockets lock: a round offering
    /// to it at the same time sees the version it holds. Returns what the socket did, if it
    /// was offered the list.
    pub fn sync_socket(
        &self,
        user: &str,
        sid: Sid,
        offer: impl FnOnce(&S, &OnlineList) -> Offer,
    ) -> Option<Offer> {
        let list = self.online_list();
        let sockets = self.read().by_id.get(user)?.clone();
        let mut sockets = lock(&sockets);
        let slot = sockets.iter_mut().find(|s| s.socket.sid() == sid)?;
        if slot.holds.is_some_and(|held| held >= list.version) {
            return None;
        }
        let outcome = offer(&slot.socket, &list);
        slot.holds = (outcome == Offer::Taken).then_some(list.version);
        Some(outcome)
    }

    /// Offers a message to every local socket (a broadcast). Returns what the sockets did
    /// and how many users took it on at least one socket, leaving out users one of
    /// `counted_by` also holds: that node counts them, so the sum over the nodes counts each
    /// user once.
    pub fn offer_all(
        &self,
        max_refused_in_row: u32,
        counted_by: &[NodeIdx],
        mut offer: impl FnMut(&S) -> Offer,
    ) -> (Delivered<S>, u32) {
        self.offer_each(max_refused_in_row, counted_by, |slot| {
            Some(offer(&slot.socket))
        })
    }

    /// Offers to every local socket `offer` does not skip (`None`); the registry is not
    /// locked meanwhile, only each user's sockets in turn. Counts the users reached that no
    /// node of `counted_by` holds.
    fn offer_each(
        &self,
        max_refused_in_row: u32,
        counted_by: &[NodeIdx],
        mut offer: impl FnMut(&mut Slot<S>) -> Option<Offer>,
    ) -> (Delivered<S>, u32) {
        let users: Vec<(Arc<str>, Sockets<S>, bool)> = {
            let users = self.read();
            let held_there = |user: &str| {
                users.remote.get(user).is_some_and(|holders| {
                    holders
                        .iter()
                        .any(|(node, h)| h.sockets > 0 && counted_by.contains(node))
                })
            };
            users
                .by_id
                .iter()
                .map(|(u, s)| (u.clone(), s.clone(), !held_there(u)))
                .collect()
        };
        let mut delivered = Delivered::default();
        let mut reached = 0;
        for (user, sockets, counted) in &users {
            let before = delivered.accepted;
            for slot in lock(sockets).iter_mut() {
                if let Some(outcome) = offer(slot) {
                    delivered.record(user, slot, outcome, max_refused_in_row);
                }
            }
            reached += u32::from(*counted && delivered.accepted > before);
        }
        (delivered, reached)
    }

    /// Number of live sockets of `user`.
    pub fn socket_count(&self, user: &str) -> usize {
        self.read().by_id.get(user).map_or(0, |s| lock(s).len())
    }

    /// Number of online users (cluster-wide).
    pub fn online_count(&self) -> usize {
        self.read().online
    }

    /// Number of users with a socket on this node.
    pub fn local_user_count(&self) -> usize {
        self.read().by_id.len()
    }

    /// Number of registered sockets, all users together.
    pub fn total_sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Up to `limit` users sorting strictly after `after`. Paging by key means a user that
    /// stays online is never skipped and none is returned twice, whatever comes and goes.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Page {
        let users = self.read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut iter = users.ids(lower);
        let user_ids: Vec<String> = iter.by_ref().take(limit).map(|id| id.to_string()).collect();
        Page {
            more: iter.next().is_some(),
            user_ids,
            total: users.online,
        }
    }

    /// The current online list as JSON, rebuilt only when the online set changed.
    pub fn online_list(&self) -> OnlineList {
        self.list_locked(&self.read())
    }

    fn list_locked(&self, users: &Users<S>) -> OnlineList {
        let mut cache = lock(&self.cached);
        if let Some(list) = cache.as_ref().filter(|l| l.version == users.version) {
            return list.clone();
        }
        let ids: Vec<&str> = users.ids(Bound::Unbounded).map(|k| &**k).collect();
        let json = serde_json::value::to_raw_value(&ids).expect("a list of strings serializes");
        let list = OnlineList {
            version: users.version,
            json: Arc::from(json),
        };
        *cache = Some(list.clone());
        list
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn registry() -> Presence<Sid> {
        Presence::new()
    }

    fn held(sockets: u32, since_ms: u64) -> Holding {
        Holding { sockets, since_ms }
    }

    #[test]
    fn lookup_adds_up_nodes_and_keeps_the_earliest_since() {
        let p = registry();
        assert_eq!(p.lookup("u"), UserPresence::default());
        let before = unix_ms();
        p.connect("u", Sid::new(), 16);
        p.connect("u", Sid::new(), 16);
        let local = p.lookup("u");
        assert_eq!(local.sockets, 2);
        assert!(local.since_ms >= before && local.since_ms <= unix_ms());
        p.set_remote("u", 3, held(3, 1000));
        assert_eq!(
            p.lookup("u"),
            UserPresence {
                sockets: 5,
                since_ms: 1000
            }
        );
        let (taken, remote) = p.take_user("u");
        assert_eq!((taken.len(), remote), (2, vec![3]));
        assert_eq!(p.total_sockets(), 0);
        assert_eq!(
            p.lookup("u"),
            UserPresence {
                sockets: 3,
                since_ms: 1000
            }
        );
        p.set_remote("u", 3, Holding::default());
        assert_eq!(p.lookup("u"), UserPresence::default());
    }

    #[test]
    fn watchers_see_every_change_in_order() {
        let p = registry();
        p.connect("a", Sid::new(), 16);
        let (mut rx, version) = p.watch();
        let b = Sid::new();
        p.connect("b", b, 16);
        p.connect("b", Sid::new(), 16); // a second tab is no change
        p.set_remote("c", 1, held(1, 5));
        p.set_remote("b", 1, held(1, 5)); // already online here
        p.take_user("b"); // still held by node 1
        p.replace_node(1, &[]);
        p.take_user("a");
        let mut seen = Vec::new();
        while let Ok(change) = rx.try_recv() {
            seen.push((change.user.to_string(), change.online, change.seq - version));
        }
        let expect = [
            ("b", true, 1),
            ("c", true, 2),
            ("b", false, 3),
            ("c", false, 4),
            ("a", false, 5),
        ];
        let expect: Vec<_> = expect
            .iter()
            .map(|(u, o, s)| (u.to_string(), *o, *s))
            .collect();
        assert_eq!(seen, expect);
    }

    #[test]
    fn tabs_keep_a_user_online() {
        let p = registry();
        let (a, b) = (Sid::new(), Sid::new());
        assert_eq!(p.connect("u", a, 16).transition, Transition::CameOnline);
        assert_eq!(p.connect("u", b, 16).transition, Transition::Unchanged);
        assert_eq!(p.socket_count("u"), 2);
        assert_eq!(p.total_sockets(), 2);
        assert_eq!(p.disconnect("u", a), Transition::Unchanged);
        assert_eq!(p.online_count(), 1);
        assert_eq!(p.disconnect("u", b), Transition::WentOffline);
        assert_eq!(p.online_count(), 0);
        assert_eq!(p.disconnect("u", b), Transition::Unchanged);
        assert_eq!(p.total_sockets(), 0);
    }

    #[test]
    fn the_oldest_tab_is_evicted_at_the_limit() {
        let p = registry();
        let sids: Vec<Sid> = (0..3).map(|_| Sid::new()).collect();
        assert!(p.connect("u", sids[0], 2).evicted.is_none());
        assert!(p.connect("u", sids[1], 2).evicted.is_none());
        assert_eq!(p.connect("u", sids[2], 2).evicted, Some(sids[0]));
        assert_eq!(p.socket_count("u"), 2);
        assert_eq!(p.total_sockets(), 2);
        // The evicted socket's own disconnect later is a no-op.
        assert_eq!(p.disconnect("u", sids[0]), Transition::Unchanged);
        assert_eq!(p.socket_count("u"), 2);
    }

    #[test]
    fn a_socket_refusing_too_often_is_cut_off() {
        let p = registry();
        let (slow, fast) = (Sid::new(), Sid::new());
        p.connect("u", slow, 16);
        p.connect("u", fast, 16);
        for round in 1..=4 {
            let d = p.deliver("u", 3, |s| {
                if *s == fast {
                    Offer::Taken
                } else {
                    Offer::Full
                }
            });
            assert_eq!((d.accepted, d.refused), (1, 1));
            let cut: Vec<Sid> = d.overflowing.iter().map(|(_, s)| *s).collect();
            assert_eq!(cut == [slow], round == 3, "round {round}");
        }
        p.disconnect("u", slow);
        assert_eq!(p.socket_count("u"), 1);
        assert_eq!(p.deliver("nobody", 3, |_| Offer::Taken).accepted, 0);
        let d = p.deliver("u", 3, |_| Offer::Gone);
        assert_eq!((d.accepted, d.gone), (0, vec![(Arc::from("u"), fast)]));
    }

    #[test]
    fn a_list_resend_reaches_only_the_sockets_that_missed_it() {
        let p = registry();
        let (slow, a, b) = (Sid::new(), Sid::new(), Sid::new());
        p.connect("s", slow, 16);
        p.connect("a", a, 16);
        p.connect("b", b, 16);
        let full_if_slow = |s: &Sid| {
            if *s == slow {
                Offer::Full
            } else {
                Offer::Taken
            }
        };
        let d = p.offer_round(&p.round(), 3, |s, _| full_if_slow(s));
        assert_eq!((d.delivered.accepted, d.delivered.refused), (2, 1));
        assert_eq!((d.lists.offered, d.behind), (3, 1));
        let mut offered = Vec::new();
        let d = p.offer_round(&p.round(), 3, |s, _| {
            offered.push(*s);
            full_if_slow(s)
        });
        assert_eq!(offered, [slow]);
        assert!(d.delivered.overflowing.is_empty());
        // The third refusal in a row, list or message, cuts it off.
        let d = p.deliver("s", 3, full_if_slow);
        assert_eq!(d.overflowing, [(Arc::from("s"), slow)]);
        // Once taken, nothing more is owed.
        p.offer_round(&p.round(), 3, |_, _| Offer::Taken);
        let d = p.offer_round(&p.round(), 3, |_, _| Offer::Taken);
        assert_eq!(d.delivered.accepted, 0);
    }

    /// A `changes` client as the tests see it: the set it reconstructs and the version the
    /// gateway believes it holds.
    #[derive(Default)]
    struct Client {
        set: BTreeSet<String>,
        version: Option<u64>,
    }

    impl Client {
        fn apply(&mut self, round: &Round, frame: Frame) {
            match frame {
                Frame::List => {
                    self.set = serde_json::from_str(round.list.json.get()).unwrap();
                }
                Frame::Changes => {
                    assert_eq!(
                        self.version,
                        Some(round.base),
                        "a change set on a wrong base"
                    );
                    let c: serde_json::Value =
                        serde_json::from_str(round.changes.as_ref().unwrap().get()).unwrap();
                    for id in c["online"].as_array().unwrap() {
                        assert!(self.set.insert(id.as_str().unwrap().to_string()));
                    }
                    for id in c["offline"].as_array().unwrap() {
                        assert!(self.set.remove(id.as_str().unwrap()));
                    }
                }
            }
            self.version = Some(round.list.version);
        }
    }

    fn online_set(p: &Presence<Sid>) -> BTreeSet<String> {
        p.page(None, usize::MAX).user_ids.into_iter().collect()
    }

    #[test]
    fn a_change_set_holds_only_net_changes_in_order() {
        let p = registry();
        p.connect("b", Sid::new(), 16);
        p.round();
        let (x, y) = (Sid::new(), Sid::new());
        p.connect("d", x, 16);
        p.connect("a", y, 16);
        p.disconnect("b", Sid::new()); // unknown socket: no change
        p.take_user("b");
        p.connect("c", Sid::new(), 16);
        p.disconnect("c", Sid::new());
        p.take_user("c"); // came and went within the round
        p.set_remote("e", 1, held(1, 5));
        let round = p.round();
        assert_eq!(
            round.changes.unwrap().get(),
            r#"{"online":["a","d","e"],"offline":["b"]}"#
        );
        assert_eq!(round.list.json.get(), r#"["a","d","e"]"#);
        // Nothing changed since: a resend round carries no change set.
        let again = p.round();
        assert_eq!(
            (again.base, again.changes.is_none()),
            (round.list.version, true)
        );
    }

    #[test]
    fn a_socket_that_refused_a_change_set_gets_the_whole_list_next() {
        let p = registry();
        let (watcher, other) = (Sid::new(), Sid::new());
        p.connect_with("w", watcher, 16, PresenceMode::Changes);
        p.connect_with("o", other, 16, PresenceMode::Changes);
        // Users coming and going below hold sockets that want no presence.
        let connect = |p: &Presence<Sid>, user: &str| {
            p.connect_with(user, Sid::new(), 16, PresenceMode::Off);
        };
        connect(&p, "quiet");
        let mut clients: HashMap<Sid, Client> = HashMap::new();
        let mut frames: Vec<(Sid, Frame)> = Vec::new();
        let mut run = |p: &Presence<Sid>, refuse: Option<Sid>, frames: &mut Vec<(Sid, Frame)>| {
            let round = p.round();
            frames.clear();
            let d = p.offer_round(&round, 100, |s, frame| {
                frames.push((*s, frame));
                if Some(*s) == refuse {
                    return Offer::Full;
                }
                clients.entry(*s).or_default().apply(&round, frame);
                Offer::Taken
            });
            (d, round)
        };
        let (d, _) = run(&p, None, &mut frames);
        assert_eq!(frames.iter().filter(|(_, f)| *f == Frame::List).count(), 2);
        assert_eq!(
            d.resyncs,
            Tally {
                offered: 2,
                taken: 2
            }
        );
        connect(&p, "u1");
        let (d, _) = run(&p, Some(watcher), &mut frames);
        assert_eq!(frames, [(other, Frame::Changes), (watcher, Frame::Changes)]);
        assert_eq!(
            (d.changes, d.behind),
            (
                Tally {
                    offered: 2,
                    taken: 1
                },
                1
            )
        );
        connect(&p, "u2");
        p.take_user("u1");
        // The watcher missed a step: a change set from here would not apply to its set.
        let (d, _) = run(&p, None, &mut frames);
        assert_eq!(frames, [(other, Frame::Changes), (watcher, Frame::List)]);
        assert_eq!((d.resyncs.taken, d.changes.taken, d.behind), (1, 1, 0));
        for round in 0..50u32 {
            let user = format!("r{}", round % 7);
            if p.socket_count(&user) == 0 {
                connect(&p, &user);
            } else {
                p.take_user(&user);
            }
            if round % 3 == 0 {
                connect(&p, "flicker");
                p.take_user("flicker");
            }
            let refuse = (round % 5 == 0).then_some(if round % 2 == 0 { watcher } else { other });
            run(&p, refuse, &mut frames);
        }
        // A resend round brings the last refusers up to date.
        run(&p, None, &mut frames);
        let truth = online_set(&p);
        for sid in [watcher, other] {
            assert_eq!(clients[&sid].set, truth);
        }
    }

    #[test]
    fn a_socket_synced_at_connect_gets_changes_from_its_version_only() {
        let p = registry();
        p.connect("a", Sid::new(), 16);
        p.round();
        let tab = Sid::new();
        p.connect_with("a", tab, 16, PresenceMode::Changes); // a second tab: no change, no round
        let mut client = Client::default();
        let synced = p.sync_socket("a", tab, |_, list| {
            client.set = serde_json::from_str(list.json.get()).unwrap();
            client.version = Some(list.version);
            Offer::Taken
        });
        assert_eq!(synced, Some(Offer::Taken));
        // Already holding the current list: no second one.
        assert_eq!(p.sync_socket("a", tab, |_, _| Offer::Taken), None);
        p.connect("b", Sid::new(), 16);
        let round = p.round();
        let d = p.offer_round(&round, 3, |s, frame| {
            if *s == tab {
                client.apply(&round, frame);
            }
            Offer::Taken
        });
        assert_eq!((d.changes.taken, d.resyncs.offered), (1, 0));
        assert_eq!(client.set, online_set(&p));
    }

    #[test]
    fn pages_by_key() {
        let p = registry();
        for u in ["c", "a", "b", "d"] {
            p.connect(u, Sid::new(), 16);
        }
        let first = p.page(None, 2);
        assert_eq!(first.user_ids, ["a", "b"]);
        assert!(first.more);
        assert_eq!(first.total, 4);
        let rest = p.page(Some("b"), 2);
        assert_eq!(rest.user_ids, ["c", "d"]);
        assert!(!rest.more);
    }

    #[test]
    fn online_list_is_cached_per_version() {
        let p = registry();
        p.connect("b", Sid::new(), 16);
        p.connect("a", Sid::new(), 16);
        let l1 = p.online_list();
        assert_eq!(l1.json.get(), r#"["a","b"]"#);
        assert!(Arc::ptr_eq(&l1.json, &p.online_list().json));
        p.connect("c", Sid::new(), 16);
        assert_eq!(p.online_list().json.get(), r#"["a","b","c"]"#);
    }

    #[test]
    fn other_nodes_users_are_online_once_and_named_for_delivery() {
        let p = registry();
        p.connect("b", Sid::new(), 16);
        assert!(p.set_remote("a", 7, held(2, 5)));
        assert!(
            !p.set_remote("b", 7, held(1, 5)),
            "b was already online here"
        );
        assert!(p.set_remote("c", 8, held(1, 5)));
        assert_eq!(p.online_list().json.get(), r#"["a","b","c"]"#);
        assert_eq!(p.page(Some("a"), 1).user_ids, ["b"]);
        assert_eq!(p.page(None, 10).total, 3);
        assert_eq!(p.deliver("b", 3, |_| Offer::Taken).remote, [7]);
        assert_eq!(p.deliver("b", 3, |_| Offer::Taken).accepted, 1);
        assert!(p.deliver("nobody", 3, |_| Offer::Taken).remote.is_empty());
        // Node 7 goes away: a leaves, b stays (local socket), c is on node 8.
        p.replace_node(7, &[]);
        assert_eq!(p.online_list().json.get(), r#"["b","c"]"#);
        assert_eq!(p.online_count(), 2);
        p.replace_node(8, &[("d".into(), held(1, 5))]);
        assert_eq!(p.online_list().json.get(), r#"["b","d"]"#);
    }
}
