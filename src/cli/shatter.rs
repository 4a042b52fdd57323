//! `resprop shatter`: the shattered-gradients comparison of Balduzzi et al. 2017 (see
//! `resprop::analysis::shatter`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::analysis::record::fmt_f64;
use crate::analysis::shatter::{half_lag, sweep, POINTS};
use crate::jobs::shatter::ShatterJob;
use crate::output::{emit, write_atomic};

#[derive(Debug, Args)]
pub struct ShatterArgs {
    #[command(flatten)]
    pub job: ShatterJob,
    /// Write the mean autocorrelation per (net, depth, lag), with white and brown noise.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write every gradient: net, depth, replicate, x, gradient.
    #[arg(long, value_name = "FILE")]
    pub gradients_csv: Option<PathBuf>,
}

pub fn run(args: &ShatterArgs) -> Result<ExitCode> {
    crate::output::Outputs::new()
        .write("--csv", args.csv.as_deref())
        .write("--gradients-csv", args.gradients_csv.as_deref())
        .check()?;
    let job = &args.job;
    let study = job.run()?;
    let mut out = format!(
        "resprop shatter: d(first output)/d(input) over {POINTS} inputs in [-2, 2), width {}, {} nets per point, He initialisation, {} unit (BN over the {POINTS}-point batch where used)\n",
        job.width, job.replicates, job.placement
    );
    let _ = writeln!(
        out,
        "{:>10} {:>6}  {:>8}  {:>8}  {:>26}",
        "net", "depth", "r(lag 1)", "r(lag 4)", "first lag with r < 1/2"
    );
    let mut auto = String::from("net,depth,lag,autocorrelation\n");
    for a in &study.autocorrelations {
        let depth = a.depth.map_or(String::new(), |d| d.to_string());
        for (lag, v) in a.r.iter().enumerate() {
            let _ = writeln!(auto, "{},{depth},{lag},{}", a.net, fmt_f64(*v));
        }
        let _ = writeln!(
            out,
            "{:>10} {depth:>6}  {:>8.3}  {:>8.3}  {:>26}",
            a.net,
            a.r[1],
            a.r[4],
            half_lag(&a.r).map_or("never".to_string(), |l| l.to_string())
        );
    }
    if let Some(p) = &args.csv {
        write_atomic(p, auto.as_bytes())?;
        let _ = writeln!(out, "wrote the autocorrelations to {}", p.display());
    }
    if let Some(p) = &args.gradients_csv {
        let xs = sweep();
        let mut csv = String::from("net,depth,replicate,x,gradient\n");
        for g in &study.gradients {
            for (x, v) in xs.iter().zip(&g.gradients) {
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{}",
                    g.family.name(),
                    g.depth,
                    g.replicate,
                    fmt_f64(*x),
                    fmt_f64(*v)
                );
            }
        }
        write_atomic(p, csv.as_bytes())?;
        let _ = writeln!(out, "wrote the gradients to {}", p.display());
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}
