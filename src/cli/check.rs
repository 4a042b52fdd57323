//! `resprop check`: every numerical verification, one row each, non-zero exit on failure.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::NetArgs;
use crate::analysis::checks::{all_passed, run_checks, CheckOptions, Status};
use crate::analysis::gaussian_batch;
use crate::output::emit;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Random directions per finite-difference target.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub directions: u32,
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let net = args.net.build()?;
    let (input, labels) =
        gaussian_batch(&net.input_shape, args.net.batch, net.classes, args.net.seed);
    let ctx = args.net.ctx();
    let opts = CheckOptions {
        directions: args.directions as usize,
        seed: args.net.seed,
    };
    let report = run_checks(&net, &input, &labels, &ctx, &opts)?;
    let rows = &report.rows;
    let mut out = args.net.describe("check", &net);
    outln!(
        out,
        "{:<19} {:<6} {:>11} {:>9}  what",
        "check",
        "result",
        "worst error",
        "tolerance"
    );
    for r in rows {
        let (result, worst) = match &r.status {
            Status::Pass => ("PASS", format!("{:.2e}", r.worst.unwrap())),
            Status::Fail => ("FAIL", format!("{:.2e}", r.worst.unwrap())),
            Status::NotApplicable(_) => ("n/a", "-".to_string()),
        };
        let what = match &r.status {
            Status::NotApplicable(reason) => format!("{} [n/a: {reason}]", r.what),
            _ => r.what.clone(),
        };
        outln!(
            out,
            "{:<19} {:<6} {:>11} {:>9.0e}  {}",
            r.check,
            result,
            worst,
            r.tolerance,
            what
        );
    }
    let failed = rows.iter().filter(|r| r.status == Status::Fail).count();
    let passed = rows.iter().filter(|r| r.status == Status::Pass).count();
    let na = rows.len() - failed - passed;
    outln!(out, "{passed} passed, {failed} failed, {na} not applicable");
    for note in &report.notes {
        outln!(out, "note: {note}");
    }
    emit(&out)?;
    Ok(if all_passed(rows) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
