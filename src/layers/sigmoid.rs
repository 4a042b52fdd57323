//! Logistic sigmoid `g = 1 / (1 + exp(-z))`, the gate non-linearity; `dg/dz = g (1 - g)`.

use crate::float::Float;
use crate::tensor::Tensor;

/// Numerically stable for large |z| (no overflow of exp).
pub fn sigmoid<T: Float>(z: T) -> T {
    if z >= T::zero() {
        T::one() / (T::one() + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::one() + e)
    }
}

pub fn forward<T: Float>(z: &Tensor<T>) -> Tensor<T> {
    z.mapv(sigmoid)
}

/// [`forward`] in the input's own buffer.
pub fn forward_in_place<T: Float>(mut z: Tensor<T>) -> Tensor<T> {
    z.mapv_inplace(sigmoid);
    z
}

/// `grad_z = grad_g * g (1 - g)`, from the cached output `g`.
pub fn backward<T: Float>(g: &Tensor<T>, grad_g: &Tensor<T>) -> Tensor<T> {
    backward_in_place(g, grad_g.clone())
}

/// [`backward`] in the buffer of a gradient the caller gives away.
pub fn backward_in_place<T: Float>(g: &Tensor<T>, mut grad_g: Tensor<T>) -> Tensor<T> {
    grad_g.zip_mut_with(g, |d, &g| *d *= g * (T::one() - g));
    crate::fault::perturb(crate::fault::Fault::SigmoidGrad, &mut grad_g);
    grad_g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient, quadratic_loss};
    use crate::rng::{gaussian, rng};

    #[test]
    fn sigmoid_backward_matches_finite_differences() {
        let mut r = rng(8);
        let z = gaussian(&[5, 4], 3.0, &mut r);
        let (a, b) = (
            gaussian(&[5, 4], 1.0, &mut r),
            gaussian(&[5, 4], 1.0, &mut r),
        );
        let g = forward(&z);
        let gz = backward(&g, &quadratic_loss(&g, &a, &b).1);
        let num = numerical_gradient(|z| quadratic_loss(&forward(z), &a, &b).0, &z, 1e-6);
        assert_close("input gradient", &gz, &num, 1e-6);
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(-6.0f64) - 0.0024726231566347743).abs() < 1e-15);
    }
}
