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

/// A checkpoint fixture copied into `w` (so a resume may rewrite it).
fn fixture(name: &str, w: &Work) -> PathBuf {
    let to = w.path(name);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(
        Path::new(GOLDEN).join(name).join("checkpoint.npz"),
        to.join("checkpoint.npz"),
    )
    .unwrap();
    to
}

/// The checkpoint fixtures and the optimizer flags of the runs they were cut from.
const FIXTURES: [(&str, &[&str]); 2] = [
    ("ck_sgd", &[]),
    ("ck_adam", &["--optimizer", "adam", "--lr", "1e-2"]),
];

/// The run the fixtures were cut from: [`Argv::tiny_train`] at width 8.
fn fixture_run() -> Argv {
    Argv::tiny_train().set("--width", 8)
}

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
fn outputs(w: &Work) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut record = |name: &str, bytes: &[u8]| {
        out.insert(name.to_string(), sha256_hex(bytes));
    };
    let file = |name: &str| w.bytes(name);

    Argv::new("profile --units 12 --width 16 --batch 8 --placement full-preact")
        .with(&["--shortcut", "gate:-2", "--seed", "1"])
        .flag("--csv", w.arg("p1.csv"))
        .flag("--weight-grad-csv", w.arg("p1w.csv"))
        .flag("--npz", w.arg("p1.npz"))
        .ok();
    for n in ["p1.csv", "p1w.csv", "p1.npz"] {
        record(n, &file(n));
    }
    Argv::new("profile --net resnet:1:basic --image-size 8 --batch 4 --projection pad")
        .flag("--shortcut", "scale:0.9")
        .flag("--csv", w.arg("p2.csv"))
        .ok();
    record("p2.csv", &file("p2.csv"));
    Argv::new("profile --net resnet:1:bottleneck --image-size 8 --batch 4")
        .with(&[
            "--placement",
            "post-norm",
            "--norm",
            "layer",
            "--init",
            "xavier",
        ])
        .flag("--csv", w.arg("p3.csv"))
        .ok();
    record("p3.csv", &file("p3.csv"));
    Argv::new("profile --units 6 --width 8 --batch 4 --norm none --init fixup --unfused")
        .flag("--csv", w.arg("p4.csv"))
        .ok();
    record("p4.csv", &file("p4.csv"));
    let o = Argv::new("check --units 4 --width 8 --batch 4 --placement full-preact")
        .with(&["--shortcut", "dropout:0.5", "--directions", "1"])
        .ok();
    record("check.stdout", &o.stdout);
    Argv::new("paths --net resnet:1:basic --image-size 8 --batch 4 --sample 3")
        .flag("--csv", w.arg("paths.csv"))
        .ok();
    record("paths.csv", &file("paths.csv"));
    Argv::new("shatter --depths 1,3 --width 8 --replicates 2")
        .flag("--csv", w.arg("sh.csv"))
        .flag("--gradients-csv", w.arg("shg.csv"))
        .ok();
    for n in ["sh.csv", "shg.csv"] {
        record(n, &file(n));
    }
    // Training: SGD on a ResNet, Adam on an MLP, each with its checkpoint.
    Argv::new("train --net resnet:1:basic --epochs 1 --batch 64 --record-every 5")
        .flag("--csv", w.arg("t1.csv"))
        .flag("--checkpoint", w.arg("ck1"))
        .ok();
    for n in ["t1.csv", "t1.grads.csv"] {
        record(n, &file(n));
    }
    Argv::new("train --net mlp --units 3 --width 8 --placement pre-norm --norm layer")
        .with(&["--optimizer", "adam", "--lr", "3e-3", "--warmup-steps", "5"])
        .with(&["--epochs", "2", "--batch", "64", "--record-every", "4"])
        .flag("--csv", w.arg("t2.csv"))
        .ok();
    for n in ["t2.csv", "t2.grads.csv"] {
        record(n, &file(n));
    }
    Argv::new("lesion")
        .flag("--weights", w.arg("ck1/checkpoint.npz"))
        .flag("--draws", 2)
        .flag("--csv", w.arg("lesion.csv"))
        .ok();
    record("lesion.csv", &file("lesion.csv"));
    // Experiments: a training task and a paths task, their tables and resolved specs.
    for (name, text, tables) in [
        (
            "tinytrain",
            TINY_TRAIN_SPEC,
            &["train", "grads", "signal"][..],
        ),
        ("tinypaths", ANALYSES_SPEC, &["paths"][..]),
    ] {
        let spec = w.write(format!("{name}.toml"), text);
        Argv::new("run")
            .arg(&spec)
            .flag("--out", w.arg("results"))
            .ok();
        for t in tables.iter().chain(&["spec"]) {
            let ext = if *t == "spec" { "toml" } else { "csv" };
            let rel = format!("results/{name}/{t}.{ext}");
            record(&rel, &file(&rel));
        }
    }
    // Checkpoints an earlier build wrote: profiled as they are, and resumed.
    let sgd = fixture("ck_sgd", w);
    Argv::new("profile")
        .path("--weights", sgd.join("checkpoint.npz"))
        .with(&["--batch", "8", "--bn-mode", "eval"])
        .flag("--csv", w.arg("fixture_profile.csv"))
        .ok();
    record("fixture_profile.csv", &file("fixture_profile.csv"));
    for (name, extra) in FIXTURES {
        let ck = fixture(name, w);
        let csv = format!("{name}_resumed.csv");
        fixture_run()
            .path("--checkpoint", &ck)
            .switch("--resume")
            .flag("--csv", w.arg(&csv))
            .with(extra)
            .ok();
        record(&csv, &file(&csv));
    }
    out
}

#[test]
fn outputs_are_byte_identical_to_the_recorded_digests() {
    let got = outputs(&Work::new());
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
    let w = Work::new();
    for (name, extra) in FIXTURES {
        let ck = fixture(name, &w);
        fixture_run()
            .path("--checkpoint", &ck)
            .switch("--resume")
            .flag("--csv", w.arg("r.csv"))
            .with(extra)
            .ok();
        fixture_run().flag("--csv", w.arg("w.csv")).with(extra).ok();
        assert_eq!(w.bytes("r.csv"), w.bytes("w.csv"), "{name}");
    }
}
