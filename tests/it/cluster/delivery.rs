//! Delivery across nodes: every node reaches every socket and counts it, pages of the online
//! list move between nodes, acks and idempotency keys hold cluster-wide, also on a Redis
//! Cluster.

use std::time::{Duration, Instant};

use messaging_gateway::{
    proto::{SendDirectRequest, SendStreamRequest, SendToUsersRequest},
    wire,
};
use serde_json::json;
use tonic::Code;

use super::{nodes, send, sorted, wait_reach};
use crate::support::{
    direct,
    grpc::tampered,
    redis::{Redis, RedisCluster},
    ws::AckTab,
    WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reaches_every_socket_and_counts_them() {
    let redis = Redis::start().await;
    let [a, b, c] = nodes(&redis.url(), &[]).await;
    let mut alice_a = a.tab("alice").await;
    let mut alice_b1 = b.tab("alice").await;
    let mut alice_b2 = b.tab("alice").await;
    let mut bob_c = c.tab("bob").await;
    let both = sorted(&["alice", "bob"]);
    for gw in [&a, &b, &c] {
        gw.wait_online(|u| u == both).await;
    }
    // getOnlineUsers on every node is the cluster-wide list.
    bob_c.online_until(|l| l == both).await;
    alice_a.online_until(|l| l == both).await;

    for (i, gw) in [&a, &b, &c].into_iter().enumerate() {
        assert_eq!(
            send(gw, "alice", json!({ "via": i })).await.unwrap(),
            (3, false)
        );
        for t in [&mut alice_a, &mut alice_b1, &mut alice_b2] {
            assert_eq!(t.first_arg("newMessage").await, json!({ "via": i }));
        }
        assert_eq!(
            send(gw, "bob", json!({ "to": "bob" })).await.unwrap(),
            (1, false)
        );
        assert_eq!(bob_c.first_arg("newMessage").await, json!({ "to": "bob" }));
        assert_eq!(send(gw, "nobody", json!(1)).await.unwrap(), (0, false));
    }
    bob_c.expect_no("newMessage").await;

    let resp = a
        .grpc
        .clone()
        .send_to_users(SendToUsersRequest {
            receiver_ids: vec!["bob".into(), "alice".into(), "carol".into(), "bob".into()],
            message: Some(wire::from_json(&json!("many"))),
            sender_id: "svc".into(),
            event: "notice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<(String, u32, bool)> = resp
        .deliveries
        .iter()
        .map(|d| (d.receiver_id.clone(), d.delivered_sockets, d.partial))
        .collect();
    assert_eq!(
        counts,
        [
            ("bob".into(), 1, false),
            ("alice".into(), 3, false),
            ("carol".into(), 0, false)
        ]
    );
    assert_eq!((resp.delivered_sockets, resp.partial), (4, false));
    for t in [&mut alice_a, &mut alice_b1, &mut alice_b2, &mut bob_c] {
        assert_eq!(t.first_arg("notice").await, json!("many"));
    }

    // A stream through C (no socket of alice there) keeps its order on every remote tab.
    let requests = (0..200u64).map(|id| SendStreamRequest {
        receiver_id: "alice".into(),
        message: Some(wire::from_json(&json!({ "n": id }))),
        id,
        ..Default::default()
    });
    let mut responses = c.send_stream(requests).await;
    let mut answered = 0;
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(
            (r.id, r.code, r.delivered_sockets, r.partial),
            (answered, 0, 3, false)
        );
        answered += 1;
    }
    assert_eq!(answered, 200);
    for t in [&mut alice_a, &mut alice_b1, &mut alice_b2] {
        for id in 0..200u64 {
            assert_eq!(t.first_arg("newMessage").await, json!({ "n": id }));
        }
    }

    // A tab leaving on B is counted out everywhere; the user stays online through A.
    alice_b2.close().await;
    tokio::time::timeout(WAIT, async {
        while send(&c, "alice", json!("x")).await.unwrap().0 != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed tab is counted out");
    alice_a.close().await;
    alice_b1.close().await;
    for gw in [&a, &b, &c] {
        gw.wait_online(|u| u == ["bob"]).await;
    }
    bob_c.online_until(|l| l == ["bob"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_online_pages_cluster_wide_and_tokens_move_between_nodes() {
    let redis = Redis::start().await;
    let nodes: [_; 3] = nodes(&redis.url(), &[]).await;
    let mut tabs = Vec::new();
    let mut users = Vec::new();
    for i in 0..30 {
        let user = format!("user-{i:02}");
        tabs.push(nodes[i % 3].tab(&user).await);
        users.push(user);
    }
    // Someone online on two nodes is listed once.
    tabs.push(nodes[1].tab("user-00").await);
    for gw in &nodes {
        gw.wait_online(|u| u == users).await;
    }
    let mut got = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        let resp = nodes[page % 3].list_online(7, token).await.unwrap();
        assert_eq!(resp.total, 30);
        got.extend(resp.user_ids);
        token = resp.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(got, users, "pages from A, B and C make the whole list once");

    let first = nodes[0].list_online(5, "").await.unwrap();
    let status = nodes[2]
        .list_online(5, tampered(&first.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_and_presence_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let urls = cluster.urls();
    let [a, b, c] = nodes(&urls, &["--redis-cluster"]).await;
    let mut alice_a = a.tab("alice").await;
    let mut alice_b = b.tab("alice").await;
    let mut bob_c = c.tab("bob").await;
    let mut users: Vec<String> = vec!["alice".into(), "bob".into()];
    let mut others = Vec::new();
    for i in 0..9 {
        let user = format!("u{i}");
        others.push([&a, &b, &c][i % 3].tab(&user).await);
        users.push(user);
    }
    users.sort();
    for gw in [&a, &b, &c] {
        gw.wait_online(|u| u == users).await;
    }
    bob_c.online_until(|l| l == users).await;
    for gw in [&a, &b, &c] {
        assert_eq!(send(gw, "alice", json!("hi")).await.unwrap(), (2, false));
        assert_eq!(alice_a.first_arg("newMessage").await, json!("hi"));
        assert_eq!(alice_b.first_arg("newMessage").await, json!("hi"));
        assert_eq!(send(gw, "bob", json!("yo")).await.unwrap(), (1, false));
        assert_eq!(bob_c.first_arg("newMessage").await, json!("yo"));
    }
    let first = a.list_online(4, "").await.unwrap();
    let rest = c.list_online(100, first.next_page_token).await.unwrap();
    let mut paged = first.user_ids;
    paged.extend(rest.user_ids);
    assert_eq!(paged, users);
    assert_eq!(rest.total, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_sockets_on_other_nodes_count_too() {
    let redis = Redis::start().await;
    let [a, b, c] = nodes(&redis.url(), &[]).await;
    let _on_a = AckTab::connect(a.running.http_addr(), "alice", true).await;
    let _on_b = AckTab::connect(b.running.http_addr(), "alice", true).await;
    wait_reach(&c, "alice", 2).await;
    let acked = |timeout_ms: u32| {
        let c = &c;
        async move {
            let started = Instant::now();
            let r = c
                .send_direct(SendDirectRequest {
                    ack_timeout_ms: timeout_ms,
                    ..direct("alice", json!({"ack": "me"}))
                })
                .await
                .unwrap();
            (
                r.delivered_sockets,
                r.acked_sockets,
                r.partial,
                started.elapsed(),
            )
        }
    };
    // Both nodes' sockets ack: answered as soon as the last ack is back.
    let (delivered, acks, partial, took) = acked(10_000).await;
    assert_eq!((delivered, acks, partial), (2, 2, false));
    assert!(took < Duration::from_secs(5), "answered after {took:?}");

    // A socket on b never acks: b answers at the deadline with its one ack.
    let _silent = AckTab::connect(b.running.http_addr(), "alice", false).await;
    wait_reach(&c, "alice", 3).await;
    let timeout = Duration::from_millis(1000);
    let (delivered, acks, partial, took) = acked(timeout.as_millis() as u32).await;
    assert_eq!((delivered, acks, partial), (3, 2, false));
    assert!(
        took >= timeout && took <= timeout + timeout / 10,
        "answered after {took:?}, not within the {timeout:?} timeout + 10%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_on_another_node_is_not_delivered_again() {
    let redis = Redis::start().await;
    let [a, b] = nodes(&redis.url(), &[]).await;
    let mut erin = AckTab::connect(a.running.http_addr(), "erin", true).await;
    wait_reach(&b, "erin", 1).await;
    let keyed = |n: u32| SendDirectRequest {
        idempotency_key: "invoice-7".into(),
        ..direct("erin", json!({ "n": n }))
    };
    let first = a.send_direct(keyed(1)).await.unwrap();
    assert_eq!(first.delivered_sockets, 1);
    let (on_a, on_b) = tokio::join!(a.send_direct(keyed(2)), b.send_direct(keyed(3)));
    assert_eq!(on_a.unwrap(), first);
    assert_eq!(on_b.unwrap(), first);
    assert_eq!(erin.next("newMessage", WAIT).await, Some(json!({"n": 1})));
    assert_eq!(
        erin.next("newMessage", Duration::from_millis(400)).await,
        None
    );
    // Two nodes racing with a new key: one delivery, one answer.
    let (x, y) = tokio::join!(
        a.send_direct(SendDirectRequest {
            idempotency_key: "race".into(),
            ..direct("erin", json!("race"))
        }),
        b.send_direct(SendDirectRequest {
            idempotency_key: "race".into(),
            ..direct("erin", json!("race"))
        })
    );
    assert_eq!(x.unwrap(), y.unwrap());
    assert_eq!(erin.next("newMessage", WAIT).await, Some(json!("race")));
    assert_eq!(
        erin.next("newMessage", Duration::from_millis(400)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_event_names_that_json_escapes_cross_nodes() {
    let redis = Redis::start().await;
    let [a, b] = nodes(&redis.url(), &[]).await;
    let user = r#"o"brien\x"#;
    let mut tab = b.tab(user).await;
    a.wait_online(|u| u == [user]).await;
    let event = r#"say "hi" \o/"#;
    assert_eq!(a.send_event(user, event, json!("quoted")).await.unwrap(), 1);
    assert_eq!(tab.first_arg(event).await, json!("quoted"));
    assert_eq!(
        a.disconnect(user, r#"a "reason""#).await.unwrap(),
        (1, false)
    );
    assert_eq!(
        tab.first_arg("disconnectReason").await,
        json!(r#"a "reason""#)
    );
}
