//! An imported graph onto resprop's own layers: each node becomes the op with the same math
//! (and its hand-written backward), each found unit a [`ResidualUnit`], so every analysis runs
//! on the user's network as on a built-in one.
//!
//! The shapes are followed per sample from the input the file declares, as resprop's tensors
//! have them, so that an op that does not fit its input is refused naming the node. They
//! differ from ONNX's in one place: resprop's global pooling gives `(N, C)` where ONNX's
//! GlobalAveragePool (or a ReduceMean keeping its axes) gives `(N, C, 1, 1)`, so the Flatten
//! or Reshape after it has nothing left to do, while one after a map that is still
//! `(N, C, H, W)` (an AveragePool over the whole map, or none) flattens it.

use anyhow::{anyhow, bail, Result};
use ndarray::IxDyn;

use super::graph::{Constant, Graph, Node, OpType};
use super::units::{ShortcutShape, Structure};
use crate::layers::avg_pool::AvgPool;
use crate::layers::batch_norm::BatchNorm;
use crate::layers::branch_scale::BranchScale;
use crate::layers::layer_norm::LayerNorm;
use crate::layers::max_pool::MaxPool;
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

/// The constant `i`-th input of `node` as a vector of `n` values (a bias, a scale), or why
/// not.
fn vector(graph: &Graph, node: &Node, i: usize, what: &str, n: usize) -> Result<Tensor> {
    let c = constant(graph, node, i, what)?;
    if c.values.len() != n {
        bail!(
            "{}: {what} of shape {:?} for {n} channels",
            node.label(),
            c.shape
        );
    }
    Ok(Tensor::from_shape_vec(IxDyn(&[n]), c.values.clone()).expect("n values"))
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

/// Refuses padding the node leaves to be worked out (`auto_pad` SAME_UPPER and the like):
/// resprop maps the explicit `pads`.
fn explicit_pads(node: &Node) -> Result<()> {
    match node.text("auto_pad") {
        Some(p) if p != "NOTSET" => {
            bail!("{}: auto_pad {p}; resprop maps explicit pads", node.label())
        }
        _ => Ok(()),
    }
}

/// A pooling node's square window on a C x H x W input: `(k, stride, pad)`, or why not.
/// Padding of a window's size or more would make windows of padding alone.
fn pool_window(node: &Node, shape: &[usize]) -> Result<(usize, usize, usize)> {
    let [_, h, w] = shape[..] else {
        bail!(
            "{}: input of shape {shape:?} per sample; it pools C x H x W",
            node.label()
        );
    };
    if node.int("ceil_mode").unwrap_or(0) != 0 || square(node, "dilations", 1)? != 1 {
        bail!(
            "{}: resprop maps pooling without ceil_mode or dilation",
            node.label()
        );
    }
    explicit_pads(node)?;
    let k = square(node, "kernel_shape", 0)?;
    let (stride, pad) = (square(node, "strides", 1)?, square(node, "pads", 0)?);
    if k == 0 || stride == 0 || pad >= k || h + 2 * pad < k || w + 2 * pad < k {
        bail!(
            "{}: a {k}x{k} window, stride {stride}, pad {pad} does not fit a {h}x{w} input",
            node.label()
        );
    }
    Ok((k, stride, pad))
}

/// The factor of a Mul by a constant on an input of per-sample shape `shape`, in the
/// constant's own shape: one value, or one per channel (axis 1) in a shape that broadcasts
/// so (`(C, 1, 1)` or `(1, C, 1, 1)` on a C x H x W map, `(C)` on a vector). A `(C)` on a map
/// would scale its columns, not its channels, and is refused with the rest.
fn channel_scale(graph: &Graph, node: &Node, shape: &[usize]) -> Result<Tensor> {
    let constants: Vec<&Constant> = node
        .inputs
        .iter()
        .filter_map(|t| graph.constants.get(t))
        .collect();
    let ([c], 1) = (constants.as_slice(), graph.data_inputs(node).count()) else {
        bail!(
            "{}: a product of two computed tensors; resprop maps a Mul by a constant (a scalar or one value per channel)",
            node.label()
        );
    };
    // The constant's axes aligned with the input's last ones, batch first, as broadcasting
    // aligns them: every axis 1 but the channels'.
    let rank = shape.len() + 1;
    let per_channel = c.shape.len() <= rank
        && c.shape
            .iter()
            .enumerate()
            .all(|(j, &d)| d == 1 || (rank - c.shape.len() + j == 1 && shape.first() == Some(&d)));
    if !per_channel {
        bail!(
            "{}: a factor of shape {:?} on an input of shape {shape:?} per sample; resprop maps one value or one per channel",
            node.label(),
            c.shape
        );
    }
    Ok(tensor(c))
}

/// The ops that make an input of per-sample shape `shape` a vector: none for one already.
fn to_vector(shape: &[usize]) -> Vec<Op> {
    if shape.len() == 1 {
        Vec::new()
    } else {
        vec![Op::Flatten]
    }
}

/// True when a Reshape to `target` (ONNX's: 0 copies the input's dimension, -1 is inferred)
/// makes each sample of per-sample shape `shape` a vector: `[N, -1]`, `[0, -1]`, `[-1, D]`,
/// `[N, D]` and the like, with `D` the sample's size and `N` the batch the model declares.
fn reshapes_to_vector(target: &[i64], shape: &[usize], batch: Option<usize>) -> bool {
    let d = shape.iter().product::<usize>() as i64;
    let [n, v] = target[..] else {
        return false;
    };
    let features = match v {
        -1 => (n != -1).then_some(d),
        0 => shape.first().map(|&c| c as i64),
        v => Some(v),
    };
    let batch_first = n == 0 || n == -1 || batch.is_some_and(|b| n == b as i64);
    batch_first && features == Some(d)
}

/// Why an Add of a constant is not mapped: resprop maps it only as a bias.
fn not_a_bias(node: &Node) -> anyhow::Error {
    anyhow!(
        "{}: an Add of a constant is mapped only as the bias of the MatMul (or of a Gemm without one) right before it",
        node.label()
    )
}

/// The bias an Add of a constant gives the dense layer `dense` of the node `before` it (a
/// MatMul, or a Gemm without a bias, whose output it reads), or why not.
fn bias_of(graph: &Graph, add: &Node, before: Option<&Node>, dense: &Dense) -> Result<Tensor> {
    let reads_dense = before.is_some_and(|b| {
        matches!(b.op, OpType::MatMul | OpType::Gemm)
            && graph
                .data_inputs(add)
                .eq(b.outputs.first().map(String::as_str))
    });
    if !reads_dense || dense.b.is_some() {
        return Err(not_a_bias(add));
    }
    let i = add
        .inputs
        .iter()
        .position(|t| graph.constants.contains_key(t))
        .ok_or_else(|| not_a_bias(add))?;
    vector(graph, add, i, "bias", dense.d_out())
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
            explicit_pads(node)?;
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
                Some(_) => Some(vector(graph, node, 2, "bias", c_out)?),
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
            let c = constant(graph, node, 1, "scale")?.values.len();
            if shape.first() != Some(&c) {
                bail!(
                    "{}: {c} channels, the input has shape {shape:?} per sample",
                    node.label()
                );
            }
            let get = |i, what| vector(graph, node, i, what, c);
            // ONNX's momentum weighs the old running value (0.9); resprop's, like PyTorch's,
            // the batch's (0.1).
            let bn = BatchNorm {
                name,
                gamma: get(1, "scale")?,
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
            let gamma = vector(graph, node, 1, "scale", shape[0])?;
            let beta = match node.inputs.get(2).filter(|t| !t.is_empty()) {
                Some(_) => vector(graph, node, 2, "bias", shape[0])?,
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
        OpType::Sigmoid => Ok((vec![Op::Sigmoid], shape.to_vec())),
        OpType::MaxPool => {
            let (k, stride, pad) = pool_window(node, shape)?;
            let pool = MaxPool {
                name,
                k,
                stride,
                pad,
            };
            let (ho, wo) = pool.out_hw(shape[1], shape[2]);
            Ok((vec![Op::MaxPool(pool)], vec![shape[0], ho, wo]))
        }
        OpType::AveragePool => {
            let (k, stride, pad) = pool_window(node, shape)?;
            let count_include_pad = match node.int("count_include_pad").unwrap_or(0) {
                0 => false,
                1 => true,
                v => bail!("{}: count_include_pad {v}; ONNX gives 0 or 1", node.label()),
            };
            let pool = AvgPool {
                name,
                k,
                stride,
                pad,
                count_include_pad,
            };
            let (ho, wo) = pool.out_hw(shape[1], shape[2]);
            Ok((vec![Op::AvgPool(pool)], vec![shape[0], ho, wo]))
        }
        OpType::Identity | OpType::Dropout => Ok((vec![], shape.to_vec())),
        OpType::GlobalAveragePool => {
            if shape.len() != 3 {
                bail!(
                    "{}: input of shape {shape:?} per sample; it pools C x H x W",
                    node.label()
                );
            }
            Ok((vec![Op::Pool], vec![shape[0]]))
        }
        OpType::ReduceMean => {
            // Opset 18 moved the axes from an attribute to a second input.
            let axes: Vec<i64> = match (node.ints("axes"), node.inputs.get(1)) {
                (Some(a), _) => a.to_vec(),
                (None, Some(t)) if !t.is_empty() => constant(graph, node, 1, "axes")?
                    .values
                    .iter()
                    .map(|&v| v as i64)
                    .collect(),
                (None, _) => Vec::new(),
            };
            let rank = shape.len() as i64 + 1;
            let mut axes_from_0: Vec<i64> = axes
                .iter()
                .map(|&a| if a < 0 { a + rank } else { a })
                .collect();
            axes_from_0.sort_unstable();
            if shape.len() != 3 || axes_from_0 != [2, 3] {
                bail!(
                    "{}: the mean over axes {axes:?} of a {shape:?} input per sample; resprop maps ReduceMean over H and W (axes [2, 3]) of C x H x W",
                    node.label()
                );
            }
            if !matches!(node.int("keepdims").unwrap_or(1), 0 | 1) {
                bail!("{}: keepdims is 0 or 1 in ONNX", node.label());
            }
            Ok((vec![Op::Pool], vec![shape[0]]))
        }
        OpType::Flatten => {
            if node.int("axis").unwrap_or(1) != 1 {
                bail!(
                    "{}: resprop maps Flatten with axis 1 (per sample)",
                    node.label()
                );
            }
            Ok((to_vector(shape), vec![shape.iter().product()]))
        }
        OpType::Reshape => {
            let target = constant(graph, node, 1, "target shape")?;
            let target: Vec<i64> = target.values.iter().map(|&v| v as i64).collect();
            // With allowzero, a 0 is a size of zero, not the input's dimension.
            let zero_is_zero = node.int("allowzero").unwrap_or(0) != 0 && target.contains(&0);
            let batch = graph.input_shape.first().copied().flatten();
            if zero_is_zero || !reshapes_to_vector(&target, shape, batch) {
                bail!(
                    "{}: a reshape to {target:?} of a {shape:?} input per sample; resprop maps Reshape to a vector per sample ([N, -1], [0, -1], [-1, D] or [N, D] with D = {})",
                    node.label(),
                    shape.iter().product::<usize>()
                );
            }
            Ok((to_vector(shape), vec![shape.iter().product()]))
        }
        OpType::Mul => {
            let a = channel_scale(graph, node, shape)?;
            Ok((
                vec![Op::BranchScale(BranchScale { name, a })],
                shape.to_vec(),
            ))
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
            let mut w = tensor(b)
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|_| {
                    anyhow!(
                        "{}: weight of shape {:?}; a dense layer's is 2-D",
                        node.label(),
                        b.shape
                    )
                })?;
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
                Some(_) => Some(vector(graph, node, 2, "bias", d_out)?),
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
        OpType::MatMul => {
            // x W: the activation first, a weight second (W x would mix the samples).
            let w = match node.inputs.as_slice() {
                [x, w] if !graph.constants.contains_key(x) => graph.constants.get(w),
                _ => None,
            };
            let Some(Constant {
                shape: w_shape,
                values,
            }) = w
            else {
                bail!(
                    "{}: resprop maps MatMul as x W, the activation times a constant weight",
                    node.label()
                );
            };
            let [d_in, d_out] = w_shape[..] else {
                bail!(
                    "{}: weight of shape {w_shape:?}; resprop maps a 2-D weight (D_in x D_out)",
                    node.label()
                );
            };
            if shape != [d_in] {
                bail!(
                    "{}: a {d_in} -> {d_out} layer on an input of shape {shape:?} per sample",
                    node.label()
                );
            }
            let w = Tensor::from_shape_vec(IxDyn(&[d_in, d_out]), values.clone())
                .expect("the shape fits the values");
            Ok((vec![Op::Dense(Dense { name, w, b: None })], vec![d_out]))
        }
        // Reached only by an Add that is no bias: seq maps those that are.
        OpType::Add => Err(not_a_bias(node)),
    }
}

/// The ops of a sequence of nodes, from per-sample shape `shape`; returns the shape after.
/// An Add of a constant right after a MatMul (or a Gemm without a bias) is that dense
/// layer's bias.
fn seq(graph: &Graph, ids: &[usize], shape: &mut Vec<usize>) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (j, &i) in ids.iter().enumerate() {
        let node = &graph.nodes[i];
        if node.op == OpType::Add {
            let before = j.checked_sub(1).map(|p| &graph.nodes[ids[p]]);
            let Some(Op::Dense(dense)) = ops.last_mut() else {
                return Err(not_a_bias(node));
            };
            dense.b = Some(bias_of(graph, node, before, dense)?);
            continue;
        }
        let (o, s) = ops_of(graph, node, shape)?;
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
mod mapping {
    //! What single nodes and short sequences map onto, and what is refused, on graphs built
    //! in code.

    use std::collections::{BTreeMap, HashMap};

    use super::super::graph::Attr;
    use super::*;

    /// A node reading `inputs` (its output: `<name>_out`) with these attributes.
    fn node(name: &str, op: OpType, inputs: &[&str], attrs: &[(&str, Attr)]) -> Node {
        Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![format!("{name}_out")],
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            scope: None,
            folded_bn: false,
        }
    }

    /// A graph of `nodes` on an input `x` of batch 2, with these constants.
    fn graph(nodes: Vec<Node>, constants: &[(&str, &[usize], &[f64])]) -> Graph {
        Graph {
            input: "x".into(),
            input_shape: vec![Some(2)],
            output: nodes.last().map_or("x".into(), |n| n.outputs[0].clone()),
            nodes,
            constants: constants
                .iter()
                .map(|(n, shape, v)| {
                    let c = Constant {
                        shape: shape.to_vec(),
                        values: v.to_vec(),
                    };
                    (n.to_string(), c)
                })
                .collect::<HashMap<_, _>>(),
            opset: 18,
            producer: "test".into(),
        }
    }

    /// The ops of the whole graph, in order, on per-sample shape `shape`, and the shape after.
    fn map(g: &Graph, shape: &[usize]) -> Result<(Vec<Op>, Vec<usize>)> {
        let mut shape = shape.to_vec();
        let ids: Vec<usize> = (0..g.nodes.len()).collect();
        let ops = seq(g, &ids, &mut shape)?;
        Ok((ops, shape))
    }

    fn refusal(g: &Graph, shape: &[usize]) -> String {
        format!("{:#}", map(g, shape).expect_err("refused"))
    }

    fn ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }

    #[test]
    fn average_pooling_keeps_its_window_and_whether_the_padding_counts() {
        let attrs = [
            ("kernel_shape", ints(&[3, 3])),
            ("strides", ints(&[2, 2])),
            ("pads", ints(&[1, 1, 1, 1])),
        ];
        for (count, counted) in [(None, false), (Some(0), false), (Some(1), true)] {
            let mut a = attrs.to_vec();
            a.extend(count.map(|c| ("count_include_pad", Attr::Int(c))));
            let g = graph(vec![node("p", OpType::AveragePool, &["x"], &a)], &[]);
            let (ops, shape) = map(&g, &[4, 7, 6]).unwrap();
            assert_eq!(shape, [4, 4, 3]);
            let [Op::AvgPool(p)] = &ops[..] else {
                panic!("{ops:?}")
            };
            assert_eq!(
                (p.k, p.stride, p.pad, p.count_include_pad),
                (3, 2, 1, counted)
            );
        }
        let mut ceil = attrs.to_vec();
        ceil.push(("ceil_mode", Attr::Int(1)));
        let g = graph(vec![node("p", OpType::AveragePool, &["x"], &ceil)], &[]);
        assert_eq!(
            refusal(&g, &[4, 7, 6]),
            "node 'p' (AveragePool): resprop maps pooling without ceil_mode or dilation"
        );
        let mut same = attrs.to_vec();
        same.push(("auto_pad", Attr::Text("SAME_UPPER".into())));
        let g = graph(vec![node("p", OpType::AveragePool, &["x"], &same)], &[]);
        assert_eq!(
            refusal(&g, &[4, 7, 6]),
            "node 'p' (AveragePool): auto_pad SAME_UPPER; resprop maps explicit pads"
        );
    }

    #[test]
    fn a_mul_by_a_constant_is_a_learned_scale_in_the_constants_shape() {
        for (shape, c_shape, per_sample) in [
            (&[][..], 1, vec![4, 3, 3]),
            (&[4, 1, 1][..], 4, vec![4, 3, 3]),
            (&[1, 4, 1, 1][..], 4, vec![4, 3, 3]),
            (&[4][..], 4, vec![4]),
            (&[1, 4][..], 4, vec![4]),
            (&[1][..], 1, vec![4]),
        ] {
            let values = vec![0.5; c_shape];
            let g = graph(
                vec![node("/u/Mul", OpType::Mul, &["alpha", "x"], &[])],
                &[("alpha", shape, &values)],
            );
            let (ops, after) = map(&g, &per_sample).unwrap();
            assert_eq!(after, per_sample);
            let [Op::BranchScale(b)] = &ops[..] else {
                panic!("{ops:?}")
            };
            assert_eq!((b.name.as_str(), b.a.shape()), ("/u/Mul", shape));
        }
        // (C) on a map would scale its columns: refused, even where W = C.
        let g = graph(
            vec![node("m", OpType::Mul, &["x", "c"], &[])],
            &[("c", &[4], &[1.0; 4])],
        );
        assert_eq!(
            refusal(&g, &[4, 3, 4]),
            "node 'm' (Mul): a factor of shape [4] on an input of shape [4, 3, 4] per sample; resprop maps one value or one per channel"
        );
        let g = graph(
            vec![
                node("r", OpType::Relu, &["x"], &[]),
                node("m", OpType::Mul, &["x", "r_out"], &[]),
            ],
            &[],
        );
        let e = format!("{:#}", ops_of(&g, &g.nodes[1], &[4]).unwrap_err());
        assert_eq!(e, "node 'm' (Mul): a product of two computed tensors; resprop maps a Mul by a constant (a scalar or one value per channel)");
    }

    #[test]
    fn an_add_of_a_constant_is_the_bias_of_the_matmul_before_it() {
        let w: Vec<f64> = (0..12).map(f64::from).collect();
        let consts: [(&str, &[usize], &[f64]); 3] = [
            ("w", &[4, 3], &w),
            ("b", &[3], &[0.1, 0.2, 0.3]),
            ("b4", &[4], &[0.0; 4]),
        ];
        let g = graph(
            vec![
                node("mm", OpType::MatMul, &["x", "w"], &[]),
                node("add", OpType::Add, &["b", "mm_out"], &[]),
            ],
            &consts,
        );
        let (ops, shape) = map(&g, &[4]).unwrap();
        assert_eq!(shape, [3]);
        let [Op::Dense(d)] = &ops[..] else {
            panic!("{ops:?}")
        };
        assert_eq!((d.name.as_str(), d.d_in(), d.d_out()), ("mm", 4, 3));
        assert_eq!(d.w[[1, 2]], 5.0);
        assert_eq!(d.b.as_ref().unwrap().as_slice(), Some(&[0.1, 0.2, 0.3][..]));
        // After anything else, an Add of a constant is refused.
        let g = graph(
            vec![
                node("r", OpType::Relu, &["x"], &[]),
                node("add", OpType::Add, &["r_out", "b4"], &[]),
            ],
            &consts,
        );
        assert_eq!(refusal(&g, &[4]), "node 'add' (Add): an Add of a constant is mapped only as the bias of the MatMul (or of a Gemm without one) right before it");
        // A Gemm that has its bias, a bias of the wrong size, W x.
        let g = graph(
            vec![
                node("gemm", OpType::Gemm, &["x", "w", "b"], &[]),
                node("add", OpType::Add, &["gemm_out", "b"], &[]),
            ],
            &consts,
        );
        assert!(refusal(&g, &[4])
            .starts_with("node 'add' (Add): an Add of a constant is mapped only as the bias"));
        let g = graph(
            vec![
                node("mm", OpType::MatMul, &["x", "w"], &[]),
                node("add", OpType::Add, &["mm_out", "b4"], &[]),
            ],
            &consts,
        );
        assert_eq!(
            refusal(&g, &[4]),
            "node 'add' (Add): bias of shape [4] for 3 channels"
        );
        let g = graph(vec![node("mm", OpType::MatMul, &["w", "x"], &[])], &consts);
        assert_eq!(
            refusal(&g, &[4]),
            "node 'mm' (MatMul): resprop maps MatMul as x W, the activation times a constant weight"
        );
        let g = graph(vec![node("mm", OpType::MatMul, &["x", "w"], &[])], &consts);
        assert_eq!(
            refusal(&g, &[3]),
            "node 'mm' (MatMul): a 4 -> 3 layer on an input of shape [3] per sample"
        );
    }

    #[test]
    fn reduce_mean_over_h_and_w_is_global_pooling() {
        for (attrs, axes_input) in [
            (
                vec![("axes", ints(&[2, 3])), ("keepdims", Attr::Int(0))],
                None,
            ),
            (vec![], Some("axes")),
            (vec![("keepdims", Attr::Int(1))], Some("axes")),
        ] {
            let inputs: Vec<&str> = std::iter::once("x").chain(axes_input).collect();
            let g = graph(
                vec![node("mean", OpType::ReduceMean, &inputs, &attrs)],
                &[("axes", &[2], &[-1.0, -2.0])],
            );
            let (ops, shape) = map(&g, &[4, 3, 3]).unwrap();
            assert!(matches!(ops[..], [Op::Pool]), "{ops:?}");
            assert_eq!(shape, [4]);
        }
        let g = graph(
            vec![node(
                "mean",
                OpType::ReduceMean,
                &["x"],
                &[("axes", ints(&[1]))],
            )],
            &[],
        );
        assert_eq!(refusal(&g, &[4, 3, 3]), "node 'mean' (ReduceMean): the mean over axes [1] of a [4, 3, 3] input per sample; resprop maps ReduceMean over H and W (axes [2, 3]) of C x H x W");
    }

    #[test]
    fn flatten_and_reshape_to_a_vector_flatten_a_map_and_leave_a_pooled_one() {
        let flatten = graph(vec![node("f", OpType::Flatten, &["x"], &[])], &[]);
        let (ops, shape) = map(&flatten, &[4, 3, 2]).unwrap();
        assert!(matches!(ops[..], [Op::Flatten]), "{ops:?}");
        assert_eq!(shape, [24]);
        // After global pooling resprop's tensor is (N, C) already.
        let pooled = graph(
            vec![
                node("gap", OpType::GlobalAveragePool, &["x"], &[]),
                node("f", OpType::Flatten, &["gap_out"], &[]),
            ],
            &[],
        );
        let (ops, shape) = map(&pooled, &[4, 3, 2]).unwrap();
        assert!(matches!(ops[..], [Op::Pool]), "{ops:?}");
        assert_eq!(shape, [4]);
        for target in [[2.0, -1.0], [0.0, -1.0], [-1.0, 24.0], [2.0, 24.0]] {
            let g = graph(
                vec![node("r", OpType::Reshape, &["x", "t"], &[])],
                &[("t", &[2], &target)],
            );
            let (ops, shape) = map(&g, &[4, 3, 2]).unwrap();
            assert!(matches!(ops[..], [Op::Flatten]), "{target:?}: {ops:?}");
            assert_eq!(shape, [24]);
        }
        for target in [
            &[-1.0][..],
            &[3.0, -1.0],
            &[-1.0, -1.0],
            &[2.0, 4.0, 6.0],
            &[2.0, 12.0],
        ] {
            let g = graph(
                vec![node("r", OpType::Reshape, &["x", "t"], &[])],
                &[("t", &[target.len()], target)],
            );
            let e = refusal(&g, &[4, 3, 2]);
            assert!(e.starts_with("node 'r' (Reshape): a reshape to "), "{e}");
            assert!(e.ends_with("with D = 24)"), "{e}");
        }
        let axis = graph(
            vec![node(
                "f",
                OpType::Flatten,
                &["x"],
                &[("axis", Attr::Int(2))],
            )],
            &[],
        );
        assert_eq!(
            refusal(&axis, &[4, 3, 2]),
            "node 'f' (Flatten): resprop maps Flatten with axis 1 (per sample)"
        );
    }

    #[test]
    fn a_reshape_to_a_vector_is_told_by_its_target_alone() {
        let s = [8, 2, 2];
        assert!(reshapes_to_vector(&[2, -1], &s, Some(2)));
        assert!(!reshapes_to_vector(&[2, -1], &s, None));
        assert!(reshapes_to_vector(&[0, -1], &s, None));
        assert!(reshapes_to_vector(&[-1, 32], &s, None));
        assert!(reshapes_to_vector(&[0, 32], &s, None));
        assert!(!reshapes_to_vector(&[-1, 16], &s, None));
        // A 0 copies the input's dimension: the channels, the whole sample only if pooled.
        assert!(!reshapes_to_vector(&[0, 0], &s, None));
        assert!(reshapes_to_vector(&[0, 0], &[8], None));
    }
}

#[cfg(test)]
mod tests {
    //! Each fixture of tests/onnx against what PyTorch's autograd computed on the same batch
    //! (tests/onnx/make_fixtures.py), in f64, in training mode (batch statistics) and in
    //! evaluation mode (running statistics): the loss, the softmax of the logits, dE/dx_l at
    //! every unit input and at the last unit's output, the direct part D_l at each of these,
    //! and every parameter gradient ([`super::super::reference::compare`]).

    use std::path::Path;

    use crate::import::reference::{compare, load_model, Kind, Reference};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnx");

    /// Relative agreement asked of every compared array (`max |a - b| / max |b|`): the
    /// issue's 1e-10.
    const REL: f64 = 1e-10;

    fn agrees_with_pytorch(name: &str) {
        let (graph, found, net) = load_model(Path::new(&format!("{DIR}/{name}.onnx"))).unwrap();
        let reference = Reference::load(Path::new(&format!("{DIR}/{name}.npz"))).unwrap();
        let cmp = compare(&graph, &found, &net, &reference).unwrap();
        let table = cmp.table(REL);
        // Every array of the reference was compared, and every kind in both modes.
        assert!(cmp.unused.is_empty(), "{name}:\n{table}");
        let units = found.units.len() + 1;
        for mode in ["train", "eval"] {
            for (kind, want) in [
                (Kind::Loss, 1),
                (Kind::Probs, 1),
                (Kind::GradX, units),
                (Kind::Direct, units),
            ] {
                let n = cmp
                    .differences
                    .iter()
                    .filter(|d| d.mode == mode && d.kind == kind)
                    .count();
                assert_eq!(n, want, "{name} {mode} {kind}:\n{table}");
            }
        }
        let failures = cmp.failures(REL);
        assert!(
            failures.is_empty(),
            "{name}: above {REL:e} relative: {failures:?}\n{table}"
        );
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

    /// Average pooling (padding counted and not), a sigmoid, ReZero's learned scalar, a
    /// LayerScale, constant factors on a shortcut and a branch, and a flattened map into
    /// MatMul + Add.
    #[test]
    fn pooling_sigmoid_scales_and_a_matmul_head_agree_with_pytorch() {
        agrees_with_pytorch("ops");
    }

    /// PyTorch's default exporter: BatchNorm folded into the convs, ReduceMean and Reshape in
    /// the head, units named from the metadata.
    #[test]
    fn the_dynamo_exporters_folded_net_agrees_with_pytorch() {
        agrees_with_pytorch("dynamo");
    }
}
