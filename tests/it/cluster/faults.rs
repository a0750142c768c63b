//! Faults with the real processes: Redis paused (SIGSTOP) longer than the cluster timeout and
//! the lease, a node frozen past its lease. Every answer given during the fault must still be
//! true once it ends: an error means not delivered, a retry with the same key delivers once,
//! a user whose sockets stayed open is never announced offline, a node the cluster declared
//! dead does not keep serving sockets the cluster forgot.

use std::time::{Duration, Instant};

use messaging_gateway::{
    proto::{
        messaging_client::MessagingClient, BroadcastRequest, DisconnectUserRequest,
        SendDirectRequest,
    },
    wire,
};
use serde_json::{json, Value};
use tonic::{Code, Status};

use super::{node, nodes, wait_reach, LEASE_MS};
use crate::support::{direct, process::Process, redis::Redis, ws::RawWs, Gateway};

/// A client of its own connection (calls on one connection wait for each other).
async fn client(gw: &Gateway) -> MessagingClient<tonic::transport::Channel> {
    MessagingClient::new(gw.channel().await)
}

fn keyed(receiver: &str, message: Value, key: &str) -> SendDirectRequest {
    SendDirectRequest {
        idempotency_key: key.into(),
        ..direct(receiver, message)
    }
}

fn assert_unavailable<T: std::fmt::Debug>(answer: Result<T, Status>) {
    let status = answer.expect_err("UNAVAILABLE while Redis is paused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_given_while_redis_is_paused_stay_true_after_it_resumes() {
    let redis = Redis::start().await;
    let [a, b] = nodes::<2>(&redis.url(), &[]).await;
    let mut alice = a.tab("alice").await;
    let mut bob = b.tab("bob").await;
    let mut carol = b.tab("carol").await;
    for gw in [&a, &b] {
        gw.wait_online(|u| u == ["alice", "bob", "carol"]).await;
    }
    wait_reach(&a, "bob", 1).await;
    // Long enough that a's and b's leases expire in Redis while it is paused.
    let pause = Duration::from_millis(LEASE_MS * 5 / 3);
    redis.pause();
    let paused = Instant::now();
    let (keyed_sends, plain, broadcast, disconnect) = tokio::join!(
        futures_util::future::join_all((0..5).map(|i| {
            let a = &a;
            async move {
                client(a)
                    .await
                    .send_direct(keyed("bob", json!({"try": 1, "i": i}), &format!("k{i}")))
                    .await
            }
        })),
        futures_util::future::join_all((0..3).map(|i| {
            let a = &a;
            async move {
                client(a)
                    .await
                    .send_direct(direct("bob", json!({"plain": i})))
                    .await
            }
        })),
        async {
            client(&a)
                .await
                .broadcast(BroadcastRequest {
                    message: Some(wire::from_json(&json!("broadcast"))),
                    sender_id: "ops".into(),
                    event: "news".into(),
                })
                .await
        },
        async {
            client(&a)
                .await
                .disconnect_user(DisconnectUserRequest {
                    user_id: "carol".into(),
                    reason: "bye".into(),
                })
                .await
        },
    );
    keyed_sends.into_iter().for_each(assert_unavailable);
    plain.into_iter().for_each(assert_unavailable);
    assert_unavailable(broadcast);
    assert_unavailable(disconnect);
    assert!(paused.elapsed() < pause, "every call answered while paused");
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    redis.resume();

    // Retries with the same keys deliver, once each, promptly.
    for i in 0..5 {
        let retried = tokio::time::timeout(
            Duration::from_secs(5),
            a.send_direct(keyed("bob", json!({"try": 2, "i": i}), &format!("k{i}"))),
        )
        .await
        .expect("a retry is not held by the failed call's claim")
        .expect("the retry is answered");
        assert_eq!((retried.delivered_sockets, retried.partial), (1, false));
    }
    let got = bob.all("newMessage", Duration::from_millis(1500)).await;
    let want: Vec<Vec<Value>> = (0..5).map(|i| vec![json!({"try": 2, "i": i})]).collect();
    assert_eq!(
        got, want,
        "bob got the retries only, not what was answered UNAVAILABLE"
    );
    // alice, on the asking node, got the broadcast's local part; carol was not disconnected;
    // nobody was announced offline.
    assert_eq!(alice.first_arg("news").await, json!("broadcast"));
    let lists = alice
        .all("getOnlineUsers", Duration::from_millis(LEASE_MS * 2))
        .await;
    for list in &lists {
        assert_eq!(
            list,
            &vec![json!(["alice", "bob", "carol"])],
            "no flap: {lists:?}"
        );
    }
    for gw in [&a, &b] {
        assert_eq!(gw.online().await, ["alice", "bob", "carol"]);
    }
    assert!(carol
        .all("disconnectReason", Duration::ZERO)
        .await
        .is_empty());
    assert!(bob.all("news", Duration::ZERO).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_fences_itself_when_it_wakes() {
    let redis = Redis::start().await;
    let a = node(&redis.url(), &[]).await;
    let lease = LEASE_MS.to_string();
    let frozen = Process::start(&[
        "--redis-url",
        &redis.url(),
        "--node-lease-ms",
        &lease,
        "--cluster-timeout-ms",
        "1000",
        "--node-id",
        "frozen",
    ]);
    let mut zed = RawWs::join(frozen.http, "zed").await;
    a.wait_online(|u| u == ["zed"]).await;

    frozen.freeze();
    a.wait_online(|u| u.is_empty()).await;
    // The cluster declared the node dead: nobody holds zed now.
    assert_eq!(a.disconnect("zed", "banned").await.unwrap(), (0, false));
    let kept = a
        .send_direct(SendDirectRequest {
            ttl_seconds: 60,
            ..direct("zed", json!("kept"))
        })
        .await
        .unwrap();
    assert!(kept.queued && !kept.partial, "{kept:?}");
    frozen.thaw();

    // Woken, the node tells zed why and closes its connection without a Socket.IO
    // disconnect, so the client reconnects by itself.
    let mut packets = Vec::new();
    while let Some(packet) = zed.next_packet().await {
        packets.push(packet);
    }
    assert!(
        packets
            .iter()
            .any(|p| p.starts_with("42[\"disconnectReason\"") && p.contains("cut off")),
        "{packets:?}"
    );
    assert!(!packets.iter().any(|p| p.starts_with("41")), "{packets:?}");
    // It never announced zed again meanwhile; the reconnect gets what was kept.
    assert_eq!(a.online().await, Vec::<String>::new());
    let mut zed = RawWs::join(frozen.http, "zed").await;
    assert_eq!(zed.event("newMessage").await, Some(vec![json!("kept")]));
    a.wait_online(|u| u == ["zed"]).await;
    assert!(
        frozen.logs().contains("swept while alive"),
        "{}",
        frozen.logs()
    );
}
