//! Lua scripts run by their SHA1 digest (`EVALSHA`).
//!
//! The presence write and the mailbox push and take run once per batch, per message and per
//! connect: with `EVAL` each call carried the whole body (about 2 KB for the mailbox) and
//! Redis hashed it again to find its cached copy. A server that does not know a digest yet
//! (restarted, flushed, a new Redis Cluster master) answers `NOSCRIPT`; the call then goes
//! once as `EVAL`, which also caches the body there.
//!
//! Sent as custom commands through [`ClientLike`] rather than fred's `LuaInterface`, which
//! `WithOptions` does not implement: through it, a [`super::redis::Link`] call lost its
//! fail-fast options and the inner client's defaults applied (queued while disconnected and
//! re-sent after a reconnect, past the point where the caller was answered UNAVAILABLE).

use fred::{
    error::Error,
    interfaces::ClientLike,
    types::{ClusterHash, CustomCommand, FromValue},
    util::redis_keyslot,
};

pub struct Script {
    body: String,
    sha: String,
}

impl Script {
    pub fn new(body: impl Into<String>) -> Self {
        let body = body.into();
        let sha = fred::util::sha1_hash(&body);
        Self { body, sha }
    }

    /// Runs the script on the server holding `keys` (all in one slot).
    pub async fn run<R: FromValue>(
        &self,
        client: &impl ClientLike,
        keys: &[String],
        args: &[String],
    ) -> Result<R, Error> {
        let slot = keys.first().map(|k| redis_keyslot(k.as_bytes()));
        let call = |command: &'static str, script: &str| {
            let hash = slot.map_or(ClusterHash::Random, ClusterHash::Custom);
            let mut line = Vec::with_capacity(2 + keys.len() + args.len());
            line.push(script.to_owned());
            line.push(keys.len().to_string());
            line.extend_from_slice(keys);
            line.extend_from_slice(args);
            client.custom::<R, String>(CustomCommand::new_static(command, hash, false), line)
        };
        match call("EVALSHA", &self.sha).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => call("EVAL", &self.body).await,
            done => done,
        }
    }
}
