//! The recovery section (issue 21): the gateway with connection state recovery on (the
//! default `--recovery-window-ms`) and off (`--recovery-window-ms 0`), measured one after the
//! other in the same run: SendDirect throughput and latency, RSS per idle connection.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::format::{cell, ms, num};
use super::Lookup;

/// The section, when either setting ran.
pub(super) fn write(md: &mut String, look: &Lookup) {
    let runs = |setting: &str| {
        (
            look.ours(&format!("recovery-{setting}-c64")),
            look.ours(&format!("recovery-{setting}-idle")),
        )
    };
    let (on, off) = (runs("on"), runs("off"));
    if [on.0, on.1, off.0, off.1].iter().all(Option::is_none) {
        return;
    }
    let _ = writeln!(md, "## Connection state recovery on and off (issue 21)\n");
    let _ = writeln!(
        md,
        "The gateway with the default `--recovery-window-ms` (on) and with \
         `--recovery-window-ms 0` (off), one after the other in the same run, a fresh server \
         for each scenario: SendDirect with 64 calls in flight to {} users, then {} idle \
         users (presence on). On a machine shared with other work, calls/s and latency move \
         with its load; server CPU per call and RSS move less.\n",
        cell(num(on.0.or(off.0), "users"), ""),
        cell(num(on.1.or(off.1), "clients"), "")
    );
    let _ = writeln!(
        md,
        "| recovery | SendDirect calls/s | RPC p99 | delivery p99 | lost | server CPU per call | server RSS after the sends | RSS per idle connection |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (label, (direct, idle)) in [
        ("on (default window)", on),
        ("off (`--recovery-window-ms 0`)", off),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            cell(num(direct, "rpc_per_s"), ""),
            cell(ms(num(direct, "rpc_latency_us.p99")), " ms"),
            cell(ms(num(direct, "delivery_latency_us.p99")), " ms"),
            cell(num(direct, "lost"), ""),
            cell(num(direct, "server_cpu_us_per_msg"), " µs"),
            cell(
                num(direct, "server_end_rss_kib").map(|k| k / 1024.0),
                " MiB"
            ),
            cell(num(idle, "rss_per_conn_kib"), " KiB")
        );
    }
    let ratio = |key: &str, on: Option<&Json>, off: Option<&Json>| {
        num(on, key)
            .zip(num(off, key))
            .map_or("n/a".into(), |(a, b)| {
                format!("{:.0}%", a / b.max(1e-9) * 100.0)
            })
    };
    let _ = writeln!(
        md,
        "| on as a share of off | {} | {} | {} | | {} | {} | {} |\n",
        ratio("rpc_per_s", on.0, off.0),
        ratio("rpc_latency_us.p99", on.0, off.0),
        ratio("delivery_latency_us.p99", on.0, off.0),
        ratio("server_cpu_us_per_msg", on.0, off.0),
        ratio("server_end_rss_kib", on.0, off.0),
        ratio("rss_per_conn_kib", on.1, off.1)
    );
}
