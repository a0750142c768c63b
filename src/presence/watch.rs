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

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::types::{Delivered, Frame, Offer, SocketHandle, Tally};

/// Each user's latest state (online?) and the registry version it took it at, since the last
/// watch round; recorded by the registry only once some socket watches.
#[derive(Default)]
pub(super) struct Latest {
    pub(super) on: bool,
    pub(super) by_user: HashMap<Arc<str>, (bool, u64)>,
}

/// Items addressed by a stable `u32`, their places reused.
pub(super) struct Slab<T> {
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
    pub(super) fn insert(&mut self, item: T) -> u32 {
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

    pub(super) fn remove(&mut self, i: u32) -> Option<T> {
        let item = self.items.get_mut(i as usize)?.take();
        if item.is_some() {
            self.free.push(i);
        }
        item
    }

    pub(super) fn get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.items.get_mut(i as usize)?.as_mut()
    }
}

/// A socket in `watch` mode.
pub(super) struct Watcher<S> {
    pub(super) socket: S,
    pub(super) user: Arc<str>,
    /// The watched users, as indexes into [`WatchIndex::watched`], sorted and distinct.
    pub(super) list: Vec<u32>,
    /// Its client lacks a step: it gets its whole list next round, no change set before.
    pub(super) resync: bool,
    pub(super) refused_in_row: u32,
}

/// A user some socket here watches.
pub(super) struct Watched {
    user: Arc<str>,
    online: bool,
    /// The registry version `online` was read at.
    version: u64,
    /// Its watchers, as indexes into [`WatchIndex::sockets`].
    by: HashSet<u32>,
}

/// The watchlists of this node's `watch` sockets, both ways.
pub(super) struct WatchIndex<S> {
    pub(super) sockets: Slab<Watcher<S>>,
    pub(super) by_sid: HashMap<Sid, u32>,
    watched: Slab<Watched>,
    pub(super) by_user: HashMap<Arc<str>, u32>,
    /// Sockets owed a whole list (those whose `resync` is still set when the round comes).
    pub(super) resync: Vec<u32>,
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
    pub(super) fn record(
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
    /// The index entries of `ids` (sorted, distinct), a new one read as `is_online` says at
    /// registry `version`.
    pub(super) fn entries(
        &mut self,
        is_online: impl Fn(&str) -> bool,
        version: u64,
        ids: &[Arc<str>],
    ) -> Vec<u32> {
        let mut list: Vec<u32> = ids
            .iter()
            .map(|id| match self.by_user.get(id) {
                Some(&w) => w,
                None => {
                    let w = self.watched.insert(Watched {
                        user: id.clone(),
                        online: is_online(id),
                        version,
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
    pub(super) fn prune(&mut self, list: &[u32]) {
        for &w in list {
            if self.watched.get(w).is_some_and(|e| e.by.is_empty()) {
                if let Some(entry) = self.watched.remove(w) {
                    self.by_user.remove(&entry.user);
                }
            }
        }
    }

    pub(super) fn name(&self, w: u32) -> &str {
        self.watched.get(w).map_or("", |e| &e.user)
    }

    pub(super) fn online(&self, w: u32) -> bool {
        self.watched.get(w).is_some_and(|e| e.online)
    }

    /// `getOnlineUsers` for `list`: the watched users online, sorted.
    pub(super) fn online_json(&self, list: &[u32]) -> Box<RawValue> {
        let mut ids: Vec<&str> = list
            .iter()
            .filter(|&&w| self.online(w))
            .map(|&w| self.name(w))
            .collect();
        ids.sort_unstable();
        serde_json::value::to_raw_value(&ids).expect("a list of strings serializes")
    }

    /// `onlineUsersChanged` for the entries in `changed`, each filed by its current state.
    pub(super) fn changes_json(&self, changed: &[u32]) -> Box<RawValue> {
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
    pub(super) fn remove(&mut self, sid: Sid) {
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
    pub(super) fn relist(&mut self, id: u32, list: Vec<u32>) -> Option<Box<RawValue>> {
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
    pub(super) fn relist_each(
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
    pub(super) fn link(&mut self, id: u32, entries: &[u32]) {
        for &e in entries {
            if let Some(entry) = self.watched.get_mut(e) {
                entry.by.insert(id);
            }
        }
    }

    /// Moves each watched user in `latest` to its latest state; returns, for each watcher of
    /// a user whose state changed, those users.
    pub(super) fn advance(
        &mut self,
        latest: HashMap<Arc<str>, (bool, u64)>,
    ) -> HashMap<u32, Vec<u32>> {
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
