//! Delivery in arrival order for the calls of one gRPC connection.
//!
//! hyper's HTTP/2 server takes new streams in the order they arrive and spawns one task per
//! stream; tokio polls the task spawned last first (its LIFO slot) and idle workers steal
//! from the queue, so 200 `SendDirect` calls issued at once were delivered 199, 0, 1 ... 198.
//! The one step that runs in arrival order, inside the connection task, is hyper-util's
//! `TowerToHyperService::call`, which clones the connection's service stack for the stream
//! (the stack's own `call` runs later, in the stream's task, so a ticket taken there would
//! follow the scheduler's order).
//! [`ArrivalOrder`] hands out a [`Ticket`] in that clone; a handler waits for its [`Turn`]
//! before delivering, and the turn passes on once that call has delivered, failed or been
//! dropped. A call that holds the turn for [`STALL`] (a request body that stopped arriving)
//! is skipped, so it never holds the connection's later calls back for longer than that.

use crate::sync::lock;
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use axum::http;
use tokio::{sync::oneshot, time::Instant};
use tower::{Layer, Service};

/// Longest a call may keep later calls on its connection waiting.
pub const STALL: Duration = Duration::from_secs(1);

/// Gives every gRPC connection its own arrival sequence.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArrivalOrderLayer;

impl<S> Layer<S> for ArrivalOrderLayer {
    type Service = ArrivalOrder<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ArrivalOrder {
            inner,
            sequence: None,
            ticket: None,
        }
    }
}

/// The server's service (no sequence), one connection's (a sequence) or one stream's (a
/// sequence and that stream's ticket); which one a clone becomes is decided in [`Clone`].
pub struct ArrivalOrder<S> {
    inner: S,
    sequence: Option<Arc<Sequence>>,
    ticket: Option<Ticket>,
}

impl<S: Clone> Clone for ArrivalOrder<S> {
    /// tonic clones the server's service once per accepted connection; hyper-util clones the
    /// connection's once per stream, in arrival order.
    fn clone(&self) -> Self {
        let (sequence, ticket) = match &self.sequence {
            None => (Arc::new(Sequence::new()), None),
            Some(sequence) => (sequence.clone(), Some(sequence.issue())),
        };
        Self {
            inner: self.inner.clone(),
            sequence: Some(sequence),
            ticket,
        }
    }
}

impl<S, B> Service<http::Request<B>> for ArrivalOrder<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(ticket) = self.ticket.take() {
            request
                .extensions_mut()
                .insert(TicketSlot(Arc::new(Mutex::new(Some(ticket)))));
        }
        self.inner.call(request)
    }
}

/// Carries the ticket through tonic's request extensions (which must be `Clone`) to the
/// handler; dropped with the request when no handler takes it.
#[derive(Clone)]
struct TicketSlot(Arc<Mutex<Option<Ticket>>>);

/// A call's place in its connection's arrival order; dropping it lets the next call go.
pub struct Ticket {
    sequence: Arc<Sequence>,
    number: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.sequence.release(self.number);
    }
}

/// A handler's claim to deliver in arrival order; hold it until the delivery is done. The
/// default is no claim (nothing to order against).
#[derive(Default)]
pub struct Turn(Option<Ticket>);

impl Turn {
    /// The request's ticket (none outside a gRPC connection, e.g. a handler called directly).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let ticket = request
            .extensions()
            .get::<TicketSlot>()
            .and_then(|slot| lock(&slot.0).take());
        Self(ticket)
    }

    /// Waits until every earlier call on the connection has delivered, failed, gone away or
    /// stalled for [`STALL`].
    pub async fn wait(self) -> Self {
        if let Some(ticket) = &self.0 {
            ticket.turn().await;
        }
        self
    }
}

impl Ticket {
    async fn turn(&self) {
        loop {
            let (woken, deadline) = {
                let mut state = self.sequence.state();
                if state.head >= self.number {
                    return;
                }
                let (tx, rx) = oneshot::channel();
                state.waiting.insert(self.number, tx);
                (rx, state.head_since + STALL)
            };
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                self.sequence.state().skip_stalled();
            }
        }
    }
}

/// One connection's tickets: issued in arrival order, released in any order.
struct Sequence {
    state: Mutex<State>,
}

struct State {
    issued: u64,
    /// The lowest ticket not yet released: its call is the one allowed to deliver.
    head: u64,
    /// When `head` started holding the others back: it became the head with its ticket
    /// issued (an idle connection's next ticket has not stalled anything).
    head_since: Instant,
    /// Tickets above `head` already released.
    released: BTreeSet<u64>,
    /// Calls waiting for their turn, woken when `head` reaches them.
    waiting: HashMap<u64, oneshot::Sender<()>>,
}

impl Sequence {
    fn new() -> Self {
        Self {
            state: Mutex::new(State {
                issued: 0,
                head: 0,
                head_since: Instant::now(),
                released: BTreeSet::new(),
                waiting: HashMap::new(),
            }),
        }
    }

    fn issue(self: &Arc<Self>) -> Ticket {
        let mut state = self.state();
        let number = state.issued;
        state.issued += 1;
        if number == state.head {
            state.head_since = Instant::now();
        }
        Ticket {
            sequence: self.clone(),
            number,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn release(&self, number: u64) {
        let mut state = self.state();
        if number == state.head {
            state.advance();
        } else if number > state.head {
            state.released.insert(number);
            state.waiting.remove(&number);
            // Calls that never wait (other methods) must not pile up behind a stalled head.
            state.skip_stalled();
        }
    }
}

impl State {
    fn advance(&mut self) {
        self.head += 1;
        while self.released.remove(&self.head) {
            self.head += 1;
        }
        self.head_since = Instant::now();
        if let Some(next) = self.waiting.remove(&self.head) {
            let _ = next.send(());
        }
    }

    fn skip_stalled(&mut self) {
        if self.head_since.elapsed() >= STALL {
            tracing::debug!(
                ticket = self.head,
                "gRPC call stalled; later calls go ahead"
            );
            self.advance();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tickets(n: usize) -> (Arc<Sequence>, Vec<Ticket>) {
        let sequence = Arc::new(Sequence::new());
        let tickets = (0..n).map(|_| sequence.issue()).collect();
        (sequence, tickets)
    }

    async fn turn(ticket: Ticket) -> Turn {
        Turn(Some(ticket)).wait().await
    }

    #[tokio::test]
    async fn turns_follow_ticket_order_whatever_order_they_wait_in() {
        let (_, mut tickets) = tickets(3);
        let third = tokio::spawn(turn(tickets.pop().unwrap()));
        let second = tokio::spawn(turn(tickets.pop().unwrap()));
        tokio::task::yield_now().await;
        assert!(!third.is_finished() && !second.is_finished());

        let first = turn(tickets.pop().unwrap()).await;
        drop(first);
        let second = second.await.unwrap();
        assert!(!third.is_finished());
        drop(second);
        third.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_ticket_passes_the_turn() {
        let (_, mut tickets) = tickets(2);
        let second = tokio::spawn(turn(tickets.pop().unwrap()));
        drop(tickets.pop());
        let started = Instant::now();
        second.await.unwrap();
        assert!(started.elapsed() < STALL);
    }

    #[tokio::test]
    async fn a_stalled_call_holds_later_ones_back_for_stall_at_most() {
        let (sequence, mut tickets) = tickets(3);
        let third = tokio::spawn(turn(tickets.pop().unwrap()));
        let second = tokio::spawn(turn(tickets.pop().unwrap()));
        let _stalled = tickets.pop();
        let started = Instant::now();

        let second = second.await.unwrap();
        assert!(started.elapsed() >= STALL && started.elapsed() < STALL * 2);
        assert!(!third.is_finished(), "order holds after the skip");
        drop(second);
        third.await.unwrap();
        assert!(sequence.state().released.is_empty());
    }
}
