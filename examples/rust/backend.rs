//! A backend service in Rust: sends one message with `SendDirect`, then pages through
//! `ListOnline`, with the client tonic generates into this crate (`messaging_gateway::proto`).
//! Run: `cargo run --example backend -- [RECEIVER_ID] [TEXT]`.
//!
//! Environment: `GATEWAY_GRPC_ADDR` (default 127.0.0.1:50051), `GATEWAY_API_KEY` (sent as
//! `authorization: Bearer KEY` when set), `PAGE_SIZE` (`ListOnline` page size, default 100).

use std::{env, process::ExitCode, time::Duration};

use messaging_gateway::proto::{
    messaging_client::MessagingClient, ListOnlineRequest, SendDirectRequest,
};
use messaging_gateway::wire::from_json;
use tonic::{metadata::MetadataValue, transport::Endpoint, Request, Status};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = env::args().skip(1);
    let receiver_id = args.next().unwrap_or_else(|| "user123".into());
    let text = args
        .next()
        .unwrap_or_else(|| "Hello from the Rust backend".into());
    let addr = env::var("GATEWAY_GRPC_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let page_size = match env::var("PAGE_SIZE") {
        Ok(s) => s
            .parse()
            .map_err(|_| format!("PAGE_SIZE: not a number: {s:?}"))?,
        Err(_) => 100,
    };
    let auth = env::var("GATEWAY_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .map(|k| MetadataValue::try_from(format!("Bearer {k}")))
        .transpose()
        .map_err(|_| "GATEWAY_API_KEY: not a valid header value")?;

    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot reach the gateway at {addr}: {}", error_chain(&e)))?;
    // Every call carries the API key, when one is set.
    let mut client = MessagingClient::with_interceptor(channel, move |mut req: Request<()>| {
        if let Some(auth) = &auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        Ok::<_, Status>(req)
    });

    let sent = client
        .send_direct(SendDirectRequest {
            receiver_id: receiver_id.clone(),
            sender_id: "examples/rust".into(),
            message: Some(from_json(
                &serde_json::json!({ "text": text, "from": "examples/rust" }),
            )),
            event: String::new(),
            ..Default::default()
        })
        .await
        .map_err(status_line)?
        .into_inner();
    println!(
        "sent to {receiver_id}: delivered to {} socket(s)",
        sent.delivered_sockets
    );

    let mut page_token = String::new();
    let mut page = 0;
    loop {
        let resp = client
            .list_online(ListOnlineRequest {
                page_size,
                page_token,
            })
            .await
            .map_err(status_line)?
            .into_inner();
        page += 1;
        println!("online page {page}: {}", resp.user_ids.join(", "));
        if resp.next_page_token.is_empty() {
            println!("{} user(s) online", resp.total);
            return Ok(());
        }
        page_token = resp.next_page_token;
    }
}

/// An error and its causes on one line (tonic's transport error alone says only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_line = cause.to_string();
        if !line.ends_with(&cause_line) {
            line = format!("{line}: {cause_line}");
        }
        source = cause.source();
    }
    line
}

/// A gRPC error as its status name and the gateway's message, e.g. `UNAUTHENTICATED: ...`:
/// the name the gRPC spec, grpcurl and the other examples use (tonic's `Debug` says
/// `Unauthenticated`, its `Display` a sentence).
fn status_line(s: Status) -> String {
    let mut name = String::new();
    for (i, c) in format!("{:?}", s.code()).chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    format!("{name}: {}", s.message())
}
