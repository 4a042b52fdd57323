//! What a layer reads as its input, sample by sample: a stored tensor, or the
//! pre-activation `relu(a x + b)` of one (a normalisation's affine map, then ReLU) made in a
//! scratch buffer, so that the activated tensor never exists whole (the fused BN-ReLU-conv).

use super::norm::Affine;
use crate::float::Float;
use crate::tensor::relu;

/// Where a convolution reads sample `n`'s input: a stored tensor, or the pre-activation
/// `relu(a x + b)` of one (a BatchNorm's affine map then ReLU), made per sample in a scratch
/// buffer so the activated tensor never exists whole (the fused BN-ReLU-conv).
#[derive(Clone, Copy)]
pub(crate) enum Prologue<'a, T: Float = f64> {
    Plain(&'a [T]),
    Preact {
        x: &'a [T],
        affine: &'a Affine<T>,
        /// Values per channel plane, `H W`.
        plane: usize,
    },
}

impl<T: Float> Prologue<'_, T> {
    /// Scratch a sample of `sample_len` values needs: none when it is read in place.
    pub(crate) fn scratch_len(&self, sample_len: usize) -> usize {
        match self {
            Prologue::Plain(_) => 0,
            Prologue::Preact { .. } => sample_len,
        }
    }

    /// Sample `n` (`len` values), computed into `scratch` (at least `len` long) when it has
    /// to be.
    pub(crate) fn sample<'s>(&'s self, n: usize, len: usize, scratch: &'s mut [T]) -> &'s [T] {
        match *self {
            Prologue::Plain(x) => &x[n * len..(n + 1) * len],
            Prologue::Preact { x, affine, plane } => {
                let scratch = &mut scratch[..len];
                let x_n = &x[n * len..(n + 1) * len];
                for (ch, (out, src)) in scratch
                    .chunks_exact_mut(plane)
                    .zip(x_n.chunks_exact(plane))
                    .enumerate()
                {
                    let (a, b) = (affine.a[ch], affine.b[ch]);
                    // The same arithmetic as the BN-ReLU pass, so the same bits.
                    for (o, &v) in out.iter_mut().zip(src) {
                        *o = relu(a * v + b);
                    }
                }
                scratch
            }
        }
    }
}
