//! The backend side's pieces beside [`super::Gateway`]: the one `SendDirectRequest` builder,
//! gRPC connections, API-key metadata, health checks and `WatchPresence` items.

use std::{net::SocketAddr, time::Duration};

use futures_util::StreamExt;
use messaging_gateway::{
    proto::{watch_presence_response::Item, SendDirectRequest, WatchPresenceResponse},
    wire,
};
use serde_json::Value;
use tonic::{
    transport::{Channel, Endpoint},
    Request, Status, Streaming,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use super::WAIT;

/// The health status `SERVING`.
pub const SERVING: i32 = 1;
/// The health status `NOT_SERVING`.
pub const NOT_SERVING: i32 = 2;

/// A `SendDirect` of `message` to `receiver` from "test" as `newMessage`; tests set the
/// other fields with `..direct(receiver, message)`.
pub fn direct(receiver: &str, message: Value) -> SendDirectRequest {
    SendDirectRequest {
        receiver_id: receiver.into(),
        message: Some(wire::from_json(&message)),
        sender_id: "test".into(),
        ..Default::default()
    }
}

/// `token` with its last byte changed, as a client tampering with a page token would.
pub fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let last = bytes.last_mut().expect("a page token");
    *last = if *last == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// A new plaintext gRPC connection to `addr`; an error when nothing answers within 2 s.
pub async fn channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

/// The API key of the caller named "orders" in [`callers_file`].
pub const ORDERS: &str = "orders-key-0123456789";
/// The API key of the caller named "analytics" in [`callers_file`].
pub const ANALYTICS: &str = "analytics-key-0123456789";

/// An `--api-keys-file` naming two callers, [`ORDERS`] and [`ANALYTICS`], each allowed
/// everything, with `analytics_extra` (shares) on analytics' line; the file lives as long
/// as the value.
pub fn callers_file(analytics_extra: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "{ORDERS} name=orders allow=*\n{ANALYTICS} name=analytics allow=* {analytics_extra}\n"
        ),
    )
    .unwrap();
    file
}

/// `msg` with `authorization: Bearer <key>`.
pub fn authorized<T>(msg: T, key: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

/// The `grpc.health.v1` status of `service` ("" for the whole server).
pub async fn health(channel: Channel, service: &str) -> Result<i32, Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// The next `WatchPresence` item, within [`WAIT`]; the stream's error status as `Err`.
pub async fn next_watch_item(
    stream: &mut Streaming<WatchPresenceResponse>,
) -> Result<Item, Status> {
    let item = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a watch item in time")
        .expect("the watch goes on")?;
    Ok(item.item.expect("an item"))
}
