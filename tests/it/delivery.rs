//! SendDirect's delivery options on one node, through real clients: acknowledged delivery
//! (raw Socket.IO tabs that ack, or not), idempotent retries and the offline mailbox.

use std::time::{Duration, Instant};

use messaging_gateway::proto::SendDirectRequest;
use serde_json::json;
use tonic::Code;

use crate::support::{
    direct,
    grpc::{callers_file, ANALYTICS, ORDERS},
    ws::AckTab,
    Gateway,
};

async fn tab(gw: &Gateway, user: &str, acking: bool) -> AckTab {
    AckTab::connect(gw.running.http_addr(), user, acking).await
}

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_acks_and_the_answer_comes_at_once() {
    let gw = Gateway::start().await;
    let mut tabs = vec![tab(&gw, "alice", true).await, tab(&gw, "alice", true).await];
    let started = Instant::now();
    let answer = gw
        .send_direct(SendDirectRequest {
            ack_timeout_ms: 10_000,
            ..direct("alice", json!({"n": 1}))
        })
        .await
        .unwrap();
    assert_eq!((answer.delivered_sockets, answer.acked_sockets), (2, 2));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered once both acked, not at the timeout: {:?}",
        started.elapsed()
    );
    for tab in &mut tabs {
        assert_eq!(tab.next("newMessage", WITHIN).await, Some(json!({"n": 1})));
    }
    // Without ack_timeout_ms nothing is asked and nothing counted.
    let answer = gw.send_direct(direct("alice", json!(2))).await.unwrap();
    assert_eq!((answer.delivered_sockets, answer.acked_sockets), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_acks_costs_the_timeout_and_no_more() {
    let gw = Gateway::start().await;
    let mut acking = tab(&gw, "bob", true).await;
    let mut silent = tab(&gw, "bob", false).await;
    let timeout = Duration::from_millis(1000);
    for round in 0..3 {
        let started = Instant::now();
        let answer = gw
            .send_direct(SendDirectRequest {
                ack_timeout_ms: timeout.as_millis() as u32,
                ..direct("bob", json!({ "round": round }))
            })
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!((answer.delivered_sockets, answer.acked_sockets), (2, 1));
        assert!(
            took >= timeout && took <= timeout + timeout / 10,
            "answered after {took:?}, not within the {timeout:?} timeout + 10%"
        );
        assert!(acking.next("newMessage", WITHIN).await.is_some());
        assert!(silent.next("newMessage", WITHIN).await.is_some());
    }
    // The unanswered acks left nothing behind that slows the next send.
    let started = Instant::now();
    let answer = gw.send_direct(direct("bob", json!("plain"))).await.unwrap();
    assert_eq!(answer.delivered_sockets, 2);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_for_an_offline_user_answer_at_once_and_the_limit_is_checked() {
    let gw = Gateway::start().await;
    let started = Instant::now();
    let answer = gw
        .send_direct(SendDirectRequest {
            ack_timeout_ms: 5_000,
            ..direct("nobody", json!(1))
        })
        .await
        .unwrap();
    assert_eq!((answer.delivered_sockets, answer.acked_sockets), (0, 0));
    assert!(started.elapsed() < Duration::from_secs(1));

    let refused = gw
        .send_direct(SendDirectRequest {
            ack_timeout_ms: 60_001,
            ..direct("nobody", json!(1))
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("ack_timeout_ms") && refused.message().contains("60000"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_is_answered_not_delivered() {
    let gw = Gateway::start().await;
    let mut tabs = vec![tab(&gw, "carol", true).await, tab(&gw, "carol", true).await];
    let keyed = |n: u32| SendDirectRequest {
        idempotency_key: "order-42-shipped".into(),
        ack_timeout_ms: 2_000,
        ..direct("carol", json!({ "n": n }))
    };
    let first = gw.send_direct(keyed(1)).await.unwrap();
    assert_eq!((first.delivered_sockets, first.acked_sockets), (2, 2));
    // A retry (even with another payload), then two duplicates at once.
    let retry = gw.send_direct(keyed(2)).await.unwrap();
    let (x, y) = tokio::join!(gw.send_direct(keyed(3)), gw.send_direct(keyed(4)));
    for answer in [retry, x.unwrap(), y.unwrap()] {
        assert_eq!(answer, first);
    }
    for tab in &mut tabs {
        assert_eq!(tab.next("newMessage", WITHIN).await, Some(json!({"n": 1})));
        assert_eq!(
            tab.next("newMessage", Duration::from_millis(400)).await,
            None
        );
    }
    // Two new keys sent at once: the concurrent duplicate waits for the first's answer.
    let fresh = |key: &str| SendDirectRequest {
        idempotency_key: key.into(),
        ..direct("carol", json!(key))
    };
    let (x, y) = tokio::join!(gw.send_direct(fresh("k2")), gw.send_direct(fresh("k2")));
    assert_eq!(x.unwrap(), y.unwrap());
    assert_eq!(tabs[0].next("newMessage", WITHIN).await, Some(json!("k2")));
    assert_eq!(
        tabs[0].next("newMessage", Duration::from_millis(400)).await,
        None
    );

    for (key, why) in [("k".repeat(129), "128"), ("a\nb".into(), "control")] {
        let refused = gw.send_direct(fresh(&key)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().starts_with("idempotency_key:") && refused.message().contains(why),
            "{}",
            refused.message()
        );
    }
}

/// A key names one call to one receiver: the same key sent to another user (one event
/// fanned out under its id) delivers to that user too, and each retry replays its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_scoped_to_its_receiver() {
    let gw = Gateway::start().await;
    let mut buyer = tab(&gw, "buyer", true).await;
    let _seller_tabs = [
        tab(&gw, "seller", true).await,
        tab(&gw, "seller", true).await,
    ];
    let keyed = |user: &str| SendDirectRequest {
        idempotency_key: "order-42-shipped".into(),
        ..direct(user, json!(user))
    };
    let to_buyer = gw.send_direct(keyed("buyer")).await.unwrap();
    let to_seller = gw.send_direct(keyed("seller")).await.unwrap();
    assert_eq!(
        (to_buyer.delivered_sockets, to_seller.delivered_sockets),
        (1, 2)
    );
    assert_eq!(gw.send_direct(keyed("seller")).await.unwrap(), to_seller);
    assert_eq!(gw.send_direct(keyed("buyer")).await.unwrap(), to_buyer);
    assert_eq!(buyer.next("newMessage", WITHIN).await, Some(json!("buyer")));
    assert_eq!(
        buyer.next("newMessage", Duration::from_millis(400)).await,
        None
    );
}

/// A key names one caller's call: another caller's call with the same key and receiver is
/// no replay of it. Before, analytics' forged message claimed the key, and orders' real one
/// was answered from its record (`delivered_sockets: 1`) and never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_scoped_to_its_caller() {
    let callers = callers_file("");
    let gw = Gateway::start_args(&["--api-keys-file", callers.path().to_str().unwrap()]).await;
    let mut bob = tab(&gw, "bob", true).await;
    let keyed = |text: &str| SendDirectRequest {
        idempotency_key: "order-42-shipped".into(),
        ..direct("bob", json!(text))
    };
    for (key, text) in [(ANALYTICS, "forged"), (ORDERS, "shipped")] {
        let answer = gw.send_direct_as(key, keyed(text)).await.unwrap();
        assert_eq!(answer.delivered_sockets, 1, "{text}");
        assert_eq!(bob.next("newMessage", WITHIN).await, Some(json!(text)));
    }
    // Each caller's retry replays its own call.
    for key in [ORDERS, ANALYTICS] {
        let retry = gw.send_direct_as(key, keyed("retry")).await.unwrap();
        assert_eq!(retry.delivered_sockets, 1);
    }
    assert_eq!(
        bob.next("newMessage", Duration::from_millis(400)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire_after_the_window_and_are_bounded() {
    let gw = Gateway::start_args(&[
        "--idempotency-window-ms",
        "1000",
        "--idempotency-max-keys",
        "2",
    ])
    .await;
    let mut dave = tab(&gw, "dave", true).await;
    let keyed = |key: &str| SendDirectRequest {
        idempotency_key: key.into(),
        ..direct("dave", json!(key))
    };
    assert_eq!(
        gw.send_direct(keyed("a")).await.unwrap().delivered_sockets,
        1
    );
    assert_eq!(
        gw.send_direct(keyed("a")).await.unwrap().delivered_sockets,
        1
    );
    assert_eq!(dave.next("newMessage", WITHIN).await, Some(json!("a")));
    assert_eq!(
        dave.next("newMessage", Duration::from_millis(300)).await,
        None
    );
    // Past the window, the key delivers again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.send_direct(keyed("a")).await.unwrap();
    assert_eq!(dave.next("newMessage", WITHIN).await, Some(json!("a")));
    // Beyond two keys the oldest is forgotten first.
    for key in ["b", "c", "a"] {
        gw.send_direct(keyed(key)).await.unwrap();
        assert_eq!(dave.next("newMessage", WITHIN).await, Some(json!(key)));
    }
}
