//! The paper's formulas, verified numerically on whole networks (library API).

use resprop::analysis::checks::{run_checks, CheckOptions, Status};
use resprop::analysis::gaussian_batch;
use resprop::analysis::record::build_records;
use resprop::layers::Mode;
use resprop::net::{build_mlp, MlpConfig};
use resprop::unit::{ForwardCtx, Placement, ShortcutKind};

const SHORTCUTS: [&str; 8] = [
    "identity",
    "scale:0.5",
    "scale:0.5:0.5",
    "gate:-6",
    "shortcut-gate:0",
    "conv1x1",
    "dropout:0.5",
    "none",
];

fn config(units: usize, width: usize, placement: Placement, shortcut: &str) -> MlpConfig {
    MlpConfig {
        units,
        width,
        input_dim: 16,
        classes: 10,
        placement,
        shortcut: shortcut.parse().unwrap(),
        seed: 3,
    }
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
        for shortcut in SHORTCUTS {
            let cfg = config(8, 12, placement, shortcut);
            let net = build_mlp(&cfg).unwrap();
            let (x, y) = gaussian_batch(&net.input_shape, 6, 10, 1);
            let report = run_checks(
                &net,
                &x,
                &y,
                &ctx(),
                &CheckOptions {
                    directions: 2,
                    seed: 5,
                },
            )
            .unwrap();
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
            let kind: ShortcutKind = shortcut.parse().unwrap();
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
            let report = run_checks(
                &net,
                &x,
                &y,
                &ctx(),
                &CheckOptions {
                    directions: 1,
                    seed: 5,
                },
            )
            .unwrap();
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
        .find(|n| n.column == "act_norm")
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
