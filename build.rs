//! Compiles the gRPC API with a vendored `protoc`, so a machine without one can build,
//! and writes the descriptor set that server reflection serves.
//!
//! prost generates the messages and the client; the server is generated from the same
//! descriptor with the gateway's own codecs (`src/codec.rs`), so a request that does not
//! decode is the caller's error (INVALID_ARGUMENT), and a client-streaming method receives
//! each item's decode result instead of losing the whole stream to one bad item.

use std::{env, path::PathBuf};

use prost::Message;
use prost_types::FileDescriptorSet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = out.join("messaging_descriptor.bin");
    tonic_prost_build::configure()
        .build_server(false)
        .file_descriptor_set_path(&descriptor)
        .compile_protos(
            &["proto/messaging/v1/messaging.proto"],
            &["proto", include.to_str().ok_or("non-UTF-8 include path")?],
        )?;

    let set = FileDescriptorSet::decode(std::fs::read(&descriptor)?.as_slice())?;
    let mut services = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "messaging.v1") {
        for service in &file.service {
            let mut builder = tonic_build::manual::Service::builder()
                .name(service.name())
                .package(file.package());
            for method in &service.method {
                let rust_type = |proto: &str| {
                    format!(
                        "crate::proto::{}",
                        proto.rsplit('.').next().unwrap_or(proto)
                    )
                };
                let mut m = tonic_build::manual::Method::builder()
                    .name(snake_case(method.name()))
                    .route_name(method.name())
                    .output_type(rust_type(method.output_type()));
                m = if method.client_streaming() {
                    m.input_type("crate::codec::StreamItem")
                        .codec_path("crate::codec::StreamCodec")
                        .client_streaming()
                } else {
                    m.input_type(rust_type(method.input_type()))
                        .codec_path("crate::codec::RequestCodec")
                };
                if method.server_streaming() {
                    m = m.server_streaming();
                }
                builder = builder.method(m.build());
            }
            services.push(builder.build());
        }
    }
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&services);
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
