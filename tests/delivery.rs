//! SendDirect's delivery options on one node, through real clients: acknowledged delivery
//! (raw Socket.IO tabs that ack, or not), idempotent retries and the offline mailbox.

mod common;

use std::time::{Duration, Instant};

use common::{process::AckTab, Gateway};
use messaging_gateway::{
    proto::{SendDirectRequest, SendDirectResponse},
    wire,
};
use serde_json::{json, Value};
use tonic::Code;

fn request(receiver: &str, message: Value) -> SendDirectRequest {
    SendDirectRequest {
        receiver_id: receiver.into(),
        message: Some(wire::from_json(&message)),
        sender_id: "test".into(),
        ..Default::default()
    }
}

async fn send(gw: &Gateway, req: SendDirectRequest) -> Result<SendDirectResponse, tonic::Status> {
    gw.grpc
        .clone()
        .send_direct(req)
        .await
        .map(|r| r.into_inner())
}

async fn tab(gw: &Gateway, user: &str, acking: bool) -> AckTab {
    AckTab::connect(gw.running.http_addr(), user, acking).await
}

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_acks_and_the_answer_comes_at_once() {
    let gw = Gateway::start().await;
    let mut tabs = vec![tab(&gw, "alice", true).await, tab(&gw, "alice", true).await];
    let started = Instant::now();
    let answer = send(
        &gw,
        SendDirectRequest {
            ack_timeout_ms: 10_000,
            ..request("alice", json!({"n": 1}))
        },
    )
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
    let answer = send(&gw, request("alice", json!(2))).await.unwrap();
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
        let answer = send(
            &gw,
            SendDirectRequest {
                ack_timeout_ms: timeout.as_millis() as u32,
                ..request("bob", json!({ "round": round }))
            },
        )
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
    let answer = send(&gw, request("bob", json!("plain"))).await.unwrap();
    assert_eq!(answer.delivered_sockets, 2);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_for_an_offline_user_answer_at_once_and_the_limit_is_checked() {
    let gw = Gateway::start().await;
    let started = Instant::now();
    let answer = send(
        &gw,
        SendDirectRequest {
            ack_timeout_ms: 5_000,
            ..request("nobody", json!(1))
        },
    )
    .await
    .unwrap();
    assert_eq!((answer.delivered_sockets, answer.acked_sockets), (0, 0));
    assert!(started.elapsed() < Duration::from_secs(1));

    let refused = send(
        &gw,
        SendDirectRequest {
            ack_timeout_ms: 60_001,
            ..request("nobody", json!(1))
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("ack_timeout_ms") && refused.message().contains("60000"),
        "{}",
        refused.message()
    );
}
