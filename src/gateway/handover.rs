//! Kept messages (the offline mailbox) handed to a user's sockets: at a connect, after a send
//! kept one for a user who is online (or connecting), and when another node asks.
//!
//! At least once: a node claims a batch (see [`crate::mailbox`]), writes it to its sockets of
//! the user in order, waits for the acks of the messages sent with acks, and settles: a
//! message is done once a socket acked it (without acks: once a socket's buffer took it), the
//! others go back to the head of the queue. Batches are at most half a socket buffer and the
//! next is claimed only once the last settled, so a long queue goes at the pace the socket
//! drains it; a full buffer is waited on, never counted as a slow reader's refusal.

use crate::sync::lock;
use std::{collections::HashMap, sync::Mutex, time::Duration};

use futures_util::{future::join_all, stream::FuturesUnordered, StreamExt};
use serde::de::IgnoredAny;
use socketioxide::{ack::AckStream, extract::SocketRef, AckError, SendError, SocketError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Gateway, Outgoing, SendOptions, MAIL_RETRY_MAX};
use crate::{
    caller::Caller,
    emit::Encoded,
    error::GatewayError,
    lifetime::gone,
    mailbox::{
        Claim, Dropped, Mail, MailboxError, Pushed, CONNECT_WATCH, SWEEP_EVERY, WRITE_STALL,
    },
    metrics::Metrics,
    outcome::Sent,
    presence::{unix_ms, Offer},
};

/// The event of a doorbell: another node asks this one to hand the user's kept messages to
/// its sockets of the user. No caller can send it: it is longer than an event name may be
/// (and plain text, which a request between nodes carries unescaped).
pub(crate) const MAIL_DOORBELL: &str =
    "mailbox doorbell: hand the user's kept messages to their sockets here";
const _: () = assert!(MAIL_DOORBELL.len() > crate::validation::MAX_EVENT_BYTES);

/// Most messages one claim lends, whatever the socket buffer.
const MAX_BATCH: usize = 256;

/// The first pause while another node's hand-over holds the user's messages (doubling up to
/// [`BUSY_PAUSE_MAX`]).
const BUSY_PAUSE: Duration = Duration::from_millis(20);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How often a ring waiting for a connect to reach presence looks again.
const WATCH_POLL: Duration = Duration::from_millis(10);

/// How often a full socket buffer is tried again during a hand-over.
const ROOM_POLL: Duration = Duration::from_millis(5);

/// Users whose kept messages this node is handing over: one hand-over per user at a time; a
/// request meanwhile makes it claim once more when done (a message kept after its last claim).
/// And users a ring waits to see online: one wait per user, which a later ring prolongs.
#[derive(Default)]
pub(super) struct HandOvers {
    running: Mutex<HashMap<String, bool>>,
    watching: Mutex<HashMap<String, Instant>>,
}

impl HandOvers {
    /// Whether the caller runs the hand-over; otherwise the running one goes again.
    fn start(&self, user: &str) -> bool {
        let mut running = lock(&self.running);
        match running.get_mut(user) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                running.insert(user.to_owned(), false);
                true
            }
        }
    }

    /// Whether the hand-over must go again; otherwise it is over (in the same step, so no
    /// request falls between).
    fn again(&self, user: &str) -> bool {
        let mut running = lock(&self.running);
        match running.get_mut(user) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                running.remove(user);
                false
            }
        }
    }

    /// Whether the caller waits for `user` to come online, until `until`; otherwise the
    /// running wait goes on until then.
    fn watch(&self, user: &str, until: Instant) -> bool {
        let mut watching = lock(&self.watching);
        match watching.get_mut(user) {
            Some(deadline) => {
                *deadline = until;
                false
            }
            None => {
                watching.insert(user.to_owned(), until);
                true
            }
        }
    }

    /// Whether the wait for `user` goes on; otherwise it is over.
    fn watching(&self, user: &str) -> bool {
        let mut watching = lock(&self.watching);
        let on = watching.get(user).is_some_and(|d| Instant::now() < *d);
        if !on {
            watching.remove(user);
        }
        on
    }
}

/// Ends a hand-over that did not end by [`HandOvers::again`] (a panic): the user's next
/// request starts one.
struct Running<'a> {
    hand_overs: &'a HandOvers,
    user: &'a str,
    over: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.over {
            lock(&self.hand_overs.running).remove(self.user);
        }
    }
}

/// What offering a batch to this node's sockets of a user came to.
struct Offered {
    /// The numbers of the messages done (acked, or taken when sent without acks).
    done: Vec<u64>,
    /// A socket went away meanwhile: the user's other sockets may take what it did not.
    socket_left: bool,
}

impl Gateway {
    /// Keeps a message that reached (or was acked by) nobody for the receiver's next connect.
    /// A connect may have claimed the queue between the delivery and the push: when the
    /// receiver is online by now (or a claim for them ran lately, on a node whose presence has
    /// not reached this one yet), the nodes holding them are asked to hand it over at once.
    pub(super) async fn keep(
        &self,
        receiver: &str,
        outgoing: &Outgoing<'_>,
        options: &SendOptions,
        ttl: Duration,
        sent: &mut Sent,
    ) -> Result<(), GatewayError> {
        let mail = Mail {
            event: outgoing.event.to_string(),
            json: outgoing.json.clone(),
            expires_ms: unix_ms().saturating_add(ttl.as_millis() as u64),
            ack_ms: options.ack_timeout.map_or(0, |t| t.as_millis() as u32),
        };
        let pushed = self.push_mail(receiver, &options.caller, &mail).await?;
        self.metrics.mail_queued.inc();
        sent.queued = true;
        // With acks, sockets that took it but did not ack are not offered it again at once.
        if sent.delivered == 0 {
            self.ring(receiver, pushed.watched);
        }
        Ok(())
    }

    /// Appends to `user`'s queue, within `caller`'s share.
    async fn push_mail(
        &self,
        user: &str,
        caller: &Caller,
        mail: &Mail,
    ) -> Result<Pushed, GatewayError> {
        let pushed = self
            .mailbox
            .push(user, caller.into(), mail)
            .await
            .map_err(GatewayError::Mailbox)?;
        self.metrics.mail_dropped(pushed.dropped);
        Ok(pushed)
    }

    /// Sweeps expired kept messages every [`SWEEP_EVERY`] until `stop`: batch after batch
    /// while a batch came back full, so nothing expired stays past a sweep.
    pub async fn sweep_mailbox(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            while !stop.is_cancelled() {
                match self.mailbox.sweep().await {
                    Ok(expired) => {
                        self.metrics.mail_dropped(Dropped {
                            expired,
                            ..Default::default()
                        });
                        if expired < crate::mailbox::SWEEP_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "offline mailbox not swept");
                        break;
                    }
                }
            }
        }
    }

    /// Asks the nodes holding `user` (this one included) to hand their kept messages over;
    /// when `watched` and the user is not seen online yet, first waits up to
    /// [`CONNECT_WATCH`] for their connect to reach presence (one wait per user).
    fn ring(&self, user: &str, watched: bool) {
        if self.presence.lookup(user).sockets > 0 {
            let (gateway, user) = (self.clone(), user.to_owned());
            tokio::spawn(async move { gateway.ring_holders(&user).await });
            return;
        }
        if !watched || !self.hand_overs.watch(user, Instant::now() + CONNECT_WATCH) {
            return;
        }
        let (gateway, user) = (self.clone(), user.to_owned());
        tokio::spawn(async move {
            while gateway.presence.lookup(&user).sockets == 0 {
                if !gateway.hand_overs.watching(&user) {
                    return;
                }
                tokio::time::sleep(WATCH_POLL).await;
            }
            lock(&gateway.hand_overs.watching).remove(&user);
            gateway.ring_holders(&user).await;
        });
    }

    /// Starts a hand-over here if the user has sockets here; asks the other nodes holding
    /// them to do the same.
    async fn ring_holders(&self, user: &str) {
        let (local, remote) = self.presence.holders(user);
        if !local.is_empty() {
            self.answer_doorbell(user);
        }
        let null = serde_json::value::RawValue::NULL;
        for node in remote {
            let users = [user];
            let asked = self
                .cluster
                .deliver_remote(node, &users, MAIL_DOORBELL, null, None, None)
                .await;
            if let Err(e) = asked {
                tracing::debug!(user, node, error = %e, "a node holding the user was not asked to hand kept messages over");
            }
        }
    }

    /// Starts a hand-over of `user`'s kept messages to their sockets here, if any.
    pub(super) fn answer_doorbell(&self, user: &str) {
        if self.presence.socket_count(user) > 0 {
            let (gateway, user) = (self.clone(), user.to_owned());
            tokio::spawn(async move { gateway.hand_over_on_connect(&user).await });
        }
    }

    /// Hands `user`'s kept messages to their sockets here, at a connect (or a doorbell); one
    /// hand-over per user at a time, a request meanwhile makes it go once more. When the mailbox
    /// cannot be read (Redis down, or too slow under a connect storm), tries again after 1, 2,
    /// 4, ... 32 s while the user still has a socket here, so kept messages do not wait for
    /// the next connect.
    pub async fn hand_over_on_connect(&self, user: &str) {
        if !self.hand_overs.start(user) {
            return;
        }
        let mut running = Running {
            hand_overs: &self.hand_overs,
            user,
            over: false,
        };
        loop {
            self.hand_over_retrying(user).await;
            if !self.hand_overs.again(user) {
                running.over = true;
                return;
            }
        }
    }

    async fn hand_over_retrying(&self, user: &str) {
        let mut pause = Duration::from_secs(1);
        loop {
            match self.hand_over(user).await {
                Ok(()) => return,
                // Redis down is logged once as such; every connect meanwhile would repeat it.
                Err(e) => {
                    tracing::debug!(user, error = %e, ?pause, "offline mailbox not read; trying again")
                }
            }
            if pause > MAIL_RETRY_MAX {
                return;
            }
            tokio::time::sleep(pause).await;
            if self.presence.socket_count(user) == 0 || self.draining.is_cancelled() {
                return;
            }
            pause *= 2;
        }
    }

    /// Claims `user`'s queue batch after batch and offers each to their sockets here, until a
    /// claim comes back empty (a message kept after that claim rings again) or a batch was not
    /// all taken by sockets still here (it waits for the next connect or send).
    async fn hand_over(&self, user: &str) -> Result<(), MailboxError> {
        let batch = (self.limits.socket_buffer_packets / 2).clamp(1, MAX_BATCH);
        let mut busy_pause = BUSY_PAUSE;
        while self.presence.socket_count(user) > 0 && !self.draining.is_cancelled() {
            let lent = match self.mailbox.claim(user, batch).await? {
                Claim::Lent(lent) => lent,
                Claim::Busy(left) => {
                    tokio::time::sleep(left.min(busy_pause)).await;
                    busy_pause = (busy_pause * 2).min(BUSY_PAUSE_MAX);
                    continue;
                }
            };
            self.metrics.mail_dropped(lent.dropped);
            if lent.mail.is_empty() {
                break;
            }
            let offered = self.offer(user, &lent.mail).await;
            if let Err(e) = self.mailbox.settle(user, lent.claim, &offered.done).await {
                // The claim lapses and its messages go back: maybe delivered twice, never lost.
                tracing::warn!(user, error = %e, "kept messages handed over but not settled; they will be offered again");
            }
            Metrics::add(&self.metrics.mail_delivered, offered.done.len() as u64);
            if offered.done.len() < lent.mail.len() && !offered.socket_left {
                break;
            }
        }
        Ok(())
    }

    /// Offers `mail` to this node's sockets of `user`, each in order, and waits for the acks
    /// asked.
    async fn offer(&self, user: &str, mail: &[(u64, Mail)]) -> Offered {
        let (sockets, _) = self.presence.holders(user);
        let stall = Instant::now() + WRITE_STALL;
        let each = join_all(sockets.into_iter().map(|s| offer_to(s, mail, stall))).await;
        let written = each.iter().map(|o| o.written).sum();
        Metrics::add(&self.metrics.deliveries, written);
        let done = mail
            .iter()
            .enumerate()
            .filter(|(i, _)| each.iter().any(|o| o.done[*i]))
            .map(|(_, (seq, _))| *seq)
            .collect();
        Offered {
            done,
            socket_left: each.iter().any(|o| o.left),
        }
    }
}

/// What one socket did with a batch.
struct Taken {
    /// Per message: taken (acked, when sent with acks).
    done: Vec<bool>,
    /// Messages written to its buffer.
    written: u64,
    /// It went away meanwhile.
    left: bool,
}

/// Writes `mail` to one socket in order and waits for the acks asked. A socket whose buffer
/// stays full until `stall` is offered nothing more of the batch.
async fn offer_to(socket: SocketRef, mail: &[(u64, Mail)], stall: Instant) -> Taken {
    let left = gone(&socket);
    let mut written = 0;
    let mut done = vec![false; mail.len()];
    let mut acks = FuturesUnordered::new();
    for (i, (_, m)) in mail.iter().enumerate() {
        let ack = write(&socket, m, stall).await;
        written += u64::from(ack.is_some());
        match ack {
            Some(None) => done[i] = true,
            Some(Some(ack)) => acks.push(async move {
                // An ack without arguments does not decode; it is an ack all the same.
                (i, matches!(ack.await, Ok(_) | Err(AckError::Decode(_))))
            }),
            None => break,
        }
    }
    loop {
        tokio::select! {
            acked = acks.next() => match acked {
                Some((i, acked)) => done[i] |= acked,
                None => break,
            },
            () = left.cancelled() => break,
        }
    }
    Taken {
        done,
        written,
        left: left.is_cancelled(),
    }
}

/// Emits one kept message, with an ack asked when it was sent with acks; waits (until
/// `stall`) while the socket's buffer is full. `None` when the socket did not take it.
async fn write(
    socket: &SocketRef,
    mail: &Mail,
    stall: Instant,
) -> Option<Option<AckStream<IgnoredAny>>> {
    loop {
        // Without acks, an offer like any event (its offset, kept by a recoverable session).
        let written = match mail.ack_ms {
            0 => match Encoded::new(&mail.event, &mail.json).offer(socket) {
                Offer::Taken | Offer::Kept => Ok(None),
                Offer::Full => Err(SendError::Socket(SocketError::InternalChannelFull)),
                Offer::Gone => Err(SendError::Socket(SocketError::Closed)),
            },
            ms => socket
                .timeout(Duration::from_millis(ms.into()))
                .emit_with_ack(&mail.event, &mail.json)
                .map(Some),
        };
        match written {
            Ok(ack) => return Some(ack),
            Err(SendError::Socket(SocketError::InternalChannelFull)) if Instant::now() < stall => {
                tokio::time::sleep(ROOM_POLL).await;
            }
            Err(e) => {
                tracing::debug!(socket = %socket.id, error = %e, "kept message not written");
                return None;
            }
        }
    }
}
