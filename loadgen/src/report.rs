//! `loadgen report`: JSON result lines in, `REPORT.md` and a latency chart (SVG) out.
//!
//! Scenario names are those `scripts/bench` uses: idle-10k, storm-5k, direct-c64,
//! direct-rate, tabs-2 (both servers), stream and idle-max (gateway only), and the cluster
//! section's cluster-* (server `gateway-cluster`, baseline `cluster-single-c64` of `ours`),
//! and the recovery section's recovery-{on,off}-{c64,idle} (of `ours`).

mod chart;
mod cluster;
mod cluster_peer;
mod format;
mod recovery;
mod side;
mod targets;
mod watch;

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use clap::Args;
use serde_json::Value as Json;

#[derive(Args, Clone)]
pub struct ReportArgs {
    /// JSON result lines (one scenario per line), as written by --json-out.
    #[arg(long)]
    results: PathBuf,
    /// Directory for REPORT.md and the chart.
    #[arg(long)]
    out_dir: PathBuf,
    /// Name of the server measured against the peer.
    #[arg(long, default_value = "gateway")]
    ours: String,
    /// Name of the peer.
    #[arg(long, default_value = "node")]
    peer: String,
    /// A line for the report's header (machine, commit, load); repeatable.
    #[arg(long)]
    note: Vec<String>,
    /// Extra Markdown appended at the end (e.g. the profile), read from this file.
    #[arg(long)]
    appendix: Option<PathBuf>,
}

type Runs = BTreeMap<(String, String), Json>;

/// The runs of a report and which of its servers are ours and the peer.
struct Lookup<'a> {
    runs: &'a Runs,
    ours: &'a str,
    peer: &'a str,
}

impl<'a> Lookup<'a> {
    fn get(&self, server: &str, scenario: &str) -> Option<&'a Json> {
        self.runs.get(&(server.to_string(), scenario.to_string()))
    }

    fn ours(&self, scenario: &str) -> Option<&'a Json> {
        self.get(self.ours, scenario)
    }

    fn peer(&self, scenario: &str) -> Option<&'a Json> {
        self.get(self.peer, scenario)
    }
}

/// Reads the result lines, then writes the chart and REPORT.md into --out-dir.
pub fn run(a: &ReportArgs) -> Result<(), String> {
    let text =
        std::fs::read_to_string(&a.results).map_err(|e| format!("{}: {e}", a.results.display()))?;
    let mut runs: Runs = BTreeMap::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Json = serde_json::from_str(line).map_err(|e| format!("bad result line: {e}"))?;
        let server = v["server"].as_str().unwrap_or("").to_string();
        let scenario = v["scenario"].as_str().unwrap_or("").to_string();
        runs.insert((server, scenario), v);
    }
    std::fs::create_dir_all(&a.out_dir).map_err(|e| e.to_string())?;
    let chart = "latency-cdf.svg";
    let look = Lookup {
        runs: &runs,
        ours: &a.ours,
        peer: &a.peer,
    };
    chart::draw(&look, &a.out_dir.join(chart))?;
    let md = markdown(&look, a, chart);
    let path = a.out_dir.join("REPORT.md");
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("loadgen report: wrote {} and {chart}", path.display());
    Ok(())
}

/// REPORT.md: the header and notes, the targets, the side-by-side tables, the cluster
/// section, the cluster-peer section, the recovery section, the appendix.
fn markdown(look: &Lookup, a: &ReportArgs, chart: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark: {} vs the Node peer\n", look.ours);
    let _ = writeln!(
        md,
        "Written by `scripts/bench` (`loadgen report`) from `results.jsonl` of the same run: \
         every number below comes from that one run on this machine, both servers on \
         loopback, the load generator sharing the 2 cores.\n"
    );
    for n in &a.note {
        let _ = writeln!(md, "- {n}");
    }
    if !a.note.is_empty() {
        md.push('\n');
    }
    targets::write(&mut md, look, chart);
    side::write(&mut md, look);
    cluster::write(&mut md, look);
    cluster_peer::write(&mut md, look);
    recovery::write(&mut md, look);
    if let Some(path) = &a.appendix {
        if let Ok(extra) = std::fs::read_to_string(path) {
            md.push_str(&extra);
            if !extra.ends_with('\n') {
                md.push('\n');
            }
        }
    }
    md
}

#[cfg(test)]
mod tests;
