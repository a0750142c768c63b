//! Cluster mode on a real `redis-server` (started on a free loopback port; a test fails when
//! it is not installed): several in-process gateways, real Socket.IO clients and tonic
//! clients, plus gateway binaries killed with SIGKILL.

mod batching;
mod delivery;
mod failures;
mod faults;
mod idempotency;
mod membership;
mod presence;
mod redis_access;

use std::time::Duration;

use messaging_gateway::proto::SendDirectRequest;
use serde_json::{json, Value};

use crate::support::{direct, Gateway, WAIT};

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

/// `N` nodes on `redis_url`, each started as [`node`] starts one.
async fn nodes<const N: usize>(redis_url: &str, extra: &[&str]) -> [Gateway; N] {
    let mut nodes = Vec::with_capacity(N);
    for _ in 0..N {
        nodes.push(node(redis_url, extra).await);
    }
    nodes.try_into().unwrap_or_else(|_| unreachable!("N nodes"))
}

/// SendDirect: (delivered sockets, partial).
async fn send(gw: &Gateway, receiver: &str, message: Value) -> Result<(u32, bool), tonic::Status> {
    gw.send_direct(direct(receiver, message))
        .await
        .map(|r| (r.delivered_sockets, r.partial))
}

fn sorted(users: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = users.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Sends `warmup` events until `gw` reaches `sockets` sockets of `user` (the replica caught up).
async fn wait_reach(gw: &Gateway, user: &str, sockets: u32) {
    tokio::time::timeout(WAIT, async {
        loop {
            let reached = gw
                .send_request(SendDirectRequest {
                    event: "warmup".into(),
                    ..direct(user, json!(0))
                })
                .await;
            if reached.is_ok_and(|n| n == sockets) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every node's sockets are reachable");
}
