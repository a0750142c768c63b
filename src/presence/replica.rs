//! The replica of the other nodes' presence: which nodes hold a user, with how many sockets,
//! so the online list, lookups and "who else must be asked" are answered locally.

use crate::sync::lock;
use std::sync::Arc;

use super::{
    registry::{Presence, Users},
    types::{Holding, NodeIdx, SocketHandle, UserPresence},
};

impl<S: SocketHandle> Presence<S> {
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
}

#[cfg(test)]
mod tests {
    use socketioxide::socket::Sid;

    use super::*;
    use crate::presence::{unix_ms, Offer};

    fn held(sockets: u32, since_ms: u64) -> Holding {
        Holding { sockets, since_ms }
    }

    #[test]
    fn lookup_adds_up_nodes_and_keeps_the_earliest_since() {
        let p = Presence::<Sid>::new();
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
    fn other_nodes_users_are_online_once_and_named_for_delivery() {
        let p = Presence::<Sid>::new();
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
