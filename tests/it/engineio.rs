//! Engine.IO v4 conformance at the packet level: raw HTTP long-polling over plain TCP and raw
//! WebSocket frames (tokio-tungstenite), so nothing hides or reorders packets. Each test names
//! the rule from the protocol (and the reference Node `engine.io` server) it checks.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, Utf8Bytes},
};

use serde_json::json;

use crate::support::{
    direct,
    http::{self, polling_path as polling},
    process::Process,
    ws::Ws,
    Gateway, WAIT,
};

/// The heartbeat settings the timing tests run with.
const FAST_HEARTBEAT: [&str; 4] = ["--ping-interval-ms", "300", "--ping-timeout-ms", "200"];
/// For the ordering tests: a ping interval no loaded machine can mistake for "at once", so a
/// ping seen first can only be the early ping, never a legitimate one.
const SLOW_HEARTBEAT: [&str; 4] = ["--ping-interval-ms", "3000", "--ping-timeout-ms", "2000"];
const PING_INTERVAL: Duration = Duration::from_millis(300);
/// Timers never fire early; this only absorbs millisecond rounding.
const TIMER_SLACK: Duration = Duration::from_millis(20);
const INVALID_NAMESPACE: &str = r#"44/random,{"message":"Invalid namespace"}"#;

/// One Engine.IO polling request; the status and the body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let reply = http::polling(http::LOCAL, addr, method, path, body).await;
    assert!(
        !reply
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "engine.io answers carry a Content-Length: {}",
        reply.head
    );
    (reply.status, reply.body)
}

/// Opens a polling session; returns its sid.
async fn open_polling(addr: SocketAddr, user: &str) -> String {
    let (status, body) = request(
        addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&userId={user}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "handshake: {body}");
    http::open_packet_sid(&body)
}

async fn ws_open(addr: SocketAddr, query: &str) -> Ws {
    let (ws, _) = connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket{query}"
    ))
    .await
    .expect("WebSocket handshake");
    ws
}

/// The next text frame, with how long it took.
async fn ws_next(ws: &mut Ws) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("the connection stays open")
            .expect("a valid frame");
        if let Message::Text(text) = frame {
            return (text.to_string(), start.elapsed());
        }
    }
}

async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(Utf8Bytes::from(text))).await.unwrap();
}

/// Protocol: "the server sends a ping packet every pingInterval ms"; the reference server
/// schedules the first one pingInterval after the handshake, not at once.
#[tokio::test]
async fn polling_first_ping_comes_after_the_ping_interval() {
    let gw = Gateway::start_args(&FAST_HEARTBEAT).await;
    let addr = gw.running.http_addr();
    let sid = open_polling(addr, "hb-poll").await;
    let opened = Instant::now();

    let (status, body) = request(addr, "GET", &polling(&sid), "").await;
    assert_eq!((status, body.as_str()), (200, "2"));
    assert!(
        opened.elapsed() + TIMER_SLACK >= PING_INTERVAL,
        "first ping {:?} after the handshake, before pingInterval {PING_INTERVAL:?}",
        opened.elapsed()
    );

    // The session lives on a pong: the next ping comes one interval later.
    let ponged = Instant::now();
    assert_eq!(
        request(addr, "POST", &polling(&sid), "3").await,
        (200, "ok".into())
    );
    let (status, body) = request(addr, "GET", &polling(&sid), "").await;
    assert_eq!((status, body.as_str()), (200, "2"));
    assert!(ponged.elapsed() + TIMER_SLACK >= PING_INTERVAL / 2);
}

#[tokio::test]
async fn websocket_first_ping_comes_after_the_ping_interval_and_silence_closes() {
    let gw = Gateway::start_args(&FAST_HEARTBEAT).await;
    let mut ws = ws_open(gw.running.http_addr(), "&userId=hb-ws").await;
    let opened = Instant::now();
    let (open, _) = ws_next(&mut ws).await;
    assert!(open.starts_with("0{"), "open packet first: {open}");

    let (ping, _) = ws_next(&mut ws).await;
    assert_eq!(ping, "2");
    assert!(
        opened.elapsed() + TIMER_SLACK >= PING_INTERVAL,
        "first ping {:?} after the handshake, before pingInterval {PING_INTERVAL:?}",
        opened.elapsed()
    );
    ws_send(&mut ws, "3").await;
    assert_eq!(ws_next(&mut ws).await.0, "2", "a pong keeps the session");

    // No pong: the server closes within pingTimeout (generous margin for a loaded machine).
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a client that does not pong is dropped");
}

/// Reference server (polling transport `onClose`): a close packet received while a GET is
/// pending completes that GET with a noop packet, and the session is gone.
#[tokio::test]
async fn close_packet_completes_a_pending_poll_with_noop() {
    let gw = Gateway::start_args(&SLOW_HEARTBEAT).await;
    let addr = gw.running.http_addr();
    let sid = open_polling(addr, "closer").await;

    let path = polling(&sid);
    let pending = tokio::spawn(async move { request(addr, "GET", &path, "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished(), "nothing to send yet: the GET waits");

    assert_eq!(
        request(addr, "POST", &polling(&sid), "1").await,
        (200, "ok".into())
    );
    let (status, body) = pending.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "6"));
    assert_eq!(
        request(addr, "GET", &polling(&sid), "").await.0,
        400,
        "session closed"
    );
}

/// Socket.IO: a CONNECT to a namespace the server does not have is answered with a
/// CONNECT_ERROR, and it is the first thing the client sees (no ping before it).
#[tokio::test]
async fn unknown_namespace_is_answered_first_over_polling() {
    let gw = Gateway::start_args(&SLOW_HEARTBEAT).await;
    let addr = gw.running.http_addr();
    let sid = open_polling(addr, "lost").await;
    assert_eq!(
        request(addr, "POST", &polling(&sid), "40/random,").await,
        (200, "ok".into())
    );
    let (status, body) = request(addr, "GET", &polling(&sid), "").await;
    assert_eq!((status, body.as_str()), (200, INVALID_NAMESPACE));
}

#[tokio::test]
async fn unknown_namespace_is_answered_first_over_websocket() {
    let gw = Gateway::start_args(&SLOW_HEARTBEAT).await;
    let mut ws = ws_open(gw.running.http_addr(), "&userId=lost-ws").await;
    assert!(ws_next(&mut ws).await.0.starts_with("0{"));
    ws_send(&mut ws, "40/random,").await;
    assert_eq!(ws_next(&mut ws).await.0, INVALID_NAMESPACE);
}

/// Reference server (`verify`, TRANSPORT_MISMATCH): once a session has upgraded to
/// WebSocket, polling requests with its sid are HTTP 400. The upgrade is proven complete by
/// a Socket.IO CONNECT sent over the WebSocket after the upgrade packet and answered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_after_upgrade_is_bad_request() {
    let gw = Gateway::start_args(&SLOW_HEARTBEAT).await;
    let addr = gw.running.http_addr();
    for i in 0..20 {
        let sid = open_polling(addr, &format!("upgrader-{i}")).await;
        let mut ws = ws_open(addr, &format!("&sid={sid}&userId=upgrader-{i}")).await;
        ws_send(&mut ws, "2probe").await;
        assert_eq!(ws_next(&mut ws).await.0, "3probe");
        ws_send(&mut ws, "5").await;
        ws_send(&mut ws, "40").await;
        let connected = loop {
            match ws_next(&mut ws).await.0.as_str() {
                "2" => ws_send(&mut ws, "3").await,
                frame => break frame.to_owned(),
            }
        };
        assert!(
            connected.starts_with("40{"),
            "connect answered over ws: {connected}"
        );

        let path = polling(&sid);
        let (get, post) = tokio::join!(
            request(addr, "GET", &path, ""),
            request(addr, "POST", &path, "3"),
        );
        assert_eq!((get.0, post.0), (400, 400), "session {i}: {get:?} {post:?}");
        // The WebSocket still works: the session was not closed by the stray polls.
        ws_send(&mut ws, "40/random,").await;
        loop {
            let (frame, _) = ws_next(&mut ws).await;
            if frame == INVALID_NAMESPACE {
                break;
            }
            assert!(
                frame == "2" || frame.starts_with("42"),
                "only events before the answer: {frame}"
            );
        }
    }
}

/// For the race tests: sessions that never connect to the namespace are many, and short.
const MANY_SESSIONS: [&str; 2] = ["--max-pending-sessions-per-ip", "100000"];

/// Issue 20.10, the official suite's "should ignore HTTP requests with same sid after
/// upgrade": the client sends `2probe` and `5` on the WebSocket without waiting for `3probe`,
/// then polls at once. The reference server reads the WebSocket first and answers 400. Here
/// the poll raced the upgrade: served before the WebSocket task had started the upgrade, or
/// answered the upgrade's noop while `5` was still being read (200 in 40-90 of 200 rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_sent_after_the_upgrade_packet_is_bad_request() {
    const ROUNDS: usize = 200;
    let gw = Gateway::start_args(&[SLOW_HEARTBEAT.as_slice(), &MANY_SESSIONS].concat()).await;
    let addr = gw.running.http_addr();
    let mut served = Vec::new();
    for i in 0..ROUNDS {
        let sid = open_polling(addr, &format!("upgrader-{i}")).await;
        let mut ws = ws_open(addr, &format!("&sid={sid}")).await;
        ws_send(&mut ws, "2probe").await;
        ws_send(&mut ws, "5").await;
        let (status, body) = request(addr, "GET", &polling(&sid), "").await;
        if status != 400 {
            served.push(format!("round {i}: {status} {body:?}"));
        }
        let _ = ws.close(None).await;
    }
    assert!(
        served.is_empty(),
        "{} of {ROUNDS} polls after the upgrade served: {served:?}",
        served.len()
    );
}

/// Issue 20.10, the official suite's "should forcefully close the session" (polling): a GET
/// and a POST of the close packet sent together. The reference server answers the GET with a
/// noop and the POST with `ok`, then the session is gone. Here the close, handled first,
/// left the GET an unknown session (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_racing_the_close_packet_gets_the_noop() {
    const ROUNDS: usize = 300;
    let gw = Gateway::start_args(&[SLOW_HEARTBEAT.as_slice(), &MANY_SESSIONS].concat()).await;
    let addr = gw.running.http_addr();
    let mut wrong = Vec::new();
    for i in 0..ROUNDS {
        let sid = open_polling(addr, &format!("closer-{i}")).await;
        let path = polling(&sid);
        let (get, post) = tokio::join!(
            request(addr, "GET", &path, ""),
            request(addr, "POST", &path, "1"),
        );
        let after = request(addr, "GET", &path, "").await.0;
        if (get.0, get.1.as_str(), post.0, after) != (200, "6", 200, 400) {
            wrong.push(format!(
                "round {i}: GET {get:?}, POST {post:?}, then {after}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} rounds answered unlike the reference server: {wrong:?}",
        wrong.len()
    );
}

/// Issue 20.10, the official suite's "should close the session upon ping timeout" (polling):
/// a client that answers no ping and polls `pingInterval + pingTimeout` after its handshake
/// finds the session gone (400), as with the reference server, which starts both timers
/// before it sends the open packet. Here the heartbeat counted from when its task first ran
/// and the pong timeout from when the ping was sent, and the session ended only when that
/// timer fired, so such a poll was still served now and then (the suite failed 1 run in 10
/// on it). 300 sessions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_after_the_ping_timeout_finds_the_session_gone() {
    const SESSIONS: usize = 300;
    // A process of its own, as in the suite: its timers do not share this test's runtime.
    let gw = Process::start(&[FAST_HEARTBEAT.as_slice(), &MANY_SESSIONS].concat());
    let addr = gw.http;
    let ping_timeout = Duration::from_millis(200);
    let rounds = (0..SESSIONS).map(|i| async move {
        let sid = open_polling(addr, &format!("silent-{i}")).await;
        // To the tenth of a millisecond, as a client on another clock may: tokio's timers
        // round up to the next millisecond, which hid the race in-process.
        let wait = PING_INTERVAL + ping_timeout;
        tokio::task::spawn_blocking(move || std::thread::sleep(wait))
            .await
            .unwrap();
        request(addr, "GET", &polling(&sid), "").await
    });
    let served: Vec<_> = futures_util::future::join_all(rounds)
        .await
        .into_iter()
        .filter(|(status, _)| *status != 400)
        .collect();
    assert!(
        served.is_empty(),
        "{} of {SESSIONS} polls after the ping timeout served: {served:?}",
        served.len()
    );
}

/// Reference server (polling `send`, bounded by `maxHttpBufferSize`): a poll answers with as
/// many packets as fit in the payload limit, and the packet that would overflow it opens the
/// next poll; none is lost or reordered.
#[tokio::test]
async fn a_packet_past_the_payload_limit_opens_the_next_poll() {
    let mut args = SLOW_HEARTBEAT.to_vec();
    args.extend(["--max-payload-bytes", "300"]);
    let gw = Gateway::start_args(&args).await;
    let addr = gw.running.http_addr();
    let sid = open_polling(addr, "held&presence=none").await;
    assert_eq!(
        request(addr, "POST", &polling(&sid), "40").await,
        (200, "ok".into())
    );
    let (status, connected) = request(addr, "GET", &polling(&sid), "").await;
    assert!(status == 200 && connected.starts_with("40{"), "{connected}");
    // Four packets of about 130 bytes: two fit in 300, the third would not.
    let pad = "z".repeat(100);
    let packets: Vec<String> = (0..4)
        .map(|n| format!(r#"42["newMessage",{{"n":{n},"pad":"{pad}"}}]"#))
        .collect();
    for n in 0..4 {
        let sent = gw
            .send_direct(direct("held", json!({ "n": n, "pad": pad })))
            .await
            .expect("answered");
        assert_eq!(sent.delivered_sockets, 1);
    }
    let first = request(addr, "GET", &polling(&sid), "").await;
    assert_eq!(first, (200, packets[..2].join("\u{1e}")));
    let second = request(addr, "GET", &polling(&sid), "").await;
    assert_eq!(second, (200, packets[2..].join("\u{1e}")));
}
