//! Failures: Redis down and back, and a node that stops answering.

use std::time::{Duration, Instant};

use messaging_gateway::{
    proto::{
        messaging_client::MessagingClient, BroadcastRequest, DisconnectUserRequest,
        SendToUsersRequest,
    },
    wire,
};
use serde_json::json;
use tonic::Code;

use super::{node, send, sorted};
use crate::support::{
    grpc::{self, NOT_SERVING, SERVING},
    redis::Redis,
    Gateway, WAIT,
};

/// The health of the `cluster` service: SERVING while Redis is reachable.
async fn cluster_health(gw: &Gateway) -> i32 {
    grpc::health(gw.channel().await, "cluster").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_delivery_and_recovers_by_itself() {
    let mut redis = Redis::start().await;
    let a = node(&redis.url(), &["--metrics-addr", "127.0.0.1:0"]).await;
    let b = node(&redis.url(), &[]).await;
    let mut alice = a.tab("alice").await;
    let mut bob = b.tab("bob").await;
    let both = sorted(&["alice", "bob"]);
    for gw in [&a, &b] {
        gw.wait_online(|u| u == both).await;
    }
    let metrics = a.metrics_text().await;
    // The cluster rows of the metrics table in docs/metrics.md, and both user counts.
    for line in [
        "# TYPE gateway_redis_up gauge",
        "gateway_redis_up 1",
        "# TYPE gateway_cluster_nodes gauge",
        "gateway_cluster_nodes 2",
        "# TYPE gateway_node_info gauge",
        "gateway_online_users 2",
        "gateway_local_online_users 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in {metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_node_info{node_id=\"") && l.ends_with("\"} 1")),
        "{metrics}"
    );
    assert_eq!(cluster_health(&a).await, SERVING);

    redis.stop();
    // Until the node notices, a remote send may wait for the timeout; it never hangs and
    // is refused with UNAVAILABLE once Redis is known to be down.
    tokio::time::timeout(WAIT, async {
        loop {
            let asked = Instant::now();
            match send(&a, "bob", json!("lost")).await {
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(status.message().contains("cannot be reached"), "{status:?}");
                    assert!(asked.elapsed() < Duration::from_millis(2500));
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("remote sends answer UNAVAILABLE during the outage");
    let asked = Instant::now();
    let refused = send(&a, "bob", json!("lost")).await.unwrap_err();
    println!(
        "during the outage a remote send was refused in {} ms: {}",
        asked.elapsed().as_millis(),
        refused.message()
    );
    assert!(asked.elapsed() < Duration::from_millis(1500));
    // Local delivery goes on, and counts.
    assert_eq!(send(&a, "alice", json!("local")).await.unwrap(), (1, false));
    assert_eq!(alice.first_arg("newMessage").await, json!("local"));
    assert!(a.metrics_text().await.contains("\ngateway_redis_up 0\n"));
    assert_eq!(cluster_health(&a).await, NOT_SERVING);

    redis.restart().await;
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let ok = matches!(send(&a, "bob", json!("again")).await, Ok((1, false)))
                && matches!(send(&b, "alice", json!("again")).await, Ok((1, false)))
                && a.online().await == both
                && b.online().await == both;
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("presence and cross-node delivery come back");
    let recovered = back.elapsed();
    println!(
        "after Redis restarted empty, presence and cross-node sends were back in {} ms",
        recovered.as_millis()
    );
    assert!(recovered < Duration::from_secs(5), "took {recovered:?}");
    assert!(a.metrics_text().await.contains("\ngateway_redis_up 1\n"));
    // No socket was dropped: both tabs are the ones from before the outage.
    assert_eq!(
        send(&b, "alice", json!("same tab")).await.unwrap(),
        (1, false)
    );
    assert_eq!(alice.event("newMessage").await, vec![json!("again")]);
    loop {
        if alice.first_arg("newMessage").await == json!("same tab") {
            break;
        }
    }
    assert_eq!(bob.first_arg("newMessage").await, json!("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_makes_a_partial_delivery() {
    use fred::prelude::*;
    let redis = Redis::start().await;
    // "a-node" sorts before "stalled": alice, on both, is this node's to count in a broadcast.
    let a = node(
        &redis.url(),
        &["--cluster-timeout-ms", "300", "--node-id", "a-node"],
    )
    .await;
    let _alice = a.tab("alice").await;
    // A stalled node, as Redis sees it: live lease, a user, a subscribed inbox, no answers.
    let config = Config::from_url(&redis.url()).unwrap();
    let client = Builder::from_config(config.clone()).build().unwrap();
    client.init().await.unwrap();
    let stalled = Builder::from_config(config)
        .build_subscriber_client()
        .unwrap();
    stalled.init().await.unwrap();
    stalled.ssubscribe("mg:{stalled}:in").await.unwrap();
    let _: () = client
        .set(
            "mg:{stalled}:lease",
            "1",
            Some(Expiration::PX(60_000)),
            None,
            false,
        )
        .await
        .unwrap();
    let _: () = client
        .hset(
            "mg:{stalled}:users",
            [("alice", "2"), ("\u{0}e", "1"), ("\u{0}s", "1")],
        )
        .await
        .unwrap();
    let _: () = client.sadd("mg:nodes", "stalled").await.unwrap();
    let event =
        json!({"n": "stalled", "e": 1, "s": 1, "f": true, "u": [["alice", 2], ["sleepy", 1]]});
    let _: () = client
        .publish("mg:presence", event.to_string())
        .await
        .unwrap();
    a.wait_online(|u| u == ["alice", "sleepy"]).await;

    let asked = Instant::now();
    assert_eq!(send(&a, "alice", json!(1)).await.unwrap(), (1, true));
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    assert_eq!(send(&a, "sleepy", json!(1)).await.unwrap(), (0, true));
    let mut grpc = MessagingClient::new(a.channel().await);
    let resp = grpc
        .send_to_users(SendToUsersRequest {
            receiver_ids: vec!["alice".into(), "nobody".into()],
            message: Some(wire::from_json(&json!(1))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.partial);
    assert_eq!(
        resp.deliveries
            .iter()
            .map(|d| (d.delivered_sockets, d.partial))
            .collect::<Vec<_>>(),
        [(1, true), (0, false)]
    );
    // Broadcast and DisconnectUser count what answered and say the rest is missing.
    let r = grpc
        .broadcast(BroadcastRequest {
            message: Some(wire::from_json(&json!("notice"))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.users, r.sockets, r.partial), (1, 1, true));
    let d = grpc
        .disconnect_user(DisconnectUserRequest {
            user_id: "alice".into(),
            reason: "bye".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.disconnected_sockets, d.partial), (1, true));
}
