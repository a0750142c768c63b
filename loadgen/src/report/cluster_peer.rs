//! The cluster-peer section (issue 23): three gateway nodes against three socket.io
//! processes on `@socket.io/redis-adapter`, each stack on its own Redis, the same tabs
//! (`loadgen tabs`, server `cp-gateway` / `cp-socketio`) and backends in another process:
//! the goals met or missed, then every figure side by side with its ratio. A run of the
//! section may have several rounds (scenario prefixes `cp`, `cp2`, ...: fresh processes
//! each, the stacks' order alternating); every cell gives each round's figure.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::format::{cell, fmt_n, ms, num};
use super::Lookup;

const GATEWAY: &str = "cp-gateway";
const PEER: &str = "cp-socketio";
/// The server name of each round's `<prefix>-order` line.
const RUN: &str = "cp-run";

/// The rounds of the section (their scenario prefixes) and the lines of each.
struct Runs<'a> {
    look: &'a Lookup<'a>,
    rounds: Vec<String>,
}

impl<'a> Runs<'a> {
    fn gw(&self, round: &str, phase: &str) -> Option<&'a Json> {
        self.look.get(GATEWAY, &format!("{round}-{phase}"))
    }

    fn peer(&self, round: &str, phase: &str) -> Option<&'a Json> {
        self.look.get(PEER, &format!("{round}-{phase}"))
    }

    fn order(&self, round: &str) -> Option<&'a Json> {
        self.look.get(RUN, &format!("{round}-order"))
    }

    /// `f` of each round, joined.
    fn each(&self, f: impl Fn(&str) -> String) -> String {
        self.rounds
            .iter()
            .map(|r| f(r))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The section, when a round ran.
pub(super) fn write(md: &mut String, look: &Lookup) {
    let rounds: Vec<String> = (1..=9)
        .map(|i| match i {
            1 => "cp".to_string(),
            i => format!("cp{i}"),
        })
        .filter(|p| {
            look.get(GATEWAY, &format!("{p}-connect")).is_some()
                || look.get(PEER, &format!("{p}-connect")).is_some()
        })
        .collect();
    let Some(first) = rounds.first() else {
        return;
    };
    let runs = Runs {
        look,
        rounds: rounds.clone(),
    };
    let order = runs.order(first);
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
         over HTTP/2, or with `--stream` the items of one SendStream per connection) or a \
         grpc-js one to the gateway, spreading users over the three gRPC \
         ports (a third delivered on the node called), `@socket.io/redis-emitter` \
         (`io.to(userId).emit`) to the peer; {} s per phase at {} msg/s, then at saturation \
         (64 calls in flight for the gRPC backends, 384 items over six streams, 256 unanswered publishes for the emitter: \
         Redis answers a publish before any server has read it, so the emitter is not held back \
         by the servers and its backlog waits in them, which is the peer's saturation latency). \
         Latency from the message's epoch `t` (sender and tabs on one clock). CPU is utime + \
         stime of the three servers, and of Redis apart, over each phase, per message the tabs \
         received; \"other work\" is the machine's busy time less the stacks, the tabs and the \
         sender (the machine is shared).\n",
        str_at(order, "node"),
        cell(num(order, "tabs"), ""),
        cell(num(order, "seconds"), ""),
        cell(num(order, "rate"), ""),
    );
    let _ = writeln!(
        md,
        "{} round(s), fresh servers and Redis each, in the order: {}. Each cell gives every \
         round's figure, separated by \"; \"; a goal is met when it is met in every round.\n",
        runs.rounds.len(),
        runs.each(|r| str_at(runs.order(r), "order").replace(' ', " then "))
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
    let rows: [(&str, &str, &str, f64, bool, &str); 10] = [
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
        (
            "the same with SendStream: CPU per delivered message, servers + Redis, at the fixed rate",
            "rate-stream",
            "cpu_us_per_msg",
            1.0 / 3.0,
            false,
            " µs",
        ),
        (
            "the same with SendStream: CPU per delivered message, servers + Redis, at saturation",
            "sat-stream",
            "cpu_us_per_msg",
            1.0 / 3.0,
            false,
            " µs",
        ),
        (
            "the same with SendStream: Redis CPU per delivered message, at saturation",
            "sat-stream",
            "redis_cpu_us_per_msg",
            1.0,
            false,
            " µs",
        ),
        (
            "the same with SendStream: messages per second per core used at saturation",
            "sat-stream",
            "msgs_per_core_s",
            3.0,
            true,
            "",
        ),
    ];
    for (label, phase, key, bound, at_least, unit) in rows {
        let scale = |x: Option<f64>| if unit == " ms" { ms(x) } else { x };
        let g = |r: &str| scale(num(runs.gw(r, phase), key));
        let peer_phase = phase.trim_end_matches("-stream");
        let p = |r: &str| scale(num(runs.peer(r, peer_phase), key));
        let ratios: Vec<Option<f64>> = runs.rounds.iter().map(|r| ratio(g(r), p(r))).collect();
        let required = match (at_least, bound) {
            (true, b) => format!(">= {}x", fmt_n(b)),
            (false, 1.0) => "<= 1x".to_string(),
            (false, _) => "<= 1/3".to_string(),
        };
        let met: Option<bool> = ratios
            .iter()
            .map(|r| r.map(|r| if at_least { r >= bound } else { r <= bound }))
            .collect::<Option<Vec<bool>>>()
            .map(|all| all.iter().all(|m| *m));
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {required} | {} |",
            runs.each(|r| cell(g(r), unit)),
            runs.each(|r| cell(p(r), unit)),
            ratios
                .iter()
                .map(|r| r.map_or("n/a".into(), times))
                .collect::<Vec<_>>()
                .join("; "),
            status(met)
        );
    }
    md.push('\n');
}

/// A figure of every run: label, phase, key (none: the four counts), unit, and what the
/// stored value is divided by (µs to ms).
type Figure = (&'static str, &'static str, &'static str, &'static str, f64);

#[rustfmt::skip]
const FIGURES: &[Figure] = &[
    ("connect all tabs", "connect", "connect_s", " s", 1.0),
    ("RSS of an idle node before any tab (mean of three)", "connect", "idle_node_rss_mib_mean", " MiB", 1.0),
    ("RSS per connected tab (three nodes' growth / tabs)", "connect", "rss_per_tab_kib", " KiB", 1.0),
    ("fixed rate: messages sent", "rate", "sent", "", 1.0),
    ("fixed rate: received at the tabs", "rate", "received", "", 1.0),
    ("fixed rate: lost / extra / duplicated / misrouted", "rate", "", "", 1.0),
    ("fixed rate: end-to-end p50", "rate", "delivery_latency_us.p50", " ms", 1000.0),
    ("fixed rate: end-to-end p99", "rate", "delivery_latency_us.p99", " ms", 1000.0),
    ("fixed rate: servers' CPU per message", "rate", "servers_cpu_us_per_msg", " µs", 1.0),
    ("fixed rate: Redis CPU per message", "rate", "redis_cpu_us_per_msg", " µs", 1.0),
    ("fixed rate: servers + Redis CPU per message", "rate", "cpu_us_per_msg", " µs", 1.0),
    ("fixed rate: the tabs' CPU (loadgen)", "rate", "tabs_cpu_s", " s", 1.0),
    ("fixed rate: CPU of other work on the machine", "rate", "other_cpu_s", " s", 1.0),
    ("saturation: messages sent", "sat", "sent", "", 1.0),
    ("saturation: received at the tabs", "sat", "received", "", 1.0),
    ("saturation: lost / extra / duplicated / misrouted", "sat", "", "", 1.0),
    ("saturation: messages per second end to end", "sat", "delivered_per_s", "", 1.0),
    ("saturation: end-to-end p99", "sat", "delivery_latency_us.p99", " ms", 1000.0),
    ("saturation: servers' CPU per message", "sat", "servers_cpu_us_per_msg", " µs", 1.0),
    ("saturation: Redis CPU per message", "sat", "redis_cpu_us_per_msg", " µs", 1.0),
    ("saturation: servers + Redis CPU per message", "sat", "cpu_us_per_msg", " µs", 1.0),
    ("saturation: messages per second per core used", "sat", "msgs_per_core_s", "", 1.0),
    ("saturation: the tabs' CPU (loadgen)", "sat", "tabs_cpu_s", " s", 1.0),
    ("saturation: CPU of other work on the machine", "sat", "other_cpu_s", " s", 1.0),
];

/// Keys shown without a ratio: counts, and CPU that is not the stacks'.
const NO_RATIO: &[&str] = &["", "sent", "received", "tabs_cpu_s", "other_cpu_s"];

fn figures(md: &mut String, runs: &Runs) {
    let _ = writeln!(
        md,
        "| figure | gateway, Rust backend | gateway, Rust backend, SendStream | gateway, grpc-js backend | socket.io + redis-adapter, emitter | ratio (Rust backend / peer) |\n\
         |---|---|---|---|---|---|"
    );
    for &(label, phase, key, unit, per) in FIGURES {
        let value = |r: Option<&Json>| num(r, key).map(|x| x / per);
        let ratios = runs.each(|round| {
            let (g, p) = (runs.gw(round, phase), runs.peer(round, phase));
            ratio(value(g), value(p)).map_or("n/a".into(), times)
        });
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            runs.each(|r| show(runs.gw(r, phase), key, unit, per)),
            runs.each(|r| show(runs.gw(r, &variant(phase, "stream")), key, unit, per)),
            runs.each(|r| show(runs.gw(r, &variant(phase, "grpcjs")), key, unit, per)),
            runs.each(|r| show(runs.peer(r, phase), key, unit, per)),
            if NO_RATIO.contains(&key) { "" } else { &ratios }
        );
    }
    backend_cpu(md, runs);
}

/// A phase with another backend, `stream` or `grpcjs` (the connect is the same tabs).
fn variant(phase: &str, backend: &str) -> String {
    match phase {
        "connect" => "connect".into(),
        p => format!("{p}-{backend}"),
    }
}

/// One cell: the figure, or the four counts when the row has no key.
fn show(r: Option<&Json>, key: &str, unit: &str, per: f64) -> String {
    if r.is_none() {
        return "n/a".into();
    }
    if key.is_empty() {
        let n = |k| cell(num(r, k), "");
        return format!(
            "{} / {} / {} / {}",
            n("lost"),
            n("extra"),
            n("duplicates"),
            n("misrouted")
        );
    }
    cell(num(r, key).map(|x| x / per), unit)
}

/// What each backend spent of its own CPU per message (not counted above).
fn backend_cpu(md: &mut String, runs: &Runs) {
    let per = |r: Option<&Json>| {
        let cpu = num(r, "sender.cpu_s")?;
        let sent = num(r, "sender.sent")?;
        Some(cpu * 1e6 / sent.max(1.0))
    };
    let gw = |phase: &str| runs.each(|r| cell(per(runs.gw(r, phase)), " µs"));
    let peer = |phase: &str| runs.each(|r| cell(per(runs.peer(r, phase)), " µs"));
    let _ = writeln!(
        md,
        "\nThe backends' own CPU per message sent (not in the figures above): at the fixed rate \
         `loadgen backend` {}, with SendStream {}, grpc-js {}, the emitter {}; at saturation {}, \
         {}, {}, {}.",
        gw("rate"),
        gw("rate-stream"),
        gw("rate-grpcjs"),
        peer("rate"),
        gw("sat"),
        gw("sat-stream"),
        gw("sat-grpcjs"),
        peer("sat"),
    );
}
