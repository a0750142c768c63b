//! The HTTP port besides Socket.IO: the probes (`/healthz`, `/readyz`, also through a drain),
//! the live page and its assets, and `POST /demo/send`, which delivers like `SendDirect` and
//! exists only with `--auth none` on loopback or `--demo`. Raw HTTP/1.1, as a probe or curl
//! would send it.

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};

use crate::support::{
    http::{get, request, Reply, LOCAL},
    jwt, Gateway,
};

async fn demo_send(addr: SocketAddr, body: &Value) -> Reply {
    let json = [("Content-Type", "application/json")];
    request(LOCAL, addr, "POST", "/demo/send", &json, &body.to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_readyz_is_503_through_the_drain() {
    let gw = Gateway::start_args(&[
        "--shutdown-grace-ms",
        "3000",
        "--shutdown-timeout-ms",
        "5000",
    ])
    .await;
    let addr = gw.running.http_addr();
    let health = get(addr, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    gw.running.shutdown();
    // The listeners stay open for the 3 s grace: probes must see the drain, not a refusal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("draining"), "{}", ready.body);
    let health = get(addr, "/healthz").await;
    assert_eq!(health.status, 200, "alive while draining: {}", health.body);
    let handshake = get(addr, "/socket.io/?EIO=4&transport=polling&userId=late").await;
    assert_eq!(handshake.status, 503, "new sessions are still refused");
    gw.running.wait().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_socket_io_bundle_are_served_from_the_binary() {
    let gw = Gateway::start().await;
    let addr = gw.running.http_addr();
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("script-src 'self'")));
    assert!(page.body.contains(r#"data-auth="none" data-send="on""#));
    assert!(page
        .body
        .contains(r#"<script src="/assets/socket.io.min.js""#));
    let port = format!(r#"data-grpc-port="{}""#, gw.running.grpc_addr().port());
    assert!(page.body.contains(&port), "{}", page.body);

    let bundle = get(addr, "/assets/socket.io.min.js").await;
    assert_eq!(bundle.status, 200);
    assert!(bundle.body.starts_with("/*!\n * Socket.IO v4.8.4"));
    for asset in ["/assets/page.js", "/assets/page.css"] {
        assert_eq!(get(addr, asset).await.status, 200, "{asset}");
    }
    assert_eq!(get(addr, "/assets/nothing.js").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_send_delivers_like_send_direct_and_refuses_bad_input_clearly() {
    let gw = Gateway::start().await;
    let addr = gw.running.http_addr();
    let mut bob = gw.tab("bob").await;

    let message = json!({"text": "hi bob", "n": 1, "nothing": null});
    let sent = demo_send(
        addr,
        &json!({"receiver_id": "bob", "event": "orderShipped", "message": message}),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json(), json!({"deliveredSockets": 1}));
    assert_eq!(bob.event("orderShipped").await, vec![message]);

    // No event: newMessage, as in SendDirect; `null` is a message.
    let sent = demo_send(addr, &json!({"receiver_id": "bob", "message": null})).await;
    assert_eq!(sent.json(), json!({"deliveredSockets": 1}));
    assert_eq!(bob.event("newMessage").await, vec![Value::Null]);

    let offline = demo_send(addr, &json!({"receiver_id": "nobody", "message": 1})).await;
    assert_eq!(offline.json(), json!({"deliveredSockets": 0}));

    let cases = [
        (json!({"receiver_id": "", "message": 1}), 400, "receiver_id"),
        (json!({"receiver_id": "bob"}), 400, "message: is required"),
        (
            json!({"receiver_id": "bob", "event": "connect", "message": 1}),
            400,
            "event",
        ),
        (
            json!({"receiver_id": "bob", "message": "x".repeat(70_000)}),
            413,
            "65536-byte limit",
        ),
        (json!({"message": 1}), 422, "receiver_id"),
    ];
    for (body, status, says) in cases {
        let reply = demo_send(addr, &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(says), "{body}: {error:?} names {says:?}");
    }
    let not_json = request(
        LOCAL,
        addr,
        "POST",
        "/demo/send",
        &[("Content-Type", "application/json")],
        "{not json",
    )
    .await;
    assert_eq!(not_json.status, 400, "{}", not_json.body);

    // A page of another site cannot make a visitor's browser send.
    let foreign = request(
        LOCAL,
        addr,
        "POST",
        "/demo/send",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        &json!({"receiver_id": "bob", "message": "csrf"}).to_string(),
    )
    .await;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    bob.expect_no("newMessage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_send_is_404_in_jwt_mode_and_off_loopback_unless_demo() {
    let body = json!({"receiver_id": "bob", "message": 1});
    for args in [
        &jwt::FLAGS[..],
        &["--http-addr", "0.0.0.0:0", "--insecure"][..],
    ] {
        let gw = Gateway::start_args(args).await;
        let addr = SocketAddr::from(([127, 0, 0, 1], gw.running.http_addr().port()));
        assert_eq!(demo_send(addr, &body).await.status, 404, "{args:?}");
        let page = get(addr, "/").await;
        assert_eq!(page.status, 200, "the page is still there: {args:?}");
        assert!(page.body.contains(r#"data-send="off""#), "{args:?}");
    }
    let gw = jwt::gateway(&["--demo"]).await;
    let addr = gw.running.http_addr();
    let sent = demo_send(addr, &body).await;
    assert_eq!(
        sent.json(),
        json!({"deliveredSockets": 0}),
        "on with --demo"
    );
    assert!(get(addr, "/")
        .await
        .body
        .contains(r#"data-auth="jwt" data-send="on""#));
}

/// DNS rebinding: a page served under the attacker's name, then re-pointed at this gateway, is
/// same-origin with it (its `Origin` matches its `Host`), but its `Host` is the attacker's
/// name, which the page and `/demo/send` refuse with 421. IP literals, `localhost` and the
/// `--allowed-hosts` names pass with any port; the probes and Socket.IO do not check `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_demo_send_answer_only_the_gateways_own_host_names() {
    let gw = Gateway::start_args(&["--allowed-hosts", "chat.example.com,gw.internal"]).await;
    let addr = gw.running.http_addr();
    let port = addr.port();
    let mut bob = gw.tab("bob").await;
    let page = |host: String| async move {
        request(LOCAL, addr, "GET", "/", &[("Host", &host)], "").await
    };
    let send = |host: String| async move {
        let origin = format!("http://{host}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Host", &host),
            ("Origin", &origin),
        ];
        let body = json!({"receiver_id": "bob", "message": format!("via {host}")});
        request(
            LOCAL,
            addr,
            "POST",
            "/demo/send",
            &headers,
            &body.to_string(),
        )
        .await
    };

    for host in [
        format!("rebind.attacker.example:{port}"),
        "rebind.attacker.example".into(),
        format!("chat.example.com.attacker.example:{port}"),
    ] {
        let sent = send(host.clone()).await;
        assert_eq!(sent.status, 421, "{host}: {}", sent.body);
        assert!(sent.body.contains("--allowed-hosts"), "{}", sent.body);
        let shown = page(host.clone()).await;
        assert_eq!(shown.status, 421, "{host}: {}", shown.body);
        assert!(!shown.body.contains("<html"), "{host}");
    }
    bob.expect_no("newMessage").await;

    for host in [
        addr.to_string(),
        "127.0.0.1".into(),
        format!("localhost:{port}"),
        format!("chat.example.com:{port}"),
        "GW.internal".into(),
    ] {
        assert_eq!(page(host.clone()).await.status, 200, "{host}");
        let sent = send(host.clone()).await;
        assert_eq!(sent.status, 200, "{host}: {}", sent.body);
        assert_eq!(
            bob.event("newMessage").await,
            [json!(format!("via {host}"))]
        );
    }

    // A kubelet probes with the pod's address, a proxy may pass on any name.
    let named = [("Host", "gateway-0.gateway.svc.cluster.local")];
    let probe = request(LOCAL, addr, "GET", "/readyz", &named, "").await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    let handshake = "/socket.io/?EIO=4&transport=polling&userId=carol";
    let opened = request(LOCAL, addr, "GET", handshake, &named, "").await;
    assert_eq!(opened.status, 200, "{}", opened.body);
}
