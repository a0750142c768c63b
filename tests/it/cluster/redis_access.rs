//! Redis is a full-trust boundary, so the gateway must run with as little of it as it needs:
//! as the README's ACL user (only its `mg:` keys and channels, only the commands it sends, the
//! README line applied verbatim; on one Redis and on a Redis Cluster) and over `rediss://`
//! with a private CA (`--redis-tls-ca`, or `SSL_CERT_FILE` for the system store).

use std::process::Command;

use messaging_gateway::proto::SendDirectRequest;
use rust_socketio::TransportType;
use serde_json::json;

use super::{nodes, send};
use crate::support::{
    config, direct,
    process::Process,
    redis::{free_port, Redis, RedisCluster},
    require, Tab,
};

/// The README's `ACL SETUSER` line for the gateway's user (Security section).
fn readme_acl_line() -> Vec<&'static str> {
    let line = include_str!("../../../README.md")
        .lines()
        .find(|l| l.starts_with("ACL SETUSER gateway "))
        .expect("README.md has the gateway's ACL SETUSER line");
    line.split_whitespace().collect()
}

/// The gateway user's password in the README's line.
const GATEWAY_PASSWORD: &str = "GATEWAY-PASSWORD";
/// The default user's password once the test locked it.
const ADMIN_PASSWORD: &str = "admin-secret-for-the-test";

/// `redis-cli` on `port` as `user` (none: unauthenticated): its output, replies and errors.
fn cli(port: u16, user: Option<(&str, &str)>, args: &[&str]) -> String {
    require("redis-cli", "apt-get install -y redis-server");
    let mut command = Command::new("redis-cli");
    command.args(["-p", &port.to_string(), "--no-auth-warning"]);
    if let Some((user, password)) = user {
        command.args(["--user", user, "--pass", password]);
    }
    let out = command.args(args).output().expect("redis-cli runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_owned()
}

const ADMIN: Option<(&str, &str)> = Some(("default", ADMIN_PASSWORD));
const GATEWAY: Option<(&str, &str)> = Some(("gateway", GATEWAY_PASSWORD));

/// Applies the README's lines to the Redis on `port`: the gateway's user, and a password on
/// the default user.
fn apply_readme_acl(port: u16) {
    assert_eq!(cli(port, None, &readme_acl_line()), "OK");
    let lock = [
        "ACL",
        "SETUSER",
        "default",
        "resetpass",
        &format!(">{ADMIN_PASSWORD}"),
    ];
    assert_eq!(cli(port, None, &lock), "OK");
    assert!(cli(port, None, &["GET", "mg:cursor-key"]).contains("NOAUTH"));
}

/// The `--redis-url` of the gateway's user on `port`.
fn gateway_url(port: u16) -> String {
    format!("redis://gateway:{GATEWAY_PASSWORD}@127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_run_as_the_readme_acl_user_and_it_reaches_nothing_else() {
    let redis = Redis::start().await;
    let port = redis.port;
    apply_readme_acl(port);
    let [a, b] = nodes(&gateway_url(port), &[]).await;
    // Presence: a tab on b is online on a.
    let mut alice = b.tab("alice").await;
    a.wait_presence("alice", 1).await;
    // A cross-node SendDirect, then its idempotent retry.
    let keyed = || SendDirectRequest {
        idempotency_key: "acl-1".into(),
        ..direct("alice", json!({ "via": "a" }))
    };
    assert_eq!(a.send_request(keyed()).await.unwrap(), 1);
    assert_eq!(alice.first_arg("newMessage").await, json!({ "via": "a" }));
    assert_eq!(a.send_request(keyed()).await.unwrap(), 1);
    alice.expect_no("newMessage").await;
    // The mailbox: kept on a for carol, offline; delivered when she connects on b.
    let kept = a
        .send_direct(SendDirectRequest {
            ttl_seconds: 60,
            ..direct("carol", json!("kept"))
        })
        .await
        .unwrap();
    assert!(kept.queued, "{kept:?}");
    let mut carol = b.tab("carol").await;
    assert_eq!(carol.first_arg("newMessage").await, json!("kept"));
    // Broadcasts go over a channel of their own.
    a.broadcast(json!("all"), "notice").await;
    assert_eq!(alice.first_arg("notice").await, json!("all"));
    // A node leaving takes its users out of presence on the others.
    b.running.stop().await.unwrap();
    a.wait_presence("alice", 0).await;
    assert_eq!(send(&a, "alice", json!(0)).await.unwrap(), (0, false));

    // Redis refused the gateway nothing it sent.
    assert_eq!(cli(port, ADMIN, &["ACL", "LOG"]), "");
    // The user reaches no key, channel or command outside its own.
    assert_eq!(cli(port, ADMIN, &["SET", "app:secret", "x"]), "OK");
    for denied in [
        &["GET", "app:secret"][..],
        &["SET", "app:other", "x"],
        &["PUBLISH", "app:events", "x"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["FLUSHALL"],
        &["CONFIG", "GET", "requirepass"],
        &["ACL", "LIST"],
    ] {
        let reply = cli(port, GATEWAY, denied);
        assert!(reply.contains("NOPERM"), "{denied:?}: {reply}");
    }
    // What it can read is the gateway's own: the page-token key among them (README: a full
    // trust boundary).
    let cursor = cli(port, GATEWAY, &["GET", "mg:cursor-key"]);
    assert_eq!(cursor.len(), 64, "{cursor}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_run_as_the_readme_acl_user_on_a_redis_cluster() {
    let redis = RedisCluster::start().await;
    let ports = redis.ports();
    for &port in &ports {
        apply_readme_acl(port);
    }
    let urls: Vec<String> = ports.iter().map(|&p| gateway_url(p)).collect();
    let [a, b] = nodes(&urls.join(","), &["--redis-cluster"]).await;
    let mut alice = b.tab("alice").await;
    a.wait_presence("alice", 1).await;
    assert_eq!(
        send(&a, "alice", json!("sharded")).await.unwrap(),
        (1, false)
    );
    assert_eq!(alice.first_arg("newMessage").await, json!("sharded"));
    for port in ports {
        assert_eq!(cli(port, ADMIN, &["ACL", "LOG"]), "", "master {port}");
    }
}

/// A test CA and a certificate it signed for 127.0.0.1, as PEM: (ca, cert, key).
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_rediss_trusting_the_redis_ca() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = pki();
    let (ca, cert, key) = (
        write("ca.pem", &ca),
        write("redis.pem", &cert),
        write("redis.key", &key),
    );
    let other_ca = write("other-ca.pem", &pki().0);
    let tls_port = free_port().to_string();
    // The plain port stays open for the launcher's readiness check only.
    let redis = Redis::start_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let url = format!("rediss://127.0.0.1:{tls_port}");

    // A CA that did not sign the server's certificate: the node refuses to start.
    let refused =
        messaging_gateway::start(config(&["--redis-url", &url, "--redis-tls-ca", &other_ca]))
            .await
            .err()
            .expect("a Redis certificate the CA did not sign is refused");
    assert!(
        refused.to_string().contains("InvalidCertificate") && !refused.to_string().contains('\n'),
        "{refused}"
    );

    let [a, b] = nodes(&url, &["--redis-tls-ca", &ca]).await;
    let mut alice = b.tab("alice").await;
    a.wait_presence("alice", 1).await;
    assert_eq!(
        send(&a, "alice", json!("over TLS")).await.unwrap(),
        (1, false)
    );
    assert_eq!(alice.first_arg("newMessage").await, json!("over TLS"));
    // Without the flag the system store is trusted, which SSL_CERT_FILE replaces.
    let c = Process::start_env(&["--redis-url", &url], &[("SSL_CERT_FILE", &ca)]);
    let mut bob = Tab::connect(
        &format!("http://{}/", c.http),
        Some("bob"),
        TransportType::Websocket,
    )
    .await;
    a.wait_presence("bob", 1).await;
    assert_eq!(send(&a, "bob", json!("via c")).await.unwrap(), (1, false));
    assert_eq!(bob.first_arg("newMessage").await, json!("via c"));
    // Every connection of the nodes is on the TLS port.
    let clients = cli(redis.port, None, &["CLIENT", "LIST"]);
    let on_tls = clients
        .lines()
        .filter(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port} ")))
        .count();
    assert!(
        on_tls >= 6,
        "three nodes, each a command and a subscriber client:\n{clients}"
    );
    assert_eq!(on_tls, clients.lines().count() - 1, "{clients}");
}
