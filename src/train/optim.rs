//! The optimizers `train` offers, hand-written, with the state a checkpoint keeps.
//!
//! - **SGD** as in the paper (and PyTorch): `v = m v + (g + wd w)`, `w -= lr v`.
//! - **Adam** (Kingma and Ba 2015), bias-corrected, as PyTorch computes it: with
//!   `g' = g + wd w` (`--weight-decay-mode l2`, PyTorch's `Adam`) or `g' = g` and the weights
//!   first shrunk by `w *= 1 - lr wd` (`decoupled`, PyTorch's `AdamW`, the default),
//!   `m = b1 m + (1 - b1) g'`, `v = b2 v + (1 - b2) g'^2`, `t += 1`,
//!   `w -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.

use std::collections::{BTreeMap, BTreeSet};

use crate::float::Float;
use crate::grads::Grads;
use crate::net::Network;
use crate::tensor::Tensor;

/// Which optimizer a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Sgd,
    Adam,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            _ => Err(format!("unknown optimizer '{s}' (expected sgd or adam)")),
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        })
    }
}

/// How Adam applies weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDecayMode {
    /// Shrink the weights apart from the gradient step (AdamW).
    #[default]
    Decoupled,
    /// Add `wd w` to the gradient (Adam with L2 regularisation).
    L2,
}

impl std::str::FromStr for WeightDecayMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "decoupled" => Ok(WeightDecayMode::Decoupled),
            "l2" => Ok(WeightDecayMode::L2),
            _ => Err(format!(
                "unknown weight-decay mode '{s}' (expected decoupled or l2)"
            )),
        }
    }
}

impl std::fmt::Display for WeightDecayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightDecayMode::Decoupled => "decoupled",
            WeightDecayMode::L2 => "l2",
        })
    }
}

/// Per-parameter factors on the learning rate: 1 for every parameter, or a factor for a named
/// set (Fixup's authors train its scalar biases and multipliers at a tenth of the rate, in
/// their own parameter groups; see [`crate::net::fixup::scalar_param_names`]).
#[derive(Debug, Clone, Default)]
pub struct RateFactors {
    reduced: BTreeSet<String>,
    factor: f64,
}

impl RateFactors {
    /// The same rate for every parameter.
    pub fn uniform() -> Self {
        RateFactors::default()
    }

    /// `factor` for the parameters named in `reduced`, 1 for the others.
    pub fn new(reduced: BTreeSet<String>, factor: f64) -> Self {
        RateFactors { reduced, factor }
    }

    /// The factor on parameter `name`'s rate.
    pub fn of(&self, name: &str) -> f64 {
        if self.reduced.contains(name) {
            self.factor
        } else {
            1.0
        }
    }
}

/// SGD with momentum and L2 weight decay.
#[derive(Debug, Clone)]
pub struct Sgd<T: Float = f64> {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Momentum buffers by parameter name.
    pub velocity: BTreeMap<String, Tensor<T>>,
}

impl<T: Float> Sgd<T> {
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            momentum,
            weight_decay,
            velocity: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient, each at `lr` times its factor.
    pub fn step(&mut self, net: &mut Network<T>, grads: &Grads<T>, lr: f64, rates: &RateFactors) {
        let (m, wd) = (T::of_f64(self.momentum), T::of_f64(self.weight_decay));
        let velocity = &mut self.velocity;
        net.visit_params_mut(&mut |name, w| {
            let Some(g) = grads.get(&name) else { return };
            let lr = T::of_f64(lr * rates.of(&name));
            let v = velocity
                .entry(name)
                .or_insert_with(|| Tensor::<T>::zeros(w.raw_dim()));
            ndarray::Zip::from(&mut *v)
                .and(g)
                .and(&*w)
                .for_each(|v, &g, &w| *v = m * *v + g + wd * w);
            w.zip_mut_with(v, |w, &v| *w -= lr * v);
        });
    }
}

/// Adam, bias-corrected; see the module's header.
#[derive(Debug, Clone)]
pub struct Adam<T: Float = f64> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub mode: WeightDecayMode,
    /// Steps taken (`t` of the bias correction).
    pub t: u64,
    /// First and second moments by parameter name.
    pub m: BTreeMap<String, Tensor<T>>,
    pub v: BTreeMap<String, Tensor<T>>,
}

impl<T: Float> Adam<T> {
    /// PyTorch's defaults for the moments: `b1 = 0.9`, `b2 = 0.999`, `eps = 1e-8`.
    pub fn new(weight_decay: f64, mode: WeightDecayMode) -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            mode,
            t: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    pub fn step(&mut self, net: &mut Network<T>, grads: &Grads<T>, lr: f64, rates: &RateFactors) {
        self.t += 1;
        let (b1, b2, eps, wd, mode) = (
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.mode,
        );
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        let (ms, vs) = (&mut self.m, &mut self.v);
        net.visit_params_mut(&mut |name, w| {
            let Some(g) = grads.get(&name) else { return };
            let lr = lr * rates.of(&name);
            adam_update(
                w,
                g,
                ms.entry(name.clone())
                    .or_insert_with(|| Tensor::<T>::zeros(w.raw_dim())),
                vs.entry(name)
                    .or_insert_with(|| Tensor::<T>::zeros(w.raw_dim())),
                AdamStep {
                    lr,
                    b1,
                    b2,
                    eps,
                    wd,
                    mode,
                    c1,
                    c2,
                },
            );
        });
    }
}

/// The constants of one Adam step (`c1`, `c2`: the bias corrections `1 - b^t`).
#[derive(Clone, Copy)]
struct AdamStep {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    mode: WeightDecayMode,
    c1: f64,
    c2: f64,
}

/// One parameter's Adam update, in place.
fn adam_update<T: Float>(
    w: &mut Tensor<T>,
    g: &Tensor<T>,
    m: &mut Tensor<T>,
    v: &mut Tensor<T>,
    s: AdamStep,
) {
    let c = T::of_f64;
    if s.mode == WeightDecayMode::Decoupled {
        let shrink = c(1.0 - s.lr * s.wd);
        w.mapv_inplace(|w| w * shrink);
    }
    let l2 = c(if s.mode == WeightDecayMode::L2 {
        s.wd
    } else {
        0.0
    });
    let (b1, b2, one_b1, one_b2) = (c(s.b1), c(s.b2), c(1.0 - s.b1), c(1.0 - s.b2));
    let (lr, c1, c2, eps) = (c(s.lr), c(s.c1), c(s.c2), c(s.eps));
    ndarray::Zip::from(w)
        .and(g)
        .and(m)
        .and(v)
        .for_each(|w, &g, m, v| {
            let g = g + l2 * *w;
            *m = b1 * *m + one_b1 * g;
            *v = b2 * *v + one_b2 * g * g;
            *w -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        });
}

/// The optimizer of a run.
#[derive(Debug, Clone)]
pub enum Optimizer<T: Float = f64> {
    Sgd(Sgd<T>),
    Adam(Adam<T>),
}

impl<T: Float> Optimizer<T> {
    /// The optimizer's state in another element type (rounded to nearest when narrowing):
    /// checkpoints hold f64, an f32 run steps in f32.
    pub fn cast<U: Float>(&self) -> Optimizer<U> {
        let map = |m: &BTreeMap<String, Tensor<T>>| -> BTreeMap<String, Tensor<U>> {
            m.iter()
                .map(|(n, t)| (n.clone(), crate::tensor::cast_ref(t)))
                .collect()
        };
        match self {
            Optimizer::Sgd(o) => Optimizer::Sgd(Sgd {
                momentum: o.momentum,
                weight_decay: o.weight_decay,
                velocity: map(&o.velocity),
            }),
            Optimizer::Adam(o) => Optimizer::Adam(Adam {
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: o.weight_decay,
                mode: o.mode,
                t: o.t,
                m: map(&o.m),
                v: map(&o.v),
            }),
        }
    }

    pub fn step(&mut self, net: &mut Network<T>, grads: &Grads<T>, lr: f64, rates: &RateFactors) {
        match self {
            Optimizer::Sgd(o) => o.step(net, grads, lr, rates),
            Optimizer::Adam(o) => o.step(net, grads, lr, rates),
        }
    }
}

/// Checkpoints hold f64: the state of an f32 run is cast first.
impl Optimizer {
    /// The state a checkpoint keeps, as named tensors: `velocity/<param>` (SGD), or
    /// `adam_m/<param>`, `adam_v/<param>` and `adam_t` (Adam).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        match self {
            Optimizer::Sgd(o) => o
                .velocity
                .iter()
                .map(|(n, v)| (format!("velocity/{n}"), v.clone()))
                .collect(),
            Optimizer::Adam(o) => {
                let mut out: Vec<(String, Tensor)> =
                    o.m.iter()
                        .map(|(n, t)| (format!("adam_m/{n}"), t.clone()))
                        .chain(o.v.iter().map(|(n, t)| (format!("adam_v/{n}"), t.clone())))
                        .collect();
                out.push((
                    "adam_t".into(),
                    Tensor::from_elem(ndarray::IxDyn(&[1]), o.t as f64),
                ));
                out
            }
        }
    }

    /// Restores what [`Optimizer::state`] wrote (`get` looks an entry up by its name: `None`
    /// when there is none, an error when it cannot be read as f64), for a network whose
    /// parameters are `params` (name, shape): every parameter's state must be there, an array
    /// of f64 of the parameter's shape, or resuming would not continue the run.
    pub fn restore(
        &mut self,
        params: &[(String, Vec<usize>)],
        mut get: impl FnMut(&str) -> Result<Option<Tensor>, String>,
    ) -> Result<(), String> {
        let mut load = |prefix: &str, map: &mut BTreeMap<String, Tensor>| {
            for (param, shape) in params {
                let name = format!("{prefix}{param}");
                let t = get(&name)?.ok_or_else(|| {
                    format!("no array '{name}' of f64 (the optimizer's state of {param})")
                })?;
                if t.shape() != shape.as_slice() {
                    return Err(format!(
                        "'{name}' has shape {:?}, its parameter {:?}",
                        t.shape(),
                        shape
                    ));
                }
                map.insert(param.clone(), t);
            }
            Ok(())
        };
        match self {
            Optimizer::Sgd(o) => load("velocity/", &mut o.velocity),
            Optimizer::Adam(o) => {
                load("adam_m/", &mut o.m)?;
                load("adam_v/", &mut o.v)?;
                let t = get("adam_t")?.ok_or("no array 'adam_t' of f64 (Adam's step count)")?;
                match t.as_slice() {
                    Some(&[t]) if t >= 0.0 && t.fract() == 0.0 && t < 2f64.powi(53) => {
                        o.t = t as u64;
                        Ok(())
                    }
                    _ => Err("'adam_t' is not one whole number of steps".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    /// Three steps on one parameter, against PyTorch 2.15 (float64, lr 0.01, weight decay
    /// 0.1, betas (0.9, 0.999), eps 1e-8): `torch.optim.Adam` for L2, `AdamW` for decoupled.
    #[test]
    fn adam_matches_pytorch() {
        let gs = [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1], [-0.3, 0.0, 0.2]];
        for (mode, want) in [
            (
                WeightDecayMode::L2,
                [0.4811621485709144, -0.9895005501155802, 1.9731630751713196],
            ),
            (
                WeightDecayMode::Decoupled,
                [0.4826812519662487, -0.9935103543836423, 1.9739969403424882],
            ),
        ] {
            let mut w: Tensor = Tensor::from_shape_vec(IxDyn(&[3]), vec![0.5, -1.0, 2.0]).unwrap();
            let (mut m, mut v) = (Tensor::zeros(IxDyn(&[3])), Tensor::zeros(IxDyn(&[3])));
            for (t, g) in gs.iter().enumerate() {
                let g = Tensor::from_shape_vec(IxDyn(&[3]), g.to_vec()).unwrap();
                let t = (t + 1) as i32;
                let s = AdamStep {
                    lr: 0.01,
                    b1: 0.9,
                    b2: 0.999,
                    eps: 1e-8,
                    wd: 0.1,
                    mode,
                    c1: 1.0 - 0.9f64.powi(t),
                    c2: 1.0 - 0.999f64.powi(t),
                };
                adam_update(&mut w, &g, &mut m, &mut v, s);
            }
            for (got, want) in w.iter().zip(want) {
                assert!((got - want).abs() < 1e-15, "{mode}: {got} against {want}");
            }
        }
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(
            "adam".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adam
        );
        assert!("rmsprop"
            .parse::<OptimizerKind>()
            .unwrap_err()
            .contains("unknown optimizer 'rmsprop'"));
        assert_eq!(
            "l2".parse::<WeightDecayMode>().unwrap(),
            WeightDecayMode::L2
        );
    }
}
