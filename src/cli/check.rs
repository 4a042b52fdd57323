//! `resprop check`: every numerical verification, one row each; exit status 1 if any fails.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::analysis::checks::{all_passed, Proof, Status};
use crate::jobs::check::CheckJob;
use crate::output::emit;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub job: CheckJob,
}

fn short(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2e}"))
}

pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let (analysis, report) = args.job.run(&crate::interrupt::Interrupt::new())?;
    let (net_args, net) = (&analysis.args, &analysis.net);
    let rows = &report.rows;
    let mut out = net_args.describe("check", net);
    outln!(
        out,
        "{:<19} {:<12} {:>11} {:>11} {:>9}  what",
        "check",
        "result",
        "worst error",
        "uncertainty",
        "tolerance"
    );
    let mut reasons = Vec::new();
    for (proof, heading) in [
        (
            Proof::Verification,
            "verification (independent of the backward pass):",
        ),
        (
            Proof::Consistency,
            "consistency of the implementation (the engine against itself):",
        ),
    ] {
        outln!(out, "{heading}");
        for r in rows.iter().filter(|r| r.proof == proof) {
            let result = r.status.label();
            if let Status::Inconclusive(reason) = &r.status {
                reasons.push(format!("{}: {reason}", r.what));
            }
            let what = match &r.status {
                Status::NotApplicable(reason) => format!("{} [n/a: {reason}]", r.what),
                _ => r.what.clone(),
            };
            outln!(
                out,
                "  {:<17} {:<12} {:>11} {:>11} {:>9.0e}  {}",
                r.check,
                result,
                short(r.worst),
                short(r.uncertainty),
                r.tolerance,
                what
            );
        }
    }
    let count = |f: &dyn Fn(&Status) -> bool| rows.iter().filter(|r| f(&r.status)).count();
    outln!(
        out,
        "{} passed, {} failed, {} inconclusive, {} not applicable",
        count(&|s| *s == Status::Pass),
        count(&|s| *s == Status::Fail),
        count(&|s| matches!(s, Status::Inconclusive(_))),
        count(&|s| matches!(s, Status::NotApplicable(_)))
    );
    for reason in &reasons {
        outln!(out, "inconclusive: {reason}");
    }
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
