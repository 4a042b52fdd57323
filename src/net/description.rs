//! Which network: [`NetDescription`], the architecture every front end names a network by
//! (through [`crate::jobs`], which adds what a checkpoint and a command line need of it).
//!
//! The command line flattens it (`#[command(flatten)]`: `--net`, `--units`, `--width`,
//! `--placement`, `--shortcut`, `--projection`, `--norm`, `--init`, the same flags, help and
//! parsers in every command; a command with other defaults changes them with `mut_arg`), the
//! library and the tests fill it in as a struct (`..NetDescription::default()`), and serde
//! writes each field as the text the command line takes, under the names a checkpoint's
//! `config_json` uses. [`NetDescription::build`] is the one place that resolves the default
//! projection and calls the builders.
//!
//! What is *not* here: the sizes that come from the input ([`InputSizes`]: an MLP's input
//! dimension, a ResNet's image size and channels, the classes; from flags, data or a
//! checkpoint), the seed, and how the network runs (fused or plain). These are the job's.
//!
//! What comes next fits as one variant or one field:
//! - an imported network (`--model FILE.onnx`) is one more [`NetChoice`] variant (say
//!   `Imported(PathBuf)`), which [`NetDescription::build`] hands to the importer instead of
//!   the MLP and ResNet builders; the placement, shortcut and init then describe nothing, and
//!   the checks that refuse `--units` for a ResNet refuse them for it;
//! - a precision switch (`--precision f32|f64`) is one more field here, with its default, its
//!   serde default (so that a checkpoint written before it reads as f64) and its line in
//!   [`NetDescription::differences`].

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::memory::{Estimate, Purpose};
use super::{Init, NetChoice, NetSizes, Network};
use crate::layers::NormKind;
use crate::unit::{Placement, Projection, ShortcutKind};

/// The parser of a flag whose type reads its own text.
fn text<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse()
}

/// The architecture of a network: everything that fixes its layers and how their weights are
/// drawn, apart from the sizes its input gives ([`InputSizes`]) and the seed.
///
/// The defaults are the analysis commands' (`profile`, `check`, `paths`, `lesion`); `train`
/// sets its own (`resnet:2:basic`, 8 units, `full-preact`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct NetDescription {
    /// Network: `mlp` (residual MLP of two-dense-layer units; sized by --units, --width,
    /// --input-dim) or a CIFAR ResNet: `resnet110` (18 basic units per stage), `resnet164`
    /// (18 bottleneck), `resnet1001` (111 bottleneck), `resnet:N:basic|bottleneck` (N per
    /// stage; `resnet:3:basic` is ResNet-20).
    #[arg(long, default_value = "mlp", value_parser = text::<NetChoice>)]
    #[serde(with = "crate::util::text")]
    pub net: NetChoice,
    /// Number of residual units L (MLP).
    #[arg(long, default_value_t = 54)]
    pub units: usize,
    /// Width of every unit, in features (MLP).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Activation placement (Fig. 4): original (W BN ReLU W BN, add, ReLU), bn-after-add
    /// (W BN ReLU W, add, BN ReLU), relu-before-add (W BN ReLU W BN ReLU, add), relu-preact
    /// (ReLU W BN ReLU W BN, add), full-preact (BN ReLU W BN ReLU W, add); and the
    /// Transformer's one-norm units: post-norm (W ReLU W, add, N) and pre-norm (N W ReLU W,
    /// add; a final N before the head), Post-LN and Pre-LN with --norm layer.
    #[arg(long, default_value = "original", value_parser = text::<Placement>)]
    #[serde(with = "crate::util::text")]
    pub placement: Placement,
    /// Shortcut h (Fig. 2). Its help is made from the one list of the kinds,
    /// [`crate::unit::spec::SHORTCUTS`]: their forms for `-h`, one line per form with its
    /// meaning for `--help`.
    #[arg(
        long,
        default_value = "identity",
        value_parser = text::<ShortcutKind>,
        help = crate::unit::spec::shortcut_help(),
        long_help = crate::unit::spec::shortcut_long_help()
    )]
    #[serde(with = "crate::util::text")]
    pub shortcut: ShortcutKind,
    /// ResNets: the shortcut of the units that change width or resolution. bn (1x1 projection
    /// followed by BatchNorm: the default for original, bn-after-add and relu-before-add, as in
    /// fb.resnet.torch and torchvision), plain (bare 1x1 projection: the default for the
    /// pre-activation placements, as in the paper's code), pad (option A of He et al. 2015:
    /// subsample with the stride, zero-pad the new channels; no parameters, so the direct part
    /// carries on across the stage change instead of restarting).
    #[arg(long, value_parser = text::<Projection>)]
    #[serde(
        default,
        with = "crate::util::text_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub projection: Option<Projection>,
    /// What fills every normalisation slot of the placement (stem, branch, after the
    /// addition, head): batch (BatchNorm, the paper's), layer (LayerNorm: per sample, over
    /// the features or C x H x W, per-channel gamma and beta) or none (the slots are left
    /// out). The projection shortcut's BatchNorm (--projection bn) stays.
    #[arg(long, default_value = "batch", value_parser = text::<NormKind>)]
    #[serde(default, with = "crate::util::text")]
    pub norm: NormKind,
    /// How the weights start: he (He et al., the paper's: N(0, 2/fan_out), the classifier
    /// N(0, 1/fan_in)), xavier (Glorot and Bengio's N(0, 2/(fan_in + fan_out)) on every weight
    /// layer, the classifier included, as Xiong et al.'s LayerNorm analysis assumes) or fixup (Fixup: with --norm none,
    /// each branch's last weight layer and the classifier at 0, the others scaled by
    /// L^(-1/(2m-2)), a scalar multiplier per branch and scalar biases).
    #[arg(long, default_value = "he", value_parser = text::<Init>)]
    #[serde(default, with = "crate::util::text")]
    pub init: Init,
}

impl Default for NetDescription {
    /// The analysis commands' defaults: a 54-unit MLP of width 64, original placement,
    /// identity shortcuts, BatchNorm, He's start.
    fn default() -> Self {
        NetDescription {
            net: NetChoice::Mlp,
            units: 54,
            width: 64,
            placement: Placement::Original,
            shortcut: ShortcutKind::Identity,
            projection: None,
            norm: NormKind::Batch,
            init: Init::He,
        }
    }
}

/// The sizes a network takes from its input, not from its architecture: an MLP's input
/// dimension, a ResNet's image size and channels, and the classes of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSizes {
    pub input_dim: usize,
    pub image_size: usize,
    /// Image channels (3 for CIFAR, 1 for the digits).
    pub input_channels: usize,
    pub classes: usize,
}

impl InputSizes {
    /// The input part of a network's sizes.
    pub fn of(sizes: &NetSizes) -> InputSizes {
        InputSizes {
            input_dim: sizes.input_dim,
            image_size: sizes.image_size,
            input_channels: sizes.input_channels,
            classes: sizes.classes,
        }
    }
}

impl NetDescription {
    /// The builder's sizes: this architecture's units and width, the input's sizes.
    pub fn sizes(&self, input: &InputSizes) -> NetSizes {
        NetSizes {
            units: self.units,
            width: self.width,
            input_dim: input.input_dim,
            image_size: input.image_size,
            input_channels: input.input_channels,
            classes: input.classes,
        }
    }

    /// Whether this is a ResNet (whose name fixes its depth and widths).
    pub fn is_resnet(&self) -> bool {
        matches!(self.net, NetChoice::Resnet { .. })
    }

    /// The shortcut of a ResNet's shape-changing units: the one asked for, or the placement's
    /// convention ([`crate::net::default_projection`]); for an MLP, the one asked for (which
    /// the builder refuses).
    pub fn resolved_projection(&self) -> Option<Projection> {
        match self.net {
            NetChoice::Resnet { .. } => Some(
                self.projection
                    .unwrap_or_else(|| super::default_projection(self.placement, self.norm)),
            ),
            NetChoice::Mlp => self.projection,
        }
    }

    /// The residual units the network has (a ResNet's from its name).
    pub fn residual_units(&self) -> usize {
        match &self.net {
            NetChoice::Mlp => self.units,
            NetChoice::Resnet {
                units_per_stage, ..
            } => 3 * units_per_stage,
        }
    }

    /// The MLP's width; 0 for a ResNet, whose widths its name fixes (as checkpoints record it).
    pub fn mlp_width(&self) -> usize {
        match self.net {
            NetChoice::Mlp => self.width,
            NetChoice::Resnet { .. } => 0,
        }
    }

    /// Builds the network for `input`, its weights drawn from `seed`, validating every size.
    /// `norm` fills every normalisation slot of the placement (`none` leaves them out, and then
    /// a ResNet's shape-changing units default to a bare projection); a projection shortcut's
    /// BatchNorm asked for explicitly (`--projection bn`) stays; Fixup's rewrite follows a He
    /// start.
    pub fn build(&self, input: &InputSizes, seed: u64) -> Result<Network> {
        let mut net = super::build_drawn(
            &self.net,
            &self.sizes(input),
            self.placement,
            self.shortcut,
            self.resolved_projection(),
            self.norm,
            self.init,
            seed,
        )?;
        if self.init == Init::Fixup {
            super::fixup::apply(&mut net)?;
        }
        Ok(net)
    }

    /// The memory estimate of `purpose` on this network for `input`, with batch `batch`.
    pub fn memory(&self, input: &InputSizes, batch: usize, purpose: Purpose) -> Estimate {
        super::memory::estimate(
            &self.net,
            &self.sizes(input),
            self.placement,
            self.shortcut,
            batch,
            purpose,
        )
    }

    /// The work of `passes` forward and backward passes of this network for `input` over
    /// `batch` samples ([`super::memory::pass_work`]).
    pub fn pass_work(&self, input: &InputSizes, batch: usize, passes: f64) -> crate::budget::Work {
        super::memory::pass_work(&self.net, &self.sizes(input), batch, passes)
    }

    /// The checkpoint record's architecture fields, by name, as its `config_json` spells them:
    /// the residual units (a ResNet's 3n), the MLP's width (0 for a ResNet), the resolved
    /// projection (empty for an MLP).
    pub fn record(&self) -> [(&'static str, String); 8] {
        [
            ("net", self.net.to_string()),
            ("units", self.residual_units().to_string()),
            ("width", self.mlp_width().to_string()),
            ("placement", self.placement.to_string()),
            ("shortcut", self.shortcut.to_string()),
            (
                "projection",
                self.resolved_projection()
                    .map_or(String::new(), |p| p.to_string()),
            ),
            ("norm", self.norm.to_string()),
            ("init", self.init.to_string()),
        ]
    }

    /// The settings in which `now` builds another network than `self` (a checkpoint's), as
    /// `--flag: checkpoint A, now B`. A ResNet's units and width are its name's, and its
    /// projection the resolved one.
    pub fn differences(&self, now: &NetDescription) -> Vec<String> {
        self.record()
            .into_iter()
            .zip(now.record())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((k, a), (_, b))| format!("--{k}: checkpoint {a}, now {b}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        net: NetDescription,
    }

    #[test]
    fn default_is_the_flags_default() {
        let parsed = <Cmd as clap::Parser>::try_parse_from(["resprop"]).unwrap();
        assert_eq!(parsed.net, NetDescription::default());
    }

    #[test]
    fn serde_round_trips_and_reads_a_checkpoint_record() {
        let d = NetDescription {
            net: "resnet:2:bottleneck".parse().unwrap(),
            placement: Placement::FullPreact,
            shortcut: "scale:0.5".parse().unwrap(),
            projection: Some(Projection::Pad),
            norm: NormKind::Layer,
            init: Init::Xavier,
            ..NetDescription::default()
        };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<NetDescription>(&json).unwrap(), d);
        // A checkpoint's config_json: other keys, an empty projection, no norm or init.
        let old = r#"{"net":"mlp","units":4,"width":8,"placement":"original","shortcut":"identity","projection":"","epochs":1,"seed":0}"#;
        let d: NetDescription = serde_json::from_str(old).unwrap();
        assert_eq!(
            d,
            NetDescription {
                units: 4,
                width: 8,
                ..NetDescription::default()
            }
        );
    }

    #[test]
    fn record_resolves_what_a_checkpoint_stores() {
        let d = NetDescription {
            net: "resnet:2:basic".parse().unwrap(),
            placement: Placement::FullPreact,
            ..NetDescription::default()
        };
        let r = d.record();
        assert_eq!(r[1], ("units", "6".to_string()));
        assert_eq!(r[2], ("width", "0".to_string()));
        assert_eq!(r[5], ("projection", "plain".to_string()));
        let other = NetDescription {
            units: 3,
            ..d.clone()
        };
        assert!(
            d.differences(&other).is_empty(),
            "a ResNet's units are its name's"
        );
    }
}
