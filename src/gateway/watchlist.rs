//! `SetWatchlist`: the watchlists of a user's `watch` sockets, replaced on every node that
//! holds them (as `DisconnectUser` reaches them), each socket told what the new list changes.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::Gateway;
use crate::{
    emit::{self, Encoded},
    error::GatewayError,
    outcome::Sent,
    validation::{self, ONLINE_USERS_CHANGED_EVENT},
};

impl Gateway {
    /// Replaces the watchlist of every `watch` socket of `user` on every node holding the
    /// user by `ids`. Returns the sockets updated; `partial` when a holder did not answer in
    /// time.
    pub async fn set_watchlist(&self, user: &str, ids: &[String]) -> Result<Sent, GatewayError> {
        self.open()?;
        validation::user_id(user).map_err(|r| GatewayError::invalid("user_id", r))?;
        let ids = validation::watchlist(ids.to_vec(), self.limits.max_watchlist)
            .map_err(|r| GatewayError::invalid("user_ids", r))?;
        let local = self.watchlist_here(user, &ids);
        let mut sent = Sent {
            delivered: local,
            ..Sent::default()
        };
        let (_, remote) = self.presence.holders(user);
        if remote.is_empty() {
            return Ok(sent);
        }
        let names: Vec<&str> = ids.iter().map(|id| &**id).collect();
        let json = serde_json::value::to_raw_value(&names).expect("a list of strings serializes");
        let answers = futures_util::future::join_all(
            remote
                .iter()
                .map(|&node| self.cluster.watchlist_remote(node, user, &json)),
        )
        .await;
        for answer in answers {
            match answer {
                Ok(Some(n)) => sent.delivered += n,
                Ok(None) => sent.partial = true,
                Err(source) => {
                    return Err(GatewayError::Unreachable {
                        local: format!("the watchlist of {local} socket(s) of {user:?} was set"),
                        source,
                    })
                }
            }
        }
        Ok(sent)
    }

    /// [`Gateway::set_watchlist`] asked of this node by another: `ids` is the JSON array the
    /// asker checked.
    pub(super) fn watchlist_from_node(&self, user: &str, ids: &RawValue) -> u32 {
        let ids: Vec<String> = match serde_json::from_str(ids.get()) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "malformed watchlist from another node ignored");
                return 0;
            }
        };
        match validation::watchlist(ids, usize::MAX) {
            Ok(ids) => self.watchlist_here(user, &ids),
            Err(e) => {
                tracing::warn!(error = %e, "invalid watchlist from another node ignored");
                0
            }
        }
    }

    /// Replaces the watchlist of this node's `watch` sockets of `user`; returns how many.
    fn watchlist_here(&self, user: &str, ids: &[Arc<str>]) -> u32 {
        let max = self.limits.max_dropped_sends;
        let (updated, done) = self.presence.set_watchlist(user, ids, max, |socket, json| {
            Encoded::new(ONLINE_USERS_CHANGED_EVENT, json).offer(socket)
        });
        emit::settle_watch(&self.presence, &self.metrics, max, done);
        updated
    }
}
