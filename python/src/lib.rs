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

use resprop::analysis::record::build_records;
use resprop::cli::NetArgs;
use resprop::jobs::NetDescription;
use resprop::net::memory::Purpose;

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

/// The network's architecture from the keyword arguments (the command line's parsers and
/// messages).
#[allow(clippy::too_many_arguments)]
fn description(
    net: &str,
    units: usize,
    width: usize,
    placement: &str,
    shortcut: &str,
    projection: Option<&str>,
    norm: &str,
    init: &str,
) -> PyResult<NetDescription> {
    Ok(NetDescription {
        net: parse("net", net)?,
        units,
        width,
        placement: parse("placement", placement)?,
        shortcut: parse("shortcut", shortcut)?,
        projection: projection.map(|p| parse("projection", p)).transpose()?,
        norm: parse("norm", norm)?,
        init: parse("init", init)?,
    })
}

/// The command line's network flags from the keyword arguments (the same names, parsers and
/// messages), for `NetArgs::prepare`: the network (with `weights`, a trained one) and its
/// batch (`data`'s images, or Gaussian inputs), seed for seed the command line's.
#[allow(clippy::too_many_arguments)]
fn net_args(
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
    weights: Option<std::path::PathBuf>,
    data: Option<&str>,
) -> PyResult<NetArgs> {
    Ok(NetArgs {
        arch: description(
            net, units, width, placement, shortcut, projection, norm, init,
        )?,
        input_dim,
        image_size,
        classes,
        batch,
        bn_mode: parse("bn_mode", bn_mode)?,
        seed,
        threads: None,
        unfused: false,
        weights,
        data: data.map(|d| parse("data", d)).transpose()?,
        given: Default::default(),
    })
}

/// The per-unit record of one network at one batch, as `resprop profile --csv` writes it: a
/// dict of columns (the CSV's names and order) for pandas.
///
/// With `arrays`, also a dict of three lists of NumPy arrays, one per unit input `l = 0..L`
/// (each shaped like the batch at that unit): `x` (`x_l`), `grad` (`dE/dx_l`) and `direct`
/// (its direct part, the top gradient carried by the shortcuts alone).
#[pyfunction]
#[pyo3(signature = (net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0, weights=None, data=None, arrays=false))]
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
    weights: Option<std::path::PathBuf>,
    data: Option<&str>,
    arrays: bool,
) -> PyResult<(Bound<'py, PyDict>, Option<Bound<'py, PyDict>>)> {
    let args = net_args(
        net, units, width, input_dim, image_size, classes, batch, placement, shortcut, projection,
        norm, init, bn_mode, seed, weights, data,
    )?;
    // The engine runs without the GIL: other Python threads go on meanwhile.
    let computed = py.detach(|| -> anyhow::Result<_> {
        let a = args.prepare(Purpose::profile(false))?;
        // Input gradients only, as `resprop profile` without --weight-grad-csv.
        let ctx = a.args.ctx().with_weight_grads(false);
        let cache = a.net.forward(&a.input, &a.labels, &ctx)?;
        let grads = a.net.backward(&cache, &a.labels, None);
        let records = build_records(&a.net, &cache, &grads).records;
        let tensors = arrays.then(|| {
            let stages = resprop::analysis::record::Stages::of(&a.net, &cache);
            let direct =
                resprop::analysis::record::direct_parts(&a.net, &cache, &grads.grad_x, &stages);
            let x: Vec<_> = (0..=a.net.num_units())
                .map(|l| cache.x(l).clone())
                .collect();
            (x, grads.grad_x, direct)
        });
        Ok((a.args, records, tensors))
    });
    let (args, records, tensors) = computed.map_err(|e| value_error(format!("{e:#}")))?;
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
    // The CSV's two trailing columns: the network's (with `weights`, the checkpoint's).
    let n = records.len();
    columns.set_item("placement", vec![args.arch.placement.to_string(); n])?;
    columns.set_item("shortcut", vec![args.arch.shortcut.to_string(); n])?;
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
/// reason, proof), as a dict of columns.
#[pyfunction]
#[pyo3(signature = (net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0, weights=None, data=None, directions=3))]
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
    weights: Option<std::path::PathBuf>,
    data: Option<&str>,
    directions: usize,
) -> PyResult<Bound<'py, PyDict>> {
    use resprop::analysis::checks::{run_checks, CheckOptions, Proof, Status};
    if directions == 0 {
        return Err(value_error("directions must be at least 1"));
    }
    let args = net_args(
        net, units, width, input_dim, image_size, classes, batch, placement, shortcut, projection,
        norm, init, bn_mode, seed, weights, data,
    )?;
    let report = interruptible(py, |stop| {
        let a = args.prepare(Purpose::Check)?;
        let opts = CheckOptions {
            directions,
            seed: a.args.seed,
            force: false,
        };
        run_checks(&a.net, &a.input, &a.labels, &a.args.ctx(), &opts, stop)
    })?;
    let rows = &report.rows;
    let text = |f: &dyn Fn(&resprop::analysis::checks::CheckRow) -> String| {
        rows.iter().map(f).collect::<Vec<_>>()
    };
    let floats = |f: &dyn Fn(&resprop::analysis::checks::CheckRow) -> Option<f64>| {
        rows.iter().map(f).collect::<Vec<_>>()
    };
    let columns = PyDict::new(py);
    columns.set_item("check", text(&|r| r.check.clone()))?;
    columns.set_item("result", text(&|r| r.status.label().to_string()))?;
    columns.set_item("worst", floats(&|r| r.worst))?;
    columns.set_item("uncertainty", floats(&|r| r.uncertainty))?;
    columns.set_item(
        "tolerance",
        rows.iter().map(|r| r.tolerance).collect::<Vec<_>>(),
    )?;
    columns.set_item("what", text(&|r| r.what.clone()))?;
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
        text(&|r| {
            match r.proof {
                Proof::Verification => "verification",
                Proof::Consistency => "consistency",
            }
            .to_string()
        }),
    )?;
    Ok(columns)
}

/// `resprop paths --csv`: the gradient by path length, one row per (unit input l, path
/// length k), and the worst relative error of sum_k G_k(l) against dE/dx_l.
#[pyfunction]
#[pyo3(signature = (net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0, weights=None, data=None, sample=None, window=0.9))]
#[allow(clippy::too_many_arguments)]
fn paths<'py>(
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
    weights: Option<std::path::PathBuf>,
    data: Option<&str>,
    sample: Option<usize>,
    window: f64,
) -> PyResult<(Bound<'py, PyDict>, f64)> {
    let args = resprop::cli::paths::PathsArgs {
        net: net_args(
            net, units, width, input_dim, image_size, classes, batch, placement, shortcut,
            projection, norm, init, bn_mode, seed, weights, data,
        )?,
        csv: None,
        sample,
        window,
        force: false,
    };
    let computed = interruptible(py, |stop| args.compute(&|_| {}, stop))?;
    Ok((
        numeric_columns(py, &computed.rows, &["unit", "k"])?,
        computed.decomposition.max_sum_error(),
    ))
}

/// `resprop lesion --csv`: the test error of the trained network (`weights`) with units
/// deleted, one row per lesion (kind, k, draw, deleted, test_error).
#[pyfunction]
#[pyo3(signature = (weights, net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0, data=None, draws=5))]
#[allow(clippy::too_many_arguments)]
fn lesion<'py>(
    py: Python<'py>,
    weights: std::path::PathBuf,
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
    data: Option<&str>,
    draws: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let weights = Some(weights);
    let args = resprop::cli::lesion::LesionArgs {
        net: net_args(
            net, units, width, input_dim, image_size, classes, batch, placement, shortcut,
            projection, norm, init, bn_mode, seed, weights, data,
        )?,
        csv: None,
        draws,
        force: false,
    };
    let l = interruptible(py, |stop| args.compute(&|_| {}, stop))?;
    // The CSV's fields (the deleted units space-separated, as there), with the counts as ints
    // and the test error as its float.
    let fields: Vec<Vec<String>> = l
        .lesions
        .iter()
        .zip(&l.errors)
        .map(|(x, &e)| x.fields(e))
        .collect();
    let columns = PyDict::new(py);
    for (i, name) in resprop::schema::LESIONS.names().into_iter().enumerate() {
        match name {
            "k" => columns.set_item(name, l.lesions.iter().map(|x| x.k).collect::<Vec<_>>())?,
            "draw" => {
                columns.set_item(name, l.lesions.iter().map(|x| x.draw).collect::<Vec<_>>())?
            }
            "test_error" => columns.set_item(name, &l.errors)?,
            _ => columns.set_item(
                name,
                fields.iter().map(|f| f[i].clone()).collect::<Vec<_>>(),
            )?,
        }
    }
    Ok(columns)
}

/// `resprop shatter`: the mean autocorrelation per (net, depth, lag), white and brown noise
/// included (depth None), and every network's gradient over the sweep.
#[pyfunction]
#[pyo3(signature = (depths=vec![1, 10, 24, 50], width=200, replicates=8, seed=0, placement="original"))]
fn shatter<'py>(
    py: Python<'py>,
    depths: Vec<usize>,
    width: usize,
    replicates: usize,
    seed: u64,
    placement: &str,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let placement = parse("placement", placement)?;
    let study = interruptible(py, |_| {
        resprop::analysis::shatter::study(&depths, width, replicates, placement, seed, false)
    })?;
    let (mut net, mut depth, mut lags, mut values) = (vec![], vec![], vec![], vec![]);
    for a in &study.autocorrelations {
        for (lag, &r) in a.r.iter().enumerate() {
            net.push(a.net);
            depth.push(a.depth);
            lags.push(lag);
            values.push(r);
        }
    }
    let auto = PyDict::new(py);
    auto.set_item("net", net)?;
    auto.set_item("depth", depth)?;
    auto.set_item("lag", lags)?;
    auto.set_item("autocorrelation", values)?;
    let xs = resprop::analysis::shatter::sweep();
    let (mut net, mut depth, mut rep, mut x, mut g) = (vec![], vec![], vec![], vec![], vec![]);
    for s in &study.gradients {
        for (xi, gi) in xs.iter().zip(&s.gradients) {
            net.push(s.family.name());
            depth.push(s.depth);
            rep.push(s.replicate);
            x.push(*xi);
            g.push(*gi);
        }
    }
    let grads = PyDict::new(py);
    grads.set_item("net", net)?;
    grads.set_item("depth", depth)?;
    grads.set_item("replicate", rep)?;
    grads.set_item("x", x)?;
    grads.set_item("gradient", g)?;
    Ok((auto, grads))
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
        arch: description(
            net, units, width, placement, shortcut, projection, norm, init,
        )?,
        data: parse("data", data)?,
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
        force: false,
        given: Default::default(),
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

/// Runs an experiment file (`resprop run SPEC --out OUT [--plots DIR]`): the path of its
/// main CSV and, with `plots`, of the charts drawn; cells already stored under `OUT/cells/`
/// are reused.
#[pyfunction]
#[pyo3(signature = (spec, out="results", plots=None))]
fn run(
    py: Python<'_>,
    spec: &str,
    out: &str,
    plots: Option<std::path::PathBuf>,
) -> PyResult<(String, Vec<String>)> {
    let spec = resprop::experiment::load_spec(std::path::Path::new(spec))
        .map_err(|e| value_error(format!("{e:#}")))?;
    let out = std::path::PathBuf::from(out);
    let (csv, charts) = interruptible(py, |stop| {
        resprop::experiment::runner::compute_cells(&spec, &out, &Default::default(), stop)?;
        let csv = resprop::experiment::runner::assemble(&spec, &out)?;
        let charts = match &plots {
            Some(dir) => resprop::plot::draw_charts(&csv, &spec.charts, dir, "plots")?,
            None => Vec::new(),
        };
        Ok((csv, charts))
    })?;
    Ok((
        csv.display().to_string(),
        charts.iter().map(|p| p.display().to_string()).collect(),
    ))
}

#[pymodule]
fn _resprop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(profile, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(paths, m)?)?;
    m.add_function(wrap_pyfunction!(lesion, m)?)?;
    m.add_function(wrap_pyfunction!(shatter, m)?)?;
    Ok(())
}
