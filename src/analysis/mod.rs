//! What resprop measures: per-unit gradient records (the direct/rest split of Eq. 5/8) and
//! the numerical verification of the paper's formulas.

pub mod checks;
pub mod evaluate;
pub mod lesion;
pub mod paths;
pub mod record;
pub mod shatter;
pub mod signal;
pub mod sweep;

use rand::Rng;

use crate::rng::{derive_seed, gaussian, purpose, rng};
use crate::tensor::Tensor;

/// The default input: `N(0, 1)` samples of the given shape and labels uniform over the
/// classes, both derived from `seed`.
pub fn gaussian_batch(
    sample_shape: &[usize],
    batch: usize,
    classes: usize,
    seed: u64,
) -> (Tensor, Vec<usize>) {
    let mut shape = vec![batch];
    shape.extend_from_slice(sample_shape);
    let input = gaussian(&shape, 1.0, &mut rng(derive_seed(seed, &[purpose::INPUT])));
    let mut r = rng(derive_seed(seed, &[purpose::LABELS]));
    let labels = (0..batch).map(|_| r.random_range(0..classes)).collect();
    (input, labels)
}
