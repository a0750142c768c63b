//! Presence mode `watch` where the packets matter: a watch tab whose buffer refused a change
//! set is never sent a later change set (it would apply to a set its client does not hold):
//! its next presence event is its whole watched list, and the set it rebuilds ends exact.
//! `SetWatchlist` through a tonic client counts the watch tabs it updated.

use std::{collections::BTreeSet, time::Duration};

use messaging_gateway::proto::SetWatchlistRequest;
use serde_json::json;

use crate::{
    hardening::fill_until_refused,
    support::{ws::RawWs, Gateway},
};

/// The next event packet as (event, data); messages count in `messages`.
async fn next_event(ws: &mut RawWs, messages: &mut u32) -> (String, serde_json::Value) {
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

/// Applies a watch frame to the set its client holds; a change set on a wrong base fails.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_tab_that_refused_a_change_set_gets_its_whole_list_next() {
    let gw = Gateway::start_args(&[
        "--socket-buffer-packets",
        "16",
        "--max-dropped-sends",
        "1000",
    ])
    .await;
    let query = "&userId=slow&presence=watch&watch=a,b,slow";
    let mut slow = RawWs::open(gw.running.http_addr(), query).await;
    slow.send_packet("40").await;
    let mut presence: Vec<(String, serde_json::Value)> = Vec::new();
    let mut set = BTreeSet::new();
    let mut messages = 0;
    let first = next_event(&mut slow, &mut messages).await;
    assert_eq!(first, ("getOnlineUsers".into(), json!(["slow"])));
    apply(&first.0, &first.1, &mut set);
    presence.push(first);

    let sent = fill_until_refused(&gw, "slow").await;
    // A change of a watched user while it is full: refused, and so are the resends.
    let _a = gw.tab("a").await;
    let _x = gw.tab("x").await;
    gw.wait_online(|u| u == ["a", "slow", "x"]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
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
    assert_eq!(presence.len(), 1, "{presence:?}");
    // The next change: its whole watched list first, never a change set.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watchlist_counts_the_watch_tabs_it_updated() {
    let gw = Gateway::start_args(&[]).await;
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut ws = RawWs::open(gw.running.http_addr(), "&userId=me&presence=watch").await;
        ws.send_packet("40").await;
        assert_eq!(next_event(&mut ws, &mut 0).await.1, json!([]));
        tabs.push(ws);
    }
    let _other = gw.tab("other").await;
    let set = |user: &str, ids: &[&str]| SetWatchlistRequest {
        user_id: user.into(),
        user_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    let mut grpc = gw.grpc.clone();
    let answer = grpc
        .set_watchlist(set("me", &["other", "nobody"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.updated_sockets, answer.partial), (2, false));
    for ws in &mut tabs {
        let (event, data) = next_event(ws, &mut 0).await;
        assert_eq!(event, "onlineUsersChanged");
        assert_eq!(data, json!({"online": ["other"], "offline": []}));
    }
    let none = grpc.set_watchlist(set("other", &["me"])).await.unwrap();
    assert_eq!(none.into_inner().updated_sockets, 0);
    let err = grpc.set_watchlist(set("me", &[""])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}
