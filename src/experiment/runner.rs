//! Running an experiment: every cell of the grid, in parallel, each result written atomically
//! to `cells/<index>.csv`; then the tidy `profile.csv` (one row per cell x unit, cell keys as
//! columns) assembled in cell order, with the resolved spec beside it.
//!
//! A cell's seed is derived from (spec seed, replicate) only, so every variant of one replicate
//! starts from the same weights, batch and labels, and no number depends on which thread ran
//! the cell or in what order. A rerun skips cells whose result file exists.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::spec::{Cell, Measure, Spec};
use crate::analysis::checks::verify_units;
use crate::analysis::gaussian_batch;
use crate::analysis::record::{build_records, fmt_f64};
use crate::net::{build_net, NetSizes};
use crate::output::write_atomic;
use crate::rng::{derive_seed, purpose};
use crate::unit::ForwardCtx;

/// Key columns, then the record's columns, then (verification) the per-unit errors.
pub const KEY_COLUMNS: [&str; 7] = [
    "experiment",
    "cell",
    "net",
    "placement",
    "shortcut",
    "units",
    "replicate",
];
const RECORD_COLUMNS: [&str; 16] = [
    "unit",
    "stage",
    "stage_top",
    "shape_change",
    "act_norm",
    "branch_norm",
    "grad_norm",
    "direct_norm",
    "rest_norm",
    "grad_ratio",
    "direct_ratio",
    "predicted_direct_ratio",
    "cos_top",
    "sample_ratio_min",
    "sample_ratio_median",
    "sample_ratio_max",
];
const VERIFICATION_COLUMNS: [&str; 3] = [
    "forward_sum_error",
    "additive_backward_error",
    "prod_lambda_error",
];

pub fn header(measure: Measure) -> Vec<&'static str> {
    let mut h: Vec<&str> = KEY_COLUMNS.to_vec();
    h.extend(RECORD_COLUMNS);
    if measure == Measure::Verification {
        h.extend(VERIFICATION_COLUMNS);
    }
    h
}

/// The seed every cell of a replicate shares.
pub fn cell_seed(spec: &Spec, replicate: u64) -> u64 {
    derive_seed(spec.seed, &[replicate])
}

/// Runs one cell and returns its CSV rows (no header), plus a warning if anything overflowed.
pub fn run_cell(spec: &Spec, cell: &Cell) -> Result<(Vec<Vec<String>>, Option<String>)> {
    let seed = cell_seed(spec, cell.replicate);
    let sizes = NetSizes {
        units: cell.units,
        ..spec.sizes
    };
    let net = build_net(&cell.net, &sizes, cell.placement, cell.shortcut, seed)?;
    let (input, labels) = gaussian_batch(&net.input_shape, spec.batch, net.classes, seed);
    let ctx = ForwardCtx {
        mode: spec.bn_mode,
        dropout_seed: derive_seed(seed, &[purpose::DROPOUT]),
    };
    let cache = net.forward(&input, &labels, &ctx)?;
    let grads = net.backward(&cache, &labels, None);
    let profile = build_records(&net, &cache, &grads);
    let verification = match spec.measure {
        Measure::Verification => Some(verify_units(&net, &cache, &grads).0),
        Measure::Profile => None,
    };
    let keys = [
        spec.name.clone(),
        cell.index.to_string(),
        cell.net.to_string(),
        cell.placement.to_string(),
        cell.shortcut.to_string(),
        net.num_units().to_string(),
        cell.replicate.to_string(),
    ];
    let rows = profile
        .records
        .iter()
        .enumerate()
        .map(|(l, r)| {
            let mut row: Vec<String> = keys.to_vec();
            row.extend(r.csv_fields());
            if let Some(v) = &verification {
                let opt = |x: Option<f64>| x.map(fmt_f64).unwrap_or_default();
                row.extend([
                    opt(v[l].forward_sum),
                    fmt_f64(v[l].additive_backward),
                    opt(v[l].prod_lambda),
                ]);
            }
            row
        })
        .collect();
    let warning = (!profile.nonfinite.is_empty()).then(|| {
        let cols: Vec<String> = profile
            .nonfinite
            .iter()
            .map(|n| format!("{} from unit {}", n.column, n.first_unit))
            .collect();
        format!(
            "cell {} ({} {} {}): non-finite values: {}",
            cell.index,
            cell.net,
            cell.placement,
            cell.shortcut,
            cols.join(", ")
        )
    });
    Ok((rows, warning))
}

fn csv_bytes(header: Option<&[&str]>, rows: &[Vec<String>]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if let Some(h) = header {
        w.write_record(h)?;
    }
    for r in rows {
        w.write_record(r)?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))
}

/// Where an experiment's results go: `<out>/<name>/`.
pub fn result_dir(out: &Path, spec: &Spec) -> PathBuf {
    out.join(&spec.name)
}

/// Runs every missing cell, then writes `profile.csv` and `spec.toml`. Returns the CSV path.
pub fn run_experiment(spec: &Spec, out: &Path, progress: bool) -> Result<PathBuf> {
    let dir = result_dir(out, spec);
    let cells_dir = dir.join("cells");
    std::fs::create_dir_all(&cells_dir)
        .with_context(|| format!("cannot create '{}'", cells_dir.display()))?;
    let cells = spec.cells();
    let cell_path = |c: &Cell| cells_dir.join(format!("{:04}.csv", c.index));
    let todo: Vec<&Cell> = cells.iter().filter(|c| !cell_path(c).is_file()).collect();
    let bar = if progress {
        ProgressBar::new(todo.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {pos}/{len} cells, {elapsed} (eta {eta})",
        )
        .unwrap(),
    );
    bar.set_message(spec.name.clone());
    let warnings: Vec<Option<String>> = todo
        .par_iter()
        .map(|cell| {
            let (rows, warning) = run_cell(spec, cell)?;
            write_atomic(&cell_path(cell), &csv_bytes(None, &rows)?)?;
            bar.inc(1);
            Ok(warning)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    for w in warnings.into_iter().flatten() {
        eprintln!("warning: {}: {w}", spec.name);
    }
    // Assemble in cell order from the per-cell files (so reruns and fresh runs agree byte for byte).
    let mut all = csv_bytes(Some(&header(spec.measure)), &[])?;
    for cell in &cells {
        all.extend(
            std::fs::read(cell_path(cell))
                .with_context(|| format!("reading {}", cell_path(cell).display()))?,
        );
    }
    let csv_path = dir.join("profile.csv");
    write_atomic(&csv_path, &all)?;
    write_atomic(&dir.join("spec.toml"), spec.to_toml()?.as_bytes())?;
    Ok(csv_path)
}
