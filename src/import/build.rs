//! An imported graph onto resprop's own layers: each node becomes the op with the same math
//! (and its hand-written backward), each found unit a [`ResidualUnit`], so every analysis runs
//! on the user's network as on a built-in one.
//!
//! The shapes are followed per sample from the input the file declares, so that a
//! GlobalAveragePool (resprop's pooling gives `(N, C)`, ONNX's `(N, C, 1, 1)`) and the Flatten
//! after it agree, and so that an op that does not fit its input is refused naming the node.

use anyhow::{anyhow, bail, Result};
use ndarray::IxDyn;

use super::graph::{Constant, Graph, Node, OpType};
use super::units::{ShortcutShape, Structure};
use crate::layers::batch_norm::BatchNorm;
use crate::layers::layer_norm::LayerNorm;
use crate::layers::{Conv2d, Dense, Norm};
use crate::net::{ImportedSpec, NetSpec, Network};
use crate::tensor::Tensor;
use crate::unit::{Fusion, Op, Placement, ResidualUnit, ShortcutKind};

fn tensor(c: &Constant) -> Tensor {
    Tensor::from_shape_vec(IxDyn(&c.shape), c.values.clone()).expect("the shape fits the values")
}

/// The constant a node reads as its `i`-th input.
fn constant<'g>(graph: &'g Graph, node: &Node, i: usize, what: &str) -> Result<&'g Constant> {
    node.inputs
        .get(i)
        .and_then(|t| graph.constants.get(t))
        .ok_or_else(|| anyhow!("{} has no constant {what}; resprop maps it when its {what} is a weight of the model", node.label()))
}

/// One square size from an attribute list (`[3, 3]` -> 3), or the default when absent.
fn square(node: &Node, attr: &str, default: usize) -> Result<usize> {
    match node.ints(attr) {
        None => Ok(default),
        Some(v) if !v.is_empty() && v.iter().all(|&d| d == v[0]) && v[0] >= 0 => Ok(v[0] as usize),
        Some(v) => bail!(
            "{}: {attr} {v:?}; resprop maps square kernels with the same {attr} on every side",
            node.label()
        ),
    }
}

/// The engine ops of one node on an input of per-sample shape `shape`, and the shape after it.
fn ops_of(graph: &Graph, node: &Node, shape: &[usize]) -> Result<(Vec<Op>, Vec<usize>)> {
    let name = node.name.clone();
    match node.op {
        OpType::Conv => {
            let w = constant(graph, node, 1, "weight")?;
            let [c_out, c_in, kh, kw] = w.shape[..] else {
                bail!(
                    "{}: weight of shape {:?}; resprop maps 2-D convolutions",
                    node.label(),
                    w.shape
                );
            };
            if node.int("group").unwrap_or(1) != 1 {
                bail!(
                    "{}: groups {}; resprop maps convolutions with one group",
                    node.label(),
                    node.int("group").unwrap_or(1)
                );
            }
            if square(node, "dilations", 1)? != 1 {
                bail!("{}: dilated convolutions are not mapped", node.label());
            }
            if node.text("auto_pad").is_some_and(|p| p != "NOTSET") {
                bail!(
                    "{}: auto_pad {}; resprop maps explicit pads",
                    node.label(),
                    node.text("auto_pad").unwrap_or("")
                );
            }
            if kh != kw {
                bail!(
                    "{}: a {kh}x{kw} kernel; resprop maps square kernels",
                    node.label()
                );
            }
            let [c, h, wd] = shape[..] else {
                bail!(
                    "{}: input of shape {shape:?} per sample; a convolution reads C x H x W",
                    node.label()
                );
            };
            if c != c_in {
                bail!(
                    "{}: the input has {c} channels, the weight expects {c_in}",
                    node.label()
                );
            }
            let stride = square(node, "strides", 1)?;
            let pad = square(node, "pads", 0)?;
            if stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
                bail!("{}: a {kh}x{kw} kernel, stride {stride}, pad {pad} does not fit a {h}x{wd} input", node.label());
            }
            let b = match node.inputs.get(2).filter(|t| !t.is_empty()) {
                Some(_) => Some(tensor(constant(graph, node, 2, "bias")?)),
                None => None,
            };
            let out = |n: usize| (n + 2 * pad - kh) / stride + 1;
            let conv = Conv2d {
                name,
                w: tensor(w),
                b,
                stride,
                pad,
            };
            Ok((vec![Op::Conv(conv)], vec![c_out, out(h), out(wd)]))
        }
        OpType::BatchNormalization => {
            let get = |i, what| constant(graph, node, i, what).map(tensor);
            let gamma = get(1, "scale")?;
            let c = gamma.len();
            if shape.first() != Some(&c) {
                bail!(
                    "{}: {c} channels, the input has shape {shape:?} per sample",
                    node.label()
                );
            }
            // ONNX's momentum weighs the old running value (0.9); resprop's, like PyTorch's,
            // the batch's (0.1).
            let bn = BatchNorm {
                name,
                gamma,
                beta: get(2, "bias")?,
                running_mean: get(3, "running mean")?,
                running_var: get(4, "running variance")?,
                eps: node.float("epsilon").unwrap_or(1e-5),
                momentum: 1.0 - node.float("momentum").unwrap_or(0.9),
            };
            Ok((vec![Op::Norm(Norm::Batch(bn))], shape.to_vec()))
        }
        OpType::LayerNormalization => {
            let axis = node.int("axis").unwrap_or(-1);
            if shape.len() != 1 || !(axis == -1 || axis == 1) {
                bail!("{}: resprop maps LayerNormalization over the features of a vector (axis -1 of N x D)", node.label());
            }
            let gamma = tensor(constant(graph, node, 1, "scale")?);
            if gamma.len() != shape[0] {
                bail!(
                    "{}: scale of {} values for {} features",
                    node.label(),
                    gamma.len(),
                    shape[0]
                );
            }
            let beta = match node.inputs.get(2).filter(|t| !t.is_empty()) {
                Some(_) => tensor(constant(graph, node, 2, "bias")?),
                None => Tensor::zeros(IxDyn(&[shape[0]])),
            };
            let ln = LayerNorm {
                name,
                gamma,
                beta,
                eps: node.float("epsilon").unwrap_or(1e-5),
            };
            Ok((vec![Op::Norm(Norm::Layer(ln))], shape.to_vec()))
        }
        OpType::Relu => Ok((vec![Op::Relu], shape.to_vec())),
        OpType::MaxPool => {
            let [c, h, w] = shape[..] else {
                bail!(
                    "{}: input of shape {shape:?} per sample; it pools C x H x W",
                    node.label()
                );
            };
            if node.int("ceil_mode").unwrap_or(0) != 0 || square(node, "dilations", 1)? != 1 {
                bail!(
                    "{}: resprop maps max pooling without ceil_mode or dilation",
                    node.label()
                );
            }
            let k = square(node, "kernel_shape", 0)?;
            let (stride, pad) = (square(node, "strides", 1)?, square(node, "pads", 0)?);
            if k == 0 || stride == 0 || pad >= k || h + 2 * pad < k || w + 2 * pad < k {
                bail!(
                    "{}: a {k}x{k} window, stride {stride}, pad {pad} does not fit a {h}x{w} input",
                    node.label()
                );
            }
            let pool = crate::layers::max_pool::MaxPool {
                name,
                k,
                stride,
                pad,
            };
            let (ho, wo) = pool.out_hw(h, w);
            Ok((vec![Op::MaxPool(pool)], vec![c, ho, wo]))
        }
        OpType::Identity | OpType::Dropout => Ok((vec![], shape.to_vec())),
        OpType::GlobalAveragePool => {
            if shape.len() != 3 {
                bail!(
                    "{}: input of shape {shape:?} per sample; it pools C x H x W",
                    node.label()
                );
            }
            // resprop's pooling gives (N, C); the ONNX shape (N, C, 1, 1) differs only in
            // trailing ones, which the Flatten after it removes.
            Ok((vec![Op::Pool], vec![shape[0], 1, 1]))
        }
        OpType::Flatten => {
            if node.int("axis").unwrap_or(1) != 1 {
                bail!(
                    "{}: resprop maps Flatten with axis 1 (per sample)",
                    node.label()
                );
            }
            if shape.iter().skip(1).any(|&d| d != 1) {
                bail!("{}: flattening a {shape:?} map per sample is not mapped yet; a GlobalAveragePool before it is", node.label());
            }
            Ok((vec![], vec![shape[0]]))
        }
        OpType::Gemm => {
            if node.int("transA").unwrap_or(0) != 0
                || node.float("alpha").unwrap_or(1.0) != 1.0
                || node.float("beta").unwrap_or(1.0) != 1.0
            {
                bail!(
                    "{}: resprop maps Gemm as a dense layer (transA 0, alpha and beta 1)",
                    node.label()
                );
            }
            let b = constant(graph, node, 1, "weight")?;
            let mut w = tensor(b).into_dimensionality::<ndarray::Ix2>()?;
            if node.int("transB").unwrap_or(0) == 1 {
                w = w.reversed_axes().as_standard_layout().into_owned();
            }
            let (d_in, d_out) = w.dim();
            if shape != [d_in] {
                bail!(
                    "{}: a {d_in} -> {d_out} layer on an input of shape {shape:?} per sample",
                    node.label()
                );
            }
            let bias = match node.inputs.get(2).filter(|t| !t.is_empty()) {
                Some(_) => Some(
                    tensor(constant(graph, node, 2, "bias")?)
                        .into_shape_with_order(IxDyn(&[d_out]))?,
                ),
                None => None,
            };
            Ok((
                vec![Op::Dense(Dense {
                    name,
                    w: w.into_dyn(),
                    b: bias,
                })],
                vec![d_out],
            ))
        }
        other => bail!(
            "{}: {} is read but not yet mapped onto resprop's layers",
            node.label(),
            other.name()
        ),
    }
}

/// The ops of a sequence of nodes, from per-sample shape `shape`; returns the shape after.
fn seq(graph: &Graph, ids: &[usize], shape: &mut Vec<usize>) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for &i in ids {
        let (o, s) = ops_of(graph, &graph.nodes[i], shape)?;
        ops.extend(o);
        *shape = s;
    }
    Ok(ops)
}

/// The size of one sample the model's input declares (`[3, 32, 32]`, `[64]`).
pub fn declared_input_shape(graph: &Graph) -> Result<Vec<usize>> {
    graph
        .input_shape
        .iter()
        .skip(1)
        .map(|d| {
            d.ok_or_else(|| {
                anyhow!(
                    "the model's input '{}' does not declare its size per sample; give it with --input-shape",
                    graph.input
                )
            })
        })
        .collect()
}

/// The network of a model whose structure was found, on the input size the file declares,
/// with `name` and `sha256` saying which file it came from.
pub fn network(graph: &Graph, s: &Structure, model: &str, sha256: &str) -> Result<Network> {
    network_on(graph, s, model, sha256, declared_input_shape(graph)?)
}

/// The network of a model on samples of shape `input_shape` (a convolutional model runs on
/// any image size its ops fit; each op is checked against the shape that reaches it).
pub fn network_on(
    graph: &Graph,
    s: &Structure,
    model: &str,
    sha256: &str,
    input_shape: Vec<usize>,
) -> Result<Network> {
    let mut shape = input_shape.clone();
    let stem = seq(graph, &s.stem, &mut shape)?;
    let mut units = Vec::with_capacity(s.units.len());
    for (index, u) in s.units.iter().enumerate() {
        let before = shape.clone();
        let pre = seq(graph, &u.pre, &mut shape)?;
        let mut branch_shape = shape.clone();
        let branch = seq(graph, &u.branch, &mut branch_shape)?;
        let mut shortcut_shape = shape.clone();
        let shortcut_ops = seq(graph, &u.shortcut, &mut shortcut_shape)?;
        if branch_shape != shortcut_shape {
            bail!(
                "unit {}: the branch gives {branch_shape:?} per sample and the shortcut {shortcut_shape:?}; the Add needs both alike",
                u.name
            );
        }
        if !u.pre.is_empty() && !matches!(u.kind, ShortcutShape::Projection { .. }) {
            bail!("unit {}: ops before its split and a shortcut that is no projection are not mapped yet", u.name);
        }
        let shortcut = match u.kind {
            ShortcutShape::Identity => ShortcutKind::Identity,
            ShortcutShape::Projection { .. } => ShortcutKind::Conv1x1,
            ShortcutShape::Scale(lambda) => ShortcutKind::Scale { lambda, branch: 1.0 },
            ShortcutShape::Other => bail!(
                "unit {}: its shortcut ({}) is none that resprop models (identity, a 1x1 projection with or without BN, a constant scaling)",
                u.name,
                u.shortcut.iter().map(|&i| graph.nodes[i].op.name()).collect::<Vec<_>>().join(" ")
            ),
        };
        // A scaling shortcut is the kind itself, not an op on the path.
        let shortcut_ops = if matches!(u.kind, ShortcutShape::Scale(_)) {
            Vec::new()
        } else {
            shortcut_ops
        };
        shape = branch_shape;
        let after_add = seq(graph, &u.after_add, &mut shape)?;
        units.push(ResidualUnit {
            index,
            // The placement names a built-in recipe; for an imported unit only whether f is
            // the identity matters to the analyses, and the unit's own ops say the rest.
            placement: if after_add.is_empty() {
                Placement::FullPreact
            } else {
                Placement::Original
            },
            shortcut,
            branch,
            after_add,
            shortcut_ops,
            pre,
            changes_shape: before != shape,
            fusion: Fusion::Plain,
        });
    }
    let head = seq(graph, &s.head, &mut shape)?;
    let classes = match (head.last(), shape.as_slice()) {
        (Some(Op::Dense(_)), [c]) => *c,
        _ => bail!("the model must end in a dense layer (Gemm or MatMul) giving the logits; resprop's loss is softmax cross-entropy on them"),
    };
    Ok(Network {
        spec: NetSpec::Imported(ImportedSpec {
            model: model.to_string(),
            sha256: sha256.to_string(),
            units: s.units.iter().map(|u| u.name.clone()).collect(),
            shortcuts: s.units.iter().map(|u| u.kind.to_string()).collect(),
            folded_bn: graph.nodes.iter().filter(|n| n.folded_bn).count(),
        }),
        stem,
        units,
        head,
        classes,
        input_shape,
        fusion: Fusion::Plain,
    })
}

#[cfg(test)]
mod tests {
    //! Each fixture of tests/onnx against what PyTorch's autograd computed on the same batch
    //! (tests/onnx/make_fixtures.py), in f64: logits, loss, dE/dx_l at every unit input and at
    //! the last unit's output, and every parameter gradient, in training mode (batch
    //! statistics) and in evaluation mode (running statistics).

    use std::collections::BTreeMap;
    use std::fs::File;

    use ndarray_npy::NpzReader;

    use super::*;
    use crate::grads::Grads;
    use crate::layers::Mode;
    use crate::unit::ForwardCtx;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnx");

    /// Relative agreement asked of every compared array: the 1e-10.
    const REL: f64 = 1e-10;

    fn reference(name: &str) -> BTreeMap<String, ndarray::ArrayD<f64>> {
        let mut npz = NpzReader::new(File::open(format!("{DIR}/{name}.npz")).unwrap()).unwrap();
        let mut out = BTreeMap::new();
        for key in npz.names().unwrap() {
            let key = key.trim_end_matches(".npy").to_string();
            if key == "y" {
                continue;
            }
            out.insert(key.clone(), {
                let a: ndarray::ArrayD<f64> = npz.by_name(&key).unwrap();
                a
            });
        }
        out
    }

    fn labels(name: &str) -> Vec<usize> {
        let mut npz = NpzReader::new(File::open(format!("{DIR}/{name}.npz")).unwrap()).unwrap();
        let y: ndarray::ArrayD<i64> = npz.by_name("y").unwrap();
        y.iter().map(|&v| v as usize).collect()
    }

    /// max |a - b| / max |b|, asserted below [`REL`].
    fn close(what: &str, got: &Tensor, want: &Tensor) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
        assert!(
            err <= REL * scale.max(f64::MIN_POSITIVE),
            "{what}: max error {err:.3e} against max |value| {scale:.3e}"
        );
    }

    /// The parameter gradient resprop names `layer.w` (etc.) under PyTorch's name for it: the
    /// initializer the node reads, transposed for a Gemm (resprop's dense weight is in x out).
    fn torch_names(graph: &Graph) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for n in &graph.nodes {
            let slots: &[(usize, &str)] = match n.op {
                OpType::Conv | OpType::Gemm => &[(1, "w"), (2, "b")],
                OpType::BatchNormalization | OpType::LayerNormalization => {
                    &[(1, "gamma"), (2, "beta")]
                }
                _ => &[],
            };
            for &(i, suffix) in slots {
                if let Some(t) = n.inputs.get(i).filter(|t| !t.is_empty()) {
                    let transposed = n.op == OpType::Gemm && n.int("transB") == Some(1);
                    out.push((format!("{}.{suffix}", n.name), t.clone(), transposed));
                }
            }
        }
        out
    }

    fn agrees_with_pytorch(name: &str) {
        let graph =
            Graph::load(std::path::Path::new(&format!("{DIR}/{name}.onnx")), "model").unwrap();
        let found = super::super::find(&graph).unwrap();
        let net = network(&graph, &found, name, "").unwrap();
        let r = reference(name);
        let x = r["x"].clone();
        let y = labels(name);
        for (mode, key) in [(Mode::Train, "train"), (Mode::Eval, "eval")] {
            let ctx = ForwardCtx::analysis(mode, 0).with_weight_grads(true);
            let cache = net.forward(&x, &y, &ctx).unwrap();
            let loss = r[&format!("{key}/loss")].first().copied().unwrap();
            assert!(
                (cache.loss - loss).abs() <= REL * loss.abs(),
                "{name} {key}: loss {} against {loss}",
                cache.loss
            );
            let mut grads = Grads::new();
            let g = net.backward(&cache, &y, Some(&mut grads));
            for (l, unit) in found.units.iter().enumerate() {
                close(
                    &format!("{name} {key}: dE/dx at {}", unit.name),
                    &g.grad_x[l],
                    &r[&format!("{key}/grad_x/{}", unit.name)],
                );
            }
            close(
                &format!("{name} {key}: dE/dx_L"),
                &g.grad_x[found.units.len()],
                &r[&format!("{key}/grad_x/top")],
            );
            let mut compared = 0;
            for (ours, theirs, transposed) in torch_names(&graph) {
                let want = &r[&format!("{key}/param/{theirs}")];
                let got = grads
                    .get(&ours)
                    .unwrap_or_else(|| panic!("{name}: no gradient {ours}"));
                let got = if transposed {
                    got.t().to_owned()
                } else {
                    got.clone()
                };
                close(&format!("{name} {key}: {theirs}"), &got, want);
                compared += 1;
            }
            let params = r
                .keys()
                .filter(|k| k.starts_with(&format!("{key}/param/")))
                .count();
            assert_eq!(
                compared, params,
                "{name} {key}: every PyTorch parameter compared"
            );
        }
    }

    #[test]
    fn torchvisions_basic_block_net_agrees_with_pytorch() {
        agrees_with_pytorch("basic");
    }

    #[test]
    fn torchvisions_bottleneck_net_agrees_with_pytorch() {
        agrees_with_pytorch("bottleneck");
    }

    #[test]
    fn a_pre_activation_resnet_agrees_with_pytorch() {
        agrees_with_pytorch("preact");
    }

    #[test]
    fn a_pre_ln_mlp_agrees_with_pytorch() {
        agrees_with_pytorch("preln");
    }

    #[test]
    fn in_place_adds_and_relus_agree_with_pytorch() {
        agrees_with_pytorch("inplace");
    }
}
