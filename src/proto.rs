//! Generated gRPC types for `messaging.v1` and the descriptor set served by reflection.

#![allow(missing_docs, clippy::doc_markdown)]

tonic::include_proto!("messaging.v1");

/// Encoded `FileDescriptorSet` of `proto/messaging/v1/messaging.proto`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("messaging_descriptor");
