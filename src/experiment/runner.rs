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

use super::spec::{Cell, Measure, Spec, Task, TrainSpec};
use crate::analysis::checks::verify_units;
use crate::analysis::gaussian_batch;
use crate::analysis::record::{build_records, fmt_f64, RECORD_COLUMNS};
use crate::data::Split;
use crate::net::{build_net, NetSizes};
use crate::output::write_atomic;
use crate::rng::{derive_seed, purpose};
use crate::train::{sizes_for, train, Resume, TrainConfig, GRAD_COLUMNS, TRAIN_COLUMNS};
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
const VERIFICATION_COLUMNS: [&str; 3] = [
    "forward_sum_error",
    "additive_backward_error",
    "prod_lambda_error",
];

fn keyed(extra: &[&'static str]) -> Vec<&'static str> {
    let mut h: Vec<&str> = KEY_COLUMNS.to_vec();
    h.extend_from_slice(extra);
    h
}

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

/// The key columns of a cell's rows.
fn cell_keys(spec: &Spec, cell: &Cell, units: usize) -> Vec<String> {
    vec![
        spec.name.clone(),
        cell.index.to_string(),
        cell.net.to_string(),
        cell.placement.to_string(),
        cell.shortcut.to_string(),
        units.to_string(),
        cell.replicate.to_string(),
    ]
}

/// What a cell produced: its rows for each output file, and a warning to print.
pub struct CellResult {
    pub rows: Vec<Vec<String>>,
    pub grad_rows: Vec<Vec<String>>,
    pub warning: Option<String>,
}

/// Trains one cell's network (training tasks).
fn run_train_cell(spec: &Spec, cell: &Cell, t: &TrainSpec, data: &Split) -> Result<CellResult> {
    let seed = cell_seed(spec, cell.replicate);
    let sizes = sizes_for(data, cell.units, spec.sizes.width);
    let mut net = build_net(&cell.net, &sizes, cell.placement, cell.shortcut, seed)?;
    let cfg = TrainConfig {
        epochs: t.epochs,
        batch: t.batch,
        base_lr: t.lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        record_every: t.record_every,
        seed,
    };
    let h = train(
        &mut net,
        data,
        &cfg,
        Resume::default(),
        t.epochs,
        |_, _| {},
        |_, _, _, _| Ok(()),
    )?;
    let keys = cell_keys(spec, cell, net.num_units());
    let keyed_rows = |fields: Vec<Vec<String>>| -> Vec<Vec<String>> {
        fields
            .into_iter()
            .map(|f| keys.iter().cloned().chain(f).collect())
            .collect()
    };
    let rows = keyed_rows(h.steps.iter().map(|r| r.csv_fields()).collect());
    let grad_rows = keyed_rows(h.grads.iter().map(|g| g.csv_fields()).collect());
    let warning = h.diverged.map(|d| {
        format!(
            "cell {} ({} {} {}): {d}",
            cell.index, cell.net, cell.placement, cell.shortcut
        )
    });
    Ok(CellResult {
        rows,
        grad_rows,
        warning,
    })
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
        keep_branch: true,
        weight_grads: true,
    };
    let cache = net.forward(&input, &labels, &ctx)?;
    let grads = net.backward(&cache, &labels, None);
    let profile = build_records(&net, &cache, &grads);
    let verification = match spec.measure {
        Measure::Verification => Some(verify_units(&net, &cache, &grads).0),
        Measure::Profile => None,
    };
    let keys = cell_keys(spec, cell, net.num_units());
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

/// The main CSV's file name: `profile.csv`, or `train.csv` (with `grads.csv`) for training.
pub fn main_csv(spec: &Spec) -> &'static str {
    match spec.task {
        Task::Profile => "profile.csv",
        Task::Train(_) => "train.csv",
    }
}

/// Runs every missing cell, then writes the tidy CSV(s) and `spec.toml`. Returns the main CSV
/// and how many cells were computed now (the others were complete from an earlier run).
pub fn run_experiment(spec: &Spec, out: &Path, progress: bool) -> Result<(PathBuf, usize)> {
    let dir = result_dir(out, spec);
    let cells_dir = dir.join("cells");
    std::fs::create_dir_all(&cells_dir)
        .with_context(|| format!("cannot create '{}'", cells_dir.display()))?;
    let data = match &spec.task {
        Task::Train(t) => Some(crate::cli::train::load_data(&t.data)?),
        Task::Profile => None,
    };
    let cells = spec.cells();
    let cell_path = |c: &Cell| cells_dir.join(format!("{:04}.csv", c.index));
    let grads_path = |c: &Cell| cells_dir.join(format!("{:04}.grads.csv", c.index));
    let todo: Vec<&Cell> = cells.iter().filter(|c| !cell_path(c).is_file()).collect();
    let bar = if progress {
        ProgressBar::new(todo.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {pos}/{len} cells, {elapsed} (eta {eta})",
        )
        .unwrap(),
    );
    bar.set_message(spec.name.clone());
    let warnings: Vec<Option<String>> = todo
        .par_iter()
        .map(|cell| {
            // Cells run side by side on rayon's workers: no extra helper thread inside.
            let result = crate::spin_join::without_helper(|| -> Result<CellResult> {
                Ok(match (&spec.task, &data) {
                    (Task::Train(t), Some(d)) => run_train_cell(spec, cell, t, d)?,
                    _ => {
                        let (rows, warning) = run_cell(spec, cell)?;
                        CellResult {
                            rows,
                            grad_rows: Vec::new(),
                            warning,
                        }
                    }
                })
            })?;
            // The gradient file first: the main file's presence marks the cell complete.
            if matches!(spec.task, Task::Train(_)) {
                write_atomic(&grads_path(cell), &csv_bytes(None, &result.grad_rows)?)?;
            }
            write_atomic(&cell_path(cell), &csv_bytes(None, &result.rows)?)?;
            bar.inc(1);
            Ok(result.warning)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    for w in warnings.into_iter().flatten() {
        eprintln!("warning: {}: {w}", spec.name);
    }
    // Assemble in cell order from the per-cell files (so reruns and fresh runs agree byte for byte).
    let assemble =
        |header: Vec<&str>, path_of: &dyn Fn(&Cell) -> PathBuf, name: &str| -> Result<PathBuf> {
            let mut all = csv_bytes(Some(&header), &[])?;
            for cell in &cells {
                let p = path_of(cell);
                all.extend(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
            }
            let out = dir.join(name);
            write_atomic(&out, &all)?;
            Ok(out)
        };
    let main = match spec.task {
        Task::Profile => assemble(header(spec.measure), &cell_path, "profile.csv")?,
        Task::Train(_) => {
            assemble(keyed(&GRAD_COLUMNS), &grads_path, "grads.csv")?;
            assemble(keyed(&TRAIN_COLUMNS), &cell_path, "train.csv")?
        }
    };
    write_atomic(&dir.join("spec.toml"), spec.to_toml()?.as_bytes())?;
    Ok((main, todo.len()))
}
