//! Watchlists: a `watch`-mode socket hears only of the users on its list.
//!
//! A reverse index maps each watched user to the sockets watching them, so a presence change
//! of user X costs work for X's watchers only, never a pass over every socket. The registry
//! records each user's latest state with the version it took it at ([`Latest`]); a round
//! takes those and moves each watched user's state forward, and every watcher of a user whose
//! state changed gets one `onlineUsersChanged` with all of its watched users that changed.
//!
//! Invariant: a socket not owed a resync holds, on its client, exactly the state its watched
//! users have here. Its list is offered under the index lock whenever it changes (join,
//! `SetWatchlist`, `renewToken`), and a socket whose buffer refused a frame is owed a whole
//! list (`getOnlineUsers`) next round instead of any change set.
//!
//! Memory per watch edge (one socket watching one user): a `u32` in the socket's sorted list
//! and a `u32` in the watched user's hash set of watchers (4 bytes, a control byte, at most
//! 7/8 full): about 10-16 bytes, plus some 100 bytes per distinct watched user and per
//! watching socket.

use crate::sync::lock;
use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
};

use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::{
    delivery::{Delivered, Offer},
    registry::{Presence, Users},
    rounds::{Frame, Tally},
    types::{PresenceMode, SocketHandle},
};

/// Each user's latest state (online?) and the registry version it took it at, since the last
/// watch round; recorded by the registry only once some socket watches.
#[derive(Default)]
pub(super) struct Latest {
    pub(super) on: bool,
    pub(super) by_user: HashMap<Arc<str>, (bool, u64)>,
}

/// Items addressed by a stable `u32`, their places reused.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(item);
                i
            }
            None => {
                self.items.push(Some(item));
                (self.items.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, i: u32) -> Option<T> {
        let item = self.items.get_mut(i as usize)?.take();
        if item.is_some() {
            self.free.push(i);
        }
        item
    }

    fn get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize)?.as_ref()
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.items.get_mut(i as usize)?.as_mut()
    }
}

/// A socket in `watch` mode.
struct Watcher<S> {
    socket: S,
    user: Arc<str>,
    /// The watched users, as indexes into [`WatchIndex::watched`], sorted and distinct.
    list: Vec<u32>,
    /// Its client lacks a step: it gets its whole list next round, no change set before.
    resync: bool,
    refused_in_row: u32,
}

/// A user some socket here watches.
struct Watched {
    user: Arc<str>,
    online: bool,
    /// The registry version `online` was read at.
    version: u64,
    /// Its watchers, as indexes into [`WatchIndex::sockets`].
    by: HashSet<u32>,
}

/// The watchlists of this node's `watch` sockets, both ways.
pub(super) struct WatchIndex<S> {
    sockets: Slab<Watcher<S>>,
    by_sid: HashMap<Sid, u32>,
    watched: Slab<Watched>,
    by_user: HashMap<Arc<str>, u32>,
    /// Sockets owed a whole list (those whose `resync` is still set when the round comes).
    resync: Vec<u32>,
}

impl<S> Default for WatchIndex<S> {
    fn default() -> Self {
        Self {
            sockets: Slab::default(),
            by_sid: HashMap::new(),
            watched: Slab::default(),
            by_user: HashMap::new(),
            resync: Vec::new(),
        }
    }
}

/// What a watch round, a join or a `SetWatchlist` offered, for the caller to settle and count.
#[derive(Debug)]
pub struct WatchOutcome<S> {
    /// The sockets that refused too often or are gone, for the caller to settle.
    pub delivered: Delivered<S>,
    /// Change sets offered.
    pub changes: Tally,
    /// Whole lists offered (resyncs).
    pub lists: Tally,
    /// Bytes of the frames offered.
    pub bytes_offered: u64,
    /// Bytes of the frames taken.
    pub bytes_taken: u64,
    /// Sockets left owing a whole list.
    pub behind: u32,
}

impl<S> Default for WatchOutcome<S> {
    fn default() -> Self {
        Self {
            delivered: Delivered::default(),
            changes: Tally::default(),
            lists: Tally::default(),
            bytes_offered: 0,
            bytes_taken: 0,
            behind: 0,
        }
    }
}

impl<S> WatchOutcome<S> {
    /// What its frames cost against the presence budget: their bytes, and `per_frame` for
    /// each.
    pub fn cost(&self, per_frame: u64) -> u64 {
        self.bytes_offered + per_frame * u64::from(self.changes.offered + self.lists.offered)
    }
}

impl<S: SocketHandle> WatchOutcome<S> {
    /// Records what socket `id` did with `json` offered as `frame`.
    fn record(
        &mut self,
        index: &mut WatchIndex<S>,
        id: u32,
        (frame, json): (Frame, &RawValue),
        outcome: Offer,
        max_refused: u32,
    ) {
        let Some(w) = index.sockets.get_mut(id) else {
            return;
        };
        let tally = match frame {
            Frame::Changes => &mut self.changes,
            Frame::List => &mut self.lists,
        };
        tally.offered += 1;
        let bytes = json.get().len() as u64;
        self.bytes_offered += bytes;
        match outcome {
            Offer::Taken | Offer::Kept => {
                tally.taken += u32::from(outcome == Offer::Taken);
                self.bytes_taken += bytes;
                self.delivered.accepted += u32::from(outcome == Offer::Taken);
                self.delivered.pending += u32::from(outcome == Offer::Kept);
                w.refused_in_row = 0;
                w.resync = false;
            }
            Offer::Full => {
                self.delivered.refused += 1;
                self.behind += 1;
                w.refused_in_row += 1;
                if w.refused_in_row == max_refused {
                    let cut = (w.user.clone(), w.socket.clone());
                    self.delivered.overflowing.push(cut);
                }
                if !w.resync {
                    w.resync = true;
                    index.resync.push(id);
                }
            }
            Offer::Gone => {
                self.delivered.refused += 1;
                self.delivered.gone.push((w.user.clone(), w.socket.clone()));
            }
        }
    }
}

/// The JSON of a watch change set, with the ids in order.
#[derive(serde::Serialize)]
struct ChangeSet<'a> {
    online: Vec<&'a str>,
    offline: Vec<&'a str>,
}

impl<S: SocketHandle> WatchIndex<S> {
    /// The index entries of `ids` (sorted, distinct), creating those not watched yet with
    /// their state read from `users`.
    fn entries(&mut self, users: &Users<S>, ids: &[Arc<str>]) -> Vec<u32> {
        let mut list: Vec<u32> = ids
            .iter()
            .map(|id| match self.by_user.get(id) {
                Some(&w) => w,
                None => {
                    let w = self.watched.insert(Watched {
                        user: id.clone(),
                        online: users.is_online(id),
                        version: users.version,
                        by: HashSet::new(),
                    });
                    self.by_user.insert(id.clone(), w);
                    w
                }
            })
            .collect();
        list.sort_unstable();
        list.dedup();
        list
    }

    /// Forgets the entries of `list` nobody watches any more.
    fn prune(&mut self, list: &[u32]) {
        for &w in list {
            if self.watched.get(w).is_some_and(|e| e.by.is_empty()) {
                if let Some(entry) = self.watched.remove(w) {
                    self.by_user.remove(&entry.user);
                }
            }
        }
    }

    fn name(&self, w: u32) -> &str {
        self.watched.get(w).map_or("", |e| &e.user)
    }

    fn online(&self, w: u32) -> bool {
        self.watched.get(w).is_some_and(|e| e.online)
    }

    /// `getOnlineUsers` for `list`: the watched users online, sorted.
    fn online_json(&self, list: &[u32]) -> Box<RawValue> {
        let mut ids: Vec<&str> = list
            .iter()
            .filter(|&&w| self.online(w))
            .map(|&w| self.name(w))
            .collect();
        ids.sort_unstable();
        serde_json::value::to_raw_value(&ids).expect("a list of strings serializes")
    }

    /// `onlineUsersChanged` for the entries in `changed`, each filed by its current state.
    fn changes_json(&self, changed: &[u32]) -> Box<RawValue> {
        let (mut online, mut offline) = (Vec::new(), Vec::new());
        for &w in changed {
            if self.online(w) {
                online.push(self.name(w));
            } else {
                offline.push(self.name(w));
            }
        }
        online.sort_unstable();
        offline.sort_unstable();
        serde_json::value::to_raw_value(&ChangeSet { online, offline })
            .expect("lists of strings serialize")
    }

    /// Takes socket `sid` out of the index.
    fn remove(&mut self, sid: Sid) {
        let Some(id) = self.by_sid.remove(&sid) else {
            return;
        };
        let Some(w) = self.sockets.remove(id) else {
            return;
        };
        for &e in &w.list {
            if let Some(entry) = self.watched.get_mut(e) {
                entry.by.remove(&id);
            }
        }
        self.prune(&w.list);
    }

    /// Replaces socket `id`'s list by `list`; returns the change set it implies for its
    /// client (`None`: no change, or the socket is owed a whole list anyway).
    fn relist(&mut self, id: u32, list: Vec<u32>) -> Option<Box<RawValue>> {
        let w = self.sockets.get_mut(id)?;
        let old = std::mem::replace(&mut w.list, list);
        let (resync, list) = (w.resync, w.list.clone());
        let added: Vec<u32> = list
            .iter()
            .filter(|e| old.binary_search(e).is_err())
            .copied()
            .collect();
        let dropped: Vec<u32> = old
            .iter()
            .filter(|e| list.binary_search(e).is_err())
            .copied()
            .collect();
        // Added users online join the client's set, dropped users online leave it.
        let json = (!resync).then(|| {
            let shown = |ids: &[u32]| -> Vec<&str> {
                let mut names: Vec<&str> = ids
                    .iter()
                    .filter(|&&e| self.online(e))
                    .map(|&e| self.name(e))
                    .collect();
                names.sort_unstable();
                names
            };
            let set = ChangeSet {
                online: shown(&added),
                offline: shown(&dropped),
            };
            (!set.online.is_empty() || !set.offline.is_empty())
                .then(|| serde_json::value::to_raw_value(&set).expect("lists serialize"))
        });
        self.link(id, &added);
        for &e in &dropped {
            if let Some(entry) = self.watched.get_mut(e) {
                entry.by.remove(&id);
            }
        }
        self.prune(&dropped);
        json.flatten()
    }

    /// Gives each socket of `ids` the list `list` and offers it the change set that implies;
    /// then forgets the entries of `list` nobody watches.
    fn relist_each(
        &mut self,
        ids: &[u32],
        list: &[u32],
        max_refused: u32,
        mut offer: impl FnMut(&S, &RawValue) -> Offer,
    ) -> WatchOutcome<S> {
        let mut done = WatchOutcome::default();
        for &id in ids {
            let Some(json) = self.relist(id, list.to_vec()) else {
                continue;
            };
            let Some(socket) = self.sockets.get(id).map(|w| w.socket.clone()) else {
                continue;
            };
            let outcome = offer(&socket, &json);
            done.record(self, id, (Frame::Changes, &json), outcome, max_refused);
        }
        self.prune(list);
        done
    }

    /// Records socket `id` as a watcher of each of `entries`.
    fn link(&mut self, id: u32, entries: &[u32]) {
        for &e in entries {
            if let Some(entry) = self.watched.get_mut(e) {
                entry.by.insert(id);
            }
        }
    }

    /// Moves each watched user in `latest` to its latest state; returns, for each watcher of
    /// a user whose state changed, those users.
    fn advance(&mut self, latest: HashMap<Arc<str>, (bool, u64)>) -> HashMap<u32, Vec<u32>> {
        let mut touched: HashMap<u32, Vec<u32>> = HashMap::new();
        for (user, (online, version)) in latest {
            let Some(&e) = self.by_user.get(&user) else {
                continue;
            };
            let Some(entry) = self.watched.get_mut(e) else {
                continue;
            };
            // Read at join after this change: already the state its watchers hold.
            if version <= entry.version {
                continue;
            }
            entry.version = version;
            if entry.online == online {
                continue;
            }
            entry.online = online;
            for &id in &entry.by {
                touched.entry(id).or_default().push(e);
            }
        }
        touched
    }
}

impl<S: SocketHandle> Presence<S> {
    /// Adds `socket` of `user`, watching `ids`, and offers it `getOnlineUsers` with the
    /// watched users online now, under the index lock: no change set can overtake it.
    pub fn watch_join(
        &self,
        user: &Arc<str>,
        socket: S,
        ids: &[Arc<str>],
        offer: impl FnOnce(&S, &RawValue) -> Offer,
    ) -> WatchOutcome<S> {
        let mut index = lock(&self.watch);
        self.watching.store(true, Ordering::Release);
        let list = {
            let users = self.read();
            lock(&users.latest).on = true;
            index.entries(&users, ids)
        };
        let sid = socket.sid();
        index.remove(sid);
        let json = index.online_json(&list);
        let outcome = offer(&socket, &json);
        let id = index.sockets.insert(Watcher {
            socket,
            user: user.clone(),
            list: Vec::new(),
            resync: false,
            refused_in_row: 0,
        });
        index.link(id, &list);
        if let Some(w) = index.sockets.get_mut(id) {
            w.list = list;
        }
        index.by_sid.insert(sid, id);
        let mut done = WatchOutcome::default();
        done.record(&mut index, id, (Frame::List, &json), outcome, u32::MAX);
        drop(index);
        self.owe_round(done.behind);
        done
    }

    /// Replaces the watchlist of every `watch` socket of `user` here by `ids`; each gets the
    /// change set the new list implies. Returns how many sockets were updated.
    pub fn set_watchlist(
        &self,
        user: &str,
        ids: &[Arc<str>],
        max_refused: u32,
        offer: impl FnMut(&S, &RawValue) -> Offer,
    ) -> (u32, WatchOutcome<S>) {
        let mut index = lock(&self.watch);
        let (sids, list) = {
            let users = self.read();
            let sids: Vec<Sid> = users.by_id.get(user).map_or_else(Vec::new, |sockets| {
                lock(sockets)
                    .iter()
                    .filter(|s| s.mode == PresenceMode::Watch)
                    .map(|s| s.socket.sid())
                    .collect()
            });
            if sids.is_empty() {
                return (0, WatchOutcome::default());
            }
            (sids, index.entries(&users, ids))
        };
        let ids: Vec<u32> = sids
            .iter()
            .filter_map(|sid| index.by_sid.get(sid).copied())
            .collect();
        let done = index.relist_each(&ids, &list, max_refused, offer);
        drop(index);
        self.owe_round(done.behind);
        (ids.len() as u32, done)
    }

    /// Replaces the watchlist of the one socket `sid` (a `renewToken` with a `watchlist`
    /// claim); `None` when it does not watch.
    pub fn set_socket_watchlist(
        &self,
        sid: Sid,
        ids: &[Arc<str>],
        offer: impl FnMut(&S, &RawValue) -> Offer,
    ) -> Option<WatchOutcome<S>> {
        let mut index = lock(&self.watch);
        let id = *index.by_sid.get(&sid)?;
        let list = index.entries(&self.read(), ids);
        let done = index.relist_each(&[id], &list, u32::MAX, offer);
        drop(index);
        self.owe_round(done.behind);
        Some(done)
    }

    /// Takes socket `sid` out of the watch index, if it is there.
    pub(super) fn unwatch(&self, sid: Sid) {
        if self.watching.load(Ordering::Acquire) {
            lock(&self.watch).remove(sid);
        }
    }

    /// Gives socket `old`'s watchlist to `new` (a recovered session's reconnect).
    pub(super) fn rewatch(&self, old: Sid, new: &S) {
        if !self.watching.load(Ordering::Acquire) {
            return;
        }
        let mut index = lock(&self.watch);
        let Some(id) = index.by_sid.remove(&old) else {
            return;
        };
        index.by_sid.insert(new.sid(), id);
        if let Some(w) = index.sockets.get_mut(id) {
            w.socket = new.clone();
        }
    }

    /// Offers every watcher of a user whose state changed since the last watch round one
    /// change set with all of its watched users that changed, and sockets owed a whole list
    /// that list. Work is proportional to the watchers of the users that changed.
    pub fn watch_round(
        &self,
        max_refused: u32,
        mut offer: impl FnMut(&S, Frame, &RawValue) -> Offer,
    ) -> WatchOutcome<S> {
        let mut done = WatchOutcome::default();
        if !self.watching.load(Ordering::Acquire) {
            return done;
        }
        let latest = std::mem::take(&mut lock(&self.read().latest).by_user);
        let mut index = lock(&self.watch);
        // Owed before this round; a socket refusing this round's change set is owed next.
        let owed = std::mem::take(&mut index.resync);
        for (id, changed) in index.advance(latest) {
            let Some(socket) = index
                .sockets
                .get(id)
                .filter(|w| !w.resync)
                .map(|w| w.socket.clone())
            else {
                continue;
            };
            let json = index.changes_json(&changed);
            let outcome = offer(&socket, Frame::Changes, &json);
            done.record(
                &mut index,
                id,
                (Frame::Changes, &json),
                outcome,
                max_refused,
            );
        }
        for id in owed {
            let Some((socket, json)) = index
                .sockets
                .get(id)
                .filter(|w| w.resync)
                .map(|w| (w.socket.clone(), index.online_json(&w.list)))
            else {
                continue;
            };
            if let Some(w) = index.sockets.get_mut(id) {
                w.resync = false;
            }
            let outcome = offer(&socket, Frame::List, &json);
            done.record(&mut index, id, (Frame::List, &json), outcome, max_refused);
        }
        done
    }

    /// Whether some socket is owed a whole list: the next round must run even without a
    /// change.
    fn owe_round(&self, behind: u32) {
        if behind > 0 {
            self.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::presence::Holding;

    /// What a `watch` client holds: the set it rebuilt from the frames it took.
    #[derive(Default)]
    struct Client {
        set: BTreeSet<String>,
        frames: Vec<(Frame, String)>,
    }

    impl Client {
        fn apply(&mut self, frame: Frame, json: &RawValue) -> Offer {
            self.frames.push((frame, json.get().to_string()));
            match frame {
                Frame::List => self.set = serde_json::from_str(json.get()).unwrap(),
                Frame::Changes => {
                    let c: serde_json::Value = serde_json::from_str(json.get()).unwrap();
                    for id in c["online"].as_array().unwrap() {
                        assert!(self.set.insert(id.as_str().unwrap().to_string()));
                    }
                    for id in c["offline"].as_array().unwrap() {
                        assert!(self.set.remove(id.as_str().unwrap()));
                    }
                }
            }
            Offer::Taken
        }
    }

    fn ids(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|&n| Arc::from(n)).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_watcher_hears_only_of_its_users_and_a_refusal_is_made_good_by_a_list() {
        let p = Presence::<Sid>::new();
        p.connect("a", Sid::new(), 16);
        let w = Sid::new();
        p.connect_with("w", w, 16, PresenceMode::Watch);
        let mut c = Client::default();
        p.watch_join(&Arc::from("w"), w, &ids(&["a", "b", "c"]), |_, json| {
            c.apply(Frame::List, json)
        });
        assert_eq!(c.set, set(&["a"]));
        // b comes, x (unwatched) comes, a opens a second tab and closes the first.
        let b = Sid::new();
        p.connect("b", b, 16);
        p.connect("x", Sid::new(), 16);
        p.connect("a", Sid::new(), 16);
        let round = p.watch_round(3, |_, f, json| c.apply(f, json));
        assert_eq!((round.changes.offered, round.lists.offered), (1, 0));
        assert_eq!(
            c.frames.last().unwrap().1,
            r#"{"online":["b"],"offline":[]}"#
        );
        // c is held by another node: online; b leaves; the watcher refuses that change.
        p.set_remote(
            "c",
            1,
            Holding {
                sockets: 1,
                since_ms: 1,
            },
        );
        p.disconnect("b", b);
        let round = p.watch_round(3, |_, _, _| Offer::Full);
        assert_eq!(round.behind, 1);
        p.set_remote("c", 1, Holding::default());
        let round = p.watch_round(3, |_, f, json| c.apply(f, json));
        assert_eq!((round.changes.offered, round.lists.offered), (0, 1));
        assert_eq!(c.set, set(&["a"]));
        // Nothing changed: nothing is sent.
        let round = p.watch_round(3, |_, f, json| c.apply(f, json));
        assert_eq!(round.cost(1), 0);
    }

    #[test]
    fn a_tab_joining_after_a_change_is_not_told_it_again() {
        let p = Presence::<Sid>::new();
        let first = Sid::new();
        p.watch_join(&Arc::from("w"), first, &ids(&["a"]), |_, _| Offer::Taken);
        p.connect("b", Sid::new(), 16); // recorded for the next round
        let mut c = Client::default();
        p.watch_join(&Arc::from("v"), Sid::new(), &ids(&["b"]), |_, json| {
            c.apply(Frame::List, json)
        });
        assert_eq!(c.set, set(&["b"]));
        let round = p.watch_round(3, |_, f, json| c.apply(f, json));
        assert_eq!(round.cost(1), 0, "{:?}", c.frames);
    }

    #[test]
    fn a_new_watchlist_sends_only_the_difference_and_moves_the_index() {
        let p = Presence::<Sid>::new();
        for u in ["a", "b", "c"] {
            p.connect(u, Sid::new(), 16);
        }
        let (t1, t2) = (Sid::new(), Sid::new());
        let mut c1 = Client::default();
        let mut c2 = Client::default();
        for (sid, c) in [(t1, &mut c1), (t2, &mut c2)] {
            p.connect_with("w", sid, 16, PresenceMode::Watch);
            p.watch_join(&Arc::from("w"), sid, &ids(&["a", "b", "z"]), |_, json| {
                c.apply(Frame::List, json)
            });
        }
        p.connect("q", Sid::new(), 16); // a tab of another mode is not counted
        let (n, done) = p.set_watchlist("w", &ids(&["b", "c", "y"]), 3, |s, json| {
            let c = if *s == t1 { &mut c1 } else { &mut c2 };
            c.apply(Frame::Changes, json)
        });
        assert_eq!((n, done.changes.offered), (2, 2));
        assert_eq!(
            c1.frames.last().unwrap().1,
            r#"{"online":["c"],"offline":["a"]}"#
        );
        assert_eq!(c2.set, set(&["b", "c"]));
        // a is no longer watched: its change reaches nobody; c's reaches both tabs.
        p.take_user("a");
        p.take_user("c");
        p.connect("y", Sid::new(), 16);
        let round = p.watch_round(3, |s, f, json| {
            let c = if *s == t1 { &mut c1 } else { &mut c2 };
            c.apply(f, json)
        });
        assert_eq!(round.changes.offered, 2);
        assert_eq!(
            c1.frames.last().unwrap().1,
            r#"{"online":["y"],"offline":["c"]}"#
        );
        // A tab that leaves leaves the index; the last watcher of a user takes its entry.
        p.disconnect("w", t1);
        p.disconnect("w", t2);
        let index = lock(&p.watch);
        assert!(index.by_sid.is_empty() && index.by_user.is_empty());
    }
}
