//! The numbers do not move unless a change means them to: the SHA-256 of every output of a set
//! of quick commands (every command, every task, MLPs and ResNets, SGD and Adam, a state file,
//! checkpoints) against `tests/golden/outputs.sha256`, and checkpoints written by an earlier
//! build (`tests/golden/*/checkpoint.npz`) loaded by this one.
//!
//! A change that means to move numbers regenerates the digests with `RESPROP_BLESS=1 cargo test
//! --release golden` and says in its commit which outputs moved and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::*;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run(args: &[String]) -> std::process::Output {
    let o = resprop(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&o);
    o
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// A checkpoint fixture copied into `dir` (so a resume may rewrite it).
fn fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(
        Path::new(GOLDEN).join(name).join("checkpoint.npz"),
        to.join("checkpoint.npz"),
    )
    .unwrap();
    to
}

const TRAIN_SPEC: &str = r#"
name = "tinytrain"
claim = "a tiny training run"
seed = 3
charts = ["train_curves"]
task = "train"

[train]
data = "digits"
epochs = 1
batch = 64
record_every = 5

[grid]
nets = ["mlp", "resnet:1:basic"]
placements = ["original", "full-preact"]
shortcuts = ["identity"]
units = [2]
replicates = [0]
"#;

const ANALYSES_SPEC: &str = r#"
name = "tinypaths"
claim = "a tiny paths run"
seed = 4
batch = 8
charts = ["path_lengths"]
task = "paths"

[paths]
sample = 2

[net]
units = 3
width = 8

[grid]
nets = ["mlp", "resnet:1:basic"]
placements = ["full-preact"]
shortcuts = ["identity", "scale:0.8"]
replicates = [0]
"#;

/// Every output of the golden commands, by a stable name, with its bytes' digest.
fn outputs(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let p = |name: &str| s(&dir.join(name));
    let mut record = |name: &str, bytes: &[u8]| {
        out.insert(name.to_string(), sha256_hex(bytes));
    };
    let file = |name: &str| std::fs::read(dir.join(name)).unwrap();

    run(&argv(&[
        "profile",
        "--units",
        "12",
        "--width",
        "16",
        "--batch",
        "8",
        "--placement",
        "full-preact",
        "--shortcut",
        "gate:-2",
        "--seed",
        "1",
        "--csv",
        &p("p1.csv"),
        "--weight-grad-csv",
        &p("p1w.csv"),
        "--npz",
        &p("p1.npz"),
    ]));
    for n in ["p1.csv", "p1w.csv", "p1.npz"] {
        record(n, &file(n));
    }
    run(&argv(&[
        "profile",
        "--net",
        "resnet:1:basic",
        "--image-size",
        "8",
        "--batch",
        "4",
        "--projection",
        "pad",
        "--shortcut",
        "scale:0.9",
        "--csv",
        &p("p2.csv"),
    ]));
    record("p2.csv", &file("p2.csv"));
    run(&argv(&[
        "profile",
        "--net",
        "resnet:1:bottleneck",
        "--image-size",
        "8",
        "--batch",
        "4",
        "--placement",
        "post-norm",
        "--norm",
        "layer",
        "--init",
        "xavier",
        "--csv",
        &p("p3.csv"),
    ]));
    record("p3.csv", &file("p3.csv"));
    run(&argv(&[
        "profile",
        "--units",
        "6",
        "--width",
        "8",
        "--batch",
        "4",
        "--norm",
        "none",
        "--init",
        "fixup",
        "--unfused",
        "--csv",
        &p("p4.csv"),
    ]));
    record("p4.csv", &file("p4.csv"));
    let o = run(&argv(&[
        "check",
        "--units",
        "4",
        "--width",
        "8",
        "--batch",
        "4",
        "--placement",
        "full-preact",
        "--shortcut",
        "dropout:0.5",
        "--directions",
        "1",
    ]));
    record("check.stdout", &o.stdout);
    run(&argv(&[
        "paths",
        "--net",
        "resnet:1:basic",
        "--image-size",
        "8",
        "--batch",
        "4",
        "--sample",
        "3",
        "--csv",
        &p("paths.csv"),
    ]));
    record("paths.csv", &file("paths.csv"));
    run(&argv(&[
        "shatter",
        "--depths",
        "1,3",
        "--width",
        "8",
        "--replicates",
        "2",
        "--csv",
        &p("sh.csv"),
        "--gradients-csv",
        &p("shg.csv"),
    ]));
    for n in ["sh.csv", "shg.csv"] {
        record(n, &file(n));
    }
    // Training: SGD on a ResNet, Adam on an MLP, each with its checkpoint.
    run(&argv(&[
        "train",
        "--net",
        "resnet:1:basic",
        "--epochs",
        "1",
        "--batch",
        "64",
        "--record-every",
        "5",
        "--csv",
        &p("t1.csv"),
        "--checkpoint",
        &p("ck1"),
    ]));
    for n in ["t1.csv", "t1.grads.csv"] {
        record(n, &file(n));
    }
    run(&argv(&[
        "train",
        "--net",
        "mlp",
        "--units",
        "3",
        "--width",
        "8",
        "--placement",
        "pre-norm",
        "--norm",
        "layer",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
        "--epochs",
        "2",
        "--batch",
        "64",
        "--record-every",
        "4",
        "--csv",
        &p("t2.csv"),
    ]));
    for n in ["t2.csv", "t2.grads.csv"] {
        record(n, &file(n));
    }
    run(&argv(&[
        "lesion",
        "--weights",
        &p("ck1/checkpoint.npz"),
        "--draws",
        "2",
        "--csv",
        &p("lesion.csv"),
    ]));
    record("lesion.csv", &file("lesion.csv"));
    // Experiments: a training task and a paths task, their tables and resolved specs.
    for (name, text, tables) in [
        ("tinytrain", TRAIN_SPEC, &["train", "grads", "signal"][..]),
        ("tinypaths", ANALYSES_SPEC, &["paths"][..]),
    ] {
        let spec = dir.join(format!("{name}.toml"));
        std::fs::write(&spec, text).unwrap();
        run(&argv(&["run", &s(&spec), "--out", &p("results")]));
        for t in tables.iter().chain(&["spec"]) {
            let ext = if *t == "spec" { "toml" } else { "csv" };
            let rel = format!("results/{name}/{t}.{ext}");
            record(&rel, &file(&rel));
        }
    }
    // Checkpoints an earlier build wrote: profiled as they are, and resumed.
    let sgd = fixture("ck_sgd", dir);
    run(&argv(&[
        "profile",
        "--weights",
        &s(&sgd.join("checkpoint.npz")),
        "--batch",
        "8",
        "--bn-mode",
        "eval",
        "--csv",
        &p("fixture_profile.csv"),
    ]));
    record("fixture_profile.csv", &file("fixture_profile.csv"));
    for (name, extra) in [
        ("ck_sgd", &[][..]),
        ("ck_adam", &["--optimizer", "adam", "--lr", "1e-2"][..]),
    ] {
        let ck = fixture(name, dir);
        let csv = format!("{name}_resumed.csv");
        let mut args = argv(&[
            "train",
            "--net",
            "mlp",
            "--units",
            "2",
            "--width",
            "8",
            "--epochs",
            "2",
            "--batch",
            "64",
            "--record-every",
            "0",
            "--checkpoint",
            &s(&ck),
            "--resume",
            "--csv",
            &p(&csv),
        ]);
        args.extend(argv(extra));
        run(&args);
        record(&csv, &file(&csv));
    }
    out
}

#[test]
fn outputs_are_byte_identical_to_the_recorded_digests() {
    let dir = tempfile::tempdir().unwrap();
    let got = outputs(dir.path());
    let path = Path::new(GOLDEN).join("outputs.sha256");
    let text: String = got.iter().map(|(n, d)| format!("{d}  {n}\n")).collect();
    if std::env::var_os("RESPROP_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want: BTreeMap<String, String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let (d, n) = l.split_once("  ").unwrap();
            (n.to_string(), d.to_string())
        })
        .collect();
    let moved: Vec<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|n| want.get(*n) != got.get(*n))
        .collect();
    assert!(
        moved.is_empty(),
        "outputs that moved (RESPROP_BLESS=1 to record them, if meant): {moved:?}"
    );
}

/// The fixtures resume to the run they were cut from: the same bytes as an uninterrupted run.
#[test]
fn checkpoints_of_an_earlier_build_resume_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, extra) in [
        ("ck_sgd", &[][..]),
        ("ck_adam", &["--optimizer", "adam", "--lr", "1e-2"][..]),
    ] {
        let ck = fixture(name, d);
        let base = argv(&[
            "train",
            "--net",
            "mlp",
            "--units",
            "2",
            "--width",
            "8",
            "--epochs",
            "2",
            "--batch",
            "64",
            "--record-every",
            "0",
        ]);
        let mut resumed = base.clone();
        resumed.extend(argv(&[
            "--checkpoint",
            &s(&ck),
            "--resume",
            "--csv",
            &s(&d.join("r.csv")),
        ]));
        resumed.extend(argv(extra));
        run(&resumed);
        let mut whole = base;
        whole.extend(argv(&["--csv", &s(&d.join("w.csv"))]));
        whole.extend(argv(extra));
        run(&whole);
        assert_eq!(
            std::fs::read(d.join("r.csv")).unwrap(),
            std::fs::read(d.join("w.csv")).unwrap(),
            "{name}"
        );
    }
}
