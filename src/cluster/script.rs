//! Lua scripts run by their SHA1 digest (`EVALSHA`).
//!
//! The presence write and the mailbox push and take run once per batch, per message and per
//! connect: with `EVAL` each call carried the whole body (about 2 KB for the mailbox) and
//! Redis hashed it again to find its cached copy. A server that does not know a digest yet
//! (restarted, flushed, a new Redis Cluster master) answers `NOSCRIPT`; the call then goes
//! once as `EVAL`, which also caches the body there.

use fred::{
    error::Error,
    interfaces::LuaInterface,
    types::{FromValue, MultipleKeys, MultipleValues},
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

    pub async fn run<R, C, K, V>(&self, client: &C, keys: K, args: V) -> Result<R, Error>
    where
        R: FromValue,
        C: LuaInterface + Send + Sync,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<Error> + Send,
    {
        let keys = keys.into();
        let args = args.try_into().map_err(Into::into)?;
        match client.evalsha(&*self.sha, keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(&*self.body, keys, args).await
            }
            done => done,
        }
    }
}
