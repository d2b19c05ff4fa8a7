//! Compiles every `.proto` under `proto/` into Rust (messages, clients, servers)
//! and writes the file descriptor set the services serve over gRPC reflection.
//! `protoc` and the well-known types come from `protoc-bin-vendored`, so a fresh
//! machine needs nothing installed.

use std::{env, error::Error, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let mut protos = Vec::new();
    collect_protos(PathBuf::from("proto"), &mut protos)?;
    protos.sort();

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

fn collect_protos(dir: PathBuf, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
