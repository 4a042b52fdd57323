//! The Python binding: the library's functions, returning columns that `resprop/__init__.py`
//! turns into pandas DataFrames. Values come from the records' own fields (floats as f64,
//! counts as ints), never from re-parsed CSV text.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

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

/// The per-unit record of one network at one Gaussian batch, as `resprop profile --csv`
/// writes it: a dict of columns (the CSV's names and order) for pandas.
#[pyfunction]
#[pyo3(signature = (net="mlp", units=54, width=64, input_dim=64, image_size=32, classes=10, batch=32, placement="original", shortcut="identity", projection=None, norm="batch", init="he", bn_mode="train", seed=0))]
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
) -> PyResult<Bound<'py, PyDict>> {
    let choice: NetChoice = parse("net", net)?;
    let placement: Placement = parse("placement", placement)?;
    let shortcut: ShortcutKind = parse("shortcut", shortcut)?;
    let projection: Option<Projection> = projection.map(|p| parse("projection", p)).transpose()?;
    let norm: NormKind = parse("norm", norm)?;
    let init: Init = parse("init", init)?;
    let mode: Mode = parse("bn_mode", bn_mode)?;
    if batch == 0 {
        return Err(value_error("batch must be at least 1, got 0"));
    }
    let sizes = NetSizes {
        units,
        width,
        input_dim,
        image_size,
        input_channels: 3,
        classes,
    };
    // The engine runs without the GIL: other Python threads go on meanwhile.
    let records = py.detach(|| -> anyhow::Result<_> {
        let net = build_net_with(
            &choice, &sizes, placement, shortcut, projection, norm, init, seed,
        )?;
        let (input, labels) = gaussian_batch(&net.input_shape, batch, net.classes, seed);
        let ctx = ForwardCtx {
            mode,
            dropout_seed: resprop::rng::derive_seed(seed, &[resprop::rng::purpose::DROPOUT]),
            keep_branch: true,
            weight_grads: false,
        };
        let cache = net.forward(&input, &labels, &ctx)?;
        let grads = net.backward(&cache, &labels, None);
        Ok(build_records(&net, &cache, &grads).records)
    });
    let records = records.map_err(|e| value_error(format!("{e:#}")))?;
    let columns = PyDict::new(py);
    let names = resprop::schema::PROFILE.names();
    for name in &names {
        let values = PyList::empty(py);
        for r in &records {
            let v = serde_json::to_value(r).map_err(value_error)?;
            values.append(to_py(py, &v[*name])?)?;
        }
        columns.set_item(*name, values)?;
    }
    let n = records.len();
    columns.set_item("placement", vec![placement.to_string(); n])?;
    columns.set_item("shortcut", vec![shortcut.to_string(); n])?;
    Ok(columns)
}

/// Runs an experiment file (`resprop run SPEC --out OUT`) and returns the path of its main
/// CSV; cells already stored under `OUT/cells/` are reused.
#[pyfunction]
#[pyo3(signature = (spec, out="results"))]
fn run(py: Python<'_>, spec: &str, out: &str) -> PyResult<String> {
    let spec = resprop::experiment::load_spec(std::path::Path::new(spec))
        .map_err(|e| value_error(format!("{e:#}")))?;
    let out = std::path::PathBuf::from(out);
    let csv = py
        .detach(|| resprop::experiment::run_experiment(&spec, &out, false))
        .map_err(|e| value_error(format!("{e:#}")))?
        .0;
    Ok(csv.display().to_string())
}

#[pymodule]
fn _resprop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(profile, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    Ok(())
}
