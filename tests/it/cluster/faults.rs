//! Faults with the real processes: Redis paused (SIGSTOP) longer than the cluster timeout and
//! the lease, a node frozen past its lease. Every answer given during the fault must still be
//! true once it ends: an error means not delivered, a retry with the same key delivers once,
//! a user whose sockets stayed open is never announced offline, a node the cluster declared
//! dead does not keep serving sockets the cluster forgot.

use std::time::{Duration, Instant};

use messaging_gateway::{
    proto::{
        messaging_client::MessagingClient, BroadcastRequest, DisconnectUserRequest,
        SendDirectRequest, SendStreamRequest,
    },
    wire,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
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
    let everyone = |u: &[String]| u == ["alice", "bob", "carol"];
    alice.online_until(everyone).await;
    bob.online_until(everyone).await;
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
    // Two lease lengths of what each tab saw from the start of the pause on.
    let window = Duration::from_millis(LEASE_MS * 2);
    let (seen_a, seen_b, seen_c) = tokio::join!(
        alice.during(window),
        bob.during(window),
        carol.during(Duration::ZERO)
    );
    let named = |seen: &[(String, Vec<Value>)], name: &str| -> Vec<Vec<Value>> {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, args)| args.clone())
            .collect()
    };
    let want: Vec<Vec<Value>> = (0..5).map(|i| vec![json!({"try": 2, "i": i})]).collect();
    assert_eq!(
        named(&seen_b, "newMessage"),
        want,
        "bob got the retries only, not what was answered UNAVAILABLE"
    );
    // The broadcast reached alice on the asking node, not bob; carol was not disconnected.
    assert_eq!(named(&seen_a, "news"), [vec![json!("broadcast")]]);
    assert_eq!(named(&seen_b, "news"), Vec::<Vec<Value>>::new());
    assert_eq!(named(&seen_c, "disconnectReason"), Vec::<Vec<Value>>::new());
    // Nobody was announced offline, on either side (either node might have swept the other).
    let lists: Vec<_> = [&seen_a, &seen_b]
        .into_iter()
        .flat_map(|seen| named(seen, "getOnlineUsers"))
        .collect();
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
}

/// Item `id` of a stream to bob.
fn item(id: u64) -> SendStreamRequest {
    SendStreamRequest {
        receiver_id: "bob".into(),
        message: Some(wire::from_json(&json!({ "n": id }))),
        id,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_items_refused_while_redis_is_paused_never_arrive() {
    let redis = Redis::start().await;
    let [a, b] = nodes::<2>(&redis.url(), &[]).await;
    let mut bob = b.tab("bob").await;
    for gw in [&a, &b] {
        gw.wait_online(|u| u == ["bob"]).await;
    }
    wait_reach(&a, "bob", 1).await;
    let (tx, rx) = mpsc::channel(256);
    let mut answers = client(&a)
        .await
        .send_stream(ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    let mut delivered = Vec::new();
    // Before the pause, during it (all in flight at once), after it.
    for (ids, paused) in [(0..50, false), (50..100, true), (100..150, false)] {
        if paused {
            redis.pause();
        }
        for id in ids.clone() {
            tx.send(item(id)).await.expect("stream open");
        }
        for id in ids {
            let r = answers
                .message()
                .await
                .expect("answered")
                .expect("an answer");
            assert_eq!(r.id, id, "answers in order");
            match (paused, r.code) {
                (_, 0) => {
                    assert_eq!((r.delivered_sockets, r.partial), (1, false), "{r:?}");
                    delivered.push(json!({ "n": id }));
                }
                // While Redis reconnects after the pause, an item may still be refused.
                (_, code) if code == Code::Unavailable as i32 => {
                    assert_eq!(r.delivered_sockets, 0, "{r:?}")
                }
                _ => panic!("item {id}: {r:?}"),
            }
            assert!(!paused || r.code != 0, "item {id} answered OK while paused");
        }
        if paused {
            // Past the lease, as in the test above: requests queued meanwhile reach b late.
            tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
            redis.resume();
        }
    }
    drop(tx);
    assert!(answers.message().await.expect("ends cleanly").is_none());
    assert!(
        delivered.len() >= 75,
        "{} of 100 delivered outside the pause",
        delivered.len()
    );
    let seen: Vec<Value> = bob
        .during(Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|(name, _)| name == "newMessage")
        .map(|(_, args)| args[0].clone())
        .collect();
    assert_eq!(
        seen, delivered,
        "bob got what was answered delivered, in order, and nothing else"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_lease_again_and_again_announces_nobody_offline() {
    let redis = Redis::start().await;
    let lease = Duration::from_millis(600);
    let args = [
        "--redis-url",
        &redis.url(),
        "--node-lease-ms",
        "600",
        "--presence-interval-ms",
        "20",
    ];
    let a = Gateway::start_args(&args).await;
    let b = Gateway::start_args(&args).await;
    let mut alice = a.tab("alice").await;
    let mut bob = b.tab("bob").await;
    let both = |u: &[String]| u == ["alice", "bob"];
    alice.online_until(both).await;
    bob.online_until(both).await;
    // A tab connecting on each node while Redis is paused leaves a presence write waiting;
    // on resume it finds its lease gone, and the other node, renewing meanwhile, could sweep
    // it. A race: round after round.
    let mut tabs = Vec::new();
    for round in 0..4 {
        redis.pause();
        tabs.push(a.tab(&format!("x{round}")).await);
        tabs.push(b.tab(&format!("y{round}")).await);
        tokio::time::sleep(lease * 5 / 3).await;
        redis.resume();
        tokio::time::sleep(lease * 4 / 3).await;
    }
    let (seen_a, seen_b) = tokio::join!(alice.during(lease), bob.during(lease));
    let flaps: Vec<_> = seen_a
        .iter()
        .chain(&seen_b)
        .filter(|(name, list)| {
            name == "getOnlineUsers"
                && !(list[0].as_array())
                    .is_some_and(|l| l.contains(&json!("alice")) && l.contains(&json!("bob")))
        })
        .collect();
    assert!(
        flaps.is_empty(),
        "announced offline while connected: {flaps:?}"
    );
    let everyone = [
        "alice", "bob", "x0", "x1", "x2", "x3", "y0", "y1", "y2", "y3",
    ];
    for gw in [&a, &b] {
        gw.wait_online(|u| u == everyone).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_announces_nobody_offline() {
    let mut redis = Redis::start().await;
    let [a, b] = nodes::<2>(&redis.url(), &[]).await;
    let mut alice = a.tab("alice").await;
    let mut bob = b.tab("bob").await;
    let both = |u: &[String]| u == ["alice", "bob"];
    alice.online_until(both).await;
    bob.online_until(both).await;
    for _ in 0..3 {
        redis.restart().await;
        // Each node rereads the other before that one has republished: missing from Redis
        // for a moment, not gone.
        wait_reach(&a, "bob", 1).await;
        wait_reach(&b, "alice", 1).await;
    }
    let lease = Duration::from_millis(LEASE_MS);
    let (seen_a, seen_b) = tokio::join!(alice.during(lease), bob.during(lease));
    let flaps: Vec<_> = seen_a
        .iter()
        .chain(&seen_b)
        .filter(|(name, list)| name == "getOnlineUsers" && list != &[json!(["alice", "bob"])])
        .collect();
    assert!(
        flaps.is_empty(),
        "announced offline while connected: {flaps:?}"
    );
}
