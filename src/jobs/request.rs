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
    /// Take the analysis batch from real data instead of Gaussian inputs: `digits`,
    /// `fashion-mnist[:DIR]`, `mnist:DIR`, `cifar10:DIR` or `npz:FILE` (`resprop data` lists
    /// them); --batch images of the training split, drawn with --seed. The network
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
    /// With --model: the size of one sample, C,H,W for images or D for vectors, instead of
    /// the one the file declares (a convolutional model runs on any image size its layers
    /// fit; needed when the file leaves the size open).
    #[arg(long, value_name = "C,H,W", requires = "model")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "crate::util::text_opt::serialize")]
    pub input_shape: Option<InputShape>,
    /// The flags given on the command line (filled after parsing).
    #[arg(skip)]
    #[serde(skip)]
    pub given: Given,
}

/// The size of one input sample, `C,H,W` or `D` (`--input-shape`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShape(pub Vec<usize>);

/// Values in one sample at most (a 3 x 4096 x 4096 image): a bound, before any memory
/// estimate, on what a typo can ask for.
const MAX_SAMPLE_VALUES: usize = 3 << 24;

impl std::str::FromStr for InputShape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let dims = s
            .split(',')
            .map(|d| match d.trim().parse::<usize>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(format!(
                    "'{s}': sizes are positive integers, C,H,W for images or D for vectors"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if dims.len() != 1 && dims.len() != 3 {
            return Err(format!(
                "'{s}' has {} sizes; give C,H,W for images or D for vectors",
                dims.len()
            ));
        }
        let values = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if values.is_none_or(|v| v > MAX_SAMPLE_VALUES) {
            return Err(format!(
                "'{s}': at most {MAX_SAMPLE_VALUES} values per sample"
            ));
        }
        Ok(InputShape(dims))
    }
}

impl std::fmt::Display for InputShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        f.write_str(&dims.join(","))
    }
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
            (Some(_), Some(d)) => self.data_batch(d, self.arch.net == NetChoice::Mlp)?,
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

    /// The network of an ONNX model and its batch: `--data`'s images, or a Gaussian batch of
    /// the file's input size (or `--input-shape`). Every flag that describes the network is
    /// refused: the file says all of it.
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
            ("classes", self.classes != d.classes),
        ] {
            self.given.refuse(id, differs, || mine.into())?;
        }
        for (id, differs) in [
            ("input_dim", self.input_dim != d.input_dim),
            ("image_size", self.image_size != d.image_size),
        ] {
            self.given.refuse(id, differs, || {
                "the input size is --model's; --input-shape C,H,W (or D) sets another".into()
            })?;
        }
        self.given.refuse("weights", self.weights.is_some(), || {
            "the weights are --model's own".into()
        })?;
        if self.data.is_some() {
            self.given
                .refuse("input_shape", self.input_shape.is_some(), || {
                    "the input size is --data's".into()
                })?;
        }
        self.given.refuse("unfused", self.unfused, || {
            "an imported network always runs the plain interpreter".into()
        })?;
        let bytes = crate::input::read(model, crate::import::graph::MAX_MODEL_BYTES, "--model")?;
        let at = |e: anyhow::Error| anyhow::anyhow!("--model {}: {e:#}", model.display());
        let graph = crate::import::Graph::decode(&bytes).map_err(at)?;
        self.refuse_bn_mode_for(&graph)?;
        let found = crate::import::find(&graph).map_err(at)?;
        let data = self.data.as_ref().map(crate::data::load).transpose()?;
        let declared = crate::import::build::declared_input_shape(&graph);
        let shape = match (&data, &self.input_shape) {
            (Some(d), _) => {
                let image = d.train.image_shape().to_vec();
                // A model that reads vectors reads the images flattened.
                match declared.as_deref() {
                    Ok([_]) => vec![image.iter().product()],
                    _ => image,
                }
            }
            (None, Some(s)) => s.0.clone(),
            (None, None) => declared.map_err(at)?,
        };
        let sha256 = crate::util::sha256_hex(&bytes);
        drop(bytes);
        let net = crate::import::build::network_on(
            &graph,
            &found,
            &model.display().to_string(),
            &sha256,
            shape.clone(),
        )
        .map_err(|e| match (&data, &self.input_shape) {
            (Some(d), _) => anyhow::anyhow!(
                "--model {} on --data {} ({} per sample): {e:#}",
                model.display(),
                d.name,
                shape
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            ),
            (None, Some(s)) => {
                anyhow::anyhow!("--model {} at --input-shape {s}: {e:#}", model.display())
            }
            (None, None) => at(e),
        })?;
        drop(graph);
        let estimate = crate::net::memory::estimate_network(&net, self.batch, purpose);
        crate::net::memory::ensure_fits(&estimate, &model.display().to_string())?;
        let (input, labels) = match &data {
            Some(d) => {
                if d.classes > net.classes {
                    anyhow::bail!(
                        "--data {} has {} classes and --model {} gives {} logits",
                        d.name,
                        d.classes,
                        model.display(),
                        net.classes
                    );
                }
                self.data_batch(d, shape.len() == 1)?
            }
            None => crate::analysis::gaussian_batch(
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

    /// Refuses `--bn-mode` for a model it cannot apply to: one with no BatchNorm, or (for
    /// `train`) one whose exporter folded BatchNorm into the convolutions, which holds only
    /// the network in evaluation mode.
    fn refuse_bn_mode_for(&self, graph: &crate::import::Graph) -> Result<()> {
        use crate::import::OpType;
        let has_bn = graph
            .nodes
            .iter()
            .any(|n| n.op == OpType::BatchNormalization);
        let folded = graph.nodes.iter().any(|n| n.folded_bn);
        if folded && self.bn_mode == Mode::Train && self.given.has("bn_mode") {
            anyhow::bail!(
                "--bn-mode train: the exporter folded --model's BatchNorm into its convolutions, so the file holds the network in evaluation mode only; export it with training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False, dynamo=False to keep BatchNorm"
            );
        }
        if !has_bn {
            let d = NetRequest::defaults();
            self.given
                .refuse("bn_mode", self.bn_mode != d.bn_mode, || {
                    if folded {
                        "the exporter folded --model's BatchNorm into its convolutions".into()
                    } else {
                        "--model has no BatchNorm".into()
                    }
                })?;
        }
        Ok(())
    }

    /// `--batch` images of `data`'s training split, drawn with --seed.
    fn data_batch(
        &self,
        d: &crate::data::Split,
        flat: bool,
    ) -> Result<(crate::tensor::Tensor, Vec<usize>)> {
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
        Ok(d.train.batch(&idx, flat))
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
        if let crate::net::NetSpec::Imported(spec) = &net.spec {
            out.push_str(&imported_notes(spec, net));
        }
        let Some(last) = net.units.last() else {
            return out;
        };
        out.push_str(&format!("unit: {}\n", last.describe()));
        if let (Some(sizes), crate::net::NetSpec::Resnet(_)) = (net.map_sizes(), &net.spec) {
            out.push_str(&format!("feature maps (C x H x W): {sizes}\n"));
        }
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

    /// The memory estimate of the prepared network `net` for `purpose`: an imported network's
    /// from its own ops, a built-in one's from its description.
    pub fn memory_of(
        &self,
        net: &Network,
        purpose: crate::net::memory::Purpose,
    ) -> crate::net::memory::Estimate {
        match &net.spec {
            crate::net::NetSpec::Imported(_) => {
                crate::net::memory::estimate_network(net, self.batch, purpose)
            }
            crate::net::NetSpec::Mlp(_) | crate::net::NetSpec::Resnet(_) => self.memory(purpose),
        }
    }

    /// One line naming everything that determines the numbers.
    pub fn summary(&self) -> String {
        if let Some(model) = &self.model {
            let input = match (&self.data, &self.input_shape) {
                (Some(d), _) => format!("batch from {d}"),
                (None, Some(s)) => format!("Gaussian batch of {s} samples (--input-shape)"),
                (None, None) => "Gaussian batch of the file's input size".into(),
            };
            return format!(
                "--model {}, batch {}, BN {} (where it has BatchNorm), seed {}, {input}",
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

/// The lines an imported network's header adds: its input, its units, what is not as usual.
fn imported_notes(spec: &crate::net::ImportedSpec, net: &Network) -> String {
    let shape: Vec<String> = net.input_shape.iter().map(|d| d.to_string()).collect();
    let mut out = format!(
        "model: sha256 {}, input {} per sample, {} classes, {} residual units\n",
        &spec.sha256[..spec.sha256.len().min(12)],
        shape.join("x"),
        net.classes,
        net.units.len()
    );
    if net.units.is_empty() {
        out.push_str("note: no residual unit found in the model: it runs as a plain network, and only the head's input (top) is recorded\n");
    }
    if spec.folded_bn > 0 {
        out.push_str(&format!(
            "note: the exporter folded BatchNorm into {} convolutions: this is the network in evaluation mode\n",
            spec.folded_bn
        ));
    }
    out
}
