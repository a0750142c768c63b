//! The `messaging.v1.Messaging` gRPC service: a thin translation onto [`Gateway`].

use tonic::{Request, Response, Status};

use crate::{
    gateway::Gateway,
    proto::{
        messaging_server::Messaging, ListOnlineRequest, ListOnlineResponse, SendDirectRequest,
        SendDirectResponse,
    },
};

/// Serves the Messaging API from the shared gateway state.
#[derive(Clone)]
pub struct MessagingService {
    gateway: Gateway,
}

impl MessagingService {
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl Messaging for MessagingService {
    async fn send_direct(
        &self,
        request: Request<SendDirectRequest>,
    ) -> Result<Response<SendDirectResponse>, Status> {
        let req = request.into_inner();
        let delivered_sockets = self
            .gateway
            .send_direct(&req.receiver_id, &req.event, req.message.as_ref())
            .await?;
        Ok(Response::new(SendDirectResponse { delivered_sockets }))
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
}
