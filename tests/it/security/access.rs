//! Who may reach the ports: unsafe configurations refused at startup, API keys, TLS and mTLS,
//! CORS, and warnings about what is exposed off loopback.

use messaging_gateway::proto::{messaging_client::MessagingClient, ListOnlineRequest};
use serde_json::json;
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request,
};

use crate::support::{
    config, direct,
    grpc::{self, authorized, SERVING},
    http,
    jwt::SECRET,
    process::Process,
    Gateway,
};

/// A key long enough to be accepted.
const KEY: &str = "key-one-0123456789";

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
        let err = messaging_gateway::start(config(&args))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_messaging_and_reflection_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, "# ops keys\nfile-key-0123456789\n\n").unwrap();
    let gw = Gateway::start_args(&[
        "--api-key",
        KEY,
        "--api-keys-file",
        keys_file.to_str().unwrap(),
    ])
    .await;
    let mut client = gw.grpc.clone();
    let list = || ListOnlineRequest {
        page_size: 10,
        page_token: String::new(),
    };

    for key in [KEY, "file-key-0123456789"] {
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
    let send = direct("a", json!(1));
    assert_eq!(
        client
            .send_direct(Request::new(send.clone()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert!(client.send_direct(authorized(send, KEY)).await.is_ok());

    // Health stays open for load balancers.
    let channel = gw.channel().await;
    assert_eq!(grpc::health(channel.clone(), "").await.unwrap(), SERVING);

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
        .server_reflection_info(authorized(tokio_stream::iter([req()]), KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

/// Signs a client certificate for a DNS name: its (certificate, key) PEMs.
type Issue = Box<dyn Fn(&str) -> (String, String)>;

pub(super) struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
    /// Signs more client certificates.
    pub issue: Issue,
}

pub(super) fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let ca = std::sync::Arc::new(ca);
    let signer = ca.clone();
    let leaf = move |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &*signer)
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
        issue: Box::new(leaf),
    }
}

impl Pki {
    /// Writes `name` holding `body` into `dir`: its path.
    pub fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// The server's certificate, key and the CA, written into `dir`: their paths.
    pub fn server_files(&self, dir: &std::path::Path) -> (String, String, String) {
        (
            Self::write(dir, "server.pem", &self.server_cert),
            Self::write(dir, "server.key", &self.server_key),
            Self::write(dir, "ca.pem", &self.ca),
        )
    }
}

/// A TLS channel trusting the test CA, presenting `identity` (certificate and key PEMs).
pub(super) async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
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
    let (cert, key, ca) = pki.server_files(dir.path());

    // TLS: a client trusting the CA talks; a plaintext client does not.
    let running =
        messaging_gateway::start(config(&["--grpc-tls-cert", &cert, "--grpc-tls-key", &key]))
            .await
            .unwrap();
    let channel = tls_channel(running.grpc_addr(), &pki, None).await.unwrap();
    let page = MessagingClient::new(channel)
        .list_online(ListOnlineRequest::default())
        .await
        .unwrap();
    assert_eq!(page.into_inner().total, 0);
    let plain = grpc::channel(running.grpc_addr()).await;
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
    let channel = tls_channel(
        running.grpc_addr(),
        &pki,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .unwrap();
    assert!(MessagingClient::new(channel)
        .list_online(ListOnlineRequest::default())
        .await
        .is_ok());
    let anonymous = match tls_channel(running.grpc_addr(), &pki, None).await {
        Ok(channel) => MessagingClient::new(channel)
            .list_online(ListOnlineRequest::default())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate is turned away");
    running.stop().await.unwrap();
}

/// The response head of a polling handshake sent with `origin`.
async fn polling_head(gw: &Gateway, origin: &str) -> String {
    let path = "/socket.io/?EIO=4&transport=polling&userId=x";
    let reply = http::request(
        http::LOCAL,
        gw.running.http_addr(),
        "GET",
        path,
        &[("Origin", origin)],
        "",
    )
    .await;
    reply.head.to_lowercase()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_text_grpc_and_open_metrics_off_loopback_are_warned_about() {
    let gw = Process::start(&[
        "--grpc-addr",
        "0.0.0.0:0",
        "--api-key",
        KEY,
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
