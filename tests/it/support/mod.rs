//! Test harness: an in-process gateway on ephemeral ports, real Socket.IO clients
//! (`rust_socketio`) and a real tonic client.

#![allow(dead_code)]

pub mod process;

use std::time::Duration;

use futures_util::FutureExt;
use messaging_gateway::{
    proto::{
        messaging_client::MessagingClient, BroadcastRequest, BroadcastResponse, SendDirectRequest,
        SendStreamRequest, SendStreamResponse,
    },
    wire, Config, Running,
};
use rust_socketio::{
    asynchronous::{Client, ClientBuilder},
    Event, Payload, TransportType,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

pub struct Gateway {
    pub running: Running,
    pub grpc: MessagingClient<Channel>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(Config::ephemeral()).await
    }

    /// A gateway on ephemeral ports with extra command-line flags.
    pub async fn start_args(args: &[&str]) -> Self {
        Self::start_with(config(args)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let running = messaging_gateway::start(config)
            .await
            .expect("gateway starts");
        let grpc = MessagingClient::connect(format!("http://{}", running.grpc_addr()))
            .await
            .expect("gRPC connects");
        Self { running, grpc }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.running.http_addr())
    }

    /// A WebSocket tab of `user`, connected and identified.
    pub async fn tab(&self, user: &str) -> Tab {
        Tab::connect(&self.url(), Some(user), TransportType::Websocket).await
    }

    pub async fn send(&self, receiver: &str, message: Value) -> Result<u32, tonic::Status> {
        self.send_event(receiver, "", message).await
    }

    pub async fn send_event(
        &self,
        receiver: &str,
        event: &str,
        message: Value,
    ) -> Result<u32, tonic::Status> {
        self.send_request(SendDirectRequest {
            receiver_id: receiver.into(),
            message: Some(wire::from_json(&message)),
            sender_id: "test".into(),
            event: event.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn send_request(&self, req: SendDirectRequest) -> Result<u32, tonic::Status> {
        self.grpc
            .clone()
            .send_direct(req)
            .await
            .map(|r| r.into_inner().delivered_sockets)
    }

    /// Every online user, following page tokens.
    /// Opens a `SendStream` carrying `requests`; its responses follow.
    pub async fn send_stream(
        &self,
        requests: impl IntoIterator<Item = SendStreamRequest, IntoIter: Send + 'static>,
    ) -> tonic::Streaming<SendStreamResponse> {
        self.grpc
            .clone()
            .send_stream(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner()
    }

    /// `Broadcast`s `message` as `event`, sent by "ops".
    pub async fn broadcast(&self, message: Value, event: &str) -> BroadcastResponse {
        self.grpc
            .clone()
            .broadcast(BroadcastRequest {
                message: Some(wire::from_json(&message)),
                sender_id: "ops".into(),
                event: event.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn online(&self) -> Vec<String> {
        let mut users = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .grpc
                .clone()
                .list_online(messaging_gateway::proto::ListOnlineRequest {
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("ListOnline")
                .into_inner();
            users.extend(page.user_ids);
            if page.next_page_token.is_empty() {
                return users;
            }
            token = page.next_page_token;
        }
    }

    /// Polls ListOnline until `pred` holds.
    pub async fn wait_online(&self, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        tokio::time::timeout(WAIT, async {
            loop {
                let users = self.online().await;
                if pred(&users) {
                    return users;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("online users reached the expected state")
    }
}

/// Ephemeral-port configuration plus `args`, parsed as the binary would.
pub fn config(args: &[&str]) -> Config {
    use clap::Parser;
    let base = [
        "messaging-gateway",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    Config::try_parse_from(base.iter().chain(args)).expect("valid test flags")
}

/// What a client saw: a named event with its arguments, a connect, or a connect_error.
#[derive(Debug, Clone)]
pub enum Seen {
    Connected,
    Error(String),
    Event(String, Vec<Value>),
}

/// One Socket.IO client (a browser tab).
pub struct Tab {
    pub client: Client,
    rx: mpsc::UnboundedReceiver<Seen>,
}

impl Tab {
    /// Opens a client; `user` goes in the handshake query. Waits for the connect ack.
    pub async fn connect(url: &str, user: Option<&str>, transport: TransportType) -> Tab {
        let url = match user {
            Some(u) => format!("{url}?userId={}", urlencode(u)),
            None => url.to_string(),
        };
        let mut tab = Self::open(ClientBuilder::new(url).transport_type(transport)).await;
        tab.connected().await;
        tab
    }

    /// Opens a client from a builder without waiting for the handshake outcome.
    pub async fn open(builder: ClientBuilder) -> Tab {
        let (tx, rx) = mpsc::unbounded_channel();
        let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
        let client = builder
            .reconnect(false)
            .on(Event::Connect, move |_, _| {
                let _ = t1.send(Seen::Connected);
                async {}.boxed()
            })
            .on(Event::Error, move |payload, _| {
                let _ = t2.send(Seen::Error(text(payload)));
                async {}.boxed()
            })
            .on_any(move |event, payload, _| {
                let args = match payload {
                    Payload::Text(args) => args,
                    other => vec![Value::String(text(other))],
                };
                let _ = t3.send(Seen::Event(String::from(event), args));
                async {}.boxed()
            })
            .connect()
            .await
            .expect("transport opens");
        Tab { client, rx }
    }

    pub async fn next(&mut self) -> Option<Seen> {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn connected(&mut self) {
        loop {
            match self.next().await {
                Some(Seen::Connected) => return,
                Some(Seen::Error(e)) => panic!("connect failed: {e}"),
                Some(Seen::Event(..)) => {}
                None => panic!("no connect ack"),
            }
        }
    }

    /// The arguments of the next `name` event; other events are skipped.
    pub async fn event(&mut self, name: &str) -> Vec<Value> {
        loop {
            match self.next().await {
                Some(Seen::Event(e, args)) if e == name => return args,
                Some(_) => {}
                None => panic!("no {name} event within {WAIT:?}"),
            }
        }
    }

    /// The first argument of the next `name` event.
    pub async fn first_arg(&mut self, name: &str) -> Value {
        self.event(name)
            .await
            .into_iter()
            .next()
            .expect("an argument")
    }

    /// Waits for a `getOnlineUsers` list satisfying `pred`.
    pub async fn online_until(&mut self, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        loop {
            let list: Vec<String> = serde_json::from_value(self.first_arg("getOnlineUsers").await)
                .expect("getOnlineUsers carries an array of strings");
            if pred(&list) {
                return list;
            }
        }
    }

    /// Asserts no `name` event arrives within [`QUIET`]; other events are ignored.
    pub async fn expect_no(&mut self, name: &str) {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(seen) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match seen {
                Some(Seen::Event(e, args)) if e == name => panic!("unexpected {name}: {args:?}"),
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Counts `name` events arriving within `window`.
    pub async fn count(&mut self, name: &str, window: Duration) -> (usize, Option<Vec<Value>>) {
        let deadline = tokio::time::Instant::now() + window;
        let (mut n, mut last) = (0, None);
        while let Ok(Some(seen)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Seen::Event(e, args) = seen {
                if e == name {
                    n += 1;
                    last = Some(args);
                }
            }
        }
        (n, last)
    }

    pub async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}

fn text(payload: Payload) -> String {
    match payload {
        Payload::Text(v) => v
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(","),
        Payload::Binary(b) => format!("{b:?}"),
        #[allow(deprecated)]
        Payload::String(s) => s,
    }
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
