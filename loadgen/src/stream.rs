//! `stream`: SendStream (bidirectional, gateway only) over --streams calls, each with
//! --window requests in flight: delivered messages per second, loss, order.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use messaging_gateway::proto::{
    messaging_client::MessagingClient, SendStreamRequest, SendStreamResponse,
};
use serde_json::{json, Map, Value as Json};
use tokio::sync::{mpsc, Semaphore};
use tonic::{
    transport::{Channel, Endpoint},
    Streaming,
};

use crate::args::{Common, StreamArgs};
use crate::client::Hub;
use crate::connect::{connect_all, new_hub};
use crate::figures::add_errors;
use crate::send::{filler, message, user_ids, Phase, Sent};

/// What the senders and readers of all streams share.
struct Items {
    ids: Arc<Vec<String>>,
    pad: Arc<Option<String>>,
    /// Send time (ns) of each item, by item id.
    send_ns: Vec<AtomicU64>,
    /// The next item id.
    next: AtomicU64,
    /// Items written to a stream.
    requested: AtomicU64,
    /// Answers whose id was not above the previous answer's on the same stream.
    out_of_order: AtomicU64,
    limit: u64,
    users: u64,
    streams: u64,
}

pub async fn stream(a: StreamArgs) -> Result<Map<String, Json>, String> {
    let c = &a.c;
    let s = &a.s;
    if c.users < a.streams.max(1) {
        return Err("--users must be at least --streams (each stream owns its users)".into());
    }
    let hub = new_hub(c);
    let mut out = connect_all(c, &hub, "connect").await;
    out.insert("kind".into(), json!("stream"));
    out.insert("streams".into(), json!(a.streams));
    out.insert("window".into(), json!(a.window));
    let chans = channels(c, s.grpc_conns).await?;
    let limit = s.messages.min(100_000_000);
    let items = Arc::new(Items {
        ids: user_ids(c, ""),
        pad: filler(s),
        send_ns: (0..limit).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicU64::new(0),
        requested: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        limit,
        users: c.users as u64,
        streams: a.streams.max(1) as u64,
    });
    let mut phase = Phase::start(c, s, &hub, "stream", limit);
    let mut tasks = Vec::new();
    for k in 0..a.streams.max(1) {
        let mut client = MessagingClient::new(chans[k % chans.len()].clone())
            .max_decoding_message_size(16 << 20);
        let (tx, rx) = mpsc::channel::<SendStreamRequest>(a.window.max(1));
        let window = Arc::new(Semaphore::new(a.window.max(1)));
        let responses = client
            .send_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("SendStream: {}", e.message()))?
            .into_inner();
        let deadline = phase.deadline;
        let (hub2, items2, window2) = (hub.clone(), items.clone(), window.clone());
        tasks.push(tokio::spawn(async move {
            send_items(k as u64, tx, &window2, &hub2, &items2, deadline).await
        }));
        let (hub, sent, items) = (hub.clone(), phase.sent.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            read_answers(responses, &window, &hub, &sent, &items).await
        }));
    }
    let hard_deadline = phase.deadline + Duration::from_secs_f64(s.drain_timeout + 5.0);
    phase
        .watch(&hub, &tasks, Some(hard_deadline), "answered")
        .await;
    for t in &tasks {
        t.abort();
    }
    out.insert(
        "out_of_order_responses".into(),
        json!(items.out_of_order.load(Relaxed)),
    );
    out.insert("sent_requests".into(), json!(items.requested.load(Relaxed)));
    phase.finish(c, s, &hub, &mut out).await;
    add_errors(&mut out, &hub);
    Ok(out)
}

/// Writes stream `k`'s items while its window has room, until --messages or --duration.
async fn send_items(
    k: u64,
    tx: mpsc::Sender<SendStreamRequest>,
    window: &Semaphore,
    hub: &Hub,
    items: &Items,
    deadline: Instant,
) {
    // Each stream owns the users u with u % streams == k, so every user's messages
    // travel one stream, in order: any reordering seen by a client is the server's.
    let streams = items.streams;
    let own = (items.users + streams - 1 - k) / streams;
    for j in 0.. {
        let Ok(p) = window.acquire().await else { break };
        p.forget();
        let i = items.next.fetch_add(1, Relaxed);
        if i >= items.limit || Instant::now() >= deadline {
            break;
        }
        let u = k + streams * (j % own);
        let t = hub.now_ns();
        items.send_ns[i as usize].store(t, Relaxed);
        let req = SendStreamRequest {
            receiver_id: items.ids[u as usize].clone(),
            message: Some(message(u, j / own, t, &items.pad)),
            sender_id: "loadgen".into(),
            event: String::new(),
            id: i,
        };
        if tx.send(req).await.is_err() {
            break;
        }
        items.requested.fetch_add(1, Relaxed);
    }
    // Dropping tx ends the request stream; the server then ends the responses.
}

/// Counts a stream's answers and frees a window slot for each.
async fn read_answers(
    mut responses: Streaming<SendStreamResponse>,
    window: &Semaphore,
    hub: &Hub,
    sent: &Sent,
    items: &Items,
) {
    let mut last_id: Option<u64> = None;
    loop {
        match responses.message().await {
            Ok(Some(r)) => {
                window.add_permits(1);
                if last_id.is_some_and(|l| r.id <= l) {
                    items.out_of_order.fetch_add(1, Relaxed);
                }
                last_id = Some(r.id);
                let t = items
                    .send_ns
                    .get(r.id as usize)
                    .map(|x| x.load(Relaxed))
                    .unwrap_or(0);
                let res = if r.code == 0 {
                    Ok(r.delivered_sockets)
                } else {
                    Err(format!("SendStream item {}: {} {}", r.id, r.code, r.error))
                };
                sent.record(hub, t, res);
            }
            Ok(None) => break,
            Err(e) => {
                hub.error(format!("SendStream: {}", e.message()));
                break;
            }
        }
    }
}

/// --grpc-conns HTTP/2 connections (tonic channels) to the server.
async fn channels(c: &Common, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("http://{}", c.grpc))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("gRPC {}: {e}", c.grpc))?;
        out.push(ch);
    }
    Ok(out)
}
