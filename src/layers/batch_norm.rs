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
use super::relu::ReluCache;
use super::Mode;
use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::norm::*;
use crate::spin_join::{self, split_point};
use crate::tensor::Tensor;

pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct BatchNorm<T: Float = f64> {
    pub name: String,
    /// (C)
    pub gamma: Tensor<T>,
    /// (C)
    pub beta: Tensor<T>,
    /// (C)
    pub running_mean: Tensor<T>,
    /// (C)
    pub running_var: Tensor<T>,
    pub eps: T,
    pub momentum: T,
}

#[derive(Debug, Clone)]
pub struct BatchNormCache<T: Float = f64> {
    pub mode: Mode,
    /// The input, shared (a residual unit keeps the same `x_l` for its record and shortcut);
    /// `xhat = (x - mean) * inv_std` is recomputed where needed.
    pub x: Arc<Tensor<T>>,
    /// Per channel, the mean actually used (the batch's in training, the running one in eval).
    pub mean: Vec<T>,
    /// 1 / sqrt(var + eps) per channel, of the statistics actually used.
    pub inv_std: Vec<T>,
    /// Biased batch variance per channel (training mode), for the running update.
    pub batch_var: Vec<T>,
    /// Values per channel, M = N * H * W.
    pub count: usize,
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
            eps: (EPS),
            momentum: (MOMENTUM),
        }
    }
}

impl<T: Float> BatchNorm<T> {
    /// The layer in another element type, its parameters and statistics rounded to nearest.
    pub fn cast<U: Float>(&self) -> BatchNorm<U> {
        BatchNorm {
            name: self.name.clone(),
            gamma: crate::tensor::cast_ref(&self.gamma),
            beta: crate::tensor::cast_ref(&self.beta),
            running_mean: crate::tensor::cast_ref(&self.running_mean),
            running_var: crate::tensor::cast_ref(&self.running_var),
            eps: U::of_f64(self.eps.as_f64()),
            momentum: U::of_f64(self.momentum.as_f64()),
        }
    }

    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// `y = gamma xhat + beta`. Takes the input by value: it moves into the cache.
    pub fn forward(&self, x: Tensor<T>, mode: Mode) -> (Tensor<T>, BatchNormCache<T>) {
        let (y, cache, _) = self.forward_shared(Arc::new(x), mode, false, None);
        (y, cache)
    }

    /// `relu(gamma xhat + beta)` in one pass, with both layers' caches (the same values as
    /// running the two layers one after the other).
    pub fn forward_relu(
        &self,
        x: Tensor<T>,
        mode: Mode,
    ) -> (Tensor<T>, BatchNormCache<T>, ReluCache) {
        let (y, cache, relu) = self.forward_shared(Arc::new(x), mode, true, None);
        (y, cache, relu.expect("the fused pass makes a mask"))
    }

    /// Batch mean and biased variance per channel; two passes (mean, then centred squares), so
    /// large means do not cancel.
    fn batch_stats(&self, xs: &[T], l: Layout) -> (Vec<T>, Vec<T>) {
        let count = (l.n * l.s) as f64;
        assert!(
            count > 1.0,
            "{}: training-mode BatchNorm<T> needs more than one value per channel",
            self.name
        );
        if l.s > 1 {
            return plane_stats(xs, l);
        }
        let x = ArrayView2::from_shape((l.n, l.c), xs).expect("a dense activation is (N, C)");
        column_halves(l.n, l.c, |cols| column_stats(x.slice(s![.., cols])))
    }

    /// The statistics of a forward pass (batch ones in training, running ones in eval) in a
    /// cache that keeps `x`, and the per-channel affine map `y = a x + b` they give.
    pub(crate) fn normalise(
        &self,
        x: Arc<Tensor<T>>,
        mode: Mode,
        moments: Option<&Moments<T>>,
    ) -> (BatchNormCache<T>, Affine<T>) {
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
    pub(crate) fn affine(&self, mean: &[T], inv_std: &[T]) -> Affine<T> {
        self.affine_from(0, mean, inv_std)
    }

    /// [`BatchNorm::affine`] of the channels `c0..c0 + mean.len()`.
    pub(crate) fn affine_from(&self, c0: usize, mean: &[T], inv_std: &[T]) -> Affine<T> {
        let c1 = c0 + mean.len();
        let a = scales(&self.gamma.as_slice().unwrap()[c0..c1], inv_std);
        let b = self.beta.as_slice().unwrap()[c0..c1]
            .iter()
            .zip(&a)
            .zip(mean)
            .map(|((&beta, &a), &m)| beta - a * m)
            .collect();
        Affine { a, b }
    }

    /// `1 / sqrt(var + eps)` per channel.
    pub(crate) fn inv_std(&self, var: &[T]) -> Vec<T> {
        var.iter()
            .map(|&v| T::one() / (v + self.eps).sqrt())
            .collect()
    }

    /// The plain (`relu` false) or BN-ReLU pass from an input the caller shares (kept in the
    /// cache without a copy), with the input's plane moments when the op that wrote it made
    /// them.
    pub(crate) fn forward_shared(
        &self,
        x: Arc<Tensor<T>>,
        mode: Mode,
        relu: bool,
        moments: Option<&Moments<T>>,
    ) -> (Tensor<T>, BatchNormCache<T>, Option<ReluCache>) {
        let (cache, Affine { a, b }) = self.normalise(x, mode, moments);
        let x = &cache.x;
        let xs = x.as_slice().unwrap();
        let l = Layout::of(x.shape());
        let mut y = Tensor::<T>::uninit(x.raw_dim());
        // Written in full by the kernels below: not zero-filled first (a pass over memory
        // the kernels would then fetch back, half of it from the other core).
        let mut mask = Box::<[bool]>::new_uninit_slice(if relu { x.len() } else { 0 });
        let task = l.task_len();
        let run = l.run_len();
        // `start` is the flat index of `out`'s first element; `out` holds whole runs.
        let kernel = |start: usize, out: &mut [MaybeUninit<T>], mask: &mut [MaybeUninit<bool>]| {
            for (j, o) in out.chunks_mut(run).enumerate() {
                let (rs, len) = (start + j * run, o.len());
                let (src, pa, pb) = (&xs[rs..], l.params(&a, rs, len), l.params(&b, rs, len));
                let m = if relu {
                    &mut mask[j * run..j * run + len]
                } else {
                    &mut []
                };
                if l.s == 1 {
                    affine_run::<_, Row>(o, src, m, pa, pb);
                } else {
                    affine_run::<_, Plane>(o, src, m, pa, pb);
                }
            }
        };
        let ys = y.as_slice_mut().unwrap();
        if l.s == 1 {
            // A dense activation is small (W1: 256 KB): two halves of whole rows.
            let (len, mid) = (ys.len(), split_point(ys.len(), task));
            let (y0, y1) = ys.split_at_mut(mid);
            let (m0, m1) = if relu {
                mask.split_at_mut(mid)
            } else {
                (&mut [][..], &mut [][..])
            };
            spin_join::join_if(
                len >= spin_join::MIN_PARALLEL_ELEMENTS,
                || kernel(0, y0, m0),
                || kernel(mid, y1, m1),
            );
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
        cache: &BatchNormCache<T>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        self.backward_impl(cache, None, grad_y, grads)
    }

    /// Backward through `relu(BN(x))` from the gradient of the ReLU's output, in place.
    pub fn backward_relu(
        &self,
        cache: &BatchNormCache<T>,
        relu: &ReluCache,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        self.backward_impl(
            cache,
            Some(relu.positive.as_slice().unwrap()),
            grad_y,
            grads,
        )
    }

    fn backward_impl(
        &self,
        cache: &BatchNormCache<T>,
        mask: Option<&[bool]>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
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
            column_halves(l.n, l.c, |cols| {
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
    /// `add` is added to the result run by run (the caller's epilogue).
    pub(crate) fn finish_backward(
        &self,
        cache: &BatchNormCache<T>,
        mask: Option<&[bool]>,
        mut grad_y: Tensor<T>,
        (grad_beta, sum_gx): (Vec<T>, Vec<T>),
        grads: Option<&mut Grads<T>>,
        add: Option<&[T]>,
    ) -> Tensor<T> {
        let l = Layout::of(grad_y.shape());
        let xs = cache.x.as_slice().unwrap();
        let (mean, inv_std) = (&cache.mean, &cache.inv_std);
        let grad_gamma: Vec<T> = sum_gx.iter().zip(inv_std).map(|(&s, &i)| s * i).collect();
        let mut scale = scales(self.gamma.as_slice().unwrap(), inv_std);
        if cache.mode == Mode::Eval {
            fault::perturb_slice(Fault::BnEvalScale, &mut scale);
        }
        let task = l.task_len();
        let run = l.run_len();
        let gs = grad_y.as_slice_mut().unwrap();
        let m = T::of_f64(cache.count as f64);
        // Training: grad_x = scale (g - grad_beta / M - xhat grad_gamma / M), and
        // xhat grad_gamma = (x - mean) inv_std^2 sum_gx, so per channel
        // grad_x = scale g - c1 - c2 (x - mean).
        let (c1, c2) = if cache.mode == Mode::Train {
            train_grad_coefficients(&scale, inv_std, &grad_beta, &sum_gx, m)
        } else {
            (Vec::new(), Vec::new())
        };
        // `start` is the flat index of `out`'s first element; `out` holds whole runs.
        let kernel = |start: usize, out: &mut [T]| {
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
                        train_grad_run::<_, Row>(g, &xs[rs..], mk, p);
                    } else {
                        train_grad_run::<_, Plane>(g, &xs[rs..], mk, p);
                    }
                } else if l.s == 1 {
                    eval_grad_run::<_, Row>(g, mk, ps);
                } else {
                    eval_grad_run::<_, Plane>(g, mk, ps);
                }
                if let Some(r) = add {
                    g.iter_mut()
                        .zip(&r[rs..rs + len])
                        .for_each(|(g, &r)| *g += r);
                }
            }
        };
        if l.s == 1 {
            let (len, mid) = (gs.len(), split_point(gs.len(), task));
            let (g0, g1) = gs.split_at_mut(mid);
            spin_join::join_if(
                len >= spin_join::MIN_PARALLEL_ELEMENTS,
                || kernel(0, g0),
                || kernel(mid, g1),
            );
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
        grads: &mut Grads<T>,
        mut grad_gamma: Vec<T>,
        mut grad_beta: Vec<T>,
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
    pub(crate) fn relu_mask(&self, cache: &BatchNormCache<T>) -> ndarray::ArrayD<bool> {
        let Affine { a, b } = self.affine(&cache.mean, &cache.inv_std);
        let l = Layout::of(cache.x.shape());
        let xs = cache.x.as_slice().unwrap();
        let mask = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = l.channel(i);
                a[ch] * v + b[ch] > T::zero()
            })
            .collect();
        ndarray::ArrayD::from_shape_vec(cache.x.raw_dim(), mask).unwrap()
    }

    /// Moves the running statistics toward this batch's (training-mode caches only).
    pub fn update_running_stats(&mut self, cache: &BatchNormCache<T>) {
        if cache.mode != Mode::Train {
            return;
        }
        let m = self.momentum;
        let unbias = T::of_f64(cache.count as f64 / (cache.count as f64 - 1.0));
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
                *rm = (T::one() - m) * *rm + m * bm;
                *rv = (T::one() - m) * *rv + m * bv * unbias;
            });
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.gamma", self.name), &self.gamma);
        f(format!("{}.beta", self.name), &self.beta);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(format!("{}.gamma", self.name), &mut self.gamma);
        f(format!("{}.beta", self.name), &mut self.beta);
    }

    /// Running statistics: state, not parameters.
    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.running_mean", self.name), &self.running_mean);
        f(format!("{}.running_var", self.name), &self.running_var);
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(
            format!("{}.running_mean", self.name),
            &mut self.running_mean,
        );
        f(format!("{}.running_var", self.name), &mut self.running_var);
    }
}

impl<T: Float> NormLayer<T> for BatchNorm<T> {
    type Cache = BatchNormCache<T>;

    fn forward(&self, x: Tensor<T>, mode: Mode) -> (Tensor<T>, BatchNormCache<T>) {
        BatchNorm::forward(self, x, mode)
    }

    fn backward(
        &self,
        cache: &BatchNormCache<T>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        BatchNorm::backward(self, cache, grad_y, grads)
    }

    fn update_running_stats(&mut self, cache: &BatchNormCache<T>) {
        BatchNorm::update_running_stats(self, cache)
    }

    fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        BatchNorm::visit_params(self, f)
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        BatchNorm::visit_params_mut(self, f)
    }

    fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        BatchNorm::visit_buffers(self, f)
    }

    fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        BatchNorm::visit_buffers_mut(self, f)
    }

    fn label(&self) -> &'static str {
        "BN"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, check_layer, numerical_gradient, quadratic_loss};
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
        let checked = check_layer(
            &format!("{mode} {shape:?}"),
            &bn,
            &x,
            1e-6,
            TOL,
            seed + 200,
            |l, x| l.forward(x.clone(), mode).0,
            |l, x, gy, g| {
                let (_, c) = l.forward(x.clone(), mode);
                l.backward(&c, gy.clone(), Some(g))
            },
            |l, f| l.visit_params_mut(f),
        );
        assert_eq!(checked, ["bn.gamma", "bn.beta"]);
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

    /// The layer equals the plain-ndarray BatchNorm of `kernels::reference` (the textbook
    /// formulas, whole-array arithmetic): forward and backward, both modes, dense and conv
    /// shapes, with and without the fused ReLU. Relative error bound 1e-12: the two sum in
    /// different orders (fixed lanes against one running sum), nothing else differs.
    #[test]
    fn layer_equals_the_plain_reference() {
        use crate::kernels::reference;
        const REF_TOL: f64 = 1e-12;
        for (shape, big) in [
            (vec![9, 6], false),
            (vec![3, 4, 5, 3], false),
            (vec![64, 300], true),
            (vec![4, 8, 16, 16], true),
        ] {
            let mut r = rng(17);
            let bn = layer_with_random_affine(shape[1], 5);
            let x = gaussian(&shape, 1.5, &mut r) + 0.3;
            let g = gaussian(&shape, 1.0, &mut r);
            let gamma = bn.gamma.as_slice().unwrap();
            let beta = bn.beta.as_slice().unwrap();
            let what = format!("{shape:?} (threads split: {big})");

            let (y, c) = bn.forward(x.clone(), Mode::Train);
            let want = reference::batch_norm_train(&x, gamma, beta, bn.eps);
            assert_close(&format!("{what} train forward"), &y, &want, REF_TOL);
            let mut grads = Grads::new();
            let gx = bn.backward(&c, g.clone(), Some(&mut grads));
            let (want_gx, want_gamma, want_beta) =
                reference::batch_norm_train_backward(&x, gamma, bn.eps, &g);
            assert_close(&format!("{what} train grad_x"), &gx, &want_gx, REF_TOL);
            let vec1 = |v: Vec<f64>| Tensor::from_shape_vec(IxDyn(&[v.len()]), v).unwrap();
            assert_close(
                &format!("{what} grad_gamma"),
                grads.get("bn.gamma").unwrap(),
                &vec1(want_gamma),
                REF_TOL,
            );
            assert_close(
                &format!("{what} grad_beta"),
                grads.get("bn.beta").unwrap(),
                &vec1(want_beta),
                REF_TOL,
            );

            // The fused ReLU: relu of the reference output, the reference backward of the
            // masked gradient.
            let (yr, cr, rc) = bn.forward_relu(x.clone(), Mode::Train);
            let (want_r, mask) =
                reference::affine(&want, &vec![1.0; shape[1]], &vec![0.0; shape[1]], true);
            assert_close(&format!("{what} BN-ReLU forward"), &yr, &want_r, REF_TOL);
            let gxr = bn.backward_relu(&cr, &rc, g.clone(), None);
            let masked = ndarray::Zip::from(&g)
                .and(&mask)
                .map_collect(|&g, &m| if m { g } else { 0.0 });
            let (want_gxr, _, _) = reference::batch_norm_train_backward(&x, gamma, bn.eps, &masked);
            assert_close(&format!("{what} BN-ReLU grad_x"), &gxr, &want_gxr, REF_TOL);

            let (ye, ce) = bn.forward(x.clone(), Mode::Eval);
            let (rm, rv) = (
                bn.running_mean.as_slice().unwrap(),
                bn.running_var.as_slice().unwrap(),
            );
            let want_e = reference::batch_norm_eval(&x, gamma, beta, rm, rv, bn.eps);
            assert_close(&format!("{what} eval forward"), &ye, &want_e, REF_TOL);
            // Evaluation mode is affine: grad_x = gamma / sqrt(running_var + eps) g.
            let scale: Vec<f64> = (0..shape[1])
                .map(|ch| gamma[ch] / (rv[ch] + bn.eps).sqrt())
                .collect();
            let want_ge = reference::affine(&g, &scale, &vec![0.0; shape[1]], false).0;
            let ge = bn.backward(&ce, g.clone(), None);
            assert_close(&format!("{what} eval grad_x"), &ge, &want_ge, REF_TOL);
        }
    }
}
