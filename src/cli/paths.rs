//! `resprop paths`: the gradient by path length, exactly (see `resprop::analysis::paths`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::NetArgs;
use crate::analysis::paths::{check_samples, decompose, effective_window, path_rows, sample_paths};
use crate::analysis::record::fmt_f64;
use crate::net::Keep;
use crate::output::{emit, write_atomic};
use crate::rng::derive_seed;

#[derive(Debug, Args)]
pub struct PathsArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Write one row per (unit input l, path length k): unit, k, paths (C(n, k)),
    /// exact_norm (||G_k(l)||), exact_share, and with --sample the sampled columns at unit 0.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also estimate the input's gradient by path length as Veit et al. did: the mean norm
    /// over S sampled single paths of each length, times the number of such paths.
    #[arg(long, value_name = "S")]
    pub sample: Option<usize>,
    /// The share of sum_k ||G_k(0)|| the effective window of path lengths holds.
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub window: f64,
    /// Run even when the decomposition and the sampling are estimated to take more than a day.
    #[arg(long)]
    pub force: bool,
}

/// What `resprop paths` computes: the rows of its CSV and the network they describe.
pub struct Paths {
    pub analysis: super::Analysis,
    pub decomposition: crate::analysis::paths::Decomposition,
    /// Veit's estimate at the input: the mean sampled single-path norm per length.
    pub sampled: Option<Vec<f64>>,
    pub rows: Vec<crate::analysis::paths::PathRow>,
    /// Seconds of one backward pass and of the decomposition.
    pub backward_s: f64,
    pub decompose_s: f64,
}

impl PathsArgs {
    /// The decomposition (and the sampled estimate with `--sample`, calling `on_length(n)`
    /// after each of the n path lengths; a request on `stop` ends the sampling); also the
    /// Python package's `paths`.
    pub fn compute(
        &self,
        on_length: &(dyn Fn(usize) + Sync),
        stop: &crate::interrupt::Interrupt,
    ) -> Result<Paths> {
        check_samples(self.sample)?;
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

pub fn run(args: &PathsArgs) -> Result<ExitCode> {
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .read("--weights", args.net.weights.as_deref())
        .read_data("--data", args.net.data.as_ref())
        .check()?;
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(
            "sampling [{bar:30}] {pos}/{len} path lengths, {elapsed} (eta {eta})",
        )
        .unwrap(),
    );
    if args.sample.is_some() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let Paths {
        analysis,
        decomposition: d,
        sampled,
        rows,
        backward_s,
        decompose_s,
    } = args.compute(
        &|lengths| {
            bar.set_length(lengths as u64);
            bar.inc(1);
        },
        &crate::interrupt::Interrupt::new(),
    )?;
    bar.finish_and_clear();
    let (net, net_args) = (&analysis.net, &analysis.args);
    let mut out = net_args.describe("paths", net);
    let worst = d.max_sum_error();
    outln!(
        out,
        "check: max over l of ||sum_k G_k(l) - dE/dx_l|| / ||dE/dx_l|| = {worst:.2e} (tolerance 1e-10)"
    );
    outln!(
        out,
        "cost: one backward {backward_s:.3} s, the decomposition {decompose_s:.3} s (x{:.1})",
        decompose_s / backward_s.max(1e-9)
    );
    let n = net.num_units();
    outln!(
        out,
        "  k      paths  ||G_k(0)||   share{}",
        if sampled.is_some() {
            "  sampled mean  sampled total"
        } else {
            ""
        }
    );
    for r in rows.iter().filter(|r| r.unit == 0) {
        let step = (n / 20).max(1);
        if r.k % step != 0 && r.k != n {
            continue;
        }
        let sampled = match (r.sampled_path_norm, r.sampled_total) {
            (Some(m), Some(t)) => format!("  {m:>12.3e}  {t:>13.3e}"),
            _ => String::new(),
        };
        outln!(
            out,
            "{:>3} {:>10.3e}  {:>10.3e}  {:>6.4}{sampled}",
            r.k,
            r.paths,
            r.exact_norm,
            r.exact_share
        );
    }
    let window = |norms: &[f64]| {
        effective_window(norms, args.window).map_or("none (no gradient)".to_string(), |(a, b)| {
            format!("k = {a}..{b}")
        })
    };
    outln!(
        out,
        "effective paths ({:.0}% of sum_k ||G_k(0)||): exact {}",
        100.0 * args.window,
        window(&d.norms[0])
    );
    if let Some(s) = &sampled {
        let totals: Vec<f64> = (0..=n)
            .map(|k| s[k] * crate::analysis::paths::binomial(n, k))
            .collect();
        outln!(out, "  sampled (Veit's estimate): {}", window(&totals));
    }
    if let Some(path) = &args.csv {
        write_atomic(path, &crate::schema::to_csv(&rows, &[])?)?;
        outln!(out, "wrote {} rows to {}", rows.len(), path.display());
    }
    emit(&out)?;
    if worst.is_nan() || worst > 1e-10 {
        eprintln!(
            "error: the path decomposition does not sum to the gradient: {}",
            fmt_f64(worst)
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
