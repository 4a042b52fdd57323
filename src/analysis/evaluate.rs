//! A trained network's loss and error on a data split, BatchNorm in evaluation mode: what
//! training reports each epoch and what a lesion measures.

use anyhow::Result;
use ndarray::Axis;

use crate::data::Split;
use crate::layers::Mode;
use crate::net::Network;
use crate::unit::ForwardCtx;

/// The share of rows whose largest probability is not at the label.
pub fn error_rate(probs: &ndarray::Array2<f64>, labels: &[usize]) -> f64 {
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
pub fn evaluate(net: &Network, data: &Split, flat: bool) -> Result<(f64, f64)> {
    evaluate_on(net, &data.test, data.test.len(), flat)
}

/// Loss and error on the first `n` images of `set`, BN in evaluation mode, in batches of 500.
pub fn evaluate_on(
    net: &Network,
    set: &crate::data::Dataset,
    n: usize,
    flat: bool,
) -> Result<(f64, f64)> {
    let n = n.min(set.len());
    let idx: Vec<usize> = (0..n).collect();
    // No backward follows: weight layers keep no inputs and only the unit inputs are kept.
    let ctx = ForwardCtx::forward_only(Mode::Eval);
    let (mut loss, mut wrong) = (0.0, 0.0);
    for chunk in idx.chunks(500) {
        let (x, y) = set.batch(chunk, flat);
        let cache = net.forward_with(&x, &y, &ctx, crate::net::Keep::Inputs)?;
        loss += cache.loss * chunk.len() as f64;
        wrong += error_rate(&cache.probs, &y) * chunk.len() as f64;
    }
    Ok((loss / n as f64, wrong / n as f64))
}
