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

/// An imported model of tests/onnx (exported from PyTorch by tests/onnx/make_fixtures.py):
/// `net` names the file.
fn model(file: &'static str, mode: Mode) -> Target {
    Target {
        net: file,
        batch: 3,
        mode,
        ..mlp(Placement::Original, "identity")
    }
}

/// The imported networks that run each fault's code: torchvision's BasicBlock net (conv, BN,
/// ReLU, max pooling, identity and projection shortcuts, global pooling, dense head) and a
/// Pre-LN MLP (LayerNorm, dense layers), as `--model` runs them.
fn imported_targets(f: Fault) -> Vec<Target> {
    match f {
        Fault::ConvInputGrad
        | Fault::ConvWeightGrad
        | Fault::PoolGrad
        | Fault::BnMeanTerm
        | Fault::BnVarianceTerm
        | Fault::BnGammaGrad
        | Fault::BnBetaGrad
        | Fault::ReluGrad
        | Fault::LossGrad
        | Fault::IdentityShortcutVjp
        | Fault::ProjectionShortcutVjp => vec![model("basic.onnx", Mode::Train)],
        Fault::BnEvalScale => vec![model("basic.onnx", Mode::Eval)],
        Fault::DenseInputGrad
        | Fault::DenseWeightGrad
        | Fault::DenseBiasGrad
        | Fault::LnMeanTerm
        | Fault::LnVarianceTerm
        | Fault::LnGammaGrad => vec![model("preln.onnx", Mode::Train)],
        // Code an imported network of these fixtures does not run (the fused engine, the
        // built-in shortcut kinds, Fixup's biases).
        Fault::ConvBiasGrad
        | Fault::SigmoidGrad
        | Fault::PadShortcutGrad
        | Fault::FusedIdentityResidual
        | Fault::ScaleShortcutVjp
        | Fault::ScaleBranchVjp
        | Fault::GateDirectFactor
        | Fault::GatePathTerm
        | Fault::ExclusiveGateBranchFactor
        | Fault::ExclusiveGateBranchTerm
        | Fault::DropoutShortcutVjp
        | Fault::BranchScaleGrad
        | Fault::BranchScaleInputGrad
        | Fault::ScalarBiasGrad => vec![],
    }
}

/// The networks each fault is tested on: the built-in ones that run its code, then the
/// imported ones.
fn targets(f: Fault) -> Vec<Target> {
    let mut t = builtin_targets(f);
    t.extend(imported_targets(f));
    t
}

/// The built-in networks each fault is tested on (a dense layer runs fused with its BatchNorm at width
/// 160 and batch 96, where its products are split in columns; on its own at width 8).
fn builtin_targets(f: Fault) -> Vec<Target> {
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

/// A built-in network as `t` describes it.
fn builtin(t: &Target) -> resprop::net::Network {
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
    net
}

/// The rows `check` fails on `t` with the injected fault, as `check: what (error)`.
fn failures(t: &Target) -> Vec<String> {
    let net = if t.net.ends_with(".onnx") {
        let path = format!("{}/tests/onnx/{}", env!("CARGO_MANIFEST_DIR"), t.net);
        let graph = resprop::import::Graph::load(std::path::Path::new(&path), "model").unwrap();
        let found = resprop::import::find(&graph).unwrap();
        resprop::import::build::network(&graph, &found, t.net, "").unwrap()
    } else {
        builtin(t)
    };
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
            let net = if t.net.ends_with(".onnx") {
                format!(
                    "--model tests/onnx/{} (batch {}){}",
                    t.net,
                    t.batch,
                    if t.mode == Mode::Eval {
                        ", BN eval"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
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
                )
            };
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
