//! A learned scalar added to every element, `y = x + b`: Fixup's biases before each weight
//! layer and activation. Backward: `dE/dx = g`, `dE/db = sum g`.

use ndarray::IxDyn;

use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct ScalarBias<T: Float = f64> {
    pub name: String,
    /// `(1)`
    pub b: Tensor<T>,
}

impl ScalarBias {
    /// Fixup starts every bias at 0.
    pub fn new(name: &str) -> Self {
        ScalarBias {
            name: name.to_string(),
            b: Tensor::zeros(IxDyn(&[1])),
        }
    }
}

impl<T: Float> ScalarBias<T> {
    /// The layer in another element type, its parameter rounded to nearest.
    pub fn cast<U: Float>(&self) -> ScalarBias<U> {
        ScalarBias {
            name: self.name.clone(),
            b: crate::tensor::cast_ref(&self.b),
        }
    }

    pub fn forward(&self, mut x: Tensor<T>) -> Tensor<T> {
        let b = self.b[[0]];
        x.mapv_inplace(|v| v + b);
        x
    }

    pub fn backward(&self, grad_y: Tensor<T>, grads: Option<&mut Grads<T>>) -> Tensor<T> {
        if let Some(grads) = grads {
            let sum = fault::factor(Fault::ScalarBiasGrad, grad_y.sum());
            grads.accumulate(
                &format!("{}.b", self.name),
                Tensor::<T>::from_elem(IxDyn(&[1]), sum),
            );
        }
        grad_y
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.b", self.name), &self.b);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(format!("{}.b", self.name), &mut self.b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::check_layer;
    use crate::rng::{gaussian, rng};

    #[test]
    fn backward_matches_finite_differences() {
        let mut layer = ScalarBias::new("s");
        layer.b[[0]] = 0.4;
        let x = gaussian(&[3, 2, 2, 2], 1.0, &mut rng(2));
        let checked = check_layer(
            "scalar bias",
            &layer,
            &x,
            1e-6,
            1e-6,
            3,
            |l, x| l.forward(x.clone()),
            |l, _, gy, g| l.backward(gy.clone(), Some(g)),
            |l, f| l.visit_params_mut(f),
        );
        assert_eq!(checked, ["s.b"]);
    }
}
