//! `resprop paths`: the gradient by path length, exactly (see `resprop::analysis::paths`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::analysis::paths::effective_window;
use crate::analysis::record::fmt_f64;
use crate::jobs::paths::{Paths, PathsJob};
use crate::output::{emit, write_atomic};

#[derive(Debug, Args)]
pub struct PathsArgs {
    #[command(flatten)]
    pub job: PathsJob,
    /// Write one row per (unit input l, path length k): unit, k, paths (C(n, k)),
    /// exact_norm (||G_k(l)||), exact_share, and with --sample the sampled columns at unit 0.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

pub fn run(args: &PathsArgs) -> Result<ExitCode> {
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .read("--weights", args.job.net.weights.as_deref())
        .read("--model", args.job.net.model.as_deref())
        .read_data("--data", args.job.net.data.as_ref())
        .check()?;
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(
            "sampling [{bar:30}] {pos}/{len} path lengths, {elapsed} (eta {eta})",
        )
        .unwrap(),
    );
    if args.job.sample.is_some() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let Paths {
        analysis,
        decomposition: d,
        sampled,
        rows,
        backward_s,
        decompose_s,
    } = args.job.run(
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
        effective_window(norms, args.job.window)
            .map_or("none (no gradient)".to_string(), |(a, b)| {
                format!("k = {a}..{b}")
            })
    };
    outln!(
        out,
        "effective paths ({:.0}% of sum_k ||G_k(0)||): exact {}",
        100.0 * args.job.window,
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
