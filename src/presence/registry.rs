//! Users and their sockets on this node, the online count and version, the cached online
//! list, and the watchers of changes.

use crate::sync::lock;
use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap},
    ops::Bound,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use socketioxide::{extract::SocketRef, socket::Sid};
use tokio::sync::{broadcast, Notify};

use super::types::{
    unix_ms, Change, Holders, Joined, LocalChanges, NodeIdx, OnlineList, Page, PresenceMode,
    SocketHandle, Transition,
};
use super::watch::{Latest, WatchIndex};

/// One socket of a user: the handle, its refusals in a row and the presence it holds.
pub(super) struct Slot<S> {
    pub(super) socket: S,
    /// Sends refused in a row (full buffer): a reader that stopped is cut off eventually.
    pub(super) refused_in_row: u32,
    pub(super) mode: PresenceMode,
    /// `List` mode: it refused the last online list offered to it, so a resend is owed to it
    /// (and only it).
    pub(super) missed_list: bool,
    /// `Changes` mode: the registry version of the list its client holds; `None` until it took
    /// one, and after a refused send (its client then lacks a step: it gets a whole list next).
    pub(super) holds: Option<u64>,
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
pub(super) struct Flips {
    /// Each user's state (online?) at the round's base; a user back in that state is removed,
    /// so this holds only net changes and never more entries than users.
    pub(super) by_user: HashMap<Arc<str>, bool>,
    /// The registry version the last round ended at.
    pub(super) base: u64,
}

/// A user's sockets, behind their own lock.
pub(super) type Sockets<S> = Arc<Mutex<Vec<Slot<S>>>>;

/// The registry's state, under one lock.
pub(super) struct Users<S> {
    /// Users with sockets on this node.
    pub(super) by_id: BTreeMap<Arc<str>, Sockets<S>>,
    /// Users with sockets on other nodes (always empty on a single node).
    pub(super) remote: BTreeMap<Arc<str>, Holders>,
    /// When each local user's first socket of their current stay on this node connected.
    pub(super) since: HashMap<Arc<str>, u64>,
    /// Users in either map: the cluster-wide online count.
    online: usize,
    /// Bumped whenever a user comes online or goes offline.
    pub(super) version: u64,
    /// Net changes since the last broadcast round. A mutex (changed only under the write lock)
    /// so a round can take them under the read lock, consistent with the list it builds.
    pub(super) flips: Mutex<Flips>,
    /// Every online/offline change, in version order, for presence watchers. Sent under the
    /// write lock, so watchers see the changes in the order they happened; a watcher more
    /// than the channel's capacity behind is told it lagged.
    changes: broadcast::Sender<Change>,
    /// Each user's latest state and version, for the watch index (see `watch`).
    pub(super) latest: Mutex<Latest>,
}

impl<S> Users<S> {
    /// Records that `user` came online or went offline, and tells the watchers.
    pub(super) fn flip(&mut self, user: Arc<str>, online: bool) {
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
        let latest = self.latest.get_mut().unwrap_or_else(|e| e.into_inner());
        if latest.on {
            latest.by_user.insert(user.clone(), (online, self.version));
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

    /// Whether some node, this one or another, holds a socket of `user`.
    pub(super) fn is_online(&self, user: &str) -> bool {
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
    pub(super) changed: Notify,
    local_changes: Option<Arc<dyn LocalChanges>>,
    /// The watchlists of `watch` sockets; its lock is taken before the registry's, never
    /// while holding it.
    pub(super) watch: Mutex<WatchIndex<S>>,
    /// Set once a socket watches: until then nothing touches `watch`.
    pub(super) watching: AtomicBool,
    /// Sockets in `list` or `changes` mode: without any, broadcast rounds are skipped.
    round_sockets: AtomicUsize,
}

impl<S: SocketHandle> Default for Presence<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SocketHandle> Presence<S> {
    /// An empty registry of a single node, with the default watch buffer.
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
                latest: Mutex::new(Latest::default()),
            }),
            sockets: AtomicUsize::new(0),
            cached: Mutex::new(None),
            changed: Notify::new(),
            local_changes,
            watch: Mutex::new(WatchIndex::default()),
            watching: AtomicBool::new(false),
            round_sockets: AtomicUsize::new(0),
        }
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Users<S>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Users<S>> {
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
        self.count_mode(mode, true);
        let joined = match users.by_id.get(user) {
            Some(sockets) => {
                let mut sockets = lock(sockets);
                let evicted = (sockets.len() >= max_per_user.max(1)).then(|| sockets.remove(0));
                sockets.push(Slot::new(socket, mode));
                Joined {
                    transition: Transition::Unchanged,
                    evicted: evicted.map(|slot| self.forget_slot(slot)),
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
        if let Some(evicted) = &joined.evicted {
            self.unwatch(evicted.sid());
        }
        self.notify(joined.transition);
        joined
    }

    /// Counts a socket of `mode` in or out of the broadcast rounds.
    fn count_mode(&self, mode: PresenceMode, joins: bool) {
        if matches!(mode, PresenceMode::List | PresenceMode::Changes) {
            if joins {
                self.round_sockets.fetch_add(1, Ordering::Relaxed);
            } else {
                self.round_sockets.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// A slot leaving the registry: its socket, no longer counted by mode.
    fn forget_slot(&self, slot: Slot<S>) -> S {
        self.count_mode(slot.mode, false);
        slot.socket
    }

    /// Whether some socket here is in `list` or `changes` mode (broadcast rounds are due).
    pub fn has_round_sockets(&self) -> bool {
        self.round_sockets.load(Ordering::Relaxed) > 0
    }

    /// Gives the place of `user`'s socket `old` to `new` if `claim` agrees, under the user's
    /// sockets lock: a reconnect recovering its session takes over the slot of the socket it
    /// replaces, so presence does not change (nobody sees the user flap) and no delivery falls
    /// between the two. Returns the claim and `old`; `Err(missing)` when `old` holds no slot
    /// (disconnected meanwhile).
    pub fn swap<T, E>(
        &self,
        user: &str,
        old: Sid,
        new: S,
        missing: E,
        claim: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, S), E> {
        let Some(sockets) = self.read().by_id.get(user).cloned() else {
            return Err(missing);
        };
        let mut sockets = lock(&sockets);
        let Some(slot) = sockets.iter_mut().find(|s| s.socket.sid() == old) else {
            return Err(missing);
        };
        let claimed = claim()?;
        slot.refused_in_row = 0;
        let replaced = std::mem::replace(&mut slot.socket, new.clone());
        drop(sockets);
        self.rewatch(old, &new);
        Ok((claimed, replaced))
    }

    /// Runs `f` under `user`'s sockets lock, so no delivery to the user interleaves with it;
    /// `None` when the user has no socket here.
    pub fn locked<T>(&self, user: &str, f: impl FnOnce() -> T) -> Option<T> {
        let sockets = self.read().by_id.get(user).cloned()?;
        let _held = lock(&sockets);
        Some(f())
    }

    /// Forgets a socket of `user`; unknown sockets (already evicted) are ignored.
    pub fn disconnect(&self, user: &str, sid: Sid) -> Transition {
        let mut users = self.write();
        let Some(sockets) = users.by_id.get(user) else {
            drop(users);
            // Perhaps gone before it joined presence, but after it joined the watch index.
            self.unwatch(sid);
            return Transition::Unchanged;
        };
        let mut sockets = lock(sockets);
        let before = sockets.len();
        sockets.retain(|s| {
            let keep = s.socket.sid() != sid;
            if !keep {
                self.count_mode(s.mode, false);
            }
            keep
        });
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
        self.unwatch(sid);
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
            .map(|slot| self.forget_slot(slot))
            .collect();
        self.sockets.fetch_sub(taken.len(), Ordering::Relaxed);
        let transition = Self::remove_local(&mut users, user);
        self.report_local(&users, user);
        drop(users);
        for socket in &taken {
            self.unwatch(socket.sid());
        }
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

    pub(super) fn list_locked(&self, users: &Users<S>) -> OnlineList {
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
    use crate::presence::Holding;

    #[test]
    fn watchers_see_every_change_in_order() {
        let on_node_1 = Holding {
            sockets: 1,
            since_ms: 5,
        };
        let p = Presence::<Sid>::new();
        p.connect("a", Sid::new(), 16);
        let (mut rx, version) = p.watch();
        let b = Sid::new();
        p.connect("b", b, 16);
        p.connect("b", Sid::new(), 16); // a second tab is no change
        p.set_remote("c", 1, on_node_1);
        p.set_remote("b", 1, on_node_1); // already online here
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
        let p = Presence::<Sid>::new();
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
        let p = Presence::<Sid>::new();
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
    fn pages_by_key() {
        let p = Presence::<Sid>::new();
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
        let p = Presence::<Sid>::new();
        p.connect("b", Sid::new(), 16);
        p.connect("a", Sid::new(), 16);
        let l1 = p.online_list();
        assert_eq!(l1.json.get(), r#"["a","b"]"#);
        assert!(Arc::ptr_eq(&l1.json, &p.online_list().json));
        p.connect("c", Sid::new(), 16);
        assert_eq!(p.online_list().json.get(), r#"["a","b","c"]"#);
    }
}
