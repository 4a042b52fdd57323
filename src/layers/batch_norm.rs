//! Batch normalisation over every axis but the channel axis 1: `(N, C)` or `(N, C, H, W)`.
//!
//! Training mode: `mu_c`, `var_c` (biased) over the `M = N * H * W` values of channel `c`,
//! `xhat = (x - mu) / sqrt(var + eps)`, `y = gamma * xhat + beta`. Backward (per channel):
//!
//! ```text
//! grad_gamma = sum(grad_y * xhat)      grad_beta = sum(grad_y)
//! grad_x     = gamma / sqrt(var + eps) * (grad_y - grad_beta / M - xhat * grad_gamma / M)
//! ```
//!
//! Evaluation mode uses the running statistics, so it is affine: `grad_x = grad_y * gamma /
//! sqrt(running_var + eps)`. Running statistics are updated (momentum 0.1, unbiased variance,
//! as PyTorch does) by an explicit call after a training-mode forward, never behind `&self`.
//!
//! BN is nearly always followed by a ReLU, so the layer also runs *fused* with it
//! ([`BatchNorm::forward_relu`], [`BatchNorm::backward_relu`]): one pass writes
//! `relu(gamma xhat + beta)` and the ReLU's mask, and backward masks the gradient while it
//! reduces. The cache keeps the input rather than `xhat` (recomputed on the fly from the
//! per-channel statistics), which saves a full write in the forward pass. Each kernel reads
//! the activation at most twice; the per-channel sums use fixed lanes and a fixed order, so the
//! bits never depend on the thread count.

use std::mem::MaybeUninit;
use std::sync::Arc;

use ndarray::{s, Array1, ArrayView2, Ix1, IxDyn};
use rayon::prelude::*;

use super::norm::NormLayer;
use super::relu::{select, ReluCache};
use super::Mode;
use crate::fault::{self, Fault};
use crate::grads::Grads;
use crate::spin_join::{self, split_point};
use crate::tensor::{lane_sum, Tensor};

pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub name: String,
    /// (C)
    pub gamma: Tensor,
    /// (C)
    pub beta: Tensor,
    /// (C)
    pub running_mean: Tensor,
    /// (C)
    pub running_var: Tensor,
    pub eps: f64,
    pub momentum: f64,
}

#[derive(Debug, Clone)]
pub struct BatchNormCache {
    pub mode: Mode,
    /// The input, shared (a residual unit keeps the same `x_l` for its record and shortcut);
    /// `xhat = (x - mean) * inv_std` is recomputed where needed.
    pub x: Arc<Tensor>,
    /// Per channel, the mean actually used (the batch's in training, the running one in eval).
    pub mean: Vec<f64>,
    /// 1 / sqrt(var + eps) per channel, of the statistics actually used.
    pub inv_std: Vec<f64>,
    /// Biased batch variance per channel (training mode), for the running update.
    pub batch_var: Vec<f64>,
    /// Values per channel, M = N * H * W.
    pub count: usize,
}

/// `(N, C, S)` sizes of an `(N, C, ...)` tensor, S = product of the trailing axes.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n: usize,
    c: usize,
    s: usize,
}

/// Elements per parallel task of a dense (S = 1) activation: small enough to split W1's
/// (128, 256) batch in four, large enough that a task outweighs its scheduling.
const DENSE_TASK: usize = 8192;

/// Channels per reduction task of a conv activation.
const CHANNEL_BLOCK: usize = 4;

impl Layout {
    fn of(shape: &[usize]) -> Self {
        Layout {
            n: shape[0],
            c: shape[1],
            s: shape.iter().skip(2).product(),
        }
    }

    /// The channel of flat index `flat`.
    fn channel(&self, flat: usize) -> usize {
        (flat / self.s) % self.c
    }

    /// Flat elements per parallel element-wise task: one sample of a conv activation, a
    /// block of whole rows of a dense one.
    fn task_len(&self) -> usize {
        if self.s == 1 {
            (DENSE_TASK / self.c.max(1)).max(1) * self.c
        } else {
            self.c * self.s
        }
    }

    /// A run is a stretch of elements whose channels are known without division: one
    /// channel plane (S > 1) or one row of channels 0..C (S = 1).
    fn run_len(&self) -> usize {
        if self.s == 1 {
            self.c
        } else {
            self.s
        }
    }
}

/// How a run looks up its per-channel parameters: a plane has one channel (the parameter
/// slice is that channel's single value), a dense row has channels `0..C` (the slice is the
/// whole row of values). Monomorphised, so each loop vectorises with no branch inside.
trait Run {
    fn at(p: &[f64], i: usize) -> f64;
}

struct Plane;
struct Row;

impl Run for Plane {
    #[inline(always)]
    fn at(p: &[f64], _: usize) -> f64 {
        p[0]
    }
}

impl Run for Row {
    #[inline(always)]
    fn at(p: &[f64], i: usize) -> f64 {
        p[i]
    }
}

impl Layout {
    /// The parameters of the run of `len` elements starting at flat index `rs`.
    fn params<'v>(&self, values: &'v [f64], rs: usize, len: usize) -> &'v [f64] {
        if self.s == 1 {
            &values[..len]
        } else {
            let ch = self.channel(rs);
            &values[ch..ch + 1]
        }
    }
}

/// `out = a x + b`, or `relu(a x + b)` with the ReLU's mask when `mask` is non-empty.
#[inline(always)]
fn affine_run<R: Run>(
    out: &mut [MaybeUninit<f64>],
    x: &[f64],
    mask: &mut [MaybeUninit<bool>],
    a: &[f64],
    b: &[f64],
) {
    let n = out.len();
    let x = &x[..n];
    if mask.is_empty() {
        for i in 0..n {
            out[i].write(R::at(a, i) * x[i] + R::at(b, i));
        }
    } else {
        let mask = &mut mask[..n];
        for i in 0..n {
            let z = R::at(a, i) * x[i] + R::at(b, i);
            mask[i].write(z > 0.0);
            out[i].write(super::relu::relu(z));
        }
    }
}

/// One dense row (or a stretch of it) of the forward map, for ops that fuse a BatchNorm:
/// `out = a x + b`, or with the ReLU and its mask when `mask` is non-empty.
pub(crate) fn affine_row(
    out: &mut [MaybeUninit<f64>],
    x: &[f64],
    mask: &mut [MaybeUninit<bool>],
    a: &[f64],
    b: &[f64],
) {
    affine_run::<Row>(out, x, mask, a, b)
}

/// One dense row (or a stretch) of the training-mode input gradient, in place; `p` is
/// `[scale, c1, c2, mean]` of its channels.
pub(crate) fn train_grad_row(g: &mut [f64], x: &[f64], mask: Option<&[bool]>, p: [&[f64]; 4]) {
    train_grad_run::<Row>(g, x, mask, p)
}

/// One dense row (or a stretch) of the evaluation-mode input gradient, in place.
pub(crate) fn eval_grad_row(g: &mut [f64], mask: Option<&[bool]>, scale: &[f64]) {
    eval_grad_run::<Row>(g, mask, scale)
}

/// Training-mode input gradient in place: `g <- scale (mask g) - c1 - c2 (x - mean)`.
#[inline(always)]
fn train_grad_run<R: Run>(g: &mut [f64], x: &[f64], mask: Option<&[bool]>, p: [&[f64]; 4]) {
    let n = g.len();
    let x = &x[..n];
    let [scale, c1, c2, mean] = p;
    let term = |i: usize, gi: f64| {
        R::at(scale, i) * gi - R::at(c1, i) - R::at(c2, i) * (x[i] - R::at(mean, i))
    };
    match mask {
        Some(mask) => {
            let mask = &mask[..n];
            for i in 0..n {
                g[i] = term(i, select(mask[i], g[i]));
            }
        }
        None => {
            for (i, g) in g.iter_mut().enumerate() {
                *g = term(i, *g);
            }
        }
    }
}

/// Evaluation-mode input gradient in place: `g <- scale (mask g)`.
#[inline(always)]
fn eval_grad_run<R: Run>(g: &mut [f64], mask: Option<&[bool]>, scale: &[f64]) {
    let n = g.len();
    match mask {
        Some(mask) => {
            let mask = &mask[..n];
            for i in 0..n {
                g[i] = R::at(scale, i) * select(mask[i], g[i]);
            }
        }
        None => {
            for (i, g) in g.iter_mut().enumerate() {
                *g *= R::at(scale, i);
            }
        }
    }
}

/// Per channel `(sum_a, sum_b)` of a conv activation: `plane(start, channel)` sums one
/// plane; parallel blocks of channels, each channel summed plane by plane in sample order
/// with fixed lanes.
fn channel_sums(
    l: Layout,
    plane: &(dyn Fn(usize, usize) -> (f64, f64) + Sync),
) -> (Vec<f64>, Vec<f64>) {
    let blocks: Vec<Vec<(f64, f64)>> = (0..l.c.div_ceil(CHANNEL_BLOCK))
        .into_par_iter()
        .map(|blk| {
            (blk * CHANNEL_BLOCK..((blk + 1) * CHANNEL_BLOCK).min(l.c))
                .map(|ch| {
                    (0..l.n).fold((0.0, 0.0), |(a, b), n| {
                        let (da, db) = plane((n * l.c + ch) * l.s, ch);
                        (a + da, b + db)
                    })
                })
                .collect()
        })
        .collect();
    blocks.into_iter().flatten().unzip()
}

/// The per-channel affine map of a normalisation, `y = a x + b`.
#[derive(Debug, Clone)]
pub(crate) struct Affine {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

/// Mean and biased variance per channel of a conv activation in one pass over memory: each
/// plane's mean and centred squares while it is in cache, then the planes combined in sample
/// order with the pairwise update of Chan, Golub and LeVeque (as stable as two passes over
/// the whole channel, which read the tensor twice). Parallel over blocks of channels.
fn plane_stats(xs: &[f64], l: Layout) -> (Vec<f64>, Vec<f64>) {
    let blocks: Vec<Vec<(f64, f64)>> = (0..l.c.div_ceil(CHANNEL_BLOCK))
        .into_par_iter()
        .map(|blk| {
            (blk * CHANNEL_BLOCK..((blk + 1) * CHANNEL_BLOCK).min(l.c))
                .map(|ch| combine_planes(l, |n| plane_moments(&xs[(n * l.c + ch) * l.s..][..l.s])))
                .collect()
        })
        .collect();
    blocks.into_iter().flatten().unzip()
}

/// One plane's `(mean, sum of squared deviations)`, two passes over the plane (in cache).
pub(crate) fn plane_moments(plane: &[f64]) -> (f64, f64) {
    let mean = lane_sum(plane, |v| v) / plane.len() as f64;
    (mean, lane_sum(plane, |v| (v - mean) * (v - mean)))
}

/// A channel's mean and biased variance from its planes' moments, combined in sample order.
fn combine_planes(l: Layout, moments: impl Fn(usize) -> (f64, f64)) -> (f64, f64) {
    let s = l.s as f64;
    let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for n in 0..l.n {
        let (plane_mean, plane_m2) = moments(n);
        let total = count + s;
        let delta = plane_mean - mean;
        mean += delta * s / total;
        m2 += plane_m2 + delta * delta * count * s / total;
        count = total;
    }
    (mean, m2 / count)
}

/// Statistics of an activation computed by the op that wrote it, while the data was in
/// cache, so the next BatchNorm need not read the tensor again. They give bit for bit the
/// statistics of [`BatchNorm::forward`]'s own pass.
#[derive(Debug, Clone)]
pub enum Moments {
    /// Per-plane `(mean, centred sum of squares)` of a conv activation, `[n * C + c]`.
    Planes(Vec<(f64, f64)>),
    /// Per-channel mean and biased variance of a dense activation (as `column_stats` gives).
    Columns { mean: Vec<f64>, var: Vec<f64> },
}

impl Moments {
    /// Moments of every plane of one sample (`C` planes of `plane` values), in channel order.
    pub(crate) fn of_sample(y_n: &[f64], plane: usize) -> Vec<(f64, f64)> {
        y_n.chunks_exact(plane).map(plane_moments).collect()
    }
}

/// `gamma * inv_std` per channel: the factor every affine step multiplies by.
pub(crate) fn scales(gamma: &[f64], inv_std: &[f64]) -> Vec<f64> {
    gamma.iter().zip(inv_std).map(|(g, i)| g * i).collect()
}

/// Per-column mean and biased variance of a block of a dense activation `(N, W)` whose rows
/// are contiguous: two passes in row order (mean, then centred squares, so large means do
/// not cancel), vectorised across columns. A column's result does not depend on the block
/// it is in, so any split of the columns (between threads, or into a producing op) gives
/// the same bits.
pub(crate) fn column_stats(x: ArrayView2<f64>) -> (Vec<f64>, Vec<f64>) {
    let (n, w) = x.dim();
    let count = n as f64;
    let mut sum = vec![0.0; w];
    for row in x.rows() {
        let row = row.to_slice().expect("rows are contiguous");
        sum.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
    let mean: Vec<f64> = sum.iter().map(|v| v / count).collect();
    let mut sq = vec![0.0; w];
    for row in x.rows() {
        let row = row.to_slice().expect("rows are contiguous");
        sq.iter_mut()
            .zip(row)
            .zip(&mean)
            .for_each(|((a, v), m)| *a += (v - m) * (v - m));
    }
    let var = sq.iter().map(|v| v / count).collect();
    (mean, var)
}

/// Per-column `(sum g, sum g (x - mean))` of a block of a dense gradient, `g` masked by the
/// ReLU's `mask` when given; rows in order, vectorised across columns.
pub(crate) fn column_grad_sums(
    g: ArrayView2<f64>,
    x: ArrayView2<f64>,
    mask: Option<ArrayView2<bool>>,
    mean: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let w = g.ncols();
    let (mut sb, mut sg) = (vec![0.0; w], vec![0.0; w]);
    let mean = &mean[..w];
    for (r, (g, x)) in g.rows().into_iter().zip(x.rows()).enumerate() {
        let g = &g.to_slice().expect("rows are contiguous")[..w];
        let x = &x.to_slice().expect("rows are contiguous")[..w];
        match &mask {
            Some(mask) => {
                let mk = mask.row(r);
                let mk = &mk.to_slice().expect("rows are contiguous")[..w];
                for ch in 0..w {
                    let gi = select(mk[ch], g[ch]);
                    sb[ch] += gi;
                    sg[ch] += gi * (x[ch] - mean[ch]);
                }
            }
            None => {
                for ch in 0..w {
                    sb[ch] += g[ch];
                    sg[ch] += g[ch] * (x[ch] - mean[ch]);
                }
            }
        }
    }
    (sb, sg)
}

/// Runs `f` on the two halves of `0..c` (split at a multiple of 8 columns) on two threads and
/// joins the per-column results in order.
fn column_halves(
    c: usize,
    f: impl Fn(std::ops::Range<usize>) -> (Vec<f64>, Vec<f64>) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let mid = split_point(c, 8);
    let (mut left, mut right) = (None, None);
    spin_join::join(|| left = Some(f(0..mid)), || right = Some(f(mid..c)));
    let ((mut a, mut b), (a1, b1)) = (left.unwrap(), right.unwrap());
    a.extend(a1);
    b.extend(b1);
    (a, b)
}

/// The training-mode input-gradient coefficients per channel: `grad_x = scale g - c1 - c2
/// (x - mean)` with `c1 = scale grad_beta / M`, `c2 = scale inv_std^2 sum_gx / M`.
pub(crate) fn train_grad_coefficients(
    scale: &[f64],
    inv_std: &[f64],
    grad_beta: &[f64],
    sum_gx: &[f64],
    m: f64,
) -> (Vec<f64>, Vec<f64>) {
    (0..scale.len())
        .map(|ch| {
            let sc = scale[ch] / m;
            (
                fault::factor(Fault::BnMeanTerm, sc * grad_beta[ch]),
                fault::factor(
                    Fault::BnVarianceTerm,
                    sc * inv_std[ch] * inv_std[ch] * sum_gx[ch],
                ),
            )
        })
        .unzip()
}

impl BatchNorm {
    /// gamma 1, beta 0, running mean 0, running variance 1.
    pub fn new(name: &str, channels: usize) -> Self {
        BatchNorm {
            name: name.to_string(),
            gamma: Tensor::ones(IxDyn(&[channels])),
            beta: Tensor::zeros(IxDyn(&[channels])),
            running_mean: Tensor::zeros(IxDyn(&[channels])),
            running_var: Tensor::ones(IxDyn(&[channels])),
            eps: EPS,
            momentum: MOMENTUM,
        }
    }

    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// `y = gamma xhat + beta`. Takes the input by value: it moves into the cache.
    pub fn forward(&self, x: Tensor, mode: Mode) -> (Tensor, BatchNormCache) {
        let (y, cache, _) = self.forward_shared(Arc::new(x), mode, false, None);
        (y, cache)
    }

    /// `relu(gamma xhat + beta)` in one pass, with both layers' caches (the same values as
    /// running the two layers one after the other).
    pub fn forward_relu(&self, x: Tensor, mode: Mode) -> (Tensor, BatchNormCache, ReluCache) {
        let (y, cache, relu) = self.forward_shared(Arc::new(x), mode, true, None);
        (y, cache, relu.expect("the fused pass makes a mask"))
    }

    /// Batch mean and biased variance per channel; two passes (mean, then centred squares), so
    /// large means do not cancel.
    fn batch_stats(&self, xs: &[f64], l: Layout) -> (Vec<f64>, Vec<f64>) {
        let count = (l.n * l.s) as f64;
        assert!(
            count > 1.0,
            "{}: training-mode BatchNorm needs more than one value per channel",
            self.name
        );
        if l.s > 1 {
            return plane_stats(xs, l);
        }
        let x = ArrayView2::from_shape((l.n, l.c), xs).expect("a dense activation is (N, C)");
        column_halves(l.c, |cols| column_stats(x.slice(s![.., cols])))
    }

    /// The statistics of a forward pass (batch ones in training, running ones in eval) in a
    /// cache that keeps `x`, and the per-channel affine map `y = a x + b` they give.
    pub(crate) fn normalise(
        &self,
        x: Arc<Tensor>,
        mode: Mode,
        moments: Option<&Moments>,
    ) -> (BatchNormCache, Affine) {
        assert_eq!(
            x.shape()[1],
            self.channels(),
            "{}: channel count",
            self.name
        );
        let x = if x.is_standard_layout() {
            x
        } else {
            Arc::new(x.as_standard_layout().into_owned())
        };
        let l = Layout::of(x.shape());
        let (mean, batch_var, var) = match mode {
            Mode::Train => {
                let (mean, var) = match moments {
                    Some(Moments::Planes(m)) if l.s > 1 && m.len() == l.n * l.c => (0..l.c)
                        .map(|ch| combine_planes(l, |n| m[n * l.c + ch]))
                        .unzip(),
                    Some(Moments::Columns { mean, var }) if l.s == 1 && mean.len() == l.c => {
                        (mean.clone(), var.clone())
                    }
                    _ => self.batch_stats(x.as_slice().unwrap(), l),
                };
                (mean, var.clone(), var)
            }
            Mode::Eval => (
                self.running_mean.iter().copied().collect(),
                Vec::new(),
                self.running_var.iter().copied().collect(),
            ),
        };
        let inv_std = self.inv_std(&var);
        let affine = self.affine(&mean, &inv_std);
        let cache = BatchNormCache {
            mode,
            count: l.n * l.s,
            x,
            mean,
            inv_std,
            batch_var,
        };
        (cache, affine)
    }

    /// `a = gamma inv_std`, `b = beta - a mean`: one multiply-add per element.
    pub(crate) fn affine(&self, mean: &[f64], inv_std: &[f64]) -> Affine {
        self.affine_from(0, mean, inv_std)
    }

    /// [`BatchNorm::affine`] of the channels `c0..c0 + mean.len()`.
    pub(crate) fn affine_from(&self, c0: usize, mean: &[f64], inv_std: &[f64]) -> Affine {
        let c1 = c0 + mean.len();
        let a = scales(&self.gamma.as_slice().unwrap()[c0..c1], inv_std);
        let b = self.beta.as_slice().unwrap()[c0..c1]
            .iter()
            .zip(&a)
            .zip(mean)
            .map(|((beta, a), m)| beta - a * m)
            .collect();
        Affine { a, b }
    }

    /// `1 / sqrt(var + eps)` per channel.
    pub(crate) fn inv_std(&self, var: &[f64]) -> Vec<f64> {
        var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect()
    }

    /// The plain (`relu` false) or BN-ReLU pass from an input the caller shares (kept in the
    /// cache without a copy), with the input's plane moments when the op that wrote it made
    /// them.
    pub(crate) fn forward_shared(
        &self,
        x: Arc<Tensor>,
        mode: Mode,
        relu: bool,
        moments: Option<&Moments>,
    ) -> (Tensor, BatchNormCache, Option<ReluCache>) {
        let (cache, Affine { a, b }) = self.normalise(x, mode, moments);
        let x = &cache.x;
        let xs = x.as_slice().unwrap();
        let l = Layout::of(x.shape());
        let mut y = Tensor::uninit(x.raw_dim());
        // Written in full by the kernels below: not zero-filled first (a pass over memory
        // the kernels would then fetch back, half of it from the other core).
        let mut mask = Box::<[bool]>::new_uninit_slice(if relu { x.len() } else { 0 });
        let task = l.task_len();
        let run = l.run_len();
        // `start` is the flat index of `out`'s first element; `out` holds whole runs.
        let kernel =
            |start: usize, out: &mut [MaybeUninit<f64>], mask: &mut [MaybeUninit<bool>]| {
                for (j, o) in out.chunks_mut(run).enumerate() {
                    let (rs, len) = (start + j * run, o.len());
                    let (src, pa, pb) = (&xs[rs..], l.params(&a, rs, len), l.params(&b, rs, len));
                    let m = if relu {
                        &mut mask[j * run..j * run + len]
                    } else {
                        &mut []
                    };
                    if l.s == 1 {
                        affine_run::<Row>(o, src, m, pa, pb);
                    } else {
                        affine_run::<Plane>(o, src, m, pa, pb);
                    }
                }
            };
        let ys = y.as_slice_mut().unwrap();
        if l.s == 1 {
            // A dense activation is small (W1: 256 KB): two halves of whole rows.
            let mid = split_point(ys.len(), task);
            let (y0, y1) = ys.split_at_mut(mid);
            let (m0, m1) = if relu {
                mask.split_at_mut(mid)
            } else {
                (&mut [][..], &mut [][..])
            };
            spin_join::join(|| kernel(0, y0, m0), || kernel(mid, y1, m1));
        } else if relu {
            ys.par_chunks_mut(task)
                .zip(mask.par_chunks_mut(task))
                .enumerate()
                .for_each(|(t, (o, m))| kernel(t * task, o, m));
        } else {
            ys.par_chunks_mut(task)
                .enumerate()
                .for_each(|(t, o)| kernel(t * task, o, &mut []));
        }
        // SAFETY: the chunks cover `y` and every kernel writes each element of its chunk.
        let y = unsafe { y.assume_init() };
        // SAFETY: with `relu`, every kernel wrote each mask element of its chunk, and the
        // chunks cover the mask; without it the mask is empty.
        let mask = unsafe { mask.assume_init() }.into_vec();
        let relu_cache = relu.then(|| ReluCache {
            positive: ndarray::ArrayD::from_shape_vec(x.raw_dim(), mask).unwrap(),
        });
        (y, cache, relu_cache)
    }

    /// Takes the output gradient by value and turns it into the input gradient in place.
    pub fn backward(
        &self,
        cache: &BatchNormCache,
        grad_y: Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        self.backward_impl(cache, None, grad_y, grads)
    }

    /// Backward through `relu(BN(x))` from the gradient of the ReLU's output, in place.
    pub fn backward_relu(
        &self,
        cache: &BatchNormCache,
        relu: &ReluCache,
        grad_y: Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        self.backward_impl(
            cache,
            Some(relu.positive.as_slice().unwrap()),
            grad_y,
            grads,
        )
    }

    fn backward_impl(
        &self,
        cache: &BatchNormCache,
        mask: Option<&[bool]>,
        grad_y: Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        let grad_y = crate::tensor::into_standard_layout(grad_y);
        let l = Layout::of(grad_y.shape());
        let xs = cache.x.as_slice().unwrap();
        let mean = &cache.mean;
        let need_sums = cache.mode == Mode::Train || grads.is_some();
        // grad_beta = sum g, sum_gx = sum g (x - mean); grad_gamma = inv_std * sum_gx.
        let (grad_beta, sum_gx) = if !need_sums {
            (Vec::new(), Vec::new())
        } else if l.s == 1 {
            let shape = (l.n, l.c);
            let g = ArrayView2::from_shape(shape, grad_y.as_slice().unwrap()).unwrap();
            let x = ArrayView2::from_shape(shape, xs).unwrap();
            let mask = mask.map(|mk| ArrayView2::from_shape(shape, mk).unwrap());
            column_halves(l.c, |cols| {
                column_grad_sums(
                    g.slice(s![.., cols.clone()]),
                    x.slice(s![.., cols.clone()]),
                    mask.as_ref().map(|mk| mk.slice(s![.., cols.clone()])),
                    &mean[cols],
                )
            })
        } else {
            let gy = grad_y.as_slice().unwrap();
            channel_sums(l, &|start, ch| {
                let m = mean[ch];
                let (g, x) = (&gy[start..start + l.s], &xs[start..start + l.s]);
                crate::tensor::grad_sums(g, x, mask.map(|mk| &mk[start..start + l.s]), m)
            })
        };
        self.finish_backward(cache, mask, grad_y, (grad_beta, sum_gx), grads, None)
    }

    /// The input gradient from the per-channel sums `(grad_beta, sum_gx)`, `grad_beta = sum g`
    /// and `sum_gx = sum g (x - mean)` (of the masked gradient), in place; accumulates the
    /// gamma and beta gradients. A caller that has already masked `grad_y` passes no mask.
    /// `residual` is added to the result run by run (a residual unit's shortcut term).
    pub(crate) fn finish_backward(
        &self,
        cache: &BatchNormCache,
        mask: Option<&[bool]>,
        mut grad_y: Tensor,
        (grad_beta, sum_gx): (Vec<f64>, Vec<f64>),
        grads: Option<&mut Grads>,
        residual: Option<&[f64]>,
    ) -> Tensor {
        let l = Layout::of(grad_y.shape());
        let xs = cache.x.as_slice().unwrap();
        let (mean, inv_std) = (&cache.mean, &cache.inv_std);
        let grad_gamma: Vec<f64> = sum_gx.iter().zip(inv_std).map(|(s, i)| s * i).collect();
        let mut scale = scales(self.gamma.as_slice().unwrap(), inv_std);
        if cache.mode == Mode::Eval {
            fault::perturb_slice(Fault::BnEvalScale, &mut scale);
        }
        let task = l.task_len();
        let run = l.run_len();
        let gs = grad_y.as_slice_mut().unwrap();
        let m = cache.count as f64;
        // Training: grad_x = scale (g - grad_beta / M - xhat grad_gamma / M), and
        // xhat grad_gamma = (x - mean) inv_std^2 sum_gx, so per channel
        // grad_x = scale g - c1 - c2 (x - mean).
        let (c1, c2) = if cache.mode == Mode::Train {
            train_grad_coefficients(&scale, inv_std, &grad_beta, &sum_gx, m)
        } else {
            (Vec::new(), Vec::new())
        };
        // `start` is the flat index of `out`'s first element; `out` holds whole runs.
        let kernel = |start: usize, out: &mut [f64]| {
            for (j, g) in out.chunks_mut(run).enumerate() {
                let (rs, len) = (start + j * run, g.len());
                let mk = mask.map(|mk| &mk[rs..rs + len]);
                let ps = l.params(&scale, rs, len);
                if cache.mode == Mode::Train {
                    let p = [
                        ps,
                        l.params(&c1, rs, len),
                        l.params(&c2, rs, len),
                        l.params(mean, rs, len),
                    ];
                    if l.s == 1 {
                        train_grad_run::<Row>(g, &xs[rs..], mk, p);
                    } else {
                        train_grad_run::<Plane>(g, &xs[rs..], mk, p);
                    }
                } else if l.s == 1 {
                    eval_grad_run::<Row>(g, mk, ps);
                } else {
                    eval_grad_run::<Plane>(g, mk, ps);
                }
                if let Some(r) = residual {
                    g.iter_mut()
                        .zip(&r[rs..rs + len])
                        .for_each(|(g, r)| *g += r);
                }
            }
        };
        if l.s == 1 {
            let mid = split_point(gs.len(), task);
            let (g0, g1) = gs.split_at_mut(mid);
            spin_join::join(|| kernel(0, g0), || kernel(mid, g1));
        } else {
            gs.par_chunks_mut(task)
                .enumerate()
                .for_each(|(t, out)| kernel(t * task, out));
        }
        if let Some(grads) = grads {
            self.accumulate_affine_grads(grads, grad_gamma, grad_beta);
        }
        grad_y
    }

    /// Adds `grad_gamma` and `grad_beta` into `grads` under this layer's names.
    pub(crate) fn accumulate_affine_grads(
        &self,
        grads: &mut Grads,
        mut grad_gamma: Vec<f64>,
        mut grad_beta: Vec<f64>,
    ) {
        fault::perturb_slice(Fault::BnGammaGrad, &mut grad_gamma);
        fault::perturb_slice(Fault::BnBetaGrad, &mut grad_beta);
        grads.accumulate(
            &format!("{}.gamma", self.name),
            Array1::from(grad_gamma).into_dyn(),
        );
        grads.accumulate(
            &format!("{}.beta", self.name),
            Array1::from(grad_beta).into_dyn(),
        );
    }

    /// The mask `relu(BN(x)) > 0` of a cached pass, recomputed from its input exactly as the
    /// forward pass decided it (for a fused op that keeps no mask).
    pub(crate) fn relu_mask(&self, cache: &BatchNormCache) -> ndarray::ArrayD<bool> {
        let Affine { a, b } = self.affine(&cache.mean, &cache.inv_std);
        let l = Layout::of(cache.x.shape());
        let xs = cache.x.as_slice().unwrap();
        let mask = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = l.channel(i);
                a[ch] * v + b[ch] > 0.0
            })
            .collect();
        ndarray::ArrayD::from_shape_vec(cache.x.raw_dim(), mask).unwrap()
    }

    /// Moves the running statistics toward this batch's (training-mode caches only).
    pub fn update_running_stats(&mut self, cache: &BatchNormCache) {
        if cache.mode != Mode::Train {
            return;
        }
        let m = self.momentum;
        let unbias = cache.count as f64 / (cache.count as f64 - 1.0);
        let rm = self
            .running_mean
            .view_mut()
            .into_dimensionality::<Ix1>()
            .unwrap();
        let rv = self
            .running_var
            .view_mut()
            .into_dimensionality::<Ix1>()
            .unwrap();
        ndarray::Zip::from(rm)
            .and(rv)
            .and(&Array1::from(cache.mean.clone()))
            .and(&Array1::from(cache.batch_var.clone()))
            .for_each(|rm, rv, &bm, &bv| {
                *rm = (1.0 - m) * *rm + m * bm;
                *rv = (1.0 - m) * *rv + m * bv * unbias;
            });
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{}.gamma", self.name), &self.gamma);
        f(format!("{}.beta", self.name), &self.beta);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        f(format!("{}.gamma", self.name), &mut self.gamma);
        f(format!("{}.beta", self.name), &mut self.beta);
    }

    /// Running statistics: state, not parameters.
    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{}.running_mean", self.name), &self.running_mean);
        f(format!("{}.running_var", self.name), &self.running_var);
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        f(
            format!("{}.running_mean", self.name),
            &mut self.running_mean,
        );
        f(format!("{}.running_var", self.name), &mut self.running_var);
    }
}

impl NormLayer for BatchNorm {
    type Cache = BatchNormCache;

    fn forward(&self, x: Tensor, mode: Mode) -> (Tensor, BatchNormCache) {
        BatchNorm::forward(self, x, mode)
    }

    fn backward(
        &self,
        cache: &BatchNormCache,
        grad_y: Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        BatchNorm::backward(self, cache, grad_y, grads)
    }

    fn update_running_stats(&mut self, cache: &BatchNormCache) {
        BatchNorm::update_running_stats(self, cache)
    }

    fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor)) {
        BatchNorm::visit_params(self, f)
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        BatchNorm::visit_params_mut(self, f)
    }

    fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor)) {
        BatchNorm::visit_buffers(self, f)
    }

    fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor)) {
        BatchNorm::visit_buffers_mut(self, f)
    }

    fn label(&self) -> &'static str {
        "BN"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss, rel_error};
    use crate::rng::{gaussian, rng};
    use ndarray::Axis;

    /// Relative error bound for 2-point central differences, h = 1e-6, f64.
    const TOL: f64 = 1e-6;

    /// A BatchNorm with random gamma, beta and running statistics (shared by the fused ops' tests).
    pub(crate) fn layer_with_random_affine(c: usize, seed: u64) -> BatchNorm {
        let mut r = rng(seed);
        let mut bn = BatchNorm::new("bn", c);
        bn.gamma = gaussian(&[c], 1.0, &mut r) + 1.0;
        bn.beta = gaussian(&[c], 1.0, &mut r);
        bn.running_mean = gaussian(&[c], 1.0, &mut r);
        bn.running_var = gaussian(&[c], 0.3, &mut r).mapv(|v| 1.0 + v.abs());
        bn
    }

    fn check(shape: &[usize], mode: Mode, seed: u64) {
        let mut r = rng(seed + 100);
        let bn = layer_with_random_affine(shape[1], seed);
        let x = gaussian(shape, 2.0, &mut r) + 0.5;
        let (a, b) = (gaussian(shape, 1.0, &mut r), gaussian(shape, 1.0, &mut r));
        let (y, cache) = bn.forward(x.clone(), mode);
        let mut grads = Grads::new();
        let gx = bn.backward(&cache, quadratic_loss(&y, &a, &b).1, Some(&mut grads));
        let num_x = numerical_gradient(
            |x| quadratic_loss(&bn.forward(x.clone(), mode).0, &a, &b).0,
            &x,
            1e-6,
        );
        assert_close(&format!("{mode} {shape:?} grad_x"), &gx, &num_x, TOL);
        let num_gamma = numerical_gradient(
            |g| {
                let mut l = bn.clone();
                l.gamma = g.clone();
                quadratic_loss(&l.forward(x.clone(), mode).0, &a, &b).0
            },
            &bn.gamma,
            1e-6,
        );
        let e = rel_error(grads.get("bn.gamma").unwrap(), &num_gamma);
        assert!(e < TOL, "{mode} grad_gamma {e}");
        let num_beta = numerical_gradient(
            |bt| {
                let mut l = bn.clone();
                l.beta = bt.clone();
                quadratic_loss(&l.forward(x.clone(), mode).0, &a, &b).0
            },
            &bn.beta,
            1e-6,
        );
        let e = rel_error(grads.get("bn.beta").unwrap(), &num_beta);
        assert!(e < TOL, "{mode} grad_beta {e}");
    }

    #[test]
    fn train_mode_backward_matches_finite_differences_dense() {
        check(&[8, 5], Mode::Train, 1);
    }

    #[test]
    fn train_mode_backward_matches_finite_differences_nchw() {
        check(&[3, 4, 3, 2], Mode::Train, 2);
    }

    #[test]
    fn eval_mode_backward_matches_finite_differences() {
        check(&[6, 5], Mode::Eval, 3);
    }

    /// The fused BN-ReLU pass gives exactly the two layers' values, forward and backward.
    #[test]
    fn fused_relu_matches_separate_layers_bit_for_bit() {
        for (shape, mode) in [
            (vec![9, 6], Mode::Train),
            (vec![3, 4, 5, 3], Mode::Train),
            (vec![3, 4, 5, 3], Mode::Eval),
        ] {
            let mut r = rng(7);
            let bn = layer_with_random_affine(shape[1], 8);
            let x = gaussian(&shape, 1.5, &mut r);
            let g = gaussian(&shape, 1.0, &mut r);
            let (y_fused, c_fused, relu_fused) = bn.forward_relu(x.clone(), mode);
            let (z, c) = bn.forward(x.clone(), mode);
            let (y, relu_cache) = super::super::relu::forward(z);
            assert_eq!(y_fused, y, "{shape:?} {mode}");
            assert_eq!(relu_fused.positive, relu_cache.positive);
            let (mut g1, mut g2) = (Grads::new(), Grads::new());
            let gx_fused = bn.backward_relu(&c_fused, &relu_fused, g.clone(), Some(&mut g1));
            let gz = super::super::relu::backward(&relu_cache, g);
            let gx = bn.backward(&c, gz, Some(&mut g2));
            assert_eq!(gx_fused, gx, "{shape:?} {mode}");
            assert_eq!(g1.get("bn.gamma"), g2.get("bn.gamma"));
            assert_eq!(g1.get("bn.beta"), g2.get("bn.beta"));
        }
    }

    /// Finite differences of the fused pass itself (inputs of 1.5 sigma sit far from the
    /// ReLU kink relative to h = 1e-6, so 2-point differences stay accurate).
    #[test]
    fn fused_relu_backward_matches_finite_differences() {
        for shape in [vec![8, 5], vec![3, 4, 3, 2]] {
            let mut r = rng(21);
            let bn = layer_with_random_affine(shape[1], 22);
            let x = gaussian(&shape, 1.5, &mut r);
            let (a, b) = (gaussian(&shape, 1.0, &mut r), gaussian(&shape, 1.0, &mut r));
            let (y, c, rc) = bn.forward_relu(x.clone(), Mode::Train);
            let gx = bn.backward_relu(&c, &rc, quadratic_loss(&y, &a, &b).1, None);
            let num = numerical_gradient(
                |x| quadratic_loss(&bn.forward_relu(x.clone(), Mode::Train).0, &a, &b).0,
                &x,
                1e-6,
            );
            assert_close(&format!("{shape:?}"), &gx, &num, TOL);
        }
    }

    #[test]
    fn train_mode_normalises_each_channel() {
        let bn = BatchNorm::new("bn", 3);
        let x = gaussian(&[50, 3], 4.0, &mut rng(4)) + 7.0;
        let (y, _) = bn.forward(x, Mode::Train);
        for col in y.axis_iter(Axis(1)) {
            let mean = col.sum() / 50.0;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 50.0;
            assert!(
                mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn running_stats_follow_momentum_with_unbiased_variance() {
        let mut bn = BatchNorm::new("bn", 1);
        let x = Tensor::from_shape_vec(IxDyn(&[4, 1]), vec![1.0, 2.0, 3.0, 6.0]).unwrap();
        let (_, cache) = bn.forward(x, Mode::Train);
        bn.update_running_stats(&cache);
        // mean 3, biased var 3.5, unbiased 14/3.
        assert!((bn.running_mean[[0]] - 0.3).abs() < 1e-15);
        assert!((bn.running_var[[0]] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-15);
    }
}
