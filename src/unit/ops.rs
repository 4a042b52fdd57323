//! A branch or an after-addition function is a short sequence of ops. The sequence runs
//! forward keeping one cache per op and backward in reverse; the residual unit never looks
//! inside, so conv layers plug in as new `Op` variants.

use std::sync::Arc;

use crate::grads::Grads;
use crate::layers::conv::pool;
use crate::layers::{relu, BatchNorm, BatchNormCache, Conv2d, ConvCache, Dense, DenseCache, Mode};
use crate::tensor::Tensor;

// Ops are built once per network (a few hundred at most), so their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Op {
    Dense(Dense),
    Conv(Conv2d),
    /// Global average pooling `(N, C, H, W) -> (N, C)`.
    Pool,
    BatchNorm(BatchNorm),
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
    BatchNorm(BatchNormCache),
    Relu(relu::ReluCache),
    Mask,
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
            Op::BatchNorm(bn) => {
                let (y, c) = bn.forward(x, mode);
                (y, OpCache::BatchNorm(c))
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
            (Op::BatchNorm(bn), OpCache::BatchNorm(c)) => bn.backward(c, grad_y, grads),
            (Op::Relu, OpCache::Relu(c)) => relu::backward(c, grad_y),
            (Op::Mask(m), OpCache::Mask) => grad_y * m,
            _ => unreachable!("op and cache kinds always match: caches are made by forward"),
        }
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor)) {
        match self {
            Op::Dense(d) => d.visit_params(f),
            Op::Conv(c) => c.visit_params(f),
            Op::BatchNorm(bn) => bn.visit_params(f),
            Op::Relu | Op::Mask(_) | Op::Pool => {}
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        match self {
            Op::Dense(d) => d.visit_params_mut(f),
            Op::Conv(c) => c.visit_params_mut(f),
            Op::BatchNorm(bn) => bn.visit_params_mut(f),
            Op::Relu | Op::Mask(_) | Op::Pool => {}
        }
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor)) {
        if let Op::BatchNorm(bn) = self {
            bn.visit_buffers(f)
        }
    }

    /// Short human-readable name ("W", "BN", "ReLU"), for descriptions.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Dense(_) => "W",
            Op::Conv(c) if c.k() == 1 => "W1x1",
            Op::Conv(_) => "W3x3",
            Op::Pool => "pool",
            Op::BatchNorm(_) => "BN",
            Op::Relu => "ReLU",
            Op::Mask(_) => "ReLU(frozen)",
        }
    }
}

/// Runs `ops` in order; an empty sequence is the identity. A BatchNorm followed by a ReLU
/// runs as one fused pass that yields both ops' caches (the same values, fewer passes).
pub fn forward_seq(ops: &[Op], x: Tensor, mode: Mode) -> (Tensor, Vec<OpCache>) {
    forward_seq_shared(ops, Arc::new(x), mode)
}

/// As [`forward_seq`] from an input the caller keeps too: a leading BatchNorm (every
/// pre-activation branch) caches the shared input instead of a copy; any other first op gets
/// the tensor itself, copied only if the caller still holds it.
pub fn forward_seq_shared(ops: &[Op], x: Arc<Tensor>, mode: Mode) -> (Tensor, Vec<OpCache>) {
    let mut caches = Vec::with_capacity(ops.len());
    let (mut cur, mut i) = match (ops.first(), ops.get(1)) {
        (Some(Op::BatchNorm(bn)), Some(Op::Relu)) => {
            let (y, c, r) = bn.forward_relu_shared(x, mode);
            caches.push(OpCache::BatchNorm(c));
            caches.push(OpCache::Relu(r));
            (y, 2)
        }
        (Some(Op::BatchNorm(bn)), _) => {
            let (y, c) = bn.forward_shared(x, mode);
            caches.push(OpCache::BatchNorm(c));
            (y, 1)
        }
        _ => (Arc::unwrap_or_clone(x), 0),
    };
    while i < ops.len() {
        if let (Op::BatchNorm(bn), Some(Op::Relu)) = (&ops[i], ops.get(i + 1)) {
            let (y, c, r) = bn.forward_relu(cur, mode);
            caches.push(OpCache::BatchNorm(c));
            caches.push(OpCache::Relu(r));
            cur = y;
            i += 2;
            continue;
        }
        let (y, c) = ops[i].forward(cur, mode);
        caches.push(c);
        cur = y;
        i += 1;
    }
    (cur, caches)
}

/// As [`backward_seq`] from a gradient the caller keeps: a trailing weight layer reads it in
/// place; otherwise it is copied once.
pub fn backward_seq_ref(
    ops: &[Op],
    caches: &[OpCache],
    grad_y: &Tensor,
    mut grads: Option<&mut Grads>,
) -> Tensor {
    let n = ops.len();
    let first = match (ops.last(), caches.last()) {
        (Some(Op::Dense(d)), Some(OpCache::Dense(c))) => {
            d.backward(c, grad_y, grads.as_deref_mut())
        }
        (Some(Op::Conv(conv)), Some(OpCache::Conv(c))) => {
            conv.backward(c, grad_y, grads.as_deref_mut())
        }
        _ => return backward_seq(ops, caches, grad_y.clone(), grads),
    };
    backward_seq(&ops[..n - 1], &caches[..n - 1], first, grads)
}

/// Backward through `ops` in reverse order.
pub fn backward_seq(
    ops: &[Op],
    caches: &[OpCache],
    grad_y: Tensor,
    mut grads: Option<&mut Grads>,
) -> Tensor {
    let mut g = grad_y;
    let mut i = ops.len();
    while i > 0 {
        if i >= 2 {
            if let (Op::BatchNorm(bn), Op::Relu, OpCache::BatchNorm(c), OpCache::Relu(r)) =
                (&ops[i - 2], &ops[i - 1], &caches[i - 2], &caches[i - 1])
            {
                g = bn.backward_relu(c, r, g, grads.as_deref_mut());
                i -= 2;
                continue;
            }
        }
        g = ops[i - 1].backward(&caches[i - 1], g, grads.as_deref_mut());
        i -= 1;
    }
    g
}

/// Replaces every ReLU of `ops` by the fixed pattern it had in `caches`.
pub fn freeze_relus_seq(ops: &mut [Op], caches: &[OpCache]) {
    for (op, cache) in ops.iter_mut().zip(caches) {
        if let OpCache::Relu(c) = cache {
            *op = Op::Mask(c.positive.mapv(|p| if p { 1.0 } else { 0.0 }));
        }
    }
}

/// Updates the running statistics of every BatchNorm in `ops` from a training-mode pass.
pub fn update_running_stats_seq(ops: &mut [Op], caches: &[OpCache]) {
    for (op, cache) in ops.iter_mut().zip(caches) {
        if let (Op::BatchNorm(bn), OpCache::BatchNorm(c)) = (op, cache) {
            bn.update_running_stats(c);
        }
    }
}
