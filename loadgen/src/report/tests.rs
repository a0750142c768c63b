//! Pins what `loadgen report` writes for fixed result lines (loadgen/tests/report/), so
//! that a change to the report's code that moves a byte of REPORT.md or the chart shows.
//! The expected files were written by `loadgen report` itself; after an intended change to
//! the report, write them again with the command in each test's comment.

use std::path::{Path, PathBuf};

use super::{run, ReportArgs};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/report")
        .join(name)
}

/// Runs the report on `results` into a fresh directory and returns it.
fn report(case: &str, results: &str, note: &[&str], appendix: Option<&str>) -> PathBuf {
    let out_dir =
        std::env::temp_dir().join(format!("loadgen-report-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    run(&ReportArgs {
        results: fixture(results),
        out_dir: out_dir.clone(),
        ours: "gateway".into(),
        peer: "node".into(),
        note: note.iter().map(|n| n.to_string()).collect(),
        appendix: appendix.map(fixture),
    })
    .expect("report runs");
    out_dir
}

/// `written` equals the fixture `expected` byte for byte; else names the first line apart.
fn assert_same(written: &Path, expected: &str) {
    let got = std::fs::read_to_string(written).expect("report output");
    let want = std::fs::read_to_string(fixture(expected)).expect("fixture");
    if got == want {
        return;
    }
    let at = got
        .lines()
        .zip(want.lines())
        .position(|(g, w)| g != w)
        .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
    panic!(
        "{} differs from tests/report/{expected} at line {}:\n  got:  {:?}\n  want: {:?}",
        written.display(),
        at + 1,
        got.lines().nth(at),
        want.lines().nth(at)
    );
}

/// A whole benchmark run (both servers, the cluster section, an appendix). Expected files:
/// `loadgen report --results loadgen/tests/report/results.jsonl --out-dir DIR --note 'Run:
/// fixture' --note 'Machine: none' --appendix loadgen/tests/report/appendix.md`.
#[test]
fn a_full_run_gives_the_pinned_report_and_chart() {
    let dir = report(
        "full",
        "results.jsonl",
        &["Run: fixture", "Machine: none"],
        Some("appendix.md"),
    );
    assert_same(&dir.join("REPORT.md"), "REPORT.md");
    assert_same(&dir.join("latency-cdf.svg"), "latency-cdf.svg");
    let _ = std::fs::remove_dir_all(dir);
}

/// The peer ran one scenario, a storm timed out, a run lost messages, no cluster section.
/// Expected file: `loadgen report --results loadgen/tests/report/partial.jsonl --out-dir DIR`.
#[test]
fn a_partial_run_gives_the_pinned_report() {
    let dir = report("partial", "partial.jsonl", &[], None);
    assert_same(&dir.join("REPORT.md"), "REPORT-partial.md");
    let _ = std::fs::remove_dir_all(dir);
}

/// Only the cluster-peer section ran (issue 23: three gateway nodes against the socket.io +
/// Redis adapter cluster, two rounds of a quick run, its lines without their CDFs).
/// Expected file: `loadgen report --results loadgen/tests/report/cluster-peer.jsonl --out-dir DIR`.
#[test]
fn a_cluster_peer_run_gives_the_pinned_report() {
    let dir = report("cluster-peer", "cluster-peer.jsonl", &[], None);
    assert_same(&dir.join("REPORT.md"), "REPORT-cluster-peer.md");
    let _ = std::fs::remove_dir_all(dir);
}
