//! Socket-level limits under concurrency and stalls, through raw Engine.IO WebSockets (where
//! the packets matter) and real Socket.IO clients: cut-off slow readers are closed, the
//! connection limit holds against simultaneous handshakes, a stalled tab does not multiply
//! presence broadcasts, a `presence: "changes"` tab that missed a change set gets a whole list
//! next, and a client flooding events is cut off.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use rust_socketio::TransportType;
use serde_json::json;
use tokio::sync::Barrier;
use tokio_tungstenite::{
    tungstenite::{Error as WsError, Message},
    MaybeTlsStream,
};

use crate::support::{direct, jwt, ws::RawWs, Gateway, Seen, Tab, WAIT};

/// Sends `user` 60 KB messages until one is refused (a stalled tab's buffers are full);
/// returns how many it took.
pub(crate) async fn fill_until_refused(gw: &Gateway, user: &str) -> u32 {
    let blob = "x".repeat(60_000);
    let mut sent = 0;
    while gw
        .send(user, json!({ "i": sent, "blob": blob }))
        .await
        .unwrap()
        == 1
    {
        sent += 1;
        assert!(sent < 5000, "{user}'s tab never filled up");
    }
    sent
}

/// TCP states (hex, as in /proc/net/tcp) of this process's sockets from `local` to `remote`.
fn tcp_states(local: SocketAddr, remote: SocketAddr) -> Vec<String> {
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (port(f[1]) == local.port() && port(f[2]) == remote.port()).then(|| f[3].to_string())
        })
        .collect()
}

/// Issue 9.1: a tab that stops reading is cut off; its connection must then close (at the
/// transport level, since the disconnect packet cannot be queued) instead of living on as a
/// zombie that answers pings and keeps receiving `getOnlineUsers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_slow_reader_is_closed_not_left_a_zombie() {
    let gw = Gateway::start_args(&[
        "--socket-buffer-packets",
        "16",
        "--max-dropped-sends",
        "4",
        "--ping-interval-ms",
        "4000",
        "--ping-timeout-ms",
        "3000",
    ])
    .await;
    let http = gw.running.http_addr();
    let mut stalled = RawWs::open(http, "&userId=stalled").await;
    stalled.send_packet("40").await;
    let client = match stalled.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("plain ws"),
    };
    gw.wait_online(|u| u == ["stalled"]).await;

    // The tab stops reading; SendDirect until it answers 0 six times in a row.
    let blob = "x".repeat(60_000);
    let mut zeros = 0;
    for i in 0..5000 {
        match gw
            .send("stalled", json!({ "i": i, "blob": blob }))
            .await
            .unwrap()
        {
            0 => zeros += 1,
            _ => zeros = 0,
        }
        if zeros == 6 {
            break;
        }
    }
    assert_eq!(zeros, 6, "sends to a stalled tab end up refused");
    gw.wait_online(|u| u.is_empty()).await;

    // Still not reading: within the 1 s close grace (plus margin) the gateway has let go of the
    // connection, though the client never read its last packets.
    let server_side = tokio::time::timeout(WAIT, async {
        loop {
            let states = tcp_states(http, client);
            if states.iter().all(|s| s != "01") {
                return states;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        server_side.is_ok(),
        "the gateway still holds the cut-off connection ESTABLISHED"
    );

    // Someone comes online; the tab then reads again (and answers pings): it must reach the
    // end of the connection, never a getOnlineUsers sent after the cut-off.
    let _late = gw.tab("late").await;
    let mut lists_after = 0;
    let ended = tokio::time::timeout(Duration::from_secs(12), async {
        while let Some(text) = stalled.next_packet().await {
            if text.contains("getOnlineUsers") && text.contains("late") {
                lists_after += 1;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the cut-off tab is still connected after 12 s"
    );
    assert_eq!(lists_after, 0, "the cut-off tab kept receiving presence");
    assert_eq!(gw.online().await, ["late"]);
    assert_eq!(gw.send("stalled", json!("gone")).await.unwrap(), 0);
}

/// Issue 9.2: with `--max-connections 10`, 300 raw WebSockets sending the namespace CONNECT at
/// the same moment: exactly 10 are connected, the rest get the limit's connect_error, and a
/// slot freed by a disconnect can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_handshakes_never_exceed_max_connections() {
    const CLIENTS: usize = 300;
    // All 300 sessions are open, from one address, before any connects to the namespace.
    let gw = Gateway::start_args(&[
        "--max-connections",
        "10",
        "--max-pending-sessions-per-ip",
        "1000",
    ])
    .await;
    let http = gw.running.http_addr();
    let mut sockets = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        sockets.push(RawWs::open(http, &format!("&userId=u{i:03}")).await);
    }
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                ws.send_packet("40").await;
                loop {
                    match ws.next_packet().await {
                        Some(t) if t.starts_with("40") => return (true, ws),
                        Some(t) if t.starts_with("44") => {
                            assert!(t.contains("connection limit (10)"), "{t}");
                            return (false, ws);
                        }
                        Some(_) => {}
                        None => panic!("no handshake outcome"),
                    }
                }
            })
        })
        .collect();
    let mut connected = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (true, ws) => connected.push(ws),
            (false, _) => refused += 1,
        }
    }
    assert_eq!(
        (connected.len(), refused),
        (10, CLIENTS - 10),
        "connected vs refused"
    );
    assert_eq!(gw.online().await.len(), 10);

    // Closing one frees exactly one slot.
    let mut gone = connected.pop().unwrap();
    gone.close(None).await.unwrap();
    gw.wait_online(|u| u.len() == 9).await;
    let mut next = Tab::connect(&gw.url(), Some("next"), TransportType::Websocket).await;
    let (_over, seen) = gw.handshake("?userId=over", None).await;
    seen.assert_refused("connection limit");
    assert_eq!(gw.send("next", json!(1)).await.unwrap(), 1);
    assert_eq!(next.first_arg("newMessage").await, json!(1));
}

/// Issue 9.4: with one tab stalled (its buffer full), each presence change reaches an observer
/// exactly once; the stalled tab's refused lists count toward cutting it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tab_does_not_multiply_presence_broadcasts() {
    let gw =
        Gateway::start_args(&["--socket-buffer-packets", "16", "--max-dropped-sends", "16"]).await;
    let mut observer = gw.tab("observer").await;
    let mut stalled = RawWs::open(gw.running.http_addr(), "&userId=stalled").await;
    stalled.send_packet("40").await;
    observer
        .online_until(|u| u == ["observer", "stalled"])
        .await;

    // Fill the stalled tab's buffer: the first refused send.
    fill_until_refused(&gw, "stalled").await;

    // Users come online one by one, far enough apart for every resend to happen in between.
    let mut expected = vec!["observer".to_string(), "stalled".to_string()];
    let mut tabs = Vec::new();
    for n in 0..3 {
        let user = format!("user{n}");
        tabs.push(gw.tab(&user).await);
        expected.push(user);
        expected.sort();
        let (count, last) = observer
            .count("getOnlineUsers", Duration::from_millis(1500))
            .await;
        let last: Vec<String> = serde_json::from_value(last.expect("a list")[0].clone()).unwrap();
        // Once the stalled tab has refused 16 lists in a row it is cut off, which is one more
        // change (it goes offline), announced once as well.
        if !last.contains(&"stalled".to_string()) {
            expected.retain(|u| u != "stalled");
            assert!(count <= 2, "change {n}: {count} lists");
        } else {
            assert_eq!(count, 1, "change {n}: the observer got {count} lists");
        }
        assert_eq!(last, expected);
    }
    // Five resends per change plus the first offer: the stalled tab has refused 18 lists, over
    // its 16 in a row, without any further message sent to it.
    gw.wait_online(|u| !u.contains(&"stalled".to_string()))
        .await;
}

/// A `presence: "changes"` tab whose buffer refused a change set is never sent a later change
/// set (it would apply to a set the client does not hold): its next presence event is a whole
/// list, and the set it rebuilds ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changes_tab_that_refused_a_change_set_gets_a_whole_list_next() {
    refused_change_set_then_whole_list("&presence=changes", &["a"]).await;
}

/// The next event packet as (event, data); messages count in `messages`.
pub(crate) async fn next_event(ws: &mut RawWs, messages: &mut u32) -> (String, serde_json::Value) {
    loop {
        let text = ws.next_packet().await.expect("an event");
        let Some(packet) = text.strip_prefix("42") else {
            continue;
        };
        let (event, data): (String, serde_json::Value) = serde_json::from_str(packet).unwrap();
        if event == "newMessage" {
            *messages += 1;
        } else {
            return (event, data);
        }
    }
}

/// Applies a presence frame to the set its client holds; a change set on a wrong base fails.
fn apply(event: &str, data: &serde_json::Value, set: &mut BTreeSet<String>) {
    if event == "getOnlineUsers" {
        *set = serde_json::from_value(data.clone()).unwrap();
        return;
    }
    for id in data["online"].as_array().unwrap() {
        assert!(set.insert(id.as_str().unwrap().to_string()), "{data}");
    }
    for id in data["offline"].as_array().unwrap() {
        assert!(set.remove(id.as_str().unwrap()), "{data}");
    }
}

/// Tab `slow` (its presence mode in `mode`, a query suffix) is stalled until a message is
/// refused; `while_full` come online meanwhile, so its change set and the resends are refused.
/// It reads again: its next presence event after `b` comes online must be a whole list, and
/// the set its frames build ends `a, b, slow`.
pub(crate) async fn refused_change_set_then_whole_list(mode: &str, while_full: &[&str]) {
    let gw = Gateway::start_args(&[
        "--socket-buffer-packets",
        "16",
        "--max-dropped-sends",
        "1000",
    ])
    .await;
    let query = format!("&userId=slow{mode}");
    let mut slow = RawWs::open(gw.running.http_addr(), &query).await;
    slow.send_packet("40").await;
    // Every presence event it receives, in order, and the set they rebuild.
    let mut presence: Vec<(String, serde_json::Value)> = Vec::new();
    let mut set = BTreeSet::new();
    let mut messages = 0;
    let first = next_event(&mut slow, &mut messages).await;
    assert_eq!(first, ("getOnlineUsers".into(), json!(["slow"])));
    apply(&first.0, &first.1, &mut set);
    presence.push(first);

    // Stall it: messages until one is refused (kernel buffers, then its 16 packets).
    let sent = fill_until_refused(&gw, "slow").await;
    let mut tabs = Vec::new();
    for user in while_full {
        tabs.push(gw.tab(user).await);
    }
    let mut online: Vec<&str> = while_full.iter().copied().chain(["slow"]).collect();
    online.sort_unstable();
    gw.wait_online(|u| u == online.as_slice()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // It reads again, up to the last message it took (the resends are over by now).
    while messages < sent {
        let text = slow.next_packet().await.expect("the messages it took");
        if text.starts_with("42[\"newMessage\"") {
            messages += 1;
        } else if let Some(packet) = text.strip_prefix("42") {
            let (event, data): (String, serde_json::Value) = serde_json::from_str(packet).unwrap();
            apply(&event, &data, &mut set);
            presence.push((event, data));
        }
    }
    // Its change set was refused: nothing of what changed came with the messages it took.
    assert_eq!(presence.len(), 1, "{presence:?}");
    // The next change: after a refused change set, a whole list, never a change set.
    let _b = gw.tab("b").await;
    while set.len() < 3 {
        let (event, data) = next_event(&mut slow, &mut messages).await;
        assert!(
            presence.len() > 1 || event == "getOnlineUsers",
            "a change set after a refused one: {event} {data}"
        );
        apply(&event, &data, &mut set);
        presence.push((event, data));
    }
    assert_eq!(
        set.into_iter().collect::<Vec<_>>(),
        ["a", "b", "slow"],
        "{presence:?}"
    );
}

/// Issue 9.8: a client flooding events is told why and cut off (by event count and by bytes),
/// counted in the metrics, while another user's deliveries keep flowing; a client under the
/// limits is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_cut_off_and_others_keep_receiving() {
    let gw = Gateway::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--max-client-events-per-sec",
        "100",
        "--max-client-bytes-per-sec",
        "100000",
    ])
    .await;
    let http = gw.running.http_addr();
    let mut good = gw.tab("good").await;
    let calm = gw.tab("calm").await;
    for i in 0..50 {
        calm.client.emit("typing", json!({ "i": i })).await.unwrap();
    }

    /// Sends `events` frames of `size` bytes, then reads: the reason it was cut off, if any.
    async fn flood(http: SocketAddr, user: &str, events: usize, size: usize) -> Option<String> {
        let mut ws = RawWs::join(http, user).await;
        let frame = format!(r#"42["flood","{}"]"#, "x".repeat(size));
        for _ in 0..events {
            if ws.send(Message::text(frame.clone())).await.is_err() {
                break;
            }
        }
        let mut reason = None;
        while let Some(text) = ws.next_packet().await {
            if let Some(rest) = text.strip_prefix(r#"42["disconnectReason","#) {
                reason = Some(rest.to_string());
            }
        }
        reason
    }

    let sender = {
        let grpc = gw.grpc.clone();
        tokio::spawn(async move {
            let mut delivered = 0;
            for i in 0..200 {
                delivered += grpc
                    .clone()
                    .send_direct(direct("good", json!({ "i": i })))
                    .await
                    .unwrap()
                    .into_inner()
                    .delivered_sockets;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            delivered
        })
    };
    let (by_count, by_bytes) = tokio::join!(
        flood(http, "flooder", 1000, 16),
        flood(http, "hoarder", 20, 20_000),
    );
    assert!(
        by_count
            .as_deref()
            .is_some_and(|r| r.contains("too many events: over 100 per second")),
        "{by_count:?}"
    );
    assert!(
        by_bytes
            .as_deref()
            .is_some_and(|r| r.contains("over 100000 bytes")),
        "{by_bytes:?}"
    );
    assert_eq!(sender.await.unwrap(), 200);
    for i in 0..200 {
        assert_eq!(good.first_arg("newMessage").await, json!({ "i": i }));
    }
    let online = gw.online().await;
    assert_eq!(online, ["calm", "good"]);

    let body = gw.metrics_text().await;
    assert!(
        body.lines().any(|l| l == "gateway_client_floods_total 2"),
        "{body}"
    );
}

/// Issue 14.6: an absent or empty user id is "missing", one outside the rules is "invalid",
/// exactly as the Limits table of docs/limits.md says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_refusals_say_missing_or_invalid() {
    let gw = Gateway::start().await;
    let long = "x".repeat(129);
    let cases = [
        ("".to_string(), None, "missing user id: "),
        ("?userId=".to_string(), None, "missing user id: "),
        (
            String::new(),
            Some(json!({ "userId": "" })),
            "missing user id: ",
        ),
        (
            format!("?userId={long}"),
            None,
            "invalid user id: is longer than 128 bytes",
        ),
        (
            "?userId=a%07b".to_string(),
            None,
            "invalid user id: contains control characters",
        ),
    ];
    for (query, auth, expected) in cases {
        match gw.handshake(&query, auth.clone()).await.1 {
            Seen::Error(e) => assert!(e.contains(expected), "{query} {auth:?}: {e}"),
            other => panic!("{query} {auth:?}: expected connect_error, got {other:?}"),
        }
    }
    assert!(gw.online().await.is_empty());
}

/// A gateway in `--auth jwt` mode, with `extra` flags, and a token for alice valid 10 minutes.
async fn jwt_gateway(extra: &[&str]) -> (Gateway, String) {
    (jwt::gateway(extra).await, jwt::token("alice"))
}

/// A raw WebSocket client connected to the default namespace with `token`, its connect ack read.
async fn jwt_socket(gw: &Gateway, token: &str) -> RawWs {
    let mut ws = RawWs::open(gw.running.http_addr(), "").await;
    ws.join_with(&json!({ "token": token }).to_string()).await;
    ws
}

/// A client may emit the moment it sees its connect ack: the socket's handlers are in place
/// by then (registered by the handshake check, before socketioxide queues the ack). With
/// them registered by the connect handler, which runs after the ack is queued, such an event
/// found no handler now and then and was dropped unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_right_after_the_connect_ack_is_handled() {
    let (gw, token) = jwt_gateway(&[]).await;
    let mut unanswered = Vec::new();
    for i in 0..100 {
        let mut ws = jwt_socket(&gw, &token).await;
        ws.send_packet(&format!(r#"427["renewToken","{token}"]"#))
            .await;
        let mut answered = false;
        while let Some(text) = ws.next_packet().await {
            if text.starts_with("437") {
                answered = text.contains(r#""ok":true"#);
                break;
            }
        }
        if !answered {
            unanswered.push(i);
        }
        let _ = ws.close(None).await;
    }
    assert!(
        unanswered.is_empty(),
        "renewals right after the ack unanswered: {unanswered:?}"
    );
}

/// Issue 9.8: `renewToken`, the one client event the gateway handles (a JWT check per call),
/// counts toward the same inbound limit: a client spamming it is cut off like any flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_token_spam_counts_toward_the_inbound_limit() {
    let (gw, token) = jwt_gateway(&["--max-client-events-per-sec", "20"]).await;
    let mut ws = jwt_socket(&gw, &token).await;
    // One burst, flushed once: sent frame by frame on a loaded machine, they could spread over
    // several one-second windows, none over the limit.
    for id in 0..100 {
        let frame = format!(r#"42{id}["renewToken","{token}"]"#);
        ws.feed(Message::text(frame)).await.unwrap();
    }
    let _ = ws.flush().await;
    let (mut acks, mut reason) = (0, None);
    while let Some(text) = ws.next_packet().await {
        if text.starts_with("43") {
            acks += 1;
        } else if let Some(rest) = text.strip_prefix(r#"42["disconnectReason","#) {
            reason = Some(rest.to_string());
        }
    }
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("too many events: over 20")),
        "{reason:?}"
    );
    assert_eq!(acks, 20, "renewals answered before the cut-off");
    assert!(gw.online().await.is_empty());
}

/// How a flooder's connection ended, as its client saw it.
#[derive(Debug, PartialEq)]
enum Ending {
    /// A WebSocket close frame, then the end of the TCP connection: socket.io-client stays
    /// disconnected.
    Closed,
    /// A reset (a browser's close 1006), or nothing within the wait.
    Broken(String),
}

/// Floods the gateway with `events` events the way socket.io-client sends a burst of emits
/// (batches of 50 frames, one write each, while it reads); what the client read, and how the
/// connection ended.
async fn flood_in_batches(ws: RawWs, events: usize) -> (Vec<String>, Ending) {
    let (mut sink, mut stream) = ws.into_inner().split();
    let writer = tokio::spawn(async move {
        for batch in (0..events).collect::<Vec<_>>().chunks(20) {
            for i in batch {
                sink.feed(Message::text(format!(r#"42["flood",{i}]"#)))
                    .await?;
            }
            sink.flush().await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, WsError>(())
    });
    let mut packets = Vec::new();
    let ending = loop {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => packets.push(t.to_string()),
            // Then the TCP connection ends: cleanly, or with a reset when the gateway
            // closed it with frames of ours unread.
            Ok(Some(Ok(Message::Close(_)))) => match stream.next().await {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    break Ending::Closed
                }
                Some(other) => break Ending::Broken(format!("after the close: {other:?}")),
            },
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => break Ending::Broken(format!("read: {e}")),
            Ok(None) => break Ending::Broken("EOF before a close frame".into()),
            Err(_) => break Ending::Broken("still open".into()),
        }
    };
    // A write that fails with an I/O error met the reset; one refused because the close
    // handshake is under way did not.
    let ending = match writer.await.unwrap() {
        Err(WsError::Io(e)) if ending == Ending::Closed => Ending::Broken(format!("write: {e}")),
        _ => ending,
    };
    (packets, ending)
}

/// Issue 20.9: a client flooding in one burst is told why, gets the namespace disconnect
/// (`41`) and then a closed connection, whatever the burst's size. The gateway stopped reading
/// at the cut-off and dropped the connection with the rest of the burst unread, which makes
/// the kernel send a reset: a client still writing saw the connection reset (a WebSocket close
/// 1006 in socket.io-client, which then reconnected at once), often before it had read the
/// reason and the `41` queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_in_one_burst_is_told_why_before_the_close() {
    const ROUNDS: usize = 30;
    let gw = Gateway::start_args(&["--max-client-events-per-sec", "100"]).await;
    let http = gw.running.http_addr();
    let mut good = gw.tab("good").await;
    let mut failures = Vec::new();
    for (round, events) in [120, 300, 1000]
        .into_iter()
        .cycle()
        .take(ROUNDS)
        .enumerate()
    {
        let ws = RawWs::join(http, &format!("flooder{round}")).await;
        let (packets, ending) = flood_in_batches(ws, events).await;
        let reason = packets
            .iter()
            .position(|p| p.starts_with(r#"42["disconnectReason","too many events: over 100"#));
        let disconnect = packets.iter().position(|p| p == "41");
        // The reason, the namespace disconnect, then one Engine.IO close packet.
        let told = matches!((reason, disconnect), (Some(r), Some(d)) if r < d)
            && disconnect.is_some_and(|d| packets[d + 1..] == ["1"]);
        if !told || ending != Ending::Closed {
            failures.push(format!("{events} events: {packets:?} then {ending:?}"));
        }
        assert_eq!(gw.send("good", json!({ "round": round })).await.unwrap(), 1);
        assert_eq!(
            good.first_arg("newMessage").await,
            json!({ "round": round })
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} bursts cut off without the reason and a clean close: {failures:#?}",
        failures.len()
    );
    assert_eq!(gw.online().await, ["good"]);
}
