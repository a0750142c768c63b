//! When a socket's life ends: a token cancelled at its disconnect, for the tasks that must
//! stop with it (its token expiry, a hand-over of kept messages waiting on its acks). A leaf,
//! so the gateway and the socket handlers both reach it without importing each other.

use socketioxide::extract::SocketRef;
use tokio_util::sync::CancellationToken;

/// Cancelled when the socket disconnects: ends the socket's token expiry task and a
/// hand-over of kept messages waiting on the socket's acks.
#[derive(Clone)]
pub(crate) struct Gone(pub(crate) CancellationToken);

/// Cancelled once `socket` disconnects (already, for a socket the handshake never set up).
pub(crate) fn gone(socket: &SocketRef) -> CancellationToken {
    socket.extensions.get::<Gone>().map_or_else(
        || {
            let gone = CancellationToken::new();
            gone.cancel();
            gone
        },
        |Gone(token)| token,
    )
}
