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

use std::{
    collections::{BTreeMap, HashMap},
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
    /// It refused the last online list offered to it, so a resend is owed to it (and only it).
    missed_list: bool,
}

impl<S> Slot<S> {
    fn new(socket: S) -> Self {
        Self {
            socket,
            refused_in_row: 0,
            missed_list: false,
        }
    }
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
    /// Every online/offline change, in version order, for presence watchers. Sent under the
    /// write lock, so watchers see the changes in the order they happened; a watcher more
    /// than the channel's capacity behind is told it lagged.
    changes: broadcast::Sender<Change>,
}

impl<S> Users<S> {
    /// Records that `user` came online or went offline, and tells the watchers.
    fn flip(&mut self, user: impl FnOnce() -> Arc<str>, online: bool) {
        if online {
            self.online += 1;
        } else {
            self.online -= 1;
        }
        self.version += 1;
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Change {
                user: user(),
                online,
                seq: self.version,
            });
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
        let mut users = self.write();
        let joined = match users.by_id.get(user) {
            Some(sockets) => {
                let mut sockets = lock(sockets);
                let evicted = (sockets.len() >= max_per_user.max(1)).then(|| sockets.remove(0));
                sockets.push(Slot::new(socket));
                Joined {
                    transition: Transition::Unchanged,
                    evicted: evicted.map(|slot| slot.socket),
                }
            }
            None => {
                let slot = Slot::new(socket);
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
                    users.flip(|| key, true);
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
            users.flip(|| key, false);
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
        users.flip(|| key.unwrap_or_else(|| Arc::from(user)), online);
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

    /// Offers the online list to every socket, or with `only_missed` to the sockets that
    /// refused the previous offer: a resend never reaches a socket twice. Refusals count
    /// toward cutting a socket off like refused messages do. The registry is not locked
    /// while offering, only each user's sockets in turn.
    pub fn offer_list(
        &self,
        only_missed: bool,
        max_refused_in_row: u32,
        mut offer: impl FnMut(&S) -> Offer,
    ) -> Delivered<S> {
        self.offer_each(max_refused_in_row, |slot| {
            if only_missed && !slot.missed_list {
                return None;
            }
            let outcome = offer(&slot.socket);
            slot.missed_list = outcome == Offer::Full;
            Some(outcome)
        })
        .0
    }

    /// Offers a message to every local socket (a broadcast). Returns what the sockets did
    /// and how many users took it on at least one socket.
    pub fn offer_all(
        &self,
        max_refused_in_row: u32,
        mut offer: impl FnMut(&S) -> Offer,
    ) -> (Delivered<S>, u32) {
        self.offer_each(max_refused_in_row, |slot| Some(offer(&slot.socket)))
    }

    /// Offers to every local socket `offer` does not skip (`None`); the registry is not
    /// locked meanwhile, only each user's sockets in turn.
    fn offer_each(
        &self,
        max_refused_in_row: u32,
        mut offer: impl FnMut(&mut Slot<S>) -> Option<Offer>,
    ) -> (Delivered<S>, u32) {
        let users: Vec<(Arc<str>, Sockets<S>)> = self
            .read()
            .by_id
            .iter()
            .map(|(u, s)| (u.clone(), s.clone()))
            .collect();
        let mut delivered = Delivered::default();
        let mut reached = 0;
        for (user, sockets) in &users {
            let before = delivered.accepted;
            for slot in lock(sockets).iter_mut() {
                if let Some(outcome) = offer(slot) {
                    delivered.record(user, slot, outcome, max_refused_in_row);
                }
            }
            reached += u32::from(delivered.accepted > before);
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
        let users = self.read();
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
        let d = p.offer_list(false, 3, full_if_slow);
        assert_eq!((d.accepted, d.refused), (2, 1));
        let mut offered = Vec::new();
        let d = p.offer_list(true, 3, |s| {
            offered.push(*s);
            full_if_slow(s)
        });
        assert_eq!(offered, [slow]);
        assert!(d.overflowing.is_empty());
        // The third refusal in a row, list or message, cuts it off.
        let d = p.deliver("s", 3, full_if_slow);
        assert_eq!(d.overflowing, [(Arc::from("s"), slow)]);
        // Once taken, nothing more is owed.
        p.offer_list(true, 3, |_| Offer::Taken);
        assert_eq!(p.offer_list(true, 3, |_| Offer::Taken).accepted, 0);
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
