//! The engine fuses ops for speed (BN-ReLU, BN-ReLU-conv, the shortcut addition inside the last
//! convolution, BN statistics handed from the op that wrote a tensor to the BatchNorm that
//! reads it). None of that may change a number: a whole network's forward and backward pass
//! must equal, bit for bit, the same network run one op at a time with no fusion.

use resprop::analysis::gaussian_batch;
use resprop::grads::Grads;
use resprop::layers::{loss, Mode};
use resprop::net::resnet::Block;
use resprop::net::{build_mlp, build_resnet, Keep, MlpConfig, Network, ResnetConfig};
use resprop::tensor::Tensor;
use resprop::unit::ops::{Op, OpCache};
use resprop::unit::{ForwardCtx, Placement, Projection, ShortcutKind};

fn resnet(
    units_per_stage: usize,
    block: Block,
    placement: Placement,
    projection: Projection,
) -> Network {
    build_resnet(&ResnetConfig {
        name: "test".into(),
        units_per_stage,
        block,
        image_size: 8,
        input_channels: 3,
        classes: 10,
        placement,
        shortcut: ShortcutKind::Identity,
        projection,
        seed: 3,
    })
    .unwrap()
}

/// Forward through `ops` one op at a time, keeping every cache.
fn forward_ops(ops: &[Op], x: Tensor, mode: Mode) -> (Tensor, Vec<OpCache>) {
    let mut caches = Vec::new();
    let mut x = x;
    for op in ops {
        let (y, c) = op.forward(x, mode);
        caches.push(c);
        x = y;
    }
    (x, caches)
}

fn backward_ops(ops: &[Op], caches: &[OpCache], g: Tensor) -> Tensor {
    ops.iter()
        .zip(caches)
        .rev()
        .fold(g, |g, (op, c)| op.backward(c, g, None))
}

/// Every x_l and every dE/dx_l of the naive op-by-op pass. Units: identity or projection
/// shortcut, with an optional shared pre-activation and after-addition function. Sums are
/// formed in the order the engine forms them (`F + h` forward; the shortcut's part plus the
/// branch's part backward, each through the pre-activation on its own).
fn reference(net: &Network, input: &Tensor, labels: &[usize]) -> (Vec<Tensor>, Vec<Tensor>, f64) {
    let mode = Mode::Train;
    let (mut x, _) = forward_ops(&net.stem, input.clone(), mode);
    let mut xs = Vec::new();
    let mut caches = Vec::new();
    for u in &net.units {
        xs.push(x.clone());
        let (a, pre) = forward_ops(&u.pre, x.clone(), mode);
        let (f, branch) = forward_ops(&u.branch, a.clone(), mode);
        let (h, proj) = match u.shortcut {
            ShortcutKind::Identity => (a, Vec::new()),
            // A projection (with its BN, if any) or the option-A pad: the shortcut's ops.
            ShortcutKind::Conv1x1 | ShortcutKind::Pad => forward_ops(&u.shortcut_ops, a, mode),
            other => {
                panic!(
                    "the reference covers identity, projection and padded shortcuts, not {other:?}"
                )
            }
        };
        let (out, after) = forward_ops(&u.after_add, f + &h, mode);
        caches.push((pre, branch, proj, after));
        x = out;
    }
    xs.push(x.clone());
    let (logits, head) = forward_ops(&net.head, x, mode);
    let (loss, probs) = loss::forward(&logits, labels);
    let mut g = backward_ops(&net.head, &head, loss::backward(&probs, labels));
    let mut grads = vec![g.clone()];
    for (u, (pre, branch, proj, after)) in net.units.iter().zip(&caches).rev() {
        let g_y = backward_ops(&u.after_add, after, g);
        let g_f = backward_ops(&u.branch, branch, g_y.clone());
        let g_h = backward_ops(&u.shortcut_ops, proj, g_y);
        g = backward_ops(&u.pre, pre, g_h) + &backward_ops(&u.pre, pre, g_f);
        grads.push(g.clone());
    }
    grads.reverse();
    (xs, grads, loss)
}

fn assert_fused_equals_reference(net: &Network, batch: usize) {
    let (input, labels) = gaussian_batch(&net.input_shape, batch, net.classes, 11);
    let (xs, grads, loss) = reference(net, &input, &labels);
    for (keep, weight_grads) in [
        (Keep::All, true),
        (Keep::Inputs, true),
        (Keep::All, false),
        (Keep::Inputs, false),
    ] {
        let ctx = ForwardCtx {
            mode: Mode::Train,
            dropout_seed: 0,
            keep_branch: false,
            weight_grads,
        };
        let cache = net.forward_with(&input, &labels, &ctx, keep).unwrap();
        assert_eq!(cache.loss.to_bits(), loss.to_bits(), "{keep:?}: loss");
        for (l, x) in xs.iter().enumerate() {
            assert_eq!(cache.x(l), x, "{keep:?}: x_{l}");
        }
        let back = net.backward(&cache, &labels, None);
        for (l, g) in grads.iter().enumerate() {
            assert_eq!(&back.grad_x[l], g, "{keep:?}: dE/dx_{l}");
        }
    }
}

#[test]
fn fused_resnet_passes_equal_the_op_by_op_pass_bit_for_bit() {
    // Pre-activation nets fuse every BN-ReLU-conv; the original unit fuses its middle one and
    // has a ReLU after the addition. Two units per stage: plain units and projections.
    for block in [Block::Basic, Block::Bottleneck] {
        for placement in [Placement::FullPreact, Placement::Original] {
            for projection in Projection::ALL {
                assert_fused_equals_reference(&resnet(2, block, placement, projection), 3);
            }
        }
    }
}

#[test]
fn fused_mlp_passes_equal_the_op_by_op_pass_bit_for_bit() {
    // Width 12: BN-ReLU passes fused; width 160 with batch 96: the dense layers run fused with
    // their BatchNorms too (products large enough to split in columns).
    for (units, width, batch) in [(6, 12, 9), (3, 160, 96)] {
        for placement in [Placement::FullPreact, Placement::Original] {
            let net = build_mlp(&MlpConfig {
                units,
                width,
                input_dim: 7,
                classes: 10,
                placement,
                shortcut: ShortcutKind::Identity,
                seed: 5,
            })
            .unwrap();
            assert_fused_equals_reference(&net, batch);
        }
    }
}

#[test]
#[should_panic(expected = "did not keep")]
fn weight_gradients_of_a_pass_that_dropped_the_inputs_are_refused() {
    let net = build_mlp(&MlpConfig {
        units: 2,
        width: 16,
        input_dim: 8,
        classes: 10,
        placement: Placement::FullPreact,
        shortcut: ShortcutKind::Identity,
        seed: 1,
    })
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
