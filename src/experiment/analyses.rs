//! The cells of the analysis tasks: the gradient by path length (at initialisation and after
//! training), lesions of a trained network, and shattered gradients. Each returns its table's
//! rows (without keys) like the profile and training cells.

use anyhow::{bail, Result};

use super::runner::{build_cell_net, cell_seed, train_cell_net, CellResult};
use super::spec::{Cell, Spec, TrainSpec};
use crate::analysis::paths::{decompose, path_rows, sample_paths};
use crate::data::Split;
use crate::interrupt::Interrupt;
use crate::layers::NormKind;
use crate::net::{NetChoice, Network};
use crate::rng::{derive_seed, purpose, rng};
use crate::schema::Row;
use crate::tensor::Tensor;
use crate::unit::{ForwardCtx, ShortcutKind};

/// The path decomposition of `net` at `(input, labels)`, as rows tagged `when`.
#[allow(clippy::too_many_arguments)]
fn path_table(
    spec: &Spec,
    net: &Network,
    input: &Tensor,
    labels: &[usize],
    sample: usize,
    seed: u64,
    when: &str,
    stop: &Interrupt,
) -> Result<Vec<Vec<String>>> {
    let ctx = ForwardCtx::analysis(spec.bn_mode, seed).with_weight_grads(false);
    let cache = net.forward(input, labels, &ctx)?;
    let grads = net.backward(&cache, labels, None);
    let d = decompose(net, &cache, &grads);
    if d.max_sum_error().is_nan() || d.max_sum_error() > 1e-10 {
        bail!(
            "the path decomposition does not sum to the gradient ({:e})",
            d.max_sum_error()
        );
    }
    let sampled = (sample > 0)
        .then(|| {
            sample_paths(
                net,
                &cache,
                &grads,
                sample,
                derive_seed(seed, &[purpose::PATHS]),
                &|| {},
                stop,
            )
        })
        .transpose()?;
    Ok(path_rows(net, &d, sampled.as_deref())
        .iter()
        .map(|r| {
            let mut row = vec![when.to_string()];
            row.extend(r.fields());
            row
        })
        .collect())
}

/// The gradient by path length: with a training recipe, at initialisation and after
/// training, on the same seeded batch of the training split; without, at initialisation on
/// the Gaussian batch of a profile.
pub fn run_paths_cell(
    spec: &Spec,
    cell: &Cell,
    train: Option<&TrainSpec>,
    sample: usize,
    data: Option<&Split>,
    stop: &Interrupt,
) -> Result<CellResult> {
    let seed = cell_seed(spec, cell.replicate);
    let (Some(t), Some(data)) = (train, data) else {
        let (net, x, y) = super::runner::build_profile_net(spec, cell)?;
        let rows = path_table(spec, &net, &x, &y, sample, seed, "init", stop)?;
        return Ok(CellResult {
            tables: vec![rows],
            warning: None,
        });
    };
    let mut net = build_cell_net(spec, cell, data)?;
    let n = data.train.len();
    if spec.batch > n {
        bail!(
            "batch: {} is larger than the training split ({n} images)",
            spec.batch
        );
    }
    let mut r = rng(derive_seed(seed, &[purpose::INPUT]));
    let idx = rand::seq::index::sample(&mut r, n, spec.batch).into_vec();
    let (x, y) = data.train.batch(&idx, cell.arch.net == NetChoice::Mlp);
    let mut rows = path_table(spec, &net, &x, &y, sample, seed, "init", stop)?;
    let (h, warning) = train_cell_net(spec, cell, t, data, &mut net, stop)?;
    if h.diverged.is_none() {
        rows.extend(path_table(
            spec, &net, &x, &y, sample, seed, "trained", stop,
        )?);
    }
    Ok(CellResult {
        tables: vec![rows],
        warning,
    })
}

/// Lesions of the cell's network after training: the intact net, every single unit, and
/// `draws` sets of k random units for k = 1..n/2.
pub fn run_lesion_cell(
    spec: &Spec,
    cell: &Cell,
    t: &TrainSpec,
    draws: usize,
    data: &Split,
    stop: &Interrupt,
) -> Result<CellResult> {
    let mut net = build_cell_net(spec, cell, data)?;
    let (h, warning) = train_cell_net(spec, cell, t, data, &mut net, stop)?;
    if h.diverged.is_some() {
        return Ok(CellResult {
            tables: vec![vec![]],
            warning,
        });
    }
    let lesions = crate::analysis::lesion::plan(&net, draws, cell_seed(spec, cell.replicate));
    let errors = crate::analysis::lesion::run(&net, data, &lesions, &|| {}, stop)?;
    Ok(CellResult {
        tables: vec![lesions
            .iter()
            .zip(&errors)
            .map(|(l, &e)| l.fields(e, &net))
            .collect()],
        warning,
    })
}

/// One net of the shattered-gradients comparison: the autocorrelation of its input gradient
/// over the sweep, lag by lag.
pub fn run_shatter_cell(spec: &Spec, cell: &Cell) -> Result<CellResult> {
    use crate::analysis::shatter::{autocorrelation, gradients, Family};
    let family = Family {
        residual: cell.arch.shortcut == ShortcutKind::Identity,
        batch_norm: match cell.arch.norm {
            NormKind::Batch => true,
            NormKind::None => false,
            NormKind::Layer => bail!("shatter compares BatchNorm with none"),
        },
    };
    let g = gradients(
        family,
        cell.arch.units,
        spec.sizes.width,
        cell.arch.placement,
        cell_seed(spec, cell.replicate),
    )?;
    let rows = autocorrelation(&g)
        .iter()
        .enumerate()
        .map(|(lag, r)| vec![lag.to_string(), crate::analysis::record::fmt_f64(*r)])
        .collect();
    Ok(CellResult {
        tables: vec![rows],
        warning: None,
    })
}
