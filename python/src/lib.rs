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
use pyo3::types::{PyBool, PyDict, PyList, PyTuple};

use resprop::float::{Float, Precision};
use resprop::interrupt::{Interrupt, Interrupted};
use resprop::schema::NumericRow;

use resprop::cli::keywords::{self, Value};
use resprop::cli::Command;

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Runs `work` on a helper thread, checking Python's signals every 50 ms meanwhile (the
/// calling thread holds no GIL while it waits). A signal whose handler raises (Ctrl-C's raises
/// `KeyboardInterrupt`) requests a stop; the work ends at its next check and the call raises
/// `KeyboardInterrupt` with the work's "interrupted after step 12 of 220"-style message (or the
/// handler's own exception). Other errors become `ValueError` with the command line's message.
fn interruptible<T: Send>(
    py: Python<'_>,
    name: &str,
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
        (Err(e), None) => Err(job_error(name, e)),
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

/// A Python value as a keyword value of the command line's parser.
fn value(v: &Bound<'_, PyAny>) -> PyResult<Value> {
    Ok(if v.is_none() {
        Value::None
    } else if let Ok(b) = v.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if let Ok(i) = v.extract::<i64>() {
        Value::Int(i)
    } else if let Ok(f) = v.extract::<f64>() {
        Value::Float(f)
    } else if let Ok(s) = v.extract::<String>() {
        Value::Str(s)
    } else if let Ok(items) = v.extract::<Vec<Bound<'_, PyAny>>>() {
        Value::List(items.iter().map(value).collect::<PyResult<_>>()?)
    } else {
        return Err(value_error(format!("unsupported value {v}")));
    })
}

/// The command `name` parsed from `kwargs` by the command line's parser (its flags, defaults,
/// ranges and messages, each flag named by its keyword).
fn parse(name: &str, kwargs: &Bound<'_, PyDict>) -> PyResult<Command> {
    let values = kwargs
        .iter()
        .map(|(k, v)| Ok((k.extract::<String>()?, value(&v)?)))
        .collect::<PyResult<Vec<_>>>()?;
    keywords::parse(name, &values).map_err(value_error)
}

/// An error of the engine, its flags named by their keywords.
fn job_error(name: &str, e: anyhow::Error) -> PyErr {
    let text = format!("{e:#}");
    match keywords::subcommand(name) {
        Some(c) => value_error(keywords::keywords_for_flags(&text, &c)),
        None => value_error(text),
    }
}

/// One keyword argument as Python sees it: name, default, required, stub type, help.
type Parameter<'py> = (String, Bound<'py, PyAny>, bool, String, String);

/// The keyword arguments of the function `name`: (name, default, required, stub type, help)
/// for each, from the command line's definitions (`resprop/__init__.py` builds the signatures
/// and the documentation from them).
#[pyfunction]
fn parameters<'py>(py: Python<'py>, name: &str) -> PyResult<Vec<Parameter<'py>>> {
    if resprop::cli::python::function(name).is_none() {
        return Err(value_error(format!("no function '{name}'")));
    }
    resprop::cli::python::parameters(name)
        .into_iter()
        .map(|p| {
            let default = match &p.default {
                Some(v) => python_value(py, v)?,
                None => py.None().into_bound(py),
            };
            Ok((p.name, default, p.default.is_none(), p.stub_type, p.help))
        })
        .collect()
}

/// A keyword value as a Python object (a list as a tuple).
fn python_value<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
        Value::Str(s) => s.into_pyobject(py)?.into_any(),
        Value::List(items) => {
            let items = items
                .iter()
                .map(|v| python_value(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, items)?.into_any()
        }
    })
}

/// The package's `.pyi` stub, generated from the command line's definitions.
#[pyfunction]
fn stub() -> String {
    resprop::cli::python::stub()
}

/// The per-unit record of one network at one batch, as `resprop profile --csv` writes it: a
/// dict of columns (the CSV's names and order) for pandas.
///
/// With `arrays`, also a dict of three lists of NumPy arrays, one per unit input `l = 0..L`
/// (each shaped like the batch at that unit): `x` (`x_l`), `grad` (`dE/dx_l`) and `direct`
/// (its direct part, the top gradient carried by the shortcuts alone).
#[pyfunction]
#[pyo3(signature = (kwargs, arrays=false))]
fn profile<'py>(
    py: Python<'py>,
    kwargs: &Bound<'py, PyDict>,
    arrays: bool,
) -> PyResult<(Bound<'py, PyDict>, Option<Bound<'py, PyDict>>)> {
    let Command::Profile(args) = parse("profile", kwargs)? else {
        unreachable!("profile parses as profile")
    };
    // The arrays come in the run's element type (float32 for precision="f32").
    match args.job.precision {
        Precision::F64 => profile_as::<f64>(py, &args.job, arrays),
        Precision::F32 => profile_as::<f32>(py, &args.job, arrays),
    }
}

/// [`profile`] in the element type `T`.
fn profile_as<'py, T: Float + numpy::Element>(
    py: Python<'py>,
    job: &resprop::jobs::ProfileJob,
    arrays: bool,
) -> PyResult<(Bound<'py, PyDict>, Option<Bound<'py, PyDict>>)> {
    // The engine runs without the GIL (other Python threads go on meanwhile); Ctrl-C stops it
    // before the next unit of either pass.
    let computed = interruptible(py, "profile", |stop| -> anyhow::Result<_> {
        let run = job.run_as::<T>(stop)?;
        let (net, cache, grads) = (run.net(), &run.cache, &run.grads);
        let tensors = arrays.then(|| {
            let stages = resprop::analysis::record::Stages::of(net, cache);
            let direct =
                resprop::analysis::record::direct_parts(net, cache, &grads.grad_x, &stages);
            let x: Vec<_> = (0..=net.num_units()).map(|l| cache.x(l).clone()).collect();
            (x, grads.grad_x.clone(), direct)
        });
        // The CSV's trailing columns: the network's (with `weights`, the checkpoint's; with
        // `model`, each row's unit name too).
        let args = &run.analysis.args;
        let tail = resprop::analysis::record::profile_tail(
            &run.analysis.net,
            run.profile.records.len(),
            args.arch.placement.name(),
            &args.arch.shortcut.to_string(),
        );
        Ok((run.profile.records, tail, tensors))
    });
    let (records, tail, tensors) = computed?;
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
    for (column, values) in tail {
        // An empty field (the head's input has no shortcut) is missing, as pandas reads the
        // CSV's empty field.
        let values: Vec<Option<String>> = values
            .into_iter()
            .map(|v| (!v.is_empty()).then_some(v))
            .collect();
        columns.set_item(column.name(), values)?;
    }
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
fn check<'py>(py: Python<'py>, kwargs: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    use resprop::analysis::checks::{Proof, Status};
    let Command::Check(args) = parse("check", kwargs)? else {
        unreachable!("check parses as check")
    };
    let (_, report) = interruptible(py, "check", |stop| args.job.run(stop))?;
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
fn paths<'py>(py: Python<'py>, kwargs: &Bound<'py, PyDict>) -> PyResult<(Bound<'py, PyDict>, f64)> {
    let Command::Paths(args) = parse("paths", kwargs)? else {
        unreachable!("paths parses as paths")
    };
    let computed = interruptible(py, "paths", |stop| args.job.run(&|_| {}, stop))?;
    Ok((
        numeric_columns(py, &computed.rows, &["unit", "k"])?,
        computed.decomposition.max_sum_error(),
    ))
}

/// `resprop lesion --csv`: the test error of the trained network (`weights`) with units
/// deleted, one row per lesion (kind, k, draw, deleted, test_error).
#[pyfunction]
fn lesion<'py>(py: Python<'py>, kwargs: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    let Command::Lesion(args) = parse("lesion", kwargs)? else {
        unreachable!("lesion parses as lesion")
    };
    let l = interruptible(py, "lesion", |stop| args.job.run(&|_| {}, stop))?;
    // The CSV's fields (the deleted units space-separated, as there), with the counts as ints
    // and the test error as its float.
    let fields: Vec<Vec<String>> = l
        .lesions
        .iter()
        .zip(&l.errors)
        .map(|(x, &e)| x.fields(e, &l.analysis.net))
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
fn shatter<'py>(
    py: Python<'py>,
    kwargs: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let Command::Shatter(args) = parse("shatter", kwargs)? else {
        unreachable!("shatter parses as shatter")
    };
    let study = interruptible(py, "shatter", |_| args.job.run())?;
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
fn train<'py>(
    py: Python<'py>,
    kwargs: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>, Option<String>)> {
    let Command::Train(args) = parse("train", kwargs)? else {
        unreachable!("train parses as train")
    };
    let job = args.job;
    let history = interruptible(py, "train", |stop| {
        let mut t = job.prepare()?;
        job.train_prepared(&mut t, |row, total| {
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
fn run(py: Python<'_>, kwargs: &Bound<'_, PyDict>) -> PyResult<(String, Vec<String>)> {
    let Command::Run(args) = parse("run", kwargs)? else {
        unreachable!("run parses as run")
    };
    let spec = resprop::experiment::load_spec(&args.spec).map_err(|e| job_error("run", e))?;
    let (out, plots) = (args.out, args.plots);
    let (csv, charts) = interruptible(py, "run", |stop| {
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
    m.add_function(wrap_pyfunction!(parameters, m)?)?;
    m.add_function(wrap_pyfunction!(stub, m)?)?;
    Ok(())
}
