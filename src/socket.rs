//! Socket.IO handlers: who a socket belongs to, presence bookkeeping, `getOnlineUsers`.
//!
//! Clients identify the way existing frontends already do, `io(url, { query: { userId } })`
//! or `auth: { userId }`. Each socket joins a room named after its user, so a direct message
//! is one room broadcast whichever node (or how many tabs) the user is on.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;
use serde_json::json;
use socketioxide::{
    extract::{AckSender, SocketRef, TryData},
    handler::ConnectHandler,
    BroadcastError, SocketError, SocketIo,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{AuthError, BrowserAuth, JwtVerifier},
    config::Limits,
    metrics::Metrics,
    pending::PendingSlot,
    presence::{Presence, Transition},
    validation,
};

/// Event carrying the array of online user ids.
pub const ONLINE_USERS_EVENT: &str = "getOnlineUsers";
/// Event sent just before the gateway disconnects a socket, carrying the reason as a string
/// (Socket.IO's own server disconnect carries none).
pub const DISCONNECT_REASON_EVENT: &str = "disconnectReason";
/// Event a client sends, with a fresh token and an ack callback, to keep its socket past the
/// expiry of the token it connected with (`--auth jwt` only).
pub const RENEW_TOKEN_EVENT: &str = "renewToken";
/// The `disconnectReason` of a socket whose token ran out.
pub const TOKEN_EXPIRED_REASON: &str =
    "token expired: send renewToken with a fresh token before exp, or reconnect with one";

/// The user a socket belongs to, stored in the socket's extensions by the handshake check.
#[derive(Debug, Clone)]
pub struct UserId(pub Arc<str>);

/// Unix seconds until which the socket's token is valid (leeway included); `renewToken`
/// moves it. Stored by the handshake check in `--auth jwt` mode only.
#[derive(Debug, Clone)]
struct ValidUntil(Arc<watch::Sender<u64>>);

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
                tracing::info!(socket = %socket.id, reason = %e, failures, "handshake refused");
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
            let verified = verifier.verify(&token)?;
            let (deadline, _) = watch::channel(verified.valid_until);
            socket.extensions.insert(ValidUntil(Arc::new(deadline)));
            verified.user
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
    // Authenticated: this session no longer counts against the pre-authentication bounds.
    if let Some(slot) = socket.req_parts().extensions.get::<PendingSlot>() {
        slot.release();
    }
    socket.join(user.to_string());
    let joined = ctx
        .presence
        .connect(&user, socket.clone(), ctx.limits.max_sockets_per_user);
    tracing::debug!(socket = %socket.id, user = %user, transition = ?joined.transition, "socket connected");
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
            tracing::debug!(socket = %socket.id, error = %e, "online list not sent");
        }
    }
    let presence = ctx.presence.clone();
    let leave = {
        let user = user.clone();
        move |socket: &SocketRef| {
            let transition = presence.disconnect(&user, socket.id);
            tracing::debug!(socket = %socket.id, user = %user, ?transition, "socket disconnected");
        }
    };
    let gone = CancellationToken::new();
    if let (BrowserAuth::Jwt(_), Some(ValidUntil(deadline))) =
        (&ctx.auth, socket.extensions.get::<ValidUntil>())
    {
        tokio::spawn(expire(socket.clone(), deadline.subscribe(), gone.clone()));
        let ctx = ctx.clone();
        socket.on(
            RENEW_TOKEN_EVENT,
            async move |socket: SocketRef, TryData(token): TryData<String>, ack: AckSender| {
                let BrowserAuth::Jwt(verifier) = &ctx.auth else {
                    return;
                };
                let reply = match renew(verifier, &socket, token.ok()) {
                    Ok(valid_until) => json!({ "ok": true, "validUntil": valid_until }),
                    Err(e) => json!({ "ok": false, "error": e.to_string() }),
                };
                let _ = ack.send(&reply);
            },
        );
    }
    let on_leave = leave.clone();
    socket.on_disconnect(async move |socket: SocketRef| {
        gone.cancel();
        on_leave(&socket);
    });
    // A client that vanished while we registered it has already run the (then empty)
    // disconnect hook; leaving twice is harmless, staying forever is not.
    if !socket.connected() {
        leave(&socket);
    }
}

/// Checks a fresh token sent on an open socket: it must be valid and name the same user. The
/// socket then lives until the new token's expiry.
fn renew(
    verifier: &JwtVerifier,
    socket: &SocketRef,
    token: Option<String>,
) -> Result<u64, HandshakeError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::MissingToken)?;
    let verified = verifier.verify(&token)?;
    let (Some(UserId(user)), Some(ValidUntil(deadline))) = (
        socket.extensions.get::<UserId>(),
        socket.extensions.get::<ValidUntil>(),
    ) else {
        return Err(AuthError::MissingToken.into());
    };
    if *user != *verified.user {
        return Err(AuthError::OtherUser.into());
    }
    deadline.send_replace(verified.valid_until);
    tracing::debug!(socket = %socket.id, user = %user, valid_until = verified.valid_until, "token renewed");
    Ok(verified.valid_until)
}

/// Disconnects a socket once the second of its deadline has passed, unless the socket is gone
/// first. Sleeps at most a day at a time, so far-off and moved deadlines are both re-read.
async fn expire(socket: SocketRef, mut deadline: watch::Receiver<u64>, gone: CancellationToken) {
    const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);
    loop {
        let end = Duration::from_secs(deadline.borrow_and_update().saturating_add(1));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let Some(left) = end.checked_sub(now).filter(|d| !d.is_zero()) else {
            disconnect_with_reason(socket, TOKEN_EXPIRED_REASON);
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(left.min(MAX_SLEEP)) => {}
            changed = deadline.changed() => if changed.is_err() { return },
            () = gone.cancelled() => return,
        }
    }
}

/// Tells a socket why, then disconnects it.
pub fn disconnect_with_reason(socket: SocketRef, reason: &str) {
    tracing::info!(socket = %socket.id, reason, "disconnecting socket");
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
