//! A real Socket.IO client (`rust_socketio`) as a browser tab, and what it saw.

use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::{
    asynchronous::{Client, ClientBuilder},
    Event, Payload, TransportType,
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{QUIET, WAIT};

/// What a client saw: a named event with its arguments, a connect, or a connect_error.
#[derive(Debug, Clone)]
pub enum Seen {
    Connected,
    Error(String),
    Event(String, Vec<Value>),
}

impl Seen {
    /// Asserts this is a connect_error whose message contains `needle`.
    pub fn assert_refused(&self, needle: &str) {
        match self {
            Seen::Error(e) => assert!(e.contains(needle), "{needle:?} not in {e:?}"),
            other => panic!("expected connect_error containing {needle:?}, got {other:?}"),
        }
    }
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

    /// Every event (name, arguments) arriving within `window`, in order, with those that
    /// arrived before and were not read yet.
    pub async fn during(&mut self, window: Duration) -> Vec<(String, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + window;
        let mut seen = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Seen::Event(name, args) = event {
                seen.push((name, args));
            }
        }
        seen
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
