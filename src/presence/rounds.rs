//! Presence broadcast rounds: the online list, and for `changes` sockets the net change set
//! since the version their client holds.

use crate::sync::lock;
use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::socket::Sid;

use super::{
    registry::Presence,
    types::{Delivered, Frame, Offer, OnlineList, PresenceMode, SocketHandle, Tally},
};

/// One presence broadcast round: the online list at `list.version` and, for clients holding the
/// list at `base`, the net change that leads to it.
#[derive(Debug, Clone)]
pub struct Round {
    /// The version the previous round went out at: change sets lead from it.
    pub base: u64,
    /// The online list this round brings every socket to.
    pub list: OnlineList,
    /// `{"online":[...],"offline":[...]}` (sorted ids); `None` when nothing changed net.
    pub changes: Option<Arc<RawValue>>,
}

/// What a broadcast round did.
#[derive(Debug)]
pub struct RoundOutcome<S> {
    /// The sockets that refused too often or are gone, for the caller to settle.
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

impl<S: SocketHandle> Presence<S> {
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
                PresenceMode::Off | PresenceMode::Watch => return None,
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
            let took = matches!(outcome, Offer::Taken | Offer::Kept);
            behind += u32::from(outcome == Offer::Full);
            match slot.mode {
                PresenceMode::Changes => slot.holds = took.then_some(version),
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
        slot.holds = matches!(outcome, Offer::Taken | Offer::Kept).then_some(list.version);
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::presence::Holding;

    #[test]
    fn a_list_resend_reaches_only_the_sockets_that_missed_it() {
        let p = Presence::<Sid>::new();
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
        let on_node_1 = Holding {
            sockets: 1,
            since_ms: 5,
        };
        let p = Presence::<Sid>::new();
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
        p.set_remote("e", 1, on_node_1);
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
        let p = Presence::<Sid>::new();
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
        let p = Presence::<Sid>::new();
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
}
