//! A network the user brings: an ONNX model (`--model FILE.onnx`, exported from PyTorch or any
//! framework that writes ONNX).
//!
//! - [`graph`]: the file read into a checked graph (one input, one output, the nodes in
//!   running order, the weights in f64, every op one resprop has a layer for);
//! - [`units`]: the graph cut into a stem, residual units (two paths from one tensor meeting
//!   at an Add) and a head, each unit named by its module (`layer1.0`);
//! - [`build`]: the graph onto resprop's layers, a [`crate::net::Network`];
//! - [`reference`]: an imported network against PyTorch's autograd on the same batch.

pub mod build;
pub mod graph;
pub mod proto;
pub mod reference;
pub mod units;

pub use graph::{Graph, OpType};
pub use units::{find, FoundUnit, ShortcutShape, Structure};

/// What `resprop inspect` prints: the model, then each part of its structure with its ops
/// (short names: BN is BatchNormalization, LN LayerNormalization).
pub fn describe(graph: &Graph, s: &Structure) -> String {
    let ops = |ids: &[usize]| -> String {
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.iter()
                .map(|&i| graph.nodes[i].op.short())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let shape = graph
        .input_shape
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect::<Vec<_>>()
        .join("x");
    let mut out = format!(
        "model: {} nodes, {} constants, opset {}, written by {}\ninput '{}' ({shape}), output '{}'\n",
        graph.nodes.len(),
        graph.constants.len(),
        graph.opset,
        graph.producer,
        graph.input,
        graph.output
    );
    out.push_str(&format!("stem: {}\n", ops(&s.stem)));
    if s.units.is_empty() {
        out.push_str("no residual unit found: the network runs as a plain net\n");
    } else {
        let rows: Vec<[String; 5]> = s
            .units
            .iter()
            .enumerate()
            .map(|(l, u)| {
                let shortcut = match u.kind {
                    ShortcutShape::Other => ops(&u.shortcut),
                    _ => u.kind.to_string(),
                };
                let branch = if u.pre.is_empty() {
                    ops(&u.branch)
                } else {
                    format!("[{}] {}", ops(&u.pre), ops(&u.branch))
                };
                [
                    l.to_string(),
                    u.name.clone(),
                    shortcut,
                    branch,
                    ops(&u.after_add),
                ]
            })
            .collect();
        let header = [
            "l",
            "unit",
            "shortcut h",
            "branch F",
            "after the addition f",
        ];
        let width = |c: usize| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
        out.push_str(&format!("{} residual units:\n", s.units.len()));
        for r in std::iter::once(header.map(String::from)).chain(rows) {
            out.push_str(&format!(
                "{:>w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}\n",
                r[0], r[1], r[2], r[3], r[4]
            ));
        }
        if s.units.iter().any(|u| !u.pre.is_empty()) {
            out.push_str(
                "[ ]: ops the unit runs once before its two paths split (pre-activation)\n",
            );
        }
    }
    out.push_str(&format!("head: {}\n", ops(&s.head)));
    let folded = graph.nodes.iter().filter(|n| n.folded_bn).count();
    if folded > 0 {
        out.push_str(&format!(
            "note: the exporter folded BatchNorm into {folded} convolution{}: this is the network in evaluation mode (export with training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False, dynamo=False to keep BatchNorm)\n",
            if folded == 1 { "" } else { "s" }
        ));
    }
    out
}

/// Small ONNX models built in code, for the tests of this module and the integration tests
/// (a model no exporter writes: no residual unit, a cycle, an unknown op).
#[doc(hidden)]
pub mod testing {
    use prost::Message;

    use super::proto;

    /// A node: (name, op type, inputs, outputs).
    pub type N<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str]);

    pub fn tensor(name: &str, dims: &[i64], values: &[f32]) -> proto::TensorProto {
        proto::TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(1),
            float_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn value_info(name: &str, dims: &[i64]) -> proto::ValueInfoProto {
        use proto::tensor_shape_proto::{dimension::Value, Dimension};
        proto::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(proto::TypeProto {
                value: Some(proto::type_proto::Value::TensorType(
                    proto::type_proto::Tensor {
                        elem_type: Some(11),
                        shape: Some(proto::TensorShapeProto {
                            dim: dims
                                .iter()
                                .map(|&d| Dimension {
                                    value: Some(Value::DimValue(d)),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A model reading `x` (2 x 4) and writing `y`, with these nodes and constants.
    pub fn model(nodes: &[N], constants: Vec<proto::TensorProto>) -> proto::ModelProto {
        proto::ModelProto {
            ir_version: Some(9),
            producer_name: Some("test".into()),
            opset_import: vec![proto::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(proto::GraphProto {
                name: Some("g".into()),
                node: nodes
                    .iter()
                    .map(|(name, op, i, o)| proto::NodeProto {
                        name: Some(name.to_string()),
                        op_type: Some(op.to_string()),
                        input: i.iter().map(|s| s.to_string()).collect(),
                        output: o.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    })
                    .collect(),
                initializer: constants,
                input: vec![value_info("x", &[2, 4])],
                output: vec![value_info("y", &[2, 4])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn bytes(m: &proto::ModelProto) -> Vec<u8> {
        m.encode_to_vec()
    }

    /// The error of decoding `m`, as one line.
    pub fn refusal(m: &proto::ModelProto) -> String {
        format!(
            "{:#}",
            super::Graph::decode(&bytes(m)).expect_err("the model is refused")
        )
    }
}
