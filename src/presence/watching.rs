//! What the registry does for `watch` sockets, on the index of `watch.rs`: joining, a new
//! watchlist (`SetWatchlist`, `renewToken`), leaving, a recovered session, and the watch
//! round that offers each watcher of a changed user its change set (or its whole list when
//! it is owed a resync).

use crate::sync::lock;
use std::sync::{atomic::Ordering, Arc};

use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::{
    registry::Presence,
    types::{Frame, Offer, PresenceMode, SocketHandle},
    watch::{WatchOutcome, Watcher},
};

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
            index.entries(|id| users.is_online(id), users.version, ids)
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
            (
                sids,
                index.entries(|id| users.is_online(id), users.version, ids),
            )
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
        let list = {
            let users = self.read();
            index.entries(|id| users.is_online(id), users.version, ids)
        };
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
