//! He et al. 2015's option A shortcut for a unit that changes shape: a parameter-free identity
//! that keeps every `stride`-th pixel and fills the channels it lacks with zeros,
//!
//! ```text
//! y[n, c, i, j] = x[n, c, s i, s j]   for c < C_in
//! y[n, c, i, j] = 0                   for C_in <= c < C_out
//! ```
//!
//! `x: (N, C_in, H, W) -> y: (N, C_out, H_out, W_out)` with `H_out = (H - 1) / s + 1` (the size a
//! 1x1 convolution with stride `s` gives). The map is linear and its own Jacobian; backward is
//! its transpose: the gradient of the kept channels goes back to the sampled pixels, every
//! other input pixel gets 0.

use ndarray::{s, Ix4, IxDyn};

use crate::float::Float;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PadShortcut {
    pub stride: usize,
    /// Output channels (at least the input's).
    pub c_out: usize,
}

impl PadShortcut {
    /// Output shape for an input `(N, C_in, H, W)`.
    pub fn out_shape(&self, in_shape: &[usize]) -> [usize; 4] {
        let out = |size: usize| (size - 1) / self.stride + 1;
        [in_shape[0], self.c_out, out(in_shape[2]), out(in_shape[3])]
    }

    pub fn forward<T: Float>(&self, x: &Tensor<T>) -> Tensor<T> {
        let x = x
            .view()
            .into_dimensionality::<Ix4>()
            .expect("the padded shortcut's input must be (N, C, H, W)");
        let c_in = x.shape()[1];
        assert!(
            c_in <= self.c_out,
            "padded shortcut: {c_in} input channels do not fit in {}",
            self.c_out
        );
        let out = self.out_shape(x.shape());
        let st = self.stride as isize;
        let mut y = Tensor::<T>::zeros(IxDyn(&out));
        y.slice_mut(s![.., ..c_in, .., ..])
            .assign(&x.slice(s![.., .., ..;st, ..;st]));
        y
    }

    /// `dE/dx` for an input of shape `in_shape` from `dE/dy`.
    pub fn backward<T: Float>(&self, in_shape: &[usize], grad_y: &Tensor<T>) -> Tensor<T> {
        let gy = grad_y
            .view()
            .into_dimensionality::<Ix4>()
            .expect("the padded shortcut's gradient must be (N, C, H, W)");
        let c_in = in_shape[1];
        let st = self.stride as isize;
        let mut gx = Tensor::<T>::zeros(IxDyn(in_shape));
        gx.slice_mut(s![.., .., ..;st, ..;st])
            .assign(&gy.slice(s![.., ..c_in, .., ..]));
        crate::fault::perturb(crate::fault::Fault::PadShortcutGrad, &mut gx);
        gx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{numerical_gradient, quadratic_loss, rel_error};
    use crate::rng::{gaussian, rng};

    #[test]
    fn keeps_strided_pixels_of_the_old_channels_and_zeros_the_new() {
        let x = Tensor::from_shape_fn(IxDyn(&[1, 2, 3, 3]), |i| {
            (100 * i[1] + 10 * i[2] + i[3]) as f64
        });
        let y = PadShortcut {
            stride: 2,
            c_out: 4,
        }
        .forward(&x);
        assert_eq!(y.shape(), &[1, 4, 2, 2]);
        assert_eq!(y[[0, 1, 1, 0]], 120.0);
        assert_eq!(y[[0, 0, 1, 1]], 22.0);
        assert!(y.slice(s![.., 2.., .., ..]).iter().all(|&v| v == 0.0));
    }

    /// Linear, so 2-point central differences are exact up to rounding: bound 1e-8 relative.
    #[test]
    fn backward_matches_finite_differences() {
        for (in_shape, stride, c_out) in [
            ([2, 3, 5, 4], 2, 5),
            ([2, 2, 4, 4], 1, 6),
            ([1, 2, 3, 3], 3, 2),
        ] {
            let layer = PadShortcut { stride, c_out };
            let mut r = rng(11);
            let x = gaussian(&in_shape, 1.0, &mut r);
            let out = layer.out_shape(&in_shape);
            let (a, b) = (gaussian(&out, 1.0, &mut r), gaussian(&out, 1.0, &mut r));
            let gy = quadratic_loss(&layer.forward(&x), &a, &b).1;
            let gx = layer.backward(&in_shape, &gy);
            let num = numerical_gradient(|x| quadratic_loss(&layer.forward(x), &a, &b).0, &x, 1e-5);
            let e = rel_error(&gx, &num);
            assert!(e < 1e-8, "{in_shape:?} stride {stride}: {e:e}");
        }
    }
}
