//! ONNX's message types (`ModelProto`, `GraphProto`, `NodeProto`, `TensorProto`, ...), generated
//! at build time by prost from `proto/onnx.proto`, ONNX's own schema (see `build.rs`).

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
