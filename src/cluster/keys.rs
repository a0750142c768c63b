//! Idempotency keys on a single node: each key's first answer, for a window, in bounded memory.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
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
}

/// Keys remembered for `window`, at most `max` of them (the oldest go first).
pub struct Keys {
    window: Duration,
    max: usize,
    inner: Mutex<Inner>,
}

impl Keys {
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`super::Cluster::claim`] on one node.
    pub async fn claim(&self, key: &str) -> Claim {
        loop {
            let mut waiting = {
                let mut inner = self.lock();
                let now = Instant::now();
                while inner
                    .order
                    .front()
                    .is_some_and(|(since, _)| *since + self.window <= now)
                {
                    inner.forget_front();
                }
                match inner.entries.get(key).map(|e| &e.state) {
                    Some(State::Done(sent)) => return Claim::Replay(*sent),
                    Some(State::InFlight(tx)) => tx.subscribe(),
                    None => {
                        let (tx, _) = watch::channel(None);
                        inner.entries.insert(
                            key.to_owned(),
                            Entry {
                                since: now,
                                state: State::InFlight(tx),
                            },
                        );
                        inner.order.push_back((now, key.to_owned()));
                        while inner.entries.len() > self.max || inner.order.len() > 2 * self.max {
                            inner.forget_front();
                        }
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
    pub fn settle(&self, key: &str, answer: Option<Sent>) {
        let mut inner = self.lock();
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

    #[tokio::test]
    async fn the_oldest_keys_go_first_at_the_limit() {
        let keys = Keys::new(Duration::from_secs(60), 2);
        for k in ["a", "b", "c"] {
            assert!(matches!(keys.claim(k).await, Claim::Owner));
            keys.settle(
                k,
                Some(Sent {
                    delivered: 1,
                    ..Sent::default()
                }),
            );
        }
        assert!(matches!(keys.claim("c").await, Claim::Replay(_)));
        assert!(matches!(keys.claim("a").await, Claim::Owner));
        assert!(keys.lock().entries.len() <= 2);
    }
}
