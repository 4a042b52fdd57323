//! Training checkpoints: the complete state at an epoch boundary (parameters, momentum buffers,
//! BN running statistics, the epoch reached and the history so far), one `.npz` written
//! atomically. Random draws derive from (seed, epoch or step), so no generator state is needed.
//!
//! A checkpoint also records the run's configuration (network, recipe, seed, data digest): a
//! resume with any setting that would change the computation is refused, naming the setting
//! and both values, because the promise is a result bit-identical to an uninterrupted run.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array1, Array2};
use ndarray_npy::{NpzReader, NpzWriter};

use super::{History, Optimizer, Resume, SignalRow};
use crate::net::Network;
use crate::schema::NumericRow;

pub const FILE: &str = "checkpoint.npz";

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
    pub record_every: usize,
    pub seed: u64,
    pub data: String,
    pub data_sha256: String,
}

fn default_optimizer() -> String {
    "sgd".into()
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
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or("none".to_string(), |v| match v {
                        serde_json::Value::String(s) if s.is_empty() => "none".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                };
                format!(
                    "{}: checkpoint {}, now {}",
                    k.replace('_', "-"),
                    show(Some(v)),
                    show(b.get(k))
                )
            })
            .collect()
    }
}

/// Saves the state after `epoch` (0-based) to `<dir>/checkpoint.npz`.
pub fn save(
    dir: &Path,
    epoch: usize,
    net: &Network,
    optimizer: &Optimizer,
    history: &History,
    config: &RunConfig,
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
/// configuration differs from `config`.
pub fn load(
    dir: &Path,
    net: &mut Network,
    config: &RunConfig,
    mut optimizer: Optimizer,
) -> Result<Resume> {
    let path = dir.join(FILE);
    if !path.exists() {
        bail!("cannot resume: no checkpoint at '{}'", path.display());
    }
    let (file, _) = crate::input::open(&path, "checkpoint")?;
    let mut npz = NpzReader::new(file)
        .with_context(|| format!("'{}' is not a checkpoint", path.display()))?;
    let ctx = |what: &str| format!("checkpoint '{}': {what}", path.display());
    let epochs_done: Array1<f64> = npz
        .by_name("epochs_done")
        .with_context(|| ctx("no epochs_done"))?;
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
    read_network_state(&mut npz, net, &ctx)?;
    let mut params = Vec::new();
    net.visit_params(&mut |n, t| params.push((n, t.shape().to_vec())));
    optimizer
        .restore(&params, |n| {
            npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::IxDyn>(n)
                .ok()
        })
        .map_err(|e| anyhow!("{}", ctx(&e)))?;
    let steps: Array2<f64> = npz.by_name("steps").with_context(|| ctx("no steps"))?;
    let grads: Array2<f64> = npz.by_name("grads").with_context(|| ctx("no grads"))?;
    let history = History {
        steps: rows_from_array(&steps, &path)?,
        grads: rows_from_array(&grads, &path)?,
        signal: match npz.by_name::<ndarray::OwnedRepr<u8>, ndarray::Ix1>("signal_json") {
            Ok(bytes) => signal_from_json(bytes.as_slice().unwrap_or(&[]))
                .with_context(|| ctx("malformed signal_json"))?,
            Err(_) => Vec::new(),
        },
        diverged: None,
    };
    // The history must end where the checkpoint says it does.
    let last_epoch = history.steps.last().map(|r| r.epoch + 1);
    if last_epoch != Some(epoch) {
        bail!(
            "{}",
            ctx(&format!(
                "epochs_done is {epoch}, but its step table ends in epoch {}",
                last_epoch.map_or("none (it is empty)".into(), |e| e.to_string())
            ))
        );
    }
    Ok(Resume {
        epoch,
        optimizer: Some(optimizer),
        history,
    })
}

/// Reads every parameter and buffer of `net` from the checkpoint; refuses one written for
/// another network (a missing array or another shape), naming the array.
fn read_network_state(
    npz: &mut NpzReader<File>,
    net: &mut Network,
    ctx: &dyn Fn(&str) -> String,
) -> Result<()> {
    let mut missing = None;
    let mut loaded = Vec::new();
    for prefix in ["param", "buffer"] {
        let mut names = Vec::new();
        if prefix == "param" {
            net.visit_params(&mut |n, _| names.push(n));
        } else {
            net.visit_buffers(&mut |n, _| names.push(n));
        }
        for n in names {
            match npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::IxDyn>(&format!("{prefix}/{n}")) {
                Ok(a) => loaded.push((n, a)),
                Err(_) => missing = missing.or(Some(format!("{prefix}/{n}"))),
            }
        }
    }
    if let Some(m) = missing {
        bail!(
            "{}",
            ctx(&format!(
                "no array '{m}': it was written for another network"
            ))
        );
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
        _ => shape_error = shape_error.take().or(Some(format!("{kind} '{n}'"))),
    };
    net.visit_params(&mut |n, t| check("parameter", n, t));
    net.visit_buffers(&mut |n, t| check("buffer", n, t));
    if let Some(n) = shape_error {
        bail!(
            "{}",
            ctx(&format!(
                "{n} has another shape: it was written for another network"
            ))
        );
    }
    net.visit_params_mut(&mut |n, t| *t = lookup(&n).expect("checked above"));
    net.visit_buffers_mut(&mut |n, t| *t = lookup(&n).expect("checked above"));
    Ok(())
}

/// The run configuration a checkpoint was written with.
fn read_config(npz: &mut NpzReader<File>, ctx: &dyn Fn(&str) -> String) -> Result<RunConfig> {
    let has_config = npz.names().is_ok_and(|names| {
        names
            .iter()
            .any(|n| n == "config_json" || n == "config_json.npy")
    });
    let saved: Array1<u8> = npz.by_name("config_json").map_err(|_| {
        anyhow!(
            "{}",
            ctx(if has_config {
                "its run configuration (config_json) is damaged"
            } else {
                "not a checkpoint: no run configuration (config_json; a profile's --npz or data's --npz is not a checkpoint, and a checkpoint of resprop before 0.1 had none)"
            })
        )
    })?;
    serde_json::from_slice(saved.as_slice().unwrap_or(&[]))
        .with_context(|| ctx("malformed config_json"))
}

/// What a checkpoint's network is: the settings a network built to receive its weights must
/// share with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    pub net: String,
    /// The residual units the network has.
    pub units: usize,
    /// The MLP's width (0 for a ResNet, whose widths its name fixes).
    pub width: usize,
    pub placement: String,
    pub shortcut: String,
    pub projection: String,
    pub norm: String,
    pub init: String,
}

impl RunConfig {
    pub fn architecture(&self) -> Architecture {
        Architecture {
            net: self.net.clone(),
            units: self.units,
            width: self.width,
            placement: self.placement.clone(),
            shortcut: self.shortcut.clone(),
            projection: self.projection.clone(),
            norm: self.norm.clone(),
            init: self.init.clone(),
        }
    }
}

impl Architecture {
    /// The architecture of `net`, built from `choice` with these settings (`width`: the MLP's).
    pub fn of(
        choice: &crate::net::NetChoice,
        net: &Network,
        width: usize,
        placement: crate::unit::Placement,
        shortcut: crate::unit::ShortcutKind,
        norm: crate::layers::NormKind,
        init: crate::net::Init,
    ) -> Architecture {
        Architecture {
            net: choice.to_string(),
            units: net.num_units(),
            width: if *choice == crate::net::NetChoice::Mlp {
                width
            } else {
                0
            },
            placement: placement.to_string(),
            shortcut: shortcut.to_string(),
            projection: match &net.spec {
                crate::net::NetSpec::Resnet(c) => c.projection.to_string(),
                crate::net::NetSpec::Mlp(_) => String::new(),
            },
            norm: norm.to_string(),
            init: init.to_string(),
        }
    }

    /// The settings in which `now` differs from `self`, as `--flag checkpoint A, now B`.
    pub fn differences(&self, now: &Architecture) -> Vec<String> {
        let pairs = [
            ("net", self.net.clone(), now.net.clone()),
            ("units", self.units.to_string(), now.units.to_string()),
            ("width", self.width.to_string(), now.width.to_string()),
            ("placement", self.placement.clone(), now.placement.clone()),
            ("shortcut", self.shortcut.clone(), now.shortcut.clone()),
            (
                "projection",
                self.projection.clone(),
                now.projection.clone(),
            ),
            ("norm", self.norm.clone(), now.norm.clone()),
            ("init", self.init.clone(), now.init.clone()),
        ];
        pairs
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(k, a, b)| format!("--{k}: checkpoint {a}, now {b}"))
            .collect()
    }
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
/// which must have been built with the checkpoint's architecture: a network of other settings
/// is refused in one line naming each setting and both values.
pub fn load_weights(path: &Path, net: &mut Network, now: &Architecture) -> Result<RunConfig> {
    let mut npz = open_weights(path)?;
    let ctx = |what: &str| format!("checkpoint '{}': {what}", path.display());
    let config = read_config(&mut npz, &ctx)?;
    let changed = config.architecture().differences(now);
    if !changed.is_empty() {
        bail!(
            "--weights '{}' holds another network ({}): build it with the checkpoint's settings",
            path.display(),
            changed.join("; ")
        );
    }
    read_network_state(&mut npz, net, &ctx)?;
    Ok(config)
}
