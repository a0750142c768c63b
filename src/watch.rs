//! `WatchPresence`: a backend follows who comes online and goes offline, cluster-wide.
//!
//! Every watcher reads the registry's one change channel (local connects and disconnects and
//! the replica's changes from other nodes, in the order the registry applied them). The
//! channel is a fixed ring shared by all watchers: a watcher that falls more than its size
//! behind is ended with a clear status instead of being buffered for, so a stalled backend
//! costs nothing but its stream. Each caller holds at most its share of the slots, so one
//! caller's idle streams cannot lock the others out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{broadcast::error::RecvError, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    caller::Caller,
    error::GatewayError,
    metrics::Metrics,
    presence::{Change, Presence},
};

/// Users per snapshot page.
pub const SNAPSHOT_PAGE: usize = 1000;

/// Items a watch stream may have encoded but not yet sent (the rest wait in the ring).
const WINDOW: usize = 16;

/// One item of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A page of the users online when the watch opened; `seq` is the last change before it.
    Snapshot {
        /// Online users, sorted by id.
        user_ids: Vec<String>,
        /// The snapshot's last page (possibly empty).
        last: bool,
        /// The change sequence number the snapshot is taken at.
        seq: u64,
    },
    /// A user came online or went offline, after the snapshot.
    Change(Change),
}

/// Watches open per caller.
type Held = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// The open watches, bounded by `--max-presence-watchers` in all and per caller.
pub struct Watchers {
    slots: Arc<Semaphore>,
    max: usize,
    per_caller: usize,
    held: Held,
    buffer: usize,
}

impl Watchers {
    /// At most `max` watches, `per_caller` by default for each caller, each allowed to fall
    /// `buffer` changes behind.
    pub fn new(max: usize, per_caller: usize, buffer: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_caller,
            held: Held::default(),
            buffer,
        }
    }

    /// Opens a watch for `caller`: the receiving end of its items. It ends with an error item
    /// when the watcher fell behind or `draining` is cancelled, and quietly when the caller
    /// goes away.
    pub fn open(
        &self,
        caller: &Caller,
        draining: CancellationToken,
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
        snapshot: bool,
    ) -> Result<mpsc::Receiver<Result<WatchItem, GatewayError>>, GatewayError> {
        let slot = self.take_slot(caller)?;
        Metrics::add(&metrics.watchers_opened, 1);
        metrics.watchers.inc();
        let (tx, rx) = mpsc::channel(WINDOW);
        let watch = Watch {
            draining,
            presence,
            metrics,
            buffer: self.buffer,
            tx,
            _slot: slot,
        };
        tokio::spawn(watch.run(snapshot));
        Ok(rx)
    }

    /// One of `caller`'s slots and one of all; refused when either is used up.
    fn take_slot(&self, caller: &Caller) -> Result<Slot, GatewayError> {
        let share = caller.shares.watchers.map_or(self.per_caller, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
        let mut held = lock(&self.held);
        if held.get(&caller.name).is_some_and(|open| *open >= share) {
            return Err(GatewayError::CallerWatchers {
                caller: caller.name.clone(),
                share,
            });
        }
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::TooManyWatchers(self.max))?;
        *held.entry(caller.name.clone()).or_default() += 1;
        Ok(Slot {
            held: self.held.clone(),
            caller: caller.name.clone(),
            _permit: permit,
        })
    }
}

fn lock(held: &Held) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, usize>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

/// A watch's slot, given back when the watch ends.
struct Slot {
    held: Held,
    caller: Arc<str>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(open) = held.get_mut(&self.caller) {
            *open -= 1;
            if *open == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

struct Watch {
    draining: CancellationToken,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    buffer: usize,
    tx: mpsc::Sender<Result<WatchItem, GatewayError>>,
    _slot: Slot,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.metrics.watchers.dec();
    }
}

impl Watch {
    async fn run(self, snapshot: bool) {
        // Subscribed before the snapshot is read: a change while the pages are read follows
        // them, so applying the changes in order over the pages gives the current state.
        let (mut changes, seq) = self.presence.watch();
        if snapshot && !self.send_snapshot(seq).await {
            return;
        }
        loop {
            let item = tokio::select! {
                biased;
                () = self.draining.cancelled() => Err(GatewayError::ShuttingDown),
                () = self.tx.closed() => return,
                change = changes.recv() => match change {
                    Ok(change) => Ok(WatchItem::Change(change)),
                    Err(RecvError::Lagged(missed)) => Err(GatewayError::WatcherBehind {
                        missed,
                        buffer: self.buffer,
                    }),
                    Err(RecvError::Closed) => return,
                },
            };
            let end = item.is_err();
            if let Err(e) = &item {
                tracing::info!(error = %e, "presence watch ended");
            }
            if self.tx.send(item).await.is_err() || end {
                return;
            }
        }
    }

    /// Sends the online users page by page (the last page, possibly empty, says so). False
    /// when the caller went away.
    async fn send_snapshot(&self, seq: u64) -> bool {
        let mut after: Option<String> = None;
        loop {
            let page = self.presence.page(after.as_deref(), SNAPSHOT_PAGE);
            after = page.user_ids.last().cloned();
            let item = WatchItem::Snapshot {
                user_ids: page.user_ids,
                last: !page.more,
                seq,
            };
            if self.tx.send(Ok(item)).await.is_err() {
                return false;
            }
            if !page.more {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{caller::Shares, cluster, config::Config};

    fn caller(name: &str, watchers: Option<u64>) -> Caller {
        Caller {
            shares: Shares {
                mailbox: None,
                watchers,
            },
            ..Caller::everything(name)
        }
    }

    #[tokio::test]
    async fn each_caller_holds_at_most_its_share_and_gets_it_back_when_a_watch_ends() {
        let config = Config::try_parse_from(["gw"]).unwrap();
        let presence = Arc::new(Presence::new());
        let metrics = Arc::new(Metrics::new(
            presence.clone(),
            Arc::new(cluster::Memory::new(&config)),
        ));
        let watchers = Watchers::new(4, 2, 16);
        let open = |caller: &Caller| {
            watchers.open(
                caller,
                CancellationToken::new(),
                presence.clone(),
                metrics.clone(),
                false,
            )
        };
        let (a, b, c) = (
            caller("a", None),
            caller("b", Some(1)),
            caller("c", Some(3)),
        );
        let first = open(&a).unwrap();
        let _second = open(&a).unwrap();
        let refused = open(&a).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "too many presence watchers for caller \"a\": its share of 2 are open (watchers= in the callers file, else --max-presence-watchers-per-caller); close one or retry later"
        );
        let _b = open(&b).unwrap();
        assert!(matches!(
            open(&b),
            Err(GatewayError::CallerWatchers { share: 1, .. })
        ));
        let _c = open(&c).unwrap();
        assert!(matches!(open(&c), Err(GatewayError::TooManyWatchers(4))));
        // The watch ends when its reader goes: its slot is a's again.
        drop(first);
        let reopened = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match open(&a) {
                    Ok(watch) => return watch,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            }
        })
        .await;
        assert!(reopened.is_ok(), "a's slot came back");
    }
}
