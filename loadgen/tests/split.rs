//! `loadgen tabs` and `loadgen backend` as scripts/bench's cluster-peer section runs them:
//! tabs in one process, the sender in another, phases driven through the control files,
//! against an in-process gateway. Not a benchmark: it proves that every message the backend
//! sends is counted at the tabs, once, at the right tab, with a latency from its epoch `t`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use messaging_gateway::Config;
use serde_json::Value;

/// Waits until `path` exists, at most 20 s.
async fn wait_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never came", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `loadgen backend` off the async runtime; its stdout (one JSON line).
async fn backend(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .arg("backend")
            .args(&args)
            .output()
            .expect("run loadgen backend");
        assert!(
            out.status.success(),
            "loadgen backend {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    })
    .await
    .expect("the backend thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_count_every_message_a_backend_in_another_process_sends() {
    let running = messaging_gateway::start(Config::ephemeral())
        .await
        .expect("gateway starts");
    let (http, grpc) = (
        running.http_addr().to_string(),
        running.grpc_addr().to_string(),
    );
    let ctl: PathBuf = std::env::temp_dir().join(format!("loadgen-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctl);
    // Two "nodes" that are the same gateway: the tabs alternate between the addresses.
    let tabs = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "tabs",
            "--http",
            &http,
            "--http-more",
            &http,
            "--grpc",
            &grpc,
        ])
        .args(["--users", "30", "--presence-mode", "none", "--hold", "0.2"])
        .args([
            "--phases",
            "rate,sat",
            "--scenario",
            "t",
            "--quiet",
            "--threads",
            "1",
        ])
        .arg("--control")
        .arg(&ctl)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run loadgen tabs");
    wait_file(&ctl.join("connected")).await;
    for (phase, mode) in [("rate", ["--rate", "400"]), ("sat", ["--concurrency", "8"])] {
        std::fs::write(ctl.join(format!("{phase}.go")), b"").expect("go file");
        wait_file(&ctl.join(format!("{phase}.ready"))).await;
        let mut args: Vec<String> = ["--grpc", &grpc, "--http-nodes", "2", "--users", "30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--messages", "300", "--duration", "5"].map(String::from));
        args.extend(mode.map(String::from));
        let line = backend(args).await;
        std::fs::write(ctl.join(format!("{phase}.sent")), &line).expect("sent file");
        wait_file(&ctl.join(format!("{phase}.done"))).await;
    }
    let out = tokio::task::spawn_blocking(move || tabs.wait_with_output())
        .await
        .expect("the tabs thread")
        .expect("loadgen tabs ends");
    assert!(out.status.success(), "loadgen tabs failed");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("valid JSON"))
        .collect();
    let scenario = |s: &str| {
        lines
            .iter()
            .find(|l| l["scenario"] == s)
            .unwrap_or_else(|| panic!("no {s} line in {lines:?}"))
    };
    let connect = scenario("t-connect");
    assert_eq!(connect["acked"], 30, "{connect}");
    for phase in ["t-rate", "t-sat"] {
        let r = scenario(phase);
        assert_eq!(r["sent"], 300, "{r}");
        assert_eq!(r["sender"]["delivered_sockets"], 300, "{r}");
        assert_eq!(r["received"], 300, "{r}");
        for zero in ["lost", "extra", "duplicates", "misrouted", "reordered"] {
            assert_eq!(r[zero], 0, "{zero}: {r}");
        }
        assert_eq!(r["delivery_latency_us"]["count"], 300, "{r}");
        // From an epoch clock: a latency of seconds or more would be a clock mix-up.
        assert!(
            r["delivery_latency_us"]["max"].as_u64().expect("max") < 2_000_000,
            "{r}"
        );
    }
    assert_eq!(scenario("t")["still_connected"], 30);
    let _ = std::fs::remove_dir_all(&ctl);
    running.stop().await.expect("gateway stops");
}
