//! Compiles `proto/user/v1/user.proto` with protox (pure Rust, so no `protoc` is needed) and
//! writes the encoded descriptor set next to the generated code for server reflection.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/user/v1/user.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile([proto], ["proto"])?;
    // compile_fds does not write the set itself: reflection needs it as bytes.
    std::fs::write(out.join("user_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
