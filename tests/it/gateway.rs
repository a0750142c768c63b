//! Behaviour of the gateway core through real clients: a Socket.IO client per tab and a
//! tonic client for the backend side.

use std::{collections::HashSet, time::Duration};

use messaging_gateway::{proto::SendDirectRequest, wire};
use prost_types::{value::Kind, Value as PbValue};
use rust_socketio::{asynchronous::ClientBuilder, TransportType};
use serde_json::json;
use tonic::Code;

use crate::support::{
    direct,
    grpc::{self, tampered, NOT_SERVING, SERVING},
    urlencode, Gateway, Seen, Tab, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_reaches_every_tab_and_nobody_else() {
    let gw = Gateway::start().await;
    let mut tab1 = gw.tab("alice").await;
    let mut tab2 = gw.tab("alice").await;
    let mut bob = gw.tab("bob").await;
    gw.wait_online(|u| u.len() == 2).await;

    let message = json!({
        "text": "héllo 🙂 中文 שלום \"quoted\" \\ back\nslash\t",
        "n": 42, "pi": 3.5, "neg": -7, "big": 9007199254740991_i64,
        "ok": true, "none": null,
        "nested": {"list": [1, "two", false, null, {"deep": [[]]}], "empty": {}},
    });
    assert_eq!(gw.send("alice", message.clone()).await.unwrap(), 2);
    assert_eq!(tab1.event("newMessage").await, vec![message.clone()]);
    assert_eq!(tab2.event("newMessage").await, vec![message]);
    bob.expect_no("newMessage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_level_scalars_and_arrays_are_one_argument() {
    let gw = Gateway::start().await;
    let mut tab = gw.tab("alice").await;
    for message in [
        json!("just text"),
        json!(7),
        json!([1, 2, 3]),
        json!(null),
        json!(false),
    ] {
        assert_eq!(gw.send("alice", message.clone()).await.unwrap(), 1);
        assert_eq!(tab.event("newMessage").await, vec![message]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_event_name_is_used() {
    let gw = Gateway::start().await;
    let mut tab = gw.tab("carol").await;
    assert_eq!(
        gw.send_event("carol", "orderShipped", json!({"id": 9}))
            .await
            .unwrap(),
        1
    );
    assert_eq!(tab.event("orderShipped").await, vec![json!({"id": 9})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_user_gets_zero_not_an_error() {
    let gw = Gateway::start().await;
    assert_eq!(gw.send("nobody", json!({"a": 1})).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stays_online_until_the_last_tab_closes() {
    let gw = Gateway::start().await;
    let tab1 = gw.tab("alice").await;
    let mut tab2 = gw.tab("alice").await;
    gw.wait_online(|u| u == ["alice"]).await;

    tab1.close().await;
    // Wait until the server has dropped the first tab, then the user is still online.
    tokio::time::timeout(WAIT, async {
        while gw.send("alice", json!("ping")).await.unwrap() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("first tab dropped");
    assert_eq!(gw.online().await, ["alice"]);
    assert_eq!(tab2.first_arg("newMessage").await, json!("ping"));

    tab2.close().await;
    gw.wait_online(|u| u.is_empty()).await;
    assert_eq!(gw.send("alice", json!("late")).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_only_transport_delivers() {
    let gw = Gateway::start().await;
    let mut tab = Tab::connect(&gw.url(), Some("poller"), TransportType::Polling).await;
    gw.wait_online(|u| u == ["poller"]).await;
    assert_eq!(
        gw.send("poller", json!({"via": "polling"})).await.unwrap(),
        1
    );
    assert_eq!(tab.first_arg("newMessage").await, json!({"via": "polling"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_from_auth_payload() {
    let gw = Gateway::start().await;
    let mut tab = Tab::open(
        ClientBuilder::new(gw.url())
            .transport_type(TransportType::Websocket)
            .auth(json!({"userId": "authed"})),
    )
    .await;
    tab.connected().await;
    gw.wait_online(|u| u == ["authed"]).await;
    assert_eq!(gw.send("authed", json!(1)).await.unwrap(), 1);
    assert_eq!(tab.first_arg("newMessage").await, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_without_user_id_is_refused_with_a_reason() {
    let gw = Gateway::start().await;
    for user in [None, Some(""), Some("bad\u{7}id")] {
        let query = match user {
            Some(u) => format!("?userId={}", urlencode(u)),
            None => String::new(),
        };
        let (_tab, seen) = gw.handshake(&query, None).await;
        seen.assert_refused("user");
    }
    assert!(gw.online().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_list_on_connect_and_on_every_change() {
    let gw = Gateway::start().await;
    let mut alice = gw.tab("alice").await;
    alice.online_until(|l| l == ["alice"]).await;

    let mut bob = gw.tab("bob").await;
    bob.online_until(|l| l == ["alice", "bob"]).await;
    alice.online_until(|l| l == ["alice", "bob"]).await;

    // A second tab is no presence change: the tab gets the list, nobody else hears of it.
    let mut alice2 = gw.tab("alice").await;
    alice2.online_until(|l| l == ["alice", "bob"]).await;
    bob.expect_no("getOnlineUsers").await;

    bob.close().await;
    alice.online_until(|l| l == ["alice"]).await;
    alice2.online_until(|l| l == ["alice"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_bursts_are_coalesced_and_end_on_the_final_state() {
    let gw = Gateway::start().await;
    let mut watcher = gw.tab("watcher").await;
    watcher.online_until(|l| l == ["watcher"]).await;

    let users: Vec<String> = (0..30).map(|i| format!("u{i:02}")).collect();
    let tabs = futures_util::future::join_all(users.iter().map(|u| gw.tab(u))).await;
    let (n, last) = watcher
        .count("getOnlineUsers", Duration::from_millis(800))
        .await;
    let last: Vec<String> = serde_json::from_value(last.expect("a broadcast")[0].clone()).unwrap();
    assert_eq!(last.len(), 31, "final state carries everyone: {last:?}");
    assert!(
        n < 30,
        "30 arrivals coalesced into fewer broadcasts, got {n}"
    );
    drop(tabs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_arrive_complete_and_in_one_order_on_every_tab() {
    let gw = Gateway::start().await;
    let mut tab1 = gw.tab("alice").await;
    let mut tab2 = gw.tab("alice").await;
    gw.wait_online(|u| u == ["alice"]).await;

    let sends = (0..200).map(|seq| gw.send("alice", json!({ "seq": seq })));
    let delivered = futures_util::future::join_all(sends).await;
    for d in delivered {
        assert_eq!(d.unwrap(), 2);
    }

    let mut orders = Vec::new();
    for tab in [&mut tab1, &mut tab2] {
        let mut order = Vec::new();
        for _ in 0..200 {
            order.push(tab.first_arg("newMessage").await["seq"].as_u64().unwrap());
        }
        let distinct: HashSet<_> = order.iter().collect();
        assert_eq!(distinct.len(), 200, "no loss, no duplicate");
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "both tabs see the same order");

    // Sequential sends keep the caller's order exactly.
    for seq in 0..50 {
        gw.send("alice", json!({ "after": seq })).await.unwrap();
    }
    for seq in 0..50 {
        assert_eq!(tab1.first_arg("newMessage").await, json!({ "after": seq }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_online_pages_sorted_with_total() {
    let gw = Gateway::start().await;
    let names = ["dave", "alice", "carol", "bob", "erin"];
    let _tabs = futures_util::future::join_all(names.iter().map(|u| gw.tab(u))).await;
    gw.wait_online(|u| u.len() == 5).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = gw.list_online(2, token).await.unwrap();
        assert_eq!(page.total, 5);
        assert!(page.user_ids.len() <= 2);
        seen.extend(page.user_ids);
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);

    let all = gw.list_online(0, "").await.unwrap();
    assert_eq!(all.user_ids.len(), 5);
    assert!(all.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_under_churn_never_repeats_or_skips_a_stable_user() {
    let gw = Gateway::start().await;
    let stable: Vec<String> = (0..24).map(|i| format!("stable-{i:02}")).collect();
    let _stable_tabs = futures_util::future::join_all(stable.iter().map(|u| gw.tab(u))).await;
    gw.wait_online(|u| u.len() == 24).await;

    let url = gw.url();
    let churn = tokio::spawn(async move {
        for round in 0..6 {
            let users: Vec<String> = (0..8).map(|i| format!("churn-{round}-{i}")).collect();
            let tabs = futures_util::future::join_all(
                users
                    .iter()
                    .map(|u| Tab::connect(&url, Some(u), TransportType::Websocket)),
            )
            .await;
            for tab in tabs {
                tab.close().await;
            }
        }
    });

    for _ in 0..5 {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = gw.list_online(3, token).await.unwrap();
            seen.extend(page.user_ids);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let distinct: HashSet<_> = seen.iter().collect();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "a user returned twice: {seen:?}"
        );
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, seen, "pages are in order");
        for user in &stable {
            assert!(seen.contains(user), "{user} skipped");
        }
    }
    churn.await.unwrap();
}

fn number(n: f64) -> PbValue {
    PbValue {
        kind: Some(Kind::NumberValue(n)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_field() {
    let gw = Gateway::start().await;
    let _tab = gw.tab("alice").await;
    let ok = || direct("alice", json!({"a": 1}));
    let mut cases: Vec<(SendDirectRequest, &str)> = vec![
        (
            SendDirectRequest {
                receiver_id: String::new(),
                ..ok()
            },
            "receiver_id",
        ),
        (
            SendDirectRequest {
                receiver_id: "x".repeat(129),
                ..ok()
            },
            "receiver_id",
        ),
        (
            SendDirectRequest {
                receiver_id: "a\u{0}b".into(),
                ..ok()
            },
            "receiver_id",
        ),
        (
            SendDirectRequest {
                message: None,
                ..ok()
            },
            "message",
        ),
        (
            SendDirectRequest {
                message: Some(PbValue { kind: None }),
                ..ok()
            },
            "message",
        ),
        (
            SendDirectRequest {
                message: Some(number(f64::NAN)),
                ..ok()
            },
            "message",
        ),
        (
            SendDirectRequest {
                message: Some(number(f64::INFINITY)),
                ..ok()
            },
            "message",
        ),
        (
            SendDirectRequest {
                message: Some(number(f64::NEG_INFINITY)),
                ..ok()
            },
            "message",
        ),
        (
            SendDirectRequest {
                event: "e".repeat(65),
                ..ok()
            },
            "event",
        ),
    ];
    let gateway_events = messaging_gateway::validation::GATEWAY_EVENTS;
    for &reserved in messaging_gateway::validation::RESERVED_EVENTS
        .iter()
        .chain(gateway_events)
    {
        cases.push((
            SendDirectRequest {
                event: reserved.into(),
                ..ok()
            },
            "event",
        ));
    }
    // NaN hidden deep inside a struct is found too.
    let mut nested = wire::from_json(&json!({"outer": {"list": [1]}}));
    if let Some(Kind::StructValue(s)) = &mut nested.kind {
        s.fields.insert("bad".into(), number(f64::NAN));
    }
    cases.push((
        SendDirectRequest {
            message: Some(nested),
            ..ok()
        },
        "message.bad",
    ));

    for (req, field) in cases {
        let status = gw.send_request(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}");
        assert!(
            status.message().contains(field),
            "{field} not in {:?}",
            status.message()
        );
    }
    assert_eq!(
        gw.send_request(ok()).await.unwrap(),
        1,
        "the gateway still serves"
    );

    for token in ["!!!", "garbage", "AAAAAAAAAAAAAAAA", &"A".repeat(5000)] {
        let status = gw.list_online(1, token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("page_token"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_page_token_is_refused() {
    let gw = Gateway::start().await;
    let _tabs = futures_util::future::join_all(["a", "b", "c"].map(|u| gw.tab(u))).await;
    gw.wait_online(|u| u.len() == 3).await;
    let page = gw.list_online(1, "").await.unwrap();
    assert!(!page.next_page_token.is_empty());
    let status = gw
        .list_online(1, tampered(&page.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_are_ignored_without_echo() {
    let gw = Gateway::start().await;
    let mut tab = gw.tab("alice").await;
    for (event, data) in [
        ("newMessage", json!({"spoof": true})),
        ("getOnlineUsers", json!(["evil"])),
        ("whatever", json!(null)),
        ("disconnecting", json!(1)),
    ] {
        tab.client.emit(event, data).await.unwrap();
    }
    tab.expect_no("newMessage").await;
    assert_eq!(gw.online().await, ["alice"]);
    assert_eq!(gw.send("alice", json!("still here")).await.unwrap(), 1);
    assert_eq!(tab.first_arg("newMessage").await, json!("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serving_then_shutdown_closes_sockets_quickly() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let gw = Gateway::start().await;
    let mut tab = gw.tab("alice").await;
    let channel = gw.channel().await;
    for service in ["", "messaging.v1.Messaging"] {
        let status = grpc::health(channel.clone(), service).await.unwrap();
        assert_eq!(status, SERVING, "SERVING for {service:?}");
    }
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "messaging.v1.Messaging".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);

    let started = std::time::Instant::now();
    let stop = tokio::spawn(gw.running.stop());
    let next = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("watch update");
    assert_eq!(
        next.unwrap().unwrap().status,
        NOT_SERVING,
        "NOT_SERVING while draining"
    );
    tokio::time::timeout(Duration::from_secs(8), stop)
        .await
        .expect("stops within seconds")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    // The client hears the server go away.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tab.next().await {
                Some(Seen::Event(e, _)) if e == "newMessage" => {}
                Some(_) | None => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_users_reports_each_receiver() {
    use messaging_gateway::proto::SendToUsersRequest;
    let gw = Gateway::start().await;
    let mut a1 = gw.tab("a").await;
    let mut a2 = gw.tab("a").await;
    let mut b = gw.tab("b").await;
    let mut c = gw.tab("c").await;
    gw.wait_online(|u| u.len() == 3).await;
    let resp = gw
        .grpc
        .clone()
        .send_to_users(SendToUsersRequest {
            receiver_ids: vec!["a".into(), "b".into(), "offline".into(), "a".into()],
            message: Some(wire::from_json(&json!({"fanout": true}))),
            sender_id: "svc".into(),
            event: "notice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<(String, u32)> = resp
        .deliveries
        .into_iter()
        .map(|d| (d.receiver_id, d.delivered_sockets))
        .collect();
    assert_eq!(
        counts,
        [("a".into(), 2), ("b".into(), 1), ("offline".into(), 0)]
    );
    assert_eq!(resp.delivered_sockets, 3);
    for tab in [&mut a1, &mut a2, &mut b] {
        assert_eq!(tab.event("notice").await, vec![json!({"fanout": true})]);
    }
    a1.expect_no("notice").await;
    c.expect_no("notice").await;

    let status = gw
        .grpc
        .clone()
        .send_to_users(SendToUsersRequest {
            receiver_ids: vec![],
            message: Some(wire::from_json(&json!(1))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("receiver_ids"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_stream_answers_every_request_in_order() {
    use messaging_gateway::proto::SendStreamRequest;
    let gw = Gateway::start().await;
    let mut tab = gw.tab("streamer").await;
    gw.wait_online(|u| u == ["streamer"]).await;

    let requests = (0..500u64).map(|id| SendStreamRequest {
        // Every 100th request is bad: it is refused in-band and the stream goes on.
        receiver_id: if id % 100 == 99 {
            String::new()
        } else {
            "streamer".into()
        },
        message: Some(wire::from_json(&json!({ "id": id }))),
        id,
        ..Default::default()
    });
    let mut responses = gw.send_stream(requests).await;
    let mut n = 0u64;
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(r.id, n);
        if n % 100 == 99 {
            assert_eq!(r.code, Code::InvalidArgument as i32);
            assert!(r.error.contains("receiver_id"));
        } else {
            assert_eq!((r.code, r.delivered_sockets), (0, 1), "{r:?}");
        }
        n += 1;
    }
    assert_eq!(n, 500);
    for id in (0..500u64).filter(|id| id % 100 != 99) {
        assert_eq!(tab.first_arg("newMessage").await, json!({ "id": id }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let gw = Gateway::start_args(&["--metrics-addr", "127.0.0.1:0"]).await;
    let _t1 = gw.tab("alice").await;
    let _t2 = gw.tab("alice").await;
    let (_refused, seen) = gw.handshake("", None).await;
    assert!(matches!(seen, Seen::Error(_)));
    gw.wait_online(|u| u == ["alice"]).await;
    assert_eq!(gw.send("alice", json!(1)).await.unwrap(), 2);

    let body = gw.metrics_text().await;
    for line in [
        "gateway_online_users 1",
        "gateway_sockets 2",
        "gateway_deliveries_total 2",
        "gateway_handshakes_refused_total{cause=\"missing_user_id\"} 1",
        "gateway_refusals_total 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line:?} missing in:\n{body}"
        );
    }
}

/// A backend may send the moment the client is connected: the socket must be deliverable by
/// the time the client sees the connect ack. Before the socketioxide patch (connect handler
/// run inline up to its first await), the handler was spawned after the ack was queued and a
/// send right after it counted 0 sockets now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_right_after_the_connect_ack_reaches_the_socket() {
    let gw = Gateway::start().await;
    let mut missed = Vec::new();
    for i in 0..150 {
        let user = format!("eager-{i}");
        let tab = gw.tab(&user).await;
        if gw.send(&user, json!(i)).await.unwrap() != 1 {
            missed.push(i);
        }
        tab.close().await;
    }
    assert!(
        missed.is_empty(),
        "sends right after the connect ack that counted 0: {missed:?}"
    );
}
