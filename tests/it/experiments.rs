//! Experiments end to end, as a user runs them: spec files, the runner, charts, the report.

use std::path::Path;

use crate::common::*;

const SPEC: &str = r#"
name = "tiny"
claim = "A tiny grid for the tests."
seed = 3
batch = 4
charts = ["grad_ratio", "direct_rest", "lambda_sweep", "forward", "sample_bands"]
[net]
units = 6
width = 8
input_dim = 5
[grid]
placements = ["original", "full-preact"]
shortcuts = ["identity", "scale:0.5"]
replicates = [0, 1]
"#;

fn write_spec(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// PNG width and height from the IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn run_writes_tidy_csv_spec_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "tiny.toml", SPEC);
    let out = dir.path().join("results");
    let plots = dir.path().join("plots");
    ok(&resprop(&[
        "run",
        &spec,
        "--out",
        out.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]));
    let csv = std::fs::read_to_string(out.join("tiny/profile.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with(
            "experiment,cell,net,placement,shortcut,norm,init,warmup,projection,units,replicate,unit,"
        ),
        "{header}"
    );
    // 2 placements x 2 shortcuts x 2 replicates = 8 cells, 7 unit inputs each.
    assert_eq!(lines.count(), 8 * 7);
    assert!(out.join("tiny/spec.toml").is_file());
    let resolved = std::fs::read_to_string(out.join("tiny/spec.toml")).unwrap();
    assert!(resolved.contains("scale:0.5") && resolved.contains("claim"));
    for chart in [
        "grad_ratio",
        "direct_rest",
        "lambda_sweep",
        "forward",
        "sample_bands",
    ] {
        let png = std::fs::read(plots.join(format!("tiny_{chart}.png"))).unwrap();
        let size = png_size(&png);
        assert!(
            size == (1100, 700) || size == (1400, 900),
            "{chart}: {size:?}"
        );
        let svg = std::fs::read_to_string(plots.join(format!("tiny_{chart}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}: not an SVG");
        if chart == "grad_ratio" {
            for label in ["original identity", "full-preact scale:0.5"] {
                assert!(
                    svg.contains(label),
                    "{chart}: series label '{label}' missing from the SVG"
                );
            }
        }
    }
    // Nothing half-written anywhere.
    for entry in walk(dir.path()) {
        assert!(
            !entry.ends_with(".tmp") && !entry.contains(".tmp."),
            "temporary file left: {entry}"
        );
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn same_csv_for_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "tiny.toml",
        &SPEC
            .replace("width = 8", "width = 96")
            .replace("batch = 4", "batch = 64"),
    );
    let mut csvs = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("r{threads}"));
        ok(&resprop(&[
            "run",
            &spec,
            "--out",
            out.to_str().unwrap(),
            "--threads",
            threads,
        ]));
        csvs.push(std::fs::read(out.join("tiny/profile.csv")).unwrap());
    }
    assert_eq!(csvs[0], csvs[1], "CSV differs between 1 and 2 threads");
}

/// The stored cells of a results folder: `(fingerprint.toml text, profile file)` pairs.
fn stored_cells(out: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut cells: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(out.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".toml"))
        .map(|p| {
            let csv = p.with_extension("profile.csv");
            (std::fs::read_to_string(&p).unwrap(), csv)
        })
        .collect();
    cells.sort();
    cells
}

#[test]
fn rerun_skips_complete_cells() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "tiny.toml", SPEC);
    let out = dir.path().join("results");
    ok(&resprop(&["run", &spec, "--out", out.to_str().unwrap()]));
    let cells = stored_cells(&out);
    assert_eq!(cells.len(), 8, "one stored result per cell");
    for (inputs, _) in &cells {
        assert!(
            inputs.contains("engine = ") && inputs.contains("seed = "),
            "{inputs}"
        );
    }
    // Mark one finished cell (its manifest's digest updated to match, so it still verifies)
    // and delete another: a rerun keeps the first and recomputes the second.
    let marked = &cells[0].1;
    let original = std::fs::read_to_string(marked).unwrap();
    let edited = original.replacen('0', "0000", 1);
    std::fs::write(marked, &edited).unwrap();
    let manifest = marked.with_extension("").with_extension("toml");
    let digest = |t: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let m = std::fs::read_to_string(&manifest).unwrap();
    assert!(m.contains(&digest(&original)), "{m}");
    std::fs::write(&manifest, m.replace(&digest(&original), &digest(&edited))).unwrap();
    let deleted = &cells[5].1;
    let before = std::fs::read(deleted).unwrap();
    std::fs::remove_file(deleted).unwrap();
    let o = resprop(&["run", &spec, "--out", out.to_str().unwrap()]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(1 computed now)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let csv = std::fs::read_to_string(out.join("tiny/profile.csv")).unwrap();
    let marked_row = original.lines().next().unwrap().replacen('0', "0000", 1);
    assert!(csv.contains(&marked_row), "a complete cell was recomputed");
    assert_eq!(
        std::fs::read(deleted).unwrap(),
        before,
        "the missing cell came back identical"
    );
}

/// An edited spec never reuses a cell of the old one: the changed cells are recomputed and the
/// assembled CSV holds only the new spec's cells.
#[test]
fn an_edited_spec_recomputes_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let spec = write_spec(dir.path(), "tiny.toml", SPEC);
    ok(&resprop(&["run", &spec, "--out", out.to_str().unwrap()]));
    let edited = write_spec(
        dir.path(),
        "tiny.toml",
        &SPEC.replace("\"scale:0.5\"", "\"scale:0.9\""),
    );
    let o = resprop(&["run", &edited, "--out", out.to_str().unwrap()]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 2 placements x 2 replicates have the new shortcut; the identity cells are reused.
    assert!(stdout.contains("8 cells (4 computed now)"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("tiny/profile.csv")).unwrap();
    assert!(csv.contains("scale:0.9") && !csv.contains("scale:0.5"));
    // Full pre-activation, 6 units: the direct ratio at unit 0 is 0.9^6, not 0.5^6.
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row: Vec<&str> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|r| {
            r[col("placement")] == "full-preact"
                && r[col("shortcut")] == "scale:0.9"
                && r[col("unit")] == "0"
        })
        .unwrap();
    let ratio: f64 = row[col("direct_ratio")].parse().unwrap();
    assert!((ratio - 0.9f64.powi(6)).abs() < 1e-12, "{ratio}");
}

#[test]
fn bad_specs_give_one_line_errors_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (SPEC.replace("width = 8", "widht = 8"), "widht"),
        (
            SPEC.replace("\"identity\"", "\"teleport\""),
            "grid.shortcuts: unknown shortcut 'teleport'",
        ),
        (SPEC.replace("units = 6", "units = 0"), "net.units"),
        (SPEC.replace("batch = 4", "batch = \"many\""), "line"),
    ] {
        let spec = write_spec(dir.path(), "bad.toml", &text);
        let o = resprop(&[
            "run",
            &spec,
            "--out",
            dir.path().join("r").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{needle}: should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("bad.toml") && err.contains(needle),
            "'{needle}' or the file name missing: {err}"
        );
        assert!(!err.contains("panicked"));
    }
    assert!(
        !dir.path().join("r").exists(),
        "nothing written for an invalid spec"
    );
    let o = resprop(&["plot", dir.path().join("none.csv").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("none.csv"));
}

#[test]
fn all_writes_the_report_from_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("experiments");
    std::fs::create_dir(&exp).unwrap();
    write_spec(&exp, "tiny.toml", SPEC);
    let verification = SPEC
        .replace("name = \"tiny\"", "name = \"verify\"")
        .replace("batch = 4", "batch = 4\nmeasure = \"verification\"")
        .replace(
            r#"charts = ["grad_ratio", "direct_rest", "lambda_sweep", "forward", "sample_bands"]"#,
            r#"charts = ["verification"]"#,
        );
    write_spec(&exp, "verify.toml", &verification);
    let (results, plots) = (dir.path().join("results"), dir.path().join("plots"));
    ok(&resprop(&[
        "all",
        "--experiments",
        exp.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]));
    let report = std::fs::read_to_string(plots.join("README.md")).unwrap();
    assert!(report.contains("## tiny") && report.contains("A tiny grid for the tests."));
    assert!(report.contains("![tiny_grad_ratio.png](tiny_grad_ratio.png)"));
    assert!(report.contains("largest Eq. 5/8 error"));
    // The report's numbers are the CSV's: scale 0.5 over 6 units under full pre-activation
    // predicts a direct ratio of 0.5^6 at unit 0.
    let row = report
        .lines()
        .find(|l| l.starts_with("| full-preact scale:0.5 |"))
        .expect("summary row");
    let cols: Vec<&str> = row.split('|').map(str::trim).collect();
    let (measured, predicted): (f64, f64) = (cols[4].parse().unwrap(), cols[5].parse().unwrap());
    let want = 0.5f64.powi(6);
    assert!(
        (measured - want).abs() / want < 1e-3 && (predicted - want).abs() / want < 1e-3,
        "{row}"
    );
    assert!(plots.join("verify_verification.png").is_file());
}

const TRAIN_SPEC: &str = r#"
name = "tinytrain"
claim = "A tiny training grid."
seed = 5
task = "train"
charts = ["train_curves", "grad_heatmap", "grad_ratio_steps", "generalisation", "weight_inputs"]
[net]
units = 3
width = 16
[train]
epochs = 2
batch = 64
record_every = 5
[grid]
nets = ["mlp"]
placements = ["original", "full-preact"]
shortcuts = ["identity"]
[paper]
source = "made up for the test"
values = { "original" = 2.0, "full-preact" = 1.0 }
"#;

#[test]
fn a_requested_stop_ends_a_run_before_its_first_cell() {
    use resprop::experiment::runner::compute_cells;
    use resprop::interrupt::{Interrupt, Interrupted};
    let dir = tempfile::tempdir().unwrap();
    let spec = resprop::experiment::load_spec(Path::new(&write_spec(
        dir.path(),
        "tinytrain.toml",
        TRAIN_SPEC,
    )))
    .unwrap();
    let out = dir.path().join("results");
    let stop = Interrupt::new();
    stop.request();
    let e = compute_cells(&spec, &out, &Default::default(), &stop).unwrap_err();
    assert!(
        e.downcast_ref::<Interrupted>().is_some(),
        "the error says it was a stop: {e:#}"
    );
    assert!(e.to_string().starts_with("interrupted before cell "), "{e}");
    assert_eq!(
        std::fs::read_dir(out.join("cells")).unwrap().count(),
        0,
        "no cell file written"
    );
    // Without a stop the same call computes both cells.
    assert_eq!(
        compute_cells(&spec, &out, &Default::default(), &Interrupt::new()).unwrap(),
        2
    );
}

#[test]
fn training_experiments_write_curves_heatmaps_and_a_ranked_report() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("experiments");
    std::fs::create_dir(&exp).unwrap();
    write_spec(&exp, "tinytrain.toml", TRAIN_SPEC);
    let (results, plots) = (dir.path().join("results"), dir.path().join("plots"));
    ok(&resprop(&[
        "all",
        "--experiments",
        exp.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]));
    let train = std::fs::read_to_string(results.join("tinytrain/train.csv")).unwrap();
    assert!(train.starts_with(
        "experiment,cell,net,placement,shortcut,norm,init,warmup,projection,units,replicate,step,epoch,lr,train_loss"
    ));
    assert_eq!(
        train.lines().count(),
        1 + 2 * 44,
        "2 cells x 2 epochs x 22 steps"
    );
    let grads = std::fs::read_to_string(results.join("tinytrain/grads.csv")).unwrap();
    assert_eq!(
        grads.lines().count(),
        1 + 2 * 9 * 4,
        "2 cells x 9 recorded steps x 4 unit inputs"
    );
    let signal = std::fs::read_to_string(results.join("tinytrain/signal.csv")).unwrap();
    assert!(signal.starts_with(
        "experiment,cell,net,placement,shortcut,norm,init,warmup,projection,units,replicate,when,unit,layer,mean,var"
    ));
    assert_eq!(
        signal.lines().count(),
        1 + 2 * 2 * 3 * 2,
        "2 cells x 2 snapshots x 3 units x 2 weight layers"
    );
    for chart in [
        "train_curves",
        "grad_heatmap",
        "grad_ratio_steps",
        "generalisation",
        "weight_inputs",
    ] {
        let png = std::fs::read(plots.join(format!("tinytrain_{chart}.png"))).unwrap();
        assert!(png_size(&png).0 > 0);
        assert!(
            std::fs::read_to_string(plots.join(format!("tinytrain_{chart}.svg")))
                .unwrap()
                .contains("full-preact")
        );
    }
    let report = std::fs::read_to_string(plots.join("README.md")).unwrap();
    for needle in [
        "median final test error",
        "failed to train",
        "made up for the test",
        "agree with the paper",
        "Mann-Whitney",
        "Generalisation gap",
        "What the weight layers see",
        "Fig. 6",
    ] {
        assert!(report.contains(needle), "'{needle}' missing: {report}");
    }
}

#[test]
fn training_specs_are_validated() {
    for (text, needle) in [
        (
            TRAIN_SPEC.replace("task = \"train\"\n", ""),
            "needs task = \"train\"",
        ),
        (TRAIN_SPEC.replace("epochs = 2", "epochs = 0"), "epochs"),
        (
            TRAIN_SPEC.replace("[train]", "[train]\ndata = \"imagenet\""),
            "train.data: unknown data 'imagenet'",
        ),
        (
            TRAIN_SPEC.replace("\"grad_heatmap\", ", "\"lambda_sweep\", "),
            "'lambda_sweep' does not fit task 'train'",
        ),
        (
            TRAIN_SPEC.replace("[train]", "[train]\noptimizer = \"rmsprop\""),
            "train.optimizer: unknown optimizer 'rmsprop'",
        ),
        (
            TRAIN_SPEC.replace("[train]", "[train]\nweight_decay_mode = \"l2\""),
            "train.weight_decay_mode: applies to Adam",
        ),
        (
            TRAIN_SPEC.replace("task = \"train\"", "weight_grads = true\ntask = \"train\""),
            "weight_grads: applies to profiles",
        ),
    ] {
        let e = format!("{:#}", resprop::experiment::parse_spec(&text).unwrap_err());
        assert!(e.contains(needle), "'{needle}' not in: {e}");
    }
}

/// A grid over norms and inits: one cell per combination, labelled by what varies, and the
/// combinations that cannot be built refused before anything runs.
#[test]
fn grids_sweep_norms_and_inits() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "norms.toml",
        r#"
name = "norms"
claim = "Norms side by side."
batch = 8
charts = ["grad_ratio", "signal"]
[net]
units = 4
width = 8
[grid]
placements = ["pre-norm"]
shortcuts = ["identity", "rezero"]
norms = ["batch", "layer", "none"]
"#,
    );
    let out = dir.path().join("results");
    ok(&resprop(&[
        "run",
        &spec,
        "--out",
        out.to_str().unwrap(),
        "--plots",
        dir.path().join("plots").to_str().unwrap(),
    ]));
    let csv = std::fs::read_to_string(out.join("norms/profile.csv")).unwrap();
    // 2 shortcuts x 3 norms = 6 cells, 5 unit inputs each.
    assert_eq!(csv.lines().count(), 1 + 6 * 5);
    for norm in ["batch", "layer", "none"] {
        assert!(csv.contains(&format!(",identity,{norm},he,")), "{norm}");
    }
    let svg = std::fs::read_to_string(dir.path().join("plots/norms_signal.svg")).unwrap();
    assert!(
        svg.contains("forward signal propagation") && svg.contains("flat"),
        "signal chart"
    );
    for (grid, needle) in [
        (
            "placements = [\"original\"]\nshortcuts = [\"identity\"]\ninits = [\"fixup\"]",
            "grid.inits: 'fixup' replaces normalisation",
        ),
        (
            "placements = [\"original\"]\nshortcuts = [\"deepnorm\"]",
            "needs --placement post-norm",
        ),
    ] {
        let bad = write_spec(
            dir.path(),
            "bad.toml",
            &format!("name = \"bad\"\nclaim = \"x\"\n[grid]\n{grid}\n"),
        );
        let o = resprop(&["run", &bad, "--out", out.to_str().unwrap()]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(needle) && err.trim_end().lines().count() == 1,
            "{err}"
        );
    }
}

/// Training grids sweep the warm-up and train with Adam; every cell's keys carry its warm-up,
/// and the variants are labelled by it.
#[test]
fn training_grids_sweep_warmups_with_adam() {
    let dir = tempfile::tempdir().unwrap();
    let text = TRAIN_SPEC
        .replace("[train]", "[train]\noptimizer = \"adam\"\nlr = 1e-3")
        .replace(
            "shortcuts = [\"identity\"]",
            "shortcuts = [\"identity\"]\nwarmups = [0, 7]",
        )
        .replace(
            "placements = [\"original\", \"full-preact\"]",
            "placements = [\"pre-norm\"]\nnorms = [\"layer\"]",
        )
        .replace(", \"weight_inputs\"", "");
    let text = text[..text.find("[paper]").unwrap()].to_string();
    let spec = write_spec(dir.path(), "warm.toml", &text);
    let out = dir.path().join("results");
    let plots = dir.path().join("plots");
    ok(&resprop(&[
        "run",
        &spec,
        "--out",
        out.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]));
    let csv = std::fs::read_to_string(out.join("tinytrain/train.csv")).unwrap();
    // Two cells: keys ... init, warmup, ...; the warm-up ramps the first 7 steps' lr.
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let lr_at = |warmup: &str, step: &str| -> f64 {
        let r = rows
            .iter()
            .find(|r| {
                let f: Vec<&str> = r.split(',').collect();
                f[7] == warmup && f[11] == step
            })
            .unwrap_or_else(|| panic!("no row for warm-up {warmup} step {step}"));
        r.split(',').nth(13).unwrap().parse().unwrap()
    };
    assert!(csv.starts_with("experiment,cell,net,placement,shortcut,norm,init,warmup,projection,units,replicate,step,epoch,lr,"), "{}", &csv[..120]);
    assert_eq!(lr_at("0", "0"), 1e-3);
    assert!((lr_at("7", "0") - 1e-3 / 7.0).abs() < 1e-18);
    assert_eq!(lr_at("7", "6"), 1e-3);
    let svg = std::fs::read_to_string(plots.join("tinytrain_train_curves.svg")).unwrap();
    assert!(
        svg.contains("warm-up 0") && svg.contains("warm-up 7"),
        "labels"
    );
    // Warm-ups are a training setting.
    let bad = write_spec(
        dir.path(),
        "bad.toml",
        &SPEC.replace("replicates = [0, 1]", "replicates = [0, 1]\nwarmups = [10]"),
    );
    let o = resprop(&["run", &bad, "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("grid.warmups: warm-ups apply to training"));
}

/// Several grids: the cells are their union, in order; a cell in two grids is refused; a
/// profile records the weight gradients when asked, without changing a byte of its profile.
#[test]
fn several_grids_and_weight_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let grids = r#"
name = "union"
claim = "Two grids."
seed = 4
batch = 8
weight_grads = true
charts = ["grad_ratio", "weight_grads", "last_weight_grad", "squared_norm"]
[net]
width = 8
[[grid]]
placements = ["pre-norm", "post-norm"]
shortcuts = ["identity"]
norms = ["layer"]
inits = ["xavier"]
units = [2, 4, 8]
[[grid]]
placements = ["full-preact"]
shortcuts = ["rezero"]
norms = ["none"]
units = [4]
"#;
    write_spec(dir.path(), "union.toml", grids);
    let out = dir.path().join("results");
    let plots = dir.path().join("plots");
    ok(&resprop(&[
        "all",
        "--experiments",
        dir.path().to_str().unwrap(),
        "--results",
        out.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]));
    let profile = std::fs::read_to_string(out.join("union/profile.csv")).unwrap();
    // 2 x 3 cells of the first grid, 1 of the second; L + 1 rows each.
    assert_eq!(profile.lines().count(), 1 + 2 * (3 + 5 + 9) + 5);
    assert!(profile.contains(",full-preact,alpha:0,none,he,"));
    let wg = std::fs::read_to_string(out.join("union/weight_grads.csv")).unwrap();
    // Two weight layers per unit.
    assert_eq!(wg.lines().count(), 1 + 2 * 2 * (2 + 4 + 8) + 2 * 4);
    assert!(wg
        .lines()
        .next()
        .unwrap()
        .ends_with(",unit,layer,weight_grad_norm"));
    let report = std::fs::read_to_string(plots.join("README.md")).unwrap();
    assert!(
        report.contains("fitted slope") && report.contains("Lemma 2"),
        "report"
    );
    for chart in ["weight_grads", "last_weight_grad", "squared_norm"] {
        assert!(
            plots.join(format!("union_{chart}.png")).is_file(),
            "{chart}"
        );
    }
    // The same profile without the weight gradients: byte-identical.
    let plain = write_spec(
        dir.path(),
        "plain.toml",
        &grids
            .replace("weight_grads = true\n", "")
            .replace(", \"weight_grads\", \"last_weight_grad\"", ""),
    );
    let out2 = dir.path().join("results2");
    ok(&resprop(&["run", &plain, "--out", out2.to_str().unwrap()]));
    assert_eq!(
        profile,
        std::fs::read_to_string(out2.join("union/profile.csv")).unwrap()
    );
    // A cell in two grids; a chart of the weight gradients without them.
    for (text, needle) in [
        (
            grids.replace("units = [4]", "units = [4]\n[[grid]]\nplacements = [\"full-preact\"]\nshortcuts = [\"rezero\"]\nnorms = [\"none\"]\nunits = [4]"),
            "grid: cells 6 and 7 are the same",
        ),
        (grids.replace("weight_grads = true\n", ""), "set weight_grads = true"),
        (grids.replace("shortcuts = [\"rezero\"]", "shortcut = [\"rezero\"]"), "grid[1]: unknown field `shortcut`"),
    ] {
        let e = format!("{:#}", resprop::experiment::parse_spec(&text).unwrap_err());
        assert!(e.contains(needle) && !e.contains('\n'), "'{needle}' not in: {e}");
    }
}

/// The analysis tasks run as experiments: paths (init and trained, exact and sampled), lesion
/// (a trained net's deletions) and shatter; their charts and report sections; and the specs
/// they refuse.
#[test]
fn analysis_tasks_run_as_experiments() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("experiments");
    std::fs::create_dir_all(&exp).unwrap();
    let train = "[train]\ndata = \"digits\"\nepochs = 1\nbatch = 64\n";
    let grid =
        "[grid]\nnets = [\"mlp\"]\nplacements = [\"full-preact\"]\nshortcuts = [\"identity\"]\n";
    write_spec(
        &exp,
        "p.toml",
        &format!("name = \"p\"\nclaim = \"c\"\nbatch = 8\ntask = \"paths\"\ncharts = [\"path_lengths\"]\n[net]\nunits = 3\nwidth = 8\n[paths]\nsample = 2\n{train}{grid}"),
    );
    write_spec(
        &exp,
        "l.toml",
        &format!("name = \"l\"\nclaim = \"c\"\ntask = \"lesion\"\ncharts = [\"lesion_units\", \"lesion_count\"]\n[net]\nunits = 4\nwidth = 8\n[lesion]\ndraws = 2\n{train}{}", grid.replace("[\"identity\"]", "[\"identity\", \"none\"]")),
    );
    write_spec(
        &exp,
        "s.toml",
        "name = \"s\"\nclaim = \"c\"\ntask = \"shatter\"\ncharts = [\"shatter\"]\n[net]\nwidth = 8\n[grid]\nplacements = [\"original\"]\nshortcuts = [\"identity\", \"none\"]\nnorms = [\"batch\"]\nunits = [1, 3]\n",
    );
    let results = dir.path().join("results");
    let plots = dir.path().join("plots");
    ok(&resprop(&[
        "all",
        "--experiments",
        exp.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]));
    let paths = std::fs::read_to_string(results.join("p/paths.csv")).unwrap();
    assert!(paths.lines().next().unwrap().ends_with(
        ",replicate,when,unit,k,paths,exact_norm,exact_share,sampled_path_norm,sampled_total"
    ));
    // (L + 1)(L + 2) / 2 = 10 rows at init and 10 trained.
    assert_eq!(paths.lines().count(), 1 + 20);
    assert!(paths.contains(",init,0,0,") && paths.contains(",trained,0,0,"));
    let lesion = std::fs::read_to_string(results.join("l/lesion.csv")).unwrap();
    // Per net: intact, 4 single deletions, k = 1, 2 with 2 draws each.
    assert_eq!(lesion.lines().count(), 1 + 2 * (1 + 4 + 4));
    let shatter = std::fs::read_to_string(results.join("s/shatter.csv")).unwrap();
    assert_eq!(shatter.lines().count(), 1 + 4 * 256);
    let report = std::fs::read_to_string(plots.join("README.md")).unwrap();
    for needle in [
        "exact 90% window",
        "one unit: median",
        "first lag below 1/2",
    ] {
        assert!(report.contains(needle), "{needle}");
    }
    for chart in [
        "p_path_lengths",
        "l_lesion_units",
        "l_lesion_count",
        "s_shatter",
    ] {
        assert!(plots.join(format!("{chart}.png")).is_file(), "{chart}");
    }
    for (text, needle) in [
        (
            format!("name = \"x\"\nclaim = \"c\"\ntask = \"lesion\"\n{grid}"),
            "it needs a [train] table",
        ),
        (
            format!("name = \"x\"\nclaim = \"c\"\n[paths]\nsample = 3\n{grid}"),
            "a [paths] table needs task = \"paths\"",
        ),
        (
            format!("name = \"x\"\nclaim = \"c\"\ntask = \"shatter\"\n{}", grid.replace("[\"mlp\"]", "[\"resnet110\"]")),
            "shatter compares MLPs",
        ),
        (
            format!("name = \"x\"\nclaim = \"c\"\ntask = \"shatter\"\ncharts = [\"grad_ratio\"]\n{grid}"),
            "'grad_ratio' does not fit task 'shatter'",
        ),
    ] {
        let e = format!("{:#}", resprop::experiment::parse_spec(&text).unwrap_err());
        assert!(e.contains(needle) && !e.contains('\n'), "'{needle}' not in: {e}");
    }
}

/// Sharded runs (`run --shard I/N`, cells with index % N == I) merged (`merge`) give the
/// unsharded run's CSVs byte for byte; a merge with a shard missing names the missing cells
/// and writes nothing; a malformed shard is refused.
#[test]
fn shards_merge_to_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "tiny.toml", SPEC);
    let whole = dir.path().join("whole");
    ok(&resprop(&["run", &spec, "--out", whole.to_str().unwrap()]));
    let sharded = dir.path().join("sharded");
    let out = sharded.to_str().unwrap();
    for i in [0, 2] {
        ok(&resprop(&[
            "run",
            &spec,
            "--out",
            out,
            "--shard",
            &format!("{i}/3"),
        ]));
    }
    assert!(!sharded.join("tiny").exists(), "a shard writes cells only");
    let o = resprop(&["merge", &spec, "--out", out]);
    assert!(!o.status.success());
    // 8 cells: shard 1/3 holds cells 1, 4, 7.
    let e = stderr(&o);
    assert!(
        e.contains("3 of 8 cells are not in") && e.contains(": 1, 4, 7 "),
        "{e}"
    );
    assert!(!sharded.join("tiny/profile.csv").exists());
    ok(&resprop(&["run", &spec, "--out", out, "--shard", "1/3"]));
    ok(&resprop(&["merge", &spec, "--out", out]));
    for f in ["profile.csv", "spec.toml"] {
        assert_eq!(
            std::fs::read(whole.join("tiny").join(f)).unwrap(),
            std::fs::read(sharded.join("tiny").join(f)).unwrap(),
            "{f}"
        );
    }
    for bad in ["3/3", "1/0", "x/2", "2"] {
        let o = resprop(&["run", &spec, "--out", out, "--shard", bad]);
        assert!(
            !o.status.success() && stderr(&o).contains("expected I/N"),
            "{bad}"
        );
    }
}
