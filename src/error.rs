//! The gateway's typed errors and their one mapping to gRPC statuses.

use tonic::{Code, Status};

use crate::{cursor::InvalidToken, wire::WireError};

/// Everything a gateway operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A request field is missing or malformed; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("message: {0}")]
    Message(#[from] WireError),
    #[error(transparent)]
    PageToken(#[from] InvalidToken),
    /// The encoded message is over `--max-message-bytes`.
    #[error("message: {size} bytes as JSON, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// The message could not be encoded as a Socket.IO packet.
    #[error("message could not be encoded: {0}")]
    Encode(String),
    /// The process is draining and takes no new work.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl GatewayError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::Message(_) | Self::PageToken(_) => {
                Code::InvalidArgument
            }
            Self::TooLarge { .. } => Code::ResourceExhausted,
            Self::Encode(_) => Code::Internal,
            Self::ShuttingDown => Code::Unavailable,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
