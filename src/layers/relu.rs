//! ReLU: `y = max(x, 0)`; backward passes the gradient where the output is positive.

use crate::tensor::Tensor;

/// The output is all backward needs.
#[derive(Debug, Clone)]
pub struct ReluCache {
    pub y: Tensor,
}

pub fn forward(x: &Tensor) -> (Tensor, ReluCache) {
    // Not `v.max(0.0)`: that maps NaN to 0 and would hide an overflow upstream.
    let y = x.mapv(|v| if v > 0.0 || v.is_nan() { v } else { 0.0 });
    (y.clone(), ReluCache { y })
}

pub fn backward(cache: &ReluCache, grad_y: &Tensor) -> Tensor {
    let mut g = grad_y.clone();
    g.zip_mut_with(&cache.y, |g, &y| {
        if y <= 0.0 {
            *g = 0.0
        }
    });
    g
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
        let (y, cache) = forward(&x);
        let gx = backward(&cache, &quadratic_loss(&y, &a, &b).1);
        let num = numerical_gradient(|x| quadratic_loss(&forward(x).0, &a, &b).0, &x, 1e-6);
        // Gaussian inputs sit far (>> h) from the kink, so 2-point differences are accurate to ~1e-9.
        assert!(rel_error(&gx, &num) < 1e-6, "{}", rel_error(&gx, &num));
    }

    #[test]
    fn relu_propagates_nan() {
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![f64::NAN, -1.0, 2.0]).unwrap();
        let (y, _) = forward(&x);
        assert!(y[[0]].is_nan());
        assert_eq!((y[[1]], y[[2]]), (0.0, 2.0));
    }
}
