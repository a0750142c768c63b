//! The backend's `--stream` connections: one `SendStream` call per connection, each item
//! answered through the stream's responses (in order), so `backend` drives items exactly as
//! it drives unary calls: one awaited answer each.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use messaging_gateway::proto::{
    messaging_client::MessagingClient, SendStreamRequest, SendStreamResponse,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{transport::Endpoint, Streaming};

use crate::client::lock;

type Answer = oneshot::Sender<Result<u32, String>>;

/// One `SendStream` call; a reader task answers its items as responses arrive.
pub struct ItemStream {
    state: Mutex<Items>,
}

/// Where items go in, and who waits for each item's answer, in the order they went in.
struct Items {
    tx: mpsc::UnboundedSender<SendStreamRequest>,
    waiting: VecDeque<(u64, Answer)>,
}

impl ItemStream {
    /// Opens a stream on a new HTTP/2 connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Arc<Self>, String> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("gRPC {addr}: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let responses = MessagingClient::new(channel)
            .send_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|e| format!("SendStream: {}", e.message()))?
            .into_inner();
        let stream = Arc::new(Self {
            state: Mutex::new(Items {
                tx,
                waiting: VecDeque::new(),
            }),
        });
        tokio::spawn(read_answers(stream.clone(), responses));
        Ok(stream)
    }

    /// Sends one item and waits for its answer: the sockets that got it.
    pub async fn send(&self, req: SendStreamRequest) -> Result<u32, String> {
        let (answer, answered) = oneshot::channel();
        {
            let mut state = lock(&self.state);
            let id = req.id;
            state
                .tx
                .send(req)
                .map_err(|_| "SendStream ended".to_string())?;
            state.waiting.push_back((id, answer));
        }
        answered
            .await
            .map_err(|_| "SendStream ended before answering".to_string())?
    }
}

/// Answers the stream's items in order; when the stream ends, the rest learn it by their
/// dropped answerer.
async fn read_answers(stream: Arc<ItemStream>, mut responses: Streaming<SendStreamResponse>) {
    loop {
        let r = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                fail_all(&stream, format!("SendStream: {}", e.message()));
                break;
            }
        };
        let Some((id, answer)) = lock(&stream.state).waiting.pop_front() else {
            break;
        };
        let result = if id != r.id {
            Err(format!("SendStream answered item {} for item {id}", r.id))
        } else if r.code != 0 {
            Err(format!("SendStream item {id}: {} {}", r.code, r.error))
        } else {
            Ok(r.delivered_sockets)
        };
        let _ = answer.send(result);
    }
    lock(&stream.state).waiting.clear();
}

/// Fails every item still waiting with `error`.
fn fail_all(stream: &ItemStream, error: String) {
    for (_, answer) in lock(&stream.state).waiting.drain(..) {
        let _ = answer.send(Err(error.clone()));
    }
}
