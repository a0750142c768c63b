//! One recoverable session: what its socket was sent lately, and whether the socket is live,
//! away (its connection dropped within the window) or being replayed to after a recovery.
//!
//! Every event kept carries the offset the client saw as its last argument. What is kept:
//! - while live, what was sent within the horizon (`--ping-interval-ms` + `--ping-timeout-ms`
//!   and a margin): an older event was followed by a ping the client answered, so it was read,
//!   or the connection would have timed out meanwhile;
//! - while away, everything sent to it, up to the bounds: one event more ends the session.
//!
//! Only the front is ever dropped, and [`Front`] says what was: a client whose last offset is
//! not kept and not the newest dropped one missed something, and gets a new session.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use socketioxide::{extract::SocketRef, socket::Sid, AckError, SocketError};
use socketioxide_core::{Str, Value};
use tokio::{sync::Notify, time::Instant};

use super::{Overflow, Shared};
use crate::{
    outcome::{Handoff, Refusal},
    presence::Offer,
};

/// An acknowledgement asked of a socket (SendDirect with `ack_timeout_ms`), kept across a
/// recovery: whichever socket of the session acks first completes it.
#[derive(Default)]
pub struct AckTicket {
    done: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl AckTicket {
    /// Marks the ack received and wakes the call counting it.
    pub fn complete(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once some socket of the session acked.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

/// Whether an ack stream's result is an ack: one with no arguments (`ack()` in the browser)
/// does not decode, but it is an ack all the same.
pub fn is_ack<T>(result: &Result<T, AckError>) -> bool {
    matches!(result, Ok(_) | Err(AckError::Decode(_)))
}

/// What replaying an event takes.
enum Payload {
    /// Encoded with its offset as last argument.
    Event { offset: Arc<str>, packet: Value },
    /// Sent with an ack request: no offset (the client would pass it to the listener in place
    /// of the ack function), re-asked on the recovered socket until `deadline`.
    Acked {
        event: Arc<str>,
        json: Box<RawValue>,
        deadline: Instant,
        ticket: Arc<AckTicket>,
    },
}

/// An event kept for a replay. Its size is computed from its payload when needed, not
/// stored: in `list` presence mode every tab keeps the lists sent within the horizon, and
/// 8 bytes less per entry keeps a deque of 4 or 8 in a smaller allocator size class.
struct Kept {
    payload: Payload,
    at: Instant,
}

impl Payload {
    /// What keeping it counts against the bounds.
    fn size(&self) -> usize {
        KEPT_OVERHEAD
            + match self {
                Payload::Event { offset, packet } => packet_len(packet) + offset.len(),
                Payload::Acked { event, json, .. } => json.get().len() + event.len(),
            }
    }
}

/// What was dropped from the front of a session's events.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Front {
    /// Nothing: a client without an offset (it got no event yet) can recover.
    Whole,
    /// Everything up to the event with this offset: a client that holds it can recover.
    After(Arc<str>),
    /// An event without an offset the client may not have read: only an offset still kept
    /// recovers.
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    /// The connection dropped at `since`; the epoch tells a stale expiry timer apart.
    Away {
        since: Instant,
    },
    /// Claimed by a reconnecting socket: events are kept, and sent in order by the pump from
    /// `next` until it catches up.
    Replaying {
        next: usize,
    },
    Ended,
}

struct State {
    kept: VecDeque<Kept>,
    /// No event kept is past the horizon before this (a lower bound): until then a live
    /// send does not read the front, a cache miss per send under load.
    recheck: Instant,
    bytes: usize,
    /// Events (and their bytes) kept since the connection dropped: what the bounds limit.
    missed: usize,
    missed_bytes: usize,
    front: Front,
    phase: Phase,
    /// The namespace socket now holding the session.
    holder: Sid,
    /// Bumped at each change of phase: a timer armed for one phase does nothing in another.
    epoch: u64,
}

/// A session, shared by the sockets that hold it in turn.
pub struct Session {
    /// Private session id: the recovery credential, with the user check.
    pub pid: Arc<str>,
    /// Whose it is.
    pub user: Arc<str>,
    /// The `socket.id` its client sees, kept across recoveries.
    pub public_id: Arc<str>,
    state: Mutex<State>,
    shared: Arc<Shared>,
}

/// A claim taken by a reconnecting socket.
pub struct Claim {
    /// Whether that socket's connection was still open (the drop not noticed yet): the caller
    /// closes it.
    pub was_live: bool,
    /// The timer epoch to arm the claim's expiry with.
    pub epoch: u64,
}

impl Session {
    pub(super) fn new(pid: Arc<str>, user: Arc<str>, holder: Sid, shared: Arc<Shared>) -> Self {
        Self {
            pid,
            user,
            public_id: Arc::from(holder.to_string()),
            state: Mutex::new(State {
                kept: VecDeque::new(),
                recheck: Instant::now(),
                bytes: 0,
                missed: 0,
                missed_bytes: 0,
                front: Front::Whole,
                phase: Phase::Live,
                holder,
                epoch: 0,
            }),
            shared,
        }
    }

    /// A session handed over by another node, for `holder`: what its client missed there
    /// (offset and packet, in order) is replayed first.
    pub(super) fn adopted(
        pid: Arc<str>,
        user: Arc<str>,
        holder: Sid,
        handoff: Handoff,
        shared: Arc<Shared>,
    ) -> Self {
        let session = Self {
            public_id: Arc::from(handoff.public_id),
            ..Self::new(pid, user, holder, shared)
        };
        {
            let mut state = session.lock();
            state.phase = Phase::Replaying { next: 0 };
            for (offset, packet) in handoff.events {
                let payload = Payload::Event {
                    offset: Arc::from(offset),
                    packet: Value::Str(Str::from(packet), None),
                };
                session.push(&mut state, payload);
            }
        }
        session
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps what comes for a socket not connected yet (it joined presence early): sent by
    /// the pump once it is. Returns the epoch to arm the expiry with.
    pub fn hold_for_replay(&self) -> u64 {
        let mut state = self.lock();
        state.phase = Phase::Replaying { next: 0 };
        state.epoch += 1;
        state.epoch
    }

    /// Takes over what `other` kept (its replay not started), after this session's own events,
    /// but for those it has already: a message the two nodes both took while the session
    /// moved carries the same offset in both.
    pub fn absorb(&self, other: &Session) {
        let taken = {
            let mut theirs = other.lock();
            self.shared.sub_bytes(theirs.bytes);
            theirs.bytes = 0;
            std::mem::take(&mut theirs.kept)
        };
        let mut state = self.lock();
        let known: HashSet<Arc<str>> = state
            .kept
            .iter()
            .filter_map(|kept| match &kept.payload {
                Payload::Event { offset, .. } => Some(offset.clone()),
                Payload::Acked { .. } => None,
            })
            .collect();
        for kept in taken {
            if !matches!(&kept.payload, Payload::Event { offset, .. } if known.contains(offset)) {
                self.push(&mut state, kept.payload);
            }
        }
    }

    /// The epoch of the replay an adopted session starts with (to arm its expiry).
    pub fn replaying_epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The socket holding the session now.
    pub fn holder(&self) -> Sid {
        self.lock().holder
    }

    /// Offers an encoded event (`packet` carries `offset` last) to the session's `socket`:
    /// sent and kept when live, kept for the replay otherwise. Called under the user's
    /// sockets lock, so the order kept is the order sent.
    pub fn offer(&self, socket: &SocketRef, offset: &Arc<str>, packet: &Value) -> Offer {
        let payload = || Payload::Event {
            offset: offset.clone(),
            packet: packet.clone(),
        };
        self.offer_with(socket, || socket.emit_encoded(packet), payload)
    }

    /// Sends with `send` on a live connection and keeps the event, or keeps it alone for the
    /// replay (connection away, or a replay under way).
    fn offer_with(
        &self,
        socket: &SocketRef,
        send: impl FnOnce() -> Result<(), SocketError>,
        payload: impl FnOnce() -> Payload,
    ) -> Offer {
        let mut state = self.lock();
        if state.holder != socket.id {
            return Offer::Gone;
        }
        match state.phase {
            Phase::Live => match send() {
                Ok(()) => {
                    self.keep(&mut state, payload());
                    Offer::Taken
                }
                // Closed under us: its disconnect (and the park) is on its way.
                Err(SocketError::Closed) => self.keep_away(&mut state, payload()),
                Err(_) => Offer::Full,
            },
            Phase::Away { .. } => self.keep_away(&mut state, payload()),
            Phase::Replaying { .. } => self.keep_replaying(&mut state, socket, payload()),
            Phase::Ended => Offer::Gone,
        }
    }

    /// Sends an event with an ack request to the session's `socket` (live), or keeps it for
    /// the replay; either way the returned ticket completes when some socket of the session
    /// acks it.
    pub fn offer_acked(
        &self,
        socket: &SocketRef,
        event: &str,
        json: &RawValue,
        deadline: Instant,
    ) -> (Offer, Option<Arc<AckTicket>>) {
        let ticket = Arc::new(AckTicket::default());
        let payload = || Payload::Acked {
            event: Arc::from(event),
            json: json.to_owned(),
            deadline,
            ticket: ticket.clone(),
        };
        let send = || ask_ack(socket, event, json, deadline, &ticket);
        let offer = self.offer_with(socket, send, payload);
        let kept = matches!(offer, Offer::Taken | Offer::Kept);
        (offer, kept.then_some(ticket))
    }

    /// Keeps an event sent on a live connection, dropping from the front what the horizon
    /// confirmed and what the bounds cannot hold.
    fn keep(&self, state: &mut State, payload: Payload) {
        self.keep_at(state, payload, Instant::now());
    }

    fn keep_at(&self, state: &mut State, payload: Payload, now: Instant) {
        self.push_at(state, payload, now);
        while !state.kept.is_empty() {
            let read = now > state.recheck && self.front_read(state, now);
            if !read && self.over_bounds(state).is_none() {
                break;
            }
            self.pop_front(state, read);
        }
    }

    /// Whether the oldest event kept is past the horizon at `now`; if not, no event is until
    /// it is (the others are newer), which `recheck` remembers.
    fn front_read(&self, state: &mut State, now: Instant) -> bool {
        let Some(first) = state.kept.front() else {
            return false;
        };
        match first.at.checked_add(self.shared.limits.horizon) {
            Some(until) if now > until => true,
            Some(until) => {
                state.recheck = until;
                false
            }
            // A horizon beyond the clock's range is never reached.
            None => false,
        }
    }

    /// Keeps an event behind the replay under way; a connected socket is sent what it can
    /// take at once, this event included when the replay catches up (then it is taken).
    fn keep_replaying(&self, state: &mut State, socket: &SocketRef, payload: Payload) -> Offer {
        match self.keep_away(state, payload) {
            Offer::Kept if socket.connected() => match self.drain(state, socket) {
                Pumped::CaughtUp => Offer::Taken,
                _ => Offer::Kept,
            },
            offer => offer,
        }
    }

    /// Keeps an event for a socket that is away or being replayed to. Past a bound on what
    /// it missed the session cannot be recovered: it ends, and the socket counts as gone.
    fn keep_away(&self, state: &mut State, payload: Payload) -> Offer {
        let size = self.push(state, payload);
        state.missed += 1;
        state.missed_bytes += size;
        let Some(bound) = self.over_bounds(state) else {
            return Offer::Kept;
        };
        self.shared.metrics.overflow(bound);
        tracing::info!(user = %self.user, ?bound, "recovery session overflowed: ended");
        self.end_locked(state);
        Offer::Gone
    }

    /// Keeps an event at the back; returns its size.
    fn push(&self, state: &mut State, payload: Payload) -> usize {
        self.push_at(state, payload, Instant::now())
    }

    fn push_at(&self, state: &mut State, payload: Payload, at: Instant) -> usize {
        let size = payload.size();
        state.kept.push_back(Kept { payload, at });
        state.bytes += size;
        self.shared.add_bytes(size);
        size
    }

    /// Past which bound the session is: live, on what it keeps; otherwise on what it kept
    /// since its connection dropped (what it got before does not count against a recovery).
    fn over_bounds(&self, state: &State) -> Option<Overflow> {
        let limits = &self.shared.limits;
        let (events, bytes) = match state.phase {
            Phase::Live => (state.kept.len(), state.bytes),
            _ => (state.missed, state.missed_bytes),
        };
        if events > limits.max_events {
            Some(Overflow::Events)
        } else if bytes > limits.max_bytes {
            Some(Overflow::Bytes)
        } else if self.shared.total_bytes() > limits.max_total_bytes {
            Some(Overflow::TotalBytes)
        } else {
            None
        }
    }

    /// Drops the oldest event; `read` when the client is known to have read it.
    fn pop_front(&self, state: &mut State, read: bool) {
        let Some(first) = state.kept.pop_front() else {
            return;
        };
        let size = first.payload.size();
        state.bytes -= size;
        self.shared.sub_bytes(size);
        match first.payload {
            Payload::Event { offset, .. } => state.front = Front::After(offset),
            Payload::Acked { .. } if !read => state.front = Front::Broken,
            Payload::Acked { .. } => {}
        }
        if let Phase::Replaying { next } = &mut state.phase {
            *next = next.saturating_sub(1);
        }
    }

    /// Where the replay to a client holding `offset` starts, if nothing it lacks is gone.
    fn replay_from(state: &State, offset: Option<&str>) -> Option<usize> {
        let found = offset.and_then(|o| {
            state
                .kept
                .iter()
                .position(|k| matches!(&k.payload, Payload::Event { offset, .. } if &**offset == o))
        });
        match (found, &state.front, offset) {
            (Some(i), _, _) => Some(i + 1),
            (None, Front::Whole, None) => Some(0),
            (None, Front::After(dropped), Some(o)) if &**dropped == o => Some(0),
            _ => None,
        }
    }

    /// Checks that a reconnect of `user` holding `offset` can recover the session, and claims
    /// it for the socket `claimant`. Called under the user's sockets lock (the presence slot
    /// changes hands in the same step).
    pub fn claim(
        &self,
        user: &str,
        offset: Option<&str>,
        holder: Sid,
        claimant: Sid,
    ) -> Result<Claim, Refusal> {
        let mut state = self.lock();
        let was_live = self.check_claim(&state, user)?;
        if state.holder != holder {
            return Err(Refusal::Unknown);
        }
        let next = Self::replay_from(&state, offset).ok_or(Refusal::Gap)?;
        state.holder = claimant;
        if !was_live {
            self.shared.away_left();
        }
        state.phase = Phase::Replaying { next };
        state.epoch += 1;
        Ok(Claim {
            was_live,
            epoch: state.epoch,
        })
    }

    /// Gives the session up to another node its client reconnected to, if `user` holding
    /// `offset` can recover it: what the client missed (events sent with an ack request stay
    /// behind: their caller counts no ack from there), and whether the connection here was
    /// still open. The session ends here.
    pub fn release(
        &self,
        user: &str,
        offset: Option<&str>,
    ) -> Result<(Handoff, Sid, bool), Refusal> {
        let mut state = self.lock();
        let was_live = self.check_claim(&state, user)?;
        let next = Self::replay_from(&state, offset).ok_or(Refusal::Gap)?;
        let events = state
            .kept
            .iter()
            .skip(next)
            .filter_map(|kept| match &kept.payload {
                Payload::Event {
                    offset,
                    packet: Value::Str(packet, None),
                } => Some((offset.to_string(), packet.as_str().to_owned())),
                _ => None,
            })
            .collect();
        let holder = state.holder;
        self.end_locked(&mut state);
        let handoff = Handoff {
            public_id: self.public_id.to_string(),
            events,
        };
        Ok((handoff, holder, was_live))
    }

    /// Whether `user` may claim the session now: `Ok(true)` when its connection is still open.
    fn check_claim(&self, state: &State, user: &str) -> Result<bool, Refusal> {
        if *self.user != *user {
            return Err(Refusal::OtherUser);
        }
        match state.phase {
            Phase::Ended | Phase::Replaying { .. } => Err(Refusal::Unknown),
            Phase::Away { since } if since.elapsed() >= self.shared.limits.window => {
                Err(Refusal::Expired)
            }
            Phase::Away { .. } => Ok(false),
            Phase::Live => Ok(true),
        }
    }

    /// The holder's connection dropped with a recoverable reason: keeps what comes from now
    /// on. Returns the epoch to arm the expiry timer with, or `None` when `socket` no longer
    /// holds the session.
    pub fn park(&self, socket: Sid) -> Option<u64> {
        let mut state = self.lock();
        if state.holder != socket || state.phase == Phase::Ended {
            return None;
        }
        if !matches!(state.phase, Phase::Away { .. }) {
            self.shared.away_entered();
        }
        if state.phase == Phase::Live {
            // What the horizon confirmed was read goes; the rest may have been lost with the
            // connection.
            let now = Instant::now();
            while self.front_read(&mut state, now) {
                self.pop_front(&mut state, true);
            }
            (state.missed, state.missed_bytes) = (0, 0);
        }
        state.phase = Phase::Away {
            since: Instant::now(),
        };
        state.epoch += 1;
        Some(state.epoch)
    }

    /// Ends the session if it is still in the phase armed with `epoch` and not live: its
    /// window passed. Returns whether it ended.
    pub fn expire(&self, epoch: u64) -> bool {
        let mut state = self.lock();
        if state.epoch != epoch || matches!(state.phase, Phase::Live | Phase::Ended) {
            return false;
        }
        self.end_locked(&mut state);
        true
    }

    /// Ends the session (a disconnect on purpose, or its holder `socket` gone for good):
    /// nothing more is kept and it cannot be recovered. Returns whether `socket` held it.
    pub fn end(&self, socket: Sid) -> bool {
        let mut state = self.lock();
        if state.holder != socket {
            return false;
        }
        self.end_locked(&mut state);
        true
    }

    fn end_locked(&self, state: &mut State) {
        if matches!(state.phase, Phase::Away { .. }) {
            self.shared.away_left();
        }
        state.phase = Phase::Ended;
        state.epoch += 1;
        self.shared.sub_bytes(state.bytes);
        state.bytes = 0;
        state.kept = VecDeque::new();
        self.shared.forget(self);
    }

    /// Sends the recovered `socket` what it missed, then new events as they come, until it
    /// caught up (the session is live again) or its connection is gone. A full buffer waits
    /// for the client to read.
    pub async fn pump(self: Arc<Self>, socket: SocketRef) {
        loop {
            match self.pump_some(&socket) {
                Pumped::CaughtUp | Pumped::Stopped => return,
                Pumped::Full => tokio::time::sleep(PUMP_RETRY).await,
            }
        }
    }

    fn pump_some(&self, socket: &SocketRef) -> Pumped {
        let mut state = self.lock();
        if state.holder != socket.id {
            return Pumped::Stopped;
        }
        self.drain(&mut state, socket)
    }

    /// Sends the replay on from where it stands, until it catches up (the session is live
    /// again) or the socket's buffer is full.
    fn drain(&self, state: &mut State, socket: &SocketRef) -> Pumped {
        loop {
            let Phase::Replaying { next } = state.phase else {
                return Pumped::Stopped;
            };
            let Some(kept) = state.kept.get(next) else {
                state.phase = Phase::Live;
                state.epoch += 1;
                (state.missed, state.missed_bytes) = (0, 0);
                return Pumped::CaughtUp;
            };
            let sent = match &kept.payload {
                Payload::Event { packet, .. } => socket.emit_encoded(packet),
                Payload::Acked {
                    ticket, deadline, ..
                } if ticket.is_done() || *deadline <= Instant::now() => Ok(()),
                Payload::Acked {
                    event,
                    json,
                    deadline,
                    ticket,
                } => ask_ack(socket, event, json, *deadline, ticket),
            };
            match sent {
                Ok(()) => state.phase = Phase::Replaying { next: next + 1 },
                // Closed: the disconnect parks the session again, from where the pump stopped.
                Err(SocketError::Closed) => return Pumped::Stopped,
                Err(_) => return Pumped::Full,
            }
        }
    }
}

enum Pumped {
    CaughtUp,
    Stopped,
    Full,
}

/// How long the replay waits when the recovered socket's buffer is full.
const PUMP_RETRY: Duration = Duration::from_millis(5);

/// What a kept event costs besides its bytes (its entry, offset and timestamps).
const KEPT_OVERHEAD: usize = 64;

/// Sends an event with an ack request; a task completes `ticket` when the ack comes by
/// `deadline`.
fn ask_ack(
    socket: &SocketRef,
    event: &str,
    json: &RawValue,
    deadline: Instant,
    ticket: &Arc<AckTicket>,
) -> Result<(), SocketError> {
    let stream = socket
        .timeout(deadline.saturating_duration_since(Instant::now()))
        .emit_with_ack::<_, IgnoredAny>(event, json)
        .map_err(|e| match e {
            socketioxide::SendError::Socket(e) => e,
            socketioxide::SendError::Serialize(_) => SocketError::Closed,
        })?;
    let ticket = ticket.clone();
    tokio::spawn(async move {
        if is_ack(&stream.await) {
            ticket.complete();
        }
    });
    Ok(())
}

fn packet_len(packet: &Value) -> usize {
    match packet {
        Value::Str(s, bins) => {
            s.len() + bins.as_ref().map_or(0, |b| b.iter().map(|b| b.len()).sum())
        }
        Value::Bytes(b) => b.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::Memory,
        config::Config,
        recovery::{Recovery, RecoveryLimits, RecoveryMetrics},
    };

    /// A session of a node whose horizon is 50 s (the default ping interval and timeout and
    /// the margin) and which keeps at most `max_events` events.
    fn session(max_events: u64) -> (Arc<Session>, RecoveryMetrics) {
        let mut config = Config::ephemeral();
        config.recovery_max_events = max_events;
        let limits = RecoveryLimits::of(&config).unwrap();
        assert_eq!(limits.horizon, Duration::from_secs(50));
        let metrics = RecoveryMetrics::default();
        let recovery = Recovery::new(limits, metrics.clone(), Arc::new(Memory::new(&config)));
        (recovery.open(Arc::from("u"), Sid::new()), metrics)
    }

    fn keep(session: &Session, offset: &str, at: Instant) {
        let payload = Payload::Event {
            offset: Arc::from(offset),
            packet: Value::Str(Str::from(format!("42[\"m\",1,\"{offset}\"]")), None),
        };
        session.keep_at(&mut session.lock(), payload, at);
    }

    fn kept_offsets(session: &Session) -> (Vec<String>, Front) {
        let state = session.lock();
        let offsets = state.kept.iter().map(|k| match &k.payload {
            Payload::Event { offset, .. } => offset.to_string(),
            Payload::Acked { .. } => String::new(),
        });
        (offsets.collect(), state.front.clone())
    }

    #[test]
    fn live_events_go_once_past_the_horizon_and_not_before() {
        let (session, metrics) = session(1000);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        keep(&session, "a", at(0));
        keep(&session, "b", at(30_000));
        keep(&session, "c", at(50_000));
        assert_eq!(
            kept_offsets(&session),
            (vec!["a".into(), "b".into(), "c".into()], Front::Whole)
        );

        keep(&session, "d", at(50_001));
        let after_a = Front::After(Arc::from("a"));
        assert_eq!(
            kept_offsets(&session),
            (vec!["b".into(), "c".into(), "d".into()], after_a)
        );

        keep(&session, "e", at(110_000));
        let after_d = Front::After(Arc::from("d"));
        assert_eq!(kept_offsets(&session), (vec!["e".into()], after_d));
        let kept = session.lock().bytes;
        assert!(kept > 0);
        assert_eq!(
            metrics.kept_bytes.get(),
            kept as i64,
            "the gauge is the node's count (this session's alone)"
        );
    }

    #[test]
    fn the_event_bound_drops_the_front_within_the_horizon() {
        let (session, _) = session(2);
        let t0 = Instant::now();
        for (i, offset) in (0..).zip(["a", "b", "c"]) {
            keep(&session, offset, t0 + Duration::from_secs(i));
        }
        let after_a = Front::After(Arc::from("a"));
        assert_eq!(
            kept_offsets(&session),
            (vec!["b".into(), "c".into()], after_a)
        );
    }
}
