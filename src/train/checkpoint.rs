//! Training checkpoints: the complete state at an epoch boundary (parameters, momentum buffers,
//! BN running statistics, the epoch reached and the history so far), one `.npz` written
//! atomically. Random draws derive from (seed, epoch or step), so no generator state is needed.
//!
//! A checkpoint also records the run's configuration (network, recipe, seed, data digest): a
//! resume with any setting that would change the computation is refused, naming the setting
//! and both values, because the promise is a result bit-identical to an uninterrupted run.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array, Array1, Array2, Dimension};
use ndarray_npy::{NpzReader, NpzWriter, ReadNpyError, ReadNpzError, ReadableElement};

use super::{History, Optimizer, Resume, SignalRow};
use crate::net::Network;
use crate::schema::NumericRow;

pub const FILE: &str = "checkpoint.npz";

/// The file in a checkpoint directory that the run writing there holds locked.
pub const LOCK_FILE: &str = "checkpoint.lock";

/// A checkpoint directory held by one run: an exclusive lock on `DIR/checkpoint.lock`, released
/// when this is dropped (or the process ends). The file stays: removing it would let a run that
/// had opened it lock a file no later run sees.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the lock of the checkpoint directory `dir` (which exists) for this run; refuses in one
/// line when another run holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            anyhow!(
                "--checkpoint: cannot open the lock file '{}': {e}",
                path.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "--checkpoint: '{}' is in use by another training run (it holds '{}'); wait for it to end or give another directory",
            dir.display(),
            path.display()
        ),
        // A file system without locks: run unguarded rather than not at all.
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(DirLock { _file: file })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            bail!("--checkpoint: cannot lock '{}': {e}", path.display())
        }
    }
}

/// What the checkpoint at `path` holds, in words: its network, how far it got, its seed and
/// data (or that it cannot be read as a checkpoint).
pub fn describe(path: &Path) -> String {
    let read = || -> Result<String> {
        let mut npz = NpzReader::new(File::open(path)?)?;
        let ctx = |what: &str| what.to_string();
        let c = read_config(&mut npz, &ctx)?;
        let done: Array1<f64> =
            read_array(&mut npz, "epochs_done", &ctx)?.ok_or_else(|| anyhow!("no epochs_done"))?;
        let size = if c.width > 0 {
            format!("{} units of width {}", c.units, c.width)
        } else {
            format!("{} units", c.units)
        };
        Ok(format!(
            "{} with {size}, {} of {} epochs done, seed {}, on {}",
            c.net,
            done.first().copied().unwrap_or(f64::NAN),
            c.epochs,
            c.seed,
            c.data
        ))
    };
    read().unwrap_or_else(|e| format!("a file that is not a readable checkpoint: {e}"))
}

/// Numeric rows as an array, one row each, in their schema's column order.
fn rows_array<R: NumericRow>(rows: &[R]) -> Array2<f64> {
    let mut a = Array2::from_elem((rows.len(), R::SCHEMA.len()), f64::NAN);
    for (i, r) in rows.iter().enumerate() {
        for (j, v) in r.numbers().into_iter().enumerate() {
            a[[i, j]] = v;
        }
    }
    a
}

/// The rows an array of [`rows_array`] holds; an array of another width is refused.
fn rows_from_array<R: NumericRow>(a: &Array2<f64>, path: &Path) -> Result<Vec<R>> {
    if a.ncols() != R::SCHEMA.len() {
        bail!(
            "checkpoint '{}': its {} table has {} columns, this build's has {} ({})",
            path.display(),
            R::SCHEMA.name,
            a.ncols(),
            R::SCHEMA.len(),
            R::SCHEMA.names().join(", ")
        );
    }
    Ok(a.rows()
        .into_iter()
        .map(|r| R::from_numbers(&r.to_vec()))
        .collect())
}

/// The weight-input records as JSON rows `[when, unit, layer, mean, var]` (floats round-trip).
fn signal_json(h: &History) -> Result<Vec<u8>> {
    let rows: Vec<serde_json::Value> = h
        .signal
        .iter()
        .map(|r| {
            serde_json::json!([
                r.when,
                r.input.unit,
                r.input.layer,
                r.input.mean,
                r.input.var
            ])
        })
        .collect();
    Ok(serde_json::to_vec(&rows)?)
}

fn signal_from_json(bytes: &[u8]) -> Result<Vec<SignalRow>> {
    let rows: Vec<(String, usize, String, f64, f64)> = serde_json::from_slice(bytes)?;
    rows.into_iter()
        .map(|(when, unit, layer, mean, var)| {
            let when = match when.as_str() {
                "init" => "init",
                "trained" => "trained",
                other => bail!("unknown snapshot '{other}'"),
            };
            Ok(SignalRow {
                when,
                input: crate::analysis::signal::WeightInput {
                    unit,
                    layer,
                    mean,
                    var,
                },
            })
        })
        .collect()
}

/// Everything that determines a training run's numbers, as a resume must find it again.
/// (`--stop-after-epochs`, the output paths and the thread count do not change a number.)
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    pub net: String,
    pub units: usize,
    pub width: usize,
    pub placement: String,
    pub shortcut: String,
    /// The projection convention of a ResNet's shape-changing units, resolved; empty for the MLP.
    pub projection: String,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// `sgd` or `adam` (absent from checkpoints written before Adam: SGD).
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    /// Adam's weight decay: `decoupled` or `l2`; empty for SGD.
    #[serde(default)]
    pub weight_decay_mode: String,
    /// What filled the normalisation slots (absent before `--norm`: batch).
    #[serde(default = "default_norm")]
    pub norm: String,
    /// How the weights started (absent before `--init`: he).
    #[serde(default = "default_init")]
    pub init: String,
    pub warmup: String,
    /// common or a descendant's own (absent before `--recipe`: common).
    #[serde(default = "default_recipe")]
    pub recipe: String,
    pub record_every: usize,
    pub seed: u64,
    pub data: String,
    pub data_sha256: String,
    /// The element type the run steps in (absent for f64, and before `--precision`). The
    /// checkpoint holds f64 arrays either way: an f32 run's values, widened exactly.
    #[serde(default, skip_serializing_if = "crate::float::Precision::is_f64")]
    pub precision: crate::float::Precision,
}

fn default_optimizer() -> String {
    "sgd".into()
}

fn default_recipe() -> String {
    "common".into()
}

fn default_norm() -> String {
    "batch".into()
}

fn default_init() -> String {
    "he".into()
}

impl RunConfig {
    /// The settings in which `self` (the checkpoint's) and `now` differ, as
    /// `name: checkpoint A, now B`.
    pub fn differences(&self, now: &RunConfig) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).expect("plain fields"),
            serde_json::to_value(now).expect("plain fields"),
        );
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        // A field left out of one side (precision f64) counts as differing from the other's.
        let only_now: Vec<(&String, &serde_json::Value)> =
            b.iter().filter(|(k, _)| !a.contains_key(*k)).collect();
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| (k, Some(v)))
            .chain(only_now.into_iter().map(|(k, _)| (k, None)))
            .map(|(k, v)| {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or("none".to_string(), |v| match v {
                        serde_json::Value::String(s) if s.is_empty() => "none".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                };
                // A field left out is at its default (precision: f64).
                let default = || (k == "precision").then(|| "f64".to_string());
                let (was, now) = (
                    v.map_or_else(
                        || default().unwrap_or_else(|| show(None)),
                        |v| show(Some(v)),
                    ),
                    b.get(k).map_or_else(
                        || default().unwrap_or_else(|| show(None)),
                        |v| show(Some(v)),
                    ),
                );
                format!("{}: checkpoint {was}, now {now}", k.replace('_', "-"))
            })
            .collect()
    }
}

/// Saves the state after `epoch` (0-based) to `<dir>/checkpoint.npz`, with `request_json`, the
/// request the run was started from (the train job, as JSON).
pub fn save(
    dir: &Path,
    epoch: usize,
    net: &Network,
    optimizer: &Optimizer,
    history: &History,
    config: &RunConfig,
    request_json: &[u8],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let path = dir.join(FILE);
    crate::output::write_atomic_with(&path, |w| {
        let mut npz = NpzWriter::new(w);
        let err = |e: ndarray_npy::WriteNpzError| anyhow!("writing '{}': {e}", path.display());
        npz.add_array("epochs_done", &Array1::from(vec![(epoch + 1) as f64]))
            .map_err(err)?;
        npz.add_array("config_json", &Array1::from(serde_json::to_vec(config)?))
            .map_err(err)?;
        npz.add_array("request_json", &Array1::from(request_json.to_vec()))
            .map_err(err)?;
        npz.add_array("steps", &rows_array(&history.steps))
            .map_err(err)?;
        npz.add_array("grads", &rows_array(&history.grads))
            .map_err(err)?;
        npz.add_array("signal_json", &Array1::from(signal_json(history)?))
            .map_err(err)?;
        let mut result = Ok(());
        net.visit_params(&mut |name, t| {
            if result.is_ok() {
                result = npz.add_array(format!("param/{name}"), t).map_err(err);
            }
        });
        net.visit_buffers(&mut |name, t| {
            if result.is_ok() {
                result = npz.add_array(format!("buffer/{name}"), t).map_err(err);
            }
        });
        result?;
        for (name, v) in optimizer.state() {
            npz.add_array(name, &v).map_err(err)?;
        }
        npz.finish().map_err(err)?;
        Ok(())
    })
}

/// Loads `<dir>/checkpoint.npz` into `net` and returns where to resume, the optimizer's state
/// restored into `optimizer` (a fresh one of the run's kind); refuses a checkpoint whose run
/// configuration differs from `config`, and one whose history is not that of its epochs at
/// `steps_per_epoch` steps each.
pub fn load(
    dir: &Path,
    net: &mut Network,
    config: &RunConfig,
    mut optimizer: Optimizer,
    steps_per_epoch: usize,
) -> Result<Resume> {
    let path = dir.join(FILE);
    if !path.exists() {
        bail!("cannot resume: no checkpoint at '{}'", path.display());
    }
    let (file, _) = crate::input::open(&path, "checkpoint")?;
    let mut npz = NpzReader::new(file)
        .with_context(|| format!("'{}' is not a checkpoint", path.display()))?;
    let ctx = |what: &str| format!("checkpoint '{}': {what}", path.display());
    let epochs_done: Array1<f64> = require_array(&mut npz, "epochs_done", &ctx)?;
    let saved = read_config(&mut npz, &ctx)?;
    let epoch = match epochs_done.as_slice() {
        Some(&[e]) if e >= 1.0 && e <= saved.epochs as f64 && e.fract() == 0.0 => e as usize,
        _ => bail!(
            "{}",
            ctx(&format!(
                "epochs_done is {epochs_done}, not one whole number of epochs in 1..={}",
                saved.epochs
            ))
        ),
    };
    let changed = saved.differences(config);
    if !changed.is_empty() {
        bail!(
            "cannot resume from '{}': the run would not continue the checkpoint's ({}); use the checkpoint's settings or a new --checkpoint directory",
            path.display(),
            changed.join("; ")
        );
    }
    read_network_state(&mut npz, net, &ctx, None)?;
    let mut params = Vec::new();
    net.visit_params(&mut |n, t| params.push((n, t.shape().to_vec())));
    optimizer
        .restore(&params, |n| {
            read_array::<f64, ndarray::IxDyn>(&mut npz, n, &ctx).map_err(|e| format!("{e:#}"))
        })
        .map_err(|e| {
            // A message of read_array already names the checkpoint.
            if e.starts_with("checkpoint '") {
                anyhow!("{e}")
            } else {
                anyhow!("{}", ctx(&e))
            }
        })?;
    let steps: Array2<f64> = require_array(&mut npz, "steps", &ctx)?;
    let grads: Array2<f64> = require_array(&mut npz, "grads", &ctx)?;
    let signal = match read_array::<u8, ndarray::Ix1>(&mut npz, "signal_json", &ctx)? {
        Some(bytes) => signal_from_json(bytes.as_slice().unwrap_or(&[]))
            .with_context(|| ctx("malformed signal_json"))?,
        None => Vec::new(),
    };
    let history = History {
        steps: rows_from_array(&steps, &path)?,
        grads: rows_from_array(&grads, &path)?,
        signal,
        diverged: None,
    };
    // The history must end where the checkpoint says it does ...
    let last_epoch = steps.rows().into_iter().next_back().map(|r| r[1] + 1.0);
    if last_epoch != Some(epoch as f64) {
        bail!(
            "{}",
            ctx(&format!(
                "epochs_done is {epoch}, but its step table ends in epoch {}",
                last_epoch.map_or("none (it is empty)".into(), |e| e.to_string())
            ))
        );
    }
    // ... and be the trainer's, step by step.
    let expect = Expected {
        epochs_done: epoch,
        epochs: saved.epochs,
        steps_per_epoch,
        record_every: saved.record_every,
        units: net.num_units(),
    };
    check_steps(&steps, &expect).map_err(|e| anyhow!("{}", ctx(&format!("array 'steps' {e}"))))?;
    check_grads(&grads, &expect).map_err(|e| anyhow!("{}", ctx(&format!("array 'grads' {e}"))))?;
    Ok(Resume {
        epoch,
        optimizer: Some(optimizer),
        history,
    })
}

/// What the history of a checkpoint must be, from its run's recipe.
struct Expected {
    epochs_done: usize,
    epochs: usize,
    steps_per_epoch: usize,
    record_every: usize,
    /// The network's residual units (the gradient record has a row per unit input, L + 1).
    units: usize,
}

/// A step table as the trainer writes it: steps 0, 1, ... of `epochs_done` epochs, each in its
/// epoch, test numbers at each epoch's last step only, the training side of the gap at the
/// epochs that measure it, finite losses and rates. The reason otherwise, after the array's
/// name.
fn check_steps(a: &Array2<f64>, e: &Expected) -> Result<(), String> {
    let want = e.epochs_done * e.steps_per_epoch;
    if a.nrows() != want {
        return Err(format!(
            "has {} rows, not {want} ({} epoch{} done, {} steps each): its history is incomplete, repeated or damaged",
            a.nrows(),
            e.epochs_done,
            if e.epochs_done == 1 { "" } else { "s" },
            e.steps_per_epoch
        ));
    }
    for (i, r) in a.rows().into_iter().enumerate() {
        let epoch = i / e.steps_per_epoch.max(1);
        if r[0] != i as f64 {
            return Err(format!(
                "has step {} in row {i}: the steps must run 0, 1, ..., {} in order",
                r[0],
                want - 1
            ));
        }
        if r[1] != epoch as f64 {
            return Err(format!("puts step {i} in epoch {}, not {epoch}", r[1]));
        }
        if !(r[2].is_finite() && r[2] > 0.0 && r[3].is_finite() && (0.0..=1.0).contains(&r[4])) {
            return Err(format!(
                "has a learning rate, loss or error out of range at step {i} ({}, {}, {})",
                r[2], r[3], r[4]
            ));
        }
        let last = (i + 1) % e.steps_per_epoch == 0;
        let (test, train_eval) = (!r[5].is_nan(), !r[7].is_nan());
        let at = if last {
            format!("step {i}, the last of epoch {}", epoch + 1)
        } else {
            format!("step {i}, not the last of its epoch")
        };
        if test != last {
            return Err(format!(
                "{} test numbers at {at} (only an epoch's last step has them)",
                if test { "has" } else { "lacks" }
            ));
        }
        if train_eval != (last && super::evaluates_train(epoch, e.epochs)) {
            return Err(format!(
                "{} training-side numbers at {at} (the last steps of epochs 1, 3, 5, ... and of the run have them)",
                if train_eval { "has" } else { "lacks" }
            ));
        }
    }
    Ok(())
}

/// A gradient table as the trainer writes it: a row per unit input `0..=units` at every
/// `record_every`-th step of the history, in order.
fn check_grads(a: &Array2<f64>, e: &Expected) -> Result<(), String> {
    let steps = e.epochs_done * e.steps_per_epoch;
    let recorded = if e.record_every == 0 {
        0
    } else {
        steps.div_ceil(e.record_every)
    };
    let want = recorded * (e.units + 1);
    if a.nrows() != want {
        return Err(format!(
            "has {} rows, not {want} ({recorded} records, every {} of the {steps} steps, of {} unit inputs each): its history is incomplete, repeated or damaged",
            a.nrows(),
            e.record_every,
            e.units + 1
        ));
    }
    for (i, r) in a.rows().into_iter().enumerate() {
        let (step, unit) = ((i / (e.units + 1)) * e.record_every, i % (e.units + 1));
        if r[0] != step as f64 || r[1] != unit as f64 {
            return Err(format!(
                "has step {}, unit {} in row {i}, not step {step}, unit {unit}",
                r[0], r[1]
            ));
        }
    }
    Ok(())
}

/// Reads every parameter and buffer of `net` from the checkpoint; refuses one written for
/// another network (a missing array or another shape), naming the array. `data`, when the
/// network was sized for data other than the checkpoint's: (the checkpoint's, the given),
/// named when the shapes differ.
fn read_network_state(
    npz: &mut NpzReader<File>,
    net: &mut Network,
    ctx: &dyn Fn(&str) -> String,
    data: Option<(&str, &str)>,
) -> Result<()> {
    let mut loaded = Vec::new();
    for prefix in ["param", "buffer"] {
        let mut names = Vec::new();
        if prefix == "param" {
            net.visit_params(&mut |n, _| names.push(n));
        } else {
            net.visit_buffers(&mut |n, _| names.push(n));
        }
        for n in names {
            let name = format!("{prefix}/{n}");
            match read_array::<f64, ndarray::IxDyn>(npz, &name, ctx)? {
                Some(a) => loaded.push((n, a)),
                None => bail!(
                    "{}",
                    ctx(&format!(
                        "no array '{name}': it was written for another network"
                    ))
                ),
            }
        }
    }
    let lookup = |name: &str| {
        loaded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
    };
    let mut shape_error = None;
    let mut check = |kind: &str, n: String, t: &crate::tensor::Tensor| match lookup(&n) {
        Some(a) if a.shape() == t.shape() => {}
        a => {
            shape_error = shape_error.take().or(Some((
                format!("{kind} '{n}'"),
                a.map(|a| a.shape().to_vec()).unwrap_or_default(),
                t.shape().to_vec(),
            )))
        }
    };
    net.visit_params(&mut |n, t| check("parameter", n, t));
    net.visit_buffers(&mut |n, t| check("buffer", n, t));
    if let Some((n, saved, now)) = shape_error {
        match data {
            Some((saved_data, now_data)) if saved_data != now_data => bail!(
                "--data {now_data}: {} was trained on {saved_data}, and this data sizes the network otherwise ({n} is {saved:?} in the checkpoint, {now:?} for --data {now_data}); leave --data out or give data of the checkpoint's input size and classes",
                ctx("").trim_end_matches([':', ' ']),
            ),
            _ => bail!(
                "{}",
                ctx(&format!(
                    "{n} has another shape: it was written for another network"
                ))
            ),
        }
    }
    net.visit_params_mut(&mut |n, t| *t = lookup(&n).expect("checked above"));
    net.visit_buffers_mut(&mut |n, t| *t = lookup(&n).expect("checked above"));
    Ok(())
}

/// An element type of checkpoint arrays, named as NumPy names it.
trait NpyType: ReadableElement {
    const NAME: &'static str;
}

impl NpyType for f64 {
    const NAME: &'static str = "float64 ('<f8')";
}

impl NpyType for u8 {
    const NAME: &'static str = "uint8 ('|u1')";
}

/// NumPy's name of an array descriptor (`'<i8'`: int64), the descriptor beside it.
fn dtype_name(descr: &str) -> String {
    let d = descr.trim_matches('\'');
    let name = match d.trim_start_matches(['<', '>', '|', '=']) {
        "f8" => "float64",
        "f4" => "float32",
        "f2" => "float16",
        "i8" => "int64",
        "i4" => "int32",
        "i2" => "int16",
        "i1" => "int8",
        "u8" => "uint64",
        "u4" => "uint32",
        "u2" => "uint16",
        "u1" => "uint8",
        "b1" => "bool",
        _ => return format!("the type {descr}"),
    };
    format!("{name} ('{d}')")
}

/// Reads the array `name` of a checkpoint (`None` when it has none): one of another element
/// type or number of dimensions, or one that cannot be read, is refused in one line naming it.
/// Every array a checkpoint is read for goes through here.
fn read_array<T: NpyType, D: Dimension>(
    npz: &mut NpzReader<File>,
    name: &str,
    ctx: &dyn Fn(&str) -> String,
) -> Result<Option<Array<T, D>>> {
    let present = npz
        .names()
        .map_err(|e| anyhow!("{}", ctx(&format!("its list of arrays is damaged ({e})"))))?
        .iter()
        .any(|n| n == name);
    if !present {
        return Ok(None);
    }
    let why = match npz.by_name::<ndarray::OwnedRepr<T>, D>(name) {
        Ok(a) => return Ok(Some(a)),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(d))) => format!(
            "holds {}, not {} as resprop writes it",
            dtype_name(&d.to_string()),
            T::NAME
        ),
        Err(ReadNpzError::Npy(ReadNpyError::WrongNdim(want, got))) => format!(
            "has {got} dimension{}, not {}",
            if got == 1 { "" } else { "s" },
            want.map_or("another number".into(), |w| w.to_string())
        ),
        Err(ReadNpzError::Npy(e)) => format!("cannot be read ({e})"),
        Err(ReadNpzError::Zip(e)) => format!("cannot be read from the archive ({e})"),
    };
    bail!("{}", ctx(&format!("array '{name}' {why}")))
}

/// [`read_array`] of an array the checkpoint must have.
fn require_array<T: NpyType, D: Dimension>(
    npz: &mut NpzReader<File>,
    name: &str,
    ctx: &dyn Fn(&str) -> String,
) -> Result<Array<T, D>> {
    read_array(npz, name, ctx)?.ok_or_else(|| anyhow!("{}", ctx(&format!("no array '{name}'"))))
}

/// The run configuration a checkpoint was written with.
fn read_config(npz: &mut NpzReader<File>, ctx: &dyn Fn(&str) -> String) -> Result<RunConfig> {
    let saved: Array1<u8> = read_array(npz, "config_json", ctx)?.ok_or_else(|| {
        anyhow!(
            "{}",
            ctx("not a checkpoint: no run configuration (config_json; a profile's --npz or data's --npz is not a checkpoint, and a checkpoint of resprop before 0.1 had none)")
        )
    })?;
    serde_json::from_slice(saved.as_slice().unwrap_or(&[]))
        .with_context(|| ctx("malformed config_json"))
}

/// A checkpoint file given to `--weights`, opened.
fn open_weights(path: &Path) -> Result<NpzReader<File>> {
    if path.is_dir() {
        bail!(
            "--weights: '{}' is a directory; give the checkpoint file in it, '{}'",
            path.display(),
            path.join(FILE).display()
        );
    }
    let (file, _) = crate::input::open(path, "--weights")?;
    NpzReader::new(file).map_err(|_| {
        anyhow!(
            "--weights: '{}' is not a checkpoint (not an .npz archive; `resprop train --checkpoint DIR` writes DIR/{FILE})",
            path.display()
        )
    })
}

/// The run configuration of a checkpoint file, without loading its arrays.
pub fn read_run_config(path: &Path) -> Result<RunConfig> {
    let ctx = |what: &str| format!("checkpoint '{}': {what}", path.display());
    read_config(&mut open_weights(path)?, &ctx)
}

/// Loads a checkpoint's trained weights (parameters and BN running statistics) into `net`,
/// which must have been built with the checkpoint's architecture: `differences` gives, from the
/// checkpoint's run configuration, each setting in which `net`'s differs
/// ([`NetDescription::differences`](crate::jobs::NetDescription::differences)), and a network
/// of other settings is refused in one line naming each. `data`: the `--data` the network was
/// sized for, if given (a network whose shapes differ because that data's images or classes
/// differ from the checkpoint's is refused naming both).
pub fn load_weights(
    path: &Path,
    net: &mut Network,
    differences: impl FnOnce(&RunConfig) -> Result<Vec<String>>,
    data: Option<&str>,
) -> Result<RunConfig> {
    let mut npz = open_weights(path)?;
    let ctx = |what: &str| format!("checkpoint '{}': {what}", path.display());
    let config = read_config(&mut npz, &ctx)?;
    let changed = differences(&config)?;
    if !changed.is_empty() {
        bail!(
            "--weights '{}' holds another network ({}): build it with the checkpoint's settings",
            path.display(),
            changed.join("; ")
        );
    }
    read_network_state(&mut npz, net, &ctx, data.map(|d| (config.data.as_str(), d)))?;
    Ok(config)
}
