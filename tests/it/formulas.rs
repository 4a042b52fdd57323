//! The paper's formulas, verified numerically on whole networks (library API).

use resprop::analysis::checks::{run_checks, CheckOptions, Status};
use resprop::analysis::gaussian_batch;
use resprop::analysis::record::build_records;
use resprop::layers::Mode;
use resprop::net::{build_mlp, MlpConfig};
use resprop::unit::spec::shortcut_examples;
use resprop::unit::{ForwardCtx, Placement, ShortcutKind};

fn config(units: usize, width: usize, placement: Placement, shortcut: &str) -> MlpConfig {
    MlpConfig {
        units,
        width,
        input_dim: 16,
        classes: 10,
        placement,
        shortcut: shortcut.parse().unwrap(),
        norm: resprop::layers::NormKind::Batch,
        init: resprop::net::Init::He,
        seed: 3,
    }
}

/// `run_checks` with `directions` random directions per target, drawn from `seed`.
fn checks(
    net: &resprop::net::Network,
    x: &resprop::tensor::Tensor,
    y: &[usize],
    ctx: &ForwardCtx,
    directions: usize,
    seed: u64,
) -> resprop::analysis::checks::CheckReport {
    run_checks(
        net,
        x,
        y,
        ctx,
        &CheckOptions {
            directions,
            seed,
            force: false,
        },
        &resprop::interrupt::Interrupt::new(),
    )
    .unwrap()
}

fn ctx() -> ForwardCtx {
    ForwardCtx {
        mode: Mode::Train,
        dropout_seed: 9,
        keep_branch: true,
        weight_grads: true,
    }
}

/// Whole-network check (finite differences at x_l and parameters, Eq. 4/5/7/8, prod lambda)
/// for every placement x shortcut: every applicable check passes; the forward sum and prod
/// lambda checks are measured exactly where the paper's derivation applies.
#[test]
fn every_check_passes_on_every_variant() {
    for placement in Placement::ALL {
        for (shortcut, kind) in shortcut_examples(placement, resprop::layers::NormKind::Batch) {
            let cfg = config(8, 12, placement, shortcut);
            let net = build_mlp(&cfg).unwrap();
            let (x, y) = gaussian_batch(&net.input_shape, 6, 10, 1);
            let report = checks(&net, &x, &y, &ctx(), 2, 5);
            for row in &report.rows {
                assert_ne!(
                    row.status,
                    Status::Fail,
                    "{placement} {shortcut}: {} {} worst {:?}",
                    row.check,
                    row.what,
                    row.worst
                );
            }
            let applies = placement.after_add_is_identity() && kind.constant_lambda().is_some();
            for name in ["forward sum", "prod lambda"] {
                let row = report.rows.iter().find(|r| r.check == name).unwrap();
                assert_eq!(
                    matches!(row.status, Status::NotApplicable(_)),
                    !applies,
                    "{placement} {shortcut}: {name} applicability"
                );
            }
            let fd_rows = report
                .rows
                .iter()
                .filter(|r| r.check == "finite differences")
                .count();
            assert!(
                fd_rows >= 7,
                "{placement} {shortcut}: {fd_rows} finite-difference rows"
            );
        }
    }
}

fn resnet(name: &str, placement: Placement, shortcut: &str) -> resprop::net::Network {
    let (units_per_stage, block) = resprop::net::resnet::parse_resnet_name(name).unwrap();
    resprop::net::build_resnet(&resprop::net::ResnetConfig {
        name: name.into(),
        units_per_stage,
        block,
        image_size: 8,
        input_channels: 3,
        classes: 10,
        placement,
        shortcut: shortcut.parse().unwrap(),
        projection: resprop::unit::Projection::default_for(placement),
        norm: resprop::layers::NormKind::Batch,
        init: resprop::net::Init::He,
        seed: 2,
    })
    .unwrap()
}

/// Whole-network checks on small CIFAR ResNets for every placement: finite differences and,
/// within each stage, the formulas.
#[test]
fn resnets_pass_every_check_for_every_placement() {
    for name in ["resnet:2:basic", "resnet:1:bottleneck"] {
        for placement in Placement::ALL {
            let net = resnet(name, placement, "identity");
            let (x, y) = gaussian_batch(&net.input_shape, 3, 10, 1);
            let report = checks(&net, &x, &y, &ctx(), 1, 5);
            for row in &report.rows {
                assert_ne!(
                    row.status,
                    Status::Fail,
                    "{name} {placement}: {} {} worst {:?}",
                    row.check,
                    row.what,
                    row.worst
                );
            }
            // Within a stage the paper's derivation applies exactly when f is the identity (and
            // some stage has a unit that keeps the shape: not so with one bottleneck per stage).
            let forward = report
                .rows
                .iter()
                .find(|r| r.check == "forward sum")
                .unwrap();
            let applies = placement.after_add_is_identity() && name == "resnet:2:basic";
            assert_eq!(
                matches!(forward.status, Status::Pass),
                applies,
                "{name} {placement}"
            );
        }
    }
}

/// The direct part restarts at every stage's top; within a stage of identity units it is the
/// stage top's gradient exactly.
#[test]
fn resnet_direct_part_restarts_per_stage() {
    let net = resnet("resnet:3:basic", Placement::FullPreact, "identity");
    let (x, y) = gaussian_batch(&net.input_shape, 4, 10, 3);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let profile = build_records(&net, &cache, &net.backward(&cache, &y, None));
    let stages: Vec<usize> = profile.records.iter().map(|r| r.stage).collect();
    assert_eq!(stages, vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
    let tops: Vec<usize> = profile.records.iter().map(|r| r.direct_top).collect();
    assert_eq!(tops, vec![3, 3, 3, 3, 6, 6, 6, 9, 9, 9]);
    let changes: Vec<usize> = profile
        .records
        .iter()
        .filter(|r| r.shape_change)
        .map(|r| r.unit)
        .collect();
    assert_eq!(changes, vec![3, 6]);
    assert!(profile
        .records
        .iter()
        .all(|r| r.direct_ratio == 1.0 && r.predicted_direct_ratio == Some(1.0)));
}

/// With `--projection pad` the shortcut is an identity on the old channels, so the direct
/// part carries on across the stage changes: `D_l = P^T D_{l+1}` at a padded unit, the
/// transpose of "keep every second pixel, zero-pad the new channels". Its norm, measured
/// against `dE/dx_L`, is the part of `dE/dx_L` that sits on the first stage's channels at
/// the pixels both subsamplings keep: computed here by indexing `dE/dx_L` directly.
#[test]
fn padded_stage_changes_carry_the_direct_part() {
    let (units_per_stage, block) =
        resprop::net::resnet::parse_resnet_name("resnet:2:basic").unwrap();
    let net = resprop::net::build_resnet(&resprop::net::ResnetConfig {
        name: "resnet:2:basic".into(),
        units_per_stage,
        block,
        image_size: 8,
        input_channels: 3,
        classes: 10,
        placement: Placement::FullPreact,
        shortcut: ShortcutKind::Identity,
        projection: resprop::unit::Projection::Pad,
        norm: resprop::layers::NormKind::Batch,
        init: resprop::net::Init::He,
        seed: 4,
    })
    .unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 4, 10, 3);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let grads = net.backward(&cache, &y, None);
    let profile = build_records(&net, &cache, &grads);
    assert!(
        profile.records.iter().all(|r| r.direct_top == 6),
        "one path to L"
    );
    let g_top = &grads.grad_x[6]; // (4, 64, 2, 2)
                                  // The transposes place values, never mix them: D_l in stage 2 (32 channels of 4x4) holds
                                  // g_top's channels 0..32 at every second pixel and zeros elsewhere, and in stage 1 (16
                                  // channels of 8x8) its channels 0..16 at every fourth: only which channels survive
                                  // changes the norm.
    let kept = |channels: usize| {
        let part = g_top.slice(ndarray::s![.., ..channels, .., ..]);
        part.iter().map(|v| v * v).sum::<f64>().sqrt() / resprop::tensor::norm(g_top)
    };
    let (stage2, stage1) = (kept(32), kept(16));
    for r in &profile.records {
        let want = match r.stage {
            2 => 1.0,
            1 => stage2,
            _ => stage1,
        };
        assert!(
            (r.direct_ratio - want).abs() < 1e-12,
            "unit {}: direct ratio {} against {want}",
            r.unit,
            r.direct_ratio
        );
    }
    assert!(stage1 < stage2 && stage2 < 1.0);
    // And the independent check (forward passes through the padded shortcuts) agrees.
    let report = checks(&net, &x, &y, &ctx(), 2, 1);
    let row = report
        .rows
        .iter()
        .find(|r| r.check == "shortcut path")
        .unwrap();
    assert_eq!(row.status, Status::Pass, "{row:?}");
}

/// The verifier's false-alarm rate: `check` on 80 random small networks (MLP and conv, every
/// placement, shortcut, projection and BN mode, batches of 2 to 8) finds nothing wrong with a
/// correct engine. `resprop bench --workload check-sweep` runs the same sweep at any size
/// (2,000 configurations: 0 FAIL).
#[test]
fn the_verifier_raises_no_false_alarm_on_random_networks() {
    let mut inconclusive = 0;
    for i in 0..80 {
        let r = resprop::analysis::sweep::run_one(0, i).unwrap();
        assert!(
            r.failed.is_empty(),
            "{}: {:?}",
            r.config.command(),
            r.failed
        );
        inconclusive += usize::from(!r.inconclusive.is_empty());
    }
    assert!(inconclusive <= 4, "{inconclusive} of 80 inconclusive");
}

/// The configuration that used to fail on finite differences (batch 4, BN after the addition,
/// exclusive gates) passes: its gradient is right (NumPy and PyTorch agree to 1e-12).
#[test]
fn the_former_false_alarm_passes() {
    let net = resprop::net::NetDescription {
        units: 6,
        width: 16,
        placement: Placement::BnAfterAdd,
        shortcut: "gate:-6".parse().unwrap(),
        ..resprop::net::NetDescription::default()
    }
    .build(
        &resprop::net::InputSizes {
            input_dim: 64,
            image_size: 32,
            input_channels: 3,
            classes: 10,
        },
        7,
    )
    .unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 4, 10, 7);
    let ctx = ForwardCtx {
        dropout_seed: resprop::rng::derive_seed(7, &[resprop::rng::purpose::DROPOUT]),
        ..ctx()
    };
    let report = checks(&net, &x, &y, &ctx, 3, 7);
    for row in &report.rows {
        assert!(
            matches!(row.status, Status::Pass | Status::NotApplicable(_)),
            "{row:?}"
        );
    }
}

/// Eq. 8: with h = lambda x and f = identity the direct part is exactly prod lambda.
#[test]
fn scaled_shortcut_direct_ratio_is_prod_lambda() {
    for (lambda, units) in [(0.5f64, 50usize), (0.9, 30), (1.1, 30)] {
        let cfg = config(units, 16, Placement::FullPreact, &format!("scale:{lambda}"));
        let net = build_mlp(&cfg).unwrap();
        let (x, y) = gaussian_batch(&net.input_shape, 8, 10, 2);
        let cache = net.forward(&x, &y, &ctx()).unwrap();
        let grads = net.backward(&cache, &y, None);
        let profile = build_records(&net, &cache, &grads);
        for r in &profile.records {
            let predicted = lambda.powi((units - r.unit) as i32);
            assert_eq!(
                r.predicted_direct_ratio.unwrap(),
                (r.unit..units).fold(1.0, |a, _| a * lambda)
            );
            let rel = (r.direct_ratio - predicted).abs() / predicted;
            assert!(
                rel < 1e-12,
                "lambda {lambda} unit {}: {} vs {predicted}",
                r.unit,
                r.direct_ratio
            );
        }
    }
    // 0.5^50 = 8.9e-16: the direct term all but vanishes, as the paper argues.
    assert!(0.5f64.powi(50) < 1e-15);
}

/// Eq. 5: identity shortcuts with f = identity carry dE/dx_L unchanged to every unit.
#[test]
fn identity_shortcut_direct_part_is_top_gradient() {
    let net = build_mlp(&config(20, 16, Placement::FullPreact, "identity")).unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 8, 10, 4);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let profile = build_records(&net, &cache, &net.backward(&cache, &y, None));
    for r in &profile.records {
        assert_eq!(r.direct_ratio, 1.0, "unit {}", r.unit);
        assert_eq!(r.predicted_direct_ratio, Some(1.0));
        // The rest is what the branches added: the whole gradient is not just the direct term.
        if r.unit < 20 {
            assert!(r.rest_norm > 0.0);
        }
    }
}

/// With a ReLU after the addition the direct path is gated: no prediction, and the measured
/// direct part is smaller than dE/dx_L.
#[test]
fn after_addition_relu_gates_the_direct_part() {
    let net = build_mlp(&config(20, 16, Placement::Original, "identity")).unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 8, 10, 4);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let profile = build_records(&net, &cache, &net.backward(&cache, &y, None));
    assert_eq!(profile.records[0].predicted_direct_ratio, None);
    assert!(profile.records[0].direct_ratio < 1.0);
}

/// lambda = 2 over 1100 units overflows: reported with the first unit, never silently.
#[test]
fn overflow_is_reported_with_first_unit() {
    let net = build_mlp(&config(1100, 4, Placement::FullPreact, "scale:2")).unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 4, 10, 4);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let profile = build_records(&net, &cache, &net.backward(&cache, &y, None));
    let act = profile
        .nonfinite
        .iter()
        .find(|n| n.column == resprop::schema::col::ACT_NORM)
        .expect("act_norm overflow reported");
    // ||x_l|| ~ 2^l: f64 overflows past 2^1024.
    assert!(
        act.first_unit > 1000 && act.first_unit < 1100,
        "first unit {}",
        act.first_unit
    );
    assert!(profile.records[act.first_unit - 1].act_norm.is_finite());
    assert!(!profile.records[act.first_unit].act_norm.is_finite());
}

#[test]
fn invalid_batches_are_rejected_with_the_value() {
    let net = build_mlp(&config(2, 4, Placement::Original, "identity")).unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 1, 10, 4);
    let e = net.forward(&x, &y, &ctx()).unwrap_err().to_string();
    assert!(e.contains("batch of 1") && e.contains("BatchNorm"), "{e}");
    let (mut x, y) = gaussian_batch(&net.input_shape, 3, 10, 4);
    x[[1, 2]] = f64::NAN;
    let e = net.forward(&x, &y, &ctx()).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    let (x, _) = gaussian_batch(&net.input_shape, 3, 10, 4);
    let e = net
        .forward(&x, &[0, 1, 10], &ctx())
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 10"), "{e}");
    // Eval mode normalises with running statistics, so one sample is fine.
    let (x, y) = gaussian_batch(&net.input_shape, 1, 10, 4);
    assert!(net
        .forward(
            &x,
            &y,
            &ForwardCtx {
                mode: Mode::Eval,
                dropout_seed: 0,
                keep_branch: true,
                weight_grads: true,
            }
        )
        .is_ok());
}

#[test]
fn running_statistics_update_after_a_training_pass() {
    let mut net = build_mlp(&config(2, 4, Placement::Original, "identity")).unwrap();
    let (x, y) = gaussian_batch(&net.input_shape, 8, 10, 4);
    let cache = net.forward(&x, &y, &ctx()).unwrap();
    let mut before = Vec::new();
    net.visit_buffers(&mut |_, t| before.push(t.clone()));
    net.update_running_stats(&cache);
    let mut after = Vec::new();
    net.visit_buffers(&mut |_, t| after.push(t.clone()));
    assert_eq!(before.len(), after.len());
    assert!(
        before.iter().zip(&after).all(|(b, a)| b != a),
        "every BN's running statistics moved"
    );
}

/// ReZero and SkipInit at zero (`alpha:0`): the branch adds nothing at initialisation, so
/// every `x_l` is `x_0` and `dE/dx_l` is its direct part exactly (the rest is 0, not small),
/// with or without normalisation, across the ResNets' stage changes too; the scale's own
/// gradient does not vanish.
#[test]
fn rezero_gradient_is_its_direct_part_exactly() {
    use resprop::grads::Grads;
    use resprop::layers::NormKind;
    use resprop::net::{InputSizes, NetChoice, NetDescription};
    let input = InputSizes {
        input_dim: 12,
        image_size: 8,
        input_channels: 3,
        classes: 10,
    };
    for (net, norm, placement) in [
        ("mlp", NormKind::None, Placement::FullPreact),
        ("mlp", NormKind::Batch, Placement::Original),
        ("mlp", NormKind::Layer, Placement::PreNorm),
        ("resnet:2:basic", NormKind::None, Placement::FullPreact),
    ] {
        let choice: NetChoice = net.parse().unwrap();
        let net = NetDescription {
            net: choice.clone(),
            units: 6,
            width: 16,
            placement,
            shortcut: "rezero".parse().unwrap(),
            norm,
            ..NetDescription::default()
        }
        .build(&input, 3)
        .unwrap();
        let (x, y) = gaussian_batch(&net.input_shape, 8, 10, 3);
        let cache = net.forward(&x, &y, &ctx()).unwrap();
        let mut grads = Grads::new();
        let back = net.backward(&cache, &y, Some(&mut grads));
        let profile = build_records(&net, &cache, &back);
        let tag = format!("{net:?} {norm} {placement}", net = choice);
        for r in &profile.records {
            assert_eq!(r.rest_norm, 0.0, "{tag}: unit {}", r.unit);
            assert_eq!(
                r.direct_norm.to_bits(),
                r.grad_norm.to_bits(),
                "{tag}: unit {}",
                r.unit
            );
            if let Some(b) = r.branch_norm {
                assert_eq!(b, 0.0, "{tag}: unit {}: the branch term", r.unit);
            }
        }
        let a = grads
            .get("unit0.scale.a")
            .expect("the scale has a gradient");
        assert!(a[[0]] != 0.0, "{tag}: dE/da = {}", a[[0]]);
    }
}

/// DeepNorm resolves with the depth: `a = (2L)^(1/4)` on the shortcut, the branch weights
/// started at `b = (8L)^(-1/4)` times the identity net's (same seed), and `check` passes.
#[test]
fn deepnorm_constants_follow_the_depth() {
    use resprop::layers::NormKind;
    use resprop::net::{InputSizes, NetDescription};
    let input = InputSizes {
        input_dim: 12,
        image_size: 8,
        input_channels: 3,
        classes: 10,
    };
    let build = |shortcut: &str| {
        NetDescription {
            units: 24,
            width: 8,
            placement: Placement::PostNorm,
            shortcut: shortcut.parse().unwrap(),
            norm: NormKind::Layer,
            ..NetDescription::default()
        }
        .build(&input, 5)
        .unwrap()
    };
    let (deep, plain) = (build("deepnorm"), build("identity"));
    let (a, b) = (48f64.powf(0.25), 192f64.powf(-0.25));
    // Python: 48 ** 0.25, 192 ** -0.25.
    assert!((a - 2.6321480259049848).abs() < 1e-15 && (b - 0.2686424829558855).abs() < 1e-15);
    for (ud, up) in deep.units.iter().zip(&plain.units) {
        assert_eq!(ud.shortcut, ShortcutKind::DeepNorm { alpha: a });
        for (od, op) in ud.branch.iter().zip(&up.branch) {
            if let (resprop::unit::Op::Dense(dd), resprop::unit::Op::Dense(dp)) = (od, op) {
                assert_eq!(dd.w, &dp.w * b, "{}", dd.name);
            }
        }
    }
    let (x, y) = gaussian_batch(&deep.input_shape, 8, 10, 5);
    let report = checks(&deep, &x, &y, &ctx(), 2, 5);
    for row in &report.rows {
        assert!(
            matches!(row.status, Status::Pass | Status::NotApplicable(_)),
            "{row:?}"
        );
    }
}

/// Fixup's start: the branches' first weight layers are He's times L^(-1/2), their last and
/// the classifier are 0, so every dE/dx_l is exactly 0; moved off that start, every check
/// passes on its scalar biases and multipliers too.
#[test]
fn fixup_starts_as_its_paper_says_and_checks_pass() {
    use resprop::layers::NormKind;
    use resprop::net::{Init, InputSizes, NetDescription};
    use resprop::unit::Op;
    let input = InputSizes {
        input_dim: 12,
        image_size: 8,
        input_channels: 3,
        classes: 10,
    };
    for (net, placement) in [
        ("mlp", Placement::Original),
        ("resnet:1:basic", Placement::FullPreact),
    ] {
        let build = |init| {
            NetDescription {
                net: net.parse().unwrap(),
                units: 6,
                width: 8,
                placement,
                norm: NormKind::None,
                init,
                ..NetDescription::default()
            }
            .build(&input, 9)
            .unwrap()
        };
        let (fixup, he) = (build(Init::Fixup), build(Init::He));
        let l = fixup.num_units() as f64;
        for (uf, uh) in fixup.units.iter().zip(&he.units) {
            let weights = |ops: &[Op]| -> Vec<resprop::tensor::Tensor> {
                ops.iter()
                    .filter_map(|o| match o {
                        Op::Dense(d) => Some(d.w.clone()),
                        Op::Conv(c) => Some(c.w.clone()),
                        _ => None,
                    })
                    .collect()
            };
            let (wf, wh) = (weights(&uf.branch), weights(&uh.branch));
            assert_eq!(wf[0], &wh[0] * l.powf(-0.5), "{net}: first layer");
            assert!(wf[1].iter().all(|&v| v == 0.0), "{net}: last layer");
        }
        let (x, y) = gaussian_batch(&fixup.input_shape, 6, 10, 9);
        let cache = fixup.forward(&x, &y, &ctx()).unwrap();
        let back = fixup.backward(&cache, &y, None);
        assert!(
            back.grad_x.iter().all(|g| g.iter().all(|&v| v == 0.0)),
            "{net}"
        );
        let mut moved = fixup.clone();
        let mut r = resprop::rng::rng(4);
        moved.visit_params_mut(&mut |_, p| {
            *p = &*p + &resprop::rng::gaussian(p.shape(), 0.2, &mut r);
        });
        let report = checks(&moved, &x, &y, &ctx(), 2, 9);
        for row in &report.rows {
            assert!(
                matches!(row.status, Status::Pass | Status::NotApplicable(_)),
                "{net}: {row:?}"
            );
        }
    }
}
