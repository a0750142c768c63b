//! Requests and answers to other nodes, gathered. The listener serves everything the
//! subscriber has already received before it publishes, and what goes to the same asker
//! leaves in one SPUBLISH; a call's request waits one trip through the scheduler, so the
//! calls ready to run then queue theirs, and the first of them to run again publishes them
//! all, one SPUBLISH per node. Under load that is many per Redis message; at a low rate each
//! leaves alone, at once: nothing waits for a batch to fill.
//!
//! A batch is `B` followed by each message (`a…`, or `q…`) as a 4-byte big-endian length
//! and its bytes; a message alone is sent as it is.

use crate::sync::lock;
use std::{
    future::Future,
    pin::{pin, Pin},
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use fred::{
    clients::{Client, WithOptions},
    interfaces::{ClientLike, PubsubInterface},
};
use tokio::{sync::mpsc, time::Instant};

use super::{
    connection::{fail_fast, within},
    messages::Answer,
    names::BROADCAST_CHANNEL,
};

/// The tag of a batch.
pub(super) const BATCH: u8 = b'B';

/// Most messages in one SPUBLISH (bounds its size and the receiver's work per message).
pub(super) const MAX_BATCH: usize = 256;

/// What the asker of a request hears besides its answers.
pub(super) enum Reply {
    Answer(Answer),
    /// Nobody listens on that inbox: the node is gone or reconnecting.
    Unheard,
    /// The request could not be published (Redis unreachable or too slow).
    Failed(String),
}

/// When a request's publish was confirmed: set without waking its asker.
pub(super) type Published = Arc<OnceLock<Instant>>;

/// A request waiting to be published, and how to tell its asker the outcome.
pub(super) struct Letter {
    pub(super) call: u64,
    /// The inbox channel; `None`: every node, on the broadcast channel.
    pub(super) to: Option<String>,
    pub(super) body: Vec<u8>,
    pub(super) tx: mpsc::Sender<Reply>,
    pub(super) published: Published,
}

/// Requests waiting to be published. Bounded by the calls in flight: each call queues one.
#[derive(Default)]
pub(super) struct Requests(Mutex<Vec<Letter>>);

impl Requests {
    pub(super) fn post(&self, letter: Letter) {
        lock(&self.0).push(letter);
    }

    /// Takes every request waiting and starts publishing them: their SPUBLISHes are queued
    /// in fred (which sends them in that order) before anyone can take the next ones, so the
    /// requests one task posts reach each node in the order it posted them (a `SendStream`'s
    /// items in flight at once). Returns the rest of the publish, and whether it carries the
    /// request `call` alone; nothing when another caller took them all or it is done already
    /// (Redis known unreachable: each asker is told at once).
    pub(super) fn dispatch(
        &self,
        client: &Client,
        timeout: Duration,
        call: u64,
    ) -> Option<(Pin<Box<impl Future<Output = ()>>>, bool)> {
        let mut waiting = lock(&self.0);
        if waiting.is_empty() {
            return None;
        }
        let letters = std::mem::take(&mut *waiting);
        let alone = matches!(&letters[..], [only] if only.call == call);
        let mut publish = Box::pin(publish(client.clone(), timeout, letters));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        // Queues the commands; whoever polls it next is woken for the replies.
        let done = publish.as_mut().poll(&mut cx).is_ready();
        drop(waiting);
        (!done).then_some((publish, alone))
    }
}

/// The requests of one batch going to one inbox.
struct Group {
    to: Option<String>,
    bodies: Vec<Vec<u8>>,
    letters: Vec<Letter>,
}

/// Publishes `letters`, one SPUBLISH per inbox (bounded by `timeout` each, as one attempt
/// that fails at once while Redis is unreachable), and tells each asker how it went.
async fn publish(client: Client, timeout: Duration, letters: Vec<Letter>) {
    let mut groups: Vec<Group> = Vec::new();
    for mut letter in letters {
        let body = std::mem::take(&mut letter.body);
        match groups.iter_mut().find(|g| g.to == letter.to) {
            Some(group) => {
                group.bodies.push(body);
                group.letters.push(letter);
            }
            None => groups.push(Group {
                to: letter.to.clone(),
                bodies: vec![body],
                letters: vec![letter],
            }),
        }
    }
    let client = client.with_options(&fail_fast());
    futures_util::future::join_all(
        groups
            .into_iter()
            .map(|g| publish_group(&client, timeout, g)),
    )
    .await;
}

async fn publish_group(client: &WithOptions<Client>, timeout: Duration, group: Group) {
    let Group {
        to,
        mut bodies,
        letters,
    } = group;
    let body = match bodies.len() {
        1 => bodies.pop().unwrap_or_default(),
        _ => frame(&bodies),
    };
    let sent = async {
        match &to {
            Some(inbox) => client.spublish::<i64, _, _>(inbox.as_str(), body).await,
            None => client.publish::<i64, _, _>(BROADCAST_CHANNEL, body).await,
        }
    };
    let failed = match within(timeout, sent).await {
        Some(Ok(0)) if to.is_some() => Some(None),
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(Some(e.to_string())),
        None => Some(Some(format!("no answer within {} ms", timeout.as_millis()))),
    };
    let now = Instant::now();
    for letter in letters {
        match &failed {
            None => {
                let _ = letter.published.set(now);
            }
            Some(None) => {
                let _ = letter.tx.try_send(Reply::Unheard);
            }
            Some(Some(e)) => {
                let _ = letter.tx.try_send(Reply::Failed(e.clone()));
            }
        }
    }
}

/// Answers waiting to be published, by the asker's inbox, in the order they were made.
#[derive(Default)]
pub(super) struct Answers(Vec<(String, Vec<Vec<u8>>)>);

impl Answers {
    pub(super) fn push(&mut self, inbox: String, body: Vec<u8>) {
        match self.0.iter_mut().find(|(to, _)| *to == inbox) {
            Some((_, bodies)) => bodies.push(body),
            None => self.0.push((inbox, vec![body])),
        }
    }

    /// Publishes them: one message per asker.
    pub(super) fn send(&mut self, client: &Client) {
        for (inbox, mut bodies) in self.0.drain(..) {
            let body = match bodies.len() {
                1 => bodies.pop().unwrap_or_default(),
                _ => frame(&bodies),
            };
            submit(client, inbox, body);
        }
    }
}

/// Publishes an answer without waiting for Redis's reply: nobody needs it (an answer that is
/// lost is, for its asker, a node that did not answer in time), and waiting would wake a
/// task once more per answer. fred queues a command on the first poll of its future
/// (`send_command` before awaiting the reply); the reply of a dropped one is discarded.
pub(super) fn submit(client: &Client, inbox: String, body: Vec<u8>) {
    let sent = client.spublish::<i64, _, _>(inbox, body);
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    if let Poll::Ready(Err(e)) = pin!(sent).poll(&mut cx) {
        tracing::debug!(error = %e, "answer to another node not published");
    }
}

/// Several messages as one batch.
fn frame(bodies: &[Vec<u8>]) -> Vec<u8> {
    let len = 1 + bodies.iter().map(|b| 4 + b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(BATCH);
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// The messages of a batch (after its tag); stops at a malformed length.
pub(super) fn unframe(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let body = tail.get(..len)?;
        rest = &tail[len..];
        Some(body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_its_messages_in_order() {
        let bodies = vec![b"a{}".to_vec(), Vec::new(), b"a{\"c\":1}".to_vec()];
        let batch = frame(&bodies);
        assert_eq!(batch[0], BATCH);
        let back: Vec<&[u8]> = unframe(&batch[1..]).collect();
        assert_eq!(back, [&b"a{}"[..], b"", b"a{\"c\":1}"]);
        // A cut batch yields what is whole.
        let cut: Vec<&[u8]> = unframe(&batch[1..batch.len() - 2]).collect();
        assert_eq!(cut.len(), 2);
    }
}
