//! `WatchPresence`: a backend follows who comes online and goes offline, cluster-wide.
//!
//! Every watcher reads the registry's one change channel (local connects and disconnects and
//! the replica's changes from other nodes, in the order the registry applied them). The
//! channel is a fixed ring shared by all watchers: a watcher that falls more than its size
//! behind is ended with a clear status instead of being buffered for, so a stalled backend
//! costs nothing but its stream.

use std::sync::Arc;

use tokio::sync::{broadcast::error::RecvError, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
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

/// The open watches, bounded by `--max-presence-watchers`.
pub struct Watchers {
    slots: Arc<Semaphore>,
    max: usize,
    buffer: usize,
}

impl Watchers {
    /// At most `max` watches, each allowed to fall `buffer` changes behind.
    pub fn new(max: usize, buffer: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            buffer,
        }
    }

    /// Opens a watch: the receiving end of its items. It ends with an error item when the
    /// watcher fell behind or `draining` is cancelled, and quietly when the caller goes away.
    pub fn open(
        &self,
        draining: CancellationToken,
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
        snapshot: bool,
    ) -> Result<mpsc::Receiver<Result<WatchItem, GatewayError>>, GatewayError> {
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::TooManyWatchers(self.max))?;
        Metrics::add(&metrics.watchers_opened, 1);
        metrics.watchers.inc();
        let (tx, rx) = mpsc::channel(WINDOW);
        let watch = Watch {
            draining,
            presence,
            metrics,
            buffer: self.buffer,
            tx,
            _permit: permit,
        };
        tokio::spawn(watch.run(snapshot));
        Ok(rx)
    }
}

struct Watch {
    draining: CancellationToken,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    buffer: usize,
    tx: mpsc::Sender<Result<WatchItem, GatewayError>>,
    _permit: OwnedSemaphorePermit,
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
