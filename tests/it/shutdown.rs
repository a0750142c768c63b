//! Shutdown of the real binary on SIGTERM: new work is refused at once with UNAVAILABLE,
//! health says NOT_SERVING before the listeners close, open streams end with a status, and a
//! client that stopped reading cannot hold the process past --shutdown-timeout-ms.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use messaging_gateway::{
    proto::{messaging_client::MessagingClient, ListOnlineRequest, SendStreamRequest},
    wire,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::support::{
    grpc::{self, NOT_SERVING, SERVING},
    http,
    process::Process,
    ws::RawWs,
};

fn stream_request(id: u64, receiver: &str, text: &str) -> SendStreamRequest {
    SendStreamRequest {
        receiver_id: receiver.into(),
        message: Some(wire::from_json(&json!(text))),
        sender_id: "test".into(),
        event: String::new(),
        id,
    }
}

/// The reproduction: a raw WebSocket client stops reading with 300 x 60 KB queued to
/// it through SendStream (default flags). SIGTERM must still end the process, with status 0,
/// within --shutdown-timeout-ms (default 4 s); before the fix it ran until the client left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_cannot_hold_shutdown() {
    let mut gw = Process::start(&[]);
    let _stalled = RawWs::join(gw.http, "stalled").await; // never read again
    let channel = grpc::channel(gw.grpc).await.unwrap();
    let mut grpc = MessagingClient::new(channel.clone());

    let big = "x".repeat(60 * 1024);
    let requests = (0..300).map(move |id| stream_request(id, "stalled", &big));
    let mut responses = grpc
        .send_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut delivered = 0;
    while let Some(r) = responses.message().await.unwrap() {
        delivered += r.delivered_sockets;
    }
    assert!(delivered > 100, "most messages were queued: {delivered}");

    let signalled = Instant::now();
    gw.sigterm();
    // New work is refused at once, on both ports, while the drain runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = grpc
        .list_online(ListOnlineRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let handshake = http::get(gw.http, "/socket.io/?EIO=4&transport=polling&userId=late").await;
    assert_eq!(
        handshake.status, 503,
        "new handshake refused: {handshake:?}"
    );

    let (status, at) = gw
        .exited(Duration::from_secs(10))
        .await
        .expect("the gateway exits although a client is stalled");
    let took = at - signalled;
    eprintln!("shutdown with a stalled client took {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_millis(4000 + 1500),
        "exits within --shutdown-timeout-ms (4 s, plus scheduling margin): {took:?}"
    );
}

/// Health checks keep being answered, NOT_SERVING overall and per service, through the grace
/// period; then the listeners close. An open Watch sees NOT_SERVING and ends cleanly without
/// holding the process until the shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_before_the_listeners_close() {
    let mut gw = Process::start(&[
        "--shutdown-grace-ms",
        "1500",
        "--shutdown-timeout-ms",
        "10000",
    ]);
    let open = grpc::channel(gw.grpc).await.unwrap();
    for service in ["", "messaging.v1.Messaging"] {
        assert_eq!(grpc::health(open.clone(), service).await.unwrap(), SERVING);
    }
    let mut watch = HealthClient::new(open.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);

    let signalled = Instant::now();
    gw.sigterm();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        NOT_SERVING,
        "the watch sees the drain"
    );
    // A load balancer's next check, on a new connection, gets NOT_SERVING for both names.
    let fresh = grpc::channel(gw.grpc).await.expect("listener still open");
    for service in ["", "messaging.v1.Messaging"] {
        assert_eq!(
            grpc::health(fresh.clone(), service).await.unwrap(),
            NOT_SERVING,
            "{service:?} during the grace period"
        );
    }
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    // The watch ends with OK once the listeners close, so nothing waits for the timeout.
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch ends");
    assert!(matches!(end, Ok(None)), "watch ends cleanly: {end:?}");
    let (status, at) = gw.exited(Duration::from_secs(10)).await.expect("exits");
    assert!(status.success());
    let took = at - signalled;
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(4000),
        "exits after the 1.5 s grace, long before the 10 s timeout: {took:?}"
    );
    assert!(grpc::channel(gw.grpc).await.is_err(), "listener closed");
    assert!(!gw.logs().contains("still open"), "{}", gw.logs());
}

/// A SendStream writing every 20 ms to 20 connected users, then SIGTERM: every answer is
/// either a delivery to the online user or UNAVAILABLE, never "OK, 0 sockets", and the stream
/// ends with the server's UNAVAILABLE status, not a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_send_stream_answers_unavailable() {
    let mut gw = Process::start(&[]);
    let mut readers = Vec::new();
    for i in 0..20 {
        let mut ws = RawWs::join(gw.http, &format!("user{i}")).await;
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    let mut grpc = MessagingClient::new(grpc::channel(gw.grpc).await.unwrap());
    let (tx, rx) = mpsc::channel(16);
    let writer = tokio::spawn(async move {
        for id in 0.. {
            let req = stream_request(id, &format!("user{}", id % 20), "tick");
            if tx.send(req).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut responses = grpc
        .send_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut ok, mut unavailable) = (0, 0);
    let signal_after = 25;
    let end = loop {
        match responses.message().await {
            Ok(Some(r)) => {
                match r.code {
                    0 => {
                        assert_eq!(r.delivered_sockets, 1, "an online user got it: {r:?}");
                        ok += 1;
                    }
                    14 => unavailable += 1,
                    _ => panic!("unexpected answer {r:?}"),
                }
                if ok == signal_after {
                    gw.sigterm();
                }
            }
            Ok(None) => panic!("the stream must end with a status"),
            Err(status) => break status,
        }
    };
    writer.abort();
    eprintln!("{ok} delivered, {unavailable} in-band UNAVAILABLE, then {end:?}");
    assert!(ok >= signal_after);
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
    let (status, _) = gw.exited(Duration::from_secs(8)).await.expect("exits");
    assert!(status.success());
}
