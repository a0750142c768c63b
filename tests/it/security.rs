//! Authentication and limits through real clients: JWT handshakes, API keys, TLS and mTLS,
//! and the per-user, per-connection and per-message limits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{config, process::Process, Gateway, Seen, Tab};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use messaging_gateway::{
    proto::{messaging_client::MessagingClient, ListOnlineRequest, SendDirectRequest},
    wire,
};
use rust_socketio::{asynchronous::ClientBuilder, TransportType};
use serde_json::json;
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request,
};

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/jwt-rs256-test-private.pem");
const RSA_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt-rs256-test-public.pem"
);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap()
}

/// Opens a client with `auth` and returns what the handshake produced.
async fn handshake(gw: &Gateway, query: &str, auth: Option<serde_json::Value>) -> (Tab, Seen) {
    let mut builder =
        ClientBuilder::new(format!("{}{query}", gw.url())).transport_type(TransportType::Websocket);
    if let Some(auth) = auth {
        builder = builder.auth(auth);
    }
    let mut tab = Tab::open(builder).await;
    let seen = tab.next().await.expect("a handshake outcome");
    (tab, seen)
}

fn refused(seen: &Seen, needle: &str) {
    match seen {
        Seen::Error(e) => assert!(e.contains(needle), "{needle:?} not in {e:?}"),
        other => panic!("expected connect_error containing {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs256_identifies_the_user_and_refuses_bad_tokens() {
    let gw = Gateway::start_args(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "web",
        "--cors-origins",
        "http://app.test",
    ])
    .await;
    let good = hs256(
        json!({"sub": "alice", "exp": now() + 600, "aud": "web"}),
        SECRET,
    );

    // The query userId is ignored: the token's sub decides.
    let (mut tab, seen) = handshake(&gw, "?userId=mallory", Some(json!({ "token": good }))).await;
    assert!(matches!(seen, Seen::Connected), "{seen:?}");
    gw.wait_online(|u| u == ["alice"]).await;
    assert_eq!(gw.send("alice", json!("for alice")).await.unwrap(), 1);
    assert_eq!(gw.send("mallory", json!("x")).await.unwrap(), 0);
    assert_eq!(tab.first_arg("newMessage").await, json!("for alice"));

    // The token may come in the query for clients that cannot set auth.
    let (_tab, seen) = handshake(&gw, &format!("?token={good}"), None).await;
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
        let (_tab, seen) = handshake(&gw, "?userId=alice", auth).await;
        refused(&seen, reason);
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
    let (mut tab, seen) = handshake(&gw, "", Some(json!({ "token": good }))).await;
    assert!(matches!(seen, Seen::Connected), "{seen:?}");
    gw.wait_online(|u| u == ["bob"]).await;
    assert_eq!(gw.send("bob", json!({"k": 1})).await.unwrap(), 1);
    assert_eq!(tab.first_arg("newMessage").await, json!({"k": 1}));

    let wrong_iss = rs256(json!({"sub": "bob", "exp": now() + 600, "iss": "https://evil.test"}));
    refused(
        &handshake(&gw, "", Some(json!({ "token": wrong_iss })))
            .await
            .1,
        "issuer",
    );
    // An HS256 token signed with the public key as secret (algorithm confusion) is refused.
    let confused = hs256(
        json!({"sub": "bob", "exp": now() + 600, "iss": "https://idp.test"}),
        &std::fs::read_to_string(RSA_PUBLIC).unwrap(),
    );
    refused(
        &handshake(&gw, "", Some(json!({ "token": confused })))
            .await
            .1,
        "algorithm",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_configurations_are_refused_at_startup() {
    for (args, needle) in [
        (vec!["--http-addr", "0.0.0.0:0"], "--auth none"),
        (vec!["--grpc-addr", "0.0.0.0:0"], "--api-key"),
        (
            vec!["--auth", "jwt", "--jwt-secret", SECRET],
            "--cors-origins",
        ),
        (
            vec!["--auth", "jwt", "--cors-origins", "http://a.test"],
            "--jwt-secret",
        ),
        (
            vec![
                "--auth",
                "jwt",
                "--jwt-secret",
                "short",
                "--cors-origins",
                "http://a.test",
            ],
            "16 bytes",
        ),
        (
            vec!["--api-keys-file", "/nonexistent/keys"],
            "/nonexistent/keys",
        ),
    ] {
        let mut full = vec![
            "messaging-gateway",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ];
        full.extend(args);
        let config = <messaging_gateway::Config as clap::Parser>::try_parse_from(full).unwrap();
        let err = messaging_gateway::start(config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    // --insecure is the explicit way out.
    let gw = Gateway::start_with(config(&["--http-addr", "0.0.0.0:0", "--insecure"])).await;
    gw.running.stop().await.unwrap();
}

fn authorized<T>(msg: T, key: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_messaging_and_reflection_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, "# ops keys\nfile-key\n\n").unwrap();
    let gw = Gateway::start_args(&[
        "--api-key",
        "k1",
        "--api-keys-file",
        keys_file.to_str().unwrap(),
    ])
    .await;
    let mut client = gw.grpc.clone();
    let list = || ListOnlineRequest {
        page_size: 10,
        page_token: String::new(),
    };

    for key in ["k1", "file-key"] {
        assert!(
            client.list_online(authorized(list(), key)).await.is_ok(),
            "{key}"
        );
    }
    for req in [
        authorized(list(), "wrong"),
        authorized(list(), ""),
        Request::new(list()),
    ] {
        let status = client.list_online(req).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let send = SendDirectRequest {
        receiver_id: "a".into(),
        message: Some(wire::from_json(&json!(1))),
        ..Default::default()
    };
    assert_eq!(
        client
            .send_direct(Request::new(send.clone()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert!(client.send_direct(authorized(send, "k1")).await.is_ok());

    // Health stays open for load balancers.
    let channel = Endpoint::from_shared(format!("http://{}", gw.running.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status, 1);

    // Reflection needs a key.
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let status = reflection
        .server_reflection_info(tokio_stream::iter([req()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut stream = reflection
        .server_reflection_info(authorized(tokio_stream::iter([req()]), "k1"))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("backend-service");
    Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))?
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_and_mtls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (cert, key, ca) = (
        write("server.pem", &pki.server_cert),
        write("server.key", &pki.server_key),
        write("ca.pem", &pki.ca),
    );

    // TLS: a client trusting the CA talks; a plaintext client does not.
    let running =
        messaging_gateway::start(config(&["--grpc-tls-cert", &cert, "--grpc-tls-key", &key]))
            .await
            .unwrap();
    let channel = tls_channel(running.grpc_addr(), &pki, false).await.unwrap();
    let page = MessagingClient::new(channel)
        .list_online(ListOnlineRequest::default())
        .await
        .unwrap();
    assert_eq!(page.into_inner().total, 0);
    let plain = Endpoint::from_shared(format!("http://{}", running.grpc_addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(MessagingClient::new(plain)
            .list_online(ListOnlineRequest::default())
            .await
            .is_err());
    }
    running.stop().await.unwrap();

    // mTLS: the client certificate is required.
    let running = messaging_gateway::start(config(&[
        "--grpc-tls-cert",
        &cert,
        "--grpc-tls-key",
        &key,
        "--grpc-client-ca",
        &ca,
    ]))
    .await
    .unwrap();
    let channel = tls_channel(running.grpc_addr(), &pki, true).await.unwrap();
    assert!(MessagingClient::new(channel)
        .list_online(ListOnlineRequest::default())
        .await
        .is_ok());
    let anonymous = match tls_channel(running.grpc_addr(), &pki, false).await {
        Ok(channel) => MessagingClient::new(channel)
            .list_online(ListOnlineRequest::default())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate is turned away");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_resource_exhausted() {
    let gw = Gateway::start_args(&["--max-message-bytes", "1024"]).await;
    let _tab = gw.tab("alice").await;
    let status = gw
        .send("alice", json!({ "blob": "x".repeat(2000) }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("1024"), "{}", status.message());
    assert_eq!(
        gw.send("alice", json!({ "blob": "x".repeat(900) }))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_tab_is_closed_beyond_the_per_user_limit() {
    let gw = Gateway::start_args(&["--max-sockets-per-user", "2"]).await;
    let mut first = gw.tab("alice").await;
    let mut second = gw.tab("alice").await;
    let mut third = gw.tab("alice").await;
    let reason = first.first_arg("disconnectReason").await;
    assert!(
        reason.as_str().unwrap().contains("too many sockets"),
        "{reason}"
    );
    tokio::time::timeout(crate::support::WAIT, async {
        while gw.send("alice", json!("n")).await.unwrap() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two sockets remain");
    assert_eq!(second.first_arg("newMessage").await, json!("n"));
    assert_eq!(third.first_arg("newMessage").await, json!("n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let gw = Gateway::start_args(&["--max-connections", "2"]).await;
    let _a = gw.tab("a").await;
    let _b = gw.tab("b").await;
    let (_tab, seen) = handshake(&gw, "?userId=c", None).await;
    refused(&seen, "connection limit");
    assert_eq!(gw.online().await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_hurts_nobody() {
    use futures_util::SinkExt;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let gw = Gateway::start_args(&[
        "--socket-buffer-packets",
        "16",
        "--max-dropped-sends",
        "4",
        "--ping-interval-ms",
        "500",
        "--ping-timeout-ms",
        "500",
    ])
    .await;
    let mut good = gw.tab("good").await;
    // A raw client that joins, then never reads another byte.
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&userId=stalled",
        gw.running.http_addr()
    );
    let (mut stalled, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    stalled.send(Message::text("40")).await.unwrap();
    gw.wait_online(|u| u == ["good", "stalled"]).await;

    let blob = "x".repeat(60_000);
    let (mut refused, mut sent) = (0, 0);
    for i in 0..2000 {
        match gw
            .send("stalled", json!({ "i": i, "blob": blob }))
            .await
            .unwrap()
        {
            1 => sent += 1,
            _ => refused += 1,
        }
        if i % 10 == 0 {
            assert_eq!(gw.send("good", json!({ "i": i })).await.unwrap(), 1);
        }
        if refused >= 4 {
            break;
        }
    }
    assert!(
        refused >= 4,
        "sends to a stalled reader were refused ({sent} taken first)"
    );
    // Buffered at most socket buffer + kernel buffers, never everything sent.
    assert!(sent < 2000);
    gw.wait_online(|u| u == ["good"]).await;
    assert_eq!(gw.send("stalled", json!("gone")).await.unwrap(), 0);
    for i in (0..sent + refused).step_by(10) {
        assert_eq!(good.first_arg("newMessage").await, json!({ "i": i }));
    }
    // The heartbeat closes the stalled connection for good: reading it now ends.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = stalled.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was closed");
}

/// The response head of a polling handshake sent with `origin`.
async fn polling_head(gw: &Gateway, origin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(gw.running.http_addr())
        .await
        .unwrap();
    let req = format!(
        "GET /socket.io/?EIO=4&transport=polling&userId=x HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(crate::support::WAIT, tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    text.split("\r\n\r\n").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_allowed_origins_only() {
    let open = Gateway::start().await;
    assert!(polling_head(&open, "http://anything.test")
        .await
        .contains("access-control-allow-origin: *"));

    let listed =
        Gateway::start_args(&["--cors-origins", "http://app.test,http://admin.test"]).await;
    let head = polling_head(&listed, "http://admin.test").await;
    assert!(
        head.contains("access-control-allow-origin: http://admin.test"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    let head = polling_head(&listed, "http://evil.test").await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    assert!(head.starts_with("http/1.1 403"), "{head}");

    // WebSocket handshakes are not covered by CORS: the origin check refuses them too.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws = |origin: &'static str| {
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket&userId=x",
            listed.running.http_addr()
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    assert!(
        ws("http://evil.test").await.is_err(),
        "a foreign page cannot open a WebSocket"
    );
    assert!(ws("http://app.test").await.is_ok());
}

/// A raw Engine.IO v4 WebSocket client: packets as they travel, pings answered.
struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl RawWs {
    /// Opens the transport (`query` after `transport=websocket`) and reads the open packet.
    async fn open(http: std::net::SocketAddr, query: &str) -> Self {
        let url = format!("ws://{http}/socket.io/?EIO=4&transport=websocket{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut raw = Self { ws };
        let open = raw.next().await.expect("open packet");
        assert!(open.starts_with("0{"), "{open}");
        raw
    }

    async fn send(&mut self, packet: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(packet))
            .await
            .unwrap();
    }

    /// The next packet other than a ping, or `None` once the connection ends.
    async fn next(&mut self) -> Option<String> {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::time::timeout(crate::support::WAIT, self.ws.next())
                .await
                .expect("a packet in time")?;
            match msg {
                Ok(m) if m.is_text() => {
                    let text = m.into_text().unwrap().to_string();
                    if text == "2" {
                        self.send("3").await;
                        continue;
                    }
                    return Some(text);
                }
                Ok(m) if m.is_close() => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Connects to the default namespace with `auth`; returns the server's answer packet.
    async fn connect(&mut self, auth: serde_json::Value) -> String {
        self.send(&format!("40{auth}")).await;
        self.next().await.expect("connect answer")
    }

    /// The arguments of the next event named `name` (`42[name,...]`); `None` if the
    /// connection ends first.
    async fn event(&mut self, name: &str) -> Option<Vec<serde_json::Value>> {
        loop {
            let packet = self.next().await?;
            if let Some(body) = packet.strip_prefix("42") {
                let mut args: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
                if args.first() == Some(&json!(name)) {
                    args.remove(0);
                    return Some(args);
                }
            }
        }
    }

    /// Emits `name` with `arg` and ack id `id`; returns the ack's first argument. Sent again
    /// while unanswered: socketioxide runs the connect handler, which registers the event
    /// handlers, only after sending the connect ack, so an event sent at once may find none.
    async fn call(&mut self, id: u32, name: &str, arg: serde_json::Value) -> serde_json::Value {
        let prefix = format!("43{id}");
        let deadline = tokio::time::Instant::now() + crate::support::WAIT;
        loop {
            self.send(&format!("42{id}{}", json!([name, arg]))).await;
            let answer = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    let packet = self.next().await.expect("the connection stays open");
                    if let Some(body) = packet.strip_prefix(&prefix) {
                        let args: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
                        return args.into_iter().next().unwrap();
                    }
                }
            })
            .await;
            match answer {
                Ok(value) => return value,
                Err(_) => assert!(tokio::time::Instant::now() < deadline, "no ack"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_audience_and_issuer_must_be_present_and_match() {
    let gw = Gateway::start_args(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "gw-aud",
        "--jwt-issuer",
        "https://issuer.example",
        "--cors-origins",
        "http://app.test",
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
        let (_tab, seen) =
            handshake(&gw, "", Some(json!({ "token": token(claims.clone()) }))).await;
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
        let (_tab, seen) =
            handshake(&gw, "", Some(json!({ "token": token(claims.clone()) }))).await;
        assert!(matches!(seen, Seen::Connected), "{claims}: {seen:?}");
    }
}

/// A gateway in jwt mode without clock leeway, for the expiry tests.
async fn strict_jwt_gateway() -> Gateway {
    Gateway::start_args(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--jwt-leeway-secs",
        "0",
        "--cors-origins",
        "http://app.test",
    ])
    .await
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
    let gw = Process::start_env(
        &[
            "--auth",
            "jwt",
            "--jwt-secret",
            SECRET,
            "--cors-origins",
            "http://app.test",
        ],
        &[("RUST_LOG", "debug")],
    );
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
    let mut grpc = MessagingClient::connect(format!("http://{}", gw.grpc))
        .await
        .unwrap();
    let sent = grpc
        .send_direct(SendDirectRequest {
            receiver_id: "alice".into(),
            message: Some(wire::from_json(&json!({ "text": body }))),
            ..Default::default()
        })
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

/// One HTTP/1.1 request on a fresh connection from `from`; the status and body.
async fn http(
    to: std::net::SocketAddr,
    from: std::net::IpAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(crate::support::WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Opens a polling session as `user`; its Engine.IO sid.
async fn polling_session(
    to: std::net::SocketAddr,
    from: std::net::IpAddr,
    user: &str,
) -> Option<String> {
    let (status, body) = http(
        to,
        from,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&userId={user}"),
        "",
    )
    .await;
    if status != 200 {
        return None;
    }
    let open: serde_json::Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    Some(open["sid"].as_str().unwrap().to_string())
}

/// Polls `sid` until a packet starting with `prefix` arrives, answering pings.
async fn poll_for(to: std::net::SocketAddr, sid: &str, prefix: &str) -> String {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    loop {
        let (status, body) = http(to, LOCAL, "GET", &path, "").await;
        assert_eq!(status, 200, "{body}");
        for packet in body.split('\u{1e}') {
            if packet == "2" {
                http(to, LOCAL, "POST", &path, "3").await;
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
    let sid = polling_session(addr, LOCAL, "victim").await.unwrap();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(addr, LOCAL, "POST", &path, "40").await.0, 200);
    let connect = poll_for(addr, &sid, "40").await;
    let public: serde_json::Value = serde_json::from_str(&connect[2..]).unwrap();
    let public = public["sid"].as_str().unwrap().to_string();
    assert_ne!(
        public, sid,
        "socket.id must not be the Engine.IO session id"
    );
    gw.wait_online(|u| u == ["victim"]).await;

    // Whoever learns socket.id can neither poll nor upgrade the victim's session with it.
    let steal = format!("/socket.io/?EIO=4&transport=polling&sid={public}");
    let (status, body) = http(addr, LOCAL, "GET", &steal, "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(http(addr, LOCAL, "POST", &steal, "40").await.0, 400);
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={public}");
    if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
        use futures_util::{SinkExt, StreamExt};
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::text("2probe"))
            .await;
        let answer = tokio::time::timeout(crate::support::QUIET, ws.next()).await;
        assert!(
            !matches!(&answer, Ok(Some(Ok(m))) if m.is_text()),
            "the upgrade with socket.id was answered: {answer:?}"
        );
    }
    assert_eq!(gw.send("victim", json!("for the victim")).await.unwrap(), 1);
    let got = poll_for(addr, &sid, "42").await;
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
    let ip = |last: u8| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last));
    let flood = |from: std::net::IpAddr, n: usize| {
        let to = gw.http;
        async move {
            let (mut sids, mut refused, mut refusal) = (Vec::new(), 0, String::new());
            for _ in 0..n {
                let path = "/socket.io/?EIO=4&transport=polling&userId=u";
                match http(to, from, "GET", path, "").await {
                    (200, body) => sids.push(body),
                    (429, body) => {
                        refused += 1;
                        refusal = body;
                    }
                    other => panic!("{other:?}"),
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
    let open: serde_json::Value = serde_json::from_str(one[0].strip_prefix('0').unwrap()).unwrap();
    let path = format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().unwrap()
    );
    assert_eq!(http(gw.http, LOCAL, "POST", &path, "40").await.0, 200);
    tokio::time::timeout(crate::support::WAIT, async {
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
        let start = std::time::Instant::now();
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
        use futures_util::StreamExt;
        let open = tokio::time::timeout(crate::support::WAIT, ws.next()).await;
        assert!(
            matches!(&open, Ok(Some(Ok(m))) if m.to_text().unwrap_or("").starts_with('0')),
            "{open:?}"
        );
        drop(ws); // TCP closed with no close frame and no `40`
    }
    for round in 0..2 * LIMIT {
        let start = std::time::Instant::now();
        let sid = loop {
            match polling_session(gw.http, LOCAL, "u").await {
                Some(sid) => break sid,
                None if start.elapsed() < within => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                None => panic!("polling round {round}: no slot {within:?} after the last close"),
            }
        };
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        assert_eq!(http(gw.http, LOCAL, "POST", &path, "1").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_and_blank_user_ids_are_refused() {
    let gw = Gateway::start().await;
    for id in [
        "   ",
        "\u{3000}",
        "admin\u{202E}nimda",
        "al\u{200B}ice",
        "\u{2066}bob\u{2069}",
        "\u{FEFF}carol",
        "\u{3164}",
    ] {
        let (_tab, seen) = handshake(&gw, "", Some(json!({ "userId": id }))).await;
        refused(&seen, "invalid user id");
        let status = gw.send(id, json!("x")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id:?}");
        assert!(
            status.message().contains("receiver_id"),
            "{}",
            status.message()
        );
    }
    assert!(gw.online().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_text_grpc_and_open_metrics_off_loopback_are_warned_about() {
    let gw = Process::start(&[
        "--grpc-addr",
        "0.0.0.0:0",
        "--api-key",
        "k1",
        "--metrics-addr",
        "0.0.0.0:0",
    ]);
    let logs = gw.logs();
    assert!(
        logs.contains("gRPC without TLS on a non-loopback address"),
        "{logs}"
    );
    assert!(
        logs.contains("--metrics-addr on a non-loopback address"),
        "{logs}"
    );
    let quiet = Process::start(&["--metrics-addr", "127.0.0.1:0"]);
    let logs = quiet.logs();
    assert!(!logs.contains("non-loopback"), "{logs}");
}
