//! Generated gRPC types for `messaging.v1` and the descriptor set served by reflection.
//! The server side is generated with the gateway's codecs (see `build.rs`).

#![allow(missing_docs, clippy::doc_markdown)]

tonic::include_proto!("messaging.v1");
include!(concat!(env!("OUT_DIR"), "/messaging.v1.Messaging.rs"));

/// Encoded `FileDescriptorSet` of `proto/messaging/v1/messaging.proto`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("messaging_descriptor");
