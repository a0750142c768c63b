//! Probes for load balancers and orchestrators on the HTTP port: `/healthz` says the process
//! answers, `/readyz` whether this node should get new traffic.
//!
//! Readiness is one small shared state: the drain sets it (through the shutdown token) and, in
//! cluster mode, the Redis link does (through the cluster's up/down watch), so a node that
//! cannot reach the other nodes' users is taken out of rotation without being restarted.

use axum::{extract::State, http::StatusCode, routing::get, Router};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Whether this node should receive new traffic; cheap to clone and to check.
#[derive(Clone)]
pub struct Readiness {
    draining: CancellationToken,
    cluster_up: Option<watch::Receiver<bool>>,
}

impl Readiness {
    /// Ready until `draining` is cancelled and, in cluster mode, while `cluster_up` says
    /// Redis is reachable.
    pub fn new(draining: CancellationToken, cluster_up: Option<watch::Receiver<bool>>) -> Self {
        Self {
            draining,
            cluster_up,
        }
    }

    /// `Err` says why the node is not ready.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.is_cancelled() {
            return Err("draining: the gateway is shutting down");
        }
        if self.cluster_up.as_ref().is_some_and(|up| !*up.borrow()) {
            return Err("cluster: Redis is unreachable");
        }
        Ok(())
    }
}

/// `/healthz` and `/readyz`, plain text, for probes that send no `Origin`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_while_draining_or_while_redis_is_down() {
        let draining = CancellationToken::new();
        let (up, rx) = watch::channel(true);
        let readiness = Readiness::new(draining.clone(), Some(rx));
        assert_eq!(readiness.check(), Ok(()));
        up.send_replace(false);
        assert_eq!(readiness.check(), Err("cluster: Redis is unreachable"));
        up.send_replace(true);
        assert_eq!(readiness.check(), Ok(()));
        draining.cancel();
        assert_eq!(
            readiness.check(),
            Err("draining: the gateway is shutting down")
        );
    }
}
