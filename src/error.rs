//! The gateway's typed errors and their one mapping to gRPC statuses (HTTP statuses follow it).

use tonic::{
    codegen::http::{self, HeaderValue},
    Code, Status,
};

use crate::{cluster::ClusterError, cursor::InvalidToken, mailbox::MailboxError, wire::WireError};

/// Everything a gateway operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A request field is missing or malformed; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, as the contract names it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The message value cannot be expressed as JSON.
    #[error("message: {0}")]
    Message(#[from] WireError),
    /// A `ListOnline` page token this cluster did not issue.
    #[error(transparent)]
    PageToken(#[from] InvalidToken),
    /// The encoded message is over `--max-message-bytes`.
    #[error("message: {size} bytes as JSON, over the {limit}-byte limit")]
    TooLarge {
        /// Bytes of the message as JSON.
        size: usize,
        /// `--max-message-bytes`.
        limit: usize,
    },
    /// The message could not be encoded as a Socket.IO packet.
    #[error("message could not be encoded: {0}")]
    Encode(String),
    /// The request's bytes are not a valid protobuf message of its type.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Other nodes hold sockets of the receivers but cannot be reached.
    #[error("other gateway nodes hold sockets of {receivers} but cannot be reached: {source}; {local} socket(s) on this node took the message, {pending} kept it for a recovery")]
    Cluster {
        /// Up to three of the receivers those nodes hold.
        receivers: String,
        /// Sockets on this node that took the message: a caller may not retry blindly.
        local: u32,
        /// Sockets on this node whose connection dropped that kept it for a recovery.
        pending: u32,
        /// Why the nodes could not be asked.
        source: ClusterError,
    },
    /// The shared idempotency record cannot be read or written.
    #[error("idempotency_key cannot be checked: {0}")]
    Idempotency(ClusterError),
    /// The offline mailbox in Redis cannot be written or read.
    #[error("the offline mailbox is unavailable: {0}")]
    Mailbox(MailboxError),
    /// Other nodes could not be asked for their share of a disconnect or broadcast.
    #[error("other gateway nodes cannot be reached: {source}; on this node {local}")]
    Unreachable {
        /// What this node did before the others could not be asked.
        local: String,
        /// Why they could not be asked.
        source: ClusterError,
    },
    /// As many presence watchers as `--max-presence-watchers` are open.
    #[error("too many presence watchers: {0} are open (--max-presence-watchers); retry later")]
    TooManyWatchers(usize),
    /// The caller holds as many presence watchers as its share.
    #[error("too many presence watchers for caller {caller:?}: its share of {share} are open (watchers= in the callers file, else --max-presence-watchers-per-caller); close one or retry later")]
    CallerWatchers {
        /// The caller's name.
        caller: std::sync::Arc<str>,
        /// Its share.
        share: usize,
    },
    /// A presence watcher read more slowly than presence changed.
    #[error("watcher fell behind: {missed} presence changes were missed (over the {buffer}-change buffer, --watch-buffer-events); reopen the watch with a snapshot")]
    WatcherBehind {
        /// Changes the watcher missed.
        missed: u64,
        /// `--watch-buffer-events`.
        buffer: usize,
    },
    /// The process is draining and takes no new work.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl GatewayError {
    /// An [`GatewayError::InvalidArgument`] naming `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. }
            | Self::Message(_)
            | Self::PageToken(_)
            | Self::Malformed(_) => Code::InvalidArgument,
            Self::TooLarge { .. }
            | Self::TooManyWatchers(_)
            | Self::CallerWatchers { .. }
            | Self::WatcherBehind { .. } => Code::ResourceExhausted,
            Self::Encode(_) => Code::Internal,
            Self::ShuttingDown
            | Self::Cluster { .. }
            | Self::Idempotency(_)
            | Self::Mailbox(_)
            | Self::Unreachable { .. } => Code::Unavailable,
        }
    }

    /// The same verdict for the HTTP endpoints (the live page's demo send).
    pub fn http_status(&self) -> http::StatusCode {
        match self.code() {
            Code::InvalidArgument => http::StatusCode::BAD_REQUEST,
            Code::ResourceExhausted => http::StatusCode::PAYLOAD_TOO_LARGE,
            Code::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// tonic refuses a message over `--grpc-max-decoding-bytes` with OUT_OF_RANGE; the gRPC
/// status-code guide (and our README) say RESOURCE_EXHAUSTED. No gateway method returns
/// OUT_OF_RANGE itself, so every such status is that refusal.
pub fn size_limit_status(status: Status) -> Status {
    if status.code() == Code::OutOfRange {
        return Status::new(Code::ResourceExhausted, status.message());
    }
    status
}

/// [`size_limit_status`] for a call refused before it reached the service: tonic then answers
/// with the status in the response headers (trailers-only).
pub fn size_limit_response<B>(mut response: http::Response<B>) -> http::Response<B> {
    let out_of_range = HeaderValue::from(Code::OutOfRange as i32);
    let headers = response.headers_mut();
    if headers.get(GRPC_STATUS) == Some(&out_of_range) {
        headers.insert(
            GRPC_STATUS,
            HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    response
}

const GRPC_STATUS: &str = "grpc-status";
