//! Counters an operator watches, served in the Prometheus text format on `--metrics-addr`
//! (off by default, so nothing extra is exposed on the public ports).

use std::{
    fmt::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use crate::{cluster::Cluster, presence::Presence};

/// Monotonic counters; gauges are read from the presence registry when scraped.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages a socket accepted.
    pub deliveries: AtomicU64,
    /// Messages a socket refused (buffer full or connection gone).
    pub refusals: AtomicU64,
    /// Handshakes refused (no or bad identity, limits).
    pub handshakes_refused: AtomicU64,
    /// Sockets disconnected by the gateway (per-user limit, slow reader).
    pub sockets_cut_off: AtomicU64,
    /// Sockets disconnected for sending more than the inbound limit (also in `sockets_cut_off`).
    pub client_floods: AtomicU64,
}

impl Metrics {
    /// Adds `n` to `counter` and returns the new total.
    pub fn add(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, Ordering::Relaxed) + n
    }

    fn render(&self, presence: &Presence, cluster: &dyn Cluster) -> String {
        let mut out = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "gateway_online_users",
            "gauge",
            "Users with at least one live socket (on any node of a cluster).",
            presence.online_count() as u64,
        );
        metric(
            "gateway_sockets",
            "gauge",
            "Live sockets registered in presence on this node.",
            presence.total_sockets() as u64,
        );
        metric(
            "gateway_deliveries_total",
            "counter",
            "Messages accepted by a socket.",
            load(&self.deliveries),
        );
        metric(
            "gateway_refusals_total",
            "counter",
            "Messages a socket could not take.",
            load(&self.refusals),
        );
        metric(
            "gateway_handshakes_refused_total",
            "counter",
            "Socket.IO handshakes refused.",
            load(&self.handshakes_refused),
        );
        metric(
            "gateway_sockets_cut_off_total",
            "counter",
            "Sockets the gateway disconnected.",
            load(&self.sockets_cut_off),
        );
        metric(
            "gateway_client_floods_total",
            "counter",
            "Sockets disconnected for sending events over the inbound limit.",
            load(&self.client_floods),
        );
        if let Some(status) = cluster.status() {
            metric(
                "gateway_redis_up",
                "gauge",
                "1 while Redis is reachable (cluster mode); 0: sends to other nodes fail.",
                u64::from(status.redis_up),
            );
            metric(
                "gateway_cluster_nodes",
                "gauge",
                "Nodes with a live lease known to this node, itself included.",
                status.nodes as u64,
            );
            let _ = writeln!(
                out,
                "# HELP gateway_node_info This node's id.\n# TYPE gateway_node_info gauge\ngateway_node_info{{node_id=\"{}\"}} 1",
                status.node_id.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        out
    }
}

/// The `/metrics` router.
pub fn router(metrics: Arc<Metrics>, presence: Arc<Presence>, cluster: Arc<dyn Cluster>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, presence, cluster))
}

type ScrapeState = (Arc<Metrics>, Arc<Presence>, Arc<dyn Cluster>);

async fn scrape(State((metrics, presence, cluster)): State<ScrapeState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(&presence, &*cluster),
    )
}
