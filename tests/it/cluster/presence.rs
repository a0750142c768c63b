//! The presence API for backends across nodes.

use messaging_gateway::{
    presence,
    proto::{watch_presence_response::Item, WatchPresenceRequest},
};
use serde_json::json;

use super::{nodes, send};
use crate::support::{grpc::next_watch_item, redis::Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_api_works_across_nodes() {
    let redis = Redis::start().await;
    let [a, b, c] = nodes(&redis.url(), &[]).await;
    let mut watchers = Vec::new();
    for gw in [&a, &c] {
        let mut w = gw
            .grpc
            .clone()
            .watch_presence(WatchPresenceRequest { snapshot: true })
            .await
            .unwrap()
            .into_inner();
        let Item::Snapshot(snap) = next_watch_item(&mut w).await.unwrap() else {
            panic!("the snapshot first");
        };
        assert!(snap.user_ids.is_empty() && snap.last);
        watchers.push((w, snap.sequence));
    }

    let before = presence::unix_ms();
    let mut alice_a = a.tab("alice").await;
    // Registered just after the connect ack: the time is read once C knows of it.
    c.wait_presence("alice", 1).await;
    let after_first = presence::unix_ms();
    let mut alice_b1 = b.tab("alice").await;
    let mut alice_b2 = b.tab("alice").await;
    let mut bob_c = c.tab("bob").await;
    // GetPresence on every node: cluster-wide counts, and the earliest since (A's tab).
    for gw in [&a, &b, &c] {
        let alice = gw.wait_presence("alice", 3).await;
        assert!(alice.online);
        assert!(
            (before..=after_first).contains(&alice.online_since_unix_ms),
            "since is A's first tab: {before} <= {} <= {after_first}",
            alice.online_since_unix_ms
        );
        gw.wait_presence("bob", 1).await;
    }

    // Broadcast from C: one publish, every node answers its own counts.
    let r = c
        .broadcast(json!({"notice": "restart"}), "maintenance")
        .await;
    // alice (on A and on B) counts once, bob (on C) once.
    assert_eq!(
        (r.users, r.sockets, r.refused_sockets, r.partial),
        (2, 4, 0, false)
    );
    for t in [&mut alice_a, &mut alice_b1, &mut alice_b2, &mut bob_c] {
        assert_eq!(
            t.first_arg("maintenance").await,
            json!({"notice": "restart"})
        );
    }
    bob_c.expect_no("maintenance").await;

    // DisconnectUser from C, which holds no socket of alice: A and B disconnect theirs.
    assert_eq!(
        c.disconnect("alice", "account suspended").await.unwrap(),
        (3, false)
    );
    for t in [&mut alice_a, &mut alice_b1, &mut alice_b2] {
        assert_eq!(
            t.first_arg("disconnectReason").await,
            json!("account suspended")
        );
    }
    // Offline at once on the node that was asked, soon on the others.
    assert!(!c.presence(&["alice"]).await.unwrap()[0].online);
    for gw in [&a, &b] {
        gw.wait_presence("alice", 0).await;
    }
    bob_c.online_until(|l| l == ["bob"]).await;
    assert_eq!(send(&a, "alice", json!("gone?")).await.unwrap(), (0, false));
    alice_a.expect_no("newMessage").await;

    // Each watcher saw the same changes, in order, with consecutive sequence numbers.
    for (w, mut seq) in watchers {
        let mut w = w;
        for (user, online) in [("alice", true), ("bob", true), ("alice", false)] {
            let Item::Change(change) = next_watch_item(&mut w).await.unwrap() else {
                panic!("changes after the snapshot");
            };
            assert_eq!((change.user_id.as_str(), change.online), (user, online));
            assert_eq!(change.sequence, seq + 1);
            seq = change.sequence;
        }
    }
}
