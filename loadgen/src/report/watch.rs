//! The `cluster-watch` rows (issue 24): tabs in presence mode watch over three nodes, set
//! beside the `changes` run of `cluster-idle` (bytes and RSS per connection per node).

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::format::{cell, fmt_n, num};
use super::Lookup;

/// Seconds within which every tab must hold exactly its watched users online.
const EXACT_WITHIN_S: f64 = 15.0;
/// At most this share of the `changes` run's presence bytes per node.
const BYTES_SHARE: f64 = 50.0;

fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The target rows and the per-node table, when `cluster-watch` ran.
pub(super) fn write(md: &mut String, look: &Lookup) {
    let node =
        |scenario: &str, i: usize| look.get("gateway-cluster", &format!("{scenario}-node{i}"));
    let nodes: Vec<&Json> = (1..=3).filter_map(|i| node("cluster-watch", i)).collect();
    if nodes.is_empty() {
        return;
    }
    let idle: Vec<&Json> = (1..=3).filter_map(|i| node("cluster-idle", i)).collect();
    let worst = |rs: &[&Json], key: &str| -> Option<f64> {
        let v: Vec<Option<f64>> = rs.iter().map(|r| num(Some(r), key)).collect();
        v.iter()
            .copied()
            .collect::<Option<Vec<f64>>>()?
            .into_iter()
            .reduce(f64::max)
    };
    let sum = |key: &str| nodes.iter().filter_map(|r| num(Some(r), key)).sum::<f64>();
    let watch_count = num(nodes.first().copied(), "watch_count").unwrap_or(0.0);
    let _ = writeln!(
        md,
        "\n### Presence mode watch over three nodes (issue 24)\n\n{} tabs, each watching {} users \
         drawn from the population (fixed seed), one load generator per node; then 5% of the \
         users leave and come back. A frame that does not apply to what a tab holds is a breach.\n",
        fmt_n(sum("clients")),
        fmt_n(watch_count)
    );
    let _ = writeln!(
        md,
        "| target | measured | required | status |\n|---|---|---|---|"
    );
    for (what, key) in [
        (
            "every tab exact after the last connect",
            "exact_after_last_connect_s",
        ),
        ("every tab exact after 5% left", "exact_after_churn_out_s"),
        (
            "every tab exact after they came back",
            "exact_after_churn_back_s",
        ),
    ] {
        let w = worst(&nodes, key);
        let _ = writeln!(
            md,
            "| {what} | {} | ≤ {EXACT_WITHIN_S} s | {} |",
            w.map_or("not exact in time".into(), |s| format!("{s} s")),
            status(Some(w.is_some_and(|s| s <= EXACT_WITHIN_S)))
        );
    }
    let bytes = worst(&nodes, "bytes_received_mib");
    let changes = worst(&idle, "bytes_received_mib");
    let _ = writeln!(
        md,
        "| presence bytes received per node, vs the `changes` run (cluster-idle) | {} vs {} | ≤ 1/{BYTES_SHARE} | {} |",
        cell(bytes, " MiB"),
        cell(changes, " MiB"),
        status(bytes.zip(changes).map(|(b, c)| b * BYTES_SHARE <= c))
    );
    let breaches = sum("breaches");
    let _ = writeln!(
        md,
        "| change sets that did not apply (breaches) | {} | 0 | {} |",
        fmt_n(breaches),
        status(Some(breaches == 0.0))
    );
    let _ = writeln!(
        md,
        "\n| watch, per node | tabs connected | exact after connect | after churn out | after churn back | bytes received | node's presence bytes | RSS per connection | the same, `changes` run |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (i, r) in nodes.iter().enumerate() {
        let r = Some(*r);
        let _ = writeln!(
            md,
            "| node {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            cell(num(r, "acked"), ""),
            cell(num(r, "exact_after_last_connect_s"), " s"),
            cell(num(r, "exact_after_churn_out_s"), " s"),
            cell(num(r, "exact_after_churn_back_s"), " s"),
            cell(num(r, "bytes_received_mib"), " MiB"),
            cell(
                num(r, "node_presence_bytes").map(|b| b / 1_048_576.0),
                " MiB"
            ),
            cell(num(r, "rss_per_conn_kib"), " KiB"),
            cell(num(idle.get(i).copied(), "rss_per_conn_kib"), " KiB")
        );
    }
}
