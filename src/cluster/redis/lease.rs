//! Leases: this node renews its own every lease/5 on a thread of its own, and sweeps the
//! nodes whose lease is gone, so their users leave every replica within about the lease.

use std::sync::{atomic::Ordering, Arc, LazyLock};

use fred::{
    interfaces::{ClientLike, KeysInterface, PubsubInterface, SetsInterface},
    types::{Expiration, SetOptions},
};

use super::{messages::PresenceEvent, names::*, node::Inner};
use crate::cluster::script::Script;
/// Sweeps a node whose lease is gone. KEYS: users hash, lease, lock. ARGV: lock ms.
/// Returns the swept epoch, or nil when the node is alive or another node is sweeping it.
pub(super) const SWEEP_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then return false end
local e = redis.call('HGET', KEYS[1], '\0e')
redis.call('DEL', KEYS[1])
return e or '0'
"#;
pub(super) static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(SWEEP_SCRIPT));

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
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop_lease.notified() => break,
            }
            if self.leaving.load(Ordering::SeqCst) {
                break;
            }
            self.check_up();
            if let Err(e) = self.renew_and_sweep().await {
                tracing::debug!(error = %e, "lease renewal failed");
            }
            self.check_up();
        }
        let _ = self.lease_client.quit().await;
    }

    pub(super) async fn renew_and_sweep(&self) -> Result<(), fred::error::Error> {
        let node = &*self.node_id;
        let ms = self.lease.as_millis() as i64;
        let client = &self.lease_client;
        let renewed: Option<String> = client
            .set(
                lease_key(node),
                "1",
                Some(Expiration::PX(ms)),
                Some(SetOptions::XX),
                false,
            )
            .await?;
        if self.leaving.load(Ordering::SeqCst) {
            return Ok(()); // Left meanwhile: nothing to republish or sweep.
        }
        if renewed.is_none() {
            tracing::warn!("this node's lease had expired: republishing its presence");
            self.needs_full.store(true, Ordering::SeqCst);
            self.dirty.wake.notify_one();
        }
        let _: i64 = client.sadd(NODES_KEY, node).await?;
        let members: Vec<String> = client.smembers(NODES_KEY).await?;
        for other in members.iter().filter(|n| **n != *node) {
            let swept: Option<String> = SWEEP
                .run(
                    client,
                    &[users_key(other), lease_key(other), lock_key(other)],
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
}
