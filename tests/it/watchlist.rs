//! Presence mode `watch` where the packets matter: a watch tab whose buffer refused a change
//! set is never sent a later change set (it would apply to a set its client does not hold):
//! its next presence event is its whole watched list, and the set it rebuilds ends exact.
//! `SetWatchlist` through a tonic client counts the watch tabs it updated.

use messaging_gateway::proto::SetWatchlistRequest;
use serde_json::json;

use crate::{
    hardening::{next_event, refused_change_set_then_whole_list},
    support::{ws::RawWs, Gateway},
};

/// `x` comes online while the tab is full too: not watched, it never shows in its frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_tab_that_refused_a_change_set_gets_its_whole_list_next() {
    refused_change_set_then_whole_list("&presence=watch&watch=a,b,slow", &["a", "x"]).await;
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
