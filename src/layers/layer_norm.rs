//! Layer normalisation: per sample, over every axis but the batch axis (the features of an
//! MLP unit; `C x H x W` of a conv sample), with a per-channel affine map (channel axis 1).
//!
//! For sample `n` with its `M` values: `mu_n`, `var_n` (biased), `xhat = (x - mu_n) /
//! sqrt(var_n + eps)`, `y = gamma_c xhat + beta_c`. With `h = gamma_c grad_y` (element-wise),
//! backward is BatchNorm's formula over the sample instead of the channel:
//!
//! ```text
//! grad_x     = inv_std_n (h - mean_n(h) - xhat mean_n(h xhat))
//! grad_gamma = sum_{n, spatial} grad_y xhat      grad_beta = sum_{n, spatial} grad_y
//! ```
//!
//! No running statistics: training and evaluation mode are the same map. The sums run in
//! index order on one thread, so the bits never depend on the thread count.

use ndarray::IxDyn;

use super::norm::NormLayer;
use super::Mode;
use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::tensor::Tensor;

pub const EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct LayerNorm<T: Float = f64> {
    pub name: String,
    /// (C)
    pub gamma: Tensor<T>,
    /// (C)
    pub beta: Tensor<T>,
    pub eps: T,
}

#[derive(Debug, Clone)]
pub struct LayerNormCache<T: Float = f64> {
    /// `xhat`, the normalised input.
    pub xhat: Tensor<T>,
    /// `1 / sqrt(var_n + eps)` per sample.
    pub inv_std: Vec<T>,
}

/// `(N, C, S)`: samples, channels, values per channel plane.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

impl LayerNorm {
    /// gamma 1, beta 0.
    pub fn new(name: &str, channels: usize) -> Self {
        LayerNorm {
            name: name.to_string(),
            gamma: Tensor::ones(IxDyn(&[channels])),
            beta: Tensor::zeros(IxDyn(&[channels])),
            eps: (EPS),
        }
    }
}

impl<T: Float> LayerNorm<T> {
    /// The layer in another element type, its parameters rounded to nearest.
    pub fn cast<U: Float>(&self) -> LayerNorm<U> {
        LayerNorm {
            name: self.name.clone(),
            gamma: crate::tensor::cast_ref(&self.gamma),
            beta: crate::tensor::cast_ref(&self.beta),
            eps: U::of_f64(self.eps.as_f64()),
        }
    }
}

impl<T: Float> NormLayer<T> for LayerNorm<T> {
    type Cache = LayerNormCache<T>;

    fn forward(&self, x: Tensor<T>, _mode: Mode) -> (Tensor<T>, LayerNormCache<T>) {
        let x = crate::tensor::into_standard_layout(x);
        let (n, c, s) = layout(x.shape());
        assert_eq!(c, self.gamma.len(), "{}: channels", self.name);
        let m = T::of_f64((c * s) as f64);
        let gamma = self.gamma.as_slice().unwrap();
        let beta = self.beta.as_slice().unwrap();
        let mut xhat = x;
        let mut y = Tensor::<T>::zeros(xhat.raw_dim());
        let mut inv_std = Vec::with_capacity(n);
        for (x_n, y_n) in xhat
            .as_slice_mut()
            .unwrap()
            .chunks_exact_mut(c * s)
            .zip(y.as_slice_mut().unwrap().chunks_exact_mut(c * s))
        {
            // Two passes (mean, then centred squares), so a large mean does not cancel.
            let mean = x_n.iter().sum::<T>() / m;
            let var = x_n.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / m;
            let inv = T::one() / (var + self.eps).sqrt();
            for (ch, (xp, yp)) in x_n
                .chunks_exact_mut(s)
                .zip(y_n.chunks_exact_mut(s))
                .enumerate()
            {
                for (xv, yv) in xp.iter_mut().zip(yp) {
                    *xv = (*xv - mean) * inv;
                    *yv = gamma[ch] * *xv + beta[ch];
                }
            }
            inv_std.push(inv);
        }
        (y, LayerNormCache { xhat, inv_std })
    }

    fn backward(
        &self,
        cache: &LayerNormCache<T>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        let grad_y = crate::tensor::into_standard_layout(grad_y);
        let (n, c, s) = layout(grad_y.shape());
        let m = T::of_f64((c * s) as f64);
        let gamma = self.gamma.as_slice().unwrap();
        let xhat = cache.xhat.as_slice().unwrap();
        let gy = grad_y.as_slice().unwrap();
        let mut grad_x = vec![T::zero(); gy.len()];
        for i in 0..n {
            let (g_n, xh_n) = (&gy[i * c * s..][..c * s], &xhat[i * c * s..][..c * s]);
            let (mut sum_h, mut sum_hx) = (T::zero(), T::zero());
            for (ch, (gp, xp)) in g_n.chunks_exact(s).zip(xh_n.chunks_exact(s)).enumerate() {
                for (&g, &xh) in gp.iter().zip(xp) {
                    let h = gamma[ch] * g;
                    sum_h += h;
                    sum_hx += h * xh;
                }
            }
            let mean_h = fault::factor(Fault::LnMeanTerm, sum_h / m);
            let mean_hx = fault::factor(Fault::LnVarianceTerm, sum_hx / m);
            let inv = cache.inv_std[i];
            let out = &mut grad_x[i * c * s..][..c * s];
            for (ch, ((o, gp), xp)) in out
                .chunks_exact_mut(s)
                .zip(g_n.chunks_exact(s))
                .zip(xh_n.chunks_exact(s))
                .enumerate()
            {
                for ((o, &g), &xh) in o.iter_mut().zip(gp).zip(xp) {
                    *o = inv * (gamma[ch] * g - mean_h - xh * mean_hx);
                }
            }
        }
        if let Some(grads) = grads {
            let mut gg = vec![T::zero(); c];
            let mut gb = vec![T::zero(); c];
            for (j, (&g, &xh)) in gy.iter().zip(xhat).enumerate() {
                let ch = (j / s) % c;
                gg[ch] += g * xh;
                gb[ch] += g;
            }
            fault::perturb_slice(Fault::LnGammaGrad, &mut gg);
            let v = |v: Vec<T>| Tensor::<T>::from_shape_vec(IxDyn(&[c]), v).unwrap();
            grads.accumulate(&format!("{}.gamma", self.name), v(gg));
            grads.accumulate(&format!("{}.beta", self.name), v(gb));
        }
        Tensor::<T>::from_shape_vec(grad_y.raw_dim(), grad_x).unwrap()
    }

    fn update_running_stats(&mut self, _cache: &LayerNormCache<T>) {}

    fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.gamma", self.name), &self.gamma);
        f(format!("{}.beta", self.name), &self.beta);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(format!("{}.gamma", self.name), &mut self.gamma);
        f(format!("{}.beta", self.name), &mut self.beta);
    }

    fn visit_buffers(&self, _f: &mut dyn FnMut(String, &Tensor<T>)) {}

    fn visit_buffers_mut(&mut self, _f: &mut dyn FnMut(String, &mut Tensor<T>)) {}

    fn label(&self) -> &'static str {
        "LN"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::check_layer;
    use crate::rng::{gaussian, rng};

    /// Relative error bound for 2-point central differences, h = 1e-6, f64.
    const TOL: f64 = 1e-6;

    fn layer(c: usize, seed: u64) -> LayerNorm {
        let mut r = rng(seed);
        let mut ln = LayerNorm::new("ln", c);
        ln.gamma = gaussian(&[c], 1.0, &mut r) + 1.0;
        ln.beta = gaussian(&[c], 1.0, &mut r);
        ln
    }

    #[test]
    fn backward_matches_finite_differences_dense_and_conv() {
        for (shape, seed) in [(vec![5, 7], 1), (vec![3, 4, 3, 2], 2), (vec![1, 6], 3)] {
            let ln = layer(shape[1], seed);
            let x = gaussian(&shape, 2.0, &mut rng(seed + 10)) + 0.7;
            let checked = check_layer(
                &format!("{shape:?}"),
                &ln,
                &x,
                1e-6,
                TOL,
                seed + 20,
                |l, x| l.forward(x.clone(), Mode::Train).0,
                |l, x, gy, g| {
                    let (_, c) = l.forward(x.clone(), Mode::Train);
                    l.backward(&c, gy.clone(), Some(g))
                },
                |l, f| l.visit_params_mut(f),
            );
            assert_eq!(checked, ["ln.gamma", "ln.beta"]);
        }
    }

    /// Each sample comes out with mean 0 and variance 1 (gamma 1, beta 0) whatever the
    /// others hold, in both modes: the statistics are the sample's own.
    #[test]
    fn each_sample_is_normalised_on_its_own() {
        let ln = LayerNorm::new("ln", 3);
        let mut x = gaussian(&[4, 3, 2, 2], 3.0, &mut rng(4)) + 5.0;
        x.slice_mut(ndarray::s![0, .., .., ..])
            .mapv_inplace(|v| 100.0 * v);
        let (y, _) = ln.forward(x.clone(), Mode::Train);
        let (ye, _) = ln.forward(x, Mode::Eval);
        assert_eq!(y, ye);
        for sample in y.outer_iter() {
            let m = sample.len() as f64;
            let mean = sample.sum() / m;
            let var = sample.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            assert!(
                mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-4,
                "{mean} {var}"
            );
        }
    }
}
