//! Offering a message to sockets: one user's (a delivery) or every local one (a broadcast),
//! counting refusals toward cutting a slow reader off.

use crate::sync::lock;
use std::sync::Arc;

use super::{
    registry::{Presence, Slot, Sockets},
    types::{Delivered, NodeIdx, Offer, SocketHandle},
};

impl<S: SocketHandle> Delivered<S> {
    /// Records what one socket did with an offer; both messages and online lists count
    /// toward the refusals in a row that cut a socket off.
    fn record(&mut self, user: &Arc<str>, slot: &mut Slot<S>, offer: Offer, max_refused: u32) {
        match offer {
            Offer::Taken => {
                self.accepted += 1;
                slot.refused_in_row = 0;
            }
            Offer::Kept => {
                self.pending += 1;
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

impl<S: SocketHandle> Presence<S> {
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

    /// This node's sockets of `user` (their handles, to hand kept messages over one socket at
    /// a time) and the other nodes holding the user.
    pub fn holders(&self, user: &str) -> (Vec<S>, Vec<NodeIdx>) {
        let users = self.read();
        let remote = users
            .remote
            .get(user)
            .map(|holders| holders.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        let Some(sockets) = users.by_id.get(user).cloned() else {
            return (Vec::new(), remote);
        };
        drop(users);
        let local = lock(&sockets).iter().map(|s| s.socket.clone()).collect();
        (local, remote)
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
    pub(super) fn offer_each(
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
}

#[cfg(test)]
mod tests {
    use socketioxide::socket::Sid;

    use super::*;

    #[test]
    fn a_socket_refusing_too_often_is_cut_off() {
        let p = Presence::<Sid>::new();
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
}
