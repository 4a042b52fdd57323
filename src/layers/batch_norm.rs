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

use ndarray::{Array1, Ix1, IxDyn};
use rayon::prelude::*;
use std::ops::Range;

use super::Mode;
use crate::grads::Grads;
use crate::tensor::Tensor;

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
    /// Normalised input, same shape as x.
    pub xhat: Tensor,
    /// 1 / sqrt(var + eps) per channel, of the statistics actually used.
    pub inv_std: Array1<f64>,
    /// Batch mean and biased variance per channel (training mode), for the running update.
    pub batch_mean: Array1<f64>,
    pub batch_var: Array1<f64>,
    /// Values per channel, M = N * H * W.
    pub count: usize,
}

/// `(N, C, S)` sizes of an `(N, C, ...)` tensor, S = product of the trailing axes.
fn ncs(x: &[usize]) -> (usize, usize, usize) {
    let (n, c) = (x[0], x[1]);
    (n, c, x.iter().skip(2).product())
}

/// Channels per reduction task: one cache line of f64 when S = 1.
const CHANNEL_BLOCK: usize = 8;

/// Per-channel sums over (N, S) of `term(range, channel)`, where `range` is a run of flat
/// indices of one channel of one sample (the whole (n, c) plane when S > 1, one element when
/// S = 1). Each channel is summed in the same order (n, then s) whatever the thread count.
/// Dense activations (S = 1) are summed row by row on one thread (vectorised across channels;
/// too small to split); conv activations in parallel blocks of channels.
fn per_channel_sum(
    n: usize,
    c: usize,
    s: usize,
    term: impl Fn(Range<usize>, usize) -> f64 + Sync,
) -> Array1<f64> {
    if s == 1 {
        let mut acc = vec![0.0; c];
        for ni in 0..n {
            let base = ni * c;
            for (ch, a) in acc.iter_mut().enumerate() {
                *a += term(base + ch..base + ch + 1, ch);
            }
        }
        return Array1::from(acc);
    }
    let blocks: Vec<Vec<f64>> = (0..c.div_ceil(CHANNEL_BLOCK))
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * CHANNEL_BLOCK, ((b + 1) * CHANNEL_BLOCK).min(c));
            let mut acc = vec![0.0; hi - lo];
            for ni in 0..n {
                for ch in lo..hi {
                    let base = (ni * c + ch) * s;
                    acc[ch - lo] += term(base..base + s, ch);
                }
            }
            acc
        })
        .collect();
    Array1::from(blocks.concat())
}

/// Applies `f(channel, range, output run)` to every (sample, channel) run of elements,
/// samples in parallel (dense activations in parallel blocks of rows).
fn per_element(
    out: &mut [f64],
    c: usize,
    s: usize,
    f: impl Fn(usize, Range<usize>, &mut [f64]) + Sync,
) {
    let sample = c * s;
    if s == 1 {
        let rows_per_task = (4096 / c.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * c)
            .enumerate()
            .for_each(|(b, block)| {
                for (r, row) in block.chunks_exact_mut(c).enumerate() {
                    let base = (b * rows_per_task + r) * c;
                    for (ch, o) in row.chunks_exact_mut(1).enumerate() {
                        f(ch, base + ch..base + ch + 1, o);
                    }
                }
            });
        return;
    }
    out.par_chunks_mut(sample)
        .enumerate()
        .for_each(|(ni, chunk)| {
            for (ch, seg) in chunk.chunks_exact_mut(s).enumerate() {
                let base = ni * sample + ch * s;
                f(ch, base..base + s, seg);
            }
        });
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

    /// Takes the input by value: its buffer becomes the cached `xhat`.
    pub fn forward(&self, x: Tensor, mode: Mode) -> (Tensor, BatchNormCache) {
        assert_eq!(
            x.shape()[1],
            self.channels(),
            "{}: channel count",
            self.name
        );
        let mut x = crate::tensor::into_standard_layout(x);
        let xs = x.as_slice().unwrap();
        let (n, c, s) = ncs(x.shape());
        let count = n * s;
        let (mean, var) = match mode {
            Mode::Train => {
                assert!(
                    count > 1,
                    "{}: training-mode BatchNorm needs more than one value per channel",
                    self.name
                );
                let mean = per_channel_sum(n, c, s, |r, _| xs[r].iter().sum()) / count as f64;
                let m = mean.as_slice().unwrap();
                // Two passes (mean, then centred squares): no cancellation for large means.
                let var = per_channel_sum(n, c, s, |r, ch| {
                    xs[r].iter().map(|&v| (v - m[ch]) * (v - m[ch])).sum()
                }) / count as f64;
                (mean, var)
            }
            Mode::Eval => (
                self.running_mean
                    .view()
                    .into_dimensionality::<Ix1>()
                    .unwrap()
                    .to_owned(),
                self.running_var
                    .view()
                    .into_dimensionality::<Ix1>()
                    .unwrap()
                    .to_owned(),
            ),
        };
        let inv_std = var.mapv(|v| 1.0 / (v + self.eps).sqrt());
        let (m, is) = (mean.as_slice().unwrap(), inv_std.as_slice().unwrap());
        per_element(x.as_slice_mut().unwrap(), c, s, |ch, _, o| {
            let (mc, ic) = (m[ch], is[ch]);
            o.iter_mut().for_each(|v| *v = (*v - mc) * ic);
        });
        let xhat = x;
        let (g, b) = (
            self.gamma.as_slice().unwrap(),
            self.beta.as_slice().unwrap(),
        );
        let mut y = xhat.clone();
        per_element(y.as_slice_mut().unwrap(), c, s, |ch, _, o| {
            let (gc, bc) = (g[ch], b[ch]);
            o.iter_mut().for_each(|v| *v = gc * *v + bc);
        });
        let train = mode == Mode::Train;
        let cache = BatchNormCache {
            mode,
            xhat,
            inv_std,
            batch_mean: if train { mean } else { Array1::zeros(0) },
            batch_var: if train { var } else { Array1::zeros(0) },
            count,
        };
        (y, cache)
    }

    /// Takes the output gradient by value and turns it into the input gradient in place.
    pub fn backward(
        &self,
        cache: &BatchNormCache,
        grad_y: Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        let mut grad_y = crate::tensor::into_standard_layout(grad_y);
        let gy = grad_y.as_slice().unwrap();
        let xh = cache.xhat.as_slice().unwrap();
        let (n, c, s) = ncs(grad_y.shape());
        let grad_beta = per_channel_sum(n, c, s, |r, _| gy[r].iter().sum());
        let grad_gamma = per_channel_sum(n, c, s, |r, _| {
            gy[r.clone()].iter().zip(&xh[r]).map(|(g, x)| g * x).sum()
        });
        let gamma = self.gamma.as_slice().unwrap();
        let m = cache.count as f64;
        let scale: Vec<f64> = (0..c).map(|ch| gamma[ch] * cache.inv_std[ch]).collect();
        match cache.mode {
            Mode::Train => {
                let mb: Vec<f64> = grad_beta.iter().map(|v| v / m).collect();
                let mg: Vec<f64> = grad_gamma.iter().map(|v| v / m).collect();
                per_element(grad_y.as_slice_mut().unwrap(), c, s, |ch, r, o| {
                    let (sc, b, g) = (scale[ch], mb[ch], mg[ch]);
                    o.iter_mut()
                        .zip(&xh[r])
                        .for_each(|(v, &x)| *v = sc * (*v - b - x * g));
                });
            }
            Mode::Eval => per_element(grad_y.as_slice_mut().unwrap(), c, s, |ch, _, o| {
                let sc = scale[ch];
                o.iter_mut().for_each(|v| *v *= sc);
            }),
        }
        if let Some(grads) = grads {
            grads.accumulate(&format!("{}.gamma", self.name), grad_gamma.into_dyn());
            grads.accumulate(&format!("{}.beta", self.name), grad_beta.into_dyn());
        }
        grad_y
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
            .and(&cache.batch_mean)
            .and(&cache.batch_var)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{numerical_gradient, quadratic_loss, rel_error};
    use crate::rng::{gaussian, rng};
    use ndarray::Axis;

    /// Relative error bound for 2-point central differences, h = 1e-6, f64.
    const TOL: f64 = 1e-6;

    fn layer_with_random_affine(c: usize, seed: u64) -> BatchNorm {
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
        assert!(
            rel_error(&gx, &num_x) < TOL,
            "{mode} {shape:?} grad_x {}",
            rel_error(&gx, &num_x)
        );
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
