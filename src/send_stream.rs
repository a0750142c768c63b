//! One `SendStream` call: its items are delivered in the order they are read, answered in that
//! order, and several wait on other nodes at once. Awaiting each item's count before reading
//! the next held a stream in a cluster to one item per Redis round trip.

use std::{
    future::{ready, Future, Ready},
    pin::Pin,
    task::Poll,
};

use futures_util::{future::Either, stream::FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::{
    codec::StreamItem,
    error::{size_limit_status, GatewayError},
    gateway::{Gateway, SendOptions},
    order::Turn,
    outcome::Sent,
    proto::SendStreamResponse,
};

/// Items of one stream waiting for other nodes' counts at once. Each holds its message, so
/// this bounds a stream's memory as much as its concurrency.
const IN_FLIGHT: usize = 128;

type Answer = Result<SendStreamResponse, Status>;
type Waiting<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// Serves the stream until the caller ends it, its framing breaks, the node drains or the
/// caller stops reading answers; `tx` bounds the answers not yet read.
pub async fn serve(
    gateway: Gateway,
    options: SendOptions,
    mut inbound: Streaming<StreamItem>,
    tx: mpsc::Sender<Answer>,
) {
    let (gateway, options) = (&gateway, &options);
    let mut in_flight: FuturesOrdered<Either<Ready<Answer>, Waiting>> = FuturesOrdered::new();
    let mut reading = true;
    // What ends the stream once every item read is answered.
    let mut end: Option<Status> = None;
    loop {
        tokio::select! {
            biased;
            // Stops reading; the items read are still answered, then a status the caller can
            // retry the rest elsewhere on.
            () = gateway.drained(), if reading => {
                reading = false;
                end = Some(GatewayError::ShuttingDown.into());
            }
            item = inbound.next(), if reading && in_flight.len() < IN_FLIGHT => match item {
                Some(Ok(StreamItem { id, request })) => {
                    match start(Box::pin(send(gateway, options, id, request))).await {
                        // Nothing before it to wait for (a node without others to ask).
                        Either::Left(answer) if in_flight.is_empty() => {
                            if tx.send(answer.into_inner()).await.is_err() {
                                return;
                            }
                        }
                        started => in_flight.push_back(started),
                    }
                }
                // The framing itself is broken (or over the size limit): the stream cannot be
                // read on.
                Some(Err(status)) => {
                    reading = false;
                    end = Some(size_limit_status(status));
                }
                None => reading = false,
            },
            // After every item already received: those were started first, so their requests
            // to other nodes leave together.
            Some(answer) = in_flight.next() => {
                if tx.send(answer).await.is_err() {
                    return;
                }
            }
            else => break,
        }
    }
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
}

/// Polls an item once, now: its local delivery and its requests to other nodes happen in the
/// order the items were read (a later first poll could overtake it).
async fn start(mut sending: Waiting<'_>) -> Either<Ready<Answer>, Waiting<'_>> {
    match futures_util::poll!(sending.as_mut()) {
        Poll::Ready(answer) => Either::Left(ready(answer)),
        Poll::Pending => Either::Right(sending),
    }
}

/// One item: delivered as a `SendDirect` without options; a refused one is answered in-band
/// so the stream goes on.
async fn send(
    gateway: &Gateway,
    options: &SendOptions,
    id: u64,
    request: Result<crate::proto::SendStreamRequest, Status>,
) -> Answer {
    let sent = match request {
        Ok(req) => gateway
            .send_direct(
                &req.receiver_id,
                &req.event,
                req.message.as_ref(),
                options,
                // The stream's own order is kept here, by the first poll.
                Turn::default(),
            )
            .await
            .map_err(Status::from),
        Err(malformed) => Err(malformed),
    };
    Ok(response(id, sent))
}

/// One stream answer.
fn response(id: u64, sent: Result<Sent, Status>) -> SendStreamResponse {
    match sent {
        Ok(sent) => SendStreamResponse {
            id,
            delivered_sockets: sent.delivered,
            partial: sent.partial,
            pending_sockets: sent.pending,
            ..Default::default()
        },
        Err(status) => SendStreamResponse {
            id,
            code: status.code() as i32,
            error: status.message().to_owned(),
            ..Default::default()
        },
    }
}
