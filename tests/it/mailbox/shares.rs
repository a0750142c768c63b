//! Each caller's share of the mailbox, on both implementations (this process, and Redis: one
//! server and a Redis Cluster): a caller over its share loses its own oldest, and a full
//! mailbox loses the oldest of the caller holding the most (the pushing one on a tie), so one
//! caller's flood never evicts another caller's kept messages. Before: every bound dropped
//! the oldest of all, and a flood of 30 to junk ids evicted orders' "2FA code" for carol.

use std::{process::Command, sync::Arc};

use messaging_gateway::{
    caller::{Caller, Shares},
    cluster::{mailbox::RedisMailbox, redis::Redis as RedisNode},
    mailbox::{Claim, Dropped, Mail, MailLimits, Mailbox, Memory},
    presence::unix_ms,
};
use serde_json::value::to_raw_value;

use crate::support::{
    config,
    redis::{Redis, RedisCluster},
    require,
};

/// A caller named `name`, with its own mailbox share when given.
fn caller(name: &str, mailbox: Option<u64>) -> Caller {
    Caller {
        shares: Shares {
            mailbox,
            watchers: None,
        },
        ..Caller::everything(name)
    }
}

/// Keeps `text` (a JSON string) for `user`, a minute.
async fn push(m: &dyn Mailbox, user: &str, from: &Caller, text: &str) -> Dropped {
    let mail = Mail {
        event: "newMessage".into(),
        json: to_raw_value(text).unwrap(),
        expires_ms: unix_ms() + 60_000,
        ack_ms: 0,
    };
    m.push(user, from.into(), &mail).await.unwrap().dropped
}

/// Every message kept for `user`, in order, handed over and done.
async fn take(m: &dyn Mailbox, user: &str) -> Vec<String> {
    let Claim::Lent(lent) = m.claim(user, 1000).await.unwrap() else {
        panic!("nothing else claims {user}");
    };
    let done: Vec<u64> = lent.mail.iter().map(|(seq, _)| *seq).collect();
    if lent.claim != 0 {
        m.settle(user, lent.claim, &done).await.unwrap();
    }
    lent.mail
        .iter()
        .map(|(_, mail)| serde_json::from_str(mail.json.get()).unwrap())
        .collect()
}

fn limits(total: usize, bytes: usize, per_caller: usize) -> MailLimits {
    MailLimits {
        per_user: 100,
        total,
        bytes,
        per_caller,
    }
}

/// Adds up what each push dropped.
fn sum(all: impl IntoIterator<Item = Dropped>) -> Dropped {
    all.into_iter().fold(Dropped::default(), |a, d| Dropped {
        user_limit: a.user_limit + d.user_limit,
        caller_limit: a.caller_limit + d.caller_limit,
        total_limit: a.total_limit + d.total_limit,
        expired: a.expired + d.expired,
    })
}

/// The reproduction, scaled down: a total of 10, orders keeps one message for carol,
/// analytics floods 30 to junk ids. Only analytics' oldest go; carol gets hers.
async fn a_flood_evicts_only_the_flooder(m: &dyn Mailbox) {
    let (orders, analytics) = (caller("orders", None), caller("analytics", None));
    push(m, "carol", &orders, "2FA code 123456").await;
    let mut dropped = Vec::new();
    for n in 0..30 {
        dropped.push(push(m, &format!("junk-{n}"), &analytics, &format!("junk {n}")).await);
    }
    let dropped = sum(dropped);
    assert_eq!((dropped.total_limit, dropped.caller_limit), (21, 0));
    assert_eq!(take(m, "carol").await, ["2FA code 123456"]);
    assert!(
        take(m, "junk-20").await.is_empty(),
        "analytics' oldest went"
    );
    for n in 21..30 {
        assert_eq!(take(m, &format!("junk-{n}")).await, [format!("junk {n}")]);
    }
}

/// A caller over its share (the default, or its own `mailbox=`) loses its own oldest, even
/// with the mailbox far from full.
async fn a_caller_over_its_share_loses_its_own_oldest(m: &dyn Mailbox) {
    let (orders, analytics) = (caller("orders", None), caller("analytics", Some(2)));
    let mut dropped = Vec::new();
    for n in 0..4 {
        dropped.push(push(m, "carol", &orders, &format!("orders {n}")).await);
        dropped.push(push(m, "dave", &analytics, &format!("analytics {n}")).await);
    }
    let dropped = sum(dropped);
    assert_eq!((dropped.caller_limit, dropped.total_limit), (1 + 2, 0));
    assert_eq!(take(m, "carol").await, ["orders 1", "orders 2", "orders 3"]);
    assert_eq!(take(m, "dave").await, ["analytics 2", "analytics 3"]);
}

/// A full mailbox loses the oldest of the caller holding the most, the pushing caller's own
/// when it ties, and never that of a caller holding less.
async fn a_full_mailbox_drops_from_the_caller_holding_the_most(m: &dyn Mailbox) {
    let (a, b, c) = (caller("a", None), caller("b", None), caller("c", None));
    push(m, "u1", &a, "a1").await;
    push(m, "u2", &b, "b1").await;
    push(m, "u3", &b, "b2").await;
    // a 2, b 2: a pushed, so a's oldest goes.
    assert_eq!(push(m, "u4", &a, "a2").await.total_limit, 1);
    assert!(take(m, "u1").await.is_empty(), "a1 went");
    // a 1, b 2, c 1: b holds the most.
    assert_eq!(push(m, "u5", &c, "c1").await.total_limit, 1);
    assert!(take(m, "u2").await.is_empty(), "b1 went");
    for (user, text) in [("u3", "b2"), ("u4", "a2"), ("u5", "c1")] {
        assert_eq!(take(m, user).await, [text]);
    }
}

/// Over the byte bound the caller holding the most bytes loses its oldest, though another
/// holds more messages.
async fn the_byte_bound_drops_from_the_caller_holding_the_most_bytes(m: &dyn Mailbox) {
    let (big, small) = (caller("big", None), caller("small", None));
    push(m, "u-big", &big, &"b".repeat(1200)).await;
    let mut dropped = Vec::new();
    for n in 0..10 {
        let text = format!("{n}{}", "s".repeat(90));
        dropped.push(push(m, &format!("u-small-{n}"), &small, &text).await);
    }
    assert_eq!(sum(dropped).total_limit, 1);
    assert!(take(m, "u-big").await.is_empty(), "the big message went");
    for n in 0..10 {
        assert_eq!(take(m, &format!("u-small-{n}")).await.len(), 1, "{n}");
    }
}

/// Runs every rule on a fresh mailbox from `fresh`.
async fn every_rule<F, Fut>(mut fresh: F)
where
    F: FnMut(MailLimits) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Mailbox>>,
{
    a_flood_evicts_only_the_flooder(&*fresh(limits(10, 1 << 20, 0)).await).await;
    a_caller_over_its_share_loses_its_own_oldest(&*fresh(limits(100, 1 << 20, 3)).await).await;
    a_full_mailbox_drops_from_the_caller_holding_the_most(&*fresh(limits(3, 1 << 20, 0)).await)
        .await;
    the_byte_bound_drops_from_the_caller_holding_the_most_bytes(
        &*fresh(limits(100, 2000, 0)).await,
    )
    .await;
    // What the last rule left behind is checked by a fresh mailbox.
    fresh(limits(1, 1, 0)).await;
}

#[tokio::test]
async fn shares_in_memory() {
    every_rule(|limits| async move { Arc::new(Memory::new(limits)) as Arc<dyn Mailbox> }).await;
}

/// One `redis-cli` command on the server at `port`; its output lines.
fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    require("redis-cli", "apt-get install -y redis-server");
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A mailbox in Redis at `urls` (a Redis Cluster's when `cluster`, on `ports`). Every rule
/// ends with all it kept handed over: what the last one left must be nothing but the
/// counter, a zero byte count and the lately-claimed marks, or some bookkeeping leaked. Then
/// the servers are emptied.
async fn in_redis(
    urls: &str,
    cluster: bool,
    ports: &[u16],
    limits: MailLimits,
) -> Arc<dyn Mailbox> {
    for &port in ports {
        let left: Vec<String> = redis_cli(port, &["--scan", "--pattern", "mg:{mb}:*"])
            .into_iter()
            .filter(|key| !key.starts_with("mg:{mb}:w:") && key != "mg:{mb}:seq")
            .filter(|key| key != "mg:{mb}:bytes" || redis_cli(port, &["GET", key]) != ["0"])
            .collect();
        assert!(left.is_empty(), "left in Redis: {left:?}");
        redis_cli(port, &["FLUSHALL"]);
    }
    let mut args = vec!["--redis-url", urls, "--cluster-timeout-ms", "5000"];
    if cluster {
        args.push("--redis-cluster");
    }
    let node = RedisNode::connect(&config(&args)).await.unwrap();
    Arc::new(RedisMailbox::new(node.link(), limits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_in_redis() {
    let redis = Redis::start().await;
    let (url, ports) = (redis.url(), [redis.port]);
    every_rule(|limits| in_redis(&url, false, &ports, limits)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let urls = cluster.urls();
    let ports: Vec<u16> = urls
        .split(',')
        .map(|url| url.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    every_rule(|limits| in_redis(&urls, true, &ports, limits)).await;
}
