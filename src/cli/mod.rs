//! Command-line interface: raw arguments (clap) -> validated network spec -> subcommand.

/// `writeln!` into a `String` report (writing to a String cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

pub mod bench;
pub mod check;
pub mod data;
pub mod experiment;
pub mod lesion;
pub mod paths;
pub mod profile;
pub mod shatter;
pub mod train;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::jobs::{InputSizes, NetDescription};
use crate::layers::{Mode, NormKind};
use crate::net::{NetChoice, NetSizes, Network};
use crate::rng::{derive_seed, purpose};
use crate::unit::{ForwardCtx, Projection, ShortcutKind};

const ABOUT: &str = "How gradients travel through deep residual networks (He et al. 2016, \"Identity Mappings in Deep Residual Networks\").";

const LONG_ABOUT: &str = "How gradients travel through deep residual networks (He et al. 2016, \"Identity Mappings in Deep Residual Networks\").

A residual unit computes y_l = h(x_l) + F(x_l), x_{l+1} = f(y_l). With h and f identities,
  x_L = x_l + sum_{i=l}^{L-1} F(x_i)                                     (Eq. 4)
  dE/dx_l = dE/dx_L + dE/dx_L * d/dx_l sum_{i=l}^{L-1} F(x_i)            (Eq. 5)
so the gradient of any deeper unit reaches every shallower one directly. resprop runs these
networks on a CPU engine with hand-written backward passes, records dE/dx_l per unit with its
direct (shortcut-only) part, and verifies the formulas numerically.";

#[derive(Debug, Parser)]
#[command(name = "resprop", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// With no command: `all` (run every experiment, draw the charts, write plots/README.md).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-unit gradient profile: ||dE/dx_l||, its direct (shortcut-only) part and the rest.
    ///
    /// Prints a compact per-unit table; --csv writes one tidy row per unit input x_l
    /// (l = 0..L, row L is the head's input), --npz writes the whole computation for NumPy.
    Profile(profile::ProfileArgs),
    /// Verify the paper's formulas numerically: finite differences, Eq. 4/7 (forward sum),
    /// Eq. 5/8 (additive backward), prod lambda (scaled shortcuts).
    ///
    /// Prints one row per check and exits with status 1 if any check fails.
    Check(check::CheckArgs),
    /// The gradient by path length, exactly: G_k(l), what all paths through exactly k
    /// branches above unit l carry (Veit et al. 2016's ensemble view), with the check that
    /// they sum to dE/dx_l; --sample S adds Veit's sampled estimate at the input.
    Paths(paths::PathsArgs),
    /// Shattered gradients (Balduzzi et al. 2017): the derivative of a fixed output with
    /// respect to a scalar input swept over [-2, 2), plain vs residual, with and without
    /// BatchNorm, and its autocorrelation over the sweep against white and brown noise.
    Shatter(shatter::ShatterArgs),
    /// Lesions of a trained network (Veit et al. 2016): the test error with each single unit
    /// deleted (its branch removed; in a plain net, the unit replaced by the identity) and
    /// with k random units deleted, k = 1..n/2.
    Lesion(lesion::LesionArgs),
    /// Time the benchmark workloads (W1, W1b: residual MLPs; W2-W4: ResNet-110/164/1001; D1, D2: training steps on the digits; see README.md): median/min/max
    /// seconds per step and peak RSS; `--workload gemm` times the GEMM on W1's shapes.
    Bench(bench::BenchArgs),
    /// Run one experiment file: every cell of its grid, in parallel, into a tidy CSV
    /// (--shard I/N: one shard of the cells, for a cluster array job).
    Run(experiment::RunArgs),
    /// Assemble a sharded experiment's CSVs (and charts) once every shard's cells are
    /// stored; lists the missing cells otherwise.
    Merge(experiment::MergeArgs),
    /// Train a network with SGD or Adam on real data (bundled digits, or CIFAR-10 binaries), recording
    /// losses, errors and per-unit gradient norms over training.
    Train(train::TrainArgs),
    /// Draw an experiment's charts (PNG and SVG) from its CSV, without recomputing.
    Plot(experiment::PlotArgs),
    /// Write a dataset's training and test split, as `train` sees it, to .npz (for NumPy or
    /// PyTorch).
    Data(data::DataArgs),
    /// Run every experiment in experiments/, draw the charts into plots/ and write
    /// plots/README.md (what `resprop` does with no command).
    All(experiment::AllArgs),
}

pub use crate::jobs::Given;

impl Command {
    /// Hands the given flags to the command's arguments.
    fn set_given(&mut self, given: &Given) {
        match self {
            Command::Profile(a) => a.net.given = given.clone(),
            Command::Check(a) => a.net.given = given.clone(),
            Command::Paths(a) => a.net.given = given.clone(),
            Command::Lesion(a) => a.net.given = given.clone(),
            Command::Bench(a) => a.given = given.clone(),
            Command::Train(a) => a.given = given.clone(),
            Command::Shatter(_)
            | Command::Run(_)
            | Command::Merge(_)
            | Command::Plot(_)
            | Command::Data(_)
            | Command::All(_) => {}
        }
    }
}

/// The network, its input batch and the run's seed.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
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
    pub data: Option<crate::data::DataSpec>,
    /// The flags given on the command line (filled after parsing).
    #[arg(skip)]
    pub given: Given,
}

/// A network ready to analyse, with its batch.
pub struct Analysis {
    /// The settings it was built with: the command line's, with a checkpoint's architecture
    /// filled in where the command line left the default.
    pub args: NetArgs,
    pub net: Network,
    pub input: crate::tensor::Tensor,
    pub labels: Vec<usize>,
    /// The data the network was sized for (`--data`, or the checkpoint's).
    pub data: Option<crate::data::Split>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

impl NetArgs {
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
    pub fn defaults() -> NetArgs {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            net: NetArgs,
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
        let resolved = self.with_checkpoint_architecture()?;
        resolved.refuse_inapplicable()?;
        resolved.prepare_resolved(purpose)
    }

    /// Refuses each flag given that this network and its data cannot use (after a
    /// checkpoint's architecture is filled in).
    fn refuse_inapplicable(&self) -> Result<()> {
        let (g, d) = (&self.given, NetArgs::defaults());
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
    fn with_checkpoint_architecture(&self) -> Result<NetArgs> {
        let Some(w) = &self.weights else {
            return Ok(self.clone());
        };
        let config = crate::train::checkpoint::read_run_config(w)?;
        let (arch, conflicts) =
            self.arch
                .adopt_checkpoint(&config, &self.given, &NetArgs::defaults().arch)?;
        if !conflicts.is_empty() {
            anyhow::bail!(
                "--weights '{}' holds another network ({}): leave these flags out or give the checkpoint's values",
                w.display(),
                conflicts.join("; ")
            );
        }
        Ok(NetArgs {
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
                _ if u.shortcut_ops.len() > 1 => {
                    "1x1 projection + BN shortcut; the direct part restarts above them"
                }
                _ => "bare 1x1 projection shortcut; the direct part restarts above them",
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

/// Runs `job` inside a rayon pool of `threads` workers (default: all cores). The whole job runs
/// on a worker, so the many small parallel sections (GEMMs, BN reductions) are cheap joins
/// rather than a hand-off from an outside thread that then sleeps until woken.
fn in_pool(
    threads: Option<u32>,
    job: impl FnOnce() -> Result<ExitCode> + Send,
) -> Result<ExitCode> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        // More threads than this only wait for the cores (and thousands exhaust the system's).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max = (4 * cores).max(64);
        if n as usize > max {
            anyhow::bail!("--threads: at most {max} on this machine ({cores} cores), got {n}");
        }
        builder = builder.num_threads(n as usize);
    }
    let pool = builder
        .build()
        .context("--threads: could not start the thread pool")?;
    pool.install(job)
}

/// clap's rendered error as one line: its message and what follows it up to the usage (the
/// missing arguments, the possible values, a tip), then where to look.
fn one_line(rendered: &str, command: Option<&str>) -> String {
    let mut line = String::new();
    for part in rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    if line.is_empty() {
        line.push_str("error: invalid arguments");
    }
    let help = match command {
        Some(c) => format!("resprop {c} --help"),
        None => "resprop --help".into(),
    };
    format!("{line} (see '{help}')")
}

/// The command line's definition: the derived one, with negative numbers taken as values (so
/// `--seed -1` is refused as a value of --seed, not as an unknown flag `-1`).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .allow_negative_numbers(true)
        .mut_subcommands(|c| c.allow_negative_numbers(true))
}

/// Parses `args` and runs the subcommand. Usage errors are printed as one line.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use clap::FromArgMatches;
    let args: Vec<OsString> = args.into_iter().collect();
    let parsed = command()
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (mut cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // The subcommand's name, for its --help (the first argument that names one).
            let command = args.iter().skip(1).find_map(|a| {
                let a = a.to_str()?;
                command()
                    .get_subcommands()
                    .any(|c| c.get_name() == a)
                    .then(|| a.to_string())
            });
            eprintln!("{}", one_line(&e.render().to_string(), command.as_deref()));
            return ExitCode::from(2);
        }
    };
    if let (Some(command), Some((_, sub))) = (cli.command.as_mut(), matches.subcommand()) {
        command.set_given(&Given::of(sub));
    }
    let result = match cli
        .command
        .unwrap_or_else(|| Command::All(experiment::AllArgs::default()))
    {
        Command::Profile(a) => in_pool(a.net.threads, || profile::run(&a)),
        Command::Check(a) => in_pool(a.net.threads, || check::run(&a)),
        Command::Paths(a) => in_pool(a.net.threads, || paths::run(&a)),
        Command::Shatter(a) => in_pool(None, || shatter::run(&a)),
        Command::Lesion(a) => in_pool(a.net.threads, || lesion::run(&a)),
        Command::Bench(a) => in_pool(a.threads, || bench::run(&a)),
        Command::Run(a) => in_pool(a.threads, || experiment::run(&a)),
        Command::Train(a) => in_pool(a.threads, || train::run(&a)),
        Command::Plot(a) => in_pool(None, || experiment::plot(&a)),
        Command::Merge(a) => in_pool(None, || experiment::merge(&a)),
        Command::Data(a) => in_pool(None, || data::run(&a)),
        Command::All(a) => in_pool(a.threads, || experiment::all(&a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
