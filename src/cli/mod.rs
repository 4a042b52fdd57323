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
pub mod inspect;
pub mod keywords;
pub mod lesion;
pub mod paths;
pub mod profile;
pub mod python;
pub mod serve;
pub mod shatter;
pub mod train;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

pub use crate::jobs::{Analysis, NetRequest};

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
    /// Read an ONNX model (exported from PyTorch or another framework) and print what
    /// resprop finds in it: the stem, each residual unit (its name from the graph, its
    /// shortcut, its branch and after-addition ops) and the head.
    Inspect(inspect::InspectArgs),
    /// Time the benchmark workloads (W1, W1b: residual MLPs; W2-W4: ResNet-110/164/1001; D1, D2: training steps on the digits; see README.md): median/min/max
    /// seconds per step and peak RSS; `--workload gemm` times the GEMM on W1's shapes.
    Bench(bench::BenchArgs),
    /// Run one experiment file: every cell of its grid, in parallel, into a tidy CSV
    /// (--shard I/N: one shard of the cells, for a cluster array job).
    Run(experiment::RunArgs),
    /// Assemble a sharded experiment's CSVs (and charts) once every shard's cells are
    /// stored; lists the missing cells otherwise.
    Merge(experiment::MergeArgs),
    /// Train a network with SGD or Adam on real data (bundled digits, Fashion-MNIST, MNIST,
    /// CIFAR-10 binaries or your arrays), recording losses, errors and per-unit gradient norms
    /// over training.
    Train(train::TrainArgs),
    /// Draw an experiment's charts (PNG and SVG) from its CSV, without recomputing.
    Plot(experiment::PlotArgs),
    /// List the data sets and which are installed; describe one (--data), or write its
    /// training and test split, as `train` sees it, to .npz (--npz, for NumPy or PyTorch).
    Data(data::DataArgs),
    /// Run every experiment in experiments/, draw the charts into plots/ and write
    /// plots/README.md (what `resprop` does with no command).
    All(experiment::AllArgs),
    /// The explorer: a local web page (http://127.0.0.1:8000/) where the gradient profile of
    /// a network answers every change of its controls, measured by this engine; the page is
    /// compiled in and works offline.
    Serve(serve::ServeArgs),
}

pub use crate::jobs::Given;

impl Command {
    /// Hands the given flags to the command's arguments.
    fn set_given(&mut self, given: &Given) {
        match self {
            Command::Profile(a) => a.job.net.given = given.clone(),
            Command::Check(a) => a.job.net.given = given.clone(),
            Command::Paths(a) => a.job.net.given = given.clone(),
            Command::Lesion(a) => a.job.net.given = given.clone(),
            Command::Bench(a) => a.given = given.clone(),
            Command::Train(a) => a.job.given = given.clone(),
            Command::Shatter(_)
            | Command::Run(_)
            | Command::Merge(_)
            | Command::Plot(_)
            | Command::Data(_)
            | Command::Inspect(_)
            | Command::Serve(_)
            | Command::All(_) => {}
        }
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
/// missing arguments, the possible values, a tip).
fn one_line_message(rendered: &str) -> String {
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
    line
}

/// [`one_line_message`], then where to look.
fn one_line(rendered: &str, command: Option<&str>) -> String {
    let help = match command {
        Some(c) => format!("resprop {c} --help"),
        None => "resprop --help".into(),
    };
    format!("{} (see '{help}')", one_line_message(rendered))
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
        Command::Profile(a) => in_pool(a.job.net.threads, || profile::run(&a)),
        Command::Check(a) => in_pool(a.job.net.threads, || check::run(&a)),
        Command::Paths(a) => in_pool(a.job.net.threads, || paths::run(&a)),
        Command::Shatter(a) => in_pool(None, || shatter::run(&a)),
        Command::Lesion(a) => in_pool(a.job.net.threads, || lesion::run(&a)),
        Command::Bench(a) => in_pool(a.threads, || bench::run(&a)),
        Command::Run(a) => in_pool(a.threads, || experiment::run(&a)),
        Command::Train(a) => in_pool(a.job.threads, || train::run(&a)),
        Command::Plot(a) => in_pool(None, || experiment::plot(&a)),
        Command::Merge(a) => in_pool(None, || experiment::merge(&a)),
        Command::Data(a) => in_pool(None, || data::run(&a)),
        Command::Inspect(a) => inspect::run(&a),
        Command::All(a) => in_pool(a.threads, || experiment::all(&a)),
        Command::Serve(a) => serve::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
