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

use ndarray::{Array1, Array3, ArrayView3, Axis, Ix1, IxDyn};

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

/// `(N, C, S)` view of an `(N, C, ...)` tensor, S = product of the trailing axes.
fn as_ncs(x: &Tensor) -> ArrayView3<'_, f64> {
    let n = x.shape()[0];
    let c = x.shape()[1];
    let s = x.len() / (n * c).max(1);
    x.view()
        .into_shape_with_order((n, c, s))
        .expect("standard layout tensor")
}

/// Per-channel sum over (N, S), accumulated in a fixed order.
fn channel_sums(x: &ArrayView3<f64>) -> Array1<f64> {
    let mut sums = Array1::zeros(x.shape()[1]);
    for sample in x.axis_iter(Axis(0)) {
        for (c, row) in sample.axis_iter(Axis(0)).enumerate() {
            sums[c] += row.iter().sum::<f64>();
        }
    }
    sums
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

    pub fn forward(&self, x: &Tensor, mode: Mode) -> (Tensor, BatchNormCache) {
        assert_eq!(
            x.shape()[1],
            self.channels(),
            "{}: channel count",
            self.name
        );
        let x3 = as_ncs(x);
        let (n, c, s) = x3.dim();
        let count = n * s;
        let (mean, var) = match mode {
            Mode::Train => {
                assert!(
                    count > 1,
                    "{}: training-mode BatchNorm needs more than one value per channel",
                    self.name
                );
                let mean = channel_sums(&x3) / count as f64;
                let centred = &x3 - &mean.view().insert_axis(Axis(1));
                let var = channel_sums(&centred.mapv(|v| v * v).view()) / count as f64;
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
        let gamma = self.gamma.view().into_dimensionality::<Ix1>().unwrap();
        let beta = self.beta.view().into_dimensionality::<Ix1>().unwrap();
        let mut xhat = Array3::zeros((n, c, s));
        let mut y = Array3::zeros((n, c, s));
        for ((mut xh_n, mut y_n), x_n) in xhat
            .outer_iter_mut()
            .zip(y.outer_iter_mut())
            .zip(x3.outer_iter())
        {
            for ch in 0..c {
                let (m, is, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
                let src = x_n.index_axis(Axis(0), ch);
                let mut xh = xh_n.index_axis_mut(Axis(0), ch);
                let mut yy = y_n.index_axis_mut(Axis(0), ch);
                for ((xh, yy), &v) in xh.iter_mut().zip(yy.iter_mut()).zip(src.iter()) {
                    *xh = (v - m) * is;
                    *yy = g * *xh + b;
                }
            }
        }
        let shape = x.raw_dim();
        let cache = BatchNormCache {
            mode,
            xhat: xhat.into_shape_with_order(shape.clone()).unwrap(),
            inv_std,
            batch_mean: if mode == Mode::Train {
                mean
            } else {
                Array1::zeros(0)
            },
            batch_var: if mode == Mode::Train {
                var
            } else {
                Array1::zeros(0)
            },
            count,
        };
        (y.into_shape_with_order(shape).unwrap(), cache)
    }

    pub fn backward(
        &self,
        cache: &BatchNormCache,
        grad_y: &Tensor,
        grads: Option<&mut Grads>,
    ) -> Tensor {
        let gy = as_ncs(grad_y);
        let xhat = as_ncs(&cache.xhat);
        let (n, c, s) = gy.dim();
        let grad_beta = channel_sums(&gy);
        let grad_gamma = channel_sums(&(&gy * &xhat).view());
        let gamma = self.gamma.view().into_dimensionality::<Ix1>().unwrap();
        let m = cache.count as f64;
        let mut gx = Array3::zeros((n, c, s));
        for ((mut gx_n, gy_n), xh_n) in gx
            .outer_iter_mut()
            .zip(gy.outer_iter())
            .zip(xhat.outer_iter())
        {
            for ch in 0..c {
                let scale = gamma[ch] * cache.inv_std[ch];
                let (mb, mg) = (grad_beta[ch] / m, grad_gamma[ch] / m);
                let mut out = gx_n.index_axis_mut(Axis(0), ch);
                let g = gy_n.index_axis(Axis(0), ch);
                let xh = xh_n.index_axis(Axis(0), ch);
                for ((o, &g), &xh) in out.iter_mut().zip(g.iter()).zip(xh.iter()) {
                    *o = match cache.mode {
                        Mode::Train => scale * (g - mb - xh * mg),
                        Mode::Eval => scale * g,
                    };
                }
            }
        }
        if let Some(grads) = grads {
            grads.accumulate(&format!("{}.gamma", self.name), grad_gamma.into_dyn());
            grads.accumulate(&format!("{}.beta", self.name), grad_beta.into_dyn());
        }
        gx.into_shape_with_order(grad_y.raw_dim()).unwrap()
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
        let (y, cache) = bn.forward(&x, mode);
        let mut grads = Grads::new();
        let gx = bn.backward(&cache, &quadratic_loss(&y, &a, &b).1, Some(&mut grads));
        let num_x = numerical_gradient(
            |x| quadratic_loss(&bn.forward(x, mode).0, &a, &b).0,
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
                quadratic_loss(&l.forward(&x, mode).0, &a, &b).0
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
                quadratic_loss(&l.forward(&x, mode).0, &a, &b).0
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
        let (y, _) = bn.forward(&x, Mode::Train);
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
        let (_, cache) = bn.forward(&x, Mode::Train);
        bn.update_running_stats(&cache);
        // mean 3, biased var 3.5, unbiased 14/3.
        assert!((bn.running_mean[[0]] - 0.3).abs() < 1e-15);
        assert!((bn.running_var[[0]] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-15);
    }
}
