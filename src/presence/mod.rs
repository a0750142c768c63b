//! The presence registry: which users are online, and through which sockets.
//!
//! A user may hold many sockets (tabs, devices) and is online while at least one is live.
//! Users are kept sorted so `ListOnline` pages by key without copying the whole set, and the
//! online list that `getOnlineUsers` carries is serialized at most once per change.
//!
//! Each user's sockets sit behind their own small lock, taken for each delivery: every tab
//! of a user sees messages in the same order, and the count of sockets that took a message is
//! exact. No lock here is ever held across an await.
//!
//! In cluster mode the registry also holds the replica of the other nodes' presence (which
//! nodes hold a user, with how many sockets), so the online list, paging and "who else must
//! be asked" are answered locally. A user is online while some node holds a socket of theirs.
//!
//! Each socket chooses at its handshake what presence it gets ([`PresenceMode`]): the whole
//! list on every change (the default), the whole list once and then only the changes, or
//! nothing. For the changes, the registry keeps the users who flipped since the last broadcast
//! round with their state at the round's start, and each socket the version of the list its
//! client holds: a socket gets a change set only on the exact version it applies to.
//!
//! Files: `types` (the values callers see), `registry` (users, their sockets, the online list),
//! `replica` (the other nodes' presence), `delivery` (offering a message to sockets), `rounds`
//! (the presence broadcast rounds), `watch` (the watchlists of `watch` sockets and their
//! reverse index), `watching` (what the registry does with them).

mod delivery;
mod registry;
mod replica;
mod rounds;
mod types;
mod watch;
mod watching;

pub use registry::{Presence, DEFAULT_WATCH_BUFFER};
pub use rounds::{Round, RoundOutcome};
pub use types::{
    unix_ms, Change, Delivered, Frame, Holders, Holding, Joined, LocalChanges, NodeIdx, Offer,
    OnlineList, Page, PresenceMode, SocketHandle, Tally, Transition, UserPresence,
};
pub use watch::WatchOutcome;
