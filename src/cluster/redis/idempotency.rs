//! Idempotency keys shared by the nodes: the first call with a key claims it, later ones wait
//! for its answer and replay it.
//!
//! A claim is a script that refuses to run after its caller stopped waiting: a claim that
//! reached Redis late (Redis paused, then resumed) must not lock the key against the retry
//! that the caller's UNAVAILABLE invited. The owner's marker carries a token of its own, so
//! settling it (storing the answer or freeing the key) never touches another call's claim.

use std::{sync::LazyLock, time::Duration};

use tokio::time::Instant;

use super::{
    names::*,
    node::{accept_until, lock, Inner},
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

/// Claims a key unless Redis runs it after the caller's deadline. KEYS: the key. ARGV: the
/// pending marker, its lifetime (ms), the deadline (ms since the Unix epoch). Returns `+`
/// (claimed), `!` (late: nothing done) or the key's current value.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[3]) then
  return '!'
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '+' end
return redis.call('GET', KEYS[1])
"#,
    )
});

/// Stores the answer (ARGV[2], for ARGV[3] ms) or, with an empty answer, frees the key, only
/// while it still holds this call's marker (ARGV[1]) or nothing.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"#,
    )
});

impl Inner {
    /// Claims the key; a later call polls it until the owner stores its answer (or frees
    /// the key, or the in-flight bound passes).
    pub(super) async fn claim(&self, key: &str) -> Result<Claim, ClusterError> {
        let redis_key = idempotency_key(key);
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
        let give_up = Instant::now() + IN_FLIGHT;
        loop {
            let (keys, args) = (
                [redis_key.clone()],
                [
                    marker.clone(),
                    hold.clone(),
                    accept_until(link.timeout).to_string(),
                ],
            );
            let held: String = link
                .run(|c| async move { CLAIM.run(&c, &keys, &args).await })
                .await?;
            match held.as_str() {
                OWNER => {
                    lock(&self.owned).insert(key.to_owned(), marker);
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

    /// Stores the owner's answer for the window, or frees the key; in the background, as
    /// the caller has its answer already. Only this call's own claim is touched.
    pub(super) fn settle(&self, key: &str, answer: Option<Sent>) {
        let Some(marker) = lock(&self.owned).remove(key) else {
            return;
        };
        let client = self.client.clone();
        let keys = [idempotency_key(key)];
        let answer = answer
            .map(|sent| serde_json::to_string(&sent).unwrap_or_default())
            .unwrap_or_default();
        let window = self.idempotency_window.as_millis().to_string();
        tokio::spawn(async move {
            let done: Result<i64, _> = SETTLE.run(&client, &keys, &[marker, answer, window]).await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "idempotency answer not stored");
            }
        });
    }
}
