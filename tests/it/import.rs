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
fn pooling_sigmoid_scales_a_matmul_head_and_the_dynamo_export_are_found_and_profiled() {
    let out = inspect("ops.onnx");
    assert!(out.contains("stem: Conv BN Relu AvgPool\n"), "{out}");
    assert!(out.contains("head: AvgPool Flatten MatMul Add\n"), "{out}");
    let r = rows(&out);
    assert_eq!(
        r[0][1..],
        ["blocks.0", "identity", "Conv BN Sigmoid Conv Mul", "-"],
        "{out}"
    );
    // A constant on the shortcut scales it; the one on the branch is a learned scale.
    assert_eq!(
        r[2][1..],
        ["blocks.2", "scale:0.7", "Conv BN Relu Conv BN Mul", "Relu"],
        "{out}"
    );
    let out = inspect("dynamo.onnx");
    assert!(out.contains("head: ReduceMean Reshape Gemm\n"), "{out}");
    assert!(
        out.contains("note: the exporter folded BatchNorm into 10 convolutions"),
        "{out}"
    );
    for (model, units) in [
        ("ops.onnx", &["blocks.0", "blocks.1", "blocks.2", "top"][..]),
        (
            "dynamo.onnx",
            &["layer1.0", "layer1.1", "layer2.0", "layer2.1", "top"],
        ),
    ] {
        let out = stdout(
            &Argv::new("profile --batch 4")
                .flag("--model", fixture(model))
                .ok(),
        );
        let names: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("unit st"))
            .skip(1)
            .take(units.len())
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        assert_eq!(names, units, "{out}");
    }
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
        ("--input-dim", "16"),
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

#[test]
fn a_model_runs_on_data_or_at_another_input_shape_and_says_which() {
    let w = Work::new();
    // The Pre-LN MLP reads 64 values: the 8x8 digits, flattened.
    let out = stdout(
        &Argv::new("profile --batch 8 --data digits")
            .flag("--model", fixture("preln.onnx"))
            .path("--csv", w.path("d.csv"))
            .ok(),
    );
    assert!(out.contains(", batch from digits\n"), "{out}");
    assert!(
        out.contains("input 64 per sample, 10 classes, 3 residual units"),
        "{out}"
    );
    assert_eq!(w.read("d.csv").lines().count(), 1 + 4);
    // A convolutional model runs on another image size its layers fit.
    let out = stdout(
        &Argv::new("profile --batch 2 --input-shape 3,16,16")
            .flag("--model", fixture("basic.onnx"))
            .ok(),
    );
    assert!(out.contains("input 3x16x16 per sample"), "{out}");
    assert!(
        out.contains("Gaussian batch of 3,16,16 samples (--input-shape)"),
        "{out}"
    );
    // An input the model's layers do not fit is refused at the node it reaches.
    Argv::new("profile --batch 2 --input-shape 1,16,16")
        .flag("--model", fixture("basic.onnx"))
        .refused("at --input-shape 1,16,16: node '/conv1/Conv' (Conv): the input has 1 channels, the weight expects 3");
    Argv::new("profile --batch 2 --data digits")
        .flag("--model", fixture("basic.onnx"))
        .refused("on --data digits (1x8x8 per sample): node '/conv1/Conv'");
    Argv::new("profile --input-shape 3,16,16 --data digits")
        .flag("--model", fixture("basic.onnx"))
        .refused("--input-shape: the input size is --data's");
    for bad in ["3,0,4", "3,4", "a", "3,99999,99999"] {
        Argv::new("profile")
            .flag("--model", fixture("basic.onnx"))
            .flag("--input-shape", bad)
            .refused("--input-shape");
    }
    Argv::new("profile --input-shape 3,16,16").refused("--model");
}

#[test]
fn lesion_deletes_an_imported_models_units_by_name() {
    let w = Work::new();
    let out = stdout(
        &Argv::new("lesion --data digits --draws 1")
            .flag("--model", fixture("preln.onnx"))
            .path("--csv", w.path("l.csv"))
            .ok(),
    );
    assert!(out.contains("(unit blocks."), "{out}");
    // The intact net, one lesion per unit, one draw of k = 1.
    assert_eq!(w.read("l.csv").lines().count(), 1 + 1 + 3 + 1);
    Argv::new("lesion")
        .flag("--model", fixture("preln.onnx"))
        .refused("give the data it was trained on with --data");
}

#[test]
fn bn_mode_is_refused_for_a_model_without_batchnorm() {
    Argv::new("profile --bn-mode eval")
        .flag("--model", fixture("preln.onnx"))
        .refused("--bn-mode: --model has no BatchNorm");
    Argv::new("profile --bn-mode eval --batch 2")
        .flag("--model", fixture("basic.onnx"))
        .ok();
}

#[test]
fn a_model_with_no_residual_unit_is_profiled_as_a_plain_net_with_a_note() {
    use resprop::import::testing::{bytes, model, tensor};
    let w = Work::new();
    let values = |n: usize| -> Vec<f32> { (0..n).map(|i| (i % 5) as f32 / 4.0 - 0.5).collect() };
    let plain = model(
        &[
            ("fc1", "Gemm", &["x", "w1"], &["h"]),
            ("act", "Relu", &["h"], &["a"]),
            ("fc2", "Gemm", &["a", "w2"], &["y"]),
        ],
        vec![
            tensor("w1", &[4, 4], &values(16)),
            tensor("w2", &[4, 3], &values(12)),
        ],
    );
    let path = w.write("plain.onnx", bytes(&plain));
    let out = stdout(&Argv::new("profile --batch 2").path("--model", &path).ok());
    assert!(
        out.contains("note: no residual unit found in the model: it runs as a plain network"),
        "{out}"
    );
    assert!(out.contains("0 residual units"), "{out}");
    let inspect = stdout(&Argv::new("inspect").path("--model", &path).ok());
    assert!(inspect.contains("no residual unit found"), "{inspect}");
}

#[test]
fn an_experiment_profiles_models_keyed_by_their_files_and_fingerprinted_by_their_bytes() {
    let w = Work::new();
    std::fs::copy(fixture("basic.onnx"), w.path("mine.onnx")).unwrap();
    let spec = format!(
        "name = \"mine\"\nclaim = \"c\"\nbatch = 4\ncharts = [\"grad_ratio\"]\n\n[grid]\nmodels = [\"{}\", \"{}\"]\nreplicates = [0, 1]\n",
        w.arg("mine.onnx"),
        fixture("preln.onnx")
    );
    w.write("m.toml", &spec);
    let out = stdout(
        &w.cmd("run", "m.toml", "res")
            .path("--plots", w.path("pl"))
            .ok(),
    );
    assert!(out.contains("4 cells (4 computed now)"), "{out}");
    assert!(w.exists("pl/mine_grad_ratio.png"));
    let csv = w.read("res/mine/profile.csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // basic.onnx has 4 units, preln.onnx 3: one row per unit input and the top, per replicate;
    // no built-in axis describes a model, the file's name and its depth do.
    assert_eq!(rows.len(), 2 * 5 + 2 * 4);
    for r in &rows {
        let (net, units) = (r[2], r[11]);
        assert_eq!(r[3..11], ["", "", "", "", "", "", "", ""], "{r:?}");
        match net {
            "mine.onnx" => assert_eq!(units, "4"),
            "preln.onnx" => assert_eq!(units, "3"),
            other => panic!("net {other}"),
        }
    }
    // The same run reuses every cell; other bytes under the same name are another model.
    let out = stdout(&w.cmd("run", "m.toml", "res").ok());
    assert!(out.contains("(0 computed now)"), "{out}");
    std::fs::copy(fixture("preact.onnx"), w.path("mine.onnx")).unwrap();
    let out = stdout(&w.cmd("run", "m.toml", "res").ok());
    assert!(out.contains("(2 computed now)"), "{out}");
}

#[test]
fn a_grid_of_models_refuses_what_describes_another_network() {
    let w = Work::new();
    let base = format!(
        "name = \"m\"\nclaim = \"c\"\nbatch = 4\n\n[grid]\nmodels = [\"{}\"]\n",
        fixture("basic.onnx")
    );
    for (extra, grid_extra, needle) in [
        (
            "",
            "placements = [\"original\"]\n",
            "grid.placements: a grid of models takes only models and replicates",
        ),
        ("", "nets = [\"resnet20\"]\n", "grid.nets: a grid of models"),
        (
            "[net]\nunits = 3\n",
            "",
            "net.units: the grid has only models",
        ),
        (
            "task = \"train\"\n[train]\nepochs = 1\n",
            "",
            "grid.models: a grid of models runs profiles",
        ),
        (
            "unfused = true\n",
            "",
            "unfused: an imported model always runs the plain interpreter",
        ),
    ] {
        // Top-level keys go before the first table.
        let (head, tables) = base.split_once("\n\n").unwrap();
        let (extra_top, extra_tables) = match extra.split_once('[') {
            Some((top, rest)) => (top.to_string(), format!("[{rest}")),
            None => (extra.to_string(), String::new()),
        };
        let text = format!("{head}\n{extra_top}\n{extra_tables}\n{tables}{grid_extra}");
        w.write("m.toml", &text);
        w.cmd("run", "m.toml", "res").refused(needle);
    }
    w.write(
        "bad.toml",
        base.replace(&fixture("basic.onnx"), &w.arg("missing.onnx")),
    );
    w.cmd("run", "bad.toml", "res").refused("grid.models");
}

/// A residual MLP with `stages[s]` units in stage `s` (resnet50: 3, 4, 6, 3), named as
/// torchvision names its modules (`layer1.0` ... `layer4.2`): Gemm-Relu-Gemm branches, a ReLU after each addition, and at
/// each stage's first unit a dense projection on the shortcut (torchvision's `downsample`).
fn torchvision_named_mlp(stages: &[usize]) -> Vec<u8> {
    use resprop::import::testing::{bytes, model, tensor};
    let names: Vec<String> = stages
        .iter()
        .enumerate()
        .flat_map(|(s, &n)| (0..n).map(move |i| format!("layer{}.{i}", s + 1)))
        .collect();
    // (name, op, inputs, outputs), owned; the model takes them borrowed.
    let mut nodes: Vec<(String, &str, Vec<String>, Vec<String>)> = Vec::new();
    let mut x = "x".to_string();
    for (l, name) in names.iter().enumerate() {
        let scope = format!("/{}/{name}", &name[..6]);
        let t = |what: &str| format!("{name}.{what}");
        nodes.push((
            format!("{scope}/fc1/Gemm"),
            "Gemm",
            vec![x.clone(), "w".into()],
            vec![t("a")],
        ));
        nodes.push((
            format!("{scope}/relu/Relu"),
            "Relu",
            vec![t("a")],
            vec![t("b")],
        ));
        nodes.push((
            format!("{scope}/fc2/Gemm"),
            "Gemm",
            vec![t("b"), "w".into()],
            vec![t("f")],
        ));
        let shortcut = if name.ends_with(".0") {
            nodes.push((
                format!("{scope}/downsample/Gemm"),
                "Gemm",
                vec![x.clone(), "w".into()],
                vec![t("h")],
            ));
            t("h")
        } else {
            x.clone()
        };
        nodes.push((
            format!("{scope}/Add"),
            "Add",
            vec![t("f"), shortcut],
            vec![t("y")],
        ));
        nodes.push((
            format!("{scope}/relu_1/Relu"),
            "Relu",
            vec![t("y")],
            vec![format!("x{}", l + 1)],
        ));
        x = format!("x{}", l + 1);
    }
    nodes.push((
        "/fc/Gemm".into(),
        "Gemm",
        vec![x, "w".into()],
        vec!["y".into()],
    ));
    let inputs: Vec<Vec<&str>> = nodes
        .iter()
        .map(|n| n.2.iter().map(String::as_str).collect())
        .collect();
    let outputs: Vec<Vec<&str>> = nodes
        .iter()
        .map(|n| n.3.iter().map(String::as_str).collect())
        .collect();
    let borrowed: Vec<resprop::import::testing::N> = nodes
        .iter()
        .zip(inputs.iter().zip(&outputs))
        .map(|(n, (i, o))| (n.0.as_str(), n.1, i.as_slice(), o.as_slice()))
        .collect();
    let w: Vec<f32> = (0..16)
        .map(|i| ((i * 7) % 9) as f32 / 16.0 - 0.25)
        .collect();
    bytes(&model(&borrowed, vec![tensor("w", &[4, 4], &w)]))
}

/// The CSV of an imported network names each row by its module and says what the importer
/// found (its placement `imported`, each unit's shortcut); a built-in network's CSV keeps its
/// columns (tests/it/golden.rs holds its bytes).
#[test]
fn an_imported_networks_csv_names_its_units_and_their_shortcuts() {
    let w = Work::new();
    Argv::new("profile --batch 2")
        .flag("--model", fixture("basic.onnx"))
        .path("--csv", w.path("p.csv"))
        .ok();
    let csv = w.read("p.csv");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(
        header[header.len() - 3..],
        ["placement", "shortcut", "name"]
    );
    let tail: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>()[header.len() - 3..].to_vec())
        .collect();
    assert_eq!(
        tail,
        [
            ["imported", "identity", "layer1.0"],
            ["imported", "identity", "layer1.1"],
            ["imported", "projection + BN", "layer2.0"],
            ["imported", "identity", "layer2.1"],
            ["imported", "", "top"],
        ],
        "{csv}"
    );
    // The projections of a torchvision-named model, found on the shortcut.
    let model = w.write("tv.onnx", torchvision_named_mlp(&[3, 4, 6, 3]));
    Argv::new("profile --batch 2")
        .path("--model", &model)
        .path("--csv", w.path("tv.csv"))
        .ok();
    let rows: Vec<(String, String)> = w
        .read("tv.csv")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[f.len() - 2].to_string(), f[f.len() - 1].to_string())
        })
        .collect();
    assert_eq!(rows.len(), 17);
    assert_eq!(rows[0], ("projection".into(), "layer1.0".into()));
    assert_eq!(rows[8], ("identity".into(), "layer3.1".into()));
    assert_eq!(rows[16], ("".into(), "top".into()));
    // A built-in network's rows end in its placement and shortcut as given, and no name.
    Argv::new("profile --units 2 --width 4 --batch 2 --shortcut scale:0.5")
        .path("--csv", w.path("b.csv"))
        .ok();
    let builtin = w.read("b.csv");
    assert!(
        builtin
            .lines()
            .next()
            .unwrap()
            .ends_with(",branch_var,placement,shortcut"),
        "{builtin}"
    );
    assert!(
        builtin
            .lines()
            .nth(1)
            .unwrap()
            .ends_with(",original,scale:0.5"),
        "{builtin}"
    );
}

/// `--chart` draws the profile, PNG or SVG by the extension: an imported network's axis
/// names its units; a built-in network's counts them; any other extension is refused before
/// any work, naming --chart.
#[test]
fn profile_chart_draws_the_gradient_ratio_keyed_by_the_units_names() {
    let w = Work::new();
    let out = stdout(
        &Argv::new("profile --batch 4")
            .flag("--model", fixture("basic.onnx"))
            .path("--chart", w.path("basic.png"))
            .path("--csv", w.path("basic.csv"))
            .ok(),
    );
    assert!(out.contains("wrote chart to "), "{out}");
    let png = image::load_from_memory(&w.bytes("basic.png"))
        .expect("a PNG that decodes")
        .to_rgb8();
    assert_eq!(png.dimensions(), (1100, 700));
    // Not blank: the grad_ratio line in the palette's first colour, the direct part's
    // markers in its second.
    let count = |rgb: [u8; 3]| png.pixels().filter(|p| p.0 == rgb).count();
    assert!(count([31, 119, 180]) > 200, "no grad_ratio line");
    assert!(count([255, 127, 14]) > 50, "no direct-part markers");
    // The SVG writes its text as text: the units' names are on the axis, and the title
    // names the model and the batch.
    Argv::new("profile --batch 4")
        .flag("--model", fixture("basic.onnx"))
        .path("--chart", w.path("basic.SVG"))
        .ok();
    let svg = w.read("basic.SVG");
    for name in ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "top"] {
        assert!(
            svg.contains(&format!(">\n{name}\n<")) || svg.contains(&format!(">{name}<")),
            "{name} not on the axis"
        );
    }
    assert!(svg.contains("basic.onnx, 4 units, batch 4"), "{svg}");
    // Sixteen torchvision names and `top` do not fit side by side: upright, every one.
    let model = w.write("tv.onnx", torchvision_named_mlp(&[3, 4, 6, 3]));
    Argv::new("profile --batch 2")
        .path("--model", &model)
        .path("--chart", w.path("tv.svg"))
        .ok();
    let svg = w.read("tv.svg");
    assert_eq!(
        svg.matches("rotate(270").count(),
        17 + 1,
        "17 names and the y axis' label"
    );
    assert!(
        svg.contains(">\nlayer3.5\n<") || svg.contains(">layer3.5<"),
        "{svg}"
    );
    // A built-in network: its units by index.
    Argv::new("profile --units 3 --width 4 --batch 2")
        .path("--chart", w.path("mlp.svg"))
        .ok();
    assert!(w
        .read("mlp.svg")
        .contains("mlp, 3 units, original, shortcut identity, batch 2"));
    // Neither .png nor .svg: refused in one line, nothing computed or written.
    for bad in ["x.txt", "x", "x.png.bak"] {
        Argv::new("profile --batch 2")
            .flag("--model", fixture("basic.onnx"))
            .path("--chart", w.path(bad))
            .refused("--chart: ");
        assert!(!w.exists(bad));
    }
    // Through the output checks as --csv is.
    Argv::new("profile --batch 2")
        .flag("--model", fixture("basic.onnx"))
        .path("--chart", w.path("same.png"))
        .path("--csv", w.path("same.png"))
        .refused("--csv and --chart both name");
    Argv::new("profile --batch 2")
        .flag("--model", fixture("basic.onnx"))
        .path("--chart", w.path("no/such/dir/c.png"))
        .refused("--chart: ");
}
