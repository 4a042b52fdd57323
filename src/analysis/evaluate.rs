//! A trained network's loss and error on a data split, BatchNorm in evaluation mode: what
//! training reports each epoch and what a lesion measures.

use anyhow::Result;
use ndarray::Axis;

use crate::data::Split;
use crate::float::Float;
use crate::layers::Mode;
use crate::net::Network;
use crate::unit::ForwardCtx;

/// The share of rows whose largest probability is not at the label.
pub fn error_rate<T: Float>(probs: &ndarray::Array2<T>, labels: &[usize]) -> f64 {
    let wrong = probs
        .axis_iter(Axis(0))
        .zip(labels)
        .filter(|(p, &t)| {
            let best = p
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > p[b] { i } else { b });
            best != t
        })
        .count();
    wrong as f64 / labels.len() as f64
}

/// Loss and error on the test split, BN in evaluation mode, in batches of 500.
pub fn evaluate<T: Float>(net: &Network<T>, data: &Split, flat: bool) -> Result<(f64, f64)> {
    evaluate_on(net, &data.test, data.test.len(), flat)
}

/// Loss and error on the first `n` images of `set`, BN in evaluation mode, in batches of 500.
pub fn evaluate_on<T: Float>(
    net: &Network<T>,
    set: &crate::data::Dataset,
    n: usize,
    flat: bool,
) -> Result<(f64, f64)> {
    let n = n.min(set.len());
    let idx: Vec<usize> = (0..n).collect();
    // No backward follows: nothing is kept.
    let ctx = ForwardCtx::forward_only(Mode::Eval);
    let (mut loss, mut wrong) = (0.0, 0.0);
    for chunk in idx.chunks(500) {
        let (x, y) = set.batch(chunk, flat);
        let x: crate::tensor::Tensor<T> = crate::tensor::cast(x);
        let (chunk_loss, probs) = net.predict(&x, &y, &ctx)?;
        loss += chunk_loss * chunk.len() as f64;
        wrong += error_rate(&probs, &y) * chunk.len() as f64;
    }
    Ok((loss / n as f64, wrong / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_is_the_forward_pass_bit_for_bit() {
        let data = crate::data::digits::load().unwrap();
        // resnet:2:basic, full pre-activation (train's defaults), and the original unit.
        let mut arch = crate::jobs::TrainJob::defaults().arch;
        for placement in [arch.placement, "original".parse().unwrap()] {
            arch.placement = placement;
            let net = arch
                .build(&crate::jobs::InputSizes::of_data(&data), 4)
                .unwrap();
            same_as_forward(&net, &data);
        }
    }

    fn same_as_forward(net: &Network, data: &crate::data::Split) {
        let (x, y) = data.test.batch(&(0..40).collect::<Vec<_>>(), false);
        for mode in [Mode::Eval, Mode::Train] {
            let ctx = ForwardCtx::forward_only(mode);
            let cache = net
                .forward_with(&x, &y, &ctx, crate::net::Keep::Inputs)
                .unwrap();
            let (loss, probs) = net.predict(&x, &y, &ctx).unwrap();
            assert_eq!(loss.to_bits(), cache.loss.to_bits());
            assert!(probs
                .iter()
                .zip(&cache.probs)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
