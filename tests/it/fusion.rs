//! The engine fuses ops for speed (BN-ReLU, BN-ReLU-conv, dense+BN, the shortcut addition
//! inside the last layer, BN statistics handed from the op that wrote a tensor to the
//! BatchNorm that reads it). None of that may change a number: every network, run by the
//! fused engine and by the plain layer-by-layer interpreter (`--unfused`, `Fusion::Plain`),
//! must give the same loss, every `x_l`, every `dE/dx_l` and every parameter gradient.
//! Equal means bit for bit; the bound allowed by the design (1e-12 relative, where an
//! operation order had to change) is never needed so far, and the test says so if it is.

use resprop::analysis::gaussian_batch;
use resprop::grads::Grads;
use resprop::layers::{Mode, NormKind};
use resprop::net::{InputSizes, Keep, NetChoice, NetDescription, Network};
use resprop::tensor::Tensor;
use resprop::unit::spec::shortcut_examples;
use resprop::unit::{ForwardCtx, Fusion, Placement, Projection};

/// The largest relative difference of two tensors (0 when bit-identical), by elements:
/// `|a - b| / max(|a|, |b|, tiny)`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| {
            if x.to_bits() == y.to_bits() {
                0.0
            } else {
                (x - y).abs() / x.abs().max(y.abs()).max(f64::MIN_POSITIVE)
            }
        })
        .fold(0.0, f64::max)
}

/// Everything one pass produces: loss, each x_l, each dE/dx_l, each parameter gradient.
struct Pass {
    loss: f64,
    xs: Vec<Tensor>,
    grad_x: Vec<Tensor>,
    grads: Grads,
}

fn run(net: &Network, input: &Tensor, labels: &[usize], mode: Mode, keep: Keep) -> Pass {
    let ctx = ForwardCtx {
        mode,
        dropout_seed: 17,
        keep_branch: false,
        weight_grads: true,
    };
    let cache = net.forward_with(input, labels, &ctx, keep).unwrap();
    let mut grads = Grads::new();
    let back = net.backward(&cache, labels, Some(&mut grads));
    Pass {
        loss: cache.loss,
        xs: (0..=net.num_units()).map(|l| cache.x(l).clone()).collect(),
        grad_x: back.grad_x,
        grads,
    }
}

/// Runs `net` fused and plain (both Keep modes, training and evaluation BN) and returns the
/// largest relative difference found, naming where; panics above 1e-12.
fn assert_plain_equals_fused(mut net: Network, batch: usize, what: &str) -> f64 {
    let (input, labels) = gaussian_batch(&net.input_shape, batch, net.classes, 11);
    let mut worst = 0.0f64;
    for mode in [Mode::Train, Mode::Eval] {
        net.set_fusion(Fusion::Fused);
        let fused = run(&net, &input, &labels, mode, Keep::All);
        let fused_low = run(&net, &input, &labels, mode, Keep::Inputs);
        net.set_fusion(Fusion::Plain);
        let plain = run(&net, &input, &labels, mode, Keep::All);
        for (other, label) in [(&plain, "plain"), (&fused_low, "fused, inputs kept")] {
            let mut diffs = vec![(
                "loss".to_string(),
                rel_diff(
                    &Tensor::from_elem(ndarray::IxDyn(&[1]), fused.loss),
                    &Tensor::from_elem(ndarray::IxDyn(&[1]), other.loss),
                ),
            )];
            for (l, (a, b)) in fused.xs.iter().zip(&other.xs).enumerate() {
                diffs.push((format!("x_{l}"), rel_diff(a, b)));
            }
            for (l, (a, b)) in fused.grad_x.iter().zip(&other.grad_x).enumerate() {
                diffs.push((format!("dE/dx_{l}"), rel_diff(a, b)));
            }
            assert_eq!(
                fused.grads.len(),
                other.grads.len(),
                "{what}, {mode:?}: parameter count"
            );
            for (name, g) in fused.grads.iter() {
                let h = other
                    .grads
                    .get(name)
                    .unwrap_or_else(|| panic!("{what}: {label} has no gradient of {name}"));
                diffs.push((format!("dE/d{name}"), rel_diff(g, h)));
            }
            for (where_, d) in diffs {
                assert!(
                    d <= 1e-12,
                    "{what}, BN {mode:?}, {label}: {where_} differs by {d:.2e} relative"
                );
                worst = worst.max(d);
            }
        }
    }
    worst
}

fn input(image_size: usize) -> InputSizes {
    InputSizes {
        input_dim: 7,
        image_size,
        input_channels: 3,
        classes: 10,
    }
}

#[test]
fn plain_interpreter_equals_the_fused_mlp_for_every_placement_and_shortcut() {
    // Width 12: BN-ReLU passes fused; width 160 with batch 96: the dense layers run fused
    // with their BatchNorms too (products large enough to split in columns).
    let mut worst = 0.0f64;
    for (units, width, batch) in [(4, 12, 9), (2, 160, 96)] {
        for placement in Placement::ALL {
            for (sc, shortcut) in shortcut_examples(placement, NormKind::Batch) {
                let net = NetDescription {
                    net: NetChoice::Mlp,
                    units,
                    width,
                    placement,
                    shortcut,
                    ..NetDescription::default()
                }
                .build(&input(8), 3)
                .unwrap();
                let what = format!("mlp {units}x{width} {placement} {sc}");
                worst = worst.max(assert_plain_equals_fused(net, batch, &what));
            }
        }
    }
    assert_eq!(worst, 0.0, "not bit-identical (within 1e-12): {worst:.2e}");
}

#[test]
fn plain_interpreter_equals_the_fused_resnet_for_every_placement_shortcut_and_projection() {
    // Two units per stage: shape-changing units (every projection convention) and plain ones;
    // basic and bottleneck blocks; every fused conv stage.
    let mut worst = 0.0f64;
    for block in ["basic", "bottleneck"] {
        let net_choice: NetChoice = format!("resnet:1:{block}").parse().unwrap();
        for placement in Placement::ALL {
            for (sc, shortcut) in shortcut_examples(placement, NormKind::Batch) {
                for projection in Projection::ALL {
                    let net = NetDescription {
                        net: net_choice.clone(),
                        placement,
                        shortcut,
                        projection: Some(projection),
                        ..NetDescription::default()
                    }
                    .build(&input(8), 5)
                    .unwrap();
                    let what = format!("resnet {block} {placement} {sc} {projection}");
                    worst = worst.max(assert_plain_equals_fused(net, 3, &what));
                }
            }
        }
    }
    // A deeper net: the fused units hand BN statistics from one to the next.
    let net: NetChoice = "resnet:2:basic".parse().unwrap();
    for placement in [Placement::Original, Placement::FullPreact] {
        let n = NetDescription {
            net: net.clone(),
            placement,
            ..NetDescription::default()
        }
        .build(&input(8), 7)
        .unwrap();
        worst = worst.max(assert_plain_equals_fused(n, 4, "resnet:2:basic"));
    }
    assert_eq!(worst, 0.0, "not bit-identical (within 1e-12): {worst:.2e}");
}

#[test]
fn rel_diff_sees_a_one_ulp_change() {
    let a = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.0);
    let mut b = a.clone();
    b[[1]] = f64::from_bits(1.0f64.to_bits() + 1);
    assert_eq!(rel_diff(&a, &a), 0.0);
    assert!(rel_diff(&a, &b) > 0.0 && rel_diff(&a, &b) < 1e-15);
}

#[test]
#[should_panic(expected = "did not keep")]
fn weight_gradients_of_a_pass_that_dropped_the_inputs_are_refused() {
    let net = NetDescription {
        units: 2,
        width: 16,
        placement: Placement::FullPreact,
        ..NetDescription::default()
    }
    .build(&input(8), 1)
    .unwrap();
    let (input, labels) = gaussian_batch(&net.input_shape, 4, net.classes, 2);
    let ctx = ForwardCtx {
        mode: Mode::Train,
        dropout_seed: 0,
        keep_branch: false,
        weight_grads: false,
    };
    let cache = net.forward(&input, &labels, &ctx).unwrap();
    let mut grads = Grads::new();
    net.backward(&cache, &labels, Some(&mut grads));
}
