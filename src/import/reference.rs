//! An imported network against what PyTorch's autograd computed on the same model and batch:
//! the one comparison both the lib tests (on tests/onnx's fixtures) and
//! `examples/compare_onnx.rs` (on full torchvision ResNets, `tests/onnx/compare_torchvision.py`)
//! run.
//!
//! The reference is an `.npz` as `tests/onnx/make_fixtures.py` writes it: the batch `x` and
//! labels `y`, and for each mode `m` of `train` and `eval`:
//!
//! - `m/logits`, `m/loss`: the forward's logits and mean cross-entropy;
//! - `m/grad_x/NAME`: `dE/dx_l` at the input of the unit named `NAME` (`layer1.0`), and at the
//!   last unit's output, `NAME` = `top`;
//! - `m/direct/NAME`: the direct part `D_l` of that gradient, at the same tensors
//!   ([`crate::analysis::record::direct_parts`]);
//! - `m/param/NAME`: the gradient of PyTorch's parameter `NAME` (`layer1.0.conv1.weight`).
//!
//! Each array is compared by its relative error, `max |a - b| / max |b|` over its elements.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray_npy::NpzReader;

use super::graph::{Graph, OpType};
use super::units::Structure;
use crate::analysis::record::{direct_parts, Stages};
use crate::grads::Grads;
use crate::layers::Mode;
use crate::net::Network;
use crate::tensor::Tensor;
use crate::unit::ForwardCtx;

/// The model file read, cut into units and built, as `--model` does.
pub fn load_model(path: &Path) -> Result<(Graph, Structure, Network)> {
    let graph = Graph::load(path, "model")?;
    let found = super::find(&graph).with_context(|| format!("model {}", path.display()))?;
    let name = path.display().to_string();
    let net = super::build::network(&graph, &found, &name, "")
        .with_context(|| format!("model {}", path.display()))?;
    Ok((graph, found, net))
}

/// The arrays of a reference `.npz`.
pub struct Reference {
    pub x: Tensor,
    pub labels: Vec<usize>,
    /// Every other array, by key (`train/grad_x/layer1.0`).
    pub arrays: BTreeMap<String, Tensor>,
}

impl Reference {
    pub fn load(path: &Path) -> Result<Reference> {
        let file = File::open(path).with_context(|| format!("reference {}", path.display()))?;
        let mut npz = NpzReader::new(file)
            .map_err(|e| anyhow!("reference {}: not an npz ({e})", path.display()))?;
        let at = |e: ndarray_npy::ReadNpzError, key: &str| {
            anyhow!("reference {}: array {key}: {e}", path.display())
        };
        let y: ndarray::ArrayD<i64> = npz.by_name("y").map_err(|e| at(e, "y"))?;
        let labels = y
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| anyhow!("label {v} is negative")))
            .collect::<Result<_>>()?;
        let mut x = None;
        let mut arrays = BTreeMap::new();
        for key in npz.names().map_err(|e| at(e, "(names)"))? {
            let key = key.trim_end_matches(".npy").to_string();
            match key.as_str() {
                "y" => {}
                "x" => x = Some(npz.by_name(&key).map_err(|e| at(e, &key))?),
                _ => {
                    let a: Tensor = npz.by_name(&key).map_err(|e| at(e, &key))?;
                    arrays.insert(key, a);
                }
            }
        }
        let x = x.ok_or_else(|| anyhow!("reference {}: no array x", path.display()))?;
        Ok(Reference { x, labels, arrays })
    }
}

/// What a compared array is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The loss (a scalar).
    Loss,
    /// The softmax of the logits (resprop keeps the probabilities, not the logits).
    Probs,
    /// `dE/dx_l` at a unit input or the top.
    GradX,
    /// The direct part `D_l` there.
    Direct,
    /// A parameter's gradient.
    Param,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Loss => "loss",
            Kind::Probs => "softmax(logits)",
            Kind::GradX => "dE/dx_l",
            Kind::Direct => "direct part D_l",
            Kind::Param => "parameter gradients",
        })
    }
}

/// One compared array.
#[derive(Debug, Clone)]
pub struct Difference {
    /// `train` or `eval`.
    pub mode: &'static str,
    pub kind: Kind,
    /// The reference key it was compared with.
    pub key: String,
    /// `max |ours - theirs| / max |theirs|` (infinite where they differ in shape, have a NaN,
    /// or the reference is zero and ours is not).
    pub rel: f64,
}

/// Every array of a reference, compared.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    /// Reference arrays nothing was compared with (none, for a reference of the layout above).
    pub unused: Vec<String>,
}

/// The largest relative error of one kind in one mode.
#[derive(Debug, Clone)]
pub struct Worst {
    pub mode: &'static str,
    pub kind: Kind,
    pub rel: f64,
    /// The array where it is.
    pub key: String,
    /// How many arrays of this kind were compared.
    pub arrays: usize,
}

impl Comparison {
    /// Per mode and kind, the largest relative error.
    pub fn worst(&self) -> Vec<Worst> {
        let mut out: Vec<Worst> = Vec::new();
        for d in &self.differences {
            match out
                .iter_mut()
                .find(|w| w.mode == d.mode && w.kind == d.kind)
            {
                Some(w) => {
                    w.arrays += 1;
                    if d.rel.is_nan() || d.rel > w.rel {
                        w.rel = d.rel;
                        w.key = d.key.clone();
                    }
                }
                None => out.push(Worst {
                    mode: d.mode,
                    kind: d.kind,
                    rel: d.rel,
                    key: d.key.clone(),
                    arrays: 1,
                }),
            }
        }
        out
    }

    /// The arrays whose relative error is not below `bound` (NaN counts as above).
    pub fn failures(&self, bound: f64) -> Vec<&Difference> {
        self.differences
            .iter()
            .filter(|d| d.rel.is_nan() || d.rel > bound)
            .collect()
    }

    /// A table: per mode and kind, the arrays compared, the largest relative error, where,
    /// and whether it is within `bound`.
    pub fn table(&self, bound: f64) -> String {
        let mut out = format!(
            "{:<6} {:<20} {:>6} {:>12} {:<6} where\n",
            "mode", "kind", "arrays", "max rel err", "<1e-10"
        );
        for w in self.worst() {
            out.push_str(&format!(
                "{:<6} {:<20} {:>6} {:>12.3e} {:<6} {}\n",
                w.mode,
                w.kind.to_string(),
                w.arrays,
                w.rel,
                if w.rel <= bound { "pass" } else { "FAIL" },
                w.key
            ));
        }
        if !self.unused.is_empty() {
            out.push_str(&format!(
                "not compared: {} reference arrays ({})\n",
                self.unused.len(),
                self.unused.join(", ")
            ));
        }
        out
    }
}

/// `max |a - b| / max |b|`: infinite for another shape, a NaN on either side, or a zero
/// reference against a nonzero value; 0 for two zero arrays.
pub fn relative_error(ours: &Tensor, theirs: &Tensor) -> f64 {
    if ours.shape() != theirs.shape() {
        return f64::INFINITY;
    }
    let mut err = 0.0f64;
    let mut scale = 0.0f64;
    for (a, b) in ours.iter().zip(theirs) {
        let d = (a - b).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        err = err.max(d);
        scale = scale.max(b.abs());
    }
    if err == 0.0 {
        0.0
    } else if scale == 0.0 {
        f64::INFINITY
    } else {
        err / scale
    }
}

/// One parameter gradient to compare: resprop's name, PyTorch's (the initializer the node
/// reads), whether resprop's is the transpose of PyTorch's (a Gemm with `transB`: resprop's
/// dense weight is in x out), and whether PyTorch may have none (a Mul's literal factor,
/// `0.5 * F`, is a constant of the graph, not a parameter).
struct ParameterName {
    ours: String,
    theirs: String,
    transposed: bool,
    maybe_constant: bool,
}

/// The parameter gradients resprop names `NODE.w` (etc.), under PyTorch's names for them. A
/// Mul's factor is its scale `.a`; an Add's constant the bias `.b` of the MatMul it follows.
fn parameter_names(graph: &Graph) -> Vec<ParameterName> {
    let mut out = Vec::new();
    for n in &graph.nodes {
        let constant = n
            .inputs
            .iter()
            .position(|t| graph.constants.contains_key(t));
        let slots: Vec<(usize, String)> = match n.op {
            OpType::Conv | OpType::Gemm | OpType::MatMul => {
                vec![(1, format!("{}.w", n.name)), (2, format!("{}.b", n.name))]
            }
            OpType::BatchNormalization | OpType::LayerNormalization => vec![
                (1, format!("{}.gamma", n.name)),
                (2, format!("{}.beta", n.name)),
            ],
            OpType::Mul => constant
                .map(|i| (i, format!("{}.a", n.name)))
                .into_iter()
                .collect(),
            OpType::Add => {
                let dense = graph.nodes.iter().find(|m| {
                    graph
                        .data_inputs(n)
                        .any(|t| m.outputs.first().is_some_and(|o| o == t))
                });
                match (constant, dense) {
                    (Some(i), Some(m)) => vec![(i, format!("{}.b", m.name))],
                    _ => vec![],
                }
            }
            _ => vec![],
        };
        for (i, ours) in slots {
            if let Some(t) = n.inputs.get(i).filter(|t| !t.is_empty()) {
                out.push(ParameterName {
                    ours,
                    theirs: t.clone(),
                    transposed: n.op == OpType::Gemm && n.int("transB") == Some(1),
                    maybe_constant: n.op == OpType::Mul,
                });
            }
        }
    }
    out
}

fn softmax_rows(logits: &Tensor) -> Result<Tensor> {
    let l = logits
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| anyhow!("logits of shape {:?}, not N x K", logits.shape()))?;
    let mut p = l.to_owned();
    for mut row in p.rows_mut() {
        let m = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    Ok(p.into_dyn())
}

/// The network (imported from `graph`, cut into `structure`) run on the reference's batch in
/// both modes, and every array of the reference compared with resprop's value. A reference
/// array resprop has no value for, or a value the reference lacks, is an error.
pub fn compare(
    graph: &Graph,
    structure: &Structure,
    net: &Network,
    reference: &Reference,
) -> Result<Comparison> {
    let r = &reference.arrays;
    let get = |key: &str| {
        r.get(key)
            .ok_or_else(|| anyhow!("the reference has no array {key}"))
    };
    let mut cmp = Comparison::default();
    let names: Vec<&str> = structure
        .units
        .iter()
        .map(|u| u.name.as_str())
        .chain(["top"])
        .collect();
    let mut used = std::collections::BTreeSet::new();
    let mut record = |cmp: &mut Comparison,
                      mode: &'static str,
                      kind: Kind,
                      key: String,
                      ours: &Tensor,
                      theirs: &Tensor| {
        if !used.insert(key.clone()) {
            bail!("the reference array {key} would be compared twice (a weight two nodes share?)");
        }
        cmp.differences.push(Difference {
            mode,
            kind,
            rel: relative_error(ours, theirs),
            key,
        });
        Ok(())
    };
    for (mode, m) in [(Mode::Train, "train"), (Mode::Eval, "eval")] {
        let ctx = ForwardCtx::analysis(mode, 0).with_weight_grads(true);
        let cache = net.forward(&reference.x, &reference.labels, &ctx)?;
        let loss = Tensor::from_elem(ndarray::IxDyn(&[]), cache.loss);
        let key = format!("{m}/loss");
        record(&mut cmp, m, Kind::Loss, key.clone(), &loss, get(&key)?)?;
        let key = format!("{m}/logits");
        let want = softmax_rows(get(&key)?)?;
        let probs = cache.probs.clone().into_dyn();
        record(&mut cmp, m, Kind::Probs, key, &probs, &want)?;
        let mut grads = Grads::new();
        let g = net.backward(&cache, &reference.labels, Some(&mut grads));
        let stages = Stages::of(net, &cache);
        let direct = direct_parts(net, &cache, &g.grad_x, &stages);
        for (l, name) in names.iter().enumerate() {
            let key = format!("{m}/grad_x/{name}");
            record(
                &mut cmp,
                m,
                Kind::GradX,
                key.clone(),
                &g.grad_x[l],
                get(&key)?,
            )?;
            let key = format!("{m}/direct/{name}");
            record(
                &mut cmp,
                m,
                Kind::Direct,
                key.clone(),
                &direct[l],
                get(&key)?,
            )?;
        }
        for ParameterName {
            ours,
            theirs,
            transposed,
            maybe_constant,
        } in parameter_names(graph)
        {
            let key = format!("{m}/param/{theirs}");
            if maybe_constant && !r.contains_key(&key) {
                continue;
            }
            let got = grads
                .get(&ours)
                .ok_or_else(|| anyhow!("resprop computed no gradient {ours}"))?;
            let got = if transposed {
                got.t().to_owned()
            } else {
                got.clone()
            };
            record(&mut cmp, m, Kind::Param, key.clone(), &got, get(&key)?)?;
        }
    }
    cmp.unused = r.keys().filter(|k| !used.contains(*k)).cloned().collect();
    Ok(cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_the_largest_difference_over_the_largest_value() {
        let b = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![1.0, -4.0, 2.0]).unwrap();
        let a = Tensor::from_shape_vec(ndarray::IxDyn(&[3]), vec![1.5, -4.0, 1.0]).unwrap();
        assert_eq!(relative_error(&a, &b), 0.25);
        assert_eq!(relative_error(&b, &b), 0.0);
        let mut nan = b.clone();
        nan[1] = f64::NAN;
        assert_eq!(relative_error(&nan, &b), f64::INFINITY);
        let zero = Tensor::zeros(ndarray::IxDyn(&[3]));
        assert_eq!(relative_error(&a, &zero), f64::INFINITY);
        assert_eq!(relative_error(&zero, &zero), 0.0);
        let other = Tensor::zeros(ndarray::IxDyn(&[1, 3]));
        assert_eq!(relative_error(&other, &zero), f64::INFINITY);
    }
}
