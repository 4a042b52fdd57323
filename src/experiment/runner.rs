//! Running an experiment: every cell of the grid, in parallel; then the tidy CSVs (one row per
//! cell x unit or step, cell keys as columns) assembled in cell order, with the resolved spec
//! beside them.
//!
//! A cell's seed is derived from (spec seed, replicate) only, so every variant of one replicate
//! starts from the same weights, batch and labels, and no number depends on which thread ran
//! the cell or in what order.
//!
//! Results never describe other inputs than their own. Each cell's result is stored under its
//! *fingerprint*, a digest of everything that determines it (the resolved cell, the spec's
//! settings that reach it, the data's content and the engine's source digest), as
//! `<out>/cells/<fingerprint>.*.csv` beside a `<fingerprint>.toml` that spells the inputs out.
//! A rerun reuses exactly the cells whose fingerprint it finds and computes the others; an
//! edited spec therefore recomputes what the edit changed, and two experiments that contain
//! the same cell (the same net, variant, seed and recipe) share it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use super::spec::{Cell, Measure, Spec, Task, TrainSpec};
use crate::analysis::checks::verify_units;
use crate::analysis::gaussian_batch;
use crate::analysis::record::fmt_f64;
use crate::data::Split;
use crate::float::{same_type, Precision};
use crate::interrupt::Interrupt;
use crate::jobs::{InputSizes, NetDescription};
use crate::net::NetSizes;
use crate::output::{write_atomic, write_own_file};
use crate::rng::derive_seed;
use crate::schema::{self, Row, TableKind};
use crate::train::{sizes_for, train_in, Resume, TrainConfig};

/// The engine that computes results: the crate version and a digest of its sources (made by
/// `build.rs`; the charts and the command line are left out, they only present numbers).
pub const ENGINE: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("RESPROP_ENGINE_HASH"));

/// The tables a spec's cells produce; the first is the main one, written last (its presence
/// marks a cell complete). The weight-input statistics of a training run cost two forward
/// passes: always recorded.
pub fn tables(spec: &Spec) -> Vec<TableKind> {
    spec.task.tables(spec.weight_grads)
}

/// The header of a table of this spec: the keys (with `precision` after `recipe` when a grid
/// runs f32: an f64-only spec's tables are those of every earlier build), then its columns.
pub fn header(spec: &Spec, table: TableKind) -> Vec<&'static str> {
    let mut h = schema::KEYS.names();
    if has_precision_column(spec) {
        h.insert(precision_at(), schema::col::PRECISION.name());
    }
    h.extend(table.columns(spec.measure).iter().map(|c| c.name()));
    h
}

/// Whether the spec's tables have a `precision` key column: when a grid runs f32.
pub fn has_precision_column(spec: &Spec) -> bool {
    spec.grids
        .iter()
        .any(|g| g.precisions.iter().any(|p| !p.is_f64()))
}

/// Where the `precision` key column goes: after `recipe`.
fn precision_at() -> usize {
    schema::KEYS
        .index(schema::col::RECIPE)
        .expect("a key column")
        + 1
}

/// The seed every cell of a replicate shares.
pub fn cell_seed(spec: &Spec, replicate: u64) -> u64 {
    derive_seed(spec.seed, &[replicate])
}

/// The key columns of a cell's rows.
fn cell_keys(spec: &Spec, cell: &Cell, units: usize) -> Vec<String> {
    let mut keys = keys_of(spec, cell, units);
    if has_precision_column(spec) {
        keys.insert(precision_at(), cell.precision.to_string());
    }
    keys
}

/// The columns of [`schema::KEYS`] for a cell's rows.
fn keys_of(spec: &Spec, cell: &Cell, units: usize) -> Vec<String> {
    if let Some(model) = &cell.model {
        // The file is the network: none of the built-in axes describes it.
        use crate::schema::{col, KEYS};
        let mut keys = vec![String::new(); KEYS.len()];
        for (column, value) in [
            (col::EXPERIMENT, spec.name.clone()),
            (col::CELL, cell.index.to_string()),
            (col::NET, model_label(model)),
            (col::REPLICATE, cell.replicate.to_string()),
        ] {
            keys[KEYS.index(column).expect("a key column")] = value;
        }
        keys[KEYS.index(col::UNITS).expect("a key column")] = units.to_string();
        return keys;
    }
    vec![
        spec.name.clone(),
        cell.index.to_string(),
        cell.arch.net.to_string(),
        cell.arch.placement.to_string(),
        cell.arch.shortcut.to_string(),
        cell.arch.norm.to_string(),
        cell.arch.init.to_string(),
        cell.warmup.map(|w| w.to_string()).unwrap_or_default(),
        cell.lr.map(|lr| lr.to_string()).unwrap_or_default(),
        cell.recipe.map(|r| r.to_string()).unwrap_or_default(),
        cell.arch
            .projection
            .map(|p| p.to_string())
            .unwrap_or_default(),
        units.to_string(),
        cell.replicate.to_string(),
    ]
}

/// Everything a cell's numbers depend on, spelled out: its request (the network description as
/// the command line and a checkpoint name it, the sizes, the seed, the job's settings); its
/// digest is the cell's fingerprint. A field added to [`NetDescription`] is part of it without
/// an edit here.
#[derive(Debug, Serialize)]
pub struct CellInputs {
    pub engine: &'static str,
    pub replicate: u64,
    /// The cell's seed (weights, batch, labels, dropout, data order), as a string: TOML's
    /// integers stop at 2^63 - 1.
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub seed: u64,
    /// Profiles: the Gaussian batch's size, what is measured and the BN mode.
    pub batch: Option<usize>,
    pub measure: Option<Measure>,
    pub bn_mode: Option<String>,
    /// A digest of the training data's content.
    pub data_sha256: Option<String>,
    /// `Some(true)` when the spec asks for the plain interpreter.
    pub unfused: Option<bool>,
    /// `Some(true)` when the profile also records the weight gradients (a table more).
    pub weight_grads: Option<bool>,
    /// Training: the warm-up's length, when the spec sets it.
    pub warmup: Option<usize>,
    /// Training: a descendant's own recipe (absent for the common one, so that the cells of
    /// files written before recipes keep their fingerprints).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_recipe"
    )]
    pub recipe: Option<crate::train::Recipe>,
    /// The element type, when not f64 (absent for f64, so that earlier cells keep their
    /// fingerprints).
    #[serde(skip_serializing_if = "crate::float::Precision::is_f64")]
    pub precision: crate::float::Precision,
    /// The analysis a paths, lesion or shatter cell runs (absent for profiles and training).
    pub analysis: Option<String>,
    /// The network, as every front end describes it.
    pub net: NetDescription,
    /// The sizes the network is built with (for training: fitted to the data).
    pub sizes: NetSizes,
    /// Training: the recipe.
    pub train: Option<TrainSpec>,
    /// An imported model: its path and the SHA-256 of its bytes (the fingerprint follows the
    /// file's content, not its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInputs>,
}

fn serialize_recipe<S: serde::Serializer>(
    r: &Option<crate::train::Recipe>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(&r.to_string()),
        None => s.serialize_none(),
    }
}

/// The model file a cell profiles.
#[derive(Debug, Serialize)]
pub struct ModelInputs {
    pub file: String,
    pub sha256: String,
}

/// A model cell's name in the tables and charts: its file name (`resnet18.onnx`).
pub fn model_label(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

/// SHA-256 of a model file, read once per process (a file unreadable here fails the cell
/// that runs it, in one line, before any work).
fn model_sha256(path: &str) -> String {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(h) = seen.lock().unwrap().get(path) {
        return h.clone();
    }
    let h = match crate::input::read(
        std::path::Path::new(path),
        crate::import::graph::MAX_MODEL_BYTES,
        "grid.models",
    ) {
        Ok(bytes) => crate::util::sha256_hex(&bytes),
        Err(e) => format!("unreadable ({e:#})"),
    };
    seen.lock().unwrap().insert(path.to_string(), h.clone());
    h
}

impl CellInputs {
    pub fn of(spec: &Spec, cell: &Cell, data: Option<&(Split, String)>) -> CellInputs {
        let (train, sizes, data_sha256) = match (spec.task.train_spec(), data) {
            (Some(t), Some((d, digest))) => (
                // A grid's learning rate replaces the recipe's: the cell is the run it makes.
                Some(TrainSpec {
                    lr: cell.lr.unwrap_or(t.lr),
                    ..t.clone()
                }),
                sizes_for(d, cell.arch.units, spec.sizes.width),
                Some(digest.clone()),
            ),
            _ => (
                None,
                NetSizes {
                    units: cell.arch.units,
                    ..spec.sizes
                },
                None,
            ),
        };
        // A shatter cell's net takes the scalar input of the sweep and has two outputs.
        let sizes = match spec.task {
            Task::Shatter => NetSizes {
                input_dim: 1,
                image_size: 1,
                input_channels: 1,
                classes: 2,
                ..sizes
            },
            Task::Profile | Task::Train(_) | Task::Paths { .. } | Task::Lesion { .. } => sizes,
        };
        let profile = train.is_none();
        CellInputs {
            engine: ENGINE,
            replicate: cell.replicate,
            seed: cell_seed(spec, cell.replicate),
            batch: profile.then_some(spec.batch),
            measure: profile.then_some(spec.measure),
            bn_mode: profile.then(|| spec.bn_mode.to_string()),
            data_sha256,
            unfused: spec.unfused.then_some(true),
            weight_grads: (profile && spec.weight_grads).then_some(true),
            warmup: cell.warmup,
            recipe: cell.recipe.filter(|&r| r != crate::train::Recipe::Common),
            precision: cell.precision,
            net: cell.arch.clone(),
            sizes,
            train,
            model: cell.model.as_ref().map(|m| ModelInputs {
                file: m.clone(),
                sha256: model_sha256(m),
            }),
            analysis: match &spec.task {
                Task::Profile | Task::Train(_) => None,
                Task::Paths { sample, .. } => Some(format!(
                    "paths, {sample} sampled paths per length, batch {}, BN {}",
                    spec.batch, spec.bn_mode
                )),
                Task::Lesion { draws, .. } => Some(format!("lesion, {draws} draws per k")),
                Task::Shatter => Some(format!(
                    "shatter, {} points",
                    crate::analysis::shatter::POINTS
                )),
            },
        }
    }

    /// The inputs as TOML (saved beside the cell's files, for a person to read).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serialising a cell's inputs")
    }

    /// The first 16 bytes of the SHA-256 of [`CellInputs::to_toml`], in hex.
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.to_toml()?.as_bytes());
        Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// What a cell produced: rows (without keys) for each of the spec's tables, in [`tables`]
/// order, and a warning to print.
pub struct CellResult {
    pub tables: Vec<Vec<Vec<String>>>,
    pub warning: Option<String>,
}

/// One cell's network, built for the data (the cell's seed).
pub(super) fn build_cell_net(
    spec: &Spec,
    cell: &Cell,
    data: &Split,
) -> Result<crate::net::Network> {
    let mut net = cell
        .arch
        .build(&InputSizes::of_data(data), cell_seed(spec, cell.replicate))?;
    net.set_fusion(spec.fusion());
    Ok(net)
}

/// Trains `net` by the spec's recipe; the history, and a warning if it diverged.
pub(super) fn train_cell_net(
    spec: &Spec,
    cell: &Cell,
    t: &TrainSpec,
    data: &Split,
    net: &mut crate::net::Network,
    stop: &Interrupt,
) -> Result<(crate::train::History, Option<String>)> {
    let seed = cell_seed(spec, cell.replicate);
    let cfg = TrainConfig {
        epochs: t.epochs,
        batch: t.batch,
        base_lr: cell.lr.unwrap_or(t.lr),
        momentum: 0.9,
        weight_decay: t.weight_decay,
        optimizer: t.optimizer,
        weight_decay_mode: t.weight_decay_mode,
        warmup: crate::train::Warmup::for_optimizer(t.optimizer, cell.warmup),
        scalar_lr_factor: cell
            .recipe
            .map_or(1.0, crate::train::Recipe::scalar_lr_factor),
        record_every: t.record_every,
        signal: true,
        seed,
    };
    let progress = |row: &crate::train::StepRow, total: usize| {
        stop.check(|| {
            format!(
                "in cell {} after step {} of {}",
                cell.index,
                row.step + 1,
                total
            )
        })?;
        Ok(())
    };
    let h = train_in(
        cell.precision,
        net,
        data,
        &cfg,
        Resume::default(),
        t.epochs,
        progress,
        |_, _, _, _| Ok(()),
    )?;
    let warning = h.diverged.as_ref().map(|d| {
        format!(
            "cell {} ({} {} {}): {d}",
            cell.index, cell.arch.net, cell.arch.placement, cell.arch.shortcut
        )
    });
    Ok((h, warning))
}

/// Trains one cell's network (training tasks).
fn run_train_cell(
    spec: &Spec,
    cell: &Cell,
    t: &TrainSpec,
    data: &Split,
    stop: &Interrupt,
) -> Result<CellResult> {
    let mut net = build_cell_net(spec, cell, data)?;
    let (h, warning) = train_cell_net(spec, cell, t, data, &mut net, stop)?;
    let tables = vec![
        h.steps.iter().map(|r| r.fields()).collect(),
        h.grads.iter().map(|g| g.fields()).collect(),
        h.signal.iter().map(|s| s.fields()).collect(),
    ];
    Ok(CellResult { tables, warning })
}

/// A profile cell's network (the spec's sizes, the cell's depth and seed) and its Gaussian
/// batch.
pub(super) fn build_profile_net(
    spec: &Spec,
    cell: &Cell,
) -> Result<(crate::net::Network, crate::tensor::Tensor, Vec<usize>)> {
    let seed = cell_seed(spec, cell.replicate);
    let mut net = cell.arch.build(&InputSizes::of(&spec.sizes), seed)?;
    net.set_fusion(spec.fusion());
    let (input, labels) = gaussian_batch(&net.input_shape, spec.batch, net.classes, seed);
    Ok((net, input, labels))
}

/// Runs one profile cell and returns its rows (no keys; with the weight gradients' when the
/// spec asks), plus a warning if anything overflowed.
pub fn run_cell(spec: &Spec, cell: &Cell) -> Result<CellResult> {
    let (analysis, job) = match &cell.model {
        Some(model) => {
            // `resprop profile --model` with the spec's batch, BN mode and the cell's seed.
            let request = crate::jobs::NetRequest {
                model: Some(model.into()),
                batch: spec.batch,
                bn_mode: spec.bn_mode,
                seed: cell_seed(spec, cell.replicate),
                ..crate::jobs::NetRequest::defaults()
            };
            let job = crate::jobs::ProfileJob {
                net: request.clone(),
                low_memory: false,
                weight_grads: spec.weight_grads,
                npz: false,
                precision: crate::float::Precision::F64,
            };
            let analysis = request
                .prepare(job.purpose())
                .map_err(|e| anyhow::anyhow!("grid.models: {e:#}"))?;
            (analysis, job)
        }
        None => builtin_profile(spec, cell)?,
    };
    let stop = Interrupt::new();
    match cell.precision {
        Precision::F64 => profile_rows(spec, cell, job.run_prepared::<f64>(analysis, &stop)?),
        Precision::F32 => profile_rows(spec, cell, job.run_prepared::<f32>(analysis, &stop)?),
    }
}

/// A built-in profile cell's analysis and job: the cell's network on its Gaussian batch.
fn builtin_profile(
    spec: &Spec,
    cell: &Cell,
) -> Result<(crate::jobs::Analysis, crate::jobs::ProfileJob)> {
    let (net, input, labels) = build_profile_net(spec, cell)?;
    // The command line's profile job, on the cell's network and batch.
    let request = crate::jobs::NetRequest {
        arch: cell.arch.clone(),
        input_dim: spec.sizes.input_dim,
        image_size: spec.sizes.image_size,
        classes: spec.sizes.classes,
        batch: spec.batch,
        bn_mode: spec.bn_mode,
        seed: cell_seed(spec, cell.replicate),
        threads: None,
        unfused: spec.unfused,
        weights: None,
        data: None,
        model: None,
        input_shape: None,
        given: Default::default(),
    };
    let job = crate::jobs::ProfileJob {
        net: request.clone(),
        low_memory: false,
        weight_grads: spec.weight_grads,
        npz: false,
        precision: cell.precision,
    };
    let analysis = crate::jobs::Analysis {
        args: request,
        net,
        input,
        labels,
        data: None,
    };
    Ok((analysis, job))
}

/// A profile cell's rows (and its verification columns, its weight gradients' rows), plus a
/// warning if anything overflowed.
fn profile_rows<T: crate::float::Float>(
    spec: &Spec,
    cell: &Cell,
    run: crate::jobs::profile::ProfileRun<T>,
) -> Result<CellResult> {
    let (net, cache, grads, param_grads, profile) = (
        &run.analysis.net,
        &run.cache,
        &run.grads,
        &run.param_grads,
        &run.profile,
    );
    let verification = match spec.measure {
        // f64 only (the spec refuses f32 with the verification).
        Measure::Verification => Some(
            verify_units(
                net,
                same_type(cache).expect("an f64 run"),
                same_type(grads).expect("an f64 run"),
            )
            .0,
        ),
        Measure::Profile => None,
    };
    let rows = profile
        .records
        .iter()
        .enumerate()
        .map(|(l, r)| {
            let mut row = r.fields();
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
            cell.arch.net,
            cell.arch.placement,
            cell.arch.shortcut,
            cols.join(", ")
        )
    });
    let mut tables = vec![rows];
    if spec.weight_grads {
        tables.push(
            crate::analysis::record::weight_grad_rows(net, param_grads)
                .iter()
                .map(|r| r.fields())
                .collect(),
        );
    }
    Ok(CellResult { tables, warning })
}

/// Rows of a stored cell table (one record per line, no header).
fn count_lines(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
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

/// The store of cell results shared by every experiment written to `out`.
pub fn cell_store(out: &Path) -> PathBuf {
    out.join("cells")
}

/// The main CSV's file name: `profile.csv`, or `train.csv` (with `grads.csv`) for training.
pub fn main_csv(spec: &Spec) -> String {
    format!("{}.csv", tables(spec)[0].name)
}

/// A cell's fingerprint and where its tables are stored.
struct StoredCell<'a> {
    cell: &'a Cell,
    inputs: CellInputs,
    fingerprint: String,
}

impl StoredCell<'_> {
    fn path(&self, store: &Path, table: TableKind) -> PathBuf {
        store.join(format!("{}.{}.csv", self.fingerprint, table.name))
    }

    /// The cell's manifest: its inputs, then each table's row count and SHA-256. Written after
    /// the tables, so its presence marks the cell complete.
    fn manifest_path(&self, store: &Path) -> PathBuf {
        store.join(format!("{}.toml", self.fingerprint))
    }

    /// Whether the stored cell can be reused: its manifest and every table it lists, each
    /// with the bytes it recorded.
    fn state(&self, store: &Path, kinds: &[TableKind]) -> CellState {
        let manifest = self.manifest_path(store);
        let Ok(text) =
            crate::input::read_text(&manifest, crate::input::MAX_SPEC_BYTES, "cell manifest")
        else {
            return if kinds.iter().any(|k| self.path(store, *k).exists()) {
                CellState::Damaged(
                    "its tables are there but not its manifest (the run that wrote them stopped)"
                        .into(),
                )
            } else {
                CellState::Missing
            };
        };
        let stored = match text.parse::<toml::Table>() {
            Ok(t) => t.get("stored").and_then(|s| s.as_table()).cloned(),
            Err(_) => None,
        };
        let Some(stored) = stored else {
            return CellState::Damaged(format!(
                "its manifest {} is unreadable or lists no tables",
                manifest.display()
            ));
        };
        // The manifest starts with the inputs its tables were computed from: a manifest and
        // tables copied over from another cell carry that cell's inputs.
        match self.inputs.to_toml() {
            Ok(inputs) if text.starts_with(&inputs) => {}
            _ => {
                return CellState::Damaged(format!(
                    "its manifest {} describes another cell's inputs (copied or swapped from another cell)",
                    manifest.display()
                ))
            }
        }
        for kind in kinds {
            let path = self.path(store, *kind);
            let want = stored
                .get(kind.name)
                .and_then(|t| t.get("sha256"))
                .and_then(|v| v.as_str());
            let Some(want) = want else {
                return CellState::Damaged(format!("its manifest lists no {} table", kind.name));
            };
            match crate::input::read(&path, crate::input::MAX_TABLE_BYTES, "cell table") {
                Ok(bytes) if crate::util::sha256_hex(&bytes) == want => {}
                Ok(_) => {
                    return CellState::Damaged(format!(
                    "{} is not the file the run wrote (its SHA-256 differs: cut short, or edited)",
                    path.display()
                ))
                }
                Err(e) => return CellState::Damaged(format!("{e}")),
            }
        }
        CellState::Complete
    }

    /// Writes the cell's tables, then its manifest.
    fn store(&self, store: &Path, kinds: &[TableKind], tables: &[Vec<Vec<String>>]) -> Result<()> {
        let mut manifest = self.inputs.to_toml()?;
        for (kind, rows) in kinds.iter().zip(tables) {
            let bytes = csv_bytes(None, rows)?;
            write_own_file(&self.path(store, *kind), &bytes)?;
            manifest.push_str(&format!(
                "\n[stored.{}]\nrows = {}\nsha256 = \"{}\"\n",
                kind.name,
                rows.len(),
                crate::util::sha256_hex(&bytes)
            ));
        }
        write_own_file(&self.manifest_path(store), manifest.as_bytes())
    }
}

/// Whether a cell's result is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CellState {
    Complete,
    Missing,
    /// Stored, but not as the run wrote it: recomputed by `run`, refused by `merge`.
    Damaged(String),
}

/// Runs every cell whose result is not stored yet, then writes the tidy CSV(s) and
/// `spec.toml`. Returns the main CSV and how many cells were computed now (the others were
/// found, with the same fingerprint, from an earlier run).
pub fn run_experiment(spec: &Spec, out: &Path, how: &HowToRun) -> Result<(PathBuf, usize)> {
    let computed = compute_cells(spec, out, how, &Interrupt::new())?;
    Ok((assemble(spec, out)?, computed))
}

/// How [`compute_cells`] runs: with a progress bar, one shard of the cells, past the time
/// estimate.
#[derive(Debug, Clone, Copy, Default)]
pub struct HowToRun {
    pub progress: bool,
    pub shard: Option<Shard>,
    /// Run even when the cells to compute are estimated to take more than a day.
    pub force: bool,
}

/// One shard of an experiment's cells: those with `index % count == index_of_shard`
/// (0-based, as `SLURM_ARRAY_TASK_ID` and Kubernetes' `JOB_COMPLETION_INDEX` count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard '{s}': expected I/N with 0 <= I < N, e.g. 3/16");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    pub fn owns(&self, cell_index: usize) -> bool {
        cell_index % self.count == self.index
    }
}

/// The stored cells of `spec` in `out` and their fingerprints.
fn stored_cells<'a>(
    spec: &Spec,
    cells: &'a [Cell],
    data: Option<&(Split, String)>,
) -> Result<Vec<StoredCell<'a>>> {
    cells
        .iter()
        .map(|cell| {
            let inputs = CellInputs::of(spec, cell, data);
            Ok(StoredCell {
                cell,
                fingerprint: inputs.fingerprint()?,
                inputs,
            })
        })
        .collect()
}

/// Refuses a training spec whose warm-up (`train.warmup_steps` or a grid's `warmups`) is
/// longer than its runs, now that the data's size is known.
fn refuse_long_warmups(spec: &Spec, cells: &[Cell], data: Option<&Split>) -> Result<()> {
    let (Some(t), Some(data)) = (spec.task.train_spec(), data) else {
        return Ok(());
    };
    if data.train.len() < t.batch {
        return Ok(()); // training refuses it, naming the batch
    }
    let per_epoch = crate::train::steps_per_epoch(data.train.len(), t.batch);
    for c in cells {
        crate::train::check_warmup(
            crate::train::Warmup::for_optimizer(t.optimizer, c.warmup),
            t.epochs,
            per_epoch,
            data.train.len(),
            t.batch,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cell {}, its warm-up (train.warmup_steps or the grid's warmups): {e}",
                spec.name,
                c.index
            )
        })?;
    }
    Ok(())
}

/// The data a spec's cells train on, with its digest.
fn load_data(spec: &Spec) -> Result<Option<(Split, String)>> {
    match spec.task.train_spec() {
        Some(t) => {
            let d = t
                .data
                .parse()
                .map_err(anyhow::Error::msg)
                .and_then(|d| crate::data::load(&d))
                .with_context(|| format!("{}: train.data = \"{}\"", spec.name, t.data))?;
            let d = t
                .subsets
                .apply(
                    d,
                    [
                        "train.train_subset",
                        "train.test_subset",
                        "train.downsample",
                    ],
                )
                .with_context(|| spec.name.clone())?;
            let digest = d.fingerprint();
            Ok(Some((d, digest)))
        }
        None => Ok(None),
    }
}

/// Assembles the experiment's tidy CSVs and `spec.toml` from the stored cells, in cell order
/// (so sharded, rerun and fresh runs agree byte for byte), each row prefixed with the cell's
/// keys; refuses, listing them, when cells are missing. Returns the main CSV.
pub fn assemble(spec: &Spec, out: &Path) -> Result<PathBuf> {
    let dir = result_dir(out, spec);
    let store = cell_store(out);
    let data = load_data(spec)?;
    let kinds = tables(spec);
    let cells = spec.cells();
    let stored = stored_cells(spec, &cells, data.as_ref())?;
    let states: Vec<CellState> = stored.iter().map(|c| c.state(&store, &kinds)).collect();
    if let Some((c, CellState::Damaged(why))) = stored
        .iter()
        .zip(&states)
        .find(|(_, s)| matches!(s, CellState::Damaged(_)))
    {
        anyhow::bail!(
            "{}: cell {} in '{}' is damaged: {why}; run its shard again (resprop run recomputes it)",
            spec.name,
            c.cell.index,
            store.display()
        );
    }
    let missing: Vec<String> = stored
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == CellState::Missing)
        .map(|(c, _)| c.cell.index.to_string())
        .collect();
    if !missing.is_empty() {
        let shown = if missing.len() > 20 {
            format!("{}, ...", missing[..20].join(", "))
        } else {
            missing.join(", ")
        };
        anyhow::bail!(
            "{}: {} of {} cells are not in '{}' yet: {shown} (run their shards, or resprop run without --shard)",
            spec.name,
            missing.len(),
            cells.len(),
            store.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let mut main = None;
    for kind in &kinds {
        let mut rows = Vec::new();
        for sc in &stored {
            let p = sc.path(&store, *kind);
            let bytes = crate::input::read(&p, crate::input::MAX_TABLE_BYTES, "cell table")?;
            let units = match &sc.cell.model {
                // The file fixes the depth: its profile has a row per unit and the top.
                Some(_) if *kind == TableKind::PROFILE => count_lines(&bytes).saturating_sub(1),
                Some(_) => {
                    let profile = sc.path(&store, TableKind::PROFILE);
                    let bytes =
                        crate::input::read(&profile, crate::input::MAX_TABLE_BYTES, "cell table")?;
                    count_lines(&bytes).saturating_sub(1)
                }
                None => sc.cell.arch.residual_units(),
            };
            let keys = cell_keys(spec, sc.cell, units);
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(bytes.as_slice());
            for rec in r.records() {
                let rec = rec.with_context(|| format!("malformed cell file {}", p.display()))?;
                rows.push(
                    keys.iter()
                        .cloned()
                        .chain(rec.iter().map(String::from))
                        .collect(),
                );
            }
        }
        let path = dir.join(format!("{}.csv", kind.name));
        write_atomic(&path, &csv_bytes(Some(&header(spec, *kind)), &rows)?)?;
        main.get_or_insert(path);
    }
    write_atomic(&dir.join("spec.toml"), spec.to_toml()?.as_bytes())?;
    Ok(main.expect("every task has a table"))
}

/// Computes every cell (of `shard`, when given) whose result is not stored yet; returns how
/// many it computed. A request on `stop` fails the call with [`crate::interrupt::Interrupted`] before the next
/// cell starts (and between a training cell's steps); the cells finished by then are stored.
pub fn compute_cells(spec: &Spec, out: &Path, how: &HowToRun, stop: &Interrupt) -> Result<usize> {
    let HowToRun {
        progress,
        shard,
        force,
    } = *how;
    let store = cell_store(out);
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create '{}'", store.display()))?;
    let data = load_data(spec)?;
    let kinds = tables(spec);
    let cells = spec.cells();
    refuse_long_warmups(spec, &cells, data.as_ref().map(|(d, _)| d))?;
    let stored = stored_cells(spec, &cells, data.as_ref())?;
    // What a run killed mid-write left behind.
    crate::output::sweep_stale_temps(&store, None);
    let mut todo: Vec<&StoredCell> = Vec::new();
    for c in stored
        .iter()
        .filter(|c| shard.is_none_or(|s| s.owns(c.cell.index)))
    {
        match c.state(&store, &kinds) {
            CellState::Complete => {}
            CellState::Missing => todo.push(c),
            CellState::Damaged(why) => {
                eprintln!(
                    "warning: {}: cell {} is damaged ({why}): computing it again",
                    spec.name, c.cell.index
                );
                todo.push(c);
            }
        }
    }
    // Before anything runs: the cells must finish within the time bound (or be forced) ...
    let work: crate::budget::Work = todo
        .iter()
        .map(|sc| cell_work(spec, sc, data.as_ref().map(|(d, _)| d)))
        .sum();
    crate::budget::ensure_feasible(
        &format!("{}: {} cells to compute", spec.name, todo.len()),
        work,
        force,
    )?;
    // ... and every cell that will run must fit, with the others running beside it (as many
    // as there are threads).
    let side_by_side = rayon::current_num_threads().min(todo.len()).max(1) as f64;
    for sc in &todo {
        let batch = match (&spec.task, spec.task.train_spec()) {
            // Evaluation runs in batches of 500.
            (_, Some(t)) => t.batch.max(500).max(spec.batch),
            (Task::Shatter, None) => crate::analysis::shatter::POINTS,
            (Task::Profile | Task::Train(_) | Task::Paths { .. } | Task::Lesion { .. }, None) => {
                spec.batch
            }
        };
        let purpose = match spec.task.train_spec() {
            Some(_) => crate::net::memory::Purpose::Train,
            None => crate::net::memory::Purpose::Check,
        };
        let mut e = sc
            .cell
            .arch
            .memory(&InputSizes::of(&sc.inputs.sizes), batch, purpose);
        // The threads' scratch is shared by the cells that run on them: counted once.
        e.total = (e.total - e.scratch) * side_by_side + e.scratch;
        crate::net::memory::ensure_fits(
            &e,
            &format!(
                "{}: cell {} ({} {} {}, {} side by side)",
                spec.name,
                sc.cell.index,
                sc.cell.arch.net,
                sc.cell.arch.placement,
                sc.cell.arch.shortcut,
                side_by_side
            ),
        )?;
    }
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
        .map(|sc| {
            let cell = sc.cell;
            stop.check(|| {
                format!(
                    "before cell {} ({} of {} done)",
                    cell.index,
                    bar.position(),
                    todo.len()
                )
            })?;
            // Cells run side by side on rayon's workers: no extra helper thread inside.
            let result = crate::spin_join::without_helper(|| -> Result<CellResult> {
                let data = data.as_ref().map(|(d, _)| d);
                Ok(match (&spec.task, data) {
                    (Task::Train(t), Some(d)) => run_train_cell(spec, cell, t, d, stop)?,
                    (Task::Paths { train, sample }, d) => super::analyses::run_paths_cell(
                        spec,
                        cell,
                        train.as_ref(),
                        *sample,
                        d,
                        stop,
                    )?,
                    (Task::Lesion { train, draws }, Some(d)) => {
                        super::analyses::run_lesion_cell(spec, cell, train, *draws, d, stop)?
                    }
                    (Task::Shatter, _) => super::analyses::run_shatter_cell(spec, cell)?,
                    (Task::Profile, _) => run_cell(spec, cell)?,
                    (Task::Train(_) | Task::Lesion { .. }, None) => {
                        anyhow::bail!("{}: a training task without its data", spec.name)
                    }
                })
            })?;
            sc.store(&store, &kinds, &result.tables)?;
            bar.inc(1);
            Ok(result.warning)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    for w in warnings.into_iter().flatten() {
        eprintln!("warning: {}: {w}", spec.name);
    }
    Ok(todo.len())
}

/// The least work of computing a cell (see `budget`): its training, then its analysis.
fn cell_work(spec: &Spec, sc: &StoredCell, data: Option<&Split>) -> crate::budget::Work {
    let input = InputSizes::of(&sc.inputs.sizes);
    let pass = |batch: usize, passes: f64| sc.cell.arch.pass_work(&input, batch, passes);
    let (train_n, test_n) = data.map_or((0, 0), |d| (d.train.len(), d.test.len()));
    let training = |t: &TrainSpec| {
        pass(
            t.batch,
            t.epochs as f64 * train_n.div_ceil(t.batch.max(1)) as f64,
        )
    };
    let lengths = (sc.cell.arch.residual_units() + 1) as f64;
    match &spec.task {
        Task::Profile => match spec.measure {
            Measure::Profile => pass(spec.batch, 1.0),
            // O(L^2) unit VJPs: about L / 3 passes.
            Measure::Verification => pass(spec.batch, 1.0 + lengths / 3.0),
        },
        Task::Train(t) => training(t),
        Task::Paths { train, sample } => {
            train.as_ref().map(training).unwrap_or_default()
                + pass(spec.batch, lengths / 3.0 * (1.0 + *sample as f64))
        }
        Task::Lesion { train, draws } => {
            let lesions = lengths + *draws as f64 * (lengths / 2.0);
            training(train) + pass(test_n, lesions / 3.0)
        }
        Task::Shatter => pass(crate::analysis::shatter::POINTS, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::parse_spec;

    const SPEC: &str = r#"
name = "t"
claim = "c"
[net]
units = 3
width = 4
[grid]
placements = ["original"]
shortcuts = ["identity", "scale:0.5"]
"#;

    #[test]
    fn fingerprints_follow_every_input_and_nothing_else() {
        let spec = parse_spec(SPEC).unwrap();
        let cells = spec.cells();
        let fp = |s: &Spec, c: &Cell| CellInputs::of(s, c, None).fingerprint().unwrap();
        let base = fp(&spec, &cells[0]);
        assert_eq!(base.len(), 32);
        assert_ne!(base, fp(&spec, &cells[1]), "the shortcut is an input");
        // The experiment's name and the cell's index are not inputs: renaming the experiment
        // or reordering the grid reuses the cell.
        let renamed = parse_spec(&SPEC.replace("name = \"t\"", "name = \"u\"")).unwrap();
        assert_eq!(base, fp(&renamed, &renamed.cells()[0]));
        let reordered =
            parse_spec(&SPEC.replace("\"identity\", \"scale:0.5\"", "\"scale:0.5\", \"identity\""))
                .unwrap();
        assert_eq!(base, fp(&reordered, &reordered.cells()[1]));
        for (from, to) in [
            ("seed = 0\n", "seed = 1\n"),
            ("width = 4", "width = 5"),
            ("units = 3", "units = 4"),
        ] {
            let text = if from.starts_with("seed") {
                format!("seed = 1\n{SPEC}")
            } else {
                SPEC.replace(from, to)
            };
            let other = parse_spec(&text).unwrap();
            assert_ne!(base, fp(&other, &other.cells()[0]), "{from} -> {to}");
        }
        let batch = parse_spec(&format!("batch = 8\n{SPEC}")).unwrap();
        assert_ne!(base, fp(&batch, &batch.cells()[0]), "batch");
    }
}
