//! Imported models: `resprop inspect --model` on the fixtures of tests/onnx (exported from
//! PyTorch by tests/onnx/make_fixtures.py), and bad model files refused in one line.

use crate::common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnx");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn inspect(name: &str) -> String {
    stdout(&Argv::new("inspect").flag("--model", fixture(name)).ok())
}

/// The table rows of `inspect`'s output: (unit, shortcut, branch, after the addition).
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with("l "))
        .skip(1)
        .take_while(|l| l.starts_with(|c: char| c == ' ' || c.is_ascii_digit()))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

#[test]
fn torchvisions_basic_blocks_are_four_units_named_by_their_modules() {
    let out = inspect("basic.onnx");
    assert!(out.contains("stem: Conv BN Relu\n"), "{out}");
    assert!(out.contains("head: GlobalAvgPool Flatten Gemm\n"), "{out}");
    let r = rows(&out);
    let names: Vec<&str> = r.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(
        names,
        ["layer1.0", "layer1.1", "layer2.0", "layer2.1"],
        "{out}"
    );
    for row in &r {
        let shortcut = if row[1] == "layer2.0" {
            "projection + BN"
        } else {
            "identity"
        };
        assert_eq!(
            row[2..],
            [shortcut, "Conv BN Relu Conv BN", "Relu"],
            "{out}"
        );
    }
}

#[test]
fn bottlenecks_pre_activation_pre_ln_and_in_place_adds_are_found() {
    let r = rows(&inspect("bottleneck.onnx"));
    assert_eq!(r.len(), 4);
    assert_eq!(
        r[0][2..],
        [
            "projection + BN",
            "Conv BN Relu Conv BN Relu Conv BN",
            "Relu"
        ]
    );
    let out = inspect("preact.onnx");
    let r = rows(&out);
    assert_eq!(
        r[0][2..],
        ["identity", "BN Relu Conv BN Relu Conv", "-"],
        "{out}"
    );
    // The shape-changing unit normalises once, before its branch and its projection.
    assert_eq!(
        r[2][2..],
        ["projection", "[BN Relu] Conv BN Relu Conv", "-"],
        "{out}"
    );
    assert!(
        out.contains("head: BN Relu GlobalAvgPool Flatten Gemm\n"),
        "{out}"
    );
    let r = rows(&inspect("preln.onnx"));
    assert_eq!(r.len(), 3);
    assert!(r
        .iter()
        .all(|r| r[2..] == ["identity", "LN Gemm Relu Gemm", "-"]));
    // `out += identity` and an in-place ReLU export as an Add and a Relu like any other.
    let r = rows(&inspect("inplace.onnx"));
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[1][1..],
        ["blocks.1", "identity", "Conv BN Relu Conv BN", "Relu"]
    );
}

#[test]
fn bad_model_files_are_refused_in_one_line() {
    let w = Work::new();
    let good = std::fs::read(fixture("basic.onnx")).unwrap();
    let cut = w.write("cut.onnx", &good[..good.len() / 3]);
    Argv::new("inspect")
        .path("--model", &cut)
        .refused("not an ONNX model");
    let text = w.write("text.onnx", "not a model at all\n");
    Argv::new("inspect")
        .path("--model", &text)
        .refused("not an ONNX model");
    Argv::new("inspect")
        .path("--model", w.path("missing.onnx"))
        .refused("--model");
    Argv::new("inspect")
        .flag("--model", "/dev/zero")
        .refused("--model");
    let fifo = w.path("fifo.onnx");
    mkfifo(&fifo);
    Argv::new("inspect")
        .path("--model", &fifo)
        .refused("--model");
}
