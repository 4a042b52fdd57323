//! A branch or an after-addition function is a short sequence of ops. The sequence runs
//! forward keeping one cache per op and backward in reverse; the residual unit never looks
//! inside, so conv layers plug in as new `Op` variants.

use std::borrow::Cow;
use std::sync::Arc;

use crate::grads::Grads;
use crate::kernels::norm::Moments;
use crate::kernels::Epilogue;
use crate::layers::pad_shortcut::PadShortcut;
use crate::layers::pool;
use crate::layers::preact_conv;
use crate::layers::{
    dense_fused, relu, BatchNorm, BatchNormCache, Conv2d, ConvCache, Dense, DenseCache, Mode, Norm,
    NormCache,
};
use crate::tensor::Tensor;

// Ops are built once per network (a few hundred at most), so their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Op {
    Dense(Dense),
    Conv(Conv2d),
    /// Global average pooling `(N, C, H, W) -> (N, C)`.
    Pool,
    /// The option-A shortcut of a shape-changing unit (subsample, zero-pad the new channels).
    PadShortcut(PadShortcut),
    /// A normalisation slot, filled by the network's [`NormKind`](crate::layers::NormKind).
    Norm(Norm),
    Relu,
    /// A ReLU frozen at one point: multiply by that point's fixed 0/1 pattern. Finite
    /// differences use it to stay on the base point's linear piece (see `Network::with_frozen_relus`).
    Mask(Tensor),
}

#[derive(Debug, Clone)]
pub enum OpCache {
    Dense(DenseCache),
    Conv(ConvCache),
    /// The pooled input's shape.
    Pool(Vec<usize>),
    /// The padded shortcut's input shape.
    PadShortcut(Vec<usize>),
    Norm(NormCache),
    Relu(relu::ReluCache),
    Mask,
    /// The ReLU and the convolution of a fused BN-ReLU-conv: their state lives in the
    /// BatchNorm's cache (the ReLU mask and the conv input are recomputed from `x`).
    FusedRelu,
    FusedConv,
}

impl Op {
    /// Takes the input by value so layers can reuse or keep its buffer without a copy.
    pub fn forward(&self, x: Tensor, mode: Mode) -> (Tensor, OpCache) {
        match self {
            Op::Dense(d) => {
                let (y, c) = d.forward(x);
                (y, OpCache::Dense(c))
            }
            Op::Conv(conv) => {
                let (y, c) = conv.forward(x);
                (y, OpCache::Conv(c))
            }
            Op::Pool => (pool::forward(&x), OpCache::Pool(x.shape().to_vec())),
            Op::PadShortcut(p) => (p.forward(&x), OpCache::PadShortcut(x.shape().to_vec())),
            Op::Norm(n) => {
                let (y, c) = n.forward(x, mode);
                (y, OpCache::Norm(c))
            }
            Op::Relu => {
                let (y, c) = relu::forward(x);
                (y, OpCache::Relu(c))
            }
            Op::Mask(m) => (x * m, OpCache::Mask),
        }
    }

    /// Takes the output gradient by value (element-wise layers work in place).
    pub fn backward(&self, cache: &OpCache, grad_y: Tensor, grads: Option<&mut Grads>) -> Tensor {
        match (self, cache) {
            (Op::Dense(d), OpCache::Dense(c)) => d.backward(c, &grad_y, grads),
            (Op::Conv(conv), OpCache::Conv(c)) => conv.backward(c, &grad_y, grads),
            (Op::Pool, OpCache::Pool(shape)) => pool::backward(shape, &grad_y),
            (Op::PadShortcut(p), OpCache::PadShortcut(shape)) => p.backward(shape, &grad_y),
            (Op::Norm(n), OpCache::Norm(c)) => n.backward(c, grad_y, grads),
            (Op::Relu, OpCache::Relu(c)) => relu::backward(c, grad_y),
            (Op::Mask(m), OpCache::Mask) => grad_y * m,
            _ => unreachable!("op and cache kinds always match: caches are made by forward"),
        }
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor)) {
        match self {
            Op::Dense(d) => d.visit_params(f),
            Op::Conv(c) => c.visit_params(f),
            Op::Norm(n) => n.visit_params(f),
            Op::Relu | Op::Mask(_) | Op::Pool | Op::PadShortcut(_) => {}
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        match self {
            Op::Dense(d) => d.visit_params_mut(f),
            Op::Conv(c) => c.visit_params_mut(f),
            Op::Norm(n) => n.visit_params_mut(f),
            Op::Relu | Op::Mask(_) | Op::Pool | Op::PadShortcut(_) => {}
        }
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor)) {
        if let Op::Norm(n) = self {
            n.visit_buffers(f)
        }
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        if let Op::Norm(n) = self {
            n.visit_buffers_mut(f)
        }
    }

    /// Short human-readable name ("W", "BN", "ReLU"), for descriptions.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Dense(_) => "W",
            Op::Conv(c) if c.k() == 1 => "W1x1",
            Op::Conv(_) => "W3x3",
            Op::Pool => "pool",
            Op::PadShortcut(_) => "pad",
            Op::Norm(n) => n.label(),
            Op::Relu => "ReLU",
            Op::Mask(_) => "ReLU(frozen)",
        }
    }
}

/// How a pass runs its op sequences: the fused engine, or the plain interpreter beside it
/// (`--unfused`: one layer at a time, each layer's own forward and backward, sums formed
/// after the sequence). The two give the same numbers (tested for every placement, shortcut
/// and projection, input and parameter gradients); the plain one is the reference the
/// fusions are held to, and slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fusion {
    #[default]
    Fused,
    Plain,
}

impl Fusion {
    /// The engine a `--unfused` flag (or an experiment's `unfused` key) asks for.
    pub fn from_unfused(unfused: bool) -> Fusion {
        if unfused {
            Fusion::Plain
        } else {
            Fusion::Fused
        }
    }
}

/// Runs `ops` in order; an empty sequence is the identity. Fused groups run as one op and
/// yield every member's cache slot: BN-ReLU-conv (the pre-activation convolution, see
/// `layers::preact_conv`) and BN-ReLU (one pass, both caches). Same values, fewer passes.
pub fn forward_seq(ops: &[Op], x: Tensor, mode: Mode, fusion: Fusion) -> (Tensor, Vec<OpCache>) {
    let extras = SeqExtras {
        fusion,
        ..SeqExtras::default()
    };
    let (y, caches, _) = forward_seq_with(ops, Arc::new(x), mode, extras);
    (y, caches)
}

// ---- The plain interpreter ------------------------------------------------------------------

/// One op at a time, each op's own forward; the epilogue's tensor is added after the last op
/// and no moments are handed on. The reference every fused stage must equal.
fn forward_plain(
    ops: &[Op],
    x: Arc<Tensor>,
    mode: Mode,
    extras: SeqExtras,
) -> (Tensor, Vec<OpCache>, Option<Moments>) {
    let mut caches = Vec::with_capacity(ops.len());
    let mut y = Arc::unwrap_or_clone(x);
    for op in ops {
        let (next, mut c) = op.forward(y, mode);
        if let (OpCache::Dense(dc), true) = (&mut c, extras.drop_weight_inputs) {
            dc.x = None;
        }
        caches.push(c);
        y = next;
    }
    if let Some(r) = extras.epilogue.add {
        crate::tensor::add_assign(&mut y, r);
    }
    (y, caches, None)
}

/// Each op's own backward, in reverse; `residual` is added to the input gradient at the end.
fn backward_plain(
    ops: &[Op],
    caches: &[OpCache],
    grad_y: Tensor,
    mut grads: Option<&mut Grads>,
    residual: Option<&Tensor>,
) -> Tensor {
    let mut g = ops
        .iter()
        .zip(caches)
        .rev()
        .fold(grad_y, |g, (op, c)| op.backward(c, g, grads.as_deref_mut()));
    if let Some(r) = residual {
        crate::tensor::add_assign(&mut g, r);
    }
    g
}

// ---- The fused engine -----------------------------------------------------------------------

/// What a sequence's forward pass receives or hands over besides the tensors.
#[derive(Default)]
pub struct SeqExtras<'a> {
    /// The input's plane moments, from the op that wrote it.
    pub moments_in: Option<Moments>,
    /// What the sequence's last op does to its output: add a tensor (a residual unit's
    /// identity shortcut, inside the last layer while each sample is in cache; after the
    /// sequence otherwise) and hand back the output's moments (when the last op can).
    pub epilogue: Epilogue<'a>,
    /// No weight gradient will be asked of this pass: weight layers need not keep their
    /// inputs (see [`ForwardCtx::weight_grads`](crate::unit::ForwardCtx::weight_grads)).
    pub drop_weight_inputs: bool,
    /// Fused stages, or the plain interpreter.
    pub fusion: Fusion,
}

/// [`forward_seq`] from an input the caller keeps too (a leading BatchNorm caches the shared
/// input instead of a copy; any other first op gets the tensor itself, copied only if the
/// caller still holds it), with [`SeqExtras`]. Between fused groups, a pre-activation conv
/// followed by a BatchNorm hands over its output's plane moments (training mode), so the
/// BatchNorm skips its statistics pass: the same bits either way.
pub fn forward_seq_with(
    ops: &[Op],
    x: Arc<Tensor>,
    mode: Mode,
    extras: SeqExtras,
) -> (Tensor, Vec<OpCache>, Option<Moments>) {
    if extras.fusion == Fusion::Plain {
        return forward_plain(ops, x, mode, extras);
    }
    let mut caches = Vec::with_capacity(ops.len());
    let mut input = Input::Shared(x);
    let mut moments = extras.moments_in;
    let epilogue = extras.epilogue;
    // The tensor to add, until a stage takes it in.
    let mut add = epilogue.add;
    let mut i = 0;
    while i < ops.len() {
        let rest = &ops[i..];
        let (y, used, next_moments) = match rest {
            [Op::Norm(Norm::Batch(bn)), Op::Relu, Op::Conv(conv), more @ ..] => {
                let last = more.is_empty();
                let wanted = if last {
                    epilogue.moments
                } else {
                    matches!(more.first(), Some(Op::Norm(Norm::Batch(_))))
                };
                let fused = preact_conv::Extras {
                    moments_in: moments.as_ref(),
                    epilogue: Epilogue {
                        add: if last { add.take() } else { None },
                        moments: wanted && mode == Mode::Train,
                    },
                };
                let (y, c, m) =
                    preact_conv::forward_with(bn, conv, input.into_shared(), mode, &fused);
                caches.extend([
                    OpCache::Norm(NormCache::Batch(c)),
                    OpCache::FusedRelu,
                    OpCache::FusedConv,
                ]);
                (y, 3, m)
            }
            [Op::Dense(d), Op::Norm(Norm::Batch(bn)), more @ ..]
                if dense_fused::applies(d, input.tensor(), Some((bn, mode))) =>
            {
                let relu = matches!(more.first(), Some(Op::Relu));
                let keep = !extras.drop_weight_inputs;
                let (y, dc, bc, rc) =
                    dense_fused::forward_bn(d, bn, input.into_owned(), mode, relu, keep);
                caches.extend([OpCache::Dense(dc), OpCache::Norm(NormCache::Batch(bc))]);
                if let Some(r) = rc {
                    caches.push(OpCache::Relu(r));
                }
                (y, 2 + usize::from(relu), None)
            }
            [Op::Dense(d)]
                if add.is_some_and(|r| r.shape() == [input.tensor().shape()[0], d.d_out()])
                    && dense_fused::applies(d, input.tensor(), None) =>
            {
                let last = Epilogue {
                    add: add.take(),
                    moments: epilogue.moments && mode == Mode::Train,
                };
                let keep = !extras.drop_weight_inputs;
                let (y, dc, m) = dense_fused::forward_then(d, input.into_owned(), last, keep);
                caches.push(OpCache::Dense(dc));
                (y, 1, m)
            }
            [Op::Norm(Norm::Batch(bn)), more @ ..] => {
                let relu = matches!(more.first(), Some(Op::Relu));
                let (y, c, r) =
                    bn.forward_shared(input.into_shared(), mode, relu, moments.as_ref());
                caches.push(OpCache::Norm(NormCache::Batch(c)));
                if let Some(r) = r {
                    caches.push(OpCache::Relu(r));
                }
                (y, 1 + usize::from(relu), None)
            }
            [op, ..] => {
                let (y, mut c) = op.forward(input.into_owned(), mode);
                if let (OpCache::Dense(dc), true) = (&mut c, extras.drop_weight_inputs) {
                    dc.x = None;
                }
                caches.push(c);
                (y, 1, None)
            }
            [] => unreachable!("the loop stops at the end"),
        };
        input = Input::Owned(y);
        moments = next_moments;
        i += used;
    }
    let mut y = input.into_owned();
    if let Some(r) = add {
        // The last op could not take the tensor in: add it now (no moments, then).
        crate::tensor::add_assign(&mut y, r);
        moments = None;
    }
    (y, caches, moments)
}

/// An op's input: owned, or shared with the caller (only a BatchNorm keeps it as it is).
enum Input {
    Owned(Tensor),
    Shared(Arc<Tensor>),
}

impl Input {
    fn tensor(&self) -> &Tensor {
        match self {
            Input::Owned(t) => t,
            Input::Shared(a) => a,
        }
    }

    fn into_shared(self) -> Arc<Tensor> {
        match self {
            Input::Owned(t) => Arc::new(t),
            Input::Shared(a) => a,
        }
    }

    fn into_owned(self) -> Tensor {
        match self {
            Input::Owned(t) => t,
            Input::Shared(a) => Arc::unwrap_or_clone(a),
        }
    }
}

/// Backward through the op or fused group that ends `ops`; returns the input gradient and
/// how many ops it covered. Weight layers read a borrowed gradient in place. When the group
/// is the whole of `ops`, `residual` is added to its input gradient (inside the fused
/// pre-activation conv's last pass; after the op otherwise).
fn backward_group(
    ops: &[Op],
    caches: &[OpCache],
    grad: Cow<'_, Tensor>,
    grads: Option<&mut Grads>,
    residual: Option<&Tensor>,
) -> (Tensor, usize) {
    let first = |used: usize| residual.filter(|_| used == ops.len());
    let (mut g, used) = match (ops, caches) {
        (
            [.., Op::Norm(Norm::Batch(bn)), Op::Relu, Op::Conv(conv)],
            [.., OpCache::Norm(NormCache::Batch(c)), OpCache::FusedRelu, OpCache::FusedConv],
        ) => {
            let g = preact_conv::backward(bn, conv, c, &grad, grads, first(3));
            return (g, 3);
        }
        (
            [.., Op::Norm(Norm::Batch(bn)), Op::Relu, Op::Dense(d)],
            [.., OpCache::Norm(NormCache::Batch(c)), OpCache::Relu(r), OpCache::Dense(dc)],
        ) if dense_fused::backward_applies(d, dc, c, &grad, grads.is_some()) => {
            let g = dense_fused::backward_bn(bn, c, Some(r), d, dc, &grad, grads, first(3));
            return (g, 3);
        }
        (
            [.., Op::Norm(Norm::Batch(bn)), Op::Dense(d)],
            [.., OpCache::Norm(NormCache::Batch(c)), OpCache::Dense(dc)],
        ) if dense_fused::backward_applies(d, dc, c, &grad, grads.is_some()) => {
            let g = dense_fused::backward_bn(bn, c, None, d, dc, &grad, grads, first(2));
            return (g, 2);
        }
        (
            [.., Op::Norm(Norm::Batch(bn)), Op::Relu],
            [.., OpCache::Norm(NormCache::Batch(c)), OpCache::Relu(r)],
        ) => (bn.backward_relu(c, r, grad.into_owned(), grads), 2),
        ([.., Op::Dense(d)], [.., OpCache::Dense(c)]) => (d.backward(c, &grad, grads), 1),
        ([.., Op::Conv(conv)], [.., OpCache::Conv(c)]) => (conv.backward(c, &grad, grads), 1),
        ([.., op], [.., c]) => (op.backward(c, grad.into_owned(), grads), 1),
        _ => unreachable!("backward_group is called with at least one op"),
    };
    if let Some(r) = first(used) {
        crate::tensor::add_assign(&mut g, r);
    }
    (g, used)
}

/// Backward through `ops` in reverse order.
pub fn backward_seq(
    ops: &[Op],
    caches: &[OpCache],
    grad_y: Tensor,
    grads: Option<&mut Grads>,
    fusion: Fusion,
) -> Tensor {
    match fusion {
        Fusion::Fused => backward_seq_cow(ops, caches, Cow::Owned(grad_y), grads, None),
        Fusion::Plain => backward_plain(ops, caches, grad_y, grads, None),
    }
}

/// As [`backward_seq`] from a gradient the caller keeps (a trailing weight layer reads it in
/// place; otherwise it is copied once), plus `residual` added to the input gradient: the
/// identity shortcut's term of `dE/dx_l`, added in the branch's last pass.
pub fn backward_seq_ref(
    ops: &[Op],
    caches: &[OpCache],
    grad_y: &Tensor,
    grads: Option<&mut Grads>,
    residual: Option<&Tensor>,
) -> Tensor {
    backward_seq_cow(ops, caches, Cow::Borrowed(grad_y), grads, residual)
}

fn backward_seq_cow(
    ops: &[Op],
    caches: &[OpCache],
    grad_y: Cow<'_, Tensor>,
    mut grads: Option<&mut Grads>,
    residual: Option<&Tensor>,
) -> Tensor {
    let mut end = ops.len();
    if end == 0 {
        let mut g = grad_y.into_owned();
        if let Some(r) = residual {
            crate::tensor::add_assign(&mut g, r);
        }
        return g;
    }
    let mut g = grad_y;
    loop {
        let (next, used) = backward_group(
            &ops[..end],
            &caches[..end],
            g,
            grads.as_deref_mut(),
            residual,
        );
        end -= used;
        if end == 0 {
            return next;
        }
        g = Cow::Owned(next);
    }
}

/// Replaces every ReLU of `ops` by the fixed pattern it had in `caches` (a fused ReLU's
/// pattern is recomputed from its BatchNorm's cache, exactly as the forward pass decided it).
pub fn freeze_relus_seq(ops: &mut [Op], caches: &[OpCache]) {
    for i in 0..ops.len().min(caches.len()) {
        let positive = match (&caches[i], i.checked_sub(1).map(|j| (&ops[j], &caches[j]))) {
            (OpCache::Relu(c), _) => c.positive.clone(),
            (
                OpCache::FusedRelu,
                Some((Op::Norm(Norm::Batch(bn)), OpCache::Norm(NormCache::Batch(c)))),
            ) => bn.relu_mask(c),
            _ => continue,
        };
        ops[i] = Op::Mask(positive.mapv(|p| if p { 1.0 } else { 0.0 }));
    }
}

/// Every BatchNorm of `ops` with its cache.
pub fn visit_bn_caches<'a>(
    ops: &'a [Op],
    caches: &'a [OpCache],
    f: &mut dyn FnMut(&'a BatchNorm, &'a BatchNormCache),
) {
    for (op, cache) in ops.iter().zip(caches) {
        if let (Op::Norm(Norm::Batch(bn)), OpCache::Norm(NormCache::Batch(c))) = (op, cache) {
            f(bn, c);
        }
    }
}

/// Updates the running statistics of every BatchNorm in `ops` from a training-mode pass.
pub fn update_running_stats_seq(ops: &mut [Op], caches: &[OpCache]) {
    for (op, cache) in ops.iter_mut().zip(caches) {
        if let (Op::Norm(n), OpCache::Norm(c)) = (op, cache) {
            n.update_running_stats(c);
        }
    }
}
