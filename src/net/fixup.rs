//! Fixup (Zhang, Dauphin and Ma, ICLR 2019), which
//! trains residual networks without normalisation from a rescaled start:
//!
//! - each branch's last weight layer and the classifier start at 0, so every unit starts as
//!   the identity and, at step 0, every `dE/dx_l` is 0 (only the classifier moves first);
//! - the branch's other weight layers are He-initialised and multiplied by `L^(-1/(2m-2))`
//!   (L units, m weight layers per branch: `L^(-1/2)` for two-layer branches);
//! - a scalar multiplier (1 at the start) ends each branch, and scalar biases (0 at the start)
//!   sit before each weight layer and activation of the branches and the stem, after the
//!   multiplier, and before the classifier, as in the authors' CIFAR code.

use anyhow::{bail, Result};

use super::Network;
use crate::layers::branch_scale::BranchScale;
use crate::layers::scalar_bias::ScalarBias;
use crate::unit::Op;

/// Fixup's factor on the branch's first `m - 1` weight layers, `L^(-1/(2m-2))`.
pub fn fixup_scale(units: usize, weights_per_branch: usize) -> f64 {
    (units as f64).powf(-1.0 / (2.0 * weights_per_branch as f64 - 2.0))
}

fn is_weight(op: &Op) -> bool {
    matches!(op, Op::Dense(_) | Op::Conv(_))
}

/// `ops` with a scalar bias named `{prefix}.bias{j}` before every weight layer and ReLU.
fn with_biases(ops: Vec<Op>, prefix: &str) -> Vec<Op> {
    let mut out = Vec::with_capacity(2 * ops.len());
    let mut j = 0;
    for op in ops {
        if is_weight(&op) || matches!(op, Op::Relu) {
            j += 1;
            out.push(Op::ScalarBias(ScalarBias::new(&format!(
                "{prefix}.bias{j}"
            ))));
        }
        out.push(op);
    }
    out
}

/// Rewrites a He-initialised network without normalisation into Fixup's start.
pub fn apply(net: &mut Network) -> Result<()> {
    let has_norm = net
        .stem
        .iter()
        .chain(&net.head)
        .any(|o| matches!(o, Op::Norm(_)))
        || net
            .units
            .iter()
            .any(|u| u.ops().any(|o| matches!(o, Op::Norm(_))));
    if has_norm {
        bail!("--init fixup replaces normalisation: use --norm none (and a projection without BN: --projection plain or pad)");
    }
    let units = net.units.len();
    for u in &mut net.units {
        let weights: Vec<usize> = (0..u.branch.len())
            .filter(|&i| is_weight(&u.branch[i]))
            .collect();
        if weights.len() < 2 {
            bail!("--init fixup needs branches of at least two weight layers");
        }
        let scale = fixup_scale(units, weights.len());
        for (k, &i) in weights.iter().enumerate() {
            let last = k + 1 == weights.len();
            match &mut u.branch[i] {
                Op::Dense(d) if last => d.w.fill(0.0),
                Op::Conv(c) if last => c.w.fill(0.0),
                Op::Dense(d) => d.w *= scale,
                Op::Conv(c) => c.w *= scale,
                _ => unreachable!("indices of weight layers"),
            }
        }
        let name = format!("unit{}.fixup", u.index);
        let mut branch = with_biases(std::mem::take(&mut u.branch), &name);
        branch.push(Op::BranchScale(BranchScale::scalar(
            &format!("{name}.scale"),
            1.0,
        )));
        branch.push(Op::ScalarBias(ScalarBias::new(&format!("{name}.bias_out"))));
        u.branch = branch;
    }
    // The stem: a bias before its ReLU (if it has one); the head: one before the classifier,
    // which starts at 0.
    let stem = std::mem::take(&mut net.stem);
    let mut out = Vec::new();
    for op in stem {
        if matches!(op, Op::Relu) {
            out.push(Op::ScalarBias(ScalarBias::new("stem.fixup.bias")));
        }
        out.push(op);
    }
    net.stem = out;
    let Some(Op::Dense(mut classifier)) = net.head.pop() else {
        bail!("the head ends in its dense classifier");
    };
    classifier.w.fill(0.0);
    if let Some(b) = classifier.b.as_mut() {
        b.fill(0.0);
    }
    net.head
        .push(Op::ScalarBias(ScalarBias::new("head.fixup.bias")));
    net.head.push(Op::Dense(classifier));
    Ok(())
}

/// The parameters Fixup's authors train at a reduced rate: their CIFAR and ImageNet scripts put
/// every parameter whose name holds `bias` or `scale` in its own group at a tenth of the base
/// rate. Here: every bias (the scalar biases, the classifier's and any dense layer's, all named
/// `*.b`) and the branch multipliers (`unit{l}.fixup.scale.a`).
pub fn scalar_param_names<T: crate::float::Float>(
    net: &Network<T>,
) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    net.visit_params(&mut |name, _| {
        if name.ends_with(".b") || name.ends_with(".fixup.scale.a") {
            names.insert(name);
        }
    });
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_follows_the_paper() {
        // L^(-1/2) for two-layer branches, L^(-1/4) for three (bottleneck).
        assert_eq!(fixup_scale(54, 2), 54f64.powf(-0.5));
        assert_eq!(fixup_scale(54, 3), 54f64.powf(-0.25));
    }

    #[test]
    fn scalar_params_are_the_biases_and_multipliers() {
        let desc = crate::net::NetDescription {
            units: 2,
            width: 4,
            placement: crate::unit::Placement::Original,
            norm: crate::layers::NormKind::None,
            init: crate::net::Init::Fixup,
            ..Default::default()
        };
        let net = desc
            .build(
                &crate::net::InputSizes {
                    input_dim: 3,
                    image_size: 1,
                    input_channels: 1,
                    classes: 2,
                },
                1,
            )
            .unwrap();
        let names = scalar_param_names(&net);
        let want = [
            "classifier.b",
            "head.fixup.bias.b",
            "stem.fixup.bias.b",
            "unit0.fixup.bias1.b",
            "unit0.fixup.bias2.b",
            "unit0.fixup.bias3.b",
            "unit0.fixup.bias_out.b",
            "unit0.fixup.scale.a",
        ];
        for w in want {
            assert!(names.contains(w), "{w} missing from {names:?}");
        }
        // Two units of four biases and a multiplier, the stem's, the head's, the classifier's.
        assert_eq!(names.len(), 2 * 5 + 3, "{names:?}");
        // The weights stay in the main group.
        assert!(!names.iter().any(|n| n.ends_with(".w")));
    }
}
