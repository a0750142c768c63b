//! Reaching Redis: the client configuration from `--redis-url`, the node's id, the shared
//! page-token key, and [`Link`], the fail-fast connection for calls a caller waits on.

use std::{future::Future, time::Duration};

use fred::{
    clients::{Client, WithOptions},
    interfaces::{ClientLike, KeysInterface},
    types::{
        config::{Config as RedisConfig, Options, Server, ServerConfig, TlsConnector},
        SetOptions,
    },
};
use tokio::sync::watch;

use super::names::CURSOR_KEY;
use crate::{
    cluster::engine::ClusterError,
    config::{self, Config, ConfigError},
    cursor::{random_key, KEY_LEN},
    tls,
};
/// Options for a command a caller waits on: while Redis is unreachable it fails at once
/// instead of queueing in the client until Redis is back; one attempt. No timeout of the
/// client's own: the caller bounds the wait with [`within`].
pub(super) fn fail_fast() -> Options {
    Options {
        fail_fast: true,
        // Zero: none (fred's own timer would fire first when a frozen node wakes).
        timeout: Some(Duration::ZERO),
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// How long a command still waits, once its timeout passed, for a reply already on its way.
/// A node frozen (SIGSTOP, a paused VM) while it waited wakes with its timers overdue and the
/// reply unread in its socket: without this, it reported as failed what Redis had run (a
/// publish delivered, a key claimed, a message kept).
pub(super) const LATE_REPLY_GRACE: Duration = Duration::from_millis(250);

/// Awaits `command` for `timeout`, then [`LATE_REPLY_GRACE`] more; `None` when it did not
/// finish. While Redis is paused the reply never comes and the caller is told so after the
/// grace; what Redis runs later is past its deadline and does nothing.
pub(super) async fn within<T>(timeout: Duration, command: impl Future<Output = T>) -> Option<T> {
    let mut command = std::pin::pin!(command);
    if let Ok(done) = tokio::time::timeout(timeout, &mut command).await {
        return Some(done);
    }
    tokio::time::timeout(LATE_REPLY_GRACE, command).await.ok()
}

/// The command connection for calls a caller waits on (the mailbox, idempotency keys):
/// refused at once while Redis is known to be unreachable, and bounded by the cluster timeout
/// otherwise, so a Redis outage is a prompt UNAVAILABLE, never a hung call.
#[derive(Clone)]
pub struct Link {
    pub(super) client: Client,
    pub(super) timeout: Duration,
    pub(super) up: watch::Receiver<bool>,
}

impl Link {
    /// Runs `command` fail-fast, bounded by the cluster timeout.
    pub async fn run<T, F>(
        &self,
        command: impl FnOnce(WithOptions<Client>) -> F,
    ) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        self.run_within(self.timeout, command).await
    }

    /// As [`Link::run`], bounded by `timeout` instead of the cluster timeout.
    pub async fn run_within<T, F>(
        &self,
        timeout: Duration,
        command: impl FnOnce(WithOptions<Client>) -> F,
    ) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        if !*self.up.borrow() {
            return Err(ClusterError::Unavailable("connection lost".into()));
        }
        let client = self.client.with_options(&fail_fast());
        match within(timeout, command(client)).await {
            Some(done) => done.map_err(|e| ClusterError::Unavailable(e.to_string())),
            None => Err(ClusterError::Unavailable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// The client configuration: the servers of `--redis-url`, and for `rediss://` the CAs of
/// `--redis-tls-ca` when given (fred's own default trusts the system store).
pub(super) fn redis_config(config: &Config) -> Result<RedisConfig, ConfigError> {
    let mut redis = servers(config)?;
    if let Some(client) = tls::redis_client(config)? {
        if redis.tls.is_none() {
            return Err(ConfigError::Invalid(
                "--redis-tls-ca is for TLS connections: use a rediss:// --redis-url".into(),
            ));
        }
        redis.tls = Some(TlsConnector::from(client).into());
    }
    Ok(redis)
}

fn servers(config: &Config) -> Result<RedisConfig, ConfigError> {
    let bad = |url: &str, e: fred::error::Error| {
        ConfigError::Invalid(format!("--redis-url {}: {e}", redact(url)))
    };
    let first = &config.redis_url[0];
    if !config.redis_cluster {
        if config.redis_url.len() > 1 {
            return Err(ConfigError::Invalid(
                "several --redis-url are the seeds of a Redis Cluster: add --redis-cluster".into(),
            ));
        }
        return RedisConfig::from_url_centralized(first).map_err(|e| bad(first, e));
    }
    let mut base = RedisConfig::from_url_clustered(first).map_err(|e| bad(first, e))?;
    for url in &config.redis_url[1..] {
        let seed = RedisConfig::from_url_clustered(url).map_err(|e| bad(url, e))?;
        if let (
            ServerConfig::Clustered { hosts, .. },
            ServerConfig::Clustered { hosts: more, .. },
        ) = (&mut base.server, seed.server)
        {
            hosts.extend(more.into_iter().map(|s: Server| s));
        }
    }
    Ok(base)
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// `--node-id`, or the host name plus a random suffix.
pub(super) fn node_id(config: &Config) -> Result<String, ConfigError> {
    let id = match &config.node_id {
        Some(id) => id.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().replace(['{', '}'], ""))
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into());
            let suffix = random_key();
            format!("{host}-{:02x}{:02x}{:02x}", suffix[0], suffix[1], suffix[2])
        }
    };
    // `--node-id` was checked when it was parsed; a generated one (a long host name) may not
    // pass the same rule.
    config::node_id(&id).map_err(|why| ConfigError::Invalid(format!("--node-id {id:?}: {why}")))
}

/// The shared page-token key: this node's proposal wins if none is set yet.
pub(super) async fn shared_cursor_key(
    client: &Client,
    proposal: &[u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], fred::error::Error> {
    let hex: String = proposal.iter().map(|b| format!("{b:02x}")).collect();
    let _: Option<String> = client
        .set(CURSOR_KEY, hex, None, Some(SetOptions::NX), false)
        .await?;
    let stored: String = client.get(CURSOR_KEY).await?;
    let mut key = [0; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = stored
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_ca_needs_a_rediss_url() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let signed = rcgen::generate_simple_self_signed(vec!["redis".to_owned()]).unwrap();
        std::fs::write(&ca, signed.cert.pem()).unwrap();
        let config = |url: &str| {
            Config::parse_from(
                ["gw", "--redis-url", url, "--redis-tls-ca"]
                    .into_iter()
                    .chain([ca.to_str().unwrap()]),
            )
        };
        let err = redis_config(&config("redis://h:6379")).err().unwrap();
        assert_eq!(
            err.to_string(),
            "--redis-tls-ca is for TLS connections: use a rediss:// --redis-url"
        );
        assert!(redis_config(&config("rediss://h:6379"))
            .unwrap()
            .tls
            .is_some());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
