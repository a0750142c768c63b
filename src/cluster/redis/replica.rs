//! Presence replication: this node's holdings written to its hash in batches (one script call
//! per batch, each published as an event), and the replica of every other node kept from
//! their events, reread in full at start, after a reconnect and on a gap.

use crate::sync::lock;
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{atomic::Ordering, Arc, LazyLock},
    time::{Duration, Instant},
};

use fred::interfaces::{HashesInterface, SetsInterface};

use super::{
    messages::{Held, PresenceEvent},
    names::*,
    node::{now_ms, Inner, Position, SWEPT},
};
use crate::{
    cluster::script::Script,
    presence::{Holding, NodeIdx},
};
/// Users per presence write: bounds the size of one script call and one event.
pub(super) const WRITE_BATCH: usize = 1000;
/// Hash fields holding the epoch and seq; user ids cannot contain control characters.
pub(super) const EPOCH_FIELD: &str = "\u{0}e";
pub(super) const SEQ_FIELD: &str = "\u{0}s";

/// Applies one presence write atomically: hash, seq, publish. KEYS: users hash, lease, swept
/// mark. ARGV: channel, event, full, epoch, seq, lease ms, then user/count pairs. Returns 0
/// when an incremental write finds the lease gone (it must republish in full), -1 when the
/// node was swept (nothing is written until the lease thread has fenced it).
pub(super) const WRITE_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[6])
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], '\0e', ARGV[4], '\0s', ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_SCRIPT));

/// A holding as stored in a node's users hash: "sockets:since_ms", or "0" for none (the
/// write script deletes the field then).
pub(super) fn holding_field(h: &Holding) -> String {
    match h.sockets {
        0 => "0".into(),
        n => format!("{n}:{}", h.since_ms),
    }
}

pub(super) fn parse_holding(field: &str) -> Option<Holding> {
    let (sockets, since) = field.split_once(':').unwrap_or((field, "0"));
    Some(Holding {
        sockets: sockets.parse().ok()?,
        since_ms: since.parse().ok()?,
    })
}

impl Inner {
    /// Applies another node's presence event to the replica.
    pub(super) fn apply(self: &Arc<Self>, event: PresenceEvent) {
        if *event.n == *self.node_id {
            return;
        }
        let mut nodes = lock(&self.nodes);
        let idx = nodes.idx(&event.n);
        let at = Position {
            epoch: event.e,
            seq: event.s,
        };
        let known = nodes.positions[idx as usize];
        if event.gone {
            if known.is_none_or(|k| k.epoch <= event.e) {
                nodes.positions[idx as usize] = Some(Position {
                    epoch: event.e,
                    seq: SWEPT,
                });
                self.presence().replace_node(idx, &[]);
                tracing::info!(node = event.n, "node left the cluster");
            }
            return;
        }
        if event.f {
            if known.is_none_or(|k| at > k) {
                nodes.positions[idx as usize] = Some(at);
                let holdings: Vec<(String, Holding)> =
                    event.u.into_iter().map(Held::into_parts).collect();
                self.presence().replace_node(idx, &holdings);
            }
            return;
        }
        match known {
            Some(k) if k.epoch == at.epoch && k.seq != SWEPT && at.seq == k.seq + 1 => {
                nodes.positions[idx as usize] = Some(at);
                let presence = self.presence();
                for (user, holding) in event.u.into_iter().map(Held::into_parts) {
                    presence.set_remote(&user, idx, holding);
                }
            }
            Some(k) if at <= k => {}
            _ => {
                // A missed event or a node first heard of mid-stream: reread it.
                drop(nodes);
                self.resync.notify_one();
            }
        }
    }

    /// Rereads every node's hash into the replica whenever asked (start, reconnect, gaps).
    pub(super) async fn resync_replica(self: Arc<Self>) {
        loop {
            self.resync.notified().await;
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            match self.resync_once().await {
                Ok(Some(recheck)) => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(recheck.into()).await;
                        inner.resync.notify_one();
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "presence resync failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.resync.notify_one();
                }
            }
        }
    }

    /// Rereads every node's hash. A node the replica holds that Redis does not (Redis
    /// restarted empty, or the node left while this one was not listening) is dropped only
    /// once it stayed missing for a lease: a live node republishes by then. Returns when to
    /// look again for such a node.
    pub(super) async fn resync_once(&self) -> Result<Option<Instant>, fred::error::Error> {
        let members: BTreeSet<String> = self.client.smembers(NODES_KEY).await?;
        let mut seen = HashSet::new();
        for name in members.iter().filter(|n| **n != *self.node_id) {
            let mut hash: HashMap<String, String> = self.client.hgetall(users_key(name)).await?;
            let field = |hash: &mut HashMap<String, String>, f: &str| {
                hash.remove(f).and_then(|v| v.parse::<u64>().ok())
            };
            let (Some(epoch), Some(seq)) =
                (field(&mut hash, EPOCH_FIELD), field(&mut hash, SEQ_FIELD))
            else {
                continue; // Not written yet, or swept: its own events or the sweep will tell.
            };
            let holdings: Vec<(String, Holding)> = hash
                .into_iter()
                .filter_map(|(u, v)| Some((u, parse_holding(&v)?)))
                .collect();
            let mut nodes = lock(&self.nodes);
            let idx = nodes.idx(name);
            seen.insert(idx);
            let at = Position { epoch, seq };
            if nodes.positions[idx as usize]
                .is_none_or(|k| at >= k || k.seq == SWEPT && at.epoch > k.epoch)
            {
                nodes.positions[idx as usize] = Some(at);
                self.presence().replace_node(idx, &holdings);
            }
        }
        let now = Instant::now();
        let mut nodes = lock(&self.nodes);
        let mut missing = lock(&self.missing);
        missing.retain(|idx, _| !seen.contains(idx));
        let mut recheck = None;
        for idx in 0..nodes.names.len() as NodeIdx {
            if seen.contains(&idx) || nodes.positions[idx as usize].is_none_or(|p| p.seq == SWEPT) {
                continue;
            }
            let since = *missing.entry(idx).or_insert(now);
            if now - since >= self.lease {
                missing.remove(&idx);
                nodes.positions[idx as usize] = None;
                self.presence().replace_node(idx, &[]);
            } else {
                let at = since + self.lease;
                recheck = Some(recheck.map_or(at, |r: Instant| r.min(at)));
            }
        }
        Ok(recheck)
    }

    /// Writes local presence changes in batches; a full republish when needed.
    pub(super) async fn write_presence(self: Arc<Self>) {
        let mut seq = 0;
        let mut epoch = 0;
        loop {
            let wake = self.dirty.wake.notified();
            if self.leaving.load(Ordering::SeqCst) {
                return;
            }
            let full = self.needs_full.swap(false, Ordering::SeqCst);
            let changed = std::mem::take(&mut *lock(&self.dirty.users));
            let round = self.dirty.started.fetch_add(1, Ordering::SeqCst) + 1;
            if !full && changed.is_empty() {
                self.dirty.finished.send_replace(round);
                wake.await;
                continue;
            }
            let presence = self.presence();
            let counts: Vec<(Arc<str>, Holding)> = if full {
                epoch = now_ms().max(self.last_epoch.load(Ordering::SeqCst) + 1);
                self.last_epoch.store(epoch, Ordering::SeqCst);
                seq = 0;
                presence.local_holdings()
            } else {
                changed
                    .into_iter()
                    .map(|u| {
                        let h = presence.local_holding(&u);
                        (u, h)
                    })
                    .collect()
            };
            let result = async {
                let mut batches: Vec<&[(Arc<str>, Holding)]> = counts.chunks(WRITE_BATCH).collect();
                if batches.is_empty() {
                    // A full republish of nobody still replaces what Redis holds.
                    batches.push(&[]);
                }
                for (i, batch) in batches.into_iter().enumerate() {
                    seq += 1;
                    self.write(full && i == 0, epoch, seq, batch).await?;
                }
                if full {
                    let _: i64 = self.client.sadd(NODES_KEY, &*self.node_id).await?;
                }
                Ok::<_, fred::error::Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "presence write failed; republishing in full once Redis is back");
                self.needs_full.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else {
                self.dirty.finished.send_replace(round);
            }
        }
    }

    pub(super) async fn write(
        &self,
        full: bool,
        epoch: u64,
        seq: u64,
        batch: &[(Arc<str>, Holding)],
    ) -> Result<(), fred::error::Error> {
        let event = PresenceEvent {
            n: self.node_id.to_string(),
            e: epoch,
            s: seq,
            f: full,
            gone: false,
            u: batch.iter().map(|(u, h)| Held::new(u, h)).collect(),
        };
        let mut args: Vec<String> = Vec::with_capacity(6 + 2 * batch.len());
        args.push(PRESENCE_CHANNEL.into());
        args.push(serde_json::to_string(&event).unwrap_or_default());
        args.push(if full { "1" } else { "0" }.into());
        args.push(epoch.to_string());
        args.push(seq.to_string());
        args.push(self.lease.as_millis().to_string());
        for (user, holding) in batch {
            args.push(user.to_string());
            args.push(holding_field(holding));
        }
        let node = &*self.node_id;
        let written: i64 = WRITE
            .run(
                &self.client,
                &[users_key(node), lease_key(node), swept_key(node)],
                &args,
            )
            .await?;
        let why = match written {
            1 => return Ok(()),
            0 => "this node's lease had expired",
            _ => "this node was swept: waiting for the lease thread to fence it",
        };
        Err(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            why,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_round_trip_through_the_hash() {
        let h = Holding {
            sockets: 3,
            since_ms: 1_700_000_000_123,
        };
        assert_eq!(parse_holding(&holding_field(&h)), Some(h));
        assert_eq!(holding_field(&Holding::default()), "0");
        assert_eq!(parse_holding("x"), None);
    }
}
