//! Nodes joining and leaving: a killed node's users leave within its lease, a busy node keeps
//! its lease, a stopped node's users leave at once.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rust_socketio::TransportType;
use serde_json::json;

use super::{node, nodes, send, LEASE_MS};
use crate::support::{process::Process, redis::Redis, Tab, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_everywhere_within_its_lease() {
    let redis = Redis::start().await;
    let a = node(&redis.url(), &[]).await;
    // The binary, so it can be killed without any cleanup.
    let lease = LEASE_MS.to_string();
    let mut doomed = Process::start(&[
        "--redis-url",
        &redis.url(),
        "--node-lease-ms",
        &lease,
        "--node-id",
        "doomed",
    ]);
    let url = format!("http://{}/", doomed.http);
    let _zed = Tab::connect(&url, Some("zed"), TransportType::Websocket).await;
    let mut watcher = a.tab("watcher").await;
    a.wait_online(|u| u == ["watcher", "zed"]).await;
    assert_eq!(send(&a, "zed", json!(1)).await.unwrap(), (1, false));

    doomed.kill(); // SIGKILL: no cleanup at all.
    let killed = Instant::now();
    a.wait_online(|u| u == ["watcher"]).await;
    let gone = killed.elapsed();
    watcher.online_until(|l| l == ["watcher"]).await;
    println!(
        "a SIGKILLed node's users left the other nodes after {} ms (lease {LEASE_MS} ms)",
        gone.as_millis()
    );
    // Expiry, plus up to one renewal period until a sweep notices, plus scheduling slack.
    let bound = Duration::from_millis(LEASE_MS + LEASE_MS / 5 + 1500);
    assert!(gone <= bound, "took {gone:?}, bound {bound:?}");
    assert_eq!(send(&a, "zed", json!(2)).await.unwrap(), (0, false));
}

/// A node whose runtime is saturated (every worker thread busy, as in a presence fan-out to
/// tens of thousands of sockets on a loaded machine) is alive: its lease must not lapse, or
/// the other nodes sweep it and its users flap off every replica. Here both of the node's
/// worker threads block for three leases while a plain thread watches its lease key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_busy_runtime_keeps_its_lease() {
    let redis = Redis::start().await;
    let _busy = node(&redis.url(), &["--node-id", "busy"]).await;
    let port = redis.port;
    let lease_exists = move || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
        tcp.write_all(b"EXISTS mg:{busy}:lease\r\n").unwrap();
        let mut reply = [0; 4];
        tcp.read_exact(&mut reply).unwrap();
        &reply == b":1\r\n"
    };
    let deadline = Instant::now() + WAIT;
    while !lease_exists() {
        assert!(Instant::now() < deadline, "the node never took its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stall = Duration::from_millis(3 * LEASE_MS);
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        let mut lapsed = None;
        while start.elapsed() < stall {
            if lapsed.is_none() && !lease_exists() {
                lapsed = Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lapsed
    });
    // Both worker threads blocked (the test body itself runs on the block_on thread): no task
    // of the node's runtime runs meanwhile.
    let started = Arc::new(AtomicUsize::new(0));
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            let started = started.clone();
            tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(stall);
            })
        })
        .collect();
    for blocker in blockers {
        blocker.await.unwrap();
    }
    assert_eq!(started.load(Ordering::SeqCst), 2);
    let lapsed = watcher.join().unwrap();
    assert_eq!(
        lapsed, None,
        "the lease lapsed while the node's runtime was busy (lease {LEASE_MS} ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_leaves_at_once() {
    let redis = Redis::start().await;
    let [a, b] = nodes(&redis.url(), &[]).await;
    let _x = b.tab("xavier").await;
    a.wait_online(|u| u == ["xavier"]).await;
    let stopped = Instant::now();
    b.running.stop().await.unwrap();
    a.wait_online(|u| u.is_empty()).await;
    let gone = stopped.elapsed();
    println!("a stopped node's users left after {} ms", gone.as_millis());
    assert!(gone < Duration::from_millis(LEASE_MS), "took {gone:?}");
}
