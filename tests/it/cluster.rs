//! Cluster mode on a real `redis-server` (started here on a free loopback port): several
//! in-process gateways, real Socket.IO clients and tonic clients, plus one gateway binary that
//! is killed with SIGKILL. Skipped, loudly, only when `redis-server` is not installed
//! (`scripts/test` installs it).

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{process::AckTab, Gateway, Tab, WAIT};
use futures_util::StreamExt;
use messaging_gateway::{
    presence,
    proto::{
        messaging_client::MessagingClient, watch_presence_response::Item, BroadcastRequest,
        DisconnectUserRequest, GetPresenceRequest, ListOnlineRequest, SendDirectRequest,
        SendStreamRequest, SendToUsersRequest, UserPresence, WatchPresenceRequest,
        WatchPresenceResponse,
    },
    wire,
};
use rust_socketio::TransportType;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A `redis-server` child on a loopback port, no persistence; killed on drop.
struct Redis {
    port: u16,
    child: Child,
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port P below the ephemeral range whose P + 10000 is free too: a Redis Cluster node
/// also listens on its bus port P + 10000, which must exist (an ephemeral port above 55535
/// has none, and the node exits).
fn free_bus_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    for attempt in 0u32.. {
        let port = 20_000 + (random.hash_one(attempt) % 10_000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    unreachable!("the loop only ends by returning")
}

fn have_redis() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "\n!!! SKIPPED: redis-server is not installed (scripts/test installs it: apt-get install -y redis-server) !!!\n"
        );
    }
    found
}

impl Redis {
    /// A fresh Redis, or `None` (the test is skipped, loudly) when none is installed.
    async fn installed() -> Option<Self> {
        if !have_redis() {
            return None;
        }
        Some(Self::start_with(free_port(), &[]).await)
    }

    async fn start_with(port: u16, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Self { port, child, args };
        redis.wait_ready().await;
        redis
    }

    async fn wait_ready(&self) {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                    let mut buf = [0; 7];
                    if tcp.write_all(b"PING\r\n").await.is_ok()
                        && tcp.read_exact(&mut buf).await.is_ok()
                        && &buf == b"+PONG\r\n"
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers PING");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port, empty.
    async fn restart(&mut self) {
        self.stop();
        self.child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server restarts");
        self.wait_ready().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const LEASE_MS: u64 = 1500;

async fn node(redis_url: &str, extra: &[&str]) -> Gateway {
    let lease = LEASE_MS.to_string();
    let mut args = vec![
        "--redis-url",
        redis_url,
        "--node-lease-ms",
        &lease,
        "--cluster-timeout-ms",
        "1000",
        "--presence-interval-ms",
        "20",
    ];
    args.extend_from_slice(extra);
    Gateway::start_args(&args).await
}

fn direct(receiver: &str, message: Value) -> SendDirectRequest {
    SendDirectRequest {
        receiver_id: receiver.into(),
        message: Some(wire::from_json(&message)),
        sender_id: "test".into(),
        event: String::new(),
        ..Default::default()
    }
}

/// SendDirect with the whole response.
async fn send(gw: &Gateway, receiver: &str, message: Value) -> Result<(u32, bool), tonic::Status> {
    gw.grpc
        .clone()
        .send_direct(direct(receiver, message))
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.delivered_sockets, r.partial)
        })
}

async fn tab(gw: &Gateway, user: &str) -> Tab {
    Tab::connect(&gw.url(), Some(user), TransportType::Websocket).await
}

fn sorted(users: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = users.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reaches_every_socket_and_counts_them() {
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let a = node(&redis.url(), &[]).await;
    let b = node(&redis.url(), &[]).await;
    let c = node(&redis.url(), &[]).await;
    let mut alice_a = tab(&a, "alice").await;
    let mut alice_b1 = tab(&b, "alice").await;
    let mut alice_b2 = tab(&b, "alice").await;
    let mut bob_c = tab(&c, "bob").await;
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
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let nodes = [
        node(&redis.url(), &[]).await,
        node(&redis.url(), &[]).await,
        node(&redis.url(), &[]).await,
    ];
    let mut tabs = Vec::new();
    let mut users = Vec::new();
    for i in 0..30 {
        let user = format!("user-{i:02}");
        tabs.push(tab(&nodes[i % 3], &user).await);
        users.push(user);
    }
    // Someone online on two nodes is listed once.
    tabs.push(tab(&nodes[1], "user-00").await);
    for gw in &nodes {
        gw.wait_online(|u| u == users).await;
    }
    let mut got = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        let resp = nodes[page % 3]
            .grpc
            .clone()
            .list_online(ListOnlineRequest {
                page_size: 7,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.total, 30);
        got.extend(resp.user_ids);
        token = resp.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(got, users, "pages from A, B and C make the whole list once");

    let first = nodes[0]
        .grpc
        .clone()
        .list_online(ListOnlineRequest {
            page_size: 5,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut tampered = first.next_page_token.into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let status = nodes[2]
        .grpc
        .clone()
        .list_online(ListOnlineRequest {
            page_size: 5,
            page_token: String::from_utf8(tampered).unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// Runs the gateway binary in cluster mode, so it can be killed without any cleanup.
struct Binary {
    child: Child,
    http: SocketAddr,
}

impl Binary {
    async fn start(redis_url: &str) -> Self {
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(env!("CARGO_BIN_EXE_messaging-gateway"))
            .args([
                "--redis-url",
                redis_url,
                "--node-lease-ms",
                &LEASE_MS.to_string(),
                "--node-id",
                "doomed",
                "--http-addr",
                &http.to_string(),
                "--grpc-addr",
                &grpc.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway binary starts");
        tokio::time::timeout(WAIT, async {
            while tokio::net::TcpStream::connect(http).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the binary listens");
        Self { child, http }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_everywhere_within_its_lease() {
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let a = node(&redis.url(), &[]).await;
    let mut doomed = Binary::start(&redis.url()).await;
    let url = format!("http://{}/", doomed.http);
    let _zed = Tab::connect(&url, Some("zed"), TransportType::Websocket).await;
    let mut watcher = tab(&a, "watcher").await;
    a.wait_online(|u| u == ["watcher", "zed"]).await;
    assert_eq!(send(&a, "zed", json!(1)).await.unwrap(), (1, false));

    let _ = doomed.child.kill(); // SIGKILL: no cleanup at all.
    let killed = Instant::now();
    a.wait_online(|u| u == ["watcher"]).await;
    let gone = killed.elapsed();
    watcher.online_until(|l| l == ["watcher"]).await;
    println!(
        "a SIGKILLed node's users left the other nodes after {} ms (lease {LEASE_MS} ms)",
        gone.as_millis()
    );
    // Expiry, plus up to one renewal period until a sweep notices, plus scheduling slack.
    let bound = Duration::from_millis(LEASE_MS + LEASE_MS / 5 + 1500);
    assert!(gone <= bound, "took {gone:?}, bound {bound:?}");
    assert_eq!(send(&a, "zed", json!(2)).await.unwrap(), (0, false));
}

/// A node whose runtime is saturated (every worker thread busy, as in a presence fan-out to
/// tens of thousands of sockets on a loaded machine) is alive: its lease must not lapse, or
/// the other nodes sweep it and its users flap off every replica. Here both of the node's
/// worker threads block for three leases while a plain thread watches its lease key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_busy_runtime_keeps_its_lease() {
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let _busy = node(&redis.url(), &["--node-id", "busy"]).await;
    let port = redis.port;
    let lease_exists = move || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
        tcp.write_all(b"EXISTS mg:{busy}:lease\r\n").unwrap();
        let mut reply = [0; 4];
        tcp.read_exact(&mut reply).unwrap();
        &reply == b":1\r\n"
    };
    let deadline = Instant::now() + WAIT;
    while !lease_exists() {
        assert!(Instant::now() < deadline, "the node never took its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stall = Duration::from_millis(3 * LEASE_MS);
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        let mut lapsed = None;
        while start.elapsed() < stall {
            if lapsed.is_none() && !lease_exists() {
                lapsed = Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lapsed
    });
    // Both worker threads blocked (the test body itself runs on the block_on thread): no task
    // of the node's runtime runs meanwhile.
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let blockers: Vec<_> = (0..2)
        .map(|_| {
            let started = started.clone();
            tokio::spawn(async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(stall);
            })
        })
        .collect();
    for blocker in blockers {
        blocker.await.unwrap();
    }
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);
    let lapsed = watcher.join().unwrap();
    assert_eq!(
        lapsed, None,
        "the lease lapsed while the node's runtime was busy (lease {LEASE_MS} ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_leaves_at_once() {
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let a = node(&redis.url(), &[]).await;
    let b = node(&redis.url(), &[]).await;
    let _x = tab(&b, "xavier").await;
    a.wait_online(|u| u == ["xavier"]).await;
    let stopped = Instant::now();
    b.running.stop().await.unwrap();
    a.wait_online(|u| u.is_empty()).await;
    let gone = stopped.elapsed();
    println!("a stopped node's users left after {} ms", gone.as_millis());
    assert!(gone < Duration::from_millis(LEASE_MS), "took {gone:?}");
}

async fn scrape(gw: &Gateway) -> String {
    let addr = gw.running.metrics_addr().expect("metrics listener");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body
}

async fn cluster_health(gw: &Gateway) -> i32 {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", gw.running.grpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = HealthClient::new(channel);
    health
        .check(HealthCheckRequest {
            service: "cluster".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_delivery_and_recovers_by_itself() {
    let Some(mut redis) = Redis::installed().await else {
        return;
    };
    let a = node(&redis.url(), &["--metrics-addr", "127.0.0.1:0"]).await;
    let b = node(&redis.url(), &[]).await;
    let mut alice = tab(&a, "alice").await;
    let mut bob = tab(&b, "bob").await;
    let both = sorted(&["alice", "bob"]);
    for gw in [&a, &b] {
        gw.wait_online(|u| u == both).await;
    }
    let metrics = scrape(&a).await;
    // The cluster rows of the README's metrics table, and both user counts.
    for line in [
        "# TYPE gateway_redis_up gauge",
        "gateway_redis_up 1",
        "# TYPE gateway_cluster_nodes gauge",
        "gateway_cluster_nodes 2",
        "# TYPE gateway_node_info gauge",
        "gateway_online_users 2",
        "gateway_local_online_users 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in {metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_node_info{node_id=\"") && l.ends_with("\"} 1")),
        "{metrics}"
    );
    assert_eq!(cluster_health(&a).await, 1, "SERVING");

    redis.stop();
    // Until the node notices, a remote send may wait for the timeout; it never hangs and
    // is refused with UNAVAILABLE once Redis is known to be down.
    tokio::time::timeout(WAIT, async {
        loop {
            let asked = Instant::now();
            match send(&a, "bob", json!("lost")).await {
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(status.message().contains("cannot be reached"), "{status:?}");
                    assert!(asked.elapsed() < Duration::from_millis(2500));
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("remote sends answer UNAVAILABLE during the outage");
    let asked = Instant::now();
    let refused = send(&a, "bob", json!("lost")).await.unwrap_err();
    println!(
        "during the outage a remote send was refused in {} ms: {}",
        asked.elapsed().as_millis(),
        refused.message()
    );
    assert!(asked.elapsed() < Duration::from_millis(1500));
    // Local delivery goes on, and counts.
    assert_eq!(send(&a, "alice", json!("local")).await.unwrap(), (1, false));
    assert_eq!(alice.first_arg("newMessage").await, json!("local"));
    assert!(scrape(&a).await.contains("\ngateway_redis_up 0\n"));
    assert_eq!(cluster_health(&a).await, 2, "NOT_SERVING");

    redis.restart().await;
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let ok = matches!(send(&a, "bob", json!("again")).await, Ok((1, false)))
                && matches!(send(&b, "alice", json!("again")).await, Ok((1, false)))
                && a.online().await == both
                && b.online().await == both;
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("presence and cross-node delivery come back");
    let recovered = back.elapsed();
    println!(
        "after Redis restarted empty, presence and cross-node sends were back in {} ms",
        recovered.as_millis()
    );
    assert!(recovered < Duration::from_secs(5), "took {recovered:?}");
    assert!(scrape(&a).await.contains("\ngateway_redis_up 1\n"));
    // No socket was dropped: both tabs are the ones from before the outage.
    assert_eq!(
        send(&b, "alice", json!("same tab")).await.unwrap(),
        (1, false)
    );
    assert_eq!(alice.event("newMessage").await, vec![json!("again")]);
    loop {
        if alice.first_arg("newMessage").await == json!("same tab") {
            break;
        }
    }
    assert_eq!(bob.first_arg("newMessage").await, json!("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_makes_a_partial_delivery() {
    use fred::prelude::*;
    let Some(redis) = Redis::installed().await else {
        return;
    };
    // "a-node" sorts before "stalled": alice, on both, is this node's to count in a broadcast.
    let a = node(
        &redis.url(),
        &["--cluster-timeout-ms", "300", "--node-id", "a-node"],
    )
    .await;
    let _alice = tab(&a, "alice").await;
    // A stalled node, as Redis sees it: live lease, a user, a subscribed inbox, no answers.
    let config = Config::from_url(&redis.url()).unwrap();
    let client = Builder::from_config(config.clone()).build().unwrap();
    client.init().await.unwrap();
    let stalled = Builder::from_config(config)
        .build_subscriber_client()
        .unwrap();
    stalled.init().await.unwrap();
    stalled.ssubscribe("mg:{stalled}:in").await.unwrap();
    let _: () = client
        .set(
            "mg:{stalled}:lease",
            "1",
            Some(Expiration::PX(60_000)),
            None,
            false,
        )
        .await
        .unwrap();
    let _: () = client
        .hset(
            "mg:{stalled}:users",
            [("alice", "2"), ("\u{0}e", "1"), ("\u{0}s", "1")],
        )
        .await
        .unwrap();
    let _: () = client.sadd("mg:nodes", "stalled").await.unwrap();
    let event =
        json!({"n": "stalled", "e": 1, "s": 1, "f": true, "u": [["alice", 2], ["sleepy", 1]]});
    let _: () = client
        .publish("mg:presence", event.to_string())
        .await
        .unwrap();
    a.wait_online(|u| u == ["alice", "sleepy"]).await;

    let asked = Instant::now();
    assert_eq!(send(&a, "alice", json!(1)).await.unwrap(), (1, true));
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    assert_eq!(send(&a, "sleepy", json!(1)).await.unwrap(), (0, true));
    let mut grpc = MessagingClient::connect(format!("http://{}", a.running.grpc_addr()))
        .await
        .unwrap();
    let resp = grpc
        .send_to_users(SendToUsersRequest {
            receiver_ids: vec!["alice".into(), "nobody".into()],
            message: Some(wire::from_json(&json!(1))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.partial);
    assert_eq!(
        resp.deliveries
            .iter()
            .map(|d| (d.delivered_sockets, d.partial))
            .collect::<Vec<_>>(),
        [(1, true), (0, false)]
    );
    // Broadcast and DisconnectUser count what answered and say the rest is missing.
    let r = grpc
        .broadcast(BroadcastRequest {
            message: Some(wire::from_json(&json!("notice"))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.users, r.sockets, r.partial), (1, 1, true));
    let d = grpc
        .disconnect_user(DisconnectUserRequest {
            user_id: "alice".into(),
            reason: "bye".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.disconnected_sockets, d.partial), (1, true));
}

/// A local three-master Redis Cluster (no replicas), on free loopback ports.
struct RedisCluster {
    masters: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut masters = Vec::new();
        for _ in 0..3 {
            let port = free_bus_port();
            let conf = format!("nodes-{port}.conf");
            let path = dir.path().to_str().unwrap().to_owned();
            masters.push(
                Redis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--dir",
                        &path,
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create");
        tokio::time::timeout(WAIT, async {
            loop {
                let ok = masters.iter().all(|m| {
                    Command::new("redis-cli")
                        .args(["-p", &m.port.to_string(), "cluster", "info"])
                        .output()
                        .is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")
                        })
                });
                if ok {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the Redis Cluster reaches cluster_state:ok");
        Self { masters, _dir: dir }
    }

    fn urls(&self) -> String {
        self.masters
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_and_presence_work_on_a_redis_cluster() {
    if !have_redis() {
        return;
    }
    let cluster = RedisCluster::start().await;
    let urls = cluster.urls();
    let a = node(&urls, &["--redis-cluster"]).await;
    let b = node(&urls, &["--redis-cluster"]).await;
    let c = node(&urls, &["--redis-cluster"]).await;
    let mut alice_a = tab(&a, "alice").await;
    let mut alice_b = tab(&b, "alice").await;
    let mut bob_c = tab(&c, "bob").await;
    let mut users: Vec<String> = vec!["alice".into(), "bob".into()];
    let mut others = Vec::new();
    for i in 0..9 {
        let user = format!("u{i}");
        others.push(tab([&a, &b, &c][i % 3], &user).await);
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
    let first = a
        .grpc
        .clone()
        .list_online(ListOnlineRequest {
            page_size: 4,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let rest = c
        .grpc
        .clone()
        .list_online(ListOnlineRequest {
            page_size: 100,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let mut paged = first.user_ids;
    paged.extend(rest.user_ids);
    assert_eq!(paged, users);
    assert_eq!(rest.total, 11);
}

/// Sends `warmup` events until `gw` reaches `sockets` sockets of `user` (the replica caught up).
async fn wait_reach(gw: &Gateway, user: &str, sockets: u32) {
    tokio::time::timeout(WAIT, async {
        loop {
            let reached = gw
                .grpc
                .clone()
                .send_direct(SendDirectRequest {
                    event: "warmup".into(),
                    ..direct(user, json!(0))
                })
                .await
                .map(|r| r.into_inner().delivered_sockets);
            if reached.is_ok_and(|n| n == sockets) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every node's sockets are reachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_sockets_on_other_nodes_count_too() {
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let (a, b, c) = (
        node(&redis.url(), &[]).await,
        node(&redis.url(), &[]).await,
        node(&redis.url(), &[]).await,
    );
    let _on_a = AckTab::connect(a.running.http_addr(), "alice", true).await;
    let _on_b = AckTab::connect(b.running.http_addr(), "alice", true).await;
    wait_reach(&c, "alice", 2).await;
    let acked = |timeout_ms: u32| {
        let c = c.grpc.clone();
        async move {
            let started = Instant::now();
            let r = c
                .clone()
                .send_direct(SendDirectRequest {
                    ack_timeout_ms: timeout_ms,
                    ..direct("alice", json!({"ack": "me"}))
                })
                .await
                .unwrap()
                .into_inner();
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
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let (a, b) = (node(&redis.url(), &[]).await, node(&redis.url(), &[]).await);
    let (mut ga, mut gb) = (a.grpc.clone(), b.grpc.clone());
    let mut erin = AckTab::connect(a.running.http_addr(), "erin", true).await;
    wait_reach(&b, "erin", 1).await;
    let keyed = |n: u32| SendDirectRequest {
        idempotency_key: "invoice-7".into(),
        ..direct("erin", json!({ "n": n }))
    };
    let first = a
        .grpc
        .clone()
        .send_direct(keyed(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.delivered_sockets, 1);
    let (on_a, on_b) = tokio::join!(ga.send_direct(keyed(2)), gb.send_direct(keyed(3)));
    assert_eq!(on_a.unwrap().into_inner(), first);
    assert_eq!(on_b.unwrap().into_inner(), first);
    assert_eq!(erin.next("newMessage", WAIT).await, Some(json!({"n": 1})));
    assert_eq!(
        erin.next("newMessage", Duration::from_millis(400)).await,
        None
    );
    // Two nodes racing with a new key: one delivery, one answer.
    let (x, y) = tokio::join!(
        ga.send_direct(SendDirectRequest {
            idempotency_key: "race".into(),
            ..direct("erin", json!("race"))
        }),
        gb.send_direct(SendDirectRequest {
            idempotency_key: "race".into(),
            ..direct("erin", json!("race"))
        })
    );
    assert_eq!(x.unwrap().into_inner(), y.unwrap().into_inner());
    assert_eq!(erin.next("newMessage", WAIT).await, Some(json!("race")));
    assert_eq!(
        erin.next("newMessage", Duration::from_millis(400)).await,
        None
    );
}

async fn get_presence(gw: &Gateway, user: &str) -> UserPresence {
    gw.grpc
        .clone()
        .get_presence(GetPresenceRequest {
            user_ids: vec![user.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .users
        .remove(0)
}

/// Waits until `gw` reports `sockets` sockets of `user`, cluster-wide.
async fn wait_presence(gw: &Gateway, user: &str, sockets: u32) -> UserPresence {
    tokio::time::timeout(WAIT, async {
        loop {
            let p = get_presence(gw, user).await;
            if p.sockets == sockets {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{user} reached {sockets} sockets"))
}

async fn next_watch_item(stream: &mut tonic::Streaming<WatchPresenceResponse>) -> Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a watch item in time")
        .expect("the watch goes on")
        .expect("no error")
        .item
        .expect("an item")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_api_works_across_nodes() {
    let Some(redis) = Redis::installed().await else {
        return;
    };
    let a = node(&redis.url(), &[]).await;
    let b = node(&redis.url(), &[]).await;
    let c = node(&redis.url(), &[]).await;
    let mut watchers = Vec::new();
    for gw in [&a, &c] {
        let mut w = gw
            .grpc
            .clone()
            .watch_presence(WatchPresenceRequest { snapshot: true })
            .await
            .unwrap()
            .into_inner();
        let Item::Snapshot(snap) = next_watch_item(&mut w).await else {
            panic!("the snapshot first");
        };
        assert!(snap.user_ids.is_empty() && snap.last);
        watchers.push((w, snap.sequence));
    }

    let before = presence::unix_ms();
    let mut alice_a = tab(&a, "alice").await;
    // Registered just after the connect ack: the time is read once C knows of it.
    wait_presence(&c, "alice", 1).await;
    let after_first = presence::unix_ms();
    let mut alice_b1 = tab(&b, "alice").await;
    let mut alice_b2 = tab(&b, "alice").await;
    let mut bob_c = tab(&c, "bob").await;
    // GetPresence on every node: cluster-wide counts, and the earliest since (A's tab).
    for gw in [&a, &b, &c] {
        let alice = wait_presence(gw, "alice", 3).await;
        assert!(alice.online);
        assert!(
            (before..=after_first).contains(&alice.online_since_unix_ms),
            "since is A's first tab: {before} <= {} <= {after_first}",
            alice.online_since_unix_ms
        );
        wait_presence(gw, "bob", 1).await;
    }

    // Broadcast from C: one publish, every node answers its own counts.
    let r = c
        .broadcast(json!({"notice": "restart"}), "maintenance")
        .await;
    // alice (on A and on B) counts once, bob (on C) once.
    assert_eq!(
        (r.users, r.sockets, r.refused_sockets, r.partial),
        (2, 4, 0, false)
    );
    for t in [&mut alice_a, &mut alice_b1, &mut alice_b2, &mut bob_c] {
        assert_eq!(
            t.first_arg("maintenance").await,
            json!({"notice": "restart"})
        );
    }
    bob_c.expect_no("maintenance").await;

    // DisconnectUser from C, which holds no socket of alice: A and B disconnect theirs.
    let d = c
        .grpc
        .clone()
        .disconnect_user(DisconnectUserRequest {
            user_id: "alice".into(),
            reason: "account suspended".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.disconnected_sockets, d.partial), (3, false));
    for t in [&mut alice_a, &mut alice_b1, &mut alice_b2] {
        assert_eq!(
            t.first_arg("disconnectReason").await,
            json!("account suspended")
        );
    }
    // Offline at once on the node that was asked, soon on the others.
    assert!(!get_presence(&c, "alice").await.online);
    for gw in [&a, &b] {
        wait_presence(gw, "alice", 0).await;
    }
    bob_c.online_until(|l| l == ["bob"]).await;
    assert_eq!(send(&a, "alice", json!("gone?")).await.unwrap(), (0, false));
    alice_a.expect_no("newMessage").await;

    // Each watcher saw the same changes, in order, with consecutive sequence numbers.
    for (w, mut seq) in watchers {
        let mut w = w;
        for (user, online) in [("alice", true), ("bob", true), ("alice", false)] {
            let Item::Change(change) = next_watch_item(&mut w).await else {
                panic!("changes after the snapshot");
            };
            assert_eq!((change.user_id.as_str(), change.online), (user, online));
            assert_eq!(change.sequence, seq + 1);
            seq = change.sequence;
        }
    }
}
