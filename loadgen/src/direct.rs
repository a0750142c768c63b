//! `direct`: SendDirect at a fixed concurrency (closed loop) or at an offered rate (open
//! loop): throughput, RPC and delivery latency, loss, order.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use messaging_gateway::proto::{SendDirectRequest, SendDirectResponse};
use serde_json::{json, Map, Value as Json};
use tokio::sync::Semaphore;

use crate::args::DirectArgs;
use crate::client::{new_histogram, Hub};
use crate::connect::{connect_all, new_hub};
use crate::figures::{add_errors, summary};
use crate::send::{filler, message, user_ids, Phase};
use crate::unary::Unary;

/// What every call carries: call `i`, sent at `t`, goes to user `i % users`.
struct Requests {
    ids: Arc<Vec<String>>,
    pad: Arc<Option<String>>,
    users: u64,
    ack_timeout_ms: u32,
    keyed: bool,
    ttl_seconds: u32,
    /// This process's id, so that idempotency keys differ between runs.
    run: u32,
}

impl Requests {
    fn get(&self, i: u64, t: u64) -> SendDirectRequest {
        let u = i % self.users;
        SendDirectRequest {
            receiver_id: self.ids[u as usize].clone(),
            message: Some(message(u, i / self.users, t, &self.pad)),
            sender_id: "loadgen".into(),
            event: String::new(),
            ack_timeout_ms: self.ack_timeout_ms,
            idempotency_key: if self.keyed {
                format!("lg-{}-{i}", self.run)
            } else {
                String::new()
            },
            ttl_seconds: self.ttl_seconds,
        }
    }
}

pub async fn direct(a: DirectArgs) -> Result<Map<String, Json>, String> {
    let c = &a.c;
    let s = &a.s;
    let hub = new_hub(c);
    let mut out = connect_all(c, &hub, "connect").await;
    out.insert("kind".into(), json!("direct"));
    out.insert("ack_timeout_ms".into(), json!(a.ack_timeout_ms));
    out.insert("idempotency_keys".into(), json!(a.idempotency_keys));
    out.insert("ttl_seconds".into(), json!(a.ttl_seconds));
    out.insert("offline_receivers".into(), json!(a.offline_receivers));
    let mut conns = Vec::new();
    for _ in 0..s.grpc_conns.max(1) {
        conns.push(Unary::connect(c.grpc).await?);
    }
    let requests = Arc::new(Requests {
        ids: user_ids(c, if a.offline_receivers { "offline-" } else { "" }),
        pad: filler(s),
        users: c.users as u64,
        ack_timeout_ms: a.ack_timeout_ms,
        keyed: a.idempotency_keys,
        ttl_seconds: a.ttl_seconds,
        run: std::process::id(),
    });
    let mut phase = Phase::start(c, s, &hub, "send", s.messages);
    match a.rate {
        None => closed_loop(&a, &hub, &mut phase, Arc::new(conns), requests, &mut out).await,
        Some(rate) => open_loop(&a, rate, &hub, &mut phase, &conns, &requests, &mut out).await,
    }
    phase.finish(c, s, &hub, &mut out).await;
    add_errors(&mut out, &hub);
    Ok(out)
}

/// --concurrency workers, each sending its next call once the last one was answered.
async fn closed_loop(
    a: &DirectArgs,
    hub: &Arc<Hub>,
    phase: &mut Phase,
    conns: Arc<Vec<Unary>>,
    requests: Arc<Requests>,
    out: &mut Map<String, Json>,
) {
    out.insert("mode".into(), json!("concurrency"));
    out.insert("concurrency".into(), json!(a.concurrency));
    let next = Arc::new(AtomicU64::new(0));
    let (limit, deadline, users) = (a.s.messages, phase.deadline, requests.users);
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|_| {
            let (hub, sent, next, requests, conns) = (
                hub.clone(),
                phase.sent.clone(),
                next.clone(),
                requests.clone(),
                conns.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= limit || Instant::now() >= deadline {
                        break;
                    }
                    let t = hub.now_ns();
                    let client = &conns[pinned(i, users, conns.len())];
                    let r = send_direct(client, &requests.get(i, t)).await;
                    sent.record(&hub, t, r);
                }
            })
        })
        .collect();
    phase.watch(hub, &workers, None, "calls").await;
}

/// Calls sent on a schedule of `rate` per second whatever the answers, at most
/// --max-in-flight unanswered.
async fn open_loop(
    a: &DirectArgs,
    rate: f64,
    hub: &Arc<Hub>,
    phase: &mut Phase,
    conns: &[Unary],
    requests: &Requests,
    out: &mut Map<String, Json>,
) {
    out.insert("mode".into(), json!("rate"));
    out.insert("offered_rate".into(), json!(rate));
    let sem = Arc::new(Semaphore::new(a.max_in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut backlogged = 0u64;
    let mut lag_us = new_histogram();
    for i in 0..a.s.messages {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at >= phase.deadline {
            break;
        }
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                backlogged += 1;
                sem.clone().acquire_owned().await.expect("semaphore")
            }
        };
        // Latency counts from the actual send; how late the timer let us send is
        // recorded apart (it is the load generator's lag, not the server's).
        let scheduled = phase.start_ns + (at - start).as_nanos() as u64;
        let t = hub.now_ns();
        lag_us.saturating_record((t.saturating_sub(scheduled) / 1000).max(1));
        let client = conns[pinned(i, requests.users, conns.len())].clone();
        let (hub2, sent2) = (hub.clone(), phase.sent.clone());
        let req = requests.get(i, t);
        tasks.spawn(async move {
            let r = send_direct(&client, &req).await;
            sent2.record(&hub2, t, r);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        if i % 256 == 0 {
            phase.show(hub, "calls");
        }
    }
    let wait_until = Instant::now() + Duration::from_secs_f64(a.s.drain_timeout + 5.0);
    while !tasks.is_empty() && Instant::now() < wait_until {
        let _ = tokio::time::timeout(Duration::from_millis(50), tasks.join_next()).await;
    }
    tasks.abort_all();
    out.insert("backlogged_sends".into(), json!(backlogged));
    out.insert("send_lag_us".into(), summary(&lag_us));
}

/// One SendDirect call: the number of sockets it reached.
pub async fn send_direct(client: &Unary, req: &SendDirectRequest) -> Result<u32, String> {
    client
        .call::<_, SendDirectResponse>("/messaging.v1.Messaging/SendDirect", req)
        .await
        .map(|r| r.delivered_sockets)
        .map_err(|e| format!("SendDirect: {e}"))
}

/// The gRPC connection for call `i`: always the same one for a user, since the gateway
/// keeps the order of calls per connection, not across connections.
fn pinned(i: u64, users: u64, conns: usize) -> usize {
    (i % users.max(1)) as usize % conns
}
