//! An ONNX model read into a graph resprop can reason about: one input, one output, the nodes in
//! an order where each reads only what came before, every weight widened to f64, and every op
//! one that resprop has a layer for. Whatever does not fit is refused here, in one line naming
//! the node, before any work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use prost::Message;

use super::proto;

/// The largest model read: protobuf's own limit for one message. A larger model keeps its
/// weights in external files, which resprop does not read (see [`Constant::decode`]).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// The ONNX ops resprop maps onto its own layers, in the order the refusal lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpType {
    Conv,
    BatchNormalization,
    LayerNormalization,
    Relu,
    Sigmoid,
    Add,
    Mul,
    Gemm,
    MatMul,
    MaxPool,
    AveragePool,
    GlobalAveragePool,
    ReduceMean,
    Flatten,
    Reshape,
    Dropout,
    Identity,
}

impl OpType {
    pub const ALL: [OpType; 17] = [
        OpType::Conv,
        OpType::BatchNormalization,
        OpType::LayerNormalization,
        OpType::Relu,
        OpType::Sigmoid,
        OpType::Add,
        OpType::Mul,
        OpType::Gemm,
        OpType::MatMul,
        OpType::MaxPool,
        OpType::AveragePool,
        OpType::GlobalAveragePool,
        OpType::ReduceMean,
        OpType::Flatten,
        OpType::Reshape,
        OpType::Dropout,
        OpType::Identity,
    ];

    /// The op's ONNX name.
    pub fn name(self) -> &'static str {
        match self {
            OpType::Conv => "Conv",
            OpType::BatchNormalization => "BatchNormalization",
            OpType::LayerNormalization => "LayerNormalization",
            OpType::Relu => "Relu",
            OpType::Sigmoid => "Sigmoid",
            OpType::Add => "Add",
            OpType::Mul => "Mul",
            OpType::Gemm => "Gemm",
            OpType::MatMul => "MatMul",
            OpType::MaxPool => "MaxPool",
            OpType::AveragePool => "AveragePool",
            OpType::GlobalAveragePool => "GlobalAveragePool",
            OpType::ReduceMean => "ReduceMean",
            OpType::Flatten => "Flatten",
            OpType::Reshape => "Reshape",
            OpType::Dropout => "Dropout",
            OpType::Identity => "Identity",
        }
    }

    /// A short name for tables (`BN` for BatchNormalization).
    pub fn short(self) -> &'static str {
        match self {
            OpType::BatchNormalization => "BN",
            OpType::LayerNormalization => "LN",
            OpType::GlobalAveragePool => "GlobalAvgPool",
            OpType::AveragePool => "AvgPool",
            other => other.name(),
        }
    }

    fn parse(s: &str) -> Option<OpType> {
        OpType::ALL.into_iter().find(|o| o.name() == s)
    }

    /// The supported ops, comma-separated, for the refusal.
    pub fn supported_list() -> String {
        OpType::ALL.map(OpType::name).join(", ")
    }
}

/// A weight or other constant of the graph (an initializer or a `Constant` node's value), in
/// f64: f32 values widen exactly, integers (a Reshape's target shape) convert exactly up to 2^53.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// ONNX's element types that a constant may have (TensorProto.DataType).
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const DOUBLE: i32 = 11;
}

/// `n` little-endian values of `width` bytes from `raw`, each read by `read`.
fn from_raw(raw: &[u8], width: usize, n: usize, read: impl Fn(&[u8]) -> f64) -> Option<Vec<f64>> {
    (raw.len() == n * width).then(|| raw.chunks_exact(width).map(read).collect())
}

impl Constant {
    /// The tensor's values in f64, or why not (`what` names it in the message).
    pub fn decode(t: &proto::TensorProto, what: &str) -> Result<Constant> {
        if t.data_location == Some(proto::tensor_proto::DataLocation::External as i32) {
            bail!("{what} keeps its values in an external file, which resprop does not read; export the model with its weights inside (torch.onnx.export(..., external_data=False))");
        }
        let shape = t
            .dims
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| anyhow!("{what} has a negative dimension {d}"))
            })
            .collect::<Result<Vec<usize>>>()?;
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= (MAX_MODEL_BYTES as usize))
            .ok_or_else(|| anyhow!("{what} has too many elements ({:?})", shape))?;
        let raw = t.raw_data.as_deref().unwrap_or(&[]);
        let dt = t.data_type.unwrap_or(0);
        let values = match dt {
            dtype::FLOAT if !raw.is_empty() => from_raw(raw, 4, n, |b| {
                f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes")))
            }),
            dtype::FLOAT => Some(t.float_data.iter().map(|&v| f64::from(v)).collect()),
            dtype::DOUBLE if !raw.is_empty() => from_raw(raw, 8, n, |b| {
                f64::from_le_bytes(b.try_into().expect("8 bytes"))
            }),
            dtype::DOUBLE => Some(t.double_data.clone()),
            dtype::INT64 if !raw.is_empty() => from_raw(raw, 8, n, |b| {
                i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64
            }),
            dtype::INT64 => Some(t.int64_data.iter().map(|&v| v as f64).collect()),
            dtype::INT32 if !raw.is_empty() => from_raw(raw, 4, n, |b| {
                f64::from(i32::from_le_bytes(b.try_into().expect("4 bytes")))
            }),
            dtype::INT32 => Some(t.int32_data.iter().map(|&v| f64::from(v)).collect()),
            other => bail!(
                "{what} has element type {other}; resprop reads float, double, int32 and int64"
            ),
        };
        let values = values.filter(|v| v.len() == n).ok_or_else(|| {
            anyhow!(
                "{what} holds a different number of values than its shape {shape:?} needs ({n})"
            )
        })?;
        Ok(Constant { shape, values })
    }
}

/// A node's attribute, as the ops here use them.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Text(String),
    Tensor(Constant),
}

/// One node of the graph, its op supported.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's name in the file (`/layer1/layer1.0/conv1/Conv`), or `<op>_<index>` when
    /// it has none.
    pub name: String,
    pub op: OpType,
    /// The names of the tensors it reads: activations and constants; "" for an optional
    /// input left out.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: BTreeMap<String, Attr>,
    /// The module the exporter says the node belongs to, as a path (`/layer1/layer1.0/conv1`):
    /// from the name (PyTorch's TorchScript exporter names nodes `/layer1/layer1.0/conv1/Conv`)
    /// or from the `pkg.torch.onnx.name_scopes` metadata (its dynamo exporter); `None` when
    /// neither says.
    pub scope: Option<String>,
    /// True when the exporter says it folded a BatchNorm into this node (the dynamo
    /// exporter's `FuseBatchNormIntoConv`): its weights hold evaluation-mode statistics.
    pub folded_bn: bool,
}

impl Node {
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name) {
            Some(Attr::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn float(&self, name: &str) -> Option<f64> {
        match self.attrs.get(name) {
            Some(Attr::Float(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attrs.get(name) {
            Some(Attr::Ints(v)) => Some(v),
            _ => None,
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name) {
            Some(Attr::Text(v)) => Some(v),
            _ => None,
        }
    }

    /// `'name' (Op)`, how messages name a node.
    pub fn label(&self) -> String {
        format!("node '{}' ({})", self.name, self.op.name())
    }
}

/// A model's graph: its one input and output, its constants, and its nodes in an order where
/// every node reads only the input, constants and earlier nodes' outputs.
#[derive(Debug, Clone)]
pub struct Graph {
    pub input: String,
    /// The input's shape as the file declares it, batch first; `None` where a dimension is
    /// symbolic (`batch_size`) or not given.
    pub input_shape: Vec<Option<usize>>,
    pub output: String,
    pub nodes: Vec<Node>,
    pub constants: HashMap<String, Constant>,
    /// The ONNX operator set the model was written for.
    pub opset: i64,
    /// Who wrote it (`pytorch 2.15.0`).
    pub producer: String,
}

/// How many nodes a model may have: more than any network resprop runs in a session
/// (ResNet-1001 exports to about 3,000), few enough that a hostile file cannot make the
/// checks below take long.
pub const MAX_NODES: usize = 200_000;

impl Graph {
    /// Reads and checks the model at `path` (named `what` in errors, e.g. "--model").
    pub fn load(path: &Path, what: &str) -> Result<Graph> {
        let bytes = crate::input::read(path, MAX_MODEL_BYTES, what)?;
        Graph::decode(&bytes).map_err(|e| anyhow!("{what} {}: {e:#}", path.display()))
    }

    /// The graph of an ONNX model's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Graph> {
        let model = proto::ModelProto::decode(bytes)
            .map_err(|e| anyhow!("not an ONNX model (protobuf: {e})"))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| anyhow!("not an ONNX model: it holds no graph"))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
            .unwrap_or(0);
        if opset < 7 {
            bail!("the model's ONNX operator set is {opset}; resprop reads opset 7 and later");
        }
        if graph.node.len() > MAX_NODES {
            bail!(
                "the graph has {} nodes; resprop reads at most {MAX_NODES}",
                graph.node.len()
            );
        }
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            let name = t.name.clone().unwrap_or_default();
            let c = Constant::decode(t, &format!("initializer '{name}'"))?;
            constants.insert(name, c);
        }
        let (input, input_shape) = the_input(graph, &constants)?;
        let output = match graph.output.as_slice() {
            [o] => o.name.clone().unwrap_or_default(),
            outs => bail!(
                "the graph has {} outputs; resprop analyses a network with one output (the logits)",
                outs.len()
            ),
        };
        let mut nodes = Vec::with_capacity(graph.node.len());
        for (i, n) in graph.node.iter().enumerate() {
            let op_name = n.op_type.clone().unwrap_or_default();
            let name = match n.name.as_deref() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => format!("{op_name}_{i}"),
            };
            let domain = n.domain.as_deref().unwrap_or("");
            if op_name == "Constant" && domain.is_empty() {
                let value = n
                    .attribute
                    .iter()
                    .find(|a| a.name.as_deref() == Some("value"))
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| anyhow!("node '{name}' (Constant) has no tensor 'value'; resprop reads Constant nodes that hold a tensor"))?;
                let c = Constant::decode(value, &format!("node '{name}' (Constant)"))?;
                for o in &n.output {
                    constants.insert(o.clone(), c.clone());
                }
                continue;
            }
            let op = OpType::parse(&op_name)
                .filter(|_| domain.is_empty() || domain == "ai.onnx")
                .ok_or_else(|| {
                    let shown = if domain.is_empty() {
                        op_name.clone()
                    } else {
                        format!("{domain}.{op_name}")
                    };
                    anyhow!(
                        "node '{name}' ({shown}) is not supported; supported: {}",
                        OpType::supported_list()
                    )
                })?;
            let mut attrs = BTreeMap::new();
            for a in &n.attribute {
                let key = a.name.clone().unwrap_or_default();
                if let Some(v) = attribute(a, &name)? {
                    attrs.insert(key, v);
                }
            }
            let meta = |key: &str| {
                n.metadata_props
                    .iter()
                    .find(|p| p.key.as_deref() == Some(key))
                    .and_then(|p| p.value.as_deref())
            };
            let scope = scope_of(&name, meta("pkg.torch.onnx.name_scopes"));
            let folded_bn = meta("pkg.onnxscript.rewriter.rule_name")
                .is_some_and(|r| r.contains("FuseBatchNormIntoConv"));
            nodes.push(Node {
                name,
                op,
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                attrs,
                scope,
                folded_bn,
            });
        }
        let nodes = in_order(nodes, &input, &constants)?;
        if !nodes.iter().any(|n| n.outputs.contains(&output)) {
            bail!("no node computes the graph's output '{output}'");
        }
        Ok(Graph {
            input,
            input_shape,
            output,
            nodes,
            constants,
            opset,
            producer: format!(
                "{} {}",
                model.producer_name.as_deref().unwrap_or("unknown"),
                model.producer_version.as_deref().unwrap_or("")
            )
            .trim()
            .to_string(),
        })
    }

    /// The inputs of `node` that are activations (not constants, not left out).
    pub fn data_inputs<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = &'a str> + 'a {
        node.inputs
            .iter()
            .map(String::as_str)
            .filter(|i| !i.is_empty() && !self.constants.contains_key(*i))
    }
}

/// A node's module path: the name's directories (`/layer1/layer1.0/conv1/Conv` ->
/// `/layer1/layer1.0/conv1`), else the name scopes the dynamo exporter lists (`['', 'layer1',
/// 'layer1.0', 'add_2']` -> `/layer1/layer1.0`: the last entry is the op's own).
fn scope_of(name: &str, name_scopes: Option<&str>) -> Option<String> {
    if let Some(cut) = name.rfind('/').filter(|&c| c > 0) {
        return Some(name[..cut].to_string());
    }
    let list = name_scopes?.trim().strip_prefix('[')?.strip_suffix(']')?;
    let parts: Vec<&str> = list
        .split(',')
        .map(|p| p.trim().trim_matches(|c| c == '\'' || c == '"'))
        .collect();
    let modules = &parts[..parts.len().saturating_sub(1)];
    let path: String = modules
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| format!("/{p}"))
        .collect();
    (!path.is_empty()).then_some(path)
}

/// The graph's one real input (older exporters also list every initializer as an input) and
/// its declared shape.
fn the_input(
    graph: &proto::GraphProto,
    constants: &HashMap<String, Constant>,
) -> Result<(String, Vec<Option<usize>>)> {
    let real: Vec<&proto::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !constants.contains_key(i.name.as_deref().unwrap_or("")))
        .collect();
    let [input] = real.as_slice() else {
        bail!(
            "the graph has {} inputs besides its weights; resprop analyses a network with one input (the batch)",
            real.len()
        );
    };
    let dims = input
        .r#type
        .as_ref()
        .and_then(|t| match &t.value {
            Some(proto::type_proto::Value::TensorType(tt)) => tt.shape.as_ref(),
            _ => None,
        })
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                        usize::try_from(v).ok()
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((input.name.clone().unwrap_or_default(), dims))
}

/// An f32 attribute as the f64 of the shortest decimal that reads back as it: the number its
/// writer had in mind. ONNX keeps float attributes (a BatchNorm's epsilon and momentum) in
/// f32, so PyTorch's `eps=1e-5` arrives as 9.99999974738e-6, 2.5e-8 of epsilon off; widened
/// exactly, that moves the outputs of a BatchNorm whose variance is small next to epsilon by
/// up to half as much (torchvision's resnet50 at 64x64, batch 2, training mode: 1.5e-10 in
/// the gradients against PyTorch, 7e-13 with this reading). Weights are numbers nobody wrote
/// down, and [`Constant::decode`] widens them exactly.
fn decimal(v: f32) -> f64 {
    format!("{v:e}").parse().unwrap_or(f64::from(v))
}

/// An attribute's value, or `None` for kinds no supported op reads (graphs, sparse tensors).
fn attribute(a: &proto::AttributeProto, node: &str) -> Result<Option<Attr>> {
    use proto::attribute_proto::AttributeType as T;
    let kind = a.r#type.and_then(|t| T::try_from(t).ok());
    Ok(Some(match kind {
        Some(T::Int) => Attr::Int(a.i.unwrap_or(0)),
        Some(T::Float) => Attr::Float(decimal(a.f.unwrap_or(0.0))),
        Some(T::Ints) => Attr::Ints(a.ints.clone()),
        Some(T::Floats) => Attr::Floats(a.floats.iter().map(|&v| decimal(v)).collect()),
        Some(T::String) => {
            Attr::Text(String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[])).into())
        }
        Some(T::Tensor) => match &a.t {
            Some(t) => Attr::Tensor(Constant::decode(
                t,
                &format!(
                    "attribute '{}' of node '{node}'",
                    a.name.as_deref().unwrap_or("")
                ),
            )?),
            None => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

/// The nodes in an order where each reads only the input, constants and earlier outputs
/// (Kahn's algorithm; a valid ONNX file is already in such an order, and then it is kept).
/// Refuses a tensor written twice, a read of a tensor nothing writes, and a cycle.
fn in_order(
    nodes: Vec<Node>,
    input: &str,
    constants: &HashMap<String, Constant>,
) -> Result<Vec<Node>> {
    let mut writer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            if o == input || constants.contains_key(o) || writer.insert(o, i).is_some() {
                bail!("{} writes tensor '{o}', which is already defined; an ONNX graph defines each tensor once", n.label());
            }
        }
    }
    let mut waiting_on = vec![0usize; nodes.len()];
    let mut readers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let deps: HashSet<usize> = n
            .inputs
            .iter()
            .filter(|t| !t.is_empty() && t.as_str() != input && !constants.contains_key(*t))
            .map(|t| {
                writer.get(t.as_str()).copied().ok_or_else(|| {
                    anyhow!("{} reads tensor '{t}', which no node computes", n.label())
                })
            })
            .collect::<Result<_>>()?;
        waiting_on[i] = deps.len();
        for d in deps {
            readers.entry(d).or_default().push(i);
        }
    }
    // Ready nodes leave in file order, so a file already in order is kept as it is.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..nodes.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in readers.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
            waiting_on[r] -= 1;
            if waiting_on[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck = (0..nodes.len())
            .find(|&i| waiting_on[i] > 0)
            .expect("a node is left");
        bail!(
            "the graph has a cycle through {}; a network's graph must run forward only",
            nodes[stuck].label()
        );
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|i| slots[i].take().expect("each node once"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bytes, model, refusal, tensor};
    use super::*;

    #[test]
    fn a_model_in_order_reads_with_its_weights_widened_exactly() {
        let m = model(
            &[
                ("/a/Relu", "Relu", &["x"], &["h"]),
                ("/b/MatMul", "MatMul", &["h", "w"], &["y"]),
            ],
            vec![tensor("w", &[4, 4], &[0.1; 16])],
        );
        let g = Graph::decode(&bytes(&m)).unwrap();
        assert_eq!(g.input, "x");
        assert_eq!(g.input_shape, vec![Some(2), Some(4)]);
        assert_eq!(g.output, "y");
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(g.nodes[0].scope.as_deref(), Some("/a"));
        // f32's 0.1 widened, not f64's 0.1.
        assert_eq!(g.constants["w"].values[0], f64::from(0.1f32));
        assert_ne!(g.constants["w"].values[0], 0.1);
    }

    #[test]
    fn float_attributes_read_as_the_decimal_that_was_written() {
        use proto::attribute_proto::AttributeType;
        let mut m = model(&[("bn", "Relu", &["x"], &["y"])], vec![]);
        let attr = |name: &str, f: f32| proto::AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Float as i32),
            f: Some(f),
            ..Default::default()
        };
        let node = &mut m.graph.as_mut().unwrap().node[0];
        node.attribute = vec![attr("epsilon", 1e-5), attr("momentum", 0.9)];
        let g = Graph::decode(&bytes(&m)).unwrap();
        // PyTorch's eps=1e-5 and momentum 0.1 (ONNX's 0.9), not f32's 9.99999974738e-6 and
        // 0.899999976158.
        assert_eq!(g.nodes[0].float("epsilon"), Some(1e-5));
        assert_ne!(f64::from(1e-5f32), 1e-5);
        assert_eq!(g.nodes[0].float("momentum"), Some(0.9));
        for v in [
            1.0f32,
            0.1,
            3e-7,
            123.456,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
        ] {
            assert_eq!(decimal(v) as f32, v, "{v:e} reads back");
        }
    }

    #[test]
    fn nodes_out_of_order_are_put_in_running_order() {
        let m = model(
            &[
                ("second", "Relu", &["h"], &["y"]),
                ("first", "Relu", &["x"], &["h"]),
            ],
            vec![],
        );
        let g = Graph::decode(&bytes(&m)).unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
    }

    #[test]
    fn a_truncated_file_is_not_a_model() {
        let m = model(
            &[("r", "Relu", &["x"], &["y"])],
            vec![tensor("w", &[64], &[1.0; 64])],
        );
        let b = bytes(&m);
        let e = format!("{:#}", Graph::decode(&b[..b.len() / 2]).unwrap_err());
        assert!(e.starts_with("not an ONNX model"), "{e}");
        let e = format!("{:#}", Graph::decode(b"hello, world").unwrap_err());
        assert!(e.starts_with("not an ONNX model"), "{e}");
    }

    #[test]
    fn an_unsupported_op_is_named_with_its_node_and_the_supported_list() {
        let m = model(
            &[
                ("/layer1/layer1.0/attn/Softmax", "Softmax", &["x"], &["h"]),
                ("r", "Relu", &["h"], &["y"]),
            ],
            vec![],
        );
        assert_eq!(
            refusal(&m),
            format!(
                "node '/layer1/layer1.0/attn/Softmax' (Softmax) is not supported; supported: {}",
                OpType::supported_list()
            )
        );
        assert!(OpType::supported_list().starts_with("Conv, BatchNormalization, "));
    }

    #[test]
    fn a_cycle_an_unknown_tensor_and_a_tensor_written_twice_are_refused() {
        let cycle = model(
            &[
                ("a", "Add", &["x", "c"], &["b"]),
                ("b", "Relu", &["b"], &["c"]),
                ("out", "Relu", &["c"], &["y"]),
            ],
            vec![],
        );
        assert!(
            refusal(&cycle).starts_with("the graph has a cycle through node 'a' (Add)"),
            "{}",
            refusal(&cycle)
        );
        let unknown = model(&[("r", "Relu", &["q"], &["y"])], vec![]);
        assert_eq!(
            refusal(&unknown),
            "node 'r' (Relu) reads tensor 'q', which no node computes"
        );
        let twice = model(
            &[("r", "Relu", &["x"], &["y"]), ("s", "Relu", &["x"], &["y"])],
            vec![],
        );
        assert!(refusal(&twice)
            .starts_with("node 's' (Relu) writes tensor 'y', which is already defined"));
    }

    #[test]
    fn weights_in_an_external_file_are_refused_with_the_export_that_avoids_them() {
        let mut w = tensor("w", &[4, 4], &[]);
        w.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
        let m = model(&[("m", "MatMul", &["x", "w"], &["y"])], vec![w]);
        let e = refusal(&m);
        assert!(
            e.contains("external file") && e.contains("external_data=False"),
            "{e}"
        );
    }

    #[test]
    fn a_tensor_whose_values_do_not_fill_its_shape_is_refused() {
        let m = model(
            &[("m", "MatMul", &["x", "w"], &["y"])],
            vec![tensor("w", &[4, 4], &[1.0; 15])],
        );
        assert!(refusal(&m)
            .contains("holds a different number of values than its shape [4, 4] needs (16)"));
    }

    #[test]
    fn scopes_come_from_names_or_from_the_dynamo_exporters_metadata() {
        assert_eq!(
            scope_of("/layer1/layer1.0/conv1/Conv", None).as_deref(),
            Some("/layer1/layer1.0/conv1")
        );
        assert_eq!(
            scope_of("node_add_2", Some("['', 'layer1', 'layer1.0', 'add_2']")).as_deref(),
            Some("/layer1/layer1.0")
        );
        assert_eq!(scope_of("node_add_2", Some("['', 'add_2']")), None);
        assert_eq!(scope_of("Add_12", None), None);
    }
}
