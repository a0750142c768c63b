//! The gateway binary as a child process, for what only a real process shows: signals,
//! exit codes, connections closed at exit.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_messaging-gateway");

/// A running gateway binary on ephemeral ports, killed on drop.
pub struct Process {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts the binary with `args` and waits until both listeners are up.
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// Like [`Process::start`], with extra environment variables (`RUST_LOG` is `info`
    /// unless given).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut http, mut grpc) = (None, None);
        let mut startup = String::new();
        while http.is_none() || grpc.is_none() {
            let line = lines.next().expect("startup lines").unwrap();
            startup.push_str(&line);
            startup.push('\n');
            if let Some(rest) = line.split("Socket.IO listening on http://").nth(1) {
                http = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("gRPC listening on ").nth(1) {
                grpc = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        // Keep reading the logs so the child never blocks on a full pipe.
        let logs = Arc::new(Mutex::new(startup));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Self {
            child,
            http: http.unwrap(),
            grpc: grpc.unwrap(),
            logs,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "SIGTERM delivered");
    }

    /// Waits up to `limit` for the process to exit; its status and when it exited.
    pub async fn exited(&mut self, limit: Duration) -> Option<(ExitStatus, Instant)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

pub type RawWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw Engine.IO WebSocket connected to the default namespace as `user`.
pub async fn raw_socket(http: SocketAddr, user: &str) -> RawWs {
    let url = format!("ws://{http}/socket.io/?EIO=4&transport=websocket&userId={user}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket opens");
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "open packet");
    ws.send(Message::text("40")).await.unwrap();
    loop {
        let msg = ws.next().await.expect("connect ack").unwrap();
        if msg.to_text().unwrap_or_default().starts_with("40") {
            return ws;
        }
    }
}

/// A raw Socket.IO tab that acknowledges events (rust_socketio cannot): it answers pings and,
/// when `acking`, every event that asks for an ack. Events come out in arrival order.
pub struct AckTab {
    events: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl AckTab {
    pub async fn connect(http: SocketAddr, user: &str, acking: bool) -> Self {
        let mut ws = raw_socket(http, user).await;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
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
                let Ok(serde_json::Value::Array(args)) = serde_json::from_str(json) else {
                    continue;
                };
                let name = args[0].as_str().unwrap_or_default().to_owned();
                let arg = args.get(1).cloned().unwrap_or_default();
                if acking && !id.is_empty() {
                    let _ = ws.send(Message::text(format!("43{id}[]"))).await;
                }
                let _ = tx.send((name, arg));
            }
        });
        let mut tab = Self { events, task };
        // The first online list means the gateway has registered the socket.
        tab.next("getOnlineUsers", Duration::from_secs(10))
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
