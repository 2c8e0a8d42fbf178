//! Compiles every `.proto` under `proto/` (each service's contract is
//! `proto/<name>/v1/<name>.proto`) with protox (pure Rust, so no `protoc` is needed), and
//! writes each package's encoded descriptor set next to the generated code for reflection.

use std::{
    env,
    path::{Path, PathBuf},
};

use prost::Message;

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    protos(Path::new("proto"), &mut files)?;
    files.sort();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    for file in &files {
        // One descriptor set per package, named after it (`user.v1` → user_v1_descriptor.bin).
        let fds = protox::compile([file], ["proto"])?;
        let package = fds
            .file
            .last()
            .and_then(|f| f.package.clone())
            .ok_or_else(|| format!("{}: no package", file.display()))?;
        let name = format!("{}_descriptor.bin", package.replace('.', "_"));
        std::fs::write(out.join(name), fds.encode_to_vec())?;
    }
    let all = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(all)?;
    Ok(())
}
