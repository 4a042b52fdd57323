//! Central finite differences, the ground truth every hand-written backward is tested against.
//!
//! Two stencils: the classic 2-point `(f(h) - f(-h)) / 2h` for element-wise gradients of small
//! layers, and the 4th-order 5-point stencil `(-f(2h) + 8f(h) - 8f(-h) + f(-2h)) / 12h` for
//! directional derivatives of a whole network, whose truncation error `O(h^4)` lets a step
//! small enough to avoid ReLU kinks still sit far above rounding noise.

use crate::tensor::{norm, Tensor};

/// Relative error `||a - b|| / max(||a||, ||b||)` (0 when both are 0).
pub fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    let diff = norm(&(a - b));
    let scale = norm(a).max(norm(b));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Relative error of two scalars.
pub fn rel_error_scalar(a: f64, b: f64) -> f64 {
    let scale = a.abs().max(b.abs());
    if scale == 0.0 {
        0.0
    } else {
        (a - b).abs() / scale
    }
}

/// `d/dt f(t)` at 0 with the 5-point central stencil.
pub fn directional_derivative(f: impl Fn(f64) -> f64, h: f64) -> f64 {
    (-f(2.0 * h) + 8.0 * f(h) - 8.0 * f(-h) + f(-2.0 * h)) / (12.0 * h)
}

/// Element-wise gradient of `f` at `x` with the 2-point central stencil.
pub fn numerical_gradient(f: impl Fn(&Tensor) -> f64, x: &Tensor, h: f64) -> Tensor {
    let mut grad = Tensor::zeros(x.raw_dim());
    let mut probe = x.clone();
    for (i, g) in grad.iter_mut().enumerate() {
        let orig = x.as_slice().expect("standard layout")[i];
        probe.as_slice_mut().unwrap()[i] = orig + h;
        let plus = f(&probe);
        probe.as_slice_mut().unwrap()[i] = orig - h;
        let minus = f(&probe);
        probe.as_slice_mut().unwrap()[i] = orig;
        *g = (plus - minus) / (2.0 * h);
    }
    grad
}

/// A fixed non-linear test loss `E(y) = sum(a*y + 0.5*b*y^2)` with its gradient `a + b*y`.
/// A linear loss would let a wrong BatchNorm backward pass (its gradient of `sum(y)` is 0).
pub fn quadratic_loss(y: &Tensor, a: &Tensor, b: &Tensor) -> (f64, Tensor) {
    let e = y
        .iter()
        .zip(a.iter())
        .zip(b.iter())
        .fold(0.0, |acc, ((&y, &a), &b)| acc + a * y + 0.5 * b * y * y);
    let g = a + &(b * y);
    (e, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_point_stencil_is_fourth_order() {
        // d/dt exp(3t) at 0 = 3.
        let d = directional_derivative(|t| (3.0 * t).exp(), 1e-3);
        assert!((d - 3.0).abs() < 1e-10, "{d}");
    }

    #[test]
    fn rel_error_detects_difference() {
        let a = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.0);
        let b = Tensor::from_elem(ndarray::IxDyn(&[3]), 1.1);
        assert!(rel_error(&a, &b) > 0.05);
        assert_eq!(rel_error(&a, &a), 0.0);
    }
}
