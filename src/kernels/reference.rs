//! Plain-ndarray references: each fast kernel's definition, and BatchNorm's, written for
//! clarity alone (index loops and whole-array arithmetic; no vectorisation, no fusion, no
//! threads). Nothing in the engine calls them: the kernels' tests and the BatchNorm layer's
//! test compare against them, and the signal-propagation record, which wants exactly the
//! definition, reads its channel statistics from [`channel_moments`].

use ndarray::Axis;

use super::im2col::Geometry;
use crate::float::Float;
use crate::tensor::Tensor;

/// Per-channel mean and biased variance of an `(N, C, ...)` tensor: two passes over the
/// channel's `N H W` values.
pub fn channel_moments<T: Float>(x: &Tensor<T>) -> (Vec<T>, Vec<T>) {
    (0..x.shape()[1])
        .map(|ch| {
            let v = x.index_axis(Axis(1), ch);
            let m = T::of_f64(v.len() as f64);
            let mean = v.iter().sum::<T>() / m;
            let var = v.iter().map(|&a| (a - mean) * (a - mean)).sum::<T>() / m;
            (mean, var)
        })
        .unzip()
}

/// `a_c x + b_c` on channel `c`, then `max(., 0)` when `relu`; the mask is where the
/// pre-activation was positive.
pub fn affine<T: Float>(
    x: &Tensor<T>,
    a: &[T],
    b: &[T],
    relu: bool,
) -> (Tensor<T>, ndarray::ArrayD<bool>) {
    let mut y = x.clone();
    let mut mask = x.mapv(|_| true);
    for ch in 0..x.shape()[1] {
        let mut y_c = y.index_axis_mut(Axis(1), ch);
        let mut m_c = mask.index_axis_mut(Axis(1), ch);
        for (v, m) in y_c.iter_mut().zip(m_c.iter_mut()) {
            let z = a[ch] * *v + b[ch];
            *m = z > T::zero();
            *v = if relu && z <= T::zero() { T::zero() } else { z };
        }
    }
    (y, mask)
}

/// `(x - mean_c) / sqrt(var_c + eps)` per channel.
fn normalised<T: Float>(x: &Tensor<T>, mean: &[T], var: &[T], eps: T) -> Tensor<T> {
    let mut xhat = x.clone();
    for ch in 0..x.shape()[1] {
        let inv = T::one() / (var[ch] + eps).sqrt();
        xhat.index_axis_mut(Axis(1), ch)
            .mapv_inplace(|v| (v - mean[ch]) * inv);
    }
    xhat
}

/// BatchNorm in training mode: `y = gamma xhat + beta`, `xhat` from the batch's statistics.
pub fn batch_norm_train<T: Float>(x: &Tensor<T>, gamma: &[T], beta: &[T], eps: T) -> Tensor<T> {
    let (mean, var) = channel_moments(x);
    let xhat = normalised(x, &mean, &var, eps);
    affine(&xhat, gamma, beta, false).0
}

/// BatchNorm in evaluation mode: the running statistics, an affine map.
pub fn batch_norm_eval<T: Float>(
    x: &Tensor<T>,
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    eps: T,
) -> Tensor<T> {
    let xhat = normalised(x, running_mean, running_var, eps);
    affine(&xhat, gamma, beta, false).0
}

/// The training-mode backward by the textbook formula, per channel over its `M` values:
/// `grad_beta = sum g`, `grad_gamma = sum g xhat`,
/// `grad_x = gamma / sqrt(var + eps) (g - grad_beta / M - xhat grad_gamma / M)`.
/// Returns `(grad_x, grad_gamma, grad_beta)`.
pub fn batch_norm_train_backward<T: Float>(
    x: &Tensor<T>,
    gamma: &[T],
    eps: T,
    grad_y: &Tensor<T>,
) -> (Tensor<T>, Vec<T>, Vec<T>) {
    let (mean, var) = channel_moments(x);
    let xhat = normalised(x, &mean, &var, eps);
    let mut grad_x = grad_y.clone();
    let (mut grad_gamma, mut grad_beta) = (Vec::new(), Vec::new());
    for ch in 0..x.shape()[1] {
        let g = grad_y.index_axis(Axis(1), ch);
        let xh = xhat.index_axis(Axis(1), ch);
        let m = T::of_f64(g.len() as f64);
        let gb: T = g.iter().sum();
        let gg: T = g.iter().zip(xh.iter()).map(|(&g, &x)| g * x).sum();
        let scale = gamma[ch] / (var[ch] + eps).sqrt();
        let mut out = grad_x.index_axis_mut(Axis(1), ch);
        for ((o, &g), &xh) in out.iter_mut().zip(g.iter()).zip(xh.iter()) {
            *o = scale * (g - gb / m - xh * gg / m);
        }
        grad_gamma.push(gg);
        grad_beta.push(gb);
    }
    (grad_x, grad_gamma, grad_beta)
}

/// Every tap of a convolution's columns, in `(ci, ki, kj, oh, ow)` order: `f(column index,
/// input index)` for each entry of `cols` that reads an input pixel, where output `(oh, ow)`
/// at kernel position `(ki, kj)` reads `x[ci][oh s + ki - p][ow s + kj - p]`.
fn for_each_tap(g: &Geometry, mut f: impl FnMut(usize, usize)) {
    let (ho, wo) = g.out();
    for ci in 0..g.c {
        for ki in 0..g.k {
            for kj in 0..g.k {
                let row = (ci * g.k + ki) * g.k + kj;
                for oh in 0..ho {
                    for ow in 0..wo {
                        if let Some((ih, iw)) = source(g, oh, ow, ki, kj) {
                            f(row * ho * wo + oh * wo + ow, (ci * g.h + ih) * g.w + iw);
                        }
                    }
                }
            }
        }
    }
}

/// im2col by its definition: each column entry is the input pixel its tap reads, 0 where the
/// tap falls outside the image.
pub fn im2col<T: Float>(x: &[T], g: Geometry) -> Vec<T> {
    let (ho, wo) = g.out();
    let mut cols = vec![T::zero(); g.c * g.k * g.k * ho * wo];
    for_each_tap(&g, |col, input| cols[col] = x[input]);
    cols
}

/// col2im, the adjoint of [`im2col`]: each input element is the sum of the entries of
/// `cols` copied from it, added in `(ci, ki, kj, oh, ow)` order onto `0.0`.
pub fn col2im<T: Float>(cols: &[T], g: Geometry) -> Vec<T> {
    let mut x = vec![T::zero(); g.c * g.h * g.w];
    for_each_tap(&g, |col, input| x[input] += cols[col]);
    x
}

/// The input pixel output `(oh, ow)` reads at kernel position `(ki, kj)`, if inside.
fn source(g: &Geometry, oh: usize, ow: usize, ki: usize, kj: usize) -> Option<(usize, usize)> {
    let ih = (oh * g.s + ki) as isize - g.p as isize;
    let iw = (ow * g.s + kj) as isize - g.p as isize;
    let inside = (0..g.h as isize).contains(&ih) && (0..g.w as isize).contains(&iw);
    inside.then_some((ih as usize, iw as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient};
    use crate::rng::{gaussian, rng};

    /// The reference backward is itself right: central differences of the reference forward
    /// (relative error bound 1e-6 for 2-point differences with h = 1e-6, f64).
    #[test]
    fn reference_batch_norm_backward_matches_finite_differences() {
        let mut r = rng(3);
        let x = gaussian(&[5, 3, 2, 2], 1.0, &mut r);
        let gy = gaussian(&[5, 3, 2, 2], 1.0, &mut r);
        let gamma = [0.7, -1.3, 2.0];
        let beta = [0.1, 0.2, -0.3];
        let loss = |x: &Tensor| (batch_norm_train(x, &gamma, &beta, 1e-5) * &gy).sum();
        let (gx, _, _) = batch_norm_train_backward(&x, &gamma, 1e-5, &gy);
        assert_close("grad_x", &gx, &numerical_gradient(loss, &x, 1e-6), 1e-6);
    }
}
