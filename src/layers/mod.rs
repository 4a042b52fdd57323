//! Layers: each file holds a layer's parameters, its cache, `forward` and the hand-written
//! `backward` side by side, and central-difference gradient tests.
//!
//! Conventions: activations are `Tensor`s with the batch on axis 0; `backward` takes the
//! gradient of the loss with respect to the layer's output and returns it with respect to the
//! input (`grad_input`); parameter gradients are accumulated into a [`Grads`] only when one is
//! passed, so a gradient profile can skip them.
//!
//! [`Grads`]: crate::grads::Grads

pub mod avg_pool;
pub mod batch_norm;
pub mod branch_scale;
pub mod conv;
pub mod dense;
pub mod dense_fused;
pub mod dropout;
pub mod flatten;
pub mod layer_norm;
pub mod loss;
pub mod max_pool;
pub mod norm;
pub mod pad_shortcut;
pub mod pool;
pub mod preact_conv;
pub mod relu;
pub mod scalar_bias;
pub mod sigmoid;

pub use batch_norm::{BatchNorm, BatchNormCache};
pub use conv::{Conv2d, ConvCache};
pub use dense::{Dense, DenseCache};
pub use layer_norm::{LayerNorm, LayerNormCache};
pub use norm::{Norm, NormCache, NormKind, NormLayer};

/// Whether BatchNorm normalises with batch statistics (training) or running ones (evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    Eval,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Mode::Train),
            "eval" => Ok(Mode::Eval),
            _ => Err(format!(
                "unknown BatchNorm<T> mode '{s}' (expected 'train' or 'eval')"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Train => "train",
            Mode::Eval => "eval",
        })
    }
}
