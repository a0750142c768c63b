//! The per-user, per-connection and per-message limits, and user ids that are refused.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tonic::Code;

use crate::support::{ws::RawWs, Gateway, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_resource_exhausted() {
    let gw = Gateway::start_args(&["--max-message-bytes", "1024"]).await;
    let _tab = gw.tab("alice").await;
    let status = gw
        .send("alice", json!({ "blob": "x".repeat(2000) }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("1024"), "{}", status.message());
    assert_eq!(
        gw.send("alice", json!({ "blob": "x".repeat(900) }))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_tab_is_closed_beyond_the_per_user_limit() {
    let gw = Gateway::start_args(&["--max-sockets-per-user", "2"]).await;
    let mut first = gw.tab("alice").await;
    let mut second = gw.tab("alice").await;
    let mut third = gw.tab("alice").await;
    let reason = first.first_arg("disconnectReason").await;
    assert!(
        reason.as_str().unwrap().contains("too many sockets"),
        "{reason}"
    );
    tokio::time::timeout(WAIT, async {
        while gw.send("alice", json!("n")).await.unwrap() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two sockets remain");
    assert_eq!(second.first_arg("newMessage").await, json!("n"));
    assert_eq!(third.first_arg("newMessage").await, json!("n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let gw = Gateway::start_args(&["--max-connections", "2"]).await;
    let _a = gw.tab("a").await;
    let _b = gw.tab("b").await;
    let (_tab, seen) = gw.handshake("?userId=c", None).await;
    seen.assert_refused("connection limit");
    assert_eq!(gw.online().await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_hurts_nobody() {
    let gw = Gateway::start_args(&[
        "--socket-buffer-packets",
        "16",
        "--max-dropped-sends",
        "4",
        "--ping-interval-ms",
        "500",
        "--ping-timeout-ms",
        "500",
    ])
    .await;
    let mut good = gw.tab("good").await;
    // A raw client that joins, then never reads another byte.
    let mut stalled = RawWs::open(gw.running.http_addr(), "&userId=stalled").await;
    stalled.send_packet("40").await;
    gw.wait_online(|u| u == ["good", "stalled"]).await;

    let blob = "x".repeat(60_000);
    let (mut refused, mut sent) = (0, 0);
    for i in 0..2000 {
        match gw
            .send("stalled", json!({ "i": i, "blob": blob }))
            .await
            .unwrap()
        {
            1 => sent += 1,
            _ => refused += 1,
        }
        if i % 10 == 0 {
            assert_eq!(gw.send("good", json!({ "i": i })).await.unwrap(), 1);
        }
        if refused >= 4 {
            break;
        }
    }
    assert!(
        refused >= 4,
        "sends to a stalled reader were refused ({sent} taken first)"
    );
    // Buffered at most socket buffer + kernel buffers, never everything sent.
    assert!(sent < 2000);
    gw.wait_online(|u| u == ["good"]).await;
    assert_eq!(gw.send("stalled", json!("gone")).await.unwrap(), 0);
    for i in (0..sent + refused).step_by(10) {
        assert_eq!(good.first_arg("newMessage").await, json!({ "i": i }));
    }
    // The heartbeat closes the stalled connection for good: reading it now ends.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = stalled.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_and_blank_user_ids_are_refused() {
    let gw = Gateway::start().await;
    for id in [
        "   ",
        "\u{3000}",
        "admin\u{202E}nimda",
        "al\u{200B}ice",
        "\u{2066}bob\u{2069}",
        "\u{FEFF}carol",
        "\u{3164}",
    ] {
        let (_tab, seen) = gw.handshake("", Some(json!({ "userId": id }))).await;
        seen.assert_refused("invalid user id");
        let status = gw.send(id, json!("x")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id:?}");
        assert!(
            status.message().contains("receiver_id"),
            "{}",
            status.message()
        );
    }
    assert!(gw.online().await.is_empty());
}
