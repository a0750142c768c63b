//! Named callers with permissions: what an API key or a client certificate may call, the
//! caller in PERMISSION_DENIED, logs and metrics, and the rules for keys themselves.

use messaging_gateway::proto::{
    messaging_client::MessagingClient, BroadcastRequest, DisconnectUserRequest, GetPresenceRequest,
    ListOnlineRequest, SetWatchlistRequest, WatchPresenceRequest,
};
use serde_json::json;
use tonic::{transport::Channel, Code, Status};

use super::access::{pki, tls_channel, Pki};
use crate::support::{
    direct,
    grpc::{self, authorized, ANALYTICS, ORDERS},
    process::{run_to_exit, Process},
    Gateway,
};

const LEGACY: &str = "legacy-key-0123456789";

/// The callers file of the issue's company: orders sends, analytics reads presence, and a
/// legacy key from before permissions.
const CALLERS: &str = "\
orders-key-0123456789 name=orders allow=SendDirect,SendToUsers,SendStream
analytics-key-0123456789 name=analytics allow=GetPresence,ListOnline # read-only
legacy-key-0123456789
";

fn denied(result: Result<impl Sized, Status>, caller: &str, method: &str) {
    let status = result.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        format!("caller \"{caller}\" may not call messaging.v1.Messaging/{method}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_calls_only_what_its_line_allows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("callers");
    std::fs::write(&file, CALLERS).unwrap();
    let gw = Gateway::start_args(&[
        "--api-keys-file",
        file.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .await;
    let mut client = gw.grpc.clone();
    let mut alice = gw.tab("alice").await;

    // The analytics job can read presence, and nothing else.
    let presence = GetPresenceRequest {
        user_ids: vec!["alice".into()],
    };
    let users = client
        .get_presence(authorized(presence.clone(), ANALYTICS))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert!(users[0].online);
    let disconnect = DisconnectUserRequest {
        user_id: "alice".into(),
        reason: "account suspended".into(),
    };
    denied(
        client
            .disconnect_user(authorized(disconnect.clone(), ANALYTICS))
            .await,
        "analytics",
        "DisconnectUser",
    );
    let broadcast = BroadcastRequest {
        event: "maintenance".into(),
        message: Some(messaging_gateway::wire::from_json(&json!("down at 5"))),
        ..Default::default()
    };
    denied(
        client
            .broadcast(authorized(broadcast.clone(), ANALYTICS))
            .await,
        "analytics",
        "Broadcast",
    );
    let watch = WatchPresenceRequest { snapshot: true };
    denied(
        client.watch_presence(authorized(watch, ANALYTICS)).await,
        "analytics",
        "WatchPresence",
    );
    let watchlist = SetWatchlistRequest {
        user_id: "alice".into(),
        user_ids: vec!["bob".into()],
    };
    denied(
        client.set_watchlist(authorized(watchlist, ANALYTICS)).await,
        "analytics",
        "SetWatchlist",
    );
    denied(
        client
            .send_direct(authorized(direct("alice", json!("forged")), ANALYTICS))
            .await,
        "analytics",
        "SendDirect",
    );
    alice.expect_no("disconnectReason").await;
    alice.expect_no("maintenance").await;
    alice.expect_no("newMessage").await;

    // Orders sends, and cannot read presence.
    let sent = client
        .send_direct(authorized(direct("alice", json!("shipped")), ORDERS))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.delivered_sockets, 1);
    assert_eq!(alice.first_arg("newMessage").await, json!("shipped"));
    denied(
        client.get_presence(authorized(presence, ORDERS)).await,
        "orders",
        "GetPresence",
    );

    // A line without allow= keeps the old meaning: everything.
    let (n, _) = client
        .disconnect_user(authorized(disconnect, LEGACY))
        .await
        .map(|r| (r.into_inner().disconnected_sockets, ()))
        .unwrap();
    assert_eq!(n, 1);
    assert!(client
        .list_online(authorized(ListOnlineRequest::default(), ORDERS))
        .await
        .is_err());

    // Calls are labelled by caller, refusals included.
    let metrics = gw.metrics_text().await;
    for needle in [
        "method=\"DisconnectUser\",caller=\"analytics\",code=\"PERMISSION_DENIED\"",
        "method=\"SendDirect\",caller=\"orders\",code=\"OK\"",
        "method=\"GetPresence\",caller=\"analytics\",code=\"OK\"",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gateway_rpc_duration_seconds_count") && l.contains(needle)),
            "{needle} not in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_callers_and_warns_about_keys_allowed_everything() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("callers");
    std::fs::write(&file, CALLERS).unwrap();
    let gw = Process::start(&["--api-keys-file", file.to_str().unwrap()]);
    let mut client = MessagingClient::new(grpc::channel(gw.grpc).await.unwrap());
    let legacy = crate_unnamed(LEGACY);
    let warning = gw
        .log_line("API keys without allow= may call every RPC")
        .await;
    assert!(warning.contains(&legacy), "{warning}");

    let disconnect = || DisconnectUserRequest {
        user_id: "alice".into(),
        reason: "x".into(),
    };
    assert!(client
        .disconnect_user(authorized(disconnect(), ANALYTICS))
        .await
        .is_err());
    let refusal = gw.log_line("gRPC call not permitted").await;
    assert!(
        refusal.contains("caller=\"analytics\"") && refusal.contains("DisconnectUser"),
        "{refusal}"
    );
    client
        .disconnect_user(authorized(disconnect(), LEGACY))
        .await
        .unwrap();
    let audit = gw.log_line("user disconnected").await;
    assert!(
        audit.contains(&legacy) && audit.contains("alice"),
        "{audit}"
    );
    assert!(!gw.logs().contains(LEGACY), "a key never reaches the log");
}

/// The name a key without `name=` gets in logs and metrics.
fn crate_unnamed(key: &str) -> String {
    messaging_gateway::caller::unnamed(key)
}

#[test]
fn keys_are_sixteen_bytes() {
    let (code, stderr) = run_to_exit(&["--api-key", "x"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is 1 bytes; use at least 16"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Before, `--api-key 'long,a'` was split and the one-byte key `a` accepted.
async fn a_key_with_a_comma_works_and_the_environment_holds_several() {
    let with_comma = "long-key-0123456789,a";
    let gw = Process::start(&["--api-key", with_comma]);
    let mut client = MessagingClient::new(grpc::channel(gw.grpc).await.unwrap());
    let list = ListOnlineRequest::default;
    assert!(client
        .list_online(authorized(list(), with_comma))
        .await
        .is_ok());
    assert_eq!(
        client
            .list_online(authorized(list(), "a"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let keys = format!("{ORDERS},{ANALYTICS}");
    let gw = Process::start_env(&[], &[("GATEWAY_API_KEYS", &keys)]);
    let mut client = MessagingClient::new(grpc::channel(gw.grpc).await.unwrap());
    for key in [ORDERS, ANALYTICS] {
        assert!(
            client.list_online(authorized(list(), key)).await.is_ok(),
            "{key}"
        );
    }
}

/// A TLS channel presenting a client certificate the test CA issued for `name`.
async fn as_client(addr: std::net::SocketAddr, pki: &Pki, name: &str) -> Channel {
    let (cert, key) = (pki.issue)(name);
    tls_channel(addr, pki, Some((&cert, &key))).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_callers_with_the_same_permissions() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = pki.server_files(dir.path());
    let callers = Pki::write(
        dir.path(),
        "callers",
        "orders.internal allow=SendDirect\nanalytics.internal name=analytics allow=GetPresence\n",
    );
    // A client CA is caller authentication: no --insecure needed off loopback.
    let tls = [
        "--grpc-addr",
        "0.0.0.0:0",
        "--grpc-tls-cert",
        &cert,
        "--grpc-tls-key",
        &key,
        "--grpc-client-ca",
        &ca,
    ];
    let mapped = Process::start(&[&tls[..], &["--grpc-client-callers-file", &callers]].concat());
    let addr = mapped.grpc;
    let mut orders = MessagingClient::new(as_client(addr, &pki, "orders.internal").await);
    let mut analytics = MessagingClient::new(as_client(addr, &pki, "analytics.internal").await);
    let mut stranger = MessagingClient::new(as_client(addr, &pki, "intern.internal").await);
    assert!(orders.send_direct(direct("bob", json!(1))).await.is_ok());
    denied(
        orders.get_presence(GetPresenceRequest::default()).await,
        "orders.internal",
        "GetPresence",
    );
    let answer = analytics
        .get_presence(GetPresenceRequest {
            user_ids: vec!["bob".into()],
        })
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    denied(
        analytics
            .disconnect_user(DisconnectUserRequest {
                user_id: "alice".into(),
                reason: "account suspended".into(),
            })
            .await,
        "analytics",
        "DisconnectUser",
    );
    let status = stranger
        .list_online(ListOnlineRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("intern.internal"), "{status:?}");
    drop(mapped);

    // Without a callers file every certificate the CA signed may call everything, said at start.
    let open = Process::start(&tls);
    assert!(
        open.logs()
            .contains("every client certificate --grpc-client-ca signed may call every RPC"),
        "{}",
        open.logs()
    );
    let mut anyone = MessagingClient::new(as_client(open.grpc, &pki, "intern.internal").await);
    assert!(anyone
        .list_online(ListOnlineRequest::default())
        .await
        .is_ok());
}
