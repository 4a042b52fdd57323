//! Softmax cross-entropy averaged over the batch: `E = -1/N sum_n log softmax(z_n)[t_n]`.
//! Backward: `grad_z = (softmax(z) - onehot(t)) / N`.

use ndarray::{Array2, Axis, Ix2};

use crate::float::Float;
use crate::tensor::Tensor;

/// The loss and the softmax probabilities `(N, K)` that backward needs.
pub fn forward<T: Float>(logits: &Tensor<T>, labels: &[usize]) -> (T, Array2<T>) {
    let z = logits
        .view()
        .into_dimensionality::<Ix2>()
        .expect("logits must be (N, K)");
    assert_eq!(z.nrows(), labels.len(), "one label per sample");
    let mut probs = Array2::zeros(z.raw_dim());
    let mut total = T::zero();
    for ((row, mut p), &t) in z
        .axis_iter(Axis(0))
        .zip(probs.axis_iter_mut(Axis(0)))
        .zip(labels)
    {
        // Subtracting the max keeps exp() finite; log-sum-exp gives the loss without log(0).
        let max = row.iter().cloned().fold(T::neg_infinity(), T::max);
        let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
        for (pi, &v) in p.iter_mut().zip(row.iter()) {
            *pi = (v - max).exp() / sum;
        }
        total += sum.ln() + max - row[t];
    }
    (total / T::of_f64(labels.len() as f64), probs)
}

pub fn backward<T: Float>(probs: &Array2<T>, labels: &[usize]) -> Tensor<T> {
    let n = T::of_f64(labels.len() as f64);
    let mut g = probs.clone();
    for (mut row, &t) in g.axis_iter_mut(Axis(0)).zip(labels) {
        row[t] -= T::one();
    }
    let mut g = g.mapv(|v| v / n);
    crate::fault::perturb(crate::fault::Fault::LossGrad, &mut g);
    g.into_dyn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::{assert_close, numerical_gradient};
    use crate::rng::{gaussian, rng};

    #[test]
    fn loss_backward_matches_finite_differences() {
        let z = gaussian(&[6, 4], 2.0, &mut rng(12));
        let labels = [0, 3, 1, 1, 2, 3];
        let (_, probs) = forward(&z, &labels);
        let g = backward(&probs, &labels);
        let num = numerical_gradient(|z| forward(z, &labels).0, &z, 1e-6);
        assert_close("input gradient", &g, &num, 1e-6);
    }

    #[test]
    fn uniform_logits_give_log_k() {
        let z: Tensor = Tensor::zeros(ndarray::IxDyn(&[3, 10]));
        let (e, _) = forward(&z, &[1, 2, 3]);
        assert!((e - 10f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let z: Tensor =
            Tensor::from_shape_vec(ndarray::IxDyn(&[1, 2]), vec![1000.0, -1000.0]).unwrap();
        let (e, _) = forward(&z, &[1]);
        assert!((e - 2000.0).abs() < 1e-9);
    }
}
