//! Build script: a digest of the sources that compute results, so a cached experiment cell can
//! tell whether the engine that made it is the one running now (see `experiment::runner`).
//! The charts (`src/plot/`) and the command line (`src/cli/`) only present numbers, so they
//! are left out: editing a chart does not force a recomputation.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !(p.ends_with("plot") || p.ends_with("cli")) {
                sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    files.push(PathBuf::from("Cargo.lock"));
    files.sort();
    // FNV-1a, 64 bits: a change detector, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for f in &files {
        eat(f.to_string_lossy().as_bytes());
        eat(&std::fs::read(f).unwrap_or_default());
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rustc-env=RESPROP_ENGINE_HASH={h:016x}");
    onnx_messages();
}

/// The ONNX message types (`onnx.rs` in OUT_DIR, included by `src/import/proto.rs`), compiled
/// from `proto/onnx.proto` (ONNX's own schema, Apache-2.0) by protox, a protobuf compiler in
/// Rust, so a build needs no `protoc` on the machine.
fn onnx_messages() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto compiles");
    prost_build::Config::new()
        .compile_fds(files)
        .expect("the ONNX message types generate");
}
