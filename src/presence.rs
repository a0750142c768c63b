//! The presence registry: which users are online, and through which sockets.
//!
//! A user may hold many sockets (tabs, devices) and is online while at least one is live.
//! Users are kept sorted so `ListOnline` pages by key without copying the whole set, and the
//! online list that `getOnlineUsers` carries is serialized at most once per change.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use serde_json::value::RawValue;
use socketioxide::socket::Sid;
use tokio::sync::Notify;

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

#[derive(Default)]
struct Users {
    by_id: BTreeMap<Arc<str>, Vec<Sid>>,
    /// Bumped whenever a user comes online or goes offline.
    version: u64,
}

/// Thread-safe registry of users and their sockets. Every method is short and synchronous:
/// no lock is held across an await.
pub struct Presence {
    users: RwLock<Users>,
    cached: Mutex<Option<OnlineList>>,
    changed: Notify,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    pub fn new() -> Self {
        Self {
            users: RwLock::new(Users::default()),
            cached: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Users> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Users> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, Option<OnlineList>> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new live socket of `user`.
    pub fn connect(&self, user: &str, sid: Sid) -> Transition {
        let mut users = self.write();
        let transition = match users.by_id.get_mut(user) {
            Some(sids) => {
                sids.push(sid);
                Transition::Unchanged
            }
            None => {
                users.by_id.insert(Arc::from(user), vec![sid]);
                users.version += 1;
                Transition::CameOnline
            }
        };
        drop(users);
        self.notify(transition);
        transition
    }

    /// Forgets a socket of `user`; unknown sockets are ignored.
    pub fn disconnect(&self, user: &str, sid: Sid) -> Transition {
        let mut users = self.write();
        let Some(sids) = users.by_id.get_mut(user) else {
            return Transition::Unchanged;
        };
        sids.retain(|s| *s != sid);
        let transition = if sids.is_empty() {
            users.by_id.remove(user);
            users.version += 1;
            Transition::WentOffline
        } else {
            Transition::Unchanged
        };
        drop(users);
        self.notify(transition);
        transition
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

    /// Live sockets of `user`, oldest first.
    pub fn sockets(&self, user: &str) -> Vec<Sid> {
        self.read().by_id.get(user).cloned().unwrap_or_default()
    }

    /// Number of live sockets of `user`.
    pub fn socket_count(&self, user: &str) -> usize {
        self.read().by_id.get(user).map_or(0, Vec::len)
    }

    /// Number of online users.
    pub fn online_count(&self) -> usize {
        self.read().by_id.len()
    }

    /// Up to `limit` users sorting strictly after `after`. Paging by key means a user that
    /// stays online is never skipped and none is returned twice, whatever comes and goes.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Page {
        let users = self.read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut iter = users
            .by_id
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(id, _)| id);
        let user_ids: Vec<String> = iter.by_ref().take(limit).map(|id| id.to_string()).collect();
        Page {
            more: iter.next().is_some(),
            user_ids,
            total: users.by_id.len(),
        }
    }

    /// The current online list as JSON, rebuilt only when the online set changed.
    pub fn online_list(&self) -> OnlineList {
        let users = self.read();
        let mut cache = self.cache();
        if let Some(list) = cache.as_ref().filter(|l| l.version == users.version) {
            return list.clone();
        }
        let ids: Vec<&str> = users.by_id.keys().map(|k| &**k).collect();
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

    #[test]
    fn tabs_keep_a_user_online() {
        let p = Presence::new();
        let (a, b) = (Sid::new(), Sid::new());
        assert_eq!(p.connect("u", a), Transition::CameOnline);
        assert_eq!(p.connect("u", b), Transition::Unchanged);
        assert_eq!(p.socket_count("u"), 2);
        assert_eq!(p.disconnect("u", a), Transition::Unchanged);
        assert_eq!(p.online_count(), 1);
        assert_eq!(p.disconnect("u", b), Transition::WentOffline);
        assert_eq!(p.online_count(), 0);
        assert_eq!(p.disconnect("u", b), Transition::Unchanged);
    }

    #[test]
    fn pages_by_key() {
        let p = Presence::new();
        for u in ["c", "a", "b", "d"] {
            p.connect(u, Sid::new());
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
        let p = Presence::new();
        p.connect("b", Sid::new());
        p.connect("a", Sid::new());
        let l1 = p.online_list();
        assert_eq!(l1.json.get(), r#"["a","b"]"#);
        assert!(Arc::ptr_eq(&l1.json, &p.online_list().json));
        p.connect("c", Sid::new());
        assert_eq!(p.online_list().json.get(), r#"["a","b","c"]"#);
    }
}
