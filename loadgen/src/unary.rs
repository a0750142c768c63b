//! A lean gRPC unary caller straight over `h2`. tonic's `Channel` puts a buffer task and a
//! tower stack in front of every call; on the 2-core bench machine that made the load
//! generator spend about as much CPU per call as the server it measures, which capped what
//! the benchmark could show. This speaks the same gRPC wire format (length-prefixed protobuf,
//! `grpc-status` in trailers or in a trailers-only response) to any server, and batches its
//! writes the way the gateway does ([`Coalesce`]).

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request};
use messaging_gateway::coalesce::Coalesce;
use tokio::net::TcpStream;

/// One HTTP/2 connection; cheap to clone, calls on clones share it.
#[derive(Clone)]
pub struct Unary {
    send: h2::client::SendRequest<Bytes>,
    base: String,
}

impl Unary {
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("gRPC {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = h2::client::handshake(Coalesce::new(tcp))
            .await
            .map_err(|e| format!("gRPC {addr}: HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            base: format!("http://{addr}"),
        })
    }

    /// Calls `path` (`/package.Service/Method`); errors carry the gRPC status message.
    pub async fn call<Req, Resp>(&self, path: &str, req: &Req) -> Result<Resp, String>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut send = self.send.clone().ready().await.map_err(|e| e.to_string())?;
        let head = Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, mut body_out) = send.send_request(head, false).map_err(|e| e.to_string())?;
        let len = req.encoded_len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0);
        frame.put_u32(len as u32);
        req.encode(&mut frame).map_err(|e| e.to_string())?;
        body_out
            .send_data(frame.freeze(), true)
            .map_err(|e| e.to_string())?;

        let (parts, mut body) = response.await.map_err(|e| e.to_string())?.into_parts();
        if !parts.status.is_success() {
            return Err(format!("HTTP status {}", parts.status));
        }
        // A trailers-only response (an error before any message) has the status in its head.
        let trailers_only = parts.headers.contains_key("grpc-status");
        if trailers_only {
            check_status(&parts.headers)?;
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        match body.trailers().await.map_err(|e| e.to_string())? {
            Some(trailers) => check_status(&trailers)?,
            None if trailers_only => {}
            None => return Err("response without grpc-status".into()),
        }
        if data.len() < 5 || data[0] != 0 {
            return Err(format!("malformed response body ({} bytes)", data.len()));
        }
        Resp::decode(&data[5..]).map_err(|e| format!("response: {e}"))
    }
}

fn check_status(headers: &HeaderMap) -> Result<(), String> {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .ok_or("response without grpc-status")?;
    if code == "0" {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!("status {code}: {message}"))
}
