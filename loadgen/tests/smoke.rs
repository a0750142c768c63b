//! A short smoke run of the `loadgen` binary against an in-process gateway: a few clients,
//! a few hundred messages, every figure checked. Not a benchmark: it only proves that the
//! load generator speaks the wire contract and counts what it receives.

use std::process::Command;

use messaging_gateway::Config;
use serde_json::Value;

/// Runs loadgen with `args` against the gateway, off the async runtime so the in-process
/// gateway keeps serving; returns its JSON result line.
async fn loadgen(
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    args: &[&'static str],
) -> Value {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || run_loadgen(http, grpc, &args))
        .await
        .expect("the loadgen thread")
}

fn run_loadgen(http: std::net::SocketAddr, grpc: std::net::SocketAddr, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--http", &http.to_string(), "--grpc", &grpc.to_string()])
        .args(["--quiet", "--threads", "1", "--ready-timeout", "5"])
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON result line");
    serde_json::from_str(line).expect("valid JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_the_gateway() {
    let running = messaging_gateway::start(Config::ephemeral())
        .await
        .expect("gateway starts");
    let (http, grpc) = (running.http_addr(), running.grpc_addr());

    let direct = loadgen(
        http,
        grpc,
        &[
            "direct",
            "--users",
            "10",
            "--tabs",
            "2",
            "--messages",
            "200",
            "--concurrency",
            "8",
            "--duration",
            "3",
            "--drain-timeout",
            "2",
        ],
    )
    .await;
    assert_eq!(direct["acked"], 20, "{direct}");
    assert_eq!(direct["settled"], 20, "{direct}");
    assert_eq!(direct["sent_ok"], 200, "{direct}");
    assert_eq!(direct["rpc_errors"], 0, "{direct}");
    assert_eq!(direct["delivered_sockets"], 400, "{direct}");
    assert_eq!(direct["received"], 400, "{direct}");
    assert_eq!(direct["lost"], 0, "{direct}");
    assert_eq!(direct["misrouted"], 0, "{direct}");
    assert_eq!(direct["delivery_latency_us"]["count"], 400, "{direct}");

    let stream = loadgen(
        http,
        grpc,
        &[
            "stream",
            "--users",
            "5",
            "--messages",
            "200",
            "--streams",
            "2",
            "--window",
            "16",
            "--duration",
            "3",
            "--drain-timeout",
            "2",
        ],
    )
    .await;
    assert_eq!(stream["sent_ok"], 200, "{stream}");
    assert_eq!(stream["received"], 200, "{stream}");
    assert_eq!(stream["out_of_order_responses"], 0, "{stream}");
    // Each stream owns its users, so every user's messages must arrive in order.
    assert_eq!(stream["reordered"], 0, "{stream}");

    running.stop().await.expect("gateway stops");
}

/// Two loadgen processes with their own users and the shared `--presence-target` (how the
/// cluster benchmark spreads 50k connections over three nodes): each counts as settled only
/// once its clients have seen the other process's users too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_processes_settle_on_a_shared_presence_target() {
    settle_on_a_shared_target("list").await;
}

/// The same with `--presence-mode changes`: counts from one list plus change sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_processes_settle_on_change_sets() {
    let (a, b) = settle_on_a_shared_target("changes").await;
    for r in [&a, &b] {
        assert_eq!(r["presence_mode"], "changes", "{r}");
    }
}

/// Two loadgen processes of 20 users each, both waiting for the 40 online.
async fn settle_on_a_shared_target(mode: &'static str) -> (Value, Value) {
    let running = messaging_gateway::start(Config::ephemeral())
        .await
        .expect("gateway starts");
    let (http, grpc) = (running.http_addr(), running.grpc_addr());
    let idle = |prefix: &'static str| async move {
        let args = [
            "idle",
            "--presence-mode",
            mode,
            "--users",
            "20",
            "--user-prefix",
            prefix,
            "--presence-target",
            "40",
            "--hold",
            "1",
            "--settle-timeout",
            "20",
        ];
        loadgen(http, grpc, &args).await
    };
    let (a, b) = tokio::join!(idle("a"), idle("b"));
    for r in [&a, &b] {
        assert_eq!(r["acked"], 20, "{r}");
        assert_eq!(r["presence_target"], 40, "{r}");
        assert_eq!(r["settled"], 20, "{r}");
        assert_eq!(r["settle_timed_out"], false, "{r}");
        assert_eq!(r["online_seen_max"], 40, "{r}");
    }
    running.stop().await.expect("gateway stops");
    (a, b)
}

/// One loadgen process of 10 users waiting for 20 online, and 5 s later a second one with the
/// other 10 users (as when the gateway paces its broadcasts by its byte budget, the first
/// process's clients get no list meanwhile): the first process's JSON result.
async fn settle_across_a_gap(stall: &'static [&'static str]) -> Value {
    let running = messaging_gateway::start(Config::ephemeral())
        .await
        .expect("gateway starts");
    let (http, grpc) = (running.http_addr(), running.grpc_addr());
    let args = |prefix: &'static str, extra: &[&'static str]| {
        [
            &[
                "idle",
                "--users",
                "10",
                "--presence-target",
                "20",
                "--hold",
                "0",
                "--settle-timeout",
                "30",
                "--user-prefix",
                prefix,
            ][..],
            extra,
        ]
        .concat()
    };
    let early_args = args("a", stall);
    let early = loadgen(http, grpc, &early_args);
    let late = async {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        loadgen(http, grpc, &args("b", &[])).await
    };
    let (early, _) = tokio::join!(early, late);
    running.stop().await.expect("gateway stops");
    early
}

/// A gap in the lists is a stall (a lost update) only past --stall-ms: the default 3 s gives
/// up on a 5 s gap, a longer window waits for the full list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_presence_lists_is_a_stall_only_past_stall_ms() {
    let (default_window, long_window) = tokio::join!(
        settle_across_a_gap(&[]),
        settle_across_a_gap(&["--stall-ms", "20000"])
    );
    assert_eq!(default_window["presence_stalled"], true, "{default_window}");
    assert_eq!(default_window["settled"], 0, "{default_window}");
    assert_eq!(long_window["presence_stalled"], false, "{long_window}");
    assert_eq!(long_window["settle_timed_out"], false, "{long_window}");
    assert_eq!(long_window["settled"], 10, "{long_window}");
    assert_eq!(long_window["online_seen_min"], 20, "{long_window}");
}
