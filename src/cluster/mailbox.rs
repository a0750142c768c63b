//! The offline mailbox in Redis, so the node where a user next connects finds what any node
//! queued.
//!
//! Every mailbox key carries the hash tag `{mb}`: the bound on all queues together needs one
//! script to see them all, so on a Redis Cluster they share one slot (one shard). Each
//! message gets a number from one counter (the global push order); a user's queue is a list
//! of numbers, the bodies sit in one hash, and two sorted sets index the numbers by age and by
//! expiry. Each caller's numbers sit in a sorted set of its own (its oldest first), and two
//! sorted sets score the callers by the messages and bytes they hold, so a push over a bound
//! finds the caller to drop from in one lookup. A claim moves the oldest numbers of a queue to the user's in-flight list under a
//! claim key (`id:lapses_at_ms`); a settle drops the done ones and puts the others back at the
//! head of the queue; a claim that finds a lapsed one puts its numbers back first. Push,
//! claim and settle are each one script, so two nodes claiming at the same moment cannot both
//! get a message.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{engine::ClusterError, redis::Link, script::Script};
use crate::{
    mailbox::{
        Claim, Dropped, Lent, Mail, MailLimits, Mailbox, MailboxError, Owner, Pushed, CLAIM_GRACE,
        CONNECT_WATCH, SWEEP_BATCH,
    },
    presence::unix_ms,
};

const QUEUE_PREFIX: &str = "mg:{mb}:u:";
const IN_FLIGHT_PREFIX: &str = "mg:{mb}:f:";
const CLAIM_PREFIX: &str = "mg:{mb}:c:";
const WATCH_PREFIX: &str = "mg:{mb}:w:";
const BODIES: &str = "mg:{mb}:body";
const BY_AGE: &str = "mg:{mb}:age";
const BY_EXPIRY: &str = "mg:{mb}:exp";
const COUNTER: &str = "mg:{mb}:seq";
const BYTES: &str = "mg:{mb}:bytes";
const CALLER_PREFIX: &str = "mg:{mb}:k:";
const HELD: &str = "mg:{mb}:held";
const HELD_BYTES: &str = "mg:{mb}:heldbytes";

/// How long a claim waits for Redis. A claim given up on may still run in Redis: its
/// messages come back when it lapses, but only then, so it waits long rather than give up
/// early (the callers run it detached from any gRPC call, so nobody is kept waiting).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// Helpers shared by the scripts. A body is `user \0 caller \0 mail-json` (user ids hold no
/// control characters, caller names only letters, digits and `._-`, JSON escapes them; a body
/// kept before callers had shares has no caller). KEYS: the user's queue, bodies, by age, by
/// expiry, counter, stored bytes, the user's in-flight list, claim and watch keys, messages
/// and bytes held by caller. `callers` (set before these) prefixes each caller's sorted set
/// of numbers. A message dropped (bound, expiry) leaves its owner's queue or in-flight list.
const COMMON: &str = r#"
local function parts(body)
  local a = string.find(body, '\0', 1, true)
  local b = string.find(body, '\0', a + 1, true)
  if not b then return string.sub(body, 1, a - 1), '', string.sub(body, a + 1) end
  return string.sub(body, 1, a - 1), string.sub(body, a + 1, b - 1), string.sub(body, b + 1)
end
local function held(key, caller, by)
  if tonumber(redis.call('ZINCRBY', key, by, caller)) <= 0 then redis.call('ZREM', key, caller) end
end
local function forget(seq, body)
  body = body or redis.call('HGET', KEYS[2], seq)
  if body then
    local _, caller = parts(body)
    redis.call('DECRBY', KEYS[6], #body)
    redis.call('ZREM', callers .. caller, seq)
    held(KEYS[10], caller, -1)
    held(KEYS[11], caller, -#body)
  end
  redis.call('ZREM', KEYS[3], seq)
  redis.call('ZREM', KEYS[4], seq)
  redis.call('HDEL', KEYS[2], seq)
end
local function drop(seq, queues, in_flight)
  local body = redis.call('HGET', KEYS[2], seq)
  if body then
    local user = parts(body)
    redis.call('LREM', queues .. user, 1, seq)
    redis.call('LREM', in_flight .. user, 1, seq)
  end
  forget(seq, body)
end
local function sweep(now, queues, in_flight, batch)
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)
  for _, seq in ipairs(old) do drop(seq, queues, in_flight) end
  return #old
end
local function give_back(seqs)
  for i = #seqs, 1, -1 do
    if redis.call('HEXISTS', KEYS[2], seqs[i]) == 1 then redis.call('LPUSH', KEYS[1], seqs[i]) end
  end
  redis.call('DEL', KEYS[7], KEYS[8])
end
"#;

/// ARGV: user, mail json, now ms, expires ms, per-user bound, total bound, queue prefix,
/// sweep batch, bytes bound, in-flight prefix, caller, caller's share. Returns dropped for
/// the user bound, the caller's share, the total bounds, expired, and 1 when a claim for the
/// user ran lately (its watch key is set). Over a total bound, the oldest of the caller
/// holding the most (messages, or bytes for the byte bound) goes: the pushing caller's on a
/// tie.
const PUSH: &str = r#"
local expired = sweep(ARGV[3], ARGV[7], ARGV[10], tonumber(ARGV[8]))
local caller = ARGV[11]
local seq = redis.call('INCR', KEYS[5])
local body = ARGV[1] .. '\0' .. caller .. '\0' .. ARGV[2]
redis.call('HSET', KEYS[2], seq, body)
redis.call('INCRBY', KEYS[6], #body)
redis.call('RPUSH', KEYS[1], seq)
redis.call('ZADD', KEYS[3], seq, seq)
redis.call('ZADD', KEYS[4], ARGV[4], seq)
redis.call('ZADD', callers .. caller, seq, seq)
held(KEYS[10], caller, 1)
held(KEYS[11], caller, #body)
local by_user = 0
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[5]) do
  forget(redis.call('LPOP', KEYS[1]))
  by_user = by_user + 1
end
local by_caller = 0
while redis.call('ZCARD', callers .. caller) > tonumber(ARGV[12]) do
  drop(redis.call('ZRANGE', callers .. caller, 0, 0)[1], ARGV[7], ARGV[10])
  by_caller = by_caller + 1
end
local by_total = 0
while true do
  local by_count = redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[6])
  if not by_count and tonumber(redis.call('GET', KEYS[6]) or '0') <= tonumber(ARGV[9]) then break end
  local weights = by_count and KEYS[10] or KEYS[11]
  local top = redis.call('ZREVRANGE', weights, 0, 0, 'WITHSCORES')
  local victim = top[1]
  local mine = redis.call('ZSCORE', weights, caller)
  if mine and tonumber(mine) >= tonumber(top[2]) then victim = caller end
  local oldest = victim and redis.call('ZRANGE', callers .. victim, 0, 0)[1]
  drop(oldest or redis.call('ZRANGE', KEYS[3], 0, 0)[1], ARGV[7], ARGV[10])
  by_total = by_total + 1
end
return {by_user, by_caller, by_total, expired, redis.call('EXISTS', KEYS[9])}
"#;

/// ARGV: now ms, most messages, claim grace ms, watch ms. Returns `busy`, ms left while an
/// unlapsed claim holds the user's messages; else the claim id (0: nothing lent), the count of
/// expired messages dropped, then number and mail json of each lent message, oldest first. The
/// claim lapses the grace after the longest `ack_ms` among them (the last field of the JSON).
const CLAIM: &str = r#"
local now = tonumber(ARGV[1])
redis.call('SET', KEYS[9], '1', 'PX', ARGV[4])
local held = redis.call('GET', KEYS[8])
if held then
  local lapses = tonumber(string.match(held, ':(%d+)$'))
  if lapses > now then return {'busy', lapses - now} end
end
give_back(redis.call('LRANGE', KEYS[7], 0, -1))
local seqs = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('LTRIM', KEYS[1], #seqs, -1)
local out = {0, 0}
local longest, last_expiry = 0, now
for _, seq in ipairs(seqs) do
  local expires = tonumber(redis.call('ZSCORE', KEYS[4], seq))
  local body = redis.call('HGET', KEYS[2], seq)
  if body and expires and expires > now then
    local _, _, json = parts(body)
    longest = math.max(longest, tonumber(string.match(json, '"ack_ms":(%d+)}$') or '0'))
    last_expiry = math.max(last_expiry, expires)
    redis.call('RPUSH', KEYS[7], seq)
    out[#out + 1] = seq
    out[#out + 1] = json
  else
    forget(seq)
    out[2] = out[2] + 1
  end
end
if #out > 2 then
  local id = redis.call('INCR', KEYS[5])
  local lapses = now + longest + tonumber(ARGV[3])
  redis.call('SET', KEYS[8], id .. ':' .. lapses, 'PX', math.max(lapses, last_expiry) - now)
  out[1] = id
end
return out
"#;

/// ARGV: claim id, then the numbers done. Drops those, puts the claim's others back at the
/// head of the queue; a claim no longer held (lapsed and claimed again) is left alone.
const SETTLE: &str = r#"
local held = redis.call('GET', KEYS[8])
if not held or string.match(held, '^(%d+):') ~= ARGV[1] then return 0 end
local done = {}
for i = 2, #ARGV do done[ARGV[i]] = true end
local back = {}
for _, seq in ipairs(redis.call('LRANGE', KEYS[7], 0, -1)) do
  if done[seq] then forget(seq) else back[#back + 1] = seq end
end
give_back(back)
return #back
"#;

/// ARGV: now ms, queue prefix, in-flight prefix, sweep batch. Returns how many expired
/// messages were dropped.
const SWEEP: &str = "return sweep(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))";

/// Queues in Redis (cluster mode).
pub struct RedisMailbox {
    link: Link,
    limits: MailLimits,
    push: Script,
    claim: Script,
    settle: Script,
    sweep: Script,
}

impl RedisMailbox {
    /// Queues reached through `link`, bounded by `limits`.
    pub fn new(link: Link, limits: MailLimits) -> Self {
        let script =
            |body: &str| Script::new(format!("local callers = '{CALLER_PREFIX}'\n{COMMON}{body}"));
        Self {
            link,
            limits,
            push: script(PUSH),
            claim: script(CLAIM),
            settle: script(SETTLE),
            sweep: script(SWEEP),
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
            format!("{IN_FLIGHT_PREFIX}{user}"),
            format!("{CLAIM_PREFIX}{user}"),
            format!("{WATCH_PREFIX}{user}"),
            HELD.into(),
            HELD_BYTES.into(),
        ]
    }

    /// What the claim script answered.
    fn claimed(out: Vec<String>) -> Claim {
        let mut out = out.into_iter();
        let first = out.next().unwrap_or_default();
        let second = out.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        if first == "busy" {
            return Claim::Busy(Duration::from_millis(second));
        }
        let mut lent = Lent {
            claim: first.parse().unwrap_or(0),
            dropped: Dropped {
                expired: second as u32,
                ..Dropped::default()
            },
            ..Lent::default()
        };
        while let (Some(seq), Some(json)) = (out.next(), out.next()) {
            match (seq.parse(), serde_json::from_str(&json)) {
                (Ok(seq), Ok(mail)) => lent.mail.push((seq, mail)),
                _ => tracing::warn!(
                    seq,
                    "a kept message does not decode; it stays kept until it expires"
                ),
            }
        }
        Claim::Lent(lent)
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
        owner: Owner<'a>,
        mail: &'a Mail,
    ) -> BoxFuture<'a, Result<Pushed, MailboxError>> {
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
                IN_FLIGHT_PREFIX.into(),
                owner.name.into(),
                self.limits.share(owner).to_string(),
            ];
            let (user_limit, caller_limit, total_limit, expired, watched): (
                u32,
                u32,
                u32,
                u32,
                u32,
            ) = self
                .link
                .run(|c| async move { self.push.run(&c, &Self::keys(user), &args).await })
                .await?;
            Ok(Pushed {
                dropped: Dropped {
                    user_limit,
                    caller_limit,
                    total_limit,
                    expired,
                },
                watched: watched == 1,
            })
        })
    }

    fn claim<'a>(
        &'a self,
        user: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Claim, MailboxError>> {
        Box::pin(async move {
            let args = vec![
                unix_ms().to_string(),
                max.max(1).to_string(),
                CLAIM_GRACE.as_millis().to_string(),
                CONNECT_WATCH.as_millis().to_string(),
            ];
            let out: Vec<String> = self
                .link
                .run_within(CLAIM_TIMEOUT, |c| async move {
                    self.claim.run(&c, &Self::keys(user), &args).await
                })
                .await?;
            Ok(Self::claimed(out))
        })
    }

    fn settle<'a>(
        &'a self,
        user: &'a str,
        claim: u64,
        done: &'a [u64],
    ) -> BoxFuture<'a, Result<(), MailboxError>> {
        Box::pin(async move {
            let args: Vec<String> = std::iter::once(claim)
                .chain(done.iter().copied())
                .map(|n| n.to_string())
                .collect();
            let _back: u32 = self
                .link
                .run(|c| async move { self.settle.run(&c, &Self::keys(user), &args).await })
                .await?;
            Ok(())
        })
    }

    fn sweep(&self) -> BoxFuture<'_, Result<u32, MailboxError>> {
        Box::pin(async move {
            // The user keys only name the slot: a sweep finds its queues through the bodies.
            let keys = Self::keys("");
            let args = vec![
                unix_ms().to_string(),
                QUEUE_PREFIX.into(),
                IN_FLIGHT_PREFIX.into(),
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
