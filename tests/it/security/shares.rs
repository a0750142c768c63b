//! Each caller's own share of the bounded resources, through real gRPC callers (a callers
//! file with two keys) and real tabs: one caller's flood of kept messages drops only its own,
//! single node and two nodes on Redis, and one caller's idle WatchPresence streams leave the
//! other callers their slots.

use futures_util::future::join_all;
use messaging_gateway::proto::{
    messaging_client::MessagingClient, watch_presence_response::Item, SendDirectRequest,
    WatchPresenceRequest,
};
use serde_json::json;
use tonic::{transport::Channel, Code};

use crate::support::{
    direct,
    grpc::{self, authorized, callers_file, next_watch_item, ANALYTICS, ORDERS},
    process::Process,
    redis::Redis,
    Gateway, Tab,
};

/// The mailbox's total in these tests; the flood sends half as many more.
const TOTAL: u64 = 100;

/// `SendDirect` of `text` to `user` as the caller with `key`, kept a minute.
async fn keep(grpc: &MessagingClient<Channel>, key: &str, user: &str, text: &str) {
    let req = SendDirectRequest {
        ttl_seconds: 60,
        ..direct(user, json!({ "text": text }))
    };
    let sent = grpc
        .clone()
        .send_direct(authorized(req, key))
        .await
        .unwrap()
        .into_inner();
    assert!(sent.queued, "{user} is offline: kept");
}

/// Orders keeps carol's code on `orders`, analytics floods more than the total to junk ids
/// on `analytics`, then carol connects at `url` and gets her code.
async fn carol_gets_her_code(
    orders: &MessagingClient<Channel>,
    analytics: &MessagingClient<Channel>,
    url: &str,
) {
    keep(orders, ORDERS, "carol", "2FA code 123456").await;
    for wave in 0..3 {
        join_all((0..TOTAL / 2).map(|n| {
            let user = format!("junk-{wave}-{n}");
            async move { keep(analytics, ANALYTICS, &user, "junk").await }
        }))
        .await;
    }
    let mut carol = Tab::connect(url, Some("carol"), rust_socketio::TransportType::Websocket).await;
    assert_eq!(
        carol.first_arg("newMessage").await,
        json!({ "text": "2FA code 123456" })
    );
}

/// Before: carol got nothing; the flood had evicted the oldest of all, hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_flood_does_not_evict_another_callers_kept_message() {
    let keys = callers_file("");
    let gw = Gateway::start_args(&[
        "--api-keys-file",
        keys.path().to_str().unwrap(),
        "--mailbox-max-total",
        &TOTAL.to_string(),
    ])
    .await;
    carol_gets_her_code(&gw.grpc, &gw.grpc, &gw.url()).await;
}

/// The same with the mailbox in Redis: orders on node a, analytics and carol on node b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_flood_does_not_evict_another_callers_kept_message_in_a_cluster() {
    let redis = Redis::start().await;
    let keys = callers_file("");
    let (url, total) = (redis.url(), TOTAL.to_string());
    let args = [
        "--redis-url",
        &url,
        "--api-keys-file",
        keys.path().to_str().unwrap(),
        "--mailbox-max-total",
        &total,
    ];
    let (a, b) = (Process::start(&args), Process::start(&args));
    let client = |addr| async move {
        MessagingClient::new(grpc::channel(addr).await.expect("gRPC connects"))
    };
    let (on_a, on_b) = (client(a.grpc).await, client(b.grpc).await);
    carol_gets_her_code(&on_a, &on_b, &format!("http://{}/", b.http)).await;
}

/// A `WatchPresence` stream without a snapshot, as the caller with `key`.
async fn watch(
    grpc: &MessagingClient<Channel>,
    key: &str,
) -> Result<tonic::Streaming<messaging_gateway::proto::WatchPresenceResponse>, tonic::Status> {
    let req = authorized(WatchPresenceRequest { snapshot: false }, key);
    grpc.clone()
        .watch_presence(req)
        .await
        .map(|r| r.into_inner())
}

/// Before: analytics' idle streams took every slot and orders' watch was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_idle_watchers_leave_the_others_their_slots() {
    let keys = callers_file("watchers=3");
    let gw = Gateway::start_args(&[
        "--api-keys-file",
        keys.path().to_str().unwrap(),
        "--max-presence-watchers",
        "4",
    ])
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(watch(&gw.grpc, ANALYTICS).await.unwrap());
    }
    let refused = watch(&gw.grpc, ANALYTICS).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("caller \"analytics\": its share of 3"),
        "{}",
        refused.message()
    );
    let mut orders = watch(&gw.grpc, ORDERS).await.unwrap();
    let _zoe = gw.tab("zoe").await;
    match next_watch_item(&mut orders).await.unwrap() {
        Item::Change(change) => assert_eq!((change.user_id.as_str(), change.online), ("zoe", true)),
        other => panic!("expected zoe's change, got {other:?}"),
    }
    // A stream that ends gives its slot back.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while watch(&gw.grpc, ANALYTICS).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
