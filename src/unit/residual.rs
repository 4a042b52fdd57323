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
//! Eq. 5/8. What each shortcut kind adds and its two VJPs live in [`super::shortcut`].
//!
//! The paper's unit (identity `h` and `f`) also has a fused path that adds `x` inside the
//! branch's last layer; it sits in the last section of this file, after the readable path it
//! must equal (tested in `tests/it/fusion.rs` and by `check`'s consistency row).

use std::sync::Arc;

pub use super::ctx::ForwardCtx;
use super::ops::{
    backward_seq, backward_seq_ref, forward_seq, forward_seq_with, freeze_relus_seq,
    update_running_stats_seq, Fusion, Op, OpCache, SeqExtras,
};
use super::shortcut::{self, ShortcutCache};
use super::spec::{Placement, ShortcutKind};
use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::norm::Moments;
use crate::kernels::Epilogue;
use crate::layers::Mode;
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct ResidualUnit<T: Float = f64> {
    pub index: usize,
    pub placement: Placement,
    pub shortcut: ShortcutKind,
    /// The residual function F.
    pub branch: Vec<Op<T>>,
    /// The after-addition function f (empty = identity).
    pub after_add: Vec<Op<T>>,
    /// The shortcut's own layers: the gate's pre-activation `W_g x + b_g` (gates), the
    /// projection `W_s x` (conv1x1, followed by a BatchNorm under `--projection bn`) or the
    /// option-A subsample-and-pad (pad); empty for the other kinds.
    pub shortcut_ops: Vec<Op<T>>,
    /// Activation applied once before the split (pre-activation units that change shape: the
    /// projection then sees the pre-activated input, as in the paper's code); usually empty.
    pub pre: Vec<Op<T>>,
    /// True when the output's shape differs from the input's (width or resolution changes).
    pub changes_shape: bool,
    /// The fused engine or the plain layer-by-layer interpreter (`--unfused`).
    pub fusion: Fusion,
}

#[derive(Debug, Clone)]
pub struct UnitCache<T: Float = f64> {
    /// The unit input `x_l`, shared with the branch's leading BatchNorm (no copy).
    pub x: Arc<Tensor<T>>,
    pre: Vec<OpCache<T>>,
    /// The input both paths see: `pre(x)` (`x` itself when `pre` is empty).
    split_input: Option<Tensor<T>>,
    branch: Vec<OpCache<T>>,
    /// `F(x)`, before any gate: kept only for the exclusive gate, whose backward needs it
    /// (`d/dg [g F] = F`); every other shortcut adds its term into `F(x)`'s own buffer.
    branch_out: Option<Tensor<T>>,
    /// The shortcut's state: its layers' caches, gate, projection output, dropout mask.
    pub shortcut: ShortcutCache<T>,
    after_add: Vec<OpCache<T>>,
}

/// The two summands of Eq. 1 at one input, with the caches backward needs.
#[derive(Debug, Clone)]
pub struct UnitParts<T: Float = f64> {
    /// `h(x)`
    pub shortcut: Tensor<T>,
    /// `F'(x)`: `F`, `B F` or `g F`
    pub branch_term: Tensor<T>,
}

impl<T: Float> ResidualUnit<T> {
    /// The unit in another element type, its parameters rounded to nearest.
    pub fn cast<U: Float>(&self) -> ResidualUnit<U> {
        let ops = |ops: &[Op<T>]| ops.iter().map(Op::cast).collect();
        ResidualUnit {
            index: self.index,
            placement: self.placement,
            shortcut: self.shortcut,
            branch: ops(&self.branch),
            after_add: ops(&self.after_add),
            shortcut_ops: ops(&self.shortcut_ops),
            pre: ops(&self.pre),
            changes_shape: self.changes_shape,
            fusion: self.fusion,
        }
    }

    /// Runs the branch and the shortcut's own layers (gate, projection, mask). Returns the
    /// cache, complete except for the after-addition function, and `F(x)`.
    fn forward_inputs(
        &self,
        x_in: Arc<Tensor<T>>,
        ctx: &ForwardCtx,
        moments_in: Option<Moments<T>>,
    ) -> (UnitCache<T>, Tensor<T>) {
        // The input's moments go to whichever sequence reads x first.
        let with_moments = |moments_in| SeqExtras {
            moments_in,
            drop_weight_inputs: !ctx.weight_grads,
            fusion: self.fusion,
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
            Some(a) => forward_seq(&self.branch, a.clone(), ctx.mode, self.fusion),
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
        let x: &Tensor<T> = split_input.as_ref().unwrap_or(&x_in);
        let shortcut = shortcut::forward(
            self.shortcut,
            &self.shortcut_ops,
            x,
            ctx,
            self.index,
            self.fusion,
        );
        let cache = UnitCache {
            x: x_in,
            pre: pre_caches,
            split_input,
            branch: branch_caches,
            branch_out: None,
            shortcut,
            after_add: Vec::new(),
        };
        (cache, branch_out)
    }

    /// The input both paths read: `pre(x)`, or `x` itself.
    fn split_input<'a>(&self, cache: &'a UnitCache<T>) -> &'a Tensor<T> {
        cache.split_input.as_ref().unwrap_or(&cache.x)
    }

    /// `acc += h(x)` from the cached shortcut state.
    fn add_shortcut(&self, cache: &UnitCache<T>, acc: &mut Tensor<T>) {
        shortcut::add_h(self.shortcut, &cache.shortcut, self.split_input(cache), acc);
    }

    /// `h(x)` and `F'(x)` separately, before the addition.
    pub fn forward_parts(&self, x: &Tensor<T>, ctx: &ForwardCtx) -> UnitParts<T> {
        let (mut cache, branch_out) = self.forward_inputs(Arc::new(x.clone()), ctx, None);
        let mut shortcut = Tensor::<T>::zeros(branch_out.raw_dim());
        self.add_shortcut(&cache, &mut shortcut);
        let branch_term = self.add_branch_term(&mut cache, branch_out, false);
        UnitParts {
            shortcut,
            branch_term,
        }
    }

    /// The after-addition function `f` alone.
    pub fn apply_after_add(&self, y: &Tensor<T>, mode: Mode) -> Tensor<T> {
        forward_seq(&self.after_add, y.clone(), mode, Fusion::Fused).0
    }

    /// `x_next = f(h(x) + F'(x))` with the cache for backward.
    pub fn forward(&self, x: &Tensor<T>, ctx: &ForwardCtx) -> (Tensor<T>, UnitCache<T>) {
        self.forward_shared(Arc::new(x.clone()), ctx)
    }

    /// As [`ResidualUnit::forward`] from an input the caller shares: the cache keeps it
    /// without a copy.
    pub fn forward_shared(&self, x: Arc<Tensor<T>>, ctx: &ForwardCtx) -> (Tensor<T>, UnitCache<T>) {
        let (y, cache, _) = self.forward_with_moments(x, ctx, None);
        (y, cache)
    }

    /// As [`ResidualUnit::forward_shared`], taking the input's plane moments (from the unit
    /// below) and returning the output's when it can make them. The paper's unit (identity
    /// h and f) adds `x` inside the branch's last convolution, sample by sample, and measures
    /// the sum there for the next unit's first BatchNorm: two fewer passes over `x_{l+1}`.
    pub fn forward_with_moments(
        &self,
        x: Arc<Tensor<T>>,
        ctx: &ForwardCtx,
        moments_in: Option<Moments<T>>,
    ) -> (Tensor<T>, UnitCache<T>, Option<Moments<T>>) {
        if self.is_identity_unit() && !ctx.keep_branch && self.fusion == Fusion::Fused {
            return self.forward_identity_fused(x, ctx, moments_in);
        }
        let (mut cache, branch_out) = self.forward_inputs(x, ctx, moments_in);
        let mut y = self.add_branch_term(&mut cache, branch_out, ctx.keep_branch);
        self.add_shortcut(&cache, &mut y);
        let (x_next, after_caches) = forward_seq(&self.after_add, y, ctx.mode, self.fusion);
        cache.after_add = after_caches;
        (x_next, cache, None)
    }

    /// The term the branch adds to the sum, `F`, `B F` (scaled) or `g F` (exclusive gate),
    /// in `F(x)`'s own buffer. `F(x)` itself stays in the cache when asked for, and always for
    /// the exclusive gate, whose backward needs it (`d/dg [g F] = F`).
    fn add_branch_term(
        &self,
        cache: &mut UnitCache<T>,
        branch_out: Tensor<T>,
        keep: bool,
    ) -> Tensor<T> {
        if keep || shortcut::needs_branch_output(self.shortcut) {
            cache.branch_out = Some(branch_out.clone());
        }
        shortcut::weight_branch(self.shortcut, &cache.shortcut, branch_out)
    }

    /// `F'(x)` of a cached pass made with `keep_branch` (the analyses' forward).
    pub fn branch_term(&self, cache: &UnitCache<T>) -> Tensor<T> {
        let f = cache
            .branch_out
            .as_ref()
            .expect("F(x) is kept only by a forward pass with keep_branch");
        shortcut::branch_term(self.shortcut, &cache.shortcut, f)
    }

    /// `grad_y = J_f^T grad_next`: through the after-addition function.
    fn grad_sum(
        &self,
        cache: &UnitCache<T>,
        grad_next: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        backward_seq(
            &self.after_add,
            &cache.after_add,
            grad_next,
            grads,
            self.fusion,
        )
    }

    /// `J_h(x)^T grad_y`; takes `grad_y` by value so identity-like shortcuts reuse it.
    fn shortcut_part(
        &self,
        cache: &UnitCache<T>,
        grad_y: Tensor<T>,
        mut grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        let g = shortcut::shortcut_vjp(
            self.shortcut,
            &self.shortcut_ops,
            &cache.shortcut,
            self.split_input(cache),
            grad_y,
            grads.as_deref_mut(),
        );
        self.through_pre(cache, g, grads)
    }

    /// Backward through the shared pre-activation, if any (linear in the gradient, so the
    /// shortcut and branch parts can each pass through it and still add up).
    fn through_pre(
        &self,
        cache: &UnitCache<T>,
        g: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        if self.pre.is_empty() {
            g
        } else {
            backward_seq(&self.pre, &cache.pre, g, grads, self.fusion)
        }
    }

    /// `J_{F'}(x)^T grad_y`.
    fn branch_part(
        &self,
        cache: &UnitCache<T>,
        grad_y: &Tensor<T>,
        mut grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        let grad_f = shortcut::branch_weight_vjp(self.shortcut, &cache.shortcut, grad_y);
        let mut grad_x = backward_seq(
            &self.branch,
            &cache.branch,
            grad_f,
            grads.as_deref_mut(),
            self.fusion,
        );
        if let Some(g) = shortcut::branch_weight_input_vjp(
            self.shortcut,
            &self.shortcut_ops,
            &cache.shortcut,
            cache.branch_out.as_ref(),
            grad_y,
            grads.as_deref_mut(),
        ) {
            grad_x += &g;
        }
        self.through_pre(cache, grad_x, grads)
    }

    /// Full backward: `dE/dx_l` from `dE/dx_{l+1}`, parameter gradients into `grads` if given.
    pub fn backward(
        &self,
        cache: &UnitCache<T>,
        grad_next: &Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        if self.is_identity_unit() && self.fusion == Fusion::Fused {
            return self.backward_identity_fused(cache, grad_next, grads);
        }
        let (mut s, b) = self.backward_split_inner(cache, grad_next, grads);
        s += &b;
        s
    }

    /// Both parts of the backward, `(shortcut part, branch part)`; their sum is `dE/dx_l`.
    pub fn backward_split(
        &self,
        cache: &UnitCache<T>,
        grad_next: &Tensor<T>,
    ) -> (Tensor<T>, Tensor<T>) {
        self.backward_split_inner(cache, grad_next, None)
    }

    fn backward_split_inner(
        &self,
        cache: &UnitCache<T>,
        grad_next: &Tensor<T>,
        mut grads: Option<&mut Grads<T>>,
    ) -> (Tensor<T>, Tensor<T>) {
        let grad_y = self.grad_sum(cache, grad_next.clone(), grads.as_deref_mut());
        let b = self.branch_part(cache, &grad_y, grads.as_deref_mut());
        let s = self.shortcut_part(cache, grad_y, grads);
        (s, b)
    }

    /// The vector-Jacobian product through the shortcut path only (f included).
    pub fn vjp_shortcut(&self, cache: &UnitCache<T>, grad_next: &Tensor<T>) -> Tensor<T> {
        let grad_y = self.grad_sum(cache, grad_next.clone(), None);
        self.shortcut_part(cache, grad_y, None)
    }

    /// The vector-Jacobian product through the branch only (f included).
    pub fn vjp_branch(&self, cache: &UnitCache<T>, grad_next: &Tensor<T>) -> Tensor<T> {
        let grad_y = self.grad_sum(cache, grad_next.clone(), None);
        self.branch_part(cache, &grad_y, None)
    }

    /// Multiplies the initial weights of the branch's weight layers by `gain` (DeepNorm's `b`).
    pub fn scale_branch_weights(&mut self, gain: T) {
        for op in &mut self.branch {
            match op {
                Op::Dense(d) => d.w *= gain,
                Op::Conv(c) => c.w *= gain,
                _ => {}
            }
        }
    }

    /// Replaces every ReLU by the pattern it had in `cache` (see `Network::with_frozen_relus`).
    pub fn freeze_relus(&mut self, cache: &UnitCache<T>) {
        freeze_relus_seq(&mut self.pre, &cache.pre);
        freeze_relus_seq(&mut self.branch, &cache.branch);
        freeze_relus_seq(&mut self.after_add, &cache.after_add);
        freeze_relus_seq(&mut self.shortcut_ops, &cache.shortcut.ops);
    }

    pub fn update_running_stats(&mut self, cache: &UnitCache<T>) {
        update_running_stats_seq(&mut self.pre, &cache.pre);
        update_running_stats_seq(&mut self.branch, &cache.branch);
        update_running_stats_seq(&mut self.after_add, &cache.after_add);
        update_running_stats_seq(&mut self.shortcut_ops, &cache.shortcut.ops);
    }

    /// Every BatchNorm of the unit with its cache from `cache` (pre, branch, after-addition,
    /// shortcut), for diagnostics that read the batch statistics.
    pub fn visit_bn_caches<'a>(
        &'a self,
        cache: &'a UnitCache<T>,
        f: &mut dyn FnMut(&'a crate::layers::BatchNorm<T>, &'a crate::layers::BatchNormCache<T>),
    ) {
        for (ops, caches) in [
            (&self.pre, &cache.pre),
            (&self.branch, &cache.branch),
            (&self.after_add, &cache.after_add),
            (&self.shortcut_ops, &cache.shortcut.ops),
        ] {
            crate::unit::ops::visit_bn_caches(ops, caches, f);
        }
    }

    /// Every op of the unit, in visiting order (pre, branch, after-addition, shortcut).
    pub fn ops(&self) -> impl Iterator<Item = &Op<T>> {
        self.pre
            .iter()
            .chain(&self.branch)
            .chain(&self.after_add)
            .chain(&self.shortcut_ops)
    }

    /// As [`ResidualUnit::ops`], to change them (initialisations).
    pub fn ops_mut(&mut self) -> impl Iterator<Item = &mut Op<T>> {
        self.pre
            .iter_mut()
            .chain(&mut self.branch)
            .chain(&mut self.after_add)
            .chain(&mut self.shortcut_ops)
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        self.ops().for_each(|op| op.visit_params(f));
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        self.ops_mut().for_each(|op| op.visit_params_mut(f));
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        self.ops().for_each(|op| op.visit_buffers(f));
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        self.ops_mut().for_each(|op| op.visit_buffers_mut(f));
    }

    /// e.g. "W BN ReLU W BN | add | ReLU".
    pub fn describe(&self) -> String {
        let seq = |ops: &[Op<T>]| ops.iter().map(|o| o.label()).collect::<Vec<_>>().join(" ");
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

    // ---- Fast path: the paper's identity unit, fused ----------------------------------------
    //
    // With identity h and f and no shared pre-activation, `x_{l+1} = x_l + F(x_l)`: the branch
    // adds `x` inside its last layer (sample by sample, while the output is in cache) and
    // measures the sum's plane moments there for the next unit's first BatchNorm; backward
    // reads `dE/dx_{l+1}` in place and adds it in the branch's last pass. Same numbers as the
    // readable path above, two fewer passes over `x_{l+1}` each way.

    /// The paper's unit: identity shortcut and after-addition function, no shared
    /// pre-activation.
    fn is_identity_unit(&self) -> bool {
        self.pre.is_empty() && self.after_add.is_empty() && self.shortcut.is_identity_h()
    }

    fn forward_identity_fused(
        &self,
        x: Arc<Tensor<T>>,
        ctx: &ForwardCtx,
        moments_in: Option<Moments<T>>,
    ) -> (Tensor<T>, UnitCache<T>, Option<Moments<T>>) {
        let extras = SeqExtras {
            moments_in,
            epilogue: Epilogue {
                add: Some(&x),
                moments: true,
            },
            drop_weight_inputs: !ctx.weight_grads,
            fusion: Fusion::Fused,
        };
        let (y, branch, moments) = forward_seq_with(&self.branch, Arc::clone(&x), ctx.mode, extras);
        let cache = UnitCache {
            x,
            pre: Vec::new(),
            split_input: None,
            branch,
            branch_out: None,
            shortcut: ShortcutCache::default(),
            after_add: Vec::new(),
        };
        (y, cache, moments)
    }

    /// `dE/dx_l = J_F^T grad + grad`, with no copies of `grad`.
    fn backward_identity_fused(
        &self,
        cache: &UnitCache<T>,
        grad_next: &Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        if fault::active(Fault::FusedIdentityResidual) {
            let wrong = grad_next * T::of_f64(fault::FACTOR);
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
}
