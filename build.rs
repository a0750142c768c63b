//! Compiles the gRPC API with a vendored `protoc`, so a machine without one can build,
//! and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("messaging_descriptor.bin"))
        .compile_protos(
            &["proto/messaging/v1/messaging.proto"],
            &["proto", include.to_str().ok_or("non-UTF-8 include path")?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
