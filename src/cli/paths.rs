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
use crate::output::{check_writable, emit, write_atomic};
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
    #[arg(long, default_value_t = 0.9)]
    pub window: f64,
}

pub fn run(args: &PathsArgs) -> Result<ExitCode> {
    if let Some(path) = &args.csv {
        check_writable(path)?;
    }
    check_samples(args.sample)?;
    if !(args.window > 0.0 && args.window <= 1.0) {
        bail!("--window: a share in (0, 1], got {}", args.window);
    }
    let super::Analysis {
        args: net_args,
        net,
        input,
        labels,
        ..
    } = args
        .net
        .prepare(crate::net::memory::Purpose::Profile { low_memory: false })?;
    let cache = net.forward_with(&input, &labels, &net_args.ctx(), Keep::All)?;
    let t = Instant::now();
    let grads = net.backward(&cache, &labels, None);
    let backward_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let d = decompose(&net, &cache, &grads);
    let decompose_s = t.elapsed().as_secs_f64();
    let sampled = args.sample.map(|s| {
        let bar = ProgressBar::new(net.num_units() as u64 + 1);
        bar.set_style(
            ProgressStyle::with_template(
                "sampling [{bar:30}] {pos}/{len} path lengths, {elapsed} (eta {eta})",
            )
            .unwrap(),
        );
        let out = sample_paths(
            &net,
            &cache,
            &grads,
            s,
            derive_seed(net_args.seed, &[crate::rng::purpose::PATHS]),
            &|| bar.inc(1),
        );
        bar.finish_and_clear();
        out
    });
    let rows = path_rows(&net, &d, sampled.as_deref());

    let mut out = net_args.describe("paths", &net);
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
