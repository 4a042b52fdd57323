//! Shattered gradients (Balduzzi et al., ICML 2017): sweep a scalar input over 256 points in
//! [-2, 2), take the derivative of one fixed output of a fully connected network at each, and
//! see how quickly the derivatives decorrelate from one point to the next. In deep plain nets
//! they look like white noise; skip connections keep them correlated (brown-noise-like).
//!
//! The nets are resprop's residual MLPs with a one-dimensional input: `depth` units of two
//! dense layers each (so `2 depth` weight layers), width `width`, He initialisation, the
//! original unit (`W N ReLU W N`, add, ReLU), with the identity shortcut (residual) or none
//! (plain), with BatchNorm over the 256-point batch in training mode (as in the paper) or
//! without normalisation. The output is the first logit; the derivative at point i is that
//! of the batch's summed output with respect to input i (with BatchNorm every output depends
//! on every input, as in an autograd of the summed output).

use anyhow::{bail, Result};

use crate::layers::{Mode, NormKind};
use crate::net::{Init, InputSizes, NetChoice, NetDescription};
use crate::rng::{derive_seed, gaussian, rng};
use crate::tensor::Tensor;
use crate::unit::{ForwardCtx, Placement, ShortcutKind};

/// Points of the sweep, as in the paper.
pub const POINTS: usize = 256;

/// One network family of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub residual: bool,
    pub batch_norm: bool,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family {
            residual: false,
            batch_norm: false,
        },
        Family {
            residual: false,
            batch_norm: true,
        },
        Family {
            residual: true,
            batch_norm: false,
        },
        Family {
            residual: true,
            batch_norm: true,
        },
    ];

    pub fn name(self) -> &'static str {
        match (self.residual, self.batch_norm) {
            (false, false) => "plain",
            (false, true) => "plain+bn",
            (true, false) => "resnet",
            (true, true) => "resnet+bn",
        }
    }
}

/// A series' mean autocorrelation per lag: a family at a depth, or a noise reference
/// (`white`, `brown`, no depth).
#[derive(Debug, Clone, PartialEq)]
pub struct Autocorrelation {
    pub net: &'static str,
    pub depth: Option<usize>,
    /// `r[lag]` for lag = 0..POINTS, averaged over the replicates.
    pub r: Vec<f64>,
}

/// One network's gradients over the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepGradients {
    pub family: Family,
    pub depth: usize,
    pub replicate: usize,
    /// d(summed output)/dx_i at each point of [`sweep`].
    pub gradients: Vec<f64>,
}

/// The whole comparison (`resprop shatter`): every family at every depth, `replicates` nets
/// each (seeds derived from `seed` and the replicate), then white and brown noise. Errors
/// name the argument first ("width: ..."), for the command line to prefix with `--`.
pub struct Study {
    pub autocorrelations: Vec<Autocorrelation>,
    pub gradients: Vec<SweepGradients>,
}

/// `force`: run even when the estimate says it takes more than a day.
pub fn study(
    depths: &[usize],
    width: usize,
    replicates: usize,
    placement: Placement,
    seed: u64,
    force: bool,
    precision: crate::float::Precision,
) -> Result<Study> {
    if depths.is_empty() || depths.contains(&0) {
        bail!("depths: every depth must be at least 1");
    }
    if let Some(d) = depths
        .iter()
        .find(|&&d| depths.iter().filter(|&&e| e == d).count() > 1)
    {
        bail!("depths: {d} is listed twice");
    }
    if width == 0 {
        bail!("width: must be at least 1");
    }
    if replicates == 0 {
        bail!("replicates: must be at least 1");
    }
    // One forward and backward pass of POINTS samples per family, depth and replicate; the
    // deepest net must fit in memory.
    let nets = (Family::ALL.len() * replicates) as f64;
    let widest = Family {
        residual: true,
        batch_norm: true,
    };
    let work = depths
        .iter()
        .map(|&d| description(widest, d, width, placement).pass_work(&INPUT, POINTS, nets))
        .sum();
    let deepest = *depths.iter().max().expect("not empty");
    let what = format!(
        "depths up to {deepest}, width {width}, {replicates} replicate{}",
        if replicates == 1 { "" } else { "s" }
    );
    crate::budget::ensure_feasible(&what, work, force)?;
    crate::net::memory::ensure_fits(
        &description(widest, deepest, width, placement).memory(
            &INPUT,
            POINTS,
            crate::net::memory::Purpose::profile(false),
        ),
        &what,
    )?;
    let mut out = Study {
        autocorrelations: Vec::new(),
        gradients: Vec::new(),
    };
    for family in Family::ALL {
        for &depth in depths {
            let series = (0..replicates)
                .map(|rep| {
                    let seed = derive_seed(seed, &[rep as u64]);
                    match precision {
                        crate::float::Precision::F64 => {
                            gradients_as::<f64>(family, depth, width, placement, seed)
                        }
                        crate::float::Precision::F32 => {
                            gradients_as::<f32>(family, depth, width, placement, seed)
                        }
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            out.autocorrelations.push(Autocorrelation {
                net: family.name(),
                depth: Some(depth),
                r: mean_autocorrelation(&series),
            });
            out.gradients.extend(
                series
                    .into_iter()
                    .enumerate()
                    .map(|(replicate, gradients)| SweepGradients {
                        family,
                        depth,
                        replicate,
                        gradients,
                    }),
            );
        }
    }
    let (white, brown): (Vec<_>, Vec<_>) = (0..replicates)
        .map(|rep| noise(derive_seed(seed, &[rep as u64])))
        .unzip();
    for (net, series) in [("white", white), ("brown", brown)] {
        out.autocorrelations.push(Autocorrelation {
            net,
            depth: None,
            r: mean_autocorrelation(&series),
        });
    }
    Ok(out)
}

/// The sweep's inputs: `-2 + 4 i / 256`, i = 0..256.
pub fn sweep() -> Vec<f64> {
    (0..POINTS)
        .map(|i| -2.0 + 4.0 * i as f64 / POINTS as f64)
        .collect()
}

/// The derivative of the first output at every point of the sweep, for one net.
pub fn gradients(
    family: Family,
    depth: usize,
    width: usize,
    placement: Placement,
    seed: u64,
) -> Result<Vec<f64>> {
    gradients_as::<f64>(family, depth, width, placement, seed)
}

/// [`gradients`] with the passes in `T` (the net and the sweep rounded from f64; the
/// derivatives widened back).
fn gradients_as<T: crate::float::Float>(
    family: Family,
    depth: usize,
    width: usize,
    placement: Placement,
    seed: u64,
) -> Result<Vec<f64>> {
    if depth == 0 || width == 0 {
        bail!("depth and width must be at least 1 (got {depth}, {width})");
    }
    let net: crate::net::Network<T> = build(family, depth, width, placement, seed)?.cast();
    let xs = sweep();
    let input: Tensor<T> =
        crate::tensor::cast(Tensor::from_shape_vec(ndarray::IxDyn(&[POINTS, 1]), xs)?);
    let labels = vec![0; POINTS];
    let ctx = ForwardCtx::forward_only(Mode::Train);
    let cache = net.forward(&input, &labels, &ctx)?;
    let mut grad_logits = Tensor::<T>::zeros(ndarray::IxDyn(&[POINTS, 2]));
    grad_logits
        .index_axis_mut(ndarray::Axis(1), 0)
        .fill(T::one());
    let g = net.input_gradient(&cache, grad_logits);
    Ok(g.iter().map(|v| v.as_f64()).collect())
}

/// A comparison net's input: a scalar, and two classes.
const INPUT: InputSizes = InputSizes {
    input_dim: 1,
    image_size: 1,
    input_channels: 1,
    classes: 2,
};

/// One net of the comparison: `depth` units of `family` of width `width`, He initialisation.
pub fn description(
    family: Family,
    depth: usize,
    width: usize,
    placement: Placement,
) -> NetDescription {
    NetDescription {
        net: NetChoice::Mlp,
        units: depth,
        width,
        placement,
        shortcut: if family.residual {
            ShortcutKind::Identity
        } else {
            ShortcutKind::None
        },
        projection: None,
        norm: if family.batch_norm {
            NormKind::Batch
        } else {
            NormKind::None
        },
        init: Init::He,
    }
}

/// One net of the comparison ([`description`]), a scalar input and two outputs.
pub fn build(
    family: Family,
    depth: usize,
    width: usize,
    placement: Placement,
    seed: u64,
) -> Result<crate::net::Network> {
    description(family, depth, width, placement).build(&INPUT, seed)
}

/// The normalised autocorrelation of a series at lags 0..n-1: `r(0) = 1`; NaN for a constant
/// series (no variation to correlate).
pub fn autocorrelation(g: &[f64]) -> Vec<f64> {
    let n = g.len();
    let mean = g.iter().sum::<f64>() / n as f64;
    let c: Vec<f64> = g.iter().map(|v| v - mean).collect();
    let c0: f64 = c.iter().map(|v| v * v).sum();
    (0..n)
        .map(|lag| {
            let s: f64 = (0..n - lag).map(|i| c[i] * c[i + lag]).sum();
            s / c0
        })
        .collect()
}

/// The first lag at which the autocorrelation falls below 1/2 (`None`: it never does).
pub fn half_lag(r: &[f64]) -> Option<usize> {
    r.iter().position(|&v| v < 0.5)
}

/// The references: white noise (independent N(0, 1) draws) and brown noise (their running
/// sum, a random walk), 256 points each.
pub fn noise(seed: u64) -> (Vec<f64>, Vec<f64>) {
    let white: Vec<f64> = gaussian(
        &[POINTS],
        1.0,
        &mut rng(derive_seed(seed, &[crate::rng::purpose::SHATTER])),
    )
    .iter()
    .copied()
    .collect();
    let brown = white
        .iter()
        .scan(0.0, |acc, &w| {
            *acc += w;
            Some(*acc)
        })
        .collect();
    (white, brown)
}

/// Mean over series of their autocorrelations, lag by lag.
pub fn mean_autocorrelation(series: &[Vec<f64>]) -> Vec<f64> {
    let rs: Vec<Vec<f64>> = series.iter().map(|g| autocorrelation(g)).collect();
    (0..POINTS)
        .map(|lag| rs.iter().map(|r| r[lag]).sum::<f64>() / rs.len() as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocorrelation_of_known_series() {
        // A line is strongly correlated at short lags; alternating signs anti-correlate at 1.
        let line: Vec<f64> = (0..POINTS).map(|i| i as f64).collect();
        let r = autocorrelation(&line);
        assert!((r[0] - 1.0).abs() < 1e-15 && r[1] > 0.98);
        let alt: Vec<f64> = (0..POINTS)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let r = autocorrelation(&alt);
        assert!((r[1] + 1.0).abs() < 0.01, "{}", r[1]);
        assert_eq!(half_lag(&r), Some(1));
        let (white, brown) = noise(1);
        assert!(half_lag(&autocorrelation(&white)).unwrap() <= 2);
        assert!(half_lag(&autocorrelation(&brown)).unwrap() > 5);
    }

    /// A net's input derivative against central differences of its summed first output.
    #[test]
    fn the_input_gradient_is_the_derivative() {
        for family in Family::ALL {
            let g = gradients(family, 3, 16, Placement::Original, 2).unwrap();
            // Numerical: perturb input i of the batch, re-run the summed first logit.
            let net = build(family, 3, 16, Placement::Original, 2).unwrap();
            let ctx = ForwardCtx::forward_only(Mode::Train);
            let out = |xs: &[f64]| -> f64 {
                let input =
                    Tensor::from_shape_vec(ndarray::IxDyn(&[POINTS, 1]), xs.to_vec()).unwrap();
                let net = net.clone();
                let x0 = crate::unit::ops::forward_seq(&net.stem, input, Mode::Train, net.fusion).0;
                let mut x = x0;
                for u in &net.units {
                    x = u.forward(&x, &ctx).0;
                }
                let logits = crate::unit::ops::forward_seq(&net.head, x, Mode::Train, net.fusion).0;
                logits.index_axis(ndarray::Axis(1), 0).sum()
            };
            let xs = sweep();
            // Relative error bound 1e-6: central differences with h = 1e-5 on a piecewise
            // linear function of the input (ReLU kinks are far at these points).
            for i in [3, 100, 200] {
                let h = 1e-5;
                let mut plus = xs.clone();
                plus[i] += h;
                let mut minus = xs.clone();
                minus[i] -= h;
                let numeric = (out(&plus) - out(&minus)) / (2.0 * h);
                let err = (numeric - g[i]).abs() / g[i].abs().max(1e-12);
                assert!(err < 1e-6, "{} i={i}: {numeric} vs {}", family.name(), g[i]);
            }
        }
    }
}
