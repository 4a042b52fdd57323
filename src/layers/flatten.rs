//! Flattening each sample into a vector, `(N, C, H, W) -> (N, C H W)`, in row-major order as
//! PyTorch's `torch.flatten(x, 1)` and ONNX's Flatten (axis 1) order it: channel, then row,
//! then column. Backward gives the gradient the input's shape back.
//!
//! Both directions move the buffer of a standard-layout tensor, no copy.

use ndarray::IxDyn;

use crate::float::Float;
use crate::tensor::Tensor;

/// The input's shape, for backward.
pub fn forward<T: Float>(x: Tensor<T>) -> (Tensor<T>, Vec<usize>) {
    let shape = x.shape().to_vec();
    let per_sample = shape[1..].iter().product::<usize>();
    let y = crate::tensor::into_standard_layout(x)
        .into_shape_with_order(IxDyn(&[shape[0], per_sample]))
        .expect("a standard-layout tensor reshapes to its own size");
    (y, shape)
}

/// `in_shape` is the input's shape.
pub fn backward<T: Float>(in_shape: &[usize], grad_y: Tensor<T>) -> Tensor<T> {
    crate::tensor::into_standard_layout(grad_y)
        .into_shape_with_order(IxDyn(in_shape))
        .expect("the gradient has the output's size, the input's")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample by sample, channel by channel, row by row; backward undoes it exactly.
    #[test]
    fn flatten_keeps_pytorchs_order_and_backward_undoes_it() {
        let x = Tensor::from_shape_fn(IxDyn(&[2, 3, 2, 2]), |i| {
            (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as f64
        });
        let (y, shape) = forward(x.clone());
        assert_eq!(y.shape(), &[2, 12]);
        assert_eq!(y[[0, 5]], 101.0);
        assert_eq!(y[[1, 11]], 1211.0);
        assert_eq!(backward(&shape, y), x);
        // A transposed (not standard-layout) input flattens in its logical order too.
        let t = x.clone().permuted_axes(IxDyn(&[0, 1, 3, 2]));
        let (yt, _) = forward(t.clone());
        assert_eq!(yt[[0, 1]], t[[0, 0, 0, 1]]);
    }
}
