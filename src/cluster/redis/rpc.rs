//! Requests between nodes: a delivery, disconnect or broadcast asked of the nodes holding the
//! users, on their sharded inbox channel, answered on the asker's under a correlation id; and
//! the listener that dispatches everything the subscriber receives.

use crate::sync::lock;
use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use fred::{interfaces::EventInterface, types::Message};
use serde_json::value::RawValue;
use tokio::{
    sync::{
        broadcast::error::{RecvError, TryRecvError},
        mpsc,
    },
    time::Instant,
};

use super::{
    connection::LATE_REPLY_GRACE,
    messages::{Answer, Kind, PresenceEvent, Request},
    names::*,
    node::{accept_until, now_ms, Inner},
    outbox::{submit, unframe, Answers, Letter, Published, Reply, BATCH, MAX_BATCH},
};
use crate::{cluster::engine::ClusterError, outcome::Reached, presence::NodeIdx};
/// How long after an ack deadline an asker still waits for a node's answer: the node answers
/// at the deadline, so this only covers the trip back.
pub(super) fn ack_margin(ack: Duration, cluster_timeout: Duration) -> Duration {
    (ack / 20)
        .max(Duration::from_millis(50))
        .min(cluster_timeout)
}

/// A call's place in [`Inner::pending`], given up however the call ends: a caller that
/// cancels (its gRPC deadline, a dropped stream) leaves nothing behind.
struct Waiting<'a> {
    pending: &'a Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    call: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.call);
    }
}

impl Inner {
    /// Asks `node` for its share of a call; `None` when it did not answer in time.
    pub(super) async fn ask(
        &self,
        node: NodeIdx,
        request: Request<'_>,
        ack: Option<Instant>,
    ) -> Result<Option<Answer>, ClusterError> {
        let Some(name) = lock(&self.nodes).names.get(node as usize).cloned() else {
            self.check_reachable()?;
            return Ok(None);
        };
        self.ask_named(&name, request, ack).await
    }

    /// [`Inner::ask`] of the node whose id is `name`.
    pub(super) async fn ask_named(
        &self,
        name: &str,
        request: Request<'_>,
        ack: Option<Instant>,
    ) -> Result<Option<Answer>, ClusterError> {
        let answers = self.call(Some(name), request, ack, 1).await?;
        Ok(answers.into_iter().next())
    }

    /// A request of `kind` from this node about `users`, with `ack` when the sockets are
    /// asked to acknowledge.
    pub(super) fn request<'a>(
        &'a self,
        kind: Kind,
        users: &[&'a str],
        event: &'a str,
        json: &'a RawValue,
        ack: Option<Instant>,
    ) -> Request<'a> {
        Request {
            c: 0,
            k: kind,
            f: Cow::Borrowed(&self.node_id),
            e: Cow::Borrowed(event),
            u: users.iter().map(|&u| Cow::Borrowed(u)).collect(),
            m: json,
            a: ack.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
            o: None,
            d: 0,
        }
    }

    /// Sends a request to `to`'s inbox, or with `None` to every node at once (one publish),
    /// and gathers up to `expect` answers within the cluster timeout (after `ack`, when the
    /// sockets were asked to acknowledge).
    pub(super) async fn call(
        &self,
        to: Option<&str>,
        mut request: Request<'_>,
        ack: Option<Instant>,
        expect: usize,
    ) -> Result<Vec<Answer>, ClusterError> {
        self.check_reachable()?;
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        request.c = call;
        request.d = accept_until(self.timeout);
        let mut payload = Vec::with_capacity(64 + request.m.get().len());
        payload.push(b'q');
        serde_json::to_writer(&mut payload, &request)
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        // Room for every answer and the publish's outcome: nothing waits to tell it.
        let (tx, mut rx) = mpsc::channel(expect + 1);
        let published = Published::default();
        let busy = {
            let mut pending = lock(&self.pending);
            pending.insert(call, tx.clone());
            pending.len() > 1
        };
        let _waiting = Waiting {
            pending: &self.pending,
            call,
        };
        let posted = Instant::now();
        self.requests.post(Letter {
            call,
            to: to.map(inbox),
            body: payload,
            tx,
            published: published.clone(),
        });
        // With other calls waiting on nodes, more are likely ready to run: let them queue
        // theirs meanwhile, they leave together. A call alone goes at once.
        if busy {
            tokio::task::yield_now().await;
        }
        match self.requests.dispatch(&self.client, self.timeout, call) {
            Some((publish, true)) => publish.await,
            // Others wait on it too: it must not end with this call if this call is dropped.
            Some((publish, false)) => drop(tokio::spawn(publish)),
            None => {}
        }
        let wait = match ack {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                left + ack_margin(left, self.timeout)
            }
            None => self.timeout,
        };
        self.gather(&mut rx, &published, posted, wait, expect).await
    }

    /// Up to `expect` answers, until `wait` after the request's publish was confirmed (the
    /// publish itself is bounded by the cluster timeout, and says when it failed).
    async fn gather(
        &self,
        rx: &mut mpsc::Receiver<Reply>,
        published: &Published,
        posted: Instant,
        wait: Duration,
        expect: usize,
    ) -> Result<Vec<Answer>, ClusterError> {
        let mut answers = Vec::with_capacity(expect);
        // Whatever happens, the publish has an outcome by then.
        let last = posted + self.timeout + LATE_REPLY_GRACE + wait;
        let mut deadline = posted + wait;
        while answers.len() < expect {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Reply::Answer(answer))) => answers.push(answer),
                Ok(Some(Reply::Unheard)) => return Ok(Vec::new()),
                Ok(Some(Reply::Failed(e))) => return Err(ClusterError::Unavailable(e)),
                Ok(None) => break,
                Err(_) => match published.get() {
                    Some(&at) if at + wait > deadline => deadline = at + wait,
                    Some(_) => break,
                    None if deadline < last => deadline = last,
                    None => {
                        return Err(ClusterError::Unavailable(format!(
                            "no answer within {} ms",
                            self.timeout.as_millis()
                        )))
                    }
                },
            }
        }
        Ok(answers)
    }

    /// Asks every other node to broadcast; each answers (users, sockets, refused, pending).
    pub(super) async fn broadcast(
        &self,
        event: &str,
        json: &RawValue,
    ) -> Result<Reached, ClusterError> {
        let expect = lock(&self.nodes).alive();
        let request = Request {
            c: 0,
            k: Kind::Broadcast,
            f: Cow::Borrowed(&self.node_id),
            e: Cow::Borrowed(event),
            u: Vec::new(),
            m: json,
            a: None,
            o: None,
            d: 0,
        };
        let answers = self.call(None, request, None, expect).await?;
        let mut reached = Reached {
            partial: answers.len() < expect,
            ..Reached::default()
        };
        for answer in answers {
            if let [users, sockets, refused, ref rest @ ..] = answer.n[..] {
                reached += Reached {
                    users,
                    sockets,
                    pending: rest.first().copied().unwrap_or(0),
                    refused,
                    partial: false,
                };
            }
        }
        Ok(reached)
    }

    /// Handles everything the subscriber receives, in arrival order. The answers to what
    /// was already received are published together once it is served (see [`Answers`]).
    pub(super) async fn listen(self: Arc<Self>) {
        let mut rx = self.subscriber.message_rx();
        if let Err(e) = self.subscribe().await {
            tracing::warn!(error = %e, "subscribing failed; retried on reconnect");
        }
        self.resync.notify_one();
        let mut answers = Answers::default();
        loop {
            let mut next = rx.recv().await;
            for _ in 0..MAX_BATCH {
                match next {
                    Ok(message) => self.handle(message, &mut answers),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "cluster messages missed: resyncing presence");
                        self.resync.notify_one();
                    }
                    Err(RecvError::Closed) => return answers.send(&self.client),
                }
                next = match rx.try_recv() {
                    Ok(message) => Ok(message),
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    Err(TryRecvError::Empty) => break,
                };
            }
            answers.send(&self.client);
        }
    }

    pub(super) fn handle(self: &Arc<Self>, message: Message, answers: &mut Answers) {
        let Some(bytes) = message.value.as_bytes() else {
            return;
        };
        if message.channel == PRESENCE_CHANNEL {
            match serde_json::from_slice::<PresenceEvent>(bytes) {
                Ok(event) => self.apply(event),
                Err(e) => tracing::warn!(error = %e, "malformed presence event ignored"),
            }
            return;
        }
        match bytes.split_first() {
            Some((&BATCH, batch)) => unframe(batch).for_each(|one| self.handle_one(one, answers)),
            _ => self.handle_one(bytes, answers),
        }
    }

    /// One request or answer from an inbox (or the broadcast channel).
    fn handle_one(self: &Arc<Self>, bytes: &[u8], answers: &mut Answers) {
        match bytes.split_first() {
            Some((b'q', body)) => self.serve_request(body, answers),
            Some((b'a', body)) => {
                if let Ok(answer) = serde_json::from_slice::<Answer>(body) {
                    if let Some(tx) = lock(&self.pending).get(&answer.c) {
                        let _ = tx.try_send(Reply::Answer(answer));
                    }
                }
            }
            _ => tracing::warn!("malformed cluster message ignored"),
        }
    }

    /// Delivers a request from another node to the local sockets and answers the counts.
    /// Its answer joins `answers`, or with acks asked, leaves alone once they are counted.
    pub(super) fn serve_request(self: &Arc<Self>, body: &[u8], answers: &mut Answers) {
        let request: Request<'_> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed delivery request ignored");
                return;
            }
        };
        let Some(sockets) = self.sockets.get() else {
            return;
        };
        if request.k == Kind::Broadcast && *request.f == *self.node_id {
            return; // This node's own broadcast, already delivered here.
        }
        if request.d != 0 && now_ms() > request.d {
            self.late_requests.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                from = %request.f,
                late_ms = now_ms() - request.d,
                "request from another node dropped: it arrived after its deadline"
            );
            return;
        }
        let deadline = request
            .a
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let (mut pending, mut handoff, mut refusal) = (Vec::new(), None, None);
        let (counts, acks): (Vec<u32>, Vec<_>) = match request.k {
            Kind::Deliver => request
                .u
                .iter()
                .enumerate()
                .map(|(i, user)| {
                    let offset = request.o.as_deref();
                    let (took, acks) =
                        sockets.deliver(user, &request.e, request.m, offset, deadline);
                    if took.pending > 0 {
                        pending.resize(request.u.len(), 0);
                        pending[i] = took.pending;
                    }
                    (took.delivered, acks)
                })
                .unzip(),
            Kind::Disconnect => (
                request
                    .u
                    .iter()
                    .map(|user| sockets.disconnect(user, &request.e))
                    .collect(),
                Vec::new(),
            ),
            Kind::Watchlist => (
                vec![sockets.set_watchlist(request.u.first().map_or("", |u| &**u), request.m)],
                Vec::new(),
            ),
            Kind::Broadcast => {
                let r = sockets.broadcast(&request.e, request.m);
                (vec![r.users, r.sockets, r.refused, r.pending], Vec::new())
            }
            Kind::Recover => {
                let offset: Option<String> = serde_json::from_str(request.m.get()).unwrap_or(None);
                let user = request.u.first().map_or("", |u| &**u);
                match sockets.hand_off(&request.e, user, offset.as_deref()) {
                    Ok(given) => handoff = Some(given),
                    Err(why) => refusal = Some(why),
                }
                (Vec::new(), Vec::new())
            }
        };
        let (call, to) = (request.c, inbox(&request.f));
        let answer = move |k| {
            let mut payload = Vec::with_capacity(32 + 8 * counts.len());
            payload.push(b'a');
            let _ = serde_json::to_writer(
                &mut payload,
                &Answer {
                    c: call,
                    n: counts,
                    p: pending,
                    h: handoff,
                    x: refusal,
                    k,
                },
            );
            payload
        };
        if deadline.is_none() {
            return answers.push(to, answer(Vec::new()));
        }
        // Delivered in arrival order above; only the wait for the acks happens later.
        let client = self.client.clone();
        tokio::spawn(async move {
            let k = futures_util::future::join_all(acks.into_iter().map(|acked| async move {
                match acked {
                    Some(count) => count.await,
                    None => 0,
                }
            }))
            .await;
            submit(&client, to, answer(k));
        });
    }
}
