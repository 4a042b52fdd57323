//! The normalisation kernels: the per-channel statistics, the affine map (with an optional
//! ReLU and its mask) and the input-gradient passes that BatchNorm and the fused ops share.
//!
//! They read activations as runs whose channel is known without a division (one plane of a
//! conv activation, one row of a dense one), so each loop vectorises; per-channel sums use
//! fixed lanes in a fixed order, so no bit depends on the thread count. The plain-ndarray
//! reference of each kernel, and of BatchNorm as a whole, is in [`super::reference`]; the
//! tests at the end hold them equal.

use std::mem::MaybeUninit;

use ndarray::ArrayView2;
use rayon::prelude::*;

use crate::fault::{self, Fault};
use crate::float::Float;
use crate::spin_join::{self, split_point};
use crate::tensor::lane_sum;
use crate::tensor::{relu, select};

/// `(N, C, S)` sizes of an `(N, C, ...)` tensor, S = product of the trailing axes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) s: usize,
}

/// Elements per parallel task of a dense (S = 1) activation: small enough to split W1's
/// (128, 256) batch in four, large enough that a task outweighs its scheduling.
pub(crate) const DENSE_TASK: usize = 8192;

/// Channels per reduction task of a conv activation.
pub(crate) const CHANNEL_BLOCK: usize = 4;

impl Layout {
    pub(crate) fn of(shape: &[usize]) -> Self {
        Layout {
            n: shape[0],
            c: shape[1],
            s: shape.iter().skip(2).product(),
        }
    }

    /// The channel of flat index `flat`.
    pub(crate) fn channel(&self, flat: usize) -> usize {
        (flat / self.s) % self.c
    }

    /// Flat elements per parallel element-wise task: one sample of a conv activation, a
    /// block of whole rows of a dense one.
    pub(crate) fn task_len(&self) -> usize {
        if self.s == 1 {
            (DENSE_TASK / self.c.max(1)).max(1) * self.c
        } else {
            self.c * self.s
        }
    }

    /// A run is a stretch of elements whose channels are known without division: one
    /// channel plane (S > 1) or one row of channels 0..C (S = 1).
    pub(crate) fn run_len(&self) -> usize {
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
pub(crate) trait Run {
    fn at<T: Float>(p: &[T], i: usize) -> T;
}

pub(crate) struct Plane;
pub(crate) struct Row;

impl Run for Plane {
    #[inline(always)]
    fn at<T: Float>(p: &[T], _: usize) -> T {
        p[0]
    }
}

impl Run for Row {
    #[inline(always)]
    fn at<T: Float>(p: &[T], i: usize) -> T {
        p[i]
    }
}

impl Layout {
    /// The parameters of the run of `len` elements starting at flat index `rs`.
    pub(crate) fn params<'v, T: Float>(&self, values: &'v [T], rs: usize, len: usize) -> &'v [T] {
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
pub(crate) fn affine_run<T: Float, R: Run>(
    out: &mut [MaybeUninit<T>],
    x: &[T],
    mask: &mut [MaybeUninit<bool>],
    a: &[T],
    b: &[T],
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
            mask[i].write(z > T::zero());
            out[i].write(relu(z));
        }
    }
}

/// One dense row (or a stretch of it) of the forward map, for ops that fuse a BatchNorm:
/// `out = a x + b`, or with the ReLU and its mask when `mask` is non-empty.
pub(crate) fn affine_row<T: Float>(
    out: &mut [MaybeUninit<T>],
    x: &[T],
    mask: &mut [MaybeUninit<bool>],
    a: &[T],
    b: &[T],
) {
    affine_run::<_, Row>(out, x, mask, a, b)
}

/// One dense row (or a stretch) of the training-mode input gradient, in place; `p` is
/// `[scale, c1, c2, mean]` of its channels.
pub(crate) fn train_grad_row<T: Float>(g: &mut [T], x: &[T], mask: Option<&[bool]>, p: [&[T]; 4]) {
    train_grad_run::<_, Row>(g, x, mask, p)
}

/// One dense row (or a stretch) of the evaluation-mode input gradient, in place.
pub(crate) fn eval_grad_row<T: Float>(g: &mut [T], mask: Option<&[bool]>, scale: &[T]) {
    eval_grad_run::<_, Row>(g, mask, scale)
}

/// Training-mode input gradient in place: `g <- scale (mask g) - c1 - c2 (x - mean)`.
#[inline(always)]
pub(crate) fn train_grad_run<T: Float, R: Run>(
    g: &mut [T],
    x: &[T],
    mask: Option<&[bool]>,
    p: [&[T]; 4],
) {
    let n = g.len();
    let x = &x[..n];
    let [scale, c1, c2, mean] = p;
    let term = |i: usize, gi: T| {
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
pub(crate) fn eval_grad_run<T: Float, R: Run>(g: &mut [T], mask: Option<&[bool]>, scale: &[T]) {
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
pub(crate) fn channel_sums<T: Float>(
    l: Layout,
    plane: &(dyn Fn(usize, usize) -> (T, T) + Sync),
) -> (Vec<T>, Vec<T>) {
    let blocks: Vec<Vec<(T, T)>> = (0..l.c.div_ceil(CHANNEL_BLOCK))
        .into_par_iter()
        .map(|blk| {
            (blk * CHANNEL_BLOCK..((blk + 1) * CHANNEL_BLOCK).min(l.c))
                .map(|ch| {
                    (0..l.n).fold((T::zero(), T::zero()), |(a, b), n| {
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
pub(crate) struct Affine<T: Float = f64> {
    pub a: Vec<T>,
    pub b: Vec<T>,
}

/// Mean and biased variance per channel of a conv activation in one pass over memory: each
/// plane's mean and centred squares while it is in cache, then the planes combined in sample
/// order with the pairwise update of Chan, Golub and LeVeque (as stable as two passes over
/// the whole channel, which read the tensor twice). Parallel over blocks of channels.
pub(crate) fn plane_stats<T: Float>(xs: &[T], l: Layout) -> (Vec<T>, Vec<T>) {
    let blocks: Vec<Vec<(T, T)>> = (0..l.c.div_ceil(CHANNEL_BLOCK))
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
pub(crate) fn plane_moments<T: Float>(plane: &[T]) -> (T, T) {
    let mean = lane_sum(plane, |v| v) / T::of_f64(plane.len() as f64);
    (mean, lane_sum(plane, |v| (v - mean) * (v - mean)))
}

/// A channel's mean and biased variance from its planes' moments, combined in sample order.
pub(crate) fn combine_planes<T: Float>(l: Layout, moments: impl Fn(usize) -> (T, T)) -> (T, T) {
    let s = T::of_f64(l.s as f64);
    let (mut count, mut mean, mut m2) = (T::zero(), T::zero(), T::zero());
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
pub enum Moments<T: Float = f64> {
    /// Per-plane `(mean, centred sum of squares)` of a conv activation, `[n * C + c]`.
    Planes(Vec<(T, T)>),
    /// Per-channel mean and biased variance of a dense activation (as `column_stats` gives).
    Columns { mean: Vec<T>, var: Vec<T> },
}

impl<T: Float> Moments<T> {
    /// Moments of every plane of one sample (`C` planes of `plane` values), in channel order.
    pub(crate) fn of_sample(y_n: &[T], plane: usize) -> Vec<(T, T)> {
        y_n.chunks_exact(plane).map(plane_moments).collect()
    }
}

/// `gamma * inv_std` per channel: the factor every affine step multiplies by.
pub(crate) fn scales<T: Float>(gamma: &[T], inv_std: &[T]) -> Vec<T> {
    gamma.iter().zip(inv_std).map(|(&g, &i)| g * i).collect()
}

/// Per-column mean and biased variance of a block of a dense activation `(N, W)` whose rows
/// are contiguous: two passes in row order (mean, then centred squares, so large means do
/// not cancel), vectorised across columns. A column's result does not depend on the block
/// it is in, so any split of the columns (between threads, or into a producing op) gives
/// the same bits.
pub(crate) fn column_stats<T: Float>(x: ArrayView2<T>) -> (Vec<T>, Vec<T>) {
    let (n, w) = x.dim();
    let count = T::of_f64(n as f64);
    let mut sum = vec![T::zero(); w];
    for row in x.rows() {
        let row = row.to_slice().expect("rows are contiguous");
        sum.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
    let mean: Vec<T> = sum.iter().map(|&v| v / count).collect();
    let mut sq = vec![T::zero(); w];
    for row in x.rows() {
        let row = row.to_slice().expect("rows are contiguous");
        sq.iter_mut()
            .zip(row)
            .zip(&mean)
            .for_each(|((a, &v), &m)| *a += (v - m) * (v - m));
    }
    let var = sq.iter().map(|&v| v / count).collect();
    (mean, var)
}

/// Per-column `(sum g, sum g (x - mean))` of a block of a dense gradient, `g` masked by the
/// ReLU's `mask` when given; rows in order, vectorised across columns.
pub(crate) fn column_grad_sums<T: Float>(
    g: ArrayView2<T>,
    x: ArrayView2<T>,
    mask: Option<ArrayView2<bool>>,
    mean: &[T],
) -> (Vec<T>, Vec<T>) {
    let w = g.ncols();
    let (mut sb, mut sg) = (vec![T::zero(); w], vec![T::zero(); w]);
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

/// Runs `f` on the two halves of `0..c` (split at a multiple of 8 columns) on two threads
/// (on this one when the `rows x c` pass is small) and joins the per-column results in order.
pub(crate) fn column_halves<T: Float>(
    rows: usize,
    c: usize,
    f: impl Fn(std::ops::Range<usize>) -> (Vec<T>, Vec<T>) + Sync,
) -> (Vec<T>, Vec<T>) {
    let mid = split_point(c, 8);
    let (mut left, mut right) = (None, None);
    spin_join::join_if(
        rows * c >= spin_join::MIN_PARALLEL_ELEMENTS,
        || left = Some(f(0..mid)),
        || right = Some(f(mid..c)),
    );
    let ((mut a, mut b), (a1, b1)) = (left.unwrap(), right.unwrap());
    a.extend(a1);
    b.extend(b1);
    (a, b)
}

/// The training-mode input-gradient coefficients per channel: `grad_x = scale g - c1 - c2
/// (x - mean)` with `c1 = scale grad_beta / M`, `c2 = scale inv_std^2 sum_gx / M`.
pub(crate) fn train_grad_coefficients<T: Float>(
    scale: &[T],
    inv_std: &[T],
    grad_beta: &[T],
    sum_gx: &[T],
    m: T,
) -> (Vec<T>, Vec<T>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::rng::{gaussian, rng};
    use crate::tensor::Tensor;
    use ndarray::Ix2;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(a, b)| (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0))
    }

    /// The one-pass plane statistics (conv) and the column statistics (dense) equal the
    /// two-pass definition to 1e-13 relative (they sum in other orders), on data with a
    /// large mean; the moments a producing op hands over combine to the same bits.
    #[test]
    fn statistics_equal_the_definition() {
        let mut r = rng(4);
        for shape in [vec![5, 6, 7, 3], vec![2, 9, 16, 16], vec![1, 3, 1, 1]] {
            let x = gaussian(&shape, 2.0, &mut r) + 40.0;
            let l = Layout::of(&shape);
            let xs = x.as_slice().unwrap();
            let (mean, var) = plane_stats(xs, l);
            let (want_mean, want_var) = reference::channel_moments(&x);
            assert!(close(&mean, &want_mean, 1e-13), "{shape:?} mean");
            assert!(close(&var, &want_var, 1e-13), "{shape:?} var");
            let planes: Vec<(f64, f64)> = xs
                .chunks_exact(l.c * l.s)
                .flat_map(|y_n| Moments::of_sample(y_n, l.s))
                .collect();
            let (m2, v2): (Vec<f64>, Vec<f64>) = (0..l.c)
                .map(|ch| combine_planes(l, |n| planes[n * l.c + ch]))
                .unzip();
            assert_eq!((m2, v2), (mean, var), "{shape:?}: handed-over moments");
        }
        for shape in [vec![7, 5], vec![128, 40]] {
            let x = gaussian(&shape, 2.0, &mut r) - 30.0;
            let (mean, var) = column_stats(x.view().into_dimensionality::<Ix2>().unwrap());
            let (want_mean, want_var) = reference::channel_moments(&x);
            assert!(close(&mean, &want_mean, 1e-13), "{shape:?} mean");
            assert!(close(&var, &want_var, 1e-13), "{shape:?} var");
        }
    }

    /// The affine kernels, plane by plane and row by row, with and without the ReLU, give
    /// the definition's bits and mask.
    #[test]
    fn affine_kernels_equal_the_definition_bit_for_bit() {
        let mut r = rng(6);
        for shape in [vec![3, 4, 5, 2], vec![6, 7]] {
            let x = gaussian(&shape, 1.0, &mut r);
            let c = shape[1];
            let a = gaussian(&[c], 1.0, &mut r).into_raw_vec_and_offset().0;
            let b = gaussian(&[c], 1.0, &mut r).into_raw_vec_and_offset().0;
            let l = Layout::of(&shape);
            for relu in [false, true] {
                let (want, want_mask) = reference::affine(&x, &a, &b, relu);
                let xs = x.as_slice().unwrap();
                let mut out = vec![MaybeUninit::new(f64::NAN); xs.len()];
                let mut mask = vec![MaybeUninit::new(false); if relu { xs.len() } else { 0 }];
                let run = l.run_len();
                for rs in (0..xs.len()).step_by(run) {
                    let (pa, pb) = (l.params(&a, rs, run), l.params(&b, rs, run));
                    let m = if relu {
                        &mut mask[rs..rs + run]
                    } else {
                        &mut mask[..0]
                    };
                    if l.s == 1 {
                        affine_run::<_, Row>(&mut out[rs..rs + run], &xs[rs..], m, pa, pb);
                    } else {
                        affine_run::<_, Plane>(&mut out[rs..rs + run], &xs[rs..], m, pa, pb);
                    }
                }
                // SAFETY: every run above wrote its elements.
                let out: Vec<f64> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&out),
                    bits(want.as_slice().unwrap()),
                    "{shape:?} {relu}"
                );
                if relu {
                    let mask: Vec<bool> = mask.iter().map(|v| unsafe { v.assume_init() }).collect();
                    assert_eq!(mask, want_mask.iter().copied().collect::<Vec<_>>());
                }
            }
        }
    }

    /// The per-column gradient sums of a dense BatchNorm's backward equal their definition
    /// (`sum g` and `sum g (x - mean)` over the rows, `g` masked) to 1e-13.
    #[test]
    fn column_gradient_sums_equal_the_definition() {
        let mut r = rng(8);
        let (n, w) = (33, 10);
        let g = gaussian(&[n, w], 1.0, &mut r);
        let x = gaussian(&[n, w], 1.0, &mut r);
        let mask = x.mapv(|v| v > 0.2);
        let mean: Vec<f64> = (0..w).map(|j| 0.1 * j as f64).collect();
        let v2 = |t: &Tensor| t.view().into_dimensionality::<Ix2>().unwrap().to_owned();
        let (g2, x2) = (v2(&g), v2(&x));
        let m2 = mask.view().into_dimensionality::<Ix2>().unwrap();
        let (sb, sg) = column_grad_sums(g2.view(), x2.view(), Some(m2), &mean);
        for j in 0..w {
            let (mut want_b, mut want_g) = (0.0, 0.0);
            for i in 0..n {
                if m2[[i, j]] {
                    want_b += g2[[i, j]];
                    want_g += g2[[i, j]] * (x2[[i, j]] - mean[j]);
                }
            }
            assert!(
                close(&[sb[j], sg[j]], &[want_b, want_g], 1e-13),
                "column {j}"
            );
        }
    }
}
