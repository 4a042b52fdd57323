//! `resprop lesion`: test error of a trained network with units deleted (see
//! `resprop::analysis::lesion`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::NetArgs;
use crate::analysis::lesion::{deletable, plan, run as run_lesions};
use crate::output::{emit, write_atomic};

#[derive(Debug, Args)]
pub struct LesionArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Write one row per lesion: kind (none, single, random), k (units deleted), draw,
    /// deleted (the deleted units, space-separated), test_error.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Random draws of k units for each k = 1..n/2.
    #[arg(long, default_value_t = 5)]
    pub draws: usize,
    /// Run even when the lesions are estimated to take more than a day.
    #[arg(long)]
    pub force: bool,
}

/// What `resprop lesion` measures: every lesion of the plan and its test error (the first is
/// the intact net).
pub struct Lesions {
    pub analysis: super::Analysis,
    pub lesions: Vec<crate::analysis::lesion::Lesion>,
    pub errors: Vec<f64>,
}

impl LesionArgs {
    /// Plans and measures the lesions, calling `progress(n)` after each of the n (a request
    /// on `stop` ends the call before the next); also the Python package's `lesion`.
    pub fn compute(
        &self,
        progress: &(dyn Fn(usize) + Sync),
        stop: &crate::interrupt::Interrupt,
    ) -> Result<Lesions> {
        if self.net.weights.is_none() {
            bail!("lesion needs a trained network: --weights CHECKPOINT (from `resprop train --checkpoint DIR`)");
        }
        if self.draws == 0 {
            bail!("--draws: at least 1");
        }
        // The plan lists every lesion before any runs.
        crate::budget::ensure_at_most("--draws", self.draws as u64, 100_000)?;
        let d = super::NetArgs::defaults();
        for (id, differs) in [
            ("batch", self.net.batch != d.batch),
            ("bn_mode", self.net.bn_mode != d.bn_mode),
        ] {
            self.net.given.refuse(id, differs, || {
                "lesion measures the error on the whole test split, BatchNorm in evaluation mode"
                    .into()
            })?;
        }
        let analysis = self.net.prepare(crate::net::memory::Purpose::Check)?;
        let Some(data) = &analysis.data else {
            bail!("lesion measures the test error: it needs the checkpoint's data");
        };
        // Each lesion is a forward pass over the test split: the intact net, one per unit and
        // --draws per k = 1..n/2.
        let n = deletable(&analysis.net).len();
        let lesions = 1.0 + n as f64 + self.draws as f64 * (n / 2) as f64;
        crate::budget::ensure_feasible(
            &format!("--draws {} over {n} units", self.draws),
            analysis.net.pass_work(data.test.len(), lesions / 3.0),
            self.force,
        )?;
        let lesions = plan(&analysis.net, self.draws, analysis.args.seed);
        let n = lesions.len();
        let errors = run_lesions(&analysis.net, data, &lesions, &|| progress(n), stop)?;
        Ok(Lesions {
            analysis,
            lesions,
            errors,
        })
    }
}

pub fn run(args: &LesionArgs) -> Result<ExitCode> {
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .read("--weights", args.net.weights.as_deref())
        .read_data("--data", args.net.data.as_ref())
        .check()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("lesions [{bar:30}] {pos}/{len}, {elapsed} (eta {eta})")
            .unwrap(),
    );
    let Lesions {
        analysis,
        lesions,
        errors,
    } = args.compute(
        &|n| {
            bar.set_length(n as u64);
            bar.inc(1);
        },
        &crate::interrupt::Interrupt::new(),
    )?;
    bar.finish_and_clear();
    let (net, net_args) = (&analysis.net, &analysis.args);
    let pool = deletable(net);
    let mut out = net_args.describe("lesion", net);
    let base = errors[0];
    let _ = writeln!(out, "test error, nothing deleted: {:.2}%", 100.0 * base);
    let singles: Vec<(usize, f64)> = lesions
        .iter()
        .zip(&errors)
        .filter(|(l, _)| l.kind == "single")
        .map(|(l, &e)| (l.units[0], e))
        .collect();
    let mut sorted: Vec<f64> = singles.iter().map(|s| s.1).collect();
    sorted.sort_by(f64::total_cmp);
    if let (Some(med), Some(&(worst_u, worst))) = (
        crate::stats::median(&sorted),
        singles.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
    ) {
        let _ = writeln!(
            out,
            "one unit deleted ({} units): median {:.2}%, worst {:.2}% (unit {worst_u})",
            singles.len(),
            100.0 * med,
            100.0 * worst
        );
    }
    let shape: Vec<String> = singles
        .iter()
        .filter(|(u, _)| net.units[*u].changes_shape)
        .map(|(u, e)| format!("unit {u}: {:.2}%", 100.0 * e))
        .collect();
    if !shape.is_empty() {
        let _ = writeln!(out, "  the shape-changing units: {}", shape.join(", "));
    }
    let kmax = pool.len() / 2;
    let mut ks = vec![1, kmax / 4, kmax / 2, kmax];
    ks.retain(|&k| k > 0);
    ks.dedup();
    for k in ks {
        let es: Vec<f64> = lesions
            .iter()
            .zip(&errors)
            .filter(|(l, _)| l.kind == "random" && l.k == k)
            .map(|(_, &e)| e)
            .collect();
        let mean = es.iter().sum::<f64>() / es.len() as f64;
        let (lo, hi) = es
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &e| {
                (a.min(e), b.max(e))
            });
        let _ = writeln!(
            out,
            "{k:>3} random units deleted: mean {:.2}% (range {:.2}%-{:.2}%, {} draws)",
            100.0 * mean,
            100.0 * lo,
            100.0 * hi,
            es.len()
        );
    }
    if let Some(p) = &args.csv {
        let mut csv = crate::schema::LESIONS.names().join(",") + "\n";
        for (l, e) in lesions.iter().zip(&errors) {
            csv.push_str(&l.fields(*e).join(","));
            csv.push('\n');
        }
        write_atomic(p, csv.as_bytes())?;
        let _ = writeln!(out, "wrote {} lesions to {}", lesions.len(), p.display());
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}
