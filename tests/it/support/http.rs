//! One HTTP/1.1 client over a bare TCP connection, as a probe, curl or an Engine.IO polling
//! client sends it, so the tests see every status, header and byte the gateway answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

use super::WAIT;

/// The loopback address requests come from unless a test picks another `127.0.0.x`.
pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The body type an Engine.IO polling client sends.
pub const TEXT: [(&str, &str); 1] = [("Content-Type", "text/plain;charset=UTF-8")];

/// A complete answer: status, head (status line and headers) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

pub async fn get(to: SocketAddr, path: &str) -> Reply {
    request(LOCAL, to, "GET", path, &[], "").await
}

/// One request on a new connection from `from` ([`LOCAL`], or another loopback address where
/// per-address limits matter); `Connection: close`, so the answer ends with the connection.
/// `Host` is `to` unless `headers` name one.
pub async fn request(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut tcp = socket.connect(to).await.expect("connects");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {to}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("reads");
    let raw = String::from_utf8(raw).expect("a text response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// An Engine.IO polling request (a text body) from `from`.
pub async fn polling(from: IpAddr, to: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    request(from, to, method, path, &TEXT, body).await
}

/// The polling path of the Engine.IO session `sid`.
pub fn polling_path(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// Opens an Engine.IO polling session as `user` from `from`: its sid, or the refusal.
pub async fn polling_session(from: IpAddr, to: SocketAddr, user: &str) -> Result<String, Reply> {
    let path = format!("/socket.io/?EIO=4&transport=polling&userId={user}");
    let reply = polling(from, to, "GET", &path, "").await;
    if reply.status != 200 {
        return Err(reply);
    }
    Ok(open_packet_sid(&reply.body))
}

/// The `sid` of an Engine.IO open packet (`0{...}`).
pub fn open_packet_sid(packet: &str) -> String {
    let json = packet.strip_prefix('0').expect("open packet");
    let open: Value = serde_json::from_str(json).expect("open packet JSON");
    open["sid"].as_str().expect("sid").to_owned()
}
