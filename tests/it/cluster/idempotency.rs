//! Idempotency keys in Redis are each caller's own: another caller's same key is another key,
//! and a caller's keys are bounded by `--idempotency-max-keys`, its oldest forgotten first,
//! never another caller's; on one Redis and on a Redis Cluster.

use messaging_gateway::proto::SendDirectRequest;
use serde_json::json;

use super::{node, nodes};
use crate::support::{
    direct,
    grpc::{callers_file, ANALYTICS, ORDERS},
    redis::{Redis, RedisCluster},
    ws::AckTab,
    Gateway, QUIET, WAIT,
};

fn keyed(key: &str, text: &str) -> SendDirectRequest {
    SendDirectRequest {
        idempotency_key: key.into(),
        ..direct("bob", json!(text))
    }
}

/// Before: orders' real message, sent on node b, was answered from analytics' forged call's
/// record in Redis and never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_scoped_to_its_caller_across_nodes() {
    let redis = Redis::start().await;
    let callers = callers_file("");
    let [a, b] = nodes(
        &redis.url(),
        &["--api-keys-file", callers.path().to_str().unwrap()],
    )
    .await;
    let mut bob = AckTab::connect(a.running.http_addr(), "bob", true).await;
    for (key, text) in [(ANALYTICS, "forged"), (ORDERS, "shipped")] {
        let answer = a
            .send_direct_as(key, keyed("order-42-shipped", text))
            .await
            .unwrap();
        assert_eq!(answer.delivered_sockets, 1, "{text}");
        assert_eq!(bob.next("newMessage", WAIT).await, Some(json!(text)));
    }
    // Each caller's retry on the other node replays its own call (delivered to bob's one
    // socket, which node b may not even know of yet), and delivers nothing.
    for key in [ORDERS, ANALYTICS] {
        let retry = b
            .send_direct_as(key, keyed("order-42-shipped", "retry"))
            .await
            .unwrap();
        assert_eq!(retry.delivered_sockets, 1);
    }
    assert_eq!(bob.next("newMessage", QUIET).await, None);
}

/// Keys kept for `caller` in Redis (fields of its buckets' hashes), and in all (answers and
/// markers of every caller, whatever their layout: a plain string is one key).
fn kept(masters: &[Redis], caller: &str) -> (usize, usize) {
    let bucket = format!("{{{}:{caller}/", caller.len());
    let (mut mine, mut all) = (0, 0);
    for master in masters {
        let names = master.cli(&["--scan", "--pattern", "mg:idem:*"]);
        for name in names.lines().filter(|n| !n.ends_with(":age")) {
            let n: usize = match master.cli(&["type", name]).as_str() {
                "hash" => master.cli(&["hlen", name]).parse().unwrap(),
                _ => 1,
            };
            all += n;
            if name.contains(&bucket) {
                mine += n;
            }
        }
    }
    (mine, all)
}

const MAX_KEYS: usize = 20;
const FLOOD: usize = 50;

/// Orders keeps one key; analytics floods past its bound. Before: 51 keys stayed in Redis,
/// one per call, whatever `--idempotency-max-keys` said.
async fn a_flood_forgets_only_the_callers_own_oldest(gw: &Gateway, masters: &[Redis]) {
    let mut bob = AckTab::connect(gw.running.http_addr(), "bob", true).await;
    let kept_by_orders = keyed("keep", "kept");
    gw.send_direct_as(ORDERS, kept_by_orders.clone())
        .await
        .unwrap();
    assert_eq!(bob.next("newMessage", WAIT).await, Some(json!("kept")));
    for i in 0..FLOOD {
        let text = format!("flood-{i}");
        gw.send_direct_as(ANALYTICS, keyed(&text, &text))
            .await
            .unwrap();
        assert_eq!(bob.next("newMessage", WAIT).await, Some(json!(text)));
    }
    let (analytics, all) = kept(masters, "analytics");
    assert!(
        all <= MAX_KEYS + 1,
        "Redis keeps {all} idempotency keys: analytics' bound {MAX_KEYS} + orders' 1"
    );
    assert!(
        (1..=MAX_KEYS).contains(&analytics),
        "analytics keeps {analytics} keys, bound {MAX_KEYS}"
    );
    assert_eq!(kept(masters, "orders").0, 1);
    assert_eq!(all, analytics + 1);
    // Orders' key and analytics' latest still replay; nothing is delivered again.
    let last = format!("flood-{}", FLOOD - 1);
    gw.send_direct_as(ORDERS, kept_by_orders).await.unwrap();
    gw.send_direct_as(ANALYTICS, keyed(&last, "again"))
        .await
        .unwrap();
    assert_eq!(bob.next("newMessage", QUIET).await, None);
}

fn bounded<'a>(callers: &'a tempfile::NamedTempFile, max: &'a str) -> [&'a str; 4] {
    [
        "--api-keys-file",
        callers.path().to_str().unwrap(),
        "--idempotency-max-keys",
        max,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_callers_keys_in_redis_stay_within_its_bound() {
    let redis = Redis::start().await;
    let callers = callers_file("");
    let max = MAX_KEYS.to_string();
    let gw = node(&redis.url(), &bounded(&callers, &max)).await;
    a_flood_forgets_only_the_callers_own_oldest(&gw, std::slice::from_ref(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_callers_keys_stay_within_its_bound_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let callers = callers_file("");
    let max = MAX_KEYS.to_string();
    let mut args = bounded(&callers, &max).to_vec();
    args.push("--redis-cluster");
    let gw = node(&cluster.urls(), &args).await;
    a_flood_forgets_only_the_callers_own_oldest(&gw, cluster.masters()).await;
}
