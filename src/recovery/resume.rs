//! A socket's session over its life: opened or recovered at the handshake, replayed to once
//! connected, parked or ended at its disconnect, ended when its window passes.

use std::sync::Arc;

use socketioxide::{
    extract::SocketRef,
    socket::{ConnectAnnounce, DisconnectReason, Sid},
};

use super::{Claim, Recovery, Refusal, Session};
use crate::{
    outcome::Handoff,
    presence::{Presence, PresenceMode, Transition},
};

/// What a reconnecting client sent in its CONNECT to recover its session.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// The session id it was given.
    pub pid: String,
    /// The offset of the last event it got (none if it got none).
    pub offset: Option<String>,
}

/// A socket that joined presence at its handshake, with a session to replay once it is
/// connected: one it recovered, or a new one that kept what came while another node was
/// asked for the session.
#[derive(Clone)]
struct Replay {
    /// How joining presence changed it (`None`: the socket took a recovered socket's place).
    joined: Option<Transition>,
    recovered: bool,
}

impl Recovery {
    /// Gives `socket` of `user` its session: the one `asked` names if it can be recovered,
    /// else a new one. Both are announced in the CONNECT packet. Runs in the handshake check,
    /// before the CONNECT packet is queued.
    pub async fn admit(
        &self,
        presence: &Arc<Presence>,
        socket: &SocketRef,
        user: &Arc<str>,
        mode: PresenceMode,
        asked: Option<Asked>,
    ) {
        let session = match asked {
            Some(asked) => {
                let claimed = match self.find(&asked.pid) {
                    Some(session) => self
                        .claim(presence, socket, user, session, &asked)
                        .map(|s| (s, None)),
                    None => self.adopt(presence, socket, user, mode, &asked).await,
                };
                self.0
                    .metrics
                    .attempt(claimed.as_ref().map(|_| ()).map_err(|r| *r));
                match claimed {
                    Ok((session, joined)) => {
                        socket.extensions.insert(Replay {
                            joined,
                            recovered: true,
                        });
                        session
                    }
                    Err(refusal) => {
                        tracing::debug!(%user, ?refusal, "session not recovered");
                        // Already in presence, keeping what came meanwhile, if another node
                        // was asked.
                        socket
                            .extensions
                            .get::<Arc<Session>>()
                            .unwrap_or_else(|| self.open(user.clone(), socket.id))
                    }
                }
            }
            None => self.open(user.clone(), socket.id),
        };
        socket.extensions.insert(ConnectAnnounce {
            sid: session.public_id.to_string(),
            pid: session.pid.to_string(),
        });
        socket.extensions.insert(session);
    }

    /// Claims this node's `session` for `socket`, taking its place in presence.
    fn claim(
        &self,
        presence: &Arc<Presence>,
        socket: &SocketRef,
        user: &Arc<str>,
        session: Arc<Session>,
        asked: &Asked,
    ) -> Result<Arc<Session>, Refusal> {
        if *session.user != **user {
            return Err(Refusal::OtherUser);
        }
        let previous = session.holder();
        let (claim, replaced): (Claim, SocketRef) = presence
            .swap(user, previous, socket.clone(), Refusal::Unknown, || {
                session.claim(user, asked.offset.as_deref(), previous, socket.id)
            })
            .inspect_err(|refusal| abandon(presence, &session, *refusal))?;
        if claim.was_live {
            // The drop is not noticed here yet: the old connection goes now, silently (its
            // disconnect finds the session in other hands).
            replaced.close_transport();
        }
        self.arm_expiry(presence, &session, socket.clone(), claim.epoch);
        tracing::debug!(%user, socket = %socket.id, "session recovered");
        Ok(session)
    }

    /// Asks the node holding the session `asked` names to hand it over (its id ends the
    /// session id, unless the session moved and recorded where it went). The socket joins
    /// presence here first, with a new session that keeps what comes meanwhile: on success
    /// that follows what the client missed there, else it is the socket's session.
    async fn adopt(
        &self,
        presence: &Arc<Presence>,
        socket: &SocketRef,
        user: &Arc<str>,
        mode: PresenceMode,
        asked: &Asked,
    ) -> Result<(Arc<Session>, Option<Transition>), Refusal> {
        let here = self.0.node.as_deref().ok_or(Refusal::Unknown)?;
        let node = match self.0.cluster.locate_session(&asked.pid).await {
            Some(node) => node,
            None => home_node(&asked.pid).ok_or(Refusal::Unknown)?.to_owned(),
        };
        if node == here {
            return Err(Refusal::Unknown);
        }
        let interim = self.open(user.clone(), socket.id);
        let epoch = interim.hold_for_replay();
        socket.extensions.insert(interim.clone());
        let joined = presence.connect_with(user, socket.clone(), usize::MAX, mode);
        socket.extensions.insert(Replay {
            joined: Some(joined.transition),
            recovered: false,
        });
        self.arm_expiry(presence, &interim, socket.clone(), epoch);
        let handoff = self
            .0
            .cluster
            .take_session(&node, &asked.pid, user, asked.offset.as_deref())
            .await
            .unwrap_or(Err(Refusal::Unknown))?;
        let session = Arc::new(Session::adopted(
            Arc::from(asked.pid.as_str()),
            user.clone(),
            socket.id,
            handoff,
            self.0.clone(),
        ));
        // Under the user's sockets lock: no delivery falls between the two sessions.
        presence.locked(user, || {
            session.absorb(&interim);
            socket.extensions.insert(session.clone());
        });
        interim.end(socket.id);
        self.0.insert(session.clone());
        // Its id names the node it came from: a later reconnect elsewhere must find it here.
        self.0
            .cluster
            .place_session(&session.pid, MOVED_SESSION_TTL);
        let epoch = session.replaying_epoch();
        self.arm_expiry(presence, &session, socket.clone(), epoch);
        tracing::debug!(%user, socket = %socket.id, %node, "session recovered from another node");
        Ok((session, Some(joined.transition)))
    }

    /// Gives this node's session `pid` to the node `user`'s client reconnected to: what it
    /// missed after `offset`; the socket that held it leaves presence here.
    pub fn hand_off(
        &self,
        presence: &Arc<Presence>,
        pid: &str,
        user: &str,
        offset: Option<&str>,
    ) -> Result<Handoff, Refusal> {
        let session = self.find(pid).ok_or(Refusal::Unknown)?;
        let (handoff, holder, was_live) = session
            .release(user, offset)
            .inspect_err(|refusal| abandon(presence, &session, *refusal))?;
        let transition = leave(presence, user, holder, was_live);
        tracing::debug!(%user, ?transition, "session handed to another node");
        Ok(handoff)
    }

    /// Once the CONNECT packet is queued: a recovered socket gets what it missed, in order,
    /// before anything new. Returns what the handshake did.
    pub fn on_connect(socket: &SocketRef) -> Resumed {
        // Written into the CONNECT packet already: no need to keep it for the socket's life.
        socket.extensions.remove::<ConnectAnnounce>();
        let Some(Replay { joined, recovered }) = socket.extensions.remove::<Replay>() else {
            return Resumed::No;
        };
        if let Some(session) = socket.extensions.get::<Arc<Session>>() {
            tokio::spawn(session.pump(socket.clone()));
        }
        if recovered {
            Resumed::Recovered
        } else {
            Resumed::Joined(joined.unwrap_or(Transition::Unchanged))
        }
    }

    /// At the socket's disconnect: a recoverable drop parks the session for the window (the
    /// socket stays in presence, its user online); any other ends it, and the socket leaves
    /// presence.
    pub fn on_disconnect(
        &self,
        presence: &Arc<Presence>,
        socket: &SocketRef,
        user: &str,
        reason: DisconnectReason,
    ) -> Transition {
        if let Some(session) = socket.extensions.get::<Arc<Session>>() {
            if recoverable(reason) {
                if let Some(epoch) = session.park(socket.id) {
                    if self.0.node.as_deref() != home_node(&session.pid) {
                        // Moved here from its home node: a reconnect elsewhere must find it.
                        self.0
                            .cluster
                            .place_session(&session.pid, self.0.limits.window);
                    }
                    self.arm_expiry(presence, &session, socket.clone(), epoch);
                    return Transition::Unchanged;
                }
            } else {
                session.end(socket.id);
            }
        }
        presence.disconnect(user, socket.id)
    }

    /// After the window, a session still in the phase armed with `epoch` (away, or replaying
    /// to a socket that never caught up) ends, and its socket leaves presence.
    fn arm_expiry(
        &self,
        presence: &Arc<Presence>,
        session: &Arc<Session>,
        socket: SocketRef,
        epoch: u64,
    ) {
        let (presence, session) = (presence.clone(), session.clone());
        let window = self.0.limits.window;
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            if session.expire(epoch) {
                let transition = presence.disconnect(&session.user, socket.id);
                tracing::debug!(user = %session.user, ?transition, "recovery window passed");
                let _ = socket.disconnect();
            }
        });
    }
}

/// How long the record of a session that moved to this node lasts while its socket is
/// connected (a drop rewrites it for the window): a day, past which a reconnect on another
/// node asks the node that gave the session out, and gets a new session.
const MOVED_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What the handshake did for a socket, as its connect handler needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Nothing: the socket joins presence now.
    No,
    /// It recovered a session: in presence already, and what it missed is on its way.
    Recovered,
    /// It joined presence already (with this change), while another node was asked in vain
    /// for the session it named: a new session, whatever came meanwhile on its way.
    Joined(Transition),
}

/// Its client reconnected but cannot recover it (its window passed, or it missed events no
/// longer kept): the client holds a new session from now on, so this one ends at once, and
/// its socket leaves presence, instead of keeping what is sent to the user (and counting as
/// pending) until its window passes.
fn abandon(presence: &Presence, session: &Session, refusal: Refusal) {
    if matches!(refusal, Refusal::Expired | Refusal::Gap) {
        let holder = session.holder();
        if session.end(holder) {
            // Its connection, if still open here, is one its client left.
            let transition = leave(presence, &session.user, holder, true);
            tracing::debug!(user = %session.user, ?refusal, ?transition, "session abandoned by its client");
        }
    }
}

/// Takes the socket that held a session out of presence here, closing its connection first
/// when `close` (one its client has left for another).
fn leave(presence: &Presence, user: &str, holder: Sid, close: bool) -> Transition {
    if close {
        let (sockets, _) = presence.holders(user);
        if let Some(socket) = sockets.iter().find(|s| s.id == holder) {
            socket.close_transport();
        }
    }
    presence.disconnect(user, holder)
}

/// The node a session id was given out by (cluster mode: `random.node`).
fn home_node(pid: &str) -> Option<&str> {
    pid.split_once('.').map(|(_, node)| node)
}

/// The disconnects socket.io keeps a session through: the connection dropped or timed out.
/// A disconnect asked for (by the client or the server) or a protocol error ends it.
fn recoverable(reason: DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::TransportClose
            | DisconnectReason::TransportError
            | DisconnectReason::HeartbeatTimeout
    )
}
