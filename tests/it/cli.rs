//! The binary as a user runs it: output files, one-line errors, exit codes, determinism.

use std::path::Path;

use crate::common::*;

/// A bad input: non-zero exit, exactly one line on stderr naming `needle`, no panic.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let o = resprop(args);
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
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("prof.csv");
    let o = resprop(&[
        "profile",
        "--units",
        "12",
        "--width",
        "16",
        "--batch",
        "8",
        "--placement",
        "original",
        "--shortcut",
        "scale:0.5",
        "--seed",
        "1",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
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
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("grad/top") && stdout.contains("wrote 13 rows"),
        "{stdout}"
    );
}

#[test]
fn check_passes_and_lists_inapplicable_checks() {
    let o = resprop(&[
        "check",
        "--units",
        "10",
        "--width",
        "16",
        "--batch",
        "8",
        "--placement",
        "full-preact",
        "--shortcut",
        "gate:-6",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("PASS") && !out.contains("FAIL"), "{out}");
    assert!(
        out.contains("n/a") && out.contains("constant scaling"),
        "{out}"
    );
    let o = resprop(&[
        "check",
        "--units",
        "10",
        "--width",
        "16",
        "--batch",
        "8",
        "--placement",
        "original",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("f is not the identity"), "{out}");
}

#[test]
fn bad_inputs_give_one_line_errors() {
    assert_one_line_error(&["profile", "--units", "0"], "units");
    assert_one_line_error(&["profile", "--width", "0"], "width");
    assert_one_line_error(&["profile", "--batch", "0"], "batch");
    assert_one_line_error(&["profile", "--batch", "1"], "batch of 1");
    assert_one_line_error(&["profile", "--placement", "sideways"], "sideways");
    assert_one_line_error(&["profile", "--shortcut", "wormhole"], "wormhole");
    assert_one_line_error(
        &["profile", "--shortcut", "scale:abc"],
        "'abc' is not a number",
    );
    assert_one_line_error(&["profile", "--shortcut", "dropout:1.5"], "1.5");
    assert_one_line_error(&["profile", "--threads", "0"], "threads");
    assert_one_line_error(&["profile", "--units", "-3"], "-3");
    assert_one_line_error(
        &["profile", "--csv", "/nonexistent-dir-resprop/p.csv"],
        "does not exist",
    );
    assert_one_line_error(&["check", "--directions", "0"], "directions");
    assert_one_line_error(&["bench", "--workload", "W9"], "W9");
    assert_one_line_error(&["frobnicate"], "frobnicate");
}

#[test]
fn failed_runs_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("out.csv");
    let o = resprop(&["profile", "--batch", "1", "--csv", csv.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output and no temporary file"
    );
}

fn csv_bytes(dir: &Path, threads: &str, extra: &[&str]) -> Vec<u8> {
    let path = dir.join(format!("t{threads}.csv"));
    let mut args = vec![
        "profile",
        "--units",
        "30",
        "--width",
        "128",
        "--batch",
        "64",
        "--seed",
        "7",
        "--threads",
        threads,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--csv", path.to_str().unwrap()]);
    let o = resprop(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read(path).unwrap()
}

/// Large enough (128 x 128, batch 64) that the GEMMs run multi-threaded with 2 threads.
#[test]
fn same_seed_gives_identical_csv_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--shortcut", "identity"][..],
        &["--shortcut", "gate:-2", "--placement", "bn-after-add"][..],
        &["--shortcut", "dropout:0.3"][..],
    ] {
        let one = csv_bytes(dir.path(), "1", extra);
        let two = csv_bytes(dir.path(), "2", extra);
        assert_eq!(one, two, "{extra:?}: CSV differs between 1 and 2 threads");
    }
}

/// Recomputing units during backward gives the same bits as keeping every cache.
#[test]
fn low_memory_profile_is_identical() {
    let dir = tempfile::tempdir().unwrap();
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
            let path = dir.path().join(format!("lm{}.csv", extra.len()));
            let mut args = vec!["profile", "--batch", "4", "--csv", path.to_str().unwrap()];
            args.extend_from_slice(net);
            args.extend_from_slice(extra);
            let o = resprop(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            csvs.push(std::fs::read(path).unwrap());
        }
        assert_eq!(
            csvs[0], csvs[1],
            "{net:?}: --low-memory changed the numbers"
        );
    }
}

#[test]
fn different_seeds_give_different_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let a = csv_bytes(dir.path(), "1", &[]);
    let path = dir.path().join("s8.csv");
    let o = resprop(&[
        "profile",
        "--units",
        "30",
        "--width",
        "128",
        "--batch",
        "64",
        "--seed",
        "8",
        "--csv",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_ne!(a, std::fs::read(path).unwrap());
}

#[test]
fn overflow_warns_on_stderr_and_writes_inf() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("o.csv");
    let o = resprop(&[
        "profile",
        "--units",
        "1100",
        "--width",
        "4",
        "--batch",
        "4",
        "--placement",
        "full-preact",
        "--shortcut",
        "scale:2",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: act_norm is non-finite") && err.contains("first at unit"),
        "{err}"
    );
    let text = std::fs::read_to_string(csv).unwrap();
    assert!(text.contains("inf") || text.contains("NaN"));
}

#[test]
fn help_uses_the_papers_vocabulary() {
    let o = resprop(&["profile", "--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
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
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("s.npz");
    let o = resprop(&[
        "profile",
        "--units",
        "5",
        "--width",
        "8",
        "--batch",
        "6",
        "--shortcut",
        "dropout:0.5",
        "--npz",
        npz.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
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
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("run.csv");
    let o = resprop(&[
        "train",
        "--net",
        "mlp",
        "--units",
        "3",
        "--width",
        "16",
        "--epochs",
        "2",
        "--record-every",
        "5",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("step,epoch,lr,train_loss,train_error,test_loss,test_error"));
    // 1,437 training images in batches of 64: 22 steps per epoch.
    assert_eq!(text.lines().count(), 1 + 44);
    let grads = std::fs::read_to_string(dir.path().join("run.grads.csv")).unwrap();
    assert!(grads.starts_with("step,unit,grad_norm,grad_ratio,direct_ratio"));
    assert_eq!(
        grads.lines().count(),
        1 + 9 * 4,
        "steps 0, 5, ..., 40 x 4 unit inputs"
    );
}

#[test]
fn train_data_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    assert_one_line_error(&["train", "--data", "mnist"], "unknown data 'mnist'");
    let missing = format!("cifar10:{}", dir.path().join("nope").display());
    assert_one_line_error(&["train", "--data", &missing], "does not exist");
    std::fs::write(dir.path().join("data_batch_1.bin"), vec![0u8; 3073 * 2 + 1]).unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), vec![0u8; 3073]).unwrap();
    let truncated = format!("cifar10:{}", dir.path().display());
    assert_one_line_error(&["train", "--data", &truncated], "multiple of 3073");
    assert_one_line_error(&["train", "--epochs", "0"], "epochs");
}

/// A resume that would not continue the checkpoint's run is refused in one line naming the
/// setting and both values; nothing is trained or written.
#[test]
fn a_resume_that_changes_the_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let base = [
        "train",
        "--net",
        "mlp",
        "--units",
        "2",
        "--width",
        "8",
        "--epochs",
        "4",
        "--checkpoint",
        ck.to_str().unwrap(),
    ];
    let mut first = base.to_vec();
    first.extend(["--stop-after-epochs", "1"]);
    let o = resprop(&first);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = dir.path().join("resumed.csv");
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
        let mut args: Vec<&str> = base.to_vec();
        match args.iter().position(|a| *a == flag) {
            Some(i) => args[i + 1] = value,
            None => args.extend([flag, value]),
        }
        args.extend(["--resume", "--csv", csv.to_str().unwrap()]);
        let o = resprop(&args);
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
    let mut same = base.to_vec();
    same.push("--resume");
    let o = resprop(&same);
    assert!(o.status.success(), "{}", stderr(&o));
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
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        let common = [
            "train",
            "--net",
            "resnet:1:basic",
            "--epochs",
            "2",
            "--record-every",
            "7",
            "--seed",
            "4",
        ];
        let run = |extra: &[&str]| {
            let mut args: Vec<&str> = common.to_vec();
            args.extend_from_slice(optimizer);
            args.extend_from_slice(extra);
            let o = resprop(&args);
            assert!(o.status.success(), "{}", stderr(&o));
        };
        run(&["--csv", &p("straight.csv")]);
        let ck = p("ck");
        run(&[
            "--csv",
            &p("resumed.csv"),
            "--checkpoint",
            &ck,
            "--stop-after-epochs",
            "1",
        ]);
        assert!(dir.path().join("ck/checkpoint.npz").is_file());
        run(&["--csv", &p("resumed.csv"), "--checkpoint", &ck, "--resume"]);
        for f in ["straight.csv", "straight.grads.csv"] {
            let other = f.replace("straight", "resumed");
            assert_eq!(
                std::fs::read(p(f)).unwrap(),
                std::fs::read(p(&other)).unwrap(),
                "{optimizer:?}: {f} differs after resume"
            );
        }
        if !optimizer.is_empty() {
            // Resuming an Adam checkpoint with SGD changes the run: refused, naming it.
            let mut args: Vec<&str> = common.to_vec();
            args.extend_from_slice(&optimizer[2..]);
            args.extend(["--checkpoint", ck.as_str(), "--resume"]);
            assert_one_line_error(&args, "optimizer: checkpoint adam, now sgd");
        }
    }
    assert_one_line_error(
        &["train", "--resume", "--checkpoint", "/nonexistent/nowhere"],
        "no checkpoint",
    );
}

/// A run whose loss goes non-finite stops, names the step and the first unit, keeps its CSV.
#[test]
fn diverging_training_stops_with_the_step_and_unit() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    let o = resprop(&[
        "train",
        "--net",
        "mlp",
        "--units",
        "1100",
        "--width",
        "4",
        "--shortcut",
        "scale:2",
        "--epochs",
        "1",
        "--csv",
        csv.to_str().unwrap(),
    ]);
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
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bench.csv");
    let o = resprop(&[
        "bench",
        "--workload",
        "W1",
        "--mode",
        "train",
        "--repeat",
        "1",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("W1 (residual MLP, 100 units"), "{out}");
    assert!(
        out.contains("mode train, ") && out.contains("peak RSS"),
        "{out}"
    );
    assert!(
        out.contains("forward median") && out.contains("backward median"),
        "{out}"
    );
    let table = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "workload,mode,threads,repeat,median_s,min_s,max_s,peak_rss_mb"
    );
    assert!(lines[1].starts_with("W1,train,"), "{table}");

    let o = resprop(&["bench", "--workload", "gemm", "--repeat", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
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
    assert_one_line_error(
        &[
            "profile",
            "--net",
            "mlp",
            "--units",
            "2",
            "--width",
            "4000000000",
            "--batch",
            "4",
        ],
        "would need about",
    );
    assert_one_line_error(
        &["check", "--net", "mlp", "--batch", "1000000000000"],
        "would need about",
    );
}

/// The memory estimate against the peak resident memory `profile` reports, on an MLP and on
/// ResNet-110: within 25%.
#[test]
fn the_memory_estimate_matches_the_measured_peak() {
    for args in [
        vec![
            "--net", "mlp", "--units", "60", "--width", "256", "--batch", "256",
        ],
        vec![
            "--net",
            "resnet110",
            "--batch",
            "16",
            "--placement",
            "original",
        ],
    ] {
        let mut all = vec!["profile"];
        all.extend(args.iter().copied());
        let o = resprop(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
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
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let profile = [
        "profile",
        "--net",
        "resnet:1:bottleneck",
        "--image-size",
        "8",
        "--batch",
        "4",
        "--placement",
        "full-preact",
    ];
    for (name, extra) in [("fused", None), ("plain", Some("--unfused"))] {
        let mut args = profile.to_vec();
        let csv = d(&format!("{name}.csv"));
        args.extend(["--csv", csv.as_str()]);
        args.extend(extra);
        ok(&resprop(&args));
        let train_csv = d(&format!("{name}_train.csv"));
        let mut args = vec![
            "train",
            "--net",
            "resnet:1:basic",
            "--epochs",
            "1",
            "--record-every",
            "5",
            "--placement",
            "original",
            "--csv",
            train_csv.as_str(),
        ];
        args.extend(extra);
        ok(&resprop(&args));
    }
    for file in ["", "_train", "_train.grads"] {
        let a = std::fs::read(d(&format!("fused{file}.csv"))).unwrap();
        let b = std::fs::read(d(&format!("plain{file}.csv"))).unwrap();
        assert!(!a.is_empty());
        assert_eq!(a, b, "fused{file}.csv and plain{file}.csv differ");
    }
    let o = resprop(&[
        "check",
        "--net",
        "mlp",
        "--units",
        "3",
        "--width",
        "8",
        "--batch",
        "6",
        "--unfused",
    ]);
    ok(&o);
}

/// `--norm` fills every normalisation slot: LayerNorm or nothing, and `check` passes on both;
/// an unknown norm is a one-line error.
#[test]
fn norm_fills_every_slot_and_check_passes() {
    for norm in ["layer", "none"] {
        let o = resprop(&[
            "profile",
            "--net",
            "mlp",
            "--units",
            "3",
            "--width",
            "8",
            "--placement",
            "full-preact",
            "--norm",
            norm,
        ]);
        ok(&o);
        let out = String::from_utf8_lossy(&o.stdout);
        let branch = if norm == "layer" {
            "F = LN ReLU W LN ReLU W"
        } else {
            "F = ReLU W ReLU W"
        };
        assert!(out.contains(branch), "{norm}: {out}");
        for args in [
            &[
                "check", "--net", "mlp", "--units", "3", "--width", "8", "--batch", "6",
            ][..],
            &[
                "check",
                "--net",
                "resnet:1:basic",
                "--image-size",
                "8",
                "--batch",
                "3",
                "--placement",
                "full-preact",
            ][..],
        ] {
            let mut a = args.to_vec();
            a.extend(["--norm", norm]);
            ok(&resprop(&a));
        }
    }
    assert_one_line_error(&["profile", "--norm", "group"], "unknown norm 'group'");
}

/// `--weight-grad-csv` writes `||dE/dW||_F` for each weight layer of each unit; the profile
/// CSV it comes with is the same as without it.
#[test]
fn weight_grad_csv_has_one_row_per_weight_layer() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let base = [
        "profile",
        "--net",
        "mlp",
        "--units",
        "5",
        "--width",
        "16",
        "--placement",
        "pre-norm",
        "--norm",
        "layer",
    ];
    let (a, b, w) = (d("a.csv"), d("b.csv"), d("w.csv"));
    let mut with = base.to_vec();
    with.extend(["--csv", a.as_str(), "--weight-grad-csv", w.as_str()]);
    ok(&resprop(&with));
    let mut without = base.to_vec();
    without.extend(["--csv", b.as_str()]);
    ok(&resprop(&without));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let text = std::fs::read_to_string(&w).unwrap();
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
