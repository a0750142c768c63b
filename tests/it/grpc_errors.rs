//! Requests that do not decode are the caller's error: INVALID_ARGUMENT, and in SendStream an
//! in-band answer after which the stream goes on. A request over --grpc-max-decoding-bytes is
//! RESOURCE_EXHAUSTED. The bytes are written by hand, since a correct client cannot produce
//! them.

use std::marker::PhantomData;

use messaging_gateway::{
    proto::{SendDirectResponse, SendStreamRequest, SendStreamResponse},
    wire,
};
use prost::{bytes::BufMut, Message};
use serde_json::{json, Value as Json};
use tonic::{
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
    Code, Request, Status,
};
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::support::{direct, Gateway};

/// Sends raw request bytes; decodes responses as `D`.
struct Raw<D>(PhantomData<D>);

impl<D> Default for Raw<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl<D: Message + Default + Send + 'static> Codec for Raw<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<(), D>::raw_decoder(BufferSettings::default())
    }
}

async fn client(gw: &Gateway) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(gw.channel().await)
}

async fn send_direct_raw(gw: &Gateway, bytes: Vec<u8>) -> Result<u32, Status> {
    let mut grpc = client(gw).await;
    grpc.ready().await.unwrap();
    grpc.unary(
        Request::new(bytes),
        PathAndQuery::from_static("/messaging.v1.Messaging/SendDirect"),
        Raw::<SendDirectResponse>::default(),
    )
    .await
    .map(|r| r.into_inner().delivered_sockets)
}

/// Field 1 (`receiver_id`) holding bytes that are not UTF-8.
const BAD_RECEIVER: [u8; 4] = [0x0a, 2, 0xff, 0xfe];

/// Field 2 (`message`), a Value whose `string_value` (field 3) is not UTF-8.
const BAD_STRING_VALUE: [u8; 6] = [0x12, 4, 0x1a, 2, 0xc3, 0x28];

fn nested(depth: usize) -> Json {
    (0..depth).fold(json!("deep"), |v, _| json!({ "a": v }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument() {
    let gw = Gateway::start().await;
    let valid = direct("alice", json!("hi")).encode_to_vec();
    let cases = [
        (
            "receiver_id not UTF-8",
            [&BAD_RECEIVER[..], &valid].concat(),
        ),
        (
            "string value not UTF-8",
            [&b"\x0a\x05alice"[..], &BAD_STRING_VALUE].concat(),
        ),
        ("truncated", valid[..valid.len() - 2].to_vec()),
        (
            "nested 40 deep",
            direct("alice", nested(40)).encode_to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let status = send_direct_raw(&gw, bytes).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().starts_with("malformed request: "),
            "{what}: {status:?}"
        );
    }
    // Within the limit the message goes through the usual checks.
    assert_eq!(send_direct_raw(&gw, valid).await.unwrap(), 0);
    let status = send_direct_raw(&gw, direct("alice", nested(33)).encode_to_vec())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("nested deeper than 32"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stream_item_is_answered_and_the_stream_goes_on() {
    let gw = Gateway::start().await;
    let mut tab = gw.tab("alice").await;
    let item = |id: u64, receiver: &str, message: Json| {
        SendStreamRequest {
            id,
            receiver_id: receiver.into(),
            message: Some(wire::from_json(&message)),
            ..Default::default()
        }
        .encode_to_vec()
    };
    // Field 5 (`id`) = 5 after a receiver that is not UTF-8.
    let bad_utf8 = [&BAD_RECEIVER[..], &[0x28, 5], &item(0, "", json!(1))[..]].concat();
    let items = vec![
        item(1, "alice", json!("first")),
        item(2, "", json!("no receiver")),
        item(3, "alice", nested(40)),
        item(4, "alice", json!("fourth")),
        bad_utf8,
        item(6, "alice", json!("last")),
    ];
    let mut grpc = client(&gw).await;
    grpc.ready().await.unwrap();
    let mut responses = grpc
        .streaming(
            Request::new(tokio_stream::iter(items)),
            PathAndQuery::from_static("/messaging.v1.Messaging/SendStream"),
            Raw::<SendStreamResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(r) = responses.message().await.expect("no stream error") {
        answers.push((r.id, r.code, r.delivered_sockets));
    }
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(
        answers,
        [
            (1, 0, 1),
            (2, invalid, 0),
            (3, invalid, 0),
            (4, 0, 1),
            (5, invalid, 0),
            (6, 0, 1)
        ]
    );
    for expected in ["first", "fourth", "last"] {
        assert_eq!(tab.first_arg("newMessage").await, json!(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_decoding_limit_is_resource_exhausted() {
    let gw = Gateway::start_args(&["--grpc-max-decoding-bytes", "1024"]).await;
    let big = direct("alice", json!("x".repeat(2000)));
    let status = gw.send_request(big.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let item = SendStreamRequest {
        id: 1,
        receiver_id: big.receiver_id,
        message: big.message,
        ..Default::default()
    };
    let mut responses = gw
        .grpc
        .clone()
        .send_stream(tokio_stream::iter([item]))
        .await
        .unwrap()
        .into_inner();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}
