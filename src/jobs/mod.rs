//! The request layer: what every front end (the command line, experiment files, checkpoints,
//! the Python package) asks of the engine, defined once.
//!
//! - [`net`]: [`NetDescription`], which network (its architecture), and [`InputSizes`], the
//!   sizes its input gives; `NetDescription::build` is the one way to build a network from
//!   them.
//! - [`NetRequest`]: the network an analysis runs on, with its input batch, seed, trained
//!   weights and data; [`NetRequest::prepare`] builds them ([`Analysis`]).
//! - One job per command: [`ProfileJob`], [`CheckJob`], [`PathsJob`], [`LesionJob`],
//!   [`ShatterJob`], [`TrainJob`]. Each is clap `Args` (the command line flattens it and adds
//!   its output files; Python's keyword arguments parse into it through the same parser,
//!   `cli::keywords`) and
//!   serde `Serialize` (a checkpoint stores the train job it came from), and each has a `run`
//!   that returns what the command writes, without printing or writing files.
//! - [`Given`]: which flags a command line set, as against those left at their defaults.

pub mod check;
pub mod lesion;
pub mod net;
pub mod paths;
pub mod profile;
pub mod request;
pub mod shatter;
pub mod train;

pub use check::CheckJob;
pub use lesion::LesionJob;
pub use net::{InputSizes, NetDescription};
pub use paths::PathsJob;
pub use profile::ProfileJob;
pub use request::{Analysis, NetRequest};
pub use shatter::ShatterJob;
pub use train::TrainJob;

/// The flags given on the command line, by clap id (`units`, `input_dim`), as against those
/// left at their defaults: a flag that cannot apply is refused when given, even at its default
/// value. Empty when the arguments were not parsed from a command line (then nothing counts as
/// given, and only values are checked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given(std::collections::BTreeSet<String>);

impl Given {
    /// The flags of `matches` whose value came from the command line.
    pub fn of(matches: &clap::ArgMatches) -> Given {
        Given(
            matches
                .ids()
                .filter(|id| {
                    matches.value_source(id.as_str())
                        == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|id| id.as_str().to_string())
                .collect(),
        )
    }

    /// Whether the flag with clap id `id` was given.
    pub fn has(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    /// Whether the flag `id` was set: given on the command line, or (for arguments built
    /// without one, as the Python package builds them) given a value other than its default.
    pub fn set(&self, id: &str, differs_from_default: bool) -> bool {
        self.has(id) || differs_from_default
    }

    /// Refuses the flag `id` when [`Given::set`], saying why it cannot apply.
    pub fn refuse(
        &self,
        id: &str,
        differs_from_default: bool,
        why: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.set(id, differs_from_default) {
            anyhow::bail!("--{}: {}", id.replace('_', "-"), why());
        }
        Ok(())
    }
}
