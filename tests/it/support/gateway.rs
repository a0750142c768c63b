//! The gateway in-process on ephemeral ports, with a tonic client: what most tests start.

use std::time::Duration;

use messaging_gateway::{
    proto::{
        messaging_client::MessagingClient, BroadcastRequest, BroadcastResponse,
        DisconnectUserRequest, GetPresenceRequest, ListOnlineRequest, ListOnlineResponse,
        SendDirectRequest, SendDirectResponse, SendStreamRequest, SendStreamResponse, UserPresence,
    },
    wire, Config, Running,
};
use rust_socketio::{asynchronous::ClientBuilder, TransportType};
use serde_json::Value;
use tonic::transport::Channel;

use super::{direct, grpc, http, Seen, Tab, WAIT};

/// A running gateway and a tonic client on its gRPC port.
pub struct Gateway {
    pub running: Running,
    pub grpc: MessagingClient<Channel>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(config(&[])).await
    }

    /// A gateway on ephemeral ports with extra command-line flags.
    pub async fn start_args(args: &[&str]) -> Self {
        Self::start_with(config(args)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let running = messaging_gateway::start(config)
            .await
            .expect("gateway starts");
        let channel = grpc::channel(running.grpc_addr())
            .await
            .expect("gRPC connects");
        Self {
            running,
            grpc: MessagingClient::new(channel),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.running.http_addr())
    }

    /// A WebSocket tab of `user`, connected and identified.
    pub async fn tab(&self, user: &str) -> Tab {
        Tab::connect(&self.url(), Some(user), TransportType::Websocket).await
    }

    /// A WebSocket client opened with `query` (after the URL) and `auth`, and the first thing
    /// the handshake produced: a connect or a connect_error.
    pub async fn handshake(&self, query: &str, auth: Option<Value>) -> (Tab, Seen) {
        let mut builder = ClientBuilder::new(format!("{}{query}", self.url()))
            .transport_type(TransportType::Websocket);
        if let Some(auth) = auth {
            builder = builder.auth(auth);
        }
        let mut tab = Tab::open(builder).await;
        let seen = tab.next().await.expect("a handshake outcome");
        (tab, seen)
    }

    /// A new gRPC connection to this gateway, beside the shared one in `grpc`.
    pub async fn channel(&self) -> Channel {
        grpc::channel(self.running.grpc_addr())
            .await
            .expect("gRPC connects")
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
            event: event.into(),
            ..direct(receiver, message)
        })
        .await
    }

    /// `SendDirect`: how many sockets it was delivered to.
    pub async fn send_request(&self, req: SendDirectRequest) -> Result<u32, tonic::Status> {
        self.send_direct(req).await.map(|r| r.delivered_sockets)
    }

    /// `SendDirect` with the whole response.
    pub async fn send_direct(
        &self,
        req: SendDirectRequest,
    ) -> Result<SendDirectResponse, tonic::Status> {
        self.grpc
            .clone()
            .send_direct(req)
            .await
            .map(|r| r.into_inner())
    }

    /// `SendDirect` as the caller of API key `key`, with the whole response.
    pub async fn send_direct_as(
        &self,
        key: &str,
        req: SendDirectRequest,
    ) -> Result<SendDirectResponse, tonic::Status> {
        self.grpc
            .clone()
            .send_direct(grpc::authorized(req, key))
            .await
            .map(|r| r.into_inner())
    }

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

    /// `DisconnectUser`: (disconnected sockets, partial).
    pub async fn disconnect(&self, user: &str, reason: &str) -> Result<(u32, bool), tonic::Status> {
        self.grpc
            .clone()
            .disconnect_user(DisconnectUserRequest {
                user_id: user.into(),
                reason: reason.into(),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.disconnected_sockets, r.partial)
            })
    }

    /// `GetPresence` of `users`.
    pub async fn presence(&self, users: &[&str]) -> Result<Vec<UserPresence>, tonic::Status> {
        self.grpc
            .clone()
            .get_presence(GetPresenceRequest {
                user_ids: users.iter().map(|u| u.to_string()).collect(),
            })
            .await
            .map(|r| r.into_inner().users)
    }

    /// Waits until `user` holds `sockets` sockets (a tab is registered just after its connect
    /// ack; in a cluster, once every node knows of it); its presence then.
    pub async fn wait_presence(&self, user: &str, sockets: u32) -> UserPresence {
        tokio::time::timeout(WAIT, async {
            loop {
                let mut users = self.presence(&[user]).await.unwrap();
                if users[0].sockets == sockets {
                    return users.remove(0);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{user} reached {sockets} sockets"))
    }

    /// One `ListOnline` page.
    pub async fn list_online(
        &self,
        page_size: u32,
        page_token: impl Into<String>,
    ) -> Result<ListOnlineResponse, tonic::Status> {
        self.grpc
            .clone()
            .list_online(ListOnlineRequest {
                page_size,
                page_token: page_token.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Every online user, following page tokens.
    pub async fn online(&self) -> Vec<String> {
        let mut users = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_online(1000, token).await.expect("ListOnline");
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

    /// The body of `GET /metrics` (the gateway runs with `--metrics-addr`).
    pub async fn metrics_text(&self) -> String {
        let addr = self.running.metrics_addr().expect("metrics listener");
        http::get(addr, "/metrics").await.body
    }
}

/// Ephemeral-port configuration plus `args`, parsed as the binary would. Connection state
/// recovery is off unless `args` turn it on (see [`super::RECOVERY_OFF`]).
pub fn config(args: &[&str]) -> Config {
    use clap::Parser;
    let base = [
        "messaging-gateway",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--recovery-window-ms",
        super::RECOVERY_OFF,
    ];
    Config::try_parse_from(base.iter().chain(args)).expect("valid test flags")
}
