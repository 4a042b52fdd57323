//! The residual units of an imported graph.
//!
//! A walk from the input follows the one path the activations take. Where a tensor `x_l` is
//! read by two nodes, the two paths from it must meet again at one Add: that is a unit,
//! `y_l = h(x_l) + F(x_l)`. The path that is a shortcut's (nothing at all, a 1x1 projection
//! with or without BatchNorm, a multiplication by a constant) is `h`, the other the branch
//! `F`. What follows the Add up to the next split is the after-addition function `f`, except
//! the ops the exporter names as the next unit's own (a pre-activation unit that changes shape
//! normalises once before it splits: `/layer2/layer2.0/bn1/...` is layer2.0's, and is its
//! `pre`). Before the first unit is the stem; after the last, the head (pooling, classifier).
//!
//! A graph that branches any other way (a third reader, a unit inside a branch, paths that
//! meet at something other than an Add) is refused with the tensor where it happens.

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::graph::{Graph, Node, OpType};

/// One residual unit found in the graph; every list holds node indices into `Graph::nodes`,
/// in the order they run.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundUnit {
    /// The unit's name from the graph (`layer1.0`: the Add's scope), or `unit<l>`.
    pub name: String,
    /// The unit input `x_l`: the tensor before `pre`.
    pub input: String,
    /// Ops shared by both paths before the split (empty unless the exporter names them as
    /// this unit's).
    pub pre: Vec<usize>,
    pub branch: Vec<usize>,
    pub shortcut: Vec<usize>,
    /// The Add that joins the two paths.
    pub add: usize,
    pub after_add: Vec<usize>,
    pub kind: ShortcutShape,
}

/// What the shortcut path is, as far as the graph shows.
#[derive(Debug, Clone, PartialEq)]
pub enum ShortcutShape {
    /// `h(x) = x`.
    Identity,
    /// A 1x1 convolution (or a dense layer), `bn` when a BatchNorm follows it.
    Projection { bn: bool },
    /// `h(x) = c x` for a constant scalar `c`.
    Scale(f64),
    /// Some other sequence of supported ops (listed by `inspect`).
    Other,
}

impl std::fmt::Display for ShortcutShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShortcutShape::Identity => f.write_str("identity"),
            ShortcutShape::Projection { bn: true } => f.write_str("projection + BN"),
            ShortcutShape::Projection { bn: false } => f.write_str("projection"),
            ShortcutShape::Scale(c) => write!(f, "scale:{c}"),
            ShortcutShape::Other => f.write_str("other"),
        }
    }
}

/// The whole graph cut into stem, units and head.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    pub stem: Vec<usize>,
    pub units: Vec<FoundUnit>,
    pub head: Vec<usize>,
}

/// The last component of a scope: `/layer1/layer1.0` -> `layer1.0`.
fn scope_name(scope: &str) -> &str {
    scope.rsplit('/').next().unwrap_or(scope)
}

/// True when node `n` belongs to the module at `unit_scope` (or one inside it).
fn in_scope(n: &Node, unit_scope: Option<&str>) -> bool {
    match (n.scope.as_deref(), unit_scope) {
        (Some(s), Some(u)) => s
            .strip_prefix(u)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        _ => false,
    }
}

struct Walk<'g> {
    graph: &'g Graph,
    /// The nodes that read each tensor as an activation.
    readers: HashMap<&'g str, Vec<usize>>,
}

impl<'g> Walk<'g> {
    fn new(graph: &'g Graph) -> Result<Self> {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            for t in graph.data_inputs(n) {
                readers.entry(t).or_default().push(i);
            }
        }
        // Only a node's first output carries activations (BatchNormalization's running
        // statistics and Dropout's mask are side outputs); reading another is not modelled.
        for n in &graph.nodes {
            for o in n.outputs.iter().skip(1) {
                if let Some(r) = readers.get(o.as_str()) {
                    bail!(
                        "{} reads output '{o}' of {}, which is not its activation; resprop models only each op's first output",
                        graph.nodes[r[0]].label(),
                        n.label()
                    );
                }
            }
        }
        Ok(Walk { graph, readers })
    }

    fn readers(&self, t: &str) -> &[usize] {
        self.readers.get(t).map(Vec::as_slice).unwrap_or(&[])
    }

    fn out(&self, i: usize) -> &'g str {
        self.graph.nodes[i].outputs[0].as_str()
    }

    /// True for an Add that joins two activations (an Add of a constant is a bias, one input).
    fn is_join(&self, i: usize) -> bool {
        let n = &self.graph.nodes[i];
        n.op == OpType::Add && self.graph.data_inputs(n).count() == 2
    }

    /// From node `i` along single-reader ops to the Add that joins a unit: the ops before it
    /// and the Add.
    fn to_join(&self, mut i: usize, split: &str) -> Result<(Vec<usize>, usize)> {
        let mut ops = Vec::new();
        loop {
            if self.is_join(i) {
                return Ok((ops, i));
            }
            ops.push(i);
            let t = self.out(i);
            match self.readers(t) {
                [next] => i = *next,
                [] => bail!(
                    "the path from tensor '{split}' through {} ends before it meets the other path again; a unit's two paths must meet at an Add",
                    self.graph.nodes[i].label()
                ),
                _ => bail!(
                    "tensor '{t}' is read by {} nodes inside the unit that splits at '{split}'; resprop does not model a unit inside a unit's path",
                    self.readers(t).len()
                ),
            }
        }
    }
}

/// Which of two paths is the shortcut: an empty one, else one that is only a projection or a
/// constant scaling while the other is not, else the shorter (the branch then the longer).
fn shortcut_of(graph: &Graph, a: &[usize], b: &[usize]) -> (ShortcutShape, bool) {
    let shape = |p: &[usize]| -> Option<ShortcutShape> {
        let ops: Vec<&Node> = p
            .iter()
            .map(|&i| &graph.nodes[i])
            .filter(|n| !matches!(n.op, OpType::Identity | OpType::Dropout))
            .collect();
        match ops.as_slice() {
            [] => Some(ShortcutShape::Identity),
            [m] if m.op == OpType::Mul => {
                let c = m
                    .inputs
                    .iter()
                    .find_map(|t| graph.constants.get(t))
                    .filter(|c| c.values.len() == 1)?;
                Some(ShortcutShape::Scale(c.values[0]))
            }
            [w] if is_projection(w) => Some(ShortcutShape::Projection { bn: false }),
            [w, bn] if is_projection(w) && bn.op == OpType::BatchNormalization => {
                Some(ShortcutShape::Projection { bn: true })
            }
            _ => None,
        }
    };
    match (shape(a), shape(b)) {
        (Some(s), None) => (s, true),
        (None, Some(s)) => (s, false),
        (Some(sa), Some(sb)) => {
            if a.len() <= b.len() {
                (sa, true)
            } else {
                (sb, false)
            }
        }
        (None, None) => (ShortcutShape::Other, a.len() <= b.len()),
    }
}

/// A 1x1 convolution or a dense layer.
fn is_projection(n: &Node) -> bool {
    match n.op {
        OpType::Conv => n
            .ints("kernel_shape")
            .is_some_and(|k| k.iter().all(|&d| d == 1)),
        OpType::Gemm | OpType::MatMul => true,
        _ => false,
    }
}

/// The graph's stem, residual units and head.
pub fn find(graph: &Graph) -> Result<Structure> {
    let walk = Walk::new(graph)?;
    let mut stem = Vec::new();
    let mut units: Vec<FoundUnit> = Vec::new();
    // Ops after the last Add (or from the input) not yet given to a unit or the stem.
    let mut pending: Vec<usize> = Vec::new();
    let mut t: &str = graph.input.as_str();
    // The tensor before the pending ops: the next unit's input unless some are its `pre`.
    let mut pending_from: &str = t;
    loop {
        if t == graph.output {
            break;
        }
        match walk.readers(t) {
            [] => bail!("tensor '{t}' is read by no node, and it is not the graph's output '{}'", graph.output),
            [i] if !walk.is_join(*i) => {
                pending.push(*i);
                t = walk.out(*i);
            }
            [i] => bail!(
                "{} adds tensor '{t}' to itself; a residual unit adds two paths that split earlier",
                graph.nodes[*i].label()
            ),
            [a, b] if a == b => bail!(
                "{} adds tensor '{t}' to itself; a residual unit adds two paths that split earlier",
                graph.nodes[*a].label()
            ),
            [a, b] => {
                let (pa, add_a) = walk.to_join(*a, t)?;
                let (pb, add_b) = walk.to_join(*b, t)?;
                if add_a != add_b {
                    bail!(
                        "the two paths from tensor '{t}' end at different Adds ({} and {}); a unit's two paths meet at one Add",
                        graph.nodes[add_a].label(),
                        graph.nodes[add_b].label()
                    );
                }
                let add = add_a;
                let unit_scope = graph.nodes[add].scope.as_deref();
                // The pending ops: the previous unit's f (or the stem), then this unit's pre.
                let cut = pending
                    .iter()
                    .position(|&i| in_scope(&graph.nodes[i], unit_scope))
                    .filter(|&p| pending[p..].iter().all(|&i| in_scope(&graph.nodes[i], unit_scope)))
                    .unwrap_or(pending.len());
                let pre = pending.split_off(cut);
                let input = match pre.first() {
                    Some(&first) => graph.data_inputs(&graph.nodes[first]).next().unwrap_or(pending_from),
                    None => t,
                }
                .to_string();
                match units.last_mut() {
                    Some(u) => u.after_add.append(&mut pending),
                    None => stem.append(&mut pending),
                }
                let (kind, a_is_shortcut) = shortcut_of(graph, &pa, &pb);
                let (shortcut, branch) = if a_is_shortcut { (pa, pb) } else { (pb, pa) };
                let name = match unit_scope {
                    Some(s) => scope_name(s).to_string(),
                    None => format!("unit{}", units.len()),
                };
                units.push(FoundUnit {
                    name,
                    input,
                    pre,
                    branch,
                    shortcut,
                    add,
                    after_add: Vec::new(),
                    kind,
                });
                t = walk.out(add);
                pending_from = t;
            }
            many => bail!(
                "tensor '{t}' is read by {} nodes; resprop models a split into two paths (a residual unit) and nothing wider",
                many.len()
            ),
        }
    }
    // After the last unit: its f (the ops its exporter names as its own), then the head.
    let head = match units.last_mut() {
        Some(u) => {
            let unit_scope = graph.nodes[u.add].scope.as_deref();
            let own = pending
                .iter()
                .take_while(|&&i| in_scope(&graph.nodes[i], unit_scope))
                .count();
            let head = pending.split_off(own);
            u.after_add.append(&mut pending);
            head
        }
        None => std::mem::take(&mut pending),
    };
    // The walk moves forward through a graph already checked for cycles, so it ends; a node
    // it never reached computes nothing the logits depend on.
    let on_path: std::collections::HashSet<usize> = stem
        .iter()
        .chain(&head)
        .chain(units.iter().flat_map(|u| {
            u.pre
                .iter()
                .chain(&u.branch)
                .chain(&u.shortcut)
                .chain(std::iter::once(&u.add))
                .chain(&u.after_add)
        }))
        .copied()
        .collect();
    if let Some(off) = (0..graph.nodes.len()).find(|i| !on_path.contains(i)) {
        bail!(
            "{} is not on the path from the input to the output; resprop reads graphs whose every node computes the logits",
            graph.nodes[off].label()
        );
    }
    Ok(Structure { stem, units, head })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bytes, model, tensor};
    use super::*;

    fn structure(nodes: &[super::super::testing::N]) -> Result<(Graph, Structure)> {
        let w = || tensor("w", &[4, 4], &[0.5; 16]);
        let mut consts = vec![w()];
        consts.push(tensor("c", &[], &[0.5]));
        let g = Graph::decode(&bytes(&model(nodes, consts)))?;
        let s = find(&g)?;
        Ok((g, s))
    }

    fn names(g: &Graph, ids: &[usize]) -> Vec<String> {
        ids.iter().map(|&i| g.nodes[i].name.clone()).collect()
    }

    #[test]
    fn units_are_found_with_their_shortcut_branch_and_after_addition_ops() {
        // stem: Relu; u0: identity + (MatMul Relu MatMul), then Relu; u1: x * 0.5 + MatMul.
        let (g, s) = structure(&[
            ("/stem/Relu", "Relu", &["x"], &["x0"]),
            ("/u0/m1/MatMul", "MatMul", &["x0", "w"], &["a"]),
            ("/u0/r/Relu", "Relu", &["a"], &["b"]),
            ("/u0/m2/MatMul", "MatMul", &["b", "w"], &["c0"]),
            ("/u0/Add", "Add", &["c0", "x0"], &["y0"]),
            ("/u0/out/Relu", "Relu", &["y0"], &["x1"]),
            ("/u1/sc/Mul", "Mul", &["x1", "c"], &["s1"]),
            ("/u1/m/MatMul", "MatMul", &["x1", "w"], &["f1"]),
            ("/u1/Add", "Add", &["s1", "f1"], &["y1"]),
            ("/head/MatMul", "MatMul", &["y1", "w"], &["y"]),
        ])
        .unwrap();
        assert_eq!(names(&g, &s.stem), ["/stem/Relu"]);
        assert_eq!(s.units.len(), 2);
        let (u0, u1) = (&s.units[0], &s.units[1]);
        assert_eq!(u0.name, "u0");
        assert_eq!(u0.input, "x0");
        assert_eq!(u0.kind, ShortcutShape::Identity);
        assert_eq!(
            names(&g, &u0.branch),
            ["/u0/m1/MatMul", "/u0/r/Relu", "/u0/m2/MatMul"]
        );
        assert_eq!(names(&g, &u0.after_add), ["/u0/out/Relu"]);
        assert_eq!(u1.input, "x1");
        assert_eq!(u1.kind, ShortcutShape::Scale(0.5));
        assert_eq!(names(&g, &u1.shortcut), ["/u1/sc/Mul"]);
        assert_eq!(names(&g, &u1.branch), ["/u1/m/MatMul"]);
        assert!(u1.after_add.is_empty());
        assert_eq!(names(&g, &s.head), ["/head/MatMul"]);
    }

    /// An Add of a constant (a bias) is one op of a path, never the Add that joins a unit;
    /// a Mul by a constant on the branch stays on the branch, one on the shortcut scales it.
    #[test]
    fn an_add_of_a_constant_is_no_join_and_a_branch_may_end_in_a_scale() {
        let (g, s) = structure(&[
            ("/u0/m/MatMul", "MatMul", &["x", "w"], &["m0"]),
            ("/u0/m/Add", "Add", &["m0", "c"], &["b0"]),
            ("/u0/Mul", "Mul", &["c", "b0"], &["f0"]),
            ("/u0/sc/Mul", "Mul", &["x", "c"], &["s0"]),
            ("/u0/Add", "Add", &["s0", "f0"], &["y0"]),
            ("/head/MatMul", "MatMul", &["y0", "w"], &["h"]),
            ("/head/Add", "Add", &["c", "h"], &["y"]),
        ])
        .unwrap();
        assert_eq!(s.units.len(), 1);
        let u = &s.units[0];
        assert_eq!(u.kind, ShortcutShape::Scale(0.5));
        assert_eq!(names(&g, &u.shortcut), ["/u0/sc/Mul"]);
        assert_eq!(
            names(&g, &u.branch),
            ["/u0/m/MatMul", "/u0/m/Add", "/u0/Mul"]
        );
        assert_eq!(names(&g, &[u.add]), ["/u0/Add"]);
        assert_eq!(names(&g, &s.head), ["/head/MatMul", "/head/Add"]);
    }

    #[test]
    fn ops_named_as_the_next_units_own_run_before_its_split() {
        let (g, s) = structure(&[
            ("/u0/m/MatMul", "MatMul", &["x", "w"], &["f0"]),
            ("/u0/Add", "Add", &["x", "f0"], &["y0"]),
            ("/u1/bn/Relu", "Relu", &["y0"], &["p"]),
            ("/u1/sc/MatMul", "MatMul", &["p", "w"], &["s1"]),
            ("/u1/m/MatMul", "MatMul", &["p", "w"], &["f1"]),
            ("/u1/Add", "Add", &["f1", "s1"], &["y"]),
        ])
        .unwrap();
        assert!(s.stem.is_empty());
        assert_eq!(s.units[0].input, "x");
        assert!(s.units[0].after_add.is_empty());
        let u1 = &s.units[1];
        assert_eq!(u1.input, "y0");
        assert_eq!(names(&g, &u1.pre), ["/u1/bn/Relu"]);
        assert_eq!(u1.kind, ShortcutShape::Projection { bn: false });
        assert!(s.head.is_empty());
    }

    #[test]
    fn a_graph_without_a_split_is_a_plain_net() {
        let (g, s) = structure(&[
            ("a", "Relu", &["x"], &["h"]),
            ("b", "MatMul", &["h", "w"], &["y"]),
        ])
        .unwrap();
        assert!(s.units.is_empty() && s.stem.is_empty());
        assert_eq!(names(&g, &s.head), ["a", "b"]);
    }

    #[test]
    fn branching_that_is_no_residual_unit_is_refused_where_it_happens() {
        let three = structure(&[
            ("a", "Relu", &["x"], &["a1"]),
            ("b", "Relu", &["x"], &["b1"]),
            ("c", "Relu", &["x"], &["c1"]),
            ("ab", "Add", &["a1", "b1"], &["d"]),
            ("y", "Add", &["d", "c1"], &["y"]),
        ])
        .unwrap_err();
        assert_eq!(
            format!("{three:#}"),
            "tensor 'x' is read by 3 nodes; resprop models a split into two paths (a residual unit) and nothing wider"
        );
        let nested = structure(&[
            ("a", "Relu", &["x"], &["a1"]),
            ("b", "Relu", &["a1"], &["b1"]),
            ("c", "Relu", &["a1"], &["c1"]),
            ("bc", "Add", &["b1", "c1"], &["d"]),
            ("y", "Add", &["d", "x"], &["y"]),
        ])
        .unwrap_err();
        assert!(
            format!("{nested:#}").contains("does not model a unit inside a unit's path"),
            "{nested:#}"
        );
        let self_add = structure(&[("y", "Add", &["x", "x"], &["y"])]).unwrap_err();
        assert!(format!("{self_add:#}").contains("adds tensor 'x' to itself"));
        let dead = structure(&[
            ("a", "Relu", &["x"], &["y"]),
            ("dead", "Relu", &["w"], &["z"]),
        ])
        .unwrap_err();
        assert!(
            format!("{dead:#}").starts_with("node 'dead' (Relu) is not on the path"),
            "{dead:#}"
        );
    }
}
