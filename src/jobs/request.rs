//! The network a job analyses, with its input batch and seed: [`NetRequest`], what `profile`,
//! `check`, `paths` and `lesion` share (the command line flattens it, Python's keyword
//! arguments parse into it), and [`NetRequest::prepare`], which resolves it against a
//! checkpoint and builds the network and batch: [`Analysis`].

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{Given, InputSizes, NetDescription};
use crate::layers::{Mode, NormKind};
use crate::net::{NetChoice, NetSizes, Network};
use crate::rng::{derive_seed, purpose};
use crate::unit::{ForwardCtx, Projection, ShortcutKind};

/// The network, its input batch and the run's seed.
#[derive(Debug, Clone, Args, Serialize)]
pub struct NetRequest {
    // The network's architecture: --net, --units, --width, --placement, --shortcut,
    // --projection, --norm, --init.
    #[command(flatten)]
    pub arch: NetDescription,
    /// Input dimension of the dense stem (MLP).
    #[arg(long, default_value_t = 64)]
    pub input_dim: usize,
    /// Input images are 3 x S x S (ResNets; 32 for CIFAR).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Number of classes of the softmax cross-entropy loss.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Mini-batch size N (Gaussian inputs N(0,1), labels uniform over the classes).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// BatchNorm mode: train (batch statistics) or eval (running statistics).
    #[arg(long, default_value = "train", value_parser = parse_mode)]
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub bn_mode: Mode,
    /// Seed of weights, input batch, labels and dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Run the plain layer-by-layer interpreter instead of the fused engine: each layer's
    /// own forward and backward, the shortcut added after the branch. Same numbers, slower;
    /// the reference the fusions are tested against.
    #[arg(long)]
    pub unfused: bool,
    /// Analyse trained weights: a checkpoint written by `resprop train --checkpoint DIR`
    /// (DIR/checkpoint.npz), parameters and BN running statistics. The network is the
    /// checkpoint's: flags left at their defaults take its values, and one that names another
    /// value is refused (a flag given at its default value counts as left out).
    #[arg(long, value_name = "CHECKPOINT")]
    pub weights: Option<std::path::PathBuf>,
    /// Take the analysis batch from real data instead of Gaussian inputs: `digits` or
    /// `cifar10:<dir>`; --batch images of the training split, drawn with --seed. The network
    /// is sized for the data (with --weights and no --data: for the checkpoint's data).
    #[arg(long, value_parser = |s: &str| s.parse::<crate::data::DataSpec>())]
    #[serde(serialize_with = "crate::util::text_opt::serialize")]
    pub data: Option<crate::data::DataSpec>,
    /// Analyse your own network: an ONNX model (exported from PyTorch or any framework that
    /// writes ONNX; docs/import.md). Its layers, weights, input size and classes are the
    /// file's, its units named by its modules; --batch, --seed and --bn-mode apply, the
    /// batch is Gaussian.
    #[arg(long, value_name = "FILE.onnx")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<std::path::PathBuf>,
    /// The flags given on the command line (filled after parsing).
    #[arg(skip)]
    #[serde(skip)]
    pub given: Given,
}

/// A network ready to analyse, with its batch.
pub struct Analysis {
    /// The settings it was built with: the command line's, with a checkpoint's architecture
    /// filled in where the command line left the default.
    pub args: NetRequest,
    pub net: Network,
    pub input: crate::tensor::Tensor,
    pub labels: Vec<usize>,
    /// The data the network was sized for (`--data`, or the checkpoint's).
    pub data: Option<crate::data::Split>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

impl NetRequest {
    /// The sizes the flags give the network's input (3 image channels).
    pub fn input_sizes(&self) -> InputSizes {
        InputSizes {
            input_dim: self.input_dim,
            image_size: self.image_size,
            input_channels: 3,
            classes: self.classes,
        }
    }

    pub fn sizes(&self) -> NetSizes {
        self.arch.sizes(&self.input_sizes())
    }

    /// The memory estimate of this network and batch for `purpose`.
    pub fn memory(&self, purpose: crate::net::memory::Purpose) -> crate::net::memory::Estimate {
        self.arch.memory(&self.input_sizes(), self.batch, purpose)
    }

    /// Every flag at its default value.
    pub fn defaults() -> NetRequest {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            net: NetRequest,
        }
        <Defaults as clap::Parser>::try_parse_from(["resprop"])
            .expect("the defaults parse")
            .net
    }

    /// The network to analyse (trained weights loaded with `--weights`) and its batch
    /// (`--data`'s images, or Gaussian inputs), after checking that `purpose` fits in memory.
    pub fn prepare(&self, purpose: crate::net::memory::Purpose) -> Result<Analysis> {
        if self.batch == 0 {
            anyhow::bail!("batch must be at least 1, got 0");
        }
        if let Some(model) = &self.model {
            return self.prepare_imported(model, purpose);
        }
        let resolved = self.with_checkpoint_architecture()?;
        resolved.refuse_inapplicable()?;
        resolved.prepare_resolved(purpose)
    }

    /// Refuses each flag given that this network and its data cannot use (after a
    /// checkpoint's architecture is filled in).
    fn refuse_inapplicable(&self) -> Result<()> {
        let (g, d) = (&self.given, NetRequest::defaults());
        let arch = &self.arch;
        match &arch.net {
            NetChoice::Resnet { .. } => {
                for (id, differs) in [
                    ("units", arch.units != d.arch.units),
                    ("width", arch.width != d.arch.width),
                    ("input_dim", self.input_dim != d.input_dim),
                ] {
                    g.refuse(id, differs, || {
                        format!("sizes the MLP; {} takes its size from its name", arch.net)
                    })?;
                }
            }
            NetChoice::Mlp => g.refuse("image_size", self.image_size != d.image_size, || {
                "sizes a ResNet's input images; an MLP's input is --input-dim".into()
            })?,
        }
        let data = match (&self.data, &self.weights) {
            (Some(_), _) => Some("--data's images"),
            (None, Some(_)) => Some("the data the checkpoint was trained on"),
            (None, None) => None,
        };
        if let Some(source) = data {
            for (id, differs) in [
                ("input_dim", self.input_dim != d.input_dim),
                ("image_size", self.image_size != d.image_size),
                ("classes", self.classes != d.classes),
            ] {
                g.refuse(id, differs, || format!("the network is sized for {source}"))?;
            }
        }
        let projection_bn = arch.is_resnet() && arch.resolved_projection() == Some(Projection::Bn);
        if arch.norm != NormKind::Batch && !projection_bn {
            g.refuse("bn_mode", self.bn_mode != d.bn_mode, || {
                format!("the network has no BatchNorm (--norm {})", arch.norm)
            })?;
        }
        Ok(())
    }

    /// With `--weights`: every architecture setting left at its default takes the
    /// checkpoint's value; one set to a third value is refused in one line.
    fn with_checkpoint_architecture(&self) -> Result<NetRequest> {
        let Some(w) = &self.weights else {
            return Ok(self.clone());
        };
        let config = crate::train::checkpoint::read_run_config(w)?;
        let (arch, conflicts) =
            self.arch
                .adopt_checkpoint(&config, &self.given, &NetRequest::defaults().arch)?;
        if !conflicts.is_empty() {
            anyhow::bail!(
                "--weights '{}' holds another network ({}): leave these flags out or give the checkpoint's values",
                w.display(),
                conflicts.join("; ")
            );
        }
        Ok(NetRequest {
            arch,
            ..self.clone()
        })
    }

    fn prepare_resolved(&self, purpose: crate::net::memory::Purpose) -> Result<Analysis> {
        let spec = match (&self.data, &self.weights) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(w)) => Some(
                crate::train::checkpoint::read_run_config(w)?
                    .data
                    .parse::<crate::data::DataSpec>()
                    .map_err(|e| anyhow::anyhow!("--weights: the checkpoint's data: {e}"))?,
            ),
            (None, None) => None,
        };
        let data = spec.map(|d| crate::data::load(&d)).transpose()?;
        let input = match &data {
            Some(d) => InputSizes::of_data(d),
            None => self.input_sizes(),
        };
        let estimate = self.arch.memory(&input, self.batch, purpose);
        crate::net::memory::ensure_fits(&estimate, &format!("{}", self.arch.net))?;
        let mut net = self.build_for(&input)?;
        if let Some(w) = &self.weights {
            let given_data = self.data.as_ref().map(|d| d.to_string());
            self.arch.load_weights(w, &mut net, given_data.as_deref())?;
        }
        let (input, labels) = match (&self.data, &data) {
            (Some(_), Some(d)) => {
                let n = d.train.len();
                if self.batch > n {
                    anyhow::bail!(
                        "--batch {} is larger than the training split of {} ({n} images)",
                        self.batch,
                        d.name
                    );
                }
                let mut r = crate::rng::rng(derive_seed(self.seed, &[purpose::INPUT]));
                let idx = rand::seq::index::sample(&mut r, n, self.batch).into_vec();
                d.train.batch(&idx, self.arch.net == NetChoice::Mlp)
            }
            _ => crate::analysis::gaussian_batch(
                &net.input_shape,
                self.batch,
                net.classes,
                self.seed,
            ),
        };
        Ok(Analysis {
            args: self.clone(),
            net,
            input,
            labels,
            data,
        })
    }

    /// The network of an ONNX model and a Gaussian batch for it. Every flag that describes
    /// the network or its input is refused: the file says all of it.
    fn prepare_imported(
        &self,
        model: &std::path::Path,
        purpose: crate::net::memory::Purpose,
    ) -> Result<Analysis> {
        let d = NetRequest::defaults();
        let mine = "the network is --model's";
        for (id, differs) in [
            ("net", self.arch.net != d.arch.net),
            ("units", self.arch.units != d.arch.units),
            ("width", self.arch.width != d.arch.width),
            ("placement", self.arch.placement != d.arch.placement),
            ("shortcut", self.arch.shortcut != d.arch.shortcut),
            ("projection", self.arch.projection != d.arch.projection),
            ("norm", self.arch.norm != d.arch.norm),
            ("init", self.arch.init != d.arch.init),
            ("input_dim", self.input_dim != d.input_dim),
            ("image_size", self.image_size != d.image_size),
            ("classes", self.classes != d.classes),
        ] {
            self.given.refuse(id, differs, || mine.into())?;
        }
        self.given.refuse("weights", self.weights.is_some(), || {
            "the weights are --model's own".into()
        })?;
        self.given.refuse("data", self.data.is_some(), || {
            "not yet with --model: an imported network is analysed on a Gaussian batch".into()
        })?;
        self.given.refuse("unfused", self.unfused, || {
            "an imported network always runs the plain interpreter".into()
        })?;
        let bytes = crate::input::read(model, crate::import::graph::MAX_MODEL_BYTES, "--model")?;
        let at = |e: anyhow::Error| anyhow::anyhow!("--model {}: {e:#}", model.display());
        let graph = crate::import::Graph::decode(&bytes).map_err(at)?;
        let found = crate::import::find(&graph).map_err(at)?;
        let net = crate::import::build::network(
            &graph,
            &found,
            &model.display().to_string(),
            &crate::util::sha256_hex(&bytes),
        )
        .map_err(at)?;
        let estimate = crate::net::memory::estimate_network(&net, self.batch, purpose);
        crate::net::memory::ensure_fits(&estimate, &model.display().to_string())?;
        let (input, labels) =
            crate::analysis::gaussian_batch(&net.input_shape, self.batch, net.classes, self.seed);
        Ok(Analysis {
            args: self.clone(),
            net,
            input,
            labels,
            data: None,
        })
    }

    /// The network for `input`, drawn from --seed, run by the engine --unfused names.
    fn build_for(&self, input: &InputSizes) -> Result<Network> {
        let mut net = self.arch.build(input, self.seed)?;
        net.set_fusion(crate::unit::Fusion::from_unfused(self.unfused));
        Ok(net)
    }

    pub fn ctx(&self) -> ForwardCtx {
        ForwardCtx::analysis(self.bn_mode, self.seed)
    }

    /// The header `profile` and `check` print: the run, a typical unit, the shape changes.
    pub fn describe(&self, command: &str, net: &Network) -> String {
        let mut out = format!("resprop {command}: {}\n", self.summary());
        out.push_str(&format!("unit: {}\n", net.units.last().unwrap().describe()));
        let changes: Vec<String> = net
            .units
            .iter()
            .filter(|u| u.changes_shape)
            .map(|u| u.index.to_string())
            .collect();
        if let Some(u) = net.units.iter().find(|u| u.changes_shape) {
            let how = match u.shortcut {
                ShortcutKind::Pad => {
                    "option-A subsample-and-pad shortcut; the direct part carries on across them"
                }
                ShortcutKind::None => "no shortcut (plain net)",
                // A projection: its ops say whether BN follows the 1x1 convolution.
                ShortcutKind::Identity
                | ShortcutKind::Scale { .. }
                | ShortcutKind::Gate { .. }
                | ShortcutKind::ShortcutGate { .. }
                | ShortcutKind::Conv1x1
                | ShortcutKind::Dropout { .. }
                | ShortcutKind::Alpha { .. }
                | ShortcutKind::LayerScale { .. }
                | ShortcutKind::DeepNorm { .. } => {
                    if u.shortcut_ops.len() > 1 {
                        "1x1 projection + BN shortcut; the direct part restarts above them"
                    } else {
                        "bare 1x1 projection shortcut; the direct part restarts above them"
                    }
                }
            };
            out.push_str(&format!(
                "shape-changing units ({how}): {}\n",
                changes.join(", ")
            ));
        }
        out
    }

    /// One line naming everything that determines the numbers.
    pub fn summary(&self) -> String {
        if let Some(model) = &self.model {
            return format!(
                "--model {}, batch {}, BN {} (where it has BatchNorm), seed {}, Gaussian batch",
                model.display(),
                self.batch,
                self.bn_mode,
                self.seed
            );
        }
        let arch = &self.arch;
        let size = match &arch.net {
            NetChoice::Mlp => format!("{} units, width {}", arch.units, arch.width),
            NetChoice::Resnet {
                units_per_stage, ..
            } => {
                format!(
                    "{} units, {}x{} images",
                    3 * units_per_stage,
                    self.image_size,
                    self.image_size
                )
            }
        };
        let projection = match (&arch.net, arch.projection) {
            (NetChoice::Mlp, _) => String::new(),
            (_, p) => format!(
                ", projection {}",
                p.unwrap_or_else(|| crate::net::default_projection(arch.placement, arch.norm))
            ),
        };
        let mut norm = match arch.norm {
            NormKind::Batch => format!("BN {}", self.bn_mode),
            other => format!("norm {other}"),
        };
        if !arch.init.is_he() {
            norm.push_str(&format!(", init {}", arch.init));
        }
        let mut source = String::new();
        if let Some(w) = &self.weights {
            source.push_str(&format!(", weights {}", w.display()));
        }
        if let Some(d) = &self.data {
            source.push_str(&format!(", batch from {d}"));
        }
        let size = if self.data.is_some() || self.weights.is_some() {
            match &arch.net {
                NetChoice::Mlp => format!("{} units, width {}", arch.units, arch.width),
                NetChoice::Resnet {
                    units_per_stage, ..
                } => format!("{} units, sized for the data", 3 * units_per_stage),
            }
        } else {
            size
        };
        format!(
            "{} with {size}, batch {}, placement {}, shortcut {}{projection}, {norm}, seed {}{source}",
            arch.net, self.batch, arch.placement, arch.shortcut, self.seed
        )
    }
}
