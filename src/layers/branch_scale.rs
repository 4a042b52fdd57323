//! A learned scaling of a residual branch's output, the last op of the branch: one scalar
//! per unit (`alpha:A`: SkipInit's and ReZero's `x + a F`, ReZero starting at `a = 0`) or
//! one value per channel (`layerscale:E`: CaiT's `x + diag(lambda) F`).
//!
//! ```text
//! forward:  y = a F                 (a broadcast over the batch, and over H, W for a conv map)
//! backward: dE/dF = a g,            dE/da = sum g F   (over everything, or per channel)
//! ```
//!
//! The cache keeps `F`, for `dE/da`: with `a = 0` the branch contributes nothing at
//! initialisation, but `a`'s gradient does not vanish.

use ndarray::IxDyn;

use crate::fault::{self, Fault};
use crate::float::Float;
use crate::grads::Grads;
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct BranchScale<T: Float = f64> {
    pub name: String,
    /// One value (`(1)`) for a scalar, `C` (`(C)`) for one value per channel; an imported
    /// model's keeps the shape its file gives (`()`, `(C, 1, 1)`), the gradient the same.
    pub a: Tensor<T>,
}

#[derive(Debug, Clone)]
pub struct BranchScaleCache<T: Float = f64> {
    /// The branch output `F` the scale multiplied.
    pub f: Tensor<T>,
}

impl BranchScale {
    /// One scalar, initialised at `init`.
    pub fn scalar(name: &str, init: f64) -> Self {
        BranchScale {
            name: name.to_string(),
            a: Tensor::from_elem(IxDyn(&[1]), init),
        }
    }

    /// One value per channel, each initialised at `init`.
    pub fn per_channel(name: &str, channels: usize, init: f64) -> Self {
        BranchScale {
            name: name.to_string(),
            a: Tensor::from_elem(IxDyn(&[channels]), init),
        }
    }
}

impl<T: Float> BranchScale<T> {
    /// The layer in another element type, its parameters rounded to nearest.
    pub fn cast<U: Float>(&self) -> BranchScale<U> {
        BranchScale {
            name: self.name.clone(),
            a: crate::tensor::cast_ref(&self.a),
        }
    }
    fn is_scalar(&self) -> bool {
        self.a.len() == 1
    }

    /// The factor of flat element `i` of a tensor with `c` channels of `s` values each.
    fn factor(&self, a: &[T], i: usize, c: usize, s: usize) -> T {
        if self.is_scalar() {
            a[0]
        } else {
            a[(i / s) % c]
        }
    }

    pub fn forward(&self, f: Tensor<T>) -> (Tensor<T>, BranchScaleCache<T>) {
        let f = crate::tensor::into_standard_layout(f);
        let (c, s) = (f.shape()[1], f.shape()[2..].iter().product::<usize>());
        assert!(
            self.is_scalar() || self.a.len() == c,
            "{}: {} channels for {} scales",
            self.name,
            c,
            self.a.len()
        );
        let a = self.a.as_slice().unwrap();
        let mut y = f.clone();
        for (i, v) in y.as_slice_mut().unwrap().iter_mut().enumerate() {
            *v *= self.factor(a, i, c, s);
        }
        (y, BranchScaleCache { f })
    }

    pub fn backward(
        &self,
        cache: &BranchScaleCache<T>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        let grad_y = crate::tensor::into_standard_layout(grad_y);
        let (c, s) = (
            grad_y.shape()[1],
            grad_y.shape()[2..].iter().product::<usize>(),
        );
        let a = self.a.as_slice().unwrap();
        if let Some(grads) = grads {
            let mut ga = vec![T::zero(); self.a.len()];
            let f = cache.f.as_slice().unwrap();
            for (i, (&g, &fv)) in grad_y.iter().zip(f).enumerate() {
                let k = if self.is_scalar() { 0 } else { (i / s) % c };
                ga[k] += g * fv;
            }
            fault::perturb_slice(Fault::BranchScaleGrad, &mut ga);
            // In the parameter's own shape: an imported scale keeps its file's ((C, 1, 1)).
            grads.accumulate(
                &format!("{}.a", self.name),
                Tensor::<T>::from_shape_vec(self.a.raw_dim(), ga).unwrap(),
            );
        }
        let mut g = grad_y;
        for (i, v) in g.as_slice_mut().unwrap().iter_mut().enumerate() {
            *v *= fault::factor(Fault::BranchScaleInputGrad, self.factor(a, i, c, s));
        }
        g
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        f(format!("{}.a", self.name), &self.a);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        f(format!("{}.a", self.name), &mut self.a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finite_diff::check_layer;
    use crate::rng::{gaussian, rng};

    /// Relative error bound for 2-point central differences, h = 1e-6, f64 (the map is
    /// bilinear in `a` and `F`, so the differences are exact up to rounding).
    const TOL: f64 = 1e-6;

    #[test]
    fn backward_matches_finite_differences() {
        for (layer, shape) in [
            (BranchScale::scalar("s", 0.3), vec![4, 5]),
            (BranchScale::per_channel("s", 3, -0.7), vec![2, 3, 2, 2]),
            (BranchScale::per_channel("s", 5, 0.2), vec![4, 5]),
            // ReZero's start: a = 0 still has a gradient.
            (BranchScale::scalar("s", 0.0), vec![3, 3, 2, 2]),
            // An imported model's shapes: a 0-d scalar, PyTorch's (C, 1, 1) per channel.
            (
                BranchScale {
                    name: "s".into(),
                    a: Tensor::from_elem(IxDyn(&[]), 0.3),
                },
                vec![2, 3, 2, 2],
            ),
            (
                BranchScale {
                    name: "s".into(),
                    a: Tensor::from_shape_vec(IxDyn(&[3, 1, 1]), vec![0.5, -0.2, 1.1]).unwrap(),
                },
                vec![2, 3, 2, 2],
            ),
        ] {
            let x = gaussian(&shape, 1.0, &mut rng(3));
            let checked = check_layer(
                &format!("{shape:?} {}", layer.a.len()),
                &layer,
                &x,
                1e-6,
                TOL,
                4,
                |l, x| l.forward(x.clone()).0,
                |l, x, gy, g| {
                    let (_, c) = l.forward(x.clone());
                    l.backward(&c, gy.clone(), Some(g))
                },
                |l, f| l.visit_params_mut(f),
            );
            assert_eq!(checked, ["s.a"]);
        }
    }

    #[test]
    fn zero_scale_gives_zero_output_and_input_gradient() {
        let layer = BranchScale::scalar("s", 0.0);
        let x = gaussian(&[3, 4], 1.0, &mut rng(1));
        let (y, c) = layer.forward(x);
        assert!(y.iter().all(|&v| v == 0.0));
        let mut grads = Grads::new();
        let g = layer.backward(&c, Tensor::ones(IxDyn(&[3, 4])), Some(&mut grads));
        assert!(g.iter().all(|&v| v == 0.0));
        assert!(grads.get("s.a").unwrap()[[0]] != 0.0);
    }
}
