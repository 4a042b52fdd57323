//! Global average pooling `(N, C, H, W) -> (N, C)`; backward spreads `grad / (H W)` over
//! each plane.

use ndarray::{Axis, Ix4, IxDyn};

use crate::float::Float;
use crate::tensor::Tensor;

pub fn forward<T: Float>(x: &Tensor<T>) -> Tensor<T> {
    let x4 = x
        .view()
        .into_dimensionality::<Ix4>()
        .expect("pool input must be (N, C, H, W)");
    let (n, c, h, w) = x4.dim();
    let flat = x4.as_standard_layout();
    let flat = flat.into_shape_with_order((n, c, h * w)).unwrap();
    flat.map_axis(Axis(2), |v| v.sum() / T::of_f64((h * w) as f64))
        .into_dyn()
}

/// `in_shape` is the input's `(N, C, H, W)`.
pub fn backward<T: Float>(in_shape: &[usize], grad_y: &Tensor<T>) -> Tensor<T> {
    let (n, c, h, w) = (in_shape[0], in_shape[1], in_shape[2], in_shape[3]);
    let scale = T::of_f64(1.0 / (h * w) as f64);
    let g = grad_y.view().into_dimensionality::<ndarray::Ix2>().unwrap();
    let mut gx = vec![T::zero(); n * c * h * w];
    let scale = crate::fault::factor(crate::fault::Fault::PoolGrad, scale);
    for (i, plane) in gx.chunks_exact_mut(h * w).enumerate() {
        plane.fill(g[[i / c, i % c]] * scale);
    }
    Tensor::<T>::from_shape_vec(IxDyn(in_shape), gx).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
    use crate::rng::{gaussian, rng};

    /// Relative error bound for 2-point central differences, h = 1e-6, f64 (pooling is
    /// linear, so the differences are exact up to rounding).
    const TOL: f64 = 1e-6;

    #[test]
    fn pool_backward_matches_finite_differences() {
        let mut r = rng(4);
        let x = gaussian(&[2, 3, 4, 5], 1.0, &mut r);
        let (a, b) = (
            gaussian(&[2, 3], 1.0, &mut r),
            gaussian(&[2, 3], 1.0, &mut r),
        );
        let y = forward(&x);
        let gx = backward(x.shape(), &quadratic_loss(&y, &a, &b).1);
        let num = numerical_gradient(|x| quadratic_loss(&forward(x), &a, &b).0, &x, 1e-6);
        assert_close("input gradient", &gx, &num, TOL);
    }
}
