//! What each weight layer sees: the mean and variance of its input, over the batch, the
//! channels and the pixels.
//!
//! The paper's second argument for pre-activation (Sec. 4.2): in the original unit the BN-
//! normalised branch output is added to the shortcut, so the next unit's first weight layer
//! sees an unnormalised sum; with pre-activation every weight layer's input has passed a BN.
//! This module measures that, layer by layer, on the plain op-by-op forward path (no fusion),
//! from the unit inputs `x_l` of a normal forward pass.

use anyhow::Result;

use crate::float::Float;
use crate::layers::Mode;
use crate::net::Network;
use crate::tensor::Tensor;
use crate::unit::{ForwardCtx, Op};

/// One weight layer's input statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightInput {
    pub unit: usize,
    /// The layer's place in the unit: `w1`, `w2`, `w3` (branch), `proj` (projection shortcut),
    /// `gate` (gate pre-activation).
    pub layer: String,
    pub mean: f64,
    /// Biased variance over every element of the input.
    pub var: f64,
}

/// Mean and biased variance of `values` in f64 (two passes, in order), whatever the element
/// type.
fn mean_var<'a, T: Float>(values: impl ExactSizeIterator<Item = &'a T> + Clone) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.clone().map(|v| v.as_f64()).sum::<f64>() / n;
    let var = values
        .map(|v| (v.as_f64() - mean) * (v.as_f64() - mean))
        .sum::<f64>()
        / n;
    (mean, var)
}

/// Brock, De and Smith's signal-propagation statistics of an `(N, C, ...)` activation:
/// the average over channels of the squared channel mean, and of the channel variance (each
/// channel over its `N H W` values, biased, two passes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStats {
    pub mean_sq: f64,
    pub var: f64,
}

/// In f64 whatever the element type (an f32 activation's values widened exactly).
pub fn channel_stats<T: Float>(x: &Tensor<T>) -> ChannelStats {
    let (means, vars): (Vec<f64>, Vec<f64>) = (0..x.shape()[1])
        .map(|ch| mean_var(x.index_axis(ndarray::Axis(1), ch).iter()))
        .unzip();
    let c = means.len() as f64;
    ChannelStats {
        mean_sq: means.iter().map(|m| m * m).sum::<f64>() / c,
        var: vars.iter().sum::<f64>() / c,
    }
}

/// The short name of a weight op inside a unit, from its parameter name (`unit3.branch.w2` ->
/// `w2`, `unit18.proj` -> `proj`).
fn layer_name<T: Float>(op: &Op<T>) -> Option<String> {
    let name = match op {
        Op::Dense(d) => &d.name,
        Op::Conv(c) => &c.name,
        _ => return None,
    };
    Some(name.rsplit('.').next().unwrap_or(name).to_string())
}

/// Runs `ops` one by one from `x`, recording the input of every weight layer.
fn record<T: Float>(
    ops: &[Op<T>],
    mut x: Tensor<T>,
    mode: Mode,
    unit: usize,
    out: &mut Vec<WeightInput>,
) -> Tensor<T> {
    for op in ops {
        if let Some(layer) = layer_name(op) {
            let (mean, var) = mean_var(x.iter());
            out.push(WeightInput {
                unit,
                layer,
                mean,
                var,
            });
        }
        x = op.forward(x, mode).0;
    }
    x
}

/// The input statistics of every weight layer of every unit (branch, projection and gate),
/// BN in `mode`, for the batch `input`.
pub fn weight_inputs<T: Float>(
    net: &Network<T>,
    input: &Tensor<T>,
    labels: &[usize],
    mode: Mode,
) -> Result<Vec<WeightInput>> {
    let ctx = ForwardCtx::forward_only(mode);
    let cache = net.forward(input, labels, &ctx)?;
    let mut out = Vec::new();
    for (l, unit) in net.units.iter().enumerate() {
        let x = cache.x(l).clone();
        let split = record(&unit.pre, x, mode, l, &mut out);
        record(&unit.branch, split.clone(), mode, l, &mut out);
        record(&unit.shortcut_ops, split, mode, l, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two channels, values chosen by hand: (mean 1, variance 1) and (mean -3, variance 4).
    #[test]
    fn channel_stats_average_over_channels() {
        let x =
            Tensor::from_shape_vec(ndarray::IxDyn(&[2, 2]), vec![0.0, -5.0, 2.0, -1.0]).unwrap();
        let s = channel_stats(&x);
        assert_eq!(
            s,
            ChannelStats {
                mean_sq: 5.0,
                var: 2.5
            }
        );
    }
    use crate::analysis::gaussian_batch;
    use crate::net::{build_mlp, MlpConfig};
    use crate::unit::{Placement, ShortcutKind};

    fn stats(placement: Placement) -> Vec<WeightInput> {
        let net = build_mlp(&MlpConfig {
            units: 6,
            width: 32,
            input_dim: 16,
            classes: 4,
            placement,
            shortcut: ShortcutKind::Identity,
            norm: crate::layers::NormKind::Batch,
            init: crate::net::Init::He,
            seed: 3,
        })
        .unwrap();
        let (x, y) = gaussian_batch(&net.input_shape, 64, 4, 3);
        weight_inputs(&net, &x, &y, Mode::Train).unwrap()
    }

    #[test]
    fn preact_weight_layers_see_normalised_relu_outputs() {
        // BN (gamma 1, beta 0) then ReLU: mean 1/sqrt(2 pi) = 0.399, variance 1/2 - 1/(2 pi)
        // = 0.341 for any input, at every layer.
        let s = stats(Placement::FullPreact);
        assert_eq!(s.len(), 12);
        for w in &s {
            assert!((w.mean - 0.399).abs() < 0.06, "{w:?}");
            assert!((w.var - 0.341).abs() < 0.06, "{w:?}");
        }
    }

    #[test]
    fn original_first_layers_see_the_unnormalised_sum() {
        // x_l = ReLU(x_{l-1} + F): its variance grows unit by unit, while w2 always sees a
        // BN-ReLU output.
        let s = stats(Placement::Original);
        let first: Vec<f64> = s
            .iter()
            .filter(|w| w.layer == "w1")
            .map(|w| w.var)
            .collect();
        assert!(first[5] > 2.0 * first[0], "{first:?}");
        for w in s.iter().filter(|w| w.layer == "w2") {
            assert!((w.var - 0.341).abs() < 0.06, "{w:?}");
        }
    }
}
