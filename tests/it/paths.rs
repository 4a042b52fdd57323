//! The exact path decomposition (`resprop paths`): it sums to the gradient, it equals the
//! brute-force sum over every single path, and it has the structure the shortcut implies.

use resprop::analysis::gaussian_batch;
use resprop::analysis::paths::{decompose, path_rows, sample_paths, single_path};
use resprop::layers::{Mode, NormKind};
use resprop::net::{InputSizes, NetDescription, Network};
use resprop::tensor::{norm, Tensor};
use resprop::unit::{ForwardCtx, Placement};

use crate::common::*;

fn ctx() -> ForwardCtx {
    ForwardCtx {
        mode: Mode::Train,
        dropout_seed: 9,
        keep_branch: true,
        weight_grads: false,
    }
}

fn build(net: &str, units: usize, placement: Placement, shortcut: &str, norm: NormKind) -> Network {
    let input = InputSizes {
        input_dim: 10,
        image_size: 8,
        input_channels: 3,
        classes: 10,
    };
    NetDescription {
        net: net.parse().unwrap(),
        units,
        width: 12,
        placement,
        shortcut: shortcut.parse().unwrap(),
        projection: None,
        norm,
        ..NetDescription::default()
    }
    .build(&input, 5)
    .unwrap()
}

/// sum_k G_k(l) = dE/dx_l to 1e-10 at every unit input, for every placement and a spread of
/// shortcuts on MLPs, and for basic and bottleneck ResNets (projection units included).
#[test]
fn the_decomposition_sums_to_the_gradient() {
    let mut cases = Vec::new();
    for placement in Placement::ALL {
        for shortcut in [
            "identity",
            "scale:0.8",
            "gate:-2",
            "conv1x1",
            "none",
            "alpha:0.3",
        ] {
            cases.push(("mlp", 6, placement, shortcut, NormKind::Batch));
        }
        cases.push(("resnet:2:basic", 0, placement, "identity", NormKind::Batch));
        cases.push((
            "resnet:1:bottleneck",
            0,
            placement,
            "identity",
            NormKind::Batch,
        ));
    }
    cases.push(("mlp", 6, Placement::PostNorm, "deepnorm", NormKind::Layer));
    cases.push((
        "mlp",
        6,
        Placement::PreNorm,
        "layerscale:0.1",
        NormKind::Layer,
    ));
    for (net_name, units, placement, shortcut, norm_kind) in cases {
        let net = build(net_name, units, placement, shortcut, norm_kind);
        let (x, y) = gaussian_batch(&net.input_shape, 6, 10, 1);
        let cache = net.forward(&x, &y, &ctx()).unwrap();
        let grads = net.backward(&cache, &y, None);
        let d = decompose(&net, &cache, &grads);
        let tag = format!("{net_name} {placement} {shortcut} {norm_kind}");
        assert!(d.max_sum_error() <= 1e-10, "{tag}: {}", d.max_sum_error());
        assert_eq!(d.norms[0].len(), net.num_units() + 1, "{tag}");
        let rows = path_rows(&net, &d, None);
        let n = net.num_units();
        assert_eq!(rows.len(), (n + 1) * (n + 2) / 2, "{tag}");
        let share: f64 = rows
            .iter()
            .filter(|r| r.unit == 0)
            .map(|r| r.exact_share)
            .sum();
        assert!((share - 1.0).abs() < 1e-12, "{tag}: shares sum to {share}");
    }
}

/// An independent computation: every one of the 2^n single paths propagated on its own
/// (shortcut or branch VJP at each unit), summed by length, equals G_k(0).
#[test]
fn the_recursion_equals_the_sum_over_every_single_path() {
    for (placement, shortcut) in [
        (Placement::Original, "identity"),
        (Placement::FullPreact, "scale:0.7"),
        (Placement::BnAfterAdd, "gate:-1"),
    ] {
        let net = build("mlp", 5, placement, shortcut, NormKind::Batch);
        let (x, y) = gaussian_batch(&net.input_shape, 4, 10, 2);
        let cache = net.forward(&x, &y, &ctx()).unwrap();
        let grads = net.backward(&cache, &y, None);
        let d = decompose(&net, &cache, &grads);
        let n = net.num_units();
        let mut by_length: Vec<Option<Tensor>> = vec![None; n + 1];
        for mask in 0..(1u32 << n) {
            let take: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
            let g = single_path(&net, &cache, &grads, &take);
            let k = mask.count_ones() as usize;
            by_length[k] = Some(match by_length[k].take() {
                Some(acc) => acc + &g,
                None => g,
            });
        }
        for (k, brute) in by_length.into_iter().enumerate() {
            let brute = brute.unwrap();
            let err = norm(&(&brute - &d.at_input[k])) / norm(&brute).max(1e-300);
            assert!(err < 1e-12, "{placement} {shortcut} k={k}: {err}");
        }
    }
}

/// The structure the shortcut implies: a plain net (h = 0) has only the longest path; ReZero
/// at its start (every branch scaled by 0) only the shortest; Veit's estimate for k = 0 (one
/// path) is that path's norm, and for k = n likewise.
#[test]
fn plain_and_rezero_nets_have_one_path_length() {
    let net = build("mlp", 4, Placement::Original, "none", NormKind::Batch);
    let (x, y) = gaussian_batch(&net.input_shape, 6, 10, 3);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let grads = net.backward(&cache, &y, None);
    let d = decompose(&net, &cache, &grads);
    assert!(
        d.norms[0][..4].iter().all(|&g| g == 0.0),
        "{:?}",
        d.norms[0]
    );
    assert!(d.norms[0][4] > 0.0);
    let sampled = sample_paths(
        &net,
        &cache,
        &grads,
        3,
        1,
        &|| {},
        &resprop::interrupt::Interrupt::new(),
    )
    .unwrap();
    assert_eq!(sampled[4], d.norms[0][4]);
    assert_eq!(sampled[0], 0.0);

    let net = build("mlp", 4, Placement::FullPreact, "rezero", NormKind::None);
    let (x, y) = gaussian_batch(&net.input_shape, 6, 10, 3);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let grads = net.backward(&cache, &y, None);
    let d = decompose(&net, &cache, &grads);
    assert!(
        d.norms[0][1..].iter().all(|&g| g == 0.0),
        "{:?}",
        d.norms[0]
    );
    assert_eq!(d.norms[0][0], norm(&grads.grad_x[0]));
}

/// The command: its CSV, its check line, and one-line errors.
#[test]
fn paths_command_writes_the_table() {
    let w = Work::new();
    let o = Argv::new("paths --net mlp --units 6 --width 8 --batch 4 --placement full-preact")
        .flag("--sample", 5)
        .flag("--csv", w.arg("paths.csv"))
        .ok();
    let out = stdout(&o);
    assert!(
        out.contains("check: max over l of") && out.contains("effective paths"),
        "{out}"
    );
    let text = w.read("paths.csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "unit,k,paths,exact_norm,exact_share,sampled_path_norm,sampled_total"
    );
    // (L + 1)(L + 2) / 2 rows; the sampled columns filled at unit 0 only.
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 7 * 8 / 2);
    assert!(rows
        .iter()
        .filter(|r| r.starts_with("0,"))
        .all(|r| !r.ends_with(",,")));
    assert!(rows
        .iter()
        .filter(|r| !r.starts_with("0,"))
        .all(|r| r.ends_with(",,")));
    let o = resprop(&["paths", "--units", "3", "--sample", "0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--sample: needs at least 1"),
        "{}",
        stderr(&o)
    );
}

/// `resprop shatter`: its table and CSVs; the references behave as references (white noise
/// decorrelates at once, brown noise slowly) and a bias-free net without normalisation keeps
/// a two-valued gradient (positively homogeneous in its scalar input).
#[test]
fn shatter_command_writes_the_autocorrelations() {
    let w = Work::new();
    Argv::new("shatter --depths 1,4 --width 16 --replicates 2")
        .flag("--csv", w.arg("s.csv"))
        .flag("--gradients-csv", w.arg("g.csv"))
        .ok();
    let text = w.read("s.csv");
    assert!(text.starts_with("net,depth,lag,autocorrelation\n"));
    // 4 families x 2 depths + 2 references, 256 lags each.
    assert_eq!(text.lines().count(), 1 + 10 * 256);
    assert!(text.contains("\nplain,1,0,1e0\n"), "lag 0 is 1");
    let g = w.read("g.csv");
    assert_eq!(g.lines().count(), 1 + 4 * 2 * 2 * 256);
    let plain: std::collections::BTreeSet<&str> = g
        .lines()
        .filter(|l| l.starts_with("plain,4,0,"))
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    assert!(
        plain.len() <= 3,
        "two values (and the kink's own): {plain:?}"
    );
    let o = resprop(&["shatter", "--depths", "0"]);
    assert!(
        !o.status.success() && stderr(&o).contains("--depths"),
        "{}",
        stderr(&o)
    );
}

/// Trained weights and real data for the analyses: a checkpoint's network is rebuilt from its
/// settings, loaded, and analysed on digits; a conflicting flag is refused in one line; the
/// lesions of a trained net run end to end.
#[test]
fn analyses_take_trained_weights_and_real_data() {
    let w = Work::new();
    Argv::new("train --net resnet:1:basic --placement full-preact --epochs 1")
        .flag("--checkpoint", w.arg("ck"))
        .ok();
    let weights = w.arg("ck/checkpoint.npz");
    let o = Argv::new("profile --net resnet:1:basic")
        .flag("--weights", &weights)
        .with(&["--data", "digits", "--batch", "16"])
        .flag("--csv", w.arg("p.csv"))
        .ok();
    let out = stdout(&o);
    assert!(
        out.contains("placement full-preact") && out.contains("batch from digits"),
        "{out}"
    );
    // The trained weights change the profile: the same command on a fresh net differs.
    Argv::new("profile --net resnet:1:basic --placement full-preact --data digits --batch 16")
        .flag("--csv", w.arg("fresh.csv"))
        .ok();
    assert_ne!(w.bytes("p.csv"), w.bytes("fresh.csv"));
    // Same seed, same batch: deterministic.
    Argv::new("profile")
        .flag("--weights", &weights)
        .with(&["--data", "digits", "--batch", "16"])
        .flag("--csv", w.arg("again.csv"))
        .ok();
    assert_eq!(w.bytes("p.csv"), w.bytes("again.csv"));
    let o = Argv::new("check")
        .flag("--weights", &weights)
        .with(&["--placement", "relu-preact", "--batch", "4"])
        .run();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--placement: checkpoint full-preact, asked relu-preact")
            && e.trim_end().lines().count() == 1,
        "{e}"
    );
    Argv::new("paths")
        .flag("--weights", &weights)
        .with(&["--data", "digits", "--batch", "8"])
        .ok();
    Argv::new("lesion")
        .flag("--weights", &weights)
        .flag("--draws", 2)
        .flag("--csv", w.arg("l.csv"))
        .ok();
    let text = w.read("l.csv");
    // Baseline, 3 single deletions, k = 1 with 2 draws.
    assert!(
        text.starts_with("kind,k,draw,deleted,test_error\nnone,0,0,,"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1 + 1 + 3 + 2);
    let o = resprop(&["lesion", "--net", "mlp"]);
    assert!(!o.status.success() && stderr(&o).contains("--weights"));
    let o = resprop(&["profile", "--data", "digits", "--batch", "5000"]);
    assert!(
        stderr(&o).contains("larger than the training split"),
        "{}",
        stderr(&o)
    );
}
