//! The cluster section (issue 11): its targets, then the figures of each cluster scenario
//! and of each node of the idle run.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::format::{bounded, cell, fmt_n, ms, num};
use super::Lookup;

/// The server name of the cluster runs.
const CLUSTER: &str = "gateway-cluster";

impl<'a> Lookup<'a> {
    fn cluster(&self, scenario: &str) -> Option<&'a Json> {
        self.get(CLUSTER, scenario)
    }
}

/// The section, when any cluster scenario (or its single-node baseline) ran.
pub(super) fn write(md: &mut String, look: &Lookup) {
    let single = look.ours("cluster-single-c64");
    if single.is_none() && !look.runs.keys().any(|(server, _)| server == CLUSTER) {
        return;
    }
    let _ = writeln!(md, "## Cluster mode (issue 11)\n");
    let _ = writeln!(
        md,
        "Three nodes in cluster mode on one local Redis, fresh nodes for each scenario; \
         \"local\": the receiver's sockets are on the node that takes the call, \"remote\": on \
         another node.\n"
    );
    let _ = writeln!(
        md,
        "| target | measured | required | status |\n|---|---|---|---|"
    );
    local_vs_single(md, look, single);
    cross_vs_same(md, look);
    kills(md, look);
    let nodes: Vec<&Json> = (1..=3)
        .filter_map(|i| look.cluster(&format!("cluster-idle-node{i}")))
        .collect();
    idle(md, look, &nodes);
    scenarios(md, look, single);
    if !nodes.is_empty() {
        per_node(md, look, &nodes);
    }
    super::watch::write(md, look);
    md.push('\n');
}

/// A cluster target's status cell.
fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// SendDirect c64 with the receiver on the node called, against one node alone.
fn local_vs_single(md: &mut String, look: &Lookup, single: Option<&Json>) {
    let (base, local) = (
        num(single, "rpc_per_s"),
        num(look.cluster("cluster-local-c64"), "rpc_per_s"),
    );
    let r = base.zip(local).map(|(b, l)| l / b.max(1e-9));
    let _ = writeln!(
        md,
        "| SendDirect c64, cluster local receiver vs single node | {} vs {} calls/s ({}) | >= 80% | {} |",
        cell(local, ""),
        cell(base, ""),
        r.map_or("n/a".into(), |r| format!("{:.0}%", r * 100.0)),
        status(r.map(|r| r >= 0.8))
    );
}

/// Delivery p99 at a fixed rate, receiver on another node against on the same one.
fn cross_vs_same(md: &mut String, look: &Lookup) {
    let (same, cross) = (
        num(look.cluster("cluster-same-rate"), "delivery_latency_us.p99"),
        num(
            look.cluster("cluster-cross-rate"),
            "delivery_latency_us.p99",
        ),
    );
    let r = same.zip(cross).map(|(s, x)| x / s.max(1e-9));
    let _ = writeln!(
        md,
        "| delivery p99 at {} calls/s, cross-node vs same-node | {} vs {} ({}) | <= 2x | {} |",
        cell(num(look.cluster("cluster-cross-rate"), "offered_rate"), ""),
        cell(ms(cross), " ms"),
        cell(ms(same), " ms"),
        r.map_or("n/a".into(), |r| format!("{}x", fmt_n(r))),
        status(r.map(|r| r <= 2.0))
    );
}

/// How soon a killed node's users are gone from the others.
fn kills(md: &mut String, look: &Lookup) {
    // One kill run per --node-lease-ms (scenario cluster-kill-lease-MS), shortest lease first.
    let mut kills: Vec<&Json> = look
        .runs
        .iter()
        .filter(|((server, scenario), _)| server == CLUSTER && scenario.starts_with("cluster-kill"))
        .map(|(_, r)| r)
        .collect();
    kills.sort_by_key(|r| num(Some(r), "node_lease_ms").map_or(0, |l| l as u64));
    for kill in kills.into_iter().map(Some) {
        let (vanish, lease) = (num(kill, "vanish_ms"), num(kill, "node_lease_ms"));
        let bound = lease.map(|l| l * 1.2);
        let _ = writeln!(
            md,
            "| a killed node's {} users gone from the others, --node-lease-ms {} | {} | <= lease + lease/5 ({}) | {} |",
            cell(num(kill, "users"), ""),
            cell(lease, ""),
            cell(vanish, " ms"),
            cell(bound, " ms"),
            status(vanish.zip(bound).map(|(v, b)| v <= b))
        );
    }
}

/// Idle connections over three nodes: all held, every client with the whole online set.
fn idle(md: &mut String, look: &Lookup, nodes: &[&Json]) {
    let sum = |key: &str| nodes.iter().filter_map(|r| num(Some(r), key)).sum::<f64>();
    let asked = num(look.cluster("cluster-idle"), "clients");
    let held = sum("still_connected");
    let settled = sum("settled");
    let mode = nodes
        .first()
        .and_then(|r| r.get("presence_mode"))
        .and_then(Json::as_str)
        .unwrap_or("list");
    let _ = writeln!(
        md,
        "| idle connections over three nodes, every client with the whole online set (presence mode {mode}) | {} held, {} saw all | {} | {} |\n",
        fmt_n(held),
        fmt_n(settled),
        cell(asked, ""),
        status(asked.map(|a| !nodes.is_empty() && held >= a && settled >= a))
    );
}

/// The figures of each cluster scenario that sends, and of the single-node baseline.
fn scenarios(md: &mut String, look: &Lookup, single: Option<&Json>) {
    let _ = writeln!(
        md,
        "| scenario | calls/s | RPC p99 | delivery p50 | delivery p99 | lost | RPC errors |\n\
         |---|---|---|---|---|---|---|"
    );
    for (label, r) in [
        ("single node, c64", single),
        (
            "cluster, local receiver, c64",
            look.cluster("cluster-local-c64"),
        ),
        (
            "cluster, remote receiver, c64",
            look.cluster("cluster-remote-c64"),
        ),
        (
            "cluster, same node, fixed rate",
            look.cluster("cluster-same-rate"),
        ),
        (
            "cluster, cross-node, fixed rate",
            look.cluster("cluster-cross-rate"),
        ),
    ] {
        if r.is_none() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            cell(num(r, "rpc_per_s"), ""),
            cell(ms(num(r, "rpc_latency_us.p99")), " ms"),
            cell(ms(num(r, "delivery_latency_us.p50")), " ms"),
            cell(ms(num(r, "delivery_latency_us.p99")), " ms"),
            cell(num(r, "lost"), ""),
            cell(num(r, "rpc_errors"), "")
        );
    }
}

/// Each node of the idle run, then Redis during it.
fn per_node(md: &mut String, look: &Lookup, nodes: &[&Json]) {
    let _ = writeln!(
        md,
        "\n| idle, per node | connected | saw the whole list | presence settled | RSS per connection | RSS |\n\
         |---|---|---|---|---|---|"
    );
    for (i, r) in nodes.iter().enumerate() {
        let r = Some(*r);
        let settle = bounded(r, "settle_s");
        let _ = writeln!(
            md,
            "| node {} | {} | {} | {}{} | {} | {} |",
            i + 1,
            cell(num(r, "still_connected"), ""),
            cell(num(r, "settled"), ""),
            if settle.1 { "> " } else { "" },
            cell(settle.0, " s"),
            cell(num(r, "rss_per_conn_kib"), " KiB"),
            cell(num(r, "server_after_rss_kib").map(|k| k / 1024.0), " MiB")
        );
    }
    let redis = look.cluster("cluster-idle");
    let _ = writeln!(
        md,
        "\nRedis during the idle run: used_memory at most {}, RSS {}, {} of CPU.",
        cell(num(redis, "redis_used_memory_max_mib"), " MiB"),
        cell(num(redis, "redis_rss_kib").map(|k| k / 1024.0), " MiB"),
        cell(num(redis, "redis_cpu_s"), " s")
    );
}
