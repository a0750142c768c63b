//! Request decoding for the Messaging service.
//!
//! prost's decode errors (a string that is not UTF-8, a truncated message, nesting beyond its
//! recursion limit) reach callers as INTERNAL through tonic, and in a stream a decoder error
//! ends the whole call. Both are the caller's fault and must be answered like any other bad
//! request: INVALID_ARGUMENT, and for `SendStream` an in-band answer after which the stream
//! goes on.

use std::marker::PhantomData;

use prost::{bytes::Buf, Message};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::ProstEncoder;

use crate::{error::GatewayError, proto::SendStreamRequest};

fn malformed(e: prost::DecodeError) -> Status {
    GatewayError::Malformed(e.to_string()).into()
}

/// Protobuf in and out; a request that does not decode is INVALID_ARGUMENT.
pub struct RequestCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for RequestCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> Codec for RequestCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = RequestDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes a unary request; a malformed one is INVALID_ARGUMENT, not INTERNAL.
pub struct RequestDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for RequestDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf).map(Some).map_err(malformed)
    }
}

/// One `SendStream` item: its id (0 when even that is unreadable) and the request, or why it
/// could not be decoded.
#[derive(Debug)]
pub struct StreamItem {
    /// The item's `id`, to answer it by; 0 when unreadable.
    pub id: u64,
    /// The request, or the status its answer carries.
    pub request: Result<SendStreamRequest, Status>,
}

/// Only the `id` of a `SendStreamRequest`: other fields are skipped without being
/// interpreted, so it decodes where the whole request does not.
#[derive(Clone, PartialEq, Message)]
struct IdOnly {
    #[prost(uint64, tag = "5")]
    id: u64,
}

/// `SendStreamRequest` items, each decoded on its own: a bad one becomes a [`StreamItem`]
/// carrying the error, never a stream error.
pub struct StreamCodec<E>(PhantomData<E>);

impl<E> Default for StreamCodec<E> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E: Message + Send + 'static> Codec for StreamCodec<E> {
    type Encode = E;
    type Decode = StreamItem;
    type Encoder = ProstEncoder<E>;
    type Decoder = StreamDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StreamDecoder
    }
}

/// Decodes each `SendStream` item on its own (see [`StreamCodec`]).
pub struct StreamDecoder;

impl Decoder for StreamDecoder {
    type Item = StreamItem;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<StreamItem>, Status> {
        // The whole item is consumed either way, so the next one starts where it should.
        let bytes = buf.copy_to_bytes(buf.remaining());
        Ok(Some(match SendStreamRequest::decode(bytes.clone()) {
            Ok(request) => StreamItem {
                id: request.id,
                request: Ok(request),
            },
            Err(e) => StreamItem {
                id: IdOnly::decode(bytes).map_or(0, |m| m.id),
                request: Err(malformed(e)),
            },
        }))
    }
}
