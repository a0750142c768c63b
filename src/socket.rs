//! Socket.IO handlers: who a socket belongs to, presence bookkeeping, `getOnlineUsers`.
//!
//! Clients identify the way existing frontends already do, `io(url, { query: { userId } })`
//! or `auth: { userId }`. Each socket joins a room named after its user, so a direct message
//! is one room broadcast whichever node (or how many tabs) the user is on.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use socketioxide::{
    adapter::LocalAdapter,
    handler::{FromMessageParts, MessageHandler},
    socket::Socket,
};
use socketioxide_core::Value;
use tokio::time::Instant;

use serde::Deserialize;
use serde_json::json;
use socketioxide::{
    extract::{AckSender, SocketRef, TryData},
    handler::ConnectHandler,
    socket::DisconnectReason,
    SocketIo,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{AuthError, BrowserAuth, JwtVerifier},
    config::Limits,
    emit::{self, disconnect_with_reason, settle, Encoded},
    gateway::Gateway,
    lifetime::Gone,
    metrics::{HandshakeRefusal, Metrics},
    pending::PendingSlot,
    presence::{Frame, Joined, Offer, Presence, PresenceMode, Transition},
    recovery::{Asked, Recovery, Resumed},
    validation::{self, ONLINE_USERS_CHANGED_EVENT, ONLINE_USERS_EVENT},
};

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
    /// No user id in the handshake (`--auth none`).
    #[error("missing user id: connect with query {{ userId }} or auth {{ userId }}")]
    MissingUserId,
    /// A user id outside the rules (see `validation`).
    #[error("invalid user id: {0}")]
    InvalidUserId(String),
    /// No, bad or expired token (`--auth jwt`).
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] AuthError),
    /// `--max-connections` sockets are connected.
    #[error("the gateway is at its connection limit ({0}); retry later")]
    AtCapacity(usize),
    /// A `presence` handshake parameter other than `list`, `changes`, `watch` or `none`.
    #[error(
        "invalid presence mode {0}: use \"list\" (default), \"changes\", \"watch\" or \"none\""
    )]
    InvalidPresenceMode(String),
    /// A `watch` socket's watchlist (`watchlist` claim, or `watch` in the auth or query)
    /// that is not a list of valid user ids, or longer than `--max-watchlist`.
    #[error("invalid watchlist: {0}")]
    InvalidWatchlist(String),
}

impl HandshakeError {
    fn cause(&self) -> HandshakeRefusal {
        match self {
            Self::MissingUserId => HandshakeRefusal::MissingUserId,
            Self::InvalidUserId(_) => HandshakeRefusal::InvalidUserId,
            Self::Unauthorized(_) => HandshakeRefusal::Unauthorized,
            Self::AtCapacity(_) => HandshakeRefusal::AtCapacity,
            Self::InvalidPresenceMode(_) | Self::InvalidWatchlist(_) => {
                HandshakeRefusal::InvalidPresenceMode
            }
        }
    }
}

/// The parts of the handshake `auth` payload we read; anything else in it is ignored.
#[derive(Debug, Default, Deserialize)]
struct Auth {
    #[serde(rename = "userId")]
    user_id: Option<serde_json::Value>,
    token: Option<String>,
    presence: Option<serde_json::Value>,
    /// The watchlist of a `watch` socket with `--auth none`: an array of user ids.
    watch: Option<serde_json::Value>,
    /// socket.io-client's session id and last offset, sent to recover a session after a drop.
    pid: Option<String>,
    offset: Option<String>,
}

/// What the handlers share.
pub struct SocketContext {
    /// Who is online: each socket joins it at connect and leaves at disconnect.
    pub presence: Arc<Presence>,
    /// For the offline mailbox, handed over on connect.
    pub gateway: Gateway,
    /// How a handshake is identified (`--auth`).
    pub auth: BrowserAuth,
    /// Counters the handlers move.
    pub metrics: Arc<Metrics>,
    /// The per-socket and per-user bounds.
    pub limits: Limits,
    /// Connection state recovery (`None` when `--recovery-window-ms` is 0).
    pub recovery: Option<Recovery>,
}

/// Sockets held against `--max-connections`. A slot is taken atomically by the handshake
/// check itself, so concurrent handshakes cannot overshoot the limit, and given back when the
/// socket is dropped, whichever way it ends (refused after the check, disconnected, evicted).
struct ConnectionSlots {
    used: AtomicUsize,
    max: usize,
}

/// One reserved slot, kept in the socket's extensions (as an `Arc`): dropping it releases it.
struct Slot(Arc<ConnectionSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionSlots {
    fn reserve(self: &Arc<Self>) -> Result<Arc<Slot>, HandshakeError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| HandshakeError::AtCapacity(self.max))?;
        Ok(Arc::new(Slot(self.clone())))
    }
}

/// Registers the handlers of the default namespace.
pub fn attach(io: &SocketIo, ctx: Arc<SocketContext>) {
    let connect_ctx = ctx.clone();
    let handler = move |socket: SocketRef| on_connect(socket, connect_ctx.clone());
    let slots = Arc::new(ConnectionSlots {
        used: AtomicUsize::new(0),
        max: ctx.limits.max_connections,
    });
    let middleware = move |socket: SocketRef, TryData(auth): TryData<Auth>| {
        let ctx = ctx.clone();
        let slots = slots.clone();
        async move {
            let mut auth = auth.ok().unwrap_or_default();
            let asked = auth.pid.take().map(|pid| Asked {
                pid,
                offset: auth.offset.take(),
            });
            let user = identify(&ctx, &slots, &socket, auth).inspect_err(|e| {
                let failures = ctx.metrics.handshake_refused(e.cause());
                tracing::info!(socket = %socket.id, reason = %e, failures, "handshake refused");
            })?;
            listen(&ctx, &socket, user.clone());
            if let Some(recovery) = &ctx.recovery {
                let mode = socket.extensions.get::<PresenceMode>().unwrap_or_default();
                recovery
                    .admit(&ctx.presence, &socket, &user, mode, asked)
                    .await;
            }
            Ok::<_, HandshakeError>(())
        }
    };
    io.ns("/", handler.with(middleware));
}

/// Resolves and validates the user id and takes a connection slot, or refuses the socket.
fn identify(
    ctx: &SocketContext,
    slots: &Arc<ConnectionSlots>,
    socket: &SocketRef,
    auth: Auth,
) -> Result<Arc<str>, HandshakeError> {
    // Dropped, and so released, if the handshake is refused below.
    let slot = slots.reserve()?;
    let mut watch = auth.watch.map(Some);
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
            // With a token, only the signed claim names whom the socket watches.
            watch = Some(verified.watchlist);
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
    let mode = match auth.presence {
        Some(serde_json::Value::String(mode)) => Some(mode),
        Some(other) => return Err(HandshakeError::InvalidPresenceMode(other.to_string())),
        None => query_param(socket, "presence"),
    };
    if let Some(mode) = mode {
        let mode: PresenceMode = mode
            .parse()
            .map_err(|()| HandshakeError::InvalidPresenceMode(format!("{mode:?}")))?;
        socket.extensions.insert(mode);
        if mode == PresenceMode::Watch {
            let ids = match watch {
                Some(claimed) => claimed,
                None => query_param(socket, "watch").map(|q| {
                    q.split(',')
                        .filter(|_| !q.is_empty())
                        .map(serde_json::Value::from)
                        .collect()
                }),
            };
            let ids = watchlist(ids, ctx.limits.max_watchlist)?;
            socket.extensions.insert(Watchlist(Arc::new(ids)));
        }
    }
    let user: Arc<str> = Arc::from(user);
    socket.extensions.insert(slot);
    socket.extensions.insert(UserId(user.clone()));
    Ok(user)
}

/// The users a `watch` socket watches, from its handshake until it joins the watch index.
#[derive(Debug, Clone)]
struct Watchlist(Arc<Vec<Arc<str>>>);

/// Checks a watchlist as sent (`None`: no list, so an empty one): an array of user ids
/// (strings or numbers, as `userId`).
fn watchlist(sent: Option<serde_json::Value>, max: usize) -> Result<Vec<Arc<str>>, HandshakeError> {
    let invalid = |why: &str| HandshakeError::InvalidWatchlist(why.to_string());
    let items = match sent {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => items,
        Some(_) => return Err(invalid("not an array of user ids")),
    };
    let ids = items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(invalid("not an array of user ids")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    validation::watchlist(ids, max).map_err(HandshakeError::InvalidWatchlist)
}

/// The first value of `name` in the handshake request's query string, percent-decoded.
fn query_param(socket: &SocketRef, name: &str) -> Option<String> {
    let query = socket.req_parts().uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Registers the socket's event and disconnect handlers. Called by the handshake check,
/// before socketioxide queues the CONNECT packet: a client may emit the moment it sees its
/// connect, and an event reaching a socket without handlers is dropped unseen (a
/// `renewToken` unanswered, a flood uncounted).
fn listen(ctx: &Arc<SocketContext>, socket: &SocketRef, user: Arc<str>) {
    let limit = Arc::new(InboundLimit {
        ctx: ctx.clone(),
        user: user.clone(),
        window: std::sync::Mutex::new(Window {
            start: Instant::now(),
            events: 0,
            bytes: 0,
            tripped: false,
        }),
    });
    socket.on_fallback(IgnoredEvents(limit.clone()));
    if let BrowserAuth::Jwt(_) = &ctx.auth {
        let ctx = ctx.clone();
        socket.on(RENEW_TOKEN_EVENT, RenewToken { ctx, limit });
    }
    let gone = CancellationToken::new();
    socket.extensions.insert(Gone(gone.clone()));
    let (presence, recovery) = (ctx.presence.clone(), ctx.recovery.clone());
    socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
        gone.cancel();
        let transition = match &recovery {
            Some(recovery) => recovery.on_disconnect(&presence, &socket, &user, reason),
            None => presence.disconnect(&user, socket.id),
        };
        tracing::debug!(socket = %socket.id, %user, %reason, ?transition, "socket disconnected");
    });
}

fn leave(presence: &Presence, user: &str, socket: &SocketRef) {
    let transition = presence.disconnect(user, socket.id);
    tracing::debug!(socket = %socket.id, user = %user, ?transition, "socket disconnected");
}

/// Runs inline, right after socketioxide queued the CONNECT packet, up to its first await
/// (there is none: see vendor/README.md), so the socket is deliverable before the client can
/// act on its connect.
async fn on_connect(socket: SocketRef, ctx: Arc<SocketContext>) {
    let (Some(UserId(user)), Some(Gone(gone))) = (
        socket.extensions.get::<UserId>(),
        socket.extensions.get::<Gone>(),
    ) else {
        // The handshake check always sets both; a socket without them must not linger
        // unaccounted.
        let _ = socket.disconnect();
        return;
    };
    // Authenticated: this session no longer counts against the pre-authentication bounds.
    if let Some(slot) = socket.req_parts().extensions.get::<PendingSlot>() {
        slot.release();
    }
    socket.join(user.to_string());
    ctx.metrics.connections.inc();
    let mode = socket.extensions.get::<PresenceMode>().unwrap_or_default();
    let watched = socket.extensions.remove::<Watchlist>().map(|w| w.0);
    let joined = match Recovery::on_connect(&socket) {
        Resumed::Recovered => {
            // Its place in presence and what it missed came with the session; mail kept
            // meanwhile (sent with acks that did not come in time) is handed over too. The
            // reconnect's watchlist (a fresh token's claim) replaces the recovered one.
            if let Some(ids) = &watched {
                relist(&ctx, &socket, ids);
            }
            hand_over_mail(&ctx, &user);
            spawn_expiry(&ctx, &socket, gone);
            return;
        }
        Resumed::Joined(transition) => Joined {
            transition,
            evicted: None,
        },
        Resumed::No => {
            ctx.presence
                .connect_with(&user, socket.clone(), ctx.limits.max_sockets_per_user, mode)
        }
    };
    tracing::debug!(socket = %socket.id, user = %user, transition = ?joined.transition, "socket connected");
    if let Some(oldest) = joined.evicted {
        Metrics::add(&ctx.metrics.sockets_cut_off, 1);
        let reason = format!(
            "too many sockets for this user (limit {}): the oldest was closed",
            ctx.limits.max_sockets_per_user
        );
        disconnect_with_reason(oldest, &reason);
    }
    // No presence change means no broadcast is coming: this tab gets the list now.
    match mode {
        PresenceMode::Watch => {
            let done = ctx.presence.watch_join(
                &user,
                socket.clone(),
                watched.as_deref().map_or(&[], Vec::as_slice),
                |socket, json| Encoded::new(ONLINE_USERS_EVENT, json).offer(socket),
            );
            emit::settle_watch(
                &ctx.presence,
                &ctx.metrics,
                ctx.limits.max_dropped_sends,
                done,
            );
        }
        _ if joined.transition != Transition::Unchanged => {}
        PresenceMode::List => {
            let list = ctx.presence.online_list();
            let offer = Encoded::new(ONLINE_USERS_EVENT, &list.json).offer(&socket);
            if offer != Offer::Taken {
                tracing::debug!(socket = %socket.id, ?offer, "online list not sent");
            }
        }
        PresenceMode::Changes => {
            // Under the user's sockets lock, so a concurrent round sees the version it holds.
            ctx.presence.sync_socket(&user, socket.id, |socket, list| {
                Encoded::new(ONLINE_USERS_EVENT, &list.json).offer(socket)
            });
        }
        PresenceMode::Off => {}
    }
    hand_over_mail(&ctx, &user);
    spawn_expiry(&ctx, &socket, gone);
    // A client that vanished while we registered it has already run the disconnect hook,
    // before the socket was in presence; leaving twice is harmless, staying forever is not.
    if !socket.connected() {
        leave(&ctx.presence, &user, &socket);
    }
}

/// Messages kept while the user was offline; the task ends when the queue is handed over.
fn hand_over_mail(ctx: &SocketContext, user: &Arc<str>) {
    let (gateway, user) = (ctx.gateway.clone(), user.clone());
    tokio::spawn(async move { gateway.hand_over_on_connect(&user).await });
}

/// With `--auth jwt`, disconnects the socket when its token expires.
fn spawn_expiry(ctx: &SocketContext, socket: &SocketRef, gone: CancellationToken) {
    if let (BrowserAuth::Jwt(_), Some(ValidUntil(deadline))) =
        (&ctx.auth, socket.extensions.get::<ValidUntil>())
    {
        tokio::spawn(expire(socket.clone(), deadline.subscribe(), gone));
    }
}

/// Checks a fresh token sent on an open socket: it must be valid and name the same user. The
/// socket then lives until the new token's expiry.
fn renew(
    ctx: &SocketContext,
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
    // A new `watchlist` claim replaces the list of a `watch` socket.
    if let Some(claimed) = verified.watchlist {
        relist(
            ctx,
            socket,
            &watchlist(Some(claimed), ctx.limits.max_watchlist)?,
        );
    }
    deadline.send_replace(verified.valid_until);
    tracing::debug!(socket = %socket.id, user = %user, valid_until = verified.valid_until, "token renewed");
    Ok(verified.valid_until)
}

/// Replaces the watchlist of the one `watch` socket `socket` by `ids`; it gets the change
/// set the new list implies.
fn relist(ctx: &SocketContext, socket: &SocketRef, ids: &[Arc<str>]) {
    let done = ctx
        .presence
        .set_socket_watchlist(socket.id, ids, |socket, json| {
            Encoded::new(ONLINE_USERS_CHANGED_EVENT, json).offer(socket)
        });
    if let Some(done) = done {
        emit::settle_watch(
            &ctx.presence,
            &ctx.metrics,
            ctx.limits.max_dropped_sends,
            done,
        );
    }
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

/// What one client sent in the current second.
struct Window {
    start: Instant,
    events: u32,
    bytes: u64,
    /// The socket was cut off: what it still sends until it is gone is ignored.
    tripped: bool,
}

/// Counts the events a client sends, whether handled (`renewToken`) or ignored. Over the
/// per-second limits, the socket leaves presence and is cut off.
struct InboundLimit {
    ctx: Arc<SocketContext>,
    user: Arc<str>,
    window: std::sync::Mutex<Window>,
}

impl InboundLimit {
    /// Counts one event of `bytes`: whether it may be handled. The event that crosses a
    /// limit cuts the socket off.
    fn admit(&self, socket: &SocketRef, bytes: usize) -> bool {
        let Some(reason) = self.count(bytes) else {
            return !self.tripped();
        };
        Metrics::add(&self.ctx.metrics.client_floods, 1);
        Metrics::add(&self.ctx.metrics.sockets_cut_off, 1);
        self.ctx.presence.disconnect(&self.user, socket.id);
        disconnect_with_reason(socket.clone(), &reason);
        // The rest of a burst is already on its way: the connection ends after the reason and
        // the `41`, whether or not the client would close it.
        socket.close_transport();
        false
    }

    fn tripped(&self) -> bool {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tripped
    }

    /// Counts one event of `bytes`; returns why the socket must go, once.
    fn count(&self, bytes: usize) -> Option<String> {
        let limits = &self.ctx.limits;
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            (w.start, w.events, w.bytes) = (now, 0, 0);
        }
        w.events = w.events.saturating_add(1);
        w.bytes = w.bytes.saturating_add(bytes as u64);
        if w.tripped {
            return None;
        }
        let reason = if w.events > limits.max_client_events_per_sec {
            format!(
                "too many events: over {} per second",
                limits.max_client_events_per_sec
            )
        } else if w.bytes > limits.max_client_bytes_per_sec {
            format!(
                "too much data: over {} bytes of events per second",
                limits.max_client_bytes_per_sec
            )
        } else {
            return None;
        };
        w.tripped = true;
        Some(reason)
    }
}

/// The fallback every unhandled event reaches: counted, then dropped. A handler of our own
/// (not a closure) sees the raw payload's size and spawns no task per event.
struct IgnoredEvents(Arc<InboundLimit>);

impl MessageHandler<LocalAdapter, IgnoredEvents> for IgnoredEvents {
    fn call(&self, socket: Arc<Socket>, value: Value, _ack: Option<i64>) {
        let bytes = match &value {
            Value::Str(text, binary) => {
                text.len() + binary.iter().flatten().map(|b| b.len()).sum::<usize>()
            }
            Value::Bytes(b) => b.len(),
        };
        self.0.admit(&SocketRef::from(socket), bytes);
    }
}

/// `renewToken`, handled inline (socketioxide spawns an async handler, so a flood's later
/// event could cut the socket off before an admitted renewal's ack was written).
struct RenewToken {
    ctx: Arc<SocketContext>,
    limit: Arc<InboundLimit>,
}

impl MessageHandler<LocalAdapter, RenewToken> for RenewToken {
    fn call(&self, socket: Arc<Socket>, mut value: Value, ack: Option<i64>) {
        let BrowserAuth::Jwt(verifier) = &self.ctx.auth else {
            return;
        };
        let Ok(TryData(token)) = TryData::<String>::from_message_parts(&socket, &mut value, &ack);
        let Ok(ack) = AckSender::from_message_parts(&socket, &mut value, &ack);
        let socket = SocketRef::from(socket);
        let size = token.as_ref().map_or(0, String::len);
        if !self.limit.admit(&socket, size) {
            return;
        }
        let reply = match renew(&self.ctx, verifier, &socket, token.ok()) {
            Ok(valid_until) => json!({ "ok": true, "validUntil": valid_until }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        let _ = ack.send(&reply);
    }
}

/// Resends of one online-list version to the sockets that refused it.
const PRESENCE_RETRIES: u32 = 5;

/// What one frame costs against the presence budget on top of its bytes, for `changes`
/// sockets: a frame is a channel send, a task wake-up and a write syscall whatever its size.
/// Measured (release, 2 cores, 5,000 WebSocket clients on one node, loadgen on the same
/// cores): 40 rounds of one-id change sets took 3.11 s of gateway CPU, 15.5 µs per frame;
/// 10 rounds of a 38.9 KB whole list (1.94 GB) took 1.41 s, 0.33 ns per byte once the frames'
/// own cost is taken out. A frame costs as much as about 48 KB.
pub const FRAME_COST: u64 = 48 * 1024;

/// Pushes presence to every socket whenever the online set changes, at most once per
/// `interval`: a burst of N connects costs one round, not N, and the last state always goes
/// out. Each socket gets what its mode asks for ([`Presence::offer_round`]); the list and the
/// change set are each encoded once and their bytes shared by every socket. A round costs
/// list size × `list` sockets, plus for `changes` sockets each frame's bytes and
/// [`FRAME_COST`]; the next one waits until that cost fits in `budget` bytes per second, so a
/// large audience gets fewer, not slower, updates.
pub async fn broadcast_presence(
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    max_dropped_sends: u32,
    interval: Duration,
    budget: u64,
    shutdown: CancellationToken,
) {
    let mut retries = 0;
    loop {
        // Sockets that could not take a list or change set (full buffers) are offered the
        // state again, a few times, even with no new change: the last state must not be lost
        // in a backlog.
        if retries == 0 {
            tokio::select! {
                () = presence.changed() => {}
                () = shutdown.cancelled() => return,
            }
        }
        let watch = presence.watch_round(max_dropped_sends, |socket, frame, json| {
            Encoded::new(frame_event(frame), json).offer(socket)
        });
        let (watch_cost, watch_behind) = (watch.cost(FRAME_COST), watch.behind);
        emit::settle_watch(&presence, &metrics, max_dropped_sends, watch);
        let round = presence.has_round_sockets().then(|| presence.round());
        let Some(round) = round.filter(|r| r.base != r.list.version || retries > 0) else {
            retries = next_retries(watch_behind, retries);
            if watch_cost > 0 {
                pace(watch_cost, interval, budget, retries, &shutdown).await;
            }
            continue;
        };
        let mut list = Encoded::new(ONLINE_USERS_EVENT, &round.list.json);
        let mut changes = round
            .changes
            .as_deref()
            .map(|c| Encoded::new(ONLINE_USERS_CHANGED_EVENT, c));
        let outcome = presence.offer_round(&round, max_dropped_sends, |socket, frame| {
            match (frame, changes.as_mut()) {
                (Frame::Changes, Some(changes)) => changes.offer(socket),
                _ => list.offer(socket),
            }
        });
        retries = next_retries(outcome.behind + watch_behind, retries);
        let list_bytes = round.list.json.get().len() as u64;
        let change_bytes = round.changes.as_ref().map_or(0, |c| c.get().len() as u64);
        metrics.presence_broadcasts.inc();
        metrics.presence_broadcast_bytes.inc_by(
            list_bytes * u64::from(outcome.lists.taken + outcome.resyncs.taken)
                + change_bytes * u64::from(outcome.changes.taken),
        );
        metrics
            .presence_changes
            .inc_by(u64::from(outcome.changes.taken));
        metrics
            .presence_resyncs
            .inc_by(u64::from(outcome.resyncs.taken));
        let cost = list_bytes * u64::from(outcome.lists.offered)
            + (list_bytes + FRAME_COST) * u64::from(outcome.resyncs.offered)
            + (change_bytes + FRAME_COST) * u64::from(outcome.changes.offered);
        settle(&presence, &metrics, max_dropped_sends, outcome.delivered);
        pace(cost + watch_cost, interval, budget, retries, &shutdown).await;
    }
}

/// The next count of resends after a round that left `behind` sockets without its state.
fn next_retries(behind: u32, retries: u32) -> u32 {
    match behind {
        0 => 0,
        behind if retries < PRESENCE_RETRIES => {
            tracing::debug!(
                behind,
                retries,
                "presence refused by some sockets; will resend"
            );
            retries + 1
        }
        _ => 0,
    }
}

/// Waits until a round that cost `cost` fits in `budget` bytes per second (at least
/// `interval`), longer while resending.
async fn pace(
    cost: u64,
    interval: Duration,
    budget: u64,
    retries: u32,
    shutdown: &CancellationToken,
) {
    let pause = interval.max(Duration::from_secs_f64(cost as f64 / budget.max(1) as f64));
    tokio::select! {
        () = tokio::time::sleep(pause * (retries + 1)) => {}
        () = shutdown.cancelled() => {}
    }
}

/// The event a presence frame goes out as.
fn frame_event(frame: Frame) -> &'static str {
    match frame {
        Frame::List => ONLINE_USERS_EVENT,
        Frame::Changes => ONLINE_USERS_CHANGED_EVENT,
    }
}
