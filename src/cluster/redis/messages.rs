//! What nodes send each other through Redis: presence events on the presence channel,
//! requests and answers on the nodes' inboxes. Field names are one letter: every event and
//! request crosses Redis, and a connect storm sends many.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    outcome::{Handoff, Refusal},
    presence::Holding,
};
/// A presence change of one node, as published on [`PRESENCE_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PresenceEvent {
    pub(super) n: String,
    pub(super) e: u64,
    pub(super) s: u64,
    /// Replaces everything known of the node.
    #[serde(default)]
    pub(super) f: bool,
    /// The node was swept (epoch `e`).
    #[serde(default)]
    pub(super) gone: bool,
    #[serde(default)]
    pub(super) u: Vec<Held>,
}

impl PresenceEvent {
    /// Node `n` (epoch `e`) is gone: it left, or its lease expired and it was swept.
    pub(super) fn gone(n: String, e: u64) -> Self {
        Self {
            n,
            e,
            s: 0,
            f: false,
            gone: true,
            u: Vec::new(),
        }
    }
}

/// One user's holding in a presence event: `[user, sockets, since_ms]`; nodes from before
/// online-since was kept send `[user, sockets]` (read as since 0).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Held {
    Since(String, u32, u64),
    Count(String, u32),
}

impl Held {
    pub(super) fn new(user: &str, h: &Holding) -> Self {
        Self::Since(user.to_owned(), h.sockets, h.since_ms)
    }

    pub(super) fn into_parts(self) -> (String, Holding) {
        match self {
            Self::Since(user, sockets, since_ms) => (user, Holding { sockets, since_ms }),
            Self::Count(user, sockets) => (
                user,
                Holding {
                    sockets,
                    since_ms: 0,
                },
            ),
        }
    }
}

/// What a request asks of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) enum Kind {
    /// Emit `e` with `m` to the local sockets of each of `u`; answer their counts.
    #[default]
    #[serde(rename = "d")]
    Deliver,
    /// Disconnect the local sockets of `u[0]`, telling them the reason `e`; answer how many.
    #[serde(rename = "x")]
    Disconnect,
    /// Emit `e` with `m` to every local socket; answer (users, sockets, refused, pending).
    #[serde(rename = "b")]
    Broadcast,
    /// Hand the recoverable session `e` of `u[0]` over, from the offset `m` (a string, or
    /// null): answer `h`, or nothing in it when it cannot be recovered here.
    #[serde(rename = "r")]
    Recover,
    /// Replace the watchlist of the local `watch` sockets of `u[0]` by the ids in `m` (an
    /// array); answer how many.
    #[serde(rename = "w")]
    Watchlist,
}

/// A request, on the holder's inbox (or, for a broadcast, [`BROADCAST_CHANNEL`]), prefixed
/// `q`.
#[derive(Serialize, Deserialize)]
pub(super) struct Request<'a> {
    pub(super) c: u64,
    #[serde(default)]
    pub(super) k: Kind,
    /// Borrowed unless JSON escaped it (an event name or user id with `"` or `\`).
    #[serde(borrow)]
    pub(super) f: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) e: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) u: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) m: &'a RawValue,
    /// Milliseconds the sockets have to acknowledge (acknowledged sends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) a: Option<u64>,
    /// The message's recovery offset, given by the node that took the call (deliveries).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(super) o: Option<Cow<'a, str>>,
    /// The last moment to act on it (ms since the Unix epoch): one that arrives later (Redis
    /// paused, this node frozen) is dropped, as its asker has answered without it. 0: none.
    #[serde(default)]
    pub(super) d: u64,
}

/// Its answer, on the asker's inbox, prefixed `a`.
#[derive(Serialize, Deserialize)]
pub(super) struct Answer {
    pub(super) c: u64,
    pub(super) n: Vec<u32>,
    /// Sockets per user that kept it for a recovery (left out when none did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) p: Vec<u32>,
    /// A session handed over (requests of kind `r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) h: Option<Handoff>,
    /// Why the session was not handed over (requests of kind `r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) x: Option<Refusal>,
    /// Acks per user, when asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) k: Vec<u32>,
}
