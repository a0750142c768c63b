//! Idempotency keys on a single node: each key's first answer, for a window, in bounded memory,
//! each caller's apart from every other's.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use super::engine::Claim;
use crate::outcome::Sent;

enum State {
    /// The first call is delivering; later ones wait for its answer.
    InFlight(watch::Sender<Option<Sent>>),
    Done(Sent),
}

struct Entry {
    since: Instant,
    state: State,
}

/// One caller's keys.
#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Keys by claim time, oldest first; an entry whose `since` differs is stale.
    order: VecDeque<(Instant, String)>,
}

impl Inner {
    fn forget_front(&mut self) {
        if let Some((since, key)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.since == since) {
                self.entries.remove(&key);
            }
        }
    }

    /// Forgets the keys claimed `window` ago or earlier.
    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(since, _)| *since + window <= now)
        {
            self.forget_front();
        }
    }

    /// Claims `key` (known to be free) now, then forgets the oldest beyond `max`.
    fn insert(&mut self, key: &str, now: Instant, max: usize) {
        let (tx, _) = watch::channel(None);
        self.entries.insert(
            key.to_owned(),
            Entry {
                since: now,
                state: State::InFlight(tx),
            },
        );
        self.order.push_back((now, key.to_owned()));
        while self.entries.len() > max || self.order.len() > 2 * max {
            self.forget_front();
        }
    }
}

/// Keys remembered for `window`, at most `max` of them per caller (its oldest go first).
/// A map of callers: the keys file names them, so they are few.
pub struct Keys {
    window: Duration,
    max: usize,
    callers: Mutex<HashMap<Arc<str>, Inner>>,
}

impl Keys {
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            callers: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Inner>> {
        self.callers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`super::Cluster::claim`] on one node.
    pub async fn claim(&self, caller: &str, key: &str) -> Claim {
        loop {
            let mut waiting = {
                let mut callers = self.lock();
                let inner = match callers.get_mut(caller) {
                    Some(inner) => inner,
                    None => callers.entry(Arc::from(caller)).or_default(),
                };
                let now = Instant::now();
                inner.expire(now, self.window);
                match inner.entries.get(key).map(|e| &e.state) {
                    Some(State::Done(sent)) => return Claim::Replay(*sent),
                    Some(State::InFlight(tx)) => tx.subscribe(),
                    None => {
                        inner.insert(key, now, self.max);
                        return Claim::Owner;
                    }
                }
            };
            // The first call answered, or failed (its sender dropped): then claim afresh.
            let answer = waiting.wait_for(Option::is_some).await.map(|sent| *sent);
            if let Ok(Some(sent)) = answer {
                return Claim::Replay(sent);
            }
        }
    }

    /// [`super::Cluster::settle`] on one node.
    pub fn settle(&self, caller: &str, key: &str, answer: Option<Sent>) {
        let mut callers = self.lock();
        let Some(inner) = callers.get_mut(caller) else {
            return;
        };
        match answer {
            Some(sent) => {
                if let Some(entry) = inner.entries.get_mut(key) {
                    if let State::InFlight(tx) = &entry.state {
                        tx.send_replace(Some(sent));
                    }
                    entry.state = State::Done(sent);
                }
            }
            None => {
                inner.entries.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERED: Option<Sent> = Some(Sent {
        delivered: 1,
        pending: 0,
        partial: false,
        acked: 0,
        queued: false,
    });

    #[tokio::test]
    async fn the_oldest_keys_go_first_at_the_limit() {
        let keys = Keys::new(Duration::from_secs(60), 2);
        let caller = "anonymous";
        for k in ["a", "b", "c"] {
            assert!(matches!(keys.claim(caller, k).await, Claim::Owner));
            keys.settle(caller, k, DELIVERED);
        }
        assert!(matches!(keys.claim(caller, "c").await, Claim::Replay(_)));
        assert!(matches!(keys.claim(caller, "a").await, Claim::Owner));
        assert!(keys.lock()[caller].entries.len() <= 2);
    }

    #[tokio::test]
    async fn each_caller_has_its_own_keys_and_bound() {
        let keys = Keys::new(Duration::from_secs(60), 2);
        let (orders, analytics) = ("orders", "analytics");
        assert!(matches!(keys.claim(analytics, "k").await, Claim::Owner));
        keys.settle(analytics, "k", DELIVERED);
        assert!(matches!(keys.claim(orders, "k").await, Claim::Owner));
        keys.settle(orders, "k", DELIVERED);
        // A flood of analytics' keys forgets its own oldest, not orders' key.
        for k in ["x", "y", "z"] {
            assert!(matches!(keys.claim(analytics, k).await, Claim::Owner));
            keys.settle(analytics, k, DELIVERED);
        }
        assert!(matches!(keys.claim(orders, "k").await, Claim::Replay(_)));
        assert!(matches!(keys.claim(analytics, "k").await, Claim::Owner));
    }
}
