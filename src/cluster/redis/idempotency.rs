//! Idempotency keys shared by the nodes: the first call with a key claims it (`SET NX`), later
//! ones wait for its answer and replay it.

use std::time::Duration;

use fred::{
    interfaces::KeysInterface,
    types::{Expiration, SetOptions},
};
use tokio::time::Instant;

use super::{names::*, node::Inner};
use crate::{
    cluster::engine::{Claim, ClusterError},
    outcome::Sent,
};
/// How long a claimed idempotency key stays "in flight" when its owner never settles it (the
/// node died): longer than any call (acks wait at most 60 s).
pub(super) const IN_FLIGHT: Duration = Duration::from_secs(75);
/// The value of a key claimed but not yet answered.
pub(super) const PENDING: &str = "-";

impl Inner {
    /// `SET NX` claims the key; a later call polls it until the owner stores its answer (or
    /// frees the key, or the in-flight bound passes).
    pub(super) async fn claim(&self, key: &str) -> Result<Claim, ClusterError> {
        let key = &idempotency_key(key);
        let link = self.link();
        let hold = IN_FLIGHT.min(self.idempotency_window).as_millis() as i64;
        let give_up = Instant::now() + IN_FLIGHT;
        loop {
            let claimed: Option<String> = link
                .run(|c| async move {
                    c.set(
                        key,
                        PENDING,
                        Some(Expiration::PX(hold)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                })
                .await?;
            if claimed.is_some() {
                return Ok(Claim::Owner);
            }
            let held: Option<String> = link.run(|c| async move { c.get(key).await }).await?;
            match held.as_deref() {
                Some(PENDING) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(PENDING) => {
                    return Err(ClusterError::Unavailable(
                        "the first call with this idempotency key never finished".into(),
                    ))
                }
                Some(json) => {
                    return serde_json::from_str(json)
                        .map(Claim::Replay)
                        .map_err(|e| ClusterError::Unavailable(e.to_string()))
                }
                None => {} // Freed or expired meanwhile: claim again.
            }
        }
    }

    /// Stores the owner's answer for the window, or frees the key; in the background, as
    /// the caller has its answer already.
    pub(super) fn settle(&self, key: &str, answer: Option<Sent>) {
        let (client, key) = (self.client.clone(), idempotency_key(key));
        let window = self.idempotency_window.as_millis() as i64;
        tokio::spawn(async move {
            let done: Result<(), fred::error::Error> = match answer {
                Some(sent) => {
                    let json = serde_json::to_string(&sent).unwrap_or_default();
                    client
                        .set(key, json, Some(Expiration::PX(window)), None, false)
                        .await
                }
                None => client.del(key).await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "idempotency answer not stored");
            }
        });
    }
}
