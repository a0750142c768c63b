//! The presence API for backends on one node, through real clients: GetPresence,
//! DisconnectUser, Broadcast and WatchPresence (tonic), browsers as rust_socketio tabs and raw
//! WebSockets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messaging_gateway::{
    presence::unix_ms,
    proto::{
        messaging_client::MessagingClient, watch_presence_response::Item, BroadcastRequest,
        PresenceChange, WatchPresenceRequest, WatchPresenceResponse,
    },
};
use serde_json::json;
use tonic::{transport::Channel, Code, Streaming};

use crate::support::{grpc::next_watch_item, ws::RawWs, Gateway, WAIT};

async fn watch(
    grpc: &MessagingClient<Channel>,
    snapshot: bool,
) -> Streaming<WatchPresenceResponse> {
    grpc.clone()
        .watch_presence(WatchPresenceRequest { snapshot })
        .await
        .expect("WatchPresence opens")
        .into_inner()
}

async fn next_change(stream: &mut Streaming<WatchPresenceResponse>) -> PresenceChange {
    match next_watch_item(stream).await.expect("a change") {
        Item::Change(c) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_presence_counts_sockets_and_keeps_the_first_since() {
    let gw = Gateway::start().await;
    let before = unix_ms();
    let _a1 = gw.tab("alice").await;
    gw.wait_presence("alice", 1).await;
    let after_first = unix_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let a2 = gw.tab("alice").await;
    let _b = gw.tab("bob").await;
    gw.wait_presence("alice", 2).await;
    gw.wait_presence("bob", 1).await;
    let users = gw
        .presence(&["alice", "carol", "bob", "alice"])
        .await
        .unwrap();
    let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(
        ids,
        ["alice", "carol", "bob"],
        "distinct ids, request order"
    );
    assert!(users[0].online);
    assert_eq!(users[0].sockets, 2);
    let since = users[0].online_since_unix_ms;
    assert!(
        (before..=after_first).contains(&since),
        "since is the first socket's connect: {before} <= {since} <= {after_first}"
    );
    assert_eq!(
        (
            users[1].online,
            users[1].sockets,
            users[1].online_since_unix_ms
        ),
        (false, 0, 0)
    );
    assert_eq!(users[2].sockets, 1);
    // Closing one tab keeps the online period (and its start).
    a2.close().await;
    gw.wait_presence("alice", 1).await;
    assert_eq!(
        gw.presence(&["alice"]).await.unwrap()[0].online_since_unix_ms,
        since
    );

    let none = gw.presence(&[]).await.unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    assert!(none.message().contains("user_ids"), "{}", none.message());
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let over = gw.presence(&refs).await.unwrap_err();
    assert_eq!(over.code(), Code::InvalidArgument);
    assert!(over.message().contains("1000"), "{}", over.message());
    assert_eq!(gw.presence(&refs[..1000]).await.unwrap().len(), 1000);
    let bad = gw.presence(&["ok", "bad\u{7}"]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_user_tells_the_reason_then_disconnects_every_tab() {
    let gw = Gateway::start().await;
    let mut a1 = gw.tab("alice").await;
    let mut a2 = gw.tab("alice").await;
    let mut bob = gw.tab("bob").await;
    bob.online_until(|l| l == ["alice", "bob"]).await;
    gw.wait_presence("alice", 2).await;
    assert_eq!(
        gw.disconnect("alice", "banned for spam").await.unwrap(),
        (2, false)
    );
    for tab in [&mut a1, &mut a2] {
        assert_eq!(
            tab.first_arg("disconnectReason").await,
            json!("banned for spam")
        );
    }
    // Offline at once for the backend, and pushed to the other users.
    let p = &gw.presence(&["alice"]).await.unwrap()[0];
    assert_eq!((p.online, p.sockets), (false, 0));
    bob.online_until(|l| l == ["bob"]).await;
    assert_eq!(gw.send("alice", json!("after")).await.unwrap(), 0);
    // The tabs are really gone: nothing reaches them any more.
    a1.expect_no("newMessage").await;
    assert_eq!(gw.disconnect("alice", "").await.unwrap(), (0, false));

    // A reason-less call sends the default reason.
    let mut c = gw.tab("carol").await;
    gw.wait_presence("carol", 1).await;
    assert_eq!(gw.disconnect("carol", "").await.unwrap(), (1, false));
    assert_eq!(
        c.first_arg("disconnectReason").await,
        json!("disconnected by the server")
    );
    let long = "x".repeat(1025);
    let err = gw.disconnect("bob", &long).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("reason"), "{}", err.message());
    assert_eq!(
        gw.disconnect("", "x").await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_socket_once_and_counts_them() {
    let gw = Gateway::start_args(&["--metrics-addr", "127.0.0.1:0"]).await;
    let mut tabs = vec![
        gw.tab("alice").await,
        gw.tab("alice").await,
        gw.tab("bob").await,
    ];
    gw.wait_presence("alice", 2).await;
    gw.wait_presence("bob", 1).await;
    let r = gw
        .broadcast(json!({"notice": "maintenance at 2am"}), "maintenance")
        .await;
    assert_eq!(
        (r.users, r.sockets, r.refused_sockets, r.partial),
        (2, 3, 0, false)
    );
    for tab in &mut tabs {
        assert_eq!(
            tab.first_arg("maintenance").await,
            json!({"notice": "maintenance at 2am"})
        );
    }
    for tab in &mut tabs {
        tab.expect_no("maintenance").await;
    }
    let err = gw
        .grpc
        .clone()
        .broadcast(BroadcastRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("message"), "{}", err.message());
    let text = gw.metrics_text().await;
    assert!(text.contains("\ngateway_broadcasts_total 1\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_presence_sends_the_snapshot_then_every_change_in_order() {
    let gw = Gateway::start_args(&["--metrics-addr", "127.0.0.1:0"]).await;
    let _a = gw.tab("alice").await;
    let _b = gw.tab("bob").await;
    gw.wait_online(|u| u == ["alice", "bob"]).await;
    let mut w = watch(&gw.grpc, true).await;
    let mut plain = watch(&gw.grpc, false).await;
    let Item::Snapshot(snap) = next_watch_item(&mut w).await.unwrap() else {
        panic!("the snapshot comes first");
    };
    assert_eq!(snap.user_ids, ["alice", "bob"]);
    assert!(snap.last);
    let carol = gw.tab("carol").await;
    let c2 = gw.tab("carol").await; // a second tab is no change
    gw.wait_presence("carol", 2).await;
    carol.close().await;
    c2.close().await;
    let dave = gw.tab("dave").await;
    gw.wait_presence("dave", 1).await;
    gw.disconnect("dave", "bye").await.unwrap();
    drop(dave);
    let expect = [
        ("carol", true),
        ("carol", false),
        ("dave", true),
        ("dave", false),
    ];
    for stream in [&mut w, &mut plain] {
        let mut seq = snap.sequence;
        for (user, online) in expect {
            let c = next_change(stream).await;
            assert_eq!((c.user_id.as_str(), c.online), (user, online));
            assert_eq!(c.sequence, seq + 1, "consecutive sequence numbers");
            seq = c.sequence;
        }
    }
    let text = gw.metrics_text().await;
    assert!(text.contains("\ngateway_presence_watchers 2\n"), "{text}");
    assert!(
        text.contains("\ngateway_presence_watchers_opened_total 2\n"),
        "{text}"
    );
    // Shutdown ends every watch with a status a caller can retry elsewhere on.
    gw.running.shutdown();
    for stream in [&mut w, &mut plain] {
        let end = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the watch ends on shutdown");
        let status = end.expect("with a status").unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_gets_resource_exhausted_and_watchers_are_capped() {
    let gw = Gateway::start_args(&[
        "--watch-buffer-events",
        "8",
        "--max-presence-watchers",
        "2",
        "--max-connections",
        "1000",
    ])
    .await;
    // A small stream window: the watcher's unread changes stay in the gateway, not in this
    // client.
    let slow_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", gw.running.grpc_addr()))
            .unwrap()
            .initial_stream_window_size(Some(1024))
            .connect()
            .await
            .unwrap();
    let mut slow = watch(&MessagingClient::new(slow_channel), false).await;
    let _second = watch(&gw.grpc, false).await;
    let third = gw
        .grpc
        .clone()
        .watch_presence(WatchPresenceRequest { snapshot: false })
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert!(
        third.message().contains("--max-presence-watchers"),
        "{}",
        third.message()
    );

    // Several hundred changes with long user ids (about 140 bytes each on the wire).
    let http = gw.running.http_addr();
    for round in 0..4 {
        let mut sockets = Vec::new();
        for i in 0..100 {
            let user = format!("{round}-{i}-{}", "x".repeat(120));
            sockets.push(RawWs::join(http, &user).await);
        }
        for mut ws in sockets {
            let _ = ws.close(None).await;
            let _ = ws.flush().await;
        }
    }
    gw.wait_online(|u| u.is_empty()).await;
    let mut changes = 0;
    let status = tokio::time::timeout(WAIT, async {
        loop {
            match slow.next().await {
                Some(Ok(_)) => changes += 1,
                Some(Err(status)) => return status,
                None => panic!("the stream ended without a status after {changes} changes"),
            }
        }
    })
    .await
    .expect("the slow watcher's stream ends");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("watcher fell behind"),
        "{}",
        status.message()
    );
    assert!(
        changes < 800,
        "it was cut off before the end ({changes} changes read)"
    );
    // Its slot is free again.
    tokio::time::timeout(WAIT, async {
        loop {
            let open = gw
                .grpc
                .clone()
                .watch_presence(WatchPresenceRequest { snapshot: false })
                .await;
            if open.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a new watcher is admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_comes_in_pages() {
    let gw = Gateway::start_args(&["--max-connections", "2000"]).await;
    let http = gw.running.http_addr();
    let mut sockets = Vec::new();
    for i in 0..1001 {
        sockets.push(RawWs::join(http, &format!("u{i:04}")).await);
    }
    // The connect ack precedes the connect handler that registers the user.
    gw.wait_online(|users| users.len() == 1001).await;
    let mut w = watch(&gw.grpc, true).await;
    let mut users = Vec::new();
    let mut pages = 0;
    loop {
        let Item::Snapshot(page) = next_watch_item(&mut w).await.unwrap() else {
            panic!("snapshot pages first");
        };
        pages += 1;
        users.extend(page.user_ids);
        if page.last {
            break;
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(users.len(), 1001);
    assert!(
        users.windows(2).all(|w| w[0] < w[1]),
        "ascending, each once"
    );
    drop(sockets);
}
