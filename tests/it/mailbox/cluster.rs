//! The mailbox in Redis, between gateway binaries: kept on one node, handed over on another,
//! a node dying with messages in flight, the expiry sweep, and a send racing a connect.

use std::time::Duration;

use futures_util::future::join_all;

use super::{
    client, drop_at_connect, flapping_tab_loses_nothing, keep, keep_offline,
    long_queue_arrives_whole, missing, next_tab_gets_all, silent_tab, Recorder, ACK_MS, KEPT,
    SMALL_BUFFER, WITHIN,
};
use crate::support::{process::Process, redis::Redis, WAIT};

/// A gateway binary on `redis` with the cluster tests' short timeouts, plus `extra`.
fn node(redis: &Redis, extra: &[&str]) -> Process {
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        &url,
        "--node-lease-ms",
        "1500",
        "--cluster-timeout-ms",
        "1000",
        "--presence-interval-ms",
        "20",
    ];
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// Before: the queue left Redis once node b wrote it to the dropped tab (44-50 of 50 lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_dropping_at_connect_on_another_node_loses_no_kept_message() {
    let redis = Redis::start().await;
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    keep_offline(&client(a.grpc).await, "dropper", KEPT, ACK_MS).await;
    drop_at_connect(b.http, "dropper", WITHIN).await;
    next_tab_gets_all(a.http, "dropper", WITHIN).await;
}

/// A node that dies holding kept messages in flight (handed to a tab that never acked) does
/// not take them along: they go back to the queue when its claim lapses. Before: 50 of 50
/// lost with the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_messages_in_flight_on_a_node_that_dies_come_back() {
    let redis = Redis::start().await;
    let (a, mut b) = (node(&redis, &[]), node(&redis, &[]));
    keep_offline(&client(a.grpc).await, "orphan", KEPT, ACK_MS).await;
    let _silent = silent_tab(b.http, "orphan").await;
    b.kill();
    next_tab_gets_all(a.http, "orphan", WAIT).await;
}

/// See `flapping_tab_loses_nothing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_flapping_between_nodes_loses_no_kept_message() {
    let redis = Redis::start().await;
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    flapping_tab_loses_nothing(&[a.http, b.http], client(a.grpc).await, "flapper").await;
}

/// Before: 395 of 400 arrived, refused messages put back behind newer ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_queue_longer_than_the_socket_buffer_crosses_nodes_whole_in_order() {
    let redis = Redis::start().await;
    let flags = [
        "--socket-buffer-packets",
        SMALL_BUFFER,
        "--mailbox-max-per-user",
        "1000",
    ];
    let (a, b) = (node(&redis, &flags), node(&redis, &flags));
    long_queue_arrives_whole(&client(a.grpc).await, b.http, "reader").await;
}

/// Expired messages go in bounded batches, but all of them at once, not 100 per 10 s: a node
/// starting (its first sweep runs at once) leaves none of 1,000. Before: of
/// 607-945 expired (pushes sweep a batch each), all but 100 still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_every_expired_message() {
    const EXPIRED: u64 = 1000;
    let redis = Redis::start().await;
    let a = node(&redis, &[]);
    let grpc = client(a.grpc).await;
    join_all((0..8).map(|part| {
        let grpc = grpc.clone();
        async move {
            for n in (0..EXPIRED).filter(|n| n % 8 == part) {
                let req = messaging_gateway::proto::SendDirectRequest {
                    ttl_seconds: 1,
                    ..crate::support::direct(&format!("gone-{n}"), serde_json::json!(n))
                };
                assert!(
                    grpc.clone()
                        .send_direct(req)
                        .await
                        .unwrap()
                        .into_inner()
                        .queued
                );
            }
        }
    }))
    .await;
    let stored = || redis.cli(&["HLEN", "mg:{mb}:body"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Pushes sweep a batch each too: how many expired are still stored.
    let expired = stored();
    let _b = node(&redis, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while stored() != "0" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = stored();
    assert_eq!(
        left, "0",
        "of {expired} expired messages, {left} still stored"
    );
    assert_eq!(redis.cli(&["EXISTS", "mg:{mb}:u:gone-1"]), "0");
}

/// Sends to node b while the user's tab connects on node a, over hundreds of rounds: each
/// message reaches the tab now, whatever the answer, never only at the next connect.
/// Before: 11-15 of 960 answered `queued: true` and stayed kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_a_connect_on_another_node_is_not_left_waiting() {
    const ROUNDS: usize = 240;
    const PARALLEL: usize = 12;
    const SENDS: u64 = 4;
    let redis = Redis::start().await;
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let sender = client(b.grpc).await;
    let mut left = Vec::new();
    for wave in 0..ROUNDS / PARALLEL {
        let rounds = (0..PARALLEL).map(|i| {
            let (sender, user) = (sender.clone(), format!("race-{wave}-{i}"));
            async move {
                let sends = async {
                    for n in 1..=SENDS {
                        tokio::time::sleep(Duration::from_millis(i as u64 % 4)).await;
                        keep(&sender, &user, n, 0).await;
                    }
                };
                let (tab, ()) = tokio::join!(Recorder::connect(a.http, &user, true), sends);
                let got = tab
                    .wait_numbers(SENDS as usize, Duration::from_secs(2))
                    .await;
                (user, missing(&got, SENDS))
            }
        });
        for (user, missing) in join_all(rounds).await {
            if !missing.is_empty() {
                left.push((user, missing));
            }
        }
    }
    let total: usize = left.iter().map(|(_, m)| m.len()).sum();
    assert!(
        left.is_empty(),
        "{total} of {} messages left waiting: {left:?}",
        ROUNDS as u64 * SENDS
    );
}
