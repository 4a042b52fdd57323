//! The normalisation slot. A placement's recipe names where a normalisation sits
//! (`Step::Norm`), not which one; [`NormKind`] says what fills the slots, [`Norm`] is the
//! filled slot, and every normalisation layer implements [`NormLayer`].
//!
//! Adding a normalisation (LayerNorm, say) is one file in `layers/` with its forward, its
//! hand-written backward and its finite-difference test, an `impl NormLayer`, and one entry
//! in each enum of this file (`NormKind` with its name, `Norm`, `NormCache`). Everything else
//! (op sequences, checkpoints, the npz, the gradient checks) reaches it through [`Norm`]. The
//! fused kernels of `unit/ops.rs` match `Norm::Batch` only: another norm runs as its own op.

use std::fmt;
use std::str::FromStr;

use super::batch_norm::{BatchNorm, BatchNormCache};
use super::layer_norm::{LayerNorm, LayerNormCache};
use super::Mode;
use crate::float::Float;
use crate::grads::Grads;
use crate::tensor::Tensor;

/// What every normalisation layer provides. Its cache is whatever its backward needs.
pub trait NormLayer<T: Float = f64> {
    type Cache;

    /// Normalises `x` (batch on axis 0, channels on axis 1); `mode` says whether batch or
    /// running statistics are used (a layer without running statistics ignores it).
    fn forward(&self, x: Tensor<T>, mode: Mode) -> (Tensor<T>, Self::Cache);

    /// The input gradient from the output gradient; parameter gradients into `grads`.
    fn backward(
        &self,
        cache: &Self::Cache,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T>;

    /// After a training-mode forward: moves the running statistics toward the batch's (a
    /// layer without running statistics has nothing to do).
    fn update_running_stats(&mut self, cache: &Self::Cache);

    /// Learned parameters, named.
    fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>));
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>));

    /// State that is not learned by gradient (running statistics), named.
    fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>));
    fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>));

    /// The short label descriptions use ("BN").
    fn label(&self) -> &'static str;
}

/// What fills a placement's normalisation slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NormKind {
    /// BatchNorm: statistics over the batch (and the spatial axes), per channel.
    #[default]
    Batch,
    /// LayerNorm: statistics over each sample's features (C x H x W), per sample.
    Layer,
    /// No normalisation: every slot is left out.
    None,
}

impl NormKind {
    /// BatchNorm, the paper's (and the default).
    pub fn is_batch(&self) -> bool {
        *self == NormKind::Batch
    }

    pub const ALL: [NormKind; 3] = [NormKind::Batch, NormKind::Layer, NormKind::None];

    pub fn name(self) -> &'static str {
        match self {
            NormKind::Batch => "batch",
            NormKind::Layer => "layer",
            NormKind::None => "none",
        }
    }

    /// The short name its layers carry in parameter names (`unit3.branch.bn1.gamma`).
    pub fn short(self) -> &'static str {
        match self {
            NormKind::Batch => "bn",
            NormKind::Layer => "ln",
            NormKind::None => "",
        }
    }

    /// A fresh layer of this kind over `channels` channels, named `name`; `None` for
    /// `NormKind::None` (the slot stays empty).
    pub fn build(self, name: &str, channels: usize) -> Option<Norm> {
        match self {
            NormKind::Batch => Some(Norm::Batch(BatchNorm::new(name, channels))),
            NormKind::Layer => Some(Norm::Layer(LayerNorm::new(name, channels))),
            NormKind::None => None,
        }
    }
}

impl fmt::Display for NormKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NormKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NormKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = NormKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown norm '{s}' (expected {})", names.join(", "))
            })
    }
}

/// A filled normalisation slot.
// A network holds a few hundred at most, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Norm<T: Float = f64> {
    Batch(BatchNorm<T>),
    Layer(LayerNorm<T>),
}

/// The cache of a [`Norm`]'s forward pass.
#[derive(Debug, Clone)]
pub enum NormCache<T: Float = f64> {
    Batch(BatchNormCache<T>),
    Layer(LayerNormCache<T>),
}

/// Runs `$e` with `$n` bound to the layer inside a [`Norm`], whatever its kind: the one
/// place a new kind joins the cache-free methods.
macro_rules! with_layer {
    ($norm:expr, $n:ident => $e:expr) => {
        match $norm {
            Norm::Batch($n) => $e,
            Norm::Layer($n) => $e,
        }
    };
}

impl<T: Float> Norm<T> {
    /// The layer in another element type.
    pub fn cast<U: Float>(&self) -> Norm<U> {
        match self {
            Norm::Batch(n) => Norm::Batch(n.cast()),
            Norm::Layer(n) => Norm::Layer(n.cast()),
        }
    }

    pub fn kind(&self) -> NormKind {
        match self {
            Norm::Batch(_) => NormKind::Batch,
            Norm::Layer(_) => NormKind::Layer,
        }
    }

    /// The layer's name (its parameters are `<name>.gamma`, ...).
    pub fn name(&self) -> &str {
        with_layer!(self, n => &n.name)
    }

    pub fn forward(&self, x: Tensor<T>, mode: Mode) -> (Tensor<T>, NormCache<T>) {
        match self {
            Norm::Batch(n) => {
                let (y, c) = NormLayer::forward(n, x, mode);
                (y, NormCache::Batch(c))
            }
            Norm::Layer(n) => {
                let (y, c) = NormLayer::forward(n, x, mode);
                (y, NormCache::Layer(c))
            }
        }
    }

    pub fn backward(
        &self,
        cache: &NormCache<T>,
        grad_y: Tensor<T>,
        grads: Option<&mut Grads<T>>,
    ) -> Tensor<T> {
        match (self, cache) {
            (Norm::Batch(n), NormCache::Batch(c)) => NormLayer::backward(n, c, grad_y, grads),
            (Norm::Layer(n), NormCache::Layer(c)) => NormLayer::backward(n, c, grad_y, grads),
            _ => unreachable!("a norm's cache is made by its own forward"),
        }
    }

    pub fn update_running_stats(&mut self, cache: &NormCache<T>) {
        match (self, cache) {
            (Norm::Batch(n), NormCache::Batch(c)) => NormLayer::update_running_stats(n, c),
            (Norm::Layer(n), NormCache::Layer(c)) => NormLayer::update_running_stats(n, c),
            _ => unreachable!("a norm's cache is made by its own forward"),
        }
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        with_layer!(self, n => NormLayer::visit_params(n, f))
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        with_layer!(self, n => NormLayer::visit_params_mut(n, f))
    }

    pub fn visit_buffers(&self, f: &mut dyn FnMut(String, &Tensor<T>)) {
        with_layer!(self, n => NormLayer::visit_buffers(n, f))
    }

    pub fn visit_buffers_mut(&mut self, f: &mut dyn FnMut(String, &mut Tensor<T>)) {
        with_layer!(self, n => NormLayer::visit_buffers_mut(n, f))
    }

    pub fn label(&self) -> &'static str {
        with_layer!(self, n => NormLayer::label(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_display() {
        for k in NormKind::ALL {
            assert_eq!(k.to_string().parse::<NormKind>().unwrap(), k);
        }
        let err = "group".parse::<NormKind>().unwrap_err();
        assert!(
            err.contains("unknown norm 'group'") && err.contains("batch"),
            "{err}"
        );
    }

    #[test]
    fn a_slot_filled_with_batchnorm_is_the_batchnorm_layer() {
        let norm = NormKind::Batch.build("n", 3).unwrap();
        assert_eq!(norm.kind(), NormKind::Batch);
        assert_eq!(norm.label(), "BN");
        let mut names = Vec::new();
        norm.visit_params(&mut |n, _| names.push(n));
        norm.visit_buffers(&mut |n, _| names.push(n));
        assert_eq!(
            names,
            ["n.gamma", "n.beta", "n.running_mean", "n.running_var"]
        );
    }
}
