//! Socket.IO handlers: who a socket belongs to, presence bookkeeping, `getOnlineUsers`.
//!
//! Clients identify the way existing frontends already do, `io(url, { query: { userId } })`
//! or `auth: { userId }`. Each socket joins a room named after its user, so a direct message
//! is one room broadcast whichever node (or how many tabs) the user is on.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;
use socketioxide::{
    extract::{SocketRef, TryData},
    handler::ConnectHandler,
    BroadcastError, SocketError, SocketIo,
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{AuthError, BrowserAuth},
    config::Limits,
    metrics::Metrics,
    presence::{Presence, Transition},
    validation,
};

/// Event carrying the array of online user ids.
pub const ONLINE_USERS_EVENT: &str = "getOnlineUsers";
/// Event sent just before the gateway disconnects a socket, carrying the reason as a string
/// (Socket.IO's own server disconnect carries none).
pub const DISCONNECT_REASON_EVENT: &str = "disconnectReason";

/// The user a socket belongs to, stored in the socket's extensions by the handshake check.
#[derive(Debug, Clone)]
pub struct UserId(pub Arc<str>);

/// Why a handshake was refused; the text reaches the client as its `connect_error` message.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("missing user id: connect with query {{ userId }} or auth {{ userId }}")]
    MissingUserId,
    #[error("invalid user id: {0}")]
    InvalidUserId(String),
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] AuthError),
    #[error("the gateway is at its connection limit ({0}); retry later")]
    AtCapacity(usize),
}

/// The parts of the handshake `auth` payload we read; anything else in it is ignored.
#[derive(Debug, Default, Deserialize)]
struct Auth {
    #[serde(rename = "userId")]
    user_id: Option<serde_json::Value>,
    token: Option<String>,
}

/// What the handlers share.
pub struct SocketContext {
    pub presence: Arc<Presence>,
    pub auth: BrowserAuth,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// Registers the handlers of the default namespace.
pub fn attach(io: &SocketIo, ctx: Arc<SocketContext>) {
    let connect_ctx = ctx.clone();
    let handler = move |socket: SocketRef| on_connect(socket, connect_ctx.clone());
    let middleware = move |socket: SocketRef, TryData(auth): TryData<Auth>| {
        let ctx = ctx.clone();
        async move {
            identify(&ctx, &socket, auth.ok().unwrap_or_default()).inspect_err(|e| {
                let failures = Metrics::add(&ctx.metrics.handshakes_refused, 1);
                tracing::info!(sid = %socket.id, reason = %e, failures, "handshake refused");
            })
        }
    };
    io.ns("/", handler.with(middleware));
}

/// Resolves and validates the user id, or refuses the socket.
fn identify(ctx: &SocketContext, socket: &SocketRef, auth: Auth) -> Result<(), HandshakeError> {
    if ctx.presence.total_sockets() >= ctx.limits.max_connections {
        return Err(HandshakeError::AtCapacity(ctx.limits.max_connections));
    }
    let user = match &ctx.auth {
        BrowserAuth::Jwt(verifier) => {
            let token = auth
                .token
                .or_else(|| query_param(socket, "token"))
                .filter(|t| !t.is_empty())
                .ok_or(AuthError::MissingToken)?;
            verifier.verify(&token)?
        }
        BrowserAuth::Trusted => {
            let from_auth = auth.user_id.and_then(|v| match v {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            from_auth
                .or_else(|| query_param(socket, "userId"))
                .filter(|u| !u.is_empty())
                .ok_or(HandshakeError::MissingUserId)?
        }
    };
    validation::user_id(&user).map_err(HandshakeError::InvalidUserId)?;
    socket.extensions.insert(UserId(Arc::from(user)));
    Ok(())
}

/// The first value of `name` in the handshake request's query string, percent-decoded.
fn query_param(socket: &SocketRef, name: &str) -> Option<String> {
    let query = socket.req_parts().uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn on_connect(socket: SocketRef, ctx: Arc<SocketContext>) {
    let Some(UserId(user)) = socket.extensions.get::<UserId>() else {
        // `identify` always sets it; a socket without one must not linger unaccounted.
        let _ = socket.disconnect();
        return;
    };
    socket.join(user.to_string());
    let joined = ctx
        .presence
        .connect(&user, socket.clone(), ctx.limits.max_sockets_per_user);
    tracing::debug!(sid = %socket.id, user = %user, transition = ?joined.transition, "socket connected");
    if let Some(oldest) = joined.evicted {
        Metrics::add(&ctx.metrics.sockets_cut_off, 1);
        let reason = format!(
            "too many sockets for this user (limit {}): the oldest was closed",
            ctx.limits.max_sockets_per_user
        );
        disconnect_with_reason(oldest, &reason);
    }
    if joined.transition == Transition::Unchanged {
        // No presence change means no broadcast is coming: this tab gets the list now.
        let list = ctx.presence.online_list();
        if let Err(e) = socket.emit(ONLINE_USERS_EVENT, &*list.json) {
            tracing::debug!(sid = %socket.id, error = %e, "online list not sent");
        }
    }
    let presence = ctx.presence.clone();
    let leave = {
        let user = user.clone();
        move |socket: &SocketRef| {
            let transition = presence.disconnect(&user, socket.id);
            tracing::debug!(sid = %socket.id, user = %user, ?transition, "socket disconnected");
        }
    };
    let on_leave = leave.clone();
    socket.on_disconnect(async move |socket: SocketRef| on_leave(&socket));
    // A client that vanished while we registered it has already run the (then empty)
    // disconnect hook; leaving twice is harmless, staying forever is not.
    if !socket.connected() {
        leave(&socket);
    }
}

/// Tells a socket why, then disconnects it.
pub fn disconnect_with_reason(socket: SocketRef, reason: &str) {
    tracing::info!(sid = %socket.id, reason, "disconnecting socket");
    let _ = socket.emit(DISCONNECT_REASON_EVENT, reason);
    if let Err(e) = socket.disconnect() {
        tracing::debug!(error = %e, "disconnect deferred to the Engine.IO heartbeat");
    }
}

/// Resends of one online-list version that some sockets refused.
const PRESENCE_RETRIES: u32 = 5;

/// Whether a broadcast failed for a socket that may take it later. A closed socket never
/// will: resending the whole list to everyone for it would only multiply the traffic.
fn some_socket_was_full(e: &BroadcastError) -> bool {
    matches!(e, BroadcastError::Socket(errors)
        if errors.iter().any(|e| matches!(e, SocketError::InternalChannelFull)))
}

/// Pushes the online list to every socket whenever it changes, at most once per `interval`:
/// a burst of N connects costs one broadcast, not N, and the last state always goes out. A
/// broadcast costs list size × sockets bytes; the next one waits until that cost fits in
/// `budget` bytes per second, so a large audience gets fewer, not slower, updates.
pub async fn broadcast_presence(
    io: SocketIo,
    presence: Arc<Presence>,
    interval: Duration,
    budget: u64,
    shutdown: CancellationToken,
) {
    let mut sent_version = None;
    let mut retries = 0;
    loop {
        // A broadcast some sockets could not take (full buffers) is sent again, a few times,
        // even with no new change: the last state must not be lost in the storm's backlog.
        if retries == 0 {
            tokio::select! {
                () = presence.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
        let list = presence.online_list();
        if sent_version == Some(list.version) {
            retries = 0;
            continue;
        }
        match io.emit(ONLINE_USERS_EVENT, &*list.json).await {
            Err(e) if retries < PRESENCE_RETRIES && some_socket_was_full(&e) => {
                tracing::debug!(error = %e, retries, "online list refused by some sockets; will resend");
                retries += 1;
            }
            _ => {
                sent_version = Some(list.version);
                retries = 0;
            }
        }
        let cost = list.json.get().len() as f64 * presence.total_sockets() as f64;
        let pause = interval.max(Duration::from_secs_f64(cost / budget.max(1) as f64));
        tokio::select! {
            () = tokio::time::sleep(pause * (retries + 1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_sockets_make_a_broadcast_worth_resending() {
        let closed = BroadcastError::Socket(vec![SocketError::Closed]);
        let full =
            BroadcastError::Socket(vec![SocketError::Closed, SocketError::InternalChannelFull]);
        assert!(!some_socket_was_full(&closed));
        assert!(some_socket_was_full(&full));
    }
}
