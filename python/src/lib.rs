//! The Python binding: the library's functions, returning columns that `resprop/__init__.py`
//! turns into pandas DataFrames. Values come from the records' own fields (floats as f64,
//! counts as ints), never from re-parsed CSV text.
//!
//! Long calls (`train`, `run`) work on a helper thread while the calling thread, without the
//! GIL, waits and lets Python look at its signals; Ctrl-C asks the work to stop at its next
//! step or cell and raises `KeyboardInterrupt` saying where it stopped.

use std::time::Duration;

use numpy::IntoPyArray;
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use resprop::interrupt::{Interrupt, Interrupted};
use resprop::schema::NumericRow;

use resprop::analysis::gaussian_batch;
use resprop::analysis::record::build_records;
use resprop::layers::{Mode, NormKind};
use resprop::net::{build_net_with, Init, NetChoice, NetSizes};
use resprop::unit::{ForwardCtx, Placement, Projection, ShortcutKind};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn parse<T: std::str::FromStr<Err = String>>(what: &str, s: &str) -> PyResult<T> {
    s.parse::<T>()
        .map_err(|e| value_error(format!("{what}: {e}")))
}

/// Runs `work` on a helper thread, checking Python's signals every 50 ms meanwhile (the
/// calling thread holds no GIL while it waits). A signal whose handler raises (Ctrl-C's raises
/// `KeyboardInterrupt`) requests a stop; the work ends at its next check and the call raises
/// `KeyboardInterrupt` with the work's "interrupted after step 12 of 220"-style message (or the
/// handler's own exception). Other errors become `ValueError` with the command line's message.
fn interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce(&Interrupt) -> anyhow::Result<T> + Send,
) -> PyResult<T> {
    let stop = Interrupt::new();
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        let caller = std::thread::current();
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                let r = work(&stop);
                caller.unpark();
                r
            });
            while !worker.is_finished() {
                std::thread::park_timeout(Duration::from_millis(50));
                if raised.is_none() {
                    if let Err(e) = Python::attach(|py| py.check_signals()) {
                        raised = Some(e);
                        stop.request();
                    }
                }
            }
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    });
    match (result, raised) {
        (Err(e), Some(signal)) if e.downcast_ref::<Interrupted>().is_some() => {
            Err(if signal.is_instance_of::<PyKeyboardInterrupt>(py) {
                PyKeyboardInterrupt::new_err(e.to_string())
            } else {
                signal
            })
        }
        // The work finished (or failed) before it saw the stop: the signal still counts.
        (_, Some(signal)) => Err(signal),
        (Err(e), None) => Err(value_error(format!("{e:#}"))),
        (Ok(v), None) => Ok(v),
    }
}

/// Rows of a numeric table as a dict of columns in the schema's order: the named counting
/// columns as ints, the others as floats (NaN for the CSV's empty fields).
fn numeric_columns<'py, R: NumericRow>(
    py: Python<'py>,
    rows: &[R],
    int_columns: &[&str],
) -> PyResult<Bound<'py, PyDict>> {
    let numbers: Vec<Vec<f64>> = rows.iter().map(|r| r.numbers()).collect();
    let columns = PyDict::new(py);
    for (i, name) in R::SCHEMA.names().into_iter().enumerate() {
        if int_columns.contains(&name) {
            let v: Vec<i64> = numbers.iter().map(|r| r[i] as i64).collect();
            columns.set_item(name, v)?;
        } else {
            let v: Vec<f64> = numbers.iter().map(|r| r[i]).collect();
            columns.set_item(name, v)?;
        }
    }
    Ok(columns)
}

/// A JSON value of a record's field as the Python object the CSV column holds: numbers as
/// int or float, booleans as 0/1 (the CSV's), missing values as None.
fn to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        serde_json::Value::Null => py.None().into_bound(py),
        serde_json::Value::Bool(b) => (*b as i64).into_pyobject(py)?.into_any(),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !n.is_f64() => i.into_pyobject(py)?.into_any(),
            (_, Some(f)) => f.into_pyobject(py)?.into_any(),
            _ => py.None().into_bound(py),
        },
        serde_json::Value::String(s) => s.into_pyobject(py)?.into_any(),
        other => other.to_string().into_pyobject(py)?.into_any(),
    })
}

/// The network and batch the keyword arguments describe, as the command line's `NetArgs`.
struct Setup {
    choice: NetChoice,
    sizes: NetSizes,
    batch: usize,
    placement: Placement,
    shortcut: ShortcutKind,
    projection: Option<Projection>,
    norm: NormKind,
    init: Init,
    mode: Mode,
    seed: u64,
}

impl Setup {
    #[allow(clippy::too_many_arguments)]
    fn parse(
        net: &str,
        units: usize,
        width: usize,
        input_dim: usize,
        image_size: usize,
        classes: usize,
        batch: usize,
        placement: &str,
        shortcut: &str,
        projection: Option<&str>,
        norm: &str,
        init: &str,
        bn_mode: &str,
        seed: u64,
    ) -> PyResult<Setup> {
        if batch == 0 {
            return Err(value_error("batch must be at least 1, got 0"));
        }
        Ok(Setup {
            choice: parse("net", net)?,
            sizes: NetSizes {
                units,
                width,
                input_dim,
                image_size,
                input_channels: 3,
                classes,
            },
            batch,
            placement: parse("placement", placement)?,
            shortcut: parse("shortcut", shortcut)?,
            projection: projection.map(|p| parse("projection", p)).transpose()?,
            norm: parse("norm", norm)?,
            init: parse("init", init)?,
            mode: parse("bn_mode", bn_mode)?,
            seed,
        })
    }

    /// The network, its Gaussian batch and the forward context (the CLI's, seed for seed).
    fn build(
        &self,
    ) -> anyhow::Result<(
        resprop::net::Network,
        resprop::tensor::Tensor,
        Vec<usize>,
        ForwardCtx,
    )> {
        let net = build_net_with(
            &self.choice,
            &self.sizes,
            self.placement,
            self.shortcut,
            self.projection,
            self.norm,
            self.init,
            self.seed,
        )?;
        let (input, labels) = gaussian_batch(&net.input_shape, self.batch, net.classes, self.seed);
        let ctx = ForwardCtx {
            mode: self.mode,
            dropout_seed: resprop::rng::derive_seed(self.seed, &[resprop::rng::purpose::DROPOUT]),
            keep_branch: true,
            weight_grads: true,
        };
        Ok((net, input, labels, ctx))
    }
}

/// The per-unit record of one network at one Gaussian batch, as `resprop profile --csv`
/// writes it: a dict of columns (the CSV's names and order) for pandas.
///
/// With `arrays`, also a dict of three lists of NumPy arrays, one per unit input `l = 0..L`
/// (each shaped like the batch at that unit): `x` (`x_l`), `grad` (`dE/dx_l`) and `direct`
/// (its direct part, the top gradient carried by the shortcuts alone).
#[pyfunction]
#[pyo3(signature = (net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0, arrays=false))]
#[allow(clippy::too_many_arguments)]
fn profile<'py>(
    py: Python<'py>,
    net: &str,
    units: usize,
    width: usize,
    input_dim: usize,
    image_size: usize,
    classes: usize,
    batch: usize,
    placement: &str,
    shortcut: &str,
    projection: Option<&str>,
    norm: &str,
    init: &str,
    bn_mode: &str,
    seed: u64,
    arrays: bool,
) -> PyResult<(Bound<'py, PyDict>, Option<Bound<'py, PyDict>>)> {
    let setup = Setup::parse(
        net, units, width, input_dim, image_size, classes, batch, placement, shortcut, projection,
        norm, init, bn_mode, seed,
    )?;
    // The engine runs without the GIL: other Python threads go on meanwhile.
    let computed = py.detach(|| -> anyhow::Result<_> {
        let (net, input, labels, ctx) = setup.build()?;
        // Input gradients only, as `resprop profile` without --weight-grad-csv.
        let ctx = ForwardCtx {
            weight_grads: false,
            ..ctx
        };
        let cache = net.forward(&input, &labels, &ctx)?;
        let grads = net.backward(&cache, &labels, None);
        let records = build_records(&net, &cache, &grads).records;
        let tensors = arrays.then(|| {
            let stages = resprop::analysis::record::Stages::of(&net, &cache);
            let direct =
                resprop::analysis::record::direct_parts(&net, &cache, &grads.grad_x, &stages);
            let x: Vec<_> = (0..=net.num_units()).map(|l| cache.x(l).clone()).collect();
            (x, grads.grad_x, direct)
        });
        Ok((records, tensors))
    });
    let (records, tensors) = computed.map_err(|e| value_error(format!("{e:#}")))?;
    let columns = PyDict::new(py);
    let values: Vec<serde_json::Value> = records
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(value_error)?;
    for name in resprop::schema::PROFILE.names() {
        let column = PyList::empty(py);
        for v in &values {
            column.append(to_py(py, &v[name])?)?;
        }
        columns.set_item(name, column)?;
    }
    let n = records.len();
    columns.set_item("placement", vec![setup.placement.to_string(); n])?;
    columns.set_item("shortcut", vec![setup.shortcut.to_string(); n])?;
    let arrays = match tensors {
        None => None,
        Some((x, grad, direct)) => {
            let d = PyDict::new(py);
            for (name, list) in [("x", x), ("grad", grad), ("direct", direct)] {
                let arrays: Vec<_> = list.into_iter().map(|t| t.into_pyarray(py)).collect();
                d.set_item(name, arrays)?;
            }
            Some(d)
        }
    };
    Ok((columns, arrays))
}

/// `resprop check`: every check's row (check, result, worst, uncertainty, tolerance, what,
/// proof), as a dict of columns.
#[pyfunction]
#[pyo3(signature = (net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0, directions=3))]
#[allow(clippy::too_many_arguments)]
fn check<'py>(
    py: Python<'py>,
    net: &str,
    units: usize,
    width: usize,
    input_dim: usize,
    image_size: usize,
    classes: usize,
    batch: usize,
    placement: &str,
    shortcut: &str,
    projection: Option<&str>,
    norm: &str,
    init: &str,
    bn_mode: &str,
    seed: u64,
    directions: usize,
) -> PyResult<Bound<'py, PyDict>> {
    use resprop::analysis::checks::{run_checks, CheckOptions, Proof, Status};
    if directions == 0 {
        return Err(value_error("directions must be at least 1"));
    }
    let setup = Setup::parse(
        net, units, width, input_dim, image_size, classes, batch, placement, shortcut, projection,
        norm, init, bn_mode, seed,
    )?;
    let report = py
        .detach(|| -> anyhow::Result<_> {
            let (net, input, labels, ctx) = setup.build()?;
            run_checks(
                &net,
                &input,
                &labels,
                &ctx,
                &CheckOptions { directions, seed },
            )
        })
        .map_err(|e| value_error(format!("{e:#}")))?;
    let rows = &report.rows;
    let columns = PyDict::new(py);
    columns.set_item(
        "check",
        rows.iter().map(|r| r.check.clone()).collect::<Vec<_>>(),
    )?;
    columns.set_item(
        "result",
        rows.iter().map(|r| r.status.label()).collect::<Vec<_>>(),
    )?;
    columns.set_item("worst", rows.iter().map(|r| r.worst).collect::<Vec<_>>())?;
    columns.set_item(
        "uncertainty",
        rows.iter().map(|r| r.uncertainty).collect::<Vec<_>>(),
    )?;
    columns.set_item(
        "tolerance",
        rows.iter().map(|r| r.tolerance).collect::<Vec<_>>(),
    )?;
    columns.set_item(
        "what",
        rows.iter().map(|r| r.what.clone()).collect::<Vec<_>>(),
    )?;
    columns.set_item(
        "reason",
        rows.iter()
            .map(|r| match &r.status {
                Status::Inconclusive(s) | Status::NotApplicable(s) => Some(s.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
    )?;
    columns.set_item(
        "proof",
        rows.iter()
            .map(|r| match r.proof {
                Proof::Verification => "verification",
                Proof::Consistency => "consistency",
            })
            .collect::<Vec<_>>(),
    )?;
    Ok(columns)
}

/// `resprop train`: the per-step table and the per-unit gradients over training, as dicts of
/// columns, and the divergence message if the run diverged (what it recorded is kept).
#[pyfunction]
#[pyo3(signature = (net="resnet:2:basic", data="digits", placement="full-preact", shortcut="identity", projection=None, norm="batch", init="he", units=8, width=64, epochs=10, batch=64, lr=0.1, momentum=0.9, optimizer="sgd", warmup_steps=None, weight_decay=1e-4, weight_decay_mode="decoupled", record_every=10, checkpoint=None, resume=false, stop_after_epochs=None, seed=0, unfused=false))]
#[allow(clippy::too_many_arguments)]
fn train<'py>(
    py: Python<'py>,
    net: &str,
    data: &str,
    placement: &str,
    shortcut: &str,
    projection: Option<&str>,
    norm: &str,
    init: &str,
    units: usize,
    width: usize,
    epochs: usize,
    batch: usize,
    lr: f64,
    momentum: f64,
    optimizer: &str,
    warmup_steps: Option<usize>,
    weight_decay: f64,
    weight_decay_mode: &str,
    record_every: usize,
    checkpoint: Option<std::path::PathBuf>,
    resume: bool,
    stop_after_epochs: Option<usize>,
    seed: u64,
    unfused: bool,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>, Option<String>)> {
    if resume && checkpoint.is_none() {
        return Err(value_error(
            "resume needs checkpoint (the folder to resume from)",
        ));
    }
    let args = resprop::cli::train::TrainArgs {
        net: parse("net", net)?,
        data: parse("data", data)?,
        placement: parse("placement", placement)?,
        shortcut: parse("shortcut", shortcut)?,
        projection: projection.map(|p| parse("projection", p)).transpose()?,
        norm: parse("norm", norm)?,
        init: parse("init", init)?,
        units,
        width,
        epochs,
        batch,
        lr,
        momentum,
        optimizer: parse("optimizer", optimizer)?,
        warmup_steps,
        weight_decay,
        weight_decay_mode: parse("weight_decay_mode", weight_decay_mode)?,
        record_every,
        csv: None,
        grad_csv: None,
        checkpoint,
        resume,
        stop_after_epochs,
        seed,
        threads: None,
        unfused,
    };
    let history = interruptible(py, |stop| {
        let mut t = args.prepare()?;
        args.train_prepared(&mut t, |row, total| {
            stop.check(|| format!("after step {} of {total}", row.step + 1))?;
            Ok(())
        })
    })?;
    Ok((
        numeric_columns(py, &history.steps, &["step", "epoch"])?,
        numeric_columns(py, &history.grads, &["step", "unit"])?,
        history.diverged,
    ))
}

/// Runs an experiment file (`resprop run SPEC --out OUT`) and returns the path of its main
/// CSV; cells already stored under `OUT/cells/` are reused.
#[pyfunction]
#[pyo3(signature = (spec, out="results"))]
fn run(py: Python<'_>, spec: &str, out: &str) -> PyResult<String> {
    let spec = resprop::experiment::load_spec(std::path::Path::new(spec))
        .map_err(|e| value_error(format!("{e:#}")))?;
    let out = std::path::PathBuf::from(out);
    let csv = interruptible(py, |stop| {
        resprop::experiment::runner::compute_cells(&spec, &out, false, None, stop)?;
        resprop::experiment::runner::assemble(&spec, &out)
    })?;
    Ok(csv.display().to_string())
}

#[pymodule]
fn _resprop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(profile, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    Ok(())
}
