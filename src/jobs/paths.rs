//! The paths job: the gradient by path length, exactly, with Veit et al.'s sampled estimate
//! on request (`resprop paths`, Python's `paths`; see `resprop::analysis::paths`).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{Analysis, NetRequest};
use crate::analysis::paths::{check_samples, decompose, path_rows, sample_paths};
use crate::net::Keep;
use crate::rng::derive_seed;

#[derive(Debug, Clone, Args, Serialize)]
pub struct PathsJob {
    #[command(flatten)]
    #[serde(flatten)]
    pub net: NetRequest,
    /// Also estimate the input's gradient by path length as Veit et al. did: the mean norm
    /// over S sampled single paths of each length, times the number of such paths.
    #[arg(long, value_name = "S")]
    pub sample: Option<usize>,
    /// The share of sum_k ||G_k(0)|| the effective window of path lengths holds.
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub window: f64,
    /// Run even when the decomposition and the sampling are estimated to take more than a day.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// f64 only: the path-length terms sum to the backward pass to rounding (f32 is refused,
    /// with the reason).
    #[arg(long, default_value = "f64", value_name = "f64")]
    #[serde(skip)]
    pub precision: crate::float::Precision,
}

/// What `resprop paths` computes: the rows of its CSV and the network they describe.
pub struct Paths {
    pub analysis: Analysis,
    pub decomposition: crate::analysis::paths::Decomposition,
    /// Veit's estimate at the input: the mean sampled single-path norm per length.
    pub sampled: Option<Vec<f64>>,
    pub rows: Vec<crate::analysis::paths::PathRow>,
    /// Seconds of one backward pass and of the decomposition.
    pub backward_s: f64,
    pub decompose_s: f64,
}

impl PathsJob {
    /// The decomposition (and the sampled estimate with `--sample`, calling `on_length(n)`
    /// after each of the n path lengths; a request on `stop` ends the sampling); also the
    /// Python package's `paths`.
    pub fn run(
        &self,
        on_length: &(dyn Fn(usize) + Sync),
        stop: &crate::interrupt::Interrupt,
    ) -> Result<Paths> {
        check_samples(self.sample)?;
        if !self.precision.is_f64() {
            bail!("--precision: paths runs in f64 only: its path-length terms sum to the backward pass to rounding (the sum_error it reports), which f32's 6e-8 would blur");
        }
        if !(self.window > 0.0 && self.window <= 1.0) {
            bail!("--window: a share in (0, 1], got {}", self.window);
        }
        let analysis = self
            .net
            .prepare(crate::net::memory::Purpose::profile(false))?;
        let (net, net_args) = (&analysis.net, &analysis.args);
        // At least: the decomposition, two unit VJPs for each of the (n + 1)^2 / 2 (l, k)
        // pairs (n / 3 passes' worth), and a backward pass per sampled path.
        let lengths = (net.num_units() + 1) as f64;
        let samples = self.sample.unwrap_or(0) as f64;
        crate::budget::ensure_feasible(
            &match self.sample {
                Some(s) => format!("{} units, --sample {s}", net.num_units()),
                None => format!("{} units", net.num_units()),
            },
            net.pass_work(analysis.input.shape()[0], lengths / 3.0 * (1.0 + samples)),
            self.force,
        )?;
        let cache = net.forward_with(
            &analysis.input,
            &analysis.labels,
            &net_args.ctx(),
            Keep::All,
        )?;
        let t = Instant::now();
        let grads = net.backward(&cache, &analysis.labels, None);
        let backward_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let decomposition = decompose(net, &cache, &grads);
        let decompose_s = t.elapsed().as_secs_f64();
        let lengths = net.num_units() + 1;
        let sampled = self
            .sample
            .map(|s| {
                sample_paths(
                    net,
                    &cache,
                    &grads,
                    s,
                    derive_seed(net_args.seed, &[crate::rng::purpose::PATHS]),
                    &|| on_length(lengths),
                    stop,
                )
            })
            .transpose()?;
        let rows = path_rows(net, &decomposition, sampled.as_deref());
        Ok(Paths {
            analysis,
            decomposition,
            sampled,
            rows,
            backward_s,
            decompose_s,
        })
    }
}
