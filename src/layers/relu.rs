//! ReLU: `y = max(x, 0)`; backward passes the gradient where the output is positive.

use crate::tensor::Tensor;

/// Which outputs were positive: all backward needs (1 byte per element).
#[derive(Debug, Clone)]
pub struct ReluCache {
    pub positive: ndarray::ArrayD<bool>,
}

/// In place: `x` becomes `max(x, 0)`.
pub fn forward(x: Tensor) -> (Tensor, ReluCache) {
    // Not `v.max(0.0)`: that maps NaN to 0 and would hide an overflow upstream.
    let mut x = crate::tensor::into_standard_layout(x);
    let values = x.as_slice_mut().unwrap();
    // Selects, not branches: signs are random, so a branch mispredicts half the time.
    // `v <= 0` is false for NaN, which therefore passes through.
    for v in values.iter_mut() {
        *v = if *v <= 0.0 { 0.0 } else { *v };
    }
    let mask: Vec<bool> = values.iter().map(|&v| v > 0.0).collect();
    let positive = ndarray::ArrayD::from_shape_vec(x.raw_dim(), mask).unwrap();
    (x, ReluCache { positive })
}

/// In place: the gradient survives where the output was positive.
pub fn backward(cache: &ReluCache, grad_y: Tensor) -> Tensor {
    let mut grad_y = crate::tensor::into_standard_layout(grad_y);
    let mask = cache.positive.as_slice().unwrap();
    for (g, &p) in grad_y.as_slice_mut().unwrap().iter_mut().zip(mask) {
        *g = if p { *g } else { 0.0 };
    }
    grad_y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{numerical_gradient, quadratic_loss, rel_error};
    use crate::rng::{gaussian, rng};

    #[test]
    fn relu_backward_matches_finite_differences() {
        let mut r = rng(5);
        let x = gaussian(&[7, 6], 1.0, &mut r);
        let (a, b) = (
            gaussian(&[7, 6], 1.0, &mut r),
            gaussian(&[7, 6], 1.0, &mut r),
        );
        let (y, cache) = forward(x.clone());
        let gx = backward(&cache, quadratic_loss(&y, &a, &b).1);
        let num = numerical_gradient(
            |x| quadratic_loss(&forward(x.clone()).0, &a, &b).0,
            &x,
            1e-6,
        );
        // Gaussian inputs sit far (>> h) from the kink, so 2-point differences are accurate to ~1e-9.
        assert!(rel_error(&gx, &num) < 1e-6, "{}", rel_error(&gx, &num));
    }

    #[test]
    fn relu_propagates_nan() {
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![f64::NAN, -1.0, 2.0]).unwrap();
        let (y, _) = forward(x);
        assert!(y[[0]].is_nan());
        assert_eq!((y[[1]], y[[2]]), (0.0, 2.0));
    }
}
