//! Dense layer: `y = x W + b`, `x: (N, D_in)`, `W: (D_in, D_out)`, `b: (D_out)` optional.
//!
//! Backward: `grad_x = grad_y W^T`, `grad_W = x^T grad_y`, `grad_b = sum_n grad_y`.

use ndarray::{Axis, Ix1, Ix2, IxDyn};
use rand_chacha::ChaCha8Rng;

use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::rng::gaussian;
use crate::tensor::{matmul, Tensor};

/// The message of a weight gradient asked of a pass that did not keep the input.
pub(crate) const NO_INPUT: &str =
    "weight gradients need the layer input, which this forward pass did not keep (ForwardCtx::weight_grads)";

#[derive(Debug, Clone)]
pub struct Dense<T: Float = f64> {
    pub name: String,
    /// (D_in, D_out)
    pub w: Tensor<T>,
    /// (D_out), when the layer has a bias.
    pub b: Option<Tensor<T>>,
}

/// What backward needs: the input, for the weight gradient only.
#[derive(Debug, Clone)]
pub struct DenseCache<T: Float = f64> {
    /// (N, D_in); `None` when the forward pass was told no weight gradients would be asked
    /// for (a gradient profile), so the input's memory is reused at once.
    pub x: Option<Tensor<T>>,
}

impl Dense {
    /// He initialisation on fan-out, `W ~ N(0, 2 / D_out)`, as in the paper's code.
    pub fn he_fan_out(
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: Option<f64>,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let std = (2.0 / d_out as f64).sqrt();
        Self::with_std(name, d_in, d_out, std, bias, rng)
    }

    /// `W ~ N(0, std^2)`, bias filled with the given value when present.
    pub fn with_std(
        name: &str,
        d_in: usize,
        d_out: usize,
        std: f64,
        bias: Option<f64>,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        Dense {
            name: name.to_string(),
            w: gaussian(&[d_in, d_out], std, rng),
            b: bias.map(|v| Tensor::from_elem(IxDyn(&[d_out]), v)),
        }
    }
}

impl<T: Float> Dense<T> {
    /// The layer in another element type, its parameters rounded to nearest.
    pub fn cast<U: Float>(&self) -> Dense<U> {
        Dense {
            name: self.name.clone(),
            w: crate::tensor::cast_ref(&self.w),
            b: self.b.as_ref().map(crate::tensor::cast_ref),
        }
    }

    pub fn d_in(&self) -> usize {
        self.w.shape()[0]
    }

    pub fn d_out(&self) -> usize {
        self.w.shape()[1]
    }

    /// Takes the input by value: it moves into the cache, no copy.
    pub fn forward(&self, x: Tensor<T>) -> (Tensor<T>, DenseCache<T>) {
        (self.apply(&x), DenseCache { x: Some(x) })
    }

    /// The forward map alone (no cache).
    pub fn apply(&self, x: &Tensor<T>) -> Tensor<T> {
        let x2 = x
            .view()
            .into_dimensionality::<Ix2>()
            .expect("dense input must be (N, D)");
        let w = self.w.view().into_dimensionality::<Ix2>().unwrap();
        let mut y = matmul(&x2, &w);
        if let Some(b) = &self.b {
            let b = b.view().into_dimensionality::<Ix1>().unwrap();
            y += &b;
        }
        y.into_dyn()
    }

    pub fn backward(
        &self,
        cache: &DenseCache<T>,
        grad_y: &Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        let gy = grad_y
            .view()
            .into_dimensionality::<Ix2>()
            .expect("dense grad must be (N, D)");
        let w = self.w.view().into_dimensionality::<Ix2>().unwrap();
        if let Some(grads) = grads {
            let x = cache
                .x
                .as_ref()
                .unwrap_or_else(|| panic!("{}: {NO_INPUT}", self.name));
            let x = x.view().into_dimensionality::<Ix2>().unwrap();
            let mut gw = matmul(&x.t(), &gy);
            fault::perturb(Fault::DenseWeightGrad, &mut gw);
            grads.accumulate(&format!("{}.w", self.name), gw.into_dyn());
            if self.b.is_some() {
                let mut gb = gy.sum_axis(Axis(0));
                fault::perturb(Fault::DenseBiasGrad, &mut gb);
                grads.accumulate(&format!("{}.b", self.name), gb.into_dyn());
            }
        }
        let mut gx = matmul(&gy, &w.t());
        fault::perturb(Fault::DenseInputGrad, &mut gx);
        gx.into_dyn()
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.w", self.name), &self.w);
        if let Some(b) = &self.b {
            f(format!("{}.b", self.name), b);
        }
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(format!("{}.w", self.name), &mut self.w);
        if let Some(b) = &mut self.b {
            f(format!("{}.b", self.name), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::check_layer;
    use crate::rng::{gaussian, rng};

    /// Relative error bound for 2-point central differences with h = 1e-6 in f64.
    const TOL: f64 = 1e-6;

    #[test]
    fn dense_backward_matches_finite_differences() {
        let mut r = rng(11);
        let mut layer = Dense::with_std("d", 5, 4, 0.7, Some(0.0), &mut r);
        layer.b = Some(gaussian(&[4], 0.5, &mut r));
        let x = gaussian(&[6, 5], 1.0, &mut r);
        let checked = check_layer(
            "dense",
            &layer,
            &x,
            1e-6,
            TOL,
            12,
            |l, x| l.apply(x),
            |l, x, gy, g| l.backward(&l.forward(x.clone()).1, gy, Some(g)),
            |l, f| l.visit_params_mut(f),
        );
        assert_eq!(checked, ["d.w", "d.b"]);
    }

    #[test]
    fn skipping_weight_gradients_gives_same_input_gradient() {
        let mut r = rng(3);
        let layer = Dense::he_fan_out("d", 3, 3, None, &mut r);
        let x = gaussian(&[4, 3], 1.0, &mut r);
        let gy = gaussian(&[4, 3], 1.0, &mut r);
        let (_, cache) = layer.forward(x.clone());
        let mut grads = Grads::new();
        assert_eq!(
            layer.backward(&cache, &gy, None),
            layer.backward(&cache, &gy, Some(&mut grads))
        );
        assert_eq!(grads.len(), 1);
    }
}
