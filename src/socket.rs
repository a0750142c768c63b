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
    SocketIo,
};
use tokio_util::sync::CancellationToken;

use crate::{
    presence::{Presence, Transition},
    validation,
};

/// Event carrying the array of online user ids.
pub const ONLINE_USERS_EVENT: &str = "getOnlineUsers";

/// The user a socket belongs to, stored in the socket's extensions by the handshake check.
#[derive(Debug, Clone)]
pub struct UserId(pub Arc<str>);

/// Why a handshake was refused; the text reaches the client as its `connect_error` message.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("missing user id: connect with query {{ userId }} or auth {{ userId }}")]
    MissingUserId,
    #[error("invalid userId: {0}")]
    InvalidUserId(String),
}

/// The parts of the handshake `auth` payload we read; anything else in it is ignored.
#[derive(Debug, Default, Deserialize)]
struct Auth {
    #[serde(rename = "userId")]
    user_id: Option<serde_json::Value>,
}

/// Registers the handlers of the default namespace.
pub fn attach(io: &SocketIo, presence: Arc<Presence>) {
    let handler = move |socket: SocketRef| on_connect(socket, presence.clone());
    io.ns("/", handler.with(identify));
}

/// Connect middleware: resolves and validates the user id, refusing the socket otherwise.
async fn identify(socket: SocketRef, TryData(auth): TryData<Auth>) -> Result<(), HandshakeError> {
    let from_auth = auth.ok().and_then(|a| a.user_id).and_then(|v| match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let user = match from_auth {
        Some(user) => user,
        None => query_param(&socket, "userId").ok_or(HandshakeError::MissingUserId)?,
    };
    validation::user_id(&user).map_err(|reason| {
        tracing::debug!(sid = %socket.id, %reason, "handshake refused");
        if user.is_empty() {
            HandshakeError::MissingUserId
        } else {
            HandshakeError::InvalidUserId(reason)
        }
    })?;
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

async fn on_connect(socket: SocketRef, presence: Arc<Presence>) {
    let Some(UserId(user)) = socket.extensions.get::<UserId>() else {
        // `identify` always sets it; a socket without one must not linger unaccounted.
        let _ = socket.disconnect();
        return;
    };
    socket.join(user.to_string());
    let transition = presence.connect(&user, socket.id);
    tracing::debug!(sid = %socket.id, user = %user, ?transition, "socket connected");
    if transition == Transition::Unchanged {
        // No presence change means no broadcast is coming: this tab gets the list now.
        let list = presence.online_list();
        if let Err(e) = socket.emit(ONLINE_USERS_EVENT, &*list.json) {
            tracing::debug!(sid = %socket.id, error = %e, "online list not sent");
        }
    }
    socket.on_disconnect(async move |socket: SocketRef| {
        let transition = presence.disconnect(&user, socket.id);
        tracing::debug!(sid = %socket.id, user = %user, ?transition, "socket disconnected");
    });
}

/// Pushes the online list to every socket whenever it changes, at most once per `interval`:
/// a burst of N connects costs one broadcast, not N, and the last state always goes out.
pub async fn broadcast_presence(
    io: SocketIo,
    presence: Arc<Presence>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut sent_version = None;
    loop {
        tokio::select! {
            () = presence.changed() => {}
            () = shutdown.cancelled() => return,
        }
        let list = presence.online_list();
        if sent_version == Some(list.version) {
            continue;
        }
        sent_version = Some(list.version);
        if let Err(e) = io.emit(ONLINE_USERS_EVENT, &*list.json).await {
            tracing::debug!(error = %e, "online list not sent to every socket");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
