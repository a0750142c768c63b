//! Idempotency keys shared by the nodes: the first call with a key claims it, later ones wait
//! for its answer and replay it.
//!
//! A claim is a script that refuses to run after its caller stopped waiting: a claim that
//! reached Redis late (Redis paused, then resumed) must not lock the key against the retry
//! that the caller's UNAVAILABLE invited. The owner's marker carries a token of its own, so
//! settling it (storing the answer or freeing the key) never touches another call's claim.
//!
//! Each caller keeps at most `--idempotency-max-keys` keys, its oldest forgotten first, as on
//! a single node: Redis is shared by every node and every caller, and keys bounded only by
//! their TTL grew with the call rate (20,000 calls left 20,000 keys; with a 24 h window, tens
//! of GiB, and a Redis out of memory stops the whole cluster). A caller's keys live in
//! [`BUCKETS`] buckets, each a hash (key to marker or answer) and a sorted set (key by claim
//! time) under one hash tag, so that the claim script, in the one round trip a claim always
//! took, claims and forgets atomically, on a Redis Cluster too. Buckets rather than one hash
//! slot per caller: one slot would put a busy caller's every send on one Redis Cluster master
//! and all its keys in one hash (a big key blocks Redis while it is migrated or deleted);
//! buckets spread both over the masters, each with its share of the bound. The price: "oldest
//! first" holds within a bucket, so at the bound a key may go while a slightly older one in
//! another bucket stays. A hash field has no TTL of its own (before Redis 7.4): a key past the
//! window is forgotten by the next claim in its bucket, and a bucket with no claim for a
//! window expires whole.

use crate::sync::lock;
use std::{sync::LazyLock, time::Duration};

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{
    names::*,
    node::{accept_until, Inner},
};
use crate::{
    cluster::{
        engine::{Claim, ClusterError},
        script::Script,
    },
    cursor::random_key,
    outcome::Sent,
};
/// How long a claimed idempotency key stays "in flight" when its owner never settles it (the
/// node died): longer than any call (acks wait at most 60 s).
pub(super) const IN_FLIGHT: Duration = Duration::from_secs(75);
/// How a key claimed but not yet answered starts; the owner's token follows.
const PENDING: char = '-';
/// What [`CLAIM`] answers when the key is this call's now.
const OWNER: &str = "+";
/// What [`CLAIM`] answers when it ran after its deadline (the caller gave up on it).
const LATE: &str = "!";

/// How many buckets a caller's keys are spread over (fewer when the bound is smaller, so that
/// each keeps at least one): enough to spread a caller over a Redis Cluster's masters, few
/// enough that each bucket's share stays close to the whole bound's order.
const BUCKETS: u64 = 16;
/// Keys past the window a claim forgets at most, beside its own: a claim stays short, and
/// the bound caps what is left.
const EXPIRE_PER_CLAIM: u32 = 64;

/// Claims a key unless Redis runs it after the caller's deadline, then forgets the bucket's
/// oldest keys beyond its share. KEYS: the bucket's hash and sorted set. ARGV: the key, the
/// pending marker, its lifetime (ms), the deadline (ms since the Unix epoch), the window
/// (ms), the bucket's share of the bound, how many expired keys to forget. Returns `+`
/// (claimed), `!` (late: nothing done) or the key's current value. A marker older than its
/// lifetime (its owner died) or an answer older than the window is free to claim.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[4]) then return '!' end
local window = tonumber(ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window, 'LIMIT', 0, ARGV[7])
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
local since = redis.call('ZSCORE', KEYS[2], ARGV[1])
local held = since and redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local life = window
  if string.sub(held, 1, 1) == '-' then life = tonumber(ARGV[3]) end
  if tonumber(since) > now - life then return held end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do redis.call('HDEL', KEYS[1], gone[i]) end
end
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], window)
return '+'
"#,
    )
});

/// Stores the answer (ARGV[3]) or, with an empty answer, frees the key (ARGV[1]), only while
/// it holds this call's marker (ARGV[2]): a key forgotten meanwhile (the bound, the window)
/// stays forgotten. KEYS as for [`CLAIM`].
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"#,
    )
});

/// Where one of a caller's keys lives: its bucket and that bucket's share of the bound.
struct Place {
    /// The bucket's hash and sorted set.
    keys: [String; 2],
    share: u64,
}

impl Place {
    /// Every node picks the same bucket for a key: it depends only on the key and the bound.
    fn of(caller: &str, key: &str, max: u64) -> Self {
        let buckets = BUCKETS.min(max.max(1));
        let bucket = bucket_of(key, buckets);
        // The remainder goes to the first buckets: the shares add up to the bound.
        let share = max / buckets + u64::from(bucket < max % buckets);
        Self {
            keys: idempotency_bucket(caller, bucket),
            share,
        }
    }
}

/// Which of `buckets` holds `key`: SHA-256, as every node and version computes it alike (the
/// standard library's hasher may change), and spreads even short keys that differ in one
/// character (FNV put 50 keys `flood-N` in 2 buckets of 16).
fn bucket_of(key: &str, buckets: u64) -> u64 {
    let digest = Sha256::digest(key);
    let mut head = [0; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(head) % buckets
}

impl Inner {
    /// Claims `caller`'s key; a later call polls it until the owner stores its answer (or
    /// frees the key, or the in-flight bound passes).
    pub(super) async fn claim(&self, caller: &str, key: &str) -> Result<Claim, ClusterError> {
        let Place {
            keys: bucket,
            share,
        } = Place::of(caller, key, self.idempotency_max_keys);
        let link = self.link();
        let token: String = random_key()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let marker = format!("{PENDING}{token}");
        let hold = IN_FLIGHT
            .min(self.idempotency_window)
            .as_millis()
            .to_string();
        let window = self.idempotency_window.as_millis().to_string();
        let give_up = Instant::now() + IN_FLIGHT;
        loop {
            let (keys, args) = (
                bucket.clone(),
                [
                    key.to_owned(),
                    marker.clone(),
                    hold.clone(),
                    accept_until(link.timeout).to_string(),
                    window.clone(),
                    share.to_string(),
                    EXPIRE_PER_CLAIM.to_string(),
                ],
            );
            let held: String = link
                .run(|c| async move { CLAIM.run(&c, &keys, &args).await })
                .await?;
            match held.as_str() {
                OWNER => {
                    let [hash, _] = bucket;
                    lock(&self.owned).insert((hash, key.to_owned()), marker);
                    return Ok(Claim::Owner);
                }
                LATE => {
                    return Err(ClusterError::Unavailable(
                        "Redis ran the claim after its deadline".into(),
                    ))
                }
                pending if pending.starts_with(PENDING) => {
                    if Instant::now() >= give_up {
                        return Err(ClusterError::Unavailable(
                            "the first call with this idempotency key never finished".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                json => {
                    return serde_json::from_str(json)
                        .map(Claim::Replay)
                        .map_err(|e| ClusterError::Unavailable(e.to_string()))
                }
            }
        }
    }

    /// Stores the owner's answer, or frees the key; in the background, as the caller has its
    /// answer already. Only this call's own claim is touched.
    pub(super) fn settle(&self, caller: &str, key: &str, answer: Option<Sent>) {
        let Place { keys, .. } = Place::of(caller, key, self.idempotency_max_keys);
        let Some(marker) = lock(&self.owned).remove(&(keys[0].clone(), key.to_owned())) else {
            return;
        };
        let client = self.client.clone();
        let answer = answer
            .map(|sent| serde_json::to_string(&sent).unwrap_or_default())
            .unwrap_or_default();
        let args = [key.to_owned(), marker, answer];
        tokio::spawn(async move {
            let done: Result<i64, _> = SETTLE.run(&client, &keys, &args).await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "idempotency answer not stored");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_buckets_share_its_bound_exactly() {
        for max in [1, 2, 15, 16, 17, 20, 100_000, 100_003] {
            let mut shares = std::collections::HashMap::new();
            for i in 0..1000 {
                let place = Place::of("orders", &format!("3:bob:k{i}"), max);
                assert!(place.keys[0].starts_with("mg:idem:{6:orders/"));
                assert_eq!(place.keys[1], format!("{}:age", place.keys[0]));
                assert!(place.share >= 1);
                shares.insert(place.keys[0].clone(), place.share);
            }
            assert_eq!(shares.len() as u64, BUCKETS.min(max), "max {max}");
            assert_eq!(shares.values().sum::<u64>(), max, "max {max}");
        }
    }
}
