//! Leases: this node renews its own every lease/5 on a thread of its own, and sweeps the
//! nodes whose lease is gone, so their users leave every replica within about the lease.
//!
//! Two faults make a lease lie. Redis paused longer than the lease expires every lease at
//! once when it resumes, although no node died: a node sweeps others only after a whole
//! lease of renewals without a gap, which no node has right after such a pause, so the
//! nodes renew instead of sweeping each other. A node frozen past its lease (SIGSTOP, a VM
//! paused) is swept for good reason, and wakes up holding sockets the cluster forgot and
//! having missed what was decided about their users: the sweep leaves a mark, and the node
//! that finds it fences itself (see [`Inner::fence`]).

use std::{
    sync::{atomic::Ordering, Arc, LazyLock},
    time::{Duration, Instant},
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface, PubsubInterface, SetsInterface},
};

use super::{messages::PresenceEvent, names::*, node::Inner};
use crate::cluster::script::Script;
/// Sweeps a node whose lease is gone, marking it swept. KEYS: users hash, lease, lock, swept
/// mark. ARGV: lock ms. Returns the swept epoch, or nil when the node is alive or another
/// node is sweeping it.
pub(super) const SWEEP_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return false end
local e = redis.call('HGET', KEYS[1], '\0e')
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[4], '1', 'PX', 86400000)
return e or '0'
"#;
pub(super) static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(SWEEP_SCRIPT));

/// Renews this node's lease. KEYS: lease, swept mark. ARGV: lease ms. Returns 1 (renewed),
/// 0 (the lease had expired) or -1 (another node swept this one).
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('SET', KEYS[1], '1', 'XX', 'PX', ARGV[1]) then return 1 end
return 0
"#,
    )
});

/// The reason fenced sockets are given (`disconnectReason`) before their connection closes.
const FENCE_REASON: &str =
    "this gateway node was cut off from the cluster; reconnecting to catch up";

/// Renewals in a row, without a gap, since when: only a node that has renewed steadily for a
/// whole lease trusts that a missing lease means a dead node.
#[derive(Default)]
pub(super) struct Streak {
    since: Option<Instant>,
    last: Option<Instant>,
}

impl Streak {
    /// A renewal that succeeded at `at`; a gap over half the lease since the last one (Redis
    /// paused or slow, this node frozen) starts a new streak.
    fn renewed(&mut self, at: Instant, lease: Duration) {
        if self.last.is_none_or(|last| at - last > lease / 2) {
            self.since = Some(at);
        }
        self.last = Some(at);
    }

    fn broken(&mut self) {
        *self = Self::default();
    }

    fn may_sweep(&self, now: Instant, lease: Duration) -> bool {
        self.since.is_some_and(|since| now - since >= lease)
    }
}

impl Inner {
    /// Renews this node's lease and sweeps nodes whose lease is gone, every lease/5. Runs on a
    /// thread of its own with its own Redis connection: on the gateway's runtime, a node busy
    /// with a presence fan-out to thousands of sockets on a loaded machine renewed late (its
    /// timer and each round trip queued behind thousands of tasks), was swept while alive,
    /// and its users left every replica and came back with its full republish, over and over.
    pub(super) async fn keep_lease(self: Arc<Self>) {
        let _connection = self.lease_client.connect();
        let mut tick = tokio::time::interval(self.lease / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut streak = Streak::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop_lease.notified() => break,
            }
            if self.leaving.load(Ordering::SeqCst) {
                break;
            }
            self.check_up();
            if let Err(e) = self.renew_and_sweep(&mut streak).await {
                streak.broken();
                tracing::debug!(error = %e, "lease renewal failed");
            }
            self.check_up();
        }
        let _ = self.lease_client.quit().await;
    }

    pub(super) async fn renew_and_sweep(
        &self,
        streak: &mut Streak,
    ) -> Result<(), fred::error::Error> {
        let node = &*self.node_id;
        let ms = self.lease.as_millis() as i64;
        let client = &self.lease_client;
        let renewed: i64 = RENEW
            .run(
                client,
                &[lease_key(node), swept_key(node)],
                &[ms.to_string()],
            )
            .await?;
        if self.leaving.load(Ordering::SeqCst) {
            return Ok(()); // Left meanwhile: nothing to republish or sweep.
        }
        match renewed {
            1 => streak.renewed(Instant::now(), self.lease),
            -1 => {
                streak.broken();
                return self.fence(client).await;
            }
            _ => {
                streak.broken();
                tracing::warn!("this node's lease had expired: republishing its presence");
                self.needs_full.store(true, Ordering::SeqCst);
                self.dirty.wake.notify_one();
                return Ok(());
            }
        }
        if !streak.may_sweep(Instant::now(), self.lease) {
            return Ok(());
        }
        let _: i64 = client.sadd(NODES_KEY, node).await?;
        let members: Vec<String> = client.smembers(NODES_KEY).await?;
        for other in members.iter().filter(|n| **n != *node) {
            let swept: Option<String> = SWEEP
                .run(
                    client,
                    &[
                        users_key(other),
                        lease_key(other),
                        lock_key(other),
                        swept_key(other),
                    ],
                    &[ms.to_string()],
                )
                .await?;
            let Some(epoch) = swept else { continue };
            let epoch = epoch.parse().unwrap_or(0);
            tracing::info!(node = other, "swept a node whose lease expired");
            let _: i64 = client.srem(NODES_KEY, other.as_str()).await?;
            let gone = PresenceEvent::gone(other.clone(), epoch);
            let payload = serde_json::to_string(&gone).unwrap_or_default();
            let _: i64 = client.publish(PRESENCE_CHANNEL, payload).await?;
        }
        Ok(())
    }

    /// This node was swept while alive: the others dropped its users, answered sends to them
    /// as if they were offline (kept mail for them) and forgot disconnects. Its sockets are
    /// closed, each told why, so their clients reconnect (here or elsewhere) as new connects
    /// that take their mail and pass the checks a connect passes; then the mark goes and the
    /// node republishes, and serves the reconnecting clients as usual.
    async fn fence(&self, client: &Client) -> Result<(), fred::error::Error> {
        let closed = self
            .sockets
            .get()
            .map_or(0, |sockets| sockets.fence(FENCE_REASON));
        self.fenced.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            closed,
            "this node was swept while alive (frozen or cut off past its lease): its sockets were closed to reconnect"
        );
        let _: i64 = client.del(swept_key(&self.node_id)).await?;
        self.needs_full.store(true, Ordering::SeqCst);
        self.dirty.wake.notify_one();
        Ok(())
    }
}
