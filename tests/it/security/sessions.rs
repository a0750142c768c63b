//! Engine.IO sessions before and after authentication: the public socket id opens nothing,
//! unauthenticated sessions are bounded per address and in all, and a session that ends
//! before connecting hands its slot back.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    http::{open_packet_sid, polling, polling_path, polling_session, Reply, LOCAL},
    process::Process,
    Gateway, QUIET, WAIT,
};

/// Polls `sid` until a packet starting with `prefix` arrives, answering pings.
async fn poll_for(to: SocketAddr, sid: &str, prefix: &str) -> String {
    let path = polling_path(sid);
    loop {
        let Reply { status, body, .. } = polling(LOCAL, to, "GET", &path, "").await;
        assert_eq!(status, 200, "{body}");
        for packet in body.split('\u{1e}') {
            if packet == "2" {
                polling(LOCAL, to, "POST", &path, "3").await;
            }
            if packet.starts_with(prefix) {
                return packet.to_string();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_socket_id_opens_nothing() {
    let gw = Gateway::start().await;
    let addr = gw.running.http_addr();
    let sid = polling_session(LOCAL, addr, "victim").await.unwrap();
    let path = polling_path(&sid);
    assert_eq!(polling(LOCAL, addr, "POST", &path, "40").await.status, 200);
    let connect = poll_for(addr, &sid, "40").await;
    let public: serde_json::Value = serde_json::from_str(&connect[2..]).unwrap();
    let public = public["sid"].as_str().unwrap().to_string();
    assert_ne!(
        public, sid,
        "socket.id must not be the Engine.IO session id"
    );
    gw.wait_online(|u| u == ["victim"]).await;

    // Whoever learns socket.id can neither poll nor upgrade the victim's session with it.
    let steal = polling_path(&public);
    let Reply { status, body, .. } = polling(LOCAL, addr, "GET", &steal, "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(polling(LOCAL, addr, "POST", &steal, "40").await.status, 400);
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={public}");
    if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
        let _ = ws.send(Message::text("2probe")).await;
        let answer = tokio::time::timeout(QUIET, ws.next()).await;
        assert!(
            !matches!(&answer, Ok(Some(Ok(m))) if m.is_text()),
            "the upgrade with socket.id was answered: {answer:?}"
        );
    }
    assert_eq!(gw.send("victim", json!("for the victim")).await.unwrap(), 1);
    // The online list may come first, or with the connect packet.
    let got = poll_for(addr, &sid, "42[\"newMessage\"").await;
    assert!(got.contains("for the victim"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sessions_are_bounded_per_address_and_in_all() {
    let gw = Process::start(&[
        "--max-pending-sessions-per-ip",
        "50",
        "--max-pending-sessions",
        "120",
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = gw.rss_kib();
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    let flood = |from: IpAddr, n: usize| {
        let to = gw.http;
        async move {
            let (mut sids, mut refused, mut refusal) = (Vec::new(), 0, String::new());
            for _ in 0..n {
                let path = "/socket.io/?EIO=4&transport=polling&userId=u";
                let reply = polling(from, to, "GET", path, "").await;
                match reply.status {
                    200 => sids.push(reply.body),
                    429 => {
                        refused += 1;
                        refusal = reply.body;
                    }
                    _ => panic!("{reply:?}"),
                }
            }
            (sids, refused, refusal)
        }
    };
    let (one, refused, refusal) = flood(ip(1), 3000).await;
    assert_eq!((one.len(), refused), (50, 2950));
    assert!(
        refusal.contains("from this address (limit 50)"),
        "{refusal}"
    );
    let (two, ..) = flood(ip(2), 100).await;
    assert_eq!(two.len(), 50);
    let (three, _, refusal) = flood(ip(3), 100).await;
    assert_eq!(three.len(), 20);
    assert!(
        refusal.contains("unauthenticated sessions (limit 120)"),
        "{refusal}"
    );
    let grown = gw.rss_kib().saturating_sub(baseline);
    eprintln!("RSS baseline {baseline} KiB, +{grown} KiB after 3200 handshakes");
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");

    // A session that connects to the namespace hands its slot back.
    let path = polling_path(&open_packet_sid(&one[0]));
    assert_eq!(
        polling(LOCAL, gw.http, "POST", &path, "40").await.status,
        200
    );
    tokio::time::timeout(WAIT, async {
        while flood(ip(1), 1).await.0.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a slot came back");
    assert_eq!(flood(ip(1), 1).await.1, 1, "and only one");
}

/// A session that ends before connecting to the namespace (its TCP dropped after the open
/// packet, or closed with a close packet) hands its slot back at once: before, it kept the
/// slot until the connect timeout (45 s), so a few dropped tabs locked their address out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_before_connecting_hands_its_slot_back() {
    const LIMIT: usize = 8;
    let gw = Process::start(&["--max-pending-sessions-per-ip", &LIMIT.to_string()]);
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&userId=u",
        gw.http
    );
    // The slot comes back when the gateway has seen the end: allow for that, never for 45 s.
    let within = Duration::from_secs(3);
    for round in 0..3 * LIMIT {
        let start = Instant::now();
        let mut ws = loop {
            match tokio_tungstenite::connect_async(&url).await {
                Ok((ws, _)) => break ws,
                Err(e) if start.elapsed() < within => {
                    eprintln!("round {round}: {e}, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("round {round}: no slot {within:?} after the last drop: {e}"),
            }
        };
        let open = tokio::time::timeout(WAIT, ws.next()).await;
        assert!(
            matches!(&open, Ok(Some(Ok(m))) if m.to_text().unwrap_or("").starts_with('0')),
            "{open:?}"
        );
        drop(ws); // TCP closed with no close frame and no `40`
    }
    for round in 0..2 * LIMIT {
        let start = Instant::now();
        let sid = loop {
            match polling_session(LOCAL, gw.http, "u").await {
                Ok(sid) => break sid,
                Err(_) if start.elapsed() < within => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(refused) => panic!(
                    "polling round {round}: no slot {within:?} after the last close: {refused:?}"
                ),
            }
        };
        let path = polling_path(&sid);
        assert_eq!(
            polling(LOCAL, gw.http, "POST", &path, "1").await.status,
            200
        );
    }
}
