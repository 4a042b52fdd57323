//! Mutation tests of the verifier: inject one fault at a time into a hand-written backward
//! (a wrong factor of 1.001 on one term; `src/fault.rs`) and require `check` to report a
//! FAIL on a network that runs that code. A fault the verifier misses is a finding against
//! the verifier. One test, so that no two faults are ever active at once (the switch is
//! process-wide).
//!
//!     cargo test --release --test mutation -- --nocapture    # prints the table in docs/checks.md

use resprop::analysis::checks::{run_checks, CheckOptions, Status};
use resprop::analysis::gaussian_batch;
use resprop::fault::{self, Fault};
use resprop::layers::Mode;
use resprop::layers::NormKind;
use resprop::net::{InputSizes, NetDescription};
use resprop::rng::{derive_seed, purpose};
use resprop::unit::{ForwardCtx, Placement, Projection};

/// A network that runs the faulty code.
struct Target {
    net: &'static str,
    width: usize,
    batch: usize,
    placement: Placement,
    shortcut: &'static str,
    projection: Option<Projection>,
    mode: Mode,
    norm: NormKind,
    /// Fixup, its zero-started layers then moved off zero (at Fixup's start every gradient
    /// but the classifier's is 0, and no factor on it could show).
    fixup: bool,
}

fn mlp(placement: Placement, shortcut: &'static str) -> Target {
    Target {
        net: "mlp",
        width: 8,
        batch: 6,
        placement,
        shortcut,
        projection: None,
        mode: Mode::Train,
        norm: NormKind::Batch,
        fixup: false,
    }
}

fn conv(placement: Placement, shortcut: &'static str, projection: Projection) -> Target {
    Target {
        net: "resnet:1:basic",
        width: 8,
        batch: 3,
        placement,
        shortcut,
        projection: Some(projection),
        mode: Mode::Train,
        norm: NormKind::Batch,
        fixup: false,
    }
}

/// The networks each fault is tested on (a dense layer runs fused with its BatchNorm at width
/// 160 and batch 96, where its products are split in columns; on its own at width 8).
fn targets(f: Fault) -> Vec<Target> {
    use Placement::*;
    match f {
        Fault::DenseInputGrad | Fault::DenseWeightGrad => vec![
            mlp(Original, "identity"),
            Target {
                width: 160,
                batch: 96,
                ..mlp(FullPreact, "identity")
            },
        ],
        Fault::DenseBiasGrad => vec![mlp(Original, "identity")],
        Fault::ConvInputGrad | Fault::ConvWeightGrad | Fault::PoolGrad => {
            vec![conv(Original, "identity", Projection::Bn)]
        }
        Fault::ConvBiasGrad => vec![conv(FullPreact, "gate:-2", Projection::Plain)],
        Fault::BnMeanTerm | Fault::BnVarianceTerm | Fault::BnGammaGrad | Fault::BnBetaGrad => {
            vec![
                mlp(Original, "identity"),
                conv(FullPreact, "identity", Projection::Plain),
            ]
        }
        Fault::BnEvalScale => vec![Target {
            mode: Mode::Eval,
            ..mlp(Original, "identity")
        }],
        Fault::ReluGrad => vec![mlp(Original, "identity")],
        Fault::SigmoidGrad | Fault::GateDirectFactor | Fault::GatePathTerm => {
            vec![mlp(FullPreact, "shortcut-gate:-1")]
        }
        Fault::ExclusiveGateBranchFactor | Fault::ExclusiveGateBranchTerm => {
            vec![mlp(FullPreact, "gate:-1")]
        }
        Fault::PadShortcutGrad => vec![conv(FullPreact, "identity", Projection::Pad)],
        Fault::LossGrad => vec![mlp(FullPreact, "identity")],
        Fault::FusedIdentityResidual | Fault::IdentityShortcutVjp => {
            vec![mlp(FullPreact, "identity")]
        }
        Fault::ScaleShortcutVjp => vec![mlp(FullPreact, "scale:0.7")],
        Fault::ScaleBranchVjp => vec![mlp(FullPreact, "scale:0.5:0.5")],
        Fault::ProjectionShortcutVjp => vec![
            mlp(FullPreact, "conv1x1"),
            conv(Original, "identity", Projection::Bn),
        ],
        Fault::DropoutShortcutVjp => vec![mlp(FullPreact, "dropout:0.3")],
        Fault::ScalarBiasGrad => vec![
            Target {
                norm: NormKind::None,
                fixup: true,
                ..mlp(Original, "identity")
            },
            Target {
                norm: NormKind::None,
                fixup: true,
                ..conv(FullPreact, "identity", Projection::Plain)
            },
        ],
        Fault::BranchScaleGrad | Fault::BranchScaleInputGrad => vec![
            mlp(FullPreact, "alpha:0.3"),
            conv(FullPreact, "layerscale:0.2", Projection::Plain),
        ],
        Fault::LnMeanTerm | Fault::LnVarianceTerm | Fault::LnGammaGrad => vec![
            Target {
                norm: NormKind::Layer,
                ..mlp(Original, "identity")
            },
            Target {
                norm: NormKind::Layer,
                ..conv(FullPreact, "identity", Projection::Plain)
            },
        ],
    }
}

/// The rows `check` fails on `t` with the injected fault, as `check: what (error)`.
fn failures(t: &Target) -> Vec<String> {
    let input = InputSizes {
        input_dim: 10,
        image_size: 8,
        input_channels: 3,
        classes: 5,
    };
    let net = NetDescription {
        net: t.net.parse().unwrap(),
        units: 4,
        width: t.width,
        placement: t.placement,
        shortcut: t.shortcut.parse().unwrap(),
        projection: t.projection,
        norm: t.norm,
        init: if t.fixup {
            resprop::net::Init::Fixup
        } else {
            resprop::net::Init::He
        },
    }
    .build(&input, 11)
    .unwrap();
    let mut net = net;
    if t.fixup {
        let mut r = resprop::rng::rng(12);
        net.visit_params_mut(&mut |_, p| {
            *p = &*p + &resprop::rng::gaussian(p.shape(), 0.2, &mut r);
        });
    }
    let (x, y) = gaussian_batch(&net.input_shape, t.batch, net.classes, 11);
    let ctx = ForwardCtx {
        mode: t.mode,
        dropout_seed: derive_seed(11, &[purpose::DROPOUT]),
        keep_branch: true,
        weight_grads: true,
    };
    let report = run_checks(
        &net,
        &x,
        &y,
        &ctx,
        &CheckOptions {
            directions: 2,
            seed: 3,
            force: false,
        },
        &resprop::interrupt::Interrupt::new(),
    )
    .unwrap();
    report
        .rows
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| {
            let what = r.what.split(':').next().unwrap_or(&r.what);
            format!("{} / {what} ({:.1e})", r.check, r.worst.unwrap_or(f64::NAN))
        })
        .collect()
}

#[test]
fn check_fails_on_every_injected_fault() {
    // Without a fault, every target passes.
    fault::inject(None);
    for f in Fault::ALL {
        for t in targets(f) {
            assert!(
                failures(&t).is_empty(),
                "{f:?}: {} {} {} fails with no fault",
                t.net,
                t.placement,
                t.shortcut
            );
        }
    }
    let mut missed = Vec::new();
    println!("| injected fault (x 1.001) | network | rows that FAIL (worst relative error) |");
    println!("|---|---|---|");
    for f in Fault::ALL {
        for t in targets(f) {
            fault::inject(Some(f));
            let failed = failures(&t);
            fault::inject(None);
            let net = format!(
                "{} (width {}, batch {}) {} {}{}{}",
                t.net,
                t.width,
                t.batch,
                t.placement,
                t.shortcut,
                t.projection
                    .map_or(String::new(), |p| format!(" projection {p}")),
                if t.mode == Mode::Eval {
                    ", BN eval"
                } else {
                    ""
                }
            );
            println!(
                "| {f:?} | {net} | {} |",
                if failed.is_empty() {
                    "MISSED".to_string()
                } else {
                    failed.join("; ")
                }
            );
            if failed.is_empty() {
                missed.push(format!("{f:?} on {net}"));
            }
        }
    }
    assert!(missed.is_empty(), "check missed: {missed:?}");
}
