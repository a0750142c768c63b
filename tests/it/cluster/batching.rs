//! Many sends across nodes at once: a node's answers to another leave together (several in
//! one SPUBLISH), each still the exact count of its own call, and every tab gets every
//! message once; a `SendStream`'s items cross together too, in order.

use std::time::Duration;

use futures_util::future::join_all;
use messaging_gateway::{proto::SendStreamRequest, wire};
use serde_json::json;

use super::{nodes, sorted, wait_reach};
use crate::support::{direct, redis::Redis};

const ROUNDS: usize = 200;
const IN_FLIGHT: usize = 32;
/// Receivers by send index (modulo): tabs on node b only, one on each node, nobody.
const USERS: [(&str, u32); 5] = [("u1", 1), ("u2", 2), ("u3", 3), ("u4", 2), ("nobody", 0)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cross_node_sends_are_each_answered_with_their_own_count() {
    let redis = Redis::start().await;
    let [a, b] = nodes(&redis.url(), &[]).await;
    let mut tabs = Vec::new();
    for (user, count) in &USERS[..3] {
        for _ in 0..*count {
            tabs.push((*user, b.tab(user).await));
        }
    }
    tabs.push(("u4", a.tab("u4").await));
    tabs.push(("u4", b.tab("u4").await));
    let online = sorted(&["u1", "u2", "u3", "u4"]);
    for gw in [&a, &b] {
        gw.wait_online(|u| u == online).await;
    }
    for (user, count) in &USERS[..4] {
        wait_reach(&a, user, *count).await;
    }
    for round in 0..ROUNDS {
        let sends = (0..IN_FLIGHT).map(|i| {
            let (user, want) = USERS[i % USERS.len()];
            let mut grpc = a.grpc.clone();
            async move {
                let sent = grpc
                    .send_direct(direct(user, json!({ "r": round, "i": i })))
                    .await
                    .expect("answered")
                    .into_inner();
                assert_eq!(
                    (sent.delivered_sockets, sent.partial),
                    (want, false),
                    "round {round}, send {i} to {user}"
                );
            }
        });
        join_all(sends).await;
    }
    for (user, mut tab) in tabs {
        let index = USERS.iter().position(|(u, _)| *u == user).unwrap();
        let per_round = (0..IN_FLIGHT).filter(|i| i % USERS.len() == index).count();
        let (got, _) = tab.count("newMessage", Duration::from_secs(2)).await;
        assert_eq!(got, ROUNDS * per_round, "messages at a tab of {user}");
    }
}

/// SPUBLISH calls Redis has served so far.
fn spublishes(redis: &Redis) -> u64 {
    let stats = redis.cli(&["info", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_spublish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_items_wait_on_other_nodes_together_and_arrive_in_order() {
    const ITEMS: u64 = 1000;
    let redis = Redis::start().await;
    let [a, b, c] = nodes(&redis.url(), &[]).await;
    let mut tabs = vec![b.tab("u1").await, b.tab("u1").await, c.tab("u1").await];
    for gw in [&a, &b, &c] {
        gw.wait_online(|u| u == ["u1"]).await;
    }
    wait_reach(&a, "u1", 3).await;
    let before = spublishes(&redis);
    let requests = (0..ITEMS).map(|id| SendStreamRequest {
        receiver_id: "u1".into(),
        message: Some(wire::from_json(&json!({ "n": id }))),
        id,
        ..Default::default()
    });
    let mut responses = a.send_stream(requests).await;
    let mut answered = 0;
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(
            (r.id, r.code, r.delivered_sockets, r.partial),
            (answered, 0, 3, false),
            "answers in order, each with its exact count"
        );
        answered += 1;
    }
    assert_eq!(answered, ITEMS);
    // One item at a time would be a request and an answer per item and node: 4,000.
    let published = spublishes(&redis) - before;
    eprintln!("{published} SPUBLISH for {ITEMS} items");
    assert!(
        published < ITEMS,
        "{published} SPUBLISH for {ITEMS} items to two other nodes: the items went one by one"
    );
    for tab in &mut tabs {
        for id in 0..ITEMS {
            assert_eq!(tab.first_arg("newMessage").await, json!({ "n": id }));
        }
    }
}
