//! `/metrics` scraped and parsed (prometheus-parse) after known traffic: every counter equals
//! what the test did (issue 12.6).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use messaging_gateway::{
    proto::{SendDirectRequest, SendStreamRequest},
    wire,
};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use tonic::Code;

use crate::support::{
    http::{self, Reply},
    Gateway, Seen, WAIT,
};

struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Scrapes until the unlabelled `name` reaches `at_least` (counters move just after the
    /// sends they count), or [`WAIT`] passes; returns the last scrape either way.
    async fn scrape_when(gw: &Gateway, name: &str, at_least: f64) -> Self {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = Self::scrape(gw).await;
            if m.value(name, &[]) >= at_least || tokio::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn scrape(gw: &Gateway) -> Self {
        let addr = gw.running.metrics_addr().expect("metrics listener");
        let Reply { status, head, body } = http::get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape = Scrape::parse(lines).expect("parses");
        // The parser skips what it cannot read: every sample line must have been read.
        let histogram_buckets = body.lines().filter(|l| l.contains("_bucket{")).count();
        let histograms = scrape
            .samples
            .iter()
            .filter_map(|s| match &s.value {
                Value::Histogram(h) => Some(h.len()),
                _ => None,
            })
            .sum::<usize>();
        let plain = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
            .count();
        assert_eq!(histograms, histogram_buckets, "{body}");
        assert_eq!(
            scrape.samples.len() - histogram_count(&scrape.samples),
            plain,
            "{body}"
        );
        for sample in &scrape.samples {
            let name = sample.metric.as_str();
            let base = ["_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            let base = base.strip_suffix("_total").unwrap_or(base);
            assert!(
                scrape.docs.contains_key(name)
                    || scrape.docs.contains_key(base)
                    || scrape.docs.contains_key(&format!("{base}_total")),
                "{name} has no HELP"
            );
        }
        Self {
            samples: scrape.samples,
        }
    }

    /// The value of the sample `name` whose labels include `labels`; panics when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        match &found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().find(|b| b.less_than.is_infinite()).unwrap().count,
            Value::Summary(_) => panic!("no summaries here"),
        }
    }

    fn labels(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| (*s.labels).clone())
            .collect()
    }
}

fn histogram_count(samples: &[Sample]) -> usize {
    samples
        .iter()
        .filter(|s| matches!(s.value, Value::Histogram(_)))
        .count()
}

fn json_len(list: &[&str]) -> f64 {
    serde_json::to_string(list).unwrap().len() as f64
}

/// A `presence: "changes"` tab: its first list in a round is a resync, each later presence
/// change one change set; a `presence` value outside the modes is a refused handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_and_resyncs_are_counted() {
    let gw = Gateway::start_args(&["--metrics-addr", "127.0.0.1:0"]).await;
    let (mut watcher, seen) = gw.handshake("?userId=watcher&presence=changes", None).await;
    assert!(matches!(seen, Seen::Connected), "{seen:?}");
    assert_eq!(
        watcher.first_arg("getOnlineUsers").await,
        json!(["watcher"])
    );
    let other = gw.tab("other").await;
    assert_eq!(
        watcher.first_arg("onlineUsersChanged").await,
        json!({ "online": ["other"], "offline": [] })
    );
    other.close().await;
    assert_eq!(
        watcher.first_arg("onlineUsersChanged").await,
        json!({ "online": [], "offline": ["other"] })
    );
    let (_bad, seen) = gw.handshake("?userId=x&presence=all", None).await;
    assert!(matches!(seen, Seen::Error(_)));
    // Counted just after the round's sends: wait for the last one.
    let m = Metrics::scrape_when(&gw, "gateway_presence_changes_total", 2.0).await;
    assert_eq!(m.value("gateway_presence_resyncs_total", &[]), 1.0);
    assert_eq!(m.value("gateway_presence_changes_total", &[]), 2.0);
    let labels = [("cause", "invalid_presence_mode")];
    assert_eq!(m.value("gateway_handshakes_refused_total", &labels), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_equal_the_traffic_the_test_made() {
    let gw = Gateway::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--max-pending-sessions-per-ip",
        "2",
    ])
    .await;

    // Three presence changes, each seen by every tab before the next: three broadcasts.
    let mut alice = gw.tab("alice").await;
    alice.online_until(|u| u == ["alice"]).await;
    let mut bob = gw.tab("bob").await;
    bob.online_until(|u| u == ["alice", "bob"]).await;
    alice.online_until(|u| u == ["alice", "bob"]).await;

    // Two refused Socket.IO handshakes, then two pending sessions from another address and a
    // third one refused with 429.
    let (_anonymous, seen) = gw.handshake("", None).await;
    assert!(matches!(seen, Seen::Error(_)));
    let long = format!("?userId={}", "x".repeat(129));
    let (_invalid, seen) = gw.handshake(&long, None).await;
    assert!(matches!(seen, Seen::Error(_)));
    let addr = gw.running.http_addr();
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let handshake = || {
        http::request(
            other,
            addr,
            "GET",
            "/socket.io/?EIO=4&transport=polling",
            &[],
            "",
        )
    };
    for _ in 0..2 {
        assert_eq!(handshake().await.status, 200);
    }
    assert_eq!(handshake().await.status, 429);

    // SendDirect: three delivered, one to a user who is offline, one INVALID_ARGUMENT.
    for i in 0..3 {
        assert_eq!(gw.send("bob", json!({ "i": i })).await.unwrap(), 1);
    }
    assert_eq!(gw.send("carol", json!(1)).await.unwrap(), 0);
    let bad = gw
        .send_request(SendDirectRequest {
            receiver_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    for i in 0..3 {
        assert_eq!(bob.first_arg("newMessage").await, json!({ "i": i }));
    }

    bob.close().await;
    alice.online_until(|u| u == ["alice"]).await;

    // The broadcast is counted just after it is sent: wait for it, then everything must match.
    let m = Metrics::scrape_when(&gw, "gateway_presence_broadcasts_total", 3.0).await;
    assert_eq!(m.value("gateway_presence_broadcasts_total", &[]), 3.0);
    let bytes = json_len(&["alice"]) + 2.0 * json_len(&["alice", "bob"]) + json_len(&["alice"]);
    assert_eq!(
        m.value("gateway_presence_broadcast_bytes_total", &[]),
        bytes
    );
    assert_eq!(m.value("gateway_connections_total", &[]), 2.0);
    assert_eq!(m.value("gateway_sockets", &[]), 1.0);
    assert_eq!(m.value("gateway_online_users", &[]), 1.0);
    assert_eq!(m.value("gateway_local_online_users", &[]), 1.0);
    assert_eq!(m.value("gateway_deliveries_total", &[]), 3.0);
    assert_eq!(m.value("gateway_refusals_total", &[]), 0.0);
    assert_eq!(m.value("gateway_sockets_cut_off_total", &[]), 0.0);
    assert_eq!(m.value("gateway_client_floods_total", &[]), 0.0);
    assert_eq!(m.value("gateway_presence_changes_total", &[]), 0.0);
    assert_eq!(m.value("gateway_presence_resyncs_total", &[]), 0.0);
    for (cause, n) in [
        ("missing_user_id", 1.0),
        ("invalid_user_id", 1.0),
        ("pending_sessions", 1.0),
        ("unauthorized", 0.0),
        ("at_capacity", 0.0),
        ("invalid_presence_mode", 0.0),
    ] {
        let labels = [("cause", cause)];
        assert_eq!(
            m.value("gateway_handshakes_refused_total", &labels),
            n,
            "{cause}"
        );
    }

    let send_direct = |code| {
        [
            ("service", "messaging.v1.Messaging"),
            ("method", "SendDirect"),
            ("code", code),
        ]
    };
    let hist = "gateway_rpc_duration_seconds";
    assert_eq!(m.value(hist, &send_direct("OK")), 4.0);
    assert_eq!(m.value(&format!("{hist}_count"), &send_direct("OK")), 4.0);
    assert_eq!(m.value(hist, &send_direct("INVALID_ARGUMENT")), 1.0);
    assert_eq!(
        m.value(&format!("{hist}_count"), &send_direct("INVALID_ARGUMENT")),
        1.0
    );
    assert!(m.value(&format!("{hist}_sum"), &send_direct("OK")) > 0.0);
    // No other series: only what was called, with the codes it ended with.
    let series = m.labels(&format!("{hist}_count"));
    assert_eq!(series.len(), 2, "{series:?}");
    // Single node: no cluster series.
    assert!(m.labels("gateway_redis_up").is_empty());
}

/// A streaming call is recorded when its stream ends, with the status of its trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_recorded_at_its_end_with_its_trailer_status() {
    let gw = Gateway::start_args(&["--metrics-addr", "127.0.0.1:0"]).await;
    let requests = (0..5u64).map(|id| SendStreamRequest {
        receiver_id: format!("u{id}"),
        message: Some(wire::from_json(&json!(id))),
        id,
        ..Default::default()
    });
    let mut responses = gw.send_stream(requests).await;
    let mut n = 0;
    while responses.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5);
    let labels = [("method", "SendStream"), ("code", "OK")];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(&gw).await;
        let found = m.labels("gateway_rpc_duration_seconds_count").len();
        if found == 1 {
            assert_eq!(m.value("gateway_rpc_duration_seconds_count", &labels), 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The metrics table of docs/metrics.md names exactly the series a scrape shows, with their
/// types (the cluster-only rows are checked in cluster mode by the scrapes in tests/it/cluster/).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_doc_lists_exactly_what_is_served() {
    let table = include_str!("../../docs/metrics.md");
    let mut documented: Vec<(String, String)> = table
        .lines()
        .filter(|l| l.starts_with("| `gateway_") && !l.contains("cluster mode only"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect();
    documented.sort();

    let gw = Gateway::start_args(&["--metrics-addr", "127.0.0.1:0"]).await;
    // One call, so the histogram has a series and its TYPE line.
    assert_eq!(gw.send("nobody", json!(1)).await.unwrap(), 0);
    let body = gw.metrics_text().await;
    let mut served: Vec<(String, String)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect();
    served.sort();
    assert_eq!(documented, served);
}
