//! JWT handshakes: HS256 and RS256 tokens, audience and issuer, expiry while connected,
//! renewal on the open socket, and logs that hold no token.

use std::time::Duration;

use messaging_gateway::proto::messaging_client::MessagingClient;
use serde_json::json;

use crate::support::{
    direct, grpc,
    jwt::{self, hs256, now, rs256, FLAGS, RSA_PUBLIC, SECRET},
    process::Process,
    ws::RawWs,
    Gateway, Seen,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs256_identifies_the_user_and_refuses_bad_tokens() {
    let gw = jwt::gateway(&["--jwt-audience", "web"]).await;
    let good = hs256(
        json!({"sub": "alice", "exp": now() + 600, "aud": "web"}),
        SECRET,
    );

    // The query userId is ignored: the token's sub decides.
    let (mut tab, seen) = gw
        .handshake("?userId=mallory", Some(json!({ "token": good })))
        .await;
    assert!(matches!(seen, Seen::Connected), "{seen:?}");
    gw.wait_online(|u| u == ["alice"]).await;
    assert_eq!(gw.send("alice", json!("for alice")).await.unwrap(), 1);
    assert_eq!(gw.send("mallory", json!("x")).await.unwrap(), 0);
    assert_eq!(tab.first_arg("newMessage").await, json!("for alice"));

    // The token may come in the query for clients that cannot set auth.
    let (_tab, seen) = gw.handshake(&format!("?token={good}"), None).await;
    assert!(matches!(seen, Seen::Connected), "{seen:?}");

    let cases = [
        (None, "missing token"),
        (Some(json!({"userId": "alice"})), "missing token"),
        (
            Some(
                json!({"token": hs256(json!({"sub": "alice", "exp": now() - 3600, "aud": "web"}), SECRET)}),
            ),
            "expired",
        ),
        (
            Some(
                json!({"token": hs256(json!({"sub": "alice", "exp": now() + 600, "aud": "web"}), "another-secret-of-enough-length")}),
            ),
            "signature",
        ),
        (
            Some(
                json!({"token": hs256(json!({"sub": "alice", "exp": now() + 600, "aud": "other"}), SECRET)}),
            ),
            "audience",
        ),
        (
            Some(json!({"token": hs256(json!({"sub": "alice", "aud": "web"}), SECRET)})),
            "exp",
        ),
        (Some(json!({"token": "not.a.jwt"})), "malformed"),
        (
            Some(
                json!({"token": rs256(json!({"sub": "alice", "exp": now() + 600, "aud": "web"}))}),
            ),
            "algorithm",
        ),
    ];
    for (auth, reason) in cases {
        let (_tab, seen) = gw.handshake("?userId=alice", auth).await;
        seen.assert_refused(reason);
    }
    assert_eq!(
        gw.online().await,
        ["alice"],
        "no refused socket joined presence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_with_issuer() {
    let gw = Gateway::start_args(&[
        "--auth",
        "jwt",
        "--jwt-public-key-file",
        RSA_PUBLIC,
        "--jwt-issuer",
        "https://idp.test",
        "--cors-origins",
        "http://app.test",
    ])
    .await;
    let good = rs256(json!({"sub": "bob", "exp": now() + 600, "iss": "https://idp.test"}));
    let (mut tab, seen) = gw.handshake("", Some(json!({ "token": good }))).await;
    assert!(matches!(seen, Seen::Connected), "{seen:?}");
    gw.wait_online(|u| u == ["bob"]).await;
    assert_eq!(gw.send("bob", json!({"k": 1})).await.unwrap(), 1);
    assert_eq!(tab.first_arg("newMessage").await, json!({"k": 1}));

    let wrong_iss = rs256(json!({"sub": "bob", "exp": now() + 600, "iss": "https://evil.test"}));
    gw.handshake("", Some(json!({ "token": wrong_iss })))
        .await
        .1
        .assert_refused("issuer");
    // An HS256 token signed with the public key as secret (algorithm confusion) is refused.
    let confused = hs256(
        json!({"sub": "bob", "exp": now() + 600, "iss": "https://idp.test"}),
        &std::fs::read_to_string(RSA_PUBLIC).unwrap(),
    );
    gw.handshake("", Some(json!({ "token": confused })))
        .await
        .1
        .assert_refused("algorithm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_audience_and_issuer_must_be_present_and_match() {
    let gw = jwt::gateway(&[
        "--jwt-audience",
        "gw-aud",
        "--jwt-issuer",
        "https://issuer.example",
    ])
    .await;
    let iss = "https://issuer.example";
    let token = |extra: serde_json::Value| {
        let mut claims = json!({"sub": "alice", "exp": now() + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(claims, SECRET)
    };
    let refused_cases = [
        (json!({}), "aud"),
        (json!({"iss": iss}), "missing the aud"),
        (json!({"aud": "gw-aud"}), "missing the iss"),
        (json!({"aud": 123, "iss": iss}), "audience"),
        (json!({"aud": null, "iss": iss}), "missing the aud"),
        (json!({"aud": {}, "iss": iss}), "audience"),
        (json!({"aud": {"gw-aud": true}, "iss": iss}), "audience"),
        (json!({"aud": ["other"], "iss": iss}), "audience"),
        (json!({"aud": [123, "gw-aud"], "iss": iss}), "audience"),
        (json!({"aud": "gw-aud", "iss": 5}), "issuer"),
        (json!({"aud": "gw-aud", "iss": null}), "missing the iss"),
        (json!({"aud": "gw-aud", "iss": [iss]}), "issuer"),
        (
            json!({"aud": "gw-aud", "iss": "https://evil.example"}),
            "issuer",
        ),
    ];
    for (claims, reason) in refused_cases {
        let (_tab, seen) = gw
            .handshake("", Some(json!({ "token": token(claims.clone()) })))
            .await;
        match &seen {
            Seen::Error(e) => assert!(e.contains(reason), "{claims}: {reason:?} not in {e:?}"),
            other => panic!("{claims} was not refused: {other:?}"),
        }
    }
    assert!(gw.online().await.is_empty(), "no refused token joined");
    for claims in [
        json!({"aud": "gw-aud", "iss": iss}),
        json!({"aud": ["other", "gw-aud"], "iss": iss}),
    ] {
        let (_tab, seen) = gw
            .handshake("", Some(json!({ "token": token(claims.clone()) })))
            .await;
        assert!(matches!(seen, Seen::Connected), "{claims}: {seen:?}");
    }
}

/// A gateway in jwt mode without clock leeway, for the expiry tests.
async fn strict_jwt_gateway() -> Gateway {
    jwt::gateway(&["--jwt-leeway-secs", "0"]).await
}

/// Alice connected over a raw WebSocket with a token that expires in 3 s; that expiry.
async fn alice_for_three_seconds(gw: &Gateway) -> (u64, RawWs) {
    let exp = now() + 3;
    let mut ws = RawWs::open(gw.running.http_addr(), "").await;
    let answer = ws
        .connect(json!({"token": hs256(json!({"sub": "alice", "exp": exp}), SECRET)}))
        .await;
    assert!(answer.starts_with("40{"), "{answer}");
    (exp, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_disconnected_when_its_token_expires() {
    let gw = strict_jwt_gateway().await;
    let (exp, mut ws) = alice_for_three_seconds(&gw).await;
    gw.wait_online(|u| u == ["alice"]).await;
    assert_eq!(gw.send("alice", json!("before")).await.unwrap(), 1);
    assert_eq!(ws.event("newMessage").await.unwrap(), [json!("before")]);

    let reason = ws.event("disconnectReason").await.expect("a reason");
    assert!(
        reason[0].as_str().unwrap().contains("token expired"),
        "{reason:?}"
    );
    assert!(now() > exp, "not before the token's expiry");
    assert!(now() <= exp + 3, "promptly after the token's expiry");
    gw.wait_online(|u| u.is_empty()).await;
    assert_eq!(gw.send("alice", json!("after")).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_token_on_the_open_socket_keeps_it_for_the_same_user_only() {
    let gw = strict_jwt_gateway().await;
    let (exp, mut ws) = alice_for_three_seconds(&gw).await;

    let other = hs256(json!({"sub": "mallory", "exp": now() + 600}), SECRET);
    let reply = ws.call(1, "renewToken", json!(other)).await;
    assert_eq!(reply["ok"], json!(false), "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("another user"),
        "{reply}"
    );
    let expired = hs256(json!({"sub": "alice", "exp": now() - 10}), SECRET);
    let reply = ws.call(2, "renewToken", json!(expired)).await;
    assert!(
        reply["error"].as_str().unwrap().contains("expired"),
        "{reply}"
    );
    let reply = ws.call(3, "renewToken", json!({"not": "a token"})).await;
    assert!(
        reply["error"].as_str().unwrap().contains("missing token"),
        "{reply}"
    );

    let fresh_exp = now() + 600;
    let fresh = hs256(json!({"sub": "alice", "exp": fresh_exp}), SECRET);
    let reply = ws.call(4, "renewToken", json!(fresh)).await;
    assert_eq!(reply, json!({"ok": true, "validUntil": fresh_exp}));

    // Past the first token's expiry, every message still arrives on the same connection.
    let mut i = 0;
    while now() <= exp + 2 {
        assert_eq!(gw.send("alice", json!(i)).await.unwrap(), 1, "message {i}");
        assert_eq!(ws.event("newMessage").await.unwrap(), [json!(i)]);
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(gw.online().await, ["alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_hold_no_token_and_no_message_body() {
    let gw = Process::start_env(&FLAGS, &[("RUST_LOG", "debug")]);
    let token = |n: u64| hs256(json!({"sub": "alice", "exp": now() + 600 + n}), SECRET);
    let (in_auth, in_query, renewed) = (token(0), token(1), token(2));
    let mut ws = RawWs::open(gw.http, "").await;
    assert!(ws
        .connect(json!({ "token": in_auth }))
        .await
        .starts_with("40{"));
    let mut by_query = RawWs::open(gw.http, &format!("&token={in_query}")).await;
    assert!(by_query.connect(json!({})).await.starts_with("40{"));
    assert_eq!(
        ws.call(1, "renewToken", json!(renewed)).await["ok"],
        json!(true)
    );

    let body = "a-message-body-that-must-not-be-logged";
    let mut grpc = MessagingClient::new(grpc::channel(gw.grpc).await.unwrap());
    let sent = grpc
        .send_direct(direct("alice", json!({ "text": body })))
        .await
        .unwrap();
    assert_eq!(sent.into_inner().delivered_sockets, 2);
    assert_eq!(
        ws.event("newMessage").await.unwrap(),
        [json!({ "text": body })]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = gw.logs();
    assert!(
        logs.contains("delivered") && logs.contains("bytes="),
        "the gateway's own debug lines are on:\n{logs}"
    );
    for secret in [&in_auth, &in_query, &renewed] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token is in the log:\n{logs}");
    }
    assert!(
        !logs.contains(body),
        "a message body is in the log:\n{logs}"
    );
}
