//! `resprop lesion`: test error of a trained network with units deleted (see
//! `resprop::analysis::lesion`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::jobs::lesion::{LesionJob, Lesions};
use crate::output::{emit, write_atomic};

#[derive(Debug, Args)]
pub struct LesionArgs {
    #[command(flatten)]
    pub job: LesionJob,
    /// Write one row per lesion: kind (none, single, random), k (units deleted), draw,
    /// deleted (the deleted units, space-separated; an imported model's by module name),
    /// test_error.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

pub fn run(args: &LesionArgs) -> Result<ExitCode> {
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .read("--weights", args.job.net.weights.as_deref())
        .read("--model", args.job.net.model.as_deref())
        .read_data("--data", args.job.net.data.as_ref())
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
    } = args.job.run(
        &|n| {
            bar.set_length(n as u64);
            bar.inc(1);
        },
        &crate::interrupt::Interrupt::new(),
    )?;
    bar.finish_and_clear();
    let (net, net_args) = (&analysis.net, &analysis.args);
    let pool = crate::analysis::lesion::deletable(net);
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
            "one unit deleted ({} units): median {:.2}%, worst {:.2}% (unit {})",
            singles.len(),
            100.0 * med,
            100.0 * worst,
            net.unit_label(worst_u)
        );
    }
    let shape: Vec<String> = singles
        .iter()
        .filter(|(u, _)| net.units[*u].changes_shape)
        .map(|(u, e)| format!("unit {}: {:.2}%", net.unit_label(*u), 100.0 * e))
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
            csv.push_str(&l.fields(*e, net).join(","));
            csv.push('\n');
        }
        write_atomic(p, csv.as_bytes())?;
        let _ = writeln!(out, "wrote {} lesions to {}", lesions.len(), p.display());
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}
