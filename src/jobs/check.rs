//! The check job: every numerical verification of the paper's formulas on one network
//! (`resprop check`, Python's `check`).

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{Analysis, NetRequest};
use crate::analysis::checks::{run_checks, CheckOptions, CheckReport};
use crate::interrupt::Interrupt;

#[derive(Debug, Clone, Args, Serialize)]
pub struct CheckJob {
    #[command(flatten)]
    #[serde(flatten)]
    pub net: NetRequest,
    /// Random directions per finite-difference target.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub directions: u32,
    /// Run even when the finite differences are estimated to take more than a day.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// f64 only: the finite differences' tolerances rest on f64's rounding (f32 is refused,
    /// with the reason).
    #[arg(long, default_value = "f64", value_name = "f64")]
    #[serde(skip)]
    pub precision: crate::float::Precision,
}

impl CheckJob {
    /// Builds the network and batch and runs every check; a request on `stop` ends the
    /// finite differences before their next job.
    pub fn run(&self, stop: &Interrupt) -> Result<(Analysis, CheckReport)> {
        if self.directions == 0 {
            anyhow::bail!("--directions: at least 1");
        }
        if !self.precision.is_f64() {
            anyhow::bail!("--precision: check runs in f64 only: its finite differences resolve relative errors near 1e-10, and f32 rounds at 6e-8");
        }
        let analysis = self.net.prepare(crate::net::memory::Purpose::Check)?;
        let opts = CheckOptions {
            directions: self.directions as usize,
            seed: analysis.args.seed,
            force: self.force,
        };
        let report = run_checks(
            &analysis.net,
            &analysis.input,
            &analysis.labels,
            &analysis.args.ctx(),
            &opts,
            stop,
        )?;
        Ok((analysis, report))
    }
}
