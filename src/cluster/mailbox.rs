//! The offline mailbox in Redis, so the node where a user next connects finds what any node
//! queued.
//!
//! Every mailbox key carries the hash tag `{mb}`: the bound on all queues together needs one
//! script to see them all, so on a Redis Cluster they share one slot (one shard). Each
//! message gets a number from one counter (the global push order); a user's queue is a list
//! of numbers, the bodies sit in one hash, and two sorted sets index the numbers by age and by
//! expiry. Push and take are each one script: two nodes taking the same queue at the same
//! moment cannot both get a message.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{engine::ClusterError, redis::Link, script::Script};
use crate::{
    mailbox::{Dropped, Mail, MailLimits, Mailbox, MailboxError, Taken},
    presence::unix_ms,
};

const QUEUE_PREFIX: &str = "mg:{mb}:u:";
const BODIES: &str = "mg:{mb}:body";
const BY_AGE: &str = "mg:{mb}:age";
const BY_EXPIRY: &str = "mg:{mb}:exp";
const COUNTER: &str = "mg:{mb}:seq";
const BYTES: &str = "mg:{mb}:bytes";

/// How long a take waits for Redis. A take that timed out may still run in Redis, and its
/// messages would go with the reply nobody reads: it waits long rather than give up early
/// (the callers run it detached from any gRPC call, so nobody is kept waiting).
const TAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most expired messages one script sweeps, so a push never runs long.
const SWEEP_BATCH: u32 = 100;

/// Helpers shared by both scripts. A body is `user \0 mail-json` (user ids hold no control
/// characters). KEYS: the user's queue, bodies, by age, by expiry, counter, stored bytes.
const COMMON: &str = r#"
local function owner(body) return string.sub(body, 1, string.find(body, '\0', 1, true) - 1) end
local function forget(seq)
  local size = redis.call('HSTRLEN', KEYS[2], seq)
  if size > 0 then redis.call('DECRBY', KEYS[6], size) end
  redis.call('ZREM', KEYS[3], seq)
  redis.call('ZREM', KEYS[4], seq)
  redis.call('HDEL', KEYS[2], seq)
end
local function drop(seq, prefix)
  local body = redis.call('HGET', KEYS[2], seq)
  if body then redis.call('LREM', prefix .. owner(body), 1, seq) end
  forget(seq)
end
local function sweep(now, prefix, batch)
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)
  for _, seq in ipairs(old) do drop(seq, prefix) end
  return #old
end
"#;

/// ARGV: user, mail json, now ms, expires ms, per-user bound, total bound, queue prefix,
/// sweep batch, bytes bound. Returns dropped for the user bound, the total bounds, expired.
const PUSH: &str = r#"
local expired = sweep(ARGV[3], ARGV[7], tonumber(ARGV[8]))
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[2], seq, ARGV[1] .. '\0' .. ARGV[2])
redis.call('INCRBY', KEYS[6], redis.call('HSTRLEN', KEYS[2], seq))
redis.call('RPUSH', KEYS[1], seq)
redis.call('ZADD', KEYS[3], seq, seq)
redis.call('ZADD', KEYS[4], ARGV[4], seq)
local by_user = 0
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[5]) do
  forget(redis.call('LPOP', KEYS[1]))
  by_user = by_user + 1
end
local by_total = 0
while redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[6])
    or tonumber(redis.call('GET', KEYS[6]) or '0') > tonumber(ARGV[9]) do
  drop(redis.call('ZRANGE', KEYS[3], 0, 0)[1], ARGV[7])
  by_total = by_total + 1
end
return {by_user, by_total, expired}
"#;

/// ARGV: now ms. Returns the count of expired messages dropped, then the mail json of the
/// others, oldest first.
const TAKE: &str = r#"
local seqs = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
local out = {0}
for _, seq in ipairs(seqs) do
  local expires = tonumber(redis.call('ZSCORE', KEYS[4], seq))
  local body = redis.call('HGET', KEYS[2], seq)
  forget(seq)
  if body and expires and expires > tonumber(ARGV[1]) then
    out[#out + 1] = string.sub(body, string.find(body, '\0', 1, true) + 1)
  else
    out[1] = out[1] + 1
  end
end
return out
"#;

/// ARGV: now ms, queue prefix, sweep batch. Returns how many expired messages were dropped.
const SWEEP: &str = "return sweep(ARGV[1], ARGV[2], tonumber(ARGV[3]))";

/// Queues in Redis (cluster mode).
pub struct RedisMailbox {
    link: Link,
    limits: MailLimits,
    push: Script,
    take: Script,
    sweep: Script,
}

impl RedisMailbox {
    /// Queues reached through `link`, bounded by `limits`.
    pub fn new(link: Link, limits: MailLimits) -> Self {
        Self {
            link,
            limits,
            push: Script::new(format!("{COMMON}{PUSH}")),
            take: Script::new(format!("{COMMON}{TAKE}")),
            sweep: Script::new(format!("{COMMON}{SWEEP}")),
        }
    }

    fn keys(user: &str) -> Vec<String> {
        vec![
            format!("{QUEUE_PREFIX}{user}"),
            BODIES.into(),
            BY_AGE.into(),
            BY_EXPIRY.into(),
            COUNTER.into(),
            BYTES.into(),
        ]
    }
}

impl From<ClusterError> for MailboxError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Unavailable(why) => Self::Unreachable(why),
        }
    }
}

impl Mailbox for RedisMailbox {
    fn push<'a>(
        &'a self,
        user: &'a str,
        mail: &'a Mail,
    ) -> BoxFuture<'a, Result<Dropped, MailboxError>> {
        Box::pin(async move {
            let json = serde_json::to_string(mail)
                .map_err(|e| MailboxError::Unreachable(e.to_string()))?;
            let args: Vec<String> = vec![
                user.into(),
                json,
                unix_ms().to_string(),
                mail.expires_ms.to_string(),
                self.limits.per_user.to_string(),
                self.limits.total.to_string(),
                QUEUE_PREFIX.into(),
                SWEEP_BATCH.to_string(),
                self.limits.bytes.to_string(),
            ];
            let (user_limit, total_limit, expired): (u32, u32, u32) = self
                .link
                .run(|c| async move { self.push.run(&c, &Self::keys(user), &args).await })
                .await?;
            Ok(Dropped {
                user_limit,
                total_limit,
                expired,
            })
        })
    }

    fn take<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Taken, MailboxError>> {
        Box::pin(async move {
            let now = vec![unix_ms().to_string()];
            let out: Vec<String> = self
                .link
                .run_within(TAKE_TIMEOUT, |c| async move {
                    self.take.run(&c, &Self::keys(user), &now).await
                })
                .await?;
            let mut out = out.into_iter();
            let expired = out.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let mut taken = Taken {
                dropped: Dropped {
                    expired,
                    ..Dropped::default()
                },
                ..Taken::default()
            };
            for json in out {
                match serde_json::from_str(&json) {
                    Ok(mail) => taken.mail.push(mail),
                    Err(e) => {
                        tracing::warn!(error = %e, "a queued message does not decode; dropped")
                    }
                }
            }
            Ok(taken)
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u32, MailboxError>> {
        Box::pin(async move {
            // The queue key only names the slot: a sweep finds its queues through the bodies.
            let keys = Self::keys("");
            let args = vec![
                unix_ms().to_string(),
                QUEUE_PREFIX.into(),
                SWEEP_BATCH.to_string(),
            ];
            let swept = self
                .link
                .run(|c| async move { self.sweep.run(&c, &keys, &args).await })
                .await?;
            Ok(swept)
        })
    }
}
