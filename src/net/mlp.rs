//! The residual MLP: a dense stem (input -> width, plus BN-ReLU for post-activation
//! placements), L units of two dense layers each, a head (BN-ReLU after the last addition for
//! pre-activation placements, as in the paper) and a dense classifier.
//!
//! The weights are drawn by `cfg.init`'s rule (`init.rs`; He's follows the paper's code and
//! PyTorch's reference nets: hidden, gate and projection weights on fan-out, `std = sqrt(2 /
//! D_out)`, the classifier `N(0, 1 / D_in)`); biases 0 except the gate bias, norm gamma 1 and
//! beta 0.

use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::init::{Init, Role};
use super::{NetSpec, Network};
use crate::layers::{Dense, NormKind};
use crate::rng::{derive_seed, purpose, rng};
use crate::unit::{Fusion, Op, Placement, ResidualUnit, ShortcutKind, Step};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlpConfig {
    /// Number of residual units L.
    pub units: usize,
    pub width: usize,
    pub input_dim: usize,
    pub classes: usize,
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub placement: Placement,
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub shortcut: ShortcutKind,
    /// What fills the placement's normalisation slots (left out of descriptions when it is
    /// BatchNorm, the paper's).
    #[serde(
        serialize_with = "crate::util::serialize_display",
        skip_serializing_if = "NormKind::is_batch"
    )]
    pub norm: NormKind,
    /// The rule the weights are drawn by (left out of descriptions when it is He's).
    #[serde(skip_serializing_if = "Init::is_he")]
    pub init: Init,
    /// Seed of the weight initialisation.
    pub seed: u64,
}

impl MlpConfig {
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("units", self.units),
            ("width", self.width),
            ("input dimension", self.input_dim),
        ] {
            if v == 0 {
                bail!("{what} must be at least 1, got 0");
            }
        }
        if self.classes < 2 {
            bail!("classes must be at least 2, got {}", self.classes);
        }
        self.shortcut
            .check_combination(self.placement, self.norm)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// Turns a placement recipe into dense-layer ops named `{prefix}.w{i}` / `{prefix}.bn{i}`
/// (`ln{i}` for LayerNorm); `NormKind::None` leaves the normalisation slots out.
fn dense_ops(
    recipe: &[Step],
    prefix: &str,
    width: usize,
    norm: NormKind,
    init: Init,
    r: &mut ChaCha8Rng,
) -> Vec<Op> {
    recipe
        .iter()
        .filter_map(|step| match *step {
            Step::Weight(i) => Some(Op::Dense(hidden_dense(
                &format!("{prefix}.w{i}"),
                width,
                width,
                None,
                init,
                r,
            ))),
            Step::Norm(i) => norm
                .build(&format!("{prefix}.{}{i}", norm.short()), width)
                .map(Op::Norm),
            Step::Relu => Some(Op::Relu),
        })
        .collect()
}

/// The stem's or the head's normalisation and ReLU steps, the norm named `{name}.bn` (or
/// `ln`). Their recipes hold no weight layer: the stem's and the classifier are built apart.
pub(crate) fn edge_ops(recipe: &[Step], name: &str, channels: usize, norm: NormKind) -> Vec<Op> {
    recipe
        .iter()
        .filter_map(|step| match step {
            Step::Norm(_) => norm
                .build(&format!("{name}.{}", norm.short()), channels)
                .map(Op::Norm),
            Step::Relu => Some(Op::Relu),
            Step::Weight(_) => unreachable!("stem and head recipes hold no weight layer"),
        })
        .collect()
}

/// A stem, branch, gate or projection layer drawn by `init`'s rule for hidden layers.
fn hidden_dense(
    name: &str,
    d_in: usize,
    d_out: usize,
    bias: Option<f64>,
    init: Init,
    r: &mut ChaCha8Rng,
) -> Dense {
    let std = init.std(Role::Hidden, d_in, d_out);
    Dense::with_std(name, d_in, d_out, std, bias, r)
}

/// One residual unit of two dense layers at `width`.
pub fn dense_unit(
    index: usize,
    placement: Placement,
    shortcut: ShortcutKind,
    width: usize,
    norm: NormKind,
    init: Init,
    r: &mut ChaCha8Rng,
) -> ResidualUnit {
    let name = format!("unit{index}");
    let mut branch = dense_ops(
        &placement.branch_recipe(2),
        &format!("{name}.branch"),
        width,
        norm,
        init,
        r,
    );
    branch.extend(crate::unit::shortcut::branch_scale(shortcut, &name, width));
    let after_add = dense_ops(
        &placement.after_add_recipe(),
        &format!("{name}.after"),
        width,
        norm,
        init,
        r,
    );
    let shortcut_ops = match shortcut {
        ShortcutKind::Gate { bias } | ShortcutKind::ShortcutGate { bias } => vec![Op::Dense(
            hidden_dense(&format!("{name}.gate"), width, width, Some(bias), init, r),
        )],
        ShortcutKind::Conv1x1 => vec![Op::Dense(hidden_dense(
            &format!("{name}.proj"),
            width,
            width,
            None,
            init,
            r,
        ))],
        // Shortcuts without parameters (pad is a ResNet's shape-changing shortcut).
        ShortcutKind::Identity
        | ShortcutKind::Scale { .. }
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. }
        | ShortcutKind::Pad => Vec::new(),
    };
    ResidualUnit {
        index,
        placement,
        shortcut,
        branch,
        after_add,
        shortcut_ops,
        pre: Vec::new(),
        changes_shape: false,
        fusion: Fusion::Fused,
    }
}

pub fn build_mlp(cfg: &MlpConfig) -> Result<Network> {
    cfg.validate()?;
    let mut r = rng(derive_seed(cfg.seed, &[purpose::INIT]));
    let mut stem = vec![Op::Dense(hidden_dense(
        "stem",
        cfg.input_dim,
        cfg.width,
        None,
        cfg.init,
        &mut r,
    ))];
    let stem_head =
        |recipe: Vec<Step>, name: &str| -> Vec<Op> { edge_ops(&recipe, name, cfg.width, cfg.norm) };
    stem.extend(stem_head(cfg.placement.stem_recipe(), "stem"));
    let (shortcut, gain) = crate::unit::shortcut::resolve_for_depth(cfg.shortcut, cfg.units);
    let units = (0..cfg.units)
        .map(|l| {
            let mut u = dense_unit(
                l,
                cfg.placement,
                shortcut,
                cfg.width,
                cfg.norm,
                cfg.init,
                &mut r,
            );
            u.scale_branch_weights(gain);
            u
        })
        .collect();
    let mut head = stem_head(cfg.placement.head_recipe(), "head");
    let classifier_std = cfg.init.std(Role::Classifier, cfg.width, cfg.classes);
    head.push(Op::Dense(Dense::with_std(
        "classifier",
        cfg.width,
        cfg.classes,
        classifier_std,
        Some(0.0),
        &mut r,
    )));
    Ok(Network {
        spec: NetSpec::Mlp(cfg.clone()),
        stem,
        units,
        head,
        classes: cfg.classes,
        input_shape: vec![cfg.input_dim],
        fusion: Fusion::Fused,
    })
}
