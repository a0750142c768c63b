//! Connections that do no work are closed within the stated bounds, on both ports: one that
//! sends nothing or only the HTTP/2 preface (by --connect-timeout-ms), one idle after its
//! requests (by --idle-timeout-ms, for HTTP/1 keep-alive and HTTP/2), while open streams and
//! WebSockets are work and stay.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::support::Gateway;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use messaging_gateway::{
    proto::{messaging_client::MessagingClient, SendStreamRequest},
    wire,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;

const FIRST_REQUEST_MS: u64 = 1000;
const IDLE_MS: u64 = 1500;

async fn gateway() -> Gateway {
    Gateway::start_args(&[
        "--connect-timeout-ms",
        &FIRST_REQUEST_MS.to_string(),
        "--idle-timeout-ms",
        &IDLE_MS.to_string(),
        "--http2-keepalive-interval-ms",
        "500",
        "--http2-keepalive-timeout-ms",
        "500",
    ])
    .await
}

/// Reads until the server closes the connection; how long after `since` that was.
async fn closed_after(mut tcp: TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(waited.is_ok(), "connection still open after 20 s");
    since.elapsed()
}

fn within(took: Duration, limit_ms: u64, what: &str) {
    assert!(
        took >= Duration::from_millis(limit_ms * 8 / 10)
            && took < Duration::from_millis(limit_ms + 2500),
        "{what}: closed after {took:?}, bound {limit_ms} ms"
    );
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_connections_are_closed_on_both_ports() {
    let gw = gateway().await;
    for (port, addr) in [
        ("Socket.IO", gw.running.http_addr()),
        ("gRPC", gw.running.grpc_addr()),
    ] {
        let mut cases = Vec::new();
        for preface in [false, true] {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            if preface {
                tcp.write_all(&[PREFACE, &EMPTY_SETTINGS].concat())
                    .await
                    .unwrap();
            }
            let since = Instant::now();
            cases.push(tokio::spawn(async move {
                (preface, closed_after(tcp, since).await)
            }));
        }
        for case in cases {
            let (preface, took) = case.await.unwrap();
            let what = format!(
                "{port}, {}",
                if preface {
                    "h2c preface only"
                } else {
                    "nothing sent"
                }
            );
            eprintln!("{what}: closed after {took:?}");
            within(took, FIRST_REQUEST_MS, &what);
        }
    }
}

/// One HTTP/2 request on a fresh connection, then nothing: when does the server close it?
async fn h2_idle_close(addr: SocketAddr, path: &str) -> Duration {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    drop(response);
    let since = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("connection closed")
        .unwrap()
        .ok();
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_on_both_ports() {
    let gw = gateway().await;
    let http = gw.running.http_addr();
    // HTTP/1.1 keep-alive after a complete exchange: hyper's head timeout (the handshake
    // timeout) already runs while it waits for the next request.
    let mut tcp = TcpStream::connect(http).await.unwrap();
    tcp.write_all(
        format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {http}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = [0u8; 12];
    tcp.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let took = closed_after(tcp, Instant::now()).await;
    eprintln!("Socket.IO, HTTP/1.1 keep-alive: closed after {took:?}");
    within(took, FIRST_REQUEST_MS.min(IDLE_MS), "HTTP/1.1 keep-alive");
    // HTTP/2 connections whose client answers pings but opens no more streams.
    for (port, addr, path) in [
        ("Socket.IO", http, "/socket.io/?EIO=4&transport=polling"),
        (
            "gRPC",
            gw.running.grpc_addr(),
            "/grpc.health.v1.Health/Check",
        ),
    ] {
        let took = h2_idle_close(addr, path).await;
        eprintln!("{port}, idle HTTP/2: closed after {took:?}");
        within(took, IDLE_MS, &format!("{port}, idle HTTP/2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_and_websockets_are_not_idle() {
    let gw = gateway().await;
    let mut tab = gw.tab("alice").await;
    let (tx, rx) = mpsc::channel(4);
    let mut grpc = MessagingClient::new(gw.channel().await);
    let mut responses = grpc
        .send_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(IDLE_MS * 2)).await;
    tx.send(SendStreamRequest {
        id: 7,
        receiver_id: "alice".into(),
        message: Some(wire::from_json(&json!("still here"))),
        ..Default::default()
    })
    .await
    .unwrap();
    let answer = responses
        .message()
        .await
        .expect("stream still open")
        .unwrap();
    assert_eq!((answer.id, answer.delivered_sockets), (7, 1));
    assert_eq!(tab.first_arg("newMessage").await, json!("still here"));
    // A client whose idle connection was closed reconnects on its next call.
    assert_eq!(gw.send("alice", json!("again")).await.unwrap(), 1);
}

/// An HTTP/2 frame header plus payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no Huffman coding.
fn header(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// A peer that opens a `Health/Watch` stream (work, so the idle limit does not apply) and
/// then stops answering pings is disconnected by the keepalive: ping interval + timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    // Long first-request and idle limits, so only the keepalive can close it this early.
    let gw = Gateway::start_args(&[
        "--connect-timeout-ms",
        "10000",
        "--idle-timeout-ms",
        "10000",
        "--http2-keepalive-interval-ms",
        "500",
        "--http2-keepalive-timeout-ms",
        "500",
    ])
    .await;
    let mut tcp = TcpStream::connect(gw.running.grpc_addr()).await.unwrap();
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Watch"),
        (":authority", "gateway"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        header(&mut block, name, value);
    }
    const END_HEADERS: u8 = 0x4;
    let request = [
        PREFACE,
        &EMPTY_SETTINGS,
        &frame(1, END_HEADERS, 1, &block),
        // HealthCheckRequest { service: "" }: an empty message, the request half ends.
        &frame(0, 0x1, 1, &[0, 0, 0, 0, 0]),
    ]
    .concat();
    tcp.write_all(&request).await.unwrap();
    let since = Instant::now();
    // The server answers and keeps the stream open; nothing of ours acks its pings.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut received))
        .await
        .expect("closed")
        .ok();
    let took = since.elapsed();
    let serving = [0, 0, 0, 0, 2, 0x08, 1]; // gRPC message: HealthCheckResponse { SERVING }
    assert!(
        received.windows(serving.len()).any(|w| w == serving),
        "the Watch was answered, so the stream was open"
    );
    eprintln!("gRPC, open stream, pings unanswered: closed after {took:?}");
    within(took, 500 + 500, "keepalive");
}
