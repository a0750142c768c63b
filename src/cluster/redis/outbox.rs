//! Answers to other nodes, gathered: the listener serves everything the subscriber has
//! already received before it publishes, and what goes to the same asker leaves in one
//! SPUBLISH. Under load that is many answers per Redis message; at a low rate each leaves
//! alone, at once: nothing waits for a batch to fill.
//!
//! A batch is `B` followed by each message (`a…`, or `q…`) as a 4-byte big-endian length
//! and its bytes; a message alone is sent as it is.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll},
};

use fred::{clients::Client, interfaces::PubsubInterface};

/// The tag of a batch.
pub(super) const BATCH: u8 = b'B';

/// Most messages in one SPUBLISH (bounds its size and the receiver's work per message).
pub(super) const MAX_BATCH: usize = 256;

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
