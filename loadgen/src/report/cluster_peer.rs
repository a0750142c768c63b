//! The cluster-peer section (issue 23): three gateway nodes against three socket.io
//! processes on `@socket.io/redis-adapter`, each stack on its own Redis, the same tabs
//! (`loadgen tabs`, server `cp-gateway` / `cp-socketio`) and backends in another process:
//! the goals met or missed, then every figure side by side with its ratio.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::format::{cell, fmt_n, ms, num};
use super::Lookup;

const GATEWAY: &str = "cp-gateway";
const PEER: &str = "cp-socketio";

/// The runs of the section: the gateway with the Rust and the grpc-js backend, the peer.
struct Runs<'a> {
    look: &'a Lookup<'a>,
}

impl<'a> Runs<'a> {
    fn gw(&self, phase: &str) -> Option<&'a Json> {
        self.look.get(GATEWAY, &format!("cp-{phase}"))
    }

    fn peer(&self, phase: &str) -> Option<&'a Json> {
        self.look.get(PEER, &format!("cp-{phase}"))
    }
}

/// The section, when either stack ran.
pub(super) fn write(md: &mut String, look: &Lookup) {
    let runs = Runs { look };
    if runs.gw("connect").is_none() && runs.peer("connect").is_none() {
        return;
    }
    let order = look.get("cp-run", "cp-order");
    let _ = writeln!(
        md,
        "## Against the socket.io + Redis adapter cluster (issue 23)\n"
    );
    let _ = writeln!(
        md,
        "Three gateway nodes in cluster mode and three socket.io 4.8 processes on \
         `@socket.io/redis-adapter` 8.3 (`bench/peers/socketio-cluster`, Node {}), each stack on \
         its own redis-server with the same flags; {} tabs, one per user, spread evenly over \
         the three nodes (WebSocket, the peer's room per user; the gateway's tabs ask \
         `presence=none`: the peer has no presence), held by one `loadgen tabs` process that \
         counts every message. The backend is another process: `loadgen backend` (SendDirect \
         over HTTP/2) or a grpc-js one to the gateway, spreading users over the three gRPC \
         ports (a third delivered on the node called), `@socket.io/redis-emitter` \
         (`io.to(userId).emit`) to the peer; {} s per phase at {} msg/s, then at saturation \
         (64 calls in flight for the gRPC backends, 256 unanswered publishes for the emitter). \
         Latency from the message's epoch `t` (sender and tabs on one clock). CPU is utime + \
         stime of the three servers, and of Redis apart, over each phase, per message the tabs \
         received. Stacks measured in the order: {}.\n",
        str_at(order, "node"),
        cell(num(order, "tabs"), ""),
        cell(num(order, "seconds"), ""),
        cell(num(order, "rate"), ""),
        str_at(order, "order").replace(' ', ", then ")
    );
    goals(md, &runs);
    figures(md, &runs);
    md.push('\n');
}

/// A string field of a run, or "n/a".
fn str_at(r: Option<&Json>, key: &str) -> String {
    r.and_then(|r| r.get(key))
        .and_then(Json::as_str)
        .unwrap_or("n/a")
        .to_string()
}

/// `ours / theirs`.
fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    ours.zip(theirs)
        .filter(|(_, t)| *t > 0.0)
        .map(|(o, t)| o / t)
}

/// A ratio as `1.23x`; three decimals below 0.1, where two would round to 0.
fn times(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}x")
    } else {
        format!("{}x", fmt_n(r))
    }
}

fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The goals, gateway (Rust backend) against the peer.
fn goals(md: &mut String, runs: &Runs) {
    let _ = writeln!(
        md,
        "| goal | gateway | socket.io + redis-adapter | ratio | required | status |\n\
         |---|---|---|---|---|---|"
    );
    let rows: [(&str, &str, &str, f64, bool, &str); 6] = [
        (
            "CPU per delivered message, servers + Redis, at the fixed rate",
            "rate",
            "cpu_us_per_msg",
            1.0 / 3.0,
            false,
            " µs",
        ),
        (
            "CPU per delivered message, servers + Redis, at saturation",
            "sat",
            "cpu_us_per_msg",
            1.0 / 3.0,
            false,
            " µs",
        ),
        (
            "Redis CPU per delivered message, at the fixed rate",
            "rate",
            "redis_cpu_us_per_msg",
            1.0,
            false,
            " µs",
        ),
        (
            "Redis CPU per delivered message, at saturation",
            "sat",
            "redis_cpu_us_per_msg",
            1.0,
            false,
            " µs",
        ),
        (
            "end-to-end p99 at the fixed rate",
            "rate",
            "delivery_latency_us.p99",
            1.0 / 3.0,
            false,
            " ms",
        ),
        (
            "messages per second per core used (servers + Redis) at saturation",
            "sat",
            "msgs_per_core_s",
            3.0,
            true,
            "",
        ),
    ];
    for (label, phase, key, bound, at_least, unit) in rows {
        let scale = |x: Option<f64>| if unit == " ms" { ms(x) } else { x };
        let (g, p) = (
            scale(num(runs.gw(phase), key)),
            scale(num(runs.peer(phase), key)),
        );
        let r = ratio(g, p);
        let required = match (at_least, bound) {
            (true, b) => format!(">= {}x", fmt_n(b)),
            (false, 1.0) => "<= 1x".to_string(),
            (false, _) => "<= 1/3".to_string(),
        };
        let met = r.map(|r| if at_least { r >= bound } else { r <= bound });
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {required} | {} |",
            cell(g, unit),
            cell(p, unit),
            r.map_or("n/a".into(), times),
            status(met)
        );
    }
    md.push('\n');
}

/// A figure of every run: gateway with each backend, the peer, and gateway (Rust) / peer.
struct Figure {
    label: &'static str,
    phase: &'static str,
    key: &'static str,
    unit: &'static str,
    /// Divides the stored value (µs to ms, KiB to MiB).
    per: f64,
}

fn figures(md: &mut String, runs: &Runs) {
    let _ = writeln!(
        md,
        "| figure | gateway, Rust backend | gateway, grpc-js backend | socket.io + redis-adapter, emitter | ratio (Rust backend / peer) |\n\
         |---|---|---|---|---|"
    );
    let f = |label, phase, key, unit, per| Figure {
        label,
        phase,
        key,
        unit,
        per,
    };
    let rows = [
        f("connect all tabs", "connect", "connect_s", " s", 1.0),
        f(
            "RSS of an idle node before any tab (mean of three)",
            "connect",
            "idle_node_rss_mib_mean",
            " MiB",
            1.0,
        ),
        f(
            "RSS per connected tab (three nodes' growth / tabs)",
            "connect",
            "rss_per_tab_kib",
            " KiB",
            1.0,
        ),
        f("fixed rate: messages sent", "rate", "sent", "", 1.0),
        f(
            "fixed rate: received at the tabs",
            "rate",
            "received",
            "",
            1.0,
        ),
        f(
            "fixed rate: lost / extra / duplicated / misrouted",
            "rate",
            "",
            "",
            1.0,
        ),
        f(
            "fixed rate: end-to-end p50",
            "rate",
            "delivery_latency_us.p50",
            " ms",
            1000.0,
        ),
        f(
            "fixed rate: end-to-end p99",
            "rate",
            "delivery_latency_us.p99",
            " ms",
            1000.0,
        ),
        f(
            "fixed rate: servers' CPU per message",
            "rate",
            "servers_cpu_us_per_msg",
            " µs",
            1.0,
        ),
        f(
            "fixed rate: Redis CPU per message",
            "rate",
            "redis_cpu_us_per_msg",
            " µs",
            1.0,
        ),
        f(
            "fixed rate: servers + Redis CPU per message",
            "rate",
            "cpu_us_per_msg",
            " µs",
            1.0,
        ),
        f("saturation: messages sent", "sat", "sent", "", 1.0),
        f(
            "saturation: received at the tabs",
            "sat",
            "received",
            "",
            1.0,
        ),
        f(
            "saturation: lost / extra / duplicated / misrouted",
            "sat",
            "",
            "",
            1.0,
        ),
        f(
            "saturation: messages per second end to end",
            "sat",
            "delivered_per_s",
            "",
            1.0,
        ),
        f(
            "saturation: end-to-end p99",
            "sat",
            "delivery_latency_us.p99",
            " ms",
            1000.0,
        ),
        f(
            "saturation: servers' CPU per message",
            "sat",
            "servers_cpu_us_per_msg",
            " µs",
            1.0,
        ),
        f(
            "saturation: Redis CPU per message",
            "sat",
            "redis_cpu_us_per_msg",
            " µs",
            1.0,
        ),
        f(
            "saturation: servers + Redis CPU per message",
            "sat",
            "cpu_us_per_msg",
            " µs",
            1.0,
        ),
        f(
            "saturation: messages per second per core used",
            "sat",
            "msgs_per_core_s",
            "",
            1.0,
        ),
    ];
    for row in &rows {
        let cells = [
            runs.gw(row.phase),
            runs.gw(&grpcjs(row.phase)),
            runs.peer(row.phase),
        ];
        let shown: Vec<String> = cells.iter().map(|r| show(*r, row)).collect();
        let value = |r: Option<&Json>| num(r, row.key).map(|x| x / row.per);
        let r = if row.key.is_empty() || row.key == "sent" || row.key == "received" {
            None
        } else {
            ratio(value(cells[0]), value(cells[2]))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.label,
            shown[0],
            shown[1],
            shown[2],
            r.map_or(String::new(), times)
        );
    }
    backend_cpu(md, runs);
}

/// The grpc-js phase of a phase (the connect is the same tabs).
fn grpcjs(phase: &str) -> String {
    match phase {
        "connect" => "connect".into(),
        p => format!("{p}-grpcjs"),
    }
}

/// One cell: the figure, or the four counts when the row has no key.
fn show(r: Option<&Json>, row: &Figure) -> String {
    if r.is_none() {
        return "n/a".into();
    }
    if row.key.is_empty() {
        let n = |k| cell(num(r, k), "");
        return format!(
            "{} / {} / {} / {}",
            n("lost"),
            n("extra"),
            n("duplicates"),
            n("misrouted")
        );
    }
    cell(num(r, row.key).map(|x| x / row.per), row.unit)
}

/// What each backend spent of its own CPU per message (not counted above).
fn backend_cpu(md: &mut String, runs: &Runs) {
    let per = |r: Option<&Json>| {
        let cpu = num(r, "sender.cpu_s")?;
        let sent = num(r, "sender.sent")?;
        Some(cpu * 1e6 / sent.max(1.0))
    };
    let _ = writeln!(
        md,
        "\nThe backends' own CPU per message sent (not in the figures above): at the fixed rate \
         `loadgen backend` {}, grpc-js {}, the emitter {}; at saturation {}, {}, {}.",
        cell(per(runs.gw("rate")), " µs"),
        cell(per(runs.gw("rate-grpcjs")), " µs"),
        cell(per(runs.peer("rate")), " µs"),
        cell(per(runs.gw("sat")), " µs"),
        cell(per(runs.gw("sat-grpcjs")), " µs"),
        cell(per(runs.peer("sat")), " µs"),
    );
}
