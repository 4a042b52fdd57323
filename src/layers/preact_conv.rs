//! The pre-activation convolution `conv(relu(BN(x)))` as one op: every convolution of a
//! pre-activation unit (and the middle one of the original unit) follows a BN-ReLU.
//!
//! Run as three layers, the pair writes the activated tensor, a ReLU mask and keeps both for
//! backward, besides the BN input. Fused, the activation `relu(a x + b)` (`a, b` the BN's
//! per-channel affine map) is made one sample at a time in a scratch buffer the convolution
//! reads at once; backward recomputes the mask from `x` while the convolution's input
//! gradient of that sample is still in cache, and reduces the BN sums there too. The values
//! are bit for bit those of the three layers (tested): the same arithmetic, in the same order.
//!
//! ```text
//! forward:  stats(x) -> a, b;   per sample: act = relu(a x_n + b),  y_n = conv(act)
//! backward: per sample: g_n = mask(x_n) * conv_input_grad(grad_y_n),  partial BN sums
//!           then BN's input gradient from the sums (in place), weight gradients recompute act
//! ```

use std::sync::Arc;

use super::batch_norm::{BatchNorm, BatchNormCache};
use super::conv::Conv2d;
use super::relu::select;
use super::Mode;
use crate::float::Float;
use crate::grads::Grads;
use crate::kernels::norm::Moments;
use crate::kernels::{Epilogue, Prologue};
use crate::tensor::{grad_sums, Tensor};

/// `conv(relu(BN(x)))`; the cache is the BatchNorm's (it keeps `x`, shared, and the stats).
pub fn forward<T: Float>(
    bn: &BatchNorm<T>,
    conv: &Conv2d<T>,
    x: Arc<Tensor<T>>,
    mode: Mode,
) -> (Tensor<T>, BatchNormCache<T>) {
    let (y, cache, _) = forward_with(bn, conv, x, mode, &Extras::default());
    (y, cache)
}

/// What a fused pass can do besides its own job, each while a sample is in cache.
#[derive(Default)]
pub(crate) struct Extras<'a, T: Float = f64> {
    /// The input's plane moments, computed by the op that wrote it (skips BN's own pass).
    pub moments_in: Option<&'a Moments<T>>,
    /// What the convolution does to each output sample after its product.
    pub epilogue: Epilogue<'a, T>,
}

/// [`forward`] with [`Extras`]; returns the output's plane moments when the epilogue asks.
pub(crate) fn forward_with<T: Float>(
    bn: &BatchNorm<T>,
    conv: &Conv2d<T>,
    x: Arc<Tensor<T>>,
    mode: Mode,
    extras: &Extras<T>,
) -> (Tensor<T>, BatchNormCache<T>, Option<Moments<T>>) {
    let (cache, affine) = bn.normalise(x, mode, extras.moments_in);
    let shape = cache.x.shape();
    let input = Prologue::Preact {
        x: cache.x.as_slice().unwrap(),
        affine: &affine,
        plane: shape[2] * shape[3],
    };
    let (y, moments) = conv.forward_from(input, shape, extras.epilogue);
    (y, cache, moments)
}

/// `dE/dx` from `dE/dy`, plus `add` if given (added in the last pass, no pass of its own);
/// parameter gradients of the conv, then of the BN, into `grads`.
pub fn backward<T: Float>(
    bn: &BatchNorm<T>,
    conv: &Conv2d<T>,
    cache: &BatchNormCache<T>,
    grad_y: &Tensor<T>,
    mut grads: Option<&mut Grads<T>>,
    add: Option<&Tensor<T>>,
) -> Tensor<T> {
    let affine = bn.affine(&cache.mean, &cache.inv_std);
    let shape = cache.x.shape();
    let (c, plane) = (shape[1], shape[2] * shape[3]);
    let xs = cache.x.as_slice().unwrap();
    if let Some(g) = grads.as_deref_mut() {
        let input = Prologue::Preact {
            x: xs,
            affine: &affine,
            plane,
        };
        conv.weight_grads(input, shape, grad_y, g);
    }
    // Per sample, while its input gradient is in cache: zero it where the ReLU was off, and
    // sum (g, g (x - mean)) over each channel plane with the lanes BatchNorm's own reduction
    // uses.
    let (grad, partials) = conv.input_grad_then(grad_y, shape, |n, g_n| {
        let x_n = &xs[n * c * plane..(n + 1) * c * plane];
        g_n.chunks_exact_mut(plane)
            .zip(x_n.chunks_exact(plane))
            .enumerate()
            .map(|(ch, (g, x))| {
                let (a, b, m) = (affine.a[ch], affine.b[ch], cache.mean[ch]);
                for (g, &v) in g.iter_mut().zip(x) {
                    *g = select(a * v + b > T::zero(), *g);
                }
                grad_sums(g, x, None, m)
            })
            .collect::<Vec<_>>()
    });
    // Channel sums over samples in sample order, as BatchNorm adds its planes.
    let (grad_beta, sum_gx): (Vec<T>, Vec<T>) = (0..c)
        .map(|ch| {
            partials.iter().fold((T::zero(), T::zero()), |(sb, sg), p| {
                (sb + p[ch].0, sg + p[ch].1)
            })
        })
        .unzip();
    let add = add.map(|r| r.as_slice().expect("standard layout"));
    bn.finish_backward(cache, None, grad, (grad_beta, sum_gx), grads, add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
    use crate::layers::relu;
    use crate::rng::{gaussian, rng};

    fn layers(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        seed: u64,
    ) -> (BatchNorm, Conv2d) {
        let mut r = rng(seed);
        let mut bn = BatchNorm::new("bn", c_in);
        bn.gamma = gaussian(&[c_in], 0.5, &mut r) + 1.0;
        bn.beta = gaussian(&[c_in], 0.5, &mut r);
        bn.running_mean = gaussian(&[c_in], 0.5, &mut r);
        bn.running_var = gaussian(&[c_in], 0.3, &mut r).mapv(|v| 1.0 + v.abs());
        let conv = Conv2d::he_fan_out("conv", c_in, c_out, k, stride, k / 2, None, &mut r);
        (bn, conv)
    }

    /// The fused op gives the three layers' values exactly: output, input gradient and every
    /// parameter gradient, for 3x3, strided and 1x1 convolutions in both BN modes.
    #[test]
    fn fused_matches_three_layers_bit_for_bit() {
        for (k, stride, mode) in [
            (3, 1, Mode::Train),
            (3, 2, Mode::Train),
            (1, 1, Mode::Train),
            (3, 1, Mode::Eval),
        ] {
            let (bn, conv) = layers(3, 4, k, stride, 5);
            let mut r = rng(6);
            let x = gaussian(&[2, 3, 6, 5], 1.0, &mut r);
            let (y, cache) = forward(&bn, &conv, Arc::new(x.clone()), mode);
            let (z, c_bn) = bn.forward(x.clone(), mode);
            let (a, c_relu) = relu::forward(z);
            let (y_ref, c_conv) = conv.forward(a);
            assert_eq!(y, y_ref, "forward k{k} s{stride} {mode}");
            let gy = gaussian(y.shape(), 1.0, &mut r);
            let (mut g1, mut g2) = (Grads::new(), Grads::new());
            let gx = backward(&bn, &conv, &cache, &gy, Some(&mut g1), None);
            let ga = conv.backward(&c_conv, &gy, Some(&mut g2));
            let gz = relu::backward(&c_relu, ga);
            let gx_ref = bn.backward(&c_bn, gz, Some(&mut g2));
            assert_eq!(gx, gx_ref, "grad_x k{k} s{stride} {mode}");
            for name in ["conv.w", "bn.gamma", "bn.beta"] {
                assert_eq!(g1.get(name), g2.get(name), "{name} k{k} s{stride} {mode}");
            }
        }
    }

    /// Central differences of the fused op itself (Gaussian inputs sit far from the ReLU kink
    /// relative to h = 1e-6).
    #[test]
    fn fused_backward_matches_finite_differences() {
        let (bn, conv) = layers(2, 3, 3, 1, 9);
        let mut r = rng(10);
        let x = gaussian(&[2, 2, 4, 4], 1.0, &mut r);
        let y_shape = conv.out_shape(x.shape());
        let (a, b) = (
            gaussian(&y_shape, 1.0, &mut r),
            gaussian(&y_shape, 1.0, &mut r),
        );
        let f = |x: &Tensor| forward(&bn, &conv, Arc::new(x.clone()), Mode::Train).0;
        let (y, cache) = forward(&bn, &conv, Arc::new(x.clone()), Mode::Train);
        let gx = backward(
            &bn,
            &conv,
            &cache,
            &quadratic_loss(&y, &a, &b).1,
            None,
            None,
        );
        let num = numerical_gradient(|x| quadratic_loss(&f(x), &a, &b).0, &x, 1e-6);
        // Relative error bound for 2-point central differences in f64.
        assert_close("input gradient", &gx, &num, 1e-6);
    }
}
