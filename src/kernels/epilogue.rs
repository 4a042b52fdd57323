//! What a layer does to its output after its own arithmetic, while each sample is still in
//! cache: add a tensor of the output's shape, and measure the output's moments for the
//! normalisation that reads it next. The layer does not know why; the residual unit asks
//! for `add: x` (its identity shortcut) and the op sequence for the moments.

use super::norm::Moments;
use crate::float::Float;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a, T: Float = f64> {
    /// Added to the output, element by element (the output's shape).
    pub add: Option<&'a Tensor<T>>,
    /// Hand back the output's moments (per plane of a conv output, per column of a dense one).
    pub moments: bool,
}

impl<'a, T: Float> Epilogue<'a, T> {
    /// Nothing after the layer.
    pub const NONE: Epilogue<'static, T> = Epilogue {
        add: None,
        moments: false,
    };

    /// The values to add, checked against the output's length.
    pub fn add_slice(&self, out_len: usize, layer: &str) -> Option<&'a [T]> {
        self.add.map(|t| {
            assert_eq!(
                t.len(),
                out_len,
                "{layer}: epilogue tensor of the wrong size"
            );
            t.as_slice().expect("standard layout")
        })
    }

    /// Finishes sample `n` of a conv output (`y_n`, planes of `plane` values; `add` is the
    /// whole tensor's slice): adds its part of `add`, then measures its planes if asked.
    pub fn finish_sample(
        &self,
        add: Option<&[T]>,
        n: usize,
        y_n: &mut [T],
        plane: usize,
    ) -> Vec<(T, T)> {
        if let Some(r) = add {
            let r_n = &r[n * y_n.len()..(n + 1) * y_n.len()];
            y_n.iter_mut().zip(r_n).for_each(|(v, &r)| *v += r);
        }
        if self.moments {
            Moments::of_sample(y_n, plane)
        } else {
            Vec::new()
        }
    }
}
