//! ReLU: `y = max(x, 0)`; backward passes the gradient where the output is positive.

use rayon::prelude::*;

use crate::float::Float;
use crate::tensor::Tensor;

/// Elements per parallel task (fixed: element-wise, so any split gives the same bits).
const CHUNK: usize = 1 << 14;

/// Which outputs were positive: all backward needs (1 byte per element).
#[derive(Debug, Clone)]
pub struct ReluCache {
    pub positive: ndarray::ArrayD<bool>,
}

pub use crate::tensor::{relu, select};

/// In place: `x` becomes `max(x, 0)`.
pub fn forward<T: Float>(x: Tensor<T>) -> (Tensor<T>, ReluCache) {
    let mut x = crate::tensor::into_standard_layout(x);
    let values = x.as_slice_mut().unwrap();
    let mut mask = vec![false; values.len()];
    values
        .par_chunks_mut(CHUNK)
        .zip(mask.par_chunks_mut(CHUNK))
        .for_each(|(v, m)| {
            for (v, m) in v.iter_mut().zip(m) {
                *m = *v > T::zero();
                *v = relu(*v);
            }
        });
    let positive = ndarray::ArrayD::from_shape_vec(x.raw_dim(), mask).unwrap();
    (x, ReluCache { positive })
}

/// In place: the gradient survives where the output was positive.
pub fn backward<T: Float>(cache: &ReluCache, grad_y: Tensor<T>) -> Tensor<T> {
    let mut grad_y = crate::tensor::into_standard_layout(grad_y);
    let mask = cache.positive.as_slice().unwrap();
    grad_y
        .as_slice_mut()
        .unwrap()
        .par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .for_each(|(g, m)| {
            for (g, &p) in g.iter_mut().zip(m) {
                *g = crate::fault::factor(crate::fault::Fault::ReluGrad, select(p, *g));
            }
        });
    grad_y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
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
        assert_close("input gradient", &gx, &num, 1e-6);
    }

    #[test]
    fn relu_propagates_nan() {
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![f64::NAN, -1.0, 2.0]).unwrap();
        let (y, _) = forward(x);
        assert!(y[[0]].is_nan());
        assert_eq!((y[[1]], y[[2]]), (0.0, 2.0));
    }
}
