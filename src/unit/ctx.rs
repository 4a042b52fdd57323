//! What a forward pass needs besides its input, and the few ways the tool sets it.

use crate::layers::Mode;
use crate::rng::{derive_seed, purpose};

/// What a forward pass needs besides the input: BN mode and the seed of dropout masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardCtx {
    pub mode: Mode,
    /// Dropout masks of unit `l` are drawn from `derive_seed(dropout_seed, [DROPOUT, l])`.
    pub dropout_seed: u64,
    /// Keep each unit's `F(x)` in its cache, for analyses that read `F'(x_l)`
    /// ([`super::ResidualUnit::branch_term`]): one more tensor per unit. Off for training and
    /// timing.
    pub keep_branch: bool,
    /// The backward pass may be asked for parameter gradients, so weight layers keep their
    /// inputs. Off for a gradient profile (input gradients only): the inputs' memory is then
    /// reused straight away (W1: peak RSS 352 -> 274 MB).
    pub weight_grads: bool,
}

impl ForwardCtx {
    /// An analysis of one batch (profile, check, paths): BN in `mode`, dropout masks from the
    /// run's `seed`, every branch output kept, weight gradients possible.
    pub fn analysis(mode: Mode, seed: u64) -> ForwardCtx {
        ForwardCtx {
            mode,
            dropout_seed: derive_seed(seed, &[purpose::DROPOUT]),
            keep_branch: true,
            weight_grads: true,
        }
    }

    /// One training step: BN on the batch, the step's own dropout masks.
    pub fn training_step(seed: u64, step: usize) -> ForwardCtx {
        ForwardCtx {
            mode: Mode::Train,
            dropout_seed: derive_seed(seed, &[purpose::DROPOUT, step as u64]),
            keep_branch: false,
            weight_grads: true,
        }
    }

    /// A forward pass no analysis reads and no weight gradient follows (evaluation in `Eval`
    /// mode, shatter's input gradients, signal statistics): dropout seed 0.
    pub fn forward_only(mode: Mode) -> ForwardCtx {
        ForwardCtx {
            mode,
            dropout_seed: 0,
            keep_branch: false,
            weight_grads: false,
        }
    }

    /// The same, with weight layers keeping their inputs when `weight_grads`.
    pub fn with_weight_grads(self, weight_grads: bool) -> ForwardCtx {
        ForwardCtx {
            weight_grads,
            ..self
        }
    }
}
