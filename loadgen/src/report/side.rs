//! The side-by-side tables: one per scenario, a row per figure with both servers' values
//! and how many times better or worse ours is.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::format::{bounded, cell, flag, fmt_n, num, Bounded};
use super::Lookup;

/// Which way is better for a figure.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
    Neither,
}

/// label, JSON key (dotted path), scale, unit, which way is better.
type Row = (&'static str, &'static str, f64, &'static str, Better);

use Better::{Higher as H, Lower as L, Neither as N};
// Tables of rows: one row per line reads better than rustfmt's five.
#[rustfmt::skip]
const PRESENCE_TRAFFIC: &[Row] = &[
    ("online lists received", "presence_lists_received", 1.0, "", L),
    ("bytes received by clients", "bytes_received_mib", 1.0, " MiB", L),
];
#[rustfmt::skip]
const IDLE: &[Row] = &[
    ("asked", "clients", 1.0, "", N),
    ("connected (acked)", "acked", 1.0, "", N),
    ("still connected when sampled", "still_connected", 1.0, "", H),
    ("time until all acked", "connect_s", 1.0, " s", L),
    ("time until presence settled", "settle_s", 1.0, " s", L),
    ("saw the full online list", "settled", 1.0, "", N),
    ("server RSS before", "server_before_rss_kib", 1.0 / 1024.0, " MiB", L),
    ("server RSS with the connections", "server_after_rss_kib", 1.0 / 1024.0, " MiB", L),
    ("RSS per connection", "rss_per_conn_kib", 1.0, " KiB", L),
    ("server CPU to connect them", "server_cpu_s", 1.0, " s", L),
];
#[rustfmt::skip]
const STORM: &[Row] = &[
    ("acked", "acked", 1.0, "", N),
    ("time until all acked", "connect_s", 1.0, " s", L),
    ("saw the full online list", "settled", 1.0, "", N),
    ("time until presence settled", "settle_s", 1.0, " s", L),
    ("waited (a bound when timed out)", "waited_s", 1.0, " s", N),
    ("largest online count a client saw (min over clients)", "online_seen_min", 1.0, "", N),
    ("server CPU", "server_cpu_s", 1.0, " s", L),
    ("server RSS after", "server_after_rss_kib", 1.0 / 1024.0, " MiB", L),
];
#[rustfmt::skip]
const SEND: &[Row] = &[
    ("calls answered OK", "sent_ok", 1.0, "", N),
    ("RPC errors", "rpc_errors", 1.0, "", N),
    ("calls/s", "rpc_per_s", 1.0, "", H),
    ("deliveries/s", "delivered_per_s", 1.0, "", H),
    ("deliveries per message", "deliveries_per_message", 1.0, "", N),
    ("lost (server said delivered, client never got it)", "lost", 1.0, "", N),
    ("not delivered to every tab", "not_delivered", 1.0, "", N),
    ("reordered", "reordered", 1.0, "", N),
    ("RPC latency p50", "rpc_latency_us.p50", 1e-3, " ms", L),
    ("RPC latency p99", "rpc_latency_us.p99", 1e-3, " ms", L),
    ("delivery latency p50", "delivery_latency_us.p50", 1e-3, " ms", L),
    ("delivery latency p90", "delivery_latency_us.p90", 1e-3, " ms", L),
    ("delivery latency p99", "delivery_latency_us.p99", 1e-3, " ms", L),
    ("delivery latency p99.9", "delivery_latency_us.p999", 1e-3, " ms", L),
    ("delivery latency max", "delivery_latency_us.max", 1e-3, " ms", L),
    ("server CPU per call", "server_cpu_us_per_msg", 1.0, " µs", L),
    ("server RSS at the end", "server_end_rss_kib", 1.0 / 1024.0, " MiB", L),
    ("load generator CPU (cores)", "loadgen_cpu_share", 1.0, "", N),
];
const IDLE_ALL: &[&[Row]] = &[IDLE, PRESENCE_TRAFFIC];
const STORM_ALL: &[&[Row]] = &[STORM, PRESENCE_TRAFFIC];

/// "Side by side": a table for each scenario that either server ran.
pub(super) fn write(md: &mut String, look: &Lookup) {
    let _ = writeln!(md, "## Side by side\n");
    let _ = writeln!(
        md,
        "\"ratio\": how many times better or worse {} is than the peer; \"> x\" marks a phase \
         that was cut off at its time bound (so the ratio is a lower bound).\n",
        look.ours
    );
    for (title, scenario, spec) in [
        ("Idle memory, 2k", "idle-2k", IDLE_ALL),
        ("Idle memory, 10k", "idle-10k", IDLE_ALL),
        ("Connect storm", "storm-5k", STORM_ALL),
        ("SendDirect, closed loop", "direct-c64", &[SEND]),
        ("SendDirect, fixed offered rate", "direct-rate", &[SEND]),
        ("Two tabs per user", "tabs-2", &[SEND]),
        ("SendStream, 100 receivers", "stream-100", &[SEND]),
        ("SendStream, 1,000 receivers", "stream", &[SEND]),
        ("Most idle connections", "idle-max", IDLE_ALL),
    ] {
        if let Some((go, gp)) = heading(md, look, title, scenario) {
            for &(label, key, scale, unit, better) in spec.iter().copied().flatten() {
                let (x, y) = (bounded(go, key), bounded(gp, key));
                if x.0.is_none() && y.0.is_none() {
                    continue;
                }
                let scaled = |v: Bounded| (v.0.map(|v| v * scale), v.1);
                side_row_bounded(md, label, scaled(x), scaled(y), unit, better);
            }
            let _ = writeln!(
                md,
                "| timed out | {} | {} | |",
                timed_out(go),
                timed_out(gp)
            );
            md.push('\n');
        }
    }
}

/// A scenario's heading, description and table head; none when neither server ran it.
fn heading<'a>(
    md: &mut String,
    look: &Lookup<'a>,
    title: &str,
    scenario: &str,
) -> Option<(Option<&'a Json>, Option<&'a Json>)> {
    let (go, gp) = (look.ours(scenario), look.peer(scenario));
    if go.is_none() && gp.is_none() {
        return None;
    }
    let desc = describe(go.or(gp));
    let _ = writeln!(md, "### {title} (`{scenario}`)\n\n{desc}\n");
    let _ = writeln!(
        md,
        "| metric | {} | {} | ratio |\n|---|---|---|---|",
        look.ours, look.peer
    );
    Some((go, gp))
}

/// One Markdown row of a side-by-side table; `better` says which way is better.
fn side_row_bounded(
    md: &mut String,
    label: &str,
    ours: Bounded,
    peer: Bounded,
    unit: &str,
    better: Better,
) {
    // How many times better ours is (>1) or worse (<1).
    let factor = match (ours.0, peer.0, better) {
        (Some(o), Some(p), Better::Higher) if o > 0.0 && p > 0.0 => Some(o / p),
        (Some(o), Some(p), Better::Lower) if o > 0.0 && p > 0.0 => Some(p / o),
        _ => None,
    };
    let ratio = match (factor, ours.1, peer.1) {
        (None, ..) => String::new(),
        (Some(_), true, _) => "n/a (timed out)".into(),
        (Some(f), false, bound) => {
            let at_least = if bound { ">= " } else { "" };
            if f >= 1.0 || bound {
                format!("{at_least}{}x better", fmt_n(f))
            } else {
                format!("{}x worse", fmt_n(1.0 / f))
            }
        }
    };
    let show = |v: Bounded| {
        if v.1 {
            format!("> {}", cell(v.0, unit))
        } else {
            cell(v.0, unit)
        }
    };
    let _ = writeln!(
        md,
        "| {label} | {} | {} | {ratio} |",
        show(ours),
        show(peer)
    );
}

fn timed_out(r: Option<&Json>) -> &'static str {
    match r {
        None => "n/a",
        Some(_) if flag(r, "connect_timed_out") => "connect",
        Some(_) if flag(r, "settle_timed_out") => "presence",
        Some(_) if flag(r, "presence_stalled") => "presence stalled short of the full list",
        Some(_) => "no",
    }
}

fn describe(r: Option<&Json>) -> String {
    let mut parts = Vec::new();
    if let Some(u) = num(r, "users") {
        parts.push(format!("{} users", fmt_n(u)));
    }
    if let Some(t) = num(r, "tabs") {
        if t > 1.0 {
            parts.push(format!("{} tabs each", fmt_n(t)));
        }
    }
    if let Some(c) = num(r, "concurrency") {
        parts.push(format!("{} calls in flight", fmt_n(c)));
    }
    if let Some(x) = num(r, "offered_rate") {
        parts.push(format!("{} calls/s offered", fmt_n(x)));
    }
    if let Some(s) = num(r, "streams") {
        parts.push(format!(
            "{} streams, window {}",
            fmt_n(s),
            cell(num(r, "window"), "")
        ));
    }
    if let Some(c) = num(r, "connect_concurrency") {
        parts.push(format!("at most {} handshakes in progress", fmt_n(c)));
    }
    if r.and_then(|r| r.get("kind")).and_then(Json::as_str) == Some("idle") {
        parts.push(format!(
            "held {} s before sampling",
            cell(num(r, "hold_s"), "")
        ));
    }
    parts.join(", ")
}
