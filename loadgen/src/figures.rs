//! The figures of a result line: units, latency summaries, and the samples of the server's
//! and the load generator's processes (RSS, CPU) around a measured phase.

use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value as Json};

use crate::args::Common;
use crate::client::{lock, Hub};
use crate::sys::{sample, ProcSample};

/// The server's process sample, when --server-pid names it.
pub fn server_sample(c: &Common) -> Option<ProcSample> {
    c.server_pid.and_then(|p| sample(&p.to_string()))
}

/// Nanoseconds as seconds.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Three decimals: the result line carries no false precision.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The error count and the first errors the clients and calls met.
pub fn add_errors(out: &mut Map<String, Json>, hub: &Hub) {
    out.insert("errors".into(), json!(hub.error_count.load(Relaxed)));
    let errors = lock(&hub.errors).clone();
    if !errors.is_empty() {
        out.insert("first_errors".into(), json!(errors));
    }
}

/// RSS and CPU time of a process sample, as `KEY_rss_kib` and `KEY_cpu_s`.
pub fn add_proc(out: &mut Map<String, Json>, key: &str, s: Option<ProcSample>) {
    if let Some(s) = s {
        out.insert(format!("{key}_rss_kib"), json!(s.rss_kib));
        out.insert(format!("{key}_cpu_s"), json!(round3(s.cpu_s)));
    }
}

/// CPU seconds between two samples of one process.
pub fn cpu_delta(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu_s - a?.cpu_s)
}

/// Count, percentiles, max and mean of a latency histogram (µs).
pub fn summary(h: &Histogram<u64>) -> Json {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": h.mean().round(),
    })
}

/// (latency µs, percentile) points for the CDF chart.
pub fn cdf(h: &Histogram<u64>) -> Json {
    if h.is_empty() {
        return json!([]);
    }
    let mut qs: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
    qs.extend([0.995, 0.999, 0.9995, 0.9999, 1.0]);
    Json::Array(
        qs.into_iter()
            .map(|q| json!([h.value_at_quantile(q), (q * 10_000.0).round() / 100.0]))
            .collect(),
    )
}

/// CPU that neither the server nor the load generator used while measuring: other work on
/// the machine that the numbers should be read against (0 on a quiet machine).
pub fn add_other_cpu(
    out: &mut Map<String, Json>,
    lg_start: Option<ProcSample>,
    lg_end: Option<ProcSample>,
    server_start: Option<ProcSample>,
    server_end: Option<ProcSample>,
) {
    let (Some(a), Some(b)) = (lg_start, lg_end) else {
        return;
    };
    let machine = b.machine_busy_s - a.machine_busy_s;
    let server = cpu_delta(server_start, server_end).unwrap_or(0.0);
    let other = (machine - server - (b.cpu_s - a.cpu_s)).max(0.0);
    out.insert("machine_busy_s".into(), json!(round3(machine)));
    out.insert("other_cpu_s".into(), json!(round3(other)));
}
