//! What `direct` and `stream` share: the message they send, the counters of a send phase,
//! and its end (waiting for deliveries still on their way, then the delivery figures).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use prost_types::{value::Kind, Struct, Value};
use serde_json::{json, Map, Value as Json};
use tokio::task::JoinHandle;

use crate::args::{Common, SendArgs};
use crate::client::{lock, new_histogram, Hub};
use crate::figures::{
    add_other_cpu, add_proc, cdf, cpu_delta, round3, secs, server_sample, summary,
};
use crate::sys::{sample, ProcSample, Progress};

fn number(n: u64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n as f64)),
    }
}

/// `{"r": receiver user index, "s": per-receiver sequence, "t": send time (ns), "z": filler}`.
pub fn message(r: u64, s: u64, t: u64, pad: &Option<String>) -> Value {
    let mut fields = BTreeMap::new();
    fields.insert("r".to_string(), number(r));
    fields.insert("s".to_string(), number(s));
    fields.insert("t".to_string(), number(t));
    if let Some(p) = pad {
        fields.insert(
            "z".to_string(),
            Value {
                kind: Some(Kind::StringValue(p.clone())),
            },
        );
    }
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

/// Counters of one send phase.
pub struct Sent {
    ok: AtomicU64,
    err: AtomicU64,
    offline: AtomicU64,
    delivered_sockets: AtomicU64,
    rpc_us: Mutex<Histogram<u64>>,
}

impl Sent {
    pub fn new() -> Arc<Self> {
        Arc::new(Sent {
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
            offline: AtomicU64::new(0),
            delivered_sockets: AtomicU64::new(0),
            rpc_us: Mutex::new(new_histogram()),
        })
    }

    /// Counts one answered call (sent at `t`) and its RPC latency.
    pub fn record(&self, hub: &Hub, t: u64, delivered: Result<u32, String>) {
        let us = hub.now_ns().saturating_sub(t) / 1000;
        lock(&self.rpc_us).saturating_record(us.max(1));
        match delivered {
            Ok(d) => {
                self.ok.fetch_add(1, Relaxed);
                self.delivered_sockets.fetch_add(d as u64, Relaxed);
                if d == 0 {
                    self.offline.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                self.err.fetch_add(1, Relaxed);
                hub.error(e);
            }
        }
    }
}

/// The receivers' ids, `<prefix><infix>N` for each of --users.
pub fn user_ids(c: &Common, infix: &str) -> Arc<Vec<String>> {
    Arc::new(
        (0..c.users)
            .map(|u| format!("{}{infix}{u}", c.user_prefix))
            .collect(),
    )
}

/// The filler of every message: --payload-bytes of "x", or none.
pub fn filler(s: &SendArgs) -> Arc<Option<String>> {
    Arc::new((s.payload_bytes > 0).then(|| "x".repeat(s.payload_bytes)))
}

/// One send phase: its counters, when it started, and the samples of the processes then.
pub struct Phase {
    pub sent: Arc<Sent>,
    pub start_ns: u64,
    /// When sending stops (--duration).
    pub deadline: Instant,
    progress: Progress,
    cpu_start: Option<ProcSample>,
    lg_start: Option<ProcSample>,
}

impl Phase {
    /// Samples the processes and starts recording deliveries.
    pub fn start(c: &Common, s: &SendArgs, hub: &Hub, label: &str, total: u64) -> Self {
        let sent = Sent::new();
        let cpu_start = server_sample(c);
        let lg_start = sample("self");
        hub.recording.store(true, Relaxed);
        let start_ns = hub.now_ns();
        let deadline = Instant::now() + Duration::from_secs_f64(s.duration);
        let progress = Progress::new(label, total, !c.quiet);
        Phase {
            sent,
            start_ns,
            deadline,
            progress,
            cpu_start,
            lg_start,
        }
    }

    /// Shows the calls answered so far (`what`) and the deliveries.
    pub fn show(&mut self, hub: &Hub, what: &str) {
        let answered = self.sent.ok.load(Relaxed) + self.sent.err.load(Relaxed);
        self.progress.update(answered, || {
            format!("{what}, {} delivered", hub.delivered.load(Relaxed))
        });
    }

    /// Shows the progress until every task has ended, or until `until`.
    pub async fn watch(
        &mut self,
        hub: &Hub,
        tasks: &[JoinHandle<()>],
        until: Option<Instant>,
        what: &str,
    ) {
        while !tasks.iter().all(|t| t.is_finished()) && until.is_none_or(|u| Instant::now() < u) {
            self.show(hub, what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for deliveries still on their way (at most --drain-timeout), then adds the
    /// delivery and CPU figures to `out`.
    pub async fn finish(self, c: &Common, s: &SendArgs, hub: &Hub, out: &mut Map<String, Json>) {
        let sent = &self.sent;
        let send_end_ns = hub.now_ns();
        self.progress.finish(format!(
            "{} ok, {} errors in {:.3} s",
            sent.ok.load(Relaxed),
            sent.err.load(Relaxed),
            secs(send_end_ns - self.start_ns)
        ));
        let expected = sent.delivered_sockets.load(Relaxed);
        let deadline = Instant::now() + Duration::from_secs_f64(s.drain_timeout);
        while hub.delivered.load(Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained_ns = hub.now_ns();
        let cpu_end = server_sample(c);
        let lg_end = sample("self");
        hub.recording.store(false, Relaxed);
        add_deliveries(out, c, hub, sent, self.start_ns, send_end_ns, expected);
        out.insert(
            "drain_s".into(),
            json!(round3(secs(drained_ns.saturating_sub(send_end_ns)))),
        );
        out.insert("rpc_latency_us".into(), summary(&lock(&sent.rpc_us)));
        let dh = lock(&hub.delivery_us);
        out.insert("delivery_latency_us".into(), summary(&dh));
        out.insert("delivery_latency_cdf".into(), cdf(&dh));
        let ok = sent.ok.load(Relaxed);
        if let Some(d) = cpu_delta(self.cpu_start, cpu_end) {
            out.insert("server_cpu_s".into(), json!(round3(d)));
            out.insert(
                "server_cpu_us_per_msg".into(),
                json!(round3(d * 1e6 / ok.max(1) as f64)),
            );
        }
        add_proc(out, "server_end", cpu_end);
        if let Some(d) = cpu_delta(self.lg_start, lg_end) {
            out.insert("loadgen_cpu_s".into(), json!(round3(d)));
            out.insert(
                "loadgen_cpu_share".into(),
                json!(round3(d / secs(drained_ns - self.start_ns).max(1e-9))),
            );
        }
        add_other_cpu(out, self.lg_start, lg_end, self.cpu_start, cpu_end);
    }
}

/// What the calls answered (`expected` sockets reached) against what the clients
/// received: loss, order, rates.
fn add_deliveries(
    out: &mut Map<String, Json>,
    c: &Common,
    hub: &Hub,
    sent: &Sent,
    send_start_ns: u64,
    send_end_ns: u64,
    expected: u64,
) {
    let (mut received, mut reordered, mut dups, mut misrouted, mut last_recv) = (0, 0, 0, 0, 0);
    for st in &hub.stats {
        received += st.received.load(Relaxed);
        reordered += st.reordered.load(Relaxed);
        dups += st.duplicates.load(Relaxed);
        misrouted += st.misrouted.load(Relaxed);
        last_recv = last_recv.max(st.last_recv_ns.load(Relaxed));
    }
    let ok = sent.ok.load(Relaxed);
    let send_s = secs(send_end_ns.saturating_sub(send_start_ns)).max(1e-9);
    let deliver_s = secs(last_recv.max(send_end_ns).saturating_sub(send_start_ns)).max(1e-9);
    out.insert("sent_ok".into(), json!(ok));
    out.insert("rpc_errors".into(), json!(sent.err.load(Relaxed)));
    out.insert(
        "offline_responses".into(),
        json!(sent.offline.load(Relaxed)),
    );
    out.insert("delivered_sockets".into(), json!(expected));
    out.insert("received".into(), json!(received));
    out.insert("lost".into(), json!(expected.saturating_sub(received)));
    out.insert(
        "not_delivered".into(),
        json!((ok * c.tabs as u64).saturating_sub(received)),
    );
    out.insert("reordered".into(), json!(reordered));
    out.insert("duplicates".into(), json!(dups));
    out.insert("misrouted".into(), json!(misrouted));
    out.insert(
        "deliveries_per_message".into(),
        json!(round3(received as f64 / ok.max(1) as f64)),
    );
    out.insert("send_s".into(), json!(round3(send_s)));
    out.insert("rpc_per_s".into(), json!((ok as f64 / send_s).round()));
    out.insert(
        "delivered_per_s".into(),
        json!((received as f64 / deliver_s).round()),
    );
}
