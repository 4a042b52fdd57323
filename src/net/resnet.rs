//! The paper's CIFAR ResNets: a 3x3 stem convolution to 16 channels, three stages of `n`
//! units at widths 16 / 32 / 64 (feature maps 32 / 16 / 8 for 32x32 inputs; stride 2 at the
//! start of stages 2 and 3), global average pooling and a dense classifier.
//!
//! - basic units: 3x3 c, 3x3 c (ResNet-110: n = 18, 54 units);
//! - bottleneck units: 1x1 c, 3x3 c, 1x1 4c (ResNet-164: n = 18; ResNet-1001: n = 111), with
//!   the stride on the first 1x1 as in the paper's code.
//!
//! A unit that changes the shape (width or resolution) gets the shortcut `--projection` names
//! (the requested shortcut applies to every other unit; a plain net keeps h = 0 everywhere):
//! a 1x1 projection followed by BN (`bn`, the default for post-activation placements, as in
//! fb.resnet.torch and torchvision), a bare 1x1 projection (`plain`, the default for
//! pre-activation placements, as in the paper's code), or option A of He et al. 2015 (`pad`:
//! subsample with the stride, zero-pad the new channels). In pre-activation nets a projection
//! unit applies its leading BN-ReLU once, before the split, so the projection sees the
//! pre-activated input (a padded shortcut reads the raw `x_l`, like an identity); the stem has
//! no BN-ReLU of its own and the head adds one after the last addition.

use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::init::{Init, Role};
use super::mlp::edge_ops;
use super::{NetSpec, Network};
use crate::layers::pad_shortcut::PadShortcut;
use crate::layers::{Conv2d, Dense, NormKind};
use crate::rng::{derive_seed, purpose, rng};
use crate::unit::{Fusion, Op, Placement, Projection, ResidualUnit, ShortcutKind, Step};

pub const STAGE_WIDTHS: [usize; 3] = [16, 32, 64];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Block {
    Basic,
    Bottleneck,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResnetConfig {
    /// The name it was given (`resnet110`, `resnet:3:basic`, ...).
    pub name: String,
    pub units_per_stage: usize,
    pub block: Block,
    /// Input images are channels x size x size (3 x 32 x 32 for CIFAR).
    pub image_size: usize,
    pub input_channels: usize,
    pub classes: usize,
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub placement: Placement,
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub shortcut: ShortcutKind,
    /// The shortcut of the units that change shape.
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub projection: Projection,
    /// What fills the placement's normalisation slots (left out when it is BatchNorm).
    #[serde(
        serialize_with = "crate::util::serialize_display",
        skip_serializing_if = "NormKind::is_batch"
    )]
    pub norm: NormKind,
    /// The rule the weights are drawn by (left out of descriptions when it is He's).
    #[serde(skip_serializing_if = "Init::is_he")]
    pub init: Init,
    pub seed: u64,
}

/// `resnet110`, `resnet164`, `resnet1001` or `resnet:<units per stage>:<basic|bottleneck>`.
pub fn parse_resnet_name(name: &str) -> Result<(usize, Block), String> {
    match name {
        "resnet110" => return Ok((18, Block::Basic)),
        "resnet164" => return Ok((18, Block::Bottleneck)),
        "resnet1001" => return Ok((111, Block::Bottleneck)),
        _ => {}
    }
    let parts: Vec<&str> = name.split(':').collect();
    if parts.len() != 3 || parts[0] != "resnet" {
        return Err(format!(
            "unknown network '{name}' (expected mlp, resnet110, resnet164, resnet1001 or resnet:<units per stage>:<basic|bottleneck>)"
        ));
    }
    let n: usize = parts[1].parse().map_err(|_| {
        format!(
            "network '{name}': units per stage '{}' is not a whole number",
            parts[1]
        )
    })?;
    if n == 0 {
        return Err(format!(
            "network '{name}': units per stage must be at least 1"
        ));
    }
    let block = match parts[2] {
        "basic" => Block::Basic,
        "bottleneck" => Block::Bottleneck,
        other => {
            return Err(format!(
                "network '{name}': unknown block '{other}' (expected basic or bottleneck)"
            ))
        }
    };
    Ok((n, block))
}

impl ResnetConfig {
    /// Weight layers counted as the paper does: 6n+2 (basic) or 9n+2 (bottleneck).
    pub fn depth(&self) -> usize {
        match self.block {
            Block::Basic => 6 * self.units_per_stage + 2,
            Block::Bottleneck => 9 * self.units_per_stage + 2,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.units_per_stage == 0 {
            bail!("units per stage must be at least 1, got 0");
        }
        if self.image_size < 4 {
            bail!(
                "image size must be at least 4 (two stride-2 stages), got {}",
                self.image_size
            );
        }
        if self.classes < 2 {
            bail!("classes must be at least 2, got {}", self.classes);
        }
        if self.input_channels == 0 {
            bail!("input channels must be at least 1, got 0");
        }
        self.shortcut
            .check_combination(self.placement, self.norm)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// One weight layer of a unit.
#[derive(Debug, Clone, Copy)]
struct ConvSpec {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
}

/// Turns a recipe into conv ops, tracking the channel count so each BN gets the right size.
fn conv_ops(
    recipe: &[Step],
    prefix: &str,
    specs: &[ConvSpec],
    c_start: usize,
    norm: NormKind,
    init: Init,
    r: &mut ChaCha8Rng,
) -> Vec<Op> {
    let mut channels = c_start;
    recipe
        .iter()
        .filter_map(|step| match *step {
            Step::Weight(i) => {
                let s = specs[i - 1];
                channels = s.c_out;
                Some(Op::Conv(hidden_conv(
                    &format!("{prefix}.w{i}"),
                    s,
                    s.k / 2,
                    None,
                    init,
                    r,
                )))
            }
            Step::Norm(i) => norm
                .build(&format!("{prefix}.{}{i}", norm.short()), channels)
                .map(Op::Norm),
            Step::Relu => Some(Op::Relu),
        })
        .collect()
}

/// A stem, branch, gate or projection convolution drawn by `init`'s rule for hidden layers.
fn hidden_conv(
    name: &str,
    s: ConvSpec,
    pad: usize,
    bias: Option<f64>,
    init: Init,
    r: &mut ChaCha8Rng,
) -> Conv2d {
    let field = s.k * s.k;
    let std = init.std(Role::Hidden, field * s.c_in, field * s.c_out);
    Conv2d::with_std(name, s.c_in, s.c_out, s.k, s.stride, pad, std, bias, r)
}

/// One residual unit of the CIFAR nets; `projection` decides the shortcut if it changes shape.
#[allow(clippy::too_many_arguments)]
pub fn conv_unit(
    index: usize,
    placement: Placement,
    shortcut: ShortcutKind,
    projection: Projection,
    block: Block,
    c_in: usize,
    width: usize,
    stride: usize,
    norm: NormKind,
    init: Init,
    r: &mut ChaCha8Rng,
) -> ResidualUnit {
    let name = format!("unit{index}");
    let (specs, c_out) = match block {
        Block::Basic => (
            vec![
                ConvSpec {
                    c_in,
                    c_out: width,
                    k: 3,
                    stride,
                },
                ConvSpec {
                    c_in: width,
                    c_out: width,
                    k: 3,
                    stride: 1,
                },
            ],
            width,
        ),
        Block::Bottleneck => (
            vec![
                ConvSpec {
                    c_in,
                    c_out: width,
                    k: 1,
                    stride,
                },
                ConvSpec {
                    c_in: width,
                    c_out: width,
                    k: 3,
                    stride: 1,
                },
                ConvSpec {
                    c_in: width,
                    c_out: 4 * width,
                    k: 1,
                    stride: 1,
                },
            ],
            4 * width,
        ),
    };
    let changes_shape = c_in != c_out || stride != 1;
    let scale = crate::unit::shortcut::branch_scale(shortcut, &name, c_out);
    let shortcut = match (changes_shape && shortcut != ShortcutKind::None, projection) {
        (false, _) => shortcut,
        (true, Projection::Pad) => ShortcutKind::Pad,
        (true, Projection::Bn | Projection::Plain) => ShortcutKind::Conv1x1,
    };
    let mut recipe = placement.branch_recipe(specs.len());
    let mut pre_recipe = Vec::new();
    if changes_shape && placement.is_preact() && shortcut == ShortcutKind::Conv1x1 {
        let first_weight = recipe
            .iter()
            .position(|s| matches!(s, Step::Weight(_)))
            .unwrap();
        pre_recipe = recipe.drain(..first_weight).collect();
    }
    let pre = conv_ops(
        &pre_recipe,
        &format!("{name}.pre"),
        &specs,
        c_in,
        norm,
        init,
        r,
    );
    let mut branch = conv_ops(
        &recipe,
        &format!("{name}.branch"),
        &specs,
        c_in,
        norm,
        init,
        r,
    );
    branch.extend(scale);
    let after_add = conv_ops(
        &placement.after_add_recipe(),
        &format!("{name}.after"),
        &specs,
        c_out,
        norm,
        init,
        r,
    );
    let shortcut_ops = match shortcut {
        ShortcutKind::Gate { bias } | ShortcutKind::ShortcutGate { bias } => {
            let gate = ConvSpec {
                c_in,
                c_out: c_in,
                k: 1,
                stride: 1,
            };
            vec![Op::Conv(hidden_conv(
                &format!("{name}.gate"),
                gate,
                0,
                Some(bias),
                init,
                r,
            ))]
        }
        ShortcutKind::Conv1x1 => {
            let proj = ConvSpec {
                c_in,
                c_out,
                k: 1,
                stride,
            };
            let mut ops = vec![Op::Conv(hidden_conv(
                &format!("{name}.proj"),
                proj,
                0,
                None,
                init,
                r,
            ))];
            // `--projection bn` puts a BN after the projections where the shape changes; a
            // conv1x1 shortcut inside a stage (Table 1's variant) stays bare.
            if changes_shape && projection == Projection::Bn {
                ops.push(Op::Norm(
                    NormKind::Batch
                        .build(&format!("{name}.proj_bn"), c_out)
                        .expect("BatchNorm fills a slot"),
                ));
            }
            ops
        }
        ShortcutKind::Pad => vec![Op::PadShortcut(PadShortcut { stride, c_out })],
        ShortcutKind::Identity
        | ShortcutKind::Scale { .. }
        | ShortcutKind::Dropout { .. }
        | ShortcutKind::None
        | ShortcutKind::Alpha { .. }
        | ShortcutKind::LayerScale { .. }
        | ShortcutKind::DeepNorm { .. } => Vec::new(),
    };
    ResidualUnit {
        index,
        placement,
        shortcut,
        branch,
        after_add,
        shortcut_ops,
        pre,
        changes_shape,
        fusion: Fusion::Fused,
    }
}

pub fn build_resnet(cfg: &ResnetConfig) -> Result<Network> {
    cfg.validate()?;
    let mut r = rng(derive_seed(cfg.seed, &[purpose::INIT]));
    let stem_conv = ConvSpec {
        c_in: cfg.input_channels,
        c_out: STAGE_WIDTHS[0],
        k: 3,
        stride: 1,
    };
    let mut stem = vec![Op::Conv(hidden_conv(
        "stem", stem_conv, 1, None, cfg.init, &mut r,
    ))];
    stem.extend(edge_ops(
        &cfg.placement.stem_recipe(),
        "stem",
        STAGE_WIDTHS[0],
        cfg.norm,
    ));
    let (shortcut, gain) =
        crate::unit::shortcut::resolve_for_depth(cfg.shortcut, 3 * cfg.units_per_stage);
    let mut units = Vec::new();
    let mut channels = STAGE_WIDTHS[0];
    for (stage, &width) in STAGE_WIDTHS.iter().enumerate() {
        for j in 0..cfg.units_per_stage {
            let stride = if stage > 0 && j == 0 { 2 } else { 1 };
            let mut unit = conv_unit(
                units.len(),
                cfg.placement,
                shortcut,
                cfg.projection,
                cfg.block,
                channels,
                width,
                stride,
                cfg.norm,
                cfg.init,
                &mut r,
            );
            unit.scale_branch_weights(gain);
            channels = match cfg.block {
                Block::Basic => width,
                Block::Bottleneck => 4 * width,
            };
            units.push(unit);
        }
    }
    let mut head = edge_ops(&cfg.placement.head_recipe(), "head", channels, cfg.norm);
    head.push(Op::Pool);
    let std = cfg.init.std(Role::Classifier, channels, cfg.classes);
    head.push(Op::Dense(Dense::with_std(
        "classifier",
        channels,
        cfg.classes,
        std,
        Some(0.0),
        &mut r,
    )));
    Ok(Network {
        spec: NetSpec::Resnet(cfg.clone()),
        stem,
        units,
        head,
        classes: cfg.classes,
        input_shape: vec![cfg.input_channels, cfg.image_size, cfg.image_size],
        fusion: Fusion::Fused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, block: Block, placement: Placement) -> ResnetConfig {
        ResnetConfig {
            name: "t".into(),
            units_per_stage: n,
            block,
            image_size: 32,
            input_channels: 3,
            classes: 10,
            placement,
            shortcut: ShortcutKind::Identity,
            projection: Projection::default_for(placement),
            norm: crate::layers::NormKind::Batch,
            init: Init::He,
            seed: 0,
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_resnet_name("resnet110").unwrap(), (18, Block::Basic));
        assert_eq!(
            parse_resnet_name("resnet1001").unwrap(),
            (111, Block::Bottleneck)
        );
        assert_eq!(
            parse_resnet_name("resnet:3:basic").unwrap(),
            (3, Block::Basic)
        );
        assert!(parse_resnet_name("resnet:x:basic")
            .unwrap_err()
            .contains("'x'"));
        assert!(parse_resnet_name("resnet:2:wide")
            .unwrap_err()
            .contains("'wide'"));
        assert!(parse_resnet_name("vgg")
            .unwrap_err()
            .contains("unknown network 'vgg'"));
    }

    #[test]
    fn paper_architectures_have_the_papers_sizes() {
        // Parameter counts from the paper: ResNet-110 1.7M, ResNet-164 1.7M, ResNet-1001 10.2M.
        let r110 = build_resnet(&cfg(18, Block::Basic, Placement::Original)).unwrap();
        assert_eq!(r110.num_units(), 54);
        assert_eq!(cfg(18, Block::Basic, Placement::Original).depth(), 110);
        let m = r110.param_count() as f64 / 1e6;
        assert!((1.65..1.8).contains(&m), "ResNet-110 has {m}M parameters");
        let r164 = build_resnet(&cfg(18, Block::Bottleneck, Placement::FullPreact)).unwrap();
        let m = r164.param_count() as f64 / 1e6;
        assert!((1.65..1.8).contains(&m), "ResNet-164 has {m}M parameters");
        assert_eq!(
            cfg(111, Block::Bottleneck, Placement::Original).depth(),
            1001
        );
        // Projection shortcuts exactly where the shape changes: 2 (basic) or 3 (bottleneck).
        let proj = |n: &Network| {
            n.units
                .iter()
                .filter(|u| u.shortcut == ShortcutKind::Conv1x1)
                .count()
        };
        assert_eq!(proj(&r110), 2);
        assert_eq!(proj(&r164), 3);
        // Pre-activation projection units run their BN-ReLU once before the split.
        assert!(r164
            .units
            .iter()
            .filter(|u| u.shortcut == ShortcutKind::Conv1x1)
            .all(|u| u.pre.len() == 2));
    }
}
