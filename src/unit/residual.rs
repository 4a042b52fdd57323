//! The residual unit, Eq. 1-2 of the paper: `y = h(x) + F(x)`, `x_next = f(y)`.
//!
//! Backward exposes the paper's split. With `grad_y = J_f^T grad_next` (the after-addition
//! function at the cached point), the unit's vector-Jacobian product is the sum of two linear
//! maps:
//!
//! ```text
//! shortcut part:  J_h(x)^T grad_y          (h as a whole function of x, gate included)
//! branch part:    J_{F'}(x)^T grad_y       (F' = the term added: F, B F or g F)
//! ```
//!
//! The full backward is their sum, which is what makes the direct/rest split of `dE/dx_l`
//! measurable: carrying `dE/dx_L` down through shortcut parts alone gives the direct term of
//! Eq. 5/8.

use std::sync::Arc;

use super::ops::{
    backward_seq, backward_seq_ref, forward_seq, forward_seq_with, freeze_relus_seq,
    update_running_stats_seq, Op, OpCache, SeqExtras,
};
use super::spec::{Placement, ShortcutKind};
use crate::fault::{self, Fault};
use crate::grads::Grads;
use crate::layers::batch_norm::Moments;
use crate::layers::{dropout, sigmoid, Mode};
use crate::rng::{derive_seed, purpose, rng};
use crate::tensor::Tensor;

/// What a forward pass needs besides the input: BN mode and the seed of dropout masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardCtx {
    pub mode: Mode,
    /// Dropout masks of unit `l` are drawn from `derive_seed(dropout_seed, [DROPOUT, l])`.
    pub dropout_seed: u64,
    /// Keep each unit's `F(x)` in its cache, for analyses that read `F'(x_l)`
    /// ([`ResidualUnit::branch_term`]): one more tensor per unit. Off for training and timing.
    pub keep_branch: bool,
    /// The backward pass may be asked for parameter gradients, so weight layers keep their
    /// inputs. Off for a gradient profile (input gradients only): the inputs' memory is then
    /// reused straight away (W1: peak RSS 352 -> 274 MB).
    pub weight_grads: bool,
}

#[derive(Debug, Clone)]
pub struct ResidualUnit {
    pub index: usize,
    pub placement: Placement,
    pub shortcut: ShortcutKind,
    /// The residual function F.
    pub branch: Vec<Op>,
    /// The after-addition function f (empty = identity).
    pub after_add: Vec<Op>,
    /// The shortcut's own layers: the gate's pre-activation `W_g x + b_g` (gates), the
    /// projection `W_s x` (conv1x1, followed by a BatchNorm under `--projection bn`) or the
    /// option-A subsample-and-pad (pad); empty for the other kinds.
    pub shortcut_ops: Vec<Op>,
    /// Activation applied once before the split (pre-activation units that change shape: the
    /// projection then sees the pre-activated input, as in the paper's code); usually empty.
    pub pre: Vec<Op>,
    /// True when the output's shape differs from the input's (width or resolution changes).
    pub changes_shape: bool,
}

#[derive(Debug, Clone)]
pub struct UnitCache {
    /// The unit input `x_l`, shared with the branch's leading BatchNorm (no copy).
    pub x: Arc<Tensor>,
    pre: Vec<OpCache>,
    /// The input both paths see: `pre(x)` (`x` itself when `pre` is empty).
    split_input: Option<Tensor>,
    branch: Vec<OpCache>,
    /// `F(x)`, before any gate: kept only for the exclusive gate, whose backward needs it
    /// (`d/dg [g F] = F`); every other shortcut adds its term into `F(x)`'s own buffer.
    branch_out: Option<Tensor>,
    shortcut_ops: Vec<OpCache>,
    /// `g = sigmoid(W_g x + b_g)` for gated shortcuts.
    pub gate: Option<Tensor>,
    /// `h(x)` of a projection or padded shortcut (the output of its layers).
    projection: Option<Tensor>,
    /// Dropout mask on the shortcut.
    pub mask: Option<Tensor>,
    after_add: Vec<OpCache>,
}

/// The two summands of Eq. 1 at one input, with the caches backward needs.
#[derive(Debug, Clone)]
pub struct UnitParts {
    /// `h(x)`
    pub shortcut: Tensor,
    /// `F'(x)`: `F`, `B F` or `g F`
    pub branch_term: Tensor,
}

impl ResidualUnit {
    /// Runs the branch and the shortcut's own layers (gate, projection, mask). Returns the
    /// cache, complete except for the after-addition function, and `F(x)`.
    fn forward_inputs(
        &self,
        x_in: Arc<Tensor>,
        ctx: &ForwardCtx,
        moments_in: Option<Moments>,
    ) -> (UnitCache, Tensor) {
        // The input's moments go to whichever sequence reads x first.
        let with_moments = |moments_in| SeqExtras {
            moments_in,
            drop_weight_inputs: !ctx.weight_grads,
            ..SeqExtras::default()
        };
        let (split_input, pre_caches, moments_in) = if self.pre.is_empty() {
            (None, Vec::new(), moments_in)
        } else {
            let (a, c, _) = forward_seq_with(
                &self.pre,
                Arc::clone(&x_in),
                ctx.mode,
                with_moments(moments_in),
            );
            (Some(a), c, None)
        };
        let (branch_out, branch_caches) = match &split_input {
            Some(a) => forward_seq(&self.branch, a.clone(), ctx.mode),
            None => {
                let (y, c, _) = forward_seq_with(
                    &self.branch,
                    Arc::clone(&x_in),
                    ctx.mode,
                    with_moments(moments_in),
                );
                (y, c)
            }
        };
        let x: &Tensor = split_input.as_ref().unwrap_or(&x_in);
        let mut shortcut_caches = Vec::new();
        let mut gate = None;
        let mut projection = None;
        let mut mask = None;
        match self.shortcut {
            ShortcutKind::Gate { .. }
            | ShortcutKind::ShortcutGate { .. }
            | ShortcutKind::Conv1x1
            | ShortcutKind::Pad => {
                let (z, c) = forward_seq(&self.shortcut_ops, x.clone(), ctx.mode);
                shortcut_caches = c;
                if self.shortcut.has_gate() {
                    gate = Some(sigmoid::forward(&z));
                } else {
                    projection = Some(z);
                }
            }
            ShortcutKind::Dropout { p, rescale } => {
                let mut r = rng(derive_seed(
                    ctx.dropout_seed,
                    &[purpose::DROPOUT, self.index as u64],
                ));
                mask = Some(dropout::mask(x.shape(), p, rescale, &mut r));
            }
            _ => {}
        }
        let cache = UnitCache {
            x: x_in,
            pre: pre_caches,
            split_input,
            branch: branch_caches,
            branch_out: None,
            shortcut_ops: shortcut_caches,
            gate,
            projection,
            mask,
            after_add: Vec::new(),
        };
        (cache, branch_out)
    }

    /// `acc += h(x)` from the cached shortcut state.
    fn add_shortcut(&self, cache: &UnitCache, acc: &mut Tensor) {
        let x = cache.split_input.as_ref().unwrap_or(&cache.x);
        match self.shortcut {
            ShortcutKind::Identity => crate::tensor::add_assign(acc, x),
            ShortcutKind::Scale { lambda, .. } => acc.zip_mut_with(x, |a, &v| *a += lambda * v),
            ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. } => {
                ndarray::Zip::from(acc)
                    .and(x)
                    .and(cache.gate.as_ref().unwrap())
                    .for_each(|a, &v, &g| *a += (1.0 - g) * v)
            }
            ShortcutKind::Conv1x1 | ShortcutKind::Pad => *acc += cache.projection.as_ref().unwrap(),
            ShortcutKind::Dropout { .. } => ndarray::Zip::from(acc)
                .and(x)
                .and(cache.mask.as_ref().unwrap())
                .for_each(|a, &v, &m| *a += m * v),
            ShortcutKind::None => {}
        }
    }

    /// `h(x)` and `F'(x)` separately, before the addition.
    pub fn forward_parts(&self, x: &Tensor, ctx: &ForwardCtx) -> UnitParts {
        let (mut cache, branch_out) = self.forward_inputs(Arc::new(x.clone()), ctx, None);
        let mut shortcut = Tensor::zeros(branch_out.raw_dim());
        self.add_shortcut(&cache, &mut shortcut);
        let branch_term = self.add_branch_term(&mut cache, branch_out, false);
        UnitParts {
            shortcut,
            branch_term,
        }
    }

    /// The after-addition function `f` alone.
    pub fn apply_after_add(&self, y: &Tensor, mode: Mode) -> Tensor {
        forward_seq(&self.after_add, y.clone(), mode).0
    }

    /// `x_next = f(h(x) + F'(x))` with the cache for backward.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> (Tensor, UnitCache) {
        self.forward_shared(Arc::new(x.clone()), ctx)
    }

    /// As [`ResidualUnit::forward`] from an input the caller shares: the cache keeps it
    /// without a copy.
    pub fn forward_shared(&self, x: Arc<Tensor>, ctx: &ForwardCtx) -> (Tensor, UnitCache) {
        let (y, cache, _) = self.forward_fused(x, ctx, None);
        (y, cache)
    }

    /// As [`ResidualUnit::forward_shared`], taking the input's plane moments (from the unit
    /// below) and returning the output's when it can make them. The paper's unit (identity
    /// h and f) adds `x` inside the branch's last convolution, sample by sample, and measures
    /// the sum there for the next unit's first BatchNorm: two fewer passes over `x_{l+1}`.
    pub fn forward_fused(
        &self,
        x: Arc<Tensor>,
        ctx: &ForwardCtx,
        moments_in: Option<Moments>,
    ) -> (Tensor, UnitCache, Option<Moments>) {
        if self.is_plain() && !ctx.keep_branch {
            let extras = SeqExtras {
                moments_in,
                residual: Some(&x),
                moments_out: true,
                drop_weight_inputs: !ctx.weight_grads,
            };
            let (y, branch, moments) =
                forward_seq_with(&self.branch, Arc::clone(&x), ctx.mode, extras);
            let cache = UnitCache {
                x,
                pre: Vec::new(),
                split_input: None,
                branch,
                branch_out: None,
                shortcut_ops: Vec::new(),
                gate: None,
                projection: None,
                mask: None,
                after_add: Vec::new(),
            };
            return (y, cache, moments);
        }
        let (mut cache, branch_out) = self.forward_inputs(x, ctx, moments_in);
        let mut y = self.add_branch_term(&mut cache, branch_out, ctx.keep_branch);
        self.add_shortcut(&cache, &mut y);
        let (x_next, after_caches) = forward_seq(&self.after_add, y, ctx.mode);
        cache.after_add = after_caches;
        (x_next, cache, None)
    }

    /// The paper's unit: identity shortcut and after-addition function, no shared
    /// pre-activation. Its passes fuse the addition into the branch (see `forward_fused`).
    fn is_plain(&self) -> bool {
        self.pre.is_empty()
            && self.after_add.is_empty()
            && matches!(self.shortcut, ShortcutKind::Identity)
    }

    /// The term the branch adds to the sum, `F`, `B F` (scaled) or `g F` (exclusive gate),
    /// in `F(x)`'s own buffer. `F(x)` itself stays in the cache when asked for, and always for
    /// the exclusive gate, whose backward needs it (`d/dg [g F] = F`).
    fn add_branch_term(&self, cache: &mut UnitCache, mut branch_out: Tensor, keep: bool) -> Tensor {
        if keep || matches!(self.shortcut, ShortcutKind::Gate { .. }) {
            cache.branch_out = Some(branch_out.clone());
        }
        match self.shortcut {
            ShortcutKind::Scale { branch, .. } => {
                branch_out *= branch;
                branch_out
            }
            ShortcutKind::Gate { .. } => branch_out * cache.gate.as_ref().unwrap(),
            _ => branch_out,
        }
    }

    /// `F'(x)` of a cached pass made with `keep_branch` (the analyses' forward).
    pub fn branch_term(&self, cache: &UnitCache) -> Tensor {
        let f = cache
            .branch_out
            .as_ref()
            .expect("F(x) is kept only by a forward pass with keep_branch");
        match self.shortcut {
            ShortcutKind::Scale { branch, .. } => f * branch,
            ShortcutKind::Gate { .. } => f * cache.gate.as_ref().unwrap(),
            _ => f.clone(),
        }
    }

    /// `grad_y = J_f^T grad_next`: through the after-addition function.
    fn grad_sum(&self, cache: &UnitCache, grad_next: Tensor, grads: Option<&mut Grads>) -> Tensor {
        backward_seq(&self.after_add, &cache.after_add, grad_next, grads)
    }

    /// Backward through the gate's pre-activation: `grad_g` -> input gradient, weights into `grads`.
    fn gate_backward(
        &self,
        cache: &UnitCache,
        grad_g: &Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        let grad_z = sigmoid::backward(cache.gate.as_ref().unwrap(), grad_g);
        backward_seq(&self.shortcut_ops, &cache.shortcut_ops, grad_z, grads)
    }

    /// `J_h(x)^T grad_y`; takes `grad_y` by value so identity-like shortcuts reuse it.
    fn shortcut_part(
        &self,
        cache: &UnitCache,
        grad_y: Tensor,
        mut grads: Option<&mut Grads>,
    ) -> Tensor {
        let g = self.shortcut_part_inner(cache, grad_y, grads.as_deref_mut());
        self.through_pre(cache, g, grads)
    }

    /// Backward through the shared pre-activation, if any (linear in the gradient, so the
    /// shortcut and branch parts can each pass through it and still add up).
    fn through_pre(&self, cache: &UnitCache, g: Tensor, grads: Option<&mut Grads>) -> Tensor {
        if self.pre.is_empty() {
            g
        } else {
            backward_seq(&self.pre, &cache.pre, g, grads)
        }
    }

    fn shortcut_part_inner(
        &self,
        cache: &UnitCache,
        mut grad_y: Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        match self.shortcut {
            ShortcutKind::Identity => {
                fault::perturb(Fault::IdentityShortcutVjp, &mut grad_y);
                grad_y
            }
            ShortcutKind::Scale { lambda, .. } => {
                grad_y *= fault::factor(Fault::ScaleShortcutVjp, lambda);
                grad_y
            }
            ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. } => {
                // h = (1 - g) * x: the direct factor (1 - g) plus the path through the gate,
                // d/dg [(1 - g) x] = -x.
                let mut grad_g = -(&grad_y * cache.split_input.as_ref().unwrap_or(&cache.x));
                fault::perturb(Fault::GatePathTerm, &mut grad_g);
                grad_y.zip_mut_with(cache.gate.as_ref().unwrap(), |d, &g| {
                    *d *= fault::factor(Fault::GateDirectFactor, 1.0 - g)
                });
                grad_y += &self.gate_backward(cache, &grad_g, grads);
                grad_y
            }
            ShortcutKind::Conv1x1 | ShortcutKind::Pad => {
                let mut g = backward_seq(&self.shortcut_ops, &cache.shortcut_ops, grad_y, grads);
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
            ShortcutKind::None => {
                Tensor::zeros(cache.split_input.as_ref().unwrap_or(&cache.x).raw_dim())
            }
        }
    }

    /// `J_{F'}(x)^T grad_y`.
    fn branch_part(
        &self,
        cache: &UnitCache,
        grad_y: &Tensor,
        mut grads: Option<&mut Grads>,
    ) -> Tensor {
        let grad_f = match self.shortcut {
            ShortcutKind::Scale { branch, .. } => {
                grad_y * fault::factor(Fault::ScaleBranchVjp, branch)
            }
            ShortcutKind::Gate { .. } => {
                let mut g = grad_y * cache.gate.as_ref().unwrap();
                fault::perturb(Fault::ExclusiveGateBranchFactor, &mut g);
                g
            }
            _ => grad_y.clone(),
        };
        let mut grad_x = backward_seq(&self.branch, &cache.branch, grad_f, grads.as_deref_mut());
        if let ShortcutKind::Gate { .. } = self.shortcut {
            // g * F: the gate's own dependence on x, d/dg [g F] = F.
            let mut grad_g = grad_y * cache.branch_out.as_ref().expect("the gate keeps F(x)");
            fault::perturb(Fault::ExclusiveGateBranchTerm, &mut grad_g);
            grad_x += &self.gate_backward(cache, &grad_g, grads.as_deref_mut());
        }
        self.through_pre(cache, grad_x, grads)
    }

    /// Full backward: `dE/dx_l` from `dE/dx_{l+1}`, parameter gradients into `grads` if given.
    pub fn backward(
        &self,
        cache: &UnitCache,
        grad_next: &Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        if !self.is_plain() {
            let (mut s, b) = self.backward_split_inner(cache, grad_next, grads);
            s += &b;
            return s;
        }
        // The paper's unit (identity h and f): dE/dx_l = J_F^T grad + grad, the branch
        // reading `grad_next` in place and adding it in its last pass: no copies.
        if fault::active(Fault::FusedIdentityResidual) {
            let wrong = grad_next * fault::FACTOR;
            return backward_seq_ref(&self.branch, &cache.branch, grad_next, grads, Some(&wrong));
        }
        backward_seq_ref(
            &self.branch,
            &cache.branch,
            grad_next,
            grads,
            Some(grad_next),
        )
    }

    /// Both parts of the backward, `(shortcut part, branch part)`; their sum is `dE/dx_l`.
    pub fn backward_split(&self, cache: &UnitCache, grad_next: &Tensor) -> (Tensor, Tensor) {
        self.backward_split_inner(cache, grad_next, None)
    }

    fn backward_split_inner(
        &self,
        cache: &UnitCache,
        grad_next: &Tensor,
        mut grads: Option<&mut Grads>,
    ) -> (Tensor, Tensor) {
        let grad_y = self.grad_sum(cache, grad_next.clone(), grads.as_deref_mut());
        let b = self.branch_part(cache, &grad_y, grads.as_deref_mut());
        let s = self.shortcut_part(cache, grad_y, grads);
        (s, b)
    }

    /// The vector-Jacobian product through the shortcut path only (f included).
    pub fn vjp_shortcut(&self, cache: &UnitCache, grad_next: &Tensor) -> Tensor {
        let grad_y = self.grad_sum(cache, grad_next.clone(), None);
        self.shortcut_part(cache, grad_y, None)
    }

    /// The vector-Jacobian product through the branch only (f included).
    pub fn vjp_branch(&self, cache: &UnitCache, grad_next: &Tensor) -> Tensor {
        let grad_y = self.grad_sum(cache, grad_next.clone(), None);
        self.branch_part(cache, &grad_y, None)
    }

    /// Replaces every ReLU by the pattern it had in `cache` (see `Network::with_frozen_relus`).
    pub fn freeze_relus(&mut self, cache: &UnitCache) {
        freeze_relus_seq(&mut self.pre, &cache.pre);
        freeze_relus_seq(&mut self.branch, &cache.branch);
        freeze_relus_seq(&mut self.after_add, &cache.after_add);
        freeze_relus_seq(&mut self.shortcut_ops, &cache.shortcut_ops);
    }

    pub fn update_running_stats(&mut self, cache: &UnitCache) {
        update_running_stats_seq(&mut self.pre, &cache.pre);
        update_running_stats_seq(&mut self.branch, &cache.branch);
        update_running_stats_seq(&mut self.after_add, &cache.after_add);
        update_running_stats_seq(&mut self.shortcut_ops, &cache.shortcut_ops);
    }

    /// Every BatchNorm of the unit with its cache from `cache` (pre, branch, after-addition,
    /// shortcut), for diagnostics that read the batch statistics.
    pub fn visit_bn_caches<'a>(
        &'a self,
        cache: &'a UnitCache,
        f: &mut dyn FnMut(&'a crate::layers::BatchNorm, &'a crate::layers::BatchNormCache),
    ) {
        for (ops, caches) in [
            (&self.pre, &cache.pre),
            (&self.branch, &cache.branch),
            (&self.after_add, &cache.after_add),
            (&self.shortcut_ops, &cache.shortcut_ops),
        ] {
            crate::unit::ops::visit_bn_caches(ops, caches, f);
        }
    }

    /// Every op of the unit, in visiting order (pre, branch, after-addition, shortcut).
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.pre
            .iter()
            .chain(&self.branch)
            .chain(&self.after_add)
            .chain(&self.shortcut_ops)
    }

    fn ops_mut(&mut self) -> impl Iterator<Item = &mut Op> {
        self.pre
            .iter_mut()
            .chain(&mut self.branch)
            .chain(&mut self.after_add)
            .chain(&mut self.shortcut_ops)
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor)) {
        self.ops().for_each(|op| op.visit_params(f));
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        self.ops_mut().for_each(|op| op.visit_params_mut(f));
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor)) {
        self.ops().for_each(|op| op.visit_buffers(f));
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        self.ops_mut().for_each(|op| op.visit_buffers_mut(f));
    }

    /// e.g. "W BN ReLU W BN | add | ReLU".
    pub fn describe(&self) -> String {
        let seq = |ops: &[Op]| ops.iter().map(|o| o.label()).collect::<Vec<_>>().join(" ");
        let after = if self.after_add.is_empty() {
            "identity".to_string()
        } else {
            seq(&self.after_add)
        };
        format!(
            "F = {}; h = {}; f = {}",
            seq(&self.branch),
            self.shortcut,
            after
        )
    }
}
