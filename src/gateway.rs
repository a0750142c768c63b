//! The gateway's state and its small API: deliver a message to a user, list who is online.
//!
//! Both the gRPC service and the Socket.IO handlers go through here, so the rules (which
//! fields are required, how a user is addressed, how deliveries are counted) live in one place.

use std::sync::Arc;

use prost_types::Value;
use socketioxide::{BroadcastError, SocketIo};

use crate::{
    cursor::PageCursor,
    error::GatewayError,
    presence::{Page, Presence},
    validation,
    wire::{self, Json},
};

/// Default and largest `ListOnline` page sizes.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A page of online users with the token that resumes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlinePage {
    pub user_ids: Vec<String>,
    /// Empty on the last page.
    pub next_page_token: String,
    pub total: usize,
}

/// Shared gateway state; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    io: SocketIo,
    presence: Arc<Presence>,
    cursor: PageCursor,
}

impl Gateway {
    pub fn new(io: SocketIo, presence: Arc<Presence>) -> Self {
        Self {
            io,
            presence,
            cursor: PageCursor::new(),
        }
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    /// Emits `event` with `message` to every socket of `receiver`. Returns how many sockets
    /// took it: an offline user is 0, not an error. The packet is encoded once for all sockets.
    pub async fn send_direct(
        &self,
        receiver: &str,
        event: &str,
        message: Option<&Value>,
    ) -> Result<u32, GatewayError> {
        validation::user_id(receiver).map_err(|r| GatewayError::invalid("receiver_id", r))?;
        let event = validation::event(event).map_err(|r| GatewayError::invalid("event", r))?;
        let message = match message {
            Some(m @ Value { kind: Some(_) }) => m,
            _ => return Err(GatewayError::invalid("message", "is required")),
        };
        wire::validate(message)?;

        let sockets = self.presence.socket_count(receiver);
        if sockets == 0 {
            return Ok(0);
        }
        let failed = match self
            .io
            .to(receiver.to_owned())
            .emit(event, &Json(message))
            .await
        {
            Ok(()) => 0,
            Err(BroadcastError::Socket(errors)) => {
                tracing::warn!(receiver, ?errors, "some sockets could not take a message");
                errors.len()
            }
            Err(e @ BroadcastError::Serialize(_)) => {
                return Err(GatewayError::Encode(e.to_string()))
            }
            Err(e) => {
                tracing::warn!(receiver, error = %e, "broadcast failed");
                sockets
            }
        };
        tracing::debug!(receiver, event, sockets, failed, "direct message");
        Ok(u32::try_from(sockets.saturating_sub(failed)).unwrap_or(u32::MAX))
    }

    /// One page of online users, sorted by id. `page_size` 0 means the default.
    pub fn list_online(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<OnlinePage, GatewayError> {
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
