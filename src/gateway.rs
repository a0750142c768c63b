//! The gateway's state and its small API: deliver a message to a user, list who is online.
//!
//! Both the gRPC service and the Socket.IO handlers go through here, so the rules (which
//! fields are required, how a user is addressed, how deliveries are counted) live in one place.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures_util::{future::BoxFuture, stream::FuturesUnordered, StreamExt};
use prost_types::Value;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use socketioxide::{extract::SocketRef, SendError, SocketError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod handover;
mod watchlist;

use handover::{HandOvers, MAIL_DOORBELL};

use crate::{
    caller::Caller,
    cluster::{self, AckCount, Claim, Cluster, LocalSockets, Message},
    config::Limits,
    cursor::PageCursor,
    emit::{self, Encoded},
    error::GatewayError,
    mailbox::{Mailbox, MAX_TTL_SECONDS},
    metrics::Metrics,
    order::Turn,
    outcome::{Handoff, Reached, Refusal, Sent, Took},
    presence::{Holding, NodeIdx, Offer, Page, Presence, UserPresence},
    recovery::{self, is_ack, Recovery, Session},
    validation,
    watch::{WatchItem, Watchers},
    wire::{self, Json},
};

/// `ListOnline` page size when the caller names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest `ListOnline` page: a larger `page_size` is served as this.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Most receivers one `SendToUsers` call may name.
pub const MAX_RECEIVERS: usize = 10_000;

/// Longest acknowledgement wait a caller may ask for: a call holds its gRPC stream (and each
/// socket an ack entry) that long.
pub const MAX_ACK_TIMEOUT_MS: u32 = 60_000;

/// How a `SendDirect` is delivered beyond the default (emit and count).
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Emit with a Socket.IO acknowledgement and wait this long for the acks.
    pub ack_timeout: Option<Duration>,
    /// Deliver at most once per key within the idempotency window.
    pub idempotency_key: Option<String>,
    /// Keep the message this long for the receiver's next connect if it reaches nobody.
    pub ttl: Option<Duration>,
    /// Who sent it: its idempotency keys and mailbox share are its own.
    pub caller: Arc<Caller>,
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

impl SendOptions {
    /// Validates the request's option fields (0 or empty means "off" for each).
    pub fn new(
        ack_timeout_ms: u32,
        idempotency_key: String,
        ttl_seconds: u32,
    ) -> Result<Self, GatewayError> {
        if ttl_seconds > MAX_TTL_SECONDS {
            return Err(GatewayError::invalid(
                "ttl_seconds",
                format!("{ttl_seconds} is over the {MAX_TTL_SECONDS}-second limit"),
            ));
        }
        if ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
            return Err(GatewayError::invalid(
                "ack_timeout_ms",
                format!("{ack_timeout_ms} is over the {MAX_ACK_TIMEOUT_MS} ms limit"),
            ));
        }
        if idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(GatewayError::invalid(
                "idempotency_key",
                format!(
                    "{} bytes, over the {MAX_IDEMPOTENCY_KEY_BYTES}-byte limit",
                    idempotency_key.len()
                ),
            ));
        }
        if idempotency_key.chars().any(char::is_control) {
            return Err(GatewayError::invalid(
                "idempotency_key",
                "contains control characters",
            ));
        }
        Ok(Self {
            ack_timeout: (ack_timeout_ms > 0).then(|| Duration::from_millis(ack_timeout_ms.into())),
            idempotency_key: Some(idempotency_key).filter(|k| !k.is_empty()),
            ttl: (ttl_seconds > 0).then(|| Duration::from_secs(ttl_seconds.into())),
            caller: Arc::default(),
        })
    }
}

/// Frees a claimed idempotency key unless the call's answer was recorded: a call that failed
/// or was cancelled may be retried.
struct Claimed<'a> {
    cluster: &'a dyn Cluster,
    caller: &'a str,
    key: &'a str,
    settled: bool,
}

impl Claimed<'_> {
    fn settle(mut self, sent: Sent) {
        self.settled = true;
        self.cluster.settle(self.caller, self.key, Some(sent));
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.cluster.settle(self.caller, self.key, None);
        }
    }
}

/// The acknowledgements a delivery asked of its sockets, still to come.
#[derive(Default)]
pub struct Acks(Vec<BoxFuture<'static, bool>>);

impl Acks {
    /// Asks `socket` to acknowledge by `deadline`; a socket with a recoverable session may
    /// also ack after a recovery, on whichever socket then holds its session.
    fn ask(
        &mut self,
        socket: &SocketRef,
        event: &str,
        json: &RawValue,
        deadline: Instant,
    ) -> Offer {
        if let Some(session) = socket.extensions.get::<Arc<Session>>() {
            let (offer, ticket) = session.offer_acked(socket, event, json, deadline);
            if let Some(ticket) = ticket {
                self.0.push(Box::pin(async move {
                    ticket.wait().await;
                    true
                }));
            }
            return offer;
        }
        let asked = socket
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .emit_with_ack::<_, IgnoredAny>(event, json);
        match asked {
            Ok(stream) => {
                self.0.push(Box::pin(async move { is_ack(&stream.await) }));
                Offer::Taken
            }
            Err(SendError::Socket(SocketError::Closed)) => Offer::Gone,
            Err(e) => {
                tracing::warn!(socket = %socket.id, error = %e, "send dropped");
                Offer::Full
            }
        }
    }

    /// Counts the acks that arrive by `deadline`. The streams of sockets that never ack are
    /// dropped then: their entries are swept by socketioxide, nothing waits on them.
    async fn count(self, deadline: Option<Instant>) -> u32 {
        let Some(deadline) = deadline.filter(|_| !self.0.is_empty()) else {
            return 0;
        };
        let mut waiting: FuturesUnordered<_> = self.0.into_iter().collect();
        let mut acked = 0;
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(ack) = waiting.next().await {
                acked += u32::from(ack);
            }
        })
        .await;
        acked
    }
}

/// Most user ids one `GetPresence` call may name.
pub const MAX_PRESENCE_IDS: usize = 1000;

/// Longest `DisconnectUser` reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// The `disconnectReason` a `DisconnectUser` call without a reason sends.
pub const DEFAULT_DISCONNECT_REASON: &str = "disconnected by the server";

/// The last pause between a connect's attempts to read an unreachable mailbox.
const MAIL_RETRY_MAX: Duration = Duration::from_secs(32);

/// A validated message, converted to JSON once however many sockets receive it.
struct Outgoing<'a> {
    event: &'a str,
    json: Box<RawValue>,
    /// With connection state recovery, the message's offset, the same on every node: a socket
    /// whose session moves between nodes while it is sent keeps it once.
    offset: Option<Arc<str>>,
}

impl<'a> Outgoing<'a> {
    /// The message as the nodes deliver it.
    fn message(&self) -> Message<'_> {
        Message {
            event: self.event,
            json: &self.json,
            offset: self.offset.as_deref(),
        }
    }

    fn new(
        event: &'a str,
        message: Option<&Value>,
        max_bytes: usize,
    ) -> Result<Self, GatewayError> {
        let event = validation::event(event).map_err(|r| GatewayError::invalid("event", r))?;
        let message = match message {
            Some(m @ Value { kind: Some(_) }) => m,
            _ => return Err(GatewayError::invalid("message", "is required")),
        };
        wire::validate(message)?;
        let json = serde_json::value::to_raw_value(&Json(message))
            .map_err(|e| GatewayError::Encode(e.to_string()))?;
        if json.get().len() > max_bytes {
            return Err(GatewayError::TooLarge {
                size: json.get().len(),
                limit: max_bytes,
            });
        }
        Ok(Self {
            event,
            json,
            offset: None,
        })
    }
}

fn check_receiver(receiver: &str) -> Result<(), GatewayError> {
    validation::user_id(receiver).map_err(|r| GatewayError::invalid("receiver_id", r))
}

/// A request's list of user ids: 1 to `max` of them, each a valid id.
fn check_user_list(field: &'static str, ids: &[String], max: usize) -> Result<(), GatewayError> {
    if ids.is_empty() {
        return Err(GatewayError::invalid(field, "is required"));
    }
    if ids.len() > max {
        return Err(GatewayError::invalid(
            field,
            format!("has more than {max} entries"),
        ));
    }
    for id in ids {
        validation::user_id(id).map_err(|r| GatewayError::invalid(field, format!("{id:?} {r}")))?;
    }
    Ok(())
}

/// A page of online users with the token that resumes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlinePage {
    /// User ids, sorted.
    pub user_ids: Vec<String>,
    /// Empty on the last page.
    pub next_page_token: String,
    /// Users online now, on every page.
    pub total: usize,
}

/// Shared gateway state; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    presence: Arc<Presence>,
    cluster: Arc<dyn Cluster>,
    mailbox: Arc<dyn Mailbox>,
    cursor: PageCursor,
    limits: Limits,
    metrics: Arc<Metrics>,
    draining: CancellationToken,
    watchers: Arc<Watchers>,
    hand_overs: Arc<HandOvers>,
    recovery: Option<Recovery>,
}

impl Gateway {
    /// The gateway over its registry, engine and mailbox; nothing runs until the server
    /// starts it.
    pub fn new(
        presence: Arc<Presence>,
        cluster: Arc<dyn Cluster>,
        mailbox: Arc<dyn Mailbox>,
        cursor: PageCursor,
        limits: Limits,
        metrics: Arc<Metrics>,
        recovery: Option<Recovery>,
    ) -> Self {
        Self {
            recovery,
            presence,
            cluster,
            mailbox,
            cursor,
            limits,
            metrics,
            draining: CancellationToken::new(),
            watchers: Arc::new(Watchers::new(
                limits.max_presence_watchers,
                limits.max_presence_watchers_per_caller,
                limits.watch_buffer_events,
            )),
            hand_overs: Arc::default(),
        }
    }

    /// Refuses all further calls with [`GatewayError::ShuttingDown`]. Called before any
    /// socket is closed, so no caller is told "0 sockets" for a user who was online.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// Completes once [`Gateway::drain`] was called, for streams to end with a status.
    pub async fn drained(&self) {
        self.draining.cancelled().await;
    }

    fn open(&self) -> Result<(), GatewayError> {
        if self.draining.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        Ok(())
    }

    /// Emits `event` with `message` to every socket of `receiver`. Returns how many sockets
    /// took it: an offline user is 0, not an error. `turn` is held until this node's sockets
    /// have the message. With an ack timeout, also waits (on every node at once) for the
    /// sockets' acknowledgements until the timeout and counts them.
    pub async fn send_direct(
        &self,
        receiver: &str,
        event: &str,
        message: Option<&Value>,
        options: &SendOptions,
        turn: Turn,
    ) -> Result<Sent, GatewayError> {
        self.open()?;
        check_receiver(receiver)?;
        let outgoing = self.outgoing(event, message)?;
        let Some(key) = options.idempotency_key.as_deref() else {
            return self.send_once(receiver, &outgoing, options, turn).await;
        };
        // Per receiver: a backend fanning one event out to several users under the event's
        // id as key sends each of them a message, not one message and replays. The length
        // prefix keeps `a:b` + `c` apart from `a` + `b:c`. Per caller too (the engine keeps
        // each caller's keys apart): another backend's call with the same key is no replay
        // of this one, and cannot make this one a replay of its own.
        let key = &format!("{}:{receiver}:{key}", receiver.len());
        let caller = &*options.caller.name;
        let claimed = match self
            .cluster
            .claim(caller, key)
            .await
            .map_err(GatewayError::Idempotency)?
        {
            Claim::Replay(sent) => {
                Metrics::add(&self.metrics.idempotent_replays, 1);
                return Ok(sent);
            }
            Claim::Owner => Claimed {
                cluster: &*self.cluster,
                caller,
                key,
                settled: false,
            },
        };
        match self.send_once(receiver, &outgoing, options, turn).await {
            Ok(sent) => {
                claimed.settle(sent);
                Ok(sent)
            }
            // Sockets here took it, the other nodes never will (their request is dropped
            // past its deadline): the key keeps what was done, so a retry replays it
            // instead of delivering these sockets a second copy.
            Err(e @ GatewayError::Cluster { local, pending, .. }) if local + pending > 0 => {
                claimed.settle(Sent {
                    delivered: local,
                    pending,
                    partial: true,
                    ..Sent::default()
                });
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// One delivery of a validated message (see [`Gateway::send_direct`]); with a TTL, kept
    /// in the mailbox when it reached nobody.
    async fn send_once(
        &self,
        receiver: &str,
        outgoing: &Outgoing<'_>,
        options: &SendOptions,
        turn: Turn,
    ) -> Result<Sent, GatewayError> {
        let deadline = options.ack_timeout.map(|t| Instant::now() + t);
        let mut sent = self.reach(receiver, outgoing, deadline, turn).await?;
        // A socket away within its recovery window keeps it: its replay is the delivery.
        let reached = if deadline.is_some() {
            sent.acked
        } else {
            sent.delivered + sent.pending
        };
        // A node that did not answer may have delivered it: no second copy is kept.
        if let Some(ttl) = options.ttl.filter(|_| reached == 0 && !sent.partial) {
            self.keep(receiver, outgoing, options, ttl, &mut sent)
                .await?;
        }
        Ok(sent)
    }

    /// Delivers to every socket of `receiver` on every node, counting acks until `deadline`.
    async fn reach(
        &self,
        receiver: &str,
        outgoing: &Outgoing<'_>,
        deadline: Option<Instant>,
        turn: Turn,
    ) -> Result<Sent, GatewayError> {
        let (took, remote, acks) = self.deliver(receiver, outgoing.message(), deadline);
        // Local sockets have it: the connection's next call may deliver while other nodes answer.
        drop(turn);
        let mut sent = [Sent::from(took)];
        let asked = async {
            if remote.is_empty() {
                return Ok(());
            }
            let asks = remote.into_iter().map(|node| (node, vec![0])).collect();
            self.ask_nodes(asks, &[receiver], outgoing, deadline, &mut sent)
                .await
        };
        let (acked, asked) = tokio::join!(self.acked(acks, deadline), asked);
        asked?;
        sent[0].acked += acked;
        Ok(sent[0])
    }

    /// Waits for a delivery's acks until `deadline` and counts them.
    async fn acked(&self, acks: Acks, deadline: Option<Instant>) -> u32 {
        let acked = acks.count(deadline).await;
        if acked > 0 {
            Metrics::add(&self.metrics.acked, acked.into());
        }
        acked
    }

    /// Emits one message to many users, encoding it once. Returns each distinct receiver's
    /// socket count, in request order.
    pub async fn send_to_users(
        &self,
        receivers: &[String],
        event: &str,
        message: Option<&Value>,
        turn: Turn,
    ) -> Result<Vec<(String, Sent)>, GatewayError> {
        self.open()?;
        check_user_list("receiver_ids", receivers, MAX_RECEIVERS)?;
        let outgoing = self.outgoing(event, message)?;
        let mut seen = HashSet::with_capacity(receivers.len());
        let mut names = Vec::with_capacity(receivers.len());
        let mut sent = Vec::with_capacity(receivers.len());
        let mut asks: BTreeMap<NodeIdx, Vec<usize>> = BTreeMap::new();
        for receiver in receivers {
            if seen.insert(receiver.as_str()) {
                let (took, remote, _) = self.deliver(receiver, outgoing.message(), None);
                for node in remote {
                    asks.entry(node).or_default().push(names.len());
                }
                names.push(receiver.as_str());
                sent.push(Sent::from(took));
            }
        }
        drop(turn);
        if !asks.is_empty() {
            self.ask_nodes(asks, &names, &outgoing, None, &mut sent)
                .await?;
        }
        Ok(names.into_iter().map(String::from).zip(sent).collect())
    }

    /// Asks the other nodes holding receivers for their share of a delivery (see
    /// [`cluster::deliver_to_nodes`]); a node that cannot be asked fails the call, saying what
    /// this node delivered.
    async fn ask_nodes(
        &self,
        asks: BTreeMap<NodeIdx, Vec<usize>>,
        receivers: &[&str],
        outgoing: &Outgoing<'_>,
        ack: Option<Instant>,
        sent: &mut [Sent],
    ) -> Result<(), GatewayError> {
        let asked = cluster::deliver_to_nodes(
            &*self.cluster,
            asks,
            receivers,
            outgoing.message(),
            ack,
            sent,
        )
        .await;
        asked.map_err(|unasked| GatewayError::Cluster {
            receivers: unasked
                .receivers
                .iter()
                .map(|&i| receivers[i])
                .take(3)
                .collect::<Vec<_>>()
                .join(", "),
            local: sent.iter().map(|s| s.delivered).sum(),
            pending: sent.iter().map(|s| s.pending).sum(),
            source: unasked.source,
        })
    }

    /// A validated message, with its offset when recovery is on.
    fn outgoing<'a>(
        &self,
        event: &'a str,
        message: Option<&Value>,
    ) -> Result<Outgoing<'a>, GatewayError> {
        let mut outgoing = Outgoing::new(event, message, self.limits.max_message_bytes)?;
        outgoing.offset = self.recovery.as_ref().map(|_| recovery::next_offset());
        Ok(outgoing)
    }

    /// Hands an encoded message to every local socket of `receiver`; counts the sockets that
    /// took it (or kept it for a recovery) and names the other nodes holding the receiver.
    /// With `ack`, each socket is asked to acknowledge by then. A socket whose buffer stays
    /// full is cut off rather than buffered without bound.
    fn deliver(
        &self,
        receiver: &str,
        message: Message<'_>,
        ack: Option<Instant>,
    ) -> (Took, Vec<NodeIdx>, Acks) {
        let Message {
            event,
            json,
            offset,
        } = message;
        let mut acks = Acks::default();
        let mut encoded = Encoded::new(event, json).at(offset);
        let mut delivered = self.presence.deliver(
            receiver,
            self.limits.max_dropped_sends,
            |socket| match ack {
                None => encoded.offer(socket),
                Some(deadline) => acks.ask(socket, event, json, deadline),
            },
        );
        Metrics::add(&self.metrics.deliveries, delivered.accepted.into());
        Metrics::add(&self.metrics.refusals, delivered.refused.into());
        let took = Took {
            delivered: delivered.accepted,
            pending: delivered.pending,
        };
        let refused = delivered.refused;
        let remote = std::mem::take(&mut delivered.remote);
        emit::settle(
            &self.presence,
            &self.metrics,
            self.limits.max_dropped_sends,
            delivered,
        );
        tracing::debug!(
            receiver,
            event,
            bytes = json.get().len(),
            ?took,
            refused,
            "delivered"
        );
        (took, remote, acks)
    }

    /// Each distinct user's presence, in request order, from this node's registry and its
    /// replica of the other nodes (no round trip).
    pub fn get_presence(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, UserPresence)>, GatewayError> {
        self.open()?;
        check_user_list("user_ids", user_ids, MAX_PRESENCE_IDS)?;
        let mut seen = HashSet::with_capacity(user_ids.len());
        Ok(user_ids
            .iter()
            .filter(|u| seen.insert(u.as_str()))
            .map(|u| (u.clone(), self.presence.lookup(u)))
            .collect())
    }

    /// Disconnects every socket of `user` on every node holding it, each told `reason` first
    /// (`disconnectReason`). Returns how many; `partial` when a holder did not answer in time.
    pub async fn disconnect_user(&self, user: &str, reason: &str) -> Result<Sent, GatewayError> {
        self.open()?;
        validation::user_id(user).map_err(|r| GatewayError::invalid("user_id", r))?;
        if reason.len() > MAX_REASON_BYTES {
            return Err(GatewayError::invalid(
                "reason",
                format!("is longer than {MAX_REASON_BYTES} bytes"),
            ));
        }
        let reason = match reason {
            "" => DEFAULT_DISCONNECT_REASON,
            r => r,
        };
        let (local, remote) = self.disconnect_here(user, reason);
        let mut sent = Sent {
            delivered: local,
            ..Sent::default()
        };
        let answers = futures_util::future::join_all(
            remote
                .iter()
                .map(|&node| self.cluster.disconnect_remote(node, user, reason)),
        )
        .await;
        for (&node, answer) in remote.iter().zip(answers) {
            match answer {
                Ok(Some(n)) => {
                    sent.delivered += n;
                    // The node's own presence write follows; this node's answers say
                    // "offline" from now on.
                    self.presence.set_remote(user, node, Holding::default());
                }
                Ok(None) => sent.partial = true,
                Err(source) => {
                    return Err(GatewayError::Unreachable {
                        local: format!("{local} socket(s) of {user:?} were disconnected"),
                        source,
                    })
                }
            }
        }
        Ok(sent)
    }

    /// Takes the user's local sockets out of presence (the online list goes out once) and
    /// disconnects them; names the other nodes holding the user.
    fn disconnect_here(&self, user: &str, reason: &str) -> (u32, Vec<NodeIdx>) {
        let (sockets, remote) = self.presence.take_user(user);
        let count = sockets.len() as u32;
        for socket in sockets {
            emit::disconnect_with_reason(socket, reason);
        }
        Metrics::add(&self.metrics.user_disconnects, count.into());
        (count, remote)
    }

    /// Emits one message to every online user on every node, encoded once per node. A
    /// socket whose buffer is full refuses it (and is cut off after too many refusals).
    pub async fn broadcast(
        &self,
        event: &str,
        message: Option<&Value>,
    ) -> Result<Reached, GatewayError> {
        self.open()?;
        let outgoing = self.outgoing(event, message)?;
        Metrics::add(&self.metrics.broadcasts, 1);
        let mut reached = self.broadcast_here(outgoing.event, &outgoing.json);
        let remote = self
            .cluster
            .broadcast_remote(outgoing.event, &outgoing.json)
            .await
            .map_err(|source| GatewayError::Unreachable {
                local: format!("{} socket(s) took the message", reached.sockets),
                source,
            })?;
        reached += remote;
        Ok(reached)
    }

    /// Offers an encoded message to every socket of this node.
    fn broadcast_here(&self, event: &str, json: &RawValue) -> Reached {
        let mut encoded = Encoded::new(event, json);
        let (offered, users) = self.presence.offer_all(
            self.limits.max_dropped_sends,
            &self.cluster.ranked_before(),
            |socket| encoded.offer(socket),
        );
        Metrics::add(&self.metrics.deliveries, offered.accepted.into());
        Metrics::add(&self.metrics.refusals, offered.refused.into());
        let reached = Reached {
            users,
            sockets: offered.accepted,
            pending: offered.pending,
            refused: offered.refused,
            partial: false,
        };
        emit::settle(
            &self.presence,
            &self.metrics,
            self.limits.max_dropped_sends,
            offered,
        );
        tracing::debug!(event, ?reached, "broadcast on this node");
        reached
    }

    /// Opens a presence watch for `caller`, within its share of the slots (see
    /// [`crate::watch`]): an optional snapshot, then every change.
    pub fn watch_presence(
        &self,
        caller: &Caller,
        snapshot: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchItem, GatewayError>>, GatewayError> {
        self.open()?;
        self.watchers.open(
            caller,
            self.draining.clone(),
            self.presence.clone(),
            self.metrics.clone(),
            snapshot,
        )
    }

    /// One page of online users, sorted by id. `page_size` 0 means the default.
    pub fn list_online(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<OnlinePage, GatewayError> {
        self.open()?;
        let limit = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            "" => None,
            token => Some(self.cursor.decode(token)?),
        };
        let Page {
            user_ids,
            more,
            total,
        } = self.presence.page(after.as_deref(), limit);
        let next_page_token = match user_ids.last() {
            Some(last) if more => self.cursor.encode(last),
            _ => String::new(),
        };
        Ok(OnlinePage {
            user_ids,
            next_page_token,
            total,
        })
    }
}

/// Requests from other nodes reach this node's sockets through here.
impl LocalSockets for Gateway {
    fn deliver(
        &self,
        user: &str,
        event: &str,
        json: &RawValue,
        offset: Option<&str>,
        ack: Option<Instant>,
    ) -> (Took, Option<AckCount>) {
        if event == MAIL_DOORBELL {
            self.answer_doorbell(user);
            return (Took::default(), None);
        }
        let message = Message {
            event,
            json,
            offset,
        };
        let (took, _, acks) = Gateway::deliver(self, user, message, ack);
        let acked = ack.map(|deadline| {
            let gateway = self.clone();
            Box::pin(async move { gateway.acked(acks, Some(deadline)).await }) as AckCount
        });
        (took, acked)
    }

    fn disconnect(&self, user: &str, reason: &str) -> u32 {
        self.disconnect_here(user, reason).0
    }

    fn hand_off(&self, pid: &str, user: &str, offset: Option<&str>) -> Result<Handoff, Refusal> {
        let recovery = self.recovery.as_ref().ok_or(Refusal::Unknown)?;
        recovery.hand_off(&self.presence, pid, user, offset)
    }

    fn broadcast(&self, event: &str, json: &RawValue) -> Reached {
        self.broadcast_here(event, json)
    }

    fn set_watchlist(&self, user: &str, ids: &RawValue) -> u32 {
        self.watchlist_from_node(user, ids)
    }

    fn fence(&self, reason: &str) -> u32 {
        let mut closed = 0;
        for (user, _) in self.presence.local_holdings() {
            for socket in self.presence.take_user(&user).0 {
                emit::close_with_reason(socket, reason);
                closed += 1;
            }
        }
        closed
    }
}
