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
    assert!(out.contains("stem: Conv BN Relu MaxPool\n"), "{out}");
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

#[test]
fn profile_check_and_paths_run_on_an_imported_network_keyed_by_its_unit_names() {
    let w = Work::new();
    let out = stdout(
        &Argv::new("profile --batch 4")
            .flag("--model", fixture("preact.onnx"))
            .path("--csv", w.path("p.csv"))
            .ok(),
    );
    assert!(out.starts_with("resprop profile: --model "), "{out}");
    let names: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("unit st"))
        .skip(1)
        .take(5)
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(
        names,
        ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "top"],
        "{out}"
    );
    // One row per unit input and the head's input, as for a built-in net, each named in the
    // last column.
    let csv = w.read("p.csv");
    let last: Vec<&str> = csv.lines().filter_map(|l| l.rsplit(',').next()).collect();
    assert_eq!(
        last,
        ["name", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "top"],
        "{csv}"
    );
    let check = stdout(
        &Argv::new("check --batch 2")
            .flag("--model", fixture("basic.onnx"))
            .ok(),
    );
    assert!(check.contains(" 0 failed"), "{check}");
    Argv::new("paths --batch 4")
        .flag("--model", fixture("preln.onnx"))
        .ok();
}

#[test]
fn flags_that_describe_another_network_or_input_are_refused_with_a_model() {
    let model = fixture("basic.onnx");
    for (flag, value) in [
        ("--units", "3"),
        ("--net", "resnet110"),
        ("--placement", "full-preact"),
        ("--shortcut", "scale:0.5"),
        ("--norm", "layer"),
        ("--image-size", "16"),
        ("--classes", "3"),
        ("--data", "digits"),
    ] {
        Argv::new("profile")
            .flag("--model", &model)
            .flag(flag, value)
            .refused(&format!("{flag}: "));
    }
    Argv::new("profile")
        .flag("--model", &model)
        .switch("--unfused")
        .refused("--unfused: an imported network always runs the plain interpreter");
    // The memory preflight sees the imported network too.
    Argv::new("profile --batch 100000000")
        .flag("--model", &model)
        .refused("would need about");
}
