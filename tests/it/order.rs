//! Delivery order of gRPC calls (docs/api.md "Delivery order"): calls on one HTTP/2 connection
//! are delivered in the order they arrived, and a call whose request stalls holds the later
//! ones back for a bounded time only.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::join_all;
use messaging_gateway::proto::SendDirectRequest;
use prost::Message;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::support::{direct, Gateway, Tab};

const BURSTS: u64 = 100;
const BURST: u64 = 200;

/// Pairs delivered in the opposite order of their calls.
fn inversions(seqs: &[u64]) -> usize {
    seqs.iter()
        .enumerate()
        .map(|(i, a)| seqs[i + 1..].iter().filter(|b| *b < a).count())
        .sum()
}

async fn seqs(tab: &mut Tab, n: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        let arg = tab.first_arg("seq").await;
        seqs.push(arg["i"].as_u64().expect("seq number"));
    }
    seqs
}

/// A `SendDirect` as the event `seq`, which [`seqs`] reads.
fn request(receiver: &str, message: Value) -> SendDirectRequest {
    SendDirectRequest {
        event: "seq".into(),
        ..direct(receiver, message)
    }
}

/// 100 bursts of 200 SendDirect calls issued at once on one channel (one HTTP/2
/// connection): every burst arrives in call order. Prints the counts (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_on_one_connection_are_delivered_in_order() {
    let gw = Gateway::start().await;
    let mut tab = gw.tab("burst").await;
    gw.wait_online(|u| u == ["burst"]).await;

    let (mut bursts_out_of_order, mut inverted_pairs) = (0, 0);
    for burst in 0..BURSTS {
        let calls = (0..BURST).map(|i| {
            let mut grpc = gw.grpc.clone();
            async move {
                grpc.send_direct(request("burst", json!({ "b": burst, "i": i })))
                    .await
            }
        });
        // Unconstrained: tokio's cooperative budget would postpone the first poll of the calls
        // past the 128th, and with it the order they leave the client in.
        for result in tokio::task::unconstrained(join_all(calls)).await {
            assert_eq!(result.unwrap().into_inner().delivered_sockets, 1);
        }
        let n = inversions(&seqs(&mut tab, BURST).await);
        bursts_out_of_order += usize::from(n > 0);
        inverted_pairs += n;
    }
    println!(
        "{BURSTS} bursts of {BURST} calls on one connection: {bursts_out_of_order} out of order, \
         {inverted_pairs} inverted pairs"
    );
    assert_eq!((bursts_out_of_order, inverted_pairs), (0, 0));
}

/// A raw HTTP/2 connection, so one call's request body can be held back on purpose.
struct RawGrpc {
    h2: h2::client::SendRequest<Bytes>,
}

impl RawGrpc {
    async fn connect(gw: &Gateway) -> Self {
        let tcp = TcpStream::connect(gw.running.grpc_addr()).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        Self { h2 }
    }

    /// Opens a SendDirect stream; the body is sent only when `send_body` is called.
    async fn open(&mut self) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let request = axum::http::Request::post(format!(
            "http://{}/messaging.v1.Messaging/SendDirect",
            "localhost"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let mut h2 = self.h2.clone().ready().await.unwrap();
        h2.send_request(request, false).unwrap()
    }
}

fn send_body(stream: &mut h2::SendStream<Bytes>, request: SendDirectRequest) {
    let message = request.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put_slice(&message);
    stream.send_data(frame.freeze(), true).unwrap();
}

/// A call whose body never comes holds later calls on its connection back for about a
/// second, not forever; a call cancelled by its client lets them go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_cancelled_call_does_not_block_the_connection() {
    let gw = Gateway::start().await;
    let mut tab = gw.tab("patient").await;
    gw.wait_online(|u| u == ["patient"]).await;
    let mut raw = RawGrpc::connect(&gw).await;

    // Stalled: headers only. The next call is delivered after the bound, then the stalled
    // one once its body comes.
    let (stalled_response, mut stalled) = raw.open().await;
    let (response, mut stream) = raw.open().await;
    let start = Instant::now();
    send_body(&mut stream, request("patient", json!({ "i": 1 })));
    assert_eq!(seqs(&mut tab, 1).await, [1]);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "held back {waited:?}"
    );
    assert!(response.await.unwrap().status().is_success());
    send_body(&mut stalled, request("patient", json!({ "i": 0 })));
    assert_eq!(seqs(&mut tab, 1).await, [0]);
    assert!(stalled_response.await.unwrap().status().is_success());

    // Cancelled: the client resets the first stream; the second goes at once.
    let (_cancelled_response, mut cancelled) = raw.open().await;
    let (response, mut stream) = raw.open().await;
    let start = Instant::now();
    send_body(&mut stream, request("patient", json!({ "i": 3 })));
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancelled.send_reset(h2::Reason::CANCEL);
    assert_eq!(seqs(&mut tab, 1).await, [3]);
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "a cancelled call released its turn: {:?}",
        start.elapsed()
    );
    assert!(response.await.unwrap().status().is_success());
}
