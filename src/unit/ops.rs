//! A branch or an after-addition function is a short sequence of ops. The sequence runs
//! forward keeping one cache per op and backward in reverse; the residual unit never looks
//! inside, so conv layers plug in as new `Op` variants.
//!
//! Two engines run a sequence ([`Fusion`]):
//!
//! - the plain interpreter (`--unfused`): each op's own forward and backward, one at a time;
//! - the fused engine: [`forward_plan`] and [`backward_plan`] cut the sequence into
//!   [`Stage`]s by op pattern and shape (BN-ReLU-conv, dense+BN(-ReLU), BN-ReLU, the last
//!   dense layer taking the epilogue, one op alone), each run by one kernel that gives the
//!   bits of its ops run alone. The plan is a pure function of the ops and the shapes (the
//!   backward's of the forward pass's caches), made at the start of each pass: a few
//!   comparisons per op, and never stale when ops are replaced (frozen ReLUs).
//!
//! `tests/it/fusion.rs` holds the two engines equal bit for bit on whole networks.

use std::borrow::Cow;
use std::sync::Arc;

use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::norm::Moments;
use crate::kernels::Epilogue;
use crate::layers::avg_pool::{AvgPool, AvgPoolCache};
use crate::layers::branch_scale::{BranchScale, BranchScaleCache};
use crate::layers::pad_shortcut::PadShortcut;
use crate::layers::preact_conv;
use crate::layers::scalar_bias::ScalarBias;
use crate::layers::{
    dense_fused, relu, BatchNorm, BatchNormCache, Conv2d, ConvCache, Dense, DenseCache, Mode, Norm,
    NormCache,
};
use crate::layers::{flatten, pool, sigmoid};
use crate::tensor::Tensor;

// Ops are built once per network (a few hundred at most), so their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Op<T: Float = f64> {
    Dense(Dense<T>),
    Conv(Conv2d<T>),
    /// Global average pooling `(N, C, H, W) -> (N, C)`.
    Pool,
    /// Max pooling over k x k windows (an imported model's, e.g. torchvision's ResNet stem).
    MaxPool(crate::layers::max_pool::MaxPool),
    /// Average pooling over k x k windows (an imported model's).
    AvgPool(AvgPool),
    /// Each sample flattened into a vector, `(N, C, H, W) -> (N, C H W)` (an imported
    /// model's classifier on a feature map).
    Flatten,
    /// The option-A shortcut of a shape-changing unit (subsample, zero-pad the new channels).
    PadShortcut(PadShortcut),
    /// A normalisation slot, filled by the network's [`NormKind`](crate::layers::NormKind).
    Norm(Norm<T>),
    Relu,
    /// The logistic sigmoid, element-wise (an imported model's).
    Sigmoid,
    /// A learned scale on the branch's output (`alpha:A`, `layerscale:E`, Fixup's multiplier).
    BranchScale(BranchScale<T>),
    /// A learned scalar added to every element (Fixup's biases).
    ScalarBias(ScalarBias<T>),
    /// A ReLU frozen at one point: multiply by that point's fixed 0/1 pattern. Finite
    /// differences use it to stay on the base point's linear piece (see `Network::with_frozen_relus`).
    Mask(Tensor<T>),
}

#[derive(Debug, Clone)]
pub enum OpCache<T: Float = f64> {
    Dense(DenseCache<T>),
    Conv(ConvCache<T>),
    /// The pooled input's shape.
    Pool(Vec<usize>),
    MaxPool(crate::layers::max_pool::MaxPoolCache),
    AvgPool(AvgPoolCache),
    /// The flattened input's shape.
    Flatten(Vec<usize>),
    /// The padded shortcut's input shape.
    PadShortcut(Vec<usize>),
    Norm(NormCache<T>),
    Relu(relu::ReluCache),
    /// The sigmoid's output `g`: its derivative is `g (1 - g)`.
    Sigmoid(Tensor<T>),
    BranchScale(BranchScaleCache<T>),
    ScalarBias,
    Mask,
    /// The ReLU and the convolution of a fused BN-ReLU-conv: their state lives in the
    /// BatchNorm's cache (the ReLU mask and the conv input are recomputed from `x`).
    FusedRelu,
    FusedConv,
}

impl<T: Float> Op<T> {
    /// Takes the input by value so layers can reuse or keep its buffer without a copy.
    pub fn forward(&self, x: Tensor<T>, mode: Mode) -> (Tensor<T>, OpCache<T>) {
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
            Op::MaxPool(m) => {
                let (y, c) = m.forward(x);
                (y, OpCache::MaxPool(c))
            }
            Op::AvgPool(a) => {
                let (y, c) = a.forward(x);
                (y, OpCache::AvgPool(c))
            }
            Op::Flatten => {
                let (y, shape) = flatten::forward(x);
                (y, OpCache::Flatten(shape))
            }
            Op::PadShortcut(p) => (p.forward(&x), OpCache::PadShortcut(x.shape().to_vec())),
            Op::Norm(n) => {
                let (y, c) = n.forward(x, mode);
                (y, OpCache::Norm(c))
            }
            Op::Relu => {
                let (y, c) = relu::forward(x);
                (y, OpCache::Relu(c))
            }
            Op::Sigmoid => {
                let g = sigmoid::forward_in_place(x);
                (g.clone(), OpCache::Sigmoid(g))
            }
            Op::BranchScale(b) => {
                let (y, c) = b.forward(x);
                (y, OpCache::BranchScale(c))
            }
            Op::ScalarBias(b) => (b.forward(x), OpCache::ScalarBias),
            Op::Mask(m) => (x * m, OpCache::Mask),
        }
    }

    /// Takes the output gradient by value (element-wise layers work in place).
    pub fn backward(
        &self,
        cache: &OpCache<T>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        match (self, cache) {
            (Op::Dense(d), OpCache::Dense(c)) => d.backward(c, &grad_y, grads),
            (Op::Conv(conv), OpCache::Conv(c)) => conv.backward(c, &grad_y, grads),
            (Op::Pool, OpCache::Pool(shape)) => pool::backward(shape, &grad_y),
            (Op::MaxPool(m), OpCache::MaxPool(c)) => m.backward(c, grad_y),
            (Op::AvgPool(a), OpCache::AvgPool(c)) => a.backward(c, grad_y),
            (Op::Flatten, OpCache::Flatten(shape)) => flatten::backward(shape, grad_y),
            (Op::PadShortcut(p), OpCache::PadShortcut(shape)) => p.backward(shape, &grad_y),
            (Op::Norm(n), OpCache::Norm(c)) => n.backward(c, grad_y, grads),
            (Op::Relu, OpCache::Relu(c)) => relu::backward(c, grad_y),
            (Op::Sigmoid, OpCache::Sigmoid(g)) => sigmoid::backward_in_place(g, grad_y),
            (Op::BranchScale(b), OpCache::BranchScale(c)) => b.backward(c, grad_y, grads),
            (Op::ScalarBias(b), OpCache::ScalarBias) => b.backward(grad_y, grads),
            (Op::Mask(m), OpCache::Mask) => grad_y * m,
            _ => unreachable!("op and cache kinds always match: caches are made by forward"),
        }
    }

    /// The op in another element type, its parameters rounded to nearest.
    pub fn cast<U: Float>(&self) -> Op<U> {
        match self {
            Op::Dense(d) => Op::Dense(d.cast()),
            Op::Conv(c) => Op::Conv(c.cast()),
            Op::Norm(n) => Op::Norm(n.cast()),
            Op::BranchScale(b) => Op::BranchScale(b.cast()),
            Op::ScalarBias(b) => Op::ScalarBias(b.cast()),
            Op::Mask(m) => Op::Mask(crate::tensor::cast_ref(m)),
            Op::Relu => Op::Relu,
            Op::Sigmoid => Op::Sigmoid,
            Op::Pool => Op::Pool,
            Op::MaxPool(m) => Op::MaxPool(m.clone()),
            Op::AvgPool(a) => Op::AvgPool(a.clone()),
            Op::Flatten => Op::Flatten,
            Op::PadShortcut(p) => Op::PadShortcut(*p),
        }
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        match self {
            Op::Dense(d) => d.visit_params(f),
            Op::Conv(c) => c.visit_params(f),
            Op::Norm(n) => n.visit_params(f),
            Op::BranchScale(b) => b.visit_params(f),
            Op::ScalarBias(b) => b.visit_params(f),
            Op::Relu
            | Op::Sigmoid
            | Op::Mask(_)
            | Op::Pool
            | Op::MaxPool(_)
            | Op::AvgPool(_)
            | Op::Flatten
            | Op::PadShortcut(_) => {}
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        match self {
            Op::Dense(d) => d.visit_params_mut(f),
            Op::Conv(c) => c.visit_params_mut(f),
            Op::Norm(n) => n.visit_params_mut(f),
            Op::BranchScale(b) => b.visit_params_mut(f),
            Op::ScalarBias(b) => b.visit_params_mut(f),
            Op::Relu
            | Op::Sigmoid
            | Op::Mask(_)
            | Op::Pool
            | Op::MaxPool(_)
            | Op::AvgPool(_)
            | Op::Flatten
            | Op::PadShortcut(_) => {}
        }
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        if let Op::Norm(n) = self {
            n.visit_buffers(f)
        }
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        if let Op::Norm(n) = self {
            n.visit_buffers_mut(f)
        }
    }

    /// The output's shape for an input of shape `in_shape`.
    pub fn out_shape(&self, in_shape: &[usize]) -> Vec<usize> {
        match self {
            Op::Dense(d) => vec![in_shape[0], d.d_out()],
            Op::Conv(c) => c.out_shape(in_shape).to_vec(),
            Op::Pool => in_shape[..2].to_vec(),
            Op::MaxPool(m) => {
                let (h, w) = m.out_hw(in_shape[2], in_shape[3]);
                vec![in_shape[0], in_shape[1], h, w]
            }
            Op::AvgPool(a) => {
                let (h, w) = a.out_hw(in_shape[2], in_shape[3]);
                vec![in_shape[0], in_shape[1], h, w]
            }
            Op::Flatten => vec![in_shape[0], in_shape[1..].iter().product()],
            Op::PadShortcut(p) => p.out_shape(in_shape).to_vec(),
            Op::Norm(_)
            | Op::Relu
            | Op::Sigmoid
            | Op::Mask(_)
            | Op::BranchScale(_)
            | Op::ScalarBias(_) => in_shape.to_vec(),
        }
    }

    /// Multiply-adds of this op's forward pass per sample, for an input of shape `in_shape`
    /// (a weight layer's; the others' elementwise work is left out).
    pub fn macs(&self, in_shape: &[usize]) -> f64 {
        match self {
            Op::Dense(d) => (d.d_in() * d.d_out()) as f64,
            Op::Conv(c) => {
                let out = c.out_shape(in_shape);
                let per_pixel: usize = c.w.shape().iter().product();
                per_pixel as f64 * (out[2] * out[3]) as f64
            }
            Op::Pool
            | Op::MaxPool(_)
            | Op::AvgPool(_)
            | Op::Flatten
            | Op::PadShortcut(_)
            | Op::Norm(_)
            | Op::Relu
            | Op::Sigmoid
            | Op::BranchScale(_)
            | Op::ScalarBias(_)
            | Op::Mask(_) => 0.0,
        }
    }

    /// Short human-readable name ("W", "W3x3", "BN", "ReLU"), for descriptions.
    pub fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Op::Dense(_) => "W",
            // The kernel's size, as an imported model may have any (torchvision's stem: 7x7).
            Op::Conv(c) => return Cow::Owned(format!("W{0}x{0}", c.k())),
            Op::Pool => "pool",
            Op::MaxPool(_) => "maxpool",
            Op::AvgPool(_) => "avgpool",
            Op::Flatten => "flatten",
            Op::PadShortcut(_) => "pad",
            Op::Norm(n) => n.label(),
            Op::BranchScale(b) if b.a.len() == 1 => "alpha",
            Op::BranchScale(_) => "diag",
            Op::ScalarBias(_) => "+b",
            Op::Relu => "ReLU",
            Op::Sigmoid => "sigmoid",
            Op::Mask(_) => "ReLU(frozen)",
        })
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

/// Runs `ops` in order; an empty sequence is the identity. The fused engine runs the ops in
/// the stages of [`forward_plan`]; each stage yields every member's cache slot. Same values
/// as one op at a time, fewer passes.
pub fn forward_seq<T: Float>(
    ops: &[Op<T>],
    x: Tensor<T>,
    mode: Mode,
    fusion: Fusion,
) -> (Tensor<T>, Vec<OpCache<T>>) {
    let extras = SeqExtras {
        fusion,
        ..SeqExtras::default()
    };
    let (y, caches, _) = forward_seq_with(ops, Arc::new(x), mode, extras);
    (y, caches)
}

/// What a sequence's forward pass receives or hands over besides the tensors.
#[derive(Default)]
pub struct SeqExtras<'a, T: Float = f64> {
    /// The input's plane moments, from the op that wrote it.
    pub moments_in: Option<Moments<T>>,
    /// What the sequence's last op does to its output: add a tensor (a residual unit's
    /// identity shortcut, inside the last layer while each sample is in cache; after the
    /// sequence otherwise) and hand back the output's moments (when the last op can).
    pub epilogue: Epilogue<'a, T>,
    /// No weight gradient will be asked of this pass: weight layers need not keep their
    /// inputs (see [`ForwardCtx::weight_grads`](crate::unit::ForwardCtx::weight_grads)).
    pub drop_weight_inputs: bool,
    /// Fused stages, or the plain interpreter.
    pub fusion: Fusion,
}

/// [`forward_seq`] from an input the caller keeps too (a leading BatchNorm caches the shared
/// input instead of a copy; any other first op gets the tensor itself, copied only if the
/// caller still holds it), with [`SeqExtras`].
pub fn forward_seq_with<T: Float>(
    ops: &[Op<T>],
    x: Arc<Tensor<T>>,
    mode: Mode,
    extras: SeqExtras<'_, T>,
) -> (Tensor<T>, Vec<OpCache<T>>, Option<Moments<T>>) {
    match extras.fusion {
        Fusion::Fused => forward_fused(ops, x, mode, extras),
        Fusion::Plain => forward_plain(ops, x, mode, extras),
    }
}

/// Backward through `ops` in reverse order.
pub fn backward_seq<T: Float>(
    ops: &[Op<T>],
    caches: &[OpCache<T>],
    grad_y: Tensor<T>,
    grads: Option<&mut Grads<T>>,
    fusion: Fusion,
) -> Tensor<T> {
    match fusion {
        Fusion::Fused => backward_fused(ops, caches, Cow::Owned(grad_y), grads, None),
        Fusion::Plain => backward_plain(ops, caches, grad_y, grads, None),
    }
}

/// As [`backward_seq`] (fused) from a gradient the caller keeps (a trailing weight layer
/// reads it in place; otherwise it is copied once), plus `add` added to the input gradient
/// (the identity shortcut's term of `dE/dx_l`) in the pass that reaches the first op.
pub fn backward_seq_ref<T: Float>(
    ops: &[Op<T>],
    caches: &[OpCache<T>],
    grad_y: &Tensor<T>,
    grads: Option<&mut Grads<T>>,
    add: Option<&Tensor<T>>,
) -> Tensor<T> {
    backward_fused(ops, caches, Cow::Borrowed(grad_y), grads, add)
}

// ---- The plain interpreter ------------------------------------------------------------------

/// One op at a time, each op's own forward; the epilogue's tensor is added after the last op
/// and no moments are handed on. The reference every fused stage must equal.
fn forward_plain<T: Float>(
    ops: &[Op<T>],
    x: Arc<Tensor<T>>,
    mode: Mode,
    extras: SeqExtras<'_, T>,
) -> (Tensor<T>, Vec<OpCache<T>>, Option<Moments<T>>) {
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

/// Each op's own backward, in reverse; `add` is added to the input gradient at the end.
fn backward_plain<T: Float>(
    ops: &[Op<T>],
    caches: &[OpCache<T>],
    grad_y: Tensor<T>,
    mut grads: Option<&mut Grads<T>>,
    add: Option<&Tensor<T>>,
) -> Tensor<T> {
    let mut g = ops
        .iter()
        .zip(caches)
        .rev()
        .fold(grad_y, |g, (op, c)| op.backward(c, g, grads.as_deref_mut()));
    if let Some(r) = add {
        crate::tensor::add_assign(&mut g, r);
    }
    g
}

// ---- The fused engine: a plan of stages, then its execution ---------------------------------

/// Ops of a sequence that the fused engine runs as one. A plan is the list of stages that
/// covers a sequence; each stage gives the bits of its ops run one at a time (held to the
/// plain interpreter in `tests/it/fusion.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// BatchNorm, ReLU, convolution: the convolution reads `relu(a x + b)` made per sample
    /// (`layers::preact_conv`); forward and backward.
    PreactConv,
    /// Forward: dense, BatchNorm (and ReLU), by column blocks (`layers::dense_fused`).
    DenseNorm { relu: bool },
    /// Forward: the sequence's last dense layer, the epilogue's tensor added in its column
    /// blocks.
    DenseEpilogue,
    /// Backward: BatchNorm (and ReLU), then dense, by channel blocks.
    NormDense { relu: bool },
    /// A BatchNorm (with the ReLU that follows it) in one pass: forward and backward.
    NormRelu { relu: bool },
    /// One op on its own.
    Single,
}

impl Stage {
    /// How many ops the stage covers.
    pub fn ops(self) -> usize {
        match self {
            Stage::PreactConv => 3,
            Stage::DenseNorm { relu } | Stage::NormDense { relu } => 2 + usize::from(relu),
            Stage::NormRelu { relu } => 1 + usize::from(relu),
            Stage::DenseEpilogue | Stage::Single => 1,
        }
    }
}

/// The forward plan of `ops` for an input of shape `in_shape`: at each position, the first
/// stage whose pattern matches and whose shapes its kernel takes (`add`: the shape of the
/// epilogue's tensor, if any). A function of the ops and the shapes alone.
pub fn forward_plan<T: Float>(
    ops: &[Op<T>],
    in_shape: &[usize],
    mode: Mode,
    add: Option<&[usize]>,
) -> Vec<Stage> {
    let mut plan = Vec::new();
    let mut shape = in_shape.to_vec();
    let mut i = 0;
    while i < ops.len() {
        let rest = &ops[i..];
        let stage = match rest {
            [Op::Norm(Norm::Batch(_)), Op::Relu, Op::Conv(_), ..] => Stage::PreactConv,
            [Op::Dense(d), Op::Norm(Norm::Batch(bn)), more @ ..]
                if dense_fused::applies(d, &shape, Some((bn, mode))) =>
            {
                Stage::DenseNorm {
                    relu: matches!(more.first(), Some(Op::Relu)),
                }
            }
            [Op::Dense(d)]
                if add == Some(&[shape[0], d.d_out()][..])
                    && dense_fused::applies(d, &shape, None) =>
            {
                Stage::DenseEpilogue
            }
            [Op::Norm(Norm::Batch(_)), more @ ..] => Stage::NormRelu {
                relu: matches!(more.first(), Some(Op::Relu)),
            },
            _ => Stage::Single,
        };
        for op in &rest[..stage.ops()] {
            shape = op.out_shape(&shape);
        }
        plan.push(stage);
        i += stage.ops();
    }
    plan
}

/// The backward plan of `ops` from the caches of a fused forward pass, the last stage
/// first: at each end position, the first stage whose pattern matches the ops and their
/// caches and whose shapes its kernel takes (`weight_grads`: parameter gradients wanted).
pub fn backward_plan<T: Float>(
    ops: &[Op<T>],
    caches: &[OpCache<T>],
    weight_grads: bool,
) -> Vec<Stage> {
    let mut plan = Vec::new();
    let mut end = ops.len().min(caches.len());
    while end > 0 {
        let stage = match (&ops[..end], &caches[..end]) {
            (
                [.., Op::Norm(Norm::Batch(_)), Op::Relu, Op::Conv(_)],
                [.., OpCache::Norm(NormCache::Batch(_)), OpCache::FusedRelu, OpCache::FusedConv],
            ) => Stage::PreactConv,
            (
                [.., Op::Norm(Norm::Batch(_)), Op::Relu, Op::Dense(d)],
                [.., OpCache::Norm(NormCache::Batch(c)), OpCache::Relu(_), OpCache::Dense(dc)],
            ) if dense_fused::backward_applies(d, dc, c, weight_grads) => {
                Stage::NormDense { relu: true }
            }
            (
                [.., Op::Norm(Norm::Batch(_)), Op::Dense(d)],
                [.., OpCache::Norm(NormCache::Batch(c)), OpCache::Dense(dc)],
            ) if dense_fused::backward_applies(d, dc, c, weight_grads) => {
                Stage::NormDense { relu: false }
            }
            (
                [.., Op::Norm(Norm::Batch(_)), Op::Relu],
                [.., OpCache::Norm(NormCache::Batch(_)), OpCache::Relu(_)],
            ) => Stage::NormRelu { relu: true },
            _ => Stage::Single,
        };
        plan.push(stage);
        end -= stage.ops();
    }
    plan
}

/// Runs the stages of [`forward_plan`]. Between stages, a pre-activation conv followed by a
/// BatchNorm hands over its output's plane moments (training mode), so the BatchNorm skips
/// its statistics pass: the same bits either way.
fn forward_fused<T: Float>(
    ops: &[Op<T>],
    x: Arc<Tensor<T>>,
    mode: Mode,
    extras: SeqExtras<'_, T>,
) -> (Tensor<T>, Vec<OpCache<T>>, Option<Moments<T>>) {
    let epilogue = extras.epilogue;
    let add_shape = epilogue.add.map(|t| t.shape().to_vec());
    let plan = forward_plan(ops, x.shape(), mode, add_shape.as_deref());
    let mut caches = Vec::with_capacity(ops.len());
    let mut input = Input::Shared(x);
    let mut moments = extras.moments_in;
    // The tensor to add, until a stage takes it in.
    let mut add = epilogue.add;
    let keep = !extras.drop_weight_inputs;
    let mut i = 0;
    for (s, &stage) in plan.iter().enumerate() {
        let last = s + 1 == plan.len();
        let after = ops.get(i + stage.ops());
        let group = &ops[i..i + stage.ops()];
        let (y, next_moments) = match (stage, group) {
            (Stage::PreactConv, [Op::Norm(Norm::Batch(bn)), Op::Relu, Op::Conv(conv)]) => {
                let wanted = if last {
                    epilogue.moments
                } else {
                    matches!(after, Some(Op::Norm(Norm::Batch(_))))
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
                (y, m)
            }
            (Stage::DenseNorm { relu }, [Op::Dense(d), Op::Norm(Norm::Batch(bn)), ..]) => {
                let (y, dc, bc, rc) =
                    dense_fused::forward_bn(d, bn, input.into_owned(), mode, relu, keep);
                caches.extend([OpCache::Dense(dc), OpCache::Norm(NormCache::Batch(bc))]);
                caches.extend(rc.map(OpCache::Relu));
                (y, None)
            }
            (Stage::DenseEpilogue, [Op::Dense(d)]) => {
                let last = Epilogue {
                    add: add.take(),
                    moments: epilogue.moments && mode == Mode::Train,
                };
                let (y, dc, m) = dense_fused::forward_then(d, input.into_owned(), last, keep);
                caches.push(OpCache::Dense(dc));
                (y, m)
            }
            (Stage::NormRelu { relu }, [Op::Norm(Norm::Batch(bn)), ..]) => {
                let (y, c, r) =
                    bn.forward_shared(input.into_shared(), mode, relu, moments.as_ref());
                caches.push(OpCache::Norm(NormCache::Batch(c)));
                caches.extend(r.map(OpCache::Relu));
                (y, None)
            }
            (Stage::Single, [op]) => {
                let (y, mut c) = op.forward(input.into_owned(), mode);
                if let (OpCache::Dense(dc), false) = (&mut c, keep) {
                    dc.x = None;
                }
                caches.push(c);
                (y, None)
            }
            _ => unreachable!("forward_plan gives each stage the ops of its pattern"),
        };
        input = Input::Owned(y);
        moments = next_moments;
        i += stage.ops();
    }
    let mut y = input.into_owned();
    if let Some(r) = add {
        // No stage took the tensor in: add it now (no moments, then).
        crate::tensor::add_assign(&mut y, r);
        moments = None;
    }
    (y, caches, moments)
}

/// An op's input: owned, or shared with the caller (only a BatchNorm keeps it as it is).
enum Input<T: Float = f64> {
    Owned(Tensor<T>),
    Shared(Arc<Tensor<T>>),
}

impl<T: Float> Input<T> {
    fn into_shared(self) -> Arc<Tensor<T>> {
        match self {
            Input::Owned(t) => Arc::new(t),
            Input::Shared(a) => a,
        }
    }

    fn into_owned(self) -> Tensor<T> {
        match self {
            Input::Owned(t) => t,
            Input::Shared(a) => Arc::unwrap_or_clone(a),
        }
    }
}

/// Runs the stages of [`backward_plan`], last first. Weight layers read a borrowed gradient
/// in place; `add` is added to the input gradient by the stage that reaches the first op
/// (inside its last pass where the kernel can, after it otherwise).
fn backward_fused<T: Float>(
    ops: &[Op<T>],
    caches: &[OpCache<T>],
    grad_y: Cow<'_, Tensor<T>>,
    mut grads: Option<&mut Grads<T>>,
    add: Option<&Tensor<T>>,
) -> Tensor<T> {
    let plan = backward_plan(ops, caches, grads.is_some());
    let mut g = grad_y;
    let mut end = ops.len();
    for stage in plan {
        let start = end - stage.ops();
        let add_here = add.filter(|_| start == 0);
        let (o, c) = (&ops[start..end], &caches[start..end]);
        let grads = grads.as_deref_mut();
        let (next, added) = match (stage, o, c) {
            (
                Stage::PreactConv,
                [Op::Norm(Norm::Batch(bn)), Op::Relu, Op::Conv(conv)],
                [OpCache::Norm(NormCache::Batch(bc)), ..],
            ) => (
                preact_conv::backward(bn, conv, bc, &g, grads, add_here),
                true,
            ),
            (
                Stage::NormDense { relu },
                [Op::Norm(Norm::Batch(bn)), .., Op::Dense(d)],
                [OpCache::Norm(NormCache::Batch(bc)), .., OpCache::Dense(dc)],
            ) => {
                let r = match c {
                    [_, OpCache::Relu(r), _] if relu => Some(r),
                    _ => None,
                };
                let gx = dense_fused::backward_bn(bn, bc, r, d, dc, &g, grads, add_here);
                (gx, true)
            }
            (
                Stage::NormRelu { relu: true },
                [Op::Norm(Norm::Batch(bn)), Op::Relu],
                [OpCache::Norm(NormCache::Batch(bc)), OpCache::Relu(r)],
            ) => (bn.backward_relu(bc, r, g.into_owned(), grads), false),
            (Stage::Single, [Op::Dense(d)], [OpCache::Dense(dc)]) => {
                (d.backward(dc, &g, grads), false)
            }
            (Stage::Single, [Op::Conv(conv)], [OpCache::Conv(cc)]) => {
                (conv.backward(cc, &g, grads), false)
            }
            (Stage::Single, [op], [cache]) => (op.backward(cache, g.into_owned(), grads), false),
            _ => unreachable!("backward_plan gives each stage the ops and caches of its pattern"),
        };
        let mut next = next;
        if let (Some(r), false) = (add_here, added) {
            crate::tensor::add_assign(&mut next, r);
        }
        g = Cow::Owned(next);
        end = start;
    }
    let mut g = g.into_owned();
    if ops.is_empty() {
        if let Some(r) = add {
            crate::tensor::add_assign(&mut g, r);
        }
    }
    g
}

/// Replaces every ReLU of `ops` by the fixed pattern it had in `caches` (a fused ReLU's
/// pattern is recomputed from its BatchNorm's cache, exactly as the forward pass decided it).
pub fn freeze_relus_seq<T: Float>(ops: &mut [Op<T>], caches: &[OpCache<T>]) {
    for i in 0..ops.len().min(caches.len()) {
        let positive = match (&caches[i], i.checked_sub(1).map(|j| (&ops[j], &caches[j]))) {
            (OpCache::Relu(c), _) => c.positive.clone(),
            (
                OpCache::FusedRelu,
                Some((Op::Norm(Norm::Batch(bn)), OpCache::Norm(NormCache::Batch(c)))),
            ) => bn.relu_mask(c),
            _ => continue,
        };
        ops[i] = Op::Mask(positive.mapv(|p| if p { T::one() } else { T::zero() }));
    }
}

/// Every BatchNorm of `ops` with its cache.
pub fn visit_bn_caches<'a, T: Float>(
    ops: &'a [Op<T>],
    caches: &'a [OpCache<T>],
    f: &mut dyn FnMut(&'a BatchNorm<T>, &'a BatchNormCache<T>),
) {
    for (op, cache) in ops.iter().zip(caches) {
        if let (Op::Norm(Norm::Batch(bn)), OpCache::Norm(NormCache::Batch(c))) = (op, cache) {
            f(bn, c);
        }
    }
}

/// Updates the running statistics of every BatchNorm in `ops` from a training-mode pass.
pub fn update_running_stats_seq<T: Float>(ops: &mut [Op<T>], caches: &[OpCache<T>]) {
    for (op, cache) in ops.iter_mut().zip(caches) {
        if let (Op::Norm(n), OpCache::Norm(c)) = (op, cache) {
            n.update_running_stats(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::gaussian_batch;
    use crate::net::{InputSizes, NetChoice, NetDescription};
    use crate::unit::{Placement, ShortcutKind};
    use Stage::*;

    fn branch(net: &str, width: usize, placement: Placement) -> (Vec<Op>, Vec<usize>) {
        let input = InputSizes {
            input_dim: 8,
            image_size: 8,
            input_channels: 3,
            classes: 10,
        };
        let choice: NetChoice = net.parse().unwrap();
        let net = NetDescription {
            net: choice.clone(),
            units: 1,
            width,
            placement,
            shortcut: ShortcutKind::Identity,
            ..NetDescription::default()
        }
        .build(&input, 1)
        .unwrap();
        let shape = match choice {
            NetChoice::Mlp => vec![96, width],
            _ => vec![4, 16, 8, 8],
        };
        (net.units[0].branch.clone(), shape)
    }

    /// An imported model's ops through the op dispatch, in both engines, against central
    /// differences (h = 1e-6, relative error below 1e-6: the sigmoid is smooth, the rest
    /// linear): average pooling, the sigmoid, a per-channel scale of PyTorch's shape, a
    /// flattening, a dense layer.
    #[test]
    fn imported_ops_backward_matches_finite_differences() {
        let mut r = crate::rng::rng(2);
        let ops = vec![
            Op::AvgPool(AvgPool {
                name: "p".into(),
                k: 3,
                stride: 2,
                pad: 1,
                count_include_pad: false,
            }),
            Op::Sigmoid,
            Op::BranchScale(BranchScale {
                name: "s".into(),
                a: crate::rng::gaussian(&[3, 1, 1], 1.0, &mut r),
            }),
            Op::Flatten,
            Op::Dense(Dense {
                name: "d".into(),
                w: crate::rng::gaussian(&[27, 4], 0.3, &mut r),
                b: Some(crate::rng::gaussian(&[4], 0.1, &mut r)),
            }),
        ];
        let x = crate::rng::gaussian(&[2, 3, 5, 6], 1.0, &mut r);
        for fusion in [Fusion::Plain, Fusion::Fused] {
            let checked = crate::finite_diff::check_layer(
                &format!("{fusion:?}"),
                &ops,
                &x,
                1e-6,
                1e-6,
                3,
                |ops, x| forward_seq(ops, x.clone(), Mode::Train, fusion).0,
                |ops, x, gy, g| {
                    let (_, c) = forward_seq(ops, x.clone(), Mode::Train, fusion);
                    backward_seq(ops, &c, gy.clone(), Some(g), fusion)
                },
                |ops, f| ops.iter_mut().for_each(|o| o.visit_params_mut(f)),
            );
            assert_eq!(checked, ["s.a", "d.w", "d.b"]);
        }
    }

    #[test]
    fn a_conv_is_labelled_with_its_kernel_size() {
        let conv = |k: usize| {
            Op::Conv(Conv2d::<f64> {
                name: "c".into(),
                w: Tensor::zeros(ndarray::IxDyn(&[2, 2, k, k])),
                b: None,
                stride: 1,
                pad: 0,
            })
        };
        assert_eq!(
            [conv(1).label(), conv(3).label(), conv(7).label()],
            ["W1x1", "W3x3", "W7x7"]
        );
    }

    /// The plans the engine makes for the paper's units: what is fused, and where the
    /// identity shortcut is added.
    #[test]
    fn plans_of_the_papers_units() {
        let (ops, shape) = branch("resnet:1:basic", 0, Placement::FullPreact);
        assert_eq!(
            forward_plan(&ops, &shape, Mode::Train, Some(&shape)),
            [PreactConv, PreactConv]
        );
        let (ops, shape) = branch("resnet:1:basic", 0, Placement::Original);
        assert_eq!(
            forward_plan(&ops, &shape, Mode::Train, None),
            [Single, PreactConv, NormRelu { relu: false }]
        );
        // A small MLP: BN-ReLU passes only; a wide one (the products split in columns): the
        // dense layers with their BatchNorms, the last one taking the shortcut.
        let (ops, shape) = branch("mlp", 12, Placement::FullPreact);
        assert_eq!(
            forward_plan(&ops, &shape, Mode::Train, Some(&shape)),
            [
                NormRelu { relu: true },
                Single,
                NormRelu { relu: true },
                Single
            ]
        );
        let (ops, shape) = branch("mlp", 160, Placement::FullPreact);
        assert_eq!(
            forward_plan(&ops, &shape, Mode::Train, Some(&shape)),
            [
                NormRelu { relu: true },
                DenseNorm { relu: true },
                DenseEpilogue
            ]
        );
        assert_eq!(
            forward_plan(&ops, &shape, Mode::Train, None),
            [NormRelu { relu: true }, DenseNorm { relu: true }, Single]
        );
        let (ops, shape) = branch("mlp", 160, Placement::Original);
        assert_eq!(
            forward_plan(&ops, &shape, Mode::Train, None),
            [DenseNorm { relu: true }, DenseNorm { relu: false }]
        );
    }

    /// Backward plans read the forward pass's caches: the wide full-preact MLP unit runs
    /// backward as two BN-ReLU-dense stages; a pass without weight inputs still fuses when no
    /// weight gradient is asked.
    #[test]
    fn backward_plans_follow_the_caches() {
        let (ops, shape) = branch("mlp", 160, Placement::FullPreact);
        let (x, _) = gaussian_batch(&shape[1..], shape[0], 10, 3);
        let (_, caches) = forward_seq(&ops, x, Mode::Train, Fusion::Fused);
        let both = [NormDense { relu: true }, NormDense { relu: true }];
        assert_eq!(backward_plan(&ops, &caches, true), both);
        assert_eq!(backward_plan(&ops, &caches, false), both);
        let (ops, shape) = branch("resnet:1:basic", 0, Placement::FullPreact);
        let (x, _) = gaussian_batch(&shape[1..], shape[0], 10, 3);
        let (_, caches) = forward_seq(&ops, x, Mode::Train, Fusion::Fused);
        assert_eq!(backward_plan(&ops, &caches, true), [PreactConv, PreactConv]);
        // The plain interpreter's caches never pair a ReLU with a conv: no conv stage.
        let (_, plain) = forward_seq(
            &ops,
            gaussian_batch(&shape[1..], 4, 10, 3).0,
            Mode::Train,
            Fusion::Plain,
        );
        assert!(!backward_plan(&ops, &plain, true).contains(&PreactConv));
    }
}
