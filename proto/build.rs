//! Compiles the `.proto` files with protox, a protobuf compiler written in
//! Rust, so that building needs only cargo (no `protoc`).

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["stockade/v1/stockade.proto", "cri/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;

    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
