//! `--precision f32` against its f64 twin: the bundled profile experiments run in both
//! element types, bit-identical across thread counts, and refused where f32 cannot apply.

use std::collections::BTreeMap;

use crate::common::*;

/// The bundled profile experiments (`formula` measures the verification, which needs f64).
const PROFILE_EXPERIMENTS: [&str; 7] = [
    "branch_scaling",
    "cancellation",
    "depth",
    "norm_placement",
    "placements",
    "scaling",
    "shortcuts",
];

/// A bundled experiment with every grid run in f64 and f32, replicate 0 only (the test's
/// time budget).
fn in_both_precisions(name: &str) -> String {
    let path = format!("{}/experiments/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("replicates") {
            out.push_str("replicates = [0]\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[grid]" || line.trim() == "[[grid]]" {
            out.push_str("precisions = [\"f64\", \"f32\"]\n");
        }
    }
    assert!(out.contains("precisions"), "{name}: no grid table found");
    out
}

/// Per variant (every key but the precision and the unit): the largest relative difference
/// between the f32 and the f64 value of `column`, over the units where the f64 value is a
/// finite non-zero number.
fn largest_gaps(csv: &str, column: &str) -> BTreeMap<String, f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (precision, unit, value) = (at("precision"), at("unit"), at(column));
    let keys: Vec<usize> = [
        "net",
        "placement",
        "shortcut",
        "norm",
        "init",
        "projection",
        "units",
    ]
    .iter()
    .map(|k| at(k))
    .collect();
    let mut values: BTreeMap<(String, String), [Option<f64>; 2]> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let variant = keys.iter().map(|&k| f[k]).collect::<Vec<_>>().join(" ");
        let slot = usize::from(f[precision] == "f32");
        values.entry((variant, f[unit].to_string())).or_default()[slot] = f[value].parse().ok();
    }
    let mut gaps = BTreeMap::new();
    for ((variant, _), pair) in values {
        let [Some(x64), Some(x32)] = pair else {
            panic!("{variant}: a unit without both precisions");
        };
        let gap = if x64.is_finite() && x64 != 0.0 {
            (x32 / x64 - 1.0).abs()
        } else {
            0.0
        };
        let g = gaps.entry(variant).or_insert(0.0f64);
        *g = g.max(gap);
    }
    gaps
}

/// Where f32's forward pass keeps its f64 twin's values (the forward signal within 1e-6 at
/// every unit), the gradient profile agrees: `||dE/dx_l||` within 1e-2 (measured: 1e-4 to
/// 2.4e-3 on the ResNets, up to 7.1e-3 on a 48-unit Post-LN MLP whose gradient vanishes
/// through cancellation). Where the forward map amplifies rounding (decaying or gated
/// shortcuts, plain nets, ResNet-1001: f32's 6e-8 grows about 1.6x per unit), the two runs
/// part: the test checks that such variants exist and that the forward signal itself shows it.
#[test]
fn f32_profiles_of_the_bundled_experiments_agree_with_f64_where_the_forward_does() {
    let w = Work::new();
    let (mut agreeing, mut amplifying) = (Vec::new(), Vec::new());
    for name in PROFILE_EXPERIMENTS {
        w.write(format!("{name}.toml"), in_both_precisions(name));
        w.cmd("run", format!("{name}.toml"), "out").ok();
        let csv = w.read(format!("out/{name}/profile.csv"));
        let forward = largest_gaps(&csv, "act_norm");
        let gradient = largest_gaps(&csv, "grad_norm");
        for (variant, &act) in &forward {
            let grad = gradient[variant];
            let what = format!("{name}: {variant}: forward {act:.1e}, gradient {grad:.1e}");
            if act <= 1e-6 {
                assert!(grad <= 1e-2, "{what}");
                agreeing.push(what);
            } else {
                amplifying.push(what);
            }
        }
    }
    assert!(agreeing.len() >= 40, "{agreeing:#?}");
    // The paper's hard-to-optimise variants are those whose forward amplifies rounding.
    for needle in ["scale:0.5", "gate:0", "original none"] {
        assert!(
            amplifying.iter().any(|a| a.contains(needle)),
            "{needle} not among {amplifying:#?}"
        );
    }
    assert!(
        amplifying
            .iter()
            .all(|a| !a.contains("full-preact identity batch he plain 54")),
        "{amplifying:#?}"
    );
}

/// The same seed gives the same bits in f32 whatever the thread count, on a conv net too.
#[test]
fn f32_profiles_are_identical_for_one_and_two_threads() {
    let w = Work::new();
    for (i, line) in [
        "profile --units 30 --width 128 --batch 64 --precision f32",
        "profile --units 30 --width 128 --batch 64 --precision f32 --shortcut gate:-2 --placement bn-after-add",
        "profile --net resnet:3:basic --image-size 16 --batch 32 --precision f32",
    ]
    .iter()
    .enumerate()
    {
        let csv = |threads: &str| {
            let name = format!("{i}-{threads}.csv");
            Argv::new(line)
                .flag("--seed", 7)
                .flag("--threads", threads)
                .flag("--csv", w.arg(&name))
                .ok();
            w.bytes(&name)
        };
        assert_eq!(csv("1"), csv("2"), "{line}: CSV differs between 1 and 2 threads");
    }
}

#[test]
fn f32_is_refused_where_it_cannot_apply() {
    let w = Work::new();
    Argv::tiny_mlp("profile")
        .flag("--precision", "f16")
        .refused("unknown precision 'f16' (expected f32 or f64)");
    Argv::tiny_mlp("profile")
        .flag("--precision", "f32")
        .flag("--npz", w.arg("s.npz"))
        .refused("--npz: the state file holds f64 arrays");
    assert!(!w.exists("s.npz"));
    Argv::tiny_mlp("check")
        .flag("--precision", "f32")
        .refused("--precision: check runs in f64 only");
    Argv::tiny_mlp("paths")
        .flag("--precision", "f32")
        .refused("--precision: paths runs in f64 only");
    let spec = |grid_extra: &str, top_extra: &str| {
        format!(
            "name = \"p\"\nclaim = \"c\"\nseed = 1\nbatch = 4\ncharts = [\"grad_ratio\"]\n{top_extra}\n[net]\nunits = 2\nwidth = 4\n\n[grid]\nplacements = [\"full-preact\"]\nshortcuts = [\"identity\"]\n{grid_extra}\n"
        )
    };
    for (name, text, needle) in [
        (
            "twice",
            spec("precisions = [\"f32\", \"f32\"]", ""),
            "grid.precisions: f32 appears twice",
        ),
        (
            "verification",
            spec("precisions = [\"f32\"]", "measure = \"verification\""),
            "grid.precisions: the verification's tolerances need f64",
        ),
        (
            "bad",
            spec("precisions = [\"bf16\"]", ""),
            "unknown precision 'bf16'",
        ),
    ] {
        w.write(format!("{name}.toml"), text);
        w.cmd("run", format!("{name}.toml"), "out").refused(needle);
    }
}

/// A spec whose grids are f64 only writes no precision column (the tables of earlier builds);
/// one with f32 writes it after the recipe, and its f64 cells are the f64-only spec's.
#[test]
fn the_precision_column_appears_only_with_f32() {
    let w = Work::new();
    w.write("a.toml", TINY_SPEC);
    w.cmd("run", "a.toml", "out_a").ok();
    let plain = w.read("out_a/tiny/profile.csv");
    assert!(!plain.lines().next().unwrap().contains("precision"));
    w.write(
        "b.toml",
        TINY_SPEC.replace("[grid]\n", "[grid]\nprecisions = [\"f64\", \"f32\"]\n"),
    );
    w.cmd("run", "b.toml", "out_b").ok();
    let both = w.read("out_b/tiny/profile.csv");
    let header: Vec<&str> = both.lines().next().unwrap().split(',').collect();
    let recipe = header.iter().position(|h| *h == "recipe").unwrap();
    assert_eq!(header[recipe + 1], "precision");
    // The f64 rows, without the precision column and with the cells renumbered, are the f64
    // spec's rows.
    assert_eq!(
        rows_of(&both, Some((recipe + 1, "f64"))),
        rows_of(&plain, None)
    );
}

/// A table's rows without the cell index (cells are numbered across precisions) and, with
/// `precision = Some((column, value))`, only those with that value there, without the column.
fn rows_of(csv: &str, precision: Option<(usize, &str)>) -> Vec<String> {
    csv.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            if let Some((at, value)) = precision {
                if f[at] != value {
                    return None;
                }
                f.remove(at);
            }
            f.remove(1);
            Some(f.join(","))
        })
        .collect()
}

/// Training in f32: a run stopped and resumed from its checkpoint is bit-identical to one
/// that ran through (the checkpoint holds the f32 values widened, which round back exactly);
/// the same for 1 and 2 threads; a resume in the other precision is refused; the checkpoint
/// profiles like any other; and the f32 run trains.
#[test]
fn f32_training_resumes_bit_for_bit_and_refuses_the_other_precision() {
    let w = Work::new();
    let train = "train --net mlp --units 4 --width 32 --epochs 3 --precision f32";
    Argv::new(train)
        .flag("--csv", w.arg("full.csv"))
        .flag("--threads", 1)
        .ok();
    Argv::new(train)
        .flag("--csv", w.arg("two.csv"))
        .flag("--threads", 2)
        .ok();
    assert_eq!(w.bytes("full.csv"), w.bytes("two.csv"), "1 and 2 threads");
    Argv::new(train)
        .flag("--checkpoint", w.arg("ck"))
        .flag("--stop-after-epochs", 1)
        .flag("--csv", w.arg("part.csv"))
        .ok();
    Argv::new(train)
        .flag("--checkpoint", w.arg("ck"))
        .switch("--resume")
        .flag("--csv", w.arg("resumed.csv"))
        .ok();
    assert_eq!(w.bytes("full.csv"), w.bytes("resumed.csv"), "resumed");
    Argv::new("train --net mlp --units 4 --width 32 --epochs 3")
        .flag("--checkpoint", w.arg("ck"))
        .switch("--resume")
        .refused("precision: checkpoint f32, now f64");
    Argv::new("profile")
        .flag("--weights", w.arg("ck/checkpoint.npz"))
        .flag("--csv", w.arg("p.csv"))
        .ok();
    // The last epoch's test error, against chance (90%) on the digits.
    let full = w.read("full.csv");
    let header: Vec<&str> = full.lines().next().unwrap().split(',').collect();
    let at = header.iter().position(|h| *h == "test_error").unwrap();
    let last: f64 = full
        .lines()
        .rev()
        .find_map(|l| l.split(',').nth(at).and_then(|v| v.parse().ok()))
        .unwrap();
    assert!(last < 0.2, "test error {last}");
}

/// An experiment's training cells in both precisions: the f64 cells are those of an f64-only
/// spec, byte for byte; the f32 ones differ from them (they ran in f32) but train.
#[test]
fn a_training_grid_runs_f32_beside_f64() {
    let w = Work::new();
    let spec = |precisions: &str| {
        format!(
            "name = \"t\"\nclaim = \"c\"\nseed = 5\ntask = \"train\"\ncharts = [\"train_curves\"]\n[net]\nunits = 3\nwidth = 16\n[train]\nepochs = 2\nbatch = 64\nrecord_every = 5\n[grid]\nnets = [\"mlp\"]\nplacements = [\"full-preact\"]\nshortcuts = [\"identity\"]\n{precisions}\n"
        )
    };
    w.write("a.toml", spec(""));
    w.write("b.toml", spec("precisions = [\"f64\", \"f32\"]"));
    w.cmd("run", "a.toml", "out_a").ok();
    w.cmd("run", "b.toml", "out_b").ok();
    let plain = w.read("out_a/t/train.csv");
    let both = w.read("out_b/t/train.csv");
    let header: Vec<&str> = both.lines().next().unwrap().split(',').collect();
    let p = header.iter().position(|h| *h == "precision").unwrap();
    let plain_rows = rows_of(&plain, None);
    assert_eq!(rows_of(&both, Some((p, "f64"))), plain_rows);
    let f32_rows = rows_of(&both, Some((p, "f32")));
    assert_eq!(f32_rows.len(), plain_rows.len());
    assert_ne!(f32_rows, plain_rows);
}

/// `lesion` and `shatter` in f32 measure what they do in f64, up to f32's rounding: the
/// lesioned nets' test errors within one test image, the autocorrelations within 0.05 (a
/// plain net's shattered gradient is the most sensitive to rounding).
#[test]
fn lesion_and_shatter_run_in_f32_close_to_f64() {
    let w = Work::new();
    Argv::new("train --net mlp --units 4 --width 32 --epochs 2")
        .flag("--checkpoint", w.arg("ck"))
        .flag("--csv", w.arg("t.csv"))
        .ok();
    let column = |csv: &str, name: &str| -> Vec<f64> {
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let at = header.iter().position(|h| *h == name).unwrap();
        lines
            .map(|l| l.split(',').nth(at).unwrap().parse().unwrap())
            .collect()
    };
    for p in ["f64", "f32"] {
        Argv::new("lesion")
            .flag("--weights", w.arg("ck/checkpoint.npz"))
            .flag("--precision", p)
            .flag("--csv", w.arg(format!("l{p}.csv")))
            .ok();
        Argv::new("shatter --depths 1,10 --width 32 --replicates 2")
            .flag("--precision", p)
            .flag("--csv", w.arg(format!("s{p}.csv")))
            .ok();
    }
    let (l64, l32) = (
        column(&w.read("lf64.csv"), "test_error"),
        column(&w.read("lf32.csv"), "test_error"),
    );
    assert_eq!(l64.len(), l32.len());
    for (a, b) in l64.iter().zip(&l32) {
        assert!((a - b).abs() <= 1.0 / 360.0 + 1e-12, "{a} against {b}");
    }
    let (s64, s32) = (
        column(&w.read("sf64.csv"), "autocorrelation"),
        column(&w.read("sf32.csv"), "autocorrelation"),
    );
    assert_eq!(s64.len(), s32.len());
    for (a, b) in s64.iter().zip(&s32) {
        assert!((a - b).abs() <= 0.05, "{a} against {b}");
    }
}
