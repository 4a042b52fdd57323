//! Every shortcut kind's math, side by side: what Eq. 1 adds (`h(x)` and the weight on the
//! branch term) and the two vector-Jacobian products the paper's split needs.
//!
//! | kind | `h(x)` | branch term `F'` | `J_h^T g` | `J_{F'}^T g` (into `F`, plus `x` via the gate) |
//! |---|---|---|---|---|
//! | identity | `x` | `F` | `g` | `g` |
//! | scale:L:B | `L x` | `B F` | `L g` | `B g` |
//! | gate:B (exclusive) | `(1 - s) x` | `s F` | `(1 - s) g + J_s^T(-g x)` | `s g`, plus `J_s^T(g F)` |
//! | shortcut-gate:B | `(1 - s) x` | `F` | `(1 - s) g + J_s^T(-g x)` | `g` |
//! | conv1x1, pad | `P(x)` (its layers) | `F` | `J_P^T g` | `g` |
//! | dropout:P | `m x` | `F` | `m g` | `g` |
//! | none | `0` | `F` | `0` | `g` |
//! | alpha:A, rezero | `x` | `a F` (the branch's last op) | `g` | `g` (into `a F`) |
//! | layerscale:E | `x` | `diag(lambda) F` (the branch's last op) | `g` | `g` (into it) |
//! | deepnorm | `a x`, `a = (2L)^(1/4)` | `F` (weights started at `b = (8L)^(-1/4)`) | `a g` | `g` |
//!
//! with `s = sigmoid(W_g x + b_g)` (the gate's layers) and `m` the unit's dropout mask. A new
//! kind is one more arm in each function below plus its parse/display in `spec.rs`.

use super::ops::{backward_seq, forward_seq, Fusion, Op, OpCache};
use super::residual::ForwardCtx;
use super::spec::ShortcutKind;
use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::layers::branch_scale::BranchScale;
use crate::layers::{dropout, sigmoid};
use crate::rng::{derive_seed, purpose, rng};
use crate::tensor::Tensor;

/// DeepNorm's `(a, b)` for `units` residual units: the shortcut's up-weighting
/// `a = (2L)^(1/4)` and the branch weights' initial scale `b = (8L)^(-1/4)` (the encoder-only
/// constants of Wang et al. 2022).
pub fn deepnorm_constants(units: usize) -> (f64, f64) {
    let l = units as f64;
    ((2.0 * l).powf(0.25), (8.0 * l).powf(-0.25))
}

/// What a unit's shortcut is once the network's depth is known: `deepnorm` gets its `a`, with
/// `b` the factor on the branch's initial weights; every other kind is itself, with factor 1.
pub fn resolve_for_depth(kind: ShortcutKind, units: usize) -> (ShortcutKind, f64) {
    match kind {
        ShortcutKind::DeepNorm { .. } => {
            let (a, b) = deepnorm_constants(units);
            (ShortcutKind::DeepNorm { alpha: a }, b)
        }
        k @ (ShortcutKind::Identity
        | ShortcutKind::Scale { .. }
        | ShortcutKind::Gate { .. }
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::Pad) => (k, 1.0),
    }
}

/// The layer a kind adds at the end of the branch, if any: the learned scale of `alpha:A`
/// (one scalar) and `layerscale:E` (one value per channel), named `{unit}.scale`. Every unit
/// gets it, the shape-changing ones too (their shortcut is the projection).
pub fn branch_scale(kind: ShortcutKind, unit: &str, channels: usize) -> Option<Op> {
    let name = format!("{unit}.scale");
    match kind {
        ShortcutKind::Alpha { init } => Some(Op::BranchScale(BranchScale::scalar(&name, init))),
        ShortcutKind::LayerScale { init } => Some(Op::BranchScale(BranchScale::per_channel(
            &name, channels, init,
        ))),
        ShortcutKind::Identity
        | ShortcutKind::Scale { .. }
        | ShortcutKind::Gate { .. }
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => None,
    }
}

/// What a shortcut's forward leaves for its backward.
#[derive(Debug, Clone, Default)]
pub struct ShortcutCache<T: Float = f64> {
    /// Caches of the shortcut's own layers (gate pre-activation, projection, pad).
    pub(super) ops: Vec<OpCache<T>>,
    /// `s = sigmoid(W_g x + b_g)` for gated shortcuts.
    pub gate: Option<Tensor<T>>,
    /// `h(x)` of a projection or padded shortcut (the output of its layers).
    pub(super) projection: Option<Tensor<T>>,
    /// Dropout mask on the shortcut.
    pub mask: Option<Tensor<T>>,
    /// How the shortcut's layers ran (their backward runs the same way).
    pub(super) fusion: Fusion,
}

/// Runs the shortcut's own layers on `x` (the input the shortcut reads) and draws the dropout
/// mask of unit `index`.
pub(super) fn forward<T: Float>(
    kind: ShortcutKind,
    ops: &[Op<T>],
    x: &Tensor<T>,
    ctx: &ForwardCtx,
    index: usize,
    fusion: Fusion,
) -> ShortcutCache<T> {
    let mut cache = ShortcutCache {
        fusion,
        ..ShortcutCache::default()
    };
    match kind {
        ShortcutKind::Gate { .. }
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Pad => {
            let (z, c) = forward_seq(ops, x.clone(), ctx.mode, fusion);
            cache.ops = c;
            if kind.has_gate() {
                cache.gate = Some(sigmoid::forward(&z));
            } else {
                cache.projection = Some(z);
            }
        }
        ShortcutKind::Dropout { p, rescale } => {
            let mut r = rng(derive_seed(
                ctx.dropout_seed,
                &[purpose::DROPOUT, index as u64],
            ));
            cache.mask = Some(dropout::mask(x.shape(), p, rescale, &mut r));
        }
        ShortcutKind::Identity
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::Scale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::None => {}
    }
    cache
}

/// `acc += h(x)`.
pub(super) fn add_h<T: Float>(
    kind: ShortcutKind,
    cache: &ShortcutCache<T>,
    x: &Tensor<T>,
    acc: &mut Tensor<T>,
) {
    match kind {
        ShortcutKind::Identity | ShortcutKind::Alpha { .. } | ShortcutKind::LayerScale { .. } => {
            crate::tensor::add_assign(acc, x)
        }
        ShortcutKind::Scale { lambda, .. } | ShortcutKind::DeepNorm { alpha: lambda } => {
            let lambda = T::of_f64(lambda);
            acc.zip_mut_with(x, |a, &v| *a += lambda * v)
        }
        ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. } => ndarray::Zip::from(acc)
            .and(x)
            .and(cache.gate.as_ref().unwrap())
            .for_each(|a, &v, &g| *a += (T::one() - g) * v),
        ShortcutKind::Conv1x1 | ShortcutKind::Pad => *acc += cache.projection.as_ref().unwrap(),
        ShortcutKind::Dropout { .. } => ndarray::Zip::from(acc)
            .and(x)
            .and(cache.mask.as_ref().unwrap())
            .for_each(|a, &v, &m| *a += m * v),
        ShortcutKind::None => {}
    }
}

/// Whether the branch weight's VJP needs `F(x)` itself (`d/ds [s F] = F`).
pub(super) fn needs_branch_output(kind: ShortcutKind) -> bool {
    matches!(kind, ShortcutKind::Gate { .. })
}

/// The branch term `F'` from `F(x)`, in `F(x)`'s own buffer.
pub(super) fn weight_branch<T: Float>(
    kind: ShortcutKind,
    cache: &ShortcutCache<T>,
    mut f: Tensor<T>,
) -> Tensor<T> {
    match kind {
        ShortcutKind::Scale { branch, .. } => {
            f *= T::of_f64(branch);
            f
        }
        ShortcutKind::Gate { .. } => f * cache.gate.as_ref().unwrap(),
        // The shortcut-only gate scales h, not F; alpha and layerscale scale F with an op of
        // the branch (branch_scale), not here.
        ShortcutKind::Identity
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => f,
    }
}

/// The branch term `F'` from a kept `F(x)` (the analyses' forward).
pub(super) fn branch_term<T: Float>(
    kind: ShortcutKind,
    cache: &ShortcutCache<T>,
    f: &Tensor<T>,
) -> Tensor<T> {
    weight_branch(kind, cache, f.clone())
}

/// Backward through the gate's pre-activation: `grad_s` -> input gradient, weights into `grads`.
fn gate_backward<T: Float>(
    ops: &[Op<T>],
    cache: &ShortcutCache<T>,
    grad_s: &Tensor<T>,
    grads: Option<&mut Grads<T>>,
) -> Tensor<T> {
    let grad_z = sigmoid::backward(cache.gate.as_ref().unwrap(), grad_s);
    backward_seq(ops, &cache.ops, grad_z, grads, cache.fusion)
}

/// `J_h(x)^T grad_y`, the shortcut-only VJP; takes `grad_y` by value so identity-like
/// shortcuts reuse it. `x` is the input the shortcut read.
pub(super) fn shortcut_vjp<T: Float>(
    kind: ShortcutKind,
    ops: &[Op<T>],
    cache: &ShortcutCache<T>,
    x: &Tensor<T>,
    mut grad_y: Tensor<T>,
    grads: Option<&mut Grads<T>>,
) -> Tensor<T> {
    match kind {
        ShortcutKind::Identity | ShortcutKind::Alpha { .. } | ShortcutKind::LayerScale { .. } => {
            fault::perturb(Fault::IdentityShortcutVjp, &mut grad_y);
            grad_y
        }
        ShortcutKind::Scale { lambda, .. } | ShortcutKind::DeepNorm { alpha: lambda } => {
            grad_y *= fault::factor(Fault::ScaleShortcutVjp, T::of_f64(lambda));
            grad_y
        }
        ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. } => {
            // h = (1 - s) * x: the direct factor (1 - s) plus the path through the gate,
            // d/ds [(1 - s) x] = -x.
            let mut grad_s = -(&grad_y * x);
            fault::perturb(Fault::GatePathTerm, &mut grad_s);
            grad_y.zip_mut_with(cache.gate.as_ref().unwrap(), |d, &s| {
                *d *= fault::factor(Fault::GateDirectFactor, T::one() - s)
            });
            grad_y += &gate_backward(ops, cache, &grad_s, grads);
            grad_y
        }
        ShortcutKind::Conv1x1 | ShortcutKind::Pad => {
            let mut g = backward_seq(ops, &cache.ops, grad_y, grads, cache.fusion);
            fault::perturb(Fault::ProjectionShortcutVjp, &mut g);
            g
        }
        ShortcutKind::Dropout { .. } => {
            grad_y *= cache.mask.as_ref().unwrap();
            fault::perturb(Fault::DropoutShortcutVjp, &mut grad_y);
            grad_y
        }
        // h = 0: no gradient, in the shape of the input the shortcut would have read
        // (which differs from grad_y's when the unit changes shape).
        ShortcutKind::None => Tensor::<T>::zeros(x.raw_dim()),
    }
}

/// The branch weight's VJP into `F`: `dE/dF` from `grad_y = dE/d(h + F')`.
pub(super) fn branch_weight_vjp<T: Float>(
    kind: ShortcutKind,
    cache: &ShortcutCache<T>,
    grad_y: &Tensor<T>,
) -> Tensor<T> {
    match kind {
        ShortcutKind::Scale { branch, .. } => {
            grad_y * fault::factor(Fault::ScaleBranchVjp, T::of_f64(branch))
        }
        ShortcutKind::Gate { .. } => {
            let mut g = grad_y * cache.gate.as_ref().unwrap();
            fault::perturb(Fault::ExclusiveGateBranchFactor, &mut g);
            g
        }
        ShortcutKind::Identity
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => grad_y.clone(),
    }
}

/// The branch weight's own dependence on `x` (the exclusive gate's `d/ds [s F] = F`, carried
/// through the gate's layers); `None` for the kinds whose weight is a constant.
pub(super) fn branch_weight_input_vjp<T: Float>(
    kind: ShortcutKind,
    ops: &[Op<T>],
    cache: &ShortcutCache<T>,
    branch_out: Option<&Tensor<T>>,
    grad_y: &Tensor<T>,
    grads: Option<&mut Grads<T>>,
) -> Option<Tensor<T>> {
    match kind {
        ShortcutKind::Gate { .. } => {
            let mut grad_s = grad_y * branch_out.expect("the gate keeps F(x)");
            fault::perturb(Fault::ExclusiveGateBranchTerm, &mut grad_s);
            Some(gate_backward(ops, cache, &grad_s, grads))
        }
        ShortcutKind::Identity
        | ShortcutKind::Scale { .. }
        | ShortcutKind::ShortcutGate { .. }
        | ShortcutKind::Conv1x1
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => None,
    }
}
