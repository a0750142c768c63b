//! The `messaging.v1.Messaging` gRPC service: a thin translation onto [`Gateway`].

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    caller::Caller,
    codec::StreamItem,
    gateway::{Gateway, SendOptions},
    order::Turn,
    proto::{
        messaging_server::Messaging, watch_presence_response::Item, BroadcastRequest,
        BroadcastResponse, Delivery, DisconnectUserRequest, DisconnectUserResponse,
        GetPresenceRequest, GetPresenceResponse, ListOnlineRequest, ListOnlineResponse,
        PresenceChange, PresenceSnapshot, SendDirectRequest, SendDirectResponse,
        SendStreamResponse, SendToUsersRequest, SendToUsersResponse, SetWatchlistRequest,
        SetWatchlistResponse, UserPresence, WatchPresenceRequest, WatchPresenceResponse,
    },
    send_stream,
    watch::WatchItem,
};

/// Serves the Messaging API from the shared gateway state.
#[derive(Clone)]
pub struct MessagingService {
    gateway: Gateway,
}

impl MessagingService {
    /// The service over `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }
}

/// Responses a `SendStream` call may have in flight; when the caller stops reading them the
/// gateway stops reading its requests, so a stream never queues without bound.
const STREAM_WINDOW: usize = 1024;

#[tonic::async_trait]
impl Messaging for MessagingService {
    type SendStreamStream = ReceiverStream<Result<SendStreamResponse, Status>>;
    type WatchPresenceStream =
        Pin<Box<dyn Stream<Item = Result<WatchPresenceResponse, Status>> + Send>>;

    async fn get_presence(
        &self,
        request: Request<GetPresenceRequest>,
    ) -> Result<Response<GetPresenceResponse>, Status> {
        let users = self.gateway.get_presence(&request.into_inner().user_ids)?;
        Ok(Response::new(GetPresenceResponse {
            users: users
                .into_iter()
                .map(|(user_id, p)| UserPresence {
                    user_id,
                    online: p.sockets > 0,
                    sockets: p.sockets,
                    online_since_unix_ms: p.since_ms,
                })
                .collect(),
        }))
    }

    async fn disconnect_user(
        &self,
        request: Request<DisconnectUserRequest>,
    ) -> Result<Response<DisconnectUserResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let sent = self
            .gateway
            .disconnect_user(&req.user_id, &req.reason)
            .await?;
        // Rare and consequential: said at info, with who asked.
        tracing::info!(caller = %caller.name, user = %req.user_id, sockets = sent.delivered, "user disconnected");
        Ok(Response::new(DisconnectUserResponse {
            disconnected_sockets: sent.delivered,
            partial: sent.partial,
        }))
    }

    async fn set_watchlist(
        &self,
        request: Request<SetWatchlistRequest>,
    ) -> Result<Response<SetWatchlistResponse>, Status> {
        let req = request.into_inner();
        let sent = self
            .gateway
            .set_watchlist(&req.user_id, &req.user_ids)
            .await?;
        Ok(Response::new(SetWatchlistResponse {
            updated_sockets: sent.delivered,
            partial: sent.partial,
        }))
    }

    async fn broadcast(
        &self,
        request: Request<BroadcastRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let reached = self
            .gateway
            .broadcast(&req.event, req.message.as_ref())
            .await?;
        tracing::info!(caller = %caller.name, event = %req.event, sockets = reached.sockets, "broadcast");
        Ok(Response::new(BroadcastResponse {
            users: reached.users,
            sockets: reached.sockets,
            refused_sockets: reached.refused,
            partial: reached.partial,
            pending_sockets: reached.pending,
        }))
    }

    async fn watch_presence(
        &self,
        request: Request<WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        let caller = Caller::of(&request);
        let items = self
            .gateway
            .watch_presence(&caller, request.into_inner().snapshot)?;
        let stream = ReceiverStream::new(items).map(|item| {
            let item = match item.map_err(Status::from)? {
                WatchItem::Snapshot {
                    user_ids,
                    last,
                    seq,
                } => Item::Snapshot(PresenceSnapshot {
                    user_ids,
                    last,
                    sequence: seq,
                }),
                WatchItem::Change(change) => Item::Change(PresenceChange {
                    user_id: change.user.to_string(),
                    online: change.online,
                    sequence: change.seq,
                }),
            };
            Ok(WatchPresenceResponse { item: Some(item) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn send_direct(
        &self,
        request: Request<SendDirectRequest>,
    ) -> Result<Response<SendDirectResponse>, Status> {
        let turn = Turn::of(&request);
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let mut options =
            SendOptions::new(req.ack_timeout_ms, req.idempotency_key, req.ttl_seconds)?;
        options.caller = caller;
        let turn = turn.wait().await;
        let sent = self
            .gateway
            .send_direct(
                &req.receiver_id,
                &req.event,
                req.message.as_ref(),
                &options,
                turn,
            )
            .await?;
        Ok(Response::new(SendDirectResponse {
            delivered_sockets: sent.delivered,
            partial: sent.partial,
            acked_sockets: sent.acked,
            queued: sent.queued,
            pending_sockets: sent.pending,
        }))
    }

    async fn list_online(
        &self,
        request: Request<ListOnlineRequest>,
    ) -> Result<Response<ListOnlineResponse>, Status> {
        let req = request.into_inner();
        let page = self.gateway.list_online(req.page_size, &req.page_token)?;
        Ok(Response::new(ListOnlineResponse {
            user_ids: page.user_ids,
            next_page_token: page.next_page_token,
            total: u32::try_from(page.total).unwrap_or(u32::MAX),
        }))
    }

    async fn send_to_users(
        &self,
        request: Request<SendToUsersRequest>,
    ) -> Result<Response<SendToUsersResponse>, Status> {
        let turn = Turn::of(&request);
        let req = request.into_inner();
        let turn = turn.wait().await;
        let deliveries = self
            .gateway
            .send_to_users(&req.receiver_ids, &req.event, req.message.as_ref(), turn)
            .await?;
        let delivered_sockets = deliveries.iter().map(|(_, s)| s.delivered).sum();
        let pending_sockets = deliveries.iter().map(|(_, s)| s.pending).sum();
        let partial = deliveries.iter().any(|(_, s)| s.partial);
        Ok(Response::new(SendToUsersResponse {
            deliveries: deliveries
                .into_iter()
                .map(|(receiver_id, sent)| Delivery {
                    receiver_id,
                    delivered_sockets: sent.delivered,
                    partial: sent.partial,
                    pending_sockets: sent.pending,
                })
                .collect(),
            delivered_sockets,
            partial,
            pending_sockets,
        }))
    }

    async fn send_stream(
        &self,
        request: Request<Streaming<StreamItem>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let options = SendOptions {
            caller: Caller::of(&request),
            ..SendOptions::default()
        };
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(send_stream::serve(
            self.gateway.clone(),
            options,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
