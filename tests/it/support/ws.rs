//! Raw Engine.IO v4 WebSocket clients (tokio-tungstenite), for what a Socket.IO library hides:
//! the packets as they travel, clients that stop reading, flood or acknowledge.

use std::{
    net::SocketAddr,
    ops::{Deref, DerefMut},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use super::WAIT;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket transport past its Engine.IO open packet; the stream itself (to send
/// frames, stop reading, close) through `Deref`.
pub struct RawWs(Ws);

impl Deref for RawWs {
    type Target = Ws;

    fn deref(&self) -> &Ws {
        &self.0
    }
}

impl DerefMut for RawWs {
    fn deref_mut(&mut self) -> &mut Ws {
        &mut self.0
    }
}

impl RawWs {
    /// Opens the transport (`query` after `transport=websocket`, e.g. `&userId=alice`) and
    /// reads the open packet; not yet connected to the namespace.
    pub async fn open(http: SocketAddr, query: &str) -> Self {
        let url = format!("ws://{http}/socket.io/?EIO=4&transport=websocket{query}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket opens");
        let mut raw = Self(ws);
        let open = raw.next_packet().await.expect("open packet");
        assert!(open.starts_with("0{"), "open packet: {open}");
        raw
    }

    /// `user`'s transport, connected to the default namespace.
    pub async fn join(http: SocketAddr, user: &str) -> Self {
        let mut raw = Self::open(http, &format!("&userId={user}")).await;
        raw.join_with("").await;
        raw
    }

    /// Sends the namespace CONNECT with `auth` (a JSON object, or "" for none) and reads up to
    /// its ack.
    pub async fn join_with(&mut self, auth: &str) {
        self.send_packet(&format!("40{auth}")).await;
        while !self
            .next_packet()
            .await
            .expect("connect ack")
            .starts_with("40")
        {}
    }

    /// The stream itself, e.g. to split it into a writer and a reader.
    pub fn into_inner(self) -> Ws {
        self.0
    }

    pub async fn send_packet(&mut self, packet: &str) {
        self.0.send(Message::text(packet)).await.unwrap();
    }

    /// The next text packet, answering pings like a live client; `None` when the connection
    /// ends (close frame, EOF or reset) or nothing arrives within [`WAIT`].
    pub async fn next_packet(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.0.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    let _ = self.0.send(Message::text("3")).await;
                }
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends the namespace CONNECT with `auth`; the server's answer packet.
    pub async fn connect(&mut self, auth: Value) -> String {
        self.send_packet(&format!("40{auth}")).await;
        self.next_packet().await.expect("connect answer")
    }

    /// The arguments of the next event named `name` (`42[name,...]`); `None` if the
    /// connection ends first.
    pub async fn event(&mut self, name: &str) -> Option<Vec<Value>> {
        loop {
            let packet = self.next_packet().await?;
            if let Some(body) = packet.strip_prefix("42") {
                let mut args: Vec<Value> = serde_json::from_str(body).unwrap();
                if args.first() == Some(&json!(name)) {
                    args.remove(0);
                    return Some(args);
                }
            }
        }
    }

    /// Emits `name` with `arg` and ack id `id`; returns the ack's first argument. Sent again
    /// while unanswered: socketioxide runs the connect handler, which registers the event
    /// handlers, only after sending the connect ack, so an event sent at once may find none.
    pub async fn call(&mut self, id: u32, name: &str, arg: Value) -> Value {
        let prefix = format!("43{id}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.send_packet(&format!("42{id}{}", json!([name, arg])))
                .await;
            let answer = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    let packet = self.next_packet().await.expect("the connection stays open");
                    if let Some(body) = packet.strip_prefix(&prefix) {
                        let args: Vec<Value> = serde_json::from_str(body).unwrap();
                        return args.into_iter().next().unwrap();
                    }
                }
            })
            .await;
            match answer {
                Ok(value) => return value,
                Err(_) => assert!(tokio::time::Instant::now() < deadline, "no ack"),
            }
        }
    }
}

/// Reads `ws` in a task until it ends, answering pings: each event's name and first argument
/// go to `seen`, in arrival order; when `acking`, an event that asks for an ack is acked first.
pub fn read_events(
    mut ws: RawWs,
    acking: bool,
    mut seen: impl FnMut(String, Value) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Ok(text) = msg.to_text() else { continue };
            if text == "2" {
                let _ = ws.send(Message::text("3")).await;
                continue;
            }
            let Some(rest) = text.strip_prefix("42") else {
                continue;
            };
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (id, json) = rest.split_at(digits);
            let Ok(Value::Array(args)) = serde_json::from_str(json) else {
                continue;
            };
            let name = args[0].as_str().unwrap_or_default().to_owned();
            let arg = args.get(1).cloned().unwrap_or_default();
            if acking && !id.is_empty() {
                let _ = ws.send(Message::text(format!("43{id}[]"))).await;
            }
            seen(name, arg);
        }
    })
}

/// A raw Socket.IO tab that acknowledges events (rust_socketio cannot): it answers pings and,
/// when `acking`, every event that asks for an ack. Events come out in arrival order.
pub struct AckTab {
    events: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl AckTab {
    pub async fn connect(http: SocketAddr, user: &str, acking: bool) -> Self {
        let ws = RawWs::join(http, user).await;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let task = read_events(ws, acking, move |name, arg| {
            let _ = tx.send((name, arg));
        });
        let mut tab = Self { events, task };
        // The first online list means the gateway has registered the socket.
        tab.next("getOnlineUsers", WAIT)
            .await
            .expect("the online list arrives once connected");
        tab
    }

    /// The next `name` event's first argument, or `None` within `within`.
    pub async fn next(&mut self, name: &str, within: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((event, arg))) if event == name => return Some(arg),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }
}

impl Drop for AckTab {
    fn drop(&mut self) {
        self.task.abort();
    }
}
