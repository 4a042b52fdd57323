//! Dropout with a seeded Bernoulli mask: `y = m * x`, `m = 1` with probability `1 - p`.
//!
//! The paper's dropout shortcut is *not* rescaled, so it imposes a factor `1 - p` in
//! expectation; `rescale` divides the kept entries by `1 - p` instead (the usual "inverted"
//! dropout). Backward: `grad_x = m * grad_y`.

use ndarray::IxDyn;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::float::Float;
use crate::tensor::Tensor;

/// A mask of the given shape: `keep` (1 or `1/(1-p)`) with probability `1 - p`, else 0.
/// The draws are f64 whatever `T`, so an f32 mask equals its f64 twin's.
pub fn mask<T: Float>(shape: &[usize], p: f64, rescale: bool, rng: &mut ChaCha8Rng) -> Tensor<T> {
    let keep = T::of_f64(if rescale { 1.0 / (1.0 - p) } else { 1.0 });
    Tensor::<T>::from_shape_simple_fn(IxDyn(shape), || {
        if rng.random::<f64>() < p {
            T::zero()
        } else {
            keep
        }
    })
}

pub fn forward<T: Float>(x: &Tensor<T>, mask: &Tensor<T>) -> Tensor<T> {
    x * mask
}

pub fn backward<T: Float>(mask: &Tensor<T>, grad_y: &Tensor<T>) -> Tensor<T> {
    grad_y * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
    use crate::rng::{gaussian, rng};

    #[test]
    fn dropout_backward_matches_finite_differences() {
        let mut r = rng(9);
        let m = mask(&[6, 5], 0.5, false, &mut r);
        let x = gaussian(&[6, 5], 1.0, &mut r);
        let (a, b) = (
            gaussian(&[6, 5], 1.0, &mut r),
            gaussian(&[6, 5], 1.0, &mut r),
        );
        let gx = backward(&m, &quadratic_loss(&forward(&x, &m), &a, &b).1);
        let num = numerical_gradient(|x| quadratic_loss(&forward(x, &m), &a, &b).0, &x, 1e-6);
        assert_close("input gradient", &gx, &num, 1e-6);
    }

    #[test]
    fn mask_keeps_about_one_minus_p_and_rescales() {
        let m: Tensor = mask(&[10_000], 0.3, false, &mut rng(1));
        let kept = m.iter().filter(|&&v| v == 1.0).count() as f64 / 10_000.0;
        assert!((kept - 0.7).abs() < 0.02, "{kept}");
        assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
        let r: Tensor = mask(&[100], 0.5, true, &mut rng(1));
        assert!(r.iter().all(|&v| v == 0.0 || v == 2.0));
    }
}
