//! How a message leaves for sockets: encoded once for many, offered without queueing past a
//! full buffer, and what happens to the sockets that could not take it. Shared by direct
//! sends, broadcasts and the presence rounds.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::{extract::SocketRef, SocketError};
use socketioxide_core::Value;

use crate::{
    metrics::Metrics,
    presence::{Delivered, Offer, Presence, WatchOutcome},
    recovery::{self, Session},
    validation::DISCONNECT_REASON_EVENT,
};

/// Tells a socket why, then disconnects it. When even that does not fit in its buffer, the
/// (patched) `disconnect` closes the connection itself: a cut-off socket never lingers.
pub fn disconnect_with_reason(socket: SocketRef, reason: &str) {
    tracing::info!(socket = %socket.id, reason, "disconnecting socket");
    tell(&socket, reason);
    let id = socket.id;
    if let Err(e) = socket.disconnect() {
        tracing::debug!(socket = %id, error = %e, "no room for the disconnect packet; connection closed");
    }
}

/// Tells a socket why, then closes its connection without a Socket.IO disconnect: the
/// client reconnects by itself, as after a network drop.
pub fn close_with_reason(socket: SocketRef, reason: &str) {
    tracing::info!(socket = %socket.id, reason, "closing socket's connection");
    tell(&socket, reason);
    socket.close_transport();
}

/// Sends `disconnectReason` (with its offset, like every event: a string argument last
/// would otherwise pass for one).
/// The session ends with it: a socket the server cut off is not recovered.
fn tell(socket: &SocketRef, reason: &str) {
    let json = serde_json::value::to_raw_value(reason).expect("a string serializes");
    Encoded::new(DISCONNECT_REASON_EVENT, &json).offer(socket);
    if let Some(session) = socket.extensions.get::<Arc<Session>>() {
        session.end(socket.id);
    }
}

/// Acts on what an offer (a message or the online list) found: sockets that refused
/// `max_dropped_sends` sends in a row leave presence at once and are cut off; sockets whose
/// connection is gone are removed.
pub fn settle(
    presence: &Presence,
    metrics: &Metrics,
    max_dropped_sends: u32,
    delivered: Delivered<SocketRef>,
) {
    let cut_off = delivered.overflowing.len() + delivered.gone.len();
    Metrics::add(&metrics.sockets_cut_off, cut_off as u64);
    for (user, socket) in delivered.overflowing {
        presence.disconnect(&user, socket.id);
        let reason = format!(
            "too slow: {max_dropped_sends} sends in a row did not fit in the socket's buffer"
        );
        disconnect_with_reason(socket, &reason);
    }
    for (user, socket) in delivered.gone {
        presence.disconnect(&user, socket.id);
        tracing::debug!(%user, socket = %socket.id, "removed a socket whose connection is gone");
        let _ = socket.disconnect();
    }
}

/// Counts what a watch round, join or change offered, and settles the sockets it found
/// too slow or gone.
pub fn settle_watch(
    presence: &Presence,
    metrics: &Metrics,
    max_dropped_sends: u32,
    done: WatchOutcome<SocketRef>,
) {
    if done.bytes_offered > 0 {
        metrics.presence_broadcast_bytes.inc_by(done.bytes_taken);
        metrics
            .presence_changes
            .inc_by(u64::from(done.changes.taken));
        metrics.presence_resyncs.inc_by(u64::from(done.lists.taken));
    }
    settle(presence, metrics, max_dropped_sends, done.delivered);
}

/// One event for many sockets: encoded once, by the first socket offered it; the others
/// share its bytes. With connection state recovery, the packet carries one offset (the same
/// for every socket) as its last argument, and each socket's session keeps it.
pub struct Encoded<'a> {
    event: &'a str,
    data: &'a RawValue,
    /// The offset the message was given where the call came in (the same on every node).
    offset: Option<&'a str>,
    plain: Option<Option<Value>>,
    with_offset: Option<Option<(Arc<str>, Value)>>,
}

impl<'a> Encoded<'a> {
    /// Nothing is encoded until the first socket is offered it.
    pub fn new(event: &'a str, data: &'a RawValue) -> Self {
        Self {
            event,
            data,
            offset: None,
            plain: None,
            with_offset: None,
        }
    }

    /// The message carries `offset` rather than one given here: a delivery of a call that
    /// other nodes deliver too, so a session that moves between nodes meanwhile keeps it once.
    pub fn at(mut self, offset: Option<&'a str>) -> Self {
        self.offset = offset;
        self
    }

    /// Hands the packet to `socket` (to its session, which keeps it too, or keeps it alone
    /// while the connection is away); a full buffer refuses it rather than queue it.
    pub fn offer(&mut self, socket: &SocketRef) -> Offer {
        let (event, data, given) = (self.event, self.data, self.offset);
        match socket.extensions.get::<Arc<Session>>() {
            Some(session) => {
                let encoded = self.with_offset.get_or_insert_with(|| {
                    let offset = given.map_or_else(recovery::next_offset, Arc::from);
                    encode(socket, event, &(data, &*offset)).map(|packet| (offset, packet))
                });
                match encoded {
                    Some((offset, packet)) => session.offer(socket, offset, packet),
                    None => Offer::Full,
                }
            }
            None => {
                let packet = self
                    .plain
                    .get_or_insert_with(|| encode(socket, event, data));
                match packet.as_ref().map(|p| socket.emit_encoded(p)) {
                    Some(Ok(())) => Offer::Taken,
                    Some(Err(SocketError::Closed)) => Offer::Gone,
                    Some(Err(_)) | None => Offer::Full,
                }
            }
        }
    }
}

fn encode<T: ?Sized + serde::Serialize>(
    socket: &SocketRef,
    event: &str,
    data: &T,
) -> Option<Value> {
    socket
        .encode_event(event, data)
        .map_err(|e| tracing::error!(event, error = %e, "event not encodable"))
        .ok()
}
